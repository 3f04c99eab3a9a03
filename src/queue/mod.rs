//! The durable queue: jobs in Redis in lease-sync's own layout, the ledger that decides their
//! fate, and everything else processes share through Redis.
//!
//! This module owns every key ([`keys::Keys`], one hash tag per namespace, so it runs on a
//! Redis Cluster too) and every script (`lua/`, each taking every key it touches in `KEYS`).
//! apalis stays the worker runtime (concurrency, tracing, graceful shutdown); it reads jobs
//! through [`backend::QueueBackend`], an apalis `Backend` over this layout:
//!
//! * **Enqueue** is one Lua script that claims the dedupe key and writes every job of the
//!   event (its ledger hash, its payload, its id at the tail of the ready list), so 202 means
//!   all of it is in Redis and 200 `duplicate` means nothing was written.
//! * **Fetch** takes a batch of ids from the head of the ready list and *holds* each in the
//!   in-flight set until a time its worker keeps renewing; a hold that lapses (the worker died)
//!   puts the job back at the head ([`JobQueue::recover_lapsed`]).
//! * **The ledger** (one hash per delivery, see [`ledger`]) counts attempts *before* each call,
//!   so crashes count, applies the retry policy, and fences stale duplicate runs of a job.
//!   Claiming a job is one script and finishing it is another, which also ends its hold: a
//!   happy-path job costs two round trips after its (batched) fetch. Retries are new jobs in
//!   the scheduled set, promoted in bounded chunks ([`JobQueue::promote_due`]).
//! * **Counts** are constant-time (`LLEN`/`ZCARD` and counters): no SCAN.
//! * **Upgrades** from the layout of earlier releases (apalis-redis's keys, no hash tag) happen
//!   once, at startup ([`migrate`]).
//!
//! Beside the queue, Redis holds what processes share: resident state ([`residents`]), the
//! identity cache ([`identity`]), conflicts ([`conflicts`]) and request rates shared by every
//! worker process ([`rate_limit`]).

pub mod backend;
pub mod batch;
pub mod conflicts;
pub mod connection;
mod console;
mod dead_letter_store;
pub mod history;
pub mod identity;
pub mod keys;
pub mod ledger;
pub mod migrate;
pub mod pace;
pub mod pause;
pub mod poll;
pub mod rate_limit;
mod reconcile_claims;
pub mod residents;

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use self::connection::RedisConnection;
pub use self::keys::Keys;
use crate::config::RedisSettings;
use crate::event::{EventType, LeaseEvent};
use crate::history::{HistoryEntry, HistoryEvent};
use crate::sources::buildium::webhook::Refresh;

/// How long a process waits for another one that is migrating the layout.
const MIGRATION_WAIT: Duration = Duration::from_secs(60);

/// Most due retries moved per promotion step; keeps every Lua `unpack` far below its limit.
pub const PROMOTE_CHUNK: usize = 500;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// One unit of work: make OpenApp reflect one event for one resident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// Payload version, so jobs queued by an older release stay readable.
    pub v: u32,
    /// Stable id of this delivery across retries and replays; the dead-letter id.
    pub delivery_id: String,
    /// The event id (the sender's `webhook-id`).
    pub event_id: String,
    /// The source that sent it.
    pub source: String,
    /// What happened.
    pub event_type: EventType,
    /// When it happened at the source.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The lease.
    pub lease_id: String,
    /// The source's building id.
    pub property_id: String,
    /// The OpenApp user to add or remove.
    pub user_id: String,
    /// OpenApp organisation (`X-Org`).
    pub org_id: String,
    /// OpenApp integration (path id).
    pub integration_id: String,
    /// Role granted on add.
    pub role: String,
    /// What queued this job when not an event: `schedule` (a lease window boundary),
    /// `reconcile`. Absent for jobs queued by an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// Where in OpenApp a job's resident lives: the building's org, integration and role.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// OpenApp organisation (`X-Org`).
    pub org_id: &'a str,
    /// OpenApp integration (path id).
    pub integration_id: &'a str,
    /// Role granted on add.
    pub role: &'a str,
}

impl DeliveryJob {
    /// The convergence job for `user_id` after `event` from `source`, in the building
    /// `target`; `trigger` is `None` for webhook events.
    pub fn for_event(
        event: &LeaseEvent,
        source: &str,
        user_id: &str,
        target: Target<'_>,
        trigger: Option<&str>,
    ) -> Self {
        Self {
            v: JOB_VERSION,
            delivery_id: ulid::Ulid::new().to_string(),
            event_id: event.id.clone(),
            source: source.to_owned(),
            event_type: event.event_type,
            occurred_at: event.occurred_at,
            lease_id: event.lease.id.clone(),
            property_id: event.lease.property_id.clone(),
            user_id: user_id.to_owned(),
            org_id: target.org_id.to_owned(),
            integration_id: target.integration_id.to_owned(),
            role: target.role.to_owned(),
            trigger: trigger.map(str::to_owned),
        }
    }

