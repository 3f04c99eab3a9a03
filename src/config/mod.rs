//! Configuration: one TOML file, overridable key by key from the environment.
//!
//! Load order (later wins): built-in defaults → the TOML file → `LEASE_SYNC__SECTION__KEY`
//! environment variables. Secrets may also come from files (`api_key_file`, `secrets_file`,
//! `tokens_file`). Every key is documented, with its default, in
//! `deploy/config.example.toml`, which a test checks against the defaults value by value.
//!
//! Each section has its own module: its struct, whose `Default` holds the section's
//! defaults (the one place they are written), and its `validate`. Values are typed where the
//! type says what is valid — socket addresses, URLs, `NonZero*` counts, [`Duration`]s
//! written in the unit their key names (`read_timeout_ms = 5000`) — so a bad value is refused
//! while loading, under its key's name. What depends on the role or on other sections is
//! checked by [`Settings::validate`].
//!
//! Unknown keys are errors that name the key: a typo must never fall back silently to a
//! default.
//!
//! Why not figment (once a dependency, now dropped): operators address list entries from
//! the environment (`LEASE_SYNC__SOURCES__0__SECRETS`) to patch one `[[sources]]` entry of
//! the file. figment merges lists whole — a later layer's list replaces (`merge`) or extends
//! (`admerge`) the earlier one, never entry by entry — so an environment provider could only
//! do it by reading the file itself, which is what `env.rs` does on the parsed document
//! anyway. Defaults need no layer either: they are the sections' `Default`s, filled in by
//! serde. And errors keyed `sources[0].tolerance_secs` come from `serde_path_to_error`,
//! where figment's would carry its own path format.
//!
//! [`Duration`]: std::time::Duration

mod admin;
mod admin_tokens;
mod audit;
mod buildium;
mod connections;
mod dead_letters;
mod env;
mod http;
mod identity;
mod log;
mod openapp;
mod reconcile;
mod redis;
mod retry;
mod sources;
mod units;
mod worker;

#[cfg(test)]
mod example;
#[cfg(test)]
mod testing;

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;

pub use self::admin::{AdminSettings, MIN_ADMIN_TOKEN_LEN};
pub use self::admin_tokens::{
    AdminToken, EXPIRY_WARNING, InvalidToken, SHA256_PREFIX, TokenDigest, TokenScope, hash_token,
};
pub use self::audit::AuditSettings;
pub use self::buildium::BuildiumSettings;
pub use self::connections::{
    ADMIN_CONNECTIONS, CONNECTION_SPARE, ConnectionCaps, MIN_CONNECTIONS, RESERVED_FDS,
};
pub use self::dead_letters::DeadLetterSettings;
pub use self::env::ENV_PREFIX;
pub use self::http::{HttpSettings, MIN_HEADER_LIMIT_BYTES, local_address};
pub use self::identity::IdentitySettings;
pub use self::log::{LogFormat, LogSettings};
pub use self::openapp::{AuthScheme, OpenAppSettings};
pub use self::reconcile::{ReconcileSettings, redacted_location};
pub use self::redis::{RedisMode, RedisSettings, RedisUrl};
pub use self::retry::{MAX_ATTEMPTS, RetrySettings};
pub use self::sources::{
    DEFAULT_ROLE_TEMPLATE, PropertySettings, SchemeKind, SignatureEncoding, SourceKind,
    SourceSecret, SourceSettings,
};
pub use self::worker::WorkerSettings;

/// Why a configuration could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file that was read.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment override could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key is unknown, missing or has the wrong type or value.
    #[error("invalid configuration at `{key}`: {message}")]
    Invalid {
        /// Dotted path of the offending key (`sources[0].tolerance_secs`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A secret value (webhook secret, API key). Its `Debug` and `Serialize` never show it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value as a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret's value. Call only where the value is used, never to log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

/// The whole configuration of one lease-sync process. Its `Default` is every section's
/// default and no source.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[http]`: webhook listener.
    pub http: HttpSettings,
    /// `[redis]`: Redis, where events are queued.
    pub redis: RedisSettings,
    /// `[openapp]`: the OpenApp API the workers call.
    pub openapp: OpenAppSettings,
    /// `[worker]`: workers that deliver queued jobs to OpenApp.
    pub worker: WorkerSettings,
    /// `[retry]`: how often a failing OpenApp call is tried.
    pub retry: RetrySettings,
    /// `[dead_letters]`: where given-up deliveries are kept.
    pub dead_letters: DeadLetterSettings,
    /// `[audit]`: how much of each resident's history is kept.
    pub audit: AuditSettings,
    /// `[admin]`: the operators' admin API.
    pub admin: AdminSettings,
    /// `[log]`: log output.
    pub log: LogSettings,
    /// `[reconcile]`: scheduled reconciliation against a file of active leases.
    pub reconcile: ReconcileSettings,
    /// `[identity]`: how people known by email become OpenApp users.
    pub identity: IdentitySettings,
    /// `[[sources]]`: property-management systems allowed to post webhooks.
    pub sources: Vec<SourceSettings>,
}

