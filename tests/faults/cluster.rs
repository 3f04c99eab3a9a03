//! The system under test: one redis-server, two `lease-sync ingest` and two `lease-sync work`
//! processes (the real binary), and the sandbox OpenApp served in this process. Every
//! process logs to a file in one work directory, which is kept when the suite fails.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use lease_sync::config::{PropertySettings, RedisMode, Settings};
use lease_sync::queue::{JobQueue, connect};
use lease_sync_sandbox::{Sandbox, SandboxOptions};
use lease_sync_testkit::config::{count, standard_webhooks_source};
use lease_sync_testkit::{
    Appendfsync, ConfigBuilder, Output, Process, ProcessBuilder, RedisOptions, RedisServer,
    SandboxServer, SentinelServer, free_port, poll_until, write_with_secrets,
};
use tempfile::TempDir;

/// The webhook source the config defines.
pub const SOURCE: &str = "faults-pms";
/// Its secret (the Standard Webhooks public test vector's).
pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The OpenApp API key the sandbox accepts.
pub const API_KEY: &str = "faults-suite-openapp-key-0123456789";
/// The OpenApp organisation of both buildings.
pub const ORG: &str = "01HORG0000000000000000000A";

/// A building: the sender's property id and its OpenApp integration.
#[derive(Debug)]
pub struct Building {
    /// `lease.property_id`.
    pub property: &'static str,
    /// OpenApp integration id.
    pub integration: &'static str,
}

/// The two buildings of the scenario.
pub const BUILDINGS: [Building; 2] = [
    Building {
        property: "P-17",
        integration: "01HINT0000000000000000000B",
    },
    Building {
        property: "P-18",
        integration: "01HINT0000000000000000000C",
    },
];

/// The role lease-sync grants in `integration` (the default template).
pub fn role(integration: &str) -> String {
    format!("virtual_access:integration:{integration}:resident")
}

/// The name the sentinels of the failover phase monitor the primary under.
const MASTER: &str = "faults-primary";

/// How long a lease-sync process may take to start or stop.
const PROCESS_LIMIT: Duration = Duration::from_secs(30);

/// The configuration of every process ([`ConfigBuilder::quick`]: short heartbeats so a dead
/// worker's jobs are taken over within 2 s, a 1 s OpenApp timeout), with retries from 100 ms
/// up to 2 s apart and 20 attempts, `Retry-After: 1` on a 503, no per-source rate limit to
/// speak of, no admin API, and the webhook listener on `127.0.0.1:port`.
fn config(redis_url: &str, namespace: &str, openapp_base: &str, port: u16) -> Settings {
    let properties = BUILDINGS
        .iter()
        .map(|b| PropertySettings::new(b.property, ORG, b.integration));
    ConfigBuilder::new()
        .quick()
        .listen(port)
        .redis(redis_url, namespace)
        .sandbox_openapp(openapp_base, API_KEY)
        .admin_disabled()
        .source(standard_webhooks_source(SOURCE, &[SECRET], properties))
        .edit(|s| {
            // The suite injects faults, not floods: the per-source rate limit (tested on its
            // own in tests/e2e/hardening.rs) would refuse the unpaced tail of a long run (429),
            // which the sender does not expect.
            s.http.rate_limit_per_sec = 100_000;
            s.http.rate_limit_burst = 100_000;
            s.http.retry_after = Duration::from_secs(1);
            s.retry.max_delay = Duration::from_secs(2);
            s.retry.max_attempts = count(20);
            s.dead_letters.max_entries = 100_000;
            s.log.level = "info".into();
        })
        .build()
}

/// A temporary directory that is kept (and named on stderr) when the test panics or
/// `FAULT_SUITE_KEEP=1` is set.
pub struct WorkDir {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl WorkDir {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lease-sync-faults-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let path = dir.path().to_owned();
        Self {
            dir: Some(dir),
            path,
        }
    }

