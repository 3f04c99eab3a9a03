//! The benchmark run: the redis-benchmark yardstick, then per run a fresh Redis, a
//! `lease-sync ingest` process measured at a fixed and at the maximum rate, and two
//! `lease-sync work` processes draining the queue against the OpenApp sandbox at 0 ms and
//! 50 ms. Every wait is a bounded poll; every process is stopped at the end.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lease_sync::config::{LogFormat, PropertySettings, Settings, hash_token};
use lease_sync_testkit::config::{count, standard_webhooks_source};
use lease_sync_testkit::{
    Appendfsync, ConfigBuilder, OnDrop, Process, ProcessBuilder, RedisOptions, RedisServer,
    free_port, poll_until, toml_with_secrets,
};

use crate::dashboard::Phase;
use crate::load::{self, Batch, EventSpec, Pace};
use crate::procs::{self, http_ok, loopback};
use crate::report::{
    DrainRun, IngestRun, Machine, MachineLoad, Run, Setup, Usage, Yardstick, median,
};
use crate::scrape::Scraper;

/// Fixed identities of the benchmark's source, building and OpenApp account.
const SOURCE: &str = "bench";
/// `whsec_` + base64 of 26 bytes.
const SECRET: &str = "whsec_bGVhc2Utc3luYy1iZW5jaC1zZWNyZXQtMjQ=";
const PROPERTY: &str = "P-1";
const ORG: &str = "01HBENCHORG000000000000000";
const INTEGRATION: &str = "01HBENCHINT000000000000000";
const API_KEY: &str = "bench_openapp_key_0123456789";
const ADMIN_TOKEN: &str = "lsat_bench_admin_token_0123456789";
const NAMESPACE: &str = "bench";

/// What to run and how big.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `lease-sync` binary.
    pub lease_sync: PathBuf,
    /// Scratch directory: configs, logs, Redis data.
    pub work: PathBuf,
    /// Runs of each measurement.
    pub runs: usize,
    /// Requests per redis-benchmark test.
    pub yardstick_requests: usize,
    /// Fixed rate; default a quarter of 0.30 × the LPUSH median.
    pub fixed_rate: Option<f64>,
    /// Length of the fixed-rate run.
    pub fixed_secs: f64,
    /// Connections of the fixed-rate run.
    pub fixed_connections: usize,
    /// Events of the maximum-rate run.
    pub max_events: usize,
    /// Connections of the maximum-rate run.
    pub max_connections: usize,
    /// Jobs drained at 50 ms.
    pub drain_50_jobs: usize,
    /// Unmeasured events sent first to each ingest process.
    pub warmup_events: usize,
    /// `worker.concurrency`.
    pub concurrency: usize,
    /// `appendfsync` of Redis.
    pub appendfsync: Appendfsync,
    /// Other Redis settings (name, value), set on every Redis of the run (`--redis-config`).
    pub redis_config: Vec<(String, String)>,
    /// Body size of every event.
    pub body_bytes: usize,
    /// Scrape interval.
    pub scrape_every: Duration,
}

/// `worker.batch_size` and `worker.poll_interval_ms`: the example configuration's defaults.
const BATCH_SIZE: usize = 50;
const POLL_INTERVAL_MS: u64 = 250;

/// The setup as recorded in the results.
pub fn setup(opts: &Options, fixed_rate: f64) -> Setup {
    Setup {
        appendfsync: opts.appendfsync.to_string(),
        redis_config: opts
            .redis_config
            .iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect(),
        concurrency: opts.concurrency,
        batch_size: BATCH_SIZE,
        poll_interval_ms: POLL_INTERVAL_MS,
        fixed_events: fixed_events(opts, fixed_rate),
        fixed_rate,
        fixed_connections: opts.fixed_connections,
        max_events: opts.max_events,
        max_connections: opts.max_connections,
        drain_50_jobs: opts.drain_50_jobs,
        yardstick_requests: opts.yardstick_requests,
        body_bytes: opts.body_bytes,
        scrape_interval_s: opts.scrape_every.as_secs_f64(),
    }
}

fn fixed_events(opts: &Options, rate: f64) -> usize {
    ((rate * opts.fixed_secs).round() as usize).max(1)
}

