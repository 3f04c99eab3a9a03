//! Small helpers the suite's modules share: bounded polling, free ports and signals.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

/// How often a bounded poll looks again.
pub const POLL: Duration = Duration::from_millis(25);

/// Polls `probe` every [`POLL`] until it returns `Some`, or gives up after `limit` with `None`.
pub async fn poll_until<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `probe` until it returns `Some`, or panics after `limit` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(limit, probe).await {
        Some(value) => value,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind an ephemeral loopback port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("an ephemeral listener has no address: {e}"))
        .port()
}

/// Sends `signal` (a `kill` option such as `-STOP`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run `kill {signal} {pid}`: {e}"));
    assert!(status.success(), "`kill {signal} {pid}` failed: {status}");
}

/// Seconds as a float, for figures.
pub fn secs(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}
