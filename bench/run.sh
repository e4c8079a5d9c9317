#!/usr/bin/env bash
# Benchmark: rbdelta against the rbd CLI on the same throwaway cluster, in
# one run, reported as ratios (machines are noisy; absolute times are not
# comparable between runs, ratios mostly are).
#
#   full backup      rbdelta backup (first)    vs  rbd snap create + rbd export
#                                                  + sync
#                    and fio writing as many bytes with O_DIRECT at queue
#                    depth 16 right after it: the least time this disk
#                    allows any writer of those bytes
#   page cache       growth of `Cached` during the full backup, against the
#                    bytes it wrote (issue 14: under 10 %)
#   incremental      rbdelta backup (delta)    vs  rbd export-diff + sync
#   restore          rbdelta restore --to-image vs rbd import
#   restore to file  rbdelta restore --to-file  vs  fio writing as many bytes
#                    with O_DIRECT at queue depth 16, then fsync; once with
#                    the archive on this disk (the restore reads and writes
#                    it at once) and once with a copy of it on tmpfs, which
#                    stands in for an archive on another disk (this disk
#                    then only takes the restore's writes, as it does fio's)
#   synthetic full   rbdelta synthetic-full    vs  rbdelta backup --full (from Ceph)
#   merge            MiB/s of delta folded by rbdelta merge
#
# Workload (deterministic): an image of IMAGE_GIB with about half of it
# written in 4 MiB pieces; then SCATTER scattered 4-64 KiB writes, a grow by
# 256 MiB, and 20 scattered writes inside the grown 256 MiB.
# Env: IMAGE_GIB (default 4), SCATTER (default 2000), REPS (default 1: the
# full/export and restore/import pairs run REPS times and every pair's
# ratio counts; the incremental runs once per invocation, since a second
# one would diff against another base), MEMSTORE_GIB (default 14), BENCH_DIR.
# Reported: the range of each ratio over the pairs, the range of times, and
# the peak RSS over all runs (not the RSS of the fastest).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_GIB=${IMAGE_GIB:-4}
SCATTER=${SCATTER:-2000}
REPS=${REPS:-1}
MEMSTORE_GIB=${MEMSTORE_GIB:-14}

. bench/lib.sh
bench_start bench "$MEMSTORE_GIB"
rbd() { command rbd -c "$CEPH_CONF" "$@"; }



echo "bench: creating a ${IMAGE_GIB} GiB image with about half of it written" >&2
size_mib=$((IMAGE_GIB * 1024))
"$py" "$samples" random rbd bench "$size_mib" $((size_mib / 2)) 42
rbd snap create rbd/bench@s1

bench_config '  - pool: rbd
    image: bench'

for rep in $(seq "$REPS"); do
  rm -rf "$work/archive" "$work/export.raw"
  for s in $(rbd snap ls rbd/bench --format json | "$py" -c 'import json,sys; print(" ".join(x["name"] for x in json.load(sys.stdin) if x["name"].startswith("rbdelta-")))'); do
    rbd snap rm "rbd/bench@$s" >/dev/null 2>&1
  done
  measure export sh -c "rbd -c '$CEPH_CONF' snap create rbd/bench@e$rep >/dev/null &&
    rbd -c '$CEPH_CONF' export --no-progress rbd/bench@e$rep '$work/export.raw' && sync"
  rbd snap rm rbd/bench@e$rep >/dev/null 2>&1
  measure full "$bin" --no-progress backup bench
  full_bytes=$(du -B1 "$work/archive/bench/data/"*.full | awk '{print $1}')
  # the disk's own limit for this pair: writing as many bytes, O_DIRECT QD16
  rm -f "$work/fio.raw"
  measure fio_full fio --name=w --filename="$work/fio.raw" --rw=write --bs=4M \
    --size="$((full_bytes / 1048576))M" --ioengine=libaio --direct=1 --iodepth=16 --end_fsync=1
  rm -f "$work/fio.raw"
done

