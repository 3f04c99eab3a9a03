//! A real `redis-server` per test or benchmark run, on a free loopback port, never the
//! machine's 6379.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::free_port;
use crate::process::{OnDrop, Output, Process, ProcessBuilder, signal};

/// One admin command may take this long before Redis is called unresponsive.
const COMMAND_LIMIT: Duration = Duration::from_secs(5);

/// Free ports tried before starting is given up (another process may take a port between
/// [`free_port`] and redis-server binding it).
const START_ATTEMPTS: usize = 5;

/// Redis's `appendfsync`: when the append-only file is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Appendfsync {
    /// After every write: what lease-sync's durability promise needs, and the default.
    #[default]
    Always,
    /// Once a second: up to a second of acknowledged writes can be lost in a crash.
    Everysec,
    /// When the operating system decides.
    No,
}

impl Appendfsync {
    /// The value as Redis spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Everysec => "everysec",
            Self::No => "no",
        }
    }
}

impl fmt::Display for Appendfsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Appendfsync {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "always" => Ok(Self::Always),
            "everysec" => Ok(Self::Everysec),
            "no" => Ok(Self::No),
            other => bail!("appendfsync {other:?}: expected always, everysec or no"),
        }
    }
}

/// How to start a [`RedisServer`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    dir: Option<PathBuf>,
    appendfsync: Appendfsync,
    start_limit: Duration,
    on_drop: OnDrop,
    cluster: bool,
}

impl Default for RedisOptions {
    /// A temporary data directory removed on drop, `appendfsync always`, 10 s to start,
    /// killed when dropped.
    fn default() -> Self {
        Self {
            dir: None,
            appendfsync: Appendfsync::Always,
            start_limit: Duration::from_secs(10),
            on_drop: OnDrop::Kill,
            cluster: false,
        }
    }
}

impl RedisOptions {
    /// Keeps the data (the append-only file) and `redis.log` in `dir`, created when missing
    /// and left in place afterwards, instead of a temporary directory.
    #[must_use]
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The `appendfsync` of the first start (see [`RedisServer::set_appendfsync`]).
    #[must_use]
    pub fn appendfsync(mut self, appendfsync: Appendfsync) -> Self {
        self.appendfsync = appendfsync;
        self
    }

    /// How long a start or restart may take until Redis answers PING (loading a large
    /// append-only file takes a while).
    #[must_use]
    pub fn start_limit(mut self, limit: Duration) -> Self {
        self.start_limit = limit;
        self
    }

    /// Starts the server as a Redis Cluster node (`cluster-enabled yes`, its node file in
    /// the data directory), to be joined into a cluster ([`RedisCluster`]).
    #[must_use]
    pub fn cluster_node(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// What dropping the [`RedisServer`] does to a server still running (default
    /// [`OnDrop::Kill`]; SIGKILL also ends a server stopped with [`RedisServer::pause`]).
    #[must_use]
    pub fn on_drop(mut self, on_drop: OnDrop) -> Self {
        self.on_drop = on_drop;
        self
    }
}

/// A redis-server child process configured as production is told to be: `appendonly yes`,
/// the chosen `appendfsync`, `maxmemory-policy noeviction`, no RDB snapshots. A kill and a
/// restart on the same port and directory keep exactly what the append-only file holds.
///
/// The binary is `redis-server` from `PATH`, or `$REDIS_SERVER`. Its log is `redis.log` in
/// the data directory. Dropping the server ends it as [`RedisOptions::on_drop`] says.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    cluster: bool,
    appendfsync: Appendfsync,
    start_limit: Duration,
    on_drop: OnDrop,
    process: Option<Process>,
    /// The temporary data directory, if any; declared last so it is removed after the process
    /// is gone.
    _temp: Option<TempDir>,
}

fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| "redis-server".into(), PathBuf::from)
}

