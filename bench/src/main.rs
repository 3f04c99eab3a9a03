//! `lease-sync-bench`: measures lease-sync on loopback — ingest throughput and latency,
//! worker drain rate against the OpenApp sandbox, and redis-benchmark as a yardstick — and
//! writes the results, a chart and a dashboard page. `bench/run.sh` is the documented entry
//! point; see BENCHMARKS.md.

#![forbid(unsafe_code)]

mod dashboard;
mod load;
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
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lease-sync-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
    let table = report::markdown(&results);
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
