//! The identity cache: which OpenApp user an email (by digest) maps to, per organisation.
//! Entries live [`IDENTITY_TTL`] so that users who left OpenApp drop out on their own; a
//! user OpenApp no longer knows is forgotten at once by [`JobQueue::forget_identity`].

use std::time::Duration;

use super::{JobQueue, QueueError};

/// How long a resolved email stays cached.
pub const IDENTITY_TTL: Duration = Duration::from_secs(30 * 86_400);

impl JobQueue {
    /// The cached user of the email with `digest` in `org_id`, if any.
    pub async fn cached_identity(
        &self,
        org_id: &str,
        digest: &str,
    ) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.keys.identity(org_id, digest))
            .query_async(&mut conn)
            .await?)
    }

    /// Caches `user_id` for the email with `digest` in `org_id`.
    pub async fn cache_identity(
        &self,
        org_id: &str,
        digest: &str,
        user_id: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(self.keys.identity(org_id, digest))
            .arg(user_id)
            .arg("EX")
            .arg(IDENTITY_TTL.as_secs())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Forgets the cached user of the email with `digest` in `org_id`.
    pub async fn forget_identity(&self, org_id: &str, digest: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("DEL")
            .arg(self.keys.identity(org_id, digest))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
