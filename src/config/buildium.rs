//! `[sources.buildium]`: how a `kind = "buildium"` source reads Buildium's API, and whom its
//! leases give access to.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::openapp::deserialize_url;
use super::units::PositiveMillis;
use super::{ConfigError, Secret};

/// `[sources.buildium]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildiumSettings {
    /// `base_url`: the API's root, `https://api.buildium.com` (the sandbox is
    /// `https://apisandbox.buildium.com`).
    #[serde(deserialize_with = "deserialize_url")]
    pub base_url: Url,
    /// `client_id`: the API key's client id (`x-buildium-client-id`).
    pub client_id: String,
    /// `client_secret`: its secret (`x-buildium-client-secret`). Prefer `client_secret_file`
    /// or `LEASE_SYNC__SOURCES__<n>__BUILDIUM__CLIENT_SECRET`.
    pub client_secret: Option<Secret>,
    /// `client_secret_file`: file holding the client secret, relative to the configuration
    /// file. Read while loading, into `client_secret`.
    pub client_secret_file: Option<PathBuf>,
    /// `allow_insecure_http`: allows an `http://` base URL, for a local emulator only.
    pub allow_insecure_http: bool,
    /// `timeout_ms`: limit on one whole API call.
    #[serde(rename = "timeout_ms", with = "PositiveMillis")]
    pub timeout: Duration,
    /// `rate_limit_per_sec`: API requests per second, shared by every worker process
    /// (Buildium allows 10 per account).
    pub rate_limit_per_sec: u32,
    /// `tenant_statuses`: a tenant's statuses on a lease that give access.
    pub tenant_statuses: Vec<String>,
    /// `lease_statuses`: lease statuses that give their tenants access.
    pub lease_statuses: Vec<String>,
}

impl Default for BuildiumSettings {
    fn default() -> Self {
        Self {
            base_url: Url::parse("https://api.buildium.com")
                .unwrap_or_else(|e| unreachable!("the default Buildium URL parses: {e}")),
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            allow_insecure_http: false,
            timeout: Duration::from_millis(10_000),
            rate_limit_per_sec: 10,
            tenant_statuses: vec!["Current".into(), "Future".into()],
            lease_statuses: vec!["Active".into(), "Future".into()],
        }
    }
}

/// The tenant statuses Buildium documents.
const TENANT_STATUSES: [&str; 3] = ["Current", "Future", "MovedOut"];
/// The lease statuses Buildium documents.
const LEASE_STATUSES: [&str; 3] = ["Active", "Future", "Past"];

