//! The durable queue: delivery jobs in Redis, in the layout apalis-redis 1.0 reads, and the
//! ledger that decides their fate.
//!
//! apalis-redis is the transport: its worker loop fetches jobs, tracks them in per-worker
//! in-flight sets and re-enqueues the in-flight jobs of workers that stop heart-beating.
//! Everything else is owned here, each part because of a measured apalis-redis 1.0 defect
//! (each measured, and covered by a named test in `tests/e2e/`):
//!
//! * **Enqueue** is one Lua script that claims the dedupe key and writes every job of the
//!   event, so 202 means all of it is in Redis and 200 `duplicate` means nothing was written.
//!   apalis's push reports no duplicate and routes every job through the scheduled set, from
//!   which a fetch of 8,000 or more due ids fails (bug 3). Ours go straight to the active list.
//! * **The ledger** (one hash per delivery, see [`ledger`]) counts attempts *before* each call,
//!   so crashes count (bug 9), applies lease-sync's own retry policy instead of the hard-coded
//!   25 linear attempts (bug 1), and fences stale duplicate runs of a task. Every handled job is
//!   acknowledged to apalis as done; retries are new tasks scheduled in Redis.
//! * **Promotion** of due retries happens in bounded chunks ([`JobQueue::promote_due`]).
//! * **Housekeeping** ([`JobQueue::sweep`]) trims apalis's done set and data, which apalis
//!   keeps forever (apalis-redis#10), without its `Vacuum` (bug 10).
//! * **Counts** come from plain `LLEN`/`ZCARD`/`SCARD` and our counters; apalis's stats calls
//!   fail on Redis (bug 5).
//!
//! Beside the queue, Redis holds what processes share: resident state ([`residents`]), the
//! identity cache ([`identity`]), conflicts ([`conflicts`]) and request rates shared by every
//! worker process ([`rate_limit`]).

pub mod conflicts;
pub mod connection;
pub mod identity;
pub mod ledger;
pub mod poll;
pub mod rate_limit;
pub mod residents;

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use self::connection::RedisConnection;
use crate::config::RedisSettings;
use crate::event::{EventType, LeaseEvent};
use crate::sources::buildium::webhook::Refresh;

/// Suffix of the apalis queue name under the namespace.
const DELIVERY_QUEUE: &str = "deliveries";

/// Most due retries moved per promotion step; keeps every Lua `unpack` far below its limit.
pub const PROMOTE_CHUNK: usize = 500;

/// Most finished tasks cleaned per housekeeping step.
const SWEEP_CHUNK: usize = 1_000;

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

/// One unit of work on the queue: the payload of an apalis task and of a delivery's ledger.
/// Untagged, so the convergence jobs queued before refreshes existed read as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Job {
    /// Read a lease (or a tenant's leases) again from its source and fold what it says.
    Refresh(RefreshJob),
    /// Resolve the residents an event names by email, then fold the event.
    Resolve(ResolveJob),
    /// Make OpenApp show what one resident's state says.
    Converge(DeliveryJob),
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

