#!/usr/bin/env bash
# Measures the inputs of docs/SCALE.md on a throwaway cluster with CephFS:
#
#   MDS load      requests the MDS handled (perf counter
#                 mds_server.handle_client_request) per volume for a full,
#                 for an unchanged backup and for a changed one, with the
#                 archive on ceph-fuse
#   mon load      wall time of `backup --all` of N unchanged volumes at
#                 --jobs 8 and --jobs 32 with the mon's default paxos
#                 timing (propose interval 1 s, min wait 0.05 s; the test
#                 cluster's 0.05 s is set back to them here): every backup
#                 creates one snapshot and removes the one before, and
#                 each waits for a paxos round
#
# Env: SCALE_N volumes (default 100) of 16 MiB with 4 MiB written; BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SCALE_N:-100}

. bench/lib.sh
BENCH_CEPHFS=1 bench_start scale 6
fs="$work/cluster/cephfs"
ceph() { command ceph -c "$CEPH_CONF" "$@" 2>/dev/null; }

for i in $(seq 1 "$N"); do "$py" "$samples" random rbd "s$i" 16 4 "$i"; done
cat > "$work/config.yaml" <<YAML
ceph:
  conf: $CEPH_CONF
archive: $fs/archive
volumes:
  - pool: rbd
    include: ["s*"]
YAML
export RBDELTA_CONFIG="$work/config.yaml"

mds_requests() {
  ceph tell mds.a perf dump mds_server |
    "$py" -c 'import json,sys; print(json.load(sys.stdin)["mds_server"]["handle_client_request"])'
}

# per_volume NAME CMD...: runs CMD and prints the MDS requests per volume
per_volume() {
  local name=$1 before after; shift
  before=$(mds_requests)
  "$@" >/dev/null
  after=$(mds_requests)
  awk -v a="$after" -v b="$before" -v n="$N" -v name="$name" \
    'BEGIN{printf "%-34s %8.1f MDS requests per volume\n", name, (a - b) / n}'
}

per_volume "full" "$bin" --no-progress backup --all --jobs 8
per_volume "unchanged" "$bin" --no-progress backup --all --jobs 8
for i in $(seq 1 "$N"); do "$py" "$samples" scatter rbd "s$i" 20 "$i"; done
per_volume "changed (20 scattered writes)" "$bin" --no-progress backup --all --jobs 8
per_volume "verify" "$bin" --no-progress verify --all

ceph tell mon.a config set paxos_propose_interval 1 >/dev/null
ceph tell mon.a config set paxos_min_wait 0.05 >/dev/null
for jobs in 8 32 8 32; do
  s=$(date +%s.%N)
  "$bin" --no-progress backup --all --jobs "$jobs" >/dev/null
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" -v j="$jobs" -v n="$N" \
    'BEGIN{printf "%d unchanged volumes, --jobs %-3d %6.1f s, %.2f volumes/s (default paxos)\n", n, j, e - s, n / (e - s)}'
done
