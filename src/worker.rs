//! Workers: take delivery jobs off the queue and make OpenApp match.
//!
//! apalis runs the loop (fetch, in-flight tracking, acknowledgement, take-over of jobs held by
//! dead workers). Around it, [`run_workers`] adds what apalis-redis 1.0 lacks
//! (`shared/reference/apalis-redis-1.0.md`):
//! * a poll interval, without which new jobs wait for the next heartbeat (bug 2);
//! * a unique worker name per run, because a same-name restart is refused for the whole
//!   heartbeat window (bug 8), and a supervisor that starts a fresh worker whenever apalis
//!   gives up on one (a Redis outage kills it: apalis-redis#76);
//! * explicit heartbeat settings instead of the 300 s default orphan window (bug 7), and
//!   `lock_tasks(false)`, which avoids an O(backlog) scan per fetch (bug 4);
//! * bounded promotion of due retries (bug 3), see [`JobQueue::promote_due`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use apalis::layers::WorkerBuilderExt as _;
use apalis::prelude::{AbortError, Attempt, BackendExt as _, BoxDynError, Data, WorkerBuilder};
use apalis_redis::RedisStorage;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::config::Settings;
use crate::event::EventType;
use crate::openapp::{CallError, CallOutcome, OpenAppClient};
use crate::queue::{DeliveryJob, JobQueue};

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

/// Performs one delivery job against OpenApp.
#[derive(Debug)]
pub struct Deliverer {
    client: OpenAppClient,
    max_attempts: usize,
}

/// Why a job did not succeed this time.
#[derive(Debug, thiserror::Error)]
#[error("{action} user {user_id} in integration {integration_id}: {source}")]
pub struct DeliveryFailure {
    action: &'static str,
    user_id: String,
    integration_id: String,
    #[source]
    source: CallError,
}

impl Deliverer {
    /// A deliverer calling OpenApp through `client`, giving up after `max_attempts` calls.
    pub fn new(client: OpenAppClient, max_attempts: usize) -> Self {
        Self {
            client,
            max_attempts,
        }
    }

    /// Makes one OpenApp call for `job`: add on `lease.signed`, remove on `lease.ended`.
    pub async fn call(&self, job: &DeliveryJob) -> Result<CallOutcome, DeliveryFailure> {
        let (action, result) = match job.event_type {
            EventType::LeaseSigned => (
                "add",
                self.client
                    .add_building_user(&job.org_id, &job.integration_id, &job.user_id, &job.role)
                    .await,
            ),
            EventType::LeaseEnded => (
                "remove",
                self.client
                    .remove_building_user(&job.org_id, &job.integration_id, &job.user_id)
                    .await,
            ),
        };
        result.map_err(|source| DeliveryFailure {
            action,
            user_id: job.user_id.clone(),
            integration_id: job.integration_id.clone(),
            source,
        })
    }

    /// Runs `job` as attempt number `attempt` (1-based) and tells apalis what to do next:
    /// `Ok` acknowledges; a plain error reschedules; an [`AbortError`] parks the job in the
    /// dead set, for failures that cannot succeed or attempts used up.
    pub async fn run(&self, job: DeliveryJob, attempt: usize) -> Result<(), BoxDynError> {
        match self.call(&job).await {
            Ok(outcome) => {
                let (status, note) = match outcome {
                    CallOutcome::Applied(s) => (s, "applied"),
                    CallOutcome::AlreadyDone(s) => (s, "already so"),
                };
                info!(
                    http.status = status,
                    outcome = note,
                    "delivered {} for user {}",
                    job.event_type,
                    job.user_id
                );
                Ok(())
            }
            Err(failure) => {
                let status = failure.source.status();
                let request_id = failure.source.request_id().map(str::to_owned);
                if failure.source.is_retryable() && attempt < self.max_attempts {
                    if matches!(status, Some(401 | 403)) {
                        error!(
                            http.status = status,
                            openapp.request_id = request_id,
                            "OpenApp refused the API key or its roles; fix [openapp] api_key / the key's roles. Will retry: {failure}"
                        );
                    } else {
                        warn!(
                            http.status = status,
                            openapp.request_id = request_id,
                            "delivery failed, will retry: {failure}"
                        );
                    }
                    Err(Box::new(failure))
                } else {
                    let why = if failure.source.is_retryable() {
                        "attempts used up"
                    } else {
                        "permanent failure"
                    };
                    error!(
                        http.status = status,
                        openapp.request_id = request_id,
                        reason = why,
                        "delivery given up: {failure}"
                    );
                    Err(Box::new(AbortError::new(failure)))
                }
            }
        }
    }
}

