#!/usr/bin/env bash
# Robustness loop behind the README's "Known issues": RUNS runs of
# `backup --all --jobs 4` over FLEET_N small volumes (a few changed each
# run), counting from the fleet log every backup worker that died (librbd
# abort) or was killed (hung in librbd), and every backup that failed
# after its retry. Not a speed benchmark: it exists to count rare failures.
#
# Env: FLEET_N (default 50), RUNS (default 20), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${FLEET_N:-50}
RUNS=${RUNS:-20}

. bench/lib.sh
bench_start churn 4

name() { printf 'churn-%03d' "$1"; }
echo "churn: creating $N images of 16 MiB" >&2
for i in $(seq 1 "$N"); do "$py" "$samples" random rbd "$(name "$i")" 16 4 "$i"; done
bench_config '  - pool: rbd
    include: ["churn-*"]'

failed_runs=0
for run in $(seq "$RUNS"); do
  for i in $(seq 1 5); do "$py" "$samples" scatter rbd "$(name $(((run * 5 + i) % N + 1)))" 20 "$run$i"; done
  if ! "$bin" --no-progress backup --all --jobs 4 >/dev/null 2>"$work/err.$run"; then
    failed_runs=$((failed_runs + 1))
    tail -3 "$work/err.$run" >&2
  fi
done
"$bin" --no-progress verify --all >/dev/null

"$py" - "$work/archive/.rbdelta/log.jsonl" "$RUNS" "$N" "$failed_runs" <<'PY'
import json, sys
path, runs, n, failed_runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
recs = [json.loads(l) for l in open(path) if l.strip()]
backups = [r for r in recs if r.get("op") == "backup" and r.get("event") == "end"]
died = [r for r in backups if "backup worker died" in (r.get("error") or "")]
killed = [r for r in backups if "and was killed" in (r.get("error") or "")]
ok = [r for r in backups if r.get("outcome") == "ok"]
print(f"{runs} runs of backup --all over {n} volumes (the first writes the fulls): "
      f"{len(backups)} backup attempts, {len(ok)} succeeded")
print(f"workers died (librbd abort): {len(died)}; killed (hung): {len(killed)}; "
      f"runs that exited non-zero: {failed_runs}")
for r in died + killed:
    print(f"  {r['time']} {r.get('volume')}: {r.get('error')}")
PY
