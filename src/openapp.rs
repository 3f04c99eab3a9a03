//! The OpenApp client: the building-users operations, as OpenApp's published OpenAPI
//! specification describes them, and the classification of OpenApp's answers. Requests go
//! through [`crate::outbound`].

use ::http::header::{HeaderMap, HeaderValue};
use ::http::{Method, StatusCode};
use serde::Serialize;
use url::Url;

use crate::config::{AuthScheme, OpenAppSettings, Secret};
use crate::outbound::{
    BodyLimit, ClientOptions, HttpClient, Redirects, Request, Response, TransportError,
    TransportKind,
};
pub use crate::resident::BuildingUser;

/// Most bytes of an error body read to find its `message`.
const ERROR_BODY_LIMIT: usize = 4096;

/// How calls whose success body lease-sync does not need read their answer.
const ERROR_BODY: BodyLimit = BodyLimit::Truncate(ERROR_BODY_LIMIT);

/// Longest error message kept from a response.
const MESSAGE_LIMIT: usize = 300;

/// What a successful call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// OpenApp made the change (201 on add, 204 on remove, or another 2xx).
    Applied(u16),
    /// It was already so: 409 on add (already present), 404 on remove (already absent).
    AlreadyDone(u16),
}

/// A successful call's outcome and OpenApp's request id for it (`X-Request-Id`, or
/// `X-Correlation-Id`), for the resident's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// What the call did.
    pub outcome: CallOutcome,
    /// OpenApp's id of the request, if it sent one.
    pub request_id: Option<String>,
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No HTTP answer: connect failure, timeout, reset; or an answer that could not be read.
    #[error("{kind} error calling OpenApp: {message}")]
    Transport {
        /// What went wrong.
        kind: TransportKind,
        /// Details, without credentials.
        message: String,
    },
    /// OpenApp answered with a status that is not success for this operation.
    #[error("OpenApp answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body's `message`, if it had one.
        message: Option<String>,
        /// The body's `error_code` (or `code`), if any.
        error_code: Option<String>,
        /// `X-Request-Id` (or the body's correlation id), for OpenApp support.
        request_id: Option<String>,
        /// The `Retry-After` header as sent.
        retry_after: Option<String>,
    },
}

impl From<TransportError> for CallError {
    fn from(e: TransportError) -> Self {
        CallError::Transport {
            kind: e.kind,
            message: e.message,
        }
    }
}

impl CallError {
    /// Whether trying again later may succeed: transport errors, 408, 425, 429, 5xx, and
    /// 401/403, which an operator can fix by correcting the key or its roles.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Transport { .. } => true,
            CallError::Status { status, .. } => {
                matches!(status, 401 | 403 | 408 | 425 | 429) || (500..=599).contains(status)
            }
        }
    }

    /// The HTTP status, if OpenApp answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            CallError::Transport { .. } => None,
        }
    }

    /// The `Retry-After` header OpenApp sent, as sent.
    pub fn retry_after(&self) -> Option<&str> {
        match self {
            CallError::Status { retry_after, .. } => retry_after.as_deref(),
            CallError::Transport { .. } => None,
        }
    }

    /// OpenApp's request id, if it sent one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            CallError::Status { request_id, .. } => request_id.as_deref(),
            CallError::Transport { .. } => None,
        }
    }
}

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// `openapp.base_url` is not an absolute http(s) URL.
    #[error("openapp.base_url is not a usable URL: {0}")]
    BaseUrl(String),
    /// `openapp.api_key` is missing or cannot be sent in a header.
    #[error("openapp.api_key is missing or contains characters not allowed in a header")]
    ApiKey,
    /// The HTTP client could not be set up (TLS roots).
    #[error(transparent)]
    Http(#[from] crate::outbound::BuildError),
}

/// Largest building-users list read, in bytes (about 50,000 rows).
pub const LIST_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Users read per page of `GET /users/search`.
pub const SEARCH_PAGE: usize = 100;

/// Most pages of one search read: an email matching more users than this is a conflict
/// anyway.
pub const SEARCH_MAX_PAGES: usize = 5;

/// An OpenApp user, as far as lease-sync needs one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAppUser {
    /// The user id (a ULID).
    pub id: String,
    /// Their email.
    pub email: String,
}

#[derive(serde::Deserialize)]
struct WireUser {
    id: String,
    #[serde(default)]
    email: String,
}

impl From<WireUser> for OpenAppUser {
    fn from(user: WireUser) -> Self {
        Self {
            id: user.id,
            email: user.email,
        }
    }
}

#[derive(serde::Deserialize)]
struct SearchPage {
    items: Vec<WireUser>,
    total: u64,
}

#[derive(Serialize)]
struct AddBuildingUserPayload<'a> {
    user_id: &'a str,
    role: &'a str,
}

