#!/usr/bin/env bash
# What the journal costs end to end: the example migration over N generated
# items (default 100,000) against a local endpoint, by the release binary,
# with and without the journal, alternating (ROUNDS of each, default 2), each
# on a fresh table. Prints per run: wall and CPU (user+sys) seconds from
# /usr/bin/time, and the journal's size; then the medians and the ratios.
#
#   scripts/measure-journal.sh [ITEMS] [ROUNDS]
#
# DYNBULK_BIN overrides the binary (e.g. target/debug/dynbulk: sizes are the
# same, times are not).
set -euo pipefail
cd "$(dirname "$0")/.."
items="${1:-100000}"
rounds="${2:-2}"

if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
fi
export AWS_ENDPOINT_URL="$DYNAMODB_ENDPOINT" AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1
if [ -z "${DYNBULK_BIN:-}" ]; then
  cargo build --release --quiet --bins
  bin=target/release/dynbulk
  sample=target/release/dynbulk-sample-data
else
  bin="$DYNBULK_BIN"
  sample="$(dirname "$DYNBULK_BIN")/dynbulk-sample-data"
fi
work="$(mktemp -d)"
results="$work/results"

one() { # mode: journal | none
  local mode="$1" table="measure-journal-$RANDOM$RANDOM" dir="$work/$1-$RANDOM"
  mkdir -p "$dir"
  "$sample" --table "$table" --items "$items" >/dev/null
  local flags=(--dead-letter "$dir/dl.jsonl")
  [ "$mode" = none ] && flags+=(--no-journal)
  /usr/bin/time -f '%e %U %S' -o "$dir/time" "$bin" run --unlimited --progress off \
    --table "$table" --state-table "measure-journal-state-$RANDOM" "${flags[@]}" >"$dir/out" 2>"$dir/err"
  read -r wall user sys <"$dir/time"
  local bytes=0
  for f in "$dir"/dynbulk-journal-*; do [ -e "$f" ] && bytes=$((bytes + $(stat -c %s "$f"))); done
  local updated
  updated="$(grep -o 'updated: *[0-9]*' "$dir/out" | awk '{print $2}')"
  local cpu
  cpu="$(echo "$user + $sys" | bc)"
  echo "$mode wall=$wall cpu=$cpu updated=$updated journal_bytes=$bytes bytes_per_update=$( [ "$updated" -gt 0 ] && echo "scale=1; $bytes / $updated" | bc || echo 0)"
  echo "$mode $wall $cpu $bytes $updated" >>"$results"
}

for _ in $(seq 1 "$rounds"); do
  one none
  one journal
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
for mode in none journal; do
  w=$(awk -v m="$mode" '$1 == m {print $2}' "$results" | median)
  c=$(awk -v m="$mode" '$1 == m {print $3}' "$results" | median)
  echo "median $mode: wall=${w}s cpu=${c}s"
  eval "wall_$mode=$w cpu_$mode=$c"
done
echo "journal/none: wall $(echo "scale=3; $wall_journal / $wall_none" | bc), cpu $(echo "scale=3; $cpu_journal / $cpu_none" | bc)"
rm -rf "$work"