echo "bench: scattered writes and a grow" >&2
"$py" "$samples" scatter rbd bench "$SCATTER" 7
"$py" "$samples" resize rbd bench $((size_mib + 256))
"$py" "$samples" scatter rbd bench 20 8 "$size_mib"  # inside the grown part
rbd snap create rbd/bench@s2
full_rev=$("$bin" list bench --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

# measured once: a second incremental would diff against a different base
measure export_diff sh -c "rbd -c '$CEPH_CONF' export-diff --no-progress --from-snap s1 rbd/bench@s2 '$work/diff.bin' && sync"
measure incremental "$bin" --no-progress -v backup bench  # -v: phase timings on stderr

archive_apart
for rep in $(seq "$REPS"); do
  rbd rm rbd/imported >/dev/null 2>&1 || true
  rbd rm rbd/restored >/dev/null 2>&1 || true
  measure import rbd import --no-progress "$work/export.raw" rbd/imported
  measure restore "$bin" --no-progress restore bench --revision "$full_rev" --to-image rbd/restored
  rm -f "$work/fio.raw" "$work/file.raw"
  measure fio_direct fio --name=w --filename="$work/fio.raw" --rw=write --bs=4M \
    --size="$((full_bytes / 1048576))M" --ioengine=libaio --direct=1 --iodepth=16 --end_fsync=1
  rm -f "$work/fio.raw"
  measure file "$bin" --no-progress restore bench --revision "$full_rev" --to-file "$work/file.raw"
  rm -f "$work/file.raw"
  measure file_apart "${apart[@]}" "$bin" --no-progress restore bench --revision "$full_rev" --to-file "$work/file.raw"
  rm -f "$work/file.raw"
done

"$bin" --no-progress verify bench >/dev/null
delta_bytes=$(stat -c %s "$work/archive/bench/data/"*.delta)

# History edits, on the same data: a second delta, then fold the first delta
# into it (merge throughput), then a synthetic full of the newest revision
# against reading a new full from Ceph.
echo "bench: merge and synthetic full" >&2
"$py" "$samples" scatter rbd bench "$SCATTER" 9
"$bin" --no-progress backup bench >/dev/null
read -r first second third < <("$bin" list bench --json | "$py" -c 'import json,sys; print(" ".join(r["id"] for r in json.load(sys.stdin)))')
merged_bytes=$(stat -c %s "$work/archive/bench/data/$second.delta")
measure merge "$bin" --no-progress merge bench "$second" "$third"
measure synthetic "$bin" --no-progress synthetic-full bench "$third"
measure ceph_full "$bin" --no-progress backup bench --full
"$bin" --no-progress verify bench >/dev/null
diff_bytes=$(stat -c %s "$work/diff.bin")

mib() { awk "BEGIN{printf \"%.0f\", $1 / 1024}"; }
# span "t1 t2 ...": "min-max" (or the one value)
span() { awk '{mn=$1; mx=$1; for (i=2;i<=NF;i++) {if ($i<mn) mn=$i; if ($i>mx) mx=$i}; if (mn==mx) printf "%.2f", mn; else printf "%.2f-%.2f", mn, mx}' <<<"$1"; }
# ratios "a1 a2 ..." "b1 b2 ...": a_i / b_i, pair by pair
ratios() { awk -v a="$1" -v b="$2" 'BEGIN{n=split(a,x," "); split(b,y," "); for (i=1;i<=n;i++) printf "%s%.4f", (i>1?" ":""), x[i]/y[i]}'; }
printf '\n%-14s %13s %13s %11s %14s %14s\n' "operation" "rbdelta s" "rbd s" "ratio" "rbdelta RSS" "rbd RSS"
row() { printf '%-14s %13s %13s %11s %11s MiB %10s MiB\n' "$1" "$(span "${secs[$2]}")" "$(span "${secs[$3]}")" "$(span "$(ratios "${secs[$2]}" "${secs[$3]}")")" "$(mib "${rss[$2]}")" "$(mib "${rss[$3]}")"; }
row "full backup" full export
row "incremental" incremental export_diff
row "restore" restore import
row "file restore" file fio_direct
row "  (apart)" file_apart fio_direct
row "synthetic full" synthetic ceph_full
echo "(ranges over $REPS pair(s) for full and restore, one for the rest; RSS: peak over all runs)"
echo "(synthetic full: rbdelta synthetic-full vs rbdelta backup --full reading the image from Ceph)"
echo "(file restore: rbdelta restore --to-file vs fio writing the full's $((full_bytes / 1048576)) MiB of data with O_DIRECT, 16 in flight, then fsync)"
echo "full backup time / rbd time, pair by pair (issue 14: <= 0.45): $(ratios "${secs[full]}" "${secs[export]}")"
echo "full backup time / fio's time writing as many bytes O_DIRECT QD16 right after it: $(ratios "${secs[full]}" "${secs[fio_full]}")"
echo "  floor: that fio time / rbd time, pair by pair (a pair whose floor is over 0.45 cannot meet issue 14's target by any writer of these bytes): $(ratios "${secs[fio_full]}" "${secs[export]}")"
echo "restore-to-file rate / fio rate, pair by pair (issue 14: >= 0.80): $(ratios "${secs[fio_direct]}" "${secs[file]}")"
echo "  the same with the archive apart (on tmpfs): $(ratios "${secs[fio_direct]}" "${secs[file_apart]}")"
pct() { awk "BEGIN{printf \"%.1f\", 100 * $1 * 1024 / $2}"; }
echo "page cache growth (Cached): full backup $(mib "${cached[full]}") MiB = $(pct "${cached[full]}" "$full_bytes") % of the $((full_bytes / 1048576)) MiB it wrote (issue 14: < 10 %);" \
  "rbd export + sync $(mib "${cached[export]}") MiB; restore to a file $(mib "${cached[file]}") MiB; restore to an image $(mib "${cached[restore]}") MiB"
merge_s=$(span "${secs[merge]}")
echo "merge: folded a $((merged_bytes / 1048576)) MiB delta in $merge_s s: $(awk "BEGIN{printf \"%.0f\", $merged_bytes / 1048576 / $merge_s}") MiB/s"
echo
echo "image ${IMAGE_GIB} GiB, ${SCATTER} scattered writes; delta file $((delta_bytes / 1048576)) MiB vs export-diff $((diff_bytes / 1048576)) MiB"
echo "(rbd export/export-diff are followed by sync; rbdelta fsyncs its own files; ratio < 1 means rbdelta is faster)"