/// Client for one OpenApp deployment. Cheap to clone.
#[derive(Clone)]
pub struct OpenAppClient {
    http: HttpClient,
    base_url: Url,
    auth_header: (&'static str, HeaderValue),
}

impl std::fmt::Debug for OpenAppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAppClient")
            .field("base_url", &self.base_url.as_str())
            .field("auth", &self.auth_header.0)
            .finish_non_exhaustive()
    }
}

impl OpenAppClient {
    /// Builds a client from `[openapp]`.
    pub fn new(settings: &OpenAppSettings) -> Result<Self, ClientBuildError> {
        let base_url = settings.base_url.clone();
        if base_url.cannot_be_a_base() || !matches!(base_url.scheme(), "http" | "https") {
            return Err(ClientBuildError::BaseUrl(
                "must be an absolute http(s) URL".into(),
            ));
        }
        if base_url.scheme() == "http" && !settings.allow_insecure_http {
            return Err(ClientBuildError::BaseUrl(
                "must be https unless openapp.allow_insecure_http = true".into(),
            ));
        }
        let key = settings.api_key.as_ref().ok_or(ClientBuildError::ApiKey)?;
        let auth_header = auth_header(settings.auth, key)?;
        let http = HttpClient::new(ClientOptions {
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
            // A redirect could carry the key to another host; OpenApp never redirects these calls.
            redirects: Redirects::Never,
            // Enforced per request too, so no code path can send the key in clear text.
            https_only: !settings.allow_insecure_http,
        })?;
        Ok(Self {
            http,
            base_url,
            auth_header,
        })
    }

    /// `POST /integrations/{integration_id}/building-users` with `{user_id, role}`.
    /// 409 means the user is already there, which is success.
    pub async fn add_building_user(
        &self,
        org_id: &str,
        integration_id: &str,
        user_id: &str,
        role: &str,
    ) -> Result<Answered, CallError> {
        let url = self.url(&["integrations", integration_id, "building-users"]);
        let request = Request::new(Method::POST, url)
            .headers(self.headers(org_id))
            .json(&AddBuildingUserPayload { user_id, role });
        let response = self.send("add", request, ERROR_BODY).await?;
        let outcome = match response.status {
            s if s.is_success() => CallOutcome::Applied(s.as_u16()),
            StatusCode::CONFLICT => CallOutcome::AlreadyDone(409),
            _ => return Err(status_error(&response)),
        };
        Ok(answered(&response, outcome))
    }

    /// `DELETE /integrations/{integration_id}/building-users/{user_id}`.
    /// 404 means the user is already gone, which is success.
    pub async fn remove_building_user(
        &self,
        org_id: &str,
        integration_id: &str,
        user_id: &str,
    ) -> Result<Answered, CallError> {
        let url = self.url(&["integrations", integration_id, "building-users", user_id]);
        let request = Request::new(Method::DELETE, url).headers(self.headers(org_id));
        let response = self.send("remove", request, ERROR_BODY).await?;
        let outcome = match response.status {
            s if s.is_success() => CallOutcome::Applied(s.as_u16()),
            StatusCode::NOT_FOUND => CallOutcome::AlreadyDone(404),
            _ => return Err(status_error(&response)),
        };
        Ok(answered(&response, outcome))
    }

