//! `[admin]`: the authenticated admin API (dead letters, queue stats) on its own listener.
//! Its tokens are in [`super::admin_tokens`].

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::admin_tokens::{self, AdminToken};
use super::http::deserialize_listen;
use super::units::OptionalCount;

/// Shortest plain admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// `[admin]`: the authenticated admin API (dead letters, queue stats) on its own listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// `enabled`: whether this process serves the admin API. When on, at least one token is
    /// required.
    pub enabled: bool,
    /// `listen`: address of the admin listener; keep it off the public network.
    #[serde(deserialize_with = "deserialize_listen")]
    pub listen: SocketAddr,
    /// `tokens`: bearer tokens that may use the admin API: plain (at least
    /// [`MIN_ADMIN_TOKEN_LEN`] characters) or, better, `sha256:<hex>`, each optionally a table
    /// with a name, a scope and an expiry (see [`AdminToken`]).
    #[serde(deserialize_with = "admin_tokens::deserialize_tokens")]
    pub tokens: Vec<AdminToken>,
    /// `tokens_file`: file with more tokens, one per line (blank lines and `#` comments
    /// ignored), relative to the configuration file. Read while loading, into `tokens`.
    pub tokens_file: Option<PathBuf>,
    /// `max_connections`: connections the admin listener holds at once, a budget of its own
    /// so that a flood of the webhook listener never locks operators and probes out. Unset:
    /// derived from the open-file limit ([`Settings::connection_caps`]). Past it, as for
    /// `http.max_connections`.
    ///
    /// [`Settings::connection_caps`]: super::Settings::connection_caps
    #[serde(with = "OptionalCount")]
    pub max_connections: Option<NonZeroUsize>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            tokens: Vec::new(),
            tokens_file: None,
            max_connections: None,
        }
    }
}

impl AdminSettings {
    /// Checks an admin API this process serves: its tokens, and that it does not share the
    /// webhook listener's address (`webhook`, when this process runs one).
    pub fn validate(&self, webhook: Option<SocketAddr>) -> Result<(), ConfigError> {
        // Port 0 asks the OS for a free port, so two such binds never collide.
        if webhook.is_some_and(|http| http == self.listen && http.port() != 0) {
            return Err(ConfigError::invalid(
                "admin.listen",
                "must differ from http.listen: the admin API never shares the webhook listener",
            ));
        }
        self.validate_tokens()
    }

    /// A warning when the admin API is served on a non-loopback address.
    pub(super) fn listen_warning(&self) -> Option<String> {
        (self.enabled && !self.listen.ip().is_loopback()).then(|| {
            format!(
                "admin.listen = \"{}\" is not a loopback address; make sure only operators can reach it (a private network, a firewall rule or a Kubernetes NetworkPolicy)",
                self.listen
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::super::testing::{MINIMAL, env, error_of};
    use super::super::{Role, Settings};

    #[test]
    fn the_admin_api_needs_a_strong_token_unless_disabled() {
        let text = MINIMAL.replace("tokens = [\"0123456789abcdef0123\"]", "");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        assert!(
            s.validate(Role::Serve)
                .unwrap_err()
                .to_string()
                .contains("admin.tokens")
        );
        let s = Settings::from_toml_str(&text, env(&[("LEASE_SYNC__ADMIN__ENABLED", "false")]))
            .unwrap();
        s.validate(Role::Serve).unwrap();
        let s =
            Settings::from_toml_str(&text, env(&[("LEASE_SYNC__ADMIN__TOKENS", "[\"short\"]")]))
                .unwrap();
        let msg = s.validate(Role::Serve).unwrap_err().to_string();
        assert!(
            msg.contains("admin.tokens[0]") && !msg.contains("short"),
            "{msg}"
        );
    }

    #[test]
    fn the_admin_api_never_shares_the_webhook_listener_and_public_binds_are_warned_about() {
        let text = MINIMAL.replace(
            "[admin]",
            "[http]\n        listen = \"0.0.0.0:8080\"\n        [admin]\n        listen = \"0.0.0.0:8080\"",
        );
        let msg = error_of(&text);
        assert!(msg.contains("admin.listen"), "{msg}");
        let s = Settings::from_toml_str(
            &text.replace(
                "listen = \"0.0.0.0:8080\"\n        [admin]\n        listen = \"0.0.0.0:8080\"",
                "listen = \"0.0.0.0:8080\"\n        [admin]\n        listen = \"0.0.0.0:9090\"",
            ),
            env(&[]),
        )
        .unwrap();
        s.validate(Role::Serve).unwrap();
        let warnings = s.warnings(OffsetDateTime::now_utc());
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("admin.listen") && w.contains("loopback")),
            "{warnings:?}"
        );
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        let warnings = s.warnings(OffsetDateTime::now_utc());
        assert!(
            warnings.iter().all(|w| !w.contains("admin.listen")),
            "{warnings:?}"
        );
        // Port 0 binds two different free ports.
        let s = Settings::from_toml_str(
            MINIMAL,
            env(&[
                ("LEASE_SYNC__HTTP__LISTEN", "127.0.0.1:0"),
                ("LEASE_SYNC__ADMIN__LISTEN", "127.0.0.1:0"),
            ]),
        )
        .unwrap();
        s.validate(Role::Serve).unwrap();
    }

    #[test]
    fn max_connections_must_be_positive_when_set() {
        for key in ["http.max_connections", "admin.max_connections"] {
            let var = format!("LEASE_SYNC__{}", key.to_uppercase().replace('.', "__"));
            let msg = Settings::from_toml_str(MINIMAL, env(&[(&var, "0")]))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{msg}");
        }
    }
}
