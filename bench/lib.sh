# Sourced by every benchmark: packages, a release build, a work directory
# (BENCH_DIR, or a fresh one under /var/tmp: the same disk the archive and
# any raw file use) and a throwaway cluster, all removed on exit.

# bench_start NAME MEMSTORE_GIB: sets bin, py, samples, work, CEPH_CONF.
# With BENCH_BLUESTORE_GIB set, the OSD is bluestore on a sparse file of
# that size in the work directory instead (data larger than memory; its
# writes then go to this disk). With BENCH_CEPHFS set, the cluster also
# has a CephFS, mounted at $work/cluster/cephfs.
bench_start() {
  rbd-fixtures/install-deps.sh
  command -v /usr/bin/time >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
  command -v fio >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-$PWD/target}/release/rbdelta"  # where cargo just built it
  py=/usr/bin/python3
  samples="$PWD/rbd-fixtures/sample-images.py"
  work=${BENCH_DIR:-$(mktemp -d "/var/tmp/rbdelta-$1.XXXXXX")}
  mkdir -p "$work"
  trap bench_cleanup EXIT
  if [[ -n ${BENCH_BLUESTORE_GIB:-} ]]; then
    rbd-fixtures/cluster.sh start "$work/cluster" --bluestore-gib "$BENCH_BLUESTORE_GIB"
  else
    rbd-fixtures/cluster.sh start "$work/cluster" --memstore-gib "$2" ${BENCH_CEPHFS:+--cephfs}
  fi
  export CEPH_CONF="$work/cluster/ceph.conf"
}

# bench_config VOLUMES_YAML: writes $work/config.yaml (the cluster, the
# archive under $work, and the given `volumes:` entries) and exports
# RBDELTA_CONFIG.
bench_config() {
  cat > "$work/config.yaml" <<YAML
ceph:
  conf: $CEPH_CONF
archive: $work/archive
volumes:
$1
YAML
  export RBDELTA_CONFIG="$work/config.yaml"
}

# archive_apart: copies the archive to tmpfs (RAM, which drop_caches
# leaves alone), standing in for a backup host whose archive and restore
# target are on different disks, and sets `apart` to the command prefix
# that runs rbdelta against that copy: "${apart[@]}" "$bin" restore ...
archive_apart() {
  [[ -n ${shm:-} ]] && rm -rf "$shm"
  shm=$(mktemp -d /dev/shm/rbdelta-bench.XXXXXX)
  cp -a --sparse=always "$work/archive" "$shm/archive"
  sed "s|^archive: .*|archive: $shm/archive|" "$work/config.yaml" > "$work/config-apart.yaml"
  apart=(env RBDELTA_CONFIG="$work/config-apart.yaml")
}

# Runs bench_before_cleanup (if the script defines it), then stops the
# cluster and removes the work directory (and an archive_apart copy).
bench_cleanup() {
  if declare -F bench_before_cleanup >/dev/null; then bench_before_cleanup || true; fi
  [[ -n ${shm:-} ]] && rm -rf "$shm"
  rbd-fixtures/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true
  rm -rf "$work"
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

cached_kib() { awk '/^Cached:/ {print $2}' /proc/meminfo; }

# pin_cluster CPUS: runs the bench cluster's daemons (every thread) on
# CPUS only (taskset list, e.g. 0 or 0,1).
pin_cluster() {
  local f
  for f in "$work"/cluster/run/*.pid; do
    taskset -a -p -c "$1" "$(cat "$f")" >/dev/null 2>&1 || true
  done
}

# CPU time (clock ticks, user + system) the bench cluster's OSD has used.
osd_ticks() {
  local pid
  pid=$(cat "$work/cluster/run/osd.0.pid" 2>/dev/null) || { echo 0; return; }
  awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0
}

# measure NAME CMD...: drops the page cache, runs CMD under GNU time (its
# stdout kept in $work/out.NAME, its stderr shown), appends its seconds to
# secs[NAME], keeps the peak RSS (KiB) over all runs in rss[NAME] and the
# largest growth of the page cache (`Cached` in /proc/meminfo, KiB) over
# a run in cached[NAME]; appends the CPU seconds (user + system) of CMD
# and its children to cpu[NAME] and those the OSD spent meanwhile to
# osd_cpu[NAME]: on this 2-core host the OSD and the client share the CPU.
declare -A secs rss cached cpu osd_cpu
measure() {
  local name=$1; shift
  drop_caches
  local out="$work/time.$name" before osd0
  before=$(cached_kib)
  osd0=$(osd_ticks)
  /usr/bin/time -f '%e %M %U %S' -o "$out" "$@" > "$work/out.$name"
  local grew=$(( $(cached_kib) - before ))
  local osd=$(( $(osd_ticks) - osd0 ))
  read -r s m u sy < "$out"
  secs[$name]="${secs[$name]:-} $s"
  cpu[$name]="${cpu[$name]:-} $(awk "BEGIN{print $u + $sy}")"
  osd_cpu[$name]="${osd_cpu[$name]:-} $(awk -v t="$osd" -v hz="$(getconf CLK_TCK)" 'BEGIN{print t / hz}')"
  if [[ -z ${rss[$name]:-} ]] || ((m > rss[$name])); then rss[$name]=$m; fi
  if [[ -z ${cached[$name]:-} ]] || ((grew > cached[$name])); then cached[$name]=$grew; fi
}
