//! Child processes with their output in files: the lease-sync binary in its roles, the
//! sandbox binary, redis-server.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::poll::Ticker;

/// Lines of a log quoted in failure messages.
const TAIL_LINES: usize = 40;

/// Where a child's standard output goes (its standard error always goes to its log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Nowhere.
    Null,
    /// A file of its own (truncated, or appended to with [`ProcessBuilder::append`]).
    File(PathBuf),
    /// The log file, with standard error.
    Log,
}

/// What dropping a [`Process`] does to a child still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGKILL and reap it: nothing a test started outlives it.
    Kill,
    /// SIGTERM, up to this long for it to exit, SIGKILL after: the benchmark harness lets its
    /// processes end cleanly when a run fails half-way.
    Stop(Duration),
}

/// How to start a [`Process`].
#[derive(Debug, Clone)]
pub struct ProcessBuilder {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_remove_prefixes: Vec<String>,
    log: PathBuf,
    stdout: Output,
    append: bool,
    fd_limit: Option<u64>,
    on_drop: OnDrop,
}

impl ProcessBuilder {
    /// Runs `program`, called `name` in messages, with standard input closed and standard error
    /// (and by default standard output) in the file `log`, which is truncated first. Dropping the
    /// [`Process`] kills it.
    pub fn new(
        name: impl Into<String>,
        program: impl AsRef<OsStr>,
        log: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            env_remove_prefixes: Vec::new(),
            log: log.into(),
            stdout: Output::Log,
            append: false,
            fd_limit: None,
            on_drop: OnDrop::Kill,
        }
    }

    /// The lease-sync binary at `binary`, called `name`: its log (standard error) in
    /// `dir/<name>.log`, its standard output in `dir/<name>.out`, and without the
    /// `LEASE_SYNC__*` variables of this process's environment, so that a developer's
    /// overrides cannot change the configuration under test.
    pub fn lease_sync(binary: impl AsRef<OsStr>, dir: &Path, name: &str) -> Self {
        Self::new(name, binary, dir.join(format!("{name}.log")))
            .stdout(Output::File(dir.join(format!("{name}.out"))))
            .env_remove_prefix("LEASE_SYNC__")
    }

    /// Adds one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds `--config <path>`.
    #[must_use]
    pub fn config(self, path: impl AsRef<OsStr>) -> Self {
        self.arg("--config").arg(path)
    }

    /// Sets an environment variable of the child.
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets `RUST_LOG`.
    #[must_use]
    pub fn rust_log(self, filter: &str) -> Self {
        self.env("RUST_LOG", filter)
    }

    /// Does not pass on this process's environment variables whose name starts with `prefix`
    /// (those set with [`Self::env`] still are).
    #[must_use]
    pub fn env_remove_prefix(mut self, prefix: &str) -> Self {
        self.env_remove_prefixes.push(prefix.to_owned());
        self
    }

    /// Where standard output goes.
    #[must_use]
    pub fn stdout(mut self, output: Output) -> Self {
        self.stdout = output;
        self
    }

    /// Appends to the log (and the output file) instead of truncating them, so that a process
    /// started again keeps what its predecessors wrote.
    #[must_use]
    pub fn append(mut self) -> Self {
        self.append = true;
        self
    }

    /// Runs the program under util-linux's `prlimit` with `RLIMIT_NOFILE` soft and hard both
    /// `limit`, so that raising the soft limit at startup cannot help.
    #[must_use]
    pub fn fd_limit(mut self, limit: u64) -> Self {
        self.fd_limit = Some(limit);
        self
    }

    /// What dropping the [`Process`] does (default: [`OnDrop::Kill`]).
    #[must_use]
    pub fn on_drop(mut self, on_drop: OnDrop) -> Self {
        self.on_drop = on_drop;
        self
    }

    /// Starts the process.
    ///
    /// # Errors
    /// When a file cannot be opened or the program cannot be started.
    pub fn spawn(self) -> anyhow::Result<Process> {
        let log = self.open(&self.log)?;
        let stdout = match &self.stdout {
            Output::Null => Stdio::null(),
            Output::File(path) => self.open(path)?.into(),
            Output::Log => log
                .try_clone()
                .with_context(|| format!("cannot share {}", self.log.display()))?
                .into(),
        };
        let mut command = match self.fd_limit {
            Some(limit) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.args(&self.args);
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if self
                .env_remove_prefixes
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
            {
                command.env_remove(&key);
            }
        }
        command
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} ({command:?})", self.name))?;
        Ok(Process {
            name: self.name,
            child,
            log: self.log,
            on_drop: self.on_drop,
        })
    }

    fn open(&self, path: &Path) -> anyhow::Result<File> {
        let mut options = OpenOptions::new();
        options.create(true);
        if self.append {
            options.append(true);
        } else {
            options.write(true).truncate(true);
        }
        options
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))
    }
}

