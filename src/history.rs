//! A resident's history: everything lease-sync did about one person in one building, and
//! why, so an operator can answer "why does this person have (or lack) a door, and since
//! when" without reading Redis.
//!
//! Pure domain: the entries and how they read. Where they are written (atomically with the
//! change they describe, in the queue's scripts) and kept (capped by `[audit]`) is
//! [`crate::queue::history`].

use serde::{Deserialize, Serialize};

/// One entry of a resident's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When it happened (ms since the epoch).
    pub at: i64,
    /// What happened.
    #[serde(flatten)]
    pub event: HistoryEvent,
}

/// What happened, by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryEvent {
    /// A lease event (or what a source's lease says, read back) was folded into the
    /// resident's state.
    Folded {
        /// The source that sent it.
        source: String,
        /// Its event id (synthetic for leases read back).
        event_id: String,
        /// The lease.
        lease_id: String,
        /// `lease.signed` or `lease.ended`.
        event_type: String,
        /// `changed` (a convergence was queued: `delivery_id`), `stale` (older than what the
        /// lease already said: nothing changed), or `overrode_future` (replaced a record dated
        /// in the future).
        outcome: String,
        /// The convergence queued, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivery_id: Option<String>,
        /// What folded it when not a webhook: `refresh` (the lease read back from its source),
        /// `reconcile` (a pull or a file of active leases).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trigger: Option<String>,
    },
    /// An operator reset a lease: what its source said about it was forgotten.
    LeaseReset {
        /// The source whose record was forgotten.
        source: String,
        /// The lease.
        lease_id: String,
        /// `changed` (a convergence was queued: `delivery_id`) or `stale` (nothing to forget).
        outcome: String,
        /// The convergence queued, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivery_id: Option<String>,
        /// Who reset it (`token:…`, `cli:…`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A person the source knows by email was matched to this OpenApp user.
    IdentityResolved {
        /// The source that named them.
        source: String,
        /// The email matched (personal data: masked when shown unless asked for).
        email: String,
    },
    /// One attempt of a convergence: the decision, the OpenApp call that carried it out, and
    /// what followed.
    Attempt {
        /// The convergence.
        delivery_id: String,
        /// Its attempt number.
        attempt: u32,
        /// What the resident's state said: `present`, `absent`, or `untouched` (nothing to
        /// change).
        desired: String,
        /// Why, for a person (which lease grants access, until when).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The call made: `POST`, `DELETE` (none when nothing was to change).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        /// OpenApp's status, if it answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// OpenApp's request id, if it sent one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// How long the call took (ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_ms: Option<u64>,
        /// `delivered`, `retry` (again at `retry_at`), `dead` (a dead letter: `dead_reason`),
        /// `superseded` (an event changed the state during the call: converged again), or
        /// `stale` (the convergence was replayed or purged meanwhile: not recorded).
        outcome: String,
        /// When the retry is due (ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<i64>,
        /// Why it became a dead letter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_reason: Option<String>,
        /// Error class (`transport`, `timeout`, `http`, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// OpenApp's `error_code`, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
        /// What went wrong, for a person.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A convergence became a dead letter without a call: its attempts were used up by
    /// workers that died (`crash_loop`) or it had none left (`exhausted`).
    DeadLettered {
        /// The convergence.
        delivery_id: String,
        /// Why.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A convergence was held because its integration is paused: no call, no attempt spent.
    Held {
        /// The convergence.
        delivery_id: String,
    },
    /// An operator replayed a dead convergence of this resident.
    Replayed {
        /// The dead letter.
        delivery_id: String,
        /// Who (`token:…`, `cli:…`).
        by: String,
    },
    /// An operator purged a dead convergence of this resident.
    Purged {
        /// The dead letter.
        delivery_id: String,
        /// Who.
        by: String,
    },
    /// An operator paused the resident's integration (an entry of the integration's history,
    /// shown in each of its residents').
    Paused {
        /// Who.
        by: String,
    },
    /// An operator resumed the resident's integration.
    Resumed {
        /// Who.
        by: String,
        /// Convergences that were held and were released.
        released: u64,
    },
}

impl HistoryEntry {
    /// An entry of `event` at `at` (ms).
    pub fn new(at: i64, event: HistoryEvent) -> Self {
        Self { at, event }
    }

    /// The wire name of the entry's kind (`folded`, `attempt`, …).
    pub fn kind(&self) -> &'static str {
        match &self.event {
            HistoryEvent::Folded { .. } => "folded",
            HistoryEvent::LeaseReset { .. } => "lease_reset",
            HistoryEvent::IdentityResolved { .. } => "identity_resolved",
            HistoryEvent::Attempt { .. } => "attempt",
            HistoryEvent::DeadLettered { .. } => "dead_lettered",
            HistoryEvent::Held { .. } => "held",
            HistoryEvent::Replayed { .. } => "replayed",
            HistoryEvent::Purged { .. } => "purged",
            HistoryEvent::Paused { .. } => "paused",
            HistoryEvent::Resumed { .. } => "resumed",
        }
    }

    /// This entry with its personal data masked (an email to its first letter and domain):
    /// how it is shown unless asked for in full.
    pub fn masked(mut self) -> Self {
        if let HistoryEvent::IdentityResolved { email, .. } = &mut self.event {
            *email = crate::personal::mask_email(email);
        }
        self
    }

    /// One line for a person, without the time (callers print it in their own format).
    pub fn describe(&self) -> String {
        match &self.event {
            HistoryEvent::Folded {
                source,
                event_id,
                lease_id,
                event_type,
                outcome,
                delivery_id,
                trigger,
            } => {
                let what = match outcome.as_str() {
                    "changed" => format!(
                        "state changed; convergence {} queued",
                        delivery_id.as_deref().unwrap_or("-")
                    ),
                    "overrode_future" => format!(
                        "replaced a record dated in the future; convergence {} queued",
                        delivery_id.as_deref().unwrap_or("-")
                    ),
                    _ => "older than what the lease already says: no change".to_owned(),
                };
                let via = trigger
                    .as_deref()
                    .map_or_else(String::new, |t| format!(" by {t}"));
                format!(
                    "{event_type} for lease {lease_id} from {source}{via} (event {event_id}): {what}"
                )
            }
            HistoryEvent::LeaseReset {
                source,
                lease_id,
                outcome,
                by,
                ..
            } => format!(
                "lease {lease_id} of {source} reset by {}: {}",
                by.as_deref().unwrap_or("an operator"),
                if outcome == "changed" {
                    "its record was forgotten and the resident converged again"
                } else {
                    "this resident held no record of it"
                }
            ),
            HistoryEvent::IdentityResolved { source, email } => {
                format!("{source}'s {email} matched to this OpenApp user")
            }
            HistoryEvent::Attempt {
                delivery_id,
                attempt,
                desired,
                reason,
                method,
                status,
                request_id,
                latency_ms,
                outcome,
                retry_at,
                dead_reason,
                error_code,
                message,
                ..
            } => {
                let mut line = format!("attempt {attempt} of {delivery_id}: {desired}");
                if let Some(reason) = reason {
                    line += &format!(" ({reason})");
                }
                match (method, status) {
                    (Some(m), Some(s)) => line += &format!("; {m} answered {s}"),
                    (Some(m), None) => line += &format!("; {m} got no answer"),
                    (None, _) => line += "; no call needed",
                }
                if let Some(ms) = latency_ms {
                    line += &format!(" in {ms} ms");
                }
                if let Some(id) = request_id {
                    line += &format!(" (request {id})");
                }
                if let Some(code) = error_code {
                    line += &format!(" [{code}]");
                }
                line += &match outcome.as_str() {
                    "delivered" => " → done".to_owned(),
                    "retry" => format!(
                        " → retry{}",
                        retry_at.map_or_else(String::new, |t| format!(" due at {t} ms"))
                    ),
                    "dead" => format!(
                        " → dead letter ({})",
                        dead_reason.as_deref().unwrap_or("permanent")
                    ),
                    "superseded" => " → the state changed meanwhile: converged again".to_owned(),
                    "stale" => " → replayed or purged meanwhile: not recorded".to_owned(),
                    other => format!(" → {other}"),
                };
                if let Some(message) = message.as_deref().filter(|_| outcome != "delivered") {
                    line += &format!(": {message}");
                }
                line
            }
            HistoryEvent::DeadLettered {
                delivery_id,
                reason,
                attempts,
            } => {
                format!("{delivery_id} became a dead letter ({reason}) after {attempts} attempt(s)")
            }
            HistoryEvent::Held { delivery_id } => {
                format!("{delivery_id} held: the integration is paused (no call, no attempt spent)")
            }
            HistoryEvent::Replayed { delivery_id, by } => {
                format!("dead letter {delivery_id} replayed by {by}")
            }
            HistoryEvent::Purged { delivery_id, by } => {
                format!("dead letter {delivery_id} purged by {by}")
            }
            HistoryEvent::Paused { by } => format!("integration paused by {by}"),
            HistoryEvent::Resumed { by, released } => {
                format!("integration resumed by {by}; {released} held convergence(s) released")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_their_kind_on_the_wire() {
        let entry = HistoryEntry::new(
            1_700_000_000_123,
            HistoryEvent::Attempt {
                delivery_id: "01J".into(),
                attempt: 2,
                desired: "present".into(),
                reason: Some("lease L1 grants access".into()),
                method: Some("POST".into()),
                status: Some(503),
                request_id: Some("req-9".into()),
                latency_ms: Some(12),
                outcome: "retry".into(),
                retry_at: Some(1_700_000_002_000),
                dead_reason: None,
                error: Some("http".into()),
                error_code: None,
                message: Some("OpenApp answered 503".into()),
            },
        );
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["kind"], "attempt");
        assert_eq!(json["at"], 1_700_000_000_123_i64);
        assert_eq!(json["status"], 503);
        assert!(json.get("dead_reason").is_none(), "{json}");
        let back: HistoryEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back, entry);
        assert_eq!(back.kind(), "attempt");
        let line = back.describe();
        assert!(line.contains("POST answered 503 in 12 ms"), "{line}");
        assert!(line.contains("→ retry"), "{line}");
    }

    #[test]
    fn emails_are_masked_unless_asked_for() {
        let entry = HistoryEntry::new(
            1,
            HistoryEvent::IdentityResolved {
                source: "pms".into(),
                email: "ada.lovelace@example.com".into(),
            },
        );
        assert!(entry.describe().contains("ada.lovelace@example.com"));
        let masked = entry.masked().describe();
        assert!(!masked.contains("lovelace"), "{masked}");
        assert!(masked.contains("example.com"), "{masked}");
    }

    #[test]
    fn every_kind_describes_itself() {
        let kinds = [
            HistoryEvent::Held {
                delivery_id: "d".into(),
            },
            HistoryEvent::Paused {
                by: "cli:ops".into(),
            },
            HistoryEvent::Resumed {
                by: "cli:ops".into(),
                released: 3,
            },
            HistoryEvent::Replayed {
                delivery_id: "d".into(),
                by: "token:abc".into(),
            },
            HistoryEvent::DeadLettered {
                delivery_id: "d".into(),
                reason: "crash_loop".into(),
                attempts: 3,
            },
        ];
        for event in kinds {
            let entry = HistoryEntry::new(0, event);
            let json = serde_json::to_value(&entry).unwrap();
            assert_eq!(json["kind"], entry.kind());
            assert!(!entry.describe().is_empty());
        }
    }
}
