#!/usr/bin/env bash
# Reading revisions through `rbdelta mount`, against the same bytes as a
# plain raw file on the same disk:
#
#   sequential   dd bs=4M of a revision that lives on a full plus 5 deltas,
#                cold cache (page cache dropped), vs dd of a raw copy of it
#   random       4 KiB preads at random offsets (readahead off), warm
#                (the archive's files in the page cache, the mount's own
#                pages not): p50/p99/max
#   memory       the mount's peak RSS after all of the above, and after
#                random reads and a SEEK_DATA/SEEK_HOLE walk of a 1 TiB
#                sparse image whose newest revision sits on a full plus
#                DEEP_CHAIN deltas
#
# Env: IMAGE_MIB (default 2048), RUNS (default 9: every run counts, ranges
# and medians reported), DEEP_CHAIN (default 30), BENCH_DIR (default under /var/tmp,
# the same disk for archive and raw file).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_MIB=${IMAGE_MIB:-2048}
RUNS=${RUNS:-9}
DEEP=${DEEP_CHAIN:-30}

. bench/lib.sh
mountpid=
bench_before_cleanup() {
  [ -n "$mountpid" ] && kill "$mountpid" 2>/dev/null && wait "$mountpid" 2>/dev/null
  mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -u "$work/mnt"
}
# each delta round clones the objects it touches until the next backup
# drops its snapshot, and a memstore OSD trims those clones slowly
bench_start mount $((IMAGE_MIB * 2 / 1024 + 6))
bench_config '  - pool: rbd
    image: seq
  - pool: rbd
    image: deep'
secs() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -n 1; }
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{r[NR]=$1} END{printf "%.2f", (NR%2 ? r[(NR+1)/2] : (r[NR/2]+r[NR/2+1])/2)}'; }
span() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk 'NR==1{mn=$1} {mx=$1} END{if (mn==mx) printf "%.2f", mn; else printf "%.2f-%.2f", mn, mx}'; }

echo "bench: a ${IMAGE_MIB} MiB image, fully written, then 5 deltas" >&2
"$py" "$samples" random rbd seq "$IMAGE_MIB" "$IMAGE_MIB" 1
"$bin" --no-progress backup seq >/dev/null
for i in 1 2 3 4 5; do
  # in the last 512 MiB: each round clones only the objects it touches,
  # and a memstore OSD trims the old snapshot's clones slowly
  "$py" "$samples" scatter rbd seq 2000 $((i + 10)) $((IMAGE_MIB - 512))
  "$bin" --no-progress backup seq >/dev/null
done
"$bin" --no-progress restore seq --to-file "$work/raw.img" >/dev/null

echo "bench: a 1 TiB sparse image with a full and $DEEP deltas" >&2
rbd -c "$CEPH_CONF" create --size 1T rbd/deep
for i in $(seq 0 "$DEEP"); do
  "$py" "$samples" scatter rbd deep 50 $((i + 100))
  "$bin" --no-progress backup deep >/dev/null
done

# the mount needs no cluster: stop it, so its background work (a memstore
# OSD trimming 35 snapshots' clones) takes no CPU from the measurements
rbd-fixtures/cluster.sh stop "$work/cluster" >/dev/null

mkdir -p "$work/mnt"
"$bin" mount "$work/mnt" & mountpid=$!
for _ in $(seq 100); do [ -e "$work/mnt/deep/latest.img" ] && break; sleep 0.1; done
echo "bench: the mount's readahead is $(cat "/sys/class/bdi/$(mountpoint -d "$work/mnt")/read_ahead_kb") KiB" >&2

declare -A t
# pairs back to back, in turn raw first and mount first: this disk's
# speed drifts by 2x from one minute to the next
for run in $(seq "$RUNS"); do
  for side in $( ((run % 2)) && echo raw mnt || echo mnt raw); do
    [ "$side" = raw ] && f="$work/raw.img" || f="$work/mnt/seq/latest.img"
    drop_caches; t[$side]+=" $(secs dd if="$f" of=/dev/null bs=4M)"
  done