async fn handle_job(
    job: DeliveryJob,
    attempt: Attempt,
    deliverer: Data<Arc<Deliverer>>,
) -> Result<(), BoxDynError> {
    let span = info_span!(
        "job",
        event.id = %job.event_id,
        source = %job.source,
        lease.id = %job.lease_id,
        attempt = attempt.current(),
    );
    // apalis's own catch_panic layer cannot be spawned onto tokio (its handler type is not
    // general over lifetimes), so panics are caught here: a panicking job is a bug, parked in
    // the dead set rather than retried in a loop.
    let run = std::panic::AssertUnwindSafe(deliverer.run(job, attempt.current().max(1)));
    match futures::FutureExt::catch_unwind(run).instrument(span).await {
        Ok(result) => result,
        Err(_) => {
            error!("delivery job panicked; parking it in the dead set");
            Err(Box::new(AbortError::new(std::io::Error::other(
                "delivery job panicked",
            ))))
        }
    }
}

/// A name no other worker has used: apalis refuses to register a name seen within the
/// heartbeat window, and two processes sharing one would share an in-flight set.
fn unique_worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), ulid::Ulid::new())
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
    let deliverer = Arc::new(Deliverer::new(client, settings.retry.max_attempts));
    let worker_settings = settings.worker.clone();
    let poll_interval = Duration::from_millis(worker_settings.poll_interval_ms);

    let promoter = tokio::spawn(promote_forever(
        queue.clone(),
        poll_interval,
        shutdown.clone(),
    ));

    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        let name = unique_worker_name();
        let config = apalis_redis::Config::default()
            .queue(queue.keys().delivery_queue())
            .batch_size(worker_settings.batch_size)
            .heartbeat_interval(Duration::from_secs(worker_settings.heartbeat_secs))
            .missed_heartbeats(worker_settings.missed_heartbeats)
            .lock_tasks(false)
            .emit_events(false);
        let backend = RedisStorage::<DeliveryJob>::new(queue.connection())
            .with_config(config)
            .poll_with_interval(poll_interval);
        let worker = WorkerBuilder::new(name.as_str())
            .backend(backend)
            .data(deliverer.clone())
            .concurrency(worker_settings.concurrency)
            .build(handle_job);

        info!(worker = %name, concurrency = worker_settings.concurrency, "worker starting");
        status.running.store(true, Ordering::SeqCst);
        let stop = shutdown.clone();
        let run = worker.run_until(async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        });
        tokio::pin!(run);
        let result = tokio::select! {
            result = &mut run => Some(result),
            () = shutdown.cancelled() => {
                // The signal also reaches the worker itself; give its in-flight jobs time.
                let grace = Duration::from_secs(worker_settings.shutdown_timeout_secs);
                match tokio::time::timeout(grace, &mut run).await {
                    Ok(result) => Some(result),
                    Err(_) => {
                        warn!(worker = %name, "in-flight jobs did not finish within {grace:?}; returning them to the queue");
                        None
                    }
                }
            }
        };
        status.running.store(false, Ordering::SeqCst);
        if let Err(e) = queue.deregister_worker(&name).await {
            warn!(worker = %name, "could not deregister worker (its jobs return after the heartbeat window): {e}");
        }
        match result {
            Some(Ok(())) | None => {
                if shutdown.is_cancelled() {
                    info!(worker = %name, "worker stopped");
                } else {
                    warn!(worker = %name, "worker stopped on its own; starting a new one");
                }
                failures = 0;
            }
            Some(Err(e)) => {
                failures = failures.saturating_add(1);
                status.restarts.fetch_add(1, Ordering::SeqCst);
                let delay = Duration::from_millis(250u64.saturating_mul(1 << failures.min(7)));
                error!(worker = %name, "worker failed: {e}; starting a new one in {delay:?}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }
    promoter.abort();
}

async fn promote_forever(queue: JobQueue, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if let Err(e) = queue.promote_due(now).await {
            // Redis is down; the worker supervisor reports that loudly already.
            tracing::debug!("promoting due retries failed: {e}");
        }
    }
}
