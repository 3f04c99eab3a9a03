//! What the web console keeps in Redis: its sessions, so any process of a deployment serves a
//! signed-in operator (each stored under the SHA-256 of its cookie value, with a time to live;
//! what it holds is the console's business, opaque JSON here), and when each source last
//! sent a webhook.

use std::time::Duration;

use super::{JobQueue, QueueError};

impl JobQueue {
    /// Stores session `record` under `session_digest` for `ttl`.
    pub async fn put_console_session(
        &self,
        session_digest: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(self.keys.console_session(session_digest))
            .arg(record)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The session stored under `session_digest`, if it exists and has not expired.
    pub async fn console_session(
        &self,
        session_digest: &str,
    ) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.keys.console_session(session_digest))
            .query_async(&mut conn)
            .await?)
    }

    /// Ends the session stored under `session_digest` (signing out).
    pub async fn delete_console_session(&self, session_digest: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("DEL")
            .arg(self.keys.console_session(session_digest))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Records that `source` sent a webhook that was accepted at `at_ms`.
    pub async fn record_last_event(&self, source: &str, at_ms: i64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("HSET")
            .arg(self.keys.last_events())
            .arg(source)
            .arg(at_ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// When each source's last webhook was accepted (ms), by source.
    pub async fn last_events(&self) -> Result<std::collections::BTreeMap<String, i64>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HGETALL")
            .arg(self.keys.last_events())
            .query_async(&mut conn)
            .await?)
    }
}
