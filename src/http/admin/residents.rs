//! Admin handlers for residents (state, history) and integrations (list, pause, resume).
//!
//! Path ids never shape a Redis key unless they could have been written: an integration
//! must be configured and a user id must be a valid OpenApp path id, otherwise the answer is
//! 404 `not_found` like any unknown resident.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::info;
use utoipa::IntoParams;

use super::AdminState;
use super::auth::Actor;
use super::error::{AdminError, shown};
use super::handlers::{parse_limit, query_rejection, show_emails};
use super::openapi::{ErrorBody, HistoryDoc, IntegrationStatusDoc, PauseChangeDoc, ResidentDoc};
use crate::event::is_valid_path_id;
use crate::history::HistoryEntry;
use crate::http::ApiError;
use crate::integrations::{IntegrationError, IntegrationStatus, PauseChange};
use crate::queue::now_ms;
use crate::resident::{Desired, ResidentState};

/// Query of `GET /admin/residents/{integration_id}/{user_id}/history`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    /// Most entries, newest first: 1 to 1000 (default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
    /// `true` to show emails in full (personal data; masked by default).
    #[param(value_type = Option<bool>)]
    show_emails: Option<String>,
}

/// One resident's history, newest first.
#[derive(Debug, Serialize)]
pub(super) struct History {
    integration_id: String,
    user_id: String,
    entries: Vec<HistoryEntry>,
}

/// What lease-sync knows about one resident now.
#[derive(Debug, Serialize)]
pub(super) struct ResidentView {
    state: ResidentState,
    desired: Desired,
    reason: String,
    next_transition: Option<i64>,
    integration_paused: bool,
    /// A worker converging the resident now (it holds their lock), or `None`.
    converging: Option<Converging>,
}

/// A worker holds the resident's lock: it is converging them now. A lock whose worker died
/// keeps other workers off the resident until it lapses.
#[derive(Debug, Serialize)]
pub(super) struct Converging {
    /// Until the lock lapses unless its worker renews it (ms).
    lock_remaining_ms: u64,
}

/// The resident path, checked: 404 unless it could name a resident.
fn resident_path(
    state: &AdminState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let Path((integration_id, user_id)) = path.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    })?;
    if !state.integrations.is_configured(&integration_id) || !is_valid_path_id(&user_id) {
        return Err(no_resident(&integration_id, &user_id));
    }
    Ok((integration_id, user_id))
}

fn no_resident(integration_id: &str, user_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "lease-sync knows no user `{}` in integration `{}`",
            shown(user_id),
            shown(integration_id)
        ),
    )
}

