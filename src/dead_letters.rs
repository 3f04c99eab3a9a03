//! Dead letters: deliveries that were given up, kept with everything an operator needs to
//! understand them, and replayed or purged on request.
//!
//! Stored in Redis next to the queue, read and written only through [`JobQueue`]: a sorted
//! set of delivery ids by dead-at (ms), and for each id the ledger hash and attempt records
//! the worker wrote (see [`crate::queue::ledger`]). Replay and purge are single Lua scripts,
//! so concurrent operators cannot enqueue one entry twice; each writes an audit record.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use crate::config::DeadLetterSettings;
use crate::event::EventType;
use crate::history::{HistoryEntry, HistoryEvent};
use crate::queue::history::ResidentEntry;
use crate::queue::ledger::AttemptRecord;
use crate::queue::{Job, JobQueue, QueueError, job_id_ready_at, now_ms};
use crate::retry::DeadReason;
use crate::sources::buildium::webhook::Refresh;

/// Ids read per round trip while filtering.
const SCAN_BATCH: isize = 500;

/// Which dead letters an operation applies to. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    /// Only this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Only this event type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    /// Only this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeadReason>,
    /// Only entries that died within this long before now.
    #[serde(
        default,
        with = "humantime_serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<Duration>,
    /// Only entries that died at least this long ago.
    #[serde(
        default,
        with = "humantime_serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub older_than: Option<Duration>,
}

/// `"24h"`-style durations in JSON.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl DeadLetterFilter {
    fn matches(&self, entry: &DeadLetterSummary) -> bool {
        self.source.as_ref().is_none_or(|s| *s == entry.source)
            && self.event_type.is_none_or(|t| Some(t) == entry.event_type)
            && self.reason.is_none_or(|r| r == entry.reason)
    }

    /// Score bounds (dead-at, ms) implied by `since` and `older_than`.
    fn bounds(&self, now: i64) -> (i64, i64) {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let min = self.since.map_or(i64::MIN, |d| now.saturating_sub(ms(d)));
        let max = self
            .older_than
            .map_or(i64::MAX, |d| now.saturating_sub(ms(d)));
        (min, max)
    }
}

/// One dead letter in a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    /// The delivery id; what `show`, `replay` and `purge` take.
    pub id: String,
    /// Why it was given up.
    pub reason: DeadReason,
    /// When (ms since the epoch).
    pub dead_at: i64,
    /// When the event was first received (ms since the epoch).
    pub first_seen: i64,
    /// The source that sent the event.
    pub source: String,
    /// The event id.
    pub event_id: String,
    /// `converge` (make OpenApp show a resident's state) or `refresh` (read a lease again
    /// from its source).
    pub kind: String,
    /// The event type, for a convergence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    /// `add` or `remove` for a convergence, `refresh` for a refresh.
    pub action: String,
    /// The lease (for a refresh of a tenant, empty).
    pub lease_id: String,
    /// The resident (OpenApp user id); empty for a refresh.
    pub user_id: String,
    /// The OpenApp integration; empty for a refresh.
    pub integration_id: String,
    /// Attempts made since the last replay.
    pub attempts: u32,
    /// Times replayed before.
    pub replays: u32,
    /// The last attempt's failure: status and message, as one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Everything about one dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The job: a convergence (target, role, org) or a refresh (what to read).
    pub job: Job,
    /// The event as received (validated), as JSON.
    pub event: Value,
    /// Every attempt, oldest first, with replay markers between rounds.
    pub attempt_log: Vec<AttemptRecord>,
}