/// Reads the machine and software versions.
pub fn machine(build: &str, quiet_wait_s: f64) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let run = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    };
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model,
        mem_gib: mem_kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        redis: run("redis-server", "--version"),
        rustc: run("rustc", "--version"),
        build: build.to_owned(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        quiet_wait_s,
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until the 1-minute load average is below `below`, polling every 10 s for at most
/// `limit`. Returns the seconds waited.
pub async fn wait_quiet(below: f64, limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let one: f64 = loadavg()
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if one < below {
            return start.elapsed().as_secs_f64();
        }
        if start.elapsed() >= limit {
            eprintln!("machine never got quiet (load {one}); measuring anyway");
            return start.elapsed().as_secs_f64();
        }
        eprintln!("waiting for a quiet machine: 1-minute load {one} ≥ {below}");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// One redis-benchmark run (LPUSH and RPOP, 1 KB values, 50 clients) on a fresh Redis.
pub async fn yardstick(opts: &Options, index: usize) -> anyhow::Result<Yardstick> {
    let dir = opts.work.join(format!("yardstick-{index}"));
    let mut redis = start_redis(&dir, opts.appendfsync).await?;
    configure_redis(&redis, &opts.redis_config).await?;
    let output = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
            .args(["-t", "lpush,rpop", "-d", &opts.body_bytes.to_string()])
            .args([
                "-n",
                &opts.yardstick_requests.to_string(),
                "-c",
                "50",
                "--csv",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("redis-benchmark took over 10 minutes")?
    .context("cannot run redis-benchmark (apt-get install redis-tools)")?;
    redis.terminate(Duration::from_secs(10)).await;
    if !output.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let csv = String::from_utf8_lossy(&output.stdout).into_owned();
    let row = |test: &str| -> anyhow::Result<(f64, f64)> {
        let header: Vec<String> = csv
            .lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|c| c.trim_matches('"').to_owned())
            .collect();
        let line = csv
            .lines()
            .find(|l| l.trim_start_matches('"').starts_with(test))
            .with_context(|| format!("no {test} line in redis-benchmark's output:\n{csv}"))?;
        let cells: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .and_then(|i| cells.get(i))
                .and_then(|v| v.parse::<f64>().ok())
        };
        Ok((
            col("rps").context("no rps column")?,
            col("p99_latency_ms").unwrap_or(f64::NAN),
        ))
    };
    let (lpush_rps, lpush_p99_ms) = row("LPUSH")?;
    let (rpop_rps, rpop_p99_ms) = row("RPOP")?;
    Ok(Yardstick {
        lpush_rps,
        rpop_rps,
        lpush_p99_ms,
        rpop_p99_ms,
        csv,
    })
}

/// The fixed rate for a yardstick: a quarter of the ingest target, 0.30 × LPUSH.
pub fn default_fixed_rate(yardstick: &[Yardstick]) -> f64 {
    (0.25 * 0.30 * median(yardstick.iter().map(|y| y.lpush_rps))).max(1.0)
}

/// The configuration of every lease-sync process of a run: lease-sync's defaults (which
/// `deploy/config.example.toml` shows) except addresses, credentials, the rate limit (raised
/// so it never limits, but still evaluated), the worker's concurrency and JSON logs.
fn config(
    redis_url: &str,
    http_port: u16,
    admin_port: u16,
    sandbox_port: u16,
    concurrency: usize,
) -> anyhow::Result<Settings> {
    let concurrency = NonZeroUsize::new(concurrency).context("worker.concurrency must not be 0")?;
    Ok(ConfigBuilder::new()
        .listen(http_port)
        .redis(redis_url, NAMESPACE)
        .sandbox_openapp(&format!("http://127.0.0.1:{sandbox_port}/api/v1"), API_KEY)
        .admin(admin_port, [hash_token(ADMIN_TOKEN)])
        .source(standard_webhooks_source(
            SOURCE,
            &[SECRET],
            [PropertySettings::new(PROPERTY, ORG, INTEGRATION)],
        ))
        .edit(|s| {
            s.http.rate_limit_per_sec = 1_000_000;
            s.http.rate_limit_burst = 1_000_000;
            s.worker.concurrency = concurrency;
            s.worker.poll_interval = Duration::from_millis(POLL_INTERVAL_MS);
            s.worker.batch_size = count(BATCH_SIZE);
            s.log.format = LogFormat::Json;
            s.log.level = "info".into();
        })
        .build())
}

/// CPU counters of the machine and of the harness's processes at one moment.
struct Snapshot {
    at: Instant,
    busy_s: f64,
    ours: Vec<(u32, Duration)>,
}

fn snapshot(pids: &[u32]) -> Snapshot {
    let mut ours: Vec<(u32, Duration)> = pids
        .iter()
        .map(|&pid| (pid, procs::cpu_time(pid).unwrap_or_default()))
        .collect();
    ours.push((
        std::process::id(),
        procs::cpu_time(std::process::id()).unwrap_or_default(),
    ));
    Snapshot {
        at: Instant::now(),
        busy_s: procs::machine_busy_s(),
        ours,
    }
}

impl Snapshot {
    fn cpu_of(&self, pid: u32) -> Duration {
        self.ours
            .iter()
            .find(|(p, _)| *p == pid)
            .map_or(Duration::ZERO, |(_, d)| *d)
    }

    /// Usage of `pid` between `self` and `later`, per `events`.
    fn usage(&self, later: &Snapshot, pid: u32, events: u64) -> Usage {
        let cpu = later
            .cpu_of(pid)
            .saturating_sub(self.cpu_of(pid))
            .as_secs_f64();
        let wall = (later.at - self.at).as_secs_f64().max(1e-9);
        Usage {
            cpu_s: cpu,
            cpu_us_per_event: if events > 0 {
                cpu * 1e6 / events as f64
            } else {
                0.0
            },
            cores: cpu / wall,
            peak_rss_mib: procs::status_kib(pid, "VmHWM").map_or(0.0, |k| k as f64 / 1024.0),
        }
    }

    fn machine(&self, later: &Snapshot) -> MachineLoad {
        let wall = (later.at - self.at).as_secs_f64().max(1e-9);
        let busy = (later.busy_s - self.busy_s) / wall;
        let ours: f64 = later
            .ours
            .iter()
            .map(|(pid, cpu)| cpu.saturating_sub(self.cpu_of(*pid)).as_secs_f64())
            .sum::<f64>()
            / wall;
        MachineLoad {
            busy_cores: busy,
            ours_cores: ours,
            other_cores: (busy - ours).max(0.0),
        }
    }
}

/// How long a lease-sync role or the sandbox may take to answer after it starts.
pub const READY_LIMIT: Duration = Duration::from_secs(30);

/// A process dropped while running (a run failed half-way) gets SIGTERM, then SIGKILL after 5 s.
pub const STOP_ON_DROP: OnDrop = OnDrop::Stop(Duration::from_secs(5));

/// A fresh redis-server for a run or a yardstick, its data in `dir`: production persistence
/// with `appendfsync`, 30 s to answer PING, stopped like the other processes if dropped.
pub async fn start_redis(dir: &Path, appendfsync: Appendfsync) -> anyhow::Result<RedisServer> {
    RedisServer::start_with(
        RedisOptions::default()
            .dir(dir)
            .appendfsync(appendfsync)
            .start_limit(Duration::from_secs(30))
            .on_drop(STOP_ON_DROP),
    )
    .await
}

/// `NAME VALUE` (or `NAME=VALUE`) of `--redis-config`.
pub fn parse_redis_setting(setting: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = setting
        .trim()
        .split_once([' ', '='])
        .with_context(|| format!("--redis-config `{setting}`: expected `NAME VALUE`"))?;
    anyhow::ensure!(
        !name.is_empty() && !value.trim().is_empty(),
        "--redis-config `{setting}`: expected `NAME VALUE`"
    );
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// Applies `settings` to `redis` with `CONFIG SET`.
async fn configure_redis(redis: &RedisServer, settings: &[(String, String)]) -> anyhow::Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    for (name, value) in settings {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("CONFIG SET {name} {value}"))?;
    }
    Ok(())
}

/// Whether a stopped process exited by itself (on SIGTERM) with status 0.
fn clean_exit(status: Option<std::process::ExitStatus>) -> bool {
    status.is_some_and(|s| s.success())
}

/// Processes and addresses of one run.
struct Cluster {
    lease_sync: PathBuf,
    dir: PathBuf,
    redis: RedisServer,
    http: u16,
    ingest_admin: u16,
    worker_admin: u16,
    sandbox_port: u16,
    client: reqwest::Client,
    redis_conn: redis::aio::MultiplexedConnection,
    spec: EventSpec,
}

impl Cluster {
    fn write_config(
        &self,
        name: &str,
        admin_port: u16,
        concurrency: usize,
    ) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{name}.toml"));
        let settings = config(
            &self.redis.url(),
            self.http,
            admin_port,
            self.sandbox_port,
            concurrency,
        )?;
        let text = toml_with_secrets(&settings)?;
        std::fs::write(&path, format!("# Written by lease-sync-bench.\n{text}"))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    async fn spawn_role(
        &self,
        role: &str,
        name: &str,
        admin_port: u16,
        concurrency: usize,
    ) -> anyhow::Result<Process> {
        let config = self.write_config(name, admin_port, concurrency)?;
        let mut proc = self.lease_sync(name).arg(role).config(&config).spawn()?;
        let url = format!("http://127.0.0.1:{admin_port}/readyz");
        proc.wait_for(&format!("a 200 from {url}"), READY_LIMIT, || async {
            http_ok(&self.client, &url).await.then_some(())
        })
        .await?;
        Ok(proc)
    }

    async fn spawn_sandbox(&self, delay_ms: u64, name: &str) -> anyhow::Result<Process> {
        let mut proc = self
            .lease_sync(name)
            .arg("sandbox-openapp")
            .args(["--listen", &format!("127.0.0.1:{}", self.sandbox_port)])
            .args(["--api-key", API_KEY])
            .args(["--integration", &format!("{ORG}:{INTEGRATION}")])
            .args(["--delay-ms", &delay_ms.to_string()])
            // The sandbox stands for OpenApp, which runs elsewhere: its line per call (what
            // an integrator watches it for) would cost this machine's two cores about 15 %
            // of the sandbox's CPU per job, taken from Redis and the worker under test.
            .rust_log("warn")
            .spawn()?;
        let url = format!("http://127.0.0.1:{}/_sandbox/state", self.sandbox_port);
        proc.wait_for(&format!("a 200 from {url}"), READY_LIMIT, || async {
            http_ok(&self.client, &url).await.then_some(())
        })
        .await?;
        Ok(proc)
    }

    /// The lease-sync binary as `name`, its standard output and error appended to
    /// `<dir>/<name>.log`, stopped (SIGTERM, then SIGKILL after 5 s) if dropped while running.
    fn lease_sync(&self, name: &str) -> ProcessBuilder {
        ProcessBuilder::new(name, &self.lease_sync, self.dir.join(format!("{name}.log")))
            .append()
            .on_drop(STOP_ON_DROP)
    }

    async fn sandbox_users(&self) -> anyhow::Result<usize> {
        let url = format!("http://127.0.0.1:{}/_sandbox/state", self.sandbox_port);
        let state: serde_json::Value =
            serde_json::from_str(&self.client.get(&url).send().await?.text().await?)?;
        Ok(state[INTEGRATION]
            .as_object()
            .map_or(0, serde_json::Map::len))
    }

    /// `INFO commandstats`: calls per command (those run inside Lua scripts included).
    async fn command_calls(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.redis_conn)
            .await?;
        Ok(info
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect())
    }

    /// The queue's lifetime counters (`delivered`, `deferred`, `stale_tasks`, …).
    async fn stats(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let keys = lease_sync::queue::Keys::new(NAMESPACE);
        Ok(redis::cmd("HGETALL")
            .arg(keys.stats())
            .query_async(&mut self.redis_conn)
            .await?)
    }

    async fn delivered(&mut self) -> anyhow::Result<u64> {
        let keys = lease_sync::queue::Keys::new(NAMESPACE);
        let n: Option<u64> = redis::cmd("HGET")
            .arg(keys.stats())
            .arg("delivered")
            .query_async(&mut self.redis_conn)
            .await?;
        Ok(n.unwrap_or(0))
    }

    fn batch(&self, tag: &str, count: usize) -> anyhow::Result<Batch> {
        load::build_batch(&self.spec, loopback(self.http), tag, count)
    }
}

