#!/usr/bin/env bash
# Brings up lease-sync end to end on this machine:
#   1. Redis on 127.0.0.1:$REDIS_PORT (6379): used if one answers there, else started here
#      (redis-server is installed from Debian/Ubuntu packages when missing),
#   2. the OpenApp sandbox on 127.0.0.1:$SANDBOX_PORT (8081; in memory, no credentials needed),
#   3. the Buildium emulator on 127.0.0.1:$BUILDIUM_PORT (8082; in memory): lease and tenant
#      reads, and signed webhooks to lease-sync's `buildium` source,
#   4. `lease-sync serve` on 127.0.0.1:$HTTP_PORT (8080), admin API on $ADMIN_PORT (9090), with a
#      config and secrets generated in $QUICKSTART_DIR (.quickstart/).
# Then it prints the command that sends a signed test event, and how to create a lease in the
# Buildium emulator that reaches the OpenApp sandbox. Ctrl-C (SIGINT) or SIGTERM stops
# what this script started (serve, the sandbox, and Redis if it started Redis) and nothing else.
#
# QUICKSTART_SMOKE=1 sends one test event itself and creates one Buildium lease, checks that
# both residents reached the sandbox, stops everything it started and exits (0 on success): a
# self-check that scripts/test.sh runs.
#
# Environment (all optional):
#   REDIS_PORT, HTTP_PORT, SANDBOX_PORT, ADMIN_PORT, BUILDIUM_PORT   ports on 127.0.0.1
#   QUICKSTART_DIR   state directory: config, secrets, logs, Redis data [.quickstart]
#   LEASE_SYNC_BIN   a lease-sync binary to run instead of building one with cargo
#   NO_COLOR         plain log lines on a terminal too
# shellcheck disable=SC2317 # the cleanup functions run from traps
set -euo pipefail

# A background job of a non-interactive shell starts with SIGINT ignored, and bash cannot trap
# a signal that was ignored when it started: start again with SIGINT at its default, so that
# `kill -INT` stops this script wherever it was started from.
if [ "$(trap -p INT)" = "trap -- '' SIGINT" ] && [ -z "${QUICKSTART_SIGINT_RESET:-}" ] &&
  env --default-signal=INT true 2>/dev/null; then
  exec env --default-signal=INT QUICKSTART_SIGINT_RESET=1 "$BASH" "$0" "$@"
fi

cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() {
  printf 'error: quickstart: %s\n' "$*" >&2
  exit 1
}
# Anything that fails without its own message still says what failed.
trap 'printf "error: quickstart: line %s: \`%s\` failed (exit status %s)\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

SMOKE="${QUICKSTART_SMOKE:-0}"
REDIS_PORT="${REDIS_PORT:-6379}"
HTTP_PORT="${HTTP_PORT:-8080}"
SANDBOX_PORT="${SANDBOX_PORT:-8081}"
ADMIN_PORT="${ADMIN_PORT:-9090}"
BUILDIUM_PORT="${BUILDIUM_PORT:-8082}"
for var in REDIS_PORT HTTP_PORT SANDBOX_PORT ADMIN_PORT BUILDIUM_PORT; do
  if ! [[ "${!var}" =~ ^[0-9]+$ ]] || [ "${!var}" -lt 1 ] || [ "${!var}" -gt 65535 ]; then
    die "$var=${!var} is not a port number"
  fi
done
if [ "$(printf '%s\n' "$REDIS_PORT" "$HTTP_PORT" "$SANDBOX_PORT" "$ADMIN_PORT" "$BUILDIUM_PORT" | sort -u | wc -l)" -ne 5 ]; then
  die "REDIS_PORT, HTTP_PORT, SANDBOX_PORT, ADMIN_PORT and BUILDIUM_PORT must differ ($REDIS_PORT, $HTTP_PORT, $SANDBOX_PORT, $ADMIN_PORT, $BUILDIUM_PORT)"
fi
command -v curl >/dev/null 2>&1 || die "curl is needed (Debian/Ubuntu: apt-get install curl)"
STATE="${QUICKSTART_DIR:-$PWD/.quickstart}"
mkdir -p "$STATE" || die "cannot create the state directory $STATE"
STATE=$(cd "$STATE" && pwd)

