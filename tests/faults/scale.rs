//! How big a run is: the CI size by default, the long run with `FAULT_SUITE_SCALE=long`.

use std::time::Duration;

/// Sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Scale {
    /// `ci` or `long`.
    pub name: &'static str,
    /// Distinct residents.
    pub residents: usize,
    /// About this many distinct events.
    pub events: usize,
    /// Events per second the sender starts while faults run.
    pub rate: f64,
    /// Length of the baseline phase.
    pub baseline: Duration,
    /// Length of each fault phase.
    pub fault: Duration,
    /// (a) worker kills.
    pub worker_kills: u32,
    /// (b) redis-server kills.
    pub redis_kills: u32,
    /// (c) Redis outages.
    pub outages: u32,
    /// (c) Length of one outage.
    pub outage: Duration,
    /// (d) out-of-memory episodes.
    pub oom_episodes: u32,
    /// (e) SIGSTOP pauses.
    pub pauses: u32,
    /// (e) Length of one pause.
    pub pause: Duration,
    /// (f) OpenApp fault windows.
    pub openapp_windows: u32,
    /// (g) and (h) rounds (each restarts both processes).
    pub rolling_rounds: u32,
    /// Whether to run the `appendfsync everysec` measurement.
    pub everysec: bool,
    /// Longest wait for recovery after a fault (ingest back, queue drained, state converged).
    pub recovery_limit: Duration,
    /// Longest wait for the sender to finish in the tail.
    pub tail_limit: Duration,
}

impl Scale {
    /// CI size: about 1,500 events, each fault phase 3 s.
    fn ci() -> Self {
        Self {
            name: "ci",
            residents: 300,
            events: 1_500,
            rate: 40.0,
            baseline: Duration::from_secs(2),
            fault: Duration::from_secs(3),
            worker_kills: 3,
            redis_kills: 2,
            outages: 1,
            outage: Duration::from_secs(2),
            oom_episodes: 1,
            pauses: 1,
            pause: Duration::from_secs(3),
            openapp_windows: 4,
            rolling_rounds: 1,
            everysec: false,
            recovery_limit: Duration::from_secs(90),
            tail_limit: Duration::from_secs(120),
        }
    }

    /// Long run: about 24,000 events, each fault phase 12 s with several repetitions.
    fn long() -> Self {
        Self {
            name: "long",
            residents: 4_000,
            events: 24_000,
            rate: 150.0,
            baseline: Duration::from_secs(5),
            fault: Duration::from_secs(12),
            worker_kills: 8,
            redis_kills: 6,
            outages: 2,
            outage: Duration::from_secs(4),
            oom_episodes: 3,
            pauses: 3,
            pause: Duration::from_secs(3),
            openapp_windows: 12,
            rolling_rounds: 3,
            everysec: true,
            recovery_limit: Duration::from_secs(300),
            tail_limit: Duration::from_secs(900),
        }
    }

    /// From `FAULT_SUITE_SCALE` (`ci`, the default, or `long`) and `FAULT_SUITE_EVERYSEC`
    /// (`1` adds the everysec measurement to a CI run, `0` leaves it out of a long one).
    pub fn from_env() -> Self {
        let mut scale = match std::env::var("FAULT_SUITE_SCALE").as_deref() {
            Err(_) | Ok("" | "ci") => Self::ci(),
            Ok("long") => Self::long(),
            Ok(other) => panic!("FAULT_SUITE_SCALE must be `ci` or `long`, not `{other}`"),
        };
        match std::env::var("FAULT_SUITE_EVERYSEC").as_deref() {
            Err(_) | Ok("") => {}
            Ok("1") => scale.everysec = true,
            Ok("0") => scale.everysec = false,
            Ok(other) => panic!("FAULT_SUITE_EVERYSEC must be 0 or 1, not `{other}`"),
        }
        scale
    }
}

/// The scenario seed: `FAULT_SUITE_SEED`, or one drawn now (printed with the report).
pub fn seed_from_env() -> u64 {
    match std::env::var("FAULT_SUITE_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|e| panic!("FAULT_SUITE_SEED must be an unsigned integer: {e}")),
        Err(_) => rand::random(),
    }
}
