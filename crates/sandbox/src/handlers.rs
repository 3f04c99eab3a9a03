//! HTTP side of the sandbox: routing, contract checks, fault injection,
//! recording and logging.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use ulid::Ulid;

mod users;

use super::{
    Fault, IntegrationState, MAX_BODY_BYTES, RecordedCall, Sandbox, SandboxAuth, State as Inner,
};

const COLLECTION_PATH: &str = "/api/v1/integrations/{id}/building-users";
const ITEM_PATH: &str = "/api/v1/integrations/{id}/building-users/{user_id}";

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_ORG: HeaderName = HeaderName::from_static("x-org");

/// Longest client-supplied text echoed in an error message or a log line;
/// bodies may be up to 64 KiB and nobody wants that in a log.
const MAX_ECHO_CHARS: usize = 128;

/// Released (the sender is dropped) when the server started by
/// [`Sandbox::serve`] shuts down, so that held requests let shutdown finish.
#[derive(Clone)]
pub(super) struct ShutdownSignal(pub(super) watch::Receiver<()>);

/// The ULID sent back as `X-Request-Id`, shared between the middleware that
/// sets the header and the handler that records it.
#[derive(Clone)]
struct RequestId(String);

impl RequestId {
    fn new() -> Self {
        Self(Ulid::new().to_string())
    }
}

pub(super) fn router(sandbox: Sandbox) -> Router {
    users::routes(Router::new())
        .route(COLLECTION_PATH, get(list_users).post(add_user))
        .route(ITEM_PATH, delete(remove_user))
        .route("/_sandbox/calls", get(control_calls))
        .route("/_sandbox/state", get(control_state))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // Only read by the `Bytes` extractor, which `add_user` runs itself so
        // that an oversized body is reported at the body step of the checks.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost, so that every response (rejections included) gets an id.
        .layer(middleware::from_fn(assign_request_id))
        .layer(middleware::from_fn_with_state(
            sandbox.clone(),
            count_in_flight,
        ))
        .with_state(sandbox)
}

/// Counts the requests being answered at once, for [`Sandbox::max_in_flight`].
async fn count_in_flight(State(sandbox): State<Sandbox>, request: Request, next: Next) -> Response {
    let _in_flight = sandbox.enter_call();
    next.run(request).await
}

