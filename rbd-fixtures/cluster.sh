#!/usr/bin/env bash
# cluster.sh — a throwaway single-node Ceph cluster (one mon, one memstore OSD,
# no mgr) for tests. Everything lives in one directory; several clusters may run
# at once in different directories.
#
#   cluster.sh start DIR [--memstore-gib N | --bluestore-gib N] [--cephx] [--cephfs]
#                                             bring up; writes DIR/ceph.conf;
#                                             --cephfs adds an MDS and a
#                                             CephFS mounted at DIR/cephfs
#                                             through ceph-fuse
#   cluster.sh stop DIR                       kill the daemons, remove DIR
#   cluster.sh status DIR                     show daemon pids and cluster health
#   cluster.sh pause|resume|kill|restart DIR osd|mon
#                                             fault injection: SIGSTOP, SIGCONT,
#                                             SIGKILL, or start the dead daemon again
#                                             (an OSD paused past the heartbeat
#                                             grace is marked down on resume, as
#                                             its peers would have had it)
#
# Progress goes to stderr; stdout stays empty. Clients use `-c DIR/ceph.conf`.
# Auth is off unless --cephx: then ceph.conf names DIR/admin.keyring
# (client.admin, for fixtures), and DIR/rbdelta.keyring holds the least-
# privileged client.rbdelta (mon 'profile rbd' osd 'profile rbd pool=rbd'),
# the client rbdelta's tests run as.
set -euo pipefail

