#!/usr/bin/env bash
# Benchmark: how close a restore comes to the limits of where it writes.
#
#   into a new image   rbdelta restore --to-image  vs  rbd bench --io-type
#                      write --io-size <object size> --io-threads 16 of the
#                      same bytes (what the cluster takes), and vs
#                      rbd import of the same raw image
#   into a file        rbdelta restore --to-file   vs  fio writing as many
#                      bytes (random, not zeros) into a file: buffered and
#                      then fsync, and with O_DIRECT at queue depth 16
#                      (what the disk takes either way); and vs fio reading
#                      as many bytes from one file while it writes them to
#                      another, both O_DIRECT QD16, then fsync (what the
#                      disk takes when it reads and writes at once, as a
#                      restore from an archive on the same disk does)
#   from another device rbdelta restore --to-file and --to-image with the
#                      archive copied to tmpfs, standing in for a backup
#                      host whose archive and restore target are on
#                      different disks: the target disk only takes writes,
#                      as it does for fio's write-only figures
#   pinned             rbd bench and the restore into an image with the
#                      cluster's daemons on core 0 and the command on
#                      core 1: as if the OSD ran on another host, so that
#                      the client's CPU is its own (2 cores or more)
#
# Workload: an image of IMAGE_GIB (default 4) with half of it written in
# 4 MiB pieces, backed up once (a full). Each comparison runs REPS times
# (default 3), the two sides back to back; every pair's ratio counts.
# Reported: rates in MiB/s of data written, ratios pair by pair, peak RSS,
# and the CPU seconds of each side and of the OSD while it ran.
# Env: IMAGE_GIB, REPS, MEMSTORE_GIB (default 14), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_GIB=${IMAGE_GIB:-4}
REPS=${REPS:-3}
MEMSTORE_GIB=${MEMSTORE_GIB:-14}

. bench/lib.sh
bench_start restore "$MEMSTORE_GIB"
rbd() { command rbd -c "$CEPH_CONF" "$@"; }


size_mib=$((IMAGE_GIB * 1024))
data_mib=$((size_mib / 2))
echo "bench: a ${IMAGE_GIB} GiB image with ${data_mib} MiB of data" >&2
"$py" "$samples" random rbd bench "$size_mib" "$data_mib" 42
bench_config '  - pool: rbd
    image: bench'
"$bin" --no-progress backup bench >/dev/null
rbd export --no-progress rbd/bench "$work/bench.raw"
archive_apart
obj=$(rbd info rbd/bench --format json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["object_size"])')

for rep in $(seq "$REPS"); do
  rbd rm --no-progress rbd/target >/dev/null 2>&1 || true
  rbd create --size "${size_mib}M" rbd/target
  measure rbd_bench rbd bench --io-type write --io-size "$obj" --io-threads 16 \
    --io-total "${data_mib}M" --io-pattern seq rbd/target
  rbd rm --no-progress rbd/target >/dev/null
  measure restore "$bin" --no-progress restore bench --to-image rbd/target
  rbd rm --no-progress rbd/target >/dev/null
  measure import rbd import --no-progress "$work/bench.raw" rbd/target
  rbd rm --no-progress rbd/target >/dev/null
  rm -f "$work/file.raw" "$work/fio.raw"
  measure fio_buffered fio --name=w --filename="$work/fio.raw" --rw=write --bs=4M \
    --size="${data_mib}M" --ioengine=psync --end_fsync=1
  rm -f "$work/fio.raw"
  measure fio_direct fio --name=w --filename="$work/fio.raw" --rw=write --bs=4M \
    --size="${data_mib}M" --ioengine=libaio --direct=1 --iodepth=16 --end_fsync=1
  rm -f "$work/fio.raw"
  measure file "$bin" --no-progress restore bench --to-file "$work/file.raw"
  rm -f "$work/file.raw"
  measure file_apart "${apart[@]}" "$bin" --no-progress restore bench --to-file "$work/file.raw"
  rm -f "$work/file.raw"
  measure restore_apart "${apart[@]}" "$bin" --no-progress restore bench --to-image rbd/target
  rbd rm --no-progress rbd/target >/dev/null
  # the cluster on core 0 and the client on core 1, one core each: as if
  # the OSD ran on another host, so the client's CPU is its own
  if (($(nproc) >= 2)); then
    pin_cluster 0
    rbd create --size "${size_mib}M" rbd/target
    measure rbd_bench_pinned taskset -c 1 rbd bench --io-type write --io-size "$obj" \
      --io-threads 16 --io-total "${data_mib}M" --io-pattern seq rbd/target
    rbd rm --no-progress rbd/target >/dev/null
    measure restore_pinned taskset -c 1 "$bin" --no-progress restore bench --to-image rbd/target
    rbd rm --no-progress rbd/target >/dev/null
    pin_cluster "0-$(($(nproc) - 1))"
  fi
  fio --name=prep --filename="$work/fio.src" --rw=write --bs=4M --size="${data_mib}M" \
    --ioengine=libaio --direct=1 --iodepth=16 >/dev/null
  measure fio_mixed fio --name=r --filename="$work/fio.src" --rw=read --bs=4M \
    --size="${data_mib}M" --ioengine=libaio --direct=1 --iodepth=16 \
    --name=w --filename="$work/fio.raw" --rw=write --bs=4M --size="${data_mib}M" \
    --ioengine=libaio --direct=1 --iodepth=16 --end_fsync=1
  rm -f "$work/fio.src" "$work/fio.raw"
