//! The suite's `redis-server`: a child process on a free loopback port with the persistence
//! lease-sync's durability promise depends on (`appendonly yes`, `appendfsync always`,
//! `maxmemory-policy noeviction`, no RDB snapshots). It can be killed, stopped gracefully,
//! paused and restarted on the same port and directory, so the append-only file is all that
//! carries acknowledged data across a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{free_port, signal};

/// How long a (re)start may take, AOF loading included.
const START_LIMIT: Duration = Duration::from_secs(60);

/// One admin command may take this long before the suite calls Redis unresponsive.
const COMMAND_LIMIT: Duration = Duration::from_secs(5);

/// A redis-server child process.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// `appendfsync` for the next (re)start; [`RedisServer::set_appendfsync`] also applies it live.
    appendfsync: String,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "redis-server".into())
}

impl RedisServer {
    /// Starts a server whose data lives in `dir`, with `appendfsync` (`always` or
    /// `everysec`), and waits until it answers PING.
    pub async fn start(dir: &Path, appendfsync: &str) -> Self {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create the Redis directory {}: {e}", dir.display()));
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                dir: dir.to_owned(),
                appendfsync: appendfsync.to_owned(),
                child: None,
            };
            if server.spawn().await {
                return server;
            }
        }
        panic!(
            "redis-server did not start on any of 5 free ports; see {}/redis.log",
            dir.display()
        );
    }

    /// Starts the process and waits (bounded) until it answers PING; false if it exited
    /// (the port was taken meanwhile) or never answered.
    async fn spawn(&mut self) -> bool {
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", &self.appendfsync])
            .args(["--maxmemory-policy", "noeviction", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {:?}: {e}. Install Redis (`apt-get install redis-server`) or set REDIS_SERVER",
                    binary()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            if self.pings().await {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// True when the server answers `+PONG` (not `-LOADING`) within half a second.
    async fn pings(&self) -> bool {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
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

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("redis-server is not running")
    }

    /// SIGKILL: no shutdown work at all; only what the AOF already holds survives.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (Redis flushes the AOF and exits), waiting up to `limit`; SIGKILL after that.
    pub async fn terminate(&mut self, limit: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill9();
    }

    /// SIGSTOP: the server stops answering but keeps every connection open.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Starts again on the same port and directory, reloading the AOF; panics when it does
    /// not answer within a minute.
    pub async fn restart(&mut self) {
        self.kill9();
        assert!(
            self.spawn().await,
            "redis-server did not come back on port {} within {START_LIMIT:?}; see {}/redis.log",
            self.port,
            self.dir.display()
        );
    }

    /// Switches `appendfsync` now (`CONFIG SET`) and for every later restart.
    pub async fn set_appendfsync(&mut self, mode: &str) {
        self.command(&["CONFIG", "SET", "appendfsync", mode]).await;
        self.appendfsync = mode.to_owned();
    }

    /// The `appendfsync` mode in force.
    pub fn appendfsync(&self) -> &str {
        &self.appendfsync
    }

    /// A fresh connection, bounded in time.
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
    pub async fn command(&self, args: &[&str]) -> String {
        let mut conn = self.connection().await;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
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
    pub async fn info_field(&self, section: &str, field: &str) -> String {
        let info = self.command(&["INFO", section]).await;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("INFO {section} has no field {field}:\n{info}"))
    }
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a server stopped with SIGSTOP.
        self.kill9();
    }
}