/// A running child process and its log. Dropping it ends the process (see [`OnDrop`]).
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    on_drop: OnDrop,
}

impl Process {
    /// The name given to [`ProcessBuilder::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process logged so far (empty when the file cannot be read).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status once the process has exited (it is reaped then); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails when the process has exited.
    ///
    /// # Errors
    /// Names the process, its exit status and its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.exit_status() {
            Some(status) => bail!(
                "{} exited early ({status}); see {}",
                self.name,
                self.log.display()
            ),
            None => Ok(()),
        }
    }

    /// Polls `probe` every [`POLL`](crate::POLL) until it returns `Some`, failing as soon as
    /// the process exits or after `limit`. For readiness: `what` says what is awaited.
    ///
    /// # Errors
    /// The process exited first, or `limit` passed; the message names the process, `what`,
    /// the exit status and the log with its last lines.
    pub async fn wait_for<T, F, Fut>(
        &mut self,
        what: &str,
        limit: Duration,
        mut probe: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let ticker = Ticker::new(limit);
        loop {
            if let Some(value) = probe().await {
                return Ok(value);
            }
            if let Some(status) = self.exit_status() {
                bail!(
                    "{} exited ({status}) before {what}; log {}, last lines:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
            if !ticker.next().await {
                bail!(
                    "{}: no {what} within {limit:?} (still running); log {}, last lines:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
        }
    }

    /// Waits until the log contains `needle`.
    ///
    /// # Panics
    /// When the process exits first or `limit` passes, with its log's last lines.
    pub async fn wait_for_log(&mut self, needle: &str, limit: Duration) {
        let log = self.log.clone();
        let logged = || {
            let found = std::fs::read(&log)
                .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle));
            std::future::ready(found.then_some(()))
        };
        if let Err(e) = self
            .wait_for(&format!("log line `{needle}`"), limit, logged)
            .await
        {
            panic!("{e:#}");
        }
    }

    /// SIGKILL, no chance to clean up; reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting.
    ///
    /// # Panics
    /// When `kill` fails.
    pub fn send_term(&self) {
        if let Err(e) = signal(self.pid(), "-TERM") {
            panic!("{}: {e:#}", self.name);
        }
    }

    /// Waits up to `limit` for the exit status.
    ///
    /// # Panics
    /// When the process is still running after `limit`: it is killed, and the panic quotes
    /// its log's last lines.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let ticker = Ticker::new(limit);
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if !ticker.next().await {
                let tail = self.log_tail(TAIL_LINES);
                self.kill9();
                panic!(
                    "{} did not exit within {limit:?}; log {}, last lines:\n{tail}",
                    self.name,
                    self.log.display()
                );
            }
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit status (see [`Self::wait_exit`]).
    ///
    /// # Panics
    /// When `kill` fails or the process does not exit in time.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.send_term();
        self.wait_exit(limit).await
    }

    /// SIGTERM, up to `grace` for the exit, SIGKILL after that. Returns the exit status when
    /// the process exited by itself (before or after the SIGTERM), `None` when it had to be
    /// killed. Never panics.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Some(status);
        }
        let _ = signal(self.pid(), "-TERM");
        let ticker = Ticker::new(grace);
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if !ticker.next().await {
                self.kill9();
                return None;
            }
        }
    }

    /// [`Self::stop`] without an async runtime, for `Drop`.
    fn stop_blocking(&mut self, grace: Duration) {
        if self.exit_status().is_some() {
            return;
        }
        let _ = signal(self.pid(), "-TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exit_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::Kill => self.kill9(),
            OnDrop::Stop(grace) => self.stop_blocking(grace),
        }
    }
}

