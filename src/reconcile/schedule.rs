//! Scheduled reconciliation inside the service (`[reconcile]`): every `every`, load the file,
//! plan, log the counts and, with `apply`, enqueue the changes. Failures are logged and tried
//! again sooner; they never stop the service. One process per period does the work: each run
//! first claims the period in Redis, so several worker processes, or a restart, do not repeat it.
//!
//! A `kind = "buildium"` source without `from` is read from Buildium's API: a full pull
//! (planned like a file, removals confirmed lease by lease) at most every
//! [`FULL_PULL_EVERY`], and in the periods between, only the leases updated since the last
//! pull began (`lastupdatedfrom`, with [`PULL_OVERLAP`] to spare), folded as webhooks'
//! refreshes are.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::plan::Plan;
use super::{ReconcileError, Reconciler, input, pull};
use crate::config::{Settings, SourceKind, SourceSettings, redacted_location};
use crate::openapp::OpenAppClient;
use crate::queue::{JobQueue, QueueError};
use crate::refresh::Refresher;

/// Longest wait before trying again after a failed run.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// How often a Buildium source is read whole; the runs between read only what changed.
pub const FULL_PULL_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How far before the last pull's start an incremental pull reads from: covers clocks that
/// differ a little and changes made while the last pull was reading.
pub const PULL_OVERLAP: Duration = Duration::from_secs(300);

/// Most leases with open conflicts an incremental pull reads again (those seen longest ago
/// first): bounds its Buildium requests when many people lack an OpenApp user.
pub const CONFLICT_LEASES_PER_PULL: usize = 100;

/// Where a scheduled run gets the truth.
enum Truth {
    /// A file or URL of active leases.
    File(String),
    /// Buildium's API.
    Buildium(std::sync::Arc<Refresher>),
}

/// A scheduled reconciliation, ready to run.
struct Scheduled {
    reconciler: Reconciler,
    queue: JobQueue,
    source: SourceSettings,
    truth: Truth,
    every: Duration,
    apply: bool,
    prune_unmanaged: bool,
}

/// What one run did.
enum RunOutcome {
    /// Another process (or an earlier run of this one) already reconciled in this period.
    Skipped,
    /// Planned, and applied if configured.
    Done,
}

/// Spawns the scheduled reconciliation when `[reconcile] every` is set; it runs at once,
/// then every period, until `shutdown` is cancelled. `None` when disabled or incomplete
/// (validation refuses the latter).
pub fn spawn(
    settings: &Settings,
    queue: JobQueue,
    client: OpenAppClient,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let r = &settings.reconcile;
    let every = r.period()?;
    let source = settings.source(r.source.as_deref()?)?.clone();
    let truth = match r.from.clone().filter(|f| !f.trim().is_empty()) {
        Some(from) => Truth::File(from),
        None if source.kind == SourceKind::Buildium => {
            match Refresher::new(settings, queue.clone(), client.clone()) {
                Ok(Some(refresher)) if refresher.knows(&source.name) => {
                    Truth::Buildium(std::sync::Arc::new(refresher))
                }
                Ok(_) => return None,
                Err(e) => {
                    warn!(source = %source.name, "scheduled pull disabled: cannot set up the Buildium client: {e}");
                    return None;
                }
            }
        }
        None => return None,
    };
    let scheduled = Scheduled {
        reconciler: Reconciler::new(settings, queue.clone(), client),
        queue,
        source,
        truth,
        every,
        apply: r.apply,
        prune_unmanaged: r.prune_unmanaged,
    };
    // Every outcome starts at 0, so an alert on failed runs works from the first one.
    for outcome in ["done", "skipped", "empty", "failed"] {
        metrics::counter!(
            crate::telemetry::metrics::RECONCILE_RUNS,
            "source" => scheduled.source.name.clone(),
            "outcome" => outcome
        )
        .increment(0);
    }
    Some(tokio::spawn(scheduled.run(shutdown)))
}

