//! Workers: take jobs off the queue and make OpenApp match.
//!
//! apalis runs the loop (concurrency, tracing, graceful shutdown) over lease-sync's own queue
//! backend ([`crate::queue::backend`]). Around it, [`run_workers`] adds:
//! * a poll interval that always re-arms ([`crate::queue::poll::EveryInterval`]);
//! * the renewal of the holds on every job a worker has, and, in every worker process, the
//!   recovery of jobs whose hold lapsed (their worker died) and the promotion of due retries,
//!   in bounded chunks;
//! * a supervisor that starts a fresh worker whenever one stops on a Redis failure;
//! * the retry policy and dead letters, through the ledger ([`crate::queue::ledger`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apalis::layers::WorkerBuilderExt as _;
use apalis::prelude::{BackendExt as _, BoxDynError, Data, TaskId, WorkerBuilder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, Span, debug, error, info, info_span, warn};

use crate::config::{DeadLetterSettings, Settings};
use crate::dead_letters::DeadLetters;
use crate::history::{HistoryEntry, HistoryEvent};
use crate::openapp::{Answered, CallError, CallOutcome, OpenAppClient};
use crate::queue::backend::{Holdings, QueueBackend};
use crate::queue::ledger::{
    AttemptHistory, AttemptRecord, Begin, Claim, Finish, Finished, SucceededCall,
};
use crate::queue::pace::Pace;
use crate::queue::residents::ResidentLock;
use crate::queue::{DeliveryJob, Job, JobQueue, QueueError, RefreshJob, ResolveJob, now_ms};
use crate::refresh::{RefreshError, Refreshed, Refresher};
use crate::resident::{Desired, ResidentState};
use crate::resolve::EventResolver;
use crate::retry::{CallClass, Decision, RetryPolicy, parse_retry_after};
use crate::sources::buildium::webhook::Refresh;

/// How long a confirmed-existing integration is trusted before a 404 on remove re-checks it.
const INTEGRATION_CACHE_TTL: Duration = Duration::from_secs(600);

/// Longest wait before a failed worker is replaced.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);

/// A worker that ran this long before failing counts as having been healthy.
const WORKER_HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// How often housekeeping (dead-letter caps) runs.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);

/// Whether this process's workers are running, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus {
    running: Arc<AtomicBool>,
    restarts: Arc<AtomicU64>,
}

impl WorkerStatus {
    /// True while a worker is registered and fetching.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// How many times the supervisor had to start a new worker after a failure.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }
}

/// Runs convergence jobs: makes OpenApp show what a resident's state says, one attempt at a
/// time, each outcome recorded in the ledger.
pub struct Deliverer {
    client: OpenAppClient,
    queue: JobQueue,
    dead_letters: DeadLetters,
    dead_letter_limits: DeadLetterSettings,
    policy: RetryPolicy,
    /// How long one round (a call, and a list call on a 404 remove) may hold a resident's
    /// lock; it is extended before each round and expires soon after a worker dies.
    lock_ttl: Duration,
    /// Integrations seen to exist, so a 404 on remove can be trusted as "already absent".
    known_integrations: Mutex<HashMap<String, Instant>>,
    /// Sources whose leases can be read again (`kind = "buildium"`): after OpenApp answers
    /// that it does not know a resolved user, their lease is refreshed to resolve them anew.
    refreshable_sources: std::collections::HashSet<String>,
    /// The dedupe window for the refreshes queued that way.
    dedupe_ttl: Duration,
    /// `worker.concurrency` permits: OpenApp calls in flight in this process never exceed it,
    /// even though a convergence frees its worker slot before its outcome is recorded.
    calls: Arc<tokio::sync::Semaphore>,
}

/// Frees the worker slot of a convergence once its OpenApp call returned: recording the
/// outcome in Redis (an `appendfsync always` write) then overlaps the next job's claim and
/// call instead of holding the slot. The job stays held (and its hold renewed) until it is
/// recorded, so a worker that dies meanwhile loses nothing: the attempt is recovered and its
/// record marked crashed, as for a death during the call.
#[derive(Debug, Default)]
pub struct SlotRelease(Option<tokio::sync::oneshot::Sender<()>>);

impl SlotRelease {
    /// Lets the slot go; later calls do nothing.
    fn release(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Most convergence rounds in one attempt when the state keeps changing during the calls;
/// the events that changed it have queued their own jobs anyway.
const MAX_ROUNDS: u32 = 3;

/// Shortest wait when another worker is converging the same resident.
const DEFER_MS: i64 = 200;

/// Longest wait before looking again at a busy resident.
const MAX_DEFER_MS: i64 = 5_000;

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What the rounds of one attempt did: the last call, its result, and the state it was for.
struct Convergence {
    action: Action,
    result: Result<CallOutcome, CallError>,
    state: Option<ResidentState>,
    /// What the state said, and how long the call took (none when no call was made).
    desired: Desired,
    latency: Option<Duration>,
    /// OpenApp's request id of a successful call (a failed one carries its own).
    request_id: Option<String>,
}

/// Whether a resident's lock is still held when an attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockAfter {
    /// The finish script released it with the outcome (saving a round trip).
    Released,
    /// Still held: the caller releases it.
    Held,
}

/// What one convergence call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Add,
    Remove,
    /// Nothing to change (see [`Desired::Untouched`]).
    None,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::None => "none",
        }
    }
}

