#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test, the main example, and a bounded
# fuzz run of every fuzz target. CI runs exactly this (see .ci/run).
#
#   FUZZ_SECONDS=60   seconds per fuzz target (0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"

step() { printf '\n==> %s\n' "$*"; }

# The PostgreSQL tests start throwaway servers from the machine's server binaries.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${LEASES_PG_BIN:-}" ]; then
  step "installing PostgreSQL (server binaries for the tests)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
fi

# The etcd tests start throwaway 3-member clusters from the machine's etcd server.
if ! command -v etcd >/dev/null 2>&1 && [ -z "${LEASES_ETCD_BIN:-}" ]; then
  step "installing etcd (Debian's etcd-server, for the tests)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --all-targets --all-features -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --all-features --no-deps --quiet

# Includes the whole-stack checker (tests/whole_stack/): randomized faults over real
# processes (servers, clients, proxies, PostgreSQL) for ${LEASES_CHECKER_SECONDS:-150}s
# and a checker of the guarantees. It prints its seed; rerun a failure with
# LEASES_CHECKER_SEED=N, run longer with LEASES_CHECKER_SECONDS=N.
step "cargo test (all features: memory, PostgreSQL and etcd backends, multi-process faults, the whole-stack checker)"
cargo test --all-features

step "a foreign client: Python grpcio, FTL's Go- and JVM-like clients against leases serve"
bash tests/foreign/run.sh

step "the Python client (clients/python): its tests against leases serve"
bash clients/python/test.sh

step "the live console in a real browser (chromium, Playwright): tests/console/run.sh"
bash tests/console/run.sh

step "the conformance kit from another crate (tests/external_backend)"
cargo fmt --manifest-path tests/external_backend/Cargo.toml -- --check
cargo test --manifest-path tests/external_backend/Cargo.toml --target-dir target

step "main example: cargo run --example failover"
cargo run --quiet --example failover

step "main example through the lease service: cargo run --features server --example failover -- --service"
cargo run --quiet --features server --example failover -- --service

step "actor example: cargo run --example actor"
cargo run --quiet --example actor

step "election example: cargo run --example election"
cargo run --quiet --example election

step "main example across processes on a throwaway PostgreSQL"
bash scripts/with-postgres.sh cargo run --quiet --features postgres --example failover

step "benchmarks: build, and one tiny run to check they work (no timing is judged)"
cargo bench --all-features --bench leases -- --smoke >/dev/null

if [ "$FUZZ_SECONDS" -gt 0 ]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
  fi
  for target in $(cd fuzz && cargo fuzz list); do
    step "fuzz $target for ${FUZZ_SECONDS}s"
    # -s none: no sanitizer, so that the stable toolchain can build it. A crash makes
    # cargo fuzz exit non-zero and leaves the input under fuzz/artifacts/.
    log="$(mktemp)"
    if ! (cd fuzz && cargo fuzz run -s none "$target" -- -max_total_time="$FUZZ_SECONDS") >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "fuzz target $target failed: see fuzz/artifacts/$target" >&2
      exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" || tail -n 5 "$log"
    rm -f "$log"
  done
fi

step "all checks passed"
