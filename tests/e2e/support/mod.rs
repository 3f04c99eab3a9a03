//! Test harness: real Redis, the real HTTP stack on port 0, and the sandbox OpenApp over
//! real HTTP. Nothing sleeps to wait: [`wait_until`] polls with a bound. Redis, child
//! processes, polling, the served sandbox and the configuration builder come from the
//! workspace's test kit (`lease-sync-testkit`); what is here is this suite's configuration
//! ([`test_config`], which a test changes field by field) and requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lease_sync::app::Application;
use lease_sync::config::Secret;
use lease_sync::config::{PropertySettings, Role, Settings};
use lease_sync::queue::{JobQueue, QueueCounts, connect};
use lease_sync::signature::standard_webhooks;
use lease_sync::sources::buildium::client::{BuildiumClient, BuildiumClientOptions};
use lease_sync_sandbox::buildium::{
    BuildiumOptions, BuildiumSandbox, Credentials, NewLease, NewTenant,
};
use lease_sync_sandbox::{Sandbox, SandboxOptions};
use lease_sync_testkit::config::standard_webhooks_source;
use lease_sync_testkit::{
    BuildiumServer, ConfigBuilder, Process, ProcessBuilder, SandboxServer, write_with_secrets,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use lease_sync_sandbox::buildium::LeaseStatus as BuildiumLeaseStatus;
pub use lease_sync_testkit::config::{count, loopback};
pub use lease_sync_testkit::{RedisServer, free_port, wait_until};

/// The source every test config defines.
pub const SOURCE: &str = "acme-pms";
/// Its first secret (the Standard Webhooks public vector's secret).
pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// Its second secret, for rotation.
pub const SECOND_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A secret no source has.
pub const FOREIGN_SECRET: &str = "whsec_dGhpcyBpcyBub3QgYSBjb25maWd1cmVkIGtleQ==";
/// The admin API token in test configs.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The OpenApp API key in test configs.
pub const API_KEY: &str = "https://api.openapp.test/api/v1_openapp_testsecret";
/// Mapped property, org and integration.
pub const PROPERTY: &str = "P-17";
pub const ORG: &str = "01HORG0000000000000000000A";
pub const INTEGRATION: &str = "01HINT0000000000000000000B";
/// The role the default template yields for [`INTEGRATION`].
pub fn role() -> String {
    format!("virtual_access:integration:{INTEGRATION}:resident")
}

/// Installs a log subscriber when `TEST_LOG` is set, for debugging a failing test.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("TEST_LOG_FILTER").unwrap_or_else(|_| "info,lease_sync=debug".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

/// A lease event body.
pub fn event_body(event_type: &str, lease: &str, users: &[&str]) -> Vec<u8> {
    let residents: Vec<Value> = users
        .iter()
        .map(|u| json!({"openapp_user_id": u, "external_id": "T-1"}))
        .collect();
    serde_json::to_vec(&json!({
        "type": event_type,
        "occurred_at": "2026-11-22T10:15:00Z",
        "lease": {"id": lease, "property_id": PROPERTY, "unit": "4B"},
        "residents": residents,
    }))
    .expect("json")
}

/// Now as Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Standard Webhooks headers for `body`, signed with `secret` at `timestamp`.
pub fn signed(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("webhook-id", id.into()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            standard_webhooks::sign(secret, id, timestamp, body).expect("sign"),
        ),
    ]
}

/// An in-process sandbox OpenApp on a free port.
pub struct FakeOpenApp {
    pub sandbox: Sandbox,
    pub base_url: String,
    _server: SandboxServer,
}

impl FakeOpenApp {
    /// Starts a sandbox accepting only [`API_KEY`], knowing [`INTEGRATION`] in [`ORG`].
    pub async fn start() -> Self {
        Self::with_options(SandboxOptions {
            api_keys: vec![API_KEY.into()],
            integrations: vec![(ORG.into(), INTEGRATION.into())],
            ..SandboxOptions::default()
        })
        .await
    }

    /// Starts a sandbox with `options`.
    pub async fn with_options(options: SandboxOptions) -> Self {
        let sandbox = Sandbox::new(options);
        let server = SandboxServer::start(&sandbox).await;
        Self {
            base_url: server.base_url(),
            sandbox,
            _server: server,
        }
    }
}