impl Deliverer {
    /// A deliverer calling OpenApp through `client` and recording in `queue`'s ledger.
    pub fn new(client: OpenAppClient, queue: JobQueue, settings: &Settings) -> Self {
        let call_timeout = settings.openapp.timeout;
        Self {
            client,
            dead_letters: DeadLetters::new(&queue),
            queue,
            dead_letter_limits: settings.dead_letters.clone(),
            policy: settings.retry.policy(),
            // A round is at most a call and, on a 404 remove, a list call.
            lock_ttl: call_timeout * 2 + Duration::from_secs(2),
            known_integrations: Mutex::new(HashMap::new()),
            refreshable_sources: settings
                .sources
                .iter()
                .filter(|s| s.kind == crate::config::SourceKind::Buildium)
                .map(|s| s.name.clone())
                .collect(),
            dedupe_ttl: settings.http.dedupe_ttl,
            calls: Arc::new(tokio::sync::Semaphore::new(
                settings.worker.concurrency.get(),
            )),
        }
    }

    /// Makes OpenApp show `desired` for `job`'s resident: add (POST; 409 means already there)
    /// or remove (DELETE; 404 means already gone once the integration is known to exist — a
    /// missing integration is a configuration error).
    async fn apply(
        &self,
        job: &DeliveryJob,
        desired: Desired,
    ) -> (Action, Result<Answered, CallError>) {
        match desired {
            Desired::Present => (Action::Add, self.add(job).await),
            Desired::Absent => (Action::Remove, self.remove(job).await),
            Desired::Untouched => (
                Action::None,
                Ok(Answered {
                    outcome: CallOutcome::AlreadyDone(0),
                    request_id: None,
                }),
            ),
        }
    }

    /// Adds `job`'s resident. A 404 from a building that exists means OpenApp does not know
    /// the user (deleted since an email was resolved to them): the cached emails of that user
    /// are dropped and, for a source whose lease can be read again, the lease is refreshed so
    /// its tenants are resolved anew. The add itself fails for good with `user_not_found`.
    async fn add(&self, job: &DeliveryJob) -> Result<Answered, CallError> {
        let result = self
            .client
            .add_building_user(&job.org_id, &job.integration_id, &job.user_id, &job.role)
            .await;
        let Err(CallError::Status {
            status: 404,
            request_id,
            ..
        }) = &result
        else {
            return result;
        };
        if !self.integration_known(job).await? {
            return result;
        }
        let request_id = request_id.clone();
        let refreshed = match self.user_gone(job).await {
            Ok(refreshed) => refreshed,
            Err(e) => {
                warn!("could not drop the cached emails of a user OpenApp does not know: {e}");
                false
            }
        };
        Err(CallError::Status {
            status: 404,
            message: Some(format!(
                "OpenApp does not know user {} (deleted?); their cached email mapping was dropped{}",
                job.user_id,
                if refreshed {
                    format!(
                        " and lease {} is read again to resolve its tenants anew",
                        job.lease_id
                    )
                } else {
                    "; the lease's next event resolves its residents anew".to_owned()
                }
            )),
            error_code: Some("user_not_found".into()),
            request_id,
            retry_after: None,
        })
    }

    /// Drops the cached emails of `job`'s user and queues a refresh of its lease when its
    /// source can be read again; whether a refresh was queued.
    async fn user_gone(&self, job: &DeliveryJob) -> Result<bool, QueueError> {
        let dropped = self
            .queue
            .forget_user_identities(&job.org_id, &job.user_id)
            .await?;
        info!(
            dropped,
            "OpenApp does not know user {}: cached email mappings dropped", job.user_id
        );
        let Ok(lease_id) = job.lease_id.parse::<i64>() else {
            return Ok(false);
        };
        if !self.refreshable_sources.contains(&job.source) {
            return Ok(false);
        }
        let event_id = format!("user-not-found:{}", job.delivery_id);
        let refresh = Job::Refresh(RefreshJob::new(
            &job.source,
            &event_id,
            Refresh::Lease { lease_id },
            Some("user_not_found"),
        ));
        let cue = serde_json::json!({"user_not_found": job.user_id, "lease_id": lease_id});
        let limits = crate::queue::EnqueueLimits {
            dedupe_ttl: self.dedupe_ttl,
            max_clock_skew: Duration::ZERO,
            timeout: Duration::from_secs(10),
        };
        self.queue
            .enqueue_jobs(&job.source, &event_id, &cue, &[refresh], limits)
            .await?;
        Ok(true)
    }

    async fn remove(&self, job: &DeliveryJob) -> Result<Answered, CallError> {
        let answered = self
            .client
            .remove_building_user(&job.org_id, &job.integration_id, &job.user_id)
            .await?;
        if answered.outcome == CallOutcome::AlreadyDone(404) && !self.integration_known(job).await?
        {
            return Err(CallError::Status {
                status: 404,
                message: Some(format!(
                    "integration {} does not exist for org {}: check sources.properties in the configuration",
                    job.integration_id, job.org_id
                )),
                error_code: Some("integration_not_found".into()),
                request_id: answered.request_id,
                retry_after: None,
            });
        }
        Ok(answered)
    }