    /// `add` for a signed lease, `remove` for an ended one.
    pub fn action(&self) -> &'static str {
        match self.event_type {
            EventType::LeaseSigned => "add",
            EventType::LeaseEnded => "remove",
        }
    }
}

/// Current [`DeliveryJob::v`], [`RefreshJob::v`] and [`ResolveJob::v`].
pub const JOB_VERSION: u32 = 1;

/// One unit of work on the queue: the payload of a queued job and of a delivery's ledger.
/// Untagged, so the convergence jobs queued before refreshes existed read as they were. The
/// variants are told apart by the fields each requires (`user_id`, `refresh`, `event`), so
/// their order does not change what a payload reads as; convergences, nearly every job, come
/// first so that they parse at the first try instead of after two failed ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Job {
    /// Make OpenApp show what one resident's state says.
    Converge(DeliveryJob),
    /// Read a lease (or a tenant's leases) again from its source and fold what it says.
    Refresh(RefreshJob),
    /// Resolve the residents an event names by email, then fold the event.
    Resolve(ResolveJob),
}

impl Job {
    /// The delivery id: the ledger's and the dead letter's id.
    pub fn delivery_id(&self) -> &str {
        match self {
            Job::Refresh(job) => &job.delivery_id,
            Job::Resolve(job) => &job.delivery_id,
            Job::Converge(job) => &job.delivery_id,
        }
    }

    /// The event that queued it.
    pub fn event_id(&self) -> &str {
        match self {
            Job::Refresh(job) => &job.event_id,
            Job::Resolve(job) => &job.event_id,
            Job::Converge(job) => &job.event_id,
        }
    }

    /// Its source.
    pub fn source(&self) -> &str {
        match self {
            Job::Refresh(job) => &job.source,
            Job::Resolve(job) => &job.source,
            Job::Converge(job) => &job.source,
        }
    }

    /// `converge`, `refresh` or `resolve`.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::Refresh(_) => "refresh",
            Job::Resolve(_) => "resolve",
            Job::Converge(_) => "converge",
        }
    }
}

/// Read a lease, or a tenant and their leases, again from a Buildium source, and fold what
/// Buildium says into resident state (queueing the convergences it changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshJob {
    /// Payload version.
    pub v: u32,
    /// Stable id across retries and replays; the dead-letter id.
    pub delivery_id: String,
    /// The event that asked for it (the webhook body's digest), or `pull-…`.
    pub event_id: String,
    /// The source to read.
    pub source: String,
    /// What to read.
    pub refresh: Refresh,
    /// What queued it when not a webhook (`pull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// When it was queued (ms since the epoch): the change it reads happened before, so reads
    /// of several refreshes can be one list of the leases changed since then. Absent in jobs
    /// queued by earlier versions (they read on their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cued_at_ms: Option<i64>,
}

impl RefreshJob {
    /// A refresh of `refresh` at `source`, asked for by event `event_id`, queued now.
    pub fn new(source: &str, event_id: &str, refresh: Refresh, trigger: Option<&str>) -> Self {
        Self {
            v: JOB_VERSION,
            delivery_id: ulid::Ulid::new().to_string(),
            event_id: event_id.to_owned(),
            source: source.to_owned(),
            refresh,
            trigger: trigger.map(str::to_owned),
            cued_at_ms: Some(now_ms()),
        }
    }

    /// [`RefreshJob::cued_at_ms`] as an instant.
    pub fn cued_at(&self) -> Option<time::OffsetDateTime> {
        self.cued_at_ms.and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
    }
}

/// Resolve the residents a native event names only by email to OpenApp users, then fold the
/// event for every resident it names (see [`crate::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveJob {
    /// Payload version.
    pub v: u32,
    /// Stable id across retries and replays; the dead-letter id.
    pub delivery_id: String,
    /// The event's id.
    pub event_id: String,
    /// The source that sent it.
    pub source: String,
    /// The event, as ingest validated it.
    pub event: LeaseEvent,
}

impl ResolveJob {
    /// The job resolving and folding `event` of `source`.
    pub fn new(source: &str, event: &LeaseEvent) -> Self {
        Self {
            v: JOB_VERSION,
            delivery_id: ulid::Ulid::new().to_string(),
            event_id: event.id.clone(),
            source: source.to_owned(),
            event: event.clone(),
        }
    }
}

