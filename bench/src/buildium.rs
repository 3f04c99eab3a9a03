//! The Buildium end-to-end benchmark (`lease-sync-bench buildium`): every process real and on
//! loopback — a fresh Redis, `lease-sync sandbox-openapp`, `lease-sync sandbox-buildium`
//! posting its signed webhooks to `lease-sync serve` — and two measurements per run:
//!
//! * **Latency**: lease changes made through the Buildium emulator's control API at a fixed
//!   rate (open loop: change *i* is due at `t0 + i / rate` and its latency counts from then),
//!   each timed to the OpenApp call it causes (the sandbox records when it received each call).
//!   The mix: half the changes create a lease with one tenant (→ `POST building-users`), a
//!   quarter move a tenant out with a past date and a quarter delete a lease (→ `DELETE
//!   building-users/{user}`), on leases seeded before the clock starts (their webhooks
//!   dropped, then `lease-sync reconcile --apply`). Every tenant's OpenApp user exists
//!   beforehand (`[identity] create_missing` stays off). Also counted: Buildium reads and
//!   webhooks per change, the read rate, and the CPU of every process.
//! * **Pull**: `lease-sync reconcile --source buildium` (no `--from`) over many leases (their
//!   webhooks dropped), timed cold (empty identity cache: one OpenApp search per tenant), warm
//!   (cache filled), then with `--apply` and until OpenApp holds every tenant.
//!
//! Every wait is bounded; every process is stopped at the end (or when a run fails).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use lease_sync::config::{
    BuildiumSettings, LogFormat, PropertySettings, Secret, Settings, SourceKind, SourceSecret,
    SourceSettings, hash_token,
};
use lease_sync_testkit::{
    Appendfsync, ConfigBuilder, Output, Process, ProcessBuilder, RedisServer, free_port,
    toml_with_secrets,
};
use serde::Deserialize;
use serde_json::{Value, json};
use time::{Date, Duration as Days, OffsetDateTime};
use tokio::task::JoinSet;

use crate::buildium_report::{
    Change, ChangeKind, LatencyRun, PullMeasure, PullRun, latency_run, reads_per_second_peak,
};
use crate::procs::{self, http_ok};
use crate::report::{MachineLoad, Usage};
use crate::scrape;
use crate::suite::{self, READY_LIMIT, STOP_ON_DROP};

/// The `[[sources]]` name, so the webhook URL is `/webhooks/buildium`.
const SOURCE: &str = "buildium";
/// Buildium's rental property id, mapped to the OpenApp building below.
const PROPERTY_ID: i32 = 23;
const ORG: &str = "01HBENCHORG000000000000000";
const INTEGRATION: &str = "01HBENCHINT000000000000000";
const API_KEY: &str = "bench_openapp_key_0123456789";
const ADMIN_TOKEN: &str = "lsat_bench_admin_token_0123456789";
const NAMESPACE: &str = "bench";
/// The webhook signing key Buildium and lease-sync share.
const SIGNING_KEY: &str = "bench-buildium-signing-key-0123456789";
const CLIENT_ID: &str = "bench-buildium-client";
const CLIENT_SECRET: &str = "bench-buildium-client-secret-0123456789";
/// The building's time zone (move-out dates are days there).
const TIMEZONE: &str = "America/New_York";
/// Control-API calls in flight while seeding.
const SEED_CONCURRENCY: usize = 8;
/// Longest wait for one control-API or sandbox call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the harness looks at OpenApp's members while waiting for the changes' effects.
const STATE_POLL: Duration = Duration::from_millis(250);

/// What to run and how big.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `lease-sync` binary.
    pub lease_sync: PathBuf,
    /// Scratch directory: configs, logs, Redis data.
    pub work: PathBuf,
    /// Runs of each measurement.
    pub runs: usize,
    /// Lease changes per latency run.
    pub changes: usize,
    /// Changes per second.
    pub rate: f64,
    /// Leases of the pull; 0 skips the pull.
    pub pull_leases: usize,
    /// Reads per second the Buildium emulator allows, and lease-sync's
    /// `[sources.buildium] rate_limit_per_sec`; 0 lifts the emulator's limit and sets
    /// lease-sync's to 1,000,000 (a diagnostic, not Buildium).
    pub buildium_rate_limit: u32,
    /// `appendfsync` of Redis.
    pub appendfsync: Appendfsync,
    /// How long after the last change every change must have reached OpenApp.
    pub settle_limit: Duration,
}