/// Calls per event of each Redis command between two `INFO commandstats` readings, those
/// under 0.01 left out.
fn per_event(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    events: u64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, calls)| {
            let delta = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
            (name.clone(), delta as f64 / events.max(1) as f64)
        })
        .filter(|(_, per)| *per >= 0.01)
        .map(|(name, per)| (name, (per * 100.0).round() / 100.0))
        .collect()
}

fn accepted(report: &load::LoadReport) -> u64 {
    report.statuses.get(&202).copied().unwrap_or(0)
}

/// Runs one complete measurement (fixed, max, drain 0 ms, drain 50 ms) on a fresh Redis.
pub async fn run_once(
    opts: &Options,
    index: usize,
    fixed_rate: f64,
    scraper: &Scraper,
    phases: &mut Vec<Phase>,
) -> anyhow::Result<Run> {
    let dir = opts.work.join(format!("run-{index}"));
    std::fs::create_dir_all(&dir)?;
    let redis = start_redis(&dir.join("redis"), opts.appendfsync).await?;
    configure_redis(&redis, &opts.redis_config).await?;
    let redis_conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await
        .context("cannot connect to the run's Redis")?;
    let mut cluster = Cluster {
        lease_sync: opts.lease_sync.clone(),
        dir: dir.clone(),
        http: free_port(),
        ingest_admin: free_port(),
        worker_admin: free_port(),
        sandbox_port: free_port(),
        redis,
        client: reqwest::Client::new(),
        redis_conn,
        spec: EventSpec {
            source: SOURCE.into(),
            secret: SECRET.into(),
            property: PROPERTY.into(),
            body_bytes: opts.body_bytes,
        },
    };
    let redis_pid = cluster.redis.pid();
    let http = loopback(cluster.http);

    let ingest_name = format!("ingest-{index}");
    let mut ingest = cluster
        .spawn_role(
            "ingest",
            &ingest_name,
            cluster.ingest_admin,
            opts.concurrency,
        )
        .await?;
    scraper.add(
        &ingest_name,
        &format!("http://127.0.0.1:{}/metrics", cluster.ingest_admin),
    );
    let mut queued: u64 = 0;

    // Warm-up: connections, the enqueue script, allocator; not measured.
    let warm = cluster.batch(&format!("r{index}w"), opts.warmup_events)?;
    let report = load::run(http, &warm, Pace::Max, 8).await?;
    queued += accepted(&report);

    let mut measure_ingest = async |tag: &str,
                                    pace: Pace,
                                    count: usize,
                                    connections: usize|
           -> anyhow::Result<IngestRun> {
        let batch = cluster.batch(tag, count)?;
        let pids = [ingest.pid(), redis_pid];
        scraper.scrape_now().await;
        let start_t = scraper.now();
        let calls_before = cluster.command_calls().await?;
        let before = snapshot(&pids);
        let report = load::run(http, &batch, pace, connections).await?;
        let after = snapshot(&pids);
        let redis_calls_per_event =
            per_event(&calls_before, &cluster.command_calls().await?, count as u64);
        phases.push(Phase {
            name: format!(
                "{} #{index}",
                if matches!(pace, Pace::Max) {
                    "ingest max"
                } else {
                    "ingest fixed"
                }
            ),
            start: start_t,
            end: scraper.now(),
        });
        scraper.scrape_now().await;
        ingest.check_alive()?;
        let n = report.requests as u64;
        Ok(IngestRun {
            ingest: before.usage(&after, ingest.pid(), n),
            redis: before.usage(&after, redis_pid, n),
            generator: before.usage(&after, std::process::id(), n),
            machine: before.machine(&after),
            load: report,
            redis_calls_per_event,
        })
    };
    let ingest_fixed = measure_ingest(
        &format!("r{index}f"),
        Pace::Fixed { rate: fixed_rate },
        fixed_events(opts, fixed_rate),
        opts.fixed_connections,
    )
    .await?;
    eprintln!(
        "run {index}: ingest fixed {:.0}/s → p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, non-2xx {}, errors {}",
        fixed_rate,
        ingest_fixed.load.latency_ms.p50,
        ingest_fixed.load.latency_ms.p99,
        ingest_fixed.load.latency_ms.p999,
        ingest_fixed.load.non_2xx,
        ingest_fixed.load.errors
    );
    let ingest_max = measure_ingest(
        &format!("r{index}m"),
        Pace::Max,
        opts.max_events,
        opts.max_connections,
    )
    .await?;
    eprintln!(
        "run {index}: ingest max → {:.0} events/s, p99 {:.2} ms, non-2xx {}, errors {}",
        ingest_max.load.achieved_rps,
        ingest_max.load.latency_ms.p99,
        ingest_max.load.non_2xx,
        ingest_max.load.errors
    );
    queued += accepted(&ingest_fixed.load) + accepted(&ingest_max.load);

    let drain_0ms = drain(&mut cluster, opts, index, 0, queued, scraper, phases).await?;
    eprintln!(
        "run {index}: drain 0 ms → {} jobs in {:.2} s = {:.0} jobs/s (first job after {:.2} s)",
        drain_0ms.jobs, drain_0ms.seconds, drain_0ms.jobs_per_s, drain_0ms.first_job_s
    );

    // Fill the queue again for the 50 ms drain (not measured).
    scraper.scrape_now().await;
    let start_t = scraper.now();
    let fill = cluster.batch(&format!("r{index}d"), opts.drain_50_jobs)?;
    let report = load::run(http, &fill, Pace::Max, opts.max_connections).await?;
    phases.push(Phase {
        name: format!("fill #{index}"),
        start: start_t,
        end: scraper.now(),
    });
    scraper.scrape_now().await;
    if report.ok as usize != opts.drain_50_jobs {
        bail!(
            "filling the queue: {} of {} events accepted ({:?})",
            report.ok,
            opts.drain_50_jobs,
            report.first_error
        );
    }
    let drain_50ms = drain(
        &mut cluster,
        opts,
        index,
        50,
        accepted(&report),
        scraper,
        phases,
    )
    .await?;
    eprintln!(
        "run {index}: drain 50 ms → {} jobs in {:.2} s = {:.0} jobs/s",
        drain_50ms.jobs, drain_50ms.seconds, drain_50ms.jobs_per_s
    );

    scraper.remove(&ingest_name).await;
    let ingest_clean_exit = clean_exit(ingest.stop(Duration::from_secs(30)).await);
    cluster.redis.terminate(Duration::from_secs(10)).await;
    Ok(Run {
        index,
        ingest_fixed,
        ingest_max,
        drain_0ms,
        drain_50ms,
        ingest_clean_exit,
    })
}

