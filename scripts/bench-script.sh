#!/usr/bin/env bash
# CPU per item of a script migration against the same migration in Rust, end
# to end against a real endpoint: two identical tables of BENCH_ITEMS sample
# orders (default 20k) in dynalite on a free loopback port (or
# DYNAMODB_ENDPOINT); the example migrations crate's binary (examples/migrations:
# dynbulk's command line over the Rust reference migration, and any script
# migrations) runs the Rust reference on one and the TypeScript twin
# (migrations/, under another id) on the other, each under GNU
# time; prints user+system CPU seconds, microseconds of CPU per item and the
# script/Rust ratio. One binary for both: only the transform path differs.
#
#   scripts/bench-script.sh                          # release binaries
#   BENCH_ITEMS=50000 scripts/bench-script.sh
#   BENCH_BIN=target/debug scripts/bench-script.sh   # binaries built elsewhere
#                                                    # (dynbulk-sample-data and migrations)
set -euo pipefail
cd "$(dirname "$0")/.."
items="${BENCH_ITEMS:-20000}"
segments="${BENCH_SEGMENTS:-4}"

if ! [ -x /usr/bin/time ]; then
  echo "the bench needs GNU time (/usr/bin/time): apt-get install time" >&2
  exit 1
fi
if [ -n "${BENCH_BIN:-}" ]; then
  bin="$BENCH_BIN"
else
  cargo build --release --bins
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" \
    cargo build --release --manifest-path examples/migrations/Cargo.toml
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
mkdir "$work/migrations"
# The twin under its own id: the example crate has the Rust one.
sed 's/20241220_add_status_category_fields/20241221_add_status_category_script/' \
  migrations/20241220_add_status_category_fields.ts \
  > "$work/migrations/20241221_add_status_category_script.ts"

printf '%-7s %-7s %-9s %-11s %s\n' path items cpu_s us_per_item updated
declare -A us
for path in rust script; do
  table="bench-script-$path-$$"
  "$bin/dynbulk-sample-data" --table "$table" --items "$items" >/dev/null
  id=20241220_add_status_category_fields
  [ "$path" = script ] && id=20241221_add_status_category_script
  /usr/bin/time -f '%U %S' -o "$work/$path.time" \
    "$bin/migrations" --migrations-dir "$work/migrations" run --migration "$id" --table "$table" \
    --unlimited --segments "$segments" --progress off --state-table "bench-script-state-$$" >"$work/$path.out"
  cpu="$(awk '{print $1 + $2}' "$work/$path.time")"
  us[$path]="$(awk -v c="$cpu" -v n="$items" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
  printf '%-7s %-7s %-9s %-11s %s\n' "$path" "$items" "$cpu" "${us[$path]}" \
    "$(grep -o 'updated: *[0-9]*' "$work/$path.out" | awk '{print $2}')"
done
awk -v s="${us[script]}" -v r="${us[rust]}" 'BEGIN {printf "script/rust CPU per item: %.2fx\n", s / r}'
rm -rf "$work"