# --- processes this script started, stopped in reverse order when it ends -------------------
child_pids=()
child_names=()
redis_ours=0

# start NAME COMMAND…: runs COMMAND in the background in its own session (so a Ctrl-C on the
# terminal reaches this script only, which then stops everything in order) and records it.
start() {
  local name=$1
  shift
  setsid "$@" </dev/null &
  child_pids+=("$!")
  child_names+=("$name")
}

stop_children() {
  local i pid name
  for ((i = ${#child_pids[@]} - 1; i >= 0; i--)); do
    pid=${child_pids[i]}
    name=${child_names[i]}
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      # lease-sync finishes in-flight work first (shutdown_grace_secs, 30 s by default).
      for _ in $(seq 1 400); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        echo "warning: quickstart: $name did not stop within 40 s of SIGTERM; killing it" >&2
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      fi
      echo "==> stopped $name" >&2
    fi
    wait "$pid" 2>/dev/null || true
  done
  child_pids=()
  child_names=()
}

on_exit() {
  local status=$?
  trap '' INT TERM
  stop_children
  if [ "$redis_ours" = 0 ] && [ -n "${redis_note:-}" ]; then
    echo "==> $redis_note" >&2
  fi
  exit "$status"
}

on_signal() {
  local sig=$1
  trap '' INT TERM
  trap - EXIT ERR
  printf '\n==> SIG%s received: stopping what this script started\n' "$sig" >&2
  stop_children
  # Die of the same signal, so that whoever started this script sees why it ended.
  trap - "$sig"
  kill -s "$sig" "$$"
}
trap on_exit EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

# wait_for WHAT PID LOG PROBE…: polls PROBE until it succeeds (30 s at most); fails with the
# end of LOG when the process PID exits first.
wait_for() {
  local what=$1 pid=$2 log=$3 status=0
  shift 3
  for _ in $(seq 1 300); do
    "$@" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" || status=$?
      printf 'error: quickstart: %s exited (status %s) before it was ready; the end of %s:\n' \
        "$what" "$status" "$log" >&2
      tail -n 20 "$log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  die "$what was not ready within 30 s; see $log"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_answers() {
  # Plain bash, so no redis-cli is needed to find out.
  { exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local reply=""
  read -r -t 2 reply <&3 || true
  exec 3>&-
  [[ "$reply" == +PONG* ]]
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# --- the lease-sync binary -------------------------------------------------------------------
if [ -n "${LEASE_SYNC_BIN:-}" ]; then
  BIN=$LEASE_SYNC_BIN
  if [ ! -f "$BIN" ] || [ ! -x "$BIN" ]; then
    die "LEASE_SYNC_BIN=$BIN is not an executable file"
  fi
  say "using $BIN (LEASE_SYNC_BIN)"
else
  say "building lease-sync with cargo (the first build takes a few minutes)"
  # In the background, so that a signal stops the build at once.
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  start "cargo build" bash -c 'exec scripts/cargo-build-bins.sh --locked -p lease-sync >"$1"' \
    build "$STATE/build-output"
  build_status=0
  wait "${child_pids[-1]}" || build_status=$?
  unset 'child_pids[-1]' 'child_names[-1]'
  [ "$build_status" = 0 ] || die "building lease-sync failed (exit status $build_status); see cargo's messages above"
  BIN=$(grep '/lease-sync$' "$STATE/build-output" | head -n 1 || true)
  [ -x "$BIN" ] || die "cargo reported no lease-sync binary; it reported: $(tr '\n' ' ' <"$STATE/build-output")"
  rm -f "$STATE/build-output"
fi

# --- secrets (kept) and config (written anew on every run, from the ports above) -------------
# Fresh secrets for this machine only, each in its own file; never committed (.quickstart/ is
# git-ignored).
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
CONFIG="$STATE/config.toml"
saved_umask=$(umask)
umask 077
if [ ! -s "$STATE/openapp-api-key" ]; then
  printf 'oa_test_%s\n' "$(random_hex 16)" >"$STATE/openapp-api-key"
fi
if [ ! -s "$STATE/webhook-secrets" ]; then
  # Keep the secret of a config written by an earlier version of this script.
  secret=""
  if [ -f "$CONFIG" ]; then
    secret=$(sed -n 's/^secrets = \["\(whsec_[^"]*\)"\]$/\1/p' "$CONFIG")
  fi
  [ -n "$secret" ] || secret="whsec_$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
  printf '%s\n' "$secret" >"$STATE/webhook-secrets"
fi
if [ ! -s "$STATE/buildium-webhook-secret" ]; then
  printf 'bwh_%s\n' "$(random_hex 24)" >"$STATE/buildium-webhook-secret"
fi
if [ ! -s "$STATE/buildium-client-secret" ]; then
  printf 'bcs_%s\n' "$(random_hex 16)" >"$STATE/buildium-client-secret"
fi
if [ ! -s "$STATE/admin-token" ]; then
  generated=$("$BIN" admin hash-token --generate 2>/dev/null) ||
    die "\`$BIN admin hash-token --generate\` failed"
  printf '%s\n' "${generated%%$'\n'*}" >"$STATE/admin-token"
fi
ADMIN_TOKEN_HASH=$("$BIN" admin hash-token <"$STATE/admin-token") ||
  die "\`$BIN admin hash-token\` failed on $STATE/admin-token"

cat >"$CONFIG" <<TOML
# Written by scripts/quickstart.sh on every run (edits are lost): a local trial against the
# OpenApp sandbox. The secrets are in the files next to it, which are kept.
[http]
listen = "127.0.0.1:${HTTP_PORT}"

[redis]
url = "redis://127.0.0.1:${REDIS_PORT}"
namespace = "lease-sync-quickstart"

[openapp]
base_url = "http://127.0.0.1:${SANDBOX_PORT}/api/v1"
allow_insecure_http = true   # the local sandbox speaks plain http
api_key_file = "openapp-api-key"

[admin]
listen = "127.0.0.1:${ADMIN_PORT}"
tokens = ["${ADMIN_TOKEN_HASH}"]   # sha256 of the token in admin-token

[[sources]]
name = "demo-pms"
scheme = "standard-webhooks"
secrets_file = "webhook-secrets"

[[sources.properties]]
id = "P-17"
org_id = "01HDEMOORG000000000000000A"
integration_id = "01HDEMOINT000000000000000B"

# The Buildium emulator: its webhooks are cues to read the lease back from its API.
[[sources]]
name = "buildium"
kind = "buildium"
secrets_file = "buildium-webhook-secret"

[sources.buildium]
base_url = "http://127.0.0.1:${BUILDIUM_PORT}"
allow_insecure_http = true   # the local emulator speaks plain http
client_id = "quickstart"
client_secret_file = "buildium-client-secret"

[[sources.properties]]
id = "23"
org_id = "01HDEMOORG000000000000000A"
integration_id = "01HDEMOINT000000000000000B"
timezone = "America/New_York"

# The safety net: read what changed at Buildium every 10 minutes (and everything once a day).
[reconcile]
every = "10m"
source = "buildium"
TOML
umask "$saved_umask"
if ! check=$("$BIN" check-config --config "$CONFIG" 2>&1 >/dev/null); then
  printf '%s\n' "$check" >&2
  die "the generated $CONFIG is not valid (see above)"
fi

# --- ports -------------------------------------------------------------------------------------
for var in HTTP_PORT SANDBOX_PORT ADMIN_PORT BUILDIUM_PORT; do
  if port_busy "${!var}"; then
    die "port ${!var} on 127.0.0.1 is in use; stop what listens there or set $var to a free port"
  fi
done

# --- Redis -------------------------------------------------------------------------------------
if redis_answers; then
  say "using the Redis that answers on 127.0.0.1:$REDIS_PORT"
  redis_note="the Redis on 127.0.0.1:$REDIS_PORT was running before this script and is left running"
else
  scripts/ensure-redis.sh || die "redis-server is missing and could not be installed"
  # The package may have started its own Redis meanwhile.
  if redis_answers; then
    say "using the Redis that answers on 127.0.0.1:$REDIS_PORT (started by the redis-server package)"
    redis_note="the Redis on 127.0.0.1:$REDIS_PORT (the redis-server package's service) is left running"
  else
    port_busy "$REDIS_PORT" &&
      die "port $REDIS_PORT on 127.0.0.1 is in use, but not by a Redis that answers PING without a password; set REDIS_PORT to a free port"
    say "starting Redis on 127.0.0.1:$REDIS_PORT (data in $STATE/redis; stopped when this script ends)"
    mkdir -p "$STATE/redis"
    start "Redis (127.0.0.1:$REDIS_PORT)" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
      --daemonize no --appendonly yes --appendfsync always --maxmemory-policy noeviction \
      --dir "$STATE/redis" --logfile "$STATE/redis/redis.log"
    redis_ours=1
    wait_for "Redis" "${child_pids[-1]}" "$STATE/redis/redis.log" redis_answers
  fi
fi

# --- the sandbox and serve ----------------------------------------------------------------------
say "starting the OpenApp sandbox on http://127.0.0.1:${SANDBOX_PORT}/api/v1 (log: $STATE/sandbox.log)"
# The key comes from a file: a command line is visible to every user (ps).
start "the OpenApp sandbox" "$BIN" sandbox-openapp --listen "127.0.0.1:${SANDBOX_PORT}" \
  --api-key-file "$STATE/openapp-api-key" \
  --integration "01HDEMOORG000000000000000A:01HDEMOINT000000000000000B" 2>"$STATE/sandbox.log"
wait_for "the OpenApp sandbox" "${child_pids[-1]}" "$STATE/sandbox.log" \
  http_ok "http://127.0.0.1:${SANDBOX_PORT}/_sandbox/state"

say "starting the Buildium emulator on http://127.0.0.1:${BUILDIUM_PORT} (log: $STATE/buildium.log)"
# Webhook retries 60 times faster than Buildium's 1 min / 10 min / 1 h, for a local trial.
start "the Buildium emulator" "$BIN" sandbox-buildium --listen "127.0.0.1:${BUILDIUM_PORT}" \
  --webhook-url "http://127.0.0.1:${HTTP_PORT}/webhooks/buildium" \
  --secret-file "$STATE/buildium-webhook-secret" --client-id quickstart \
  --client-secret-file "$STATE/buildium-client-secret" --retry-scale 60 2>"$STATE/buildium.log"
wait_for "the Buildium emulator" "${child_pids[-1]}" "$STATE/buildium.log" \
  http_ok "http://127.0.0.1:${BUILDIUM_PORT}/_sandbox/leases"

if [ "$SMOKE" = 1 ]; then
  serve_log="$STATE/serve.log"
  say "starting lease-sync serve on http://127.0.0.1:${HTTP_PORT} (log: $serve_log)"
  start "lease-sync serve" "$BIN" serve --config "$CONFIG" 2>"$serve_log"
else
  serve_log="the output above"
  say "starting lease-sync serve on http://127.0.0.1:${HTTP_PORT} (config: $CONFIG)"
  start "lease-sync serve" "$BIN" serve --config "$CONFIG"
fi
serve_pid=${child_pids[-1]}
wait_for "lease-sync serve" "$serve_pid" "$serve_log" \
  http_ok "http://127.0.0.1:${ADMIN_PORT}/readyz"

USER_ID=01JD3ZJ4Q8W6V5T2N9K7H1M0PX
SEND=("$BIN" send-test-event --config "$CONFIG" --source demo-pms --type lease.signed
  --lease L-1042 --property P-17 --user "$USER_ID")
printf -v SEND_LINE '%q ' "${SEND[@]}"
# A Buildium tenant who is an OpenApp user: a lease for them in the emulator reaches the sandbox.
TENANT_ID=01JD3ZJ4Q8W6V5T2N9K7H1M0PY
TENANT_EMAIL=ada.tenant@example.com
ADD_USER=(curl -fsS --max-time 5 -H 'content-type: application/json'
  -d "{\"org_id\":\"01HDEMOORG000000000000000A\",\"id\":\"$TENANT_ID\",\"name\":\"Ada Tenant\",\"email\":\"$TENANT_EMAIL\"}"
  "http://127.0.0.1:${SANDBOX_PORT}/_sandbox/users")
ADD_LEASE=(curl -fsS --max-time 5 -H 'content-type: application/json'
  -d "{\"PropertyId\":23,\"UnitId\":7,\"LeaseFromDate\":\"$(date -u -d '30 days ago' +%F)\",\"LeaseToDate\":\"$(date -u -d '335 days' +%F)\",\"Tenants\":[{\"FirstName\":\"Ada\",\"LastName\":\"Tenant\",\"Email\":\"$TENANT_EMAIL\"}]}"
  "http://127.0.0.1:${BUILDIUM_PORT}/_sandbox/leases")
printf -v ADD_USER_LINE '%q ' "${ADD_USER[@]}"
printf -v ADD_LEASE_LINE '%q ' "${ADD_LEASE[@]}"
printf -v BIN_Q '%q' "$BIN"
printf -v CONFIG_Q '%q' "$CONFIG"

if [ "$SMOKE" = 1 ]; then
  say "smoke test: sending a signed lease.signed event for resident $USER_ID"
  "${SEND[@]}" >"$STATE/send-test-event.log" 2>&1 || {
    cat "$STATE/send-test-event.log" >&2
    die "send-test-event failed (output above; serve's log: $serve_log)"
  }
  in_sandbox() { curl -fsS --max-time 2 "http://127.0.0.1:${SANDBOX_PORT}/_sandbox/state" 2>/dev/null | grep -q "$1"; }
  reached=0
  for _ in $(seq 1 100); do
    if in_sandbox "$USER_ID"; then
      reached=1
      break
    fi
    sleep 0.1
  done
  [ "$reached" = 1 ] ||
    die "smoke test failed: the resident never reached the sandbox; see $serve_log and $STATE/sandbox.log"
  say "smoke test: the resident is a building user in the sandbox"

  say "smoke test: creating a Buildium lease for tenant $TENANT_EMAIL, an OpenApp user"
  "${ADD_USER[@]}" >/dev/null || die "could not create the tenant's user in the OpenApp sandbox"
  "${ADD_LEASE[@]}" >/dev/null || die "could not create a lease in the Buildium emulator; see $STATE/buildium.log"
  for _ in $(seq 1 200); do
    if in_sandbox "$TENANT_ID"; then
      say "smoke test passed: the resident and the Buildium tenant are building users in the sandbox"
      say "run ./scripts/quickstart.sh (without QUICKSTART_SMOKE) to keep it running and try it by hand"
      exit 0
    fi
    sleep 0.1
  done
  die "smoke test failed: the Buildium tenant never reached the sandbox; see $serve_log, $STATE/buildium.log and $STATE/sandbox.log"
fi

cat <<MSG

    lease-sync is ready. In another terminal, send a signed test event:
      ${SEND_LINE}
    then see the resident in the sandbox:
      curl -s http://127.0.0.1:${SANDBOX_PORT}/_sandbox/state
    and remove them again with --type lease.ended.

    Buildium: make Ada an OpenApp user, then sign her a lease in the Buildium emulator
    (property 23); its webhook makes lease-sync read the lease and give her the door:
      ${ADD_USER_LINE}
      ${ADD_LEASE_LINE}
    Leases, webhook deliveries and API reads: http://127.0.0.1:${BUILDIUM_PORT}/_sandbox/leases,
    /_sandbox/deliveries and /_sandbox/reads. Tenants without an OpenApp user are conflicts:
      $BIN_Q conflicts list --config $CONFIG_Q
    Dead letters and queue depth:
      $BIN_Q dead-letters list --config $CONFIG_Q
      $BIN_Q queue stats --config $CONFIG_Q
    Admin API (bearer token in $STATE/admin-token): http://127.0.0.1:${ADMIN_PORT}/admin/openapi.json

    Ctrl-C stops serve, the sandboxes$([ "$redis_ours" = 1 ] && echo " and the Redis this script started").

MSG

status=0
wait "$serve_pid" || status=$?
die "lease-sync serve exited on its own (status $status); see $serve_log"
