//! `lease-sync send-test-event`: what an integrator runs to see the pipeline work.
//!
//! It is a small HTTP client of our own webhook endpoint (through [`crate::outbound`]) that
//! signs exactly as the source's sender would: Standard Webhooks, or the source's
//! `hmac-sha256` format (header, prefix, encoding, signed content, event id).

use std::process::ExitCode;
use std::time::Duration;

use ::http::Method;
use ::http::header::{HeaderMap, HeaderName, HeaderValue};
use anyhow::{Context as _, bail};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ConfigArg, load};
use crate::config::{Role, SchemeKind, Settings, SourceSettings, local_address};
use crate::event::EventType;
use crate::outbound::{BodyLimit, ClientOptions, HttpClient, Request};
use crate::signature::{EventIdSource, hmac_sha256, standard_webhooks};

/// Arguments of `send-test-event`.
#[derive(Debug, clap::Args)]
pub struct SendTestEventArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Source to send as (a `[[sources]]` name); its first unexpired secret signs.
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

fn parse_type(s: &str) -> Result<EventType, crate::event::UnknownEventType> {
    s.parse()
}

/// Builds, signs and posts the event; exit 0 on 200/202, 1 otherwise.
pub(super) async fn run(args: SendTestEventArgs) -> anyhow::Result<ExitCode> {
    let settings = load(&args.config, Role::Ingest)?;
    let source = settings
        .source(&args.source)
        .with_context(|| format!("no [[sources]] entry is named `{}`", args.source))?;
    let now = OffsetDateTime::now_utc();
    let Some(secret) = source
        .secrets
        .iter()
        .find(|s| s.not_after.is_none_or(|end| end >= now))
    else {
        bail!(
            "source `{}` has no unexpired secret to sign with",
            args.source
        );
    };
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| default_url(&settings, &args.source));

    let event_id = format!("evt_test_{}", ulid::Ulid::new());
    let event = json!({
        "type": args.event_type.as_str(),
        "occurred_at": now.format(&Rfc3339).context("cannot format the time")?,
        "lease": { "id": args.lease, "property_id": args.property },
        "residents": [ { "openapp_user_id": args.user } ],
    });
    let (headers, body) = sign(
        &settings,
        source,
        secret.secret.expose(),
        event,
        &event_id,
        now,
    )?;

    let body_text = String::from_utf8_lossy(&body).into_owned();
    println!(
        "# equivalent request (valid for {} s):",
        source.tolerance.as_secs()
    );
    let header_args: String = headers
        .iter()
        .map(|(name, value)| format!(" -H '{name}: {value}'"))
        .collect();
    println!(
        "curl -sS -X POST '{url}' -H 'content-type: application/json'{header_args} --data-raw '{}'",
        body_text.replace('\'', r"'\''")
    );

    post(&url, &headers, body).await
}

/// Header names and values, in the order they are sent.
type Headers = Vec<(String, String)>;

/// The headers and body `source`'s sender would send for `event` with id `event_id` at
/// `now`: Standard Webhooks, or the source's `hmac-sha256` format (which may put the id in
/// a header or the body).
fn sign(
    settings: &Settings,
    source: &SourceSettings,
    secret: &str,
    mut event: serde_json::Value,
    event_id: &str,
    now: OffsetDateTime,
) -> anyhow::Result<(Headers, Vec<u8>)> {
    let timestamp = now.unix_timestamp().to_string();
    let mut headers = Headers::new();
    let body = match source.scheme {
        SchemeKind::StandardWebhooks => {
            let body = serde_json::to_vec(&event)?;
            let signature = standard_webhooks::sign(secret, event_id, now.unix_timestamp(), &body)
                .context("the source's secret cannot sign")?;
            headers.push((standard_webhooks::ID_HEADER.into(), event_id.to_owned()));
            headers.push((standard_webhooks::TIMESTAMP_HEADER.into(), timestamp));
            headers.push((standard_webhooks::SIGNATURE_HEADER.into(), signature));
            body
        }
        SchemeKind::HmacSha256 => {
            let format = hmac_format(settings, source)?;
            match &format.event_id {
                EventIdSource::Header(name) => headers.push((name.clone(), event_id.to_owned())),
                EventIdSource::BodyField(path) => set_path(&mut event, path, event_id),
                EventIdSource::BodySha256 => {}
            }
            let body = serde_json::to_vec(&event)?;
            let signed_ts = format.timestamp_header.as_ref().map(|name| {
                headers.push((name.clone(), timestamp.clone()));
                timestamp.as_str()
            });
            let signature = hmac_sha256::sign(&format, secret, signed_ts, &body);
            headers.push((format.signature_header.clone(), signature));
            body
        }
    };
    Ok((headers, body))
}

/// Posts `body` with `headers` to `url` and prints the answer; success is a 2xx.
async fn post(url: &str, headers: &[(String, String)], body: Vec<u8>) -> anyhow::Result<ExitCode> {
    let mut request_headers = HeaderMap::new();
    request_headers.insert(
        ::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            request_headers.insert(name, value);
        }
    }
    let target = url::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
    let client = HttpClient::new(ClientOptions::local(Duration::from_secs(30)))?;
    let response = client
        .send(
            Request::new(Method::POST, target)
                .headers(request_headers)
                .body(body),
            BodyLimit::Truncate(64 * 1024),
        )
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    println!("# response: {}", response.status);
    println!("{}", String::from_utf8_lossy(&response.body));
    Ok(if response.status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn hmac_format(
    settings: &Settings,
    source: &SourceSettings,
) -> anyhow::Result<hmac_sha256::Format> {
    let index = settings
        .sources
        .iter()
        .position(|s| s.name == source.name)
        .unwrap_or_default();
    Ok(source.hmac_format(index)?)
}

/// Puts `value` at the dotted `path` of `event`, creating objects on the way.
fn set_path(event: &mut serde_json::Value, path: &[String], value: &str) {
    let mut at = event;
    for (n, part) in path.iter().enumerate() {
        let Some(object) = at.as_object_mut() else {
            return;
        };
        if n + 1 == path.len() {
            object.insert(part.clone(), json!(value));
            return;
        }
        at = object.entry(part.clone()).or_insert_with(|| json!({}));
    }
}

fn default_url(settings: &Settings, source: &str) -> String {
    let listen = local_address(settings.http.listen);
    format!("http://{listen}/webhooks/{source}")
}
