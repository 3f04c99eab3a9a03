//! The `/v1` reads: rate limit, injected faults, authentication, the three lease and tenant
//! operations, pagination and Buildium's error shape.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::time::Instant;

use super::model::{LeaseFacts, LeaseStatus, LeaseType};
use super::{BuildiumSandbox, ReadFault, RecordedRead};

/// Header names of Buildium's API credentials.
pub const CLIENT_ID_HEADER: &str = "x-buildium-client-id";
/// See [`CLIENT_ID_HEADER`].
pub const CLIENT_SECRET_HEADER: &str = "x-buildium-client-secret";

const X_TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");

/// Page size without `limit`.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page; a bigger `limit` is lowered to it.
pub const MAX_LIMIT: usize = 1000;
/// Longest query string; longer ones get `500`, as Buildium documents.
pub const MAX_QUERY_CHARS: usize = 4096;

pub(super) fn routes(sandbox: &BuildiumSandbox) -> Router<BuildiumSandbox> {
    Router::new()
        .route("/v1/leases", get(list_leases))
        .route("/v1/leases/{lease_id}", get(get_lease))
        .route("/v1/leases/tenants/{tenant_id}", get(get_tenant))
        .route_layer(middleware::from_fn_with_state(sandbox.clone(), gate))
}

/// An `ApiErrorResponse`: `{"UserMessage", "ErrorCode", "Errors": [{"Key", "Value"}]}`.
#[derive(Debug)]
pub(super) struct BuildiumError {
    status: StatusCode,
    message: Cow<'static, str>,
    errors: Vec<(String, String)>,
}

impl BuildiumError {
    pub(super) fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    /// A 400 naming the offending parameter.
    fn parameter(key: &str, value: impl Into<String>) -> Self {
        Self {
            errors: vec![(key.to_owned(), value.into())],
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "The request contains invalid parameters.",
            )
        }
    }

    pub(super) fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "The requested resource was not found.",
        )
    }
}

/// `ErrorCode` for a status: its name, as Buildium documents no codes.
fn error_code(status: StatusCode) -> String {
    match status {
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests".to_owned(),
        other => other
            .canonical_reason()
            .unwrap_or("Error")
            .split([' ', '-'])
            .collect(),
    }
}

impl IntoResponse for BuildiumError {
    fn into_response(self) -> Response {
        let errors: Vec<_> = self
            .errors
            .iter()
            .map(|(key, value)| json!({ "Key": key, "Value": value }))
            .collect();
        let body = json!({
            "UserMessage": self.message,
            "ErrorCode": error_code(self.status),
            "Errors": errors,
        });
        (self.status, Json(body)).into_response()
    }
}

/// In front of every read: the rate limit, an injected fault, the query length and the
/// credentials, in that order; then the read is recorded with its status.
async fn gate(State(sandbox): State<BuildiumSandbox>, request: Request, next: Next) -> Response {
    let at_ms = crate::unix_ms();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let client_id = request
        .headers()
        .get(CLIENT_ID_HEADER)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());

    let (refusal, delay) = sandbox.admit(request.headers(), query.as_deref());
    let response = match refusal {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = response.status().as_u16();
    tracing::info!(%method, %path, query = query.as_deref(), status, "sandbox Buildium read");
    sandbox.lock().record_read(RecordedRead {
        method,
        path,
        query,
        client_id,
        status,
        at_ms,
    });
    response
}

impl BuildiumSandbox {
    /// The checks before a read; returns the refusal if any, and the delay to add.
    fn admit(&self, headers: &HeaderMap, query: Option<&str>) -> (Option<BuildiumError>, Duration) {
        let mut state = self.lock();
        let now = Instant::now();
        if state.rate_limit > 0 {
            while state
                .window
                .front()
                .is_some_and(|start| now.duration_since(*start) >= Duration::from_secs(1))
            {
                state.window.pop_front();
            }
            if state.window.len() >= usize::try_from(state.rate_limit).unwrap_or(usize::MAX) {
                let error = BuildiumError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests. Retry after a short interval.",
                );
                return (Some(error), Duration::ZERO);
            }
            state.window.push_back(now);
        }
        let mut delay = Duration::ZERO;
        let status = match state.scripted_read_faults.pop_front() {
            Some(ReadFault::Status(status)) => Some(status),
            Some(ReadFault::Delay(extra)) => {
                delay = extra;
                None
            }
            // `random::<f64>()` is in [0, 1): rate 1 always fires, 0 and NaN never do.
            None => state
                .read_faults
                .status
                .filter(|_| rand::random::<f64>() < state.read_faults.rate),
        };
        drop(state);
        if let Some(status) = status {
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|status| status.as_u16() >= 200)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let error = BuildiumError::new(status, "Injected fault.");
            return (Some(error), delay);
        }
        if query.is_some_and(|query| query.len() > MAX_QUERY_CHARS) {
            let error = BuildiumError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The query string is longer than 4096 characters.",
            );
            return (Some(error), delay);
        }
        (self.authenticate(headers).err(), delay)
    }

    /// Both credential headers, non-empty, and matching the configured pair if there is one.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), BuildiumError> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|text| !text.is_empty())
        };
        let unauthorized = || {
            BuildiumError::new(
                StatusCode::UNAUTHORIZED,
                "The API client ID and secret weren't provided or are not valid.",
            )
        };
        let (Some(id), Some(secret)) = (text(CLIENT_ID_HEADER), text(CLIENT_SECRET_HEADER)) else {
            return Err(unauthorized());
        };
        match &self.shared.credentials {
            Some(expected) if expected.client_id != id || expected.client_secret != secret => {
                Err(unauthorized())
            }
            _ => Ok(()),
        }
    }
}

