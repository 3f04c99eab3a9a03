//! Retry policy: what to do after each OpenApp call, and how long to wait before the next.
//!
//! Pure code. The worker asks [`RetryPolicy::decide`] after every call; the queue carries out
//! the decision durably (a scheduled job in Redis, never a sleep in the worker).

use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Why a delivery was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// OpenApp refused the request in a way retrying cannot fix (400, 404 on add, 422, …).
    Permanent,
    /// Every attempt failed transiently and the budget is used up.
    Exhausted,
    /// The attempts ended with the worker itself dying (killed, out of memory) each time.
    CrashLoop,
}

impl DeadReason {
    /// The wire name (`permanent`, `exhausted`, `crash_loop`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::Exhausted => "exhausted",
            DeadReason::CrashLoop => "crash_loop",
        }
    }
}

/// A string that names no [`DeadReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason `{0}` (permanent, exhausted or crash_loop)")]
pub struct UnknownDeadReason(pub String);

impl std::str::FromStr for DeadReason {
    type Err = UnknownDeadReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permanent" => Ok(DeadReason::Permanent),
            "exhausted" => Ok(DeadReason::Exhausted),
            "crash_loop" => Ok(DeadReason::CrashLoop),
            other => Err(UnknownDeadReason(other.to_owned())),
        }
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// Done: the change is made or was already so.
    Success,
    /// May succeed later; `retry_after` is what the server asked for.
    Transient {
        /// The server's `Retry-After`, already turned into a duration.
        retry_after: Option<Duration>,
    },
    /// Will not succeed by retrying.
    Permanent,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing more to do.
    Done,
    /// Try again after `delay`; `cap` is the bound the jitter was drawn under.
    Retry {
        /// How long to wait.
        delay: Duration,
        /// Upper bound of the jittered window for this attempt (for the record).
        cap: Duration,
    },
    /// Give up and keep it as a dead letter.
    DeadLetter(DeadReason),
}

/// Exponential backoff with full jitter and a cap, honouring `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First window; the n-th retry draws from `[0, min(cap, base·2^(n−1))]`.
    pub base: Duration,
    /// Longest wait, whatever the attempt or `Retry-After`.
    pub max_delay: Duration,
    /// Calls per delivery, crashes included.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The window the delay after failed attempt `attempt` (1-based) is drawn from:
    /// `min(max_delay, base·2^(attempt−1))`.
    pub fn window(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(62);
        let factor = 1u64 << exponent;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor)).min(self.max_delay)
    }

    /// The delay after failed attempt `attempt`: full jitter over [`Self::window`], raised to
    /// `retry_after` if the server asked for longer, and never above `max_delay`.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let window = self.window(attempt);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(rng.random_range(0..=window_ms));
        jittered
            .max(retry_after.unwrap_or_default())
            .min(self.max_delay)
    }

    /// What to do after attempt `attempt` (1-based) ended as `class`.
    pub fn decide(&self, attempt: u32, class: CallClass, rng: &mut impl Rng) -> Decision {
        match class {
            CallClass::Success => Decision::Done,
            CallClass::Permanent => Decision::DeadLetter(DeadReason::Permanent),
            CallClass::Transient { .. } if attempt >= self.max_attempts => {
                Decision::DeadLetter(DeadReason::Exhausted)
            }
            CallClass::Transient { retry_after } => Decision::Retry {
                delay: self.delay(attempt, retry_after, rng),
                cap: self
                    .window(attempt)
                    .max(retry_after.unwrap_or_default())
                    .min(self.max_delay),
            },
        }
    }
}

/// Parses a `Retry-After` value, either delay-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to `now`. A date in the past means no wait.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(2_000),
            max_delay: Duration::from_secs(1_800),
            max_attempts: 20,
        }
    }

    #[test]
    fn window_doubles_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.window(1), Duration::from_secs(2));
        assert_eq!(p.window(2), Duration::from_secs(4));
        assert_eq!(p.window(5), Duration::from_secs(32));
        assert_eq!(p.window(10), Duration::from_secs(1_024));
        assert_eq!(p.window(11), Duration::from_secs(1_800));
        assert_eq!(p.window(1_000), Duration::from_secs(1_800), "no overflow");
    }

    #[test]
    fn delays_stay_in_the_window_and_are_jittered() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=15 {
            let samples: Vec<Duration> =
                (0..200).map(|_| p.delay(attempt, None, &mut rng)).collect();
            assert!(
                samples.iter().all(|d| *d <= p.window(attempt)),
                "attempt {attempt}"
            );
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(
                distinct.len() > 100,
                "full jitter spreads delays (attempt {attempt})"
            );
            // Full jitter: the mean sits near half the window.
            let mean = samples.iter().sum::<Duration>() / 200;
            let half = p.window(attempt) / 2;
            assert!(
                mean > half * 7 / 10 && mean < half * 13 / 10,
                "attempt {attempt}: mean {mean:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor_but_the_cap_still_holds() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(p.delay(1, Some(Duration::from_secs(10)), &mut rng) >= Duration::from_secs(10));
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(100_000)), &mut rng),
            Duration::from_secs(1_800)
        );
    }

    #[test]
    fn decisions() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let transient = CallClass::Transient { retry_after: None };
        assert_eq!(p.decide(1, CallClass::Success, &mut rng), Decision::Done);
        assert_eq!(
            p.decide(1, CallClass::Permanent, &mut rng),
            Decision::DeadLetter(DeadReason::Permanent)
        );
        assert!(matches!(
            p.decide(2, transient, &mut rng),
            Decision::Retry { .. }
        ));
        assert_eq!(
            p.decide(3, transient, &mut rng),
            Decision::DeadLetter(DeadReason::Exhausted)
        );
        match p.decide(
            1,
            CallClass::Transient {
                retry_after: Some(Duration::from_secs(9)),
            },
            &mut rng,
        ) {
            Decision::Retry { delay, cap } => {
                assert!(delay >= Duration::from_secs(9));
                assert_eq!(cap, Duration::from_secs(9));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "past date"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn reasons_round_trip() {
        for r in [
            DeadReason::Permanent,
            DeadReason::Exhausted,
            DeadReason::CrashLoop,
        ] {
            assert_eq!(r.as_str().parse::<DeadReason>().unwrap(), r);
        }
    }
}
