# Sourced by the benchmark scripts that compare photoq's pipeline with other tools: checks
# the tools are there, installs `dssim` (cargo) if missing, builds photoq's release binary.
#   require TOOL...    exits 2 naming the first missing one
#   ensure_dssim       sets DSSIM
#   build_photoq ROOT  sets PHOTOQ
TOOLS_DIR=${TOOLS_DIR:-$HOME/.cache/photoq/tools}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/photoq/target}

say() { printf '==> %s\n' "$*" >&2; }

require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see the header of this script)" >&2; exit 2; }
  done
}

ensure_dssim() {
  if ! command -v dssim >/dev/null && [ ! -x "$TOOLS_DIR/bin/dssim" ]; then
    say "installing dssim into $TOOLS_DIR"
    cargo install --quiet --locked --root "$TOOLS_DIR" dssim
  fi
  DSSIM=$(command -v dssim || echo "$TOOLS_DIR/bin/dssim")
}

build_photoq() {
  say "building photoq (release)"
  (cd "$1" && cargo build --quiet --release --bin photoq)
  PHOTOQ=$CARGO_TARGET_DIR/release/photoq
}

# The median of the numbers on stdin.
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
