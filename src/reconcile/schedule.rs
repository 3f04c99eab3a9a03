//! Scheduled reconciliation inside the service (`[reconcile]`): every `every`, load the file,
//! plan, log the counts and, with `apply`, enqueue the changes. Failures are logged and tried
//! again sooner; they never stop the service. One process per period does the work: each run
//! first claims the period in Redis, so several worker processes, or a restart, do not repeat it.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ReconcileError, Reconciler, input};
use crate::config::{Settings, SourceSettings, redacted_location};
use crate::openapp::OpenAppClient;
use crate::queue::{JobQueue, QueueError};

/// Longest wait before trying again after a failed run.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// Releases a claim only if it is still ours.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A scheduled reconciliation, ready to run.
struct Scheduled {
    reconciler: Reconciler,
    queue: JobQueue,
    source: SourceSettings,
    from: String,
    every: Duration,
    apply: bool,
    prune_unmanaged: bool,
    claim_key: String,
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
    let from = r.from.clone().filter(|f| !f.trim().is_empty())?;
    let source = settings.source(r.source.as_deref()?)?.clone();
    let scheduled = Scheduled {
        reconciler: Reconciler::new(settings, queue.clone(), client),
        queue,
        claim_key: format!(
            "{}:reconcile:{}:claim",
            settings.redis.namespace, source.name
        ),
        source,
        from,
        every,
        apply: r.apply,
        prune_unmanaged: r.prune_unmanaged,
    };
    Some(tokio::spawn(scheduled.run(shutdown)))
}

impl Scheduled {
    async fn run(self, shutdown: CancellationToken) {
        info!(
            source = %self.source.name,
            every = %humantime::format_duration(self.every),
            from = %redacted_location(&self.from),
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
            let wait = match outcome {
                Ok(RunOutcome::Done | RunOutcome::Skipped) => self.every,
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
        result
            .map(|()| RunOutcome::Done)
            .map_err(RunError::Reconcile)
    }

    async fn reconcile(&self) -> Result<(), ReconcileError> {
        let bytes = input::load(&self.from).await?;
        let rows = input::parse(&self.from, &bytes, &self.source)?;
        let plan = self
            .reconciler
            .plan(
                &self.source,
                &rows,
                OffsetDateTime::now_utc(),
                self.prune_unmanaged,
            )
            .await?;
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
        let report = self.reconciler.apply(&plan, |_| {}).await?;
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

    /// Claims the current period for this process: a key that lives for most of the period.
    async fn claim(&self) -> Result<Option<String>, QueueError> {
        let token = ulid::Ulid::new().to_string();
        let ttl_ms = u64::try_from(self.every.mul_f64(0.9).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.queue.connection();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&self.claim_key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(taken.map(|_| token))
    }

    async fn release(&self, token: &str) -> Result<(), QueueError> {
        let mut conn = self.queue.connection();
        let _: i64 = redis::Script::new(RELEASE_SCRIPT)
            .key(&self.claim_key)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// Why a scheduled run failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("cannot claim the reconciliation period in Redis: {0}")]
    Claim(QueueError),
    #[error(transparent)]
    Reconcile(ReconcileError),
}