impl RedisServer {
    /// Starts a server with the [default options](RedisOptions::default) and waits until it
    /// answers PING.
    ///
    /// # Panics
    /// When it does not start.
    pub async fn start() -> Self {
        Self::start_with(RedisOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts a server with `options` and waits until it answers PING, trying up to five free
    /// ports.
    ///
    /// # Errors
    /// When the data directory cannot be made or the server does not start on any port.
    pub async fn start_with(options: RedisOptions) -> anyhow::Result<Self> {
        let (dir, temp) = match options.dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).with_context(|| {
                    format!("cannot create the Redis directory {}", dir.display())
                })?;
                (dir, None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("lease-sync-redis-")
                    .tempdir()
                    .context("cannot create a temporary directory for Redis")?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut server = Self {
            port: 0,
            dir,
            cluster: options.cluster,
            appendfsync: options.appendfsync,
            start_limit: options.start_limit,
            on_drop: options.on_drop,
            process: None,
            _temp: temp,
        };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt").context(format!(
            "redis-server did not start on any of {START_ATTEMPTS} free ports"
        )))
    }

    /// Starts the process on `self.port` and waits (bounded) until it answers PING.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.process = None;
        let mut builder = ProcessBuilder::new("redis-server", binary(), self.dir.join("redis.log"));
        if self.cluster {
            builder = builder
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(self.dir.join(format!("nodes-{}.conf", self.port)));
        }
        let mut process = builder
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", self.appendfsync.as_str()])
            .args(["--maxmemory-policy", "noeviction", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Output::Log)
            .append()
            .on_drop(self.on_drop)
            .spawn()
            .context("install Redis (`apt-get install redis-server`) or set REDIS_SERVER")?;
        let port = self.port;
        process
            .wait_for(
                &format!("PONG on port {port}"),
                self.start_limit,
                || async move { pings(port).await.then_some(()) },
            )
            .await?;
        self.process = Some(process);
        Ok(())
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (append-only file, `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id of the running server.
    ///
    /// # Panics
    /// When it is not running.
    pub fn pid(&self) -> u32 {
        self.process
            .as_ref()
            .map(Process::pid)
            .expect("redis-server is not running")
    }

    /// SIGKILL: no shutdown work at all; only what the append-only file already holds
    /// survives.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill9();
        }
    }

    /// SIGTERM (Redis flushes the append-only file and exits), waiting up to `limit`; SIGKILL
    /// after that.
    pub async fn terminate(&mut self, limit: Duration) {
        if let Some(mut process) = self.process.take() {
            process.stop(limit).await;
        }
    }

    /// SIGSTOP: the server stops answering but keeps every connection open.
    ///
    /// # Panics
    /// When it is not running or `kill` fails.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP").unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// SIGCONT after [`Self::pause`].
    ///
    /// # Panics
    /// When it is not running or `kill` fails.
    pub fn resume(&self) {
        signal(self.pid(), "-CONT").unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Starts again (after a SIGKILL if it still runs) on the same port and directory,
    /// reloading the append-only file, and waits until it answers PING.
    ///
    /// # Panics
    /// When it does not answer within the start limit.
    pub async fn restart(&mut self) {
        self.kill9();
        if let Err(e) = self.spawn().await {
            panic!(
                "redis-server did not come back on port {}: {e:#}",
                self.port
            );
        }
    }

    /// Switches `appendfsync` now (`CONFIG SET`) and for every later restart.
    ///
    /// # Panics
    /// When Redis refuses or does not answer.
    pub async fn set_appendfsync(&mut self, mode: Appendfsync) {
        self.command(&["CONFIG", "SET", "appendfsync", mode.as_str()])
            .await;
        self.appendfsync = mode;
    }

    /// The `appendfsync` mode in force.
    pub fn appendfsync(&self) -> Appendfsync {
        self.appendfsync
    }

    /// A fresh connection, bounded in time.
    ///
    /// # Panics
    /// When it cannot connect within 5 s.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url())
            .unwrap_or_else(|e| panic!("invalid Redis URL {}: {e}", self.url()));
        match tokio::time::timeout(COMMAND_LIMIT, client.get_multiplexed_async_connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => panic!("cannot connect to redis-server on port {}: {e}", self.port),
            Err(_) => panic!("connecting to redis-server on port {} timed out", self.port),
        }
    }

    /// Runs one admin command and returns its reply as text (`OK`, the `INFO` text, …).
    ///
    /// # Panics
    /// When `args` is empty, or the command fails or takes over 5 s.
    pub async fn command(&self, args: &[&str]) -> String {
        let (name, rest) = args.split_first().expect("a command");
        let mut conn = self.connection().await;
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        match tokio::time::timeout(COMMAND_LIMIT, cmd.query_async::<redis::Value>(&mut conn)).await
        {
            Ok(Ok(value)) => value_text(&value),
            Ok(Err(e)) => panic!("redis `{}` failed: {e}", args.join(" ")),
            Err(_) => panic!(
                "redis `{}` did not answer within {COMMAND_LIMIT:?}",
                args.join(" ")
            ),
        }
    }

    /// One field of `INFO <section>` (`used_memory`, `redis_version`, …).
    ///
    /// # Panics
    /// When the command fails or the field is missing.
    pub async fn info_field(&self, section: &str, field: &str) -> String {
        let info = self.command(&["INFO", section]).await;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("INFO {section} has no field {field}:\n{info}"))
    }
}

/// A `redis-server --sentinel` child process on a free loopback port, monitoring one primary
/// (quorum 2, so three of them make a quorum with one to spare; a primary is down after
/// 1 s without answers). Killed when dropped.
pub struct SentinelServer {
    port: u16,
    _process: Process,
    _temp: TempDir,
}

impl SentinelServer {
    /// Starts a sentinel monitoring the primary on `primary_port` as `name`, and waits until
    /// it answers PING.
    ///
    /// # Errors
    /// When its directory cannot be made or it does not start on any port.
    pub async fn start(primary_port: u16, name: &str) -> anyhow::Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("lease-sync-sentinel-")
            .tempdir()
            .context("cannot create a temporary directory for a sentinel")?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            // Sentinel rewrites its configuration file, so it must be a writable file of its own.
            let conf = temp.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = temp.path().display()
            );
            std::fs::write(&conf, text).context("cannot write the sentinel's configuration")?;
            let spawned =
                ProcessBuilder::new("redis-sentinel", binary(), temp.path().join("sentinel.log"))
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Output::Log)
                    .append()
                    .spawn()
                    .context("install Redis (`apt-get install redis-server`) or set REDIS_SERVER");
            let mut process = match spawned {
                Ok(process) => process,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            match process
                .wait_for(
                    &format!("a sentinel's PONG on port {port}"),
                    Duration::from_secs(10),
                    || async move { pings(port).await.then_some(()) },
                )
                .await
            {
                Ok(()) => {
                    return Ok(Self {
                        port,
                        _process: process,
                        _temp: temp,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt was made"))
            .context(format!(
                "a sentinel did not start on any of {START_ATTEMPTS} free ports"
            )))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A fresh connection, for typed queries.
    ///
    /// # Panics
    /// When it cannot connect within 5 s.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("a sentinel URL");
        tokio::time::timeout(COMMAND_LIMIT, client.get_multiplexed_async_connection())
            .await
            .expect("connecting to a sentinel in time")
            .expect("connecting to a sentinel")
    }

    /// Runs one sentinel command (`SENTINEL FAILOVER <name>`, …) and returns its reply as
    /// text, or the error's text.
    ///
    /// # Panics
    /// When `args` is empty, it cannot connect, or the command takes over 5 s.
    pub async fn command(&self, args: &[&str]) -> Result<String, String> {
        let (name, rest) = args.split_first().expect("a command");
        let mut conn = self.connection().await;
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        match tokio::time::timeout(COMMAND_LIMIT, cmd.query_async::<redis::Value>(&mut conn)).await
        {
            Ok(Ok(value)) => Ok(value_text(&value)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => panic!(
                "sentinel `{}` did not answer within {COMMAND_LIMIT:?}",
                args.join(" ")
            ),
        }
    }
}

/// True when the server on `port` answers `+PONG` (not `-LOADING`) within half a second.
async fn pings(port: u16) -> bool {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<bool, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), exchange).await,
        Ok(Ok(true))
    )
}

fn value_text(value: &redis::Value) -> String {
    match value {
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        redis::Value::Okay => "OK".into(),
        other => format!("{other:?}"),
    }
}

/// A Redis Cluster of three primaries (no replicas) on free loopback ports: three
/// [`RedisServer`]s started as cluster nodes, joined with `redis-cli --cluster create`, ready
/// once every node reports `cluster_state:ok`. Killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts and joins the three nodes.
    ///
    /// # Errors
    /// When a node does not start, `redis-cli` (Debian's `redis-tools`) is missing or fails,
    /// or the cluster is not ready within 20 s.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_replicas(0).await
    }

    /// Starts three primaries with `replicas` replicas each (`--cluster-replicas`), joined.
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    pub async fn start_with_replicas(replicas: usize) -> anyhow::Result<Self> {
        let count = 3 * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(RedisServer::start_with(RedisOptions::default().cluster_node()).await?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let cli = std::env::var_os("REDIS_CLI").map_or_else(|| "redis-cli".into(), PathBuf::from);
        let output = tokio::process::Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .context("cannot run redis-cli (`apt-get install redis-tools`, or set REDIS_CLI)")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let cluster = Self { nodes };
        let ready = crate::poll_until(Duration::from_secs(20), || async {
            for node in &cluster.nodes {
                if !node
                    .command(&["CLUSTER", "INFO"])
                    .await
                    .contains("cluster_state:ok")
                {
                    return None;
                }
            }
            Some(())
        })
        .await;
        if ready.is_none() {
            bail!("the cluster did not report cluster_state:ok within 20 s");
        }
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, to kill or restart one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn configured_appendfsync(redis: &RedisServer) -> String {
        let mut conn = redis.connection().await;
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(&mut conn)
            .await
            .expect("CONFIG GET");
        reply[1].clone()
    }

    #[test]
    fn appendfsync_round_trips_as_redis_spells_it() {
        for mode in [Appendfsync::Always, Appendfsync::Everysec, Appendfsync::No] {
            assert_eq!(
                mode.to_string().parse::<Appendfsync>().expect("parses"),
                mode
            );
        }
        assert!("sometimes".parse::<Appendfsync>().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_server_restarts_with_its_acknowledged_writes() {
        let mut redis = RedisServer::start().await;
        assert_ne!(redis.port(), 6379);
        assert_eq!(redis.command(&["SET", "k", "v"]).await, "OK");
        redis.kill9();
        redis.restart().await;
        assert_eq!(redis.command(&["GET", "k"]).await, "v");
        assert_eq!(redis.info_field("persistence", "aof_enabled").await, "1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appendfsync_is_set_live_and_kept_across_a_graceful_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut redis = RedisServer::start_with(
            RedisOptions::default()
                .dir(dir.path().join("data"))
                .appendfsync(Appendfsync::Everysec),
        )
        .await
        .expect("starts");
        assert_eq!(configured_appendfsync(&redis).await, "everysec");
        redis.set_appendfsync(Appendfsync::Always).await;
        assert_eq!(configured_appendfsync(&redis).await, "always");
        redis.terminate(Duration::from_secs(10)).await;
        redis.restart().await;
        assert_eq!(redis.appendfsync(), Appendfsync::Always);
        assert_eq!(configured_appendfsync(&redis).await, "always");
        assert!(dir.path().join("data/redis.log").is_file());
    }
}
