#!/usr/bin/env bash
# Benchmark: backups into an archive on CephFS (ceph-fuse) next to the same
# backups into an archive on the local disk (issue 13).
#
#   full          rbdelta backup of a new volume (a full), local vs CephFS
#   incremental   after SCATTER scattered writes, a delta, local vs CephFS
#   verify        rbdelta verify of the volume (a full and a delta), local
#                 vs CephFS; a full is sparse, and ceph-fuse reports no
#                 holes, so CephFS makes verify read the holes as well
#
# Workload: an image of IMAGE_GIB (default 2) with half of it written in
# 4 MiB pieces. Each rep backs up into a new archive on each side, back to
# back (the two sides alternate which goes first); every pair's ratio
# counts. Reported: ratios CephFS time / local time.
#
# What it measures on this machine: the single memstore OSD serves the
# RBD reads and stores the CephFS data, and ceph-fuse is a user-space
# client, so the CephFS side pays for both on 2 cores. On a real cluster
# the archive's pool is on other disks than the images, and the limit is
# the network.
# Env: IMAGE_GIB, REPS (default 3), SCATTER (default 2000), MEMSTORE_GIB
# (default 14), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_GIB=${IMAGE_GIB:-2}
REPS=${REPS:-3}
SCATTER=${SCATTER:-2000}
MEMSTORE_GIB=${MEMSTORE_GIB:-14}

. bench/lib.sh
BENCH_CEPHFS=1 bench_start cephfs "$MEMSTORE_GIB"
fs="$work/cluster/cephfs"
mountpoint -q "$fs" || { echo "bench: no CephFS at $fs" >&2; exit 1; }

size_mib=$((IMAGE_GIB * 1024))
echo "bench: a ${IMAGE_GIB} GiB image with $((size_mib / 2)) MiB of data" >&2
"$py" "$samples" random rbd bench "$size_mib" $((size_mib / 2)) 42

# config SIDE REP: a config whose archive is on SIDE (local or cephfs)
config() {
  local root
  if [[ $1 == local ]]; then root="$work/local-$2"; else root="$fs/archive-$2"; fi
  cat > "$work/$1-$2.yaml" <<YAML
ceph:
  conf: $CEPH_CONF
archive: $root
volumes:
  - pool: rbd
    image: bench
YAML
  echo "$work/$1-$2.yaml"
}

for rep in $(seq "$REPS"); do
  sides=(local cephfs)
  ((rep % 2)) || sides=(cephfs local)
  for side in "${sides[@]}"; do
    measure "full_$side" "$bin" --no-progress -c "$(config "$side" "$rep")" backup bench
  done
  "$py" "$samples" scatter rbd bench "$SCATTER" "$rep"
  for side in "${sides[@]}"; do
    measure "incr_$side" "$bin" --no-progress -c "$work/$side-$rep.yaml" backup bench
  done
  for side in "${sides[@]}"; do
    measure "verify_$side" "$bin" --no-progress -c "$work/$side-$rep.yaml" verify bench
  done
  rm -rf "$work/local-$rep" "$fs/archive-$rep"
done

ratios() { awk -v a="$1" -v b="$2" 'BEGIN{n=split(a,x," "); split(b,y," "); mn=1e18; mx=0; for (i=1;i<=n;i++) {r=x[i]/y[i]; if (r<mn) mn=r; if (r>mx) mx=r}; printf "%.2f-%.2f", mn, mx}'; }
printf '\n%-16s %24s\n' "run" "seconds"
for n in full_local full_cephfs incr_local incr_cephfs verify_local verify_cephfs; do
  printf '%-16s %24s\n' "$n" "${secs[$n]}"
done
echo
echo "full backup, CephFS time / local time: $(ratios "${secs[full_cephfs]}" "${secs[full_local]}")"
echo "incremental backup, CephFS time / local time: $(ratios "${secs[incr_cephfs]}" "${secs[incr_local]}")"
echo "verify, CephFS time / local time: $(ratios "${secs[verify_cephfs]}" "${secs[verify_local]}")"
echo "(image ${IMAGE_GIB} GiB, $((size_mib / 2)) MiB of data, $SCATTER scattered writes; $REPS pair(s) each)"
