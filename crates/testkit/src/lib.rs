//! The test kit of lease-sync's end-to-end tests (`tests/e2e`), fault suite (`tests/faults`)
//! and benchmark harness (`bench/`), so that each piece exists once:
//!
//! * [`RedisServer`]: a real `redis-server` child process on a free loopback port (never the
//!   machine's 6379) with production persistence (`appendonly yes`, the [`Appendfsync`] of
//!   your choice, `maxmemory-policy noeviction`, no RDB snapshots); it can be killed, stopped
//!   gracefully, paused, resumed and restarted on the same port and data directory, and
//!   reconfigured (`CONFIG SET`).
//! * [`Process`] and [`ProcessBuilder`]: a child process (the lease-sync binary, or any other)
//!   with its log in a file: waiting for a log line or for readiness while checking that it is
//!   still alive, SIGTERM with a bounded wait, SIGKILL, a `prlimit`-imposed open-file limit.
//! * [`wait_until`] and [`poll_until`]: bounded polling. Nothing here sleeps to wait.
//! * [`free_port`]: a loopback port that was free a moment ago.
//! * [`SandboxServer`] and [`BuildiumServer`]: the OpenApp sandbox and the Buildium emulator
//!   served over HTTP in this process.
//! * [`config`]: lease-sync's configuration built in Rust ([`ConfigBuilder`]) and written as
//!   TOML, secrets in clear, for the processes that read a file ([`toml_with_secrets`]).
//!
//! Test helpers panic with a message naming what failed; what the benchmark harness also uses
//! returns `anyhow::Result` instead, and tests unwrap it.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
mod poll;
mod process;
mod redis;
mod sandbox;
pub mod snapshot;

use std::net::{Ipv4Addr, TcpListener};

pub use crate::config::{ConfigBuilder, toml_with_secrets, write_with_secrets};
pub use crate::poll::{POLL, poll_until, wait_until};
pub use crate::process::{OnDrop, Output, Process, ProcessBuilder, signal};
pub use crate::redis::{Appendfsync, RedisCluster, RedisOptions, RedisServer, SentinelServer};
pub use crate::sandbox::{BuildiumServer, SandboxServer};

/// A loopback port that was free a moment ago (bound to port 0, then released), for a child
/// process to bind soon after.
///
/// # Panics
/// When no loopback port can be bound at all.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind an ephemeral loopback port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("an ephemeral listener has no address: {e}"))
        .port()
}
