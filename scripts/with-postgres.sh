#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL server: initdb in a temp dir, start on
# 127.0.0.1 and a free port (as the `postgres` user when run as root), export
# LEASES_POSTGRES_URL, run the command, stop the server and delete its files.
#
#   bash scripts/with-postgres.sh cargo run --features postgres --example failover
set -euo pipefail

bin="${LEASES_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
if [ ! -x "$bin/initdb" ]; then
  echo "no PostgreSQL server binaries (install the postgresql package, or set LEASES_PG_BIN)" >&2
  exit 1
fi
dir="$(mktemp -d /tmp/leases-pg-XXXXXX)"
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
run "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
run "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null
cleanup() {
  run "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
export LEASES_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
echo "PostgreSQL on $LEASES_POSTGRES_URL" >&2
"$@"