/// Milliseconds since the Unix epoch now, as the sandboxes stamp their records.
fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The configuration of `lease-sync serve` and `reconcile`: lease-sync's defaults except
/// addresses, credentials, JSON logs, and one Buildium source mapping property 23.
fn config(
    redis_url: &str,
    http_port: u16,
    admin_port: u16,
    openapp_port: u16,
    buildium_port: u16,
    rate_limit_per_sec: u32,
) -> anyhow::Result<Settings> {
    let mut property = PropertySettings::new(PROPERTY_ID.to_string(), ORG, INTEGRATION);
    property.timezone = TIMEZONE.into();
    let mut source = SourceSettings::named(SOURCE);
    source.kind = SourceKind::Buildium;
    source.secrets = vec![SourceSecret::plain(SIGNING_KEY)];
    source.buildium = Some(BuildiumSettings {
        base_url: format!("http://127.0.0.1:{buildium_port}")
            .parse()
            .context("the emulator's URL")?,
        allow_insecure_http: true,
        client_id: CLIENT_ID.into(),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        rate_limit_per_sec,
        ..BuildiumSettings::default()
    });
    source.properties = vec![property];
    Ok(ConfigBuilder::new()
        .listen(http_port)
        .redis(redis_url, NAMESPACE)
        .sandbox_openapp(&format!("http://127.0.0.1:{openapp_port}/api/v1"), API_KEY)
        .admin(admin_port, [hash_token(ADMIN_TOKEN)])
        .source(source)
        .edit(|s| {
            s.log.format = LogFormat::Json;
            s.log.level = "info".into();
        })
        .build())
}

/// One building user call as the OpenApp sandbox recorded it (`GET /_sandbox/calls`).
#[derive(Debug, Clone, Deserialize)]
struct Call {
    method: String,
    path: String,
    user_id: Option<String>,
    status: u16,
    at_ms: u64,
    seq: u64,
}

/// One read as the Buildium emulator recorded it (`GET /_sandbox/reads`).
#[derive(Debug, Clone, Deserialize)]
pub struct Read {
    /// Path read.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// When it arrived (Unix ms).
    pub at_ms: u64,
}

/// One webhook event as the Buildium emulator recorded it (`GET /_sandbox/deliveries`).
#[derive(Debug, Clone, Deserialize)]
struct Delivery {
    id: u64,
    state: String,
    #[serde(default)]
    attempts: Vec<Value>,
}

/// A seeded lease with its one tenant.
#[derive(Debug, Clone)]
struct Seeded {
    lease_id: i64,
    tenant_id: i64,
    user_id: String,
}

/// The processes and addresses of one run.
struct Cluster {
    lease_sync: PathBuf,
    dir: PathBuf,
    redis: RedisServer,
    openapp: Process,
    buildium: Process,
    serve: Process,
    openapp_port: u16,
    buildium_port: u16,
    admin_port: u16,
    config: PathBuf,
    client: reqwest::Client,
}

impl Cluster {
    /// Starts Redis, both emulators and `lease-sync serve`, each ready before the next.
    async fn start(opts: &Options, dir: &Path, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let redis = suite::start_redis(&dir.join("redis"), opts.appendfsync).await?;
        let (http_port, admin_port, openapp_port, buildium_port) =
            (free_port(), free_port(), free_port(), free_port());
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let limit = if opts.buildium_rate_limit == 0 {
            1_000_000
        } else {
            opts.buildium_rate_limit
        };
        let settings = config(
            &redis.url(),
            http_port,
            admin_port,
            openapp_port,
            buildium_port,
            limit,
        )?;
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "# Written by lease-sync-bench.\n{}",
                toml_with_secrets(&settings)?
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;

        let mut openapp = ProcessBuilder::new(
            format!("{name}-openapp"),
            &opts.lease_sync,
            dir.join(format!("{name}-openapp.log")),
        )
        .on_drop(STOP_ON_DROP)
        .arg("sandbox-openapp")
        .args(["--listen", &format!("127.0.0.1:{openapp_port}")])
        .args(["--api-key", API_KEY])
        .args(["--integration", &format!("{ORG}:{INTEGRATION}")])
        .spawn()?;
        let url = format!("http://127.0.0.1:{openapp_port}/_sandbox/state");
        openapp
            .wait_for(&format!("a 200 from {url}"), READY_LIMIT, || async {
                http_ok(&client, &url).await.then_some(())
            })
            .await?;

        let mut buildium = ProcessBuilder::new(
            format!("{name}-buildium"),
            &opts.lease_sync,
            dir.join(format!("{name}-buildium.log")),
        )
        .on_drop(STOP_ON_DROP)
        .arg("sandbox-buildium")
        .args(["--listen", &format!("127.0.0.1:{buildium_port}")])
        .args([
            "--webhook-url",
            &format!("http://127.0.0.1:{http_port}/webhooks/{SOURCE}"),
        ])
        .args(["--client-id", CLIENT_ID])
        .args(["--rate-limit", &opts.buildium_rate_limit.to_string()])
        .env("SANDBOX_BUILDIUM_SECRET", SIGNING_KEY)
        .env("SANDBOX_BUILDIUM_CLIENT_SECRET", CLIENT_SECRET)
        .spawn()?;
        let url = format!("http://127.0.0.1:{buildium_port}/_sandbox/faults");
        buildium
            .wait_for(&format!("a 200 from {url}"), READY_LIMIT, || async {
                http_ok(&client, &url).await.then_some(())
            })
            .await?;

        let mut serve = ProcessBuilder::new(
            format!("{name}-serve"),
            &opts.lease_sync,
            dir.join(format!("{name}-serve.log")),
        )
        .on_drop(STOP_ON_DROP)
        .arg("serve")
        .config(&config)
        .spawn()?;
        let url = format!("http://127.0.0.1:{admin_port}/readyz");
        serve
            .wait_for(&format!("a 200 from {url}"), READY_LIMIT, || async {
                http_ok(&client, &url).await.then_some(())
            })
            .await?;
        Ok(Self {
            lease_sync: opts.lease_sync.clone(),
            dir: dir.to_owned(),
            redis,
            openapp,
            buildium,
            serve,
            openapp_port,
            buildium_port,
            admin_port,
            config,
            client,
        })
    }

