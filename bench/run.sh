#!/usr/bin/env bash
# Benchmark: rbdelta against the rbd CLI on the same throwaway cluster, in
# one run, reported as ratios (machines are noisy; absolute times are not
# comparable between runs, ratios mostly are).
#
#   full backup      rbdelta backup (first)    vs  rbd export  + sync
#   incremental      rbdelta backup (delta)    vs  rbd export-diff + sync
#   restore          rbdelta restore --to-image vs rbd import
#   synthetic full   rbdelta synthetic-full    vs  rbdelta backup --full (from Ceph)
#   merge            MiB/s of delta folded by rbdelta merge
#
# Workload (deterministic): an image of IMAGE_GIB with about half of it
# written in 4 MiB pieces; then SCATTER scattered 4-64 KiB writes and a grow
# by 256 MiB with data written at the new end.
# Env: IMAGE_GIB (default 4), SCATTER (default 2000), REPS (default 1: the
# best of REPS runs of full/export and restore/import is reported), MEMSTORE_GIB (default 14), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_GIB=${IMAGE_GIB:-4}
SCATTER=${SCATTER:-2000}
REPS=${REPS:-1}
MEMSTORE_GIB=${MEMSTORE_GIB:-14}

rbd-fixtures/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
cargo build --release --quiet
bin="$PWD/target/release/rbdelta"
py=/usr/bin/python3
samples="$PWD/rbd-fixtures/sample-images.py"

work=${BENCH_DIR:-$(mktemp -d /var/tmp/rbdelta-bench.XXXXXX)}
mkdir -p "$work"
cleanup() { rbd-fixtures/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
rbd-fixtures/cluster.sh start "$work/cluster" --memstore-gib "$MEMSTORE_GIB"
export CEPH_CONF="$work/cluster/ceph.conf"
rbd() { command rbd -c "$CEPH_CONF" "$@"; }

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

# measure NAME CMD...: runs CMD under GNU time; records seconds and peak RSS (KiB)
declare -A secs rss
measure() {
  local name=$1; shift
  drop_caches
  local out="$work/time.$name"
  /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null
  read -r s m < "$out"
  if [[ -z ${secs[$name]:-} ]] || awk "BEGIN{exit !($s < ${secs[$name]})}"; then
    secs[$name]=$s; rss[$name]=$m
  fi
}

echo "bench: creating a ${IMAGE_GIB} GiB image with about half of it written" >&2
size_mib=$((IMAGE_GIB * 1024))
"$py" "$samples" random rbd bench "$size_mib" $((size_mib / 2)) 42
rbd snap create rbd/bench@s1

cat > "$work/config.yaml" <<YAML
ceph:
  conf: $CEPH_CONF
archive: $work/archive
volumes:
  - pool: rbd
    image: bench
YAML
export RBDELTA_CONFIG="$work/config.yaml"

for rep in $(seq "$REPS"); do
  rm -rf "$work/archive" "$work/export.raw"
  for s in $(rbd snap ls rbd/bench --format json | "$py" -c 'import json,sys; print(" ".join(x["name"] for x in json.load(sys.stdin) if x["name"].startswith("rbdelta-")))'); do
    rbd snap rm "rbd/bench@$s" >/dev/null 2>&1
  done
  measure export sh -c "rbd -c '$CEPH_CONF' export --no-progress rbd/bench@s1 '$work/export.raw' && sync"
  measure full "$bin" --no-progress backup bench
done

echo "bench: scattered writes and a grow" >&2
"$py" "$samples" scatter rbd bench "$SCATTER" 7
"$py" "$samples" resize rbd bench $((size_mib + 256))
"$py" "$samples" scatter rbd bench 20 8
rbd snap create rbd/bench@s2
full_rev=$("$bin" list bench --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

# measured once: a second incremental would diff against a different base
measure export_diff sh -c "rbd -c '$CEPH_CONF' export-diff --no-progress --from-snap s1 rbd/bench@s2 '$work/diff.bin' && sync"
measure incremental "$bin" --no-progress -v backup bench  # -v: phase timings on stderr

for rep in $(seq "$REPS"); do
  rbd rm rbd/imported >/dev/null 2>&1 || true
  rbd rm rbd/restored >/dev/null 2>&1 || true
  measure import rbd import --no-progress "$work/export.raw" rbd/imported
  measure restore "$bin" --no-progress restore bench --revision "$full_rev" --to-image rbd/restored
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

ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }
mib() { awk "BEGIN{printf \"%.0f\", $1 / 1024}"; }
printf '\n%-14s %10s %10s %8s %14s %14s\n' "operation" "rbdelta s" "rbd s" "ratio" "rbdelta RSS" "rbd RSS"
row() { printf '%-14s %10s %10s %8s %11s MiB %10s MiB\n' "$1" "${secs[$2]}" "${secs[$3]}" "$(ratio "${secs[$2]}" "${secs[$3]}")" "$(mib "${rss[$2]}")" "$(mib "${rss[$3]}")"; }
row "full backup" full export
row "incremental" incremental export_diff
row "restore" restore import
printf '%-14s %10s %10s %8s %11s MiB %10s MiB\n' "synthetic full" "${secs[synthetic]}" "${secs[ceph_full]}" "$(ratio "${secs[synthetic]}" "${secs[ceph_full]}")" "$(mib "${rss[synthetic]}")" "$(mib "${rss[ceph_full]}")"
echo "(synthetic full: rbdelta synthetic-full vs rbdelta backup --full reading the image from Ceph)"
echo "merge: folded a $((merged_bytes / 1048576)) MiB delta in ${secs[merge]} s: $(awk "BEGIN{printf \"%.0f\", $merged_bytes / 1048576 / ${secs[merge]}}") MiB/s"
echo
echo "image ${IMAGE_GIB} GiB, ${SCATTER} scattered writes; delta file $((delta_bytes / 1048576)) MiB vs export-diff $((diff_bytes / 1048576)) MiB"
echo "(rbd export/export-diff are followed by sync; rbdelta fsyncs its own files; ratio < 1 means rbdelta is faster)"
