#!/usr/bin/env bash
# The live console (/console) in a real browser. Runnable by hand:
#
#   bash tests/console/run.sh
#   CONSOLE_BULK=500 bash tests/console/run.sh          # fewer bulk leases (default 9990: with the test's own, about 10k)
#   CONSOLE_SCREENSHOT=docs/console.png bash tests/console/run.sh   # refresh the docs' picture
#
# Installs Debian's chromium if /usr/bin/chromium is missing (apt, as root or with sudo;
# under CI=true a failed install fails the test, elsewhere it skips it), creates a virtual
# environment in target/console-venv with a pinned Playwright for Python (its own browser
# downloads are never used: the test launches /usr/bin/chromium), builds `leases`, starts
# `leases serve --console --token-file F` on a free port, and runs console_test.py.
set -euo pipefail
cd "$(dirname "$0")/../.."

unset LEASES_POSTGRES_URL LEASES_ETCD_ENDPOINTS LEASES_TABLE LEASES_ETCD_PREFIX LEASES_SERVE_TOKEN_FILE

PLAYWRIGHT_VERSION=1.65.3
VENV=target/console-venv
PYTHON="${PYTHON:-python3}"
# Playwright must not fetch browsers of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

step() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}

if [ ! -x /usr/bin/chromium ]; then
  step "installing chromium (Debian's, for the browser test)"
  if ! { as_root apt-get update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    if [ "${CI:-}" = true ]; then
      echo "cannot install chromium, and CI=true: the console test must run" >&2
      exit 1
    fi
    echo "cannot install chromium: skipping the console test (it fails under CI=true)" >&2
    exit 0
  fi
fi

if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  step "installing python3-venv"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

stamp="$VENV/.installed-playwright-$PLAYWRIGHT_VERSION"
if [ ! -x "$VENV/bin/python" ] || [ ! -e "$stamp" ]; then
  step "virtual environment $VENV: playwright $PLAYWRIGHT_VERSION"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "playwright==$PLAYWRIGHT_VERSION"
  touch "$stamp"
fi

# All features, as the test suite builds them: after `cargo test --all-features` this
# build is already done.
step "cargo build --all-features --bin leases"
cargo build --quiet --all-features --bin leases

work="$(mktemp -d)"
server=""
cleanup() {
  # SIGKILL: a throwaway server on memory; a graceful stop would keep each HTTP lease's
  # key until the time promised to its client has passed (minutes, for the bulk leases).
  if [ -n "$server" ]; then
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
# The test holds 10k leases from one client (this machine): above the default limit of
# HTTP leases per client (1024).
step "leases serve --console --token-file F --min-ttl 1s --max-http-leases-per-client 20000"
: >"$work/serve.log"
target/debug/leases serve --bind 127.0.0.1:0 --min-ttl 1s --console \
  --token-file "$work/token" --max-http-leases-per-client 20000 >"$work/serve.log" 2>&1 &
server="$!"
addr=""
for _ in $(seq 300); do
  addr="$(sed -n 's/^leases serve: listening on //p' "$work/serve.log")"
  [ -n "$addr" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$work/serve.log" >&2
    echo "leases serve exited before it listened" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/serve.log" >&2; echo "leases serve did not listen" >&2; exit 1; }

step "the console test (chromium, Playwright) against http://$addr/console"
if ! LEASES_URL="http://$addr" LEASES_TOKEN="$(cat "$work/token")" \
  CONSOLE_SCREENSHOT="${CONSOLE_SCREENSHOT:-target/console.png}" \
  timeout 240 "$VENV/bin/python" tests/console/console_test.py; then
  echo "--- leases serve's output:" >&2
  tail -n 50 "$work/serve.log" >&2
  echo "the console test failed" >&2
  exit 1
fi
kill -0 "$server" 2>/dev/null || { echo "leases serve died during the test" >&2; exit 1; }