impl DeadLetter {
    /// This dead letter with the personal data of its event masked: the emails and names of
    /// residents known by email ([`crate::queue::conflicts::mask_email`], initials). How dead
    /// letters are shown unless asked for in full.
    pub fn masked(mut self) -> Self {
        use crate::queue::conflicts::{initials, mask_email};
        if let Job::Resolve(job) = &mut self.job {
            for person in &mut job.event.residents_by_email {
                person.email = mask_email(&person.email);
                person.name = person.name.as_deref().map(initials);
            }
        }
        if let Some(people) = self
            .event
            .get_mut("residents_by_email")
            .and_then(Value::as_array_mut)
        {
            for person in people.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(Value::String(email)) = person.get_mut("email") {
                    *email = mask_email(email);
                }
                if let Some(Value::String(name)) = person.get_mut("name") {
                    *name = initials(name);
                }
            }
        }
        self
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// Matching entries, newest first.
    pub items: Vec<DeadLetterSummary>,
    /// Offset of the next page, if there are more matches.
    pub next_offset: Option<usize>,
}

/// Result of replaying one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// Queued again with a fresh attempt budget.
    Replayed,
    /// The delivery exists but is not a dead letter (already replayed, or delivered).
    NotDead,
    /// No such delivery.
    NotFound,
}

/// An audit record of a replay, a purge or a lease reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (ms since the epoch).
    pub at: i64,
    /// Who: `token:<fingerprint>` for the admin API, `cli:<user>@<host>` for the CLI.
    pub actor: String,
    /// `replay`, `purge` or `lease_reset`.
    pub action: String,
    /// The entries acted on: delivery ids, or for a lease reset `<integration_id>/<user_id>`
    /// of each resident whose record was forgotten.
    pub ids: Vec<String>,
    /// The filter used for bulk operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<DeadLetterFilter>,
    /// The lease a reset forgot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<AuditedLease>,
}

/// The lease of an audited reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditedLease {
    /// The source whose record was forgotten.
    pub source: String,
    /// The lease id.
    pub lease_id: String,
}

