//! `[worker]`: the processes that deliver jobs to OpenApp.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{Count, PositiveMillis, PositiveSecs, Secs};
use super::{ConfigError, OpenAppSettings};

/// `[worker]`: the processes that deliver jobs to OpenApp.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// `concurrency`: calls (OpenApp, Buildium) one process makes at once; each job makes
    /// one at a time.
    #[serde(with = "Count")]
    pub concurrency: NonZeroUsize,
    /// `claim_ahead`: most jobs one process takes and claims beyond its `concurrency` calls
    /// — the attempt counted, the resident locked and read — so that Redis's writes, each
    /// waiting for an fsync under `appendfsync always`, overlap the calls instead of coming
    /// between them. How many it takes follows the calls' pace ([`crate::queue::pace`]): what
    /// its jobs get through in 25 ms, at least `concurrency` (and 16), at most `claim_ahead`. A process
    /// that dies marks the attempt of every job it had claimed crashed: that many plus
    /// `concurrency`. 0 claims a job only when a call can start.
    pub claim_ahead: usize,
    /// `poll_interval_ms`: how often an idle worker looks for new or due jobs. apalis-redis
    /// never wakes a worker on push, so this bounds pick-up latency.
    #[serde(rename = "poll_interval_ms", with = "PositiveMillis")]
    pub poll_interval: Duration,
    /// `heartbeat_secs`: how often a worker proves it is alive.
    #[serde(rename = "heartbeat_secs", with = "PositiveSecs")]
    pub heartbeat: Duration,
    /// `missed_heartbeats`: heartbeats a worker may miss before another worker takes over its
    /// in-flight jobs. `heartbeat_secs × missed_heartbeats` must be at least twice
    /// `openapp.timeout_ms`.
    #[serde(with = "Count")]
    pub missed_heartbeats: NonZeroUsize,
    /// `batch_size`: jobs fetched from Redis per round trip.
    #[serde(with = "Count")]
    pub batch_size: NonZeroUsize,
    /// `shutdown_timeout_secs`: how long shutdown waits for in-flight jobs; unfinished ones
    /// are taken over by another worker after the heartbeat window.
    #[serde(rename = "shutdown_timeout_secs", with = "Secs")]
    pub shutdown_timeout: Duration,
}

/// Most `worker.claim_ahead`.
pub const MAX_CLAIM_AHEAD: usize = 1024;

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: const { NonZeroUsize::new(16).unwrap() },
            claim_ahead: 256,
            poll_interval: Duration::from_millis(250),
            heartbeat: Duration::from_secs(10),
            missed_heartbeats: const { NonZeroUsize::new(3).unwrap() },
            batch_size: const { NonZeroUsize::new(50).unwrap() },
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl WorkerSettings {
    /// Most jobs one process has at once: `concurrency + claim_ahead` (fewer at a slow pace,
    /// [`crate::queue::pace`]).
    pub fn jobs_in_progress(&self) -> usize {
        self.concurrency.get().saturating_add(self.claim_ahead)
    }

    /// Time after which a silent worker's jobs are taken over.
    pub fn orphan_window(&self) -> Duration {
        let missed = u32::try_from(self.missed_heartbeats.get()).unwrap_or(u32::MAX);
        self.heartbeat.saturating_mul(missed)
    }

    /// Checks that the heartbeat window covers two OpenApp calls: a job still running when
    /// its worker looks dead would be run twice, by two workers.
    pub fn validate(&self, openapp: &OpenAppSettings) -> Result<(), ConfigError> {
        if self.claim_ahead > MAX_CLAIM_AHEAD {
            return Err(ConfigError::invalid(
                "worker.claim_ahead",
                format!(
                    "{} is more than {MAX_CLAIM_AHEAD}: every job claimed ahead is an attempt a crash counts",
                    self.claim_ahead
                ),
            ));
        }
        if openapp.timeout.saturating_mul(2) > self.orphan_window() {
            return Err(ConfigError::invalid(
                "worker.missed_heartbeats",
                format!(
                    "heartbeat_secs × missed_heartbeats ({} s) must be at least twice openapp.timeout_ms ({} ms)",
                    self.orphan_window().as_secs(),
                    openapp.timeout.as_millis()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, assert_zero_refused, env};
    use super::super::{Role, Settings};

    #[test]
    fn heartbeat_window_must_cover_call_timeout() {
        let text = format!("{MINIMAL}\n[worker]\nheartbeat_secs = 1\nmissed_heartbeats = 2\n");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        assert!(
            s.validate(Role::Work)
                .unwrap_err()
                .to_string()
                .contains("missed_heartbeats")
        );
    }

    #[test]
    fn claim_ahead_defaults_to_256_and_is_bounded() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        assert_eq!(s.worker.claim_ahead, 256);
        assert_eq!(s.worker.jobs_in_progress(), 272);
        let text = format!("{MINIMAL}\n[worker]\nclaim_ahead = 0\n");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        assert_eq!(s.worker.jobs_in_progress(), 16);
        s.validate(Role::Work).expect("0 is allowed");
        let text = format!("{MINIMAL}\n[worker]\nclaim_ahead = 1025\n");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        let e = s.validate(Role::Work).unwrap_err().to_string();
        assert!(e.contains("worker.claim_ahead"), "{e}");
    }

    #[test]
    fn zero_counts_and_intervals_are_refused_by_key() {
        assert_zero_refused(&[
            "worker.concurrency",
            "worker.poll_interval_ms",
            "worker.heartbeat_secs",
            "worker.missed_heartbeats",
            "worker.batch_size",
        ]);
    }
}
