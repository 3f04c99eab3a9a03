//! The one-time upgrade of a namespace written by an earlier release: keys without the hash
//! tag, and jobs in apalis-redis 1.0's keys (`namespace:deliveries:…`).
//!
//! Every process runs [`JobQueue::ensure_layout`] before its first write to the queue; the
//! first one to find the namespace unmarked takes a lock and migrates, the others wait for
//! the marker (`{namespace}:layout`). The migration:
//! 1. moves every job apalis-redis held — ready (in order), scheduled (with its due time), in
//!    flight at a worker (back to ready: a job that had started counts that attempt as crashed
//!    when it runs again), and parked in apalis's own dead set while its delivery still expects
//!    it — into this layout under the same job id, so each delivery's ledger still names it;
//! 2. renames every other key of the namespace to its hash-tagged name (`RENAME` keeps each
//!    key's time to live);
//! 3. deletes apalis-redis's keys (its done set, task metadata, worker registry) and the
//!    namespace's entry in apalis's global `core:apalis:queues:list`;
//! 4. writes the marker.
//!
//! A migration cut short is safe to run again: jobs already moved are moved once more (the
//! ledger fences the duplicate run), keys already renamed are not found under the old name.
//! Stop every process of the old release first: one still running writes the old layout,
//! which nothing reads after the marker is set (`lease-sync queue migrate` moves such
//! stragglers by hand).

use std::time::Duration;

use tracing::{info, warn};

use super::keys::{LEGACY_FAMILIES, LegacyKeys};
use super::{JobQueue, QueueError};

/// The layout this release writes on a namespace it creates or upgrades from apalis-redis's
/// keys, kept in `{namespace}:layout`: a queued job's payload lives in the job data hash only,
/// and its delivery's ledger gets a copy when it is dead-lettered (from layout 3); a
/// resident's lock is two fields of the resident hash, `lock` and `lock_until`, which the
/// claim reads and writes with the resident's state (`lua/begin_attempt.lua`).
pub const LAYOUT_VERSION: &str = "4";

/// The layout of the release before this one (`4edbe08` to `f1b0e49`), which this release
/// also runs on: the same keys, but a resident's lock is a key of its own
/// (`{namespace}:lock:<integration>:<user>`), which that release's workers take. While a
/// namespace says `3` (or [`ROLLOUT_LAYOUT_VERSION`]), this release's claims take that key
/// too (each claim reads the marker), so workers of both releases exclude each other during a
/// rolling upgrade. `lease-sync queue migrate --to 4` moves it to [`LAYOUT_VERSION`] once no
/// process of the earlier release is left; `--to 3` moves it back before a rollback.
pub const PREVIOUS_LAYOUT_VERSION: &str = "3";

/// The layout of the releases from `03085aa`'s successor to `d7a771c`, which this release also
/// runs on: as [`PREVIOUS_LAYOUT_VERSION`], and every ledger keeps a copy of its job (`job`),
/// which those releases' workers read to queue a retry or a deferral. While a namespace says
/// `2`, this release writes that copy too (each script that creates a ledger reads the
/// marker). `--to 2` moves a namespace back to it before a rollback to those releases.
pub const ROLLOUT_LAYOUT_VERSION: &str = "2";

/// Whether this release runs on a namespace whose marker says `layout`.
fn runs_on(layout: &str) -> bool {
    layout == LAYOUT_VERSION
        || layout == PREVIOUS_LAYOUT_VERSION
        || layout == ROLLOUT_LAYOUT_VERSION
}

/// How long the migration lock lives unless renewed (it is taken again per step).
const LOCK_TTL: Duration = Duration::from_secs(60);

/// Keys per `SCAN` step and per write pipeline.
const CHUNK: usize = 500;

/// What a migration moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    /// Jobs now in the ready list (ready, in flight or parked by apalis before).
    pub jobs_ready: u64,
    /// Jobs now in the scheduled set (retries, deferrals, lease-window convergences).
    pub jobs_scheduled: u64,
    /// Job ids that had no payload, or whose delivery no longer expected them: dropped.
    pub jobs_dropped: u64,
    /// Keys renamed to their hash-tagged names.
    pub keys_renamed: u64,
    /// apalis-redis keys deleted.
    pub keys_deleted: u64,
    /// Keys left under their old name because their new name exists already (written by an
    /// old process after the upgrade: never overwritten, see `queue migrate`).
    pub keys_left: u64,
}

