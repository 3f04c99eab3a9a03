//! The admin handlers: list, show, replay and purge dead letters, queue counts, audit log.
//!
//! Query strings and bodies are taken as raw strings and bytes and parsed here, so that
//! every mistake is answered as JSON naming what was wrong (axum's own rejections are plain
//! text). Redis failures are passed up as [`AdminError::Queue`], which logs them once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::{error, info};
use utoipa::{IntoParams, ToSchema};

use super::AdminState;
use super::auth::Actor;
use super::error::{AdminError, invalid_body, invalid_query, no_dead_letter, shown};
use super::openapi::{
    AuditRecordDoc, ConflictDoc, DeadLetterDoc, DeadLetterFilterDoc, DeadReasonDoc, ErrorBody,
    EventTypeDoc, PageDoc, QueueCountsDoc, ResetReportDoc,
};
use crate::dead_letters::{
    AuditRecord, DeadLetter, DeadLetterFilter, DeadLetters, Page, ReplayOutcome, is_delivery_id,
};
use crate::http::ApiError;
use crate::leases::{LeaseError, ResetReport};
use crate::queue::conflicts::Conflict;
use crate::queue::{QueueCounts, QueueError, now_ms};

/// Page size when the caller names none.
const DEFAULT_LIMIT: usize = 50;

/// Largest page (and audit listing) one request may ask for; keeps each answer small.
const MAX_LIMIT: usize = 1_000;

/// Replays issued at once by a bulk replay. Each batch is awaited whole before the next, so
/// when Redis fails mid-way no replay is left in doubt and the audit record stays exact.
const REPLAY_BATCH: usize = 8;

/// Query of `GET /admin/dead-letters`. Every field is a string, parsed by
/// [`ListQuery::parse`]; an empty value counts as absent.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only dead letters of this source.
    source: Option<String>,
    /// Only this event type.
    #[serde(rename = "type")]
    #[param(inline, value_type = Option<EventTypeDoc>)]
    event_type: Option<String>,
    /// Only dead letters given up for this reason.
    #[param(inline, value_type = Option<DeadReasonDoc>)]
    reason: Option<String>,
    /// Only dead letters given up within this long before now (`30m`, `24h`, `7d`).
    #[param(example = "24h")]
    since: Option<String>,
    /// Only dead letters given up at least this long ago (`30m`, `24h`, `7d`).
    #[param(example = "30d")]
    older_than: Option<String>,
    /// Most entries to return.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 50)]
    limit: Option<String>,
    /// Matching entries to skip: the `next_offset` of the previous page.
    #[param(value_type = Option<u64>, minimum = 0, default = 0)]
    offset: Option<String>,
}

/// A listing request, parsed.
struct ListRequest {
    filter: DeadLetterFilter,
    offset: usize,
    limit: usize,
}

impl ListQuery {
    fn parse(self) -> Result<ListRequest, ApiError> {
        let filter = DeadLetterFilter {
            source: present(self.source),
            event_type: parse_param("type", self.event_type, str::parse)?,
            reason: parse_param("reason", self.reason, str::parse)?,
            since: parse_param("since", self.since, parse_duration)?,
            older_than: parse_param("older_than", self.older_than, parse_duration)?,
        };
        let offset = parse_param("offset", self.offset, |v| {
            v.parse::<usize>()
                .map_err(|_| "expected a non-negative integer")
        })?
        .unwrap_or(0);
        Ok(ListRequest {
            filter,
            offset,
            limit: parse_limit(self.limit)?,
        })
    }
}

/// Query of `GET /admin/audit`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Most records to return, newest first.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 50)]
    limit: Option<String>,
}

/// Body of `POST /admin/dead-letters/replay`. Unknown fields are refused: a misspelt
/// `dry_run` must not turn a rehearsal into a real replay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkReplayRequest {
    /// Which dead letters to replay; `{}` matches every one.
    #[schema(value_type = DeadLetterFilterDoc)]
    filter: DeadLetterFilter,
    /// Only report what would be replayed; change nothing.
    #[serde(default)]
    dry_run: bool,
    /// Replay at most this many of the matches (newest first).
    #[schema(minimum = 1)]
    limit: Option<usize>,
}

/// Answer of `POST /admin/dead-letters/{id}/replay`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReplayOneResponse {
    /// The delivery id.
    id: String,
    /// Always `replayed`: other outcomes are answered as errors.
    #[schema(value_type = String, example = "replayed")]
    outcome: ReplayOutcome,
}

