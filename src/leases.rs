//! Operator actions on one lease: who holds lease-sync's record of it, and forgetting that
//! record (a *reset*).
//!
//! A lease record can be wrong in a way no event repairs: written by a sender whose clock
//! ran far ahead (before ingest refused such events), or simply by a sender's mistake. A
//! reset removes the record of one lease, from one source, from every resident holding it,
//! and converges each of those residents again through the normal pipeline: OpenApp then
//! shows what their *other* leases say. The next event about the lease, or the next
//! reconciliation, records it afresh. Resets are audited like replays and purges.
//!
//! The records are found through the buildings the source maps today (its
//! `[[sources.properties]]`); a building removed from the configuration is not searched.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Settings;
use crate::dead_letters::{AuditRecord, AuditedLease, DeadLetters};
use crate::event::{EventType, Lease, LeaseEvent, MAX_ID_LEN, Resident};
use crate::queue::{DeliveryJob, EnqueueLimits, EnqueueOutcome, JobQueue, QueueError, Target};
use crate::reconcile::{Building, plan::buildings_of};
use crate::resident::{Desired, LeaseRecord, ResidentState};

/// The `trigger` of the convergence jobs a reset queues.
pub const RESET_TRIGGER: &str = "reset";

/// Why a lease cannot be looked up or reset.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No `[[sources]]` entry has this name.
    #[error("no source named `{0}` is configured")]
    UnknownSource(String),
    /// The lease id could never have been recorded.
    #[error("a lease id is 1 to {MAX_ID_LEN} bytes without control characters")]
    InvalidLeaseId,
    /// No resident holds a record of the lease from this source.
    #[error("lease-sync holds no record of lease `{lease_id}` from source `{source_name}`")]
    NotFound {
        /// The source.
        source_name: String,
        /// The lease.
        lease_id: String,
    },
    /// Redis failed; what was reset before the failure stays reset.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// One resident holding a record of the lease.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holder {
    /// OpenApp integration (the building).
    pub integration_id: String,
    /// OpenApp user.
    pub user_id: String,
    /// The record a reset forgets.
    pub record: LeaseRecord,
    /// What OpenApp should show for them now.
    pub desired_now: Desired,
    /// What it should show once the record is forgotten (from their other leases).
    pub desired_after_reset: Desired,
}

/// What a reset did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResetReport {
    /// The source.
    pub source: String,
    /// The lease.
    pub lease_id: String,
    /// The residents whose record was forgotten and who were queued for convergence.
    pub residents: Vec<Holder>,
    /// Convergence jobs queued.
    pub jobs: usize,
}

/// Looks up and resets leases of the configured sources. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leases {
    queue: JobQueue,
    dead_letters: DeadLetters,
    buildings: BTreeMap<String, Vec<Building>>,
    limits: EnqueueLimits,
}

impl Leases {
    /// Leases of the sources `settings` configures, in `queue`'s namespace.
    pub fn new(settings: &Settings, queue: JobQueue) -> Self {
        Self {
            dead_letters: DeadLetters::new(&queue),
            queue,
            buildings: settings
                .sources
                .iter()
                .map(|s| (s.name.clone(), buildings_of(s)))
                .collect(),
            limits: EnqueueLimits {
                dedupe_ttl: settings.http.dedupe_ttl,
                // Resets fold no record, so no recorded version is compared with anything.
                max_clock_skew: Duration::ZERO,
                timeout: settings.http.enqueue_timeout,
            },
        }
    }

    /// The residents holding a record of `lease_id` from `source`, with what a reset would
    /// change for each, as of `now` (ms).
    pub async fn holders(
        &self,
        source: &str,
        lease_id: &str,
        now: i64,
    ) -> Result<Vec<Holder>, LeaseError> {
        let buildings = self
            .buildings
            .get(source)
            .ok_or_else(|| LeaseError::UnknownSource(source.to_owned()))?;
        if !is_valid_lease_id(lease_id) {
            return Err(LeaseError::InvalidLeaseId);
        }
        let mut holders = Vec::new();
        for building in buildings {
            for state in self
                .queue
                .residents_holding(&building.integration_id, lease_id)
                .await?
            {
                if let Some(holder) = holder(state, source, lease_id, now) {
                    holders.push(holder);
                }
            }
        }
        Ok(holders)
    }

