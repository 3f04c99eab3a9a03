//! `lease-sync sandbox-openapp`: command-line arguments and entry point.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::HeaderValue;

use super::{FaultOptions, NewUser, Sandbox, SandboxAuth, SandboxOptions};

/// Arguments of `lease-sync sandbox-openapp`: run a local, in-memory OpenApp
/// emulator of the building-users API for integration work.
#[derive(Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on, as HOST:PORT. The /_sandbox/* control endpoints
    /// have no auth, so keep this on loopback unless the network is trusted.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub listen: String,

    /// API key to accept (repeatable). Without any (and without
    /// --api-key-file), every non-empty key is accepted. A command line is
    /// visible to every user of the machine (`ps`): prefer --api-key-file.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,

    /// File holding an API key to accept, surrounding whitespace ignored
    /// (repeatable; same format as lease-sync's `openapp.api_key_file`).
    #[arg(long = "api-key-file", value_name = "PATH")]
    pub api_key_files: Vec<PathBuf>,

    /// Where clients must send the API key.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SandboxAuth::Bearer)]
    pub auth: SandboxAuth,

    /// Known integration, as ORG_ID:INTEGRATION_ID (repeatable). Calls for
    /// other integrations get 404, calls with another X-Org get 403. Without
    /// any, every integration is accepted and bound to the X-Org of its first
    /// call.
    #[arg(long = "integration", value_name = "ORG_ID:INTEGRATION_ID")]
    pub integrations: Vec<String>,

    /// Answer this HTTP error status (400-599) to a share of the calls, set by
    /// --fail-rate.
    #[arg(long, value_name = "CODE")]
    pub fail_status: Option<u16>,

    /// Share of calls, from 0 to 1, answered with --fail-status [default: 1].
    #[arg(long, value_name = "F", requires = "fail_status")]
    pub fail_rate: Option<f64>,

    /// Delay every building-users answer by this many milliseconds (the
    /// operation is applied before the delay).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub delay_ms: u64,

    /// Send this Retry-After header value with injected faults, verbatim.
    #[arg(long, value_name = "VALUE", requires = "fail_status")]
    pub retry_after: Option<String>,

    /// Answer 409 when adding a user who is already present, instead of an
    /// idempotent 201.
    #[arg(long)]
    pub conflict_on_existing: bool,

    /// User to create at start, as ORG_ID:EMAIL:NAME (repeatable; the name may contain
    /// colons). Found by GET /api/v1/users/search in that org.
    #[arg(long = "user", value_name = "ORG_ID:EMAIL:NAME")]
    pub users: Vec<String>,
}

// Manual impl so that API keys never end up in logs via `{:?}`.
impl fmt::Debug for SandboxArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxArgs")
            .field("listen", &self.listen)
            .field(
                "api_keys",
                &format_args!("[{} redacted]", self.api_keys.len()),
            )
            .field("api_key_files", &self.api_key_files)
            .field("auth", &self.auth)
            .field("integrations", &self.integrations)
            .field("fail_status", &self.fail_status)
            .field("fail_rate", &self.fail_rate)
            .field("delay_ms", &self.delay_ms)
            .field("retry_after", &self.retry_after)
            .field("conflict_on_existing", &self.conflict_on_existing)
            .field("users", &self.users)
            .finish()
    }
}

