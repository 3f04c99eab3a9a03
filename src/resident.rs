//! Resident state: what lease-sync knows about one person in one building, and what OpenApp
//! should therefore show. Pure code; the Redis side lives in [`crate::queue::residents`].
//!
//! OpenApp's DELETE removes the whole person from the building, not one lease, so workers never
//! act on a single event. Each event is folded into the resident's state (per lease, the
//! newest event wins, by [`Version`]), and a job makes OpenApp match the *desired* state:
//! present while any lease grants access now. Order of arrival does not matter; replays and
//! retries of old events converge to today's truth.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{EventType, LeaseEvent};

/// Whether a lease was last heard of as signed or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Signed (grants access within its window).
    Active,
    /// Ended; a tombstone that only a newer event can overturn.
    Ended,
}

/// The version of an event for one lease: its time, then `ended` over `signed`, then the
/// event id, so any two distinct events are ordered the same way on every machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// `occurred_at`, ms since the epoch.
    pub occurred_at: i64,
    /// 0 for `lease.signed`, 1 for `lease.ended`: at equal times, ended wins.
    pub rank: u8,
    /// The event id, the last tie-breaker.
    pub event_id: String,
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.occurred_at, self.rank, &self.event_id).cmp(&(
            other.occurred_at,
            other.rank,
            &other.event_id,
        ))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What lease-sync recorded for one lease: the newest event's effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Signed or ended.
    pub state: LeaseState,
    /// Access begins (ms since the epoch); `None` = already.
    pub starts_at: Option<i64>,
    /// Access ends (ms since the epoch); `None` = open-ended.
    pub ends_at: Option<i64>,
    /// `occurred_at` of the event recorded (ms).
    pub occurred_at: i64,
    /// See [`Version::rank`].
    pub rank: u8,
    /// The event recorded.
    pub event_id: String,
    /// Its source.
    pub source: String,
    /// The source's building id.
    pub property_id: String,
}

fn millis(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl LeaseRecord {
    /// The record `event` leaves for its lease. On `lease.ended` without `access.ends_at`
    /// access ends when the event occurred, i.e. at once.
    pub fn from_event(event: &LeaseEvent, source: &str) -> Self {
        let access = event.access.as_ref();
        let starts_at = access.and_then(|a| a.starts_at).map(millis);
        let given_end = access.and_then(|a| a.ends_at).map(millis);
        let (state, rank, ends_at) = match event.event_type {
            EventType::LeaseSigned => (LeaseState::Active, 0, given_end),
            EventType::LeaseEnded => (
                LeaseState::Ended,
                1,
                Some(given_end.unwrap_or(millis(event.occurred_at))),
            ),
        };
        Self {
            state,
            starts_at,
            ends_at,
            occurred_at: millis(event.occurred_at),
            rank,
            event_id: event.id.clone(),
            source: source.to_owned(),
            property_id: event.lease.property_id.clone(),
        }
    }

    /// This record's version.
    pub fn version(&self) -> Version {
        Version {
            occurred_at: self.occurred_at,
            rank: self.rank,
            event_id: self.event_id.clone(),
        }
    }

    /// Whether this lease grants access at `now` (ms): inside `[starts_at, ends_at)`. An ended
    /// lease grants access only until its `ends_at` (notice given, not yet moved out).
    pub fn grants_access(&self, now: i64) -> bool {
        let started = self.starts_at.is_none_or(|s| s <= now);
        let not_ended = self.ends_at.is_none_or(|e| now < e);
        started && not_ended
    }
}

/// Whether an incoming record replaces the recorded one: a strictly newer version does, and
/// so does anything when the recorded one occurred after `future_cutoff` (ms; see
/// [`future_cutoff`]). Ingest refuses events dated that far ahead, so such a record was
/// written by a sender whose clock ran ahead before that check existed; trusting it would let
/// one bad timestamp freeze the lease until that time. The enqueue script
/// (`queue/lua/enqueue.lua`) applies the same rule in Redis.
pub fn supersedes(
    incoming: &LeaseRecord,
    recorded: Option<&LeaseRecord>,
    future_cutoff: i64,
) -> bool {
    recorded.is_none_or(|r| r.occurred_at > future_cutoff || incoming.version() > r.version())
}

/// The latest version time (ms) a lease record may have at `now_ms` to be trusted: now plus
/// the source's allowed clock skew.
pub fn future_cutoff(now_ms: i64, max_clock_skew: std::time::Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(max_clock_skew.as_millis()).unwrap_or(i64::MAX))
}

/// What OpenApp should show for a resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// A building user.
    Present,
    /// Not a building user; remove them.
    Absent,
    /// No lease grants access, but lease-sync never added this person and no lease of theirs
    /// ended: their access (if any) is not ours to take away.
    Untouched,
}

