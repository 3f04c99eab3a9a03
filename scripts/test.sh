#!/usr/bin/env bash
# Runs the full test suite: unit tests and end-to-end tests against real redis-server
# processes the tests start themselves on free loopback ports (never 6379).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
exec cargo test --locked --all-targets "$@"
