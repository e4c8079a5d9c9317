#!/usr/bin/env bash
# The demo: a throwaway cluster, sample images (one holding an ext4
# filesystem), a first backup with progress bars, changes, a second
# (incremental) backup, a restore of the latest revision into a new image,
# proof that the restored image verifies and its filesystem is clean, every
# revision under `rbdelta mount` with a file-level restore from it, and
# `rbdelta fsck` of the filesystems inside every revision.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# in_mounted IMAGE CMD...: loop-mounts IMAGE read-only on $work/mnt, runs CMD
# there, unmounts. (noload: a crash-consistent snapshot's journal is left
# alone, as a read-only device cannot replay it.)
in_mounted() {
  local img=$1; shift
  mkdir -p "$work/mnt"
  loopdev=$(losetup -r -f --show "$img")
  mount -o ro,noload "$loopdev" "$work/mnt"
  (cd "$work/mnt" && "$@")
  umount "$work/mnt"
  losetup -d "$loopdev"; loopdev=
}

step "installing packages (if missing) and building rbdelta"
rbd-fixtures/install-deps.sh
cargo build --release --quiet
rbdelta="${CARGO_TARGET_DIR:-$here/target}/release/rbdelta"

work=$(mktemp -d /tmp/rbdelta-demo.XXXXXX)
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"
  [ -n "${loopdev:-}" ] && losetup -d "$loopdev" 2>/dev/null || true
  if [ -n "${mountpid:-}" ]; then kill "$mountpid" 2>/dev/null; wait "$mountpid" 2>/dev/null || true; fi
  mountpoint -q "$work/fuse" 2>/dev/null && fusermount3 -u "$work/fuse"
  rbd-fixtures/cluster.sh stop "$work/cluster" || true
  rm -rf "$work"
}
trap cleanup EXIT

step "starting a throwaway Ceph cluster in $work/cluster"
rbd-fixtures/cluster.sh start "$work/cluster" --memstore-gib 3
export CEPH_CONF="$work/cluster/ceph.conf"
samples="rbd-fixtures/sample-images.py"
py=/usr/bin/python3  # Debian's python3, which has python3-rados

step "creating sample images"
"$py" "$samples" random rbd db1 512 192 1
"$py" "$samples" random rbd web1 256 64 2
for i in 1 2 3 4; do "$py" "$samples" random rbd "vm-$i" 128 48 $((10 + i)); done
mkdir -p "$work/fs"
for i in $(seq 1 20); do head -c $((i * 100000)) /dev/urandom > "$work/fs/file$i.bin"; done
echo "hello from the first backup" > "$work/fs/README.txt"
truncate -s 128M "$work/fs.img"
mkfs.ext4 -q -F -d "$work/fs" "$work/fs.img"
"$py" "$samples" from-file rbd fs1 "$work/fs.img"
rbd -c "$CEPH_CONF" ls -l rbd

cat > "$work/config.yaml" <<YAML
ceph:
  conf: $CEPH_CONF
archive: $work/archive
defaults:
  parallel: 3                 # volumes backed up at once
  schedule: "0 1 * * *"       # nightly, for rbdelta daemon (and rbdelta check)
volumes:
  - pool: rbd                 # a pool selection: every vm-* image
    include: ["vm-*"]
  - pool: rbd
    image: db1
  - pool: rbd
    image: web1
  - name: files
    pool: rbd
    image: fs1
YAML
export RBDELTA_CONFIG="$work/config.yaml"

step "checking the config against the cluster (the selection resolves to vm-1..vm-4)"
"$rbdelta" config check --cluster

step "first backup of every volume, three at a time (fulls)"
"$rbdelta" backup --all

step "changing the images: scattered writes, a grow, new files in the filesystem"
"$py" "$samples" scatter rbd db1 300 3
"$py" "$samples" resize rbd web1 320
"$py" "$samples" scatter rbd web1 50 4
echo "hello from the second backup" > "$work/fs/README.txt"
head -c 3000000 /dev/urandom > "$work/fs/new.bin"
truncate -s 128M "$work/fs2.img"
mkfs.ext4 -q -F -d "$work/fs" "$work/fs2.img"
"$py" "$samples" overwrite rbd fs1 "$work/fs2.img"

step "second backup (deltas: only the changed blocks)"
"$rbdelta" backup --all

step "revisions of the filesystem volume"
"$rbdelta" list files

step "verifying the whole archive of every volume"
for v in db1 web1 files vm-1 vm-2 vm-3 vm-4; do "$rbdelta" verify "$v"; done

step "what monitoring sees: status, the Nagios check, the operation log"
"$rbdelta" status
"$rbdelta" check
"$rbdelta" log -n 8

step "restoring the latest revision of 'files' into a new image rbd/fs1-restored"
"$rbdelta" restore files --to-image rbd/fs1-restored

step "checking the restored image: same bytes as the source, clean filesystem"
rbd -c "$CEPH_CONF" export --no-progress rbd/fs1-restored "$work/restored.img"
rbd -c "$CEPH_CONF" export --no-progress rbd/fs1 "$work/source.img"
cmp "$work/source.img" "$work/restored.img" && echo "restored image is byte-identical to the source"
e2fsck -n -f "$work/restored.img"
in_mounted "$work/restored.img" cat README.txt

step "a full in the archive is a plain raw image: loop-mount it straight from the archive"
full=$(ls "$work"/archive/files/data/*.full | head -n 1)
ls -ls "$full"
in_mounted "$full" ls -C

step "the first revision is still there: restore it to a file and mount it"
first=$("$rbdelta" list files --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
"$rbdelta" restore files --revision "${first:0:12}" --to-file "$work/first.img"
in_mounted "$work/first.img" cat README.txt

step "rbdelta mount: every revision as a read-only image file, nothing restored"
mkdir -p "$work/fuse"
"$rbdelta" mount "$work/fuse" files & mountpid=$!
for _ in $(seq 50); do [ -d "$work/fuse/files" ] && break; sleep 0.1; done
ls -l "$work/fuse/files" "$work/fuse/files/by-time"

step "a file-level restore: loop-mount the first revision through the mount, copy one file out"
in_mounted "$work/fuse/files/$first.img" cat README.txt
kill -TERM "$mountpid"; wait "$mountpid"; mountpid=

step "rbdelta fsck: e2fsck of the filesystem inside every revision (journals replayed in a throwaway overlay)"
"$rbdelta" fsck files --all
"$rbdelta" status

step "demo finished: every step above verified checksums"