/// Which parts of lease-sync a process runs; validation depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Webhook ingest and workers.
    Serve,
    /// Webhook ingest only.
    Ingest,
    /// Workers only.
    Work,
    /// Operator commands (dead letters, queue stats): Redis only.
    Operate,
}

impl Role {
    /// Whether this role runs the webhook listener.
    pub fn runs_ingest(self) -> bool {
        matches!(self, Role::Serve | Role::Ingest)
    }

    /// Whether this role runs workers.
    pub fn runs_workers(self) -> bool {
        matches!(self, Role::Serve | Role::Work)
    }

    /// Whether this role is a long-running service (and so may serve the admin API).
    pub fn is_service(self) -> bool {
        !matches!(self, Role::Operate)
    }
}

impl Settings {
    /// Loads `path`, applies environment overrides from `env`, reads secret files and
    /// validates the result for `role`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        role: Role,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut settings = Self::from_toml_str(&text, env).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        settings.read_secret_files(path.parent().unwrap_or(Path::new(".")))?;
        settings.validate(role)?;
        Ok(settings)
    }

    /// Parses a TOML document with environment overrides; no files are read and nothing is
    /// validated beyond key names and what the types require.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        env::apply_overrides(&mut doc, env)?;
        serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::invalid(
                if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                // The key leads the message already; toml's own trailer (`in http`) would
                // repeat it, without list indices.
                e.into_inner().message(),
            )
        })
    }

    /// Replaces `*_file` keys by the secrets they hold. Relative paths are resolved against
    /// the config file's directory.
    fn read_secret_files(&mut self, base: &Path) -> Result<(), ConfigError> {
        if let Some(file) = self.openapp.api_key_file.clone() {
            if self.openapp.api_key.is_some() {
                return Err(ConfigError::invalid(
                    "openapp.api_key_file",
                    "set either api_key or api_key_file, not both",
                ));
            }
            let text = read_secret_file(&base.join(&file), "openapp.api_key_file")?;
            let key = text.trim();
            if key.is_empty() {
                return Err(ConfigError::invalid(
                    "openapp.api_key_file",
                    format!("{} is empty", file.display()),
                ));
            }
            self.openapp.api_key = Some(Secret::new(key));
        }
        if let Some(file) = self.admin.tokens_file.clone() {
            let text = read_secret_file(&base.join(&file), "admin.tokens_file")?;
            self.admin.tokens.extend(admin_tokens::token_lines(&text));
        }
        for (i, source) in self.sources.iter_mut().enumerate() {
            if let Some(buildium) = source.buildium.as_mut()
                && let Some(file) = buildium.client_secret_file.clone()
            {
                let key = format!("sources[{i}].buildium.client_secret_file");
                if buildium.client_secret.is_some() {
                    return Err(ConfigError::invalid(
                        key,
                        "set either client_secret or client_secret_file, not both",
                    ));
                }
                let text = read_secret_file(&base.join(&file), &key)?;
                buildium.client_secret = Some(Secret::new(text.trim()));
            }
            if let Some(file) = source.secrets_file.clone() {
                let key = format!("sources[{i}].secrets_file");
                let text = read_secret_file(&base.join(&file), &key)?;
                source
                    .secrets
                    .extend(secret_lines(&text).map(|secret| SourceSecret {
                        secret,
                        not_after: None,
                    }));
            }
        }
        Ok(())
    }

    /// Checks everything a process in `role` relies on, now; the first problem is returned.
    /// See [`Settings::validate_at`].
    pub fn validate(&self, role: Role) -> Result<(), ConfigError> {
        self.validate_at(role, OffsetDateTime::now_utc())
    }

    /// Checks everything a process in `role` relies on at `now` (which judges webhook
    /// secrets' `not_after`): each section the role uses, through its own `validate`, and
    /// what spans sections. The first problem is returned.
    pub fn validate_at(&self, role: Role, now: OffsetDateTime) -> Result<(), ConfigError> {
        if role.runs_ingest() {
            self.http.validate()?;
            if self.sources.is_empty() {
                return Err(ConfigError::invalid(
                    "sources",
                    "at least one [[sources]] entry is needed to accept webhooks",
                ));
            }
        }
        self.redis.validate()?;
        if role.runs_workers() {
            self.openapp.validate()?;
            self.retry.validate()?;
            self.worker.validate(&self.openapp)?;
        }
        if self.admin.enabled && role.is_service() {
            self.admin
                .validate(role.runs_ingest().then_some(self.http.listen))?;
        }
        sources::validate_all(&self.sources, role, &self.http, now)?;
        if role.is_service() {
            self.reconcile.validate(&self.sources)?;
        }
        Ok(())
    }

    /// Problems that do not stop lease-sync from starting but need an operator soon: secrets
    /// and admin tokens expired or expiring within [`EXPIRY_WARNING`], plain-text admin
    /// tokens, a public admin bind, plain-http OpenApp. Printed by `check-config` and logged
    /// at startup; never contains a secret.
    pub fn warnings(&self, now: OffsetDateTime) -> Vec<String> {
        let mut out: Vec<String> = self
            .sources
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.secret_warnings(i, now))
            .collect();
        out.extend(self.admin.warnings(now));
        out.extend(self.admin.listen_warning());
        if self.openapp.is_insecure() {
            out.push(
                "openapp.allow_insecure_http is on: the OpenApp API key is sent without TLS; use it only with a local sandbox"
                    .into(),
            );
        }
        out
    }

    /// The source named `name`, if configured.
    pub fn source(&self, name: &str) -> Option<&SourceSettings> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        // Serialising plain data structs to TOML cannot fail; the fallback keeps this total.
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// One secret per line; blank lines and `#` comments are skipped.
fn secret_lines(text: &str) -> impl Iterator<Item = Secret> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Secret::new)
}

