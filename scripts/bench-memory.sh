#!/usr/bin/env bash
# Peak memory of a real run as the table grows: loads BENCH_ITEMS sample orders
# (default 10k, 100k and 1M; items of 60-800 bytes) into dynalite on a free
# loopback port (or DYNAMODB_ENDPOINT), runs the release binary over each with
# BENCH_SEGMENTS segments (default 16) and --unlimited, and prints the peak
# resident set size. Flat memory means the last figure is close to the first.
# The 1M case takes about an hour here (load and run).
#
#   scripts/bench-memory.sh                      # 10k, 100k, 1M
#   BENCH_ITEMS="10000 100000" scripts/bench-memory.sh
#   BENCH_BIN=/path/to/other/release scripts/bench-memory.sh   # binaries built elsewhere (before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
items="${BENCH_ITEMS:-10000 100000 1000000}"
segments="${BENCH_SEGMENTS:-16}"
# dynalite is one single-threaded process: under a 16-segment unlimited run on
# a small machine it can leave the lock's renewal unanswered for longer than the
# default 15 s lease, and the run then stops with exit 3 (lost lock) as it must.
# The bench measures memory, not the emulator: give the lease a minute.
export DYNBULK_LEASE="${DYNBULK_LEASE:-60s}"

if ! [ -x /usr/bin/time ]; then
  echo "the memory bench needs GNU time (/usr/bin/time): apt-get install time" >&2
  exit 1
fi
if [ -n "${BENCH_BIN:-}" ]; then
  bin="$BENCH_BIN"
else
  cargo build --release --bins
  bin="${CARGO_TARGET_DIR:-target}/release"
fi

if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
  export DYNAMODB_ENDPOINT
fi
export AWS_ENDPOINT_URL="$DYNAMODB_ENDPOINT"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
work="$(mktemp -d)"
state="bench-memory-state-$$"

printf '%-10s %-9s %-13s %-9s %s\n' items segments peak_rss_mb seconds updated
for n in $items; do
  table="bench-memory-$n-$$"
  "$bin/dynbulk-sample-data" --table "$table" --items "$n" >/dev/null
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$work/time-$n" "$bin/dynbulk" run \
    --migration 20241220_add_status_category_fields --table "$table" --state-table "$state" \
    --segments "$segments" --unlimited --dead-letter "$work/dead-$n.jsonl" \
    >"$work/out-$n" 2>&1 || { cat "$work/out-$n" >&2; exit 1; }
  end=$(date +%s.%N)
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time-$n")
  written=$(grep -o 'updated: *[0-9]*' "$work/out-$n" | awk '{print $2}' | tail -1)
  printf '%-10s %-9s %-13.1f %-9.1f %s\n' "$n" "$segments" "$(echo "$rss_kb / 1024" | bc -l)" \
    "$(echo "$end - $start" | bc -l)" "$written"
done
rm -rf "$work"