/// The Buildium API key the emulator of [`FakeBuildium`] accepts.
pub const BUILDIUM_CLIENT_ID: &str = "lease-sync-test-client";
/// See [`BUILDIUM_CLIENT_ID`].
pub const BUILDIUM_CLIENT_SECRET: &str = "buildium-test-secret-0123456789";

/// The Buildium emulator, served over HTTP, accepting only [`BUILDIUM_CLIENT_ID`] and
/// [`BUILDIUM_CLIENT_SECRET`].
pub struct FakeBuildium {
    pub sandbox: BuildiumSandbox,
    pub base_url: String,
    _server: BuildiumServer,
}

impl FakeBuildium {
    /// With Buildium's rate limit (`rate_limit` reads per second; 0 for none).
    pub async fn start(rate_limit: u32) -> Self {
        let sandbox = BuildiumSandbox::new(BuildiumOptions {
            credentials: Some(Credentials {
                client_id: BUILDIUM_CLIENT_ID.into(),
                client_secret: BUILDIUM_CLIENT_SECRET.into(),
            }),
            rate_limit,
            ..BuildiumOptions::default()
        });
        let server = BuildiumServer::start(&sandbox).await;
        Self {
            base_url: server.base_url(),
            sandbox,
            _server: server,
        }
    }

    /// A client of it with this API key, without a rate limiter.
    pub fn client_with(&self, client_id: &str, secret: &str) -> BuildiumClient {
        BuildiumClient::new(BuildiumClientOptions {
            base_url: self.base_url.parse().expect("url"),
            allow_insecure_http: true,
            timeout: Duration::from_secs(10),
            ..BuildiumClientOptions::new(client_id, Secret::new(secret))
        })
        .expect("client")
    }

    /// A client of it with the accepted API key, without a rate limiter.
    pub fn client(&self) -> BuildiumClient {
        self.client_with(BUILDIUM_CLIENT_ID, BUILDIUM_CLIENT_SECRET)
    }

    /// A lease of `property` with one tenant; returns its id.
    pub fn lease(&self, property: i32, unit: i32, status: BuildiumLeaseStatus) -> i64 {
        let mut lease = NewLease::new(
            property,
            unit,
            time::macros::date!(2024 - 01 - 01),
            Some(time::macros::date!(2099 - 12 - 31)),
        )
        .with_tenant(NewTenant::new(
            "Tenant",
            &format!("Unit{unit}"),
            &format!("unit{unit}@example.com"),
        ));
        lease.lease_status = Some(status);
        i64::from(self.sandbox.create_lease(&lease).expect("lease"))
    }
}

/// The test configuration ([`ConfigBuilder::quick`]: short heartbeats so take-over happens
/// within seconds, a 1 s OpenApp timeout to fit inside them, and a fast poll): Redis at
/// `redis_url` under `namespace`, the sandbox OpenApp at `openapp_base`, both listeners on
/// free loopback ports, the admin API with [`ADMIN_TOKEN`], and [`SOURCE`] signing with
/// [`SECRET`] or [`SECOND_SECRET`] for [`PROPERTY`] in [`ORG`] and [`INTEGRATION`].
pub fn test_config(redis_url: &str, namespace: &str, openapp_base: &str) -> Settings {
    ConfigBuilder::new()
        .quick()
        .listen(0)
        .redis(redis_url, namespace)
        .sandbox_openapp(openapp_base, API_KEY)
        .admin(0, [ADMIN_TOKEN])
        .source(standard_webhooks_source(
            SOURCE,
            &[SECRET, SECOND_SECRET],
            [PropertySettings::new(PROPERTY, ORG, INTEGRATION)],
        ))
        .edit(|s| {
            s.http.retry_after = Duration::from_secs(7);
            s.retry.max_delay = Duration::from_secs(5);
            s.retry.max_attempts = count(4);
            s.dead_letters.max_entries = 1_000;
            s.log.level = "info,lease_sync=debug".into();
        })
        .build()
}