    async fn integration_known(&self, job: &DeliveryJob) -> Result<bool, CallError> {
        let cached = self
            .known_integrations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&job.integration_id)
            .is_some_and(|seen| seen.elapsed() < INTEGRATION_CACHE_TTL);
        if cached {
            return Ok(true);
        }
        let exists = self
            .client
            .integration_exists(&job.org_id, &job.integration_id)
            .await?;
        if exists {
            self.known_integrations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(job.integration_id.clone(), Instant::now());
        }
        Ok(exists)
    }

    /// Runs `job` as apalis task `task_id`. Calls for one resident are serialized: if another
    /// worker holds the resident, the job is put off briefly without using an attempt.
    /// `Ok` whenever the ledger took the outcome; `Err` only when Redis failed, so apalis runs
    /// the task again.
    /// `slot` is released once the first call returned ([`SlotRelease`]).
    pub async fn run(
        &self,
        job: &DeliveryJob,
        task_id: &str,
        slot: &mut SlotRelease,
    ) -> Result<(), BoxDynError> {
        // One round trip: the resident's lock, the attempt counted, the state read under it.
        let claimed_at = Instant::now();
        let claim = self
            .queue
            .claim_convergence(job, task_id, self.policy.max_attempts, self.lock_ttl)
            .await?;
        let (attempt, lock, state) = match claim {
            Claim::Run {
                attempt,
                lock,
                state,
                started_at,
            } => ((attempt, started_at), lock, state),
            Claim::Busy { lock_remaining_ms } => {
                // Usually a call of a few milliseconds; after a crash, the lock's expiry.
                let wait = i64::try_from(lock_remaining_ms)
                    .unwrap_or(0)
                    .clamp(DEFER_MS, MAX_DEFER_MS);
                let jitter = rand::Rng::random_range(&mut rand::rng(), 0..DEFER_MS);
                self.queue
                    .defer(job, task_id, now_ms() + wait + jitter)
                    .await?;
                debug!(wait_ms = wait, "resident busy with another worker; put off");
                count_job("deferred", "");
                return Ok(());
            }
            Claim::Stale => {
                debug!("skipping a superseded run of this delivery");
                return Ok(());
            }
            Claim::Held => {
                debug!(
                    "integration {} is paused: convergence held until it is resumed",
                    job.integration_id
                );
                count_job("held", "");
                return Ok(());
            }
            Claim::DeadLettered { reason, attempts } => {
                error!(
                    dead_letter.id = %job.delivery_id,
                    reason = %reason,
                    "converging user {} given up after {attempts} attempt(s) that stopped their worker; replay with `lease-sync dead-letters replay {}`",
                    job.user_id, job.delivery_id
                );
                count_job("dead_lettered", reason.as_str());
                self.trim_dead_letters().await;
                return Ok(());
            }
        };
        Span::current().record("attempt", attempt.0);
        let result = self
            .converge_and_finish(job, task_id, attempt, (&lock, claimed_at), state, slot)
            .await;
        // Usually the finish script released the lock already; otherwise release it here.
        if !matches!(result, Ok(LockAfter::Released))
            && let Err(e) = self.queue.unlock_resident(lock).await
        {
            warn!("could not release the resident lock (it expires on its own): {e}");
        }
        result.map(|_| ())
    }

    /// Makes OpenApp show what the resident's state says, in rounds, and records the outcome:
    /// when an event changed the state during a call, it converges again (at most
    /// [`MAX_ROUNDS`] rounds). Starts from `state`, read with the lock (taken at `claimed_at`).
    /// A successful call is recorded by the same script that finishes the attempt, which
    /// first checks that the state did not move: a happy-path round is one round trip.
    ///
    /// A call first waits for one of the process's `worker.concurrency` call permits: jobs are
    /// claimed ahead of them (`worker.claim_ahead`). If that wait aged the lock, it is
    /// extended before the call (and before every later round).
    async fn converge_and_finish(
        &self,
        job: &DeliveryJob,
        task_id: &str,
        attempt: (u32, i64),
        (lock, claimed_at): (&ResidentLock, Instant),
        state: Option<ResidentState>,
        slot: &mut SlotRelease,
    ) -> Result<LockAfter, BoxDynError> {
        let mut locked_state = Some(state);
        let mut round = 0;
        loop {
            round += 1;
            // The first round uses the state read with the lock; later ones read it again.
            let state = match locked_state.take() {
                Some(state) => state,
                None => {
                    self.queue
                        .resident(&job.integration_id, &job.user_id)
                        .await?
                }
            };
            let desired = state
                .as_ref()
                .map_or(Desired::Untouched, |s| s.desired(now_ms()));
            let version = state.as_ref().map_or(0, |s| s.version);
            // Never closed: an error would only mean no limit.
            let permit = match desired {
                Desired::Untouched => None,
                Desired::Present | Desired::Absent => self.calls.acquire().await.ok(),
            };
            let aged = round > 1 || claimed_at.elapsed() > self.lock_ttl / 4;
            if aged && !self.queue.extend_resident_lock(lock, self.lock_ttl).await? {
                drop(permit);
                // Another worker has the resident now and converges it to the same state.
                debug!("resident lock lost before a call; leaving the rest to its holder");
                let convergence = Convergence {
                    action: Action::None,
                    result: Ok(CallOutcome::AlreadyDone(0)),
                    state: None,
                    desired: Desired::Untouched,
                    latency: None,
                    request_id: None,
                };
                let finished = self
                    .finish(job, task_id, attempt, convergence, lock, None)
                    .await?;
                return Ok(finished.unwrap_or(LockAfter::Held));
            }
            let started = Instant::now();
            let (action, answer) = self.apply(job, desired).await;
            let latency = (action != Action::None).then(|| started.elapsed());
            drop(permit);
            slot.release();
            let (result, request_id) = match answer {
                Ok(answered) => (Ok(answered.outcome), answered.request_id),
                Err(e) => (Err(e), None),
            };
            // Serialized per resident, but events keep arriving: if one changed the state
            // during the call, converge again to the newer truth.
            let applied = result.is_ok().then(|| SucceededCall {
                integration_id: &job.integration_id,
                user_id: &job.user_id,
                shown: match action {
                    Action::Add => Some(true),
                    Action::Remove => Some(false),
                    Action::None => None,
                },
                version,
                finish_anyway: round >= MAX_ROUNDS,
                next_check: None,
            });
            let convergence = Convergence {
                action,
                result,
                state,
                desired,
                latency,
                request_id,
            };
            match self
                .finish(job, task_id, attempt, convergence, lock, applied.as_ref())
                .await?
            {
                Some(lock_after) => return Ok(lock_after),
                None => debug!(
                    round,
                    "resident state changed during the call; converging again"
                ),
            }
        }
    }

    /// Records how attempt `attempt` ended and carries out the decision (delivered, retry,
    /// dead letter) in one script that also releases `lock`, unless a convergence at the
    /// next lease-window boundary must first be scheduled under it.
    async fn finish(
        &self,
        job: &DeliveryJob,
        task_id: &str,
        (attempt, started_at): (u32, i64),
        convergence: Convergence,
        lock: &ResidentLock,
        applied: Option<&SucceededCall<'_>>,
    ) -> Result<Option<LockAfter>, BoxDynError> {
        let Convergence {
            action,
            result,
            state,
            desired,
            latency,
            request_id,
        } = convergence;
        let class = classify(&result);
        let decision = self.policy.decide(attempt, class, &mut rand::rng());
        let mut record = attempt_record(&result, &decision);
        record.attempt = Some(attempt);
        record.task = Some(task_id.to_owned());
        record.started_at = Some(started_at);
        record.action = Some(action.as_str().to_owned());
        if record.request_id.is_none() {
            record.request_id = request_id;
        }
        if action == Action::None {
            record.status = None;
        }
        let auth_failure = matches!(
            result.as_ref().err().and_then(CallError::status),
            Some(401 | 403)
        );
        // A lease window that opens or closes later needs a convergence then: the finish
        // script schedules it with the outcome, and releases the lock.
        let next_transition = if matches!(decision, Decision::Done) {
            state.as_ref().and_then(|s| s.next_transition(now_ms()))
        } else {
            None
        };
        let applied = applied.map(|call| SucceededCall {
            next_check: next_transition.map(|at| (job, at)),
            ..*call
        });
        let finish = match decision {
            Decision::Done => Finish::Delivered,
            Decision::Retry { delay, .. } => Finish::Retry {
                due_ms: now_ms()
                    .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            },
            Decision::DeadLetter(reason) => Finish::DeadLetter(reason),
        };
        let entry = attempt_entry(
            job,
            attempt,
            AttemptFacts {
                action,
                desired,
                reason: state.as_ref().map(|s| s.explain(now_ms())),
                latency,
            },
            &record,
            &finish,
        );
        // Later attempts' claims wrote it already (and so may this attempt's earlier rounds:
        // the same entry again changes nothing).
        let fold = (attempt == 1)
            .then(|| crate::queue::fold_history_entry(job))
            .flatten();
        match self
            .queue
            .finish_attempt(
                &job.delivery_id,
                task_id,
                &record,
                &finish,
                auth_failure,
                Some(lock),
                applied.as_ref(),
                Some(AttemptHistory {
                    integration_id: &job.integration_id,
                    user_id: &job.user_id,
                    entry: &entry,
                    fold: fold.as_ref(),
                }),
            )
            .await?
        {
            Finished::Recorded { scheduled } => {
                if let (true, Some(at)) = (scheduled, next_transition) {
                    info!(
                        due_ms = at,
                        "scheduled a convergence of user {} for a lease window boundary",
                        job.user_id
                    );
                }
            }
            Finished::StateMoved => return Ok(None),
            Finished::Stale => {
                warn!(
                    "the delivery moved on during the call (replayed or purged); outcome not recorded"
                );
                return Ok(Some(LockAfter::Released));
            }
        }
        log_outcome(job, action, attempt, &result, &decision, auth_failure);
        match &decision {
            Decision::Done => count_job("converged", ""),
            Decision::Retry { .. } => count_job("retried", ""),
            Decision::DeadLetter(reason) => count_job("dead_lettered", reason.as_str()),
        }
        if matches!(decision, Decision::DeadLetter(_)) {
            self.trim_dead_letters().await;
        }
        Ok(Some(LockAfter::Released))
    }

    /// Runs refresh `job` as apalis task `task_id`: one attempt of reading and folding.
    pub async fn run_refresh(
        &self,
        refresher: Option<&Refresher>,
        job: &RefreshJob,
        task_id: &str,
    ) -> Result<(), BoxDynError> {
        let what = format!("refresh of {:?} of source {}", job.refresh, job.source);
        self.run_fold_job(FoldKind::Refresh, &job.delivery_id, task_id, &what, async {
            match refresher {
                Some(refresher) => {
                    refresher
                        .refresh(&job.source, job.refresh, job.cued_at())
                        .await
                }
                None => Err(RefreshError::UnknownSource(job.source.clone())),
            }
        })
        .await
    }

    /// Runs resolve `job` as apalis task `task_id`: one attempt of resolving the event's
    /// emails and folding it.
    pub async fn run_resolve(
        &self,
        resolver: &EventResolver,
        job: &ResolveJob,
        task_id: &str,
    ) -> Result<(), BoxDynError> {
        let what = format!(
            "resolving {} resident(s) by email for lease {} of source {}",
            job.event.residents_by_email.len(),
            job.event.lease.id,
            job.source
        );
        self.run_fold_job(
            FoldKind::Resolve,
            &job.delivery_id,
            task_id,
            &what,
            resolver.run(job),
        )
        .await
    }

    /// One attempt of a job that folds what a source says (a refresh, a resolve), with the
    /// ledger counting it and the retry policy deciding what a failure means, as for a
    /// convergence. No resident lock: the folds are atomic, each in its own script.
    async fn run_fold_job(
        &self,
        kind: FoldKind,
        delivery_id: &str,
        task_id: &str,
        what: &str,
        work: impl std::future::Future<Output = Result<Refreshed, RefreshError>>,
    ) -> Result<(), BoxDynError> {
        let (attempt, started_at) = match self
            .queue
            .begin_attempt(delivery_id, task_id, self.policy.max_attempts)
            .await?
        {
            Begin::Run(n, started_at) => (n, started_at),
            Begin::Stale => {
                debug!("skipping a superseded run of this {}", kind.as_str());
                return Ok(());
            }
            Begin::DeadLettered { reason, attempts } => {
                error!(
                    dead_letter.id = %delivery_id,
                    reason = %reason,
                    "{what} given up after {attempts} attempt(s) that stopped their worker; replay with `lease-sync dead-letters replay {delivery_id}`",
                );
                count_job("dead_lettered", reason.as_str());
                self.trim_dead_letters().await;
                return Ok(());
            }
        };
        Span::current().record("attempt", attempt);
        // Its calls (Buildium, OpenApp's user search) count against the process's
        // `worker.concurrency`, like a convergence's; never closed.
        let permit = self.calls.acquire().await.ok();
        let result = work.await;
        drop(permit);
        let class = match &result {
            Ok(_) => CallClass::Success,
            Err(e) if e.is_retryable() => CallClass::Transient {
                retry_after: e.retry_after(),
            },
            Err(_) => CallClass::Permanent,
        };
        let decision = self.policy.decide(attempt, class, &mut rand::rng());
        let mut record = AttemptRecord {
            attempt: Some(attempt),
            task: Some(task_id.to_owned()),
            started_at: Some(started_at),
            action: Some(kind.as_str().into()),
            ..AttemptRecord::default()
        };
        if let Err(e) = &result {
            record.status = e.status();
            record.error = Some(e.kind().to_owned());
            record.message = Some(e.to_string());
        }
        if let Decision::Retry { delay, cap } = &decision {
            record.delay_ms = Some(millis(*delay));
            record.backoff_cap_ms = Some(millis(*cap));
        }
        let auth_failure = result
            .as_ref()
            .err()
            .is_some_and(RefreshError::is_auth_failure);
        let finish = match &decision {
            Decision::Done => Finish::Delivered,
            Decision::Retry { delay, .. } => Finish::Retry {
                due_ms: now_ms()
                    .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            },
            Decision::DeadLetter(reason) => Finish::DeadLetter(*reason),
        };
        if self
            .queue
            .finish_attempt(
                delivery_id,
                task_id,
                &record,
                &finish,
                auth_failure,
                None,
                None,
                None,
            )
            .await?
            == Finished::Stale
        {
            warn!(
                "the {} moved on during the attempt (replayed or purged); outcome not recorded",
                kind.as_str()
            );
            return Ok(());
        }
        match (&result, &decision) {
            (Ok(done), _) => {
                info!(
                    leases = done.leases,
                    deleted = done.deleted,
                    folded = done.folded,
                    jobs = done.jobs,
                    conflicts = done.conflicts,
                    "{what}: done"
                );
                count_job(kind.done_outcome(), "");
            }
            (Err(e), Decision::Retry { delay, .. }) => {
                warn!(
                    http.status = e.status(),
                    "{what} failed, will retry in {delay:?}: {e}"
                );
                count_job("retried", "");
            }
            (Err(e), Decision::DeadLetter(reason)) => {
                error!(
                    dead_letter.id = %delivery_id,
                    reason = %reason,
                    "{what} given up: {e}; replay with `lease-sync dead-letters replay {delivery_id}`",
                );
                count_job("dead_lettered", reason.as_str());
                self.trim_dead_letters().await;
            }
            (Err(_), Decision::Done) => {}
        }
        Ok(())
    }

    async fn trim_dead_letters(&self) {
        if let Err(e) = self.dead_letters.trim(&self.dead_letter_limits).await {
            warn!("could not enforce the dead-letter limits: {e}");
        }
    }
}

