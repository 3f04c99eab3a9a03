//! `/metrics` over a deep queue: how long one scrape of `lease-sync ingest` takes with many
//! jobs queued and the in-flight sets of workers that died without deregistering — the queue
//! counts behind `/metrics`, `/admin/queue` and `queue stats` must not grow with the keyspace.
//!
//! The jobs are queued through lease-sync's own enqueue script (`JobQueue::enqueue_event`), one
//! distinct event and resident each, so Redis holds what a real backlog holds: the apalis task,
//! its payload and metadata, the delivery ledger, the resident's state and the dedupe marker.
//! No worker runs, so the backlog stays while it is scraped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lease_sync::config::PropertySettings;
use lease_sync::event::{EventType, Lease, LeaseEvent, Resident};
use lease_sync::queue::{DeliveryJob, EnqueueLimits, JobQueue, Target};
use lease_sync_testkit::config::{ConfigBuilder, standard_webhooks_source, toml_with_secrets};
use lease_sync_testkit::{Appendfsync, ProcessBuilder, free_port};
use time::OffsetDateTime;
use tokio::task::JoinSet;

use crate::procs::http_ok;
use crate::suite::{self, READY_LIMIT, STOP_ON_DROP};

const NAMESPACE: &str = "bench-metrics";
const SOURCE: &str = "bench";
const ORG: &str = "01HBENCHORG000000000000000";
const INTEGRATION: &str = "01HBENCHINT000000000000000";
/// Enqueue calls in flight while filling the queue.
const FILL_CONCURRENCY: usize = 64;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `lease-sync` binary.
    pub lease_sync: PathBuf,
    /// Scratch directory: config, log, Redis data.
    pub work: PathBuf,
    /// Jobs queued before scraping.
    pub jobs: usize,
    /// Jobs held in flight by workers that died, to count as well.
    pub dead_workers: usize,
    /// Scrapes measured.
    pub scrapes: usize,
    /// The Redis layout to fill the queue in (`{namespace}:layout`, set before the fill).
    pub layout: String,
}

/// Scrape times, in milliseconds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Jobs queued.
    pub jobs: usize,
    /// The Redis layout they were queued in.
    #[serde(default)]
    pub layout: String,
    /// Keys in Redis when scraping.
    pub redis_keys: u64,
    /// Redis's `used_memory` with the queue filled, in bytes (absent in reports written
    /// before it was measured).
    #[serde(default)]
    pub redis_used_memory: u64,
    /// Redis's `used_memory` before the fill, so the queue's share can be told apart.
    #[serde(default)]
    pub redis_used_memory_empty: u64,
    /// Jobs held in flight by dead workers.
    pub dead_workers: usize,
    /// Scrapes measured.
    pub scrapes: usize,
    /// Median scrape.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// `lease_sync_queue_jobs{state="ready"}` as the last scrape reported it.
    pub reported_ready: f64,
    /// `lease_sync_queue_jobs{state="in_flight"}` as the last scrape reported it.
    pub reported_in_flight: f64,
}

