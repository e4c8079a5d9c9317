#!/usr/bin/env bash
# Finding changed extents on a large, mostly empty image: librbd's exact
# diff (`rbd diff --from-snap`, every object of the image asked) against the
# object-map answer (`--whole-object`, fast-diff) and against a whole
# rbdelta incremental backup, which asks the object map first and exact
# extents only inside the objects it names.
#
# Workload: a SPARSE_GIB (default 200) thin image with 32 MiB written in 64
# KiB pieces spread over it, a backup, 64 more scattered 64 KiB writes, a
# second backup. Reported: the median of RUNS (default 5) timings of each.
# The test mon proposes map changes every 50 ms (rbd-fixtures/cluster.sh),
# so the backup's two snapshot operations cost about 20 ms each here and
# about 1 s each on a default mon.
set -euo pipefail
cd "$(dirname "$0")/.."
GIB=${SPARSE_GIB:-200}
RUNS=${RUNS:-5}

. bench/lib.sh
bench_start sparse 2
rbd() { command rbd -c "$CEPH_CONF" "$@"; }

# writes COUNT 64 KiB pieces at seeded offsets over the whole image
scatter() {
  "$py" - "$1" "$2" <<'PY'
import os, random, sys, rados, rbd
count, seed = int(sys.argv[1]), int(sys.argv[2])
c = rados.Rados(conffile=os.environ["CEPH_CONF"]); c.connect(timeout=30)
with c.open_ioctx("rbd") as io, rbd.Image(io, "sparse") as img:
    rng = random.Random(seed)
    size = img.size()
    for _ in range(count):
        img.write(rng.randbytes(65536), rng.randrange(0, size - 65536) // 65536 * 65536)
c.shutdown()
PY
}

rbd create --size "${GIB}G" rbd/sparse
scatter 512 1
bench_config '  - pool: rbd
    image: sparse'
"$bin" --no-progress backup sparse >/dev/null
base=$(rbd snap ls rbd/sparse --format json | "$py" -c 'import json,sys; print(json.load(sys.stdin)[-1]["name"])')

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk "BEGIN{printf \"%.3f\", $t1 - $t0}"; }

declare -A t
for run in $(seq "$RUNS"); do
  scatter 64 $((run + 1))
  rbd snap create rbd/sparse@probe >/dev/null
  t[exact]+=" $(timed rbd diff --from-snap "$base" rbd/sparse@probe)"
  t[whole]+=" $(timed rbd diff --whole-object --from-snap "$base" rbd/sparse@probe)"
  rbd snap rm --no-progress rbd/sparse@probe >/dev/null
  t[backup]+=" $(timed "$bin" --no-progress -v backup sparse 2>"$work/backup.log")"
  # rbdelta's own diff phase, from its log: "N changed extents found in 25.3ms"
  t[diff]+=" $(sed -n 's/.*changed extents found in \([0-9.]*\)\([µm]*s\).*/\1 \2/p' "$work/backup.log" \
      | awk '{v=$1; if ($2=="ms") v/=1000; else if ($2=="µs") v/=1e6; printf "%.4f", v}')"
  base=$(rbd snap ls rbd/sparse --format json | "$py" -c 'import json,sys; print(json.load(sys.stdin)[-1]["name"])')
done
"$bin" --no-progress verify sparse >/dev/null

echo
echo "${GIB} GiB sparse image, 64 scattered 64 KiB writes between backups; median of $RUNS"
printf '%-58s %8s s\n' "rbd diff --from-snap (librbd exact diff)" "$(median "${t[exact]}")"
printf '%-58s %8s s\n' "rbd diff --whole-object --from-snap (object map)" "$(median "${t[whole]}")"
printf '%-58s %8s s\n' "rbdelta: finding the changed extents" "$(median "${t[diff]}")"
printf '%-58s %8s s\n' "rbdelta backup (snapshot, diff, read, write, commit)" "$(median "${t[backup]}")"
echo "(rbd diff times include starting the rbd process and connecting)"
