//! The delivery ledger: one Redis hash per delivery, with its attempt records.
//!
//! A delivery's hash names the one job allowed to work on it (`current_task`); every
//! other run of a task for it (a duplicate from orphan recovery, a task superseded by a retry
//! or replay) is skipped as stale. Attempts are counted before the call and finished after it,
//! each step one Lua script.

use serde::{Deserialize, Serialize};

use std::collections::HashMap;
use std::time::Duration;

use super::batch::ScriptCall;
use super::residents::{LockPlace, ResidentLock};
use super::{DeliveryJob, Job, JobQueue, QueueError, now_ms};
use crate::resident::ResidentState;

/// How long the ledger of a completed delivery stays readable, for inspection.
pub const DELIVERED_RETENTION_SECS: u64 = 86_400;
use crate::retry::DeadReason;

/// One attempt, as recorded. Fields after `outcome` are filled when the attempt ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1-based attempt number (absent on replay markers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// `started` (in progress), `delivered`, `retry`, `dead`, `crashed`, or `replayed`.
    #[serde(default)]
    pub outcome: String,
    /// When the call started (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// When it ended (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// What the attempt did: `add`, `remove`, or `none` (nothing to change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// HTTP status OpenApp answered, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Error class: `transport`, `timeout`, `http`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// OpenApp's `error_code`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// What went wrong, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// OpenApp's `X-Request-Id` or correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `Retry-After` as OpenApp sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Wait chosen before the next attempt (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Upper bound of the jitter window that wait was drawn from (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_cap_ms: Option<u64>,
    /// The job that ran the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// On replay markers: who replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// On replay markers: when (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
}

/// What [`JobQueue::begin_attempt`] allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Make the call; this is attempt number `.0`, counted as started at `.1` (ms since the
    /// epoch): [`JobQueue::finish_attempt`] writes the whole record from those.
    Run(u32, i64),
    /// This task is not the delivery's current one: skip it.
    Stale,
    /// The budget was already used up by crashed attempts: now a dead letter.
    DeadLettered {
        /// Why.
        reason: DeadReason,
        /// Attempts made.
        attempts: u32,
    },
}

/// How claiming a convergence went ([`JobQueue::claim_convergence`]).
#[derive(Debug)]
pub enum Claim {
    /// Make the call: attempt number `attempt`, under `lock`, from `state` (read under it).
    Run {
        /// The attempt's number.
        attempt: u32,
        /// The resident's lock, held.
        lock: ResidentLock,
        /// The resident's state, read under the lock.
        state: Option<ResidentState>,
        /// When the attempt was counted as started (ms since the epoch).
        started_at: i64,
    },
    /// Another worker holds the resident; its lock lives this much longer. Nothing counted.
    Busy {
        /// Milliseconds the lock still lives.
        lock_remaining_ms: u64,
    },
    /// This task is not the delivery's current one: skip it.
    Stale,
    /// The budget was already used up by crashed attempts: now a dead letter.
    DeadLettered {
        /// Why.
        reason: DeadReason,
        /// Attempts made.
        attempts: u32,
    },
    /// The resident's integration is paused: the job was moved to its held list (released
    /// on resume). Nothing counted, no lock taken.
    Held,
}

/// The history entry of an attempt, for [`JobQueue::finish_attempt`].
#[derive(Debug, Clone, Copy)]
pub struct AttemptHistory<'a> {
    /// The resident's building.
    pub integration_id: &'a str,
    /// The resident.
    pub user_id: &'a str,
    /// The entry; the script sets its outcome to `superseded` or `stale` when it comes to that.
    pub entry: &'a crate::history::HistoryEntry,
    /// On a convergence's first attempt, the fold that queued it ([`super::fold_history_entry`]),
    /// written with the attempt's entry: a happy-path job appends to the history once.
    pub fold: Option<&'a crate::history::HistoryEntry>,
}

/// A convergence's call that succeeded, recorded with the attempt's outcome
/// ([`JobQueue::finish_attempt`]), so a happy-path job needs no round trip of its own for it.
#[derive(Debug, Clone, Copy)]
pub struct SucceededCall<'a> {
    /// The resident's building.
    pub integration_id: &'a str,
    /// The resident.
    pub user_id: &'a str,
    /// What OpenApp was made to show: present, absent, or `None` when no call was needed.
    /// Adding someone makes them managed: from then on lease-sync may also remove them.
    pub shown: Option<bool>,
    /// The state version the call was made for.
    pub version: u64,
    /// Finish even if an event moved the state during the call (the last round).
    pub finish_anyway: bool,
    /// When delivered: the next lease-window boundary of the resident (ms), at which a
    /// convergence of `job` is scheduled — unless one is already due no later.
    pub next_check: Option<(&'a DeliveryJob, i64)>,
}