PROG=${0##*/}
READY_TIMEOUT=${CLUSTER_READY_TIMEOUT:-60} # seconds for the whole bring-up
CLIENT_TIMEOUT=30                           # client op/mount timeouts (seconds)

log() { echo "$PROG: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
usage() {
    sed -n '5,11p' "$0" | sed 's/^# *//' >&2
    exit 2
}

# A TCP port nobody on 127.0.0.1 listens on right now.
free_port() {
    python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

# ceph CLI against this cluster, never waiting forever.
cephc() { timeout 30 ceph -c "$DIR/ceph.conf" --connect-timeout 15 "$@"; }

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

daemon_pids() {
    local f
    for f in "$DIR"/run/*.pid; do
        [[ -e $f ]] && cat "$f"
    done
    return 0
}

kill_daemons() {
    local pids pid i
    pids=$(daemon_pids)
    [[ -z $pids ]] && return 0
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    for i in $(seq 1 100); do # up to 10 s for a clean exit
        local alive=0
        for pid in $pids; do pid_alive "$pid" && alive=1; done
        ((alive == 0)) && return 0
        sleep 0.1
    done
    for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
    sleep 0.2
}

write_conf() {
    local fsid=$1 port=$2 bytes=$3 auth=$4 store=$5
    cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public network = 127.0.0.0/8
auth cluster required = $auth
auth service required = $auth
auth client required = $auth
$([[ $auth == cephx ]] && echo "keyring = $DIR/admin.keyring")
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1
$(store_conf "$store" "$bytes")
run dir = $DIR/run
rados osd op timeout = $CLIENT_TIMEOUT
rados mon op timeout = $CLIENT_TIMEOUT
client mount timeout = $CLIENT_TIMEOUT

[mon]
# Snapshot create/remove wait for an osdmap change, which the mon proposes
# once per paxos interval (1 s by default): a short one keeps tests quick.
paxos propose interval = 0.05
paxos min wait = 0.01
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
mon data = $DIR/mon/\$id

[osd]
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
osd data = $DIR/osd/\$id
osd journal = $DIR/osd/\$id/journal
keyring = $DIR/osd/\$id/keyring

[mds]
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
mds data = $DIR/mds/\$id
keyring = $DIR/mds/\$id/keyring
EOF
}

# The OSD's object store: memstore (RAM, the default: fast, but gone when
# the OSD dies) or bluestore on a sparse file under DIR (survives a kill, so
# the OSD can be restarted with its data; slower).
store_conf() {
    local store=$1 bytes=$2
    if [[ $store == memstore ]]; then
        printf 'osd objectstore = memstore\nmemstore device bytes = %s\n' "$bytes"
    else
        printf 'osd objectstore = bluestore\nbluestore block path = %s\n' "$DIR/osd/\$id.block"
        printf 'bluestore block create = true\nbluestore block size = %s\n' "$bytes"
        printf 'bluestore block db create = false\nbluestore block wal create = false\n'
        printf 'osd memory target = 1073741824\nbluestore cache autotune = false\n'
        printf 'bluestore cache size = 134217728\nbluestore fsck on mkfs = false\n'
    fi
}

# cephx: the mon's keyring (with client.admin's key in it) and the admin's.
make_keys() {
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' &&
        ceph-authtool --create-keyring "$DIR/admin.keyring" --gen-key -n client.admin \
            --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' &&
        ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/admin.keyring" &&
        chmod 600 "$DIR/mon.keyring" "$DIR/admin.keyring"
}

# On a failed start: show why, then leave nothing behind.
# Unmounts DIR/cephfs if mounted: rm -rf must not reach into CephFS, and a
# killed ceph-fuse would leave a dead mount point behind.
unmount_cephfs() {
    if mountpoint -q "$DIR/cephfs" 2>/dev/null; then
        fusermount3 -u "$DIR/cephfs" 2>/dev/null || umount -l "$DIR/cephfs" 2>/dev/null || true
    fi
    # ceph-fuse may outlive its unmounted mount point (seen after CI runs,
    # ignoring SIGTERM): up to 5 s to exit, then SIGKILL
    local pat="ceph-fuse -c $DIR/ceph.conf" i
    pkill -f -- "$pat" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        pgrep -f -- "$pat" >/dev/null || return 0
        sleep 0.1
    done
    pkill -9 -f -- "$pat" 2>/dev/null || true
}

fail_start() {
    local f
    log "start failed: $*"
    for f in "$DIR"/log/*.log; do
        [[ -e $f ]] || continue
        log "---- tail of $f ----"
        tail -n 25 "$f" >&2 || true
    done
    unmount_cephfs
    kill_daemons
    rm -rf "$DIR"
    exit 1
}

# Waits until every PG of the cluster is active+clean, as reported by the OSD
# itself (there is no mgr, so `ceph -s` cannot tell).
wait_clean() {
    local deadline=$1 osd=$2 out
    while :; do
        out=$(timeout 10 ceph --admin-daemon "$DIR/run/osd.$osd.asok" status 2>/dev/null || true)
        if [[ $out == *'"state": "active"'* ]] && pgs_clean "$osd"; then
            return 0
        fi
        ((SECONDS < deadline)) || fail_start "PGs not active+clean after ${READY_TIMEOUT}s"
        sleep 0.2
    done
}

# True when the OSD hosts the pool's PGs and all of them are active+clean.
pgs_clean() {
    local osd=$1
    timeout 10 ceph --admin-daemon "$DIR/run/osd.$osd.asok" dump_pgstate_history 2>/dev/null |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
pgs = d.get("pgs", d) if isinstance(d, dict) else d
states = {}
for p in pgs:
    states[p["pg"]] = p.get("currently", "")
want = int(sys.argv[1])
ok = len(states) >= want and all(s == "Started/Primary/Active/Clean" for s in states.values())
sys.exit(0 if ok else 1)
' "$PGS" 2>/dev/null
}

cmd_start() {
    local gib=2 auth=none store=memstore cephfs=0
    [[ $# -ge 1 ]] || usage
    DIR=$1
    shift
    while [[ $# -gt 0 ]]; do
        case $1 in
        --cephx)
            auth=cephx
            shift
            ;;
        --cephfs)
            cephfs=1
            shift
            ;;
        --memstore-gib | --bluestore-gib)
            [[ ${2:-} =~ ^[0-9]+$ && $2 -ge 1 ]] || die "$1 needs a positive integer"
            gib=$2
            store=${1#--}
            store=${store%-gib}
            shift 2
            ;;
        *) die "unknown option: $1" ;;
        esac
    done
    for tool in ceph ceph-mon monmaptool ceph-osd ceph-authtool rbd rados uuidgen python3 timeout; do
        command -v "$tool" >/dev/null || die "$tool not found (run rbd-fixtures/install-deps.sh)"
    done
    if [[ -e $DIR ]] && [[ -n $(ls -A "$DIR" 2>/dev/null) ]]; then
        die "$DIR exists and is not empty"
    fi
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/mon/a" "$DIR/osd"
    trap 'fail_start "interrupted or unexpected error (line $LINENO)"' ERR INT TERM

    local deadline=$((SECONDS + READY_TIMEOUT)) fsid port osd
    fsid=$(uuidgen)
    port=$(free_port)
    PGS=32
    write_conf "$fsid" "$port" $((gib * 1024 * 1024 * 1024)) "$auth" "$store"
    log "mon on 127.0.0.1:$port, $store ${gib} GiB, auth $auth, dir $DIR"
    local monkeys=()
    if [[ $auth == cephx ]]; then
        make_keys >>"$DIR/log/mkfs.log" 2>&1 || fail_start "ceph-authtool failed"
        monkeys=(--keyring "$DIR/mon.keyring")
    fi

    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$DIR/monmap" \
        >>"$DIR/log/mkfs.log" 2>&1 || fail_start "monmaptool failed"
    ceph-mon --id a --mkfs --mon-data "$DIR/mon/a" --monmap "$DIR/monmap" -c "$DIR/ceph.conf" \
        "${monkeys[@]}" >>"$DIR/log/mkfs.log" 2>&1 || fail_start "ceph-mon --mkfs failed"
    ceph-mon --id a -c "$DIR/ceph.conf" --public-addr "v2:127.0.0.1:$port" \
        >>"$DIR/log/daemons.log" 2>&1 || fail_start "ceph-mon did not start"

    osd=$(cephc osd create 2>>"$DIR/log/daemons.log") || fail_start "ceph osd create failed"
    [[ $osd =~ ^[0-9]+$ ]] || fail_start "ceph osd create printed '$osd'"
    mkdir -p "$DIR/osd/$osd"
    if [[ $auth == cephx ]]; then
        cephc auth get-or-create "osd.$osd" osd 'allow *' mon 'allow profile osd' \
            -o "$DIR/osd/$osd/keyring" >>"$DIR/log/mkfs.log" 2>&1 || fail_start "ceph auth osd key failed"
    fi
    ceph-osd --id "$osd" --mkfs --osd-data "$DIR/osd/$osd" -c "$DIR/ceph.conf" \
        >>"$DIR/log/mkfs.log" 2>&1 || fail_start "ceph-osd --mkfs failed"
    ceph-osd --id "$osd" -c "$DIR/ceph.conf" >>"$DIR/log/daemons.log" 2>&1 ||
        fail_start "ceph-osd did not start"
    log "mon and osd.$osd started; creating pool rbd"

    cephc osd pool create rbd "$PGS" >/dev/null 2>&1 || fail_start "pool create failed"
    cephc osd pool application enable rbd rbd >/dev/null 2>&1 ||
        fail_start "pool application enable failed"
    wait_clean "$deadline" "$osd"
    timeout 30 rbd -c "$DIR/ceph.conf" pool init rbd >>"$DIR/log/daemons.log" 2>&1 ||
        fail_start "rbd pool init failed"
    if [[ $auth == cephx ]]; then
        # what docs/CONFIG.md tells operators to create
        cephc auth get-or-create client.rbdelta mon 'profile rbd' osd 'profile rbd pool=rbd' \
            -o "$DIR/rbdelta.keyring" >>"$DIR/log/mkfs.log" 2>&1 ||
            fail_start "ceph auth get-or-create client.rbdelta failed"
        chmod 600 "$DIR/rbdelta.keyring"
    fi
    ((cephfs)) && start_cephfs "$deadline" "$auth"
    trap - ERR INT TERM
    log "ready in ${SECONDS}s: $DIR/ceph.conf"
}

# An MDS (mds.a) and a file system on two new pools, mounted at DIR/cephfs
# by ceph-fuse as client.admin.
start_cephfs() {
    local deadline=$1 auth=$2
    for tool in ceph-mds ceph-fuse fusermount3; do
        command -v "$tool" >/dev/null || fail_start "$tool not found (run rbd-fixtures/install-deps.sh)"
    done
    mkdir -p "$DIR/mds/a" "$DIR/cephfs"
    cephc osd pool create cephfs_meta 8 >/dev/null 2>&1 || fail_start "pool create cephfs_meta failed"
    cephc osd pool create cephfs_data 8 >/dev/null 2>&1 || fail_start "pool create cephfs_data failed"
    cephc fs new cephfs cephfs_meta cephfs_data >>"$DIR/log/mkfs.log" 2>&1 || fail_start "ceph fs new failed"
    if [[ $auth == cephx ]]; then
        cephc auth get-or-create mds.a mon 'allow profile mds' osd 'allow rwx' mds 'allow' \
            -o "$DIR/mds/a/keyring" >>"$DIR/log/mkfs.log" 2>&1 || fail_start "ceph auth mds key failed"
    fi
    ceph-mds --id a -c "$DIR/ceph.conf" >>"$DIR/log/daemons.log" 2>&1 || fail_start "ceph-mds did not start"
    until cephc mds stat 2>/dev/null | grep -q 'up:active'; do
        ((SECONDS < deadline)) || fail_start "the MDS did not become active (log: $DIR/log/mds.a.log)"
        sleep 0.5
    done
    ceph-fuse -c "$DIR/ceph.conf" --id admin "$DIR/cephfs" >>"$DIR/log/daemons.log" 2>&1 ||
        fail_start "ceph-fuse did not mount $DIR/cephfs"
    mountpoint -q "$DIR/cephfs" || fail_start "$DIR/cephfs is not mounted"
    log "CephFS mounted at $DIR/cephfs (mds.a, ceph-fuse)"
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    DIR=$1
    if [[ ! -d $DIR ]]; then
        log "$DIR does not exist; nothing to stop"
        return 0
    fi
    [[ -f $DIR/ceph.conf || -d $DIR/run ]] || die "$DIR does not look like a cluster dir"
    unmount_cephfs # first
    kill_daemons
    rm -rf "$DIR"
    log "stopped and removed $DIR"
}

cmd_status() {
    [[ $# -eq 1 ]] || usage
    DIR=$1
    [[ -f $DIR/ceph.conf ]] || die "no cluster in $DIR"
    local f pid rc=0
    for f in "$DIR"/run/*.pid; do
        [[ -e $f ]] || continue
        pid=$(cat "$f")
        if pid_alive "$pid"; then
            echo "$(basename "$f" .pid): running (pid $pid)"
        else
            echo "$(basename "$f" .pid): dead (pid $pid)"
            rc=1
        fi
    done
    cephc -s 2>/dev/null || rc=1
    return $rc
}

# The pid file of daemon kind $1 (osd or mon) of the cluster in $DIR.
pid_file() {
    case $1 in
    osd) echo "$DIR/run/osd.0.pid" ;;
    mon) echo "$DIR/run/mon.a.pid" ;;
    *) die "no daemon '$1' (osd or mon)" ;;
    esac
}

# Seconds an OSD may stop answering its peers' heartbeats before they report
# it and the mon marks it down (Ceph's osd_heartbeat_grace default).
HEARTBEAT_GRACE=20

# SIGCONT to daemon kind $1 (pid $2). An OSD paused for longer than the
# heartbeat grace is first marked down, which is what its peers would have
# had the mon do in a cluster of several OSDs; a lone OSD has no peers to
# report it. Once it runs again it sees itself marked down, boots and
# re-peers, as a stalled OSD of a real cluster does. Without that, its PGs
# come back past their read lease (0.8 of the grace): any PG an op reaches
# before the lease is renewed turns "laggy" and parks its ops, and in CI
# (2026-11-30, 2026-12-01) a PG of a lone OSD sometimes answered nothing for
# over two minutes after a 45 s pause. Returns once the OSD is up again and
# a listing of pool rbd (every PG) answers.
resume() {
    local what=$1 pid=$2 since paused
    since=$(cat "$DIR/run/$what.paused" 2>/dev/null || date +%s)
    rm -f "$DIR/run/$what.paused"
    paused=$(($(date +%s) - since))
    if [[ $what != osd ]] || ((paused < HEARTBEAT_GRACE)); then
        kill -CONT "$pid"
        return 0
    fi
    cephc osd down 0 >>"$DIR/log/daemons.log" 2>&1 || die "ceph osd down 0 failed"
    kill -CONT "$pid"
    local deadline=$((SECONDS + READY_TIMEOUT))
    until cephc osd dump 2>/dev/null | grep -q '^osd\.0 up' &&
        timeout 15 rados -c "$DIR/ceph.conf" --rados-osd-op-timeout 5 -p rbd ls >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "osd.0 serves no listing ${READY_TIMEOUT}s after it was resumed"
        sleep 0.5
    done
    log "osd paused for ${paused}s (over the ${HEARTBEAT_GRACE}s heartbeat grace): marked down, resumed, re-peered"
}

# pause|resume|kill|restart DIR osd|mon
cmd_fault() {
    local what=$1 pid f
    [[ $# -eq 3 ]] || usage
    DIR=$2
    [[ -f $DIR/ceph.conf ]] || die "no cluster in $DIR"
    f=$(pid_file "$3")
    pid=$(cat "$f" 2>/dev/null || true)
    case $what in
    pause)
        pid_alive "$pid" && kill -STOP "$pid" || die "$3 is not running"
        date +%s >"$DIR/run/$3.paused"
        ;;
    resume)
        pid_alive "$pid" || die "$3 is not running"
        resume "$3" "$pid"
        ;;
    kill)
        pid_alive "$pid" || die "$3 is not running"
        kill -9 "$pid"
        while pid_alive "$pid"; do sleep 0.05; done
        rm -f "$f"
        ;;
    restart)
        pid_alive "$pid" && die "$3 is still running (pid $pid)"
        if [[ $3 == mon ]]; then
            local addr
            addr=$(sed -n 's/^mon host = //p' "$DIR/ceph.conf")
            ceph-mon --id a -c "$DIR/ceph.conf" --public-addr "$addr" \
                >>"$DIR/log/daemons.log" 2>&1 || die "ceph-mon did not start"
        else
            # a memstore OSD keeps its objects in memory: a restarted one
            # would come back empty, which is a different fault
            grep -q '^osd objectstore = memstore' "$DIR/ceph.conf" &&
                die "a memstore OSD cannot restart with its data (start the cluster with --bluestore-gib, or pause and resume it)"
            ceph-osd --id 0 -c "$DIR/ceph.conf" >>"$DIR/log/daemons.log" 2>&1 ||
                die "ceph-osd did not start"
            # back in service (its PGs active+clean again) before returning
            PGS=32
            wait_clean $((SECONDS + READY_TIMEOUT)) 0
        fi
        log "$3 restarted"
        ;;
    esac
}

case ${1:-} in
pause | resume | kill | restart) cmd_fault "$@" ;;
start) shift && cmd_start "$@" ;;
stop) shift && cmd_stop "$@" ;;
status) shift && cmd_status "$@" ;;
*) usage ;;
esac