/// Writes `settings` to `path` for a process or a command, secrets in clear.
pub fn write_config(settings: &Settings, path: &Path) {
    write_with_secrets(settings, path).unwrap_or_else(|e| panic!("{e:#}"));
}

/// A unique Redis namespace per test, so one server could be shared safely.
pub fn namespace() -> String {
    format!("test-{}", ulid::Ulid::new())
}

/// lease-sync running in this process.
pub struct TestApp {
    pub addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub settings: Settings,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Builds and starts `role` with `settings`.
    pub async fn start(settings: &Settings, role: Role) -> Self {
        init_logs();
        settings.validate(role).expect("test config is valid");
        let app = Application::build(settings.clone(), role)
            .await
            .expect("app builds");
        let addr = app.local_addr();
        let admin_addr = app.admin_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone()));
        Self {
            addr,
            admin_addr,
            settings: settings.clone(),
            stop,
            task: Some(task),
        }
    }

    /// `http://addr/webhooks/<source>`.
    pub fn webhook_url(&self, source: &str) -> String {
        format!(
            "http://{}/webhooks/{source}",
            self.addr.expect("this role listens")
        )
    }

    /// Posts `body` with `headers`; returns status, headers and JSON (or `Null`) body.
    pub async fn post(&self, source: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
        post(&self.webhook_url(source), headers, body).await
    }

    /// A queue handle on this app's namespace.
    pub fn queue(&self) -> JobQueue {
        JobQueue::new(
            connect(&self.settings.redis).expect("redis"),
            &self.settings.redis.namespace,
        )
    }

    /// `http://<admin addr>/admin<path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}/admin{path}",
            self.admin_addr.expect("admin API enabled")
        )
    }

    /// The dead letters of this app's namespace.
    pub fn dead_letters(&self) -> lease_sync::dead_letters::DeadLetters {
        lease_sync::dead_letters::DeadLetters::new(&self.queue())
    }

    /// Stops gracefully and waits.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("app task").expect("app ran cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a webhook post got back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Reply {
    /// The `error` code of a rejection.
    pub fn code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

/// Sends `method url` with `headers` and `body` (bounded by a 10 s timeout).
pub async fn request(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Reply {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut request = client.request(method, url).body(body);
    for (k, v) in headers {
        request = request.header(*k, v.as_str());
    }
    let response = request.send().await.expect("request reaches the listener");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// Posts to `url` (bounded by a 10 s timeout).
pub async fn post(url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    request(reqwest::Method::POST, url, headers, body).await
}

/// Redis, the sandbox and `lease-sync serve` in process, with the test config.
pub async fn serve() -> (RedisServer, FakeOpenApp, TestApp) {
    serve_with(|_| {}).await
}

/// Like [`serve`], with the test config changed by `edit` first.
pub async fn serve_with(edit: impl FnOnce(&mut Settings)) -> (RedisServer, FakeOpenApp, TestApp) {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    edit(&mut config);
    let app = TestApp::start(&config, Role::Serve).await;
    (redis, openapp, app)
}

/// `ms` since the epoch as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// Runs the binary with `args` off the async runtime, stdin closed, and collects its output.
pub async fn run_lease_sync(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_lease-sync"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run lease-sync")
    })
    .await
    .expect("join")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Redis, the sandbox, `serve` in process, and the same config written to `dir/c.toml` for
/// the CLI.
pub async fn serve_with_config_file(dir: &Path) -> (RedisServer, FakeOpenApp, TestApp, PathBuf) {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let app = TestApp::start(&config, Role::Serve).await;
    let path = dir.join("c.toml");
    write_config(&config, &path);
    (redis, openapp, app, path)
}

/// A queue handle on a fresh namespace of `redis`, for tests that fold events without a
/// running service.
pub fn queue_on(redis: &RedisServer) -> JobQueue {
    let settings = test_config(&redis.url(), &namespace(), "http://127.0.0.1:9/api/v1");
    JobQueue::new(
        connect(&settings.redis).expect("redis"),
        &settings.redis.namespace,
    )
}

/// Posts a correctly signed event and returns the reply.
pub async fn post_event(app: &TestApp, id: &str, body: Vec<u8>) -> Reply {
    app.post(SOURCE, &signed(SECRET, id, now(), &body), body)
        .await
}