/// Answer of `POST /admin/dead-letters/replay`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BulkReplayResponse {
    /// Whether this was a dry run (nothing changed).
    dry_run: bool,
    /// Dead letters matching the filter, before `limit` is applied.
    matched: usize,
    /// Dead letters queued again (absent on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<usize>,
    /// Matches that were no longer dead letters when their turn came, because someone else
    /// replayed or purged them meanwhile (absent on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<usize>,
    /// On a dry run, the ids that would be replayed; otherwise the ids replayed.
    ids: Vec<String>,
}

/// Lists dead letters, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/admin/dead-letters",
    tag = "dead letters",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of matching dead letters, newest first.", body = PageDoc),
        (status = 400, description = "A query parameter is invalid (`invalid_query`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_dead_letters(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, AdminError> {
    let Query(query) = query.map_err(query_rejection)?;
    let request = query.parse()?;
    let page = state
        .dead_letters
        .list(&request.filter, request.offset, request.limit)
        .await?;
    Ok(Json(page))
}

/// Query of `GET /admin/dead-letters/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ShowQuery {
    /// `true` to show the emails and names of residents known by email in full (personal
    /// data; masked by default).
    #[param(value_type = Option<bool>)]
    show_emails: Option<String>,
}

/// Shows one dead letter: the job, the event as received and every attempt. Emails and
/// names of residents known by email are masked unless `show_emails=true`.
#[utoipa::path(
    get,
    path = "/admin/dead-letters/{id}",
    tag = "dead letters",
    params(("id" = String, Path, description = "The delivery id."), ShowQuery),
    responses(
        (status = 200, description = "The dead letter.", body = DeadLetterDoc),
        (status = 400, description = "A query parameter is invalid (`invalid_query`).", body = ErrorBody),
        (status = 404, description = "No dead letter has this id (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_dead_letter(
    State(state): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Json<DeadLetter>, AdminError> {
    let id = delivery_id(id)?;
    let Query(query) = query.map_err(query_rejection)?;
    let show = show_emails(query.show_emails)?;
    match state.dead_letters.get(&id).await? {
        Some(dead_letter) if show => Ok(Json(dead_letter)),
        Some(dead_letter) => Ok(Json(dead_letter.masked())),
        None => Err(no_dead_letter(&id).into()),
    }
}

/// The `show_emails` query parameter: absent or `false`, or `true`.
pub(super) fn show_emails(value: Option<String>) -> Result<bool, AdminError> {
    match present(value).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => {
            Err(invalid_query("show_emails", format!("`{other}` is not true or false")).into())
        }
    }
}

/// Replays one dead letter: queues it again with a fresh attempt budget. Of concurrent
/// replays of one entry exactly one succeeds; the others get 409. Needs the `admin` scope.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/{id}/replay",
    tag = "dead letters",
    params(("id" = String, Path, description = "The delivery id.")),
    responses(
        (status = 200, description = "Queued again; an audit record was written.", body = ReplayOneResponse),
        (status = 404, description = "No delivery has this id (`not_found`).", body = ErrorBody),
        (status = 409, description = "The delivery is no longer a dead letter: already replayed, or delivered (`not_dead_letter`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn replay_dead_letter(
    State(state): State<AdminState>,
    actor: Actor,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ReplayOneResponse>, AdminError> {
    let id = delivery_id(id)?;
    match state.dead_letters.replay(&id, actor.as_str()).await? {
        ReplayOutcome::Replayed => {
            info!(dead_letter.id = %id, actor = actor.as_str(), "dead letter replayed");
            write_audit(
                &state.dead_letters,
                &actor,
                "replay",
                vec![id.clone()],
                None,
            )
            .await;
            Ok(Json(ReplayOneResponse {
                id,
                outcome: ReplayOutcome::Replayed,
            }))
        }
        ReplayOutcome::NotDead => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_dead_letter",
            format!("delivery `{id}` is not a dead letter: it was already replayed or delivered"),
        )
        .into()),
        ReplayOutcome::NotFound => Err(no_dead_letter(&id).into()),
    }
}

/// Replays every dead letter matching a filter, or with `dry_run` only lists them. Needs the
/// `admin` scope, even for a dry run.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/replay",
    tag = "dead letters",
    request_body(content = BulkReplayRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What matched, and what was replayed (one audit record for the whole run) or, on a dry run, would be.", body = BulkReplayResponse),
        (status = 400, description = "The body is not a valid request (`invalid_body`).", body = ErrorBody),
        (status = 413, description = "The body is too large (`body_too_large`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn replay_dead_letters(
    State(state): State<AdminState>,
    actor: Actor,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BulkReplayResponse>, AdminError> {
    let request = parse_bulk_request(body)?;
    let mut ids = state.dead_letters.matching_ids(&request.filter).await?;
    let matched = ids.len();
    if let Some(limit) = request.limit {
        ids.truncate(limit);
    }
    if request.dry_run {
        return Ok(Json(BulkReplayResponse {
            dry_run: true,
            matched,
            replayed: None,
            skipped: None,
            ids,
        }));
    }
    let run = replay_all(&state.dead_letters, &ids, &actor).await;
    if !run.replayed.is_empty() {
        info!(
            actor = actor.as_str(),
            matched,
            replayed = run.replayed.len(),
            skipped = run.skipped,
            "dead letters replayed in bulk"
        );
        // Written even when Redis failed part-way: the record must list what did happen.
        write_audit(
            &state.dead_letters,
            &actor,
            "replay",
            run.replayed.clone(),
            Some(request.filter),
        )
        .await;
    }
    if let Some(failure) = run.failure {
        return Err(failure.into());
    }
    Ok(Json(BulkReplayResponse {
        dry_run: false,
        matched,
        replayed: Some(run.replayed.len()),
        skipped: Some(run.skipped),
        ids: run.replayed,
    }))
}

/// Deletes one dead letter for good. Needs the `admin` scope.
#[utoipa::path(
    delete,
    path = "/admin/dead-letters/{id}",
    tag = "dead letters",
    params(("id" = String, Path, description = "The delivery id.")),
    responses(
        (status = 204, description = "Deleted; an audit record was written."),
        (status = 404, description = "No dead letter has this id (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn purge_dead_letter(
    State(state): State<AdminState>,
    actor: Actor,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, AdminError> {
    let id = delivery_id(id)?;
    if !state.dead_letters.purge(&id, actor.as_str()).await? {
        return Err(no_dead_letter(&id).into());
    }
    info!(dead_letter.id = %id, actor = actor.as_str(), "dead letter purged");
    write_audit(&state.dead_letters, &actor, "purge", vec![id], None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Queue depths and lifetime counters.
#[utoipa::path(
    get,
    path = "/admin/queue",
    tag = "queue",
    responses((status = 200, description = "Current depths and counters.", body = QueueCountsDoc)),
    security(("bearer" = []))
)]
pub(super) async fn queue_counts(
    State(state): State<AdminState>,
) -> Result<Json<QueueCounts>, AdminError> {
    Ok(Json(state.queue.counts().await?))
}

/// The newest audit records of replays and purges, newest first.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit records, newest first.", body = Vec<AuditRecordDoc>),
        (status = 400, description = "A query parameter is invalid (`invalid_query`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn recent_audit(
    State(state): State<AdminState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, AdminError> {
    let Query(query) = query.map_err(query_rejection)?;
    let limit = parse_limit(query.limit)?;
    Ok(Json(state.dead_letters.recent_audit(limit).await?))
}

/// Forgets lease-sync's record of one lease from one source, for every resident holding
/// it, and converges each of them again (from their other leases); the next event or
/// reconciliation records the lease afresh. Needs the `admin` scope; audited.
#[utoipa::path(
    post,
    path = "/admin/leases/{source}/{lease_id}/reset",
    tag = "leases",
    params(
        ("source" = String, Path, description = "A configured source name."),
        ("lease_id" = String, Path, description = "The lease id, as the source sends it (percent-encoded)."),
    ),
    responses(
        (status = 200, description = "The record was forgotten and the residents queued for convergence; an audit record was written.", body = ResetReportDoc),
        (status = 404, description = "No source has this name (`unknown_source`), or no resident holds a record of this lease from it (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn reset_lease(
    State(state): State<AdminState>,
    actor: Actor,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ResetReport>, AdminError> {
    let Path((source, lease_id)) = path.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    })?;
    match state.leases.reset(&source, &lease_id, actor.as_str()).await {
        Ok(report) => {
            info!(
                source = %source,
                lease.id = %lease_id,
                residents = report.residents.len(),
                actor = actor.as_str(),
                "lease reset"
            );
            Ok(Json(report))
        }
        Err(LeaseError::UnknownSource(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_source",
            format!("no source named `{}` is configured", shown(&source)),
        )
        .into()),
        Err(LeaseError::InvalidLeaseId | LeaseError::NotFound { .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "lease-sync holds no record of lease `{}` from source `{source}`",
                shown(&lease_id)
            ),
        )
        .into()),
        Err(LeaseError::Queue(e)) => Err(e.into()),
    }
}

/// Query of `GET /admin/conflicts`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ConflictsQuery {
    /// Only people this source names.
    source: Option<String>,
    /// `true` to show emails and names in full (personal data; masked by default).
    #[param(value_type = Option<bool>)]
    show_emails: Option<String>,
}

/// Lists the people sources name who have no OpenApp user yet, oldest first, with why
/// (`no_email`, `no_openapp_user`, `ambiguous_email`). Emails and names are masked unless
/// `show_emails=true`.
#[utoipa::path(
    get,
    path = "/admin/conflicts",
    tag = "residents",
    params(ConflictsQuery),
    responses(
        (status = 200, description = "The conflicts, oldest first.", body = Vec<ConflictDoc>),
        (status = 400, description = "A query parameter is invalid (`invalid_query`).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_conflicts(
    State(state): State<AdminState>,
    query: Result<Query<ConflictsQuery>, QueryRejection>,
) -> Result<Json<Vec<Conflict>>, AdminError> {
    let Query(query) = query.map_err(query_rejection)?;
    let show = show_emails(query.show_emails)?;
    let source = present(query.source);
    let conflicts = state.queue.conflicts(source.as_deref()).await?;
    Ok(Json(if show {
        conflicts
    } else {
        conflicts.into_iter().map(Conflict::masked).collect()
    }))
}

/// What a bulk replay did.
pub(super) struct BulkRun {
    /// Ids queued again, in the order they were matched.
    pub(super) replayed: Vec<String>,
    /// Matches that were no longer dead letters.
    pub(super) skipped: usize,
    /// The Redis failure that stopped the run early, if one did.
    pub(super) failure: Option<QueueError>,
}

/// Replays `ids` a batch at a time, stopping after the first batch in which Redis failed.
pub(super) async fn replay_all(
    dead_letters: &DeadLetters,
    ids: &[String],
    actor: &Actor,
) -> BulkRun {
    let mut run = BulkRun {
        replayed: Vec::new(),
        skipped: 0,
        failure: None,
    };
    for batch in ids.chunks(REPLAY_BATCH) {
        let outcomes = futures::future::join_all(
            batch
                .iter()
                .map(|id| dead_letters.replay(id, actor.as_str())),
        )
        .await;
        for (id, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Ok(ReplayOutcome::Replayed) => run.replayed.push(id.clone()),
                Ok(ReplayOutcome::NotDead | ReplayOutcome::NotFound) => run.skipped += 1,
                Err(e) => {
                    run.failure.get_or_insert(e);
                }
            }
        }
        if run.failure.is_some() {
            break;
        }
    }
    run
}

/// Appends an audit record. A failure is logged, not answered: the replay or purge already
/// happened, and an error would invite a retry that finds nothing left to do.
pub(super) async fn write_audit(
    dead_letters: &DeadLetters,
    actor: &Actor,
    action: &str,
    ids: Vec<String>,
    filter: Option<DeadLetterFilter>,
) {
    let record = AuditRecord {
        at: now_ms(),
        actor: actor.as_str().to_owned(),
        action: action.to_owned(),
        ids,
        filter,
        lease: None,
    };
    if let Err(e) = dead_letters.audit(&record).await {
        error!(
            error = %e,
            actor = actor.as_str(),
            action,
            ids = ?record.ids,
            "the {action} was done but its audit record could not be written"
        );
    }
}

/// Parses the body of a bulk replay, answering `invalid_body` (or 413) on any mistake.
fn parse_bulk_request(body: Result<Bytes, BytesRejection>) -> Result<BulkReplayRequest, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            )
        } else {
            invalid_body(rejection.body_text())
        }
    })?;
    // serde_path_to_error names the field at fault (`filter.type: unknown variant …`).
    let request: BulkReplayRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(invalid_body)?;
    if request.limit == Some(0) {
        return Err(invalid_body("`limit` must be at least 1"));
    }
    Ok(request)
}

