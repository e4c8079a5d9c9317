#!/usr/bin/env bash
# Long runs of the hostile-file property tests (CI runs a short smoke of
# each in the normal suite). CASES per target, default 100000.
#
#   ci/fuzz.sh            # every target
#   CASES=5000 ci/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES=${CASES:-100000}
echo "fuzz: $PROPTEST_CASES cases per target" >&2
time cargo test --release --test hostile_files --test hostile_config