    /// Forgets `source`'s record of `lease_id` for every resident holding one and queues a
    /// convergence of each; audits the reset as done by `actor`. Fails with
    /// [`LeaseError::NotFound`] when nobody holds such a record.
    pub async fn reset(
        &self,
        source: &str,
        lease_id: &str,
        actor: &str,
    ) -> Result<ResetReport, LeaseError> {
        let now = crate::queue::now_ms();
        let holders = self.holders(source, lease_id, now).await?;
        if holders.is_empty() {
            return Err(LeaseError::NotFound {
                source_name: source.to_owned(),
                lease_id: lease_id.to_owned(),
            });
        }
        let buildings = self.buildings.get(source).map_or(&[][..], Vec::as_slice);
        let occurred_at = OffsetDateTime::now_utc();
        let mut report = ResetReport {
            source: source.to_owned(),
            lease_id: lease_id.to_owned(),
            residents: Vec::new(),
            jobs: 0,
        };
        // One script run per resident, so the report says exactly whose record went (one
        // may have changed since it was read, and is then left alone).
        for holder in holders {
            let Some(building) = buildings
                .iter()
                .find(|b| b.integration_id == holder.integration_id)
            else {
                continue;
            };
            let reset = LeaseEvent {
                id: format!("reset-{}", ulid::Ulid::new()),
                event_type: EventType::LeaseEnded,
                occurred_at,
                lease: Lease {
                    id: lease_id.to_owned(),
                    property_id: holder.record.property_id.clone(),
                    unit: None,
                },
                residents: vec![Resident {
                    openapp_user_id: holder.user_id.clone(),
                    external_id: None,
                }],
                residents_by_email: Vec::new(),
                access: None,
            };
            let role = building.role_for(&holder.record.property_id);
            let target = Target {
                org_id: &building.org_id,
                integration_id: &building.integration_id,
                role: &role,
            };
            let job = DeliveryJob::for_event(
                &reset,
                source,
                &holder.user_id,
                target,
                Some(RESET_TRIGGER),
            );
            match self
                .queue
                .forget_lease(source, &reset, &[job], self.limits, actor)
                .await
            {
                Ok(EnqueueOutcome::Queued { jobs: 1.., .. }) => {
                    report.jobs += 1;
                    report.residents.push(holder);
                }
                // Its record changed since it was read (or, impossibly, the fresh id was
                // seen before): nothing was written for this resident.
                Ok(_) => {}
                Err(e) => {
                    // What was forgotten so far is audited before the failure is reported.
                    self.audit(&report, actor).await;
                    return Err(e.into());
                }
            }
        }
        self.audit(&report, actor).await;
        Ok(report)
    }

    async fn audit(&self, report: &ResetReport, actor: &str) {
        if report.residents.is_empty() {
            return;
        }
        let record = AuditRecord {
            at: crate::queue::now_ms(),
            actor: actor.to_owned(),
            action: "lease_reset".into(),
            ids: report
                .residents
                .iter()
                .map(|h| format!("{}/{}", h.integration_id, h.user_id))
                .collect(),
            filter: None,
            lease: Some(AuditedLease {
                source: report.source.clone(),
                lease_id: report.lease_id.clone(),
            }),
        };
        if let Err(e) = self.dead_letters.audit(&record).await {
            tracing::error!(
                error = %e,
                actor,
                action = "lease_reset",
                source = %report.source,
                "the lease reset was done but its audit record could not be written"
            );
        }
    }
}

/// Whether `id` could be a recorded lease id (as `lease.id` is validated at ingest).
pub fn is_valid_lease_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)
}

/// The holder `state` is, if it holds `source`'s record of `lease_id`.
fn holder(state: ResidentState, source: &str, lease_id: &str, now: i64) -> Option<Holder> {
    let record = state
        .leases
        .get(lease_id)
        .filter(|r| r.source == source)?
        .clone();
    let desired_now = state.desired(now);
    let mut after = state;
    after.leases.remove(lease_id);
    Some(Holder {
        integration_id: after.integration_id.clone(),
        user_id: after.user_id.clone(),
        desired_after_reset: after.desired(now),
        desired_now,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resident::LeaseState;

    fn record(source: &str, state: LeaseState, occurred_at: i64) -> LeaseRecord {
        LeaseRecord {
            state,
            starts_at: None,
            ends_at: (state == LeaseState::Ended).then_some(occurred_at),
            occurred_at,
            rank: u8::from(state == LeaseState::Ended),
            event_id: "e".into(),
            source: source.into(),
            property_id: "P".into(),
        }
    }

    fn state(leases: &[(&str, LeaseRecord)]) -> ResidentState {
        ResidentState {
            integration_id: "int".into(),
            user_id: "u".into(),
            version: 1,
            leases: leases
                .iter()
                .map(|(id, r)| ((*id).to_owned(), r.clone()))
                .collect(),
            applied: None,
            managed: true,
            next_check: None,
        }
    }

    #[test]
    fn a_holder_shows_what_forgetting_the_record_changes() {
        // Signed in 9999: present until then, and every later event was stale.
        let future = record("acme", LeaseState::Active, 253_370_764_800_000);
        let h = holder(state(&[("L-1", future.clone())]), "acme", "L-1", 1_000).unwrap();
        assert_eq!(h.desired_now, Desired::Present);
        assert_eq!(
            h.desired_after_reset,
            Desired::Absent,
            "managed, and no other lease grants access"
        );

        let other = record("acme", LeaseState::Active, 500);
        let h = holder(
            state(&[("L-1", future.clone()), ("L-2", other)]),
            "acme",
            "L-1",
            1_000,
        )
        .unwrap();
        assert_eq!(h.desired_after_reset, Desired::Present, "L-2 still grants");

        assert!(
            holder(state(&[("L-1", future)]), "other-pms", "L-1", 1_000).is_none(),
            "another source's record of the same lease id is not this source's to reset"
        );
        assert!(holder(state(&[]), "acme", "L-1", 1_000).is_none());
    }

    #[test]
    fn lease_ids_are_checked_as_ingest_checks_them() {
        assert!(is_valid_lease_id("L-1042"));
        assert!(is_valid_lease_id("lease 7/B"));
        assert!(!is_valid_lease_id(""));
        assert!(!is_valid_lease_id("  "));
        assert!(!is_valid_lease_id("a\nb"));
        assert!(!is_valid_lease_id(&"x".repeat(MAX_ID_LEN + 1)));
    }
}