fn read_secret_file(path: &Path, key: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing::{MINIMAL, env};
    use super::*;

    #[test]
    fn defaults_fill_missing_sections() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert_eq!(s.http.body_limit_bytes.get(), 65_536);
        assert_eq!(s.http.dedupe_ttl, Duration::from_secs(259_200));
        assert_eq!(s.sources[0].tolerance, Duration::from_secs(300));
        assert_eq!(
            s.sources[0].properties[0].effective_role(),
            "virtual_access:integration:int1:resident"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Settings::from_toml_str("[http]\nlisen = \"x\"\n", env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("lisen"), "{msg}");
        assert!(msg.contains("http"), "{msg}");
    }

    #[test]
    fn unknown_key_in_array_entry_is_named() {
        let text = format!("{MINIMAL}\n[[sources]]\nname = \"b\"\ntolerence_secs = 1\n");
        let msg = Settings::from_toml_str(&text, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("sources[1]") && msg.contains("tolerence_secs"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_are_named_by_their_key() {
        for (vars, key) in [
            (
                ("LEASE_SYNC__HTTP__READ_TIMEOUT_MS", "\"5s\""),
                "`http.read_timeout_ms`",
            ),
            (
                ("LEASE_SYNC__SOURCES__0__TOLERANCE_SECS", "-1"),
                "`sources[0].tolerance_secs`",
            ),
            (
                ("LEASE_SYNC__DEAD_LETTERS__MAX_AGE_DAYS", "\"a month\""),
                "`dead_letters.max_age_days`",
            ),
            (("LEASE_SYNC__ADMIN__LISTEN", "127.0.0.1"), "`admin.listen`"),
        ] {
            let msg = Settings::from_toml_str(MINIMAL, env(&[vars]))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn redacted_output_hides_secrets_and_redis_password() {
        let text = format!("{MINIMAL}\n[redis]\nurl = \"redis://:hunter2@127.0.0.1:6379/0\"\n");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        let out = s.to_redacted_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!out.contains("C2FVsBQI"), "{out}");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(out.contains("[redacted]"));
    }

    #[test]
    fn redacted_output_round_trips_to_the_same_settings() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        let out = s.to_redacted_toml();
        assert!(out.contains("read_timeout_ms = 5000"), "{out}");
        assert!(out.contains("max_age_days = 30"), "{out}");
        let again = Settings::from_toml_str(&out, env(&[])).unwrap();
        assert_eq!(again.to_redacted_toml(), out);
    }

    #[test]
    fn worker_needs_api_key_but_ingest_does_not() {
        let text = MINIMAL.replace("api_key = \"k\"", "");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        assert!(
            s.validate(Role::Work)
                .unwrap_err()
                .to_string()
                .contains("openapp.api_key")
        );
        s.validate(Role::Ingest).unwrap();
    }

    #[test]
    fn secret_files_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "file-key\n").unwrap();
        std::fs::write(
            dir.path().join("hooks"),
            "# comment\nwhsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n\n",
        )
        .unwrap();
        let text = MINIMAL
            .replace("api_key = \"k\"", "api_key_file = \"key\"")
            .replace(
                "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
                "secrets_file = \"hooks\"",
            );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let s = Settings::load(&path, env(&[]), Role::Serve).unwrap();
        assert_eq!(s.openapp.api_key.unwrap().expose(), "file-key");
        assert_eq!(s.sources[0].secrets.len(), 1);
    }
}