/// Names of every key lease-sync uses, derived from the namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    /// Keys under `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The apalis queue name; apalis derives `{queue}:active`, `{queue}:data` and the rest.
    pub fn delivery_queue(&self) -> String {
        format!("{}:{DELIVERY_QUEUE}", self.namespace)
    }

    /// Marker that `source` delivered `event_id`.
    pub fn dedupe(&self, source: &str, event_id: &str) -> String {
        format!("{}:dedupe:{source}:{event_id}", self.namespace)
    }

    /// Prefix of the per-delivery ledger hashes.
    pub fn delivery_prefix(&self) -> String {
        format!("{}:delivery", self.namespace)
    }

    /// Ledger hash of one delivery.
    pub fn delivery(&self, delivery_id: &str) -> String {
        format!("{}:{delivery_id}", self.delivery_prefix())
    }

    /// Attempt records of one delivery (a list of JSON objects).
    pub fn attempts(&self, delivery_id: &str) -> String {
        format!("{}:{delivery_id}:attempts", self.delivery_prefix())
    }

    /// Sorted set of dead-letter ids by dead-at (ms).
    pub fn dead_letters(&self) -> String {
        format!("{}:dead-letters", self.namespace)
    }

    /// Audit records of replays and purges (a list, newest first).
    pub fn audit(&self) -> String {
        format!("{}:audit", self.namespace)
    }

    /// State of one resident in one building.
    pub fn resident(&self, integration_id: &str, user_id: &str) -> String {
        format!("{}:resident:{integration_id}:{user_id}", self.namespace)
    }

    /// Set of users lease-sync holds state for in one building.
    pub fn residents_index(&self, integration_id: &str) -> String {
        format!("{}:residents:{integration_id}", self.namespace)
    }

    /// Lock serializing calls for one resident.
    pub fn resident_lock(&self, integration_id: &str, user_id: &str) -> String {
        format!("{}:lock:{integration_id}:{user_id}", self.namespace)
    }

    /// Scheduled convergences (lease window boundaries) by due time, for the pending count.
    pub fn convergences(&self) -> String {
        format!("{}:convergences", self.namespace)
    }

    /// The OpenApp user an email maps to in `org_id`, by the email's digest.
    pub fn identity(&self, org_id: &str, email_digest: &str) -> String {
        format!("{}:identity:{org_id}:{email_digest}", self.namespace)
    }

    /// The digests of the emails cached as mapping to `user_id` in `org_id` (a set), so the
    /// mappings of a user OpenApp no longer knows can be dropped.
    pub fn identity_of_user(&self, org_id: &str, user_id: &str) -> String {
        format!("{}:identity-user:{org_id}:{user_id}", self.namespace)
    }

    /// Unresolved people, by source and person.
    pub fn conflicts(&self) -> String {
        format!("{}:conflicts", self.namespace)
    }

    /// The OpenApp user each person of `source` was last resolved to (a hash by person), so
    /// a tenant who moved out — whose email Buildium's lease no longer carries — can lose
    /// their door without one more read of Buildium.
    pub fn person_users(&self, source: &str) -> String {
        format!("{}:person-users:{source}", self.namespace)
    }

    /// Grants of the shared request rate of `scope` (a sorted set by grant time, see
    /// [`rate_limit`]).
    pub fn rate_limit(&self, scope: &str) -> String {
        format!("{}:rate-limit:{scope}", self.namespace)
    }

    /// The name of every worker lease-sync started (a set), so the queue counts find every
    /// in-flight set — those of workers that died without deregistering included — without
    /// scanning the keyspace. A name goes once its worker is gone and its set is empty.
    pub fn worker_names(&self) -> String {
        format!("{}:worker-names", self.namespace)
    }

    /// Lifetime counters.
    pub fn stats(&self) -> String {
        format!("{}:stats", self.namespace)
    }

    /// A key of the apalis queue (`active`, `scheduled`, `data`, `meta`, …).
    pub fn queue_key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.delivery_queue())
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

