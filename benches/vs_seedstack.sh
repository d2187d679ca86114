#!/usr/bin/env bash
# photoq against the seeds' own stack (Express + multer + BullMQ + sharp + PostgreSQL, in
# ../shared/bench/seedstack), end to end over HTTP: the same driver (its drive.py), files,
# PostgreSQL and Redis, one service at a time, alternating. Each round also runs photoq's
# pipeline alone (`photoq render` at its defaults) over the same files, the ceiling of the
# service. Prints every run, the medians and the ratios of the medians.
#
#   benches/vs_seedstack.sh [--rounds 5] [--corpus DIR] [--repeat 5]
#                           [--photoq "all"] [--seed-concurrency 2]
#
# --corpus: JPEGs (default /tmp/corpus/big/12mp, made by ../shared/bench/make-big-corpus.sh);
# --repeat: the corpus passed that many times (20 files × 5 = 100 uploads);
# --photoq: photoq's command line after the binary (default `all`, its defaults);
# --seed-concurrency: the peer's worker concurrency (its default 2).
# Needs Node.js and npm (the peer's locked dependencies are installed once into a copy under
# ~/.cache/photoq/seedstack) and runs photoq's release build. Uses both cores for as long as
# it runs: measure nothing else meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=5 CORPUS=/tmp/corpus/big/12mp REPEAT=5 PQ_ARGS="all" SEED_CONC=2
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --corpus) CORPUS=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --photoq) PQ_ARGS=$2; shift 2 ;;
    --seed-concurrency) SEED_CONC=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=benches/peers.sh
. benches/peers.sh
export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres REDIS_PORT=${REDIS_PORT:-6379}
PQ_PORT=8091
ensure_seedstack
cargo build --release --quiet --bin photoq
PQ=$CARGO_TARGET_DIR/release/photoq

paths=()
for _ in $(seq "$REPEAT"); do paths+=("$CORPUS"); done

# The images/s of drive.py's summary line, after checking every photo completed.
rate() {
  local line
  line=$(grep ' img/s, completed ' || true)
  echo "    $line" >&2
  case "$line" in
    *", failed 0"*) sed -n 's/.*: \([0-9.]*\) img\/s.*/\1/p' <<<"$line" ;;
    *) echo "a run did not complete every photo" >&2; exit 1 ;;
  esac
}

run_seed() {
  (cd "$SEED" && CONCURRENCY=$SEED_CONC ./run.sh >/dev/null)
  python3 "$SEED/drive.py" http://127.0.0.1:8090 "${paths[@]}" | rate
  (cd "$SEED" && ./stop.sh --clean >/dev/null)
}

run_photoq() {
  local tag dir key pid
  tag=pqcmp_$(date +%s)_$$
  dir=$(mktemp -d)
  export PHOTOQ_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$tag \
    PHOTOQ_REDIS_URL=redis://127.0.0.1:$REDIS_PORT PHOTOQ_REDIS_PREFIX=$tag \
    PHOTOQ_STORAGE_ROOT=$dir PHOTOQ_BIND=127.0.0.1:$PQ_PORT
  "$PQ" migrate >/dev/null 2>&1
  key=$("$PQ" keys create --name bench 2>/dev/null | tail -n 1)
  # shellcheck disable=SC2086 # the command line as given
  "$PQ" $PQ_ARGS >"$dir.log" 2>&1 &
  pid=$!
  until "$PQ" health >/dev/null 2>&1; do sleep 0.2; done
  python3 "$SEED/drive.py" "http://127.0.0.1:$PQ_PORT" "${paths[@]}" --key "$key" | rate
  kill -TERM "$pid"
  wait "$pid" || true
  psql -qc "DROP DATABASE IF EXISTS \"$tag\" WITH (FORCE)" postgres
  redis-cli -p "$REDIS_PORT" --scan --pattern "{$tag}*" | xargs -r redis-cli -p "$REDIS_PORT" del >/dev/null
  rm -rf "$dir" "$dir.log"
  unset PHOTOQ_DATABASE_URL PHOTOQ_REDIS_URL PHOTOQ_REDIS_PREFIX PHOTOQ_STORAGE_ROOT PHOTOQ_BIND
}

# images/s of `photoq render` over the same uploads, written to a scratch directory.
run_render() {
  local out files=()
  out=$(mktemp -d)
  for _ in $(seq "$REPEAT"); do
    while IFS= read -r f; do files+=("$f"); done < <(find "$CORPUS" -maxdepth 1 -iname '*.jp*g' | sort)
  done
  # Each file once per repeat: the same name overwrites its outputs, the work is done again.
  "$PQ" render --out "$out" "${files[@]}" | tee /dev/stderr | sed -n 's/.*: \([0-9.]*\) images\/s/\1/p'
  rm -rf "$out"
}

echo "$(( $(find "$CORPUS" -maxdepth 1 -iname '*.jp*g' | wc -l) * REPEAT )) images from $CORPUS per run," \
  "$ROUNDS rounds; photoq: \`photoq $PQ_ARGS\`; seedstack: concurrency $SEED_CONC" >&2
pq=() seed=() render=()
for round in $(seq "$ROUNDS"); do
  echo "  round $round: photoq" >&2
  pq+=("$(run_photoq)")
  echo "  round $round: seedstack" >&2
  seed+=("$(run_seed)")
  echo "  round $round: photoq render" >&2
  render+=("$(run_render)")
done
m_pq=$(median "${pq[@]}")
m_seed=$(median "${seed[@]}")
m_render=$(median "${render[@]}")
echo "photoq        images/s: ${pq[*]} (median $m_pq)"
echo "seedstack     images/s: ${seed[*]} (median $m_seed)"
echo "photoq render images/s: ${render[*]} (median $m_render)"
python3 -c "print(f'ratio photoq/seedstack: {$m_pq / $m_seed:.2f}; photoq/render: {$m_pq / $m_render:.2f}')"
