#!/usr/bin/env bash
# Checks that two releases can share one Redis namespace during a rolling upgrade: `lease-sync
# ingest` of one binary and `lease-sync work` of another, on a namespace whose layout marker
# is set first, against the OpenApp sandbox failing half the calls with 503 (so retries run
# through the worker's retry path). COUNT signed events go in; the check passes when every one
# is delivered and nothing is left ready, scheduled, in flight or pending.
#
#   scripts/mixed-release-check.sh INGEST_BINARY WORKER_BINARY LAYOUT [COUNT]
#
# e.g. the release before as the worker and this one as ingest, on layout 2 (what a rolling
# upgrade runs): scripts/mixed-release-check.sh target/release/lease-sync OLD/lease-sync 2
# FLIP=3 sets the layout marker to 3 a second after both started (what `lease-sync queue
# migrate --to 3` does): with a worker of the release before still running, its retries are
# lost, which this check then reports (docs/DEPLOY.md says not to do that).
# WORKER2=BINARY starts a second `lease-sync work` of that binary beside the first, so workers
# of two releases claim and finish jobs from one queue at once (on layouts 2 and 3 both take
# residents' lock keys).
# Needs redis-server, redis-cli, curl, python3 and a release build of lease-sync-bench (the load
# generator). Everything listens on free loopback ports; state goes to a temporary directory,
# kept and printed on failure.
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,19p' "$0" >&2
  exit 2
fi
ingest_bin=$(realpath "$1")
worker_bin=$(realpath "$2")
layout=$3
count=${4:-300}
cd "$(dirname "$0")/.."
load_bin=target/release/lease-sync-bench
[ -x "$load_bin" ] || cargo build --release -q -p lease-sync-bench

dir=$(mktemp -d "${TMPDIR:-/tmp}/lease-sync-mixed.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

read -r redis_port http_port sandbox_port <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')"

# Polls `$@` every 0.1 s for up to 30 s.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "gave up waiting for $what (state in $dir)" >&2
  exit 1
}

redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize no --save '' --appendonly yes \
  --appendfsync always --dir "$dir" --logfile "$dir/redis.log" &
pids+=($!)
wait_for "Redis" redis-cli -p "$redis_port" ping

secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
echo "$secret" >"$dir/webhook-secrets"
echo "mixed_release_check_key_0123456789" >"$dir/openapp-api-key"
cat >"$dir/config.toml" <<TOML
[http]
listen = "127.0.0.1:$http_port"

[redis]
url = "redis://127.0.0.1:$redis_port"
namespace = "mixed"

[openapp]
base_url = "http://127.0.0.1:$sandbox_port/api/v1"
allow_insecure_http = true
api_key_file = "$dir/openapp-api-key"

[admin]
enabled = false

[retry]
base_ms = 50
max_delay_secs = 1
max_attempts = 20

[[sources]]
name = "pms"
scheme = "standard-webhooks"
secrets_file = "$dir/webhook-secrets"

[[sources.properties]]
id = "P-1"
org_id = "01HMIXEDORG00000000000000A"
integration_id = "01HMIXEDINT00000000000000B"
TOML

"$ingest_bin" sandbox-openapp --listen "127.0.0.1:$sandbox_port" --fail-status 503 \
  --fail-rate 0.5 2>"$dir/sandbox.log" &
pids+=($!)
wait_for "the sandbox" curl -fsS "http://127.0.0.1:$sandbox_port/_sandbox/state"

redis-cli -p "$redis_port" SET '{mixed}:layout' "$layout" >/dev/null
"$ingest_bin" ingest --config "$dir/config.toml" 2>"$dir/ingest.log" &
pids+=($!)
"$worker_bin" work --config "$dir/config.toml" 2>"$dir/work.log" &
pids+=($!)
if [ -n "${WORKER2:-}" ]; then
  "$(realpath "$WORKER2")" work --config "$dir/config.toml" 2>"$dir/work2.log" &
  pids+=($!)
fi
wait_for "ingest" curl -fsS "http://127.0.0.1:$http_port/readyz"
if [ -n "${FLIP:-}" ]; then
  sleep 1
  redis-cli -p "$redis_port" SET '{mixed}:layout' "$FLIP" >/dev/null
fi

"$load_bin" load --addr "127.0.0.1:$http_port" --source pms --secret "$secret" --property P-1 \
  --count "$count" --connections 8 >"$dir/load.json" 2>"$dir/load.log"

stats() { "$ingest_bin" queue stats --config "$dir/config.toml" --json 2>/dev/null; }
drained() {
  stats | python3 -c 'import json, sys
c = json.load(sys.stdin)
sys.exit(0 if c["ready"] + c["scheduled"] + c["in_flight"] == 0 else 1)'
}
# A worker that refused to start (a layout it does not run on) never drains: give up after 30 s.
drained_in_time=1
for _ in $(seq 1 300); do
  if drained; then drained_in_time=0; break; fi
  sleep 0.1
done
counts=$(stats)
pending=$(redis-cli -p "$redis_port" --scan --pattern '{mixed}:delivery:*' |
  while read -r key; do redis-cli -p "$redis_port" HGET "$key" status; done |
  grep -c -x pending || true)
summary=$(COUNT="$count" PENDING="$pending" python3 -c 'import json, os, sys
c = json.loads(sys.stdin.read())
print(json.dumps({k: c[k] for k in ("ready", "scheduled", "in_flight", "dead", "done", "retries")}
  | {"ledgers_pending": int(os.environ["PENDING"]), "sent": int(os.environ["COUNT"])}))' <<<"$counts")
echo "layout $(redis-cli -p "$redis_port" GET '{mixed}:layout'): $summary"
if [ "$drained_in_time" = 0 ] && [ "$pending" = 0 ] &&
  python3 -c 'import json, sys; c = json.loads(sys.argv[1]); sys.exit(0 if c["done"] == c["sent"] else 1)' "$summary"; then
  echo "pass: every event delivered"
  rm -rf "$dir"
else
  echo "FAIL: not every event was delivered (state and logs in $dir)"
  exit 1
fi