/// What [`JobQueue::finish_attempt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The outcome was recorded and carried out; `scheduled` when a convergence at the next
    /// lease-window boundary was scheduled with it.
    Recorded {
        /// Whether a convergence was scheduled.
        scheduled: bool,
    },
    /// The task turned out to be stale: nothing else was written.
    Stale,
    /// An event moved the resident's state during the call ([`SucceededCall`] given): what was
    /// applied is recorded, nothing else (the lock is kept); converge again.
    StateMoved,
}

/// What to do once an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The delivery is complete.
    Delivered,
    /// Try again at `due_ms` (ms since the epoch).
    Retry {
        /// When the retry becomes due.
        due_ms: i64,
    },
    /// Give up; keep it as a dead letter.
    DeadLetter(DeadReason),
}

impl JobQueue {
    /// Counts attempt number n of delivery `delivery_id` run by job `task_id`, before
    /// the call.
    pub async fn begin_attempt(
        &self,
        delivery_id: &str,
        task_id: &str,
        max_attempts: u32,
    ) -> Result<Begin, QueueError> {
        let mut conn = self.conn.clone();
        let now = now_ms();
        let (kind, attempts, reason): (String, u32, String) = self
            .scripts
            .begin
            .key(self.keys.delivery(delivery_id))
            .key(self.keys.attempts(delivery_id))
            .key(self.keys.dead_letters())
            .key(self.keys.stats())
            .key(self.keys.in_flight())
            .key(self.keys.job_data())
            .arg(task_id)
            .arg(max_attempts)
            .arg(now)
            .arg(delivery_id)
            .invoke_async(&mut conn)
            .await?;
        match kind.as_str() {
            "run" => Ok(Begin::Run(attempts, now)),
            "stale" => Ok(Begin::Stale),
            "dead" => Ok(Begin::DeadLettered {
                reason: dead_reason(&reason)?,
                attempts,
            }),
            other => Err(QueueError::Protocol(format!(
                "begin_attempt answered `{other}`"
            ))),
        }
    }