async fn assign_request_id(mut request: Request, next: Next) -> Response {
    let id = RequestId::new();
    let value = HeaderValue::from_str(&id.0);
    request.extensions_mut().insert(id);
    let mut response = next.run(request).await;
    // A ULID is always a valid header value; the `if` only avoids a panic path.
    if let Ok(value) = value {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

// ---------------------------------------------------------------------------
// Building-users operations

#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    List,
    Add,
    Remove,
}

/// Decoded path parameters: integration id and, for `DELETE`, the user id.
type PathParams = Result<(String, Option<String>), PathRejection>;

async fn list_users(
    State(sandbox): State<Sandbox>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let path = path.map(|Path(id)| (id, None));
    handle(sandbox, Operation::List, path, request).await
}

async fn add_user(
    State(sandbox): State<Sandbox>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let path = path.map(|Path(id)| (id, None));
    handle(sandbox, Operation::Add, path, request).await
}

async fn remove_user(
    State(sandbox): State<Sandbox>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    let path = path.map(|Path((id, user_id))| (id, Some(user_id)));
    handle(sandbox, Operation::Remove, path, request).await
}

/// What the handlers take from a request before any check runs.
struct Incoming {
    started: Instant,
    /// [`crate::unix_ms`] when the request was taken apart.
    received_at_ms: u64,
    request_id: RequestId,
    release: Option<ShutdownSignal>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The body, when the operation has one; a read error is reported at the body step.
    body: Option<Result<Bytes, BytesRejection>>,
    /// The body parsed as JSON, for the record.
    body_json: Option<Value>,
}

impl Incoming {
    /// Takes the request apart, reading the body up front (when `read_body`) so that it is
    /// recorded even when an earlier check fails.
    async fn read(request: Request, read_body: bool) -> Self {
        let started = Instant::now();
        let received_at_ms = crate::unix_ms();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::new);
        let release = request.extensions().get::<ShutdownSignal>().cloned();
        let method = request.method().clone();
        let uri = request.uri().clone();
        let headers = request.headers().clone();
        let body = if read_body {
            Some(Bytes::from_request(request, &()).await)
        } else {
            None
        };
        let body_json = match &body {
            Some(Ok(bytes)) => serde_json::from_slice(bytes).ok(),
            _ => None,
        };
        Self {
            started,
            received_at_ms,
            request_id,
            release,
            method,
            uri,
            headers,
            body,
            body_json,
        }
    }

    fn body_text(&self, field: &str) -> Option<String> {
        self.body_json
            .as_ref()
            .and_then(|json| json.get(field))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The record of this call (status still 0) and what answering it needs.
    fn pending(
        &self,
        integration_id: String,
        user_id: Option<String>,
        role: Option<String>,
    ) -> PendingCall {
        let headers = &self.headers;
        PendingCall {
            call: RecordedCall {
                method: self.method.to_string(),
                path: self.uri.path().to_owned(),
                integration_id,
                user_id,
                authorization: header_text(headers, &AUTHORIZATION),
                x_api_key: header_text(headers, &X_API_KEY),
                x_org: header_text(headers, &X_ORG),
                content_type: header_text(headers, &CONTENT_TYPE),
                body: self.body_json.clone(),
                status: 0,
                request_id: self.request_id.0.clone(),
                at_ms: self.received_at_ms,
                seq: 0,
            },
            role,
            release: self.release.clone(),
            started: self.started,
        }
    }
}

async fn handle(sandbox: Sandbox, op: Operation, path: PathParams, request: Request) -> Response {
    // Only POST has a body.
    let incoming = Incoming::read(request, op == Operation::Add).await;
    let (integration_id, path_user) = match &path {
        Ok((id, user)) => (id.clone(), user.clone()),
        Err(_) => (String::new(), None),
    };
    let user_id = match op {
        Operation::List => None,
        Operation::Add => incoming.body_text("user_id"),
        Operation::Remove => path_user,
    };
    let role = if op == Operation::Add {
        incoming.body_text("role")
    } else {
        None
    };
    let pending = incoming.pending(integration_id, user_id, role);
    let operation = |sandbox: &Sandbox| {
        sandbox
            .process(op, &path, &incoming.headers, incoming.body.as_ref())
            .map(IntoResponse::into_response)
    };
    run_call(sandbox, pending, &incoming.method, operation).await
}

/// A recorded call on its way to an answer, with what logging and holding it need.
struct PendingCall {
    call: RecordedCall,
    /// Role named by the request, for the log line only.
    role: Option<String>,
    release: Option<ShutdownSignal>,
    started: Instant,
}

/// The common end of every API call: picks the fault (scripted, then random), runs `operation`
/// unless the fault replaces it, logs and records the call, then holds the answer for the
/// delay. `operation` does the contract checks and the change, all under one lock.
async fn run_call(
    sandbox: Sandbox,
    pending: PendingCall,
    method: &Method,
    operation: impl FnOnce(&Sandbox) -> Result<Response, ApiError>,
) -> Response {
    let PendingCall {
        mut call,
        role,
        release,
        started,
    } = pending;
    let (fault, mut delay) = sandbox.next_fault(method);
    let outcome = match fault {
        Some(Fault::Hang) => {
            return hang(sandbox, call, role, release, started).await;
        }
        Some(Fault::Status {
            status,
            retry_after,
        }) => Err(ApiError::injected(status, retry_after.as_deref())),
        Some(Fault::Delay(extra)) => {
            delay = delay.saturating_add(extra);
            operation(&sandbox)
        }
        None => operation(&sandbox),
    };

    let detail = outcome.as_ref().err().and_then(|error| error.detail);
    let response = match outcome {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    call.status = response.status().as_u16();
    log_call(&call, role.as_deref(), started.elapsed(), delay, detail);
    sandbox.record(call);
    // The operation is already applied and recorded: a client that gives up
    // during the delay sees exactly a lost reply.
    if !delay.is_zero() {
        hold(release.as_ref(), Some(delay)).await;
    }
    response
}

async fn hang(
    sandbox: Sandbox,
    mut call: RecordedCall,
    role: Option<String>,
    release: Option<ShutdownSignal>,
    started: Instant,
) -> Response {
    call.status = 0;
    let request_id = call.request_id.clone();
    log_call(
        &call,
        role.as_deref(),
        started.elapsed(),
        Duration::ZERO,
        Some("scripted hang: holding the request without answering"),
    );
    sandbox.record(call);
    hold(release.as_ref(), None).await;
    // Only reached when the server shuts down; the client may still be there.
    let response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Sandbox shutting down").into_response();
    sandbox.update_recorded_status(&request_id, response.status().as_u16());
    response
}

/// Waits for `duration` (forever when `None`), or until shutdown releases the
/// request. Without a [`ShutdownSignal`] (router served by someone else) only
/// the client disconnecting, which drops this future, ends a hang.
async fn hold(release: Option<&ShutdownSignal>, duration: Option<Duration>) {
    let released = async move {
        match release {
            Some(ShutdownSignal(receiver)) => {
                let mut receiver = receiver.clone();
                // Nothing is ever sent: this resolves (with an error) exactly
                // when the sender is dropped at shutdown.
                while receiver.changed().await.is_ok() {}
            }
            None => std::future::pending::<()>().await,
        }
    };
    match duration {
        Some(duration) => {
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                () = released => {}
            }
        }
        None => released.await,
    }
}

impl Sandbox {
    /// Picks the fault for this call: the first scripted fault matching the
    /// method, else a random one. Also returns the base delay.
    fn next_fault(&self, method: &Method) -> (Option<Fault>, Duration) {
        let mut state = self.lock();
        let delay = state.faults.delay;
        let position = state
            .scripted
            .iter()
            .position(|scripted| scripted.method.as_ref().is_none_or(|only| only == method));
        if let Some(scripted) = position.and_then(|index| state.scripted.remove(index)) {
            return (Some(scripted.fault), delay);
        }
        let faults = &state.faults;
        if let Some(status) = faults.status {
            // `random::<f64>()` is in [0, 1): rate 1.0 always fires, 0.0 and
            // NaN never do, and out-of-range rates cannot panic.
            if rand::random::<f64>() < faults.rate {
                let fault = Fault::Status {
                    status,
                    retry_after: faults.retry_after.clone(),
                };
                return (Some(fault), delay);
            }
        }
        (None, delay)
    }

    /// The contract checks in order (auth, `X-Org`, integration, body), then
    /// the operation itself.
    fn process(
        &self,
        op: Operation,
        path: &PathParams,
        headers: &HeaderMap,
        body: Option<&Result<Bytes, BytesRejection>>,
    ) -> Result<Reply, ApiError> {
        self.authenticate(headers)?;
        let org = x_org(headers)?;
        let (integration_id, path_user) = path
            .as_ref()
            .map_err(|_| ApiError::bad_request("Invalid path parameter"))?;

        // One lock for check and update, so concurrent calls see each other
        // atomically (e.g. two adds of the same user with conflict_on_existing).
        let mut state = self.lock();
        // Read before the integration is borrowed; refused after it is resolved, as before.
        let add =
            matches!(op, Operation::Add).then(|| parse_add_body(headers, body, integration_id));
        let deleted_user =
            matches!(&add, Some(Ok((user_id, _))) if state.deleted_users.contains(user_id));
        let integration = resolve_integration(
            &mut state,
            self.shared.open_registration,
            integration_id,
            org,
        )?;
        match op {
            Operation::List => Ok(Reply::List(
                integration
                    .members
                    .iter()
                    .map(|(user_id, role)| BuildingUserRow::new(user_id, role))
                    .collect(),
            )),
            Operation::Add => {
                let (user_id, role) = match add {
                    Some(parsed) => parsed?,
                    None => parse_add_body(headers, body, integration_id)?,
                };
                if deleted_user {
                    return Err(ApiError::new(StatusCode::NOT_FOUND, "User not found"));
                }
                if self.shared.conflict_on_existing && integration.members.contains_key(&user_id) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "User already in building",
                    ));
                }
                let row = BuildingUserRow::new(&user_id, &role);
                integration.members.insert(user_id, role);
                Ok(Reply::Added(row))
            }
            Operation::Remove => {
                let user_id = path_user.as_deref().unwrap_or_default();
                match integration.members.remove(user_id) {
                    Some(_) => Ok(Reply::Removed),
                    None => Err(ApiError::new(StatusCode::NOT_FOUND, "User not found")),
                }
            }
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let key = match self.shared.auth {
            SandboxAuth::Bearer => {
                let value = headers
                    .get(AUTHORIZATION)
                    .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
                let text = value.to_str().map_err(|_| {
                    ApiError::unauthorized("Authorization header is not visible ASCII")
                })?;
                let (scheme, token) = text
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| ApiError::unauthorized("Authorization header has no scheme"))?;
                // Auth schemes are case-insensitive (RFC 9110 §11.1).
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(ApiError::unauthorized("Authorization scheme is not Bearer"));
                }
                token.trim()
            }
            SandboxAuth::XApiKey => {
                // The gateway reserves Authorization for JWTs and rejects API
                // keys sent there (newer gateways do); the sandbox has no JWTs.
                if headers.contains_key(AUTHORIZATION) {
                    return Err(ApiError::unauthorized(
                        "Authorization header sent in x-api-key mode (API keys go in X-API-Key)",
                    ));
                }
                let value = headers
                    .get(X_API_KEY)
                    .ok_or_else(|| ApiError::unauthorized("missing X-API-Key header"))?;
                value
                    .to_str()
                    .map_err(|_| ApiError::unauthorized("X-API-Key header is not visible ASCII"))?
                    .trim()
            }
        };
        if key.is_empty() {
            return Err(ApiError::unauthorized("empty API key"));
        }
        // Plain comparison: this is a local test double, timing attacks on it
        // are not a concern.
        let accepted = self.shared.api_keys.is_empty()
            || self.shared.api_keys.iter().any(|accepted| accepted == key);
        if accepted {
            Ok(())
        } else {
            Err(ApiError::unauthorized("unknown API key"))
        }
    }
}

