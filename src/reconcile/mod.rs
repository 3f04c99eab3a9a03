//! Reconciliation: make OpenApp match a file of the active leases of one source, through the
//! normal pipeline.
//!
//! Events get lost: a webhook that never came, a person added or removed by hand in OpenApp.
//! The property-management system can export who holds an active lease right now; this module
//! compares that file with OpenApp's building users (those holding the building's role) and
//! with lease-sync's resident state, per building:
//!
//! * **add**: granted access by the file, not a building user with the role;
//! * **remove**: a building user with the role, no access by the file, and lease-sync holds
//!   state for them (it added them, or heard of them);
//! * **unmanaged**: the same, but unknown to lease-sync: kept unless `prune_unmanaged`;
//! * **unchanged**: everyone else in either set.
//!
//! Applying never calls OpenApp directly. Each change is a synthetic event folded into the
//! resident's state with [`JobQueue::enqueue_event`] (`lease.signed` with the row's window for
//! an add; `lease.ended` for every lease still granting access, or for a `reconcile:<user>`
//! lease, for a removal), so workers converge it with the usual serialization, retries and
//! dead letters. The plan itself ([`plan::plan`]) is pure; [`Reconciler`] gathers its inputs
//! and applies it; [`schedule`] runs it periodically inside the service.

pub mod input;
pub mod plan;
pub mod pull;
pub mod schedule;

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

pub use self::input::{Format, InputError, LeaseRow, RowError};
pub use self::plan::{
    Building, BuildingPlan, Change, Counts, Observed, Plan, PlannedEvent, PlannedTarget,
};
use crate::config::{Settings, SourceSettings};
use crate::event::EventType;
use crate::openapp::{CallError, OpenAppClient};
use crate::queue::{DeliveryJob, EnqueueLimits, EnqueueOutcome, JobQueue, QueueError, Target};

/// Why a reconciliation could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The file is unreadable or has invalid rows; nothing was compared or applied.
    #[error(transparent)]
    Input(#[from] InputError),
    /// OpenApp could not list a building's users; nothing was applied.
    #[error("cannot list the building users of integration {integration_id}: {error}")]
    OpenApp {
        /// The integration.
        integration_id: String,
        /// OpenApp's answer.
        error: CallError,
    },
    /// lease-sync's resident state could not be read; nothing was applied.
    #[error("cannot read lease-sync's resident state: {0}")]
    State(QueueError),
    /// An event could not be enqueued; the ones before it were.
    #[error("cannot enqueue event {event_id} ({done} of {total} enqueued before it): {error}")]
    Enqueue {
        /// The event that failed.
        event_id: String,
        /// Events enqueued before it.
        done: usize,
        /// Events in the plan.
        total: usize,
        /// What Redis said.
        error: QueueError,
    },
}

/// One enqueued synthetic event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// `reconcile-<ulid>-<n>`.
    pub event_id: String,
    /// Signed (add) or ended (remove, prune).
    pub event_type: EventType,
    /// The OpenApp user.
    pub user_id: String,
    /// The lease.
    pub lease_id: String,
    /// The building.
    pub integration_id: String,
    /// Convergence jobs queued (1, or 0 if the resident's state already said so).
    pub jobs: usize,
    /// 1 if the lease already records a newer event, so this one changed nothing.
    pub stale: usize,
    /// 1 if the lease's record was dated in the future (beyond the source's clock skew) and
    /// this event replaced it.
    pub overridden: usize,
}

/// What applying a plan enqueued.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Every event, in order.
    pub events: Vec<Enqueued>,
    /// Convergence jobs queued in all.
    pub jobs: usize,
    /// Events older than what their lease already recorded.
    pub stale: usize,
    /// Future-dated lease records replaced.
    pub overridden: usize,
}

/// Gathers the inputs of a plan and applies it.
#[derive(Debug, Clone)]
pub struct Reconciler {
    queue: JobQueue,
    client: OpenAppClient,
    dedupe_ttl: Duration,
    enqueue_timeout: Duration,
    /// `max_clock_skew_secs` by source name.
    max_clock_skew: std::collections::HashMap<String, Duration>,
}