/// What lease-sync knows about one resident: their leases, what OpenApp should show and
/// why, what it last applied, and whether their integration is paused.
#[utoipa::path(
    get,
    path = "/admin/residents/{integration_id}/{user_id}",
    tag = "residents",
    params(
        ("integration_id" = String, Path, description = "A configured OpenApp integration id."),
        ("user_id" = String, Path, description = "The OpenApp user id."),
    ),
    responses(
        (status = 200, description = "The resident's state.", body = ResidentDoc),
        (status = 404, description = "No such integration is configured, or lease-sync holds no state for this user in it (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_resident(
    State(state): State<AdminState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ResidentView>, AdminError> {
    let (integration_id, user_id) = resident_path(&state, path)?;
    let Some(resident) = state.queue.resident(&integration_id, &user_id).await? else {
        return Err(no_resident(&integration_id, &user_id).into());
    };
    let paused = state.queue.paused().await?.contains_key(&integration_id);
    let converging = state
        .queue
        .resident_lock(&integration_id, &user_id)
        .await?
        .map(|lock| Converging {
            lock_remaining_ms: lock.remaining_ms,
        });
    let now = now_ms();
    Ok(Json(ResidentView {
        desired: resident.desired(now),
        reason: resident.explain(now),
        next_transition: resident.next_transition(now),
        state: resident,
        integration_paused: paused,
        converging,
    }))
}

/// One resident's history, newest first: every event folded, email resolved, OpenApp call
/// (method, status, request id, latency) with the decision it carried out and what followed
/// (delivered, retry, dead letter), hold, replay, purge, lease reset, and their integration's
/// pauses and resumes. Kept per `[audit]`; emails masked unless `show_emails=true`.
#[utoipa::path(
    get,
    path = "/admin/residents/{integration_id}/{user_id}/history",
    tag = "residents",
    params(
        ("integration_id" = String, Path, description = "A configured OpenApp integration id."),
        ("user_id" = String, Path, description = "The OpenApp user id."),
        HistoryQuery,
    ),
    responses(
        (status = 200, description = "The history, newest first (empty when nothing was recorded).", body = HistoryDoc),
        (status = 400, description = "A query parameter is invalid (`invalid_query`).", body = ErrorBody),
        (status = 404, description = "No such integration is configured, or the user id is not a valid OpenApp id (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn resident_history(
    State(state): State<AdminState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, AdminError> {
    let (integration_id, user_id) = resident_path(&state, path)?;
    let Query(query) = query.map_err(query_rejection)?;
    let limit = parse_limit(query.limit)?;
    let show = show_emails(query.show_emails)?;
    let entries = state
        .queue
        .history(&integration_id, &user_id, limit)
        .await?;
    Ok(Json(History {
        integration_id,
        user_id,
        entries: if show {
            entries
        } else {
            entries.into_iter().map(HistoryEntry::masked).collect()
        },
    }))
}

/// The configured integrations: paused or not (by whom, since when), and the convergences
/// held for each.
#[utoipa::path(
    get,
    path = "/admin/integrations",
    tag = "integrations",
    responses(
        (status = 200, description = "Every configured integration, and any paused one no longer configured.", body = Vec<IntegrationStatusDoc>),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_integrations(
    State(state): State<AdminState>,
) -> Result<Json<Vec<IntegrationStatus>>, AdminError> {
    Ok(Json(state.integrations.list().await?))
}

/// Pauses an integration: its residents' convergences are held (no OpenApp call, no attempt
/// spent, no dead letter) until it is resumed; webhooks are still accepted and folded. A call
/// under way finishes. Needs the `admin` scope; audited. Pausing a paused integration changes
/// nothing (`changed: false`).
#[utoipa::path(
    post,
    path = "/admin/integrations/{id}/pause",
    tag = "integrations",
    params(("id" = String, Path, description = "A configured OpenApp integration id.")),
    responses(
        (status = 200, description = "Paused; an audit record was written if it was not already.", body = PauseChangeDoc),
        (status = 404, description = "No configured building maps to this integration (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn pause_integration(
    State(state): State<AdminState>,
    actor: Actor,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PauseChange>, AdminError> {
    let id = integration_path(path)?;
    let change = state
        .integrations
        .pause(&id, actor.as_str())
        .await
        .map_err(integration_error)?;
    info!(integration_id = %id, actor = actor.as_str(), changed = change.changed, "integration paused");
    Ok(Json(change))
}

/// Resumes an integration and releases its held convergences to the ready list; each
/// converges its resident to what their state says now. Needs the `admin` scope; audited.
/// Resuming an integration that is not paused releases anything still held (`changed: false`).
#[utoipa::path(
    post,
    path = "/admin/integrations/{id}/resume",
    tag = "integrations",
    params(("id" = String, Path, description = "A configured OpenApp integration id (or a paused one no longer configured).")),
    responses(
        (status = 200, description = "Resumed; `released` held convergences are queued again.", body = PauseChangeDoc),
        (status = 404, description = "No configured building maps to this integration and it is not paused (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn resume_integration(
    State(state): State<AdminState>,
    actor: Actor,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PauseChange>, AdminError> {
    let id = integration_path(path)?;
    let change = state
        .integrations
        .resume(&id, actor.as_str())
        .await
        .map_err(integration_error)?;
    info!(integration_id = %id, actor = actor.as_str(), released = change.released, "integration resumed");
    Ok(Json(change))
}

fn integration_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    })?;
    if !is_valid_path_id(&id) {
        return Err(no_integration(&id));
    }
    Ok(id)
}

fn no_integration(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no configured building maps to integration `{}`", shown(id)),
    )
}

fn integration_error(error: IntegrationError) -> AdminError {
    match error {
        IntegrationError::NotFound(id) => no_integration(&id).into(),
        IntegrationError::Queue(e) => e.into(),
    }
}
