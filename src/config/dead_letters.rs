//! `[dead_letters]`: the store of deliveries that were given up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::WholeDays;

/// `[dead_letters]`: the store of deliveries that were given up. Any values are usable
/// (0 keeps nothing), so there is nothing to validate beyond the types.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSettings {
    /// `max_entries`: most entries kept; the oldest are trimmed (logged and counted) beyond
    /// it.
    pub max_entries: u64,
    /// `max_age_days`: entries older than this are trimmed.
    #[serde(rename = "max_age_days", with = "WholeDays")]
    pub max_age: Duration,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_age: Duration::from_secs(30 * 86_400),
        }
    }
}
