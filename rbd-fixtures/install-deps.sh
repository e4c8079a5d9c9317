#!/usr/bin/env bash
# install-deps.sh — installs what the Ceph test tier needs: a single-node
# cluster (mon, osd, CLI), the librbd/librados headers and libraries the
# crate links against, FUSE and filesystem checkers, and the Python bindings
# used to write test data. Idempotent: when everything is installed it only
# asks dpkg and exits. Needs root (or sudo) when something is missing.
set -euo pipefail

PACKAGES=(
    ceph-mon ceph-osd ceph-common
    librbd-dev librados-dev
    fuse3 e2fsprogs xfsprogs btrfs-progs dosfstools fdisk bubblewrap
    python3-rbd python3-rados
    man-db
    ceph-mds ceph-fuse
)

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps.sh: all ${#PACKAGES[@]} packages present" >&2
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
        echo "install-deps.sh: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    }
    SUDO=(sudo)
fi

echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps.sh: done" >&2
