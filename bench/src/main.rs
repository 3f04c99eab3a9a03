//! `lease-sync-bench`: measures lease-sync on loopback — ingest throughput and latency,
//! worker drain rate against the OpenApp sandbox, and redis-benchmark as a yardstick — and
//! writes the results, a chart and a dashboard page; and, end to end through both emulators,
//! how long a Buildium lease change takes to reach OpenApp and how long a pull of many
//! leases takes (`buildium`). `bench/run.sh` is the documented entry point; see BENCHMARKS.md.

#![forbid(unsafe_code)]

mod buildium;
mod buildium_report;
mod dashboard;
mod load;
mod metrics_scale;
mod procs;
mod promql;
mod report;
mod scrape;
mod suite;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lease_sync_testkit::Appendfsync;

use crate::report::{Results, median, summarize};
use crate::scrape::Scraper;

/// Benchmarks for lease-sync.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The whole benchmark: yardstick, ingest, drain, report, dashboard page.
    Run(RunArgs),
    /// Only the load generator, against a running ingest; prints a JSON report.
    Load(LoadArgs),
    /// End to end through both emulators: Buildium lease change → OpenApp call latency at a
    /// fixed rate, Buildium reads per change, and the pull of many leases.
    Buildium(BuildiumArgs),
    /// How long one `/metrics` scrape takes with a deep queue (100,000 jobs by default) and
    /// the in-flight sets of dead workers.
    Metrics(MetricsArgs),
}

