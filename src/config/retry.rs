//! `[retry]`: how failing OpenApp calls are retried.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::units::{Count, Millis, Secs};

/// Most `max_attempts` accepted: each attempt keeps a record in its delivery's log, and with
/// the default backoff 100 attempts already span more than two days.
pub const MAX_ATTEMPTS: usize = 100;

/// `[retry]`: how failing OpenApp calls are retried.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// `base_ms`: first backoff window: the n-th retry waits a random time in
    /// `[0, min(max_delay, base·2^(n−1))]`, and never less than a server's `Retry-After`.
    #[serde(rename = "base_ms", with = "Millis")]
    pub base: Duration,
    /// `max_delay_secs`: longest wait between two attempts.
    #[serde(rename = "max_delay_secs", with = "Secs")]
    pub max_delay: Duration,
    /// `max_attempts`: calls made for one delivery, crashed ones included, before it becomes
    /// a dead letter; at most [`MAX_ATTEMPTS`].
    #[serde(with = "Count")]
    pub max_attempts: NonZeroUsize,
}

impl RetrySettings {
    /// The retry policy these settings describe.
    pub fn policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            base: self.base,
            max_delay: self.max_delay,
            max_attempts: u32::try_from(self.max_attempts.get()).unwrap_or(u32::MAX),
        }
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(2_000),
            max_delay: Duration::from_secs(1_800),
            max_attempts: const { NonZeroUsize::new(20).unwrap() },
        }
    }
}

impl RetrySettings {
    /// Checks the attempt limit. Called for roles that run workers. The budget is decided
    /// here and nowhere else: the ledger's scripts are given it with each attempt.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts.get() > MAX_ATTEMPTS {
            return Err(ConfigError::invalid(
                "retry.max_attempts",
                format!("must be at most {MAX_ATTEMPTS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, env};
    use super::super::{Role, Settings};

    #[test]
    fn attempts_are_between_1_and_100() {
        let with = |n: &str| {
            Settings::from_toml_str(MINIMAL, env(&[("LEASE_SYNC__RETRY__MAX_ATTEMPTS", n)]))
        };
        with("100").unwrap().validate(Role::Work).unwrap();
        let msg = with("101")
            .unwrap()
            .validate(Role::Work)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("retry.max_attempts"), "{msg}");
        let msg = with("0").unwrap_err().to_string();
        assert!(msg.contains("retry.max_attempts"), "{msg}");
    }
}