/// The last state lease-sync applied in OpenApp for a resident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Present or absent.
    pub present: bool,
    /// The state version it was computed from.
    pub version: u64,
    /// When (ms since the epoch).
    pub at: i64,
}

/// Someone OpenApp shows in a building: a person and one role they hold there (a row of
/// `GET /integrations/{id}/building-users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildingUser {
    /// The OpenApp user.
    pub user_id: String,
    /// The role, e.g. `virtual_access:integration:{id}:resident`; empty if OpenApp sent none.
    pub role: String,
}

/// Everything lease-sync knows about one person in one building.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidentState {
    /// OpenApp integration (the building).
    pub integration_id: String,
    /// OpenApp user.
    pub user_id: String,
    /// Incremented by every folded event; a worker re-converges if it moved during a call.
    pub version: u64,
    /// Leases by id.
    pub leases: BTreeMap<String, LeaseRecord>,
    /// Last applied state, if any.
    pub applied: Option<Applied>,
    /// Whether lease-sync ever added this person (so it may remove them).
    pub managed: bool,
    /// When the next scheduled convergence is due (ms), if one is.
    pub next_check: Option<i64>,
}

impl ResidentState {
    /// What OpenApp should show at `now` (ms).
    pub fn desired(&self, now: i64) -> Desired {
        if self.leases.values().any(|l| l.grants_access(now)) {
            Desired::Present
        } else if self.managed || self.leases.values().any(|l| l.state == LeaseState::Ended) {
            Desired::Absent
        } else {
            Desired::Untouched
        }
    }