    fn openapp_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.openapp_port)
    }

    fn buildium_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.buildium_port)
    }

    /// The pids whose CPU a phase reports, by name.
    fn pids(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("lease-sync serve", self.serve.pid()),
            ("redis-server", self.redis.pid()),
            ("OpenApp sandbox", self.openapp.pid()),
            ("Buildium emulator", self.buildium.pid()),
        ]
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> anyhow::Result<T> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {url}: unexpected answer"))
    }

    /// Every webhook event is dropped (`rate` 1) or sent (`rate` 0).
    async fn drop_webhooks(&self, rate: f64) -> anyhow::Result<()> {
        let url = self.buildium_url("/_sandbox/faults");
        let body =
            json!({ "webhooks": { "drop_rate": rate, "duplicate_rate": 0.0, "max_delay_ms": 0 } });
        let response = self.client.put(&url).json_body(&body).send().await?;
        if !response.status().is_success() {
            bail!("PUT {url}: {}", response.status());
        }
        Ok(())
    }

    /// OpenApp's building users of the integration.
    async fn members(&self) -> anyhow::Result<BTreeSet<String>> {
        let state: BTreeMap<String, BTreeMap<String, String>> =
            self.get_json(&self.openapp_url("/_sandbox/state")).await?;
        Ok(state
            .get(INTEGRATION)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn calls(&self) -> anyhow::Result<Vec<Call>> {
        self.get_json(&self.openapp_url("/_sandbox/calls")).await
    }

    /// The `seq` of the latest OpenApp call (0 before any).
    async fn last_call_seq(&self) -> anyhow::Result<u64> {
        Ok(self.calls().await?.last().map_or(0, |c| c.seq))
    }

    async fn reads(&self) -> anyhow::Result<Vec<Read>> {
        self.get_json(&self.buildium_url("/_sandbox/reads")).await
    }

    async fn deliveries(&self) -> anyhow::Result<Vec<Delivery>> {
        self.get_json(&self.buildium_url("/_sandbox/deliveries"))
            .await
    }

    /// `sum / count` of a histogram on serve's `/metrics`, in milliseconds (0 when empty).
    async fn histogram_mean_ms(&self, name: &str) -> anyhow::Result<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        let text = self.client.get(&url).send().await?.text().await?;
        let samples = scrape::parse(&text);
        let total = |suffix: &str| {
            samples
                .iter()
                .filter(|s| s.name == format!("{name}{suffix}"))
                .map(|s| s.value)
                .sum::<f64>()
        };
        let count = total("_count");
        Ok(if count > 0.0 {
            total("_sum") / count * 1e3
        } else {
            0.0
        })
    }

    /// Creates one OpenApp user per email in the org; their ids, in order.
    async fn create_users(&self, emails: &[String]) -> anyhow::Result<Vec<String>> {
        let url = Arc::new(self.openapp_url("/_sandbox/users"));
        let results = concurrently(emails, SEED_CONCURRENCY, {
            let client = self.client.clone();
            move |i, email: String| {
                let (client, url) = (client.clone(), Arc::clone(&url));
                async move {
                    let body = json!({
                        "org_id": ORG,
                        "name": format!("Bench Resident {i}"),
                        "email": email,
                    });
                    let user: Value = post_json(&client, &url, &body).await?;
                    user["id"]
                        .as_str()
                        .map(str::to_owned)
                        .context("a created user has no id")
                }
            }
        })
        .await?;
        Ok(results)
    }

    /// Creates one lease per email, each with that one current tenant; their lease and
    /// tenant ids, in order.
    async fn create_leases(&self, emails: &[String]) -> anyhow::Result<Vec<(i64, i64)>> {
        let url = Arc::new(self.buildium_url("/_sandbox/leases"));
        concurrently(emails, SEED_CONCURRENCY, {
            let client = self.client.clone();
            move |i, email: String| {
                let (client, url) = (client.clone(), Arc::clone(&url));
                async move {
                    let lease: Value = post_json(&client, &url, &new_lease(i, &email)).await?;
                    lease_and_tenant(&lease)
                }
            }
        })
        .await
    }

    /// Runs `lease-sync reconcile --source buildium` (with `--apply` when `apply`), timed, its
    /// CPU sampled while it runs; Buildium reads and OpenApp calls counted around it.
    async fn reconcile(&self, name: &str, apply: bool) -> anyhow::Result<PullMeasure> {
        let reads_before = self.reads().await?.len();
        let seq_before = self.last_call_seq().await?;
        let pids = self.pids();
        let before = cpu_of(&pids);
        let mut builder =
            ProcessBuilder::new(name, &self.lease_sync, self.dir.join(format!("{name}.log")))
                .on_drop(STOP_ON_DROP)
                .stdout(Output::File(self.dir.join(format!("{name}.json"))))
                .arg("reconcile")
                .config(&self.config)
                .args(["--source", SOURCE, "--json"]);
        if apply {
            builder = builder.arg("--apply");
        }
        let started = Instant::now();
        let mut process = builder.spawn()?;
        let limit = Duration::from_secs(1800);
        let mut cpu = Duration::ZERO;
        let status = loop {
            if let Some(status) = process.exit_status() {
                break status;
            }
            cpu = procs::cpu_time(process.pid()).unwrap_or(cpu);
            if started.elapsed() > limit {
                process.kill9();
                bail!(
                    "{name} did not finish within {limit:?}; see {}",
                    process.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let seconds = started.elapsed().as_secs_f64();
        let after = cpu_of(&pids);
        if !status.success() {
            bail!(
                "{name} exited with {status}; last lines of {}:\n{}",
                process.log_path().display(),
                process.log_tail(20)
            );
        }
        let log = process.log();
        let summary = log
            .lines()
            .find(|l| l.starts_with("read ") && l.contains("lease(s) from Buildium"))
            .with_context(|| format!("{name} printed no `read N lease(s)` line:\n{log}"))?;
        let (leases_read, rows, conflicts) = parse_pull_line(summary)
            .with_context(|| format!("{name}: cannot read the line {summary:?}"))?;
        let reads = self.reads().await?;
        let calls = self.calls().await?;
        let new_calls: Vec<&Call> = calls.iter().filter(|c| c.seq > seq_before).collect();
        let openapp_calls = calls.last().map_or(0, |c| c.seq) - seq_before;
        Ok(PullMeasure {
            seconds,
            leases_read,
            rows,
            conflicts,
            buildium_requests: reads.len().saturating_sub(reads_before) as u64,
            openapp_calls,
            openapp_searches_seen: new_calls
                .iter()
                .filter(|c| c.path.ends_with("/users/search"))
                .count() as u64,
            reconcile_cpu_s: cpu.as_secs_f64(),
            cpu_s: pids
                .iter()
                .map(|(name, pid)| {
                    let delta = after
                        .get(pid)
                        .copied()
                        .unwrap_or_default()
                        .saturating_sub(before.get(pid).copied().unwrap_or_default());
                    ((*name).to_owned(), delta.as_secs_f64())
                })
                .collect(),
        })
    }

    /// Waits until OpenApp's members of the integration satisfy `done`, for at most `limit`.
    async fn wait_members(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&BTreeSet<String>) -> bool,
    ) -> anyhow::Result<BTreeSet<String>> {
        let deadline = Instant::now() + limit;
        loop {
            let members = self.members().await?;
            if done(&members) {
                return Ok(members);
            }
            self.serve.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {limit:?} ({} members); see {}",
                    members.len(),
                    self.serve.log_path().display()
                );
            }
            tokio::time::sleep(STATE_POLL).await;
        }
    }

    /// Stops every process; whether serve exited 0 on SIGTERM.
    async fn stop(mut self) -> bool {
        let clean = self
            .serve
            .stop(Duration::from_secs(30))
            .await
            .is_some_and(|s| s.success());
        self.buildium.stop(Duration::from_secs(10)).await;
        self.openapp.stop(Duration::from_secs(10)).await;
        self.redis.terminate(Duration::from_secs(10)).await;
        clean
    }
}

