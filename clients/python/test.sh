#!/usr/bin/env bash
# The Python client's tests against a real `leases serve`. Runnable by hand:
#
#   bash clients/python/test.sh
#   bash clients/python/test.sh -k reattach      # arguments go to unittest (here: a filter)
#
# Creates a virtual environment in target/python-client-venv (reused on later runs) with
# pinned grpcio, grpcio-tools (for the stub check) and protobuf, installs the client
# with `pip install clients/python`, builds `leases`, starts two servers on free ports
# (one plain, one with a token file, both on the memory backend) and a throwaway
# PostgreSQL (for the re-attach tests, which start and kill `leases serve` processes on
# it themselves, as scripts/with-postgres.sh starts one), runs the unittest suite, and
# stops them. Exits non-zero if any step fails, PostgreSQL's server binaries missing
# included (install the postgresql package, or set LEASES_PG_BIN).
set -euo pipefail
cd "$(dirname "$0")/../.."

# The servers here choose their store by their flags alone.
unset LEASES_POSTGRES_URL LEASES_ETCD_ENDPOINTS LEASES_TABLE LEASES_ETCD_PREFIX LEASES_SERVE_TOKEN_FILE

GRPCIO_VERSION=1.85.1
PROTOBUF_VERSION=7.36.2
VENV=target/python-client-venv
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
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "the Python client needs Python 3.11 or later; $PYTHON is $("$PYTHON" --version)" >&2
  exit 1
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

step "pip install clients/python"
# --force-reinstall of the client alone (--no-deps), so that the tests always run
# today's source, even with an unchanged version number.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --force-reinstall --no-deps clients/python
# setuptools builds inside the source folder; leave nothing there for the next build.
rm -rf clients/python/build clients/python/leases_client.egg-info
"$VENV/bin/python" -m pip check >/dev/null

# All features, as the test suite builds them: after `cargo test --all-features` this
# build is already done.
step "cargo build --all-features --bin leases"
cargo build --quiet --all-features --bin leases

pg_bin="${LEASES_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
if [ ! -x "$pg_bin/initdb" ]; then
  echo "no PostgreSQL server binaries: the re-attach tests need them (install the postgresql package, or set LEASES_PG_BIN)" >&2
  exit 1
fi

work="$(mktemp -d)"
pg_dir=""
servers=()
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for pid in "${servers[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$pg_dir" ]; then
    as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Starts `leases serve` on a free port with extra flags; sets $addr.
start_server() {
  local log="$1"
  shift
  # The log exists before the server starts: the redirect of a background command is
  # made in the child, which may come after the first `sed` below.
  : >"$log"
  target/debug/leases serve --bind 127.0.0.1:0 --min-ttl 1s "$@" >"$log" 2>&1 &
  servers+=("$!")
  addr=""
  for _ in $(seq 300); do
    addr="$(sed -n 's/^leases serve: listening on //p' "$log")"
    [ -n "$addr" ] && return 0
    if ! kill -0 "${servers[-1]}" 2>/dev/null; then
      cat "$log" >&2
      echo "leases serve exited before it listened" >&2
      exit 1
    fi
    sleep 0.1
  done
  cat "$log" >&2
  echo "leases serve did not print its address within 30 s" >&2
  exit 1
}

head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
step "leases serve --min-ttl 1s, and another with --token-file"
start_server "$work/plain.log"
plain="$addr"
start_server "$work/auth.log" --token-file "$work/token"
auth="$addr"

step "a throwaway PostgreSQL for the re-attach tests"
pg_dir="$(mktemp -d /tmp/leases-pg-XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$pg_dir"
pg_port="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
as_postgres "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
  -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1" start >/dev/null
postgres_url="postgres://postgres@127.0.0.1:$pg_port/postgres"

step "the Python client's tests against $plain and $auth (and servers of their own on $postgres_url)"
# Run from the scratch directory, so that `import leases_client` finds the installed
# package and not the source tree.
tests="$PWD/clients/python/tests"
if ! (cd "$work" && LEASES_TEST_URL="http://$plain" LEASES_TEST_AUTH_URL="http://$auth" \
  LEASES_TEST_TOKEN="$(cat token)" LEASES_TEST_BIN="$OLDPWD/target/debug/leases" \
  LEASES_TEST_POSTGRES_URL="$postgres_url" timeout 400 "$OLDPWD/$VENV/bin/python" -m unittest \
  discover -v -s "$tests" -t "$tests" "$@"); then
  echo "--- leases serve's output (plain):" >&2
  cat "$work/plain.log" >&2
  echo "--- leases serve's output (with a token):" >&2
  cat "$work/auth.log" >&2
  echo "the Python client's tests failed" >&2
  exit 1
fi
for pid in "${servers[@]}"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "a leases serve died during the tests" >&2
    exit 1
  fi
done
