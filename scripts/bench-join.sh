#!/usr/bin/env bash
# One run shared by 1, 2 and 4 processes (benches/join.rs) against dynalite on
# a free loopback port, or against DYNAMODB_ENDPOINT if set: wall time against
# the capacity bound. The run is bound by the proxy's write capacity, not by
# CPU, so debug binaries do (`cargo test --bench` builds them); about two
# minutes for the default 6,000 items (BENCH_ITEMS).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
  export DYNAMODB_ENDPOINT
fi
cargo test --bench join
