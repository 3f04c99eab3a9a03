//! `scripts/quickstart.sh`, run as the README tells a new user to, so that it cannot rot: the
//! smoke mode's round trip, the cleanup of everything it started (Redis included) after a
//! success, a failure, SIGTERM and SIGINT, and what it writes to its state directory.
//!
//! Every run gets free loopback ports (never 6379) and its own state directory (never the
//! user's `.quickstart/`), and uses the lease-sync binary cargo built for these tests
//! (`LEASE_SYNC_BIN`): a `cargo build` from inside `cargo test` could wait on the build lock.
//! `scripts/test.sh` runs the script once more with the cargo build, which finds the binary
//! under `CARGO_TARGET_DIR`. Nothing sleeps to wait: every wait polls with a bound.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bound on one run of the script (it takes about a second).
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/quickstart.sh")
}

/// Five distinct free loopback ports: Redis, HTTP, sandbox, admin, Buildium emulator.
fn free_ports() -> [u16; 5] {
    let listeners: Vec<TcpListener> = (0..5)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect();
    [ports[0], ports[1], ports[2], ports[3], ports[4]]
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Polls `probe` every 25 ms until it is true, or panics after `limit` naming `what`.
fn wait_until(what: &str, limit: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !probe() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One run of the script with its own ports and state directory.
struct Quickstart {
    dir: tempfile::TempDir,
    ports: [u16; 5],
    child: Option<Child>,
    /// The script's pid when `child` is a shell that started it.
    script_pid: Option<u32>,
}

impl Quickstart {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
            ports: free_ports(),
            child: None,
            script_pid: None,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn output_path(&self) -> PathBuf {
        self.dir.path().join("output.txt")
    }

    /// Everything the script printed so far (stdout and stderr).
    fn output(&self) -> String {
        std::fs::read_to_string(self.output_path()).unwrap_or_default()
    }

    /// Starts `program args…` (the script, or a shell that starts it) with the environment
    /// of one run; `lease_sync` is the binary the script uses.
    fn spawn(&mut self, program: &Path, args: &[&str], smoke: bool, lease_sync: &Path) {
        let out = std::fs::File::create(self.output_path()).expect("output file");
        let [redis, http, sandbox, admin, buildium] = self.ports;
        let child = Command::new(program)
            .args(args)
            .env("QUICKSTART_DIR", self.state())
            .env("REDIS_PORT", redis.to_string())
            .env("HTTP_PORT", http.to_string())
            .env("SANDBOX_PORT", sandbox.to_string())
            .env("ADMIN_PORT", admin.to_string())
            .env("BUILDIUM_PORT", buildium.to_string())
            .env("LEASE_SYNC_BIN", lease_sync)
            .env("QUICKSTART_SMOKE", if smoke { "1" } else { "0" })
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the output file"))
            .stderr(out)
            .spawn()
            .expect("start the quick start");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("started").id()
    }

    /// Waits (bounded) for the script to end.
    fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("started");
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            if let Some(status) = child.try_wait().expect("poll the script") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the quick start did not end within {RUN_LIMIT:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn wait_for_output(&self, needle: &str) {
        wait_until(&format!("`{needle}` in the output"), RUN_LIMIT, || {
            self.output().contains(needle)
        });
    }

    fn signal(&self, pid: u32, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Fails unless nothing listens on any of the run's ports any more.
    fn assert_everything_stopped(&self) {
        for (what, port) in [
            "Redis",
            "serve",
            "the sandbox",
            "the admin API",
            "the Buildium emulator",
        ]
        .into_iter()
        .zip(self.ports)
        {
            assert!(
                !listening(port),
                "{what} still listens on {port} after the script ended:\n{}",
                self.output()
            );
        }
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        // A failed assertion must not leave the script (and what it started) running.
        if let Some(child) = self.child.as_mut() {
            let pid = self.script_pid.unwrap_or(child.id());
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lease_sync() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lease-sync"))
}

#[test]
fn smoke_mode_delivers_a_test_event_and_stops_everything_it_started() {
    let mut run = Quickstart::new();
    run.spawn(&script(), &[], true, lease_sync());
    let status = run.wait();
    let output = run.output();
    assert!(status.success(), "exit {status}:\n{output}");
    assert!(
        output.contains(
            "smoke test passed: the resident and the Buildium tenant are building users in the sandbox"
        ),
        "{output}"
    );
    assert!(
        output.contains("stopped Redis"),
        "it says it stopped its Redis:\n{output}"
    );
    assert!(
        !output.contains("In another terminal"),
        "smoke mode prints no instructions for a running session:\n{output}"
    );
    run.assert_everything_stopped();

    let state = run.state();
    let key = std::fs::read_to_string(state.join("openapp-api-key")).expect("the key file");
    let hex = key
        .trim()
        .strip_prefix("oa_test_")
        .unwrap_or_else(|| panic!("a plain oa_test_ key, not {key:?}"));
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key:?}"
    );
    let config = std::fs::read_to_string(state.join("config.toml")).expect("the config");
    assert!(
        !config.contains(key.trim()),
        "the config refers to the key file"
    );
    for log in ["serve.log", "sandbox.log", "buildium.log"] {
        let text = std::fs::read_to_string(state.join(log)).expect(log);
        assert!(!text.is_empty(), "{log} is empty");
        assert!(!text.contains('\u{1b}'), "{log} has ANSI escapes:\n{text}");
    }
}

#[test]
fn a_failure_says_what_failed_and_still_stops_redis() {
    let mut run = Quickstart::new();
    // A lease-sync whose `serve` fails at once; everything else is the real binary.
    let wrapper = run.dir.path().join("failing-lease-sync");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = serve ]; then echo 'injected failure' >&2; exit 3; fi\nexec '{}' \"$@\"\n",
            lease_sync().display()
        ),
    )
    .expect("write the wrapper");
    let chmod = Command::new("chmod")
        .args(["+x"])
        .arg(&wrapper)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    run.spawn(&script(), &[], true, &wrapper);
    let status = run.wait();
    let output = run.output();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("lease-sync serve exited (status 3) before it was ready"),
        "{output}"
    );
    assert!(
        output.contains("injected failure"),
        "the end of the log is shown:\n{output}"
    );
    assert!(output.contains("stopped Redis"), "{output}");
    run.assert_everything_stopped();
}

