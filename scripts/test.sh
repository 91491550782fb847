#!/usr/bin/env bash
# Runs the whole test suite against a real DynamoDB API.
#
# Without DYNAMODB_ENDPOINT: installs the pinned dynalite (tests/dynalite,
# lockfile committed), starts it on a free loopback port, runs the suite, stops it.
# With DYNAMODB_ENDPOINT (e.g. http://localhost:8000 from docker-compose.yml):
# runs the suite against that endpoint instead.
#
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test migrate).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
  export DYNAMODB_ENDPOINT
fi
echo "testing against ${DYNAMODB_ENDPOINT}"
cargo test "$@"
