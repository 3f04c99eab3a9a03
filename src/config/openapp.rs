//! `[openapp]`: the API the workers call.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use super::units::PositiveMillis;
use super::{ConfigError, Secret};

/// How the OpenApp API key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthScheme {
    /// `bearer`: `Authorization: Bearer <key>`, as the published OpenAPI spec says.
    #[serde(rename = "bearer")]
    Bearer,
    /// `x-api-key`: `X-API-Key: <key>`, as newer OpenApp gateways expect.
    #[serde(rename = "x-api-key")]
    XApiKey,
}

/// `[openapp]`: the API the workers call.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAppSettings {
    /// `base_url`: API root including the version, e.g. `https://api.openapp.house/api/v1`.
    #[serde(deserialize_with = "deserialize_url")]
    pub base_url: Url,
    /// `api_key`: the API key. Prefer `api_key_file` or `LEASE_SYNC__OPENAPP__API_KEY`.
    pub api_key: Option<Secret>,
    /// `api_key_file`: file holding the API key (surrounding whitespace is ignored), relative
    /// to the configuration file. Read while loading, into `api_key`.
    pub api_key_file: Option<PathBuf>,
    /// `auth`: how the key is sent, `bearer` or `x-api-key`.
    pub auth: AuthScheme,
    /// `timeout_ms`: limit on one whole OpenApp call, connect to last byte.
    #[serde(rename = "timeout_ms", with = "PositiveMillis")]
    pub timeout: Duration,
    /// `connect_timeout_ms`: limit on establishing the connection.
    #[serde(rename = "connect_timeout_ms", with = "PositiveMillis")]
    pub connect_timeout: Duration,
    /// `allow_insecure_http`: allows an `http://` base URL. Only for the local sandbox and
    /// loopback tests: the API key would otherwise cross the network in clear text.
    pub allow_insecure_http: bool,
}

impl Default for OpenAppSettings {
    fn default() -> Self {
        Self {
            base_url: Url::parse("https://api.openapp.house/api/v1")
                .unwrap_or_else(|e| unreachable!("the default OpenApp URL parses: {e}")),
            api_key: None,
            api_key_file: None,
            auth: AuthScheme::Bearer,
            timeout: Duration::from_millis(10_000),
            connect_timeout: Duration::from_millis(3_000),
            allow_insecure_http: false,
        }
    }
}

impl OpenAppSettings {
    /// Checks what workers need: an https base URL (or http with the explicit switch) and
    /// an API key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.base_url.scheme() {
            "https" => {}
            "http" if self.allow_insecure_http => {}
            "http" => {
                return Err(ConfigError::invalid(
                    "openapp.base_url",
                    "must be https; for a local sandbox set openapp.allow_insecure_http = true",
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    "openapp.base_url",
                    "scheme must be https",
                ));
            }
        }
        match &self.api_key {
            None => Err(ConfigError::invalid(
                "openapp.api_key",
                "missing: set api_key, api_key_file or LEASE_SYNC__OPENAPP__API_KEY",
            )),
            Some(key) if key.expose().trim().is_empty() => {
                Err(ConfigError::invalid("openapp.api_key", "is empty"))
            }
            Some(_) => Ok(()),
        }
    }

    /// Whether the key would be sent without TLS.
    pub fn is_insecure(&self) -> bool {
        self.allow_insecure_http && self.base_url.scheme() == "http"
    }
}

/// A URL, with the parser's reason (not the value) when it is none.
pub(super) fn deserialize_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Url, D::Error> {
    let text = String::deserialize(deserializer)?;
    Url::parse(&text).map_err(|e| serde::de::Error::custom(format!("not a URL: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, env};
    use super::super::{Role, Settings};

    #[test]
    fn the_base_url_must_be_https_unless_insecure_http_is_allowed() {
        let with = |vars: &[(&str, &str)]| Settings::from_toml_str(MINIMAL, env(vars));
        let msg = with(&[("LEASE_SYNC__OPENAPP__BASE_URL", "api/v1")])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("openapp.base_url") && msg.contains("not a URL"),
            "{msg}"
        );
        let plain = with(&[("LEASE_SYNC__OPENAPP__BASE_URL", "http://127.0.0.1:1/api")]).unwrap();
        let msg = plain.validate(Role::Work).unwrap_err().to_string();
        assert!(msg.contains("allow_insecure_http"), "{msg}");
        plain.validate(Role::Ingest).unwrap();
        with(&[
            ("LEASE_SYNC__OPENAPP__BASE_URL", "http://127.0.0.1:1/api"),
            ("LEASE_SYNC__OPENAPP__ALLOW_INSECURE_HTTP", "true"),
        ])
        .unwrap()
        .validate(Role::Work)
        .unwrap();
        let ftp = with(&[("LEASE_SYNC__OPENAPP__BASE_URL", "ftp://h/api")]).unwrap();
        let msg = ftp.validate(Role::Work).unwrap_err().to_string();
        assert!(msg.contains("openapp.base_url"), "{msg}");
    }
}
