#!/usr/bin/env bash
# Fleet benchmark: the nightly common case of many small volumes, on one
# throwaway cluster, reported as ratios and per-volume overheads.
#
#   nothing changed   rbdelta backup --all --jobs J (J = 1, 2, 4)
#                     vs a shell loop of `rbd snap create` + `rbd export-diff
#                     --from-snap` + `rbd snap rm` per image (what a cron
#                     script without rbdelta does), sequential
#   a few changed     the same with FLEET_CHANGED images given scattered writes
#   speed-up          time(--jobs 1) / time(--jobs J)
#
# Env: FLEET_N images (default 50) of FLEET_MIB MiB (default 64) with a
# quarter written; FLEET_CHANGED (default 5); REPS (default 1: best of REPS);
# BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${FLEET_N:-50}
MIB=${FLEET_MIB:-64}
CHANGED=${FLEET_CHANGED:-5}
REPS=${REPS:-1}

rbd-fixtures/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
cargo build --release --quiet
bin="$PWD/target/release/rbdelta"
py=/usr/bin/python3
samples="$PWD/rbd-fixtures/sample-images.py"

work=${BENCH_DIR:-$(mktemp -d /var/tmp/rbdelta-fleet.XXXXXX)}
mkdir -p "$work"
cleanup() { rbd-fixtures/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
rbd-fixtures/cluster.sh start "$work/cluster" --memstore-gib 4
export CEPH_CONF="$work/cluster/ceph.conf"
rbd() { command rbd -c "$CEPH_CONF" "$@"; }

# best NAME CMD...: seconds of the fastest of the runs so far
declare -A secs
measure() {
  local name=$1; shift
  local t0 t1 s
  sync
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>"$work/err.$name" || { cat "$work/err.$name" >&2; exit 1; }
  t1=$(date +%s.%N)
  s=$(awk "BEGIN{printf \"%.3f\", $t1 - $t0}")
  if [[ -z ${secs[$name]:-} ]] || awk "BEGIN{exit !($s < ${secs[$name]})}"; then secs[$name]=$s; fi
}

name() { printf 'fleet-%03d' "$1"; }
echo "bench: creating $N images of $MIB MiB" >&2
for i in $(seq 1 "$N"); do "$py" "$samples" random rbd "$(name "$i")" "$MIB" $((MIB / 4)) "$i"; done

cat > "$work/config.yaml" <<YAML
ceph:
  conf: $CEPH_CONF
archive: $work/archive
volumes:
  - pool: rbd
    include: ["fleet-*"]
YAML
export RBDELTA_CONFIG="$work/config.yaml"

echo "bench: first (full) backups" >&2
measure fulls "$bin" --no-progress backup --all --jobs 4

# The rbd CLI loop: one export-diff per image against the previous snapshot.
rbd_loop() {
  local prev=$1 next=$2
  for img in $(rbd ls rbd | grep '^fleet-'); do
    rbd snap create --no-progress "rbd/$img@$next" >/dev/null
    rm -f "$work/diff.$img"
    if [[ -n $prev ]]; then
      rbd export-diff --no-progress --from-snap "$prev" "rbd/$img@$next" "$work/diff.$img" >/dev/null
      rbd snap rm --no-progress "rbd/$img@$prev" >/dev/null
    else
      rbd export-diff --no-progress "rbd/$img@$next" "$work/diff.$img" >/dev/null
    fi
  done
  sync
}
rbd_loop "" loop0
snap=0
loop_once() { local n=$((snap + 1)); rbd_loop "loop$snap" "loop$n"; snap=$n; }

echo "bench: nights with nothing changed" >&2
for rep in $(seq "$REPS"); do
  measure loop_same loop_once
  for j in 1 2 4; do measure "same_j$j" "$bin" --no-progress backup --all --jobs "$j"; done
done

echo "bench: nights with $CHANGED images changed" >&2
for rep in $(seq "$REPS"); do
  for i in $(seq 1 "$CHANGED"); do "$py" "$samples" scatter rbd "$(name "$i")" 200 $((rep * 100 + i)); done
  measure loop_some loop_once
  for i in $(seq 1 "$CHANGED"); do "$py" "$samples" scatter rbd "$(name "$i")" 200 $((rep * 100 + 50 + i)); done
  measure some_j4 "$bin" --no-progress backup --all --jobs 4
done
"$bin" --no-progress status >/dev/null

ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }
per() { awk "BEGIN{printf \"%.0f\", 1000 * $1 / $N}"; }
echo
echo "$N volumes of $MIB MiB ($((MIB / 4)) MiB written each); best of $REPS"
printf '%-36s %9s %14s %9s\n' "run" "seconds" "ms per volume" "vs rbd"
printf '%-36s %9s %14s %9s\n' "first backups (fulls), --jobs 4" "${secs[fulls]}" "$(per "${secs[fulls]}")" "-"
printf '%-36s %9s %14s %9s\n' "rbd loop, nothing changed" "${secs[loop_same]}" "$(per "${secs[loop_same]}")" "1.00"
for j in 1 2 4; do
  printf '%-36s %9s %14s %9s\n' "rbdelta --jobs $j, nothing changed" "${secs[same_j$j]}" "$(per "${secs[same_j$j]}")" "$(ratio "${secs[same_j$j]}" "${secs[loop_same]}")"
done
printf '%-36s %9s %14s %9s\n' "rbd loop, $CHANGED changed" "${secs[loop_some]}" "$(per "${secs[loop_some]}")" "1.00"
printf '%-36s %9s %14s %9s\n' "rbdelta --jobs 4, $CHANGED changed" "${secs[some_j4]}" "$(per "${secs[some_j4]}")" "$(ratio "${secs[some_j4]}" "${secs[loop_some]}")"
echo "speed-up over --jobs 1: --jobs 2 $(ratio "${secs[same_j1]}" "${secs[same_j2]}")x, --jobs 4 $(ratio "${secs[same_j1]}" "${secs[same_j4]}")x"
echo "(ratio < 1 means rbdelta is faster; rbdelta's runs include checksums, manifests and fsyncs)"
