//! Configuration: one TOML file, overridable key by key from the environment.
//!
//! Load order (later wins): built-in defaults → the TOML file → `LEASE_SYNC__SECTION__KEY`
//! environment variables. Secrets may also come from files (`api_key_file`, `secrets_file`).
//! Every key is documented, with its default, in `deploy/config.example.toml`.
//!
//! Unknown keys are errors that name the key: a typo must never fall back silently to a
//! default. The environment layer is written here rather than taken from figment because
//! operators need to address array entries (`LEASE_SYNC__SOURCES__0__TOLERANCE_SECS`),
//! which figment's environment provider cannot express.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use time::OffsetDateTime;

use crate::event::is_valid_path_id;
use crate::signature::{self, SourceKeyError, SourceVerifier, hmac_sha256};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LEASE_SYNC__";

/// Default role template; `{integration_id}` is replaced by the property's integration id.
pub const DEFAULT_ROLE_TEMPLATE: &str = "virtual_access:integration:{integration_id}:resident";

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
    /// A key is unknown, missing or has the wrong type.
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

/// The whole configuration of one lease-sync process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Webhook listener.
    #[serde(default)]
    pub http: HttpSettings,
    /// Redis, where events are queued.
    #[serde(default)]
    pub redis: RedisSettings,
    /// The OpenApp API the workers call.
    #[serde(default)]
    pub openapp: OpenAppSettings,
    /// Workers that deliver queued jobs to OpenApp.
    #[serde(default)]
    pub worker: WorkerSettings,
    /// How often a failing OpenApp call is tried.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Where given-up deliveries are kept.
    #[serde(default)]
    pub dead_letters: DeadLetterSettings,
    /// The operators' admin API.
    #[serde(default)]
    pub admin: AdminSettings,
    /// Log output.
    #[serde(default)]
    pub log: LogSettings,
    /// Scheduled reconciliation against a file of active leases.
    #[serde(default)]
    pub reconcile: ReconcileSettings,
    /// Property-management systems allowed to post webhooks.
    #[serde(default)]
    pub sources: Vec<SourceSettings>,
}

/// `[http]`: the webhook listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address the webhook listener binds (`0.0.0.0:8080`).
    pub listen: String,
    /// Largest accepted webhook body; larger ones get 413 `body_too_large`.
    pub body_limit_bytes: usize,
    /// How long a delivered event id is remembered per source, so a re-delivery is answered
    /// 200 `duplicate` instead of queuing a second job. Three days covers the retry horizon of
    /// the senders we know (Stripe-like senders retry for 3 days).
    pub dedupe_ttl_secs: u64,
    /// How long ingest waits for Redis to take an event before answering 503.
    pub enqueue_timeout_ms: u64,
    /// Seconds a 503 `queue_unavailable` or `overloaded` asks the sender to wait
    /// (`Retry-After`).
    pub retry_after_secs: u64,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace_secs: u64,
    /// Largest total size of a request's header block (names and values). Larger heads get
    /// 431 `headers_too_large`.
    pub header_limit_bytes: usize,
    /// How long a client may take to send a request's headers, and then its body. A body
    /// still incomplete after this gets 408 `request_timeout`; a head still incomplete has
    /// its connection closed. Shorter than senders' own timeouts (10 s for GitHub and
    /// Buildium), so a slow sender hears why.
    pub read_timeout_ms: u64,
    /// Webhooks accepted per second from one source, per ingest process, once its burst is
    /// used; more get 429 `rate_limited` with `Retry-After`. `0` turns the limit off. Counted
    /// after signature verification, so forged requests cannot use up a sender's budget.
    pub rate_limit_per_sec: u32,
    /// Webhooks one source may send at once above the steady rate (a bulk import, a burst of
    /// retries after an outage).
    pub rate_limit_burst: u32,
    /// Connections the webhook listener holds at once. Unset: derived from the open-file
    /// limit ([`Settings::connection_caps`]). At the cap, the connection that has been idle
    /// longest (no request in progress) is closed to make room; when none is idle, a new
    /// connection gets 503 `overloaded` with `Retry-After`.
    pub max_connections: Option<usize>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            body_limit_bytes: 65_536,
            dedupe_ttl_secs: 259_200,
            enqueue_timeout_ms: 2_000,
            retry_after_secs: 5,
            shutdown_grace_secs: 30,
            header_limit_bytes: 16_384,
            read_timeout_ms: 5_000,
            rate_limit_per_sec: 200,
            rate_limit_burst: 2_000,
            max_connections: None,
        }
    }
}

/// `[redis]`: the queue's store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Redis URL (`redis://[:password@]host:port[/db]`); a password in it is redacted in output.
    pub url: RedisUrl,
    /// Prefix of every key lease-sync writes, so deployments and tests can share one Redis.
    pub namespace: String,
    /// How long a (re)connect may take.
    pub connect_timeout_ms: u64,
    /// How long one Redis command may take. apalis-redis's own default (500 ms) turns a short
    /// Redis stall into a dead worker pool (apalis-redis#76), hence a longer one.
    pub response_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: RedisUrl("redis://127.0.0.1:6379".into()),
            namespace: "lease-sync".into(),
            connect_timeout_ms: 2_000,
            response_timeout_ms: 5_000,
        }
    }
}

/// A Redis URL whose password never appears in `Debug` or serialized output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The full URL, password included, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) if parsed.password().is_some() => {
                // Only fails for URLs that cannot carry credentials, which this one does.
                let _ = parsed.set_password(Some("[redacted]"));
                parsed.to_string()
            }
            Ok(parsed) => parsed.to_string(),
            Err(_) => "[unparseable]".into(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// How the OpenApp API key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthScheme {
    /// `Authorization: Bearer <key>`, as the published OpenAPI spec says.
    #[serde(rename = "bearer")]
    Bearer,
    /// `X-API-Key: <key>`, as newer OpenApp gateways expect.
    #[serde(rename = "x-api-key")]
    XApiKey,
}

/// `[openapp]`: the API the workers call.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAppSettings {
    /// API root including the version, e.g. `https://api.openapp.house/api/v1`.
    pub base_url: String,
    /// The API key. Prefer `api_key_file` or `LEASE_SYNC__OPENAPP__API_KEY`.
    pub api_key: Option<Secret>,
    /// File holding the API key (surrounding whitespace is ignored).
    pub api_key_file: Option<PathBuf>,
    /// How the key is sent: `bearer` or `x-api-key`.
    pub auth: AuthScheme,
    /// Limit on one whole OpenApp call, connect to last byte.
    pub timeout_ms: u64,
    /// Limit on establishing the connection.
    pub connect_timeout_ms: u64,
    /// Allows an `http://` base URL. Only for the local sandbox and loopback tests: the API
    /// key would otherwise cross the network in clear text.
    pub allow_insecure_http: bool,
}

