#!/usr/bin/env bash
# The main job on a local endpoint: create a table of 20,000 generated orders,
# show what the example migration would do (dry run), run it, run it again
# (nothing left to do), and show the ledger.
#
#   scripts/demo.sh                         starts dynalite on a free loopback port
#   scripts/demo.sh http://localhost:8000   uses DynamoDB Local from docker-compose.yml
set -euo pipefail
cd "$(dirname "$0")/.."

endpoint="${1:-${DYNAMODB_ENDPOINT:-}}"
if [ -z "$endpoint" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
  endpoint="$DYNAMODB_ENDPOINT"
fi
export AWS_ENDPOINT_URL="$endpoint"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
items="${DEMO_ITEMS:-20000}"

cargo build --release --quiet --bins
bin=target/release
echo "== endpoint $endpoint"
echo "== $bin/dynbulk-sample-data --table orders --items $items"
"$bin/dynbulk-sample-data" --table orders --items "$items"
echo "== dynbulk list"
"$bin/dynbulk" list
echo "== dynbulk run --dry-run --segments 4 --rcu-limit 1000 --wcu-limit 10000"
"$bin/dynbulk" run --dry-run --segments 4 --rcu-limit 1000 --wcu-limit 10000
echo "== dynbulk run --segments 4 --rcu-limit 1000 --wcu-limit 10000"
"$bin/dynbulk" run --segments 4 --rcu-limit 1000 --wcu-limit 10000
echo "== dynbulk run --rerun --segments 4 --rcu-limit 1000 --wcu-limit 10000   (idempotent: nothing left to change)"
"$bin/dynbulk" run --rerun --segments 4 --rcu-limit 1000 --wcu-limit 10000
echo "== dynbulk status"
"$bin/dynbulk" status
