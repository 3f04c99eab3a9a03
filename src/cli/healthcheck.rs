//! `lease-sync healthcheck`: asks a running lease-sync whether it is ready, for container
//! `HEALTHCHECK`s and scripts. Exit 0 when it answers 2xx, 1 otherwise.
//!
//! The target is `--url`, or derived from `--config`: the admin listener when enabled (every
//! role has it, `work` included), else the webhook listener. A wildcard bind address
//! (`0.0.0.0`, `[::]`) is asked on loopback.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use ::http::Method;

use crate::config::{Settings, local_address};
use crate::outbound::{BodyLimit, ClientOptions, HttpClient, Request};

/// Arguments of `healthcheck`.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// Configuration of the instance to ask (its admin or webhook listener address is used).
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "url")]
    config: Option<std::path::PathBuf>,
    /// Full URL to ask instead, e.g. http://127.0.0.1:9090/readyz.
    #[arg(long)]
    url: Option<String>,
    /// `readyz` (Redis reachable, workers running) or `healthz` (the process is up).
    #[arg(long, default_value = "readyz", value_parser = ["readyz", "healthz"])]
    check: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// Runs the check; prints one line with the answer.
pub(super) async fn run(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let url = match (&args.url, &args.config) {
        (Some(url), _) => url.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            // Parsed, not validated: the probe needs an address, not the role's secrets.
            let settings = Settings::from_toml_str(&text, std::env::vars())
                .with_context(|| format!("configuration {} is not usable", path.display()))?;
            format!("http://{}/{}", probe_address(&settings), args.check)
        }
        (None, None) => format!("http://127.0.0.1:9090/{}", args.check),
    };
    let client = HttpClient::new(ClientOptions::local(Duration::from_millis(args.timeout_ms)))
        .context("cannot build an HTTP client")?;
    let answer = match url::Url::parse(&url) {
        Ok(parsed) => client
            .send(Request::new(Method::GET, parsed), BodyLimit::Truncate(4096))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("not a URL: {e}")),
    };
    match answer {
        Ok(response) => {
            let body = String::from_utf8_lossy(&response.body);
            println!("{url}: {} {}", response.status, body.trim());
            Ok(if response.status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            println!("{url}: no answer ({e})");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The address to probe: the admin listener when enabled, else the webhook listener, with
/// wildcard hosts replaced by loopback.
fn probe_address(settings: &Settings) -> String {
    let listen = if settings.admin.enabled {
        settings.admin.listen
    } else {
        settings.http.listen
    };
    local_address(listen).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_listener_is_probed_when_enabled_on_loopback() {
        let mut settings = Settings::from_toml_str("", Vec::new()).unwrap();
        settings.admin.listen = "0.0.0.0:9191".parse().unwrap();
        assert_eq!(probe_address(&settings), "127.0.0.1:9191");
        settings.admin.enabled = false;
        settings.http.listen = "[::]:8081".parse().unwrap();
        assert_eq!(probe_address(&settings), "[::1]:8081");
    }
}
