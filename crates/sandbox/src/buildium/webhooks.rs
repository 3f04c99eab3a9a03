//! Webhook deliveries as Buildium makes them: the event object, the signature, the POST with
//! its 10 s timeout, retries after 1 min, 10 min and 1 h (divided by the retry scale), and the
//! faults a convergence test wants (drops, duplicates, delays, held and reordered events).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::time::Instant;

use super::model::{EventName, Occurred, datetime_text};
use super::{BuildiumSandbox, millis};

/// Header carrying the Unix time (seconds) at which a delivery attempt was sent.
pub const TIMESTAMP_HEADER: &str = "buildium-webhook-timestamp";
/// Header carrying `base64(HMAC-SHA256(secret, "{timestamp}.{body}"))`.
pub const SIGNATURE_HEADER: &str = "buildium-webhook-signature";

/// Buildium's retry intervals after a failed attempt: 1 minute, 10 minutes, 1 hour; the
/// event is dropped after the last.
pub const RETRY_SCHEDULE: [Duration; 3] = [
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

/// How long Buildium waits for the receiver's answer.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The event object posted to the webhook URL, fields in Buildium's order. `LeaseId` and
/// `TenantId` appear only on the events that carry them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WebhookEvent {
    /// E.g. `Lease.Updated`.
    pub event_name: EventName,
    /// When the change happened: UTC, 7 fractional digits, e.g. `2024-05-10T15:12:46.2317653Z`.
    pub event_date_time: String,
    /// The Buildium account.
    pub account_id: i64,
    /// The lease, on `Lease.*` events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lease_id: Option<i32>,
    /// The tenant, on `LeaseTenant.*` and `Lease.MoveOut.Created`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tenant_id: Option<i32>,
}

impl WebhookEvent {
    pub(crate) fn new(occurred: &Occurred, account_id: i64) -> Self {
        Self {
            event_name: occurred.name,
            event_date_time: datetime_text(occurred.at),
            account_id,
            lease_id: occurred.lease_id,
            tenant_id: occurred.tenant_id,
        }
    }

    /// The body as sent: compact JSON (no newlines, no spaces after colons), as Buildium
    /// signs it.
    #[must_use]
    pub fn body(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `base64(HMAC-SHA256(key = secret's UTF-8 bytes, message = "{timestamp}.{body}"))`, the
/// value of [`SIGNATURE_HEADER`].
#[must_use]
pub fn sign(secret: &str, timestamp: u64, body: &str) -> String {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The waits before the retries: [`RETRY_SCHEDULE`] divided by `scale` (e.g. 600 turns
/// 1 min / 10 min / 1 h into 0.1 s / 1 s / 6 s). A scale that is not a positive finite number
/// leaves the schedule as is.
#[must_use]
pub fn retry_delays(scale: f64) -> [Duration; 3] {
    if !(scale.is_finite() && scale > 0.0) {
        return RETRY_SCHEDULE;
    }
    RETRY_SCHEDULE.map(|delay| Duration::from_secs_f64(delay.as_secs_f64() / scale))
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Kept back by [`BuildiumSandbox::hold_webhooks`] until released.
    Held,
    /// Waiting for its first attempt (an injected delay) or being sent.
    Pending,
    /// An attempt failed; the next one is scheduled.
    Retrying,
    /// A receiver answered 2xx.
    Delivered,
    /// Every attempt failed; dropped, as Buildium does after the last retry.
    GaveUp,
    /// Dropped by an injected fault, never sent.
    Dropped,
    /// Not sent: no webhook URL was configured, or no Tokio runtime was running.
    NotSent,
}

impl DeliveryState {
    /// Whether nothing more will happen to the delivery.
    #[must_use]
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::GaveUp | Self::Dropped | Self::NotSent
        )
    }
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The receiver answered with this status.
    Status {
        /// HTTP status.
        status: u16,
    },
    /// No answer within the timeout (10 s).
    Timeout,
    /// The request could not be made (connection refused, bad URL…).
    Error {
        /// What went wrong.
        error: String,
    },
}

impl AttemptOutcome {
    /// Whether the attempt counts as delivered (a 2xx answer).
    #[must_use]
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Status { status } if (200..300).contains(status))
    }
}

/// One POST of a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt, 2 to 4 for the retries.
    pub number: u32,
    /// When it was sent, in milliseconds after the event was emitted (on Tokio's clock, so
    /// paused-time tests see the exact schedule).
    pub after_ms: u64,
    /// The [`TIMESTAMP_HEADER`] sent (Unix seconds).
    pub timestamp: u64,
    /// The [`SIGNATURE_HEADER`] sent.
    pub signature: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: AttemptOutcome,
}

/// One event on its way to the webhook URL, with every attempt so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Sequence number, from 1, in the order events were emitted (duplicates get their own).
    pub id: u64,
    /// The event.
    pub event: WebhookEvent,
    /// The exact body posted (and signed).
    pub body: String,
    /// For an injected duplicate: the delivery it copies.
    pub duplicate_of: Option<u64>,
    /// Where it stands.
    pub state: DeliveryState,
    /// Why it was not sent, for [`DeliveryState::NotSent`] and [`DeliveryState::Dropped`].
    pub note: Option<String>,
    /// Attempts so far, oldest first.
    pub attempts: Vec<Attempt>,
}