/// Result of offering an event to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// New event, folded into its residents' state.
    Queued {
        /// Convergence jobs now durably queued (residents whose state changed).
        jobs: usize,
        /// Residents for whom the event was older than what their lease already records.
        stale: usize,
        /// Residents whose lease record was dated in the future (beyond the clock skew) and
        /// was replaced by this event.
        overridden: usize,
    },
    /// The source already delivered this event, under this id, within the dedupe window;
    /// nothing written.
    Duplicate,
    /// The source already delivered a *different* event under this id within the dedupe
    /// window; nothing written.
    Conflict,
}

/// The bounds of one enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnqueueLimits {
    /// How long the event id is remembered for deduplication.
    pub dedupe_ttl: Duration,
    /// The source's `max_clock_skew_secs`: lease records dated further ahead of now than
    /// this never outrank an incoming event.
    pub max_clock_skew: Duration,
    /// How long Redis may take to answer.
    pub timeout: Duration,
}

/// The digest kept with an event's dedupe marker: `sha256:` and the hex SHA-256 of the
/// event as lease-sync serializes it, so a re-delivery matches whatever its whitespace, key
/// order or ignored fields, and a different event under the same id does not.
pub fn event_digest(event_json: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(event_json)))
}

/// Queue depths and lifetime counters, read straight from Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueueCounts {
    /// Jobs waiting to be fetched.
    pub ready: u64,
    /// Retries waiting for their time.
    pub scheduled: u64,
    /// Jobs fetched by a worker and not yet acknowledged.
    pub in_flight: u64,
    /// Dead letters currently stored.
    pub dead: u64,
    /// Seconds the oldest ready job has waited, if any is ready.
    pub oldest_ready_age_secs: Option<f64>,
    /// Deliveries completed since the namespace was created.
    pub done: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Deliveries moved to the dead letters.
    pub dead_lettered: u64,
    /// Calls OpenApp refused with 401 or 403 (credentials or roles).
    pub auth_failures: u64,
    /// Dead letters removed by the size or age cap.
    pub dead_letters_trimmed: u64,
    /// Duplicate runs of superseded tasks that were skipped.
    pub stale_tasks: u64,
    /// Events (per resident) older than what their lease already recorded: ignored.
    pub stale_events: u64,
    /// Jobs put off because another worker was converging the same resident.
    pub deferred: u64,
    /// Convergences held because their integration is paused.
    pub held: u64,
    /// Integrations paused now.
    pub paused_integrations: u64,
    /// The namespace's Redis layout (`{namespace}:layout`): `4`, or `2` or `3` while a
    /// rolling upgrade from an earlier release is not finished (`lease-sync queue migrate
    /// --to 4`); 0 before any process wrote to it.
    pub redis_layout: u32,
}

/// Errors talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis refused or failed the command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A job could not be encoded or decoded.
    #[error("cannot encode or decode a job: {0}")]
    Json(#[from] serde_json::Error),
    /// A script answered something it never answers.
    #[error("unexpected answer from Redis: {0}")]
    Protocol(String),
    /// Fewer replicas than `[redis] wait_replicas` confirmed a write in time.
    #[error("{confirmed} of the {wanted} Redis replica(s) asked for confirmed the write in time")]
    NotReplicated {
        /// `wait_replicas`.
        wanted: u32,
        /// Replicas that confirmed.
        confirmed: u32,
    },
}

impl From<redis::ParsingError> for QueueError {
    fn from(e: redis::ParsingError) -> Self {
        QueueError::Protocol(e.to_string())
    }
}

/// Opens the connection `settings` describe (one address, or the primary Sentinel names),
/// which reconnects on its own. Lazy: it connects on first use, so a process can start (and
/// report not-ready) while Redis is down.
pub fn connect(settings: &RedisSettings) -> Result<RedisConnection, QueueError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
        // Fail fast while Redis is away: callers answer 503 or retry on their own schedule.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    Ok(RedisConnection::open(settings, config)?)
}

