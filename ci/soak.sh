#!/usr/bin/env bash
# The concurrent-operators soak (tests/soak_cli.rs) for SOAK_SECS seconds
# (default 600; the normal suite runs 20): backups, prunes, merges,
# verifies, restores and reads through a mount of one volume, all at once,
# on a throwaway cephx cluster as client.rbdelta, like ci/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECS=${SOAK_SECS:-600}
rbd-fixtures/install-deps.sh
dir=$(mktemp -d /tmp/rbdelta-soak.XXXXXX)
trap 'rbd-fixtures/cluster.sh stop "$dir" || true' EXIT
rbd-fixtures/cluster.sh start "$dir" --memstore-gib 4 --cephx
export RBDELTA_TEST_CEPH_CONF="$dir/ceph.conf" RBDELTA_REQUIRE_CLUSTER=1
export RBDELTA_TEST_CEPH_ID=rbdelta RBDELTA_TEST_CEPH_KEYRING="$dir/rbdelta.keyring"
cargo test --release --features fault-injection --test soak_cli -- --include-ignored --nocapture
