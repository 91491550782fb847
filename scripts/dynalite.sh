# Sourced by scripts/test.sh and scripts/demo.sh: install the pinned dynalite
# and run it on a free loopback port. Sets DYNAMODB_ENDPOINT and DYNALITE_PID.

start_dynalite() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/dynalite"
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node and npm are needed to run dynalite (apt-get install nodejs npm)" >&2
    return 1
  fi
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  local port
  port="$(node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")"
  node "$dir/node_modules/dynalite/cli.js" --host 127.0.0.1 --port "$port" \
    --createTableMs 0 --deleteTableMs 0 --updateTableMs 0 >"${TMPDIR:-/tmp}/dynalite-$port.log" 2>&1 &
  DYNALITE_PID=$!
  DYNAMODB_ENDPOINT="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    if node -e "require('net').connect($port,'127.0.0.1').on('connect',()=>process.exit(0)).on('error',()=>process.exit(1))" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "dynalite did not start; see ${TMPDIR:-/tmp}/dynalite-$port.log" >&2
  return 1
}

stop_dynalite() {
  if [ -n "${DYNALITE_PID:-}" ]; then
    kill "$DYNALITE_PID" 2>/dev/null || true
    wait "$DYNALITE_PID" 2>/dev/null || true
  fi
}
