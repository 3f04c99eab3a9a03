//! Paused integrations: while one is paused, the convergences of its residents are held
//! (moved from the in-flight set to the integration's held list by the script that would
//! have begun their attempt, so no call is made and no attempt spent); resuming moves them
//! back to the ready list. Ingest and folds go on as usual.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{JobQueue, QueueError, now_ms};

/// Held job ids one release script moves.
const RELEASE_CHUNK: u32 = 500;

/// Who paused an integration, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// Who (`token:…`, `cli:…`).
    pub by: String,
    /// When (ms since the epoch).
    pub at: i64,
}

/// What releasing an integration's held jobs did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// This many went back to the ready list (all there were).
    Moved(u64),
    /// The integration is paused (again): this many moved before it was, the rest stay held.
    PausedAgain(u64),
}

impl JobQueue {
    /// Pauses `integration_id` as `by`; `false` if it was paused already (the first record
    /// is kept).
    pub async fn pause(&self, integration_id: &str, by: &str) -> Result<bool, QueueError> {
        self.layout_ready().await?;
        let record = serde_json::to_string(&PauseRecord {
            by: by.to_owned(),
            at: now_ms(),
        })?;
        let mut conn = self.conn.clone();
        let added: bool = redis::cmd("HSETNX")
            .arg(self.keys.paused())
            .arg(integration_id)
            .arg(record)
            .query_async(&mut conn)
            .await?;
        Ok(added)
    }

    /// Resumes `integration_id`: no longer paused (`false` if it was not), then its held jobs
    /// are released ([`Self::release_held`]).
    pub async fn resume(&self, integration_id: &str) -> Result<(bool, Released), QueueError> {
        self.layout_ready().await?;
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("HDEL")
            .arg(self.keys.paused())
            .arg(integration_id)
            .query_async(&mut conn)
            .await?;
        let released = self.release_held(integration_id).await?;
        Ok((removed > 0, released))
    }

    /// Moves the jobs held for `integration_id` back to the ready list, 500 per script, as
    /// long as it is not paused. Idempotent; the workers' housekeeping runs it for every
    /// integration that is not paused, so jobs held when a resume failed half-way still go.
    pub async fn release_held(&self, integration_id: &str) -> Result<Released, QueueError> {
        let mut conn = self.conn.clone();
        let mut total = 0;
        loop {
            let moved: i64 = self
                .scripts
                .release_held
                .key(self.keys.held(integration_id))
                .key(self.keys.ready())
                .key(self.keys.paused())
                .arg(integration_id)
                .arg(RELEASE_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            match u64::try_from(moved) {
                Err(_) => return Ok(Released::PausedAgain(total)),
                Ok(n) => {
                    total += n;
                    if n < u64::from(RELEASE_CHUNK) {
                        return Ok(Released::Moved(total));
                    }
                }
            }
        }
    }

    /// The paused integrations, by id.
    pub async fn paused(&self) -> Result<BTreeMap<String, PauseRecord>, QueueError> {
        let mut conn = self.conn.clone();
        let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.paused())
            .query_async(&mut conn)
            .await?;
        Ok(raw
            .into_iter()
            .map(|(id, record)| {
                // A record this release cannot read still means paused.
                let record = serde_json::from_str(&record).unwrap_or(PauseRecord {
                    by: "unknown".into(),
                    at: 0,
                });
                (id, record)
            })
            .collect())
    }

    /// How many jobs are held for each of `integration_ids`, in one round trip.
    pub async fn held_counts(&self, integration_ids: &[&str]) -> Result<Vec<u64>, QueueError> {
        if integration_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in integration_ids {
            pipe.cmd("LLEN").arg(self.keys.held(id));
        }
        let mut conn = self.conn.clone();
        Ok(pipe.query_async(&mut conn).await?)
    }
}