    /// Why [`Self::desired`] says what it says at `now`, for a person: the lease that grants
    /// access and until when, or the lease that ended it.
    pub fn explain(&self, now: i64) -> String {
        let when = |ms: i64| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| format!("{ms} ms"))
        };
        if let Some((id, lease)) = self.leases.iter().find(|(_, l)| l.grants_access(now)) {
            return match lease.ends_at {
                Some(end) => format!(
                    "lease {id} of {} grants access until {}",
                    lease.source,
                    when(end)
                ),
                None => format!("lease {id} of {} grants access, open-ended", lease.source),
            };
        }
        let upcoming = self
            .leases
            .iter()
            .filter_map(|(id, l)| {
                l.starts_at
                    .filter(|s| *s > now && l.state == LeaseState::Active)
                    .map(|s| (id, s))
            })
            .min_by_key(|(_, s)| *s);
        let ended = self
            .leases
            .iter()
            .filter(|(_, l)| l.state == LeaseState::Ended || l.ends_at.is_some_and(|e| e <= now))
            .max_by_key(|(_, l)| l.ends_at.unwrap_or(l.occurred_at));
        let mut why = match ended {
            Some((id, l)) => format!(
                "no lease grants access now; lease {id} of {} ended {}",
                l.source,
                when(l.ends_at.unwrap_or(l.occurred_at))
            ),
            None if self.leases.is_empty() => "no lease on record".to_owned(),
            None => "no lease grants access now".to_owned(),
        };
        if let Some((id, start)) = upcoming {
            why += &format!("; lease {id} grants access from {}", when(start));
        }
        if self.desired(now) == Desired::Untouched {
            why += "; lease-sync never added this person, so it leaves their access alone";
        }
        why
    }

    /// The next moment after `now` at which [`Self::desired`] may change: the earliest future
    /// `starts_at` or `ends_at` of any lease.
    pub fn next_transition(&self, now: i64) -> Option<i64> {
        self.leases
            .values()
            .flat_map(|l| [l.starts_at, l.ends_at])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: LeaseState, occurred_at: i64, event_id: &str) -> LeaseRecord {
        LeaseRecord {
            state,
            starts_at: None,
            ends_at: if state == LeaseState::Ended {
                Some(occurred_at)
            } else {
                None
            },
            occurred_at,
            rank: u8::from(state == LeaseState::Ended),
            event_id: event_id.into(),
            source: "s".into(),
            property_id: "P".into(),
        }
    }

    fn resident(leases: &[(&str, LeaseRecord)], managed: bool) -> ResidentState {
        ResidentState {
            integration_id: "i".into(),
            user_id: "u".into(),
            version: 1,
            leases: leases
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            applied: None,
            managed,
            next_check: None,
        }
    }

    /// Far beyond every record these tests write: no record counts as future-dated.
    const NO_CUTOFF: i64 = i64::MAX;

    fn supersedes(incoming: &LeaseRecord, recorded: Option<&LeaseRecord>) -> bool {
        super::supersedes(incoming, recorded, NO_CUTOFF)
    }

    #[test]
    fn explain_names_the_lease_that_grants_or_ended_access() {
        let mut state = ResidentState {
            integration_id: "i".into(),
            user_id: "u".into(),
            version: 1,
            leases: BTreeMap::new(),
            applied: None,
            managed: false,
            next_check: None,
        };
        assert!(state.explain(0).contains("no lease on record"));
        assert!(state.explain(0).contains("never added"));
        let mut signed = record(LeaseState::Active, 1_000, "e1");
        signed.ends_at = Some(1_800_000_000_000);
        state.leases.insert("L-1".into(), signed);
        let why = state.explain(2_000);
        assert!(
            why.starts_with("lease L-1 of s grants access until 2027-01-15T08:00:00Z"),
            "{why}"
        );
        state
            .leases
            .insert("L-1".into(), record(LeaseState::Ended, 5_000, "e2"));
        state.managed = true;
        let why = state.explain(6_000);
        assert!(
            why.contains("lease L-1 of s ended 1970-01-01T00:00:05Z"),
            "{why}"
        );
        assert!(!why.contains("never added"), "{why}");
    }

    #[test]
    fn newer_events_win_and_ended_wins_ties() {
        let signed = record(LeaseState::Active, 10, "a");
        let ended = record(LeaseState::Ended, 10, "b");
        assert!(supersedes(&ended, Some(&signed)));
        assert!(
            !supersedes(&signed, Some(&ended)),
            "a tie goes to ended, whatever the order"
        );
        let later_signed = record(LeaseState::Active, 11, "c");
        assert!(
            supersedes(&later_signed, Some(&ended)),
            "only a newer event revives a lease"
        );
        assert!(
            !supersedes(&signed, Some(&signed)),
            "the same event twice changes nothing"
        );
        assert!(supersedes(&signed, None));
        // Equal time and type: the event id decides, the same way everywhere.
        assert!(supersedes(
            &record(LeaseState::Active, 10, "z"),
            Some(&signed)
        ));
    }

    #[test]
    fn one_ended_lease_of_two_keeps_the_resident() {
        let state = resident(
            &[
                ("3A", record(LeaseState::Ended, 5, "e")),
                ("5B", record(LeaseState::Active, 4, "s")),
            ],
            true,
        );
        assert_eq!(state.desired(100), Desired::Present);
    }

    #[test]
    fn windows_decide_access_and_the_next_transition() {
        let mut lease = record(LeaseState::Active, 0, "s");
        lease.starts_at = Some(100);
        lease.ends_at = Some(200);
        let state = resident(&[("L", lease)], false);
        assert_eq!(
            state.desired(50),
            Desired::Untouched,
            "not yet started, never added"
        );
        assert_eq!(state.next_transition(50), Some(100));
        assert_eq!(state.desired(100), Desired::Present);
        assert_eq!(state.next_transition(100), Some(200));
        assert_eq!(
            state.desired(200),
            Desired::Untouched,
            "expired, but never added by us"
        );
        assert_eq!(state.next_transition(200), None);

        // Notice given: ended, but access until move-out.
        let mut notice = record(LeaseState::Ended, 0, "e");
        notice.ends_at = Some(300);
        let state = resident(&[("L", notice)], true);
        assert_eq!(state.desired(299), Desired::Present);
        assert_eq!(state.desired(300), Desired::Absent);
    }

    #[test]
    fn people_lease_sync_never_added_are_left_alone_without_an_ended_lease() {
        let mut future = record(LeaseState::Active, 0, "s");
        future.starts_at = Some(1_000);
        assert_eq!(
            resident(&[("L", future.clone())], false).desired(0),
            Desired::Untouched
        );
        assert_eq!(resident(&[("L", future)], true).desired(0), Desired::Absent);
        assert_eq!(
            resident(&[("L", record(LeaseState::Ended, 0, "e"))], false).desired(1),
            Desired::Absent
        );
    }

    #[test]
    fn a_record_dated_beyond_the_skew_never_outranks_an_incoming_event() {
        let skew = std::time::Duration::from_secs(300);
        let now = 1_800_000_000_000;
        let cutoff = future_cutoff(now, skew);
        assert_eq!(cutoff, now + 300_000);
        let from_the_future = record(LeaseState::Active, 253_370_764_800_000, "x"); // 9999
        let current = record(LeaseState::Ended, now, "e");
        assert!(super::supersedes(&current, Some(&from_the_future), cutoff));
        assert!(
            !super::supersedes(&current, Some(&from_the_future), i64::MAX),
            "without the cutoff the future record wins, as it did before"
        );
        // Within the skew, the version order holds: a record 200 s ahead still wins.
        let slightly_ahead = record(LeaseState::Active, now + 200_000, "s");
        assert!(!super::supersedes(&current, Some(&slightly_ahead), cutoff));
        assert_eq!(future_cutoff(now, std::time::Duration::MAX), i64::MAX);
    }
}