impl BuildiumSettings {
    /// Checks what workers need to read Buildium (source `index`): an https URL (or http with
    /// the switch), credentials, a rate, and statuses Buildium has.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let at = |field: &str| format!("sources[{index}].buildium.{field}");
        match self.base_url.scheme() {
            "https" => {}
            "http" if self.allow_insecure_http => {}
            _ => {
                return Err(ConfigError::invalid(
                    at("base_url"),
                    "must be https; for a local emulator set allow_insecure_http = true",
                ));
            }
        }
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::invalid(at("client_id"), "is required"));
        }
        if self
            .client_secret
            .as_ref()
            .is_none_or(|s| s.expose().trim().is_empty())
        {
            return Err(ConfigError::invalid(
                at("client_secret"),
                "is required (client_secret, client_secret_file or the environment)",
            ));
        }
        if self.rate_limit_per_sec == 0 {
            return Err(ConfigError::invalid(
                at("rate_limit_per_sec"),
                "must be greater than 0",
            ));
        }
        for (key, values, known) in [
            ("tenant_statuses", &self.tenant_statuses, &TENANT_STATUSES),
            ("lease_statuses", &self.lease_statuses, &LEASE_STATUSES),
        ] {
            if let Some(unknown) = values.iter().find(|v| !known.contains(&v.as_str())) {
                return Err(ConfigError::invalid(
                    at(key),
                    format!("`{unknown}` is not one of {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{MINIMAL, env, error_of};
    use super::super::{Role, Settings, SourceKind};

    /// The issue's example source, with an emulator's URL.
    const BUILDIUM: &str = r#"
        [admin]
        tokens = ["0123456789abcdef0123"]
        [openapp]
        api_key = "k"
        [identity]
        create_missing = true
        [[sources]]
        name = "buildium"
        kind = "buildium"
        secrets = ["buildium-signing-key"]
        tolerance_secs = 300
        grant_lead = "1h"
        revoke_grace = "0s"
        [sources.buildium]
        base_url = "http://127.0.0.1:8091"
        allow_insecure_http = true
        client_id = "id"
        client_secret = "cs"
        [[sources.properties]]
        id = "23"
        org_id = "org1"
        integration_id = "int1"
        timezone = "America/New_York"
        revoke_grace = "2h"
    "#;

    #[test]
    fn the_documented_buildium_source_loads() {
        let s = Settings::from_toml_str(BUILDIUM, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        let source = &s.sources[0];
        assert_eq!(source.kind, SourceKind::Buildium);
        assert_eq!(source.grant_lead, Duration::from_secs(3600));
        let property = &source.properties[0];
        assert_eq!(property.timezone, "America/New_York");
        assert_eq!(property.revoke_grace, Some(Duration::from_secs(7200)));
        assert_eq!(property.grant_lead, None, "falls back to the source's");
        assert!(s.identity.create_missing);
        let buildium = source.buildium.as_ref().unwrap();
        assert_eq!(
            buildium.rate_limit_per_sec, 10,
            "Buildium's documented rate"
        );
        assert_eq!(buildium.tenant_statuses, ["Current", "Future"]);
        assert_eq!(buildium.lease_statuses, ["Active", "Future"]);
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("\"cs\""), "{shown}");
    }

    #[test]
    fn buildium_mistakes_are_refused_by_key() {
        for (from, to, key) in [
            ("kind = \"buildium\"", "kind = \"yardi\"", "kind"),
            (
                "allow_insecure_http = true",
                "allow_insecure_http = false",
                "sources[0].buildium.base_url",
            ),
            (
                "client_id = \"id\"",
                "client_id = \"\"",
                "sources[0].buildium.client_id",
            ),
            (
                "client_secret = \"cs\"",
                "",
                "sources[0].buildium.client_secret",
            ),
            (
                "client_id = \"id\"",
                "client_id = \"id\"\nlease_statuses = [\"Active\", \"Expired\"]",
                "sources[0].buildium.lease_statuses",
            ),
            (
                "client_id = \"id\"",
                "client_id = \"id\"\nrate_limit_per_sec = 0",
                "sources[0].buildium.rate_limit_per_sec",
            ),
            (
                "timezone = \"America/New_York\"",
                "timezone = \"Mars/Olympus\"",
                "timezone",
            ),
            ("grant_lead = \"1h\"", "grant_lead = \"soon\"", "grant_lead"),
        ] {
            let text = BUILDIUM.replace(from, to);
            assert_ne!(text, BUILDIUM, "{from}");
            let msg = match Settings::from_toml_str(&text, env(&[])) {
                Ok(s) => s.validate(Role::Serve).unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains(key), "{to}: {msg}");
        }
        // The section without its kind, and the kind without its section.
        let msg = error_of(&MINIMAL.replace(
            "[[sources.properties]]",
            "[sources.buildium]\nclient_id = \"id\"\nclient_secret = \"cs\"\n[[sources.properties]]",
        ));
        assert!(msg.contains("sources[0].buildium"), "{msg}");
        let without = BUILDIUM
            .split("[sources.buildium]")
            .next()
            .unwrap()
            .to_owned()
            + "[[sources.properties]]\nid = \"23\"\norg_id = \"org1\"\nintegration_id = \"int1\"\n";
        let msg = error_of(&without);
        assert!(msg.contains("sources[0].buildium"), "{msg}");
    }

    #[test]
    fn a_buildium_source_is_pulled_without_from() {
        let scheduled = format!("{BUILDIUM}\n[reconcile]\nevery = \"1h\"\nsource = \"buildium\"\n");
        let s = Settings::from_toml_str(&scheduled, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert_eq!(s.reconcile.period(), Some(Duration::from_secs(3600)));
        // A lease-sync source still needs its file.
        let msg = error_of(&format!(
            "{MINIMAL}\n[reconcile]\nevery = \"1h\"\nsource = \"acme\"\n"
        ));
        assert!(msg.contains("reconcile.from"), "{msg}");
    }
}
