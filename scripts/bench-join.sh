#!/usr/bin/env bash
# One run shared by 1, 2 and 4 processes (benches/join.rs) against dynalite on
# a free loopback port, or against DYNAMODB_ENDPOINT if set: wall time against
# the capacity bound. The run is bound by the proxy's write capacity, not by
# CPU, so debug binaries do (`cargo test --bench` builds them); about five
# minutes for the default 20,000 items (BENCH_ITEMS), a 75 s run per K at the
# proxy's 200 WCU/s: each process's start-up (a few seconds) weighs on a
# shorter run's ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
  export DYNAMODB_ENDPOINT
fi
cargo test --bench join