/// Folds `body` into resident state the way ingest did before it refused future-dated
/// events: the same enqueue script, without the `occurred_at` check.
pub async fn fold_without_ingest_checks(
    app: &TestApp,
    id: &str,
    body: &[u8],
) -> lease_sync::queue::EnqueueOutcome {
    fold_on(&app.queue(), id, body).await
}

/// Folds event `body` under `id` straight into `queue`, as ingest would after its checks.
pub async fn fold_on(queue: &JobQueue, id: &str, body: &[u8]) -> lease_sync::queue::EnqueueOutcome {
    let event = lease_sync::event::parse_event(body, id).expect("valid event");
    let role = role();
    let target = lease_sync::queue::Target {
        org_id: ORG,
        integration_id: INTEGRATION,
        role: &role,
    };
    let jobs: Vec<lease_sync::queue::DeliveryJob> = event
        .residents
        .iter()
        .map(|r| {
            lease_sync::queue::DeliveryJob::for_event(
                &event,
                SOURCE,
                &r.openapp_user_id,
                target,
                None,
            )
        })
        .collect();
    queue
        .enqueue_event(
            SOURCE,
            &event,
            &jobs,
            lease_sync::queue::EnqueueLimits {
                dedupe_ttl: Duration::from_secs(3600),
                max_clock_skew: Duration::from_secs(300),
                timeout: Duration::from_secs(5),
            },
        )
        .await
        .expect("redis")
}

/// Waits until the listener on `port` answers `/readyz` with 200; returns its body.
pub async fn wait_ready(port: u16, limit: Duration) -> Value {
    wait_until("the listener to be ready", limit, || async {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json::<Value>().await.ok()
    })
    .await
}

/// Waits until the queue has no ready, scheduled or in-flight job.
pub async fn wait_drained(queue: &JobQueue, limit: Duration) -> QueueCounts {
    wait_until("the queue to drain", limit, || async {
        let c = queue.counts().await.ok()?;
        (c.ready == 0 && c.scheduled == 0 && c.in_flight == 0).then_some(c)
    })
    .await
}

/// The lease-sync binary as a child process ([`Process`]): its log in `dir/<name>.log`, its
/// standard output in `dir/<name>.out`, killed when dropped.
pub struct LeaseSyncProcess;

impl LeaseSyncProcess {
    /// Runs `lease-sync <args…>`; `config` is written to `dir/name.toml` first.
    pub fn spawn(dir: &Path, name: &str, args: &[&str], config: Option<&Settings>) -> Process {
        Self::spawn_with_log_filter(dir, name, args, config, "info,lease_sync=debug")
    }

    /// Like [`Self::spawn`], with `RUST_LOG` set to `filter`.
    pub fn spawn_with_log_filter(
        dir: &Path,
        name: &str,
        args: &[&str],
        config: Option<&Settings>,
        filter: &str,
    ) -> Process {
        spawn(command(dir, name, args, config).rust_log(filter))
    }

    /// Like [`Self::spawn`], with `RLIMIT_NOFILE` soft and hard both `limit` (through
    /// util-linux's `prlimit`, which then runs the binary in its own place), so that raising
    /// the soft limit at startup cannot help.
    pub fn spawn_with_fd_limit(
        dir: &Path,
        name: &str,
        args: &[&str],
        config: Option<&Settings>,
        limit: u64,
    ) -> Process {
        spawn(
            command(dir, name, args, config)
                .rust_log("info,lease_sync=debug")
                .fd_limit(limit),
        )
    }
}

fn command(dir: &Path, name: &str, args: &[&str], config: Option<&Settings>) -> ProcessBuilder {
    let command =
        ProcessBuilder::lease_sync(env!("CARGO_BIN_EXE_lease-sync"), dir, name).args(args);
    match config {
        Some(config) => {
            let path = dir.join(format!("{name}.toml"));
            write_config(config, &path);
            command.config(path)
        }
        None => command,
    }
}

fn spawn(command: ProcessBuilder) -> Process {
    command.spawn().unwrap_or_else(|e| panic!("{e:#}"))
}
