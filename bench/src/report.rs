//! Results of a benchmark run: what was measured per run, medians, ratios to the
//! redis-benchmark yardstick, the targets, a Markdown table and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::LoadReport;

/// The machine and software the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal in GiB.
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// `redis-server --version`.
    pub redis: String,
    /// `rustc --version`, when rustc is on the PATH.
    pub rustc: String,
    /// `release` or `debug` binaries.
    pub build: String,
    /// /proc/loadavg when the measurements started.
    pub loadavg_start: String,
    /// /proc/loadavg when they ended.
    pub loadavg_end: String,
    /// Seconds spent waiting for the machine to become quiet first.
    pub quiet_wait_s: f64,
    /// UTC time of the run.
    pub date: String,
}

/// What the lease-sync and Redis configuration were.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// `appendfsync` of every Redis in the run.
    pub appendfsync: String,
    /// Other settings of every Redis in the run (`--redis-config`), `NAME VALUE`; none by
    /// default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redis_config: Vec<String>,
    /// `worker.concurrency`.
    pub concurrency: usize,
    /// `worker.batch_size`.
    pub batch_size: usize,
    /// `worker.poll_interval_ms`.
    pub poll_interval_ms: u64,
    /// Events in the fixed-rate run.
    pub fixed_events: usize,
    /// Fixed rate (events/s).
    pub fixed_rate: f64,
    /// Connections of the fixed-rate run (bound on requests in flight).
    pub fixed_connections: usize,
    /// Events in the maximum-rate run.
    pub max_events: usize,
    /// Connections of the maximum-rate run.
    pub max_connections: usize,
    /// Jobs drained at 50 ms.
    pub drain_50_jobs: usize,
    /// Requests per redis-benchmark test.
    pub yardstick_requests: usize,
    /// Body bytes of every event.
    pub body_bytes: usize,
    /// Scrape interval of the dashboard scrapes, seconds.
    pub scrape_interval_s: f64,
}

/// One redis-benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Yardstick {
    /// LPUSH requests per second.
    pub lpush_rps: f64,
    /// RPOP requests per second.
    pub rpop_rps: f64,
    /// LPUSH p99 in ms.
    pub lpush_p99_ms: f64,
    /// RPOP p99 in ms.
    pub rpop_p99_ms: f64,
    /// The CSV redis-benchmark printed.
    pub csv: String,
}

/// CPU and memory of one process over one phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// CPU seconds (user + system) during the phase.
    pub cpu_s: f64,
    /// CPU microseconds per event or job.
    pub cpu_us_per_event: f64,
    /// Average cores used during the phase.
    pub cores: f64,
    /// Peak resident set (VmHWM) at the end of the phase, MiB.
    pub peak_rss_mib: f64,
}

/// How busy the whole machine was during a phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MachineLoad {
    /// Average busy cores (all processes).
    pub busy_cores: f64,
    /// Of which this harness and its children.
    pub ours_cores: f64,
    /// Of which everything else (other users of the machine).
    pub other_cores: f64,
}

/// One ingest measurement.
#[derive(Debug, Clone, Serialize)]
pub struct IngestRun {
    /// What the load generator saw.
    pub load: LoadReport,
    /// The `lease-sync ingest` process.
    pub ingest: Usage,
    /// redis-server.
    pub redis: Usage,
    /// The load generator (this process).
    pub generator: Usage,
    /// The machine.
    pub machine: MachineLoad,
    /// Redis commands per event, by command (those inside the enqueue script included).
    pub redis_calls_per_event: BTreeMap<String, f64>,
}

