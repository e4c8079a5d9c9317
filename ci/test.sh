#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts a throwaway Ceph
# cluster (mon + memstore OSD on loopback), runs every test against it, and
# stops the cluster again, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

rbd-fixtures/install-deps.sh
dir=$(mktemp -d /tmp/rbdelta-test.XXXXXX)
cleanup() { rbd-fixtures/cluster.sh stop "$dir" || true; }
trap cleanup EXIT
rbd-fixtures/cluster.sh start "$dir" --memstore-gib 4

export RBDELTA_TEST_CEPH_CONF="$dir/ceph.conf"
export RBDELTA_REQUIRE_CLUSTER=1
cargo build --release --quiet
cargo test --release --all-targets "$@"
