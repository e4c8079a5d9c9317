#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts a throwaway Ceph
# cluster (mon + memstore OSD on loopback), runs every test against it, and
# stops the cluster again, whatever happens.
#
# Cluster tests are #[ignore]d so that a plain `cargo test` shows them as
# not run; here they all run (--include-ignored), and RBDELTA_REQUIRE_CLUSTER
# turns any skip inside a test into a failure. The fault-injection feature
# compiles in the crash points the fault tests drive; the release binary
# built first (what operators install) must not contain them.
set -euo pipefail
cd "$(dirname "$0")/.."

rbd-fixtures/install-deps.sh

cargo build --release --quiet
if grep -q -a 'RBDELTA_TEST_' "${CARGO_TARGET_DIR:-target}/release/rbdelta"; then
    echo "ci/test.sh: the release binary contains test fault hooks" >&2
    exit 1
fi

# the Debian package: builds, unpacks where it belongs, runs, renders
dist/deb/test.sh

dir=$(mktemp -d /tmp/rbdelta-test.XXXXXX)
cleanup() { rbd-fixtures/cluster.sh stop "$dir" || true; }
trap cleanup EXIT
rbd-fixtures/cluster.sh start "$dir" --memstore-gib 4 --cephx --cephfs

# fixtures use client.admin (ceph.conf names its keyring); every command
# line test runs rbdelta as the least-privileged client.rbdelta
export RBDELTA_TEST_CEPH_CONF="$dir/ceph.conf"
export RBDELTA_TEST_CEPH_ID=rbdelta RBDELTA_TEST_CEPH_KEYRING="$dir/rbdelta.keyring"
export RBDELTA_REQUIRE_CLUSTER=1
# Arguments go to cargo test; test-binary arguments after a `--` of their own.
cargo_args=() test_args=() seen_sep=0
for a in "$@"; do
    if ((!seen_sep)) && [[ $a == -- ]]; then
        seen_sep=1
    elif ((seen_sep)); then
        test_args+=("$a")
    else
        cargo_args+=("$a")
    fi
done
cargo test --release --all-targets --features fault-injection "${cargo_args[@]}" \
    -- --include-ignored "${test_args[@]}"

# The CephFS tier (issue 13): end-to-end tests again with every temp dir,
# and so every archive, on the cluster's ceph-fuse mount. Skipped when
# arguments narrow the run.
if [[ $# -eq 0 ]]; then
    mkdir -p "$dir/cephfs/tmp"
    TMPDIR="$dir/cephfs/tmp" cargo test --release --features fault-injection \
        --test cluster_cli --test import_cli --test direct_io_cli --test in_place_cli \
        --test readers_cli --test scrub_cli --test export_cli --test export_diff_cli \
        --test fleet_cli --test kill_cli --test fsck_cli --test mount_cli --test daemon_cli \
        --test permissions_cli --test least_privilege_cli --test archive_eio_cli \
        --test full_disk_cli --test fault_cli --test tags_cli --test status_cli -- --include-ignored
fi
