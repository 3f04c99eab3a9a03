//! `lease-sync send-test-event`: what an integrator runs to see the pipeline work.
//!
//! This is a small HTTP client of our own webhook endpoint, so it uses reqwest directly;
//! it signs exactly as a Standard Webhooks sender would.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ConfigArg, load};
use crate::config::{Role, Settings};
use crate::event::EventType;
use crate::signature::standard_webhooks;

/// Arguments of `send-test-event`.
#[derive(Debug, clap::Args)]
pub struct SendTestEventArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Source to send as (a `[[sources]]` name); its first secret signs.
    #[arg(long)]
    source: String,
    /// Event type.
    #[arg(long = "type", value_name = "lease.signed|lease.ended", value_parser = parse_type)]
    event_type: EventType,
    /// Lease id.
    #[arg(long)]
    lease: String,
    /// Property id (must be mapped under the source).
    #[arg(long)]
    property: String,
    /// OpenApp user id of the resident.
    #[arg(long)]
    user: String,
    /// Webhook URL; defaults to http://<http.listen>/webhooks/<source> (0.0.0.0 becomes 127.0.0.1).
    #[arg(long)]
    url: Option<String>,
}

fn parse_type(s: &str) -> Result<EventType, String> {
    s.parse()
}

/// Builds, signs and posts the event; exit 0 on 200/202, 1 otherwise.
pub(super) async fn run(args: SendTestEventArgs) -> anyhow::Result<ExitCode> {
    let settings = load(&args.config, Role::Ingest)?;
    let source = settings
        .source(&args.source)
        .with_context(|| format!("no [[sources]] entry is named `{}`", args.source))?;
    let Some(secret) = source.secrets.first() else {
        bail!("source `{}` has no secret to sign with", args.source);
    };
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| default_url(&settings, &args.source));

    let now = OffsetDateTime::now_utc();
    let event_id = format!("evt_test_{}", ulid::Ulid::new());
    let body = serde_json::to_vec(&json!({
        "type": args.event_type.as_str(),
        "occurred_at": now.format(&Rfc3339).context("cannot format the time")?,
        "lease": { "id": args.lease, "property_id": args.property },
        "residents": [ { "openapp_user_id": args.user } ],
    }))?;
    let timestamp = now.unix_timestamp();
    let signature = standard_webhooks::sign(secret.expose(), &event_id, timestamp, &body)
        .context("the source's first secret cannot sign")?;

    let body_text = String::from_utf8_lossy(&body).into_owned();
    println!(
        "# equivalent request (valid for {} s):",
        source.tolerance_secs
    );
    println!(
        "curl -sS -X POST '{url}' -H 'content-type: application/json' -H 'webhook-id: {event_id}' -H 'webhook-timestamp: {timestamp}' -H 'webhook-signature: {signature}' --data-raw '{}'",
        body_text.replace('\'', r"'\''")
    );

    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header(standard_webhooks::ID_HEADER, &event_id)
        .header(standard_webhooks::TIMESTAMP_HEADER, timestamp.to_string())
        .header(standard_webhooks::SIGNATURE_HEADER, &signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("# response: {status}");
    println!("{text}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn default_url(settings: &Settings, source: &str) -> String {
    let listen = settings
        .http
        .listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    format!("http://{listen}/webhooks/{source}")
}
