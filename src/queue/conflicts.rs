//! Conflicts: people a source names who could not be given an OpenApp user (no email, no
//! user with it, several users with it). One hash per namespace, a field per person; each
//! entry says why, for which lease and building, and since when. An entry goes when the same
//! person is resolved later (a change at the source or the next pull).

use serde::{Deserialize, Serialize};

pub use crate::personal::{initials, mask_email};

use super::{JobQueue, QueueError, now_ms};
use crate::identity::ConflictReason;

/// One unresolved person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The source that named them.
    pub source: String,
    /// Who they are at the source: `tenant:<id>` for a Buildium tenant, or
    /// `email:<digest>` for a native event's resident.
    pub person: String,
    /// Why no OpenApp user could be given.
    pub reason: ConflictReason,
    /// Their email as the source has it, if any (personal data: masked when shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Their name as the source has it, if any (personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The lease that would have given them access.
    pub lease_id: String,
    /// Its building at the source.
    pub property_id: String,
    /// The OpenApp integration of that building.
    pub integration_id: String,
    /// When first recorded (ms since the epoch).
    pub first_seen: i64,
    /// When last seen unresolved (ms).
    pub last_seen: i64,
    /// How many times it was seen.
    pub times: u64,
}

impl Conflict {
    /// This conflict with its personal data masked: the email to its first letter and
    /// domain, the name to initials. How conflicts are shown unless asked for in full.
    pub fn masked(mut self) -> Self {
        self.email = self.email.as_deref().map(mask_email);
        self.name = self.name.as_deref().map(initials);
        self
    }
}

/// Records `conflict` (as first seen now, or as seen again: `first_seen` and `times` kept
/// and counted), atomically.
const RECORD_SCRIPT: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local new = cjson.decode(ARGV[2])
if old then
  local previous = cjson.decode(old)
  new.first_seen = previous.first_seen
  new.times = (previous.times or 0) + 1
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(new))
return new.times
";

impl JobQueue {
    /// Records that `conflict.person` of `conflict.source` is unresolved; returns how many
    /// times it has been seen.
    pub async fn record_conflict(&self, conflict: &Conflict) -> Result<u64, QueueError> {
        let mut fresh = conflict.clone();
        let now = now_ms();
        fresh.first_seen = now;
        fresh.last_seen = now;
        fresh.times = 1;
        let mut conn = self.conn.clone();
        let times: u64 = redis::Script::new(RECORD_SCRIPT)
            .key(self.keys.conflicts())
            .arg(field(&conflict.source, &conflict.person))
            .arg(serde_json::to_string(&fresh)?)
            .invoke_async(&mut conn)
            .await?;
        Ok(times)
    }

    /// Forgets the conflict of `person` of `source`, if any: they were resolved.
    pub async fn resolve_conflict(&self, source: &str, person: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("HDEL")
            .arg(self.keys.conflicts())
            .arg(field(source, person))
            .query_async(&mut conn)
            .await?;
        Ok(removed > 0)
    }

    /// `person` of `source` was resolved to `user_id`: their conflict, if any, is gone, and
    /// the user is remembered for them ([`JobQueue::person_user`]). One round trip, and no
    /// write when nothing changed.
    pub async fn person_resolved(
        &self,
        source: &str,
        person: &str,
        user_id: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .person_resolved
            .key(self.keys.conflicts())
            .key(self.keys.person_users(source))
            .arg(field(source, person))
            .arg(person)
            .arg(user_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The OpenApp user `person` of `source` was last resolved to, if any.
    pub async fn person_user(
        &self,
        source: &str,
        person: &str,
    ) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HGET")
            .arg(self.keys.person_users(source))
            .arg(person)
            .query_async(&mut conn)
            .await?)
    }

    /// Every conflict (of `source` only, when given), oldest first.
    pub async fn conflicts(&self, source: Option<&str>) -> Result<Vec<Conflict>, QueueError> {
        let mut conn = self.conn.clone();
        let values: Vec<String> = redis::cmd("HVALS")
            .arg(self.keys.conflicts())
            .query_async(&mut conn)
            .await?;
        let mut conflicts: Vec<Conflict> = values
            .iter()
            .filter_map(|v| serde_json::from_str(v).ok())
            .filter(|c: &Conflict| source.is_none_or(|s| c.source == s))
            .collect();
        conflicts.sort_by(|a, b| (a.first_seen, &a.person).cmp(&(b.first_seen, &b.person)));
        Ok(conflicts)
    }
}

/// The hash field of one person: source and person joined by a separator neither holds.
fn field(source: &str, person: &str) -> String {
    format!("{source}\u{1f}{person}")
}