/// An int32 id from the path; anything else matches no route in Buildium, hence `404`.
fn path_id(text: &str) -> Result<i32, BuildiumError> {
    text.parse().map_err(|_| BuildiumError::not_found())
}

async fn get_lease(
    State(sandbox): State<BuildiumSandbox>,
    Path(lease_id): Path<String>,
) -> Result<Response, BuildiumError> {
    let lease_id = path_id(&lease_id)?;
    let message = sandbox
        .lock()
        .store
        .lease_message(lease_id)
        .ok_or_else(BuildiumError::not_found)?;
    Ok(Json(message).into_response())
}

async fn get_tenant(
    State(sandbox): State<BuildiumSandbox>,
    Path(tenant_id): Path<String>,
) -> Result<Response, BuildiumError> {
    let tenant_id = path_id(&tenant_id)?;
    let message = sandbox
        .lock()
        .store
        .tenant_message(tenant_id)
        .ok_or_else(BuildiumError::not_found)?;
    Ok(Json(message).into_response())
}

async fn list_leases(
    State(sandbox): State<BuildiumSandbox>,
    request: Request,
) -> Result<Response, BuildiumError> {
    let query = ListQuery::parse(request.uri().query().unwrap_or_default())?;
    let state = sandbox.lock();
    let mut facts: Vec<LeaseFacts> = state
        .store
        .lease_ids()
        .filter_map(|id| state.store.lease_facts(id))
        .filter(|lease| query.keeps(lease))
        .collect();
    facts.sort_by(|a, b| query.compare(a, b));
    let total = facts.len();
    let page: Vec<_> = facts
        .iter()
        .skip(query.offset)
        .take(query.limit)
        .filter_map(|lease| state.store.lease_message(lease.id))
        .collect();
    drop(state);
    let mut response = Json(page).into_response();
    response
        .headers_mut()
        .insert(X_TOTAL_COUNT, HeaderValue::from(total));
    Ok(response)
}

/// What `GET /v1/leases` can sort on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SortKey {
    Id,
    PropertyId,
    UnitId,
    LeaseFromDate,
    LeaseToDate,
    CreatedDateTime,
    LastUpdatedDateTime,
}

impl SortKey {
    const ALL: [(&'static str, Self); 7] = [
        ("Id", Self::Id),
        ("PropertyId", Self::PropertyId),
        ("UnitId", Self::UnitId),
        ("LeaseFromDate", Self::LeaseFromDate),
        ("LeaseToDate", Self::LeaseToDate),
        ("CreatedDateTime", Self::CreatedDateTime),
        ("LastUpdatedDateTime", Self::LastUpdatedDateTime),
    ];

    /// Property names are case-insensitive in `orderby`.
    fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, key)| *key)
    }

    fn compare(self, a: &LeaseFacts, b: &LeaseFacts) -> Ordering {
        match self {
            Self::Id => a.id.cmp(&b.id),
            Self::PropertyId => a.property_id.cmp(&b.property_id),
            Self::UnitId => a.unit_id.cmp(&b.unit_id),
            Self::LeaseFromDate => a.from.cmp(&b.from),
            Self::LeaseToDate => a.to.cmp(&b.to),
            Self::CreatedDateTime => a.created.cmp(&b.created),
            Self::LastUpdatedDateTime => a.last_updated.cmp(&b.last_updated),
        }
    }
}

/// The parameters of `GET /v1/leases` the emulator implements; others are ignored.
#[derive(Debug)]
struct ListQuery {
    statuses: Vec<LeaseStatus>,
    property_ids: Vec<i32>,
    types: Vec<LeaseType>,
    updated_from: Option<OffsetDateTime>,
    updated_to: Option<OffsetDateTime>,
    /// Sort keys, `true` for descending.
    order: Vec<(SortKey, bool)>,
    limit: usize,
    offset: usize,
}