/// Runs `f(index, item)` for every item with at most `concurrency` at once; the results in
/// order, or the first error.
async fn concurrently<T, F, Fut>(
    items: &[String],
    concurrency: usize,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut results: Vec<Option<T>> = (0..items.len()).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut next = 0;
    loop {
        while set.len() < concurrency.max(1) && next < items.len() {
            let fut = f(next, items[next].clone());
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (i, result) = joined.context("a seeding task panicked")?;
        results[i] = Some(result?);
    }
    results
        .into_iter()
        .map(|r| r.context("a seeding task gave no result"))
        .collect()
}

/// A small extension so that JSON bodies need no reqwest feature.
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }
}

async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client
        .post(url)
        .json_body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("POST {url}: unexpected answer {text}"))
}

fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

fn date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// A lease of property 23, unit `i`, from 30 days ago to a year ahead, with one current
/// tenant who moved in when it started.
fn new_lease(i: usize, email: &str) -> Value {
    let from = date(today() - Days::days(30));
    json!({
        "PropertyId": PROPERTY_ID,
        "UnitId": i + 1,
        "LeaseFromDate": from,
        "LeaseToDate": date(today() + Days::days(365)),
        "Tenants": [{
            "FirstName": "Bench",
            "LastName": format!("Resident {i}"),
            "Email": email,
            "MoveInDate": from,
            "Status": "Current",
        }],
    })
}