fn classify(result: &Result<CallOutcome, CallError>) -> CallClass {
    match result {
        Ok(_) => CallClass::Success,
        Err(e) if e.is_retryable() => CallClass::Transient {
            retry_after: e
                .retry_after()
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
        },
        Err(_) => CallClass::Permanent,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn attempt_record(result: &Result<CallOutcome, CallError>, decision: &Decision) -> AttemptRecord {
    let mut record = AttemptRecord::default();
    match result {
        Ok(CallOutcome::Applied(s) | CallOutcome::AlreadyDone(s)) => record.status = Some(*s),
        Err(CallError::Transport { kind, message }) => {
            record.error = Some(kind.as_str().to_owned());
            record.message = Some(message.clone());
        }
        Err(CallError::Status {
            status,
            message,
            error_code,
            request_id,
            retry_after,
        }) => {
            record.status = Some(*status);
            record.error = Some("http".into());
            record.message.clone_from(message);
            record.error_code.clone_from(error_code);
            record.request_id.clone_from(request_id);
            record.retry_after.clone_from(retry_after);
        }
    }
    if let Decision::Retry { delay, cap } = decision {
        record.delay_ms = Some(millis(*delay));
        record.backoff_cap_ms = Some(millis(*cap));
    }
    record
}

/// What a convergence attempt did, beyond its ledger record.
struct AttemptFacts {
    action: Action,
    desired: Desired,
    reason: Option<String>,
    latency: Option<Duration>,
}

/// The resident's history entry of one attempt: the decision, the call, what followed.
fn attempt_entry(
    job: &DeliveryJob,
    attempt: u32,
    facts: AttemptFacts,
    record: &AttemptRecord,
    finish: &Finish,
) -> HistoryEntry {
    let (outcome, retry_at, dead_reason) = match finish {
        Finish::Delivered => ("delivered", None, None),
        Finish::Retry { due_ms } => ("retry", Some(*due_ms), None),
        Finish::DeadLetter(reason) => ("dead", None, Some(reason.as_str().to_owned())),
    };
    HistoryEntry::new(
        now_ms(),
        HistoryEvent::Attempt {
            delivery_id: job.delivery_id.clone(),
            attempt,
            desired: match facts.desired {
                Desired::Present => "present",
                Desired::Absent => "absent",
                Desired::Untouched => "untouched",
            }
            .to_owned(),
            reason: facts.reason,
            method: match facts.action {
                Action::Add => Some("POST".to_owned()),
                Action::Remove => Some("DELETE".to_owned()),
                Action::None => None,
            },
            status: record.status,
            request_id: record.request_id.clone(),
            latency_ms: facts.latency.map(millis),
            outcome: outcome.to_owned(),
            retry_at,
            dead_reason,
            error: record.error.clone(),
            error_code: record.error_code.clone(),
            message: record.message.clone(),
        },
    )
}

fn log_outcome(
    job: &DeliveryJob,
    action: Action,
    attempt: u32,
    result: &Result<CallOutcome, CallError>,
    decision: &Decision,
    auth_failure: bool,
) {
    let action = action.as_str();
    let user = &job.user_id;
    match (result, decision) {
        (Ok(outcome), _) => {
            let (status, note) = match outcome {
                CallOutcome::Applied(s) => (*s, "applied"),
                CallOutcome::AlreadyDone(s) => (*s, "already so"),
            };
            info!(
                http.status = status,
                outcome = note,
                "delivered: {action} user {user}"
            );
        }
        (Err(e), Decision::Retry { delay, .. }) => {
            let status = e.status();
            let request_id = e.request_id();
            if auth_failure {
                error!(
                    http.status = status,
                    openapp.request_id = request_id,
                    retry_in_ms = millis(*delay),
                    "OpenApp refused the API key or its roles ({e}); fix [openapp] api_key or the key's roles in OpenApp. Retrying {action} user {user}"
                );
            } else {
                warn!(
                    http.status = status,
                    openapp.request_id = request_id,
                    retry_in_ms = millis(*delay),
                    "attempt {attempt} to {action} user {user} failed, will retry: {e}"
                );
            }
        }
        (Err(e), Decision::DeadLetter(reason)) => {
            error!(http.status = e.status(), openapp.request_id = e.request_id(), reason = %reason, dead_letter.id = %job.delivery_id,
                "{action} user {user} given up after attempt {attempt}: {e}; inspect with `lease-sync dead-letters show {}`", job.delivery_id);
        }
        (Err(e), Decision::Done) => error!("unexpected decision for a failed call: {e}"),
    }
}

/// The jobs that fold what a source says rather than call OpenApp for one resident.
#[derive(Debug, Clone, Copy)]
enum FoldKind {
    Refresh,
    Resolve,
}

impl FoldKind {
    /// The attempt log's action.
    fn as_str(self) -> &'static str {
        match self {
            FoldKind::Refresh => "refresh",
            FoldKind::Resolve => "resolve",
        }
    }

    /// The `outcome` of [`crate::telemetry::metrics::JOBS`] for a run that completed.
    fn done_outcome(self) -> &'static str {
        match self {
            FoldKind::Refresh => "refreshed",
            FoldKind::Resolve => "resolved",
        }
    }
}