fn x_org(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::bad_request("Missing X-Org header");
    let value = headers.get(X_ORG).ok_or_else(missing)?;
    let org = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Invalid X-Org header"))?
        .trim();
    if org.is_empty() {
        return Err(missing());
    }
    Ok(org)
}

fn resolve_integration<'s>(
    state: &'s mut Inner,
    open_registration: bool,
    integration_id: &str,
    org: &str,
) -> Result<&'s mut IntegrationState, ApiError> {
    let integration = match state.integrations.entry(integration_id.to_owned()) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) if open_registration => entry.insert(IntegrationState {
            org_id: org.to_owned(),
            members: BTreeMap::new(),
        }),
        Entry::Vacant(_) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "Integration not found",
            ));
        }
    };
    if integration.org_id != org {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden: integration belongs to another org",
        ));
    }
    Ok(integration)
}

/// Validates a `POST` body against `AddBuildingUserPayload` — stricter than
/// the spec (no extra fields, non-empty strings, role scoped to the path's
/// integration) so that client bugs surface here rather than in production.
fn parse_add_body(
    headers: &HeaderMap,
    body: Option<&Result<Bytes, BytesRejection>>,
    integration_id: &str,
) -> Result<(String, String), ApiError> {
    let fields = json_object_body(headers, body)?;
    if let Some(extra) = fields
        .keys()
        .find(|key| *key != "user_id" && *key != "role")
    {
        return Err(ApiError::bad_request(format!(
            "Unknown field `{}`: only `user_id` and `role` are allowed",
            clip(extra)
        )));
    }
    let user_id = string_field(&fields, "user_id")?;
    let role = string_field(&fields, "role")?;
    let prefix = format!("virtual_access:integration:{integration_id}:");
    // A bare prefix names no role, so it is rejected as well.
    if role.len() <= prefix.len() || !role.starts_with(&prefix) {
        return Err(ApiError::bad_request(format!(
            "Field `role` must be `{}<role name>` (the integration in the path)",
            clip(&prefix)
        )));
    }
    Ok((user_id, role))
}

