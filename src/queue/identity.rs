//! The identity cache: which OpenApp user an email (by digest) maps to, per organisation.
//! Entries live [`IDENTITY_TTL`] so that users who left OpenApp drop out on their own; a
//! user OpenApp no longer knows is forgotten at once by [`JobQueue::forget_identity`], or by
//! user id with [`JobQueue::forget_user_identities`] (each user keeps the set of digests
//! mapped to them).

use std::time::Duration;

use super::{JobQueue, QueueError};

/// How long a resolved email stays cached.
pub const IDENTITY_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Deletes `KEYS[1]` if it holds `ARGV[1]`; returns 1 if it did.
const DELETE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

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
        let by_user = self.keys.identity_of_user(org_id, user_id);
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.keys.identity(org_id, digest))
            .arg(user_id)
            .arg("EX")
            .arg(IDENTITY_TTL.as_secs())
            .ignore()
            .cmd("SADD")
            .arg(&by_user)
            .arg(digest)
            .ignore()
            .cmd("EXPIRE")
            .arg(&by_user)
            .arg(IDENTITY_TTL.as_secs())
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Forgets every cached email that maps to `user_id` in `org_id` (OpenApp answered that it
    /// does not know them): the next resolution of those emails searches again. Returns how
    /// many mappings were dropped; a mapping that meanwhile points to another user is kept.
    pub async fn forget_user_identities(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> Result<usize, QueueError> {
        let mut conn = self.conn.clone();
        let by_user = self.keys.identity_of_user(org_id, user_id);
        let digests: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&by_user)
            .query_async(&mut conn)
            .await?;
        let mut dropped = 0;
        for digest in &digests {
            let removed: i64 = redis::Script::new(DELETE_IF_EQUAL)
                .key(self.keys.identity(org_id, digest))
                .arg(user_id)
                .invoke_async(&mut conn)
                .await?;
            dropped += usize::try_from(removed).unwrap_or_default();
        }
        let _: () = redis::cmd("DEL")
            .arg(&by_user)
            .query_async(&mut conn)
            .await?;
        Ok(dropped)
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
