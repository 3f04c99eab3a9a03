#!/usr/bin/env bash
# Runs the full test suite: unit tests of every default workspace member (lease-sync,
# crates/sandbox, the OpenApp emulator, and crates/testkit) and end-to-end tests against real redis-server
# processes the tests start themselves on free loopback ports (never 6379) — the web console's
# among them in headless Chromium (installed when missing) —, the quick start's
# smoke mode as a new user runs it (its cargo build included, so the binary is found wherever
# CARGO_TARGET_DIR puts it; free ports, a temporary state directory), then the benchmark
# harness end to end in its short mode (bench/run.sh --short: tiny counts, results not
# asserted; it reuses the debug binaries the tests just built), and the Redis ceiling benchmark
# in its short mode (bench/redis-ceiling.sh --short: every layout runs, its jobs all counted).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
scripts/ensure-promtool.sh
scripts/ensure-chromium.sh
cargo test --locked --all-targets "$@"
cargo test --locked -p lease-sync-bench

# Four distinct loopback ports nothing listens on, below the ephemeral range (probed: a small
# race remains, as with any port picking).
free_ports() {
  local picked=() port
  while [ "${#picked[@]}" -lt 4 ]; do
    port=$((20000 + RANDOM % 12000))
    if [[ " ${picked[*]} " == *" $port "* ]] || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      continue
    fi
    picked+=("$port")
  done
  echo "${picked[@]}"
}
quickstart_dir=$(mktemp -d "${TMPDIR:-/tmp}/lease-sync-quickstart.XXXXXX")
trap 'rm -rf "$quickstart_dir"' EXIT
read -r redis_port http_port sandbox_port admin_port <<<"$(free_ports)"
echo "==> scripts/quickstart.sh smoke mode (ports $redis_port $http_port $sandbox_port $admin_port, state in $quickstart_dir)"
env -u LEASE_SYNC_BIN QUICKSTART_SMOKE=1 QUICKSTART_DIR="$quickstart_dir" REDIS_PORT="$redis_port" \
  HTTP_PORT="$http_port" SANDBOX_PORT="$sandbox_port" ADMIN_PORT="$admin_port" \
  scripts/quickstart.sh

bench/run.sh --short
bench/redis-ceiling.sh --short
