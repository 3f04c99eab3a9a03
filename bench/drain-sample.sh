#!/usr/bin/env bash
# Redis's cost per job in the 0 ms drain, sampled from Redis itself: one single run of the
# harness (no scrapes), with `INFO all` read twice, 5 s apart, while the worker drains. Prints
# the drain rate and, per job between the two readings: commands run inside scripts, script
# time (`INFO commandstats`), Redis CPU (`used_cpu_*`), AOF bytes appended and forks (an AOF
# rewrite in the window makes the AOF figure meaningless), bytes read from and written to
# clients; then the CPU per job of the worker
# and of the OpenApp sandbox (`/proc/PID/stat`) and the machine's idle share over the same
# window, which say whether the machine, not Redis, ran out of CPU; and how much of the window
# Redis's main thread ran and how much it waited for a CPU (`/proc/PID/task/PID/schedstat`).
# Each process's CPU is also split into user and kernel time (system calls, loopback TCP, the
# fsyncs), and the machine's busy time into user, system and interrupt (softirq: the network
# stack's receive path runs there) time.
# For comparing two builds, run it alternately on each (BENCHMARKS.md, "What each change
# bought"); a single run moves by ±15 %.
#
# DRAIN_SAMPLE_REDIS_FIFO=1 runs Redis's main thread under SCHED_FIFO for the window (`chrt`,
# needs root): it then never waits for a CPU, as if it had a core of its own
# (BENCHMARKS.md, "Redis first on the CPU").
#
# usage: bench/drain-sample.sh [LEASE_SYNC_BINARY [HARNESS_ARGS ...]]
#   (default binary: target/release/lease-sync; HARNESS_ARGS go to `lease-sync-bench run`,
#   e.g. --concurrency 32)
# Needs redis-cli (Debian's redis-tools) and a release build of lease-sync-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/lease-sync}")
shift || true
bench=${CARGO_TARGET_DIR:-target}/release/lease-sync-bench
work=$(mktemp -d "${TMPDIR:-/tmp}/lease-sync-drain-sample.XXXXXX")
# The harness runs in a process group of its own, so that a failure here (or ^C) stops it and
# the processes it started instead of leaving them to the next run.
harness=
trap '[ -n "$harness" ] && kill -- -"$harness" 2>/dev/null; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

setsid "$bench" run --runs 1 --scrape-every 0 --lease-sync "$bin" --out "$work/out" \
  --work "$work/run" --keep-work "$@" >"$work/run.log" 2>&1 &
harness=$!

# The drain's worker is the one started with this run's 0 ms config; the run's Redis logs its port.
config="$work/run/run-1/work-0ms-1.toml"
for _ in $(seq 1 1200); do
  pgrep -f -- "--config $config" >/dev/null && break
  kill -0 "$harness" 2>/dev/null || { cat "$work/run.log"; exit 1; }
  sleep 0.5