done
cmp "$work/raw.img" "$work/mnt/seq/latest.img"
# warm: the archive's files (and the raw file) in the page cache, but not
# the mount's own pages (it keeps them across opens: a revision never
# changes), so each read goes through rbdelta
# (the deep volume's full is a 1 TiB sparse file: only its index and deltas)
warm_archive() {
  drop_caches
  cat "$work"/archive/seq/data/* "$work"/archive/deep/data/*.{fidx,delta} "$work/raw.img" > /dev/null
}
for run in $(seq "$RUNS"); do
  warm_archive
  t[rawwarm]+=" $(secs dd if="$work/raw.img" of=/dev/null bs=4M)"
  t[mntwarm]+=" $(secs dd if="$work/mnt/seq/latest.img" of=/dev/null bs=4M)"
done

warm_archive
randoms() {
  "$py" - "$1" "$2" <<'PY'
import os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
size = os.fstat(fd).st_size
rng = random.Random(7)
lat = []
for _ in range(n):
    off = rng.randrange(0, size // 4096) * 4096
    t = time.perf_counter()
    os.pread(fd, 4096, off)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"{lat[len(lat) // 2]:.3f} {lat[int(len(lat) * 0.99)]:.3f} {lat[-1]:.3f}")
PY
}
read -r p50 p99 pmax < <(randoms "$work/mnt/seq/latest.img" 20000)
rss_seq=$(awk '/VmHWM/{print $2}' "/proc/$mountpid/status")

# the deep chain: random reads and a walk of its data regions
warm_archive
read -r dp50 dp99 dpmax < <(randoms "$work/mnt/deep/latest.img" 5000)
walk=$("$py" - "$work/mnt/deep/latest.img" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size, pos, data = os.fstat(fd).st_size, 0, 0
t = time.perf_counter()
while pos < size:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    while start < end:
        n = len(os.pread(fd, min(1 << 20, end - start), start))
        data += n
        start += n
    pos = end
print(f"{data >> 20} {time.perf_counter() - t:.2f}")
PY
)
rss_all=$(awk '/VmHWM/{print $2}' "/proc/$mountpid/status")
kill -TERM "$mountpid"; wait "$mountpid"; mountpid=

raw=$(span "${t[raw]}"); mnt=$(span "${t[mnt]}")
# each run's pair (raw, mount) back to back: the ratio of a pair, its
# median over the runs and their range
pct=$(awk -v a="${t[raw]}" -v b="${t[mnt]}" 'BEGIN{n=split(a,x," "); split(b,y," "); for (i=1;i<=n;i++) print 100*x[i]/y[i]}' |
  sort -g | awk '{r[NR]=$1} END{m=(NR%2 ? r[(NR+1)/2] : (r[NR/2]+r[NR/2+1])/2); printf "median %.0f %% (runs %.0f-%.0f %%)", m, r[1], r[NR]}')
echo
echo "sequential, cold, dd bs=4M of ${IMAGE_MIB} MiB (full + 5 deltas), $RUNS run(s):"
echo "  raw file ${raw} s (median $(median "${t[raw]}")), through the mount ${mnt} s (median $(median "${t[mnt]}")):"
echo "  the mount reads at ${pct} of the raw file's speed"
echo "sequential, warm (archive in the page cache): raw file $(span "${t[rawwarm]}") s, through the mount $(span "${t[mntwarm]}") s"
echo "random 4 KiB preads, warm, 20000: p50 ${p50} ms, p99 ${p99} ms, max ${pmax} ms"
read -r walked walk_s <<<"$walk"
echo "1 TiB sparse image, full + $DEEP deltas: 5000 random 4 KiB reads p50 ${dp50} ms, p99 ${dp99} ms;"
echo "  SEEK_DATA/SEEK_HOLE walk reading its ${walked} MiB of data: ${walk_s} s"
echo "mount peak RSS: $((rss_seq / 1024)) MiB after the ${IMAGE_MIB} MiB image, $((rss_all / 1024)) MiB after the 1 TiB one too"