/// What [`JobQueue::switch_layout`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayoutSwitch {
    /// The layout the namespace was in.
    pub from: String,
    /// The layout it is in now.
    pub to: String,
    /// Ledgers given a copy of their queued job's payload (moving to layout 2).
    pub copied: u64,
}

impl JobQueue {
    /// Brings the namespace to this release's layout if it is not there yet, waiting up to
    /// `wait` for another process that is migrating it. `Ok(None)`: nothing to do.
    pub async fn ensure_layout(
        &self,
        wait: Duration,
    ) -> Result<Option<MigrationReport>, QueueError> {
        let mut conn = self.conn.clone();
        let marker = self.keys.layout();
        let current: Option<String> = redis::cmd("GET")
            .arg(&marker)
            .query_async(&mut conn)
            .await?;
        if let Some(earlier @ (ROLLOUT_LAYOUT_VERSION | PREVIOUS_LAYOUT_VERSION)) =
            current.as_deref()
        {
            info!(
                layout = earlier,
                "this namespace is in an earlier Redis layout, shared with the workers of an earlier release (every ledger keeps a copy of its job in layout 2, residents are locked by keys of their own in layouts 2 and 3); once every process runs this release, `lease-sync queue migrate --to 4` finishes the upgrade"
            );
        }
        if current.as_deref().is_some_and(runs_on) {
            return Ok(None);
        }
        if let Some(other) = current {
            return Err(QueueError::Protocol(format!(
                "namespace holds layout {other}, written by a newer release; this one reads layouts {ROLLOUT_LAYOUT_VERSION}, {PREVIOUS_LAYOUT_VERSION} and {LAYOUT_VERSION}"
            )));
        }
        let token = ulid::Ulid::new().to_string();
        let lock = self.keys.migration_lock();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let taken: bool = redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async::<Option<String>>(&mut conn)
                .await?
                .is_some();
            if taken {
                break;
            }
            let current: Option<String> = redis::cmd("GET")
                .arg(&marker)
                .query_async(&mut conn)
                .await?;
            if current.as_deref().is_some_and(runs_on) {
                return Ok(None);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QueueError::Protocol(
                    "another process is still upgrading the Redis layout; try again".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let result = self.migrate_legacy().await;
        if let Ok(report) = &result {
            let _: () = redis::cmd("SET")
                .arg(&marker)
                .arg(LAYOUT_VERSION)
                .query_async(&mut conn)
                .await?;
            if *report != MigrationReport::default() {
                info!(
                    jobs_ready = report.jobs_ready,
                    jobs_scheduled = report.jobs_scheduled,
                    jobs_dropped = report.jobs_dropped,
                    keys_renamed = report.keys_renamed,
                    keys_deleted = report.keys_deleted,
                    "upgraded the Redis layout of this namespace"
                );
            }
        }
        let _: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(&lock)
        .arg(&token)
        .invoke_async(&mut conn)
        .await?;
        result.map(Some)
    }

    /// Moves whatever the earlier layout left in this namespace into this one (see the module
    /// documentation); run by [`Self::ensure_layout`], or by hand (`lease-sync queue migrate`)
    /// for what an old process wrote after the upgrade.
    pub async fn migrate_legacy(&self) -> Result<MigrationReport, QueueError> {
        if self.conn.is_cluster() {
            // No release before this one ran on a cluster: nothing to move.
            return Ok(MigrationReport::default());
        }
        let legacy = LegacyKeys::new(self.keys.namespace());
        let mut report = MigrationReport::default();
        self.migrate_jobs(&legacy, &mut report).await?;
        self.rename_families(&legacy, &mut report).await?;
        self.delete_apalis_keys(&legacy, &mut report).await?;
        Ok(report)
    }

    async fn migrate_jobs(
        &self,
        legacy: &LegacyKeys,
        report: &mut MigrationReport,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let old_data = legacy.queue_key("data");
        // Ready first (in order), then what workers held, then what apalis parked.
        let mut ready: Vec<String> = redis::cmd("LRANGE")
            .arg(legacy.queue_key("active"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let inflight_prefix = format!("{}:", legacy.queue_key("inflight"));
        for set in self
            .scan(&format!("{}*", glob_escape(&inflight_prefix)))
            .await?
        {
            let held: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&set)
                .query_async(&mut conn)
                .await?;
            ready.extend(held);
        }
        let parked: Vec<String> = redis::cmd("SMEMBERS")
            .arg(legacy.queue_key("dead"))
            .query_async(&mut conn)
            .await?;
        let scheduled: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(legacy.queue_key("scheduled"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;

        let mut seen = std::collections::HashSet::new();
        let mut to_ready: Vec<(String, String)> = Vec::new();
        let mut to_schedule: Vec<(String, String, f64)> = Vec::new();
        let tasks = ready
            .into_iter()
            .map(|id| (id, None, false))
            .chain(parked.into_iter().map(|id| (id, None, true)))
            .chain(
                scheduled
                    .into_iter()
                    .map(|(id, due)| (id, Some(due), false)),
            );
        for (id, due, parked) in tasks {
            if !seen.insert(id.clone()) {
                continue;
            }
            let payload: Option<String> = redis::cmd("HGET")
                .arg(&old_data)
                .arg(&id)
                .query_async(&mut conn)
                .await?;
            let Some(payload) = payload else {
                report.jobs_dropped += 1;
                continue;
            };
            if parked && !self.ledger_expects(&payload, &id).await? {
                report.jobs_dropped += 1;
                continue;
            }
            match due {
                Some(due) => to_schedule.push((id, payload, due)),
                None => to_ready.push((id, payload)),
            }
        }
        for chunk in to_ready.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (id, payload) in chunk {
                pipe.hset(self.keys.job_data(), id, payload).ignore();
                pipe.rpush(self.keys.ready(), id).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
            report.jobs_ready += chunk.len() as u64;
        }
        for chunk in to_schedule.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (id, payload, due) in chunk {
                pipe.hset(self.keys.job_data(), id, payload).ignore();
                pipe.zadd(self.keys.scheduled(), id, *due).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
            report.jobs_scheduled += chunk.len() as u64;
        }
        Ok(())
    }

    /// Whether the delivery of job `payload` still names job `id` as its current one (so a
    /// job apalis parked by itself is still owed a run).
    async fn ledger_expects(&self, payload: &str, id: &str) -> Result<bool, QueueError> {
        let Ok(job) = serde_json::from_str::<super::Job>(payload) else {
            return Ok(false);
        };
        let legacy = LegacyKeys::new(self.keys.namespace());
        let mut conn = self.conn.clone();
        let current: Option<String> = redis::cmd("HGET")
            .arg(format!(
                "{}:delivery:{}",
                legacy.namespace(),
                job.delivery_id()
            ))
            .arg("current_task")
            .query_async(&mut conn)
            .await?;
        Ok(current.as_deref() == Some(id))
    }

    async fn rename_families(
        &self,
        legacy: &LegacyKeys,
        report: &mut MigrationReport,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let old_prefix = format!("{}:", legacy.namespace());
        let new_prefix = format!("{}:", self.keys.tag());
        for family in LEGACY_FAMILIES {
            let pattern = if family.ends_with(':') {
                format!("{}{family}*", glob_escape(&old_prefix))
            } else {
                format!("{}{family}", glob_escape(&old_prefix))
            };
            let names = self.scan(&pattern).await?;
            for chunk in names.chunks(CHUNK) {
                let mut pipe = redis::pipe();
                let mut renamed = Vec::with_capacity(chunk.len());
                for name in chunk {
                    let Some(rest) = name.strip_prefix(&old_prefix) else {
                        continue;
                    };
                    // Never over an existing key: a record written under the new name since
                    // the upgrade may be newer than the one an old process left.
                    pipe.cmd("RENAMENX")
                        .arg(name)
                        .arg(format!("{new_prefix}{rest}"));
                    renamed.push(name);
                }
                let answers: Vec<redis::RedisResult<i64>> = match pipe
                    .query_async::<Vec<redis::Value>>(&mut conn)
                    .await
                {
                    Ok(values) => values
                        .into_iter()
                        .map(|v| redis::from_redis_value::<i64>(v).map_err(Into::into))
                        .collect(),
                    Err(e) => {
                        // A key that expired between the SCAN and the RENAMENX ("no such key")
                        // fails the whole pipeline: rename one by one instead.
                        warn!("renaming a chunk of keys failed ({e}); renaming them one by one");
                        let mut answers = Vec::with_capacity(renamed.len());
                        for name in &renamed {
                            let rest = name.strip_prefix(&old_prefix).unwrap_or(name);
                            answers.push(
                                redis::cmd("RENAMENX")
                                    .arg(name)
                                    .arg(format!("{new_prefix}{rest}"))
                                    .query_async(&mut conn)
                                    .await,
                            );
                        }
                        answers
                    }
                };
                for answer in answers {
                    match answer {
                        Ok(1) => report.keys_renamed += 1,
                        Ok(_) => report.keys_left += 1,
                        Err(_) => {} // gone (expired) meanwhile
                    }
                }
            }
        }
        Ok(())
    }

    async fn delete_apalis_keys(
        &self,
        legacy: &LegacyKeys,
        report: &mut MigrationReport,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let mut names = self
            .scan(&format!("{}:*", glob_escape(&legacy.queue())))
            .await?;
        names.push(legacy.worker_names());
        for chunk in names.chunks(CHUNK) {
            let deleted: u64 = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await?;
            report.keys_deleted += deleted;
        }
        // apalis-redis registers the queue by its workers key.
        let _: i64 = redis::cmd("ZREM")
            .arg(LegacyKeys::apalis_queues())
            .arg(legacy.queue())
            .arg(legacy.queue_key("workers"))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The layout marker of the namespace (`None` before any process of a release with
    /// markers wrote to it).
    pub async fn layout_version(&self) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.keys.layout())
            .query_async(&mut conn)
            .await?)
    }

    /// Moves a namespace between the layouts this release runs on ([`ROLLOUT_LAYOUT_VERSION`],
    /// [`PREVIOUS_LAYOUT_VERSION`] and [`LAYOUT_VERSION`]); returns the layout it was in.
    ///
    /// To [`LAYOUT_VERSION`] or [`PREVIOUS_LAYOUT_VERSION`]: only the marker changes. Every
    /// script that creates a ledger or claims a convergence reads it, so from the next call on
    /// no ledger gets a copy of its job (from 3) and claims lock residents in their hash (4).
    /// Ledgers written before keep their copies, which nothing needs any more; a lock taken
    /// before is released where it was taken. Run it once no process of the earlier release is
    /// left: one that is would lose the retry or deferral of a job it cannot find in the ledger
    /// (3), or take a resident's lock key that this release's claims no longer look at (4),
    /// and converge a resident beside one of them (the finish's check of the state version
    /// still converges it again to the latest state).
    ///
    /// To [`ROLLOUT_LAYOUT_VERSION`] (before going back to a release of layout 2): the marker
    /// first, so every ledger created from then on keeps a copy, then every queued job's
    /// payload is copied into its ledger where that has none; the count is returned in
    /// `copied`.
    pub async fn switch_layout(&self, to: &str) -> Result<LayoutSwitch, QueueError> {
        if !runs_on(to) {
            return Err(QueueError::Protocol(format!(
                "layout {to} is not one this release runs on ({ROLLOUT_LAYOUT_VERSION}, {PREVIOUS_LAYOUT_VERSION} or {LAYOUT_VERSION})"
            )));
        }
        self.ensure_layout(Duration::from_secs(60)).await?;
        let mut conn = self.conn.clone();
        let from: Option<String> = redis::cmd("SET")
            .arg(self.keys.layout())
            .arg(to)
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        let mut copied = 0;
        if to == ROLLOUT_LAYOUT_VERSION {
            copied = self.copy_payloads_into_ledgers().await?;
        }
        Ok(LayoutSwitch {
            from: from.unwrap_or_default(),
            to: to.to_owned(),
            copied,
        })
    }

    /// Copies the payload of every job in the job data hash into its delivery's ledger where
    /// that exists and has none; how many were copied.
    async fn copy_payloads_into_ledgers(&self) -> Result<u64, QueueError> {
        let copy = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSETNX', KEYS[1], 'job', ARGV[1]) end return 0",
        );
        let mut conn = self.conn.clone();
        let data = self.keys.job_data();
        let mut copied = 0;
        let mut cursor = 0u64;
        loop {
            let (next, entries): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&data)
                .arg(cursor)
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(&mut conn)
                .await?;
            for (_, payload) in entries {
                // A payload that does not parse names no delivery; the fetch drops it.
                let Ok(job) = serde_json::from_str::<super::Job>(&payload) else {
                    continue;
                };
                let n: u64 = copy
                    .key(self.keys.delivery(job.delivery_id()))
                    .arg(&payload)
                    .invoke_async(&mut conn)
                    .await?;
                copied += n;
            }
            if next == 0 {
                return Ok(copied);
            }
            cursor = next;
        }
    }

    /// Every key matching `pattern`.
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let mut found = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(&mut conn)
                .await?;
            found.extend(keys);
            if next == 0 {
                return Ok(found);
            }
            cursor = next;
        }
    }
}

/// `text` with the characters `SCAN MATCH` treats as a glob escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_in_a_namespace_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("lease-sync:"), "lease-sync:");
    }
}