/// Random faults applied to each new webhook event. The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookFaults {
    /// Probability (0 to 1) that an event is never sent.
    pub drop_rate: f64,
    /// Probability (0 to 1) that an event is sent twice (two deliveries of one body).
    pub duplicate_rate: f64,
    /// Each event waits a random time up to this before its first attempt, so that later
    /// events can overtake it.
    #[serde(rename = "max_delay_ms", with = "millis")]
    pub max_delay: Duration,
}

/// A scripted fault for the next event, queued with [`BuildiumSandbox::push_webhook_fault`]
/// and applied before the random ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookFault {
    /// Never send the event.
    Drop,
    /// Send the event twice.
    Duplicate,
    /// Wait this long before the first attempt.
    Delay(#[serde(with = "millis")] Duration),
}

/// Order in which [`BuildiumSandbox::release_webhooks`] sends held events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseOrder {
    /// The order they were emitted in.
    #[default]
    Emitted,
    /// Newest first.
    Reversed,
    /// A random order.
    Shuffled,
}

/// Sends one attempt. The HTTP implementation is [`HttpPoster`]; tests substitute one that
/// answers from a script under Tokio's paused clock.
pub(crate) trait Poster: Send + Sync {
    fn post(
        &self,
        request: PostRequest,
    ) -> Pin<Box<dyn Future<Output = AttemptOutcome> + Send + 'static>>;
}

/// One attempt's request.
#[derive(Clone, Debug)]
pub(crate) struct PostRequest {
    pub(crate) url: String,
    pub(crate) timestamp: u64,
    pub(crate) signature: String,
    pub(crate) body: String,
    pub(crate) timeout: Duration,
}

/// Posts with reqwest.
pub(crate) struct HttpPoster {
    client: reqwest::Client,
}

impl HttpPoster {
    pub(crate) fn new() -> Self {
        let client = reqwest::Client::builder()
            .user_agent("lease-sync-sandbox-buildium")
            // Buildium does not follow redirects to another URL than the one registered.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { client }
    }
}

impl Poster for HttpPoster {
    fn post(
        &self,
        request: PostRequest,
    ) -> Pin<Box<dyn Future<Output = AttemptOutcome> + Send + 'static>> {
        let sending = self
            .client
            .post(&request.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, request.timestamp.to_string())
            .header(SIGNATURE_HEADER, request.signature)
            .body(request.body)
            .timeout(request.timeout)
            .send();
        Box::pin(async move {
            match sending.await {
                Ok(response) => AttemptOutcome::Status {
                    status: response.status().as_u16(),
                },
                Err(error) if error.is_timeout() => AttemptOutcome::Timeout,
                Err(error) => AttemptOutcome::Error {
                    error: error_chain(&error),
                },
            }
        })
    }
}

/// An error and its causes, `: `-separated (reqwest's own message is terse).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Unix seconds now, for the timestamp header.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// What to do with a new event, decided when it is emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) drop: bool,
    pub(crate) duplicate: bool,
    pub(crate) delay: Duration,
}

impl BuildiumSandbox {
    /// Runs a delivery: the first attempt after its planned delay, then the retries.
    pub(crate) async fn deliver(self, id: u64, emitted: Instant, delay: Duration) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !self.attempt(id, 1, emitted).await {
            self.retry(id, emitted).await;
        }
    }

    /// The retries of a delivery whose first attempt failed.
    pub(crate) async fn retry(self, id: u64, emitted: Instant) {
        let delays = retry_delays(self.shared.retry_scale);
        for (index, wait) in delays.into_iter().enumerate() {
            self.set_state(id, DeliveryState::Retrying, None);
            tokio::time::sleep(wait).await;
            // Attempts 2 to 4.
            let number = u32::try_from(index).unwrap_or(u32::MAX).saturating_add(2);
            if self.attempt(id, number, emitted).await {
                return;
            }
        }
        self.set_state(id, DeliveryState::GaveUp, None);
    }

    /// Sends one attempt, freshly signed, and records it; true when delivered (or when there
    /// is nothing left to do).
    pub(crate) async fn attempt(&self, id: u64, number: u32, emitted: Instant) -> bool {
        let Some((body, url)) = self.prepare_attempt(id) else {
            return true;
        };
        let Some(url) = url else {
            self.set_state(
                id,
                DeliveryState::NotSent,
                Some("no webhook URL is configured".into()),
            );
            return true;
        };
        let timestamp = unix_now();
        let signature = sign(&self.shared.secret, timestamp, &body);
        let after = emitted.elapsed();
        let outcome = self
            .shared
            .poster
            .post(PostRequest {
                url,
                timestamp,
                signature: signature.clone(),
                body,
                timeout: self.shared.delivery_timeout,
            })
            .await;
        let delivered = outcome.is_success();
        tracing::info!(
            delivery = id,
            attempt = number,
            outcome = ?outcome,
            "sandbox Buildium webhook attempt"
        );
        self.record_attempt(
            id,
            Attempt {
                number,
                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                timestamp,
                signature,
                outcome,
            },
            delivered,
        );
        delivered
    }
}

/// Shared handle type for the poster.
pub(crate) type SharedPoster = Arc<dyn Poster>;