/// The history entry of the fold that queued convergence `job`, written with the outcome of
/// its first attempt (`finish_attempt.lua`), or when it is held or a later attempt begins
/// (`begin_attempt.lua`): dated when the job was made (its delivery
/// id is a ULID of that moment), the same each time. `None` for convergences no fold queued
/// (lease-window boundaries) and for resets, which ingest records itself.
pub fn fold_history_entry(job: &DeliveryJob) -> Option<HistoryEntry> {
    let trigger = job.trigger.as_deref();
    if matches!(trigger, Some("schedule" | crate::leases::RESET_TRIGGER)) {
        return None;
    }
    let at = ulid::Ulid::from_string(&job.delivery_id)
        .ok()
        .and_then(|id| i64::try_from(id.timestamp_ms()).ok())?;
    Some(HistoryEntry::new(
        at,
        HistoryEvent::Folded {
            source: job.source.clone(),
            event_id: job.event_id.clone(),
            lease_id: job.lease_id.clone(),
            event_type: job.event_type.as_str().to_owned(),
            outcome: "changed".to_owned(),
            delivery_id: Some(job.delivery_id.clone()),
            trigger: trigger.map(str::to_owned),
        },
    ))
}

/// What a fold does to each resident's lease record.
#[derive(Clone, Copy)]
enum Fold<'a> {
    /// Records what the event (or a source's lease) says.
    Record(&'a crate::resident::LeaseRecord),
    /// Forgets the source's record of the lease (an operator's reset, by `actor`).
    Forget { actor: &'a str },
}

/// Handle on the delivery queue. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    conn: RedisConnection,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    /// Set once this process has seen the namespace in this release's layout
    /// ([`JobQueue::ensure_layout`]); nothing is written to the queue before.
    layout: std::sync::Arc<tokio::sync::OnceCell<()>>,
    /// How much of each resident's history is kept (`[audit]`).
    history_limits: history::HistoryLimits,
    /// The batchers of the scripts a worker runs for every job, started on first use.
    batchers: std::sync::Arc<Batchers>,
}

/// Claims and finishes sent in batches ([`batch`]).
#[derive(Default)]
struct Batchers {
    claim: std::sync::OnceLock<batch::ScriptBatcher>,
    finish: std::sync::OnceLock<batch::ScriptBatcher>,
}

struct Scripts {
    enqueue: redis::Script,
    promote: redis::Script,
    begin: redis::Script,
    begin_batch: redis::Script,
    finish_batch: redis::Script,
    defer: redis::Script,
    extend_lock: redis::Script,
    unlock: redis::Script,
    held_lock: redis::Script,
    counts: redis::Script,
    fetch: redis::Script,
    recover: redis::Script,
    release: redis::Script,
    enqueue_jobs: redis::Script,
    person_resolved: redis::Script,
    replay: redis::Script,
    purge: redis::Script,
    history_append: redis::Script,
    release_held: redis::Script,
}