    /// Claims convergence `job` as job `task_id` in one round trip: takes its
    /// resident's lock for `lock_ttl`, counts the attempt as [`JobQueue::begin_attempt`]
    /// does, and reads the resident's state under the lock. The lock is only kept with
    /// [`Claim::Run`].
    pub async fn claim_convergence(
        &self,
        job: &DeliveryJob,
        task_id: &str,
        max_attempts: u32,
        lock_ttl: Duration,
    ) -> Result<Claim, QueueError> {
        let lock_key = self.keys.resident_lock(&job.integration_id, &job.user_id);
        let token = ulid::Ulid::new().to_string();
        let ttl_ms = u64::try_from(lock_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let now = now_ms();
        let mut call = ScriptCall::default();
        // Shared: what the batch's other claims pass too (batch.rs).
        call.key(self.keys.delivery(&job.delivery_id))
            .key(self.keys.attempts(&job.delivery_id))
            .shared_key(self.keys.dead_letters())
            .shared_key(self.keys.stats())
            .shared_key(self.keys.in_flight())
            .shared_key(self.keys.job_data())
            .key(lock_key.as_str())
            .key(self.keys.resident(&job.integration_id, &job.user_id))
            .key(self.keys.history(&job.integration_id, &job.user_id))
            .shared_key(self.keys.paused())
            .shared_key(self.keys.held(&job.integration_id))
            .shared_key(self.keys.layout())
            .arg(task_id)
            .shared_arg(max_attempts)
            .arg(now)
            .arg(&job.delivery_id)
            .arg(&token)
            .shared_arg(ttl_ms)
            .shared_arg(&job.integration_id)
            .shared_arg(self.history_limits.max_entries)
            .shared_arg(self.history_limits.max_age_ms())
            .arg(match super::fold_history_entry(job) {
                Some(entry) => serde_json::to_string(&entry)?,
                None => String::new(),
            });
        // {kind, n, reason, resident hash} and, with `run`, where the lock was taken.
        let mut answer: Vec<redis::Value> =
            redis::from_redis_value(self.claim_batcher().call(call).await?)?;
        let place = match answer.len() {
            5 => match answer.pop().map(redis::from_redis_value::<String>) {
                Some(Ok(place)) if place == "hash" => LockPlace::ResidentHash,
                _ => LockPlace::OwnKey,
            },
            _ => LockPlace::OwnKey,
        };
        let (kind, n, reason, hash): (String, i64, String, HashMap<String, String>) =
            redis::from_redis_value(redis::Value::Array(answer))?;
        let attempts = u32::try_from(n).unwrap_or(0);
        match kind.as_str() {
            "run" => Ok(Claim::Run {
                attempt: attempts,
                lock: ResidentLock {
                    key: match place {
                        LockPlace::ResidentHash => {
                            self.keys.resident(&job.integration_id, &job.user_id)
                        }
                        LockPlace::OwnKey => lock_key,
                    },
                    token,
                    ttl_ms,
                    place,
                },
                state: super::residents::parse_resident(&job.integration_id, &job.user_id, &hash)?,
                started_at: now,
            }),
            "busy" => Ok(Claim::Busy {
                lock_remaining_ms: u64::try_from(n).unwrap_or(0),
            }),
            "stale" => Ok(Claim::Stale),
            "held" => Ok(Claim::Held),
            "dead" => Ok(Claim::DeadLettered {
                reason: dead_reason(&reason)?,
                attempts,
            }),
            other => Err(QueueError::Protocol(format!(
                "begin_attempt answered `{other}`"
            ))),
        }
    }

    /// Records how the attempt of `task_id` of delivery `delivery_id` ended and carries out
    /// `finish`, in one step. `result` is the attempt's whole record — its number, task and
    /// start included ([`Begin::Run`], [`Claim::Run`]); its outcome and end are set here — and
    /// is added to the delivery's attempt log (the claim only marked the attempt open); also
    /// releases `release`, a resident lock, if given and still ours (stale task or not). With `applied`, first records what a convergence's
    /// call made OpenApp show, and stops there if an event moved the state meanwhile. With
    /// `history`, the attempt's entry goes into the resident's history in the same step.
    #[expect(
        clippy::too_many_arguments,
        reason = "one script takes the whole outcome of an attempt; a struct would only rename them"
    )]
    pub async fn finish_attempt(
        &self,
        delivery_id: &str,
        task_id: &str,
        result: &AttemptRecord,
        finish: &Finish,
        auth_failure: bool,
        release: Option<&ResidentLock>,
        applied: Option<&SucceededCall<'_>>,
        history: Option<AttemptHistory<'_>>,
    ) -> Result<Finished, QueueError> {
        let (kind, retry_task, due, reason) = match finish {
            Finish::Delivered => ("delivered", String::new(), 0, ""),
            Finish::Retry { due_ms } => ("retry", super::job_id_ready_at(*due_ms), *due_ms, ""),
            Finish::DeadLetter(reason) => ("dead", String::new(), 0, reason.as_str()),
        };
        let now = now_ms();
        let record = AttemptRecord {
            outcome: kind.to_owned(),
            finished_at: Some(now),
            ..result.clone()
        };
        let mut invocation = ScriptCall::default();
        // Shared: what the batch's other finishes pass too (batch.rs), the happy path's
        // constants among them.
        invocation
            .key(self.keys.delivery(delivery_id))
            .key(self.keys.attempts(delivery_id))
            .shared_key(self.keys.dead_letters())
            .shared_key(self.keys.stats())
            .shared_key(self.keys.job_data())
            .shared_key(self.keys.in_flight())
            .shared_key(self.keys.scheduled());
        match release {
            Some(lock) => invocation.key(lock.key.as_str()),
            // Without a lock to release the script leaves this key alone; any key will do.
            None => invocation.shared_key(self.keys.stats()),
        };
        invocation
            .arg(task_id)
            .arg(now)
            .shared_arg(kind)
            .arg(serde_json::to_string(&record)?)
            .arg(delivery_id)
            .shared_arg(retry_task)
            .shared_arg(due)
            .shared_arg(reason)
            .shared_arg(if auth_failure { "1" } else { "0" })
            .shared_arg(DELIVERED_RETENTION_SECS)
            .arg(release.map_or("", |lock| lock.token.as_str()));
        match &history {
            Some(history) => invocation
                .key(self.keys.history(history.integration_id, history.user_id))
                .arg(serde_json::to_string(history.entry)?),
            // No history to write: any key will do.
            None => invocation.shared_key(self.keys.stats()).shared_arg(""),
        };
        invocation
            .shared_arg(self.history_limits.max_entries)
            .shared_arg(self.history_limits.max_age_ms());
        match history.as_ref().and_then(|h| h.fold) {
            Some(fold) => invocation.arg(fold.at).arg(serde_json::to_string(fold)?),
            None => invocation.shared_arg("").shared_arg(""),
        };
        if let Some(applied) = applied {
            invocation
                .key(self.keys.resident(applied.integration_id, applied.user_id))
                .shared_key(self.keys.residents_index(applied.integration_id))
                .shared_arg(match applied.shown {
                    Some(true) => "present",
                    Some(false) => "absent",
                    None => "check",
                })
                .arg(applied.version)
                .arg(applied.user_id)
                .shared_arg(if applied.finish_anyway { "1" } else { "0" });
            if let Some((job, due_ms)) = applied.next_check {
                let mut scheduled = job.clone();
                scheduled.delivery_id = ulid::Ulid::new().to_string();
                scheduled.trigger = Some("schedule".into());
                invocation
                    .key(self.keys.delivery(&scheduled.delivery_id))
                    .shared_key(self.keys.convergences())
                    .shared_key(self.keys.layout())
                    .arg(due_ms)
                    .arg(super::job_id_ready_at(due_ms))
                    .arg(serde_json::to_string(&scheduled)?);
            }
        }
        // Always the last two arguments, after the optional ones.
        invocation
            .shared_arg(release.map_or("key", |lock| lock.place.as_str()))
            .shared_arg(release.map_or(0, |lock| lock.ttl_ms));
        let answer: String =
            redis::from_redis_value(self.finish_batcher().call(invocation).await?)?;
        Ok(match answer.as_str() {
            "stale" => Finished::Stale,
            "moved" => Finished::StateMoved,
            "delivered+scheduled" => Finished::Recorded { scheduled: true },
            _ => Finished::Recorded { scheduled: false },
        })
    }
}