impl ListQuery {
    fn parse(query: &str) -> Result<Self, BuildiumError> {
        let mut parsed = Self {
            statuses: Vec::new(),
            property_ids: Vec::new(),
            types: Vec::new(),
            updated_from: None,
            updated_to: None,
            order: Vec::new(),
            limit: DEFAULT_LIMIT,
            offset: 0,
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.trim();
            // Parameter names are case-sensitive, as in Buildium.
            match key.as_ref() {
                "leasestatuses" => parsed.statuses.push(parse_status(value)?),
                "propertyids" => parsed.property_ids.push(value.parse().map_err(|_| {
                    BuildiumError::parameter("propertyids", format!("{value:?} is not an id"))
                })?),
                "leasetypes" => parsed.types.push(parse_type(value)?),
                "lastupdatedfrom" => {
                    parsed.updated_from = Some(parse_datetime("lastupdatedfrom", value)?);
                }
                "lastupdatedto" => {
                    parsed.updated_to = Some(parse_datetime("lastupdatedto", value)?);
                }
                "orderby" => parsed.order = parse_order(value)?,
                "limit" => {
                    let limit: i64 = value.parse().map_err(|_| {
                        BuildiumError::parameter("limit", "limit must be an integer")
                    })?;
                    if limit < 1 {
                        return Err(BuildiumError::parameter(
                            "limit",
                            "limit must be between 1 and 1000",
                        ));
                    }
                    parsed.limit = usize::try_from(limit).map_or(MAX_LIMIT, |n| n.min(MAX_LIMIT));
                }
                "offset" => {
                    parsed.offset = value.parse().map_err(|_| {
                        BuildiumError::parameter("offset", "offset must be a non-negative integer")
                    })?;
                }
                _ => {}
            }
        }
        Ok(parsed)
    }

    fn keeps(&self, lease: &LeaseFacts) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&lease.status))
            && (self.property_ids.is_empty() || self.property_ids.contains(&lease.property_id))
            && (self.types.is_empty() || self.types.contains(&lease.lease_type))
            && self
                .updated_from
                .is_none_or(|from| lease.last_updated >= from)
            && self.updated_to.is_none_or(|to| lease.last_updated <= to)
    }

    fn compare(&self, a: &LeaseFacts, b: &LeaseFacts) -> Ordering {
        self.order
            .iter()
            .map(|(key, descending)| {
                let ordering = key.compare(a, b);
                if *descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            })
            .find(|ordering| ordering.is_ne())
            // Ties (and no orderby) by id, so that pages never overlap.
            .unwrap_or_else(|| a.id.cmp(&b.id))
    }
}

/// Enum values bind case-insensitively, as in Buildium's ASP.NET API.
fn parse_status(value: &str) -> Result<LeaseStatus, BuildiumError> {
    [LeaseStatus::Active, LeaseStatus::Past, LeaseStatus::Future]
        .into_iter()
        .find(|status| status.as_str().eq_ignore_ascii_case(value))
        .ok_or_else(|| {
            BuildiumError::parameter(
                "leasestatuses",
                format!("{value:?} is not one of Active, Past, Future"),
            )
        })
}

fn parse_type(value: &str) -> Result<LeaseType, BuildiumError> {
    [
        LeaseType::None,
        LeaseType::Fixed,
        LeaseType::FixedWithRollover,
        LeaseType::AtWill,
    ]
    .into_iter()
    .find(|lease_type| lease_type.as_str().eq_ignore_ascii_case(value))
    .ok_or_else(|| {
        BuildiumError::parameter(
            "leasetypes",
            format!("{value:?} is not one of None, Fixed, FixedWithRollover, AtWill"),
        )
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` as documented, any RFC 3339 date-time, or a date-time without a
/// zone (`T` or space separated), taken as UTC.
fn parse_datetime(key: &str, value: &str) -> Result<OffsetDateTime, BuildiumError> {
    if let Ok(at) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(at);
    }
    let without_zone = [
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    ];
    without_zone
        .iter()
        .find_map(|format| PrimitiveDateTime::parse(value, format).ok())
        .map(PrimitiveDateTime::assume_utc)
        .ok_or_else(|| {
            BuildiumError::parameter(
                key,
                format!("{value:?} is not a date-time as YYYY-MM-DDTHH:MM:SSZ"),
            )
        })
}

fn parse_order(value: &str) -> Result<Vec<(SortKey, bool)>, BuildiumError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut words = part.split_whitespace();
            let field = words.next().unwrap_or_default();
            let key = SortKey::parse(field).ok_or_else(|| {
                BuildiumError::parameter("orderby", format!("cannot sort by {field:?}"))
            })?;
            let descending = match words.next() {
                None => false,
                Some(direction) if direction.eq_ignore_ascii_case("asc") => false,
                Some(direction) if direction.eq_ignore_ascii_case("desc") => true,
                Some(direction) => {
                    return Err(BuildiumError::parameter(
                        "orderby",
                        format!("{direction:?} is neither asc nor desc"),
                    ));
                }
            };
            Ok((key, descending))
        })
        .collect()
}
