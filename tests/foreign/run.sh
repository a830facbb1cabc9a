#!/usr/bin/env bash
# A foreign client of `leases serve`: Python grpcio, with stubs generated from proto/,
# behaving like FTL's Go and JVM runtimes (see ftl_client.py). Runnable by hand:
#
#   bash tests/foreign/run.sh
#
# Creates a virtual environment in target/foreign-venv (reused on later runs), installs
# pinned grpcio and grpcio-tools into it, generates the Python stubs with grpcio-tools'
# own protoc (no system protoc), builds and starts `leases serve` on a free port, and
# runs the Python tests against it. Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

GRPCIO_VERSION=1.85.1
PROTOBUF_VERSION=7.36.2
VENV=target/foreign-venv
STUBS=target/foreign-stubs
PYTHON="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian's python3 splits venv's pip bootstrap (ensurepip) into python3-venv.
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  step "installing python3-venv"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

stamp="$VENV/.installed-grpcio-$GRPCIO_VERSION-protobuf-$PROTOBUF_VERSION"
if [ ! -x "$VENV/bin/python" ] || [ ! -e "$stamp" ]; then
  step "virtual environment $VENV: grpcio $GRPCIO_VERSION, grpcio-tools $GRPCIO_VERSION, protobuf $PROTOBUF_VERSION"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION" "protobuf==$PROTOBUF_VERSION"
  touch "$stamp"
fi

step "Python stubs from proto/ (grpcio-tools' protoc) into $STUBS"
rm -rf "$STUBS"
mkdir -p "$STUBS"
"$VENV/bin/python" -m grpc_tools.protoc -Iproto \
  --python_out="$STUBS" --grpc_python_out="$STUBS" \
  proto/xyz/block/ftl/v1/ftl.proto proto/xyz/block/ftl/lease/v1/lease.proto

# All features, as the test suite builds them: after `cargo test --all-features` this
# build is already done.
step "cargo build --all-features --bin leases"
cargo build --quiet --all-features --bin leases

log="$(mktemp)"
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap cleanup EXIT

step "leases serve --bind 127.0.0.1:0 --min-ttl 1s"
target/debug/leases serve --bind 127.0.0.1:0 --min-ttl 1s >"$log" 2>&1 &
server=$!
addr=""
for _ in $(seq 300); do
  addr="$(sed -n 's/^leases serve: listening on //p' "$log")"
  [ -n "$addr" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$log" >&2
    echo "leases serve exited before it listened" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  cat "$log" >&2
  echo "leases serve did not print its address within 30 s" >&2
  exit 1
fi

step "Python FTL-like clients against $addr"
if ! PYTHONPATH="$STUBS" timeout 120 "$VENV/bin/python" tests/foreign/ftl_client.py "$addr"; then
  echo "--- leases serve's output:" >&2
  cat "$log" >&2
  echo "the foreign client test failed" >&2
  exit 1
fi
if ! kill -0 "$server" 2>/dev/null; then
  cat "$log" >&2
  echo "leases serve died during the test" >&2
  exit 1
fi