/// The `{id}` path segment. Anything that is not a delivery id (a ULID) is answered 404
/// before it comes near a Redis key name, so the answer says nothing about which keys exist.
fn delivery_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let id = id.map(|Path(id)| id).map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    })?;
    if !is_delivery_id(&id) {
        return Err(no_dead_letter(&id));
    }
    Ok(id)
}

/// A query string that does not even split into the known parameters (an unknown or
/// repeated parameter): serde's message names the parameter.
pub(super) fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        rejection.body_text(),
    )
}

/// `None` for an absent or empty parameter (`?source=` means no filter, as forms send it).
fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Parses a present parameter with `parse`, naming `name` in the rejection.
fn parse_param<T, E: std::fmt::Display>(
    name: &str,
    value: Option<String>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, ApiError> {
    present(value)
        .map(|v| parse(&v).map_err(|e| invalid_query(name, e)))
        .transpose()
}

/// `24h`-style durations.
fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("expected a duration such as `30m`, `24h` or `7d` ({e})"))
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub(super) fn parse_limit(value: Option<String>) -> Result<usize, ApiError> {
    let limit = parse_param("limit", value, |v| {
        v.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| format!("expected an integer from 1 to {MAX_LIMIT}"))
    })?;
    Ok(limit.unwrap_or(DEFAULT_LIMIT))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::EventType;
    use crate::retry::DeadReason;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let text = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        match Query::<ListQuery>::try_from_uri(&format!("/?{text}").parse().unwrap_or_default()) {
            Ok(Query(q)) => q,
            Err(e) => panic!("query `{text}` does not split: {e}"),
        }
    }

    fn rejected(pairs: &[(&str, &str)]) -> ApiError {
        match query(pairs).parse() {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_full_query_parses_into_a_filter() {
        let request = query(&[
            ("source", "acme"),
            ("type", "lease.ended"),
            ("reason", "crash_loop"),
            ("since", "24h"),
            ("older_than", "30d"),
            ("limit", "1000"),
            ("offset", "7"),
        ])
        .parse()
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            request.filter,
            DeadLetterFilter {
                source: Some("acme".into()),
                event_type: Some(EventType::LeaseEnded),
                reason: Some(DeadReason::CrashLoop),
                since: Some(Duration::from_secs(86_400)),
                older_than: Some(Duration::from_secs(30 * 86_400)),
            }
        );
        assert_eq!((request.limit, request.offset), (1000, 7));
    }

    #[test]
    fn empty_values_are_absent_and_defaults_apply() {
        let request = query(&[("source", ""), ("type", ""), ("since", "")])
            .parse()
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(request.filter, DeadLetterFilter::default());
        assert_eq!((request.limit, request.offset), (DEFAULT_LIMIT, 0));
    }

    #[test]
    fn each_bad_parameter_is_named() {
        for (name, value) in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "ten"),
            ("offset", "-1"),
            ("type", "lease.renewed"),
            ("reason", "tired"),
            ("since", "yesterday"),
            ("older_than", "5"),
        ] {
            let e = rejected(&[(name, value)]);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_query")
            );
            assert!(
                e.message.contains(&format!("`{name}`")),
                "{name}: {}",
                e.message
            );
        }
    }

    #[test]
    fn unknown_parameters_do_not_split() {
        let uri = "/?limt=5".parse().unwrap_or_default();
        assert!(Query::<ListQuery>::try_from_uri(&uri).is_err());
    }

    #[test]
    fn a_bulk_body_must_be_exact() {
        let parse = |text: &str| parse_bulk_request(Ok(Bytes::from(text.to_owned())));
        let ok = parse(r#"{"filter": {"type": "lease.signed", "since": "1h"}, "limit": 3}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!ok.dry_run);
        assert_eq!(ok.limit, Some(3));
        assert_eq!(ok.filter.event_type, Some(EventType::LeaseSigned));
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"filter": {}, "dry-run": true}"#,
            r#"{"filter": {"typ": "lease.signed"}}"#,
            r#"{"filter": {"since": "soon"}}"#,
            r#"{"filter": {}, "limit": 0}"#,
        ] {
            let e = match parse(bad) {
                Ok(r) => panic!("{bad} was accepted as {r:?}"),
                Err(e) => e,
            };
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_body"),
                "{bad}"
            );
        }
    }
}
