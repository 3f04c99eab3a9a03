//! Resident state in Redis: one hash per (integration, user) holding a JSON record per lease,
//! the state version, the last applied state and whether lease-sync manages the person.
//! Events are folded in by the enqueue script (`lua/enqueue.lua`); this module reads the
//! state, records what was applied, serializes workers per resident and schedules future
//! convergences.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::Duration;

use super::{DeliveryJob, JobQueue, QueueError};
use crate::resident::{Applied, LeaseRecord, ResidentState};

/// Releases a resident lock only if it is still ours. KEYS[1] the lock: the resident hash
/// (ARGV[2] = `hash`: its `lock` field, emptied) or a key of its own (`key`, deleted);
/// ARGV[1] our token.
pub(super) const UNLOCK_SCRIPT: &str = r"
if ARGV[2] == 'hash' then
  if redis.call('HGET', KEYS[1], 'lock') == ARGV[1] then
    redis.call('HSET', KEYS[1], 'lock', '')
    return 1
  end
  return 0
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Extends a resident lock only if it is still ours, to ARGV[2] ms from now (Redis's clock);
/// KEYS[1] and ARGV[3] as in [`UNLOCK_SCRIPT`], ARGV[1] our token.
pub(super) const EXTEND_SCRIPT: &str = r"
if ARGV[3] == 'hash' then
  if redis.call('HGET', KEYS[1], 'lock') ~= ARGV[1] then return 0 end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'lock_until', string.format('%d', now + tonumber(ARGV[2])))
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Who holds a resident's lock, wherever it lives: KEYS[1] the resident hash, KEYS[2] the
/// lock's own key. Answers {holder, ms left, place} or nil.
pub(super) const HELD_LOCK_SCRIPT: &str = r"
local fields = redis.call('HMGET', KEYS[1], 'lock', 'lock_until')
if fields[1] and fields[1] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local left = (tonumber(fields[2] or '0') or 0) - now
  if left > 0 then return {fields[1], left, 'hash'} end
end
local holder = redis.call('GET', KEYS[2])
if holder then return {holder, redis.call('PTTL', KEYS[2]), 'key'} end
return false
";

/// A resident's lock as [`JobQueue::resident_lock`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    /// The holder's token (random, one per claim).
    pub holder: String,
    /// How long it still lives unless its holder extends or releases it (ms).
    pub remaining_ms: u64,
    /// Where it lives.
    pub place: LockPlace,
}

/// A held per-resident lock; release it with [`JobQueue::unlock_resident`], or with the
/// outcome through [`JobQueue::finish_attempt`].
#[derive(Debug)]
pub struct ResidentLock {
    /// The resident hash (layout 4 on) or the lock's own key (layouts 2 and 3).
    pub(super) key: String,
    pub(super) token: String,
    /// The time to live it was taken with (ms): a finish that finds another holder's lock
    /// key puts it back with this one (`finish_attempt.lua`).
    pub(super) ttl_ms: u64,
    /// Where the claim took it (`begin_attempt.lua`, by the namespace's layout then): it is
    /// released and extended there even if the layout changed meanwhile.
    pub(super) place: LockPlace,
}

/// Where a resident's lock lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPlace {
    /// Fields `lock` and `lock_until` of the resident hash (layout 4 on).
    ResidentHash,
    /// A key of its own, `{ns}:lock:<integration>:<user>` (layouts 2 and 3, which the workers
    /// of earlier releases share during a rolling upgrade).
    OwnKey,
}

impl LockPlace {
    /// How the scripts name it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::ResidentHash => "hash",
            Self::OwnKey => "key",
        }
    }
}

