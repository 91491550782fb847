#!/usr/bin/env bash
# Capacity utilization benchmark (benches/capacity.rs) against dynalite on a
# free loopback port, or against DYNAMODB_ENDPOINT if set. About two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
  export DYNAMODB_ENDPOINT
fi
cargo bench --bench capacity
