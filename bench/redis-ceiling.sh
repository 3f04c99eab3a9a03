#!/usr/bin/env bash
# How fast Redis alone could run lease-sync's jobs: the Redis work of a happy-path convergence
# (the claim and the finish, with the real commands, key names and value sizes:
# bench/redis-ceiling/job.lua) driven by redis-benchmark, with no worker, no OpenApp and no
# lease-sync code, against the RPOP yardstick of `bench/run.sh` on the same Redis settings.
# A ceiling for the 0 ms drain: lease-sync cannot drain faster than Redis can do this work.
#
# Each run starts a Redis (`appendfsync always`, Redis's other defaults, AOF rewrites
# included), preloads what ingest leaves for 120,000 jobs, then runs 120,000 jobs in script
# calls of 6 (about what the worker's batches carry) from 16 connections (the worker's
# concurrency). Layouts alternate within each run, so a slow moment of the machine falls on
# all of them. Prints, per layout and run: jobs/s, its ratio to RPOP, Redis CPU and script
# time per job, AOF bytes per job and the AOF rewrites during the run, and the costliest
# commands inside the scripts (`INFO commandstats`).
#
# usage: bench/redis-ceiling.sh [--runs N] [--connections C] [--jobs-per-call J] [--short] [LAYOUT ...]
#   layouts (job.lua): lists, records-in-hash (this release; the default with lists),
#   lock-in-hash, three-writes
#   --connections (16), --jobs-per-call (6): at most C × J jobs reach Redis per turn of its
#   event loop, and each turn ends with one fsync
#   --short: 1,200 jobs, one run, every layout: checks that each works (CI), in seconds
# Fails if a layout's script failed (the jobs it counted fall short).
# Needs redis-server, redis-cli and redis-benchmark (Debian: redis-server, redis-tools).
set -euo pipefail
cd "$(dirname "$0")/redis-ceiling"

runs=3
jobs=120000
per_call=6
connections=16
yardstick_requests=200000
layouts=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --runs)
      runs="$2"
      shift
      ;;
    --connections)
      connections="$2"
      shift
      ;;
    --jobs-per-call)
      per_call="$2"
      shift
      ;;
    --short)
      runs=1
      jobs=1200
      yardstick_requests=2000
      layouts=(lists records-in-hash lock-in-hash three-writes)
      ;;
    *) layouts+=("$1") ;;
  esac
  shift
done
[ "${#layouts[@]}" -gt 0 ] || layouts=(lists records-in-hash)
for layout in "${layouts[@]}"; do
  case "$layout" in
    lists | records-in-hash | lock-in-hash | three-writes) ;;
    *)
      echo "error: unknown layout \`$layout\` (lists, records-in-hash, lock-in-hash, three-writes)" >&2
      exit 2
      ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/lease-sync-redis-ceiling.XXXXXX")
port=
cleanup() {
  [ -n "$port" ] && redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A Redis on a free loopback port, in a directory of its own.
start_redis() {
  local dir="$work/redis-$1"
  mkdir -p "$dir"
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 20000))
    redis-cli -p "$port" ping >/dev/null 2>&1 && continue
    if redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
      --appendfsync always --save '' --daemonize yes --logfile "$dir/redis.log" >/dev/null; then
      for _ in $(seq 1 100); do
        # Ours, not another server that took the port meanwhile: it runs in our directory.
        if redis-cli -p "$port" ping >/dev/null 2>&1; then
          [ "$(redis-cli -p "$port" CONFIG GET dir | tail -1)" = "$(cd "$dir" && pwd -P)" ] && return 0
          break
        fi
        sleep 0.05
      done
    fi
  done
  port=
  echo "error: could not start redis-server" >&2
  exit 1
}

stop_redis() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  port=
}