    /// Whether the integration exists for `org_id`: `GET /integrations/{id}/building-users`
    /// answers 200 (yes) or 404 (no). Any other answer is an error.
    pub async fn integration_exists(
        &self,
        org_id: &str,
        integration_id: &str,
    ) -> Result<bool, CallError> {
        let url = self.url(&["integrations", integration_id, "building-users"]);
        let request = Request::new(Method::GET, url).headers(self.headers(org_id));
        // Only the status matters; a long list is not read past the error-body limit.
        let response = self.send("list", request, ERROR_BODY).await?;
        match response.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(&response)),
        }
    }

    /// `GET /integrations/{integration_id}/building-users`: everyone holding a role of the
    /// integration. The body is a JSON array of objects; only `user_id` and `role` are read,
    /// rows without a string `user_id` are skipped and a missing `role` reads as empty. A body
    /// that is not such an array, or larger than [`LIST_BODY_LIMIT`], is a
    /// [`CallError::Transport`] of kind `body`.
    pub async fn list_building_users(
        &self,
        org_id: &str,
        integration_id: &str,
    ) -> Result<Vec<BuildingUser>, CallError> {
        let url = self.url(&["integrations", integration_id, "building-users"]);
        let request = Request::new(Method::GET, url).headers(self.headers(org_id));
        let response = self
            .send("list", request, BodyLimit::Fail(LIST_BODY_LIMIT))
            .await
            .map_err(|e| match e {
                CallError::Transport {
                    kind: TransportKind::Body,
                    ..
                } => CallError::Transport {
                    kind: TransportKind::Body,
                    message: format!(
                        "the building-users list is larger than {LIST_BODY_LIMIT} bytes"
                    ),
                },
                other => other,
            })?;
        if !response.status.is_success() {
            return Err(status_error(&response));
        }
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&response.body).map_err(|e| {
            CallError::from(TransportError::body(format!(
                "the building-users list is not a JSON array: {}",
                clean(&e.to_string(), MESSAGE_LIMIT)
            )))
        })?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let user_id = row.get("user_id")?.as_str()?;
                let role = row.get("role").and_then(|r| r.as_str()).unwrap_or_default();
                Some(BuildingUser {
                    user_id: user_id.to_owned(),
                    role: role.to_owned(),
                })
            })
            .collect())
    }

    /// `GET /users/search?q=…&org_id=…`: users of `org_id` whose name or email contains
    /// `query` (OpenApp matches substrings, case-insensitively). Follows `offset` through
    /// at most [`SEARCH_MAX_PAGES`] pages of [`SEARCH_PAGE`].
    pub async fn search_users(
        &self,
        org_id: &str,
        query: &str,
    ) -> Result<Vec<OpenAppUser>, CallError> {
        let mut users = Vec::new();
        for page in 0..SEARCH_MAX_PAGES {
            let mut url = self.url(&["users", "search"]);
            url.query_pairs_mut()
                .append_pair("q", query)
                .append_pair("org_id", org_id)
                .append_pair("limit", &SEARCH_PAGE.to_string())
                .append_pair("offset", &(page * SEARCH_PAGE).to_string());
            let request = Request::new(Method::GET, url).headers(self.headers(org_id));
            let response = self
                .send("search", request, BodyLimit::Fail(LIST_BODY_LIMIT))
                .await?;
            if !response.status.is_success() {
                return Err(status_error(&response));
            }
            let found: SearchPage = serde_json::from_slice(&response.body).map_err(|e| {
                CallError::from(TransportError::body(format!(
                    "the user search answer is not a page of users: {}",
                    clean(&e.to_string(), MESSAGE_LIMIT)
                )))
            })?;
            let last = found.items.len() < SEARCH_PAGE
                || (users.len() + found.items.len()) as u64 >= found.total;
            users.extend(found.items.into_iter().map(OpenAppUser::from));
            if last {
                break;
            }
        }
        Ok(users)
    }

    /// `POST /users` in `org_id`: a new user named `name` with `email`. OpenApp answers 409
    /// when the email is taken, which is a [`CallError::Status`] like any refusal.
    pub async fn create_user(
        &self,
        org_id: &str,
        name: &str,
        email: &str,
    ) -> Result<OpenAppUser, CallError> {
        let body = serde_json::json!({
            "name": {"value": {"en": name}},
            "email": email,
        });
        let request = Request::new(Method::POST, self.url(&["users"]))
            .headers(self.headers(org_id))
            .json(&body);
        let response = self
            .send("create_user", request, BodyLimit::Fail(LIST_BODY_LIMIT))
            .await?;
        if !response.status.is_success() {
            return Err(status_error(&response));
        }
        let user: WireUser = serde_json::from_slice(&response.body).map_err(|e| {
            CallError::from(TransportError::body(format!(
                "the created user is not a user object: {}",
                clean(&e.to_string(), MESSAGE_LIMIT)
            )))
        })?;
        Ok(user.into())
    }

    /// Sends `request` and records its latency and result class as `operation` (`add`,
    /// `remove`, `list`) in the OpenApp metrics.
    async fn send(
        &self,
        operation: &'static str,
        request: Request,
        limit: BodyLimit,
    ) -> Result<Response, CallError> {
        use crate::telemetry::metrics::{
            OPENAPP_AUTH_FAILURES, OPENAPP_DURATION, OPENAPP_RESPONSES,
        };
        let started = std::time::Instant::now();
        let result = self.http.send(request, limit).await;
        let class = match &result {
            Ok(response) => match response.status.as_u16() {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            },
            Err(e) => e.kind.as_str(),
        };
        metrics::histogram!(OPENAPP_DURATION, "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(OPENAPP_RESPONSES, "operation" => operation, "class" => class)
            .increment(1);
        if let Ok(response) = &result
            && let status @ (401 | 403) = response.status.as_u16()
        {
            let status = if status == 401 { "401" } else { "403" };
            metrics::counter!(OPENAPP_AUTH_FAILURES, "operation" => operation, "status" => status)
                .increment(1);
        }
        Ok(result?)
    }

    /// The base URL with `segments` appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        // `cannot_be_a_base` was ruled out in `new`, so path segments are available.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn headers(&self, org_id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let (name, value) = &self.auth_header;
        headers.insert(*name, value.clone());
        // Org ids are validated against [A-Za-z0-9_-] at config load, so this cannot fail.
        if let Ok(org) = HeaderValue::from_str(org_id) {
            headers.insert("x-org", org);
        }
        headers
    }
}

