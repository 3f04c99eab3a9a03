#!/usr/bin/env bash
# Benchmarks lease-sync on loopback (see BENCHMARKS.md): signed 1 KB webhooks into
# `lease-sync ingest` at a fixed and at the maximum rate, `lease-sync work` draining the queue
# against the OpenApp sandbox at 0 ms and 50 ms, and redis-benchmark LPUSH/RPOP as a yardstick,
# then a results table, a chart and a screenshot of the Grafana dashboard's panels.
#
#   bench/run.sh           full: release build, waits for a quiet machine, 3 runs, medians;
#                          writes bench/results/{latest.json,table.md,chart.svg,dashboard.html,dashboard.png}
#   bench/run.sh --short   smoke test (CI): tiny counts, 1 run, debug build, results in a temporary
#                          directory, screenshot only when Chromium is installed; asserts nothing
#                          about the numbers, only that every step works end to end
#
# Other arguments go to `lease-sync-bench run` (e.g. --appendfsync everysec --out DIR --runs 5).
set -euo pipefail
cd "$(dirname "$0")/.."

short=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--short" ]; then short=1; else args+=("$arg"); fi
done

scripts/ensure-redis.sh
if ! command -v redis-benchmark >/dev/null 2>&1; then
  echo "error: redis-benchmark is missing (Debian: apt-get install redis-tools)" >&2
  exit 1
fi

screenshot() { # screenshot HTML PNG
  local html="$1" png="$2" size
  size=$(sed -n 's/.*name="bench-size" content="\([0-9]*x[0-9]*\)".*/\1/p' "$html" | head -n 1)
  size="${size:-1600x2000}"
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --window-size="${size/x/,}" --screenshot="$png" "file://$(realpath "$html")" >/dev/null 2>&1
  test -s "$png"
}

if [ "$short" = 1 ]; then
  # Debug binaries: after `cargo test --all-targets` only the bench harness itself is new.
  cargo build --locked -p lease-sync -p lease-sync-bench
  out=$(mktemp -d "${TMPDIR:-/tmp}/lease-sync-bench-short.XXXXXX")
  target/debug/lease-sync-bench run --short --lease-sync target/debug/lease-sync --out "$out" "${args[@]}"
  if [ ! -f "$out/dashboard.html" ]; then
    echo "no dashboard page (scraping off)"
  elif command -v chromium >/dev/null 2>&1; then
    screenshot "$out/dashboard.html" "$out/dashboard.png"
    echo "dashboard screenshot: $out/dashboard.png"
  else
    echo "chromium not installed: dashboard screenshot skipped"
  fi
  echo "bench --short: OK (results in $out)"
  exit 0
fi

out_dir=bench/results
rest=()
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out) i=$((i + 1)); out_dir="${args[$i]}" ;;
    --out=*) out_dir="${args[$i]#--out=}" ;;
    *) rest+=("${args[$i]}") ;;
  esac
done
cargo build --release --locked -p lease-sync -p lease-sync-bench
target/release/lease-sync-bench run --lease-sync target/release/lease-sync --out "$out_dir" \
  --wait-quiet 0.6 "${rest[@]}"
if [ ! -f "$out_dir/dashboard.html" ]; then
  exit 0 # --scrape-every 0: no dashboard page
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the dashboard screenshot" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
screenshot "$out_dir/dashboard.html" "$out_dir/dashboard.png"
bytes=$(stat -c %s "$out_dir/dashboard.png")
echo "dashboard screenshot: $out_dir/dashboard.png ($bytes bytes)"
if [ "$bytes" -ge 512000 ]; then
  echo "error: the screenshot is over 500 KB" >&2
  exit 1
fi
