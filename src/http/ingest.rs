//! `POST /webhooks/{source}`: verify, parse, enqueue, answer.
//!
//! Order of checks: source → size → media type → body read within the read timeout →
//! signature over the raw bytes → the source's rate limit → event id → event schema →
//! property mapping → durable enqueue. Nothing is parsed before the signature has been
//! verified, and 202 is sent only after Redis has the event. The rate limit counts only
//! authentic requests, so a forger cannot use up a real sender's budget.
//!
//! [`accept`] answers with a typed outcome ([`Accepted`]) or error ([`IngestError`]); the
//! handler logs and counts from those, then turns them into the HTTP answer.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{Instrument as _, Span, debug, info, info_span, warn};

use super::{ApiError, AppState, SourceRuntime};
use crate::config::SourceKind;
use crate::event::{EventError, LeaseEvent, check_not_future, is_valid_event_id, parse_event};
use crate::queue::{
    DeliveryJob, EnqueueLimits, EnqueueOutcome, Job, QueueError, RefreshJob, ResolveJob, Target,
};
use crate::signature::{EventIdError, HeaderLookup, SignatureError, Verified};
use crate::sources::buildium;
use crate::sources::buildium::webhook::{Interpretation, Refresh, WebhookError};

/// A webhook taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Accepted {
    /// New: folded into its residents' state and queued (202).
    Queued {
        /// The event id.
        event_id: String,
        /// Convergence jobs queued.
        jobs: usize,
        /// Residents for whom the event was older than what their lease records.
        stale: usize,
        /// Future-dated lease records it replaced.
        overridden: usize,
    },
    /// Seen before, the same event (200); nothing written.
    Duplicate {
        /// The event id.
        event_id: String,
    },
    /// Authentic, but nothing lease-sync acts on (a Buildium `Rental.Updated`, say): 202,
    /// nothing queued.
    Ignored {
        /// The event id.
        event_id: String,
    },
}

impl Accepted {
    fn event_id(&self) -> &str {
        match self {
            Accepted::Queued { event_id, .. }
            | Accepted::Duplicate { event_id }
            | Accepted::Ignored { event_id } => event_id,
        }
    }

    /// `queued` or `duplicate`: the body's `status`, the log line and the metric outcome.
    fn name(&self) -> &'static str {
        match self {
            Accepted::Queued { .. } => "queued",
            Accepted::Duplicate { .. } => "duplicate",
            Accepted::Ignored { .. } => "ignored",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Accepted::Queued { .. } | Accepted::Ignored { .. } => StatusCode::ACCEPTED,
            Accepted::Duplicate { .. } => StatusCode::OK,
        }
    }

    fn body(&self) -> Value {
        match self {
            Accepted::Queued {
                event_id,
                jobs,
                stale,
                ..
            } => json!({"status": "queued", "event_id": event_id, "jobs": jobs, "stale": stale}),
            Accepted::Duplicate { event_id } => {
                json!({"status": "duplicate", "event_id": event_id})
            }
            Accepted::Ignored { event_id } => {
                json!({"status": "ignored", "event_id": event_id, "jobs": 0})
            }
        }
    }
}

