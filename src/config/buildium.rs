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
