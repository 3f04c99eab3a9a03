//! How many jobs one worker takes from the queue at a time.
//!
//! A worker takes jobs beyond its `worker.concurrency` calls so that their claims — each a
//! write that waits for an fsync under `appendfsync always` — overlap the calls
//! (`worker.claim_ahead`). How many that needs follows the pace of the calls: when they take
//! 100 ms (a real OpenApp), a few claims ahead keep every call slot busy; when they take a
//! millisecond (a backlog against a fast OpenApp), Redis must see a few hundred jobs at once to
//! group their writes into few fsyncs (BENCHMARKS.md: about 11 jobs per fsync with 64 jobs in
//! progress, 20 with 1,016). Every job taken also counts as a crashed attempt if the process
//! dies, and is not available to the other workers meanwhile, so a fixed number is too many at
//! the slow pace or too few at the fast one.
//!
//! [`Pace`] keeps the jobs a worker has taken and not yet let go of (fetched, claimed or
//! calling; a job lets go once its call returned) at most `concurrency + ahead`, where `ahead`
//! is what the worker's jobs got through in the last [`AHEAD_WINDOW`] (a moving average),
//! at least [`least_ahead`] and at most `claim_ahead`. The queue backend fetches
//! only that much ([`Pace::room`]); [`Pace::run`] updates `ahead`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

/// The jobs a worker may take beyond its calls: what it gets through in this long.
pub const AHEAD_WINDOW: Duration = Duration::from_millis(25);

/// How often [`Pace::run`] measures the pace.
const TICK: Duration = Duration::from_millis(10);

/// Weight of the newest measurement in the moving average of the pace.
const SMOOTHING: f64 = 0.3;

/// The jobs one worker may have taken from the queue (see the module documentation). Cheap to
/// clone; clones share the count.
#[derive(Debug, Clone)]
pub struct Pace {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    concurrency: usize,
    claim_ahead: usize,
    /// Jobs fetched and not yet let go of.
    taken: AtomicUsize,
    /// Jobs let go of since the start, for the pace.
    let_go: AtomicU64,
    /// Jobs allowed beyond the calls now.
    ahead: AtomicUsize,
    /// The backend, waiting for room.
    waiting: AtomicWaker,
}

impl Pace {
    /// A pace for a worker of `concurrency` calls that takes at most `claim_ahead` jobs
    /// beyond them; it starts at the least ahead ([`least_ahead`]).
    pub fn new(concurrency: usize, claim_ahead: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                concurrency,
                claim_ahead,
                taken: AtomicUsize::new(0),
                let_go: AtomicU64::new(0),
                ahead: AtomicUsize::new(least_ahead(concurrency, claim_ahead)),
                waiting: AtomicWaker::new(),
            }),
        }
    }

    /// How many more jobs the worker may take now.
    pub fn room(&self) -> usize {
        let limit = self
            .inner
            .concurrency
            .saturating_add(self.inner.ahead.load(Ordering::Acquire));
        limit.saturating_sub(self.inner.taken.load(Ordering::Acquire))
    }

    /// How many jobs to fetch now, at most `batch`: none while the room is less than
    /// `batch` and half the jobs allowed ahead (fetching a job each time one lets go would
    /// cost a Redis round trip per job), unless fewer jobs than calls are taken (a call slot
    /// would wait).
    pub fn fetch_size(&self, batch: usize) -> usize {
        let room = self.room();
        let worth = batch.min((self.ahead() / 2).max(1));
        if room >= worth || self.taken() < self.inner.concurrency {
            batch.min(room)
        } else {
            0
        }
    }

    /// The jobs allowed beyond the calls now.
    pub fn ahead(&self) -> usize {
        self.inner.ahead.load(Ordering::Acquire)
    }

    /// The jobs taken and not let go of.
    pub fn taken(&self) -> usize {
        self.inner.taken.load(Ordering::Acquire)
    }

    /// `waker` is woken when room may have appeared.
    pub fn wake_on_room(&self, waker: &Waker) {
        self.inner.waiting.register(waker);
    }

    /// `n` jobs were fetched.
    pub fn took(&self, n: usize) {
        self.inner.taken.fetch_add(n, Ordering::AcqRel);
    }

    /// One job was let go of: its call returned, it ended without one, or it went back to the
    /// queue. Each job taken is let go of exactly once ([`PaceSlot`]).
    pub fn let_go(&self) {
        // Never below zero, even if a caller let go of more than it took.
        let _ = self
            .inner
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.inner.let_go.fetch_add(1, Ordering::Relaxed);
        self.inner.waiting.wake();
    }

    /// A guard that lets go of one taken job when dropped.
    pub fn slot(&self) -> PaceSlot {
        PaceSlot(Some(self.clone()))
    }

    /// Follows the pace of the worker's jobs until dropped: every [`TICK`], sets how many
    /// jobs it may take ahead ([`ahead_for`]), then tells `observe` that and the jobs taken.
    pub async fn run(self, mut observe: impl FnMut(usize, usize)) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rate = 0.0_f64;
        let mut last = (Instant::now(), self.inner.let_go.load(Ordering::Relaxed));
        loop {
            ticker.tick().await;
            let now = (Instant::now(), self.inner.let_go.load(Ordering::Relaxed));
            let secs = now.0.duration_since(last.0).as_secs_f64();
            if secs > 0.0 {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "a count of jobs within one tick is far below 2^52"
                )]
                let sample = now.1.saturating_sub(last.1) as f64 / secs;
                rate += SMOOTHING * (sample - rate);
            }
            last = now;
            let ahead = ahead_for(rate, self.inner.concurrency, self.inner.claim_ahead);
            let before = self.inner.ahead.swap(ahead, Ordering::AcqRel);
            if ahead > before {
                self.inner.waiting.wake();
            }
            observe(ahead, self.taken());
        }
    }
}