impl JobQueue {
    /// The state of `user_id` in `integration_id`, if lease-sync has heard of them.
    pub async fn resident(
        &self,
        integration_id: &str,
        user_id: &str,
    ) -> Result<Option<ResidentState>, QueueError> {
        let mut conn = self.conn.clone();
        let hash: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.resident(integration_id, user_id))
            .query_async(&mut conn)
            .await?;
        parse_resident(integration_id, user_id, &hash)
    }

    /// The record of lease `lease_id` that `user_id` holds in each of `integration_ids`, if
    /// any, in one round trip.
    pub async fn lease_records_of(
        &self,
        integration_ids: &[&str],
        user_id: &str,
        lease_id: &str,
    ) -> Result<Vec<Option<crate::resident::LeaseRecord>>, QueueError> {
        if integration_ids.is_empty() {
            return Ok(Vec::new());
        }
        let field = format!("lease:{lease_id}");
        let mut pipe = redis::pipe();
        for integration_id in integration_ids {
            pipe.cmd("HGET")
                .arg(self.keys.resident(integration_id, user_id))
                .arg(&field);
        }
        let mut conn = self.conn.clone();
        let raw: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        // A record that does not parse is no record to end: the next event replaces it.
        Ok(raw
            .into_iter()
            .map(|r| r.and_then(|json| serde_json::from_str(&json).ok()))
            .collect())
    }

    /// User ids lease-sync holds state for in `integration_id`.
    pub async fn residents_of(&self, integration_id: &str) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let mut users: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.residents_index(integration_id))
            .query_async(&mut conn)
            .await?;
        users.sort();
        Ok(users)
    }

    /// The state of every resident of `integration_id` holding a record of lease
    /// `lease_id` (from any source). Reads the building's resident index in batches.
    pub async fn residents_holding(
        &self,
        integration_id: &str,
        lease_id: &str,
    ) -> Result<Vec<ResidentState>, QueueError> {
        const BATCH: usize = 500;
        let field = format!("lease:{lease_id}");
        let mut conn = self.conn.clone();
        let mut holding = Vec::new();
        for users in self.residents_of(integration_id).await?.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for user in users {
                pipe.cmd("HEXISTS")
                    .arg(self.keys.resident(integration_id, user))
                    .arg(&field);
            }
            let found: Vec<bool> = pipe.query_async(&mut conn).await?;
            for (user, _) in users.iter().zip(found).filter(|(_, found)| *found) {
                if let Some(state) = self.resident(integration_id, user).await? {
                    holding.push(state);
                }
            }
        }
        Ok(holding)
    }

    /// The lock on `user_id` in `integration_id` if a worker holds it now (converging them),
    /// in the resident hash (layout 4) or in a key of its own (layouts 2 and 3).
    pub async fn resident_lock(
        &self,
        integration_id: &str,
        user_id: &str,
    ) -> Result<Option<HeldLock>, QueueError> {
        let mut conn = self.conn.clone();
        let held: Option<(String, i64, String)> = self
            .scripts
            .held_lock
            .key(self.keys.resident(integration_id, user_id))
            .key(self.keys.resident_lock(integration_id, user_id))
            .invoke_async(&mut conn)
            .await?;
        Ok(held.map(|(holder, remaining, place)| HeldLock {
            holder,
            remaining_ms: u64::try_from(remaining).unwrap_or(0),
            place: if place == "hash" {
                LockPlace::ResidentHash
            } else {
                LockPlace::OwnKey
            },
        }))
    }

    /// Extends `lock` to `ttl` from now; false if it was lost (expired and taken over).
    pub async fn extend_resident_lock(
        &self,
        lock: &ResidentLock,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let extended: i64 = self
            .scripts
            .extend_lock
            .key(&lock.key)
            .arg(&lock.token)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(lock.place.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(extended == 1)
    }

    /// Releases `lock` if it is still held by us (it may have expired and been taken over).
    pub async fn unlock_resident(&self, lock: ResidentLock) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .unlock
            .key(&lock.key)
            .arg(&lock.token)
            .arg(lock.place.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Ends held job `task_id` of `job` and schedules the delivery again at `due_ms`,
    /// without using an attempt.
    pub async fn defer(
        &self,
        job: &DeliveryJob,
        task_id: &str,
        due_ms: i64,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let deferred: i64 = self
            .scripts
            .defer
            .key(self.keys.delivery(&job.delivery_id))
            .key(self.keys.job_data())
            .key(self.keys.scheduled())
            .key(self.keys.stats())
            .key(self.keys.in_flight())
            .arg(task_id)
            .arg(super::job_id_ready_at(due_ms))
            .arg(due_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(deferred == 1)
    }

    /// How many scheduled convergences are due after `now_ms`. Entries due more than a day
    /// ago are dropped on the way, so the index stays as small as the schedule.
    pub async fn pending_convergences(&self, now_ms: i64) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let key = self.keys.convergences();
        let (_, pending): (i64, u64) = redis::pipe()
            .atomic()
            .zrembyscore(&key, "-inf", now_ms - 86_400_000)
            .zcount(&key, format!("({now_ms}"), "+inf")
            .query_async(&mut conn)
            .await?;
        Ok(pending)
    }
}

/// A resident's state from its hash (`HGETALL`); `None` when lease-sync has not heard of them.
pub(super) fn parse_resident(
    integration_id: &str,
    user_id: &str,
    hash: &HashMap<String, String>,
) -> Result<Option<ResidentState>, QueueError> {
    if hash.is_empty() {
        return Ok(None);
    }
    let number = |field: &str| hash.get(field).and_then(|v| v.parse::<i64>().ok());
    let mut leases = BTreeMap::new();
    for (field, value) in hash {
        if let Some(lease_id) = field.strip_prefix("lease:") {
            let record: LeaseRecord = serde_json::from_str(value)?;
            leases.insert(lease_id.to_owned(), record);
        }
    }
    let applied = hash.get("applied").map(|a| Applied {
        present: a == "present",
        version: number("applied_version")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or_default(),
        at: number("applied_at").unwrap_or_default(),
    });
    Ok(Some(ResidentState {
        integration_id: integration_id.to_owned(),
        user_id: user_id.to_owned(),
        version: number("version")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or_default(),
        leases,
        applied,
        managed: hash.get("managed").is_some_and(|m| m == "1"),
        next_check: number("next_check"),
    }))
}