/// Why a webhook was not taken in. Each variant has its status and code ([`Self::status`],
/// [`Self::code`]); the message is the variant's `Display`, never holding a secret or the body.
#[derive(Debug, thiserror::Error)]
pub(super) enum IngestError {
    /// No `[[sources]]` entry has the path's name.
    #[error("no source with this name is configured")]
    UnknownSource,
    /// Over `http.body_limit_bytes`, by `Content-Length` or while reading.
    #[error("body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The body did not arrive within `http.read_timeout_ms`.
    #[error("the body did not arrive within {} ms; nothing was accepted", .timeout.as_millis())]
    BodyTimeout {
        /// The limit.
        timeout: Duration,
    },
    /// The connection broke while the body was read.
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// Missing, malformed or unmatched signature, or a stale timestamp.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Over the source's rate limit in this process.
    #[error(
        "source `{source_name}` is over its rate limit; nothing was accepted, retry after {retry_after_secs} s"
    )]
    RateLimited {
        /// The source.
        source_name: String,
        /// Seconds until a request would pass.
        retry_after_secs: u64,
    },
    /// The source's `event_id` setting points at nothing usable.
    #[error(transparent)]
    EventId(#[from] EventIdError),
    /// The id is not 1 to 255 visible ASCII characters.
    #[error("the event id must be 1 to 255 visible ASCII characters")]
    InvalidEventId,
    /// Not JSON, or not a valid event (including one dated beyond the clock skew).
    #[error(transparent)]
    Event(#[from] EventError),
    /// Not a Buildium event, or a lease event without the id it must carry.
    #[error(transparent)]
    Buildium(#[from] WebhookError),
    /// `lease.property_id` is not mapped under the source.
    #[error("lease.property_id `{0}` is not mapped to an OpenApp integration for this source")]
    UnknownProperty(String),
    /// Another event was accepted under this id within the dedupe window.
    #[error(
        "event id `{event_id}` was already accepted from this source for a different event \
         (within the last {}); nothing was queued: a new event needs a new id",
        humantime::format_duration(*.dedupe_ttl)
    )]
    EventIdConflict {
        /// The id.
        event_id: String,
        /// `http.dedupe_ttl_secs`.
        dedupe_ttl: Duration,
    },
    /// Redis could not take the event in time.
    #[error("the queue cannot take the event right now; nothing was accepted, retry later")]
    QueueUnavailable {
        /// `http.retry_after_secs`.
        retry_after_secs: u64,
        /// What Redis said: logged, never sent.
        #[source]
        cause: QueueError,
    },
}