/// Invalid `sandbox-openapp` arguments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SandboxArgsError {
    /// An `--api-key` value is empty (it could never be matched).
    #[error("--api-key must not be empty")]
    EmptyApiKey,
    /// An `--api-key-file` cannot be read or holds no key.
    #[error("--api-key-file {}: {reason}", path.display())]
    ApiKeyFile {
        /// The file as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An `--integration` value is not `ORG_ID:INTEGRATION_ID`.
    #[error("--integration {value:?}: {reason}")]
    InvalidIntegration {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same integration id is given more than once.
    #[error("--integration: integration {integration_id:?} is listed more than once")]
    DuplicateIntegration {
        /// The repeated integration id.
        integration_id: String,
    },
    /// `--fail-status` is not an HTTP error status.
    #[error("--fail-status {0}: must be an HTTP error status (400-599)")]
    InvalidFailStatus(u16),
    /// `--fail-rate` is not a number between 0 and 1.
    #[error("--fail-rate {0}: must be a number from 0 to 1")]
    InvalidFailRate(f64),
    /// The named option only makes sense together with `--fail-status`.
    #[error("--{0} requires --fail-status")]
    RequiresFailStatus(&'static str),
    /// A `--user` value is not `ORG_ID:EMAIL:NAME`.
    #[error("--user {value:?}: {reason}")]
    InvalidUser {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--retry-after` cannot be sent as a header value.
    #[error("--retry-after {0:?}: must be a non-empty header value (visible ASCII)")]
    InvalidRetryAfter(String),
}

impl SandboxArgs {
    /// Validates the arguments and turns them into [`SandboxOptions`].
    ///
    /// # Errors
    /// Returns the first invalid argument found.
    pub fn options(&self) -> Result<SandboxOptions, SandboxArgsError> {
        if self.api_keys.iter().any(String::is_empty) {
            return Err(SandboxArgsError::EmptyApiKey);
        }
        let mut api_keys = self.api_keys.clone();
        for path in &self.api_key_files {
            let invalid = |reason: String| SandboxArgsError::ApiKeyFile {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
            let key = text.trim();
            if key.is_empty() {
                return Err(invalid("the file is empty".into()));
            }
            api_keys.push(key.to_owned());
        }

        let mut integrations: Vec<(String, String)> = Vec::new();
        for value in &self.integrations {
            let (org_id, integration_id) = parse_integration(value)?;
            if integrations
                .iter()
                .any(|(_, known)| *known == integration_id)
            {
                return Err(SandboxArgsError::DuplicateIntegration { integration_id });
            }
            integrations.push((org_id, integration_id));
        }

        // clap enforces `requires`, but the struct can also be built in code.
        if self.fail_status.is_none() {
            if self.fail_rate.is_some() {
                return Err(SandboxArgsError::RequiresFailStatus("fail-rate"));
            }
            if self.retry_after.is_some() {
                return Err(SandboxArgsError::RequiresFailStatus("retry-after"));
            }
        }
        if let Some(status) = self.fail_status
            && !(400..=599).contains(&status)
        {
            return Err(SandboxArgsError::InvalidFailStatus(status));
        }
        let rate = self.fail_rate.unwrap_or(1.0);
        // `contains` is false for NaN, so NaN is rejected too.
        if !(0.0..=1.0).contains(&rate) {
            return Err(SandboxArgsError::InvalidFailRate(rate));
        }
        if let Some(value) = &self.retry_after
            && (value.trim().is_empty() || HeaderValue::from_str(value).is_err())
        {
            return Err(SandboxArgsError::InvalidRetryAfter(value.clone()));
        }

        let users = self
            .users
            .iter()
            .map(|value| parse_user(value))
            .collect::<Result<_, _>>()?;

        Ok(SandboxOptions {
            api_keys,
            auth: self.auth,
            integrations,
            conflict_on_existing: self.conflict_on_existing,
            users,
            faults: FaultOptions {
                status: self.fail_status,
                rate: if self.fail_status.is_some() {
                    rate
                } else {
                    0.0
                },
                delay: Duration::from_millis(self.delay_ms),
                retry_after: self.retry_after.clone(),
            },
        })
    }
}

/// Splits `ORG_ID:INTEGRATION_ID`. Both ids must be visible ASCII (the org
/// travels in a header, the integration in a path segment and in role names,
/// hence no `:` or `/` in it).
fn parse_integration(value: &str) -> Result<(String, String), SandboxArgsError> {
    let invalid = |reason| SandboxArgsError::InvalidIntegration {
        value: value.to_owned(),
        reason,
    };
    let (org_id, integration_id) = value
        .split_once(':')
        .ok_or_else(|| invalid("expected ORG_ID:INTEGRATION_ID"))?;
    if org_id.is_empty() {
        return Err(invalid("the org id is empty"));
    }
    if integration_id.is_empty() {
        return Err(invalid("the integration id is empty"));
    }
    if !org_id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            "the org id must be visible ASCII without whitespace",
        ));
    }
    if !integration_id
        .chars()
        .all(|c| c.is_ascii_graphic() && c != ':' && c != '/')
    {
        return Err(invalid(
            "the integration id must be visible ASCII without whitespace, ':' or '/'",
        ));
    }
    Ok((org_id.to_owned(), integration_id.to_owned()))
}

/// Splits `ORG_ID:EMAIL:NAME` into the org and the user to create there.
fn parse_user(value: &str) -> Result<(String, NewUser), SandboxArgsError> {
    let invalid = |reason| SandboxArgsError::InvalidUser {
        value: value.to_owned(),
        reason,
    };
    let mut parts = value.splitn(3, ':');
    let (Some(org), Some(email), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("expected ORG_ID:EMAIL:NAME"));
    };
    if org.trim().is_empty() {
        return Err(invalid("the org id is empty"));
    }
    if !email.contains('@') {
        return Err(invalid("the email must contain @"));
    }
    if name.trim().is_empty() {
        return Err(invalid("the name is empty"));
    }
    Ok((
        org.trim().to_owned(),
        NewUser::new(name.trim(), email.trim()),
    ))
}

/// Runs `lease-sync sandbox-openapp`: validates `args`, binds `--listen`,
/// logs the base URL and serves until `shutdown` resolves.
///
/// # Errors
/// Invalid arguments, an unreadable key file, a failure to bind, or a server I/O error.
pub async fn run(
    args: SandboxArgs,
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
        auth = ?options.auth,
        api_keys = options.api_keys.len(),
        integrations = options.integrations.len(),
        conflict_on_existing = options.conflict_on_existing,
        users = options.users.len(),
        faults = ?options.faults,
        "sandbox OpenApp listening on http://{addr}/api/v1"
    );
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the /_sandbox control endpoints have no auth and are reachable from the network");
    }
    if options.api_keys.is_empty() {
        tracing::warn!("no --api-key given: any non-empty API key is accepted");
    }

    Sandbox::new(options)
        .serve(listener, shutdown)
        .await
        .context("sandbox server failed")
}
