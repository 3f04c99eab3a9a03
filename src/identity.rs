//! People known by email, resolved to OpenApp users.
//!
//! Property software knows tenants by name and email; OpenApp grants access to user ids.
//! `GET /users/search` matches substrings of names and emails, so the one user whose email
//! equals the tenant's (ignoring case) is picked out of its results. A found mapping is cached
//! in Redis; a tenant without an email, without a matching user, or matching several users
//! gets no access and becomes a *conflict* with that reason, shown to operators until a later
//! change or pull resolves it. With `create_missing`, a missing user is created.
//!
//! Emails are personal data: they never appear in metric labels, only at debug level in logs,
//! and the cache keys hold a digest of the email, not the email.

use serde::{Deserialize, Serialize};

use crate::openapp::{CallError, OpenAppClient, OpenAppUser};
use crate::queue::{JobQueue, QueueError};

/// Why a person could not be given an OpenApp user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictReason {
    /// The property software has no email for them.
    NoEmail,
    /// No OpenApp user has their email (and `create_missing` is off).
    NoOpenappUser,
    /// Several OpenApp users have their email.
    AmbiguousEmail,
}

impl ConflictReason {
    /// `no_email`, `no_openapp_user` or `ambiguous_email`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictReason::NoEmail => "no_email",
            ConflictReason::NoOpenappUser => "no_openapp_user",
            ConflictReason::AmbiguousEmail => "ambiguous_email",
        }
    }
}

impl std::fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What resolving one person gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Their OpenApp user id.
    User(String),
    /// No single user: they get no access, and the conflict is recorded.
    Conflict(ConflictReason),
}

/// Resolving failed for a reason that may pass: retry later.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// OpenApp failed or refused.
    #[error(transparent)]
    OpenApp(#[from] CallError),
    /// Redis failed.
    #[error(transparent)]
    Cache(#[from] QueueError),
}

/// An email as compared: trimmed and lower-cased; `None` unless it looks like one.
pub use crate::event::normalize_email as normalize;

/// How many of `users` have exactly `email` (already [`normalize`]d), ignoring case.
pub fn exact_matches<'a>(email: &str, users: &'a [OpenAppUser]) -> Vec<&'a OpenAppUser> {
    let mut found: Vec<&OpenAppUser> = users
        .iter()
        .filter(|u| normalize(&u.email).as_deref() == Some(email))
        .collect();
    // The same user on two pages is one user.
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.dedup_by(|a, b| a.id == b.id);
    found
}

/// A digest of a normalized email, for cache keys: the email itself never becomes a key.
pub fn email_digest(email: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(email.as_bytes()))
}

/// The per-email locks of the resolutions under way in this process.
type Searching = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
>;

/// Resolves people to OpenApp users, through the cache. Clones share one set of resolutions
/// under way: two resolutions of one email at once (the two refreshes of a new lease) make one
/// search, the second reading the cache the first filled.
#[derive(Debug, Clone)]
pub struct Resolver {
    client: OpenAppClient,
    queue: JobQueue,
    create_missing: bool,
    searching: Searching,
}

impl Resolver {
    /// A resolver asking `client`, caching in `queue`'s Redis, creating missing users when
    /// `create_missing`.
    pub fn new(client: OpenAppClient, queue: JobQueue, create_missing: bool) -> Self {
        Self {
            client,
            queue,
            create_missing,
            searching: Searching::default(),
        }
    }

    /// The OpenApp user of the person with `email` (and `name`, for creating one) in
    /// `org_id`.
    pub async fn resolve(
        &self,
        org_id: &str,
        email: Option<&str>,
        name: Option<&str>,
    ) -> Result<Resolved, ResolveError> {
        let Some(email) = email.and_then(normalize) else {
            return Ok(Resolved::Conflict(ConflictReason::NoEmail));
        };
        let digest = email_digest(&email);
        if let Some(user) = self.queue.cached_identity(org_id, &digest).await? {
            return Ok(Resolved::User(user));
        }
        // One search per email at a time in this process; whoever waited reads the cache.
        let key = format!("{org_id}:{digest}");
        let lock = {
            let mut searching = self
                .searching
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::sync::Arc::clone(searching.entry(key.clone()).or_default())
        };
        let held = lock.lock().await;
        let resolved = self.search(org_id, &email, &digest, name).await;
        drop(held);
        let mut searching = self
            .searching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map and this resolution hold it: nobody else waits, so it can go.
        if std::sync::Arc::strong_count(&lock) == 2 {
            searching.remove(&key);
        }
        resolved
    }