/// One drain measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRun {
    /// Sandbox answer delay.
    pub delay_ms: u64,
    /// Jobs drained.
    pub jobs: u64,
    /// From spawning `lease-sync work` to the last job delivered.
    pub seconds: f64,
    /// `jobs / seconds`.
    pub jobs_per_s: f64,
    /// From spawning the worker to its first delivered job.
    pub first_job_s: f64,
    /// Jobs per second from the first delivered job to the last.
    pub steady_jobs_per_s: f64,
    /// The `lease-sync work` process (whole life: startup included).
    pub worker: Usage,
    /// redis-server.
    pub redis: Usage,
    /// The OpenApp sandbox.
    pub sandbox: Usage,
    /// Building users the sandbox holds afterwards (must equal `jobs`).
    pub sandbox_users: usize,
    /// Whether the worker exited 0 on SIGTERM.
    pub clean_exit: bool,
    /// The machine.
    pub machine: MachineLoad,
    /// Redis commands per job, by command (those inside Lua scripts included; `evalsha` is
    /// one round trip each).
    pub redis_calls_per_job: BTreeMap<String, f64>,
    /// Changes of the queue's counters during the drain (`delivered` must equal `jobs`).
    pub queue_counters: BTreeMap<String, u64>,
}

/// One complete run: both ingest measurements and both drains.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// 1-based.
    pub index: usize,
    /// Open loop at the fixed rate.
    pub ingest_fixed: IngestRun,
    /// Closed loop at the maximum rate.
    pub ingest_max: IngestRun,
    /// Drain against the sandbox answering at once.
    pub drain_0ms: DrainRun,
    /// Drain against the sandbox answering after 50 ms.
    pub drain_50ms: DrainRun,
    /// Whether the ingest process exited 0 on SIGTERM.
    pub ingest_clean_exit: bool,
}

/// One target and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// The median measured.
    pub measured: f64,
    /// The bar, in the measured figure's unit.
    pub threshold: f64,
    /// `>=` or `<=`.
    pub direction: &'static str,
    /// How the bar is defined.
    pub definition: String,
    /// Met or not.
    pub pass: bool,
}

/// Medians over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// LPUSH ops/s.
    pub lpush_rps: f64,
    /// RPOP ops/s.
    pub rpop_rps: f64,
    /// Ingest maximum rate, events/s.
    pub ingest_max_rps: f64,
    /// Ingest max / LPUSH.
    pub ingest_ratio_to_lpush: f64,
    /// Fixed rate: achieved events/s.
    pub ingest_fixed_rps: f64,
    /// Fixed rate: latency percentiles (medians of each).
    pub ingest_fixed_p50_ms: f64,
    /// p90.
    pub ingest_fixed_p90_ms: f64,
    /// p99.
    pub ingest_fixed_p99_ms: f64,
    /// p99.9.
    pub ingest_fixed_p999_ms: f64,
    /// max.
    pub ingest_fixed_max_ms: f64,
    /// Non-2xx answers plus errors over every fixed-rate run.
    pub ingest_fixed_failures: u64,
    /// Non-2xx answers plus errors over every max-rate run.
    pub ingest_max_failures: u64,
    /// Drain at 0 ms, jobs/s.
    pub drain_0ms_jobs_per_s: f64,
    /// Drain 0 ms / RPOP.
    pub drain_ratio_to_rpop: f64,
    /// Drain at 50 ms, jobs/s.
    pub drain_50ms_jobs_per_s: f64,
    /// Drain 50 ms / (concurrency / 0.05 s).
    pub drain_50ms_ratio_to_ideal: f64,
    /// Ingest CPU µs per event at the maximum rate.
    pub ingest_cpu_us_per_event_max: f64,
    /// Ingest CPU µs per event at the fixed rate.
    pub ingest_cpu_us_per_event_fixed: f64,
    /// Redis CPU µs per event at the maximum rate.
    pub redis_cpu_us_per_event_max: f64,
    /// Worker CPU µs per job, 0 ms drain.
    pub worker_cpu_us_per_job_0ms: f64,
    /// Worker CPU µs per job, 50 ms drain.
    pub worker_cpu_us_per_job_50ms: f64,
    /// Redis CPU µs per job, 0 ms drain.
    pub redis_cpu_us_per_job_0ms: f64,
    /// Ingest cores at the fixed rate.
    pub ingest_cores_fixed: f64,
    /// Ingest cores at the maximum rate.
    pub ingest_cores_max: f64,
    /// Worker cores, 0 ms drain.
    pub worker_cores_0ms: f64,
    /// Worker cores, 50 ms drain.
    pub worker_cores_50ms: f64,
    /// Peak RSS of ingest, MiB.
    pub ingest_peak_rss_mib: f64,
    /// Peak RSS of the worker (larger of the two drains), MiB.
    pub worker_peak_rss_mib: f64,
    /// Other processes' cores during the measured phases (median of the phase averages).
    pub other_cores: f64,
    /// Targets.
    pub targets: Vec<Target>,
}