/// `Id` and its one tenant's `Id` from a `LeaseMessage`.
fn lease_and_tenant(lease: &Value) -> anyhow::Result<(i64, i64)> {
    let lease_id = lease["Id"].as_i64().context("a lease without Id")?;
    let tenant_id = lease["Tenants"][0]["Id"]
        .as_i64()
        .context("a lease without its tenant")?;
    Ok((lease_id, tenant_id))
}

/// `read N lease(s) from Buildium: R row(s), C conflict(s), …` → (N, R, C).
pub fn parse_pull_line(line: &str) -> Option<(u64, u64, u64)> {
    let leases = line
        .strip_prefix("read ")?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let (_, rest) = line.split_once(": ")?;
    let mut parts = rest.split(", ");
    let rows = parts.next()?.split(' ').next()?.parse().ok()?;
    let conflicts = parts.next()?.split(' ').next()?.parse().ok()?;
    Some((leases, rows, conflicts))
}

fn cpu_of(pids: &[(&'static str, u32)]) -> BTreeMap<u32, Duration> {
    pids.iter()
        .map(|(_, pid)| (*pid, procs::cpu_time(*pid).unwrap_or_default()))
        .collect()
}

/// The pull: `opts.pull_leases` leases and their users, their webhooks dropped; reconcile
/// cold, warm, then with `--apply` until OpenApp holds them all.
pub async fn pull_once(opts: &Options, index: usize) -> anyhow::Result<PullRun> {
    let n = opts.pull_leases;
    let name = format!("pull-{index}");
    let mut cluster = Cluster::start(opts, &opts.work.join(&name), &name).await?;
    cluster.drop_webhooks(1.0).await?;
    let emails: Vec<String> = (0..n)
        .map(|i| format!("p{index}-resident-{i:06}@bench.example"))
        .collect();
    let seeding = Instant::now();
    cluster.create_users(&emails).await?;
    cluster.create_leases(&emails).await?;
    eprintln!(
        "pull {index}: {n} OpenApp users and Buildium leases created in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let cold = cluster.reconcile(&format!("{name}-cold"), false).await?;
    eprintln!(
        "pull {index}: cold dry run {:.2} s ({} leases, {} Buildium requests, {} OpenApp calls)",
        cold.seconds, cold.leases_read, cold.buildium_requests, cold.openapp_calls
    );
    let warm = cluster.reconcile(&format!("{name}-warm"), false).await?;
    eprintln!(
        "pull {index}: warm dry run {:.2} s ({} Buildium requests, {} OpenApp calls)",
        warm.seconds, warm.buildium_requests, warm.openapp_calls
    );
    let started = Instant::now();
    let apply = cluster.reconcile(&format!("{name}-apply"), true).await?;
    let limit = Duration::from_secs(600.max(n as u64 / 10));
    let members = cluster
        .wait_members("every pulled tenant in OpenApp", limit, |m| m.len() >= n)
        .await?;
    let to_openapp_s = started.elapsed().as_secs_f64();
    eprintln!(
        "pull {index}: --apply {:.2} s, all {} in OpenApp after {:.2} s",
        apply.seconds,
        members.len(),
        to_openapp_s
    );
    let clean_exit = cluster.stop().await;
    for (what, m) in [("cold", &cold), ("warm", &warm), ("apply", &apply)] {
        if m.leases_read != n as u64 || m.rows != n as u64 || m.conflicts != 0 {
            bail!(
                "pull {index} ({what}): read {} leases, {} rows, {} conflicts; expected {n}, {n}, 0",
                m.leases_read,
                m.rows,
                m.conflicts
            );
        }
    }
    Ok(PullRun {
        index,
        leases: n,
        cold,
        warm,
        apply,
        apply_to_openapp_s: to_openapp_s,
        openapp_members: members.len(),
        serve_clean_exit: clean_exit,
    })
}

/// The kind of change `i` of a run: adds at even positions, move-outs and deletions
/// alternating at odd ones.
pub fn kind_of(i: usize) -> ChangeKind {
    match i % 4 {
        1 => ChangeKind::MoveOut,
        3 => ChangeKind::Delete,
        _ => ChangeKind::Add,
    }
}

/// What one change did at the control API.
struct Made {
    index: usize,
    sent_ms: f64,
    applied_ms: f64,
    error: Option<String>,
}

/// The latency run: seeds the leases the removals need, then makes `opts.changes` changes at
/// `opts.rate` and times each to its OpenApp call.
pub async fn latency_once(opts: &Options, index: usize) -> anyhow::Result<LatencyRun> {
    let n = opts.changes;
    let name = format!("latency-{index}");
    let mut cluster = Cluster::start(opts, &opts.work.join(&name), &name).await?;
    let kinds: Vec<ChangeKind> = (0..n).map(kind_of).collect();
    let removals = kinds.iter().filter(|k| **k != ChangeKind::Add).count();
    let adds = n - removals;

    // Seeding (not measured): the users of every change, and the leases the removals end,
    // known to lease-sync through a pull (their webhooks dropped).
    cluster.drop_webhooks(1.0).await?;
    let seed_emails: Vec<String> = (0..removals)
        .map(|i| format!("l{index}-seeded-{i:06}@bench.example"))
        .collect();
    let add_emails: Vec<String> = (0..adds)
        .map(|i| format!("l{index}-new-{i:06}@bench.example"))
        .collect();
    let seed_users = cluster.create_users(&seed_emails).await?;
    let add_users = cluster.create_users(&add_emails).await?;
    let seeded: Vec<Seeded> = cluster
        .create_leases(&seed_emails)
        .await?
        .into_iter()
        .zip(seed_users)
        .map(|((lease_id, tenant_id), user_id)| Seeded {
            lease_id,
            tenant_id,
            user_id,
        })
        .collect();
    if removals > 0 {
        cluster.reconcile(&format!("{name}-seed"), true).await?;
        let limit = Duration::from_secs(600);
        cluster
            .wait_members("the seeded tenants in OpenApp", limit, |m| {
                m.len() >= removals
            })
            .await?;
    }
    cluster.drop_webhooks(0.0).await?;
    let deliveries_before = cluster.deliveries().await?.last().map_or(0, |d| d.id);
    let seq_before = cluster.last_call_seq().await?;
    let pids = cluster.pids();
    let cpu_before = cpu_of(&pids);
    let busy_before = procs::machine_busy_s();
    let own_before = procs::cpu_time(std::process::id()).unwrap_or_default();
    let wall = Instant::now();
    eprintln!(
        "latency {index}: seeded {removals} leases and {} users; {n} changes at {}/s",
        removals + adds,
        opts.rate
    );

    // The changes, open loop.
    let (base_instant, base_ms) = (Instant::now(), unix_ms());
    let lead = Duration::from_millis(200);
    let t0 = base_instant + lead;
    let t0_ms = base_ms + lead.as_secs_f64() * 1e3;
    let interval = 1.0 / opts.rate;
    let mut expected: Vec<(ChangeKind, String)> = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    let (mut next_add, mut next_removal) = (0, 0);
    for (i, kind) in kinds.iter().copied().enumerate() {
        let (method, url, body, user) = match kind {
            ChangeKind::Add => {
                let k = next_add;
                next_add += 1;
                (
                    reqwest::Method::POST,
                    cluster.buildium_url("/_sandbox/leases"),
                    Some(new_lease(removals + k, &add_emails[k])),
                    add_users[k].clone(),
                )
            }
            ChangeKind::MoveOut | ChangeKind::Delete => {
                let lease = &seeded[next_removal];
                next_removal += 1;
                if kind == ChangeKind::MoveOut {
                    (
                        reqwest::Method::POST,
                        cluster
                            .buildium_url(&format!("/_sandbox/leases/{}/moveouts", lease.lease_id)),
                        Some(json!({
                            "TenantId": lease.tenant_id,
                            "MoveOutDate": date(today() - Days::days(2)),
                        })),
                        lease.user_id.clone(),
                    )
                } else {
                    (
                        reqwest::Method::DELETE,
                        cluster.buildium_url(&format!("/_sandbox/leases/{}", lease.lease_id)),
                        None,
                        lease.user_id.clone(),
                    )
                }
            }
        };
        expected.push((kind, user));
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 * interval)).into()).await;
        let client = cluster.client.clone();
        tasks.spawn(async move {
            let sent_ms = unix_ms();
            let mut request = client.request(method, &url);
            if let Some(body) = &body {
                request = request.json_body(body);
            }
            let error = match request.send().await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("{url}: {}", r.status())),
                Err(e) => Some(format!("{url}: {e}")),
            };
            Made {
                index: i,
                sent_ms,
                applied_ms: unix_ms(),
                error,
            }
        });
    }
    let mut made: Vec<Option<Made>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let m = joined.context("a change task panicked")?;
        let i = m.index;
        made[i] = Some(m);
    }
    let last_change = Instant::now();

    // Wait (bounded) until OpenApp shows every change.
    let want_present: BTreeSet<String> = expected
        .iter()
        .filter(|(k, _)| *k == ChangeKind::Add)
        .map(|(_, u)| u.clone())
        .collect();
    let want_absent: BTreeSet<String> = expected
        .iter()
        .filter(|(k, _)| *k != ChangeKind::Add)
        .map(|(_, u)| u.clone())
        .collect();
    let settled = cluster
        .wait_members("every change in OpenApp", opts.settle_limit, |m| {
            want_present.is_subset(m) && want_absent.is_disjoint(m)
        })
        .await;
    let settle_s = last_change.elapsed().as_secs_f64();
    let (final_members, timed_out) = match settled {
        Ok(m) => (m, false),
        Err(e) => {
            eprintln!("latency {index}: {e:#}");
            (cluster.members().await?, true)
        }
    };
    // OpenApp can show every change while refreshes it no longer needs (a second webhook of
    // the same lease) are still queued: count their reads too, once none came for 3 s.
    let quiet_for = Duration::from_secs(3);
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let (mut reads_seen, mut quiet_since) = (cluster.reads().await?.len(), Instant::now());
    while quiet_since.elapsed() < quiet_for && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now_seen = cluster.reads().await?.len();
        if now_seen != reads_seen {
            (reads_seen, quiet_since) = (now_seen, Instant::now());
        }
    }
    let wall_s = wall.elapsed().as_secs_f64();
    let cpu_after = cpu_of(&pids);
    let busy = (procs::machine_busy_s() - busy_before) / wall_s.max(1e-9);
    let own = procs::cpu_time(std::process::id())
        .unwrap_or_default()
        .saturating_sub(own_before)
        .as_secs_f64();

    let calls = cluster.calls().await?;
    if let Some(first) = calls.first()
        && first.seq > seq_before + 1
    {
        bail!(
            "the OpenApp sandbox dropped calls of the run from its record (oldest kept {}, run from {}): use fewer changes",
            first.seq,
            seq_before + 1
        );
    }
    let reads = cluster.reads().await?;
    let run_start_ms = t0_ms as u64;
    let phase_reads: Vec<Read> = reads
        .into_iter()
        .filter(|r| r.at_ms >= run_start_ms)
        .collect();
    let deliveries: Vec<Delivery> = cluster
        .deliveries()
        .await?
        .into_iter()
        .filter(|d| d.id > deliveries_before)
        .collect();
    let rate_limit_wait_ms = cluster
        .histogram_mean_ms("lease_sync_buildium_rate_limit_wait_seconds")
        .await?;
    let buildium_request_ms = cluster
        .histogram_mean_ms("lease_sync_buildium_request_duration_seconds")
        .await?;

    // Each change's OpenApp call: the first building-user call for its user after the run
    // started, by method.
    let building_calls: Vec<&Call> = calls
        .iter()
        .filter(|c| c.seq > seq_before && c.path.contains("/building-users"))
        .collect();
    let mut changes = Vec::with_capacity(n);
    for (i, (kind, user)) in expected.iter().enumerate() {
        let method = if *kind == ChangeKind::Add {
            "POST"
        } else {
            "DELETE"
        };
        let call = building_calls
            .iter()
            .find(|c| c.method == method && c.user_id.as_deref() == Some(user.as_str()));
        let m = made[i].as_ref();
        changes.push(Change {
            index: i,
            kind: *kind,
            scheduled_s: i as f64 * interval,
            sent_s: m.map_or(f64::NAN, |m| (m.sent_ms - t0_ms) / 1e3),
            applied_s: m.map_or(f64::NAN, |m| (m.applied_ms - t0_ms) / 1e3),
            openapp_s: call.map(|c| (c.at_ms as f64 - t0_ms) / 1e3),
            openapp_status: call.map(|c| c.status),
            control_error: m.and_then(|m| m.error.clone()),
        });
    }
    let expected_calls: BTreeSet<(String, &str)> = expected
        .iter()
        .map(|(k, u)| {
            (
                u.clone(),
                if *k == ChangeKind::Add {
                    "POST"
                } else {
                    "DELETE"
                },
            )
        })
        .collect();
    let mut seen_once = BTreeSet::new();
    let extra_calls = building_calls
        .iter()
        .filter(|c| {
            let key = (c.user_id.clone().unwrap_or_default(), c.method.as_str());
            let first = seen_once.insert(key.clone());
            !(first && expected_calls.contains(&(key.0, key.1)))
        })
        .count() as u64;
    let mut openapp_calls: BTreeMap<String, u64> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.seq > seq_before) {
        let what = if c.path.ends_with("/users/search") {
            "search users"
        } else if c.path.contains("/building-users") {
            if c.method == "POST" {
                "add building user"
            } else {
                "remove building user"
            }
        } else {
            "other"
        };
        *openapp_calls.entry(what.to_owned()).or_default() += 1;
    }
    let mut usage = BTreeMap::new();
    for (name, pid) in &pids {
        let cpu = cpu_after
            .get(pid)
            .copied()
            .unwrap_or_default()
            .saturating_sub(cpu_before.get(pid).copied().unwrap_or_default())
            .as_secs_f64();
        usage.insert(
            (*name).to_owned(),
            Usage {
                cpu_s: cpu,
                cpu_us_per_event: cpu * 1e6 / n.max(1) as f64,
                cores: cpu / wall_s.max(1e-9),
                peak_rss_mib: procs::status_kib(*pid, "VmHWM").map_or(0.0, |k| k as f64 / 1024.0),
            },
        );
    }
    let ours: f64 = usage.values().map(|u| u.cpu_s).sum::<f64>() + own;
    let machine = MachineLoad {
        busy_cores: busy,
        ours_cores: ours / wall_s.max(1e-9),
        other_cores: (busy - ours / wall_s.max(1e-9)).max(0.0),
    };
    let members_expected = want_present.len();
    let members = final_members.len();
    let clean_exit = cluster.stop().await;
    let mut run = latency_run(index, opts.rate, changes, &phase_reads);
    run.settle_s = settle_s;
    run.settle_timed_out = timed_out;
    run.webhooks = deliveries.len() as u64;
    run.webhook_attempts = deliveries.iter().map(|d| d.attempts.len() as u64).sum();
    run.webhooks_not_delivered =
        deliveries.iter().filter(|d| d.state != "delivered").count() as u64;
    run.extra_building_user_calls = extra_calls;
    run.openapp_calls = openapp_calls;
    run.rate_limit_wait_mean_ms = rate_limit_wait_ms;
    run.buildium_request_mean_ms = buildium_request_ms;
    run.peak_reads_per_s = reads_per_second_peak(&phase_reads);
    run.usage = usage;
    run.machine = machine;
    run.openapp_members = members;
    run.openapp_members_expected = members_expected;
    run.serve_clean_exit = clean_exit;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use lease_sync::config::Role;

    use super::*;

    #[test]
    fn the_pull_summary_line_is_read() {
        let line = "read 200 lease(s) from Buildium: 198 row(s), 2 conflict(s), 0 of unmapped buildings, 0 invalid, 0 re-read to confirm a removal";
        assert_eq!(parse_pull_line(line), Some((200, 198, 2)));
        assert_eq!(parse_pull_line("read many leases"), None);
    }

    #[test]
    fn half_the_changes_add_and_the_rest_alternate_removals() {
        let kinds: Vec<ChangeKind> = (0..8).map(kind_of).collect();
        assert_eq!(kinds.iter().filter(|k| **k == ChangeKind::Add).count(), 4);
        assert_eq!(kinds[1], ChangeKind::MoveOut);
        assert_eq!(kinds[3], ChangeKind::Delete);
    }

    #[test]
    fn the_written_config_serves_and_reconciles_the_buildium_source() {
        let settings =
            config("redis://127.0.0.1:6390", 8080, 9090, 9091, 9092, 10).expect("config");
        let text = toml_with_secrets(&settings).expect("written");
        let loaded = Settings::from_toml_str(&text, Vec::new()).expect("loads");
        for role in [Role::Serve, Role::Operate] {
            loaded.validate(role).expect("valid");
        }
        let source = loaded.source(SOURCE).expect("the source");
        assert_eq!(source.kind, SourceKind::Buildium);
        assert_eq!(
            source.buildium.as_ref().map(|b| b.rate_limit_per_sec),
            Some(10)
        );
        assert!(!loaded.identity.create_missing);
    }

    #[test]
    fn a_new_lease_has_its_one_current_tenant() {
        let lease = new_lease(4, "a@bench.example");
        assert_eq!(lease["UnitId"], 5);
        assert_eq!(lease["Tenants"][0]["Email"], "a@bench.example");
        assert_eq!(lease["Tenants"][0]["Status"], "Current");
    }
}