    /// The search behind [`Resolver::resolve`], once the email's lock is held.
    async fn search(
        &self,
        org_id: &str,
        email: &str,
        digest: &str,
        name: Option<&str>,
    ) -> Result<Resolved, ResolveError> {
        if let Some(user) = self.queue.cached_identity(org_id, digest).await? {
            return Ok(Resolved::User(user));
        }
        let email = email.to_owned();
        let users = self.client.search_users(org_id, &email).await?;
        let resolved = match exact_matches(&email, &users).as_slice() {
            [one] => Resolved::User(one.id.clone()),
            [] if self.create_missing => {
                let name = name.filter(|n| !n.trim().is_empty()).unwrap_or(&email);
                match self.client.create_user(org_id, name, &email).await {
                    Ok(user) => Resolved::User(user.id),
                    // Created meanwhile by someone else: find it next time round.
                    Err(CallError::Status { status: 409, .. }) => {
                        match exact_matches(
                            &email,
                            &self.client.search_users(org_id, &email).await?,
                        )
                        .as_slice()
                        {
                            [one] => Resolved::User(one.id.clone()),
                            [] => Resolved::Conflict(ConflictReason::NoOpenappUser),
                            _ => Resolved::Conflict(ConflictReason::AmbiguousEmail),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            [] => Resolved::Conflict(ConflictReason::NoOpenappUser),
            _ => Resolved::Conflict(ConflictReason::AmbiguousEmail),
        };
        if let Resolved::User(user) = &resolved {
            self.queue.cache_identity(org_id, digest, user).await?;
        }
        Ok(resolved)
    }

    /// Drops the cached user of `email` in `org_id`: OpenApp no longer knows them, so the
    /// next resolution searches again.
    pub async fn forget(&self, org_id: &str, email: &str) -> Result<(), ResolveError> {
        if let Some(email) = normalize(email) {
            self.queue
                .forget_identity(org_id, &email_digest(&email))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, email: &str) -> OpenAppUser {
        OpenAppUser {
            id: id.into(),
            email: email.into(),
        }
    }

    #[test]
    fn emails_are_compared_trimmed_and_in_lower_case() {
        assert_eq!(
            normalize("  Ada.Lovelace@Example.COM ").as_deref(),
            Some("ada.lovelace@example.com")
        );
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "a b@example.com",
            "a@b@c",
            "a\u{7}@b.c",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_an_exact_email_matches_a_substring_search() {
        let users = [
            user("01A", "ada@example.com"),
            user("01B", "ada@example.com.au"),
            user("01C", "grace.ada@example.com"),
            user("01D", "ADA@EXAMPLE.COM"),
        ];
        let found: Vec<&str> = exact_matches("ada@example.com", &users)
            .iter()
            .map(|u| u.id.as_str())
            .collect();
        assert_eq!(
            found,
            ["01A", "01D"],
            "two users share the email: ambiguous"
        );
        assert_eq!(exact_matches("ada@example.com", &users[1..3]).len(), 0);
        let twice = [
            user("01A", "ada@example.com"),
            user("01A", "ada@example.com"),
        ];
        assert_eq!(exact_matches("ada@example.com", &twice).len(), 1);
    }

    #[test]
    fn cache_keys_never_hold_the_email() {
        let digest = email_digest("ada@example.com");
        assert_eq!(digest.len(), 64);
        assert!(!digest.contains("ada"));
    }

    #[test]
    fn reasons_have_their_wire_names() {
        for (reason, name) in [
            (ConflictReason::NoEmail, "no_email"),
            (ConflictReason::NoOpenappUser, "no_openapp_user"),
            (ConflictReason::AmbiguousEmail, "ambiguous_email"),
        ] {
            assert_eq!(reason.as_str(), name);
            assert_eq!(serde_json::to_value(reason).unwrap(), name);
        }
    }
}
