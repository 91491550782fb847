#!/usr/bin/env bash
# End-to-end rate against a local endpoint: N generated items (default
# 100,000) per table, one table per segment count, the example migration run
# by the release binary under /usr/bin/time -v (peak RSS). Prints items/s.
#
#   scripts/measure-e2e.sh [ITEMS] [SEGMENTS...]     e.g. scripts/measure-e2e.sh 100000 1 4 16
set -euo pipefail
cd "$(dirname "$0")/.."
items="${1:-100000}"; shift || true
segments=("$@"); [ ${#segments[@]} -gt 0 ] || segments=(1 4 16)

if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
fi
export AWS_ENDPOINT_URL="$DYNAMODB_ENDPOINT" AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1
cargo build --release --quiet --bins
for s in "${segments[@]}"; do
  table="measure-$s-$RANDOM"
  target/release/dynbulk-sample-data --table "$table" --items "$items" >/dev/null
  log="$(mktemp)"
  /usr/bin/time -v target/release/dynbulk run --unlimited --table "$table" --segments "$s" --state-table "measure-state-$RANDOM" >"$log.out" 2>"$log"
  rate="$(grep -o '([0-9]* items/s)' "$log.out")"
  rss="$(grep 'Maximum resident set size' "$log" | awk '{print $NF}')"
  wall="$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}')"
  echo "segments=$s items=$items updated=$(grep -o 'updated: *[0-9]*' "$log.out" | awk '{print $2}') $rate wall=$wall peak_rss_kb=$rss"
done
