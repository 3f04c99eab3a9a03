//! OpenApp users, the identities behind `GET /api/v1/users/search` and `POST /api/v1/users`:
//! what the sandbox stores, and how tests seed them ([`Sandbox::add_user`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ulid::Ulid;

use super::{Sandbox, State};

/// Locale under which a plain display name is stored (the spec's `LocalizedString` is a map
/// from locale to text).
pub const DEFAULT_LOCALE: &str = "en";

/// A user to create with [`Sandbox::add_user`] (the fields of the spec's `CreateUserRequest`
/// that the sandbox keeps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    /// Id to give the user; a fresh ULID when `None` (the spec's ids are ULIDs).
    pub id: Option<String>,
    /// Display name by locale, e.g. `{"en": "Alice Smith"}`; at least one non-blank entry.
    pub name: BTreeMap<String, String>,
    /// Email address; unique among all users, compared case-insensitively.
    pub email: String,
    /// Given name (kept on the identity, not returned by the API, as in OpenApp).
    pub first_name: Option<String>,
    /// Family name (kept on the identity, not returned by the API, as in OpenApp).
    pub last_name: Option<String>,
    /// Roles to grant, as org id → role names (the spec's `roles`).
    pub roles: BTreeMap<String, Vec<String>>,
}

impl NewUser {
    /// A user with a display name under [`DEFAULT_LOCALE`] and an email, nothing else.
    #[must_use]
    pub fn new(name: impl Into<String>, email: impl Into<String>) -> Self {
        Self {
            id: None,
            name: BTreeMap::from([(DEFAULT_LOCALE.to_owned(), name.into())]),
            email: email.into(),
            first_name: None,
            last_name: None,
            roles: BTreeMap::new(),
        }
    }
}

/// A user as the sandbox stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    /// Unique id (a ULID unless one was given).
    pub id: String,
    /// Display name by locale.
    pub name: BTreeMap<String, String>,
    /// Email address as given.
    pub email: String,
    /// Given name, when given.
    pub first_name: Option<String>,
    /// Family name, when given.
    pub last_name: Option<String>,
    /// Orgs the user belongs to: the one it was created in (`X-Org`, or the `org` of
    /// [`Sandbox::add_user`]) and those of its `roles`.
    pub orgs: BTreeSet<String>,
    /// Roles granted at creation, as org id → role names. Building-user roles are not here:
    /// the API's `roles` adds them from the integrations' members.
    pub roles: BTreeMap<String, Vec<String>>,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
}

/// Why a user cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Another user has this email (compared case-insensitively).
    #[error("a user with email {0:?} already exists")]
    DuplicateEmail(String),
    /// Another user has this id.
    #[error("a user with id {0:?} already exists")]
    DuplicateId(String),
    /// A field is empty or malformed.
    #[error("{0}")]
    Invalid(&'static str),
}

impl Sandbox {
    /// Creates a user in `org` without HTTP, as `POST /api/v1/users` with `X-Org: org` would.
    ///
    /// # Errors
    /// [`UserError::DuplicateEmail`] or [`UserError::DuplicateId`] when the email or id is
    /// taken, [`UserError::Invalid`] for a blank name, a blank email or one without `@`.
    pub fn add_user(&self, org: &str, user: NewUser) -> Result<User, UserError> {
        insert_user(&mut self.lock(), org, user)
    }

    /// Deletes user `user_id` as `DELETE /api/v1/users/{id}` would: the user and their building
    /// memberships are gone, and adding them to a building answers `404 User not found`.
    /// Their email is free again. Returns whether the user existed.
    pub fn delete_user(&self, user_id: &str) -> bool {
        let mut state = self.lock();
        let existed = state.users.remove(user_id).is_some();
        for integration in state.integrations.values_mut() {
            integration.members.remove(user_id);
        }
        state.deleted_users.insert(user_id.to_owned());
        existed
    }

    /// Every user, ordered by id (creation order for generated ULIDs).
    #[must_use]
    pub fn users(&self) -> Vec<User> {
        self.lock().users.values().cloned().collect()
    }
}

/// Validates and stores a new user; the one place both the API and [`Sandbox::add_user`]
/// create users.
pub(crate) fn insert_user(state: &mut State, org: &str, user: NewUser) -> Result<User, UserError> {
    let NewUser {
        id,
        name,
        email,
        first_name,
        last_name,
        roles,
    } = user;
    if name.values().all(|text| text.trim().is_empty()) {
        return Err(UserError::Invalid("name must have a non-blank entry"));
    }
    let email = email.trim().to_owned();
    if email.is_empty() {
        return Err(UserError::Invalid("email must not be blank"));
    }
    if !email.contains('@') {
        return Err(UserError::Invalid("email must contain @"));
    }
    let lower = email.to_lowercase();
    if state
        .users
        .values()
        .any(|known| known.email.to_lowercase() == lower)
    {
        return Err(UserError::DuplicateEmail(email));
    }
    let id = match id {
        Some(id) if id.trim().is_empty() => return Err(UserError::Invalid("id must not be blank")),
        Some(id) if state.users.contains_key(&id) => return Err(UserError::DuplicateId(id)),
        Some(id) => id,
        // The generator fails only when 2^80 ids were made in one millisecond.
        None => state
            .user_ids
            .generate()
            .unwrap_or_else(|_| Ulid::new())
            .to_string(),
    };
    let mut orgs: BTreeSet<String> = roles.keys().cloned().collect();
    orgs.insert(org.to_owned());
    let created_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let user = User {
        id: id.clone(),
        name,
        email,
        first_name,
        last_name,
        orgs,
        roles,
        created_at,
    };
    state.users.insert(id, user.clone());
    Ok(user)
}

impl User {
    /// True when `needle` (already lower-case) is a substring of the email or of a display
    /// name, the way OpenApp's `ILIKE '%q%'` search matches.
    pub(crate) fn matches(&self, needle: &str) -> bool {
        self.email.to_lowercase().contains(needle)
            || self
                .name
                .values()
                .any(|text| text.to_lowercase().contains(needle))
    }
}
