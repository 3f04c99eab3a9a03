//! The durable queue: delivery jobs in Redis, in the layout apalis-redis 1.0 reads.
//!
//! apalis-redis is the transport: its worker loop fetches jobs, tracks them in per-worker
//! in-flight sets and re-enqueues the in-flight jobs of workers that stop heart-beating.
//! Three parts are owned here instead, each because of a measured apalis-redis 1.0 defect
//! (`shared/reference/apalis-redis-1.0.md` §4):
//!
//! * **Enqueue** is one Lua script that claims the dedupe key and writes every job of the
//!   event, so the answer 202 means all of it is in Redis and the answer 200 `duplicate`
//!   means nothing new was written. apalis's push reports no duplicate and puts every job in
//!   the scheduled set, from which a single fetch of 8,000 or more due ids fails (bug 3).
//!   Ours go straight to the active list.
//! * **Promotion** of due retries from the scheduled set to the active list happens in
//!   bounded chunks ([`JobQueue::promote_due`]) before apalis's fetch would try to move them
//!   all at once.
//! * **Counts** come from plain `LLEN`/`ZCARD`/`SCARD`; apalis's stats calls fail on Redis
//!   (bug 5).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::RedisSettings;
use crate::event::EventType;

/// Suffix of the apalis queue name under the namespace.
const DELIVERY_QUEUE: &str = "deliveries";

/// Most due retries moved per promotion step; keeps every Lua `unpack` far below its limit.
pub const PROMOTE_CHUNK: usize = 500;

/// One unit of work: make OpenApp reflect one event for one resident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// Payload version, so jobs queued by an older release stay readable.
    pub v: u32,
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
}

/// Current [`DeliveryJob::v`].
pub const JOB_VERSION: u32 = 1;

/// Result of offering an event to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// New event: this many jobs are now durably queued.
    Queued(usize),
    /// The source already delivered this event id within the dedupe window; nothing written.
    Duplicate,
}

/// Queue depths, read straight from Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// Jobs waiting to be fetched.
    pub ready: u64,
    /// Jobs waiting for a retry time.
    pub scheduled: u64,
    /// Jobs fetched by a worker and not yet acknowledged.
    pub in_flight: u64,
    /// Jobs delivered.
    pub done: u64,
    /// Jobs given up on.
    pub dead: u64,
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
    /// A job could not be encoded.
    #[error("cannot encode job: {0}")]
    Encode(#[from] serde_json::Error),
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

    fn queue_key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.delivery_queue())
    }
}

/// Opens a connection manager that reconnects on its own. Lazy: it connects on first use,
/// so a process can start (and report not-ready) while Redis is down.
pub fn connect(settings: &RedisSettings) -> Result<ConnectionManager, QueueError> {
    let client = redis::Client::open(settings.url.expose())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(settings.response_timeout_ms)))
        // Fail fast while Redis is away: callers answer 503 or retry on their own schedule.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

/// Writes the dedupe marker and all jobs of one event, or nothing if the marker exists.
/// The fields of each job's meta hash are the ones apalis-redis's fetch requires.
const ENQUEUE_SCRIPT: &str = r"
-- KEYS[1] dedupe marker, KEYS[2] {q}:data, KEYS[3] {q}:active, KEYS[4] {q}:meta prefix
-- ARGV[1] dedupe ttl (s), ARGV[2] marker value, ARGV[3] max attempts, ARGV[4..] id, payload pairs
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[1]) then
  return -1
end
local n = 0
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[4] .. ':' .. ARGV[i], 'attempts', 0, 'max_attempts', ARGV[3],
    'status', 'Pending', 'idempotency_key', '')
  redis.call('RPUSH', KEYS[3], ARGV[i])
  n = n + 1
end
return n
";

/// Moves up to ARGV[2] due ids from the scheduled set to the active list.
const PROMOTE_SCRIPT: &str = r"
-- KEYS[1] {q}:scheduled, KEYS[2] {q}:active; ARGV[1] now (s), ARGV[2] chunk
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ids))
  redis.call('ZREM', KEYS[1], unpack(ids))
end
return #ids
";

/// Handle on the delivery queue. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    conn: ConnectionManager,
    keys: Keys,
    enqueue_script: redis::Script,
    promote_script: redis::Script,
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
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            keys: Keys::new(namespace),
            enqueue_script: redis::Script::new(ENQUEUE_SCRIPT),
            promote_script: redis::Script::new(PROMOTE_SCRIPT),
        }
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The underlying connection, for the worker's apalis backend.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Durably queues `jobs` (all of one event) unless `source` already delivered
    /// `event_id` within `dedupe_ttl`. Answers within `timeout` or fails with
    /// [`QueueError::Timeout`]; nothing is buffered in memory.
    pub async fn enqueue_event(
        &self,
        source: &str,
        event_id: &str,
        jobs: &[DeliveryJob],
        dedupe_ttl: Duration,
        max_attempts: usize,
        timeout: Duration,
    ) -> Result<EnqueueOutcome, QueueError> {
        let mut invocation = self.enqueue_script.prepare_invoke();
        invocation
            .key(self.keys.dedupe(source, event_id))
            .key(self.keys.queue_key("data"))
            .key(self.keys.queue_key("active"))
            .key(self.keys.queue_key("meta"))
            .arg(dedupe_ttl.as_secs().max(1))
            .arg(OffsetDateTime::now_utc().unix_timestamp())
            .arg(max_attempts);
        for job in jobs {
            invocation
                .arg(ulid::Ulid::new().to_string())
                .arg(serde_json::to_vec(job)?);
        }
        let mut conn = self.conn.clone();
        let written: i64 = tokio::time::timeout(timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout(timeout))??;
        Ok(if written < 0 {
            EnqueueOutcome::Duplicate
        } else {
            EnqueueOutcome::Queued(written as usize)
        })
    }

    /// Moves every retry that is due by `now` from the scheduled set to the active list,
    /// [`PROMOTE_CHUNK`] at a time. Returns how many moved.
    pub async fn promote_due(&self, now: i64) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let mut total = 0;
        loop {
            let moved: u64 = self
                .promote_script
                .key(self.keys.queue_key("scheduled"))
                .key(self.keys.queue_key("active"))
                .arg(now)
                .arg(PROMOTE_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            total += moved;
            if moved < PROMOTE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Current depths.
    pub async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let mut conn = self.conn.clone();
        let inflight_pattern = format!("{}:*", self.keys.queue_key("inflight"));
        let mut in_flight = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&inflight_pattern)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut conn)
                .await?;
            for key in keys {
                let n: u64 = redis::cmd("SCARD").arg(&key).query_async(&mut conn).await?;
                in_flight += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let (ready, scheduled, done, dead): (u64, u64, u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(self.keys.queue_key("active"))
            .cmd("ZCARD")
            .arg(self.keys.queue_key("scheduled"))
            .cmd("SCARD")
            .arg(self.keys.queue_key("done"))
            .cmd("SCARD")
            .arg(self.keys.queue_key("dead"))
            .query_async(&mut conn)
            .await?;
        Ok(QueueCounts {
            ready,
            scheduled,
            in_flight,
            done,
            dead,
        })
    }

    /// Round trip to Redis within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let pong: String = tokio::time::timeout(timeout, redis::cmd("PING").query_async(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout(timeout))??;
        debug_assert_eq!(pong, "PONG");
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