#[test]
fn sigterm_stops_a_running_quick_start_and_its_children() {
    let mut run = Quickstart::new();
    run.spawn(&script(), &[], false, lease_sync());
    run.wait_for_output("lease-sync is ready");
    let output = run.output();
    assert!(output.contains("send-test-event --config"), "{output}");
    assert!(
        !output.contains("oa_test_"),
        "the key is never printed:\n{output}"
    );
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("run ps");
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("oa_test_"),
        "the OpenApp key shows in ps"
    );

    run.signal(run.pid(), "-TERM");
    let status = run.wait();
    assert_eq!(
        status.signal(),
        Some(15),
        "it dies of SIGTERM after stopping its children ({status}):\n{}",
        run.output()
    );
    let output = run.output();
    assert!(output.contains("SIGTERM received"), "{output}");
    for name in ["lease-sync serve", "the OpenApp sandbox", "Redis"] {
        assert!(output.contains(&format!("stopped {name}")), "{output}");
    }
    run.assert_everything_stopped();
}

#[test]
fn sigint_stops_a_quick_start_started_as_a_background_job() {
    // A non-interactive shell starts background jobs with SIGINT ignored; the script must
    // still stop on `kill -INT`. The shell prints the script's pid and waits for it.
    let mut run = Quickstart::new();
    let pid_file = run.dir.path().join("pid");
    let shell = format!(
        "'{}' & echo $! > '{}'; wait $!",
        script().display(),
        pid_file.display()
    );
    run.spawn(Path::new("bash"), &["-c", &shell], false, lease_sync());
    run.wait_for_output("lease-sync is ready");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    run.script_pid = Some(pid);

    run.signal(pid, "-INT");
    let status = run.wait();
    assert_eq!(
        status.code(),
        Some(130),
        "the script died of SIGINT ({status}):\n{}",
        run.output()
    );
    let output = run.output();
    assert!(output.contains("SIGINT received"), "{output}");
    assert!(output.contains("stopped Redis"), "{output}");
    run.assert_everything_stopped();
}
