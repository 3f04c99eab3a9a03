//! A request rate shared by every process, kept in Redis: Buildium allows an account a number
//! of requests per second, whichever of lease-sync's worker processes sends them.
//!
//! The design is a sliding-window log (`lua/rate_limit.lua`): one sorted set per limited
//! account holds the grants of the last window, scored by their time on Redis's clock. Taking
//! a slot is one script run: drop the grants that left the window, then either add this one
//! (fewer than the limit remained) or answer how long until the oldest leaves. A process that
//! gets no slot sleeps exactly that long, then asks again, so nothing spins; the whole wait is
//! bounded. A sliding window, rather than one counter per calendar second or a token bucket,
//! never lets more than the limit through in *any* window: a counter per second admits twice
//! the limit across a second boundary, and a bucket admits its burst plus its refill, both of
//! which a server counting over a sliding second answers with 429.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::queue::connection::RedisConnection;

use super::{JobQueue, Keys, QueueError};

/// Added to the one-second window of [`RateLimit::per_second`]. A slot is taken before the
/// request leaves and the server counts the request when it arrives; when an earlier request
/// spends longer in transit than one taken a window later, the server would see both in one
/// window. The margin absorbs transit differences up to its length, at the cost of ~9% of
/// the allowed rate.
pub const TRANSIT_MARGIN: Duration = Duration::from_millis(100);

/// How long [`RateLimiter::acquire`] waits for a slot at most, unless set otherwise.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// How long one round trip to Redis may take, unless set otherwise.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Added at random to each wait, up to this, so that processes waiting for the same slot do
/// not all ask for it at the same microsecond.
const WAIT_JITTER_MS: u64 = 5;

/// At most `max_requests` in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed in any window.
    pub max_requests: NonZeroU32,
    /// The window's length.
    pub window: Duration,
}

impl RateLimit {
    /// `per_second` requests in any second, counted over a window of one second plus
    /// [`TRANSIT_MARGIN`]; 0 is taken as 1.
    pub fn per_second(per_second: u32) -> Self {
        Self {
            max_requests: NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            window: Duration::from_secs(1) + TRANSIT_MARGIN,
        }
    }
}

/// A slot taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// When it was granted: microseconds since the Unix epoch on Redis's clock, the clock
    /// every process's grants are counted on.
    pub granted_at_us: i64,
    /// How long it took to get, Redis round trips included.
    pub waited: Duration,
}

/// What one look at the window found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot was taken at this time (µs since the Unix epoch, Redis's clock).
    Granted(i64),
    /// The window is full; the next slot frees up after this long.
    Full(Duration),
}

/// Why no slot was taken.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// Redis failed or did not answer in time.
    #[error("rate limiter: {0}")]
    Queue(#[from] QueueError),
    /// Other requests held every slot for longer than the wait allowed.
    #[error("no request slot came free within {0:?}")]
    Saturated(Duration),
}

/// A handle on one shared rate. Cheap to clone; every handle on the same key, in any
/// process, shares the rate.
#[derive(Clone)]
pub struct RateLimiter {
    conn: RedisConnection,
    key: String,
    limit: RateLimit,
    max_wait: Duration,
    redis_timeout: Duration,
    script: Arc<redis::Script>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("key", &self.key)
            .field("limit", &self.limit)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The rate `limit` of `scope` (the limited account, e.g. a source's name) under the
    /// namespace of `keys`. Every process limiting the same account must name the same scope.
    pub fn new(conn: RedisConnection, keys: &Keys, scope: &str, limit: RateLimit) -> Self {
        Self {
            conn,
            key: keys.rate_limit(scope),
            limit,
            max_wait: DEFAULT_MAX_WAIT,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            script: Arc::new(redis::Script::new(include_str!("lua/rate_limit.lua"))),
        }
    }

    /// With [`RateLimiter::acquire`] waiting at most `max_wait`.
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// With each round trip to Redis bounded by `timeout`.
    #[must_use]
    pub fn with_redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// The rate enforced.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a slot, waiting until one frees up if the window is full. Fails with
    /// [`RateLimitError::Saturated`] as soon as the next slot is known to come later than the
    /// wait allows, rather than sleeping for nothing.
    pub async fn acquire(&self) -> Result<Permit, RateLimitError> {
        let started = Instant::now();
        loop {
            match self.try_acquire().await? {
                Slot::Granted(granted_at_us) => {
                    return Ok(Permit {
                        granted_at_us,
                        waited: started.elapsed(),
                    });
                }
                Slot::Full(free_in) => {
                    if started.elapsed() + free_in > self.max_wait {
                        return Err(RateLimitError::Saturated(self.max_wait));
                    }
                    let jitter = Duration::from_millis(rand::random_range(0..=WAIT_JITTER_MS));
                    tokio::time::sleep(free_in + jitter).await;
                }
            }
        }
    }

    /// Takes a slot if one is free now, in one round trip; never waits.
    pub async fn try_acquire(&self) -> Result<Slot, RateLimitError> {
        let window_us = u64::try_from(self.limit.window.as_micros()).unwrap_or(u64::MAX);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(self.limit.max_requests.get())
            .arg(window_us)
            .arg(ulid::Ulid::new().to_string());
        let mut conn = self.conn.clone();
        let (granted, value): (i64, i64) =
            tokio::time::timeout(self.redis_timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| QueueError::Timeout(self.redis_timeout))?
                .map_err(QueueError::from)?;
        Ok(match granted {
            1 => Slot::Granted(value),
            // Rounded up to whole milliseconds: waking a little late costs less than waking
            // early and asking again.
            _ => Slot::Full(Duration::from_millis(
                u64::try_from(value)
                    .unwrap_or_default()
                    .div_ceil(1000)
                    .max(1),
            )),
        })
    }
}

impl JobQueue {
    /// A handle on the shared rate `limit` of `scope` (see [`RateLimiter::new`]), on this
    /// queue's Redis and namespace.
    pub fn rate_limiter(&self, scope: &str, limit: RateLimit) -> RateLimiter {
        RateLimiter::new(self.conn.clone(), &self.keys, scope, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_counts_over_a_second_and_the_transit_margin() {
        let limit = RateLimit::per_second(10);
        assert_eq!(limit.max_requests.get(), 10);
        assert_eq!(limit.window, Duration::from_millis(1_100));
        assert_eq!(RateLimit::per_second(0).max_requests.get(), 1);
    }

    #[test]
    fn the_key_is_named_by_keys() {
        assert_eq!(
            Keys::new("ls").rate_limit("buildium"),
            "{ls}:rate-limit:buildium"
        );
    }
}