/// Access to the dead letters of one namespace. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    queue: JobQueue,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("keys", self.queue.keys())
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// The dead letters next to `queue`.
    pub fn new(queue: &JobQueue) -> Self {
        Self {
            queue: queue.clone(),
        }
    }

    /// Matching entries, newest first, skipping `offset` matches and returning at most `limit`.
    pub async fn list(
        &self,
        filter: &DeadLetterFilter,
        offset: usize,
        limit: usize,
    ) -> Result<Page, QueueError> {
        let mut items = Vec::new();
        let mut skipped = 0;
        let mut more = false;
        self.scan(filter, |entry| {
            if skipped < offset {
                skipped += 1;
                return true;
            }
            if items.len() == limit {
                more = true;
                return false;
            }
            items.push(entry);
            true
        })
        .await?;
        let next_offset = more.then_some(offset + items.len());
        Ok(Page { items, next_offset })
    }

    /// Ids of every matching entry, newest first.
    pub async fn matching_ids(&self, filter: &DeadLetterFilter) -> Result<Vec<String>, QueueError> {
        let mut ids = Vec::new();
        self.scan(filter, |entry| {
            ids.push(entry.id);
            true
        })
        .await?;
        Ok(ids)
    }

    /// Walks matching entries newest first until `visit` returns false.
    async fn scan(
        &self,
        filter: &DeadLetterFilter,
        mut visit: impl FnMut(DeadLetterSummary) -> bool,
    ) -> Result<(), QueueError> {
        let (min, max) = filter.bounds(now_ms());
        let mut offset = 0isize;
        loop {
            let ids = self
                .queue
                .dead_letter_ids_page(min, max, offset, SCAN_BATCH)
                .await?;
            if ids.is_empty() {
                return Ok(());
            }
            offset += ids.len() as isize;
            let records = self.queue.dead_letter_summaries_raw(&ids).await?;
            for (id, (hash, last)) in ids.into_iter().zip(records) {
                let Some(mut entry) = summary(&id, &hash) else {
                    warn!(dead_letter.id = %id, "dead letter without a readable record; skipped");
                    continue;
                };
                entry.last_error = last
                    .and_then(|r| serde_json::from_str::<AttemptRecord>(&r).ok())
                    .and_then(|r| last_error(&r));
                if filter.matches(&entry) && !visit(entry) {
                    return Ok(());
                }
            }
        }
    }

    /// Everything about one entry; `None` if it is not a dead letter.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        if !is_delivery_id(id) {
            return Ok(None);
        }
        let Some((hash, log)) = self.queue.dead_letter_raw(id).await? else {
            return Ok(None);
        };
        let Some(mut summary) = summary(id, &hash) else {
            return Ok(None);
        };
        let job: Job = serde_json::from_str(hash.get("job").map_or("", String::as_str))?;
        let event = hash
            .get("event")
            .and_then(|e| serde_json::from_str(e).ok())
            .unwrap_or(Value::Null);
        let attempt_log: Vec<AttemptRecord> = log
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        summary.last_error = attempt_log.last().and_then(last_error);
        Ok(Some(DeadLetter {
            summary,
            job,
            event,
            attempt_log,
        }))
    }

    /// Replays one entry: claims it atomically and queues it again with a fresh attempt
    /// budget and the original event. Does not write an audit record; see [`Self::audit`].
    pub async fn replay(&self, id: &str, actor: &str) -> Result<ReplayOutcome, QueueError> {
        if !is_delivery_id(id) {
            return Ok(ReplayOutcome::NotFound);
        }
        let now = now_ms();
        // The job id tells when the job became ready: the oldest ready job's age needs it.
        let job_id = job_id_ready_at(now);
        let resident = self.queue.delivery_resident(id).await?;
        if self
            .queue
            .replay_dead_letter(id, &job_id, now, actor)
            .await?
        {
            self.record_history(
                resident,
                HistoryEvent::Replayed {
                    delivery_id: id.to_owned(),
                    by: actor.to_owned(),
                },
            )
            .await;
            return Ok(ReplayOutcome::Replayed);
        }
        Ok(if self.queue.delivery_exists(id).await? {
            ReplayOutcome::NotDead
        } else {
            ReplayOutcome::NotFound
        })
    }

    /// Deletes one entry, as `actor`; false if it was not a dead letter. Does not write an
    /// audit record; see [`Self::audit`].
    pub async fn purge(&self, id: &str, actor: &str) -> Result<bool, QueueError> {
        if !is_delivery_id(id) {
            return Ok(false);
        }
        let resident = self.queue.delivery_resident(id).await?;
        let purged = self.queue.purge_dead_letter(id).await?;
        if purged {
            self.record_history(
                resident,
                HistoryEvent::Purged {
                    delivery_id: id.to_owned(),
                    by: actor.to_owned(),
                },
            )
            .await;
        }
        Ok(purged)
    }

    /// Writes `event` into the history of `resident` (a convergence's), if any. A failure is
    /// logged: the replay or purge it describes already happened.
    async fn record_history(&self, resident: Option<(String, String)>, event: HistoryEvent) {
        let Some((integration_id, user_id)) = resident else {
            return;
        };
        let entry = ResidentEntry {
            integration_id: &integration_id,
            user_id: &user_id,
            entry: HistoryEntry::new(now_ms(), event),
        };
        if let Err(e) = self.queue.append_history(&[entry]).await {
            warn!(error = %e, "a dead letter was replayed or purged but the resident's history could not be written");
        }
    }

    /// Enforces `[dead_letters]`: removes entries older than `max_age_days`, then the oldest
    /// beyond `max_entries`. Logs and counts what it removed.
    pub async fn trim(&self, settings: &DeadLetterSettings) -> Result<u64, QueueError> {
        let age_ms = i64::try_from(settings.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(age_ms);
        let (mut victims, total) = self.queue.dead_letters_expired_and_total(cutoff).await?;
        let excess = total
            .saturating_sub(victims.len() as u64)
            .saturating_sub(settings.max_entries);
        if excess > 0 {
            let oldest = self
                .queue
                .oldest_dead_letter_ids(victims.len() as i64, excess as i64)
                .await?;
            victims.extend(oldest);
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let mut removed = 0;
        for id in &victims {
            // The limits, not an operator: no history entry.
            if self.queue.purge_dead_letter(id).await? {
                removed += 1;
            }
        }
        self.queue.count_dead_letters_trimmed(removed).await?;
        warn!(
            trimmed = removed,
            max_entries = settings.max_entries,
            max_age_days = settings.max_age.as_secs() / 86_400,
            "trimmed {removed} dead letter(s) beyond the [dead_letters] limits"
        );
        Ok(removed)
    }

    /// Appends an audit record (newest first, the last 10,000 kept).
    pub async fn audit(&self, record: &AuditRecord) -> Result<(), QueueError> {
        self.queue.push_audit(&serde_json::to_string(record)?).await
    }

    /// The newest `limit` audit records.
    pub async fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, QueueError> {
        let raw = self.queue.recent_audit_raw(limit).await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }
}

/// `"503: Service unavailable"`, `"timeout: …"`: the failure of one attempt on one line.
fn last_error(record: &AttemptRecord) -> Option<String> {
    let head = match (record.status, &record.error) {
        (Some(status), _) => status.to_string(),
        (None, Some(kind)) => kind.clone(),
        (None, None) => record.outcome.clone(),
    };
    match &record.message {
        Some(m) => Some(format!("{head}: {m}")),
        None if head.is_empty() => None,
        None => Some(head),
    }
}

fn summary(
    id: &str,
    hash: &std::collections::HashMap<String, String>,
) -> Option<DeadLetterSummary> {
    let job: Job = serde_json::from_str(hash.get("job")?).ok()?;
    let number = |field: &str| {
        hash.get(field)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_default()
    };
    Some(DeadLetterSummary {
        id: id.to_owned(),
        reason: hash.get("reason")?.parse().ok()?,
        dead_at: number("dead_at"),
        first_seen: number("first_seen"),
        source: job.source().to_owned(),
        event_id: job.event_id().to_owned(),
        kind: job.kind().to_owned(),
        event_type: match &job {
            Job::Converge(c) => Some(c.event_type),
            Job::Resolve(r) => Some(r.event.event_type),
            Job::Refresh(_) => None,
        },
        action: match &job {
            Job::Converge(c) => c.action().to_owned(),
            Job::Refresh(_) => "refresh".to_owned(),
            Job::Resolve(_) => "resolve".to_owned(),
        },
        lease_id: match &job {
            Job::Converge(c) => c.lease_id.clone(),
            Job::Resolve(r) => r.event.lease.id.clone(),
            Job::Refresh(r) => match r.refresh {
                Refresh::Lease { lease_id } => lease_id.to_string(),
                Refresh::Tenant { .. } => String::new(),
            },
        },
        user_id: match &job {
            Job::Converge(c) => c.user_id.clone(),
            Job::Refresh(_) | Job::Resolve(_) => String::new(),
        },
        integration_id: match &job {
            Job::Converge(c) => c.integration_id.clone(),
            Job::Refresh(_) | Job::Resolve(_) => String::new(),
        },
        attempts: u32::try_from(number("attempts")).unwrap_or_default(),
        replays: u32::try_from(number("replays")).unwrap_or_default(),
        last_error: None,
    })
}

/// Whether `id` is a delivery id as lease-sync makes them (a ULID in canonical form). Only
/// such ids are looked up, so a caller's text never becomes part of a Redis key name.
pub fn is_delivery_id(id: &str) -> bool {
    ulid::Ulid::from_string(id).is_ok_and(|u| u.to_string() == id)
}

/// Who runs this CLI: `cli:<user>@<host>`, for audit records.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("cli:{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_ulids_are_delivery_ids() {
        let id = ulid::Ulid::new().to_string();
        assert!(is_delivery_id(&id));
        assert!(!is_delivery_id(&id.to_ascii_lowercase()));
        assert!(!is_delivery_id(&format!("{id}:attempts")));
        assert!(!is_delivery_id(""));
        assert!(!is_delivery_id("*"));
        assert!(!is_delivery_id(&"Z".repeat(26)), "beyond the largest ULID");
    }
}