impl Scheduled {
    async fn run(self, shutdown: CancellationToken) {
        info!(
            source = %self.source.name,
            every = %humantime::format_duration(self.every),
            from = %match &self.truth {
                Truth::File(from) => redacted_location(from),
                Truth::Buildium(_) => "Buildium's API".to_owned(),
            },
            apply = self.apply,
            prune_unmanaged = self.prune_unmanaged,
            "scheduled reconciliation enabled"
        );
        let mut next = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next) => {}
            }
            let outcome = tokio::select! {
                () = shutdown.cancelled() => break,
                outcome = self.run_once() => outcome,
            };
            let counted = match &outcome {
                Ok(RunOutcome::Done) => "done",
                Ok(RunOutcome::Skipped) => "skipped",
                Err(RunError::Pull(pull::PullError::Empty(_))) => "empty",
                Err(_) => "failed",
            };
            metrics::counter!(
                crate::telemetry::metrics::RECONCILE_RUNS,
                "source" => self.source.name.clone(),
                "outcome" => counted
            )
            .increment(1);
            let wait = match outcome {
                Ok(RunOutcome::Done | RunOutcome::Skipped) => self.every,
                // Not a failure to hurry back for: a new account, or wrong property ids.
                Err(RunError::Pull(e @ pull::PullError::Empty(_))) => {
                    warn!(
                        source = %self.source.name,
                        "nothing reconciled: {e}; check the ids in sources.properties if this building has residents"
                    );
                    self.every
                }
                Err(e) => {
                    let wait = self.every.min(RETRY_AFTER_FAILURE);
                    warn!(
                        source = %self.source.name,
                        "reconciliation failed, next try in {}: {e}",
                        humantime::format_duration(wait)
                    );
                    wait
                }
            };
            next = Instant::now() + wait;
        }
        debug!(source = %self.source.name, "scheduled reconciliation stopped");
    }

    /// Claims this period, then loads, plans and (with `apply`) applies. A failed run gives
    /// the period back so that the next try is not skipped.
    async fn run_once(&self) -> Result<RunOutcome, RunError> {
        let Some(token) = self.claim().await.map_err(RunError::Claim)? else {
            debug!(source = %self.source.name, "reconciliation of this period already done elsewhere; skipped");
            return Ok(RunOutcome::Skipped);
        };
        let result = self.reconcile().await;
        if result.is_err()
            && let Err(e) = self.release(&token).await
        {
            warn!("could not give back the reconciliation claim (it expires on its own): {e}");
        }
        // For the console's overview (Buildium pulls keep their own times).
        if result.is_ok()
            && matches!(self.truth, Truth::File(_))
            && let Err(e) = self
                .queue
                .record_file_reconcile(
                    &self.source.name,
                    OffsetDateTime::now_utc().unix_timestamp(),
                )
                .await
        {
            warn!("could not record when the reconciliation ran: {e}");
        }
        result.map(|()| RunOutcome::Done)
    }

    async fn reconcile(&self) -> Result<(), RunError> {
        let plan = match &self.truth {
            Truth::File(from) => {
                let bytes = input::load(from).await?;
                let rows = input::parse(from, &bytes, &self.source)?;
                self.reconciler
                    .plan(
                        &self.source,
                        &rows,
                        OffsetDateTime::now_utc(),
                        self.prune_unmanaged,
                    )
                    .await?
            }
            Truth::Buildium(refresher) => match self.buildium_pull(refresher).await? {
                Some(plan) => plan,
                None => return Ok(()),
            },
        };
        let c = plan.counts;
        info!(
            source = %self.source.name,
            add = c.add,
            remove = c.remove,
            unmanaged = c.unmanaged,
            unchanged = c.unchanged,
            prune_unmanaged = self.prune_unmanaged,
            "reconciliation planned: {}",
            plan.summary()
        );
        if plan.changes() == 0 {
            return Ok(());
        }
        if !self.apply {
            info!(source = %self.source.name, "reconcile.apply is false: nothing enqueued");
            return Ok(());
        }
        let report = self
            .reconciler
            .apply(&plan, |_| {})
            .await
            .map_err(RunError::Reconcile)?;
        info!(
            source = %self.source.name,
            events = report.events.len(),
            jobs = report.jobs,
            stale = report.stale,
            overridden = report.overridden,
            "reconciliation enqueued {} event(s), {} convergence job(s)",
            report.events.len(),
            report.jobs
        );
        Ok(())
    }

    /// A Buildium pull: whole (planned like a file) when the last whole one is older than
    /// [`FULL_PULL_EVERY`], else only the leases updated since the last pull began, folded at
    /// once (`None`: nothing to plan). The times are kept in Redis, shared by every process.
    async fn buildium_pull(&self, refresher: &Refresher) -> Result<Option<Plan>, RunError> {
        let started = OffsetDateTime::now_utc();
        let (last_pull, last_full) = self.pull_times().await.map_err(RunError::PullTimes)?;
        let full_due = last_full.is_none_or(|at| {
            started - at >= time::Duration::try_from(FULL_PULL_EVERY).unwrap_or(time::Duration::MAX)
        });
        if full_due || last_pull.is_none() {
            let (plan, pulled) = pull::plan_from_buildium(
                refresher,
                &self.reconciler,
                &self.source,
                self.prune_unmanaged,
                |_| {},
            )
            .await?;
            info!(
                source = %self.source.name,
                leases = pulled.leases,
                rows = pulled.rows.len(),
                conflicts = pulled.conflicts,
                confirmed = pulled.confirmed,
                "full pull from Buildium read"
            );
            self.record_pull(started, true)
                .await
                .map_err(RunError::PullTimes)?;
            return Ok(Some(plan));
        }
        if !self.apply {
            info!(source = %self.source.name, "reconcile.apply is false: the changes since the last pull are not folded");
            return Ok(None);
        }
        let since = last_pull.unwrap_or(started)
            - time::Duration::try_from(PULL_OVERLAP).unwrap_or(time::Duration::ZERO);
        let done = refresher
            .pull_changes(&self.source.name, since, |_| {})
            .await
            .map_err(|e| RunError::Pull(pull::PullError::Read(e)))?;
        info!(
            source = %self.source.name,
            leases = done.leases,
            folded = done.folded,
            jobs = done.jobs,
            conflicts = done.conflicts,
            "incremental pull from Buildium folded the leases updated since {since}"
        );
        // People without an OpenApp user get one outside Buildium: their leases do not
        // change, so they are read again here rather than at the next full pull.
        let retried = refresher
            .refresh_conflicts(&self.source.name, CONFLICT_LEASES_PER_PULL)
            .await
            .map_err(|e| RunError::Pull(pull::PullError::Read(e)))?;
        if retried.leases > 0 {
            info!(
                source = %self.source.name,
                leases = retried.leases,
                jobs = retried.jobs,
                conflicts = retried.conflicts,
                "leases with open conflicts read again"
            );
        }
        self.record_pull(started, false)
            .await
            .map_err(RunError::PullTimes)?;
        Ok(None)
    }

    /// When the last pull began, and the last whole one.
    async fn pull_times(
        &self,
    ) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>), QueueError> {
        let (pull, full) = self.queue.reconcile_pull_times(&self.source.name).await?;
        let at = |s: Option<i64>| s.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok());
        Ok((at(pull), at(full)))
    }

    async fn record_pull(&self, started: OffsetDateTime, full: bool) -> Result<(), QueueError> {
        self.queue
            .record_reconcile_pull(&self.source.name, started.unix_timestamp(), full)
            .await
    }

    /// Claims the current period for this process: a key that lives for most of the period.
    async fn claim(&self) -> Result<Option<String>, QueueError> {
        self.queue
            .claim_reconcile_period(&self.source.name, self.every.mul_f64(0.9))
            .await
    }

    async fn release(&self, token: &str) -> Result<(), QueueError> {
        self.queue
            .release_reconcile_claim(&self.source.name, token)
            .await
    }
}

/// Why a scheduled run failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("cannot claim the reconciliation period in Redis: {0}")]
    Claim(QueueError),
    #[error("cannot read or record when Buildium was last pulled: {0}")]
    PullTimes(QueueError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Pull(#[from] pull::PullError),
}

impl From<super::InputError> for RunError {
    fn from(e: super::InputError) -> Self {
        RunError::Reconcile(ReconcileError::Input(e))
    }
}