/// What the workers run jobs with.
#[derive(Debug)]
struct Handlers {
    deliverer: Deliverer,
    refresher: Option<Refresher>,
    resolver: EventResolver,
}

/// Jobs of one worker that freed their slot ([`SlotRelease`]) and are still being recorded:
/// tracked so a graceful stop waits for them, and bounded so recording cannot fall behind
/// the calls without limit.
#[derive(Debug, Clone)]
struct Finishing {
    tasks: TaskTracker,
    /// Jobs in progress, in a slot or being recorded: twice `worker.concurrency`.
    permits: Arc<tokio::sync::Semaphore>,
}

impl Finishing {
    fn new(concurrency: usize) -> Self {
        Self {
            tasks: TaskTracker::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency.saturating_mul(2))),
        }
    }
}

/// Runs `job` in a task of its own and returns when the job is done or has freed its slot,
/// whichever comes first.
async fn handle_job(
    job: Job,
    task_id: TaskId,
    handlers: Data<Arc<Handlers>>,
    holdings: Data<Holdings>,
    finishing: Data<Finishing>,
    pace: Data<Pace>,
) -> Result<(), BoxDynError> {
    // Lets go of the job's place in the pace when this returns: its call returned or it ended.
    let _slot = pace.slot();
    let task_id = task_id.to_string();
    // Never closed: an error would only mean no bound.
    let permit = finishing.permits.clone().acquire_owned().await.ok();
    let (tx, freed) = tokio::sync::oneshot::channel();
    let handlers = Arc::clone(&handlers);
    let holdings = Holdings::clone(&holdings);
    // Boxed, so that spawning moves a pointer: the job's future is large, and moving it into
    // the task took 1.2 % of the worker's CPU in a drain profile.
    let mut run = finishing.tasks.spawn(Box::pin(async move {
        let mut slot = SlotRelease(Some(tx));
        let result = run_job(&job, &task_id, &handlers, &mut slot).await;
        // Ended in Redis by the scripts (or, after a Redis failure, left to lapse and be
        // recovered): no more renewals either way.
        holdings.done(&task_id);
        drop(permit);
        if let (None, Err(e)) = (&slot.0, &result) {
            // Nobody awaits this result any more.
            warn!(delivery.id = %job.delivery_id(), "could not record a job's outcome: {e}; it runs again once its hold lapses");
        }
        result
    }));
    tokio::select! {
        joined = &mut run => joined.unwrap_or_else(|e| Err(Box::new(e))),
        Ok(()) = freed => Ok(()),
    }
}