impl JobQueue {
    /// The ledger of one delivery: its status (`pending`, `delivered`, `dead`) and every
    /// attempt record ([`ledger_records`]), oldest first, ending with a `started` record for an attempt in
    /// progress (the ledger marks it open: no record is written until it ends). `None` when
    /// unknown (or expired after delivery).
    pub async fn delivery_log(
        &self,
        delivery_id: &str,
    ) -> Result<Option<(String, Vec<AttemptRecord>)>, QueueError> {
        let mut conn = self.conn.clone();
        let (hash, list): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .cmd("HGETALL")
            .arg(self.keys.delivery(delivery_id))
            .cmd("LRANGE")
            .arg(self.keys.attempts(delivery_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let Some(status) = hash.get("status").cloned() else {
            return Ok(None);
        };
        let open = open_attempt(
            hash.get("attempts").and_then(|v| v.parse().ok()),
            hash.get("started_at").and_then(|v| v.parse().ok()),
            hash.get("current_task").cloned(),
        );
        let mut records: Vec<AttemptRecord> = ledger_records(&hash, list)
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        records.extend(open);
        Ok(Some((status, records)))
    }

    /// Ids of the deliveries of one event that are still in the ledger (for tests and tools).
    pub async fn deliveries_of(&self, event_id: &str) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let prefix = format!("{}:", self.keys.delivery_prefix());
        let pattern = format!("{prefix}*");
        let mut found = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500);
            let (next, keys): (u64, Vec<String>) =
                redis::from_redis_value(self.conn.on_primary_of(&pattern, &scan).await?)?;
            for key in keys.iter().filter(|k| !k.ends_with(":attempts")) {
                let (job, task, event): (Option<String>, Option<String>, Option<String>) =
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(&["job", "current_task", "event"])
                        .query_async(&mut conn)
                        .await?;
                // A queued job's payload is in the job data hash (layout 3), a dead letter's
                // and a layout-2 delivery's in the ledger.
                let job = match (job, task.filter(|t| !t.is_empty())) {
                    (Some(job), _) => Some(job),
                    (None, Some(task)) => {
                        redis::cmd("HGET")
                            .arg(self.keys.job_data())
                            .arg(task)
                            .query_async(&mut conn)
                            .await?
                    }
                    (None, None) => None,
                };
                let of_event = match job.and_then(|j| serde_json::from_str::<Job>(&j).ok()) {
                    Some(job) => job.event_id() == event_id,
                    // Delivered: only the event it came from is left.
                    None => event
                        .and_then(|e| serde_json::from_str::<serde_json::Value>(&e).ok())
                        .is_some_and(|e| e["id"] == event_id),
                };
                if of_event && let Some(id) = key.strip_prefix(&prefix) {
                    found.push(id.to_owned());
                }
            }
            if next == 0 {
                return Ok(found);
            }
            cursor = next;
        }
    }
}