/// A script that writes resident histories: `body` after the shared `append_history`.
fn with_history(body: &str) -> redis::Script {
    redis::Script::new(&format!("{}\n{body}", include_str!("lua/history.lua")))
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl JobQueue {
    /// A queue over `conn` under `namespace`.
    pub fn new(conn: RedisConnection, namespace: &str) -> Self {
        Self {
            conn,
            layout: std::sync::Arc::default(),
            keys: Keys::new(namespace),
            scripts: std::sync::Arc::new(Scripts {
                enqueue: with_history(include_str!("lua/enqueue.lua")),
                promote: redis::Script::new(include_str!("lua/promote.lua")),
                begin: redis::Script::new(&format!(
                    "{}\n{}\n{}",
                    batch::ONE_CALL_HELPERS,
                    include_str!("lua/history.lua"),
                    include_str!("lua/begin_attempt.lua")
                )),
                begin_batch: batch::batch_script(
                    include_str!("lua/history.lua"),
                    include_str!("lua/begin_attempt.lua"),
                ),
                finish_batch: batch::batch_script(
                    include_str!("lua/history.lua"),
                    include_str!("lua/finish_attempt.lua"),
                ),
                defer: redis::Script::new(include_str!("lua/defer.lua")),
                extend_lock: redis::Script::new(residents::EXTEND_SCRIPT),
                unlock: redis::Script::new(residents::UNLOCK_SCRIPT),
                held_lock: redis::Script::new(residents::HELD_LOCK_SCRIPT),
                counts: redis::Script::new(include_str!("lua/counts.lua")),
                fetch: redis::Script::new(include_str!("lua/fetch.lua")),
                recover: redis::Script::new(include_str!("lua/recover.lua")),
                release: redis::Script::new(include_str!("lua/release.lua")),
                enqueue_jobs: redis::Script::new(include_str!("lua/enqueue_jobs.lua")),
                person_resolved: redis::Script::new(include_str!("lua/person_resolved.lua")),
                replay: redis::Script::new(include_str!("lua/replay.lua")),
                purge: redis::Script::new(include_str!("lua/purge.lua")),
                history_append: with_history(include_str!("lua/history_append.lua")),
                release_held: redis::Script::new(include_str!("lua/release_held.lua")),
            }),
            history_limits: history::HistoryLimits::default(),
            batchers: std::sync::Arc::default(),
        }
    }

    /// Claims of convergences, in batches.
    fn claim_batcher(&self) -> &batch::ScriptBatcher {
        self.batchers.claim.get_or_init(|| {
            batch::ScriptBatcher::spawn(self.conn.clone(), self.scripts.begin_batch.clone())
        })
    }

    /// Finishes of attempts, in batches.
    fn finish_batcher(&self) -> &batch::ScriptBatcher {
        self.batchers.finish.get_or_init(|| {
            batch::ScriptBatcher::spawn(self.conn.clone(), self.scripts.finish_batch.clone())
        })
    }

    /// Makes sure the namespace is in this release's layout, migrating an earlier one first
    /// ([`migrate`]); after the first success this costs nothing. Every write path into the
    /// queue calls it, so a record written now cannot be overwritten by a late rename.
    pub async fn layout_ready(&self) -> Result<(), QueueError> {
        self.layout
            .get_or_try_init(|| async { self.ensure_layout(MIGRATION_WAIT).await.map(drop) })
            .await?;
        Ok(())
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The underlying connection (cheap clone).
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Folds `event` into the state of each resident `jobs` names and durably queues a
    /// convergence job for each one whose state changed — unless `source` already delivered
    /// `event.id` within `dedupe_ttl` (the same event: [`EnqueueOutcome::Duplicate`]; another
    /// event under that id: [`EnqueueOutcome::Conflict`]). A lease record dated more than
    /// `max_clock_skew` after now never outranks the event (see [`crate::resident::supersedes`]).
    /// All jobs must be for one building. Answers within `timeout` or fails with
    /// [`QueueError::Timeout`]; nothing is buffered in memory.
    pub async fn enqueue_event(
        &self,
        source: &str,
        event: &LeaseEvent,
        jobs: &[DeliveryJob],
        limits: EnqueueLimits,
    ) -> Result<EnqueueOutcome, QueueError> {
        let record = crate::resident::LeaseRecord::from_event(event, source);
        self.fold(
            source,
            &event.id,
            event,
            Fold::Record(&record),
            jobs,
            limits,
        )
        .await
    }

    /// Queues `jobs` (none of which folds anything at ingest, e.g. refreshes) for the event
    /// `event_id` of `source`, whose content `event` is kept with each delivery — unless the
    /// source already delivered that id within the dedupe window ([`EnqueueOutcome::Duplicate`],
    /// or [`EnqueueOutcome::Conflict`] for other content).
    pub async fn enqueue_jobs(
        &self,
        source: &str,
        event_id: &str,
        event: &serde_json::Value,
        jobs: &[Job],
        limits: EnqueueLimits,
    ) -> Result<EnqueueOutcome, QueueError> {
        tokio::time::timeout(limits.timeout, self.layout_ready())
            .await
            .map_err(|_| QueueError::Timeout(limits.timeout))??;
        let event_json = serde_json::to_vec(event)?;
        let mut invocation = self.scripts.enqueue_jobs.prepare_invoke();
        let now = now_ms();
        invocation
            .key(self.keys.dedupe(source, event_id))
            .key(self.keys.job_data())
            .key(self.keys.ready())
            .key(self.keys.layout())
            .arg(limits.dedupe_ttl.as_secs().max(1))
            .arg(now)
            .arg(&event_json)
            .arg(event_digest(&event_json));
        for job in jobs {
            invocation
                .key(self.keys.delivery(job.delivery_id()))
                .arg(job_id_ready_at(now))
                .arg(serde_json::to_vec(job)?);
        }
        let mut conn = self.conn.clone();
        let queued: i64 = tokio::time::timeout(limits.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout(limits.timeout))??;
        Ok(match queued {
            -1 => EnqueueOutcome::Duplicate,
            -2 => EnqueueOutcome::Conflict,
            n => EnqueueOutcome::Queued {
                jobs: usize::try_from(n).unwrap_or_default(),
                stale: 0,
                overridden: 0,
            },
        })
    }

    /// Waits until `replicas` replicas hold every write this queue's connection made so far
    /// (Redis `WAIT`), for at most `timeout`; [`QueueError::NotReplicated`] when fewer
    /// confirm. The connection is shared, so the writes of one request are among them. 0
    /// replicas: nothing to wait for.
    pub async fn wait_for_replicas(
        &self,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        if replicas == 0 {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        // On the primary that took the writes (in a cluster, the one holding the namespace).
        let confirmed: u32 =
            redis::from_redis_value(self.conn.on_primary_of(&self.keys.ready(), &wait).await?)?;
        if confirmed < replicas {
            return Err(QueueError::NotReplicated {
                wanted: replicas,
                confirmed,
            });
        }
        Ok(())
    }

    /// Folds `event`, whose residents a worker has just resolved from their emails, like
    /// [`Self::enqueue_event`]. Ingest already used the event's id to deduplicate deliveries,
    /// so this fold is deduplicated under `<id>#resolved`: a retried or repeated resolve job
    /// folds the event once.
    pub async fn enqueue_resolved(
        &self,
        source: &str,
        event: &LeaseEvent,
        jobs: &[DeliveryJob],
        limits: EnqueueLimits,
    ) -> Result<EnqueueOutcome, QueueError> {
        let record = crate::resident::LeaseRecord::from_event(event, source);
        let dedupe_id = format!("{}#resolved", event.id);
        self.fold(
            source,
            &dedupe_id,
            event,
            Fold::Record(&record),
            jobs,
            limits,
        )
        .await
    }

    /// Folds `record` (what a source's lease says about one resident, e.g. a Buildium tenant)
    /// into the state of the resident `job` names, and queues `job` if it changed anything;
    /// `event` is the synthetic event standing for the fold (its id is the dedupe key).
    pub async fn enqueue_record(
        &self,
        source: &str,
        event: &LeaseEvent,
        record: &crate::resident::LeaseRecord,
        job: &DeliveryJob,
        limits: EnqueueLimits,
    ) -> Result<EnqueueOutcome, QueueError> {
        self.fold(
            source,
            &event.id,
            event,
            Fold::Record(record),
            std::slice::from_ref(job),
            limits,
        )
        .await
    }

    /// Forgets what `source`'s events recorded about lease `lease_id` for each resident
    /// `jobs` names (an operator's reset, by `actor`), and queues a convergence job for each
    /// resident that held such a record. `reset` is the synthetic event standing for the
    /// reset: its id must be new. All jobs must be for one building.
    pub async fn forget_lease(
        &self,
        source: &str,
        reset: &LeaseEvent,
        jobs: &[DeliveryJob],
        limits: EnqueueLimits,
        actor: &str,
    ) -> Result<EnqueueOutcome, QueueError> {
        self.fold(
            source,
            &reset.id,
            reset,
            Fold::Forget { actor },
            jobs,
            limits,
        )
        .await
    }

    /// The enqueue script: a record folded in, or a lease forgotten.
    async fn fold(
        &self,
        source: &str,
        dedupe_id: &str,
        event: &LeaseEvent,
        fold: Fold<'_>,
        jobs: &[DeliveryJob],
        limits: EnqueueLimits,
    ) -> Result<EnqueueOutcome, QueueError> {
        let Some(first) = jobs.first() else {
            return Ok(EnqueueOutcome::Queued {
                jobs: 0,
                stale: 0,
                overridden: 0,
            });
        };
        tokio::time::timeout(limits.timeout, self.layout_ready())
            .await
            .map_err(|_| QueueError::Timeout(limits.timeout))??;
        let now = now_ms();
        let event_json = serde_json::to_vec(event)?;
        let record = match fold {
            Fold::Record(record) => Some(record),
            Fold::Forget { .. } => None,
        };
        // The history entries of this fold: one for a resident it leaves as it was; for a
        // reset, one for each resident it changes. A fold that changes a resident is recorded
        // when its convergence first runs (`fold_history_entry`), so it costs ingest nothing.
        let entry = |outcome: &str, delivery_id: Option<&str>| {
            let what = match fold {
                Fold::Record(_) => HistoryEvent::Folded {
                    source: source.to_owned(),
                    event_id: event.id.clone(),
                    lease_id: event.lease.id.clone(),
                    event_type: event.event_type.as_str().to_owned(),
                    outcome: outcome.to_owned(),
                    delivery_id: delivery_id.map(str::to_owned),
                    trigger: None,
                },
                Fold::Forget { actor } => HistoryEvent::LeaseReset {
                    source: source.to_owned(),
                    lease_id: event.lease.id.clone(),
                    outcome: outcome.to_owned(),
                    delivery_id: delivery_id.map(str::to_owned),
                    by: Some(actor.to_owned()),
                },
            };
            serde_json::to_string(&HistoryEntry::new(now, what))
        };
        let mut invocation = self.scripts.enqueue.prepare_invoke();
        invocation
            .key(self.keys.dedupe(source, dedupe_id))
            .key(self.keys.job_data())
            .key(self.keys.ready())
            .key(self.keys.stats())
            .key(self.keys.residents_index(&first.integration_id))
            .key(self.keys.layout())
            .arg(limits.dedupe_ttl.as_secs().max(1))
            .arg(now)
            .arg(&event_json)
            .arg(&event.lease.id)
            .arg(match record {
                Some(record) => serde_json::to_vec(record)?,
                None => Vec::new(),
            })
            .arg(event_digest(&event_json))
            .arg(crate::resident::future_cutoff(now, limits.max_clock_skew))
            .arg(source)
            .arg(self.history_limits.max_entries)
            .arg(self.history_limits.max_age_ms())
            .arg(entry("stale", None)?);
        for job in jobs {
            invocation
                .key(self.keys.resident(&job.integration_id, &job.user_id))
                .key(self.keys.delivery(&job.delivery_id))
                .key(self.keys.history(&job.integration_id, &job.user_id))
                .arg(job_id_ready_at(now))
                .arg(serde_json::to_vec(job)?)
                .arg(&job.user_id)
                .arg(match fold {
                    Fold::Forget { .. } => entry("changed", Some(&job.delivery_id))?,
                    Fold::Record(_) => String::new(),
                });
        }
        let mut conn = self.conn.clone();
        let (queued, stale, overridden): (i64, i64, i64) =
            tokio::time::timeout(limits.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| QueueError::Timeout(limits.timeout))??;
        let count = |n: i64| usize::try_from(n).unwrap_or_default();
        Ok(match queued {
            -1 => EnqueueOutcome::Duplicate,
            -2 => EnqueueOutcome::Conflict,
            _ => EnqueueOutcome::Queued {
                jobs: count(queued),
                stale: count(stale),
                overridden: count(overridden),
            },
        })
    }

    /// Moves every retry that is due by `now_ms` from the scheduled set to the ready list,
    /// [`PROMOTE_CHUNK`] at a time. Returns how many moved.
    pub async fn promote_due(&self, now_ms: i64) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let mut total = 0;
        loop {
            let moved: u64 = self
                .scripts
                .promote
                .key(self.keys.scheduled())
                .key(self.keys.ready())
                .arg(now_ms)
                .arg(PROMOTE_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            total += moved;
            if moved < PROMOTE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Returns every job whose hold lapsed by `now_ms` (its worker died) to the head of the
    /// ready list, [`PROMOTE_CHUNK`] at a time. Returns how many.
    pub async fn recover_lapsed(&self, now_ms: i64) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let mut total = 0;
        loop {
            let moved: u64 = self
                .scripts
                .recover
                .key(self.keys.in_flight())
                .key(self.keys.ready())
                .arg(now_ms)
                .arg(PROMOTE_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            total += moved;
            if moved < PROMOTE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Current depths and counters. The depths are one consistent snapshot (`counts.lua`);
    /// the lifetime counters are read right after.
    pub async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.counts.prepare_invoke();
        invocation
            .key(self.keys.ready())
            .key(self.keys.scheduled())
            .key(self.keys.dead_letters())
            .key(self.keys.in_flight())
            .key(self.keys.layout());
        let (ready, scheduled, dead, in_flight, oldest, redis_layout): (
            u64,
            u64,
            u64,
            u64,
            String,
            String,
        ) = invocation.invoke_async(&mut conn).await?;
        let oldest_ready_at = ready_at_of(&oldest);
        let stats: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.keys.stats())
            .arg(&[
                "delivered",
                "retries",
                "dead_lettered",
                "auth_failures",
                "dead_letters_trimmed",
                "stale_tasks",
                "stale_events",
                "deferred",
            ])
            .query_async(&mut conn)
            .await?;
        // A job recovered from a dead worker keeps its first ready time.
        let oldest_ready_age_secs = oldest_ready_at
            .filter(|_| ready > 0)
            .map(|at| (now_ms() - at).max(0) as f64 / 1000.0);
        let stat = |i: usize| stats.get(i).copied().flatten().unwrap_or_default();
        let paused = self.paused().await?;
        let ids: Vec<&str> = paused.keys().map(String::as_str).collect();
        let held = self.held_counts(&ids).await?.iter().sum();
        Ok(QueueCounts {
            held,
            paused_integrations: paused.len() as u64,
            redis_layout: redis_layout.parse().unwrap_or(0),
            ready,
            scheduled,
            in_flight,
            dead,
            oldest_ready_age_secs,
            done: stat(0),
            retries: stat(1),
            dead_lettered: stat(2),
            auth_failures: stat(3),
            dead_letters_trimmed: stat(4),
            stale_tasks: stat(5),
            stale_events: stat(6),
            deferred: stat(7),
        })
    }

    /// Round trip to Redis within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = tokio::time::timeout(timeout, redis::cmd("PING").query_async(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout(timeout))??;
        Ok(())
    }

    /// Takes up to `most` ready jobs for a worker, holding each until `hold_until_ms`
    /// (`fetch.lua`). Returns `(job id, payload)` pairs; a payload that no longer parses is
    /// returned as the error it is, so the worker can end that job.
    pub async fn fetch(
        &self,
        most: usize,
        hold_until_ms: i64,
    ) -> Result<Vec<FetchedJob>, QueueError> {
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self
            .scripts
            .fetch
            .key(self.keys.ready())
            .key(self.keys.in_flight())
            .key(self.keys.job_data())
            .arg(most.max(1))
            .arg(hold_until_ms)
            .invoke_async(&mut conn)
            .await?;
        let mut jobs = Vec::with_capacity(flat.len() / 2);
        let mut pairs = flat.into_iter();
        while let (Some(id), Some(payload)) = (pairs.next(), pairs.next()) {
            let job = serde_json::from_str(&payload);
            jobs.push((id, job));
        }
        Ok(jobs)
    }

    /// Extends the holds of the jobs `ids` still in flight until `hold_until_ms` (jobs that
    /// finished meanwhile are left alone: `ZADD XX`).
    pub async fn renew_holds(&self, ids: &[String], hold_until_ms: i64) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.keys.in_flight()).arg("XX");
        for id in ids {
            cmd.arg(hold_until_ms).arg(id);
        }
        let _: i64 = cmd.query_async(&mut conn).await?;
        Ok(())
    }

    /// Returns held jobs `ids` that will not run (their worker is stopping) to the head of
    /// the ready list; one that finished meanwhile is left alone. Returns how many.
    pub async fn release(&self, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation.key(self.keys.in_flight()).key(self.keys.ready());
        for id in ids {
            invocation.arg(id);
        }
        Ok(invocation.invoke_async(&mut conn).await?)
    }
}

/// A job handed to a worker by [`JobQueue::fetch`]: its id, and its payload or why that does
/// not parse.
pub type FetchedJob = (String, Result<Job, serde_json::Error>);

/// A new job id that reads as ready at `ready_at_ms`: a ULID whose time part is that instant,
/// so the age of the oldest ready job needs no other record.
pub fn job_id_ready_at(ready_at_ms: i64) -> String {
    let ms = u64::try_from(ready_at_ms).unwrap_or_default();
    ulid::Ulid::from_parts(ms, rand::random()).to_string()
}

/// When the job `id` became ready (ms), if it is a ULID ([`job_id_ready_at`]).
fn ready_at_of(id: &str) -> Option<i64> {
    ulid::Ulid::from_string(id)
        .ok()
        .and_then(|u| i64::try_from(u.timestamp_ms()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, Lease, LeaseEvent, Resident};
    use crate::sources::buildium::webhook::Refresh;

    fn event() -> LeaseEvent {
        LeaseEvent {
            id: "evt-1".into(),
            event_type: EventType::LeaseSigned,
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            lease: Lease {
                id: "L-1".into(),
                property_id: "P-1".into(),
                unit: None,
            },
            residents: vec![Resident {
                openapp_user_id: "u-1".into(),
                external_id: None,
            }],
            residents_by_email: Vec::new(),
            access: None,
        }
    }

    #[test]
    fn each_kind_of_job_reads_back_as_itself() {
        let target = Target {
            org_id: "org",
            integration_id: "int",
            role: "resident",
        };
        let jobs = [
            Job::Converge(DeliveryJob::for_event(&event(), "src", "u-1", target, None)),
            Job::Converge(DeliveryJob::for_event(
                &event(),
                "src",
                "u-1",
                target,
                Some("schedule"),
            )),
            Job::Refresh(RefreshJob::new(
                "src",
                "evt-1",
                Refresh::Lease { lease_id: 7 },
                None,
            )),
            Job::Refresh(RefreshJob::new(
                "src",
                "evt-1",
                Refresh::Tenant {
                    tenant_id: 8,
                    added: true,
                },
                Some("pull"),
            )),
            Job::Resolve(ResolveJob::new("src", &event())),
        ];
        for job in jobs {
            let json = serde_json::to_string(&job).unwrap();
            let read: Job = serde_json::from_str(&json).unwrap();
            assert_eq!(read, job, "{json}");
        }
    }
}
