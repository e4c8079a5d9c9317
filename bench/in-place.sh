#!/usr/bin/env bash
# Benchmark: rolling an image back in place against a full restore.
#
# An image of IMAGE_GIB (default 16) with half of it written is backed up
# (revision A); then CHANGE_PERMILLE/1000 (default 10, i.e. 1 %) of its
# 64 KiB blocks are rewritten, in runs of RUN_BLOCKS (default 16: 1 MiB,
# as a filesystem clusters its writes), and backed up again (revision B).
# (Single scattered blocks would touch most 4 MiB objects, and the OSD
# would keep a copy-on-write clone of each for the snapshot.) Measured,
# REPS times each (default 3), with the change re-applied before each:
#   in place (snapshot)   restore A --in-place: blocks changed since B's
#                         snapshot, plus blocks whose hashes differ A..B
#   in place (hashing)    restore A --in-place --no-snapshot: reads and
#                         hashes every allocated block
#   full restore          restore A into a new image (removed after)
# Reported: the ratio of each in-place time to the full restore's, pair by
# pair (the target is at most 0.05 for the snapshot case), and peak RSS.
# The OSD is bluestore on a sparse file (BENCH_BLUESTORE_GIB, default
# 3 x IMAGE_GIB): a memstore OSD holding the image, its clones and a full
# restored copy needs about 1.4 bytes of memory per byte stored, more than
# the machine has at 16 GiB.
# Env: IMAGE_GIB, CHANGE_PERMILLE, RUN_BLOCKS, REPS, BENCH_BLUESTORE_GIB,
# BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_GIB=${IMAGE_GIB:-16}
CHANGE_PERMILLE=${CHANGE_PERMILLE:-10}
RUN_BLOCKS=${RUN_BLOCKS:-16}
REPS=${REPS:-3}
export BENCH_BLUESTORE_GIB=${BENCH_BLUESTORE_GIB:-$((IMAGE_GIB * 3))}

. bench/lib.sh
bench_start in-place 0
rbd() { command rbd -c "$CEPH_CONF" "$@"; }


size_mib=$((IMAGE_GIB * 1024))
blocks=$((size_mib * 16 * CHANGE_PERMILLE / 1000))
echo "bench: a ${IMAGE_GIB} GiB image with half of it written" >&2
"$py" "$samples" random rbd bench "$size_mib" $((size_mib / 2)) 42
bench_config '  - pool: rbd
    image: bench'
"$bin" --no-progress backup bench >/dev/null
echo "bench: $blocks blocks of 64 KiB rewritten, in runs of $RUN_BLOCKS" >&2
"$py" "$samples" blocks rbd bench "$blocks" 7 "$RUN_BLOCKS"
"$bin" --no-progress backup bench >/dev/null
read -r rev_a rev_b < <("$bin" list bench --json | "$py" -c 'import json,sys; print(" ".join(r["id"] for r in json.load(sys.stdin)))')

for rep in $(seq "$REPS"); do
  "$py" "$samples" blocks rbd bench "$blocks" 7 "$RUN_BLOCKS"   # the image at B's content again
  measure snapshot "$bin" --no-progress restore bench --revision "$rev_a" --to-image rbd/bench --in-place --force
  grep -q "found from snapshot" "$work/out.snapshot"
  "$py" "$samples" blocks rbd bench "$blocks" 7 "$RUN_BLOCKS"
  measure hashing "$bin" --no-progress restore bench --revision "$rev_a" --to-image rbd/bench --in-place --force --no-snapshot
  rbd rm --no-progress rbd/restored >/dev/null 2>&1 || true
  measure full "$bin" --no-progress restore bench --revision "$rev_a" --to-image rbd/restored
  rbd rm --no-progress rbd/restored >/dev/null
done
"$bin" --no-progress restore bench --revision "$rev_a" --to-image rbd/bench --in-place --force --verify-target | tail -1

mib() { awk "BEGIN{printf \"%.0f\", $1 / 1024}"; }
span() { awk '{mn=$1; mx=$1; for (i=2;i<=NF;i++) {if ($i<mn) mn=$i; if ($i>mx) mx=$i}; if (mn==mx) printf "%.3f", mn; else printf "%.3f-%.3f", mn, mx}' <<<"$1"; }
ratios() { awk -v a="$1" -v b="$2" 'BEGIN{n=split(a,x," "); split(b,y," "); for (i=1;i<=n;i++) printf "%s%.4f", (i>1?" ":""), x[i]/y[i]}'; }
printf '\n%-22s %15s %17s %12s\n' "run" "seconds" "vs full restore" "peak RSS"
row() { printf '%-22s %15s %17s %8s MiB\n' "$1" "$(span "${secs[$2]}")" "$(span "$(ratios "${secs[$2]}" "${secs[full]}")")" "$(mib "${rss[$2]}")"; }
row "in place (snapshot)" snapshot
row "in place (hashing)" hashing
row "full restore" full
echo "(image ${IMAGE_GIB} GiB, half written; $blocks of $((size_mib * 16)) blocks changed; $REPS pair(s); a ratio < 0.05 meets the target)"
sed -n 1p "$work/out.snapshot"
sed -n 1p "$work/out.hashing"
