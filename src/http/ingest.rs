//! `POST /webhooks/{source}`: verify, parse, enqueue, answer.
//!
//! Order of checks: source → size → media type → body read within the read timeout →
//! signature over the raw bytes → the source's rate limit → event id → event schema →
//! property mapping → durable enqueue. Nothing is parsed before the signature has been
//! verified, and 202 is sent only after Redis has the event. The rate limit counts only
//! authentic requests, so a forger cannot use up a real sender's budget.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{Instrument as _, Span, info, info_span, warn};

use super::{ApiError, AppState, SourceRuntime};
use crate::event::{EventError, LeaseEvent, check_not_future, is_valid_event_id, parse_event};
use crate::queue::{DeliveryJob, EnqueueLimits, EnqueueOutcome, Target};
use crate::signature::HeaderLookup;

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
        Ok((status, body)) => info!(
            event.id = body["event_id"].as_str().unwrap_or_default(),
            http.status = status.as_u16(),
            jobs = body["jobs"].as_u64(),
            "webhook {}",
            body["status"].as_str().unwrap_or_default()
        ),
        Err(e) if e.status.is_server_error() => {
            warn!(
                http.status = e.status.as_u16(),
                code = e.code,
                "webhook not accepted: {}",
                e.message
            );
        }
        // A sender reusing an id for another event is a bug on its side that would otherwise
        // lose the second event: worth a warning, not just a rejection line.
        Err(e) if e.status == StatusCode::CONFLICT => warn!(
            http.status = e.status.as_u16(),
            code = e.code,
            "webhook rejected: {}",
            e.message
        ),
        Err(e) => {
            if known {
                info!(
                    http.status = e.status.as_u16(),
                    code = e.code,
                    "webhook rejected: {}",
                    e.message
                );
            } else {
                let requested: String = source_name.chars().take(64).collect();
                info!(http.status = e.status.as_u16(), code = e.code, requested = ?requested, "webhook rejected: {}", e.message);
            }
        }
    }
    result
}

/// Counts the webhook by source and outcome and times it; see [`crate::telemetry::metrics`].
fn record_metrics(
    source: &str,
    result: &Result<(StatusCode, Json<Value>), ApiError>,
    elapsed: Duration,
) {
    use crate::telemetry::metrics::{INGEST_DURATION, STALE_EVENTS, WEBHOOKS};
    let source = source.to_owned();
    let (outcome, class) = match result {
        Ok((_, body)) if body["status"] == "duplicate" => ("duplicate", "duplicate"),
        Ok((_, body)) => {
            let stale = body["stale"].as_u64().unwrap_or(0);
            if stale > 0 {
                metrics::counter!(STALE_EVENTS, "source" => source.clone()).increment(stale);
            }
            ("accepted", "accepted")
        }
        Err(e) if e.status.is_server_error() => (e.code, "unavailable"),
        Err(e) => (e.code, "rejected"),
    };
    metrics::counter!(WEBHOOKS, "source" => source, "outcome" => outcome).increment(1);
    metrics::histogram!(INGEST_DURATION, "outcome" => class).record(elapsed.as_secs_f64());
}

async fn accept(
    state: &AppState,
    source_name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let source = state.sources.get(source_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_source",
            "no source with this name is configured",
        )
    })?;

    let limit = state.http.body_limit_bytes.get();
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body is larger than {limit} bytes"),
        )
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(too_large());
    }
    check_media_type(headers)?;
    let read_timeout = state.http.read_timeout;
    let raw = match tokio::time::timeout(read_timeout, read_body(body, limit)).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the body did not arrive within {} ms; nothing was accepted",
                    state.http.read_timeout.as_millis()
                ),
            ));
        }
        Ok(read) => read.map_err(|e| match e {
            ReadError::TooLarge => too_large(),
            ReadError::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the request body could not be read",
            ),
        })?,
    };

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let verified = source
        .verifier
        .verify(headers, &raw, now)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;

    if let Some(limiter) = &source.rate_limiter
        && let Err(wait) = limiter.check()
    {
        let secs = wait
            .wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        return Err(ApiError {
            retry_after_secs: Some(secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "source `{}` is over its rate limit; nothing was accepted, retry after {secs} s",
                    source.name
                ),
            )
        });
    }

    let event_id = source
        .verifier
        .event_id(&verified, headers, &raw)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_event",
                e.to_string(),
            )
        })?;
    if !is_valid_event_id(&event_id) {
        // Not recorded: an invalid id is not worth a log field (it may be anything).
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            "the event id must be 1 to 255 visible ASCII characters",
        ));
    }
    Span::current().record("event.id", event_id.as_str());
    let event = parse_event(&raw, &event_id).map_err(|e| match e {
        EventError::InvalidJson(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", m),
        invalid @ EventError::Invalid { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            invalid.to_string(),
        ),
    })?;
    Span::current().record("lease.id", event.lease.id.as_str());
    check_not_future(&event, OffsetDateTime::now_utc(), source.max_clock_skew).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            e.to_string(),
        )
    })?;
    let jobs = jobs_for(source, &event)?;

    let dedupe_ttl = state.http.dedupe_ttl;
    let limits = EnqueueLimits {
        dedupe_ttl,
        max_clock_skew: source.max_clock_skew,
        timeout: state.enqueue_timeout(),
    };
    let outcome = state
        .queue
        .enqueue_event(&source.name, &event, &jobs, limits)
        .await
        .map_err(|e| {
            warn!(source = %source.name, event.id = %event.id, "could not queue event: {e}");
            ApiError {
                retry_after_secs: Some(state.http.retry_after.as_secs()),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    "the queue cannot take the event right now; nothing was accepted, retry later",
                )
            }
        })?;
    Ok(match outcome {
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
                metrics::counter!(
                    crate::telemetry::metrics::FUTURE_VERSIONS_OVERRIDDEN,
                    "source" => source.name.clone()
                )
                .increment(overridden as u64);
            }
            (
                StatusCode::ACCEPTED,
                Json(
                    json!({"status": "queued", "event_id": event.id, "jobs": jobs, "stale": stale}),
                ),
            )
        }
        EnqueueOutcome::Duplicate => (
            StatusCode::OK,
            Json(json!({"status": "duplicate", "event_id": event.id})),
        ),
        EnqueueOutcome::Conflict => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "event_id_conflict",
                format!(
                    "event id `{}` was already accepted from this source for a different event \
                     (within the last {}); nothing was queued: a new event needs a new id",
                    event.id,
                    humantime::format_duration(dedupe_ttl)
                ),
            ));
        }
    })
}

fn check_media_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ))
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
fn jobs_for(source: &SourceRuntime, event: &LeaseEvent) -> Result<Vec<DeliveryJob>, ApiError> {
    let property = source.properties.get(&event.lease.property_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_property",
            format!("lease.property_id `{}` is not mapped to an OpenApp integration for this source", event.lease.property_id),
        )
    })?;
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