done

mib() { awk "BEGIN{printf \"%.0f\", $1 / 1024}"; }
rates() { awk -v t="$1" -v m="$data_mib" 'BEGIN{n=split(t,x," "); mn=1e18; mx=0; for (i=1;i<=n;i++) {r=m/x[i]; if (r<mn) mn=r; if (r>mx) mx=r}; printf "%.0f-%.0f", mn, mx}'; }
ratios() { awk -v a="$1" -v b="$2" 'BEGIN{n=split(a,x," "); split(b,y," "); mn=1e18; mx=0; for (i=1;i<=n;i++) {r=x[i]/y[i]; if (r<mn) mn=r; if (r>mx) mx=r}; printf "%.2f-%.2f", mn, mx}'; }
printf '\n%-34s %14s %12s\n' "run" "MiB/s" "peak RSS"
for n in restore restore_apart restore_pinned rbd_bench rbd_bench_pinned import file file_apart fio_buffered fio_direct fio_mixed; do
  [[ -n ${secs[$n]:-} ]] || continue
  printf '%-34s %14s %8s MiB\n' "$n" "$(rates "${secs[$n]}")" "$(mib "${rss[$n]}")"
done
echo
echo "restore rate / rbd bench rate (target >= 0.80): $(ratios "${secs[rbd_bench]}" "${secs[restore]}")"
echo "restore time / rbd import time (target <= 0.60): $(ratios "${secs[restore]}" "${secs[import]}")"
echo "restore-to-file rate / buffered write+fsync rate (target >= 0.80): $(ratios "${secs[fio_buffered]}" "${secs[file]}")"
echo "restore-to-file rate / O_DIRECT QD16 write rate (issue 14: >= 0.80): $(ratios "${secs[fio_direct]}" "${secs[file]}")"
echo "restore-to-file rate / fio reading and writing at once: $(ratios "${secs[fio_mixed]}" "${secs[file]}")"
echo "archive on another device (tmpfs):"
echo "  restore rate / rbd bench rate (target >= 0.80): $(ratios "${secs[rbd_bench]}" "${secs[restore_apart]}")"
echo "  restore-to-file rate / buffered write+fsync rate (target >= 0.80): $(ratios "${secs[fio_buffered]}" "${secs[file_apart]}")"
echo "  restore-to-file rate / O_DIRECT QD16 write rate (issue 14: >= 0.80): $(ratios "${secs[fio_direct]}" "${secs[file_apart]}")"
# CPU seconds per run (mean), the command's own and the OSD's meanwhile: the
# restore and the OSD share this host's cores, rbd bench needs almost none.
mean() { awk '{t=0; for (i=1;i<=NF;i++) t+=$i; printf "%.2f", t/NF}' <<<"$1"; }
cores=$(nproc)
echo "CPU seconds per run (mean; $cores cores shared with the OSD):"
for n in rbd_bench restore restore_apart rbd_bench_pinned restore_pinned; do
  [[ -n ${secs[$n]:-} ]] || continue
  echo "  $n: wall $(mean "${secs[$n]}"), own $(mean "${cpu[$n]}"), OSD $(mean "${osd_cpu[$n]}")," \
    "least wall time the cores allow (own + OSD) / $cores: $(awk -v a="$(mean "${cpu[$n]}")" -v b="$(mean "${osd_cpu[$n]}")" -v c="$cores" 'BEGIN{printf "%.2f", (a + b) / c}')"
done
if [[ -n ${secs[restore_pinned]:-} ]]; then
  echo "cluster on core 0, client on core 1 (as if the OSD ran elsewhere):"
  echo "  restore rate / rbd bench rate (target >= 0.80): $(ratios "${secs[rbd_bench_pinned]}" "${secs[restore_pinned]}")"
fi
pairs() { awk -v a="$1" -v b="$2" 'BEGIN{n=split(a,x," "); split(b,y," "); for (i=1;i<=n;i++) printf "%s%.2f", (i>1?" ":""), x[i]/y[i]}'; }
echo "pair by pair: into an image / rbd bench: $(pairs "${secs[rbd_bench]}" "${secs[restore]}");" \
  "apart: $(pairs "${secs[rbd_bench]}" "${secs[restore_apart]}")${secs[restore_pinned]:+; pinned: $(pairs "${secs[rbd_bench_pinned]}" "${secs[restore_pinned]}")}"
echo "pair by pair: into a file / O_DIRECT QD16: $(pairs "${secs[fio_direct]}" "${secs[file]}");" \
  "apart: $(pairs "${secs[fio_direct]}" "${secs[file_apart]}");" \
  "apart / buffered: $(pairs "${secs[fio_buffered]}" "${secs[file_apart]}")"
echo "(image ${IMAGE_GIB} GiB, ${data_mib} MiB of data, object size $obj; $REPS pair(s) each; rates are data MiB over wall time)"
