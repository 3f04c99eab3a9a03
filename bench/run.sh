#!/usr/bin/env bash
# Benchmarks lease-sync on loopback (see BENCHMARKS.md): signed 1 KB webhooks into
# `lease-sync ingest` at a fixed and at the maximum rate, `lease-sync work` draining the queue
# against the OpenApp sandbox at 0 ms and 50 ms, and redis-benchmark LPUSH/RPOP as a yardstick,
# then a results table, a chart and a screenshot of the Grafana dashboard's panels; and the
# Buildium end-to-end benchmark (`lease-sync-bench buildium`): lease changes in the Buildium
# emulator at 10/s timed to the OpenApp calls they cause through `lease-sync serve`, Buildium
# reads per change, and `lease-sync reconcile` pulling 10,000 leases.
#
#   bench/run.sh           full: release build, waits for a quiet machine, 3 runs, medians;
#                          writes bench/results/{latest.json,table.md,chart.svg,dashboard.html,dashboard.png}
#                          and bench/results/buildium/{latest.json,table.md,changes.csv,latency.svg}
#   bench/run.sh --short   smoke test (CI): tiny counts, 1 run, debug build, results in a temporary
#                          directory, screenshot only when Chromium is installed; asserts nothing
#                          about the numbers, only that every step works end to end
#   --only service         only the first part (ingest, drain, yardstick, dashboard)
#   --only buildium        only the Buildium end-to-end part
#
# Other arguments go to `lease-sync-bench run` (e.g. --appendfsync everysec --out DIR --runs 5),
# or with --only buildium to `lease-sync-bench buildium` (e.g. --runs 1 --changes 200
# --buildium-rate-limit 0 --out DIR; its default --out is bench/results/buildium); `--out DIR`
# of a run of both parts puts the Buildium part in DIR/buildium.
set -euo pipefail
cd "$(dirname "$0")/.."

short=0
only=all
args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --short) short=1 ;;
    --only)
      only="${2:-}"
      shift
      ;;
    --only=*) only="${1#--only=}" ;;
    *) args+=("$1") ;;
  esac
  shift
done
case "$only" in
  all | service | buildium) ;;
  *)
    echo "error: --only takes service or buildium" >&2
    exit 2
    ;;
esac
service=1
buildium=1
[ "$only" = buildium ] && service=0
[ "$only" = service ] && buildium=0

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

# build [CARGO ARGS…]: builds lease-sync and the harness, sets $lease_sync and $harness to the
# binaries wherever cargo put them (CARGO_TARGET_DIR and build.target-dir are honoured).
build() {
  local bins
  echo "==> building lease-sync and lease-sync-bench${*:+ ($*)}" >&2
  bins=$(scripts/cargo-build-bins.sh --locked -p lease-sync -p lease-sync-bench "$@") || {
    echo "error: bench/run.sh: building the binaries failed" >&2
    exit 1
  }
  lease_sync=$(printf '%s\n' "$bins" | grep '/lease-sync$' | head -n 1 || true)
  harness=$(printf '%s\n' "$bins" | grep '/lease-sync-bench$' | head -n 1 || true)
  if [ ! -x "$lease_sync" ] || [ ! -x "$harness" ]; then
    printf 'error: bench/run.sh: cargo reported no lease-sync and lease-sync-bench binaries, only:\n%s\n' "$bins" >&2
    exit 1
  fi
}

if [ "$short" = 1 ]; then
  # Debug binaries: after `cargo test --all-targets` only the bench harness itself is new.
  build
  out=$(mktemp -d "${TMPDIR:-/tmp}/lease-sync-bench-short.XXXXXX")
  if [ "$service" = 1 ]; then
    "$harness" run --short --lease-sync "$lease_sync" --out "$out" "${args[@]}"
    if [ ! -f "$out/dashboard.html" ]; then
      echo "no dashboard page (scraping off)"
    elif command -v chromium >/dev/null 2>&1; then
      screenshot "$out/dashboard.html" "$out/dashboard.png"
      echo "dashboard screenshot: $out/dashboard.png"
    else
      echo "chromium not installed: dashboard screenshot skipped"
    fi
  fi
  if [ "$buildium" = 1 ]; then
    if [ "$service" = 1 ]; then
      "$harness" buildium --short --lease-sync "$lease_sync" --out "$out/buildium"
    else
      "$harness" buildium --short --lease-sync "$lease_sync" --out "$out/buildium" "${args[@]}"
    fi
  fi
  echo "bench --short: OK (results in $out)"
  exit 0
fi

out_dir=
rest=()
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out) i=$((i + 1)); out_dir="${args[$i]}" ;;
    --out=*) out_dir="${args[$i]#--out=}" ;;
    *) rest+=("${args[$i]}") ;;
  esac
done
build --release
if [ "$service" = 0 ]; then
  "$harness" buildium --lease-sync "$lease_sync" --out "${out_dir:-bench/results/buildium}" \
    --wait-quiet 0.6 "${rest[@]}"
  exit 0
fi
out_dir="${out_dir:-bench/results}"
"$harness" run --lease-sync "$lease_sync" --out "$out_dir" --wait-quiet 0.6 "${rest[@]}"
if [ "$buildium" = 1 ]; then
  "$harness" buildium --lease-sync "$lease_sync" --out "$out_dir/buildium" --wait-quiet 0.6
fi
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
# A bound on what each invocation adds to the repository (a 5-run page measured 513 KB).
if [ "$bytes" -ge 1000000 ]; then
  echo "error: the screenshot is over 1 MB" >&2
  exit 1
fi