impl IngestError {
    /// The HTTP status.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownSource => StatusCode::NOT_FOUND,
            IngestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IngestError::BodyUnreadable | IngestError::Event(EventError::InvalidJson(_)) => {
                StatusCode::BAD_REQUEST
            }
            IngestError::Signature(_) => StatusCode::UNAUTHORIZED,
            IngestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngestError::EventId(_)
            | IngestError::InvalidEventId
            | IngestError::Event(EventError::Invalid { .. })
            | IngestError::Buildium(_)
            | IngestError::UnknownProperty(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::EventIdConflict { .. } => StatusCode::CONFLICT,
            IngestError::QueueUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code: the body's `error` and the metric outcome.
    pub(super) fn code(&self) -> &'static str {
        match self {
            IngestError::UnknownSource => "unknown_source",
            IngestError::BodyTooLarge { .. } => "body_too_large",
            IngestError::UnsupportedMediaType => "unsupported_media_type",
            IngestError::BodyTimeout { .. } => "request_timeout",
            IngestError::BodyUnreadable => "invalid_body",
            IngestError::Signature(e) => e.code(),
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::EventId(_)
            | IngestError::InvalidEventId
            | IngestError::Event(EventError::Invalid { .. })
            | IngestError::Buildium(_) => "invalid_event",
            IngestError::Event(EventError::InvalidJson(_)) => "invalid_json",
            IngestError::UnknownProperty(_) => "unknown_property",
            IngestError::EventIdConflict { .. } => "event_id_conflict",
            IngestError::QueueUnavailable { .. } => "queue_unavailable",
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            IngestError::RateLimited {
                retry_after_secs, ..
            }
            | IngestError::QueueUnavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The JSON rejection sent to the sender.
    fn to_api_error(&self) -> ApiError {
        let message = match self {
            // The parser's own message, without the "body is not valid JSON" prefix.
            IngestError::Event(EventError::InvalidJson(m)) => m.clone(),
            other => other.to_string(),
        };
        ApiError {
            retry_after_secs: self.retry_after_secs(),
            ..ApiError::new(self.status(), self.code(), message)
        }
    }
}

/// The handler. Every outcome is logged once, with the source and, once known, the event id.
pub(super) async fn receive(
    State(state): State<AppState>,
    source: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let started = std::time::Instant::now();
    let source_name = source.map(|Path(s)| s).unwrap_or_default();
    // The path is the sender's: an unknown name is logged escaped and cut short, so it
    // cannot forge log lines, and is `unknown` as a field.
    let known = state.sources.contains_key(&source_name);
    let shown = crate::telemetry::metrics::source_label(&source_name, known);
    // Every line about this request, here and below, carries these fields once known.
    let span = info_span!(
        "webhook",
        source = %shown,
        event.id = tracing::field::Empty,
        lease.id = tracing::field::Empty,
    );
    let result = accept(&state, &source_name, &headers, body)
        .instrument(span.clone())
        .await;
    record_metrics(&shown, &result, started.elapsed());
    let _entered = span.enter();
    match &result {
        Ok(accepted) => {
            state.note_event(&source_name);
            let jobs = match accepted {
                Accepted::Queued { jobs, .. } => Some(*jobs),
                Accepted::Duplicate { .. } | Accepted::Ignored { .. } => None,
            };
            info!(
                event.id = accepted.event_id(),
                http.status = accepted.status().as_u16(),
                jobs,
                "webhook {}",
                accepted.name()
            );
        }
        Err(e @ IngestError::QueueUnavailable { cause, .. }) => warn!(
            http.status = e.status().as_u16(),
            code = e.code(),
            "webhook not accepted: {e}: {cause}"
        ),
        // A sender reusing an id for another event is a bug on its side that would otherwise
        // lose the second event: worth a warning, not just a rejection line.
        Err(e @ IngestError::EventIdConflict { .. }) => warn!(
            http.status = e.status().as_u16(),
            code = e.code(),
            "webhook rejected: {e}"
        ),
        Err(e) if known => info!(
            http.status = e.status().as_u16(),
            code = e.code(),
            "webhook rejected: {e}"
        ),
        Err(e) => {
            let requested: String = source_name.chars().take(64).collect();
            info!(http.status = e.status().as_u16(), code = e.code(), requested = ?requested, "webhook rejected: {e}");
        }
    }
    match result {
        Ok(accepted) => Ok((accepted.status(), Json(accepted.body()))),
        Err(e) => Err(e.to_api_error()),
    }
}

/// Counts the webhook by source and outcome and times it; see [`crate::telemetry::metrics`].
fn record_metrics(source: &str, result: &Result<Accepted, IngestError>, elapsed: Duration) {
    use crate::telemetry::metrics::{
        FUTURE_VERSIONS_OVERRIDDEN, INGEST_DURATION, STALE_EVENTS, WEBHOOKS,
    };
    let source = source.to_owned();
    let (outcome, class) = match result {
        Ok(Accepted::Duplicate { .. }) => ("duplicate", "duplicate"),
        Ok(Accepted::Ignored { .. }) => ("ignored", "accepted"),
        Ok(Accepted::Queued {
            stale, overridden, ..
        }) => {
            if *stale > 0 {
                metrics::counter!(STALE_EVENTS, "source" => source.clone())
                    .increment(*stale as u64);
            }
            if *overridden > 0 {
                metrics::counter!(FUTURE_VERSIONS_OVERRIDDEN, "source" => source.clone())
                    .increment(*overridden as u64);
            }
            ("accepted", "accepted")
        }
        Err(e) if e.status().is_server_error() => (e.code(), "unavailable"),
        Err(e) => (e.code(), "rejected"),
    };
    metrics::counter!(WEBHOOKS, "source" => source, "outcome" => outcome).increment(1);
    metrics::histogram!(INGEST_DURATION, "outcome" => class).record(elapsed.as_secs_f64());
}

async fn accept(
    state: &AppState,
    source_name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, IngestError> {
    let source = state
        .sources
        .get(source_name)
        .ok_or(IngestError::UnknownSource)?;
    let (raw, verified) = authentic_body(state, source, headers, body).await?;
    let accepted = match source.kind {
        SourceKind::LeaseSync => ingest_lease_event(state, source, headers, &raw, &verified).await,
        SourceKind::Buildium => {
            ingest_buildium_event(state, source, headers, &raw, &verified).await
        }
    }?;
    // A duplicate waits too: the first delivery may have been refused before its replicas
    // confirmed, and this answer acknowledges it.
    if matches!(
        accepted,
        Accepted::Queued { .. } | Accepted::Duplicate { .. }
    ) {
        let (replicas, timeout) = state.wait_replicas;
        state
            .queue
            .wait_for_replicas(replicas, timeout)
            .await
            .map_err(|cause| IngestError::QueueUnavailable {
                retry_after_secs: state.http.retry_after.as_secs(),
                cause,
            })?;
    }
    Ok(accepted)
}

/// A Buildium event: a cue to read a lease (or a tenant's leases) again. Buildium waits 10 s
/// at most, so ingest never calls Buildium: it durably queues a refresh, deduplicated by the
/// body's digest (Buildium sends no event id), and answers.
async fn ingest_buildium_event(
    state: &AppState,
    source: &SourceRuntime,
    headers: &HeaderMap,
    raw: &[u8],
    verified: &Verified,
) -> Result<Accepted, IngestError> {
    let event_id = source.verifier.event_id(verified, headers, raw)?;
    Span::current().record("event.id", event_id.as_str());
    let event = buildium::webhook::parse(raw)?;
    let Interpretation::Refresh(refresh) = event.interpret()? else {
        debug!(event.name = %event.name, "Buildium event not about leases; ignored");
        return Ok(Accepted::Ignored { event_id });
    };
    if let Refresh::Lease { lease_id } = refresh {
        Span::current().record("lease.id", lease_id);
    }
    let job = Job::Refresh(RefreshJob::new(&source.name, &event_id, refresh, None));
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let limits = EnqueueLimits {
        dedupe_ttl: state.http.dedupe_ttl,
        max_clock_skew: source.max_clock_skew,
        timeout: state.enqueue_timeout(),
    };
    let outcome = state
        .queue
        .enqueue_jobs(&source.name, &event_id, &body, &[job], limits)
        .await
        .map_err(|cause| IngestError::QueueUnavailable {
            retry_after_secs: state.http.retry_after.as_secs(),
            cause,
        })?;
    Ok(match outcome {
        EnqueueOutcome::Queued { jobs, .. } => Accepted::Queued {
            event_id,
            jobs,
            stale: 0,
            overridden: 0,
        },
        // The id is the body's digest: the same id is always the same body.
        EnqueueOutcome::Duplicate | EnqueueOutcome::Conflict => Accepted::Duplicate { event_id },
    })
}

/// The body of a request to `source`, once it is known to be authentic and within the
/// source's rate limit: size, media type, the body read within the read timeout, the
/// signature over the raw bytes, then the rate limit (so only authentic requests count).
async fn authentic_body(
    state: &AppState,
    source: &SourceRuntime,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Verified), IngestError> {
    let limit = state.http.body_limit_bytes.get();
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(IngestError::BodyTooLarge { limit });
    }
    check_media_type(headers)?;
    let timeout = state.http.read_timeout;
    let raw = match tokio::time::timeout(timeout, read_body(body, limit)).await {
        Err(_) => return Err(IngestError::BodyTimeout { timeout }),
        Ok(Err(ReadError::TooLarge)) => return Err(IngestError::BodyTooLarge { limit }),
        Ok(Err(ReadError::Io)) => return Err(IngestError::BodyUnreadable),
        Ok(Ok(raw)) => raw,
    };

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let verified = source.verifier.verify(headers, &raw, now)?;

    if let Some(limiter) = &source.rate_limiter
        && let Err(wait) = limiter.check()
    {
        let retry_after_secs = wait
            .wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        return Err(IngestError::RateLimited {
            source_name: source.name.clone(),
            retry_after_secs,
        });
    }
    Ok((raw, verified))
}

/// A lease-sync event v1: its id, schema and time checked, folded into its residents' state
/// and their convergences queued, in one step.
async fn ingest_lease_event(
    state: &AppState,
    source: &SourceRuntime,
    headers: &HeaderMap,
    raw: &[u8],
    verified: &Verified,
) -> Result<Accepted, IngestError> {
    let event_id = source.verifier.event_id(verified, headers, raw)?;
    if !is_valid_event_id(&event_id) {
        // Not recorded: an invalid id is not worth a log field (it may be anything).
        return Err(IngestError::InvalidEventId);
    }
    Span::current().record("event.id", event_id.as_str());
    let event = parse_event(raw, &event_id)?;
    Span::current().record("lease.id", event.lease.id.as_str());
    check_not_future(&event, OffsetDateTime::now_utc(), source.max_clock_skew)?;
    let jobs = jobs_for(source, &event)?;

    let dedupe_ttl = state.http.dedupe_ttl;
    let limits = EnqueueLimits {
        dedupe_ttl,
        max_clock_skew: source.max_clock_skew,
        timeout: state.enqueue_timeout(),
    };
    let outcome = if event.residents_by_email.is_empty() {
        state
            .queue
            .enqueue_event(&source.name, &event, &jobs, limits)
            .await
    } else {
        // Emails are resolved to OpenApp users by a worker, which then folds the event;
        // ingest never calls OpenApp.
        let job = Job::Resolve(ResolveJob::new(&source.name, &event));
        match serde_json::to_value(&event) {
            Ok(body) => {
                state
                    .queue
                    .enqueue_jobs(&source.name, &event.id, &body, &[job], limits)
                    .await
            }
            Err(e) => Err(e.into()),
        }
    }
    .map_err(|cause| IngestError::QueueUnavailable {
        retry_after_secs: state.http.retry_after.as_secs(),
        cause,
    })?;
    match outcome {
        EnqueueOutcome::Queued {
            jobs,
            stale,
            overridden,
        } => {
            if overridden > 0 {
                warn!(
                    overridden,
                    "replaced {overridden} lease record(s) dated beyond the source's clock skew"
                );
            }
            Ok(Accepted::Queued {
                event_id: event.id,
                jobs,
                stale,
                overridden,
            })
        }
        EnqueueOutcome::Duplicate => Ok(Accepted::Duplicate { event_id: event.id }),
        EnqueueOutcome::Conflict => Err(IngestError::EventIdConflict {
            event_id: event.id,
            dedupe_ttl,
        }),
    }
}

fn check_media_type(headers: &HeaderMap) -> Result<(), IngestError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(IngestError::UnsupportedMediaType)
    }
}

enum ReadError {
    TooLarge,
    Io,
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ReadError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ReadError::TooLarge),
        Err(_) => Err(ReadError::Io),
    }
}

/// Header values that are not visible ASCII are handed to the scheme as a value that cannot
/// verify, never as a reason to fail the request with a 5xx.
impl HeaderLookup for HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"))
    }
}

/// One job per resident, addressed to the OpenApp integration of the event's property.
fn jobs_for(source: &SourceRuntime, event: &LeaseEvent) -> Result<Vec<DeliveryJob>, IngestError> {
    let property = source
        .properties
        .get(&event.lease.property_id)
        .ok_or_else(|| IngestError::UnknownProperty(event.lease.property_id.clone()))?;
    let role = property.effective_role();
    let target = Target {
        org_id: &property.org_id,
        integration_id: &property.integration_id,
        role: &role,
    };
    Ok(event
        .residents
        .iter()
        .map(|r| DeliveryJob::for_event(event, &source.name, &r.openapp_user_id, target, None))
        .collect())
}