fn auth_header(
    scheme: AuthScheme,
    key: &Secret,
) -> Result<(&'static str, HeaderValue), ClientBuildError> {
    let (name, raw) = match scheme {
        AuthScheme::Bearer => ("authorization", format!("Bearer {}", key.expose())),
        AuthScheme::XApiKey => ("x-api-key", key.expose().to_owned()),
    };
    let mut value = HeaderValue::from_str(&raw).map_err(|_| ClientBuildError::ApiKey)?;
    // Keeps the key out of reqwest's and hyper's debug output.
    value.set_sensitive(true);
    Ok((name, value))
}

/// `outcome` with the request id `response` carries.
fn answered(response: &Response, outcome: CallOutcome) -> Answered {
    let header = |name: &str| response.header(name).map(|v| clean(v, 128));
    Answered {
        outcome,
        request_id: header("x-request-id").or_else(|| header("x-correlation-id")),
    }
}

/// The [`CallError::Status`] of an answer that is not success for its operation: its status,
/// `Retry-After`, request id and the `message`/`error_code` of its (truncated) body.
fn status_error(response: &Response) -> CallError {
    let header = |name: &str| response.header(name).map(|v| clean(v, 128));
    let retry_after = header("retry-after");
    let mut request_id = header("x-request-id").or_else(|| header("x-correlation-id"));
    let body = &response.body;
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |names: &[&str]| {
        json.as_ref().and_then(|j| {
            names
                .iter()
                .find_map(|n| j.get(*n).and_then(|v| v.as_str()))
                .map(|v| clean(v, MESSAGE_LIMIT))
        })
    };
    let message = field(&["message"]).or_else(|| {
        // Not JSON: keep a short, printable excerpt so the operator sees something.
        let text = String::from_utf8_lossy(body);
        let text = clean(text.trim(), MESSAGE_LIMIT);
        (!text.is_empty() && json.is_none()).then_some(text)
    });
    let error_code = field(&["error_code", "code"]);
    if request_id.is_none() {
        request_id = field(&["correlationId", "correlation_id"]);
    }
    CallError::Status {
        status: response.status.as_u16(),
        message,
        error_code,
        request_id,
        retry_after,
    }
}

/// Truncates to `limit` characters and drops control characters, so a hostile or broken
/// answer cannot forge log lines.
fn clean(s: &str, limit: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> OpenAppClient {
        let settings = OpenAppSettings {
            base_url: base.parse().unwrap(),
            api_key: Some(Secret::new("k")),
            allow_insecure_http: base.starts_with("http:"),
            ..OpenAppSettings::default()
        };
        OpenAppClient::new(&settings).unwrap()
    }

    #[test]
    fn plain_http_needs_the_explicit_switch() {
        let settings = OpenAppSettings {
            base_url: "http://127.0.0.1:1/api/v1".parse().unwrap(),
            api_key: Some(Secret::new("k")),
            ..OpenAppSettings::default()
        };
        let err = OpenAppClient::new(&settings).unwrap_err().to_string();
        assert!(err.contains("allow_insecure_http"), "{err}");
        OpenAppClient::new(&OpenAppSettings {
            base_url: "https://api.openapp.house/api/v1".parse().unwrap(),
            ..settings
        })
        .unwrap();
    }

    #[test]
    fn urls_are_joined_and_encoded() {
        let c = client("https://api.openapp.house/api/v1");
        assert_eq!(
            c.url(&["integrations", "01H", "building-users", "a/b c"])
                .as_str(),
            "https://api.openapp.house/api/v1/integrations/01H/building-users/a%2Fb%20c"
        );
        let c = client("http://127.0.0.1:9/api/v1/");
        assert_eq!(
            c.url(&["integrations", "x", "building-users"]).as_str(),
            "http://127.0.0.1:9/api/v1/integrations/x/building-users"
        );
    }

    #[test]
    fn classification() {
        let status = |s| CallError::Status {
            status: s,
            message: None,
            error_code: None,
            request_id: None,
            retry_after: None,
        };
        for s in [401, 403, 408, 425, 429, 500, 502, 503, 504] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 404, 405, 410, 422] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        assert!(
            CallError::Transport {
                kind: TransportKind::Timeout,
                message: String::new()
            }
            .is_retryable()
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let c = client("https://api.openapp.house/api/v1");
        assert!(!format!("{c:?}").contains("Bearer"));
    }

    #[test]
    fn clean_strips_control_characters() {
        assert_eq!(clean("a\nb\u{1b}[31mc", 10), "ab[31mc");
        assert_eq!(clean("abcdef", 3), "abc");
    }
}
