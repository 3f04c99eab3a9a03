//! When a worker asks Redis for more jobs.
//!
//! apalis fetches a batch only when its worker task is woken: by a job finishing, or by the
//! poll strategy's timer. apalis 1.0's `poll_with_interval` replaces its timer when it fires
//! without polling the new one, so no wake-up is armed afterwards: once a fetch comes back
//! empty, the worker sleeps until one of its jobs finishes. While every running job waits
//! (for Buildium's rate limit, a slow OpenApp), jobs queued meanwhile are not picked up —
//! measured: a job ready in Redis started 1.07 s late, exactly when a limiter wait ended.
//! [`EveryInterval`] keeps a timer armed at all times.

use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};
use tokio::time::{Interval, MissedTickBehavior};

/// Wakes the worker to fetch every `period`, whatever its jobs are doing.
#[derive(Debug)]
pub struct EveryInterval {
    interval: Option<Interval>,
    period: Duration,
}

impl EveryInterval {
    /// A strategy fetching every `period` (at least 1 ms).
    pub fn new(period: Duration) -> Self {
        Self {
            interval: None,
            period: period.max(Duration::from_millis(1)),
        }
    }
}

impl PollStrategy for EveryInterval {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        // Created on first use: inside the worker's runtime, not where the backend is built.
        let period = self.period;
        let interval = self.interval.get_or_insert_with(|| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        // Poll until Pending, so the next tick's wake-up is always registered.
        let mut ticked = false;
        while interval.poll_tick(cx).is_ready() {
            ticked = true;
        }
        if ticked {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// After a tick, the next one still wakes the task: the defect this strategy replaces.
    #[tokio::test(start_paused = true)]
    async fn every_tick_wakes_the_worker_again() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut strategy = EveryInterval::new(Duration::from_millis(250));
        let snapshot = PollSnapshot::default();
        // The first tick is immediate.
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        for round in 1..=3 {
            assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending());
            tokio::time::advance(Duration::from_millis(250)).await;
            tokio::task::yield_now().await;
            assert_eq!(wakes.0.load(Ordering::SeqCst), round, "round {round}");
            // Woken: the worker polls, the strategy says fetch, and arms the next tick.
            assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        }
    }
}
