//! `POST /webhooks/{source}`: verify, parse, enqueue, answer.
//!
//! Order of checks: source → size → media type → signature over the raw bytes → event
//! schema → property mapping → durable enqueue. Nothing is parsed before the signature
//! has been verified, and 202 is sent only after Redis has the event.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{ApiError, AppState, SourceRuntime};
use crate::event::{EventError, LeaseEvent, is_valid_event_id, parse_event};
use crate::queue::{DeliveryJob, EnqueueOutcome, Target};
use crate::signature::standard_webhooks::{
    ID_HEADER, SIGNATURE_HEADER, SignedHeaders, TIMESTAMP_HEADER,
};

/// The handler. Every outcome is logged once, with the source and, once known, the event id.
pub(super) async fn receive(
    State(state): State<AppState>,
    source: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let source_name = source.map(|Path(s)| s).unwrap_or_default();
    let result = accept(&state, &source_name, &headers, body).await;
    match &result {
        Ok((status, body)) => info!(
            source = %source_name,
            event.id = body["event_id"].as_str().unwrap_or_default(),
            http.status = status.as_u16(),
            jobs = body["jobs"].as_u64(),
            "webhook {}", body["status"].as_str().unwrap_or_default()
        ),
        Err(e) if e.status.is_server_error() => {
            warn!(source = %source_name, http.status = e.status.as_u16(), code = e.code, "webhook not accepted: {}", e.message)
        }
        Err(e) => {
            info!(source = %source_name, http.status = e.status.as_u16(), code = e.code, "webhook rejected: {}", e.message)
        }
    }
    result
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

    let limit = state.http.body_limit_bytes;
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
    let raw = read_body(body, limit).await.map_err(|e| match e {
        ReadError::TooLarge => too_large(),
        ReadError::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the request body could not be read",
        ),
    })?;

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let verified = source
        .verifier
        .verify(signed_headers(headers), &raw, now)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;

    if !is_valid_event_id(&verified.id) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            "webhook-id must be 1 to 255 visible ASCII characters",
        ));
    }
    let event = parse_event(&raw, &verified.id).map_err(|e| match e {
        EventError::InvalidJson(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", m),
        invalid @ EventError::Invalid { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            invalid.to_string(),
        ),
    })?;
    let jobs = jobs_for(source, &event)?;

    let outcome = state
        .queue
        .enqueue_event(
            &source.name,
            &event,
            &jobs,
            Duration::from_secs(state.http.dedupe_ttl_secs),
            state.enqueue_timeout(),
        )
        .await
        .map_err(|e| {
            warn!(source = %source.name, event.id = %event.id, "could not queue event: {e}");
            ApiError {
                retry_after_secs: Some(state.http.retry_after_secs),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    "the queue cannot take the event right now; nothing was accepted, retry later",
                )
            }
        })?;
    Ok(match outcome {
        EnqueueOutcome::Queued { jobs, stale } => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "queued", "event_id": event.id, "jobs": jobs, "stale": stale})),
        ),
        EnqueueOutcome::Duplicate => (
            StatusCode::OK,
            Json(json!({"status": "duplicate", "event_id": event.id})),
        ),
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

/// Header values that are not visible ASCII are treated as absent-or-invalid by the scheme,
/// never as a reason to fail the request with a 5xx.
fn signed_headers(headers: &HeaderMap) -> SignedHeaders<'_> {
    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    SignedHeaders {
        id: get(ID_HEADER),
        timestamp: get(TIMESTAMP_HEADER),
        signature: get(SIGNATURE_HEADER),
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
