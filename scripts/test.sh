#!/usr/bin/env bash
# Runs the whole test suite against a real DynamoDB API.
#
# Installs what the tests need: dynalite and TypeScript (pinned, npm) and
# Prometheus (Debian's package, as root). Needs Rust, npm and curl; README.md
# ("Set up on a fresh machine") lists the prerequisites for Linux and macOS.
# Without DYNAMODB_ENDPOINT: installs the pinned dynalite (tests/dynalite,
# lockfile committed), starts it on a free loopback port, runs the suite, stops it.
# With DYNAMODB_ENDPOINT (e.g. http://localhost:8000 from docker-compose.yml):
# runs the suite against that endpoint instead.
#
# tests/migrations_crate.rs builds migrations crates (examples/migrations and
# a freshly scaffolded one) with cargo into target/tmp/migration-crates: the
# first run compiles their dependencies there once.
#
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test migrate).
set -euo pipefail
cd "$(dirname "$0")/.."

# The observability test runs a real Prometheus (Debian's package).
if ! command -v "${PROMETHEUS_BIN:-prometheus}" >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's prometheus package for the observability test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "the observability tests need Prometheus: apt-get install prometheus (Debian, Ubuntu; this script does it when run as root)," >&2
    echo "brew install prometheus (macOS), or PROMETHEUS_BIN=/path/to/prometheus" >&2
    exit 1
  fi
fi

# The observability tests query Prometheus and /metrics with curl.
if ! command -v curl >/dev/null; then
  echo "the observability tests need curl: apt-get install curl (Debian, Ubuntu); macOS has it" >&2
  exit 1
fi

# The progress-bar test runs dynbulk on a pseudo-terminal with util-linux's script.
if ! script --version 2>/dev/null | grep -q util-linux; then
  echo "the observability tests need util-linux's script: apt-get install bsdutils (Debian, Ubuntu), brew install util-linux (macOS)" >&2
  exit 1
fi

# tests/cli.rs type-checks what `dynbulk init` and `new` write with the pinned
# TypeScript compiler (tests/typescript, lockfile committed).
if ! command -v npm >/dev/null; then
  echo "npm is needed to install the pinned TypeScript compiler and dynalite (apt-get install nodejs npm)" >&2
  exit 1
fi
(cd tests/typescript && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

if [ -z "${DYNAMODB_ENDPOINT:-}" ]; then
  source scripts/dynalite.sh
  start_dynalite
  trap stop_dynalite EXIT
  export DYNAMODB_ENDPOINT
fi
echo "testing against ${DYNAMODB_ENDPOINT}"
cargo test "$@"