    /// Where logs, configs and Redis data live.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let asked = std::env::var("FAULT_SUITE_KEEP").is_ok_and(|v| v == "1");
        if (asked || std::thread::panicking())
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "fault suite: logs and Redis data kept in {}",
                kept.display()
            );
        }
    }
}

/// How long a (re)start of Redis may take, append-only file loading included.
const REDIS_START_LIMIT: Duration = Duration::from_secs(60);

/// Runs `lease-sync <command> --config <config>` (log level `info`), logging to
/// `dir/<name>.log`; its standard output is dropped.
fn spawn_lease_sync(dir: &Path, name: &str, command: &str, config: &Path) -> Process {
    ProcessBuilder::lease_sync(env!("CARGO_BIN_EXE_lease-sync"), dir, name)
        .arg(command)
        .config(config)
        .rust_log("info")
        .stdout(Output::Null)
        .spawn()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The sandbox OpenApp on a free loopback port, in this process.
pub struct FakeOpenApp {
    /// Its state, call log and fault controls.
    pub sandbox: Sandbox,
    /// `http://127.0.0.1:<port>/api/v1`.
    pub base_url: String,
    _server: SandboxServer,
}

impl FakeOpenApp {
    async fn start() -> Self {
        let sandbox = Sandbox::new(SandboxOptions {
            api_keys: vec![API_KEY.into()],
            integrations: BUILDINGS
                .iter()
                .map(|b| (ORG.to_owned(), b.integration.to_owned()))
                .collect(),
            // A call that changes nothing answers 409 (add) or 404 (remove), so duplicated
            // calls can be counted.
            conflict_on_existing: true,
            ..SandboxOptions::default()
        });
        let server = SandboxServer::start(&sandbox).await;
        Self {
            base_url: server.base_url(),
            sandbox,
            _server: server,
        }
    }
}

/// Everything running.
pub struct Cluster {
    /// The redis-server (after the failover phase, the one the sentinels name primary).
    pub redis: RedisServer,
    /// The replica and the sentinels, once the failover phase set them up.
    failover: Option<(RedisServer, Vec<SentinelServer>)>,
    /// The fake OpenApp.
    pub openapp: FakeOpenApp,
    /// Ports of the two ingest processes.
    pub ingest_ports: [u16; 2],
    /// A queue handle on the suite's namespace.
    pub queue: JobQueue,
    ingest: Vec<Process>,
    workers: Vec<Process>,
    ingest_configs: [PathBuf; 2],
    worker_config: PathBuf,
    /// Processes started so far, to give every log its own file.
    spawned: usize,
    /// Logs, configs and Redis data. Declared last so it is dropped last.
    work: WorkDir,
}

impl Cluster {
    /// Starts Redis (`appendfsync`), the sandbox, two ingest and two worker processes, and
    /// waits until all of them are ready.
    pub async fn start(appendfsync: Appendfsync) -> Self {
        let work = WorkDir::new();
        let redis = RedisServer::start_with(
            RedisOptions::default()
                .dir(work.path().join("redis"))
                .appendfsync(appendfsync)
                .start_limit(REDIS_START_LIMIT),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        let openapp = FakeOpenApp::start().await;
        let namespace = format!("faults-{}", ulid::Ulid::new());
        let ingest_ports = [free_port(), free_port()];
        let write = |name: &str, port: u16| {
            let settings = config(&redis.url(), &namespace, &openapp.base_url, port);
            let path = work.path().join(name);
            write_with_secrets(&settings, &path).unwrap_or_else(|e| panic!("{e:#}"));
            (path, settings)
        };
        let ingest_configs = ingest_ports.map(|port| write(&format!("ingest-{port}.toml"), port).0);
        let (worker_config, settings) = write("work.toml", 0);

        let conn = connect(&settings.redis)
            .unwrap_or_else(|e| panic!("cannot set up a Redis connection: {e}"));
        let queue = JobQueue::new(conn, &settings.redis.namespace);

        let mut cluster = Self {
            redis,
            failover: None,
            openapp,
            ingest_ports,
            queue,
            ingest: Vec::new(),
            workers: Vec::new(),
            ingest_configs,
            worker_config,
            spawned: 0,
            work,
        };
        for slot in 0..2 {
            let ingest = cluster.spawn_ingest(slot).await;
            cluster.ingest.push(ingest);
            let worker = cluster.spawn_worker().await;
            cluster.workers.push(worker);
        }
        cluster
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    /// `http://127.0.0.1:<port>/webhooks/<source>` of ingest `slot`.
    pub fn webhook_url(&self, slot: usize) -> String {
        format!(
            "http://127.0.0.1:{}/webhooks/{SOURCE}",
            self.ingest_ports[slot]
        )
    }

    fn next_name(&mut self, role: &str) -> String {
        self.spawned += 1;
        format!("{:02}-{role}", self.spawned)
    }

    async fn spawn_ingest(&mut self, slot: usize) -> Process {
        let name = self.next_name(&format!("ingest{slot}"));
        let mut process = spawn_lease_sync(
            self.work.path(),
            &name,
            "ingest",
            &self.ingest_configs[slot],
        );
        let url = format!("http://127.0.0.1:{}/healthz", self.ingest_ports[slot]);
        process
            .wait_for("a 200 from /healthz", PROCESS_LIMIT, || async {
                let answer = reqwest::get(&url).await.ok()?;
                (answer.status() == 200).then_some(())
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        process
    }

    async fn spawn_worker(&mut self) -> Process {
        let name = self.next_name("work");
        let config = self.worker_config.clone();
        let mut process = spawn_lease_sync(self.work.path(), &name, "work", &config);
        process.wait_for_log("worker starting", PROCESS_LIMIT).await;
        process
    }

    /// SIGKILLs worker `slot` and starts a replacement.
    pub async fn kill_and_replace_worker(&mut self, slot: usize) {
        self.workers[slot].kill9();
        let replacement = self.spawn_worker().await;
        self.workers[slot] = replacement;
    }

    /// Rolling-restart step: SIGTERM worker `slot`, start its replacement while it drains,
    /// and return the old process's exit status.
    pub async fn replace_worker_gracefully(&mut self, slot: usize) -> ExitStatus {
        self.workers[slot].send_term();
        let replacement = self.spawn_worker().await;
        let mut old = std::mem::replace(&mut self.workers[slot], replacement);
        old.wait_exit(PROCESS_LIMIT).await
    }

    /// SIGTERMs ingest `slot`, waits for it to exit, starts it again on the same port and
    /// waits until it answers; returns the old process's exit status.
    pub async fn restart_ingest(&mut self, slot: usize) -> ExitStatus {
        self.ingest[slot].send_term();
        let status = self.ingest[slot].wait_exit(PROCESS_LIMIT).await;
        let replacement = self.spawn_ingest(slot).await;
        self.ingest[slot] = replacement;
        status
    }

    /// Adds a replica of Redis and three sentinels monitoring it, then restarts every
    /// lease-sync process, one at a time, in `mode = "sentinel"` with `wait_replicas = 1`.
    /// Returns what went wrong (an old process that did not exit 0).
    pub async fn switch_to_sentinel(&mut self) -> Vec<String> {
        let replica = RedisServer::start_with(
            RedisOptions::default()
                .dir(self.work.path().join("redis-replica"))
                .start_limit(REDIS_START_LIMIT),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        replica
            .command(&["REPLICAOF", "127.0.0.1", &self.redis.port().to_string()])
            .await;
        let synced = poll_until(REDIS_START_LIMIT, || async {
            (replica
                .info_field("replication", "master_link_status")
                .await
                == "up")
                .then_some(())
        })
        .await;
        assert!(
            synced.is_some(),
            "the replica did not sync within {REDIS_START_LIMIT:?}"
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(
                SentinelServer::start(self.redis.port(), MASTER)
                    .await
                    .unwrap_or_else(|e| panic!("{e:#}")),
            );
        }
        // A sentinel can promote only a replica it has discovered (from the primary's INFO,
        // every 10 s at most).
        let known = poll_until(Duration::from_secs(30), || async {
            for sentinel in &sentinels {
                let mut conn = sentinel.connection().await;
                let replicas: Vec<std::collections::HashMap<String, String>> =
                    redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(MASTER)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                replicas
                    .iter()
                    .any(|r| r.get("port") == Some(&replica.port().to_string()))
                    .then_some(())?;
            }
            Some(())
        })
        .await;
        assert!(
            known.is_some(),
            "the sentinels did not discover the replica within 30 s"
        );

        let sentinel_urls: Vec<String> = sentinels.iter().map(SentinelServer::url).collect();
        let namespace = self.queue.keys().namespace().to_owned();
        let base = self.openapp.base_url.clone();
        let rewrite = |path: &Path, port: u16| {
            let mut settings = config(&self.redis.url(), &namespace, &base, port);
            settings.redis.mode = RedisMode::Sentinel;
            settings.redis.sentinels = sentinel_urls.clone();
            settings.redis.master_name = MASTER.into();
            settings.redis.wait_replicas = 1;
            settings.redis.wait_timeout = Duration::from_millis(500);
            write_with_secrets(&settings, path).unwrap_or_else(|e| panic!("{e:#}"));
            settings
        };
        for slot in 0..2 {
            rewrite(&self.ingest_configs[slot], self.ingest_ports[slot]);
        }
        let settings = rewrite(&self.worker_config, 0);
        self.queue = JobQueue::new(
            connect(&settings.redis).unwrap_or_else(|e| panic!("{e}")),
            &namespace,
        );
        self.failover = Some((replica, sentinels));
        let mut failures = Vec::new();
        for slot in 0..2 {
            let status = self.restart_ingest(slot).await;
            if !status.success() {
                failures.push(format!("ingest {slot} exited with {status} on SIGTERM"));
            }
            let status = self.replace_worker_gracefully(slot).await;
            if !status.success() {
                failures.push(format!("worker {slot} exited with {status} on SIGTERM"));
            }
        }
        failures
    }

    /// `SENTINEL FAILOVER`, then waits until the sentinels name the replica primary; from
    /// then on [`Cluster::redis`] is the new primary. Returns how long the sentinels took.
    pub async fn sentinel_failover(&mut self) -> Duration {
        let (replica, sentinels) = self
            .failover
            .as_mut()
            .expect("switch_to_sentinel ran first");
        let started = std::time::Instant::now();
        let mut conn = sentinels[0].connection().await;
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("SENTINEL FAILOVER: {e}"));
        let port = replica.port();
        let promoted = poll_until(Duration::from_secs(60), || async {
            let mut conn = sentinels[0].connection().await;
            let addr: Vec<String> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER)
                .query_async(&mut conn)
                .await
                .ok()?;
            (addr.get(1)?.parse::<u16>().ok()? == port).then_some(())
        })
        .await;
        assert!(
            promoted.is_some(),
            "the sentinels did not promote the replica within 60 s"
        );
        std::mem::swap(&mut self.redis, replica);
        started.elapsed()
    }

    /// The Redis primary each ingest process's `/readyz` names (`redis_primary`; `None` when
    /// it names none or does not answer 200).
    pub async fn ingest_primaries(&self) -> Vec<Option<String>> {
        let mut primaries = Vec::new();
        for port in self.ingest_ports {
            let url = format!("http://127.0.0.1:{port}/readyz");
            let answer = async {
                let reply = reqwest::Client::new()
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .ok()?;
                if reply.status() != 200 {
                    return None;
                }
                let body: serde_json::Value = reply.json().await.ok()?;
                body["redis_primary"].as_str().map(str::to_owned)
            };
            primaries.push(answer.await);
        }
        primaries
    }

    /// Log tails of every lease-sync process, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        self.ingest
            .iter()
            .chain(&self.workers)
            .map(|p| format!("--- {} ---\n{}", p.name(), p.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
