#!/usr/bin/env bash
# Runs the full test suite: unit tests and end-to-end tests against real redis-server
# processes the tests start themselves on free loopback ports (never 6379), then the
# benchmark harness end to end in its short mode (bench/run.sh --short: tiny counts, results
# not asserted; it reuses the debug binaries the tests just built).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
cargo test --locked --all-targets "$@"
cargo test --locked -p lease-sync-bench
bench/run.sh --short
