//! Bounded polling: every wait has a limit, and fails (or panics) naming what it waited for.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a bounded poll looks again.
pub const POLL: Duration = Duration::from_millis(25);

/// The pace of a bounded poll: look, then [`Ticker::next`] to wait for the next look.
pub(crate) struct Ticker {
    deadline: Instant,
}

impl Ticker {
    /// Looks every [`POLL`] for at most `limit`.
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            deadline: Instant::now() + limit,
        }
    }

    /// Sleeps [`POLL`] and returns true, or returns false at once when the limit has passed.
    pub(crate) async fn next(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
        true
    }
}

/// Polls `probe` every [`POLL`] until it returns `Some`, or gives up after `limit` with `None`.
/// The probe runs at least once, and once more at or after the limit.
pub async fn poll_until<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let ticker = Ticker::new(limit);
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if !ticker.next().await {
            return None;
        }
    }
}

/// Polls `probe` until it returns `Some`, and returns that.
///
/// # Panics
/// After `limit`, with `timed out after {limit:?} waiting for {what}`.
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn poll_until_returns_the_first_some() {
        let calls = AtomicUsize::new(0);
        let found = poll_until(Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            (n == 2).then_some(n)
        })
        .await;
        assert_eq!(found, Some(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn poll_until_gives_up_after_the_limit() {
        let start = Instant::now();
        let found: Option<()> = poll_until(Duration::from_millis(60), || async { None }).await;
        assert_eq!(found, None);
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible")]
    async fn wait_until_panics_naming_what_it_waited_for() {
        wait_until::<(), _, _>("the impossible", Duration::from_millis(30), || async {
            None
        })
        .await;
    }
}
