//! The apalis `Backend` over lease-sync's own Redis layout: apalis runs the worker loop
//! (concurrency, tracing, graceful shutdown) and asks this backend for jobs.
//!
//! A fetch takes a batch of job ids from the head of the ready list and *holds* each in the
//! in-flight set until a time (`fetch.lua`). While the worker has a job (buffered or running)
//! it renews that hold every heartbeat ([`Holdings::renew_every`]); the scripts that end a
//! job (`begin_attempt.lua` for stale and dead jobs, `finish_attempt.lua`, `defer.lua`) drop
//! it from the set in the same step, so a happy-path job costs no round trip of its own to
//! acknowledge. A job whose hold lapses — its worker died, or its handler failed on Redis and
//! let go of it — goes back to the head of the ready list ([`JobQueue::recover_lapsed`], run
//! by every worker process). On a graceful stop the jobs fetched but not started go back at
//! once (`release.lua`).
//!
//! Why not apalis-redis: its layout has no hash tags and global keys (no Redis Cluster), its
//! acknowledgement is a round trip per job, its in-flight sets are per worker (counting them
//! needs an index or a SCAN), and it carries defects lease-sync had to work around (a hard
//! 25-attempt cap, a done set that grows for ever, a poll that cannot wake). See
//! `docs/ARCHITECTURE.md`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{Backend, Identity, Task, TaskBuilder, TaskId, WorkerContext};
use apalis_core::backend::BackendConfig;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tracing::{debug, error};

use super::pace::Pace;
use super::{FetchedJob, Job, JobQueue, QueueError, now_ms};

/// The job ids one worker holds (fetched and not yet finished), so their holds can be renewed
/// and, on a stop, released. Cheap to clone; clones share the set.
#[derive(Debug, Clone, Default)]
pub struct Holdings {
    ids: Arc<Mutex<HashSet<String>>>,
}

impl Holdings {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(id.to_owned());
        }
    }

    /// Forgets job `id`: its handler returned. If the handler could not end the job in Redis
    /// (Redis failed), its hold lapses and the job is recovered and run again.
    pub fn done(&self, id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.remove(id);
        }
    }

    /// The ids held now.
    pub fn snapshot(&self) -> Vec<String> {
        self.ids
            .lock()
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Renews the holds of every job held, every `every`, for `hold` each time, until the
    /// future is dropped. Renewal failures are logged: a hold that lapses only means the job
    /// may run twice, which the ledger fences.
    pub async fn renew_every(self, queue: JobQueue, every: Duration, hold: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let ids = self.snapshot();
            if let Err(e) = queue.renew_holds(&ids, hold_until(hold)).await {
                debug!(held = ids.len(), "renewing job holds failed: {e}");
            }
        }
    }
}

/// The end of a hold taken now for `hold`.
fn hold_until(hold: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX))
}

/// apalis's view of the queue for one worker: fetches in batches, no more than its [`Pace`]
/// allows, and hands out jobs one by one.
pub struct QueueBackend {
    queue: JobQueue,
    holdings: Holdings,
    pace: Pace,
    batch: usize,
    hold: Duration,
    buffer: VecDeque<Task<Job>>,
    fetching: Option<BoxFuture<'static, Result<Vec<FetchedJob>, QueueError>>>,
    closing: Option<BoxFuture<'static, Result<u64, QueueError>>>,
    failed: bool,
}

impl std::fmt::Debug for QueueBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBackend")
            .field("batch", &self.batch)
            .field("hold", &self.hold)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl QueueBackend {
    /// A backend fetching up to `batch` jobs at a time from `queue` (fewer when `pace` has
    /// less room), holding each for `hold` (renewed through `holdings` while the worker has
    /// it). Each job handed out must let go of its place in `pace` ([`Pace::slot`]).
    pub fn new(
        queue: JobQueue,
        holdings: Holdings,
        pace: Pace,
        batch: usize,
        hold: Duration,
    ) -> Self {
        Self {
            queue,
            holdings,
            pace,
            batch: batch.max(1),
            hold,
            buffer: VecDeque::new(),
            fetching: None,
            closing: None,
            failed: false,
        }
    }
}

impl Backend for QueueBackend {
    type Task = Task<Job>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<Job>, QueueError>>> {
        if self.failed {
            // After a Redis failure the stream ends: the supervisor starts a fresh worker.
            return Poll::Ready(None);
        }
        if let Some(task) = self.buffer.pop_front() {
            return Poll::Ready(Some(Ok(task)));
        }
        if self.fetching.is_none() {
            let mut size = self.pace.fetch_size(self.batch);
            if size == 0 {
                // Woken when a job lets go (or the pace allows more); checked again after
                // registering, so a let-go in between is not missed.
                self.pace.wake_on_room(cx.waker());
                size = self.pace.fetch_size(self.batch);
                if size == 0 {
                    return Poll::Pending;
                }
            }
            let queue = self.queue.clone();
            let (batch, hold) = (size, self.hold);
            self.fetching = Some(async move { queue.fetch(batch, hold_until(hold)).await }.boxed());
        }
        let Some(fetch) = self.fetching.as_mut() else {
            return Poll::Pending;
        };
        let fetched = match fetch.poll_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        self.fetching = None;
        match fetched {
            Err(e) => {
                self.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Ok(jobs) => {
                self.pace.took(jobs.len());
                for (id, job) in jobs {
                    self.holdings.add(&id);
                    match job {
                        Ok(job) => self.buffer.push_back(
                            TaskBuilder::new(job)
                                .task_id(TaskId::from_string(id))
                                .build(),
                        ),
                        Err(e) => {
                            // Written by a release that knew a job kind this one does not: left
                            // held, it is recovered later (by a newer worker, in a rolling
                            // upgrade) instead of being lost.
                            error!(job.id = %id, "cannot read a queued job: {e}; leaving it for another worker");
                            self.holdings.done(&id);
                            self.pace.let_go();
                        }
                    }
                }
                match self.buffer.pop_front() {
                    Some(task) => Poll::Ready(Some(Ok(task))),
                    // Nothing ready: the poll strategy's timer wakes the worker to look again.
                    None => Poll::Pending,
                }
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        if self.closing.is_none() {
            let ids: Vec<String> = self
                .buffer
                .drain(..)
                .filter_map(|task| task.task_id().map(ToString::to_string))
                .collect();
            if ids.is_empty() {
                return Poll::Ready(Ok(()));
            }
            for id in &ids {
                self.holdings.done(id);
                self.pace.let_go();
            }
            let queue = self.queue.clone();
            self.closing = Some(async move { queue.release(&ids).await }.boxed());
        }
        let Some(closing) = self.closing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match closing.poll_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.closing = None;
                Poll::Ready(
                    result.map(|released| debug!(released, "returned unstarted jobs to the queue")),
                )
            }
        }
    }
}

impl BackendConfig for QueueBackend {
    type Args = Job;
    type Id = TaskId;
    type Kind = apalis_core::backend::finalize::Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}
