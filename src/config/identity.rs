//! `[identity]`: how people known by email become OpenApp users.

use serde::{Deserialize, Serialize};

/// `[identity]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// `create_missing`: create an OpenApp user (`POST /users`, named after the tenant) for an
    /// email no user has, instead of recording a `no_openapp_user` conflict.
    pub create_missing: bool,
}
