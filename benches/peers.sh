# Sourced by the benchmark scripts: where the peers are, and the seeds' own stack (with
# BullMQ and sharp) installed once from its locked dependencies into ~/.cache/photoq.
SHARED=$(realpath ../shared)
CACHE=${PHOTOQ_CACHE_DIR:-$HOME/.cache/photoq}
SEED=$CACHE/seedstack
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}

# The peer, copied out of ../shared (read-only there), its locked dependencies once.
ensure_seedstack() {
  mkdir -p "$SEED"
  cp "$SHARED"/bench/seedstack/*.js "$SHARED"/bench/seedstack/*.sh "$SHARED"/bench/seedstack/*.py \
    "$SHARED"/bench/seedstack/package*.json "$SEED"/
  if ! cmp -s "$SEED/package-lock.json" "$SEED/node_modules/.photoq-lock"; then
    # As its README says (`npm ci` refuses its lock file, which lists no other platforms'
    # optional packages).
    (cd "$SEED" && npm install --silent --no-audit --no-fund)
    cp "$SEED/package-lock.json" "$SEED/node_modules/.photoq-lock"
  fi
}

# The median of the numbers given.
median() { python3 -c 'import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