impl Default for OpenAppSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.openapp.house/api/v1".into(),
            api_key: None,
            api_key_file: None,
            auth: AuthScheme::Bearer,
            timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            allow_insecure_http: false,
        }
    }
}

/// `[worker]`: the processes that deliver jobs to OpenApp.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Jobs one process runs at once.
    pub concurrency: usize,
    /// How often an idle worker looks for new or due jobs. apalis-redis never wakes a worker on
    /// push, so this bounds pick-up latency.
    pub poll_interval_ms: u64,
    /// How often a worker proves it is alive.
    pub heartbeat_secs: u64,
    /// Heartbeats a worker may miss before another worker takes over its in-flight jobs.
    /// `heartbeat_secs × missed_heartbeats` must stay well above `openapp.timeout_ms`.
    pub missed_heartbeats: usize,
    /// Jobs fetched from Redis per round trip.
    pub batch_size: usize,
    /// How long shutdown waits for in-flight jobs; unfinished ones are taken over by
    /// another worker after the heartbeat window.
    pub shutdown_timeout_secs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            poll_interval_ms: 250,
            heartbeat_secs: 10,
            missed_heartbeats: 3,
            batch_size: 50,
            shutdown_timeout_secs: 30,
        }
    }
}

impl WorkerSettings {
    /// Time after which a silent worker's jobs are taken over.
    pub fn orphan_window(&self) -> Duration {
        Duration::from_secs(
            self.heartbeat_secs
                .saturating_mul(self.missed_heartbeats as u64),
        )
    }
}

/// `[retry]`: how failing OpenApp calls are retried.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// First backoff window: the n-th retry waits a random time in
    /// `[0, min(max_delay, base·2^(n−1))]`, and never less than a server's `Retry-After`.
    pub base_ms: u64,
    /// Longest wait between two attempts.
    pub max_delay_secs: u64,
    /// Calls made for one delivery, crashed ones included, before it becomes a dead letter.
    pub max_attempts: usize,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            base_ms: 2_000,
            max_delay_secs: 1_800,
            max_attempts: 20,
        }
    }
}

/// `[dead_letters]`: the store of deliveries that were given up.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSettings {
    /// Most entries kept; the oldest are trimmed (logged and counted) beyond it.
    pub max_entries: u64,
    /// Entries older than this are trimmed.
    pub max_age_days: u64,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_age_days: 30,
        }
    }
}

mod admin_tokens;

pub use self::admin_tokens::{
    AdminToken, EXPIRY_WARNING, InvalidToken, SHA256_PREFIX, TokenDigest, TokenScope, hash_token,
};

/// `[admin]`: the authenticated admin API (dead letters, queue stats) on its own listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Whether this process serves the admin API. When on, at least one token is required.
    pub enabled: bool,
    /// Address of the admin listener; keep it off the public network.
    pub listen: String,
    /// Bearer tokens that may use the admin API: plain (at least 16 characters) or, better,
    /// `sha256:<hex>`, each optionally a table with a name, a scope and an expiry (see
    /// [`AdminToken`]).
    #[serde(deserialize_with = "admin_tokens::deserialize_tokens")]
    pub tokens: Vec<AdminToken>,
    /// File with more tokens, one per line (blank lines and `#` comments ignored).
    pub tokens_file: Option<PathBuf>,
    /// Connections the admin listener holds at once, a budget of its own so that a flood of
    /// the webhook listener never locks operators and probes out. Unset: derived from the
    /// open-file limit ([`Settings::connection_caps`]). Past it, as for `http.max_connections`.
    pub max_connections: Option<usize>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9090".into(),
            tokens: Vec::new(),
            tokens_file: None,
            max_connections: None,
        }
    }
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`: log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// `[reconcile]`: scheduled reconciliation of OpenApp against a file of the active leases of
/// one source (see `lease-sync reconcile`). Disabled unless `every` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// How often to reconcile, in humantime (`24h`, `30m`); absent or empty disables it.
    pub every: Option<String>,
    /// The file of active leases: a local path (relative to the working directory) or an
    /// http(s) URL, CSV or JSON. Shown with any URL credentials and query redacted.
    #[serde(serialize_with = "serialize_location")]
    pub from: Option<String>,
    /// The `[[sources]]` entry whose truth the file is.
    pub source: Option<String>,
    /// Whether to enqueue the changes (`true`) or only log the plan (`false`).
    pub apply: bool,
    /// Whether to also remove building users lease-sync never added and has no state for.
    pub prune_unmanaged: bool,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            every: None,
            from: None,
            source: None,
            apply: true,
            prune_unmanaged: false,
        }
    }
}

impl ReconcileSettings {
    /// The period, when scheduled reconciliation is enabled and `every` is valid.
    pub fn period(&self) -> Option<Duration> {
        let every = self
            .every
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())?;
        humantime::parse_duration(every)
            .ok()
            .filter(|d| !d.is_zero())
    }

    /// Whether `every` is set (validation makes sure it is then also valid).
    pub fn enabled(&self) -> bool {
        self.every.as_deref().is_some_and(|e| !e.trim().is_empty())
    }
}

/// `location` without URL credentials or query (which often carry tokens), for output.
pub fn redacted_location(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(mut parsed) if !parsed.cannot_be_a_base() => {
            // Only fails for URLs that cannot carry credentials, which then carry none.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            if parsed.query().is_some() {
                parsed.set_query(Some("[redacted]"));
            }
            parsed.set_fragment(None);
            parsed.to_string()
        }
        _ => location.to_owned(),
    }
}

fn serialize_location<S: Serializer>(
    value: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(location) => serializer.serialize_some(&redacted_location(location)),
        None => serializer.serialize_none(),
    }
}

/// Signature scheme a source signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SchemeKind {
    /// Standard Webhooks 1.0 (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
    /// HMAC-SHA256 with a configurable header, prefix, encoding and signed content (GitHub,
    /// Buildium and similar senders).
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

/// How an `hmac-sha256` signature is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Hex digits (GitHub).
    Hex,
    /// Standard base64 (Buildium).
    Base64,
}

/// One webhook secret of a source: a plain string, or a table with the end of its validity
/// (`{ secret = "…", not_after = "2026-12-31T00:00:00Z" }`) for rotation without downtime.
#[derive(Clone, Serialize)]
pub struct SourceSecret {
    /// The secret.
    pub secret: Secret,
    /// After this instant the secret no longer verifies (RFC 3339).
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_after: Option<OffsetDateTime>,
}

impl fmt::Debug for SourceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSecret")
            .field("secret", &self.secret)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl SourceSecret {
    /// A secret without an end of validity.
    pub fn plain(value: impl Into<String>) -> Self {
        Self {
            secret: Secret::new(value),
            not_after: None,
        }
    }
}

impl<'de> Deserialize<'de> for SourceSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            secret: Secret,
            #[serde(default, with = "time::serde::rfc3339::option")]
            not_after: Option<OffsetDateTime>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SourceSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a secret string or a table { secret = \"…\", not_after = \"<RFC 3339>\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SourceSecret::plain(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SourceSecret {
                    secret: table.secret,
                    not_after: table.not_after,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[[sources]]`: one property-management system.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// Name in the webhook URL: `POST /webhooks/{name}`.
    pub name: String,
    /// Signature scheme.
    #[serde(default = "default_scheme")]
    pub scheme: SchemeKind,
    /// Secrets that may sign; any active one verifies (rotation). Each is a string or
    /// `{ secret = "…", not_after = "<RFC 3339>" }`.
    #[serde(default)]
    pub secrets: Vec<SourceSecret>,
    /// File with more secrets, one per line (blank lines and `#` comments ignored).
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// Largest accepted difference, either way, between the signed timestamp and now.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
    /// Largest amount by which an event's `occurred_at` may be ahead of this server's clock;
    /// later ones are refused (422 `invalid_event`), since an event's time is its version.
    #[serde(default = "default_max_clock_skew_secs")]
    pub max_clock_skew_secs: u64,
    /// `hmac-sha256`: header holding the signature (`x-hub-signature-256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// `hmac-sha256`: text before the signature (`sha256=` for GitHub); default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_prefix: Option<String>,
    /// `hmac-sha256`: `hex` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// `hmac-sha256`: header holding the signed Unix timestamp (seconds, or milliseconds);
    /// when set, `tolerance_secs` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// `hmac-sha256`: what is signed, `{body}` (default) or e.g. `{timestamp}.{body}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_content: Option<String>,
    /// `hmac-sha256`: where the dedupe id comes from: `header:<name>`, `body:<field>` or
    /// `body-sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Overrides `http.rate_limit_per_sec` for this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<u32>,
    /// Overrides `http.rate_limit_burst` for this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
    /// Buildings this source may send events for.
    #[serde(default)]
    pub properties: Vec<PropertySettings>,
}