/// Handle on the delivery queue. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    conn: RedisConnection,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    enqueue: redis::Script,
    promote: redis::Script,
    sweep: redis::Script,
    begin: redis::Script,
    finish: redis::Script,
    defer: redis::Script,
    extend_lock: redis::Script,
    unlock: redis::Script,
    counts: redis::Script,
    enqueue_jobs: redis::Script,
    person_resolved: redis::Script,
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
            keys: Keys::new(namespace),
            scripts: std::sync::Arc::new(Scripts {
                enqueue: redis::Script::new(include_str!("lua/enqueue.lua")),
                promote: redis::Script::new(include_str!("lua/promote.lua")),
                sweep: redis::Script::new(include_str!("lua/sweep.lua")),
                begin: redis::Script::new(include_str!("lua/begin_attempt.lua")),
                finish: redis::Script::new(include_str!("lua/finish_attempt.lua")),
                defer: redis::Script::new(include_str!("lua/defer.lua")),
                extend_lock: redis::Script::new(residents::EXTEND_SCRIPT),
                unlock: redis::Script::new(residents::UNLOCK_SCRIPT),
                counts: redis::Script::new(include_str!("lua/counts.lua")),
                enqueue_jobs: redis::Script::new(include_str!("lua/enqueue_jobs.lua")),
                person_resolved: redis::Script::new(include_str!("lua/person_resolved.lua")),
            }),
        }
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
        self.fold(source, &event.id, event, Some(&record), jobs, limits)
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
        let event_json = serde_json::to_vec(event)?;
        let mut invocation = self.scripts.enqueue_jobs.prepare_invoke();
        invocation
            .key(self.keys.dedupe(source, event_id))
            .key(self.keys.queue_key("data"))
            .key(self.keys.queue_key("active"))
            .key(self.keys.queue_key("meta"))
            .key(self.keys.delivery_prefix())
            .arg(limits.dedupe_ttl.as_secs().max(1))
            .arg(now_ms())
            .arg(&event_json)
            .arg(event_digest(&event_json));
        for job in jobs {
            invocation
                .arg(ulid::Ulid::new().to_string())
                .arg(job.delivery_id())
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
        let mut conn = self.conn.clone();
        let confirmed: u32 = redis::cmd("WAIT")
            .arg(replicas)
            .arg(
                u64::try_from(timeout.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .query_async(&mut conn)
            .await?;
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
        self.fold(source, &dedupe_id, event, Some(&record), jobs, limits)
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
            Some(record),
            std::slice::from_ref(job),
            limits,
        )
        .await
    }

    /// Forgets what `source`'s events recorded about lease `lease_id` for each resident
    /// `jobs` names (an operator's reset), and queues a convergence job for each resident
    /// that held such a record. `reset` is the synthetic event standing for the reset: its
    /// id must be new. All jobs must be for one building.
    pub async fn forget_lease(
        &self,
        source: &str,
        reset: &LeaseEvent,
        jobs: &[DeliveryJob],
        limits: EnqueueLimits,
    ) -> Result<EnqueueOutcome, QueueError> {
        self.fold(source, &reset.id, reset, None, jobs, limits)
            .await
    }

    /// The enqueue script: `record` folded in, or, when `None`, the lease forgotten.
    async fn fold(
        &self,
        source: &str,
        dedupe_id: &str,
        event: &LeaseEvent,
        record: Option<&crate::resident::LeaseRecord>,
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
        let now = now_ms();
        let event_json = serde_json::to_vec(event)?;
        let mut invocation = self.scripts.enqueue.prepare_invoke();
        invocation
            .key(self.keys.dedupe(source, dedupe_id))
            .key(self.keys.queue_key("data"))
            .key(self.keys.queue_key("active"))
            .key(self.keys.queue_key("meta"))
            .key(self.keys.delivery_prefix())
            .key(self.keys.stats())
            .arg(limits.dedupe_ttl.as_secs().max(1))
            .arg(now)
            .arg(&event_json)
            .arg(&event.lease.id)
            .arg(match record {
                Some(record) => serde_json::to_vec(record)?,
                None => Vec::new(),
            })
            .arg(self.keys.residents_index(&first.integration_id))
            .arg(event_digest(&event_json))
            .arg(crate::resident::future_cutoff(now, limits.max_clock_skew))
            .arg(source);
        for job in jobs {
            invocation
                .arg(ulid::Ulid::new().to_string())
                .arg(&job.delivery_id)
                .arg(serde_json::to_vec(job)?)
                .arg(self.keys.resident(&job.integration_id, &job.user_id))
                .arg(&job.user_id);
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

    /// Moves every retry that is due by `now_ms` from the scheduled set to the active list,
    /// [`PROMOTE_CHUNK`] at a time. Returns how many moved.
    pub async fn promote_due(&self, now_ms: i64) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let mut total = 0;
        loop {
            let moved: u64 = self
                .scripts
                .promote
                .key(self.keys.queue_key("scheduled"))
                .key(self.keys.queue_key("active"))
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

    /// Cleans acknowledged tasks out of apalis's sets and hands tasks apalis gave up on by
    /// itself back to lease-sync's ledger. Returns (cleaned, requeued, dropped).
    pub async fn sweep(&self) -> Result<(u64, u64, u64), QueueError> {
        let mut conn = self.conn.clone();
        let mut totals = (0, 0, 0);
        loop {
            let (cleaned, requeued, dropped): (u64, u64, u64) = self
                .scripts
                .sweep
                .key(self.keys.queue_key("done"))
                .key(self.keys.queue_key("dead"))
                .key(self.keys.queue_key("data"))
                .key(self.keys.queue_key("meta"))
                .key(self.keys.queue_key("active"))
                .key(self.keys.delivery_prefix())
                .arg(SWEEP_CHUNK)
                .arg(now_ms())
                .invoke_async(&mut conn)
                .await?;
            totals = (totals.0 + cleaned, totals.1 + requeued, totals.2 + dropped);
            if cleaned < SWEEP_CHUNK as u64 && requeued + dropped < SWEEP_CHUNK as u64 {
                return Ok(totals);
            }
        }
    }

    /// Current depths and counters. The depths are one consistent snapshot (`counts.lua`);
    /// the lifetime counters are read right after.
    pub async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let mut conn = self.conn.clone();
        let inflight_prefix = format!("{}:", self.keys.queue_key("inflight"));
        let mut invocation = self.scripts.counts.prepare_invoke();
        invocation
            .key(self.keys.queue_key("active"))
            .key(self.keys.queue_key("scheduled"))
            .key(self.keys.dead_letters())
            .key(self.keys.queue_key("workers"))
            .key(self.keys.worker_names())
            .arg(&inflight_prefix)
            .arg(format!("{}:", self.keys.queue_key("meta")));
        let (ready, scheduled, dead, in_flight, oldest_ready_at): (u64, u64, u64, u64, i64) =
            invocation.invoke_async(&mut conn).await?;
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
        // Tasks re-enqueued by apalis's orphan recovery keep their first ready time.
        let oldest_ready_age_secs = (ready > 0 && oldest_ready_at >= 0)
            .then(|| (now_ms() - oldest_ready_at).max(0) as f64 / 1000.0);
        let stat = |i: usize| stats.get(i).copied().flatten().unwrap_or_default();
        Ok(QueueCounts {
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

    /// Records `worker`'s name before it starts (see [`Keys::worker_names`]). The first time
    /// a deployment runs a version that keeps the index, the in-flight sets already in Redis
    /// are found once by a SCAN and indexed too.
    pub async fn index_worker_name(&self, worker: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let index = self.keys.worker_names();
        let indexed: bool = redis::cmd("EXISTS")
            .arg(&index)
            .query_async(&mut conn)
            .await?;
        let mut names = vec![worker.to_owned()];
        if !indexed {
            let inflight_prefix = format!("{}:", self.keys.queue_key("inflight"));
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{inflight_prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                names.extend(
                    keys.iter()
                        .filter_map(|k| k.strip_prefix(&inflight_prefix))
                        .map(str::to_owned),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let _: () = redis::cmd("SADD")
            .arg(&index)
            .arg(&names)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Round trip to Redis within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = tokio::time::timeout(timeout, redis::cmd("PING").query_async(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout(timeout))??;
        Ok(())
    }

    /// Removes `worker`'s registration after a graceful stop, which apalis-redis 1.0 fails to
    /// do (bug 8); any job still in its in-flight set goes back to the active list first.
    pub async fn deregister_worker(&self, worker: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let inflight = format!("{}:{worker}", self.keys.queue_key("inflight"));
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&inflight)
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in &ids {
            pipe.cmd("RPUSH")
                .arg(self.keys.queue_key("active"))
                .arg(id)
                .ignore();
        }
        pipe.cmd("DEL").arg(&inflight).ignore();
        pipe.cmd("ZREM")
            .arg(self.keys.queue_key("workers"))
            .arg(worker)
            .ignore();
        pipe.cmd("DEL")
            .arg(format!(
                "{}:metadata:{worker}",
                self.keys.queue_key("workers")
            ))
            .ignore();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}