async fn run_job(
    job: &Job,
    task_id: &str,
    handlers: &Handlers,
    slot: &mut SlotRelease,
) -> Result<(), BoxDynError> {
    let lease_id = match &job {
        Job::Converge(c) => c.lease_id.clone(),
        Job::Resolve(r) => r.event.lease.id.clone(),
        Job::Refresh(r) => match r.refresh {
            Refresh::Lease { lease_id } => lease_id.to_string(),
            Refresh::Tenant { .. } => String::new(),
        },
    };
    let span = info_span!(
        "job",
        event.id = %job.event_id(),
        source = %job.source(),
        lease.id = %lease_id,
        delivery.id = %job.delivery_id(),
        job.kind = job.kind(),
        attempt = tracing::field::Empty,
    );
    // apalis's catch_panic layer cannot be spawned onto tokio (its handler type is not general
    // over lifetimes), so panics are caught here and treated like a crash: the task runs again,
    // the ledger marks the attempt crashed, and a persistent panic ends as a crash_loop dead letter.
    let run = std::panic::AssertUnwindSafe(async {
        match job {
            Job::Converge(c) => handlers.deliverer.run(c, task_id, slot).await,
            Job::Refresh(r) => {
                handlers
                    .deliverer
                    .run_refresh(handlers.refresher.as_ref(), r, task_id)
                    .await
            }
            Job::Resolve(r) => {
                handlers
                    .deliverer
                    .run_resolve(&handlers.resolver, r, task_id)
                    .await
            }
        }
    });
    match futures::FutureExt::catch_unwind(run).instrument(span).await {
        Ok(result) => result,
        Err(_) => {
            error!(delivery.id = %job.delivery_id(), "job panicked; it will be retried and counted as a crash");
            Err(Box::new(std::io::Error::other("job panicked")))
        }
    }
}

