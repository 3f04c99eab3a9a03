//! `[audit]`: the per-resident audit trail (`residents history`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::WholeDays;

/// `[audit]`: how much of each resident's history is kept. Every event folded, identity
/// resolution, OpenApp call (with the decision it carried out), retry, dead letter, replay,
/// purge, pause and lease reset that touches a resident is one entry. It holds personal data
/// (emails of resolved people), hence a cap on age as well as on count.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// `max_entries_per_resident`: most entries kept per resident (and per integration, for
    /// pauses and resumes); the oldest are dropped as new ones arrive. 0 records nothing.
    pub max_entries_per_resident: u64,
    /// `max_age_days`: entries older than this are dropped (and never shown); a resident
    /// whose history saw nothing new for this long loses it whole.
    #[serde(rename = "max_age_days", with = "WholeDays")]
    pub max_age: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            max_entries_per_resident: 500,
            max_age: Duration::from_secs(365 * 86_400),
        }
    }
}