impl Reconciler {
    /// A reconciler reading and writing `queue` and listing building users with `client`,
    /// enqueuing with the limits of `[http]` (dedupe TTL, enqueue timeout).
    pub fn new(settings: &Settings, queue: JobQueue, client: OpenAppClient) -> Self {
        Self {
            queue,
            client,
            dedupe_ttl: settings.http.dedupe_ttl,
            enqueue_timeout: settings.http.enqueue_timeout,
            max_clock_skew: settings
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.max_clock_skew))
                .collect(),
        }
    }

    /// OpenApp's building users and lease-sync's state for every building of `source`.
    pub async fn observe(
        &self,
        source: &SourceSettings,
    ) -> Result<Vec<(Building, Observed)>, ReconcileError> {
        let mut observed = Vec::new();
        for building in plan::buildings_of(source) {
            let members = self
                .client
                .list_building_users(&building.org_id, &building.integration_id)
                .await
                .map_err(|error| ReconcileError::OpenApp {
                    integration_id: building.integration_id.clone(),
                    error,
                })?;
            let known = self
                .queue
                .residents_of(&building.integration_id)
                .await
                .map_err(ReconcileError::State)?;
            let roles: Vec<&str> = building
                .properties
                .iter()
                .map(|p| p.role.as_str())
                .collect();
            let mut residents = std::collections::BTreeMap::new();
            for member in members.iter().filter(|m| roles.contains(&m.role.as_str())) {
                if residents.contains_key(&member.user_id)
                    || known.binary_search(&member.user_id).is_err()
                {
                    continue;
                }
                if let Some(state) = self
                    .queue
                    .resident(&building.integration_id, &member.user_id)
                    .await
                    .map_err(ReconcileError::State)?
                {
                    residents.insert(member.user_id.clone(), state);
                }
            }
            observed.push((building, Observed { members, residents }));
        }
        Ok(observed)
    }

    /// Observes and plans `source` against `rows` at `now` (to the millisecond, the
    /// precision of resident state).
    pub async fn plan(
        &self,
        source: &SourceSettings,
        rows: &[LeaseRow],
        now: OffsetDateTime,
        prune_unmanaged: bool,
    ) -> Result<Plan, ReconcileError> {
        let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
        let observed = self.observe(source).await?;
        let plan = plan::plan(&source.name, &observed, rows, now, prune_unmanaged);
        let drift = crate::telemetry::metrics::RECONCILE_DRIFT;
        let counts = &plan.counts;
        for (kind, n) in [
            ("add", counts.add),
            ("remove", counts.remove),
            ("unmanaged", counts.unmanaged),
        ] {
            metrics::counter!(drift, "kind" => kind).increment(n as u64);
        }
        Ok(plan)
    }

    /// Enqueues the synthetic events of `plan` ([`plan::events_for`]), calling `progress`
    /// after each. Stops at the first failure; what was enqueued stays enqueued (a later run
    /// plans only what is still missing).
    pub async fn apply(
        &self,
        plan: &Plan,
        mut progress: impl FnMut(&Enqueued),
    ) -> Result<ApplyReport, ReconcileError> {
        let run_id = ulid::Ulid::new().to_string();
        let events = plan::events_for(plan, &run_id);
        let total = events.len();
        let limits = EnqueueLimits {
            dedupe_ttl: self.dedupe_ttl,
            max_clock_skew: self
                .max_clock_skew
                .get(&plan.source)
                .copied()
                .unwrap_or(SourceSettings::DEFAULT_MAX_CLOCK_SKEW),
            timeout: self.enqueue_timeout,
        };
        let mut report = ApplyReport::default();
        for planned in events {
            let job = job_for(&planned, &plan.source);
            let outcome = self
                .queue
                .enqueue_event(
                    &plan.source,
                    &planned.event,
                    std::slice::from_ref(&job),
                    limits,
                )
                .await
                .map_err(|error| ReconcileError::Enqueue {
                    event_id: planned.event.id.clone(),
                    done: report.events.len(),
                    total,
                    error,
                })?;
            let (jobs, stale, overridden) = match outcome {
                EnqueueOutcome::Queued {
                    jobs,
                    stale,
                    overridden,
                } => (jobs, stale, overridden),
                // Fresh ids are never seen before; should one be, it changed nothing.
                EnqueueOutcome::Duplicate | EnqueueOutcome::Conflict => (0, 0, 0),
            };
            let enqueued = Enqueued {
                event_id: planned.event.id.clone(),
                event_type: planned.event.event_type,
                user_id: job.user_id.clone(),
                lease_id: job.lease_id.clone(),
                integration_id: job.integration_id.clone(),
                jobs,
                stale,
                overridden,
            };
            progress(&enqueued);
            report.jobs += jobs;
            report.stale += stale;
            report.overridden += overridden;
            report.events.push(enqueued);
        }
        Ok(report)
    }
}

/// The convergence job of one planned event: its resident in its building, triggered by
/// `reconcile`.
fn job_for(planned: &PlannedEvent, source: &str) -> DeliveryJob {
    let target = &planned.target;
    DeliveryJob::for_event(
        &planned.event,
        source,
        &target.user_id,
        Target {
            org_id: &target.org_id,
            integration_id: &target.integration_id,
            role: &target.role,
        },
        Some(plan::TRIGGER),
    )
}