impl SourceSettings {
    /// A Standard Webhooks source named `name` with default settings and nothing else: no
    /// secrets, no properties.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            scheme: SchemeKind::StandardWebhooks,
            secrets: Vec::new(),
            secrets_file: None,
            tolerance_secs: default_tolerance_secs(),
            max_clock_skew_secs: default_max_clock_skew_secs(),
            signature_header: None,
            signature_prefix: None,
            encoding: None,
            timestamp_header: None,
            signed_content: None,
            event_id: None,
            rate_limit_per_sec: None,
            rate_limit_burst: None,
            properties: Vec::new(),
        }
    }

    /// The source's verifier at `now`, built by [`signature::source_verifier`], with errors
    /// keyed `sources[index].…`.
    pub fn verifier(
        &self,
        index: usize,
        now: OffsetDateTime,
    ) -> Result<SourceVerifier, ConfigError> {
        signature::source_verifier(self, now).map_err(|e| in_source(index, e))
    }

    /// The wire format of an `hmac-sha256` source, built by [`signature::hmac_format`], with
    /// errors keyed `sources[index].…`.
    pub fn hmac_format(&self, index: usize) -> Result<hmac_sha256::Format, ConfigError> {
        signature::hmac_format(self).map_err(|e| in_source(index, e))
    }

    /// Warnings about this source's secrets at `now`: expired ones, and ones expiring within
    /// [`EXPIRY_WARNING`]. Never contains a secret.
    pub fn secret_warnings(&self, index: usize, now: OffsetDateTime) -> Vec<String> {
        self.secrets
            .iter()
            .enumerate()
            .filter_map(|(j, entry)| {
                let end = entry.not_after?;
                let key = format!("sources[{index}].secrets[{j}] (source `{}`)", self.name);
                if end < now {
                    Some(format!(
                        "{key} expired at {}; it no longer verifies, remove it",
                        rfc3339(end)
                    ))
                } else if end - now <= EXPIRY_WARNING {
                    Some(format!(
                        "{key} expires at {} (in {}); make sure its replacement is configured",
                        rfc3339(end),
                        approximately(end - now)
                    ))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Places a key of source `index` in the whole configuration.
fn in_source(index: usize, error: SourceKeyError) -> ConfigError {
    ConfigError::invalid(format!("sources[{index}].{}", error.key), error.message)
}

/// `3 d 4 h`, `5 h 12 min`: precise enough for an expiry warning.
fn approximately(left: time::Duration) -> String {
    let minutes = left.whole_minutes().max(0);
    let (days, hours, minutes) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else {
        format!("{hours} h {minutes} min")
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

fn default_scheme() -> SchemeKind {
    SchemeKind::StandardWebhooks
}

fn default_tolerance_secs() -> u64 {
    300
}

fn default_max_clock_skew_secs() -> u64 {
    300
}

/// `[[sources.properties]]`: one building and where it lives in OpenApp.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PropertySettings {
    /// The property-management system's building id (`lease.property_id` in events).
    pub id: String,
    /// OpenApp organisation id, sent as `X-Org`.
    pub org_id: String,
    /// OpenApp integration id, the `{id}` of `/integrations/{id}/building-users`.
    pub integration_id: String,
    /// Role granted to residents; `{integration_id}` is substituted.
    #[serde(default)]
    pub role: Option<String>,
}

impl PropertySettings {
    /// The role to grant, with the template filled in.
    pub fn effective_role(&self) -> String {
        self.role
            .as_deref()
            .unwrap_or(DEFAULT_ROLE_TEMPLATE)
            .replace("{integration_id}", &self.integration_id)
    }
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
    /// validated beyond types and key names.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Sorted so that `SOURCES__0__…` is applied before `SOURCES__1__…` and appends work.
        overrides.sort();
        for (var, value) in overrides {
            apply_env_override(&mut doc, &var, &value)?;
        }
        let deserializer = toml::Value::Table(doc);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::invalid(
                if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                e.into_inner().to_string(),
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
    /// secrets' `not_after`); the first problem is returned.
    pub fn validate_at(&self, role: Role, now: OffsetDateTime) -> Result<(), ConfigError> {
        if role.runs_ingest() {
            self.http.listen.parse::<SocketAddr>().map_err(|e| {
                ConfigError::invalid("http.listen", format!("not a socket address: {e}"))
            })?;
            positive("http.body_limit_bytes", self.http.body_limit_bytes as u64)?;
            positive("http.dedupe_ttl_secs", self.http.dedupe_ttl_secs)?;
            positive("http.enqueue_timeout_ms", self.http.enqueue_timeout_ms)?;
            positive("http.read_timeout_ms", self.http.read_timeout_ms)?;
            if let Some(max) = self.http.max_connections {
                positive("http.max_connections", max as u64)?;
            }
            // Port 0 asks the OS for a free port, so two such binds never collide.
            if self.admin.enabled
                && role.is_service()
                && self.admin.listen.trim() == self.http.listen.trim()
                && !self.http.listen.trim().ends_with(":0")
            {
                return Err(ConfigError::invalid(
                    "admin.listen",
                    "must differ from http.listen: the admin API never shares the webhook listener",
                ));
            }
            if self.http.header_limit_bytes < 1024 {
                return Err(ConfigError::invalid(
                    "http.header_limit_bytes",
                    "must be at least 1024",
                ));
            }
            if self.sources.is_empty() {
                return Err(ConfigError::invalid(
                    "sources",
                    "at least one [[sources]] entry is needed to accept webhooks",
                ));
            }
        }
        let url = url::Url::parse(self.redis.url.expose())
            .map_err(|e| ConfigError::invalid("redis.url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
            return Err(ConfigError::invalid(
                "redis.url",
                "scheme must be redis://, rediss:// or unix://",
            ));
        }
        if self.redis.namespace.is_empty() || self.redis.namespace.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "redis.namespace",
                "must be non-empty and without spaces",
            ));
        }
        positive("redis.response_timeout_ms", self.redis.response_timeout_ms)?;
        positive("redis.connect_timeout_ms", self.redis.connect_timeout_ms)?;

        if role.runs_workers() {
            let base = url::Url::parse(&self.openapp.base_url)
                .map_err(|e| ConfigError::invalid("openapp.base_url", format!("not a URL: {e}")))?;
            match base.scheme() {
                "https" => {}
                "http" if self.openapp.allow_insecure_http => {}
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
            match &self.openapp.api_key {
                None => {
                    return Err(ConfigError::invalid(
                        "openapp.api_key",
                        "missing: set api_key, api_key_file or LEASE_SYNC__OPENAPP__API_KEY",
                    ));
                }
                Some(key) if key.expose().trim().is_empty() => {
                    return Err(ConfigError::invalid("openapp.api_key", "is empty"));
                }
                Some(_) => {}
            }
            positive("openapp.timeout_ms", self.openapp.timeout_ms)?;
            positive(
                "openapp.connect_timeout_ms",
                self.openapp.connect_timeout_ms,
            )?;
            positive("worker.concurrency", self.worker.concurrency as u64)?;
            positive("worker.poll_interval_ms", self.worker.poll_interval_ms)?;
            positive("worker.heartbeat_secs", self.worker.heartbeat_secs)?;
            positive(
                "worker.missed_heartbeats",
                self.worker.missed_heartbeats as u64,
            )?;
            positive("worker.batch_size", self.worker.batch_size as u64)?;
            positive("retry.max_attempts", self.retry.max_attempts as u64)?;
            // apalis-redis parks a job in its dead set on its own after 25 attempts.
            if self.retry.max_attempts > 24 {
                return Err(ConfigError::invalid(
                    "retry.max_attempts",
                    "must be at most 24 for now",
                ));
            }
            // A job still running when its worker looks dead would be run twice, by two workers.
            if Duration::from_millis(self.openapp.timeout_ms) * 2 > self.worker.orphan_window() {
                return Err(ConfigError::invalid(
                    "worker.missed_heartbeats",
                    format!(
                        "heartbeat_secs × missed_heartbeats ({} s) must be at least twice openapp.timeout_ms ({} ms)",
                        self.worker.orphan_window().as_secs(),
                        self.openapp.timeout_ms
                    ),
                ));
            }
        }

        if self.admin.enabled && role.is_service() {
            self.admin.listen.parse::<SocketAddr>().map_err(|e| {
                ConfigError::invalid("admin.listen", format!("not a socket address: {e}"))
            })?;
            self.admin.validate_tokens()?;
            if let Some(max) = self.admin.max_connections {
                positive("admin.max_connections", max as u64)?;
            }
        }

        let mut names = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let at = |field: &str| format!("sources[{i}].{field}");
            if !is_valid_path_id(&source.name) {
                return Err(ConfigError::invalid(
                    at("name"),
                    "must match [A-Za-z0-9_-]{1,64}",
                ));
            }
            if !names.insert(source.name.as_str()) {
                return Err(ConfigError::invalid(
                    at("name"),
                    format!("source `{}` is defined twice", source.name),
                ));
            }
            if role.runs_ingest() {
                if source.secrets.is_empty() {
                    return Err(ConfigError::invalid(
                        at("secrets"),
                        "at least one secret is needed; unsigned webhooks are never accepted",
                    ));
                }
                source.verifier(i, now)?;
                positive(&at("tolerance_secs"), source.tolerance_secs)?;
                let per_sec = source
                    .rate_limit_per_sec
                    .unwrap_or(self.http.rate_limit_per_sec);
                let burst = source
                    .rate_limit_burst
                    .unwrap_or(self.http.rate_limit_burst);
                if per_sec > 0 && burst == 0 {
                    return Err(ConfigError::invalid(
                        at("rate_limit_burst"),
                        "must be greater than 0 while the rate limit is on",
                    ));
                }
            }
            let mut ids = HashSet::new();
            for (j, property) in source.properties.iter().enumerate() {
                let at = |field: &str| format!("sources[{i}].properties[{j}].{field}");
                if property.id.is_empty() {
                    return Err(ConfigError::invalid(at("id"), "must not be empty"));
                }
                if !ids.insert(property.id.as_str()) {
                    return Err(ConfigError::invalid(
                        at("id"),
                        format!("property `{}` is listed twice", property.id),
                    ));
                }
                if !is_valid_path_id(&property.org_id) {
                    return Err(ConfigError::invalid(
                        at("org_id"),
                        "must match [A-Za-z0-9_-]{1,64}",
                    ));
                }
                if !is_valid_path_id(&property.integration_id) {
                    return Err(ConfigError::invalid(
                        at("integration_id"),
                        "must match [A-Za-z0-9_-]{1,64}",
                    ));
                }
                if property.effective_role().trim().is_empty() {
                    return Err(ConfigError::invalid(at("role"), "must not be empty"));
                }
            }
        }
        if role.is_service() {
            self.validate_reconcile()?;
        }
        Ok(())
    }

    /// Checks `[reconcile]`: when `every` is set, it must be a positive humantime duration,
    /// `from` must be given and `source` must name a configured source.
    fn validate_reconcile(&self) -> Result<(), ConfigError> {
        let r = &self.reconcile;
        if let Some(source) = r.source.as_deref()
            && !source.is_empty()
            && self.source(source).is_none()
        {
            return Err(ConfigError::invalid(
                "reconcile.source",
                format!("no [[sources]] entry is named `{source}`"),
            ));
        }
        let Some(every) = r.every.as_deref().map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(());
        };
        match humantime::parse_duration(every) {
            Ok(d) if d.is_zero() => {
                return Err(ConfigError::invalid(
                    "reconcile.every",
                    "must be longer than 0",
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ConfigError::invalid(
                    "reconcile.every",
                    format!("not a duration such as \"24h\" or \"30m\": {e}"),
                ));
            }
        }
        if r.from.as_deref().is_none_or(|f| f.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "reconcile.from",
                "required when reconcile.every is set: a file path or an http(s) URL",
            ));
        }
        if let Some(from) = r.from.as_deref()
            && from.contains("://")
            && !matches!(
                url::Url::parse(from.trim())
                    .map(|u| u.scheme().to_owned())
                    .as_deref(),
                Ok("http" | "https")
            )
        {
            return Err(ConfigError::invalid(
                "reconcile.from",
                format!("`{}` is not an http(s) URL", redacted_location(from)),
            ));
        }
        if r.source.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::invalid(
                "reconcile.source",
                "required when reconcile.every is set: the [[sources]] entry the file describes",
            ));
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
        if self.admin.enabled
            && let Ok(addr) = self.admin.listen.parse::<SocketAddr>()
            && !addr.ip().is_loopback()
        {
            out.push(format!(
                "admin.listen = \"{addr}\" is not a loopback address; make sure only operators can reach it (a private network, a firewall rule or a Kubernetes NetworkPolicy)"
            ));
        }
        if self.openapp.allow_insecure_http && self.openapp.base_url.starts_with("http://") {
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

/// File descriptors a serving process keeps for everything but its listeners' connections:
/// standard streams, the runtime's epoll and event fds, the listening sockets, Redis
/// connections, DNS look-ups, a log file.
pub const RESERVED_FDS: u64 = 64;

/// Connections a listener may hold beyond its cap for a moment, twice over: ones admitted in
/// place of reclaimed idle connections that have not closed yet, and ones being answered 503
/// `overloaded`. Each listener's cap leaves room for both.
pub const CONNECTION_SPARE: usize = 32;

/// The admin listener's derived cap: operators, probes and a Prometheus scraper need few.
pub const ADMIN_CONNECTIONS: usize = 64;

/// The smallest derived cap, however low the open-file limit.
pub const MIN_CONNECTIONS: usize = 8;

/// How many connections each listener of a process may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// The webhook listener's cap; `None` when the role does not run it.
    pub http: Option<usize>,
    /// The admin listener's cap; `None` when the process does not serve the admin API.
    pub admin: Option<usize>,
    /// File descriptors left for the listeners' connections by the open-file limit.
    pub budget: usize,
}

impl ConnectionCaps {
    /// Whether the caps together exceed the budget (only possible when configured): the
    /// process could then run out of file descriptors before refusing a connection.
    pub fn overcommitted(&self) -> bool {
        self.http.unwrap_or(0) + self.admin.unwrap_or(0) > self.budget
    }
}

impl Settings {
    /// Each listener's connection cap under an open-file limit of `fd_limit`: the configured
    /// `max_connections`, or derived. The derived caps share
    ///
    /// `budget = fd_limit − RESERVED_FDS − worker.concurrency (roles that deliver: one
    /// OpenApp connection per job) − 2 × CONNECTION_SPARE per listener`
    ///
    /// as `admin = min(ADMIN_CONNECTIONS, budget / 8)` and `http = budget − admin`, neither
    /// below [`MIN_CONNECTIONS`]. With 1,024 descriptors, `serve` and the default 16 workers:
    /// budget 816, admin 64, http 752.
    pub fn connection_caps(&self, role: Role, fd_limit: u64) -> ConnectionCaps {
        let webhook = role.runs_ingest();
        let admin = self.admin.enabled && role.is_service();
        let listeners = u64::from(webhook) + u64::from(admin);
        let workers = if role.runs_workers() {
            self.worker.concurrency as u64
        } else {
            0
        };
        let reserved = RESERVED_FDS + workers + listeners * 2 * CONNECTION_SPARE as u64;
        // An unlimited limit still yields a cap that fits in memory.
        let budget = fd_limit.saturating_sub(reserved).min(1 << 24) as usize;
        let admin = admin.then(|| {
            self.admin
                .max_connections
                .unwrap_or((budget / 8).clamp(MIN_CONNECTIONS, ADMIN_CONNECTIONS))
        });
        let http = webhook.then(|| {
            self.http.max_connections.unwrap_or(
                budget
                    .saturating_sub(admin.unwrap_or(0))
                    .max(MIN_CONNECTIONS),
            )
        });
        ConnectionCaps {
            http,
            admin,
            budget,
        }
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::invalid(key, "must be greater than 0"))
    } else {
        Ok(())
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

/// Applies `LEASE_SYNC__A__B__0__C=value` to the document. Segments are lower-cased; a
/// numeric segment indexes an array (the next index appends). The value is read as a TOML
/// value when it is one (`5000`, `true`, `["a", "b"]`) and as a string otherwise; quote it
/// (`'"12345"'`) to force a string.
fn apply_env_override(doc: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(env_err(
            "empty key segment (use a double underscore between levels only)".into(),
        ));
    }
    let value = parse_env_value(raw);
    let mut slot: &mut toml::Value = doc
        .entry(path[0].clone())
        .or_insert_with(|| empty_container_for(path.get(1)));
    for (depth, segment) in path.iter().enumerate().skip(1) {
        let next = path.get(depth + 1);
        slot = match slot {
            toml::Value::Table(table) => table
                .entry(segment.clone())
                .or_insert_with(|| empty_container_for(next)),
            toml::Value::Array(array) => {
                let index: usize = segment.parse().map_err(|_| {
                    env_err(format!("`{segment}` indexes a list and must be a number"))
                })?;
                let len = array.len();
                if index == len {
                    array.push(empty_container_for(next));
                }
                array.get_mut(index).ok_or_else(|| {
                    env_err(format!("index {index} skips entries (the list has {len})"))
                })?
            }
            _ => {
                return Err(env_err(format!(
                    "`{}` is not a section",
                    path[..depth].join(".")
                )));
            }
        };
    }
    *slot = value;
    Ok(())
}

fn empty_container_for(next_segment: Option<&String>) -> toml::Value {
    match next_segment {
        Some(s) if s.parse::<usize>().is_ok() => toml::Value::Array(Vec::new()),
        _ => toml::Value::Table(toml::Table::new()),
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [admin]
        tokens = ["0123456789abcdef0123"]
        [openapp]
        api_key = "k"
        [[sources]]
        name = "acme"
        secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
        [[sources.properties]]
        id = "P-17"
        org_id = "org1"
        integration_id = "int1"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_fill_missing_sections() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert_eq!(s.http.body_limit_bytes, 65_536);
        assert_eq!(s.http.dedupe_ttl_secs, 259_200);
        assert_eq!(s.sources[0].tolerance_secs, 300);
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
    fn env_overrides_nested_and_indexed_keys() {
        let s = Settings::from_toml_str(
            MINIMAL,
            env(&[
                ("LEASE_SYNC__HTTP__BODY_LIMIT_BYTES", "1024"),
                ("LEASE_SYNC__OPENAPP__API_KEY", "from-env"),
                ("LEASE_SYNC__SOURCES__0__TOLERANCE_SECS", "60"),
                ("LEASE_SYNC__SOURCES__0__PROPERTIES__0__ORG_ID", "\"12345\""),
                ("OTHER__HTTP__LISTEN", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.body_limit_bytes, 1024);
        assert_eq!(s.openapp.api_key.unwrap().expose(), "from-env");
        assert_eq!(s.sources[0].tolerance_secs, 60);
        assert_eq!(s.sources[0].properties[0].org_id, "12345");
    }

    #[test]
    fn env_typo_is_rejected_by_name() {
        let msg = Settings::from_toml_str(MINIMAL, env(&[("LEASE_SYNC__HTTP__LISEN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("lisen"), "{msg}");
    }

    #[test]
    fn env_index_gap_is_rejected() {
        let err = Settings::from_toml_str(MINIMAL, env(&[("LEASE_SYNC__SOURCES__5__NAME", "x")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
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
    fn source_without_secret_is_refused_for_ingest() {
        let text = MINIMAL.replace("secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]", "");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        let msg = s.validate(Role::Ingest).unwrap_err().to_string();
        assert!(msg.contains("sources[0].secrets"), "{msg}");
        // Workers never verify signatures, so they do not need the secrets.
        s.validate(Role::Work).unwrap();
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
    fn bad_ids_and_secrets_are_refused() {
        let bad_integration =
            MINIMAL.replace("integration_id = \"int1\"", "integration_id = \"a/b\"");
        let s = Settings::from_toml_str(&bad_integration, env(&[])).unwrap();
        assert!(
            s.validate(Role::Serve)
                .unwrap_err()
                .to_string()
                .contains("integration_id")
        );

        let bad_secret = MINIMAL.replace("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_!!!");
        let s = Settings::from_toml_str(&bad_secret, env(&[])).unwrap();
        let msg = s.validate(Role::Serve).unwrap_err().to_string();
        assert!(
            msg.contains("sources[0].secrets[0]") && !msg.contains("!!!"),
            "{msg}"
        );
    }

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
    fn heartbeat_window_must_cover_call_timeout() {
        let text = format!("{MINIMAL}\n[worker]\nheartbeat_secs = 1\nmissed_heartbeats = 2\n");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        assert!(
            s.validate(Role::Work)
                .unwrap_err()
                .to_string()
                .contains("missed_heartbeats")
        );
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

    /// Every key `Settings` knows, as dotted paths (`http.listen`, `sources.properties.id`).
    fn key_paths(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let is_section = v.is_table()
                        || v.as_array()
                            .is_some_and(|a| a.iter().any(toml::Value::is_table));
                    if !is_section {
                        out.push(path.clone());
                    }
                    key_paths(v, &path, out);
                }
            }
            toml::Value::Array(items) => {
                for item in items.iter().filter(|i| i.is_table()) {
                    key_paths(item, prefix, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_example_config_is_valid_and_documents_every_key() {
        let text = include_str!("../deploy/config.example.toml");
        let settings = Settings::from_toml_str(
            text,
            env(&[
                ("LEASE_SYNC__OPENAPP__API_KEY", "k"),
                ("LEASE_SYNC__ADMIN__TOKENS", "[\"0123456789abcdef0123\"]"),
                (
                    "LEASE_SYNC__SOURCES__0__SECRETS",
                    "[\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
                ),
            ]),
        )
        .unwrap();
        settings.validate(Role::Serve).unwrap();

        // Every key, optional ones included, must appear in the example (set or commented out).
        let mut full = settings.clone();
        full.openapp.api_key_file = Some("x".into());
        full.sources[0].secrets_file = Some("x".into());
        full.sources[0].secrets[0].not_after = Some(OffsetDateTime::UNIX_EPOCH);
        full.sources[0].signature_header = Some("x".into());
        full.sources[0].signature_prefix = Some("x".into());
        full.sources[0].encoding = Some(SignatureEncoding::Hex);
        full.sources[0].timestamp_header = Some("x".into());
        full.sources[0].signed_content = Some("x".into());
        full.sources[0].event_id = Some("x".into());
        full.sources[0].rate_limit_per_sec = Some(1);
        full.sources[0].rate_limit_burst = Some(1);
        full.admin.tokens_file = Some("x".into());
        full.http.max_connections = Some(1);
        full.admin.max_connections = Some(1);
        let mut keys = Vec::new();
        key_paths(&toml::Value::try_from(&full).unwrap(), "", &mut keys);
        for key in keys {
            let leaf = key.rsplit('.').next().unwrap();
            let section = key.rsplit_once('.').map(|(s, _)| s);
            // Secrets are inline tables (`{ secret = "…", not_after = "…" }`), not sections.
            if section == Some("sources.secrets") {
                assert!(
                    text.contains(&format!("{{ {leaf} = "))
                        || text.contains(&format!(", {leaf} = ")),
                    "key `{key}` is not documented in deploy/config.example.toml"
                );
                continue;
            }
            if let Some(section) = section {
                assert!(
                    text.contains(&format!("[{section}]"))
                        || text.contains(&format!("[[{section}]]")),
                    "section [{section}] missing from deploy/config.example.toml"
                );
            }
            assert!(
                text.contains(&format!("\n{leaf} = ")) || text.contains(&format!("\n# {leaf} = ")),
                "key `{key}` is not documented in deploy/config.example.toml"
            );
        }
    }

    #[test]
    fn connection_caps_are_derived_from_the_open_file_limit_unless_set() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        // 1,024 − 64 reserved − 16 workers − 2 × 32 spare for each of two listeners = 816.
        let caps = s.connection_caps(Role::Serve, 1024);
        assert_eq!(
            caps,
            ConnectionCaps {
                http: Some(752),
                admin: Some(64),
                budget: 816
            }
        );
        assert!(!caps.overcommitted());
        // Ingest delivers nothing, so keeps no OpenApp connections; work has no webhook listener.
        assert_eq!(s.connection_caps(Role::Ingest, 1024).http, Some(768));
        let work = s.connection_caps(Role::Work, 1024);
        assert_eq!((work.http, work.admin), (None, Some(64)));
        // A small limit shrinks the admin share too, but never below the floor.
        let small = s.connection_caps(Role::Serve, 256);
        assert_eq!((small.http, small.admin), (Some(40), Some(8)));
        let tiny = s.connection_caps(Role::Serve, 16);
        assert_eq!(
            (tiny.http, tiny.admin),
            (Some(MIN_CONNECTIONS), Some(MIN_CONNECTIONS))
        );
        assert!(tiny.overcommitted());
        // An unlimited limit stays a usable number.
        assert!(s.connection_caps(Role::Serve, u64::MAX).http.unwrap() > 1_000_000);
        // Without the admin API its share goes to the webhook listener.
        let mut off = s.clone();
        off.admin.enabled = false;
        assert_eq!(off.connection_caps(Role::Serve, 1024).http, Some(880));

        let set = Settings::from_toml_str(
            MINIMAL,
            env(&[
                ("LEASE_SYNC__HTTP__MAX_CONNECTIONS", "5000"),
                ("LEASE_SYNC__ADMIN__MAX_CONNECTIONS", "10"),
            ]),
        )
        .unwrap();
        set.validate(Role::Serve).unwrap();
        let caps = set.connection_caps(Role::Serve, 1024);
        assert_eq!((caps.http, caps.admin), (Some(5000), Some(10)));
        assert!(caps.overcommitted());
    }

    #[test]
    fn max_connections_must_be_positive_when_set() {
        for key in ["http.max_connections", "admin.max_connections"] {
            let var = format!("LEASE_SYNC__{}", key.to_uppercase().replace('.', "__"));
            let s = Settings::from_toml_str(MINIMAL, env(&[(&var, "0")])).unwrap();
            let msg = s.validate(Role::Serve).unwrap_err().to_string();
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn reconciliation_is_off_by_default() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert!(!s.reconcile.enabled());
        assert_eq!(s.reconcile.period(), None);
        assert!(s.reconcile.apply, "apply defaults to true");
        assert!(
            !s.reconcile.prune_unmanaged,
            "prune_unmanaged defaults to false"
        );
        let s =
            Settings::from_toml_str(&format!("{MINIMAL}\n[reconcile]\nevery = \"\"\n"), env(&[]))
                .unwrap();
        s.validate(Role::Serve).unwrap();
        assert!(!s.reconcile.enabled(), "an empty `every` disables it");
    }

    #[test]
    fn reconcile_settings_are_validated_by_key() {
        let with = |section: &str| {
            let s =
                Settings::from_toml_str(&format!("{MINIMAL}\n[reconcile]\n{section}\n"), env(&[]))
                    .unwrap();
            s.validate(Role::Serve).map(|()| s)
        };
        let good = with("every = \"24h\"\nfrom = \"/srv/leases.csv\"\nsource = \"acme\"").unwrap();
        assert_eq!(good.reconcile.period(), Some(Duration::from_secs(86_400)));
        for (section, key) in [
            (
                "every = \"daily\"\nfrom = \"a.csv\"\nsource = \"acme\"",
                "reconcile.every",
            ),
            (
                "every = \"0s\"\nfrom = \"a.csv\"\nsource = \"acme\"",
                "reconcile.every",
            ),
            ("every = \"1h\"\nsource = \"acme\"", "reconcile.from"),
            (
                "every = \"1h\"\nfrom = \"  \"\nsource = \"acme\"",
                "reconcile.from",
            ),
            (
                "every = \"1h\"\nfrom = \"ftp://h/a.csv\"\nsource = \"acme\"",
                "reconcile.from",
            ),
            ("every = \"1h\"\nfrom = \"a.csv\"", "reconcile.source"),
            (
                "every = \"1h\"\nfrom = \"a.csv\"\nsource = \"other\"",
                "reconcile.source",
            ),
            ("source = \"other\"", "reconcile.source"),
        ] {
            let msg = with(section).unwrap_err().to_string();
            assert!(msg.contains(key), "{section}: {msg}");
        }
        // Operator commands do not run the schedule and do not care.
        let s = Settings::from_toml_str(
            &format!("{MINIMAL}\n[reconcile]\nevery = \"soon\"\n"),
            env(&[]),
        )
        .unwrap();
        s.validate(Role::Operate).unwrap();
    }

    #[test]
    fn reconcile_urls_are_shown_without_credentials() {
        let text = format!(
            "{MINIMAL}\n[reconcile]\nevery = \"1h\"\nsource = \"acme\"\nfrom = \"https://bob:hunter2@files.example/leases.csv?sig=s3cr3t\"\n"
        );
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        let out = s.to_redacted_toml();
        assert!(
            !out.contains("hunter2") && !out.contains("s3cr3t") && !out.contains("bob"),
            "{out}"
        );
        assert!(
            out.contains("https://files.example/leases.csv?[redacted]"),
            "{out}"
        );
        assert_eq!(redacted_location("/srv/leases.csv"), "/srv/leases.csv");
        assert_eq!(redacted_location("leases.json"), "leases.json");
    }

    #[test]
    fn the_example_config_documents_the_reconcile_keys() {
        let text = include_str!("../deploy/config.example.toml");
        let mut settings = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        settings.reconcile = ReconcileSettings {
            every: Some("24h".into()),
            from: Some("/srv/leases.csv".into()),
            source: Some("acme".into()),
            ..ReconcileSettings::default()
        };
        settings.validate(Role::Serve).unwrap();
        let mut keys = Vec::new();
        key_paths(
            &toml::Value::try_from(&settings.reconcile).unwrap(),
            "reconcile",
            &mut keys,
        );
        assert_eq!(keys.len(), 5, "{keys:?}");
        assert!(
            text.contains("\n[reconcile]\n"),
            "section [reconcile] missing"
        );
        for key in keys {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                text.contains(&format!("\n{leaf} = ")) || text.contains(&format!("\n# {leaf} = ")),
                "key `{key}` is not documented in deploy/config.example.toml"
            );
        }
    }

    const HMAC_SOURCE: &str = r#"
        [admin]
        tokens = ["0123456789abcdef0123"]
        [openapp]
        api_key = "k"
        [[sources]]
        name = "github"
        scheme = "hmac-sha256"
        signature_header = "X-Hub-Signature-256"
        signature_prefix = "sha256="
        encoding = "hex"
        event_id = "header:x-github-delivery"
        secrets = ["It's a Secret to Everybody"]
        [[sources.properties]]
        id = "P-17"
        org_id = "org1"
        integration_id = "int1"
    "#;

    fn error_of(text: &str) -> String {
        let s = Settings::from_toml_str(text, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap_err().to_string()
    }

    #[test]
    fn hmac_sources_are_validated_by_key() {
        let s = Settings::from_toml_str(HMAC_SOURCE, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        let v = s.sources[0].verifier(0, OffsetDateTime::now_utc()).unwrap();
        assert!(matches!(v, SourceVerifier::HmacSha256(_)));

        let msg = error_of(&HMAC_SOURCE.replace("signature_header = \"X-Hub-Signature-256\"", ""));
        assert!(msg.contains("sources[0].signature_header"), "{msg}");
        let msg = error_of(&HMAC_SOURCE.replace("event_id = \"header:x-github-delivery\"", ""));
        assert!(msg.contains("sources[0].event_id"), "{msg}");
        let msg = error_of(&HMAC_SOURCE.replace("header:x-github-delivery", "query:x"));
        assert!(msg.contains("sources[0].event_id"), "{msg}");
        let msg = error_of(&HMAC_SOURCE.replace(
            "encoding = \"hex\"",
            "encoding = \"hex\"\n        signed_content = \"{timestamp}.{body}\"",
        ));
        assert!(msg.contains("sources[0].timestamp_header"), "{msg}");
        let msg = error_of(&HMAC_SOURCE.replace("It's a Secret to Everybody", "short"));
        assert!(
            msg.contains("sources[0].secrets[0]") && !msg.contains("short"),
            "{msg}"
        );
        // Keys of one scheme are refused on the other.
        let msg = error_of(&MINIMAL.replace(
            "name = \"acme\"",
            "name = \"acme\"\n        signature_header = \"x-sig\"",
        ));
        assert!(
            msg.contains("sources[0].signature_header") && msg.contains("hmac-sha256"),
            "{msg}"
        );
        // Unknown schemes never start.
        let err = Settings::from_toml_str(
            &MINIMAL.replace(
                "name = \"acme\"",
                "name = \"acme\"\n        scheme = \"none\"",
            ),
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sources[0].scheme"), "{err}");
    }

    #[test]
    fn secrets_rotate_with_not_after_and_a_source_with_only_expired_ones_is_refused() {
        let rotating = MINIMAL.replace(
            "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
            "secrets = [{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", not_after = \"2020-01-01T00:00:00Z\" }, \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]",
        );
        let s = Settings::from_toml_str(&rotating, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert_eq!(s.sources[0].secrets[0].not_after.unwrap().year(), 2020);
        let now = OffsetDateTime::now_utc();
        let status = s.sources[0]
            .verifier(0, now)
            .unwrap()
            .key_status(now.unix_timestamp());
        assert_eq!((status.active, status.total), (1, 2));
        let redacted = s.to_redacted_toml();
        assert!(
            !redacted.contains("C2FVsBQ") && redacted.contains("2020-01-01"),
            "{redacted}"
        );

        let expired_only = MINIMAL.replace(
            "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
            "secrets = [{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", not_after = \"2020-01-01T00:00:00Z\" }]",
        );
        let msg = error_of(&expired_only);
        assert!(
            msg.contains("sources[0].secrets") && msg.contains("not_after"),
            "{msg}"
        );
        // The clock is an argument: before its end, the same secret is fine.
        Settings::from_toml_str(&expired_only, env(&[]))
            .unwrap()
            .validate_at(Role::Serve, time::macros::datetime!(2019-12-31 0:00 UTC))
            .unwrap();

        for bad in [
            "{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", not_after = \"tomorrow\" }",
            "{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", expires = \"2030-01-01T00:00:00Z\" }",
            "{ not_after = \"2030-01-01T00:00:00Z\" }",
        ] {
            let text = MINIMAL.replace(
                "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
                &format!("secrets = [{bad}]"),
            );
            let err = Settings::from_toml_str(&text, env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("sources[0].secrets[0]") && !err.contains("C2FVsBQ"),
                "{err}"
            );
        }
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
    }

    #[test]
    fn expiring_and_expired_secrets_are_warned_about_without_showing_them() {
        let now = OffsetDateTime::now_utc();
        let at = |d: time::Duration| rfc3339(now + d);
        let text = MINIMAL.replace(
            "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
            &format!(
                "secrets = [{{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", not_after = \"{}\" }}, {{ secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", not_after = \"{}\" }}, {{ secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", not_after = \"{}\" }}]",
                at(time::Duration::days(3)),
                at(time::Duration::days(-1)),
                at(time::Duration::days(30)),
            ),
        );
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        let warnings: Vec<String> = s
            .warnings(now)
            .into_iter()
            .filter(|w| w.starts_with("sources"))
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("(in 3 d 0 h)"), "{warnings:?}");
        assert!(warnings[0].contains("sources[0].secrets[0]") && warnings[0].contains("expires"));
        assert!(warnings[1].contains("sources[0].secrets[1]") && warnings[1].contains("expired"));
        assert!(warnings.iter().all(|w| !w.contains("whsec_")));
    }
}