/// Sends `signal` (a `kill` option: `-TERM`, `-KILL`, `-STOP`, `-CONT`) to process `pid`
/// with kill(1), so that no `unsafe` is needed.
///
/// # Errors
/// When `kill` cannot run or fails (no such process, for one).
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run `kill {signal} {pid}`"))?;
    if !status.success() {
        bail!("`kill {signal} {pid}` failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(dir: &Path, name: &str, script: &str) -> ProcessBuilder {
        ProcessBuilder::new(name, "sh", dir.join(format!("{name}.log"))).args(["-c", script])
    }

    #[tokio::test]
    async fn logs_are_captured_and_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut process = shell(
            dir.path(),
            "echo",
            "echo to-stdout; echo to-stderr >&2; exec sleep 30",
        )
        .spawn()
        .expect("spawn");
        process
            .wait_for_log("to-stderr", Duration::from_secs(10))
            .await;
        process
            .wait_for_log("to-stdout", Duration::from_secs(10))
            .await;
        assert!(process.exit_status().is_none());
        let status = process.terminate(Duration::from_secs(10)).await;
        assert!(!status.success(), "killed by SIGTERM: {status}");
    }

    #[tokio::test]
    async fn stdout_can_go_elsewhere_and_environment_prefixes_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("env.out");
        // PATH is inherited (prefix "PA" is not removed); HOME is removed, then set again.
        let mut process = shell(dir.path(), "env", "echo \"home=$HOME path=${PATH:+set}\"")
            .stdout(Output::File(out.clone()))
            .env_remove_prefix("HOM")
            .env("HOME", "/nowhere")
            .spawn()
            .expect("spawn");
        let status = process.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success());
        let printed = std::fs::read_to_string(&out).expect("stdout file");
        assert_eq!(printed.trim(), "home=/nowhere path=set");
        assert_eq!(process.log(), "");
    }

    #[tokio::test]
    async fn wait_for_fails_fast_when_the_process_exits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut process = shell(dir.path(), "quitter", "echo giving up >&2; exit 3")
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        let error = process
            .wait_for("readiness", Duration::from_secs(30), || async {
                None::<()>
            })
            .await
            .expect_err("the process exited");
        assert!(started.elapsed() < Duration::from_secs(10));
        let message = format!("{error:#}");
        assert!(message.contains("quitter exited"), "{message}");
        assert!(message.contains("giving up"), "{message}");
        assert!(process.check_alive().is_err());
    }

    #[tokio::test]
    async fn stop_terms_then_kills_and_appending_keeps_earlier_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = shell(dir.path(), "p", "echo first >&2")
            .spawn()
            .expect("spawn");
        assert!(first.wait_exit(Duration::from_secs(10)).await.success());
        drop(first);
        // Ignores SIGTERM: stop has to kill it.
        let mut stubborn = shell(
            dir.path(),
            "p",
            "trap '' TERM; echo second >&2; while :; do sleep 1; done",
        )
        .append()
        .spawn()
        .expect("spawn");
        stubborn
            .wait_for_log("second", Duration::from_secs(10))
            .await;
        assert_eq!(stubborn.stop(Duration::from_millis(300)).await, None);
        let log = stubborn.log();
        assert!(log.contains("first") && log.contains("second"), "{log}");
    }

    #[tokio::test]
    async fn fd_limit_runs_the_program_under_prlimit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut process = ProcessBuilder::new("ulimit", "sh", dir.path().join("ulimit.log"))
            .args(["-c", "echo soft=$(ulimit -Sn) hard=$(ulimit -Hn)"])
            .fd_limit(64)
            .spawn()
            .expect("spawn");
        assert!(process.wait_exit(Duration::from_secs(10)).await.success());
        assert_eq!(process.log().trim(), "soft=64 hard=64");
    }
}