/// Starts the sandbox with `delay_ms` and a worker, and measures until `jobs` more jobs are
/// delivered.
async fn drain(
    cluster: &mut Cluster,
    opts: &Options,
    index: usize,
    delay_ms: u64,
    jobs: u64,
    scraper: &Scraper,
    phases: &mut Vec<Phase>,
) -> anyhow::Result<DrainRun> {
    let mut sandbox = cluster
        .spawn_sandbox(delay_ms, &format!("sandbox-{delay_ms}ms-{index}"))
        .await?;
    let baseline = cluster.delivered().await?;
    let stats_before = cluster.stats().await?;
    let calls_before = cluster.command_calls().await?;
    let redis_pid = cluster.redis.pid();
    let name = format!("work-{delay_ms}ms-{index}");
    let config = cluster.write_config(&name, cluster.worker_admin, opts.concurrency)?;
    // The queue as the drain finds it.
    scraper.scrape_now().await;
    // Added before it starts, so its counters count from 0 at the drain's start even when it
    // has drained everything before its first scrape.
    scraper.add(
        &name,
        &format!("http://127.0.0.1:{}/metrics", cluster.worker_admin),
    );
    let start_t = scraper.now();
    let before = snapshot(&[redis_pid, sandbox.pid()]);
    let started = Instant::now();
    let mut worker = cluster
        .lease_sync(&name)
        .arg("work")
        .config(&config)
        .spawn()?;
    let target = baseline + jobs;
    // Bounded: at least 60 s, or 20 jobs/s, whichever is longer.
    let limit = Duration::from_secs(60.max(jobs / 20));
    let mut first_job: Option<Duration> = None;
    let deadline = started + limit;
    loop {
        let delivered = cluster.delivered().await?;
        if first_job.is_none() && delivered > baseline {
            first_job = Some(started.elapsed());
        }
        if delivered >= target {
            break;
        }
        worker.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "{name}: only {} of {jobs} jobs delivered within {limit:?}; see {}",
                delivered - baseline,
                worker.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let after = snapshot(&[redis_pid, sandbox.pid(), worker.pid()]);
    let redis_calls_per_job = per_event(&calls_before, &cluster.command_calls().await?, jobs);
    let stats_after = cluster.stats().await?;
    let counter = |name: &str| {
        stats_after.get(name).copied().unwrap_or(0) - stats_before.get(name).copied().unwrap_or(0)
    };
    let queue_counters: BTreeMap<String, u64> = [
        "delivered",
        "deferred",
        "stale_tasks",
        "retries",
        "dead_lettered",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), counter(name)))
    .collect();
    let end_t = scraper.now();
    // The drain's end, then one more scrape interval so the dashboard sees the drained
    // queue, then stop.
    scraper.scrape_now().await;
    tokio::time::sleep(opts.scrape_every + Duration::from_millis(100)).await;
    scraper.remove(&name).await;
    phases.push(Phase {
        name: format!("drain {delay_ms} ms #{index}"),
        start: start_t,
        end: end_t,
    });
    // The worker did not exist at `before`: its whole life counts, startup included.
    let worker_usage = before.usage(&after, worker.pid(), jobs);
    let machine = before.machine(&after);
    let sandbox_users = cluster.sandbox_users().await?;
    let clean_exit = clean_exit(worker.stop(Duration::from_secs(40)).await);
    let redis = before.usage(&after, redis_pid, jobs);
    let sandbox_usage = before.usage(&after, sandbox.pid(), jobs);
    sandbox.stop(Duration::from_secs(10)).await;
    let first = first_job.unwrap_or(elapsed);
    let seconds = elapsed.as_secs_f64();
    let steady = (elapsed - first).as_secs_f64();
    let limit = Duration::from_secs(10);
    poll_until(limit, || async {
        std::net::TcpListener::bind(loopback(cluster.sandbox_port))
            .is_ok()
            .then_some(())
    })
    .await
    .with_context(|| format!("the sandbox port was not free within {limit:?}"))?;
    Ok(DrainRun {
        delay_ms,
        jobs,
        seconds,
        jobs_per_s: jobs as f64 / seconds.max(1e-9),
        first_job_s: first.as_secs_f64(),
        steady_jobs_per_s: if steady > 0.0 {
            jobs.saturating_sub(1) as f64 / steady
        } else {
            0.0
        },
        worker: worker_usage,
        redis,
        sandbox: sandbox_usage,
        sandbox_users,
        clean_exit,
        machine,
        redis_calls_per_job,
        queue_counters,
    })
}