/// Lets go of one taken job when dropped ([`Pace::slot`]), once.
#[derive(Debug)]
pub struct PaceSlot(Option<Pace>);

impl PaceSlot {
    /// Lets go now; dropping it later does nothing.
    pub fn let_go(&mut self) {
        if let Some(pace) = self.0.take() {
            pace.let_go();
        }
    }
}

impl Drop for PaceSlot {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// The fewest jobs taken ahead at any pace (unless `claim_ahead` is smaller): enough for the
/// claims of a few calls to be in flight together.
pub const LEAST_AHEAD: usize = 16;

/// The fewest jobs a worker may take beyond its calls: as many again as its calls, at least
/// [`LEAST_AHEAD`], at most `claim_ahead`.
pub fn least_ahead(concurrency: usize, claim_ahead: usize) -> usize {
    concurrency.max(LEAST_AHEAD).min(claim_ahead)
}

/// The jobs a worker getting through `rate` jobs a second may take beyond its `concurrency`
/// calls: what it gets through in [`AHEAD_WINDOW`], between [`least_ahead`] and `claim_ahead`.
pub fn ahead_for(rate: f64, concurrency: usize, claim_ahead: usize) -> usize {
    let wanted = (rate.max(0.0) * AHEAD_WINDOW.as_secs_f64()).ceil();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "non-negative and clamped to claim_ahead just below"
    )]
    let wanted = wanted.min(1e9) as usize;
    wanted.clamp(least_ahead(concurrency, claim_ahead), claim_ahead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_calls_take_few_jobs_ahead_and_fast_ones_up_to_claim_ahead() {
        // 16 calls of 100 ms: 160 jobs a second, 4 in 25 ms; the least is 16.
        assert_eq!(ahead_for(160.0, 16, 256), 16);
        // A fast backlog: 8,000 a second, 200 in 25 ms.
        assert_eq!(ahead_for(8_000.0, 16, 256), 200);
        assert_eq!(ahead_for(50_000.0, 16, 256), 256);
        // claim_ahead bounds both ends: 0 takes nothing ahead, ever.
        assert_eq!(ahead_for(8_000.0, 16, 0), 0);
        assert_eq!(ahead_for(0.0, 16, 8), 8);
        assert_eq!(ahead_for(f64::NAN, 16, 256), 16);
        assert_eq!(ahead_for(-5.0, 16, 256), 16);
        // Few calls still get LEAST_AHEAD; many get one ahead per call.
        assert_eq!(ahead_for(0.0, 1, 256), LEAST_AHEAD);
        assert_eq!(ahead_for(0.0, 1, 4), 4);
        assert_eq!(ahead_for(0.0, 64, 256), 64);
        assert_eq!(ahead_for(f64::INFINITY, 16, 256), 256);
    }

    #[test]
    fn room_is_the_calls_and_the_jobs_ahead_less_those_taken() {
        let pace = Pace::new(16, 256);
        assert_eq!(pace.room(), 32);
        pace.took(30);
        assert_eq!(pace.room(), 2);
        pace.took(5);
        assert_eq!(pace.room(), 0, "never negative");
        assert_eq!(pace.fetch_size(50), 0);
        let mut slot = pace.slot();
        slot.let_go();
        drop(slot);
        assert_eq!(pace.taken(), 34, "a slot lets go once");
        for _ in 0..40 {
            pace.let_go();
        }
        assert_eq!(pace.taken(), 0, "never below zero");
    }

    #[test]
    fn fetches_wait_for_room_for_a_batch_unless_calls_would_wait() {
        // 16 calls, 16 ahead: room for 32.
        let pace = Pace::new(16, 256);
        assert_eq!(pace.fetch_size(50), 32);
        assert_eq!(pace.fetch_size(10), 10);
        pace.took(28);
        // Room for 4, less than half of the 16 ahead, and the calls have work.
        assert_eq!(pace.fetch_size(50), 0);
        for _ in 0..4 {
            pace.let_go();
        }
        assert_eq!(pace.fetch_size(50), 8);
        assert_eq!(pace.fetch_size(5), 5);
        // Fewer taken than calls: fetch whatever fits.
        let pace = Pace::new(16, 0);
        pace.took(15);
        assert_eq!(pace.fetch_size(50), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_jobs_ahead_follow_the_pace() {
        let pace = Pace::new(16, 256);
        let seen = Arc::new(AtomicUsize::new(0));
        let observed = Arc::clone(&seen);
        let run = tokio::spawn(pace.clone().run(move |ahead, _| {
            observed.store(ahead, Ordering::SeqCst);
        }));
        assert_eq!(pace.ahead(), 16);
        // 100 jobs let go of every 10 ms: 10,000 a second, 250 in 25 ms.
        for _ in 0..60 {
            for _ in 0..100 {
                pace.let_go();
            }
            tokio::time::advance(TICK).await;
            tokio::task::yield_now().await;
        }
        assert!(pace.ahead() > 200, "{}", pace.ahead());
        assert_eq!(
            seen.load(Ordering::SeqCst),
            pace.ahead(),
            "observed each tick"
        );
        // Then nothing: back to the least.
        for _ in 0..60 {
            tokio::time::advance(TICK).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(pace.ahead(), 16);
        run.abort();
    }
}
