#!/usr/bin/env bash
# The queue alone against BullMQ: photoq's no-op run (`cargo bench --bench e2e -- --no-op`:
# every job read, started, completed and acknowledged, each state change committed in
# PostgreSQL with its events) and ../shared/bench/bullmq_bench.js (add-then-drain of no-op
# jobs, one worker), one at a time, alternating. Prints every run, the medians and the
# ratio of the medians.
#
#   benches/vs_bullmq.sh [--rounds 5] [--jobs 100000] [--workers 2] [--concurrency 1000]
#                        [--bull-jobs 50000] [--bull-conc 50] [--baseline BIN]
#
# --baseline: another photoq binary (an earlier build) run the same way in every round, on
# its own schema. BullMQ runs against a Redis of its own (port 6390, nothing on disk); its
# jobs are added with removeOnComplete, as a queue that keeps nothing would be run. Needs
# Node.js and npm (BullMQ from the seeds' stack's locked dependencies, installed once under
# ~/.cache/photoq/seedstack). Uses both cores for as long as it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=5 JOBS=100000 WORKERS=2 CONC=1000 BULL_JOBS=50000 BULL_CONC=50 BASELINE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --bull-jobs) BULL_JOBS=$2; shift 2 ;;
    --bull-conc) BULL_CONC=$2; shift 2 ;;
    --baseline) BASELINE=$(realpath "$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=benches/peers.sh
. benches/peers.sh
ensure_seedstack

BULL_PORT=6390
redis-server --port "$BULL_PORT" --save "" --appendonly no --daemonize no >/dev/null &
bull_redis=$!
trap 'kill "$bull_redis" 2>/dev/null || true' EXIT
until redis-cli -p "$BULL_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

cargo bench --bench e2e --no-run --quiet 2>/dev/null
# jobs/s of a photoq no-op run ("jobs/s" and "jobs/s, events included" lines).
run_photoq() {
  local out
  out=$(cargo bench --bench e2e --quiet -- --no-op --jobs "$JOBS" --workers "$WORKERS" \
    --concurrency "$CONC" 2>/dev/null)
  grep -E '^  jobs/s' <<<"$out" | sed 's/^/    /' >&2
  sed -n 's/^  jobs\/s  *\([0-9]*\)$/\1/p' <<<"$out"
}

run_bullmq() {
  local out
  out=$(NODE_PATH="$SEED/node_modules" node "$SHARED/bench/bullmq_bench.js" --port "$BULL_PORT" \
    --jobs "$BULL_JOBS" --conc "$BULL_CONC" --runs 1 --remove --redis-pid "$bull_redis")
  grep '^run 0' <<<"$out" | sed 's/^/    /' >&2
  sed -n 's/.*process [0-9.]* s = \([0-9]*\) jobs\/s.*/\1/p' <<<"$out"
}

echo "$ROUNDS rounds; photoq: $JOBS jobs, $WORKERS workers x $CONC; BullMQ: $BULL_JOBS jobs, one worker x $BULL_CONC" >&2
pq=() bull=() base=()
for round in $(seq "$ROUNDS"); do
  echo "  round $round: photoq" >&2
  pq+=("$(run_photoq)")
  echo "  round $round: BullMQ" >&2
  bull+=("$(run_bullmq)")
  if [ -n "$BASELINE" ]; then
    echo "  round $round: photoq baseline ($BASELINE)" >&2
    base+=("$(PHOTOQ_TEST_BIN=$BASELINE run_photoq)")
  fi
done
m_pq=$(median "${pq[@]}")
m_bull=$(median "${bull[@]}")
echo "photoq   jobs/s: ${pq[*]} (median $m_pq)"
echo "BullMQ   jobs/s: ${bull[*]} (median $m_bull)"
if [ -n "$BASELINE" ]; then
  m_base=$(median "${base[@]}")
  echo "baseline jobs/s: ${base[*]} (median $m_base)"
fi
python3 -c "
pq, bull = [float(x) for x in '${pq[*]}'.split()], [float(x) for x in '${bull[*]}'.split()]
print(f'ratio photoq/BullMQ: {$m_pq / $m_bull:.2f} (lowest photoq run / median BullMQ: {min(pq) / $m_bull:.2f})')"