/// The body of a `POST` as a JSON object: readable, within [`MAX_BODY_BYTES`], sent as
/// `application/json`, non-empty, valid JSON, an object (400 or 413 otherwise).
fn json_object_body(
    headers: &HeaderMap,
    body: Option<&Result<Bytes, BytesRejection>>,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = match body {
        Some(Ok(bytes)) => bytes,
        Some(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body too large (limit {MAX_BODY_BYTES} bytes)"),
            ));
        }
        Some(Err(_)) | None => return Err(ApiError::bad_request("Could not read request body")),
    };
    if !is_json_content_type(headers) {
        return Err(ApiError::bad_request(
            "Content-Type must be application/json",
        ));
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request("Request body is required"));
    }
    // serde_json bounds nesting depth, so hostile input cannot overflow the
    // stack; its messages carry positions, never input text.
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request(format!("Request body is not valid JSON: {error}"))
    })?;
    match value {
        Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::bad_request("Request body must be a JSON object")),
    }
}

fn string_field(fields: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("Missing field `{name}`"))),
        Some(Value::String(text)) if text.trim().is_empty() => Err(ApiError::bad_request(format!(
            "Field `{name}` must not be empty"
        ))),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(ApiError::bad_request(format!(
            "Field `{name}` must be a string"
        ))),
    }
}

