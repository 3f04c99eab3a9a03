//! `lease-sync sandbox-buildium`: command-line arguments and entry point.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::{
    BuildiumOptions, BuildiumSandbox, Credentials, DEFAULT_ACCOUNT_ID, DEFAULT_RATE_LIMIT,
    ReadFaults, WebhookFaults,
};

/// Arguments of `lease-sync sandbox-buildium`: run a local, in-memory Buildium emulator
/// (lease and tenant reads, signed lease webhooks) for integration work.
#[derive(Clone, clap::Args)]
pub struct BuildiumArgs {
    /// Address to listen on, as HOST:PORT. The /_sandbox/* control API has no auth, so keep
    /// this on loopback unless the network is trusted.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8082")]
    pub listen: String,

    /// Where to post the webhooks (lease-sync's Buildium source endpoint).
    #[arg(long, value_name = "URL")]
    pub webhook_url: String,

    /// Webhook signing secret. A command line is visible to every user of the machine
    /// (`ps`): prefer --secret-file or the environment variable.
    #[arg(
        long,
        value_name = "S",
        env = "SANDBOX_BUILDIUM_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,

    /// File holding the webhook signing secret (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,

    /// API client id to accept in x-buildium-client-id. Without a client id and secret,
    /// any non-empty pair is accepted.
    #[arg(long, value_name = "ID", env = "SANDBOX_BUILDIUM_CLIENT_ID")]
    pub client_id: Option<String>,

    /// File holding the client id.
    #[arg(long, value_name = "PATH")]
    pub client_id_file: Option<PathBuf>,

    /// API client secret to accept in x-buildium-client-secret (prefer the file or the
    /// environment variable).
    #[arg(
        long,
        value_name = "S",
        env = "SANDBOX_BUILDIUM_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub client_secret: Option<String>,

    /// File holding the client secret.
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,

    /// Reads allowed per second; more get 429 (0: no limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,

    /// Divide Buildium's webhook retry schedule (1 min, 10 min, 1 h) by this, e.g. 600 for
    /// 0.1 s, 1 s and 6 s.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub retry_scale: f64,

    /// `AccountId` of the webhook events.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ACCOUNT_ID)]
    pub account_id: i64,

    /// Answer this HTTP error status (400-599, e.g. 503 or 429) to a share of the reads, set
    /// by --read-fail-rate.
    #[arg(long, value_name = "CODE")]
    pub read_fail_status: Option<u16>,

    /// Share of reads, from 0 to 1, answered with --read-fail-status [default: 1].
    #[arg(long, value_name = "F", requires = "read_fail_status")]
    pub read_fail_rate: Option<f64>,

    /// Share of webhook events, from 0 to 1, never sent.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub webhook_drop_rate: f64,

    /// Share of webhook events, from 0 to 1, sent twice.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub webhook_duplicate_rate: f64,

    /// Delay each webhook event by a random time up to this many milliseconds, so that
    /// events overtake each other.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub webhook_max_delay_ms: u64,
}

// Manual impl so that secrets never end up in logs via `{:?}`.
impl fmt::Debug for BuildiumArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |value: &Option<String>| value.as_ref().map(|_| "[redacted]");
        f.debug_struct("BuildiumArgs")
            .field("listen", &self.listen)
            .field("webhook_url", &self.webhook_url)
            .field("secret", &redacted(&self.secret))
            .field("secret_file", &self.secret_file)
            .field("client_id", &self.client_id)
            .field("client_id_file", &self.client_id_file)
            .field("client_secret", &redacted(&self.client_secret))
            .field("client_secret_file", &self.client_secret_file)
            .field("rate_limit", &self.rate_limit)
            .field("retry_scale", &self.retry_scale)
            .field("account_id", &self.account_id)
            .field("read_fail_status", &self.read_fail_status)
            .field("read_fail_rate", &self.read_fail_rate)
            .field("webhook_drop_rate", &self.webhook_drop_rate)
            .field("webhook_duplicate_rate", &self.webhook_duplicate_rate)
            .field("webhook_max_delay_ms", &self.webhook_max_delay_ms)
            .finish()
    }
}