info() { redis-cli -p "$port" INFO "$1" | tr -d '\r'; }
field() { sed -n "s/^$1:\([^,]*\).*/\1/p"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Values of the sizes the real scripts write (see BENCHMARKS.md, "The ceiling").
job='{"v":1,"delivery_id":"01M90F2VWPCW1XJ2B1B90HQKS9","event_id":"evt_01m90f2vny0k1ej0h0k092kcm0_2598","source":"bench","event_type":"lease.signed","occurred_at":"2026-12-04T12:04:54.079031433Z","lease_id":"L-01m90f2vny0k1ej0h0k092kcm0-2598","property_id":"P-1","user_id":"u01m90f2vny0k1ej0h0k092kcm0-2598","org_id":"01HBENCHORG000000000000000","integration_id":"01HBENCHINT000000000000000","role":"virtual_access:integration:01HBENCHINT000000000000000:resident"}'
event='{"id":"evt_01m90f2vny0k1ej0h0k092kcm0_2598","type":"lease.signed","occurred_at":"2026-12-04T12:04:54.079031433Z","lease":{"id":"L-01m90f2vny0k1ej0h0k092kcm0-2598","property_id":"P-1","unit":"4B"},"residents":[{"openapp_user_id":"u01m90f2vny0k1ej0h0k092kcm0-2598","external_id":"T-2598"}]}'
lease='{"state":"active","starts_at":null,"ends_at":null,"occurred_at":1796385894079,"rank":0,"event_id":"evt_01m90f2vny0k1ej0h0k092kcm0_252","source":"bench","property_id":"P-1"}'
entry='{"at":1796385818381,"kind":"attempt","delivery_id":"01M90F0H66W0NR20ND82NZCEKD","attempt":1,"desired":"present","reason":"lease L-r1f-107 of bench grants access from its start","action":"add","outcome":"added","status":201,"request_id":"01M90F0HRD1XN4J6SVQ5Z8Y7X6","trigger":"event"}'
record='{"attempt":1,"outcome":"delivered","started_at":1796385818372,"finished_at":1796385818381,"action":"add","status":201,"request_id":"01M90F0HRD1XN4J6SVQ5Z8Y7X6","task":"01M90F0H66N99Q7A4NVAGNBEBZ"}'
fold='{"at":1796385817798,"kind":"folded","source":"bench","event_id":"evt_r1f_107","lease_id":"L-r1f-107","event_type":"lease.signed","outcome":"changed","delivery_id":"01M90F0H66W0NR20ND82NZCEKD"}'

echo "redis: $(redis-server --version)"
echo "jobs per script call: $per_call, connections: $connections"
for run in $(seq 1 "$runs"); do
  start_redis "yardstick-$run"
  # As bench/run.sh measures it: RPOP right after LPUSH, so each pops a 1 KB value (a write).
  rpop=$(redis-benchmark -p "$port" -c 50 -n "$yardstick_requests" -d 1024 -t lpush,rpop --csv |
    awk -F'"' '$2 == "RPOP" {print $4}')
  stop_redis
  echo "run $run: RPOP yardstick $rpop ops/s"
  for layout in "${layouts[@]}"; do
    start_redis "$layout-$run"
    preload=$(redis-cli -p "$port" SCRIPT LOAD "$(cat preload.lua)")
    for first in $(seq 0 1000 $((jobs - 1))); do
      redis-cli -p "$port" EVALSHA "$preload" 0 "$first" $((first + 1000)) "$job" "$event" "$lease" >/dev/null
    done
    sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat job.lua)")
    redis-cli -p "$port" CONFIG RESETSTAT >/dev/null
    pid=$(info server | field process_id)
    persistence=$(info persistence)
    aof0=$(field aof_current_size <<<"$persistence")
    rewrites0=$(field aof_rewrites <<<"$persistence")
    cpu0=$(cpu_ticks "$pid")
    # __rand_int__: a job id below $jobs, so every job finds what ingest left for it.
    rps=$(redis-benchmark -p "$port" -c "$connections" -n $((jobs / per_call)) -r "$jobs" -q \
      EVALSHA "$sha" 0 "$per_call" __rand_int__ 1796385818381 "$entry" "$record" "$layout" "$fold" |
      tr '\r' '\n' | sed -n 's/.* \([0-9.]*\) requests per second.*/\1/p' | tail -1)
    cpu1=$(cpu_ticks "$pid")
    # Each script call counts its jobs when it completes; an error anywhere stops the count.
    counted=$(redis-cli -p "$port" HGET '{bench}:stats' delivered)
    if [ "$counted" != "$jobs" ]; then
      echo "error: layout $layout: $counted of $jobs jobs done; the script failed:" >&2
      redis-cli -p "$port" EVALSHA "$sha" 0 1 0 1796385818381 "$entry" "$record" "$layout" "$fold" >&2
      exit 1
    fi
    persistence=$(info persistence)
    aof1=$(field aof_current_size <<<"$persistence")
    rewrites=$(($(field aof_rewrites <<<"$persistence") - rewrites0))
    commandstats=$(info commandstats)
    script_usec=$(sed -n 's/^cmdstat_evalsha:calls=[0-9]*,usec=\([0-9]*\).*/\1/p' <<<"$commandstats")
    # The commands the scripts ran, costliest first: µs per job (calls per job).
    costliest=$(sed -n 's/^cmdstat_\([a-z]*\):calls=\([0-9]*\),usec=\([0-9]*\).*/\1 \2 \3/p' <<<"$commandstats" |
      awk -v n="$jobs" '$1 != "evalsha" && $1 != "config" && $1 != "info" {
          printf "%.2f %s %.2f (%.1f)\n", $3 / n, $1, $3 / n, $2 / n }' |
      sort -rn | head -6 | cut -d' ' -f2- | paste -sd' ' | sed 's/ (/(/g; s/) /), /g')
    ticks=$(getconf CLK_TCK)
    awk -v layout="$layout" -v rps="$rps" -v per="$per_call" -v rpop="$rpop" -v n="$jobs" \
      -v cpu=$((cpu1 - cpu0)) -v hz="$ticks" -v us="$script_usec" -v aof=$((aof1 - aof0)) \
      -v rw="$rewrites" 'BEGIN {
        # A rewrite starts the AOF afresh: its growth then says nothing of what was appended.
        bytes = rw == 0 ? sprintf("%5d", aof / n) : "  n/a"
        printf "  %-16s %7d jobs/s = %.2f × RPOP   Redis CPU %5.1f µs/job   script %5.1f µs/job   AOF %s B/job   rewrites %d\n",
          layout, rps * per, rps * per / rpop, cpu * 1e6 / hz / n, us / n, bytes, rw }'
    echo "                     costliest commands, µs per job (calls per job): $costliest"
    stop_redis
  done
done