/// Everything one `lease-sync-bench` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Short (CI) or full.
    pub mode: String,
    /// The machine.
    pub machine: Machine,
    /// The configuration.
    pub setup: Setup,
    /// redis-benchmark runs.
    pub yardstick: Vec<Yardstick>,
    /// Service runs.
    pub runs: Vec<Run>,
    /// Medians and targets.
    pub summary: Summary,
    /// Milliseconds per /metrics scrape: median and largest.
    pub scrape_ms_median: f64,
    /// Largest.
    pub scrape_ms_max: f64,
    /// Panels of the dashboard page that showed data, and those that did not.
    pub dashboard_panels_with_data: Vec<String>,
    /// Panels without data (nothing of that kind happened in the run).
    pub dashboard_panels_without_data: Vec<String>,
}

/// Median (mean of the middle two for an even count); 0 for none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians, ratios and targets of `runs` against `yardstick`.
pub fn summarize(yardstick: &[Yardstick], runs: &[Run], concurrency: usize) -> Summary {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f));
    let lpush = median(yardstick.iter().map(|y| y.lpush_rps));
    let rpop = median(yardstick.iter().map(|y| y.rpop_rps));
    let ingest_max = m(&|r| r.ingest_max.load.achieved_rps);
    let drain0 = m(&|r| r.drain_0ms.jobs_per_s);
    let drain50 = m(&|r| r.drain_50ms.jobs_per_s);
    let ideal50 = concurrency as f64 / 0.05;
    let p99 = m(&|r| r.ingest_fixed.load.latency_ms.p99);
    let fixed_failures: u64 = runs
        .iter()
        .map(|r| r.ingest_fixed.load.non_2xx + r.ingest_fixed.load.errors)
        .sum();
    let max_failures: u64 = runs
        .iter()
        .map(|r| r.ingest_max.load.non_2xx + r.ingest_max.load.errors)
        .sum();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let target = |name: &str, measured: f64, threshold: f64, ge: bool, definition: String| Target {
        name: name.to_owned(),
        measured,
        threshold,
        direction: if ge { ">=" } else { "<=" },
        definition,
        pass: if ge {
            measured >= threshold
        } else {
            measured <= threshold
        },
    };
    let fixed_rate = m(&|r| r.ingest_fixed.load.offered_rps.unwrap_or(0.0));
    let targets = vec![
        target(
            "ingest maximum rate (events/s)",
            ingest_max,
            0.30 * lpush,
            true,
            format!("0.30 × LPUSH yardstick ({lpush:.0}/s)"),
        ),
        target(
            "ingest p99 at the fixed rate (ms)",
            p99,
            5.0,
            false,
            format!("5 ms at {fixed_rate:.0} events/s (a quarter of 0.30 × LPUSH)"),
        ),
        target(
            "ingest non-2xx + errors at the fixed rate",
            fixed_failures as f64,
            0.0,
            false,
            "0, over every run".into(),
        ),
        target(
            "worker drain, sandbox at 0 ms (jobs/s)",
            drain0,
            0.20 * rpop,
            true,
            format!("0.20 × RPOP yardstick ({rpop:.0}/s)"),
        ),
        target(
            "worker drain, sandbox at 50 ms (jobs/s)",
            drain50,
            0.8 * ideal50,
            true,
            format!("0.8 × concurrency {concurrency} ÷ 0.05 s"),
        ),
    ];
    let peak_worker = m(&|r| {
        r.drain_0ms
            .worker
            .peak_rss_mib
            .max(r.drain_50ms.worker.peak_rss_mib)
    });
    let other = median(runs.iter().flat_map(|r| {
        [
            r.ingest_fixed.machine.other_cores,
            r.ingest_max.machine.other_cores,
            r.drain_0ms.machine.other_cores,
            r.drain_50ms.machine.other_cores,
        ]
    }));
    Summary {
        lpush_rps: lpush,
        rpop_rps: rpop,
        ingest_max_rps: ingest_max,
        ingest_ratio_to_lpush: ratio(ingest_max, lpush),
        ingest_fixed_rps: m(&|r| r.ingest_fixed.load.achieved_rps),
        ingest_fixed_p50_ms: m(&|r| r.ingest_fixed.load.latency_ms.p50),
        ingest_fixed_p90_ms: m(&|r| r.ingest_fixed.load.latency_ms.p90),
        ingest_fixed_p99_ms: p99,
        ingest_fixed_p999_ms: m(&|r| r.ingest_fixed.load.latency_ms.p999),
        ingest_fixed_max_ms: m(&|r| r.ingest_fixed.load.latency_ms.max),
        ingest_fixed_failures: fixed_failures,
        ingest_max_failures: max_failures,
        drain_0ms_jobs_per_s: drain0,
        drain_ratio_to_rpop: ratio(drain0, rpop),
        drain_50ms_jobs_per_s: drain50,
        drain_50ms_ratio_to_ideal: ratio(drain50, ideal50),
        ingest_cpu_us_per_event_max: m(&|r| r.ingest_max.ingest.cpu_us_per_event),
        ingest_cpu_us_per_event_fixed: m(&|r| r.ingest_fixed.ingest.cpu_us_per_event),
        redis_cpu_us_per_event_max: m(&|r| r.ingest_max.redis.cpu_us_per_event),
        worker_cpu_us_per_job_0ms: m(&|r| r.drain_0ms.worker.cpu_us_per_event),
        worker_cpu_us_per_job_50ms: m(&|r| r.drain_50ms.worker.cpu_us_per_event),
        redis_cpu_us_per_job_0ms: m(&|r| r.drain_0ms.redis.cpu_us_per_event),
        ingest_cores_fixed: m(&|r| r.ingest_fixed.ingest.cores),
        ingest_cores_max: m(&|r| r.ingest_max.ingest.cores),
        worker_cores_0ms: m(&|r| r.drain_0ms.worker.cores),
        worker_cores_50ms: m(&|r| r.drain_50ms.worker.cores),
        ingest_peak_rss_mib: m(&|r| r.ingest_max.ingest.peak_rss_mib),
        worker_peak_rss_mib: peak_worker,
        other_cores: other,
        targets,
    }
}

