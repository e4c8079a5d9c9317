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
# What the ratio measures: the rbd loop starts three `rbd` processes per
# image (create, export-diff, rm), each connecting to the cluster, while
# rbdelta starts one worker process per parallel slot and one connection per
# volume. With nothing or little changed, that is mostly process start and
# connection cost against rbdelta's per-volume work (two snapshot
# operations, a diff, checksums, manifests, fsyncs), not data throughput.
# The test cluster's mon proposes map changes every 50 ms (paxos propose
# interval 0.05, rbd-fixtures/cluster.sh); both sides pay the same snapshot
# create and remove per image. A default mon takes about 1 s per snapshot
# operation, which parallel jobs share.
#
# Env: FLEET_N images (default 50) of FLEET_MIB MiB (default 64) with a
# quarter written; FLEET_CHANGED (default 5); REPS (default 1: every run
# counts, and the range over runs is reported); BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${FLEET_N:-50}
MIB=${FLEET_MIB:-64}
CHANGED=${FLEET_CHANGED:-5}
REPS=${REPS:-1}

. bench/lib.sh
bench_start fleet 4
rbd() { command rbd -c "$CEPH_CONF" "$@"; }

# measure NAME CMD...: appends the run's seconds to secs[NAME]
declare -A secs
measure() {
  local name=$1; shift
  local t0 t1 s
  sync
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>"$work/err.$name" || { cat "$work/err.$name" >&2; exit 1; }
  t1=$(date +%s.%N)
  s=$(awk "BEGIN{printf \"%.3f\", $t1 - $t0}")
  secs[$name]="${secs[$name]:-} $s"
}

name() { printf 'fleet-%03d' "$1"; }
echo "bench: creating $N images of $MIB MiB" >&2
for i in $(seq 1 "$N"); do "$py" "$samples" random rbd "$(name "$i")" "$MIB" $((MIB / 4)) "$i"; done

bench_config '  - pool: rbd
    include: ["fleet-*"]'

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

# span "v1 v2 ...": "min-max" (or the one value); stat FN "v1 ...": FN of each
span() { awk '{mn=$1; mx=$1; for (i=2;i<=NF;i++) {if ($i<mn) mn=$i; if ($i>mx) mx=$i}; if (mn==mx) printf "%.2f", mn; else printf "%.2f-%.2f", mn, mx}' <<<"$1"; }
minv() { awk '{mn=$1; for (i=2;i<=NF;i++) if ($i<mn) mn=$i; print mn}' <<<"$1"; }
maxv() { awk '{mx=$1; for (i=2;i<=NF;i++) if ($i>mx) mx=$i; print mx}' <<<"$1"; }
per() { awk "BEGIN{printf \"%.0f\", 1000 * $1 / $N}"; }
pers() { if [[ $(minv "$1") == "$(maxv "$1")" ]]; then per "$(minv "$1")"; else echo "$(per "$(minv "$1")")-$(per "$(maxv "$1")")"; fi; }
# ratio range of A against B over runs, pair by pair
ratios() { awk -v a="$1" -v b="$2" 'BEGIN{n=split(a,x," "); split(b,y," "); mn=1e9; mx=0; for (i=1;i<=n;i++) {r=x[i]/y[i]; if (r<mn) mn=r; if (r>mx) mx=r}; if (sprintf("%.2f",mn)==sprintf("%.2f",mx)) printf "%.2f", mn; else printf "%.2f-%.2f", mn, mx}'; }
echo
echo "$N volumes of $MIB MiB ($((MIB / 4)) MiB written each); ranges over $REPS run(s)"
printf '%-36s %13s %14s %11s\n' "run" "seconds" "ms per volume" "vs rbd"
row() { printf '%-36s %13s %14s %11s\n' "$1" "$(span "${secs[$2]}")" "$(pers "${secs[$2]}")" "$3"; }
row "first backups (fulls), --jobs 4" fulls "-"
row "rbd loop, nothing changed" loop_same "1.00"
for j in 1 2 4; do
  row "rbdelta --jobs $j, nothing changed" "same_j$j" "$(ratios "${secs[same_j$j]}" "${secs[loop_same]}")"
done
row "rbd loop, $CHANGED changed" loop_some "1.00"
row "rbdelta --jobs 4, $CHANGED changed" some_j4 "$(ratios "${secs[some_j4]}" "${secs[loop_some]}")"
echo "speed-up over --jobs 1: --jobs 2 $(ratios "${secs[same_j1]}" "${secs[same_j2]}")x, --jobs 4 $(ratios "${secs[same_j1]}" "${secs[same_j4]}")x"
echo "(ratio < 1 means rbdelta is faster; rbdelta's runs include checksums, manifests and fsyncs;"
echo " the rbd loop is 3 rbd processes per image, so the ratio is mostly process start and connection cost;"
echo " test mon with paxos propose interval 0.05 s, both sides create and remove one snapshot per image)"