#[derive(Debug, clap::Args)]
struct MetricsArgs {
    /// The lease-sync binary to measure.
    #[arg(long, default_value = "target/release/lease-sync")]
    lease_sync: PathBuf,
    /// Where metrics.json goes.
    #[arg(long, default_value = "bench/results/metrics")]
    out: PathBuf,
    /// Jobs queued before scraping.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Jobs held in flight by workers that died (holds never renewed nor recovered).
    #[arg(long, default_value_t = 20)]
    dead_workers: usize,
    /// Scrapes measured, one after the other.
    #[arg(long, default_value_t = 200)]
    scrapes: usize,
    /// Fill the queue in this Redis layout: `4` (this release's, a payload stored once; `3`
    /// queues the same) or `2` (a rolling upgrade's, each ledger keeping a copy), to compare the
    /// memory they take.
    #[arg(long, default_value = "4", value_parser = ["2", "3", "4"])]
    layout: String,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The lease-sync binary to measure.
    #[arg(long, default_value = "target/release/lease-sync")]
    lease_sync: PathBuf,
    /// Where latest.json, table.md, chart.svg and dashboard.html go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Scratch directory (configs, logs, Redis data); a new temporary one by default.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the scratch directory afterwards (always kept on failure).
    #[arg(long)]
    keep_work: bool,
    /// Tiny counts and one run: checks that everything works end to end, in seconds.
    #[arg(long)]
    short: bool,
    /// Runs of each measurement (medians are reported) [default: 3, 1 with --short].
    #[arg(long)]
    runs: Option<usize>,
    /// Fixed rate in events/s [default: a quarter of 0.30 × the LPUSH yardstick].
    #[arg(long)]
    fixed_rate: Option<f64>,
    /// `worker.concurrency` of the measured worker.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Redis `appendfsync`: `always` (what production must run) or `everysec`.
    #[arg(long, default_value = "always")]
    appendfsync: String,
    /// A Redis setting for every Redis of the run (the yardstick's too), `NAME VALUE`, applied
    /// with `CONFIG SET` once it answers; repeatable. A diagnostic: the results record it, and
    /// the default is Redis's own configuration with the `appendfsync` above, e.g.
    /// `--redis-config 'auto-aof-rewrite-percentage 0'` measures without AOF rewrites.
    #[arg(long = "redis-config", value_name = "NAME VALUE")]
    redis_config: Vec<String>,
    /// The Grafana dashboard to render.
    #[arg(long, default_value = "deploy/grafana/lease-sync.json")]
    dashboard: PathBuf,
    /// Wait (up to 25 minutes) until the 1-minute load average is below this first.
    #[arg(long)]
    wait_quiet: Option<f64>,
    /// Seconds between /metrics scrapes for the dashboard page; 0 turns scraping (and the
    /// page) off, to measure without the scrapes' load.
    #[arg(long, default_value_t = 1.0)]
    scrape_every: f64,
    /// Override: events of the maximum-rate run.
    #[arg(long)]
    max_events: Option<usize>,
    /// Override: seconds of the fixed-rate run.
    #[arg(long)]
    fixed_secs: Option<f64>,
    /// Override: jobs drained at 50 ms.
    #[arg(long)]
    drain_50_jobs: Option<usize>,
    /// Override: requests per redis-benchmark test.
    #[arg(long)]
    yardstick_requests: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct BuildiumArgs {
    /// The lease-sync binary to measure (it also runs both emulators).
    #[arg(long, default_value = "target/release/lease-sync")]
    lease_sync: PathBuf,
    /// Where latest.json, table.md, changes.csv and latency.svg go.
    #[arg(long, default_value = "bench/results/buildium")]
    out: PathBuf,
    /// Scratch directory (configs, logs, Redis data); a new temporary one by default.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the scratch directory afterwards (always kept on failure).
    #[arg(long)]
    keep_work: bool,
    /// Tiny counts and one run: checks that everything works end to end, in seconds.
    #[arg(long)]
    short: bool,
    /// Runs of each measurement (medians are reported) [default: 3, 1 with --short].
    #[arg(long)]
    runs: Option<usize>,
    /// Lease changes per latency run [default: 1000, 20 with --short]; 0 skips the latency
    /// runs.
    #[arg(long)]
    changes: Option<usize>,
    /// Lease changes per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Leases of each pull [default: 10000, 200 with --short]; 0 skips the pulls.
    #[arg(long)]
    pull_leases: Option<usize>,
    /// Reads per second the Buildium emulator allows, and lease-sync's
    /// `[sources.buildium] rate_limit_per_sec` (Buildium's documented limit is 10); 0 lifts
    /// the limit on both sides, to see what lease-sync does without it.
    #[arg(long, default_value_t = 10)]
    buildium_rate_limit: u32,
    /// Seconds after the last change within which every change must have reached OpenApp
    /// [default: 900, 120 with --short].
    #[arg(long)]
    settle_secs: Option<u64>,
    /// Redis `appendfsync`: `always` (what production must run) or `everysec`.
    #[arg(long, default_value = "always")]
    appendfsync: String,
    /// Wait (up to 25 minutes) until the 1-minute load average is below this first.
    #[arg(long)]
    wait_quiet: Option<f64>,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Ingest address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Source name.
    #[arg(long)]
    source: String,
    /// The source's `whsec_…` secret.
    #[arg(long)]
    secret: String,
    /// A property id mapped under the source.
    #[arg(long)]
    property: String,
    /// Events to send.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Fixed rate (open loop); maximum rate (closed loop) when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(args).await,
        Cmd::Load(args) => load_only(args).await,
        Cmd::Buildium(args) => buildium_bench(args).await,
        Cmd::Metrics(args) => metrics_bench(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lease-sync-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn buildium_bench(args: BuildiumArgs) -> anyhow::Result<()> {
    use crate::buildium_report::{BuildiumResults, BuildiumSetup};

    if !args.lease_sync.exists() {
        bail!(
            "{} does not exist; build it first (bench/run.sh does)",
            args.lease_sync.display()
        );
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of changes per second");
    }
    let appendfsync = match args.appendfsync.as_str() {
        "always" => Appendfsync::Always,
        "everysec" => Appendfsync::Everysec,
        _ => bail!("--appendfsync must be `always` or `everysec`"),
    };
    let short = args.short;
    let work = suite::work_dir(args.work.as_deref())?;
    let opts = buildium::Options {
        lease_sync: std::fs::canonicalize(&args.lease_sync)?,
        work: work.clone(),
        runs: args.runs.unwrap_or(if short { 1 } else { 3 }).max(1),
        changes: args.changes.unwrap_or(if short { 20 } else { 1000 }),
        rate: args.rate,
        pull_leases: args.pull_leases.unwrap_or(if short { 200 } else { 10_000 }),
        buildium_rate_limit: args.buildium_rate_limit,
        appendfsync,
        settle_limit: Duration::from_secs(args.settle_secs.unwrap_or(if short {
            120
        } else {
            900
        })),
    };
    eprintln!(
        "lease-sync-bench buildium: scratch directory {}",
        work.display()
    );
    let quiet_wait = match args.wait_quiet {
        Some(below) => suite::wait_quiet(below, Duration::from_secs(25 * 60)).await,
        None => 0.0,
    };
    let build = if opts.lease_sync.to_string_lossy().contains("/release/") {
        "release"
    } else {
        "debug"
    };
    let mut machine = suite::machine(build, quiet_wait);
    eprintln!(
        "machine: {} × {}, load {}, {}",
        machine.nproc, machine.cpu_model, machine.loadavg_start, machine.redis
    );
    let measured = async {
        let mut latency = Vec::new();
        let mut pull = Vec::new();
        for i in 1..=opts.runs {
            if opts.changes > 0 {
                let run = buildium::latency_once(&opts, i).await?;
                eprintln!(
                    "latency {i}: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} lost; {:.2} Buildium reads and {} webhooks per change; settled {:.1} s after the last change",
                    run.latency_ms.p50,
                    run.latency_ms.p90,
                    run.latency_ms.p99,
                    run.latency_ms.max,
                    run.lost,
                    run.reads_per_change,
                    run.webhooks as f64 / run.changes.max(1) as f64,
                    run.settle_s
                );
                latency.push(run);
            }
            if opts.pull_leases > 0 {
                pull.push(buildium::pull_once(&opts, i).await?);
            }
        }
        anyhow::Ok((latency, pull))
    }
    .await;
    let (latency, pull) = match measured {
        Ok(done) => done,
        Err(e) => {
            eprintln!("logs and data kept in {}", work.display());
            return Err(e);
        }
    };
    machine.loadavg_end = suite::loadavg();
    let summary = buildium_report::summarize(&latency, &pull);
    let results = BuildiumResults {
        mode: if short { "short".into() } else { "full".into() },
        machine,
        setup: BuildiumSetup {
            changes: opts.changes,
            rate: opts.rate,
            pull_leases: opts.pull_leases,
            buildium_rate_limit: opts.buildium_rate_limit,
            appendfsync: opts.appendfsync.to_string(),
            worker_concurrency: lease_sync::config::Settings::default()
                .worker
                .concurrency
                .get(),
            settle_limit_s: opts.settle_limit.as_secs_f64(),
        },
        latency,
        pull,
        summary,
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("latest.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    let table = buildium_report::markdown(&results);
    std::fs::write(args.out.join("table.md"), &table)?;
    if !results.latency.is_empty() {
        std::fs::write(
            args.out.join("changes.csv"),
            buildium_report::changes_csv(&results),
        )?;
        std::fs::write(
            args.out.join("latency.svg"),
            buildium_report::chart(&results),
        )?;
    }
    println!("{table}");
    println!(
        "machine: {} cores ({}), {} build; load average {} at the start, {} at the end",
        results.machine.nproc,
        results.machine.cpu_model,
        results.machine.build,
        results.machine.loadavg_start,
        results.machine.loadavg_end
    );
    println!(
        "written: {}/{{latest.json,table.md{}}}",
        args.out.display(),
        if results.latency.is_empty() {
            ""
        } else {
            ",changes.csv,latency.svg"
        }
    );
    // Only that every step worked is asserted, never the timings.
    let s = &results.summary;
    let wrong_members = results
        .latency
        .iter()
        .any(|r| r.openapp_members != r.openapp_members_expected);
    if s.lost > 0 || s.control_errors > 0 || wrong_members {
        eprintln!("logs and data kept in {}", work.display());
        bail!(
            "{} change(s) never reached OpenApp, {} could not be made, OpenApp's members {} (the results above are written)",
            s.lost,
            s.control_errors,
            if wrong_members {
                "differ from the expected"
            } else {
                "are as expected"
            }
        );
    }
    if !args.keep_work {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

async fn load_only(args: LoadArgs) -> anyhow::Result<()> {
    let spec = load::EventSpec {
        source: args.source,
        secret: args.secret,
        property: args.property,
        body_bytes: args.body_bytes,
    };
    let tag = ulid::Ulid::new().to_string().to_lowercase();
    let batch = load::build_batch(&spec, args.addr, &tag, args.count)?;
    let pace = match args.rate {
        Some(rate) => load::Pace::Fixed { rate },
        None => load::Pace::Max,
    };
    let report = load::run(args.addr, &batch, pace, args.connections).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if !args.lease_sync.exists() {
        bail!(
            "{} does not exist; build it first (bench/run.sh does)",
            args.lease_sync.display()
        );
    }
    let appendfsync = match args.appendfsync.as_str() {
        "always" => Appendfsync::Always,
        "everysec" => Appendfsync::Everysec,
        _ => bail!("--appendfsync must be `always` or `everysec`"),
    };
    let dashboard_json = std::fs::read_to_string(&args.dashboard)
        .with_context(|| format!("cannot read {}", args.dashboard.display()))?;
    let short = args.short;
    let runs = args.runs.unwrap_or(if short { 1 } else { 3 }).max(1);
    let work = suite::work_dir(args.work.as_deref())?;
    let opts = suite::Options {
        lease_sync: std::fs::canonicalize(&args.lease_sync)?,
        work: work.clone(),
        runs,
        yardstick_requests: args
            .yardstick_requests
            .unwrap_or(if short { 2_000 } else { 100_000 }),
        fixed_rate: args.fixed_rate,
        fixed_secs: args.fixed_secs.unwrap_or(if short { 1.0 } else { 10.0 }),
        fixed_connections: if short { 16 } else { 64 },
        max_events: args.max_events.unwrap_or(if short { 300 } else { 20_000 }),
        max_connections: if short { 16 } else { 50 },
        drain_50_jobs: args.drain_50_jobs.unwrap_or(if short {
            64
        } else {
            args.concurrency * 20 * 10
        }),
        warmup_events: if short { 20 } else { 200 },
        concurrency: args.concurrency,
        appendfsync,
        redis_config: args
            .redis_config
            .iter()
            .map(|setting| suite::parse_redis_setting(setting))
            .collect::<anyhow::Result<_>>()?,
        body_bytes: 1024,
        scrape_every: Duration::from_secs_f64(args.scrape_every.max(0.0)),
    };
    eprintln!("lease-sync-bench: scratch directory {}", work.display());
    let quiet_wait = match args.wait_quiet {
        Some(below) => suite::wait_quiet(below, Duration::from_secs(25 * 60)).await,
        None => 0.0,
    };
    let build = if opts.lease_sync.to_string_lossy().contains("/release/") {
        "release"
    } else {
        "debug"
    };
    let mut machine = suite::machine(build, quiet_wait);
    eprintln!(
        "machine: {} × {}, load {}, {}",
        machine.nproc, machine.cpu_model, machine.loadavg_start, machine.redis
    );

    let outcome = measure(&opts, short, &dashboard_json, &mut machine).await;
    let (results, html) = match outcome {
        Ok(done) => done,
        Err(e) => {
            eprintln!("logs and data kept in {}", work.display());
            return Err(e);
        }
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("latest.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    // The `/metrics` measurement is a command of its own (`metrics`); its latest report,
    // if `--out` holds one, goes into the table.
    let metrics: Option<metrics_scale::Report> =
        std::fs::read_to_string(args.out.join("metrics").join("metrics.json"))
            .ok()
            .and_then(|json| serde_json::from_str(&json).ok());
    let table = report::markdown(&results, metrics.as_ref());
    std::fs::write(args.out.join("table.md"), &table)?;
    std::fs::write(args.out.join("chart.svg"), report::chart(&results))?;
    if !html.html.is_empty() {
        std::fs::write(args.out.join("dashboard.html"), &html.html)?;
    }
    println!("{table}");
    println!(
        "machine: {} cores ({}), {:.1} GiB, kernel {}, {}, {}, {} build; load average {} at the start, {} at the end",
        results.machine.nproc,
        results.machine.cpu_model,
        results.machine.mem_gib,
        results.machine.kernel,
        results.machine.redis,
        results.machine.rustc,
        results.machine.build,
        results.machine.loadavg_start,
        results.machine.loadavg_end
    );
    println!(
        "written: {}/{{latest.json,table.md,chart.svg{}}}",
        args.out.display(),
        if html.html.is_empty() {
            ""
        } else {
            ",dashboard.html"
        }
    );
    if opts.scrape_every.is_zero() {
        println!("scraping was off: no dashboard page");
    } else if let Err(e) = dashboard::check_required(&html) {
        eprintln!("logs and data kept in {}", work.display());
        return Err(e);
    }
    if !args.keep_work {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

async fn measure(
    opts: &suite::Options,
    short: bool,
    dashboard_json: &str,
    machine: &mut report::Machine,
) -> anyhow::Result<(Results, dashboard::Rendered)> {
    let mut yardstick = Vec::new();
    for i in 1..=opts.runs {
        let y = suite::yardstick(opts, i).await?;
        eprintln!(
            "yardstick {i}: LPUSH {:.0}/s, RPOP {:.0}/s",
            y.lpush_rps, y.rpop_rps
        );
        yardstick.push(y);
    }
    let mut fixed_rate = opts
        .fixed_rate
        .unwrap_or_else(|| suite::default_fixed_rate(&yardstick));
    if short && opts.fixed_rate.is_none() {
        fixed_rate = fixed_rate.min(200.0);
    }
    let setup = suite::setup(opts, fixed_rate);
    let scraper = Scraper::start(opts.scrape_every);
    let mut phases = Vec::new();
    let mut runs = Vec::new();
    for i in 1..=opts.runs {
        runs.push(suite::run_once(opts, i, fixed_rate, &scraper, &mut phases).await?);
    }
    machine.loadavg_end = suite::loadavg();
    let recorded = scraper.finish();
    std::fs::write(
        opts.work.join("scrapes.json"),
        serde_json::to_string(&recorded.scrapes)?,
    )?;
    let caption = format!(
        "Benchmark run of {} ({} build, {} run(s), {}): ingest at a fixed and at the maximum rate, then workers draining against the OpenApp sandbox at 0 ms and 50 ms.",
        machine.date,
        machine.build,
        opts.runs,
        if short { "short mode" } else { "full mode" }
    );
    let html = if opts.scrape_every.is_zero() {
        dashboard::Rendered::default()
    } else {
        dashboard::render(
            dashboard_json,
            &recorded,
            &phases,
            opts.scrape_every.as_secs_f64(),
            &caption,
        )?
    };
    let summary = summarize(&yardstick, &runs, opts.concurrency);
    let scrape_ms: Vec<f64> = recorded.scrapes.iter().map(|s| s.millis).collect();
    let results = Results {
        mode: if short { "short".into() } else { "full".into() },
        machine: machine.clone(),
        setup,
        yardstick,
        runs,
        summary,
        scrape_ms_median: median(scrape_ms.iter().copied()),
        scrape_ms_max: scrape_ms.iter().copied().fold(0.0, f64::max),
        dashboard_panels_with_data: html.with_data.clone(),
        dashboard_panels_without_data: html.without_data.clone(),
    };
    Ok((results, html))
}

async fn metrics_bench(args: MetricsArgs) -> anyhow::Result<()> {
    let work = suite::work_dir(None)?;
    let opts = metrics_scale::Options {
        lease_sync: std::fs::canonicalize(&args.lease_sync)?,
        work: work.clone(),
        jobs: args.jobs,
        dead_workers: args.dead_workers,
        scrapes: args.scrapes.max(1),
        layout: args.layout,
    };
    let report = metrics_scale::run(&opts).await?;
    metrics_scale::write(&report, &args.out)?;
    // The scratch directory holds Redis's data (hundreds of MB at 100,000 jobs).
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