fn runs_cell(runs: &[Run], f: impl Fn(&Run) -> f64, digits: usize) -> String {
    runs.iter()
        .map(|r| format!("{:.*}", digits, f(r)))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn verdict(t: &Target) -> &'static str {
    if t.pass { "**pass**" } else { "**miss**" }
}

/// The results as Markdown: the main table, then resources. `metrics` is the latest
/// `lease-sync-bench metrics` report (`/metrics` with 100,000 jobs queued), measured
/// separately; its row is left out without one.
pub fn markdown(results: &Results, metrics: Option<&crate::metrics_scale::Report>) -> String {
    let s = &results.summary;
    let runs = &results.runs;
    let y = &results.yardstick;
    let setup = &results.setup;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| measure | runs | median | ratio | target | result |\n|---|---|---|---|---|---|"
    );
    let ys = |f: &dyn Fn(&Yardstick) -> f64| {
        y.iter()
            .map(|r| format!("{:.0}", f(r)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let _ = writeln!(
        out,
        "| yardstick: redis-benchmark LPUSH, 1 KB, -c 50 (ops/s) | {} | {:.0} | 1 | — | — |",
        ys(&|r| r.lpush_rps),
        s.lpush_rps
    );
    let _ = writeln!(
        out,
        "| yardstick: redis-benchmark RPOP, 1 KB, -c 50 (ops/s) | {} | {:.0} | 1 | — | — |",
        ys(&|r| r.rpop_rps),
        s.rpop_rps
    );
    let t = &s.targets;
    let _ = writeln!(
        out,
        "| ingest, maximum rate, {} connections (events/s) | {} | {:.0} | {:.2} × LPUSH | ≥ 0.30 × LPUSH = {:.0} | {} |",
        setup.max_connections,
        runs_cell(runs, |r| r.ingest_max.load.achieved_rps, 0),
        s.ingest_max_rps,
        s.ingest_ratio_to_lpush,
        t[0].threshold,
        verdict(&t[0])
    );
    let _ = writeln!(
        out,
        "| ingest, fixed {:.0} events/s: p99 latency, CO-corrected (ms) | {} | {:.2} | — | ≤ 5 ms | {} |",
        setup.fixed_rate,
        runs_cell(runs, |r| r.ingest_fixed.load.latency_ms.p99, 2),
        s.ingest_fixed_p99_ms,
        verdict(&t[1])
    );
    let _ = writeln!(
        out,
        "| ingest, fixed rate: p50 / p90 / p99.9 / max (ms) | | {:.2} / {:.2} / {:.2} / {:.2} | — | — | — |",
        s.ingest_fixed_p50_ms, s.ingest_fixed_p90_ms, s.ingest_fixed_p999_ms, s.ingest_fixed_max_ms
    );
    let _ = writeln!(
        out,
        "| ingest, fixed rate: non-2xx + errors | {} | {} (total) | — | 0 | {} |",
        runs_cell(
            runs,
            |r| (r.ingest_fixed.load.non_2xx + r.ingest_fixed.load.errors) as f64,
            0
        ),
        s.ingest_fixed_failures,
        verdict(&t[2])
    );
    let _ = writeln!(
        out,
        "| worker drain, sandbox 0 ms, concurrency {} (jobs/s) | {} | {:.0} | {:.2} × RPOP | ≥ 0.20 × RPOP = {:.0} | {} |",
        setup.concurrency,
        runs_cell(runs, |r| r.drain_0ms.jobs_per_s, 0),
        s.drain_0ms_jobs_per_s,
        s.drain_ratio_to_rpop,
        t[3].threshold,
        verdict(&t[3])
    );
    let _ = writeln!(
        out,
        "| worker drain, sandbox 50 ms, concurrency {} (jobs/s) | {} | {:.0} | {:.2} × {:.0} | ≥ 0.8 × {:.0} = {:.0} | {} |",
        setup.concurrency,
        runs_cell(runs, |r| r.drain_50ms.jobs_per_s, 0),
        s.drain_50ms_jobs_per_s,
        s.drain_50ms_ratio_to_ideal,
        setup.concurrency as f64 / 0.05,
        setup.concurrency as f64 / 0.05,
        t[4].threshold,
        verdict(&t[4])
    );
    if let Some(m) = metrics {
        let _ = writeln!(
            out,
            "| `/metrics` with {} jobs queued, p50 / p99 / max of {} scrapes (ms; `lease-sync-bench metrics`, measured separately) | | {:.2} / {:.2} / {:.2} | — | ≤ 10 ms | {} |",
            m.jobs,
            m.scrapes,
            m.p50_ms,
            m.p99_ms,
            m.max_ms,
            if m.max_ms <= 10.0 {
                "**pass**"
            } else {
                "**miss**"
            }
        );
        if m.redis_used_memory > 0 {
            let _ = writeln!(
                out,
                "| Redis memory per queued job (bytes; the same {} jobs, `used_memory` filled less empty) | | {:.0} | — | — | — |",
                m.jobs,
                m.bytes_per_job()
            );
        }
    }
    let _ = writeln!(
        out,
        "\n| resources (median of runs) | ingest, fixed rate | ingest, max rate | worker, 0 ms | worker, 50 ms |\n|---|---|---|---|---|"
    );
    // `evalsha` calls are script calls, each one round trip; every other command ran inside
    // a script.
    let script_calls = |calls: &BTreeMap<String, f64>| calls.get("evalsha").copied().unwrap_or(0.0);
    let commands = |calls: &BTreeMap<String, f64>| {
        calls
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "evalsha" | "eval" | "info"))
            .map(|(_, per)| per)
            .sum::<f64>()
    };
    let _ = writeln!(
        out,
        "| Redis script calls (round trips) per event / job: a job's claim and finish are one each, batched with other jobs' | {:.2} | {:.2} | {:.2} | {:.2} |",
        median(
            runs.iter()
                .map(|r| script_calls(&r.ingest_fixed.redis_calls_per_event))
        ),
        median(
            runs.iter()
                .map(|r| script_calls(&r.ingest_max.redis_calls_per_event))
        ),
        median(
            runs.iter()
                .map(|r| script_calls(&r.drain_0ms.redis_calls_per_job))
        ),
        median(
            runs.iter()
                .map(|r| script_calls(&r.drain_50ms.redis_calls_per_job))
        ),
    );
    let _ = writeln!(
        out,
        "| Redis commands per event / job, those inside scripts included | {:.1} | {:.1} | {:.1} | {:.1} |",
        median(
            runs.iter()
                .map(|r| commands(&r.ingest_fixed.redis_calls_per_event))
        ),
        median(
            runs.iter()
                .map(|r| commands(&r.ingest_max.redis_calls_per_event))
        ),
        median(
            runs.iter()
                .map(|r| commands(&r.drain_0ms.redis_calls_per_job))
        ),
        median(
            runs.iter()
                .map(|r| commands(&r.drain_50ms.redis_calls_per_job))
        ),
    );
    let _ = writeln!(
        out,
        "| lease-sync CPU per event / job (µs) | {:.0} | {:.0} | {:.0} | {:.0} |",
        s.ingest_cpu_us_per_event_fixed,
        s.ingest_cpu_us_per_event_max,
        s.worker_cpu_us_per_job_0ms,
        s.worker_cpu_us_per_job_50ms
    );
    let _ = writeln!(
        out,
        "| lease-sync cores used | {:.2} | {:.2} | {:.2} | {:.2} |",
        s.ingest_cores_fixed, s.ingest_cores_max, s.worker_cores_0ms, s.worker_cores_50ms
    );
    let _ = writeln!(
        out,
        "| redis-server CPU per event / job (µs) | {:.0} | {:.0} | {:.0} | {:.0} |",
        median(runs.iter().map(|r| r.ingest_fixed.redis.cpu_us_per_event)),
        s.redis_cpu_us_per_event_max,
        s.redis_cpu_us_per_job_0ms,
        median(runs.iter().map(|r| r.drain_50ms.redis.cpu_us_per_event)),
    );
    let _ = writeln!(
        out,
        "| peak RSS of the lease-sync process (MiB) | {:.1} | {:.1} | {:.1} | {:.1} |",
        median(runs.iter().map(|r| r.ingest_fixed.ingest.peak_rss_mib)),
        s.ingest_peak_rss_mib,
        median(runs.iter().map(|r| r.drain_0ms.worker.peak_rss_mib)),
        median(runs.iter().map(|r| r.drain_50ms.worker.peak_rss_mib)),
    );
    let _ = writeln!(
        out,
        "| other processes on the machine (cores) | {:.2} | {:.2} | {:.2} | {:.2} |",
        median(runs.iter().map(|r| r.ingest_fixed.machine.other_cores)),
        median(runs.iter().map(|r| r.ingest_max.machine.other_cores)),
        median(runs.iter().map(|r| r.drain_0ms.machine.other_cores)),
        median(runs.iter().map(|r| r.drain_50ms.machine.other_cores)),
    );
    out
}

