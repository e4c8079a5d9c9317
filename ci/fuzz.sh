#!/usr/bin/env bash
# Long fuzz runs (the normal suite runs a short smoke of each target):
#   - tests/fuzz_parsers.rs: every parser of on-disk data and user input,
#     CASES per target (default 10,000,000), built with overflow checks
#     and debug assertions on (profile `fuzz`);
#   - tests/hostile_files.rs: damaged archives through restore and verify,
#     ARCHIVE_CASES (default 20,000; each builds and restores an archive).
#
#   ci/fuzz.sh                 # everything, about an hour on 2 cores
#   CASES=100000 ci/fuzz.sh
#   FUZZ_SEED=7 ci/fuzz.sh     # another sequence of cases
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_CASES=${CASES:-10000000}
export PROPTEST_CASES=${ARCHIVE_CASES:-20000}
echo "fuzz: $FUZZ_CASES cases per parser target, $PROPTEST_CASES damaged archives" >&2
time cargo test --profile fuzz --test fuzz_parsers -- --nocapture
time cargo test --profile fuzz --test hostile_files