/// The scratch directory for one invocation.
pub fn work_dir(base: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match base {
        Some(base) => base.to_owned(),
        None => std::env::temp_dir().join(format!("lease-sync-bench-{}", ulid::Ulid::new())),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use lease_sync::config::Role;

    use super::*;

    #[test]
    fn a_redis_setting_is_a_name_and_a_value() {
        let parsed = |s: &str| parse_redis_setting(s).ok();
        let pair = |n: &str, v: &str| Some((n.to_owned(), v.to_owned()));
        assert_eq!(
            parsed("auto-aof-rewrite-percentage 0"),
            pair("auto-aof-rewrite-percentage", "0")
        );
        assert_eq!(parsed("hz=50"), pair("hz", "50"));
        assert_eq!(parsed("save 3600 1"), pair("save", "3600 1"));
        assert_eq!(parsed("hz"), None);
        assert_eq!(parsed("hz "), None);
        assert_eq!(parsed(""), None);
    }

    #[test]
    fn the_written_config_loads_and_serves_both_roles() {
        let settings = config("redis://127.0.0.1:6390", 8080, 9090, 9091, 16).expect("config");
        let text = toml_with_secrets(&settings).expect("written");
        let loaded = Settings::from_toml_str(&text, Vec::new()).expect("loads");
        for role in [Role::Ingest, Role::Work] {
            loaded.validate(role).expect("valid");
        }
        assert_eq!(
            loaded.admin.tokens[0].token.expose(),
            hash_token(ADMIN_TOKEN)
        );
        assert_eq!(
            loaded.worker.poll_interval,
            Duration::from_millis(POLL_INTERVAL_MS)
        );
        assert!(config("redis://127.0.0.1:6390", 8080, 9090, 9091, 0).is_err());
    }
}
