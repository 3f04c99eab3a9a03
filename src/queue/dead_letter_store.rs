//! The Redis side of the dead letters ([`crate::dead_letters`] holds the rest): the sorted
//! set of delivery ids by dead-at (ms), each delivery's ledger hash and attempt records,
//! the replay and purge scripts, and the audit list. Kept here so that no other module
//! builds these key names or talks to Redis about them.

use std::collections::HashMap;

use super::{Job, JobQueue, QueueError};

/// Most audit records kept; older ones are trimmed as new ones arrive.
const AUDIT_KEEP: isize = 10_000;

impl JobQueue {
    /// Up to `count` dead-letter ids that died within `min..=max` (ms), newest first,
    /// skipping the first `offset`: one page of a scan.
    pub async fn dead_letter_ids_page(
        &self,
        min: i64,
        max: i64,
        offset: isize,
        count: isize,
    ) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("ZREVRANGEBYSCORE")
            .arg(self.keys.dead_letters())
            .arg(max)
            .arg(min)
            .arg("LIMIT")
            .arg(offset)
            .arg(count)
            .query_async(&mut conn)
            .await?)
    }

    /// For each of `ids`, in order, its ledger hash (empty if missing) and its last attempt
    /// record as stored (JSON; in the hash or the list, [`super::ledger::ledger_records`]), in
    /// one round trip: what a listing shows of each entry.
    pub async fn dead_letter_summaries_raw(
        &self,
        ids: &[String],
    ) -> Result<Vec<(HashMap<String, String>, Option<String>)>, QueueError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.keys.delivery(id));
            pipe.cmd("LINDEX").arg(self.keys.attempts(id)).arg(-1);
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        // A reply that does not convert (a key of another type) reads as missing, so one
        // damaged entry does not hide the others.
        Ok(replies
            .chunks(2)
            .map(|pair| {
                let hash: HashMap<String, String> =
                    redis::FromRedisValue::from_redis_value(pair[0].clone()).unwrap_or_default();
                let last: Option<String> =
                    redis::FromRedisValue::from_redis_value(pair[1].clone()).unwrap_or_default();
                let last = super::ledger::ledger_records(&hash, last.into_iter().collect()).pop();
                (hash, last)
            })
            .collect())
    }

    /// The ledger hash and every attempt record (JSON, oldest first,
    /// [`super::ledger::ledger_records`]) of dead letter `id`;
    /// `None` if `id` is not in the dead-letter set. One round trip.
    pub async fn dead_letter_raw(
        &self,
        id: &str,
    ) -> Result<Option<(HashMap<String, String>, Vec<String>)>, QueueError> {
        let mut conn = self.conn.clone();
        let (score, hash, log): (Option<f64>, HashMap<String, String>, Vec<String>) = redis::pipe()
            .cmd("ZSCORE")
            .arg(self.keys.dead_letters())
            .arg(id)
            .cmd("HGETALL")
            .arg(self.keys.delivery(id))
            .cmd("LRANGE")
            .arg(self.keys.attempts(id))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        Ok(score.map(|_| {
            let log = super::ledger::ledger_records(&hash, log);
            (hash, log)
        }))
    }

    /// Replays dead letter `id` (`lua/replay.lua`): takes it out of the dead-letter set and
    /// queues its job again as `new_job_id` with a fresh attempt budget, recording the replay
    /// by `actor` at `now_ms` in its attempt log. One script, so of two concurrent replays
    /// exactly one succeeds. False if `id` was not (or no longer) a dead letter.
    pub async fn replay_dead_letter(
        &self,
        id: &str,
        new_job_id: &str,
        now_ms: i64,
        actor: &str,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let claimed: i64 = self
            .scripts
            .replay
            .key(self.keys.dead_letters())
            .key(self.keys.delivery(id))
            .key(self.keys.attempts(id))
            .key(self.keys.job_data())
            .key(self.keys.ready())
            .arg(id)
            .arg(new_job_id)
            .arg(now_ms)
            .arg(actor)
            .invoke_async(&mut conn)
            .await?;
        Ok(claimed == 1)
    }

    /// The resident (integration, user) of delivery `id` when it is a convergence.
    pub async fn delivery_resident(
        &self,
        id: &str,
    ) -> Result<Option<(String, String)>, QueueError> {
        let mut conn = self.conn.clone();
        let job: Option<String> = redis::cmd("HGET")
            .arg(self.keys.delivery(id))
            .arg("job")
            .query_async(&mut conn)
            .await?;
        Ok(
            match job.and_then(|j| serde_json::from_str::<Job>(&j).ok()) {
                Some(Job::Converge(job)) => Some((job.integration_id, job.user_id)),
                _ => None,
            },
        )
    }

    /// Whether delivery `id` has a ledger hash at all: tells an entry that is not dead from
    /// one that does not exist.
    pub async fn delivery_exists(&self, id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("EXISTS")
            .arg(self.keys.delivery(id))
            .query_async(&mut conn)
            .await?)
    }

    /// Deletes dead letter `id` with its ledger hash and attempt records (`lua/purge.lua`,
    /// atomic). False if it was not a dead letter.
    pub async fn purge_dead_letter(&self, id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let removed: i64 = self
            .scripts
            .purge
            .key(self.keys.dead_letters())
            .key(self.keys.delivery(id))
            .key(self.keys.attempts(id))
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// The ids of the dead letters that died at or before `cutoff_ms`, oldest first, and how
    /// many dead letters there are in all. Both read in one transaction: a purge between two
    /// separate reads could make the expired entries outnumber the total.
    pub async fn dead_letters_expired_and_total(
        &self,
        cutoff_ms: i64,
    ) -> Result<(Vec<String>, u64), QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::pipe()
            .atomic()
            .cmd("ZRANGEBYSCORE")
            .arg(self.keys.dead_letters())
            .arg("-inf")
            .arg(cutoff_ms)
            .cmd("ZCARD")
            .arg(self.keys.dead_letters())
            .query_async(&mut conn)
            .await?)
    }

    /// The ids of the `count` oldest dead letters after the `skip` oldest (by dead-at).
    pub async fn oldest_dead_letter_ids(
        &self,
        skip: i64,
        count: i64,
    ) -> Result<Vec<String>, QueueError> {
        // `ZRANGE k s s-1` would be empty, but `ZRANGE k 0 -1` is everything.
        if count <= 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        Ok(redis::cmd("ZRANGE")
            .arg(self.keys.dead_letters())
            .arg(skip)
            .arg(skip + count - 1)
            .query_async(&mut conn)
            .await?)
    }

    /// Adds `removed` to the lifetime count of dead letters trimmed by the size or age cap
    /// ([`super::QueueCounts::dead_letters_trimmed`]).
    pub async fn count_dead_letters_trimmed(&self, removed: u64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("HINCRBY")
            .arg(self.keys.stats())
            .arg("dead_letters_trimmed")
            .arg(removed)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Prepends the audit record `record` (JSON) and trims the list to the newest 10,000, in
    /// one transaction so the list never grows past its cap.
    pub async fn push_audit(&self, record: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(self.keys.audit())
            .arg(record)
            .ignore()
            .cmd("LTRIM")
            .arg(self.keys.audit())
            .arg(0)
            .arg(AUDIT_KEEP - 1)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The newest `limit` audit records as stored (JSON), newest first.
    pub async fn recent_audit_raw(&self, limit: usize) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("LRANGE")
            .arg(self.keys.audit())
            .arg(0)
            .arg(limit.saturating_sub(1) as isize)
            .query_async(&mut conn)
            .await?)
    }
}
