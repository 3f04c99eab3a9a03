//! Small helpers the suite's modules share. Bounded polling, free ports, Redis and child
//! processes come from the workspace's test kit (`lease-sync-testkit`).

use std::time::Duration;

/// Seconds as a float, for figures.
pub fn secs(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}