/// A two-part SVG chart: each throughput as a share of its target (the yardstick-relative
/// ones and the 50 ms one), and the fixed-rate latency percentiles against the 5 ms bar.
pub fn chart(results: &Results) -> String {
    let s = &results.summary;
    let t = &s.targets;
    let (w, h) = (1040.0, 330.0);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="#ffffff"/>
<text x="16" y="24" font-size="15" font-weight="bold">lease-sync benchmarks — median of {n} run(s), {nproc} cores, Redis appendfsync {fsync}, {build} build</text>
"##,
        n = results.runs.len(),
        nproc = results.machine.nproc,
        fsync = if results.setup.redis_config.is_empty() {
            results.setup.appendfsync.clone()
        } else {
            format!(
                "{} ({})",
                results.setup.appendfsync,
                results.setup.redis_config.join(", ")
            )
        },
        build = results.machine.build,
    );
    // Left: measured ÷ target for the three throughput targets.
    let bars = [
        ("ingest, max rate", s.ingest_max_rps, &t[0], "#1f77b4"),
        (
            "drain, OpenApp 0 ms",
            s.drain_0ms_jobs_per_s,
            &t[3],
            "#2ca02c",
        ),
        (
            "drain, OpenApp 50 ms",
            s.drain_50ms_jobs_per_s,
            &t[4],
            "#17becf",
        ),
    ];
    let (x0, y0, bw, bh, gap) = (170.0, 70.0, 400.0, 34.0, 40.0);
    let top = bars
        .iter()
        .map(|b| b.1 / b.2.threshold.max(1e-9))
        .fold(1.25, f64::max)
        * 1.05;
    let _ = writeln!(
        svg,
        r#"<text x="{x0}" y="52" font-weight="bold">Throughput as a share of its target</text>"#
    );
    let one = x0 + bw / top;
    for (i, (label, value, target, color)) in bars.iter().enumerate() {
        let y = y0 + i as f64 * (bh + gap);
        let share = value / target.threshold.max(1e-9);
        let len = share / top * bw;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text><rect x="{x0}" y="{y}" width="{len:.1}" height="{bh}" fill="{color}"/><text x="{x0}" y="{}" font-size="11" fill="{}">{value:.0}/s = {:.2} × target {:.0}/s ({}) — {}</text>"#,
            x0 - 8.0,
            y + bh / 2.0 + 4.0,
            y + bh + 14.0,
            if target.pass { "#2e7d32" } else { "#c62828" },
            share,
            target.threshold,
            target.definition,
            if target.pass { "meets it" } else { "misses it" },
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{one:.1}" x2="{one:.1}" y1="{}" y2="{}" stroke="#d62728" stroke-width="2" stroke-dasharray="6 3"/><text x="{:.1}" y="{}" fill="#d62728" font-size="11">target</text>"##,
        y0 - 8.0,
        y0 + 3.0 * (bh + gap) - gap + 4.0,
        one + 4.0,
        y0 - 10.0
    );
    // Right: latency percentiles at the fixed rate.
    let lat = [
        ("p50", s.ingest_fixed_p50_ms),
        ("p90", s.ingest_fixed_p90_ms),
        ("p99", s.ingest_fixed_p99_ms),
        ("p99.9", s.ingest_fixed_p999_ms),
    ];
    let (lx0, ly_base, lw, lh) = (720.0, 290.0, 290.0, 220.0);
    let lmax = lat.iter().map(|l| l.1).fold(6.0, f64::max) * 1.1;
    let _ = writeln!(
        svg,
        r#"<text x="{lx0}" y="52" font-weight="bold">Ingest latency at {:.0}/s, CO-corrected (ms)</text>"#,
        results.setup.fixed_rate
    );
    let slot = lw / lat.len() as f64;
    for (i, (label, value)) in lat.iter().enumerate() {
        let bar_h = value / lmax * lh;
        let x = lx0 + i as f64 * slot + slot * 0.2;
        let _ = writeln!(
            svg,
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bar_h:.1}" fill="#ff7f0e"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{value:.2}</text><text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            ly_base - bar_h,
            slot * 0.6,
            x + slot * 0.3,
            ly_base - bar_h - 4.0,
            x + slot * 0.3,
            ly_base + 16.0
        );
    }
    let ty = ly_base - 5.0 / lmax * lh;
    let _ = writeln!(
        svg,
        r##"<line x1="{lx0}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}" stroke="#d62728" stroke-width="2" stroke-dasharray="6 3"/><text x="{:.1}" y="{:.1}" fill="#d62728" text-anchor="end" font-size="11">p99 target 5 ms ({})</text><line x1="{lx0}" x2="{:.1}" y1="{ly_base}" y2="{ly_base}" stroke="#555"/>"##,
        lx0 + lw,
        lx0 + lw,
        ty - 4.0,
        if t[1].pass { "met" } else { "missed" },
        lx0 + lw
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median([]), 0.0);
    }
}