/// A name no other worker has used, for logs.
fn unique_worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), ulid::Ulid::new())
}

/// Counts one job run in [`crate::telemetry::metrics::JOBS`].
fn count_job(outcome: &'static str, reason: &'static str) {
    metrics::counter!(crate::telemetry::metrics::JOBS, "outcome" => outcome, "reason" => reason)
        .increment(1);
}

/// Runs workers until `shutdown` is cancelled, starting a fresh one whenever one dies.
/// On shutdown, in-flight jobs get `worker.shutdown_timeout_secs` to finish; whatever is
/// still unfinished goes back to the queue.
pub async fn run_workers(
    settings: &Settings,
    queue: JobQueue,
    client: OpenAppClient,
    status: WorkerStatus,
    shutdown: CancellationToken,
) {
    let refresher = match Refresher::new(settings, queue.clone(), client.clone()) {
        Ok(refresher) => refresher,
        Err(e) => {
            // Validation checked the settings; a client that cannot be built (TLS roots) is
            // reported, and refresh jobs then dead-letter as a configuration error.
            error!("cannot set up the Buildium client: {e}; refreshes will fail");
            None
        }
    };
    let handlers = Arc::new(Handlers {
        resolver: EventResolver::new(settings, queue.clone(), client.clone()),
        deliverer: Deliverer::new(client, queue.clone(), settings),
        refresher,
    });
    let worker_settings = settings.worker.clone();
    let poll_interval = worker_settings.poll_interval;

    let maintenance = tokio::spawn(maintain(
        queue.clone(),
        crate::integrations::Integrations::new(settings, queue.clone()),
        settings.dead_letters.clone(),
        poll_interval,
        shutdown.clone(),
    ));

    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        if let Err(e) = queue.layout_ready().await {
            failures = failures.saturating_add(1);
            let delay = Duration::from_millis(250u64.saturating_mul(1 << failures.min(7)))
                .min(MAX_RESTART_DELAY);
            warn!(
                "cannot start a worker: the Redis layout is not ready ({e}); trying again in {delay:?}"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        }
        let name = unique_worker_name();
        let holdings = Holdings::new();
        // Convergences are claimed ahead of the call slots; `calls` bounds the calls.
        let in_progress = worker_settings.jobs_in_progress();
        let finishing = Finishing::new(in_progress);
        let hold = worker_settings.orphan_window();
        let renewal = tokio::spawn(holdings.clone().renew_every(
            queue.clone(),
            worker_settings.heartbeat,
            hold,
        ));
        let pace = Pace::new(
            worker_settings.concurrency.get(),
            worker_settings.claim_ahead,
        );
        let pacing = tokio::spawn(pace.clone().run(|ahead, taken| {
            #[expect(clippy::cast_precision_loss, reason = "job counts stay far below 2^52")]
            {
                metrics::gauge!(crate::telemetry::metrics::WORKER_JOBS_AHEAD).set(ahead as f64);
                metrics::gauge!(crate::telemetry::metrics::WORKER_JOBS_TAKEN).set(taken as f64);
            }
        }));
        let backend = QueueBackend::new(
            queue.clone(),
            holdings.clone(),
            pace.clone(),
            worker_settings.batch_size.get(),
            hold,
        )
        .poll_with_strategy(crate::queue::poll::EveryInterval::new(poll_interval));
        let worker = WorkerBuilder::new(name.as_str())
            .backend(backend)
            .data(handlers.clone())
            .data(holdings.clone())
            .data(finishing.clone())
            .data(pace)
            .concurrency(in_progress)
            .build(handle_job);

        info!(worker = %name, concurrency = worker_settings.concurrency, "worker starting");
        let started_at = Instant::now();
        status.running.store(true, Ordering::SeqCst);
        let stop = shutdown.clone();
        let run = worker.run_until(async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        });
        tokio::pin!(run);
        let grace = worker_settings.shutdown_timeout;
        let mut deadline = None;
        let result = tokio::select! {
            result = &mut run => Some(result),
            () = shutdown.cancelled() => {
                // The signal also reaches the worker itself; give its in-flight jobs time.
                deadline = Some(tokio::time::Instant::now() + grace);
                match tokio::time::timeout(grace, &mut run).await {
                    Ok(result) => Some(result),
                    Err(_) => {
                        warn!(worker = %name, "in-flight jobs did not finish within {grace:?}; returning them to the queue");
                        None
                    }
                }
            }
        };
        // Jobs that freed their slot may still be recording their outcome.
        finishing.tasks.close();
        let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + grace);
        if tokio::time::timeout_at(deadline, finishing.tasks.wait())
            .await
            .is_err()
        {
            warn!(worker = %name, "outcomes still being recorded after {grace:?}; returning those jobs to the queue");
        }
        status.running.store(false, Ordering::SeqCst);
        renewal.abort();
        pacing.abort();
        // Jobs still held (their handlers were cut off at the grace period, or never
        // started) go back now instead of when their holds lapse.
        let held = holdings.snapshot();
        if let Err(e) = queue.release(&held).await {
            warn!(worker = %name, held = held.len(), "could not return held jobs (they return when their holds lapse): {e}");
        }
        match result {
            Some(Ok(())) | None => {
                if shutdown.is_cancelled() {
                    info!(worker = %name, "worker stopped");
                    failures = 0;
                } else {
                    // The backend ends its stream when a fetch fails (Redis away): back off
                    // as after an error, so an outage is not a tight restart loop.
                    if started_at.elapsed() > WORKER_HEALTHY_AFTER {
                        failures = 0;
                    }
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_millis(250u64.saturating_mul(1 << failures.min(7)))
                        .min(MAX_RESTART_DELAY);
                    warn!(worker = %name, "worker stopped on its own; starting a new one in {delay:?}");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
            Some(Err(e)) => {
                // A worker that ran a while before failing starts a fresh series of retries:
                // separate outages must not stack up the delay.
                if started_at.elapsed() > WORKER_HEALTHY_AFTER {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                status.restarts.fetch_add(1, Ordering::SeqCst);
                let delay = Duration::from_millis(250u64.saturating_mul(1 << failures.min(7)))
                    .min(MAX_RESTART_DELAY);
                error!(worker = %name, "worker failed: {e}; starting a new one in {delay:?}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }
    maintenance.abort();
}

/// Every poll interval, promotes due retries and recovers jobs whose hold lapsed; every
/// [`HOUSEKEEPING_EVERY`], enforces the dead-letter limits and releases jobs still held for
/// integrations that are no longer paused (a resume that failed half-way).
async fn maintain(
    queue: JobQueue,
    integrations: crate::integrations::Integrations,
    limits: DeadLetterSettings,
    every: Duration,
    shutdown: CancellationToken,
) {
    let dead_letters = DeadLetters::new(&queue);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_housekeeping: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = queue.promote_due(now_ms()).await {
            // Redis is down; the worker supervisor reports that loudly already.
            debug!("promoting due retries failed: {e}");
            continue;
        }
        match queue.recover_lapsed(now_ms()).await {
            Ok(0) => {}
            Ok(recovered) => warn!(
                recovered,
                "took back jobs whose worker stopped renewing them (a worker died or lost Redis)"
            ),
            Err(e) => debug!("recovering lapsed jobs failed: {e}"),
        }
        if last_housekeeping.is_some_and(|at| at.elapsed() < HOUSEKEEPING_EVERY) {
            continue;
        }
        last_housekeeping = Some(Instant::now());
        if let Err(e) = dead_letters.trim(&limits).await {
            debug!("dead-letter trim failed: {e}");
        }
        match integrations.release_unpaused().await {
            Ok(0) => {}
            Ok(released) => warn!(
                released,
                "released convergences still held for integrations that are not paused"
            ),
            Err(e) => debug!("releasing held jobs failed: {e}"),
        }
    }
}