/// The attempt records of a delivery (JSON), oldest first, from its ledger `hash` and its
/// attempts `list`. A delivery queued by this release keeps them in its hash (`record:1` ..
/// `record:<records>`, `lua/finish_attempt.lua`), one queued by an earlier release in its
/// list. Both hold some only when workers of two releases ran its attempts during a rolling
/// upgrade; they are then put in time order. A record that does not parse stays where it is
/// in its own store's order.
pub(crate) fn ledger_records(hash: &HashMap<String, String>, list: Vec<String>) -> Vec<String> {
    let count = hash
        .get("records")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let in_hash = (1..=count).filter_map(|i| hash.get(&format!("record:{i}")).cloned());
    if list.is_empty() {
        return in_hash.collect();
    }
    let mut records = list;
    let from_list = records.len();
    records.extend(in_hash);
    if records.len() > from_list && from_list > 0 {
        // When each record happened; a stable sort keeps each store's order among equals.
        let at = |r: &String| {
            serde_json::from_str::<AttemptRecord>(r)
                .ok()
                .and_then(|r| r.started_at.or(r.at).or(r.finished_at))
                .unwrap_or(i64::MIN)
        };
        records.sort_by_key(at);
    }
    records
}

/// The record of the attempt a ledger marks open (`started_at` set, not `0`), as `started`.
fn open_attempt(
    attempts: Option<u32>,
    started_at: Option<i64>,
    task: Option<String>,
) -> Option<AttemptRecord> {
    let started_at = started_at.filter(|&at| at != 0)?;
    Some(AttemptRecord {
        attempt: attempts,
        outcome: "started".into(),
        started_at: Some(started_at),
        task: task.filter(|t| !t.is_empty()),
        ..AttemptRecord::default()
    })
}

/// The dead-letter reason a script answered.
fn dead_reason(reason: &str) -> Result<DeadReason, QueueError> {
    reason
        .parse()
        .map_err(|e: crate::retry::UnknownDeadReason| QueueError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(attempt: u32, outcome: &str, started_at: i64) -> String {
        serde_json::to_string(&AttemptRecord {
            attempt: Some(attempt),
            outcome: outcome.into(),
            started_at: Some(started_at),
            ..AttemptRecord::default()
        })
        .expect("json")
    }

    fn ledger(records: &[String]) -> HashMap<String, String> {
        let mut hash: HashMap<String, String> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("record:{}", i + 1), r.clone()))
            .collect();
        hash.insert("records".into(), records.len().to_string());
        hash.insert("status".into(), "pending".into());
        hash
    }

    #[test]
    fn records_come_from_the_ledger_hash_or_the_list_in_time_order() {
        let (a, b, c) = (
            record(1, "retry", 10),
            record(2, "crashed", 20),
            record(3, "delivered", 30),
        );
        // This release: the hash only, by number (not by field order).
        assert_eq!(
            ledger_records(&ledger(&[a.clone(), b.clone(), c.clone()]), vec![]),
            [a.clone(), b.clone(), c.clone()]
        );
        // An earlier release: the list only, as stored.
        let mut old = ledger(&[]);
        old.remove("records");
        assert_eq!(
            ledger_records(&old, vec![c.clone(), a.clone()]),
            [c.clone(), a.clone()],
            "one store's order is kept"
        );
        // Both (a rolling upgrade): by time.
        assert_eq!(
            ledger_records(&ledger(&[a.clone(), c.clone()]), vec![b.clone()]),
            [a.clone(), b.clone(), c]
        );
        // A count beyond the fields present, or one that does not parse, loses nothing else.
        let mut hash = ledger(std::slice::from_ref(&a));
        hash.insert("records".into(), "3".into());
        assert_eq!(ledger_records(&hash, vec![]), [a]);
        hash.insert("records".into(), "x".into());
        assert_eq!(ledger_records(&hash, vec![b.clone()]), [b]);
    }

    #[test]
    fn an_attempt_the_ledger_marks_open_reads_as_started() {
        let open = open_attempt(Some(3), Some(1_764_000_000_000), Some("t-3".into()))
            .expect("an open attempt");
        assert_eq!(
            (open.attempt, open.outcome.as_str(), open.started_at),
            (Some(3), "started", Some(1_764_000_000_000))
        );
        assert_eq!(open.task.as_deref(), Some("t-3"));
        // `0` or no field: nothing in progress.
        assert_eq!(open_attempt(Some(3), Some(0), Some("t".into())), None);
        assert_eq!(open_attempt(Some(3), None, None), None);
        // A finished delivery keeps no current task.
        let open = open_attempt(Some(1), Some(5), Some(String::new())).expect("open");
        assert_eq!(open.task, None);
    }
}
