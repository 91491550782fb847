#!/usr/bin/env bash
# The main job on a local endpoint: create a table of 20,000 generated orders,
# show what the example migration would do (dry run), run it, run it again
# (nothing left to do), verify that nothing is left to change, and show the
# ledger.
#
#   scripts/demo.sh                         starts dynalite on a free loopback port
#   scripts/demo.sh http://localhost:8000   uses DynamoDB Local from docker-compose.yml
#   scripts/demo.sh --watch [URL]           the same, with the run serving Prometheus
#                                           metrics for about a minute, for the
#                                           dashboard of `docker compose up -d`
#
# Repeatable: the demo replaces its sample table `orders` and its own state
# table `dynbulk_demo_state` (ledger and checkpoints) on the endpoint each time;
# it touches no other table.
#
# --watch binds the metrics endpoint where the Prometheus container can reach
# it: the address of the docker0 bridge on Linux (what `host-gateway` maps
# to), else 127.0.0.1 (Docker Desktop forwards host.docker.internal to the
# host's loopback). DYNBULK_METRICS_ADDR overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."

watch=
if [ "${1:-}" = "--watch" ]; then
  watch=1
  shift
fi
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
export DYNBULK_STATE_TABLE=dynbulk_demo_state
items="${DEMO_ITEMS:-20000}"

# The run's flags: fast, or (--watch) slow enough for a minute of dashboard.
run_flags=(--segments 4 --rcu-limit 1000 --wcu-limit 10000)
if [ -n "$watch" ]; then
  addr="${DYNBULK_METRICS_ADDR:-}"
  if [ -z "$addr" ]; then
    bridge="$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1 || true)"
    addr="${bridge:-127.0.0.1}:9464"
  fi
  # About 15,000 of the 20,000 orders change, one WCU each: 250 WCU/s is a
  # minute of writes; the final values stay served for two 5 s scrapes.
  run_flags=(--segments 4 --rcu-limit 200 --wcu-limit 250 --metrics-addr "$addr" --metrics-hold 15)
fi

cargo build --release --quiet --bins
bin=target/release
echo "== endpoint $endpoint"
echo "== $bin/dynbulk-sample-data --table orders --items $items --replace --drop $DYNBULK_STATE_TABLE"
"$bin/dynbulk-sample-data" --table orders --items "$items" --replace --drop "$DYNBULK_STATE_TABLE"
echo "== dynbulk list"
"$bin/dynbulk" list
echo "== dynbulk run --dry-run --segments 4 --rcu-limit 1000 --wcu-limit 10000"
"$bin/dynbulk" run --dry-run --segments 4 --rcu-limit 1000 --wcu-limit 10000
if [ -n "$watch" ]; then
  echo "== metrics at http://$addr/metrics; dashboard: http://localhost:3000 (docker compose up -d)"
fi
echo "== dynbulk run ${run_flags[*]}"
"$bin/dynbulk" run "${run_flags[@]}"
echo "== dynbulk run --rerun --segments 4 --rcu-limit 1000 --wcu-limit 10000   (idempotent: nothing left to change)"
"$bin/dynbulk" run --rerun --segments 4 --rcu-limit 1000 --wcu-limit 10000
echo "== dynbulk verify --segments 4 --rcu-limit 1000   (proves nothing is left to change: exit 0, or 4 if something is)"
"$bin/dynbulk" verify --segments 4 --rcu-limit 1000
echo "== dynbulk status"
"$bin/dynbulk" status