/// `application/json`, case-insensitively, parameters such as `charset`
/// allowed.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

// ---------------------------------------------------------------------------
// Responses

enum Reply {
    List(Vec<BuildingUserRow>),
    Added(BuildingUserRow),
    Removed,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Self::List(rows) => (StatusCode::OK, Json(rows)).into_response(),
            Self::Added(row) => (StatusCode::CREATED, Json(row)).into_response(),
            Self::Removed => StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// One list row (`BuildingUserResponse`); the sandbox knows nothing about
/// apartments, e-mails or names, so those are empty/null.
#[derive(Serialize)]
struct BuildingUserRow {
    user_id: String,
    role: String,
    apartments: Vec<String>,
    user_email: Option<String>,
    user_name: Option<Value>,
}

impl BuildingUserRow {
    fn new(user_id: &str, role: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            role: role.to_owned(),
            apartments: Vec::new(),
            user_email: None,
            user_name: None,
        }
    }
}

/// An error answer with an `ApiErrorResponse` body.
struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    error_code: Option<&'static str>,
    retry_after: Option<HeaderValue>,
    /// Why, for the log only (the client gets the terse `message`).
    detail: Option<&'static str>,
}

#[derive(Serialize)]
struct ApiErrorBody<'a> {
    message: &'a str,
    error_code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
            error_code: None,
            retry_after: None,
            detail: None,
        }
    }

    fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthorized(detail: &'static str) -> Self {
        Self {
            error_code: Some("unauthorized"),
            detail: Some(detail),
            ..Self::new(StatusCode::UNAUTHORIZED, "Unauthorized")
        }
    }

    fn injected(status: u16, retry_after: Option<&str>) -> Self {
        let status = match StatusCode::from_u16(status) {
            // 1xx cannot be a final answer.
            Ok(code) if code.as_u16() >= 200 => code,
            _ => {
                tracing::warn!(status, "injected fault status is not usable; answering 500");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let retry_after = retry_after.and_then(|text| {
            HeaderValue::from_str(text)
                .inspect_err(|_| {
                    tracing::warn!("injected Retry-After is not a valid header value; omitted");
                })
                .ok()
        });
        Self {
            error_code: Some("sandbox_fault"),
            retry_after,
            detail: Some("injected fault"),
            ..Self::new(status, "Injected fault")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            message: &self.message,
            error_code: self.error_code,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(value) = self.retry_after {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        response
    }
}

// ---------------------------------------------------------------------------
// Control endpoints and fallbacks (not recorded, never faulted)

async fn control_calls(State(sandbox): State<Sandbox>) -> Response {
    let calls: Vec<RecordedCall> = sandbox.calls().iter().map(RecordedCall::redacted).collect();
    Json(calls).into_response()
}

async fn control_state(State(sandbox): State<Sandbox>) -> Response {
    Json(sandbox.snapshot()).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    tracing::info!(%method, path = clip(uri.path()), status = 404, "sandbox OpenApp: no such route");
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("No route for {method} {}", clip(uri.path())),
    )
    .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    tracing::info!(%method, path = clip(uri.path()), status = 405, "sandbox OpenApp: method not allowed");
    // axum adds the `Allow` header to 405s from this fallback.
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method {method} not allowed on {}", clip(uri.path())),
    )
    .into_response()
}

// ---------------------------------------------------------------------------
// Helpers

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// At most [`MAX_ECHO_CHARS`] characters of `text`.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => text.get(..end).unwrap_or(text),
        None => text,
    }
}

/// One log line per call. Credentials and bodies are never logged; user id
/// and role are (clipped), as they are what an integrator debugs.
fn log_call(
    call: &RecordedCall,
    role: Option<&str>,
    latency: Duration,
    delay: Duration,
    detail: Option<&str>,
) {
    tracing::info!(
        method = %call.method,
        path = clip(&call.path),
        status = call.status,
        x_org = call.x_org.as_deref().map(clip),
        request_id = %call.request_id,
        user_id = call.user_id.as_deref().map(clip),
        role = role.map(clip),
        latency = ?latency,
        delay = ?delay,
        detail,
        "sandbox OpenApp call"
    );
}
