//! Where residents' histories ([`crate::history`]) are kept: one sorted set per resident by
//! time, capped by `[audit]`. The entries that describe a change to the queue or a resident
//! (an event folded, an attempt and its outcome, a hold, a dead letter) are written by the
//! script making that change, atomically with it; operator actions and identity resolutions
//! are appended here.

use std::time::Duration;

use super::{JobQueue, QueueError, now_ms};
use crate::config::AuditSettings;
use crate::history::HistoryEntry;

/// Most entries one read returns.
pub const MAX_READ: usize = 1_000;

/// Most histories one append script touches; larger batches are split.
const APPEND_CHUNK: usize = 200;

/// How much of each resident's history is kept (`[audit]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most entries per resident (0: record nothing).
    pub max_entries: u64,
    /// Oldest entry kept.
    pub max_age: Duration,
}

impl From<&AuditSettings> for HistoryLimits {
    fn from(settings: &AuditSettings) -> Self {
        Self {
            max_entries: settings.max_entries_per_resident,
            max_age: settings.max_age,
        }
    }
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self::from(&AuditSettings::default())
    }
}

impl HistoryLimits {
    /// The age cap in ms, as the scripts take it.
    pub(super) fn max_age_ms(&self) -> u64 {
        u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX)
    }
}

/// One resident's entry to append.
#[derive(Debug, Clone)]
pub struct ResidentEntry<'a> {
    /// The resident's building.
    pub integration_id: &'a str,
    /// The resident.
    pub user_id: &'a str,
    /// What to record.
    pub entry: HistoryEntry,
}

impl JobQueue {
    /// This queue, keeping `limits` of each resident's history.
    #[must_use]
    pub fn with_history_limits(mut self, limits: HistoryLimits) -> Self {
        self.history_limits = limits;
        self
    }

    /// The history caps in force.
    pub fn history_limits(&self) -> HistoryLimits {
        self.history_limits
    }

    /// Appends one entry to each resident's history, in scripts of at most 200 residents.
    pub async fn append_history(&self, entries: &[ResidentEntry<'_>]) -> Result<(), QueueError> {
        let keys: Vec<(String, &HistoryEntry)> = entries
            .iter()
            .map(|e| (self.keys.history(e.integration_id, e.user_id), &e.entry))
            .collect();
        self.append_to(&keys).await
    }

    /// Appends `entry` to the history of integration `integration_id` itself (pauses and
    /// resumes), which every resident's history of that integration shows.
    pub async fn append_integration_history(
        &self,
        integration_id: &str,
        entry: &HistoryEntry,
    ) -> Result<(), QueueError> {
        self.append_to(&[(self.keys.integration_history(integration_id), entry)])
            .await
    }

    async fn append_to(&self, entries: &[(String, &HistoryEntry)]) -> Result<(), QueueError> {
        if self.history_limits.max_entries == 0 {
            return Ok(());
        }
        self.layout_ready().await?;
        let mut conn = self.conn.clone();
        for chunk in entries.chunks(APPEND_CHUNK) {
            let mut invocation = self.scripts.history_append.prepare_invoke();
            invocation
                .arg(self.history_limits.max_entries)
                .arg(self.history_limits.max_age_ms())
                .arg(now_ms());
            for (key, entry) in chunk {
                invocation
                    .key(key)
                    .arg(entry.at)
                    .arg(serde_json::to_string(entry)?);
            }
            let _: i64 = invocation.invoke_async(&mut conn).await?;
        }
        Ok(())
    }

    /// The history of `user_id` in `integration_id`, merged with the integration's own
    /// (pauses, resumes): at most `limit` (≤ [`MAX_READ`]) entries, newest first, none older
    /// than the age cap. Entries that do not parse (written by a later release) are skipped.
    pub async fn history(
        &self,
        integration_id: &str,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, QueueError> {
        let limit = limit.clamp(1, MAX_READ);
        let since = now_ms().saturating_sub(
            i64::try_from(self.history_limits.max_age.as_millis()).unwrap_or(i64::MAX),
        );
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for key in [
            self.keys.history(integration_id, user_id),
            self.keys.integration_history(integration_id),
        ] {
            pipe.cmd("ZREVRANGEBYSCORE")
                .arg(key)
                .arg("+inf")
                .arg(since)
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let (own, integration): (Vec<String>, Vec<String>) = pipe.query_async(&mut conn).await?;
        let mut entries: Vec<HistoryEntry> = own
            .iter()
            .chain(&integration)
            .filter_map(|raw| serde_json::from_str(raw).ok())
            .collect();
        // Newest first; at one time, in the order they were written is not kept by the set,
        // so ties are broken by kind for a stable answer.
        entries.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.kind().cmp(b.kind())));
        entries.truncate(limit);
        Ok(entries)
    }
}