/// Invalid `sandbox-buildium` arguments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildiumArgsError {
    /// `--webhook-url` is not an absolute http(s) URL.
    #[error("--webhook-url {0:?}: must be an absolute http:// or https:// URL")]
    InvalidWebhookUrl(String),
    /// A value is given both directly (flag or environment) and as a file.
    #[error("--{0} and --{0}-file (or its environment variable) are both given: give one")]
    TwoSources(&'static str),
    /// A required value is given by no source.
    #[error("--{0} (or --{0}-file, or its environment variable) is required")]
    Missing(&'static str),
    /// A value is empty.
    #[error("--{0} must not be empty")]
    Empty(&'static str),
    /// A file cannot be read or is empty.
    #[error("--{flag}-file {}: {reason}", path.display())]
    File {
        /// The flag, without `--` and `-file`.
        flag: &'static str,
        /// The file as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of the client id and the client secret is given.
    #[error("--client-id and --client-secret go together: give both or neither")]
    HalfCredentials,
    /// `--retry-scale` is not a positive finite number.
    #[error("--retry-scale {0}: must be a positive number")]
    InvalidRetryScale(f64),
    /// `--read-fail-status` is not an HTTP error status.
    #[error("--read-fail-status {0}: must be an HTTP error status (400-599)")]
    InvalidFailStatus(u16),
    /// A rate is not a number from 0 to 1.
    #[error("--{flag} {value}: must be a number from 0 to 1")]
    InvalidRate {
        /// The flag, without `--`.
        flag: &'static str,
        /// The value given.
        value: f64,
    },
    /// `--read-fail-rate` without `--read-fail-status`.
    #[error("--read-fail-rate requires --read-fail-status")]
    RateWithoutStatus,
}

/// A value given directly or as a file (exactly one of them when `required`).
fn one_of(
    flag: &'static str,
    direct: Option<&str>,
    file: Option<&Path>,
    required: bool,
) -> Result<Option<String>, BuildiumArgsError> {
    match (direct, file) {
        (Some(_), Some(_)) => Err(BuildiumArgsError::TwoSources(flag)),
        (Some(value), None) if value.trim().is_empty() => Err(BuildiumArgsError::Empty(flag)),
        (Some(value), None) => Ok(Some(value.trim().to_owned())),
        (None, Some(path)) => {
            let invalid = |reason: String| BuildiumArgsError::File {
                flag,
                path: path.to_owned(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
            let value = text.trim();
            if value.is_empty() {
                return Err(invalid("the file is empty".into()));
            }
            Ok(Some(value.to_owned()))
        }
        (None, None) if required => Err(BuildiumArgsError::Missing(flag)),
        (None, None) => Ok(None),
    }
}

fn check_rate(flag: &'static str, value: f64) -> Result<f64, BuildiumArgsError> {
    // `contains` is false for NaN.
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(BuildiumArgsError::InvalidRate { flag, value })
    }
}

impl BuildiumArgs {
    /// Validates the arguments and turns them into [`BuildiumOptions`].
    ///
    /// # Errors
    /// The first invalid argument found.
    pub fn options(&self) -> Result<BuildiumOptions, BuildiumArgsError> {
        let url = reqwest::Url::parse(&self.webhook_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
            .ok_or_else(|| BuildiumArgsError::InvalidWebhookUrl(self.webhook_url.clone()))?;
        let secret = one_of(
            "secret",
            self.secret.as_deref(),
            self.secret_file.as_deref(),
            true,
        )?
        .unwrap_or_default();
        let client_id = one_of(
            "client-id",
            self.client_id.as_deref(),
            self.client_id_file.as_deref(),
            false,
        )?;
        let client_secret = one_of(
            "client-secret",
            self.client_secret.as_deref(),
            self.client_secret_file.as_deref(),
            false,
        )?;
        let credentials = match (client_id, client_secret) {
            (Some(client_id), Some(client_secret)) => Some(Credentials {
                client_id,
                client_secret,
            }),
            (None, None) => None,
            _ => return Err(BuildiumArgsError::HalfCredentials),
        };
        if !(self.retry_scale.is_finite() && self.retry_scale > 0.0) {
            return Err(BuildiumArgsError::InvalidRetryScale(self.retry_scale));
        }
        let read_faults = match (self.read_fail_status, self.read_fail_rate) {
            (None, None) => ReadFaults::default(),
            (None, Some(_)) => return Err(BuildiumArgsError::RateWithoutStatus),
            (Some(status), _) if !(400..=599).contains(&status) => {
                return Err(BuildiumArgsError::InvalidFailStatus(status));
            }
            (Some(status), rate) => ReadFaults {
                status: Some(status),
                rate: check_rate("read-fail-rate", rate.unwrap_or(1.0))?,
            },
        };
        Ok(BuildiumOptions {
            webhook_url: Some(url.to_string()),
            secret,
            account_id: self.account_id,
            credentials,
            rate_limit: self.rate_limit,
            retry_scale: self.retry_scale,
            webhook_faults: WebhookFaults {
                drop_rate: check_rate("webhook-drop-rate", self.webhook_drop_rate)?,
                duplicate_rate: check_rate("webhook-duplicate-rate", self.webhook_duplicate_rate)?,
                max_delay: Duration::from_millis(self.webhook_max_delay_ms),
            },
            read_faults,
            ..BuildiumOptions::default()
        })
    }
}

/// Runs `lease-sync sandbox-buildium`: validates `args`, binds `--listen`, logs the base URL
/// and serves until `shutdown` resolves.
///
/// # Errors
/// Invalid arguments, an unreadable file, a failure to bind, or a server I/O error.
pub async fn run(
    args: BuildiumArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let options = args.options()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(
        %addr,
        webhook_url = options.webhook_url.as_deref(),
        account_id = options.account_id,
        rate_limit = options.rate_limit,
        retry_scale = options.retry_scale,
        webhook_faults = ?options.webhook_faults,
        read_faults = ?options.read_faults,
        "sandbox Buildium listening on http://{addr}/v1 (control API under http://{addr}/_sandbox/)"
    );
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the /_sandbox control API has no auth and is reachable from the network");
    }
    if options.credentials.is_none() {
        tracing::warn!("no --client-id/--client-secret given: any non-empty pair is accepted");
    }
    BuildiumSandbox::new(options)
        .serve(listener, shutdown)
        .await
        .context("sandbox Buildium server failed")
}