done
port=$(grep -o 'port=[0-9]*' "$work/run/run-1/redis/redis.log" | head -1 | cut -d= -f2)
worker=$(pgrep -f -- "--config $config" | head -1)
sandbox=$(pgrep -g "$harness" -f "$bin sandbox-openapp" | head -1 || true)
redis=$(redis-cli -p "$port" INFO server | tr -d '\r' | sed -n 's/^process_id://p')
if [ -n "${DRAIN_SAMPLE_REDIS_FIFO:-}" ]; then chrt -f -p 10 "$redis"; fi
# utime and stime of a process, in clock ticks (0 0 once it is gone).
ticks() { [ -n "$1" ] && awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat" 2>/dev/null || echo 0 0; }
# Redis's main thread: ns on a CPU, ns waiting for one (0 0 where the kernel lacks schedstat).
sched() { cat "/proc/$redis/task/$redis/schedstat" 2>/dev/null | cut -d' ' -f1,2 || echo 0 0; }
sample() { echo "$(ticks "$worker") $(ticks "$sandbox") $(sched) $(date +%s%N) $(head -1 /proc/stat)"; }
sleep 1
redis-cli -p "$port" INFO all >"$work/info.1"
sample >"$work/procs.1"
sleep 5
redis-cli -p "$port" INFO all >"$work/info.2"
sample >"$work/procs.2"
wait "$harness"
harness=

python3 - "$work/info.1" "$work/info.2" "$work/procs.1" "$work/procs.2" "$(getconf CLK_TCK)" <<'PY'
import re, sys

def load(path):
    calls, fields = {}, {}
    for line in open(path):
        m = re.match(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", line)
        if m:
            calls[m[1]] = (int(m[2]), int(m[3]))
        if ":" in line:
            k, v = line.strip().split(":", 1)
            fields[k] = v
    return calls, fields

(c1, f1), (c2, f2) = load(sys.argv[1]), load(sys.argv[2])
# Every finished job leaves the in-flight set with one ZREM.
jobs = c2["zrem"][0] - c1.get("zrem", (0, 0))[0]
if jobs <= 0:
    sys.exit("no job finished between the two readings")
inner = sum(c2[k][0] - c1.get(k, (0, 0))[0] for k in c2 if k not in ("evalsha", "eval", "info"))
script_us = (c2["evalsha"][1] - c1.get("evalsha", (0, 0))[1]) / jobs
cpu = lambda f: float(f["used_cpu_sys"]) + float(f["used_cpu_user"])
cpu_us = (cpu(f2) - cpu(f1)) * 1e6 / jobs
aof = (int(f2["aof_current_size"]) - int(f1["aof_current_size"])) / jobs
net = lambda key: (int(f2[key]) - int(f1[key])) / jobs
forks = int(f2["total_forks"]) - int(f1["total_forks"])
calls = c2["evalsha"][0] - c1.get("evalsha", (0, 0))[0]
print(f"jobs {jobs}  script calls/job {calls / jobs:.3f}  commands/job {inner / jobs:.2f}  script µs/job {script_us:.1f}  "
      f"Redis CPU µs/job {cpu_us:.1f}  AOF B/job {aof:.0f}  forks {forks}")
print(f"bytes/job to Redis {net('total_net_input_bytes'):.0f}  from Redis {net('total_net_output_bytes'):.0f}")
# Worker and sandbox CPU per job, and the machine's idle share, over the same window.
(wu1, ws1, su1, ss1, run1, wait1, ns1, *m1), (wu2, ws2, su2, ss2, run2, wait2, ns2, *m2) = (
    [int(x) for x in open(p).read().split() if x.isdigit()] for p in sys.argv[3:5])
tick_us = 1e6 / int(sys.argv[5])
per_job = lambda ticks: ticks * tick_us / jobs
# A process that exited before the second reading (the drain ended inside the window) reads 0.
gone = wu2 + ws2 < wu1 + ws1 or su2 + ss2 < su1 + ss1
w_user, w_kernel = per_job(wu2 - wu1), per_job(ws2 - ws1)
s_user, s_kernel = per_job(su2 - su1), per_job(ss2 - ss1)
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...
busy = [b - a for a, b in zip(m1, m2)]
total = sum(busy[:8]) or 1
idle = (busy[3] + busy[4]) / total
redis_user = (float(f2["used_cpu_user"]) - float(f1["used_cpu_user"])) * 1e6 / jobs
redis_kernel = (float(f2["used_cpu_sys"]) - float(f1["used_cpu_sys"])) * 1e6 / jobs
if gone:
    print(f"worker and sandbox CPU: n/a (the drain ended before the second reading)  "
          f"machine idle+iowait {idle:.0%}")
    print(f"user/kernel µs/job: Redis {redis_user:.1f}/{redis_kernel:.1f}")
else:
    print(f"worker CPU µs/job {w_user + w_kernel:.1f}  sandbox CPU µs/job {s_user + s_kernel:.1f}  "
          f"machine idle+iowait {idle:.0%}")
    print(f"user/kernel µs/job: Redis {redis_user:.1f}/{redis_kernel:.1f}  worker {w_user:.1f}/{w_kernel:.1f}  "
          f"sandbox {s_user:.1f}/{s_kernel:.1f}")
print(f"machine: user {(busy[0] + busy[1]) / total:.0%}  system {busy[2] / total:.0%}  "
      f"irq+softirq {(busy[5] + busy[6]) / total:.0%}  steal {busy[7] / total:.0%}")
if ns2 > ns1 and run2 > run1:
    print(f"Redis main thread: on a CPU {(run2 - run1) / (ns2 - ns1):.0%}, "
          f"waiting for one {(wait2 - wait1) / (ns2 - ns1):.0%} of the window")
PY
grep -o 'drain 0 ms → .*jobs/s' "$work/run.log"