/// Fills Redis, starts `lease-sync ingest`, scrapes its `/metrics` `scrapes` times one after
/// the other.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.work)?;
    let redis = suite::start_redis(&opts.work, Appendfsync::Everysec).await?;
    let (http_port, admin_port) = (free_port(), free_port());
    let settings = ConfigBuilder::new()
        .listen(http_port)
        .redis(&redis.url(), NAMESPACE)
        .sandbox_openapp("http://127.0.0.1:9/api/v1", "bench_openapp_key_0123456789")
        .admin(admin_port, ["lsat_bench_admin_token_0123456789"])
        .source(standard_webhooks_source(
            SOURCE,
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            [PropertySettings::new("P-1", ORG, INTEGRATION)],
        ))
        .build();
    let config = opts.work.join("ingest.toml");
    std::fs::write(&config, toml_with_secrets(&settings)?)
        .with_context(|| format!("cannot write {}", config.display()))?;

    let queue = JobQueue::new(
        lease_sync::queue::connect(&settings.redis).context("redis")?,
        NAMESPACE,
    );
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let _: () = redis::cmd("SET")
        .arg(queue.keys().layout())
        .arg(&opts.layout)
        .query_async(&mut conn)
        .await?;
    let redis_used_memory_empty = used_memory(&mut conn).await?;
    let started = Instant::now();
    fill(&queue, opts.jobs).await?;
    eprintln!(
        "metrics: queued {} jobs in {:.1} s",
        opts.jobs,
        started.elapsed().as_secs_f64()
    );
    // Jobs held by workers that died (never renewed, never recovered: no worker runs).
    if opts.dead_workers > 0 {
        let held = queue
            .fetch(opts.dead_workers, lease_sync::queue::now_ms() + 3_600_000)
            .await?;
        anyhow::ensure!(held.len() == opts.dead_workers, "could not hold jobs");
    }
    let redis_keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    let redis_used_memory = used_memory(&mut conn).await?;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut ingest = ProcessBuilder::new("ingest", &opts.lease_sync, opts.work.join("ingest.log"))
        .on_drop(STOP_ON_DROP)
        .arg("ingest")
        .config(&config)
        .spawn()?;
    let url = format!("http://127.0.0.1:{admin_port}/metrics");
    ingest
        .wait_for(&format!("a 200 from {url}"), READY_LIMIT, || async {
            http_ok(&client, &url).await.then_some(())
        })
        .await?;
    let mut times = Vec::with_capacity(opts.scrapes);
    let mut last = String::new();
    for _ in 0..opts.scrapes {
        let t = Instant::now();
        let response = client.get(&url).send().await?;
        if !response.status().is_success() {
            bail!("/metrics answered {}", response.status());
        }
        last = response.text().await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ingest.stop(Duration::from_secs(10)).await;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i]
    };
    let samples = crate::scrape::parse(&last);
    let jobs_in = |state: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == lease_sync::telemetry::metrics::QUEUE_JOBS
                    && s.labels.get("state").map(String::as_str) == Some(state)
            })
            .map_or(f64::NAN, |s| s.value)
    };
    Ok(Report {
        jobs: opts.jobs,
        layout: opts.layout.clone(),
        redis_keys,
        redis_used_memory,
        redis_used_memory_empty,
        dead_workers: opts.dead_workers,
        scrapes: times.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: times.last().copied().unwrap_or_default(),
        reported_ready: jobs_in("ready"),
        reported_in_flight: jobs_in("in_flight"),
    })
}

/// Redis's `used_memory` (`INFO memory`), in bytes.
async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

impl Report {
    /// Redis memory the filled queue takes per job, in bytes.
    pub fn bytes_per_job(&self) -> f64 {
        self.redis_used_memory
            .saturating_sub(self.redis_used_memory_empty) as f64
            / self.jobs.max(1) as f64
    }
}

/// Queues `jobs` convergences, one distinct event and resident each.
async fn fill(queue: &JobQueue, jobs: usize) -> anyhow::Result<()> {
    let limits = EnqueueLimits {
        dedupe_ttl: Duration::from_secs(3600),
        max_clock_skew: Duration::from_secs(300),
        timeout: Duration::from_secs(30),
    };
    let mut tasks = JoinSet::new();
    for i in 0..jobs {
        if tasks.len() >= FILL_CONCURRENCY
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
        let queue = queue.clone();
        tasks.spawn(async move {
            let event = LeaseEvent {
                id: format!("bench-evt-{i}"),
                event_type: EventType::LeaseSigned,
                occurred_at: OffsetDateTime::now_utc(),
                lease: Lease {
                    id: format!("L-{i}"),
                    property_id: "P-1".into(),
                    unit: None,
                },
                residents: vec![Resident {
                    openapp_user_id: format!("user-{i}"),
                    external_id: None,
                }],
                residents_by_email: Vec::new(),
                access: None,
            };
            let job = DeliveryJob::for_event(
                &event,
                SOURCE,
                &format!("user-{i}"),
                Target {
                    org_id: ORG,
                    integration_id: INTEGRATION,
                    role: "resident",
                },
                None,
            );
            queue
                .enqueue_event(SOURCE, &event, &[job], limits)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Writes `report` as JSON into `out` (`metrics.json`) and prints a one-line summary.
pub fn write(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join("metrics.json");
    std::fs::write(&path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "/metrics with {} jobs queued in layout {} ({} Redis keys, Redis memory {:.0} bytes per job, {} jobs held by dead workers): \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} scrapes; reported ready {}, in flight {}",
        report.jobs,
        report.layout,
        report.redis_keys,
        report.bytes_per_job(),
        report.dead_workers,
        report.p50_ms,
        report.p99_ms,
        report.max_ms,
        report.scrapes,
        report.reported_ready,
        report.reported_in_flight
    );
    Ok(())
}
