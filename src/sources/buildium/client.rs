//! The Buildium API client: the lease and tenant reads lease-sync needs, as Buildium's Open API
//! describes them, and the classification of Buildium's answers for the worker's retry policy.
//! Requests go through [`crate::outbound`].
//!
//! * Every request carries `x-buildium-client-id` and `x-buildium-client-secret`; redirects
//!   are never followed (one could carry the secret to another host), and plain `http://` is
//!   refused unless explicitly allowed (tests, the local emulator).
//! * Buildium allows an account 10 requests per second and answers 429 above it. With a
//!   [`RateLimiter`] ([`BuildiumClient::with_rate_limiter`]), each request first takes a slot
//!   of a rate every worker process shares in Redis; a 429 that still happens is a retryable
//!   [`BuildiumError`] with a short [`BuildiumError::retry_after`].
//! * Errors never carry the secret (answers are scrubbed of it) or a URL.

use std::time::{Duration, Instant, SystemTime};

use ::http::header::{HeaderMap, HeaderValue};
use ::http::{Method, StatusCode};
use serde::Deserialize;
use time::OffsetDateTime;
use url::Url;

use super::lease::{LeaseMessage, TenantMessage};
use crate::config::Secret;
use crate::outbound::{
    BodyLimit, BuildError, ClientOptions, HttpClient, Redirects, Request, Response, TransportError,
    TransportKind,
};
use crate::queue::rate_limit::RateLimiter;

/// Buildium's production API.
pub const DEFAULT_BASE_URL: &str = "https://api.buildium.com";

/// Header carrying the API key's client id.
pub const CLIENT_ID_HEADER: &str = "x-buildium-client-id";

/// Header carrying the API key's secret.
pub const CLIENT_SECRET_HEADER: &str = "x-buildium-client-secret";

/// Requests per second Buildium allows an account.
pub const RATE_LIMIT_PER_SECOND: u32 = 10;

/// Largest page of `GET /v1/leases` Buildium serves (a larger `limit` is lowered to it).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Longest query string Buildium accepts; longer ones get a 500.
pub const MAX_QUERY_CHARS: usize = 4096;

/// What [`BuildiumError::retry_after`] says after a 429 without `Retry-After`: Buildium only
/// says to retry "after a short interval (~200 ms)", and one second lets its window clear.
pub const RATE_LIMITED_RETRY: Duration = Duration::from_secs(1);

/// Largest lease or tenant read, in bytes.
pub const RECORD_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Largest page of leases read, in bytes (1000 leases with their tenants fit many times).
pub const PAGE_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Longest message kept from an answer.
const MESSAGE_LIMIT: usize = 300;

/// Most `Errors` entries of an `ApiErrorResponse` kept in a message.
const ERROR_DETAILS: usize = 5;

/// One of the reads, as named in metrics and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1/leases/{leaseId}`.
    GetLease,
    /// `GET /v1/leases/tenants/{tenantId}`.
    GetTenant,
    /// `GET /v1/leases`.
    ListLeases,
}

impl Operation {
    /// `get_lease`, `get_tenant` or `list_leases`: the `operation` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::GetLease => "get_lease",
            Operation::GetTenant => "get_tenant",
            Operation::ListLeases => "list_leases",
        }
    }
}

/// How a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildiumError {
    /// No HTTP answer: connect failure, timeout, reset; or an answer that could not be read
    /// within its size limit.
    #[error("{kind} error calling Buildium: {message}")]
    Transport {
        /// What went wrong.
        kind: TransportKind,
        /// Details, without URL or credentials.
        message: String,
    },
    /// Buildium answered with a status that is not success for this read.
    #[error("Buildium answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The HTTP status.
        status: u16,
        /// The `UserMessage` of Buildium's `ApiErrorResponse` and its `Errors`, if any.
        message: Option<String>,
        /// Its `ErrorCode`, if any.
        error_code: Option<String>,
        /// The `Retry-After` header as sent.
        retry_after: Option<String>,
    },
    /// A success whose body is not what Buildium documents (not JSON, not the documented
    /// object, no `X-Total-Count` on a list). Retrying the same read gives the same answer.
    #[error("Buildium's answer to {operation} is not what it documents: {message}")]
    Invalid {
        /// The read (`get_lease`, …).
        operation: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The request could not be made as asked (a query string over Buildium's limit).
    #[error("cannot ask Buildium: {0}")]
    Request(String),
    /// No slot of the shared request rate: Redis failed, or every slot stayed taken for
    /// longer than the limiter waits. Nothing was sent.
    #[error("no Buildium request slot: {0}")]
    RateLimiter(String),
}

impl From<TransportError> for BuildiumError {
    fn from(e: TransportError) -> Self {
        BuildiumError::Transport {
            kind: e.kind,
            message: e.message,
        }
    }
}

impl BuildiumError {
    /// Whether trying again later may succeed: transport errors, 408, 425, 429, 5xx, no
    /// rate-limit slot, and 401/403, which an operator can fix by correcting the API key or
    /// its permissions (see [`BuildiumError::is_auth_failure`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            BuildiumError::Transport { .. } | BuildiumError::RateLimiter(_) => true,
            BuildiumError::Status { status, .. } => {
                matches!(status, 401 | 403 | 408 | 425 | 429) || (500..=599).contains(status)
            }
            BuildiumError::Invalid { .. } | BuildiumError::Request(_) => false,
        }
    }

    /// Whether Buildium refused the credentials (401) or their permissions (403).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// Whether Buildium said the account went over its rate (429).
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429)
    }

    /// The HTTP status, if Buildium answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            BuildiumError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Buildium's `ErrorCode`, if it sent one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            BuildiumError::Status { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }

    /// How long to wait before trying again, when the answer says: its `Retry-After`
    /// (seconds or an HTTP date), else [`RATE_LIMITED_RETRY`] after a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BuildiumError::Status {
                status,
                retry_after,
                ..
            } => retry_after
                .as_deref()
                .and_then(|v| crate::retry::parse_retry_after(v, SystemTime::now()))
                .or((*status == 429).then_some(RATE_LIMITED_RETRY)),
            _ => None,
        }
    }
}

/// Errors building the client. None names the secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// The base URL is not an absolute http(s) URL, or is plain http without the switch.
    #[error("the Buildium base URL is not usable: {0}")]
    BaseUrl(String),
    /// The client id is empty or cannot be sent in a header.
    #[error("the Buildium client id is empty or contains characters not allowed in a header")]
    ClientId,
    /// The client secret is empty or cannot be sent in a header.
    #[error("the Buildium client secret is empty or contains characters not allowed in a header")]
    ClientSecret,
    /// The HTTP client could not be set up (TLS roots).
    #[error(transparent)]
    Http(#[from] BuildError),
}

/// What a [`BuildiumClient`] is built from.
#[derive(Debug, Clone)]
pub struct BuildiumClientOptions {
    /// Where the API is: [`DEFAULT_BASE_URL`] unless told otherwise. Paths (`/v1/…`) are
    /// appended to it.
    pub base_url: Url,
    /// Allow a plain `http://` base URL (the local emulator in tests); never for Buildium.
    pub allow_insecure_http: bool,
    /// The API key's client id.
    pub client_id: String,
    /// The API key's secret.
    pub client_secret: Secret,
    /// Limit on a whole request, answer included.
    pub timeout: Duration,
    /// Limit on establishing the connection.
    pub connect_timeout: Duration,
}

impl BuildiumClientOptions {
    /// Buildium's production API with `client_id` and `client_secret`, a 30 s request timeout
    /// (a page of 1000 leases takes a while) and a 5 s connect timeout.
    pub fn new(client_id: impl Into<String>, client_secret: Secret) -> Self {
        Self {
            // A constant that parses.
            base_url: Url::parse(DEFAULT_BASE_URL).unwrap_or_else(|_| unreachable!()),
            allow_insecure_http: false,
            client_id: client_id.into(),
            client_secret,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A lease status, as `GET /v1/leases` filters on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseStatus {
    /// The lease's term is under way.
    Active,
    /// It ended.
    Past,
    /// It starts later.
    Future,
}

impl LeaseStatus {
    /// `Active`, `Past` or `Future`, as Buildium spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseStatus::Active => "Active",
            LeaseStatus::Past => "Past",
            LeaseStatus::Future => "Future",
        }
    }
}

/// Which leases `GET /v1/leases` lists. The default lists every lease, [`MAX_PAGE_SIZE`] per
/// page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseQuery {
    /// Only leases with one of these statuses (`leasestatuses`); empty means any.
    pub statuses: Vec<LeaseStatus>,
    /// Only leases of these properties (`propertyids`); empty means any. Each id costs about
    /// 20 characters of the query string's [`MAX_QUERY_CHARS`]: ask for a few hundred at most.
    pub property_ids: Vec<i64>,
    /// Only leases updated at or after this instant (`lastupdatedfrom`, sent to the second).
    pub updated_from: Option<OffsetDateTime>,
    /// Leases per page (`limit`), 1 to [`MAX_PAGE_SIZE`]; `None` means the maximum, which
    /// spends the fewest requests of the account's rate.
    pub page_size: Option<u32>,
}

impl LeaseQuery {
    /// The page size sent: `page_size` within 1 to [`MAX_PAGE_SIZE`].
    pub fn limit(&self) -> u32 {
        self.page_size
            .unwrap_or(MAX_PAGE_SIZE)
            .clamp(1, MAX_PAGE_SIZE)
    }

    /// Appends the query's parameters and the page's `offset` to `url`.
    fn apply(&self, url: &mut Url, offset: u64) {
        let mut pairs = url.query_pairs_mut();
        for status in &self.statuses {
            pairs.append_pair("leasestatuses", status.as_str());
        }
        for id in &self.property_ids {
            pairs.append_pair("propertyids", &id.to_string());
        }
        if let Some(from) = self.updated_from {
            pairs.append_pair("lastupdatedfrom", &buildium_datetime(from));
        }
        pairs
            .append_pair("limit", &self.limit().to_string())
            .append_pair("offset", &offset.to_string());
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC, the one form Buildium documents for `lastupdatedfrom`.
/// Fractions of a second are dropped, which widens an "at or after" filter, never narrows it.
pub fn buildium_datetime(at: OffsetDateTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(format)
        // Only years outside 0..=9999 fail, which no lease filter uses.
        .unwrap_or_default()
}

/// A list entry that is not a lease as Buildium documents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLease {
    /// Its `Id`, if it has one.
    pub id: Option<i64>,
    /// What is wrong with it.
    pub message: String,
}

/// One page of `GET /v1/leases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePage {
    /// Its leases, in Buildium's order (by id unless asked otherwise).
    pub leases: Vec<LeaseMessage>,
    /// Entries that are not leases as documented; kept apart so one odd lease does not stop
    /// a pull of thousands.
    pub invalid: Vec<InvalidLease>,
    /// The position of its first entry in the whole list.
    pub offset: u64,
    /// `X-Total-Count`: how many leases the whole list held when this page was read.
    pub total: u64,
}

/// How far a [`LeasePages`] has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListProgress {
    /// Pages read.
    pub pages: u32,
    /// Entries read (leases and invalid entries).
    pub read: u64,
    /// `X-Total-Count` of the latest page, once one was read.
    pub total: Option<u64>,
}

impl std::fmt::Display for ListProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.total {
            Some(total) => write!(f, "{} of {total} leases ({} pages)", self.read, self.pages),
            None => f.write_str("no page read yet"),
        }
    }
}

/// A page-by-page reader of `GET /v1/leases` ([`BuildiumClient::list_leases`]).
///
/// Each [`LeasePages::next_page`] reads the next page; [`LeasePages::progress`] says how far
/// it got, for a progress bar. A failed read leaves the position where it was, so calling
/// `next_page` again retries the same page (after [`BuildiumError::retry_after`], say).
/// Pages come from `offset`: a lease created or deleted between two reads shifts the rest,
/// so a long pull can miss or repeat a lease; a later pull with `updated_from` catches up.
#[derive(Debug, Clone)]
pub struct LeasePages {
    client: BuildiumClient,
    query: LeaseQuery,
    progress: ListProgress,
    offset: u64,
    done: bool,
}

impl LeasePages {
    /// The next page, or `None` once the list is read.
    pub async fn next_page(&mut self) -> Result<Option<LeasePage>, BuildiumError> {
        if self.done {
            return Ok(None);
        }
        let page = self.client.lease_page(&self.query, self.offset).await?;
        let count = (page.leases.len() + page.invalid.len()) as u64;
        self.offset += count;
        self.progress.pages += 1;
        self.progress.read += count;
        self.progress.total = Some(page.total);
        // An empty page ends the list even if the total promised more (leases deleted
        // while reading); so does reaching the total.
        self.done = count == 0 || self.offset >= page.total;
        Ok((count > 0).then_some(page))
    }

    /// How far the reading got.
    pub fn progress(&self) -> ListProgress {
        self.progress
    }

    /// Whether the list is read to its end.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Client for one Buildium account. Cheap to clone.
#[derive(Clone)]
pub struct BuildiumClient {
    http: HttpClient,
    base_url: Url,
    /// Both credential headers, the secret marked sensitive.
    headers: HeaderMap,
    /// Kept to scrub it from anything an answer echoes.
    secret: Secret,
    limiter: Option<RateLimiter>,
}

// Manual impl: the headers hold the secret.
impl std::fmt::Debug for BuildiumClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildiumClient")
            .field("base_url", &self.base_url.as_str())
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// Buildium's error body, `ApiErrorResponse`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiErrorResponse {
    #[serde(default)]
    user_message: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    errors: Option<Vec<ApiError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiError {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

impl BuildiumClient {
    /// A client as `options` say, without a rate limiter.
    pub fn new(options: BuildiumClientOptions) -> Result<Self, ClientBuildError> {
        let base_url = options.base_url;
        if base_url.cannot_be_a_base() || !matches!(base_url.scheme(), "http" | "https") {
            return Err(ClientBuildError::BaseUrl(
                "must be an absolute http(s) URL".into(),
            ));
        }
        if base_url.scheme() == "http" && !options.allow_insecure_http {
            return Err(ClientBuildError::BaseUrl(
                "must be https unless plain http is explicitly allowed".into(),
            ));
        }
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(ClientBuildError::BaseUrl(
                "must not carry credentials; the API key goes in its headers".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        let id = options.client_id.trim();
        if id.is_empty() {
            return Err(ClientBuildError::ClientId);
        }
        let id = HeaderValue::from_str(id).map_err(|_| ClientBuildError::ClientId)?;
        headers.insert(CLIENT_ID_HEADER, id);
        let secret = options.client_secret.expose().trim();
        if secret.is_empty() {
            return Err(ClientBuildError::ClientSecret);
        }
        let mut secret =
            HeaderValue::from_str(secret).map_err(|_| ClientBuildError::ClientSecret)?;
        // Keeps the secret out of the HTTP stack's debug output.
        secret.set_sensitive(true);
        headers.insert(CLIENT_SECRET_HEADER, secret);
        let http = HttpClient::new(ClientOptions {
            timeout: options.timeout,
            connect_timeout: options.connect_timeout,
            // A redirect could carry the secret to another host; Buildium never redirects reads.
            redirects: Redirects::Never,
            // Enforced per request too, so no code path can send the secret in clear text.
            https_only: !options.allow_insecure_http,
        })?;
        Ok(Self {
            http,
            base_url,
            headers,
            secret: options.client_secret,
            limiter: None,
        })
    }

    /// With every request first taking a slot of `limiter`'s rate (shared, through Redis,
    /// with every process limiting the same account).
    #[must_use]
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// `GET /v1/leases/{leaseId}`: the lease, or `None` when Buildium does not know it (404
    /// with its error body: the lease was deleted). A 404 without Buildium's error body (a
    /// host that is not Buildium, a proxy) is an error, never a deletion; a wrong path under
    /// Buildium's own host is caught by [`BuildiumClient::verify_access`] only.
    pub async fn get_lease(&self, lease_id: i64) -> Result<Option<LeaseMessage>, BuildiumError> {
        let operation = Operation::GetLease;
        let url = self.url(&["v1", "leases", &lease_id.to_string()]);
        let response = self
            .send(operation, url, BodyLimit::Fail(RECORD_BODY_LIMIT))
            .await?;
        let Some(lease) = self.record::<LeaseMessage>(operation, &response)? else {
            return Ok(None);
        };
        if lease.id != lease_id {
            return Err(invalid(
                operation,
                format!("asked for lease {lease_id}, got lease {}", lease.id),
            ));
        }
        Ok(Some(lease))
    }

    /// `GET /v1/leases/tenants/{tenantId}`: the tenant with its `Leases`, or `None` when
    /// Buildium does not know them (404 with its error body).
    pub async fn get_tenant(&self, tenant_id: i64) -> Result<Option<TenantMessage>, BuildiumError> {
        let operation = Operation::GetTenant;
        let url = self.url(&["v1", "leases", "tenants", &tenant_id.to_string()]);
        let response = self
            .send(operation, url, BodyLimit::Fail(RECORD_BODY_LIMIT))
            .await?;
        let Some(tenant) = self.record::<TenantMessage>(operation, &response)? else {
            return Ok(None);
        };
        if tenant.id != tenant_id {
            return Err(invalid(
                operation,
                format!("asked for tenant {tenant_id}, got tenant {}", tenant.id),
            ));
        }
        Ok(Some(tenant))
    }

    /// A reader of `GET /v1/leases` for `query`, page by page; nothing is sent until its
    /// first [`LeasePages::next_page`].
    pub fn list_leases(&self, query: LeaseQuery) -> LeasePages {
        LeasePages {
            client: self.clone(),
            query,
            progress: ListProgress::default(),
            offset: 0,
            done: false,
        }
    }

    /// Checks the base URL and the API key with the cheapest read, one lease of
    /// `GET /v1/leases`, and answers how many leases the account holds. Buildium answers 404
    /// with its own error body for any path it does not serve, so a wrong base URL path would
    /// make every [`BuildiumClient::get_lease`] read as a deletion; the list always exists,
    /// so here a 404 is an error. Call it before trusting `None` (at start-up, say).
    pub async fn verify_access(&self) -> Result<u64, BuildiumError> {
        let query = LeaseQuery {
            page_size: Some(1),
            ..LeaseQuery::default()
        };
        Ok(self.lease_page(&query, 0).await?.total)
    }

    /// One page of `GET /v1/leases` from `offset`.
    async fn lease_page(
        &self,
        query: &LeaseQuery,
        offset: u64,
    ) -> Result<LeasePage, BuildiumError> {
        let operation = Operation::ListLeases;
        let mut url = self.url(&["v1", "leases"]);
        query.apply(&mut url, offset);
        let length = url.query().map_or(0, str::len);
        if length > MAX_QUERY_CHARS {
            return Err(BuildiumError::Request(format!(
                "the query string would be {length} characters, over Buildium's {MAX_QUERY_CHARS}; ask for fewer property ids at a time"
            )));
        }
        let response = self
            .send(operation, url, BodyLimit::Fail(PAGE_BODY_LIMIT))
            .await?;
        if !response.status.is_success() {
            return Err(self.status_error(&response));
        }
        let total = response
            .header("x-total-count")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| invalid(operation, "no X-Total-Count header with a count".into()))?;
        let entries: Vec<serde_json::Value> =
            serde_json::from_slice(&response.body).map_err(|e| {
                invalid(
                    operation,
                    format!("not a JSON array: {}", self.clean(&e.to_string())),
                )
            })?;
        let mut page = LeasePage {
            leases: Vec::with_capacity(entries.len()),
            invalid: Vec::new(),
            offset,
            total,
        };
        for entry in entries {
            let id = entry.get("Id").and_then(serde_json::Value::as_i64);
            match serde_json::from_value::<LeaseMessage>(entry) {
                Ok(lease) => page.leases.push(lease),
                Err(e) => page.invalid.push(InvalidLease {
                    id,
                    message: self.clean(&e.to_string()),
                }),
            }
        }
        Ok(page)
    }

    /// The record a single read answered: `Some` on success, `None` on Buildium's own 404,
    /// the error otherwise.
    fn record<T: serde::de::DeserializeOwned>(
        &self,
        operation: Operation,
        response: &Response,
    ) -> Result<Option<T>, BuildiumError> {
        if response.status == StatusCode::NOT_FOUND && is_api_error(&response.body) {
            return Ok(None);
        }
        if !response.status.is_success() {
            return Err(self.status_error(response));
        }
        serde_json::from_slice(&response.body)
            .map(Some)
            .map_err(|e| invalid(operation, self.clean(&e.to_string())))
    }

    /// Takes a rate-limit slot if there is a limiter, sends a GET of `url` with the
    /// credentials, and records the latency and result class as `operation` in the metrics.
    async fn send(
        &self,
        operation: Operation,
        url: Url,
        limit: BodyLimit,
    ) -> Result<Response, BuildiumError> {
        use crate::telemetry::metrics::{
            BUILDIUM_DURATION, BUILDIUM_RATE_LIMIT_WAIT, BUILDIUM_REQUESTS,
        };
        if let Some(limiter) = &self.limiter {
            let permit = limiter
                .acquire()
                .await
                .map_err(|e| BuildiumError::RateLimiter(e.to_string()))?;
            metrics::histogram!(BUILDIUM_RATE_LIMIT_WAIT).record(permit.waited.as_secs_f64());
        }
        let request = Request::new(Method::GET, url).headers(self.headers.clone());
        let started = Instant::now();
        let result = self.http.send(request, limit).await;
        let class = match &result {
            Ok(response) => status_class(response.status),
            Err(e) => e.kind.as_str(),
        };
        metrics::histogram!(BUILDIUM_DURATION, "operation" => operation.as_str())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(BUILDIUM_REQUESTS, "operation" => operation.as_str(), "class" => class)
            .increment(1);
        result.map_err(|e| BuildiumError::Transport {
            kind: e.kind,
            message: self.clean(&e.message),
        })
    }

    /// The [`BuildiumError::Status`] of an answer that is not success: its status,
    /// `Retry-After`, and the `UserMessage`, `Errors` and `ErrorCode` of its body.
    fn status_error(&self, response: &Response) -> BuildiumError {
        let retry_after = response.header("retry-after").map(|v| self.clean(v));
        let body: Option<ApiErrorResponse> = serde_json::from_slice(&response.body).ok();
        let (message, error_code) = match body {
            Some(body) => {
                let details: Vec<String> = body
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .take(ERROR_DETAILS)
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.key.unwrap_or_default(),
                            e.value.unwrap_or_default()
                        )
                    })
                    .collect();
                let message = match (body.user_message, details.is_empty()) {
                    (Some(m), true) => Some(m),
                    (Some(m), false) => Some(format!("{m} ({})", details.join("; "))),
                    (None, false) => Some(details.join("; ")),
                    (None, true) => None,
                };
                (
                    message.map(|m| self.clean(&m)),
                    body.error_code.map(|c| self.clean(&c)),
                )
            }
            None => {
                // Not Buildium's error shape: a short, printable excerpt so the operator
                // sees something.
                let text = self.clean(String::from_utf8_lossy(&response.body).trim());
                ((!text.is_empty()).then_some(text), None)
            }
        };
        BuildiumError::Status {
            status: response.status.as_u16(),
            message,
            error_code,
            retry_after,
        }
    }

    /// `s` truncated to [`MESSAGE_LIMIT`] characters, without control characters (so an
    /// answer cannot forge log lines) and without the secret, should an answer echo it.
    fn clean(&self, s: &str) -> String {
        let secret = self.secret.expose().trim();
        let scrubbed = if secret.is_empty() {
            s.to_owned()
        } else {
            s.replace(secret, "[redacted]")
        };
        scrubbed
            .chars()
            .filter(|c| !c.is_control())
            .take(MESSAGE_LIMIT)
            .collect()
    }

    /// The base URL with `segments` appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        // `cannot_be_a_base` was ruled out in `new`, so path segments are available.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }
}

/// Whether `body` is Buildium's `ApiErrorResponse`: a JSON object with at least one of its
/// fields. What else answers 404 (a wrong host or path, a proxy) sends something else.
fn is_api_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).is_ok_and(|o| {
        ["UserMessage", "ErrorCode", "Errors"]
            .iter()
            .any(|k| o.contains_key(*k))
    })
}

/// The metric class of an answered request.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        // Buildium's own rate limit, apart: the shared limiter should make it rare.
        429 => "429",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn invalid(operation: Operation, message: String) -> BuildiumError {
    BuildiumError::Invalid {
        operation: operation.as_str(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-value";

    fn options(base: &str) -> BuildiumClientOptions {
        BuildiumClientOptions {
            base_url: base.parse().unwrap(),
            allow_insecure_http: base.starts_with("http:"),
            ..BuildiumClientOptions::new("client-1", Secret::new(SECRET))
        }
    }

    fn client(base: &str) -> BuildiumClient {
        BuildiumClient::new(options(base)).unwrap()
    }

    fn response(status: u16, headers: &[(&'static str, &str)], body: &str) -> Response {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: body.to_owned().into(),
        }
    }

    fn status(status: u16) -> BuildiumError {
        BuildiumError::Status {
            status,
            message: None,
            error_code: None,
            retry_after: None,
        }
    }

    #[test]
    fn defaults_to_buildiums_production_api() {
        let options = BuildiumClientOptions::new("id", Secret::new("s"));
        assert_eq!(options.base_url.as_str(), "https://api.buildium.com/");
        assert!(!options.allow_insecure_http);
        BuildiumClient::new(options).unwrap();
    }

    #[test]
    fn plain_http_needs_the_explicit_switch() {
        let refused = BuildiumClient::new(BuildiumClientOptions {
            allow_insecure_http: false,
            ..options("http://127.0.0.1:1")
        })
        .unwrap_err()
        .to_string();
        assert!(refused.contains("https"), "{refused}");
        client("http://127.0.0.1:1");
        let with_user = BuildiumClient::new(options("https://user:pw@api.buildium.com"))
            .unwrap_err()
            .to_string();
        assert!(!with_user.contains("pw"), "{with_user}");
    }

    #[test]
    fn credentials_must_fit_in_headers_and_errors_never_show_them() {
        let empty = BuildiumClient::new(BuildiumClientOptions {
            client_secret: Secret::new("  "),
            ..options("https://api.buildium.com")
        });
        assert!(matches!(empty, Err(ClientBuildError::ClientSecret)));
        let bad = BuildiumClient::new(BuildiumClientOptions {
            client_secret: Secret::new("line\nbreak"),
            ..options("https://api.buildium.com")
        })
        .unwrap_err()
        .to_string();
        assert!(!bad.contains("line"), "{bad}");
        let no_id = BuildiumClient::new(BuildiumClientOptions {
            client_id: String::new(),
            ..options("https://api.buildium.com")
        });
        assert!(matches!(no_id, Err(ClientBuildError::ClientId)));
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = client("https://api.buildium.com");
        let debug = format!("{c:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!format!("{:?}", options("https://api.buildium.com")).contains(SECRET));
    }

    #[test]
    fn urls_are_joined_and_encoded() {
        let c = client("https://api.buildium.com");
        assert_eq!(
            c.url(&["v1", "leases", "501"]).as_str(),
            "https://api.buildium.com/v1/leases/501"
        );
        let c = client("http://127.0.0.1:9/prefix/");
        assert_eq!(
            c.url(&["v1", "leases", "tenants", "a/b"]).as_str(),
            "http://127.0.0.1:9/prefix/v1/leases/tenants/a%2Fb"
        );
    }

    #[test]
    fn list_queries_repeat_filters_and_page_by_offset() {
        let c = client("https://api.buildium.com");
        let query = LeaseQuery {
            statuses: vec![LeaseStatus::Active, LeaseStatus::Future],
            property_ids: vec![17, 23],
            updated_from: Some(time::macros::datetime!(2026-11-20 10:15:30.75 +01:00)),
            page_size: Some(5000),
        };
        let mut url = c.url(&["v1", "leases"]);
        query.apply(&mut url, 2000);
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let expected = [
            ("leasestatuses", "Active"),
            ("leasestatuses", "Future"),
            ("propertyids", "17"),
            ("propertyids", "23"),
            ("lastupdatedfrom", "2026-11-20T09:15:30Z"),
            ("limit", "1000"),
            ("offset", "2000"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(pairs, expected);
        assert_eq!(LeaseQuery::default().limit(), MAX_PAGE_SIZE);
        let zero = LeaseQuery {
            page_size: Some(0),
            ..LeaseQuery::default()
        };
        assert_eq!(zero.limit(), 1);
    }

    #[tokio::test]
    async fn a_query_over_buildiums_limit_is_refused_before_sending() {
        // Port 1 refuses connections: reaching the network would be a transport error.
        let c = client("http://127.0.0.1:1");
        let query = LeaseQuery {
            property_ids: (1_000_000..1_000_300).collect(),
            ..LeaseQuery::default()
        };
        let err = c.list_leases(query).next_page().await.unwrap_err();
        assert!(matches!(err, BuildiumError::Request(_)), "{err:?}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn classification() {
        for s in [401, 403, 408, 425, 429, 500, 502, 503, 504] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 404, 405, 410, 422] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        assert!(status(401).is_auth_failure() && status(403).is_auth_failure());
        assert!(!status(429).is_auth_failure() && !status(500).is_auth_failure());
        assert!(
            BuildiumError::Transport {
                kind: TransportKind::Timeout,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(BuildiumError::RateLimiter("saturated".into()).is_retryable());
        assert!(!invalid(Operation::GetLease, "x".into()).is_retryable());
        assert_eq!(status(503).status(), Some(503));
        assert_eq!(BuildiumError::Request(String::new()).status(), None);
    }

    #[test]
    fn a_429_asks_for_a_short_wait_unless_buildium_says_how_long() {
        assert_eq!(status(429).retry_after(), Some(RATE_LIMITED_RETRY));
        assert!(status(429).is_rate_limited());
        assert_eq!(status(503).retry_after(), None);
        let with_header = |value: &str| BuildiumError::Status {
            status: 429,
            message: None,
            error_code: None,
            retry_after: Some(value.to_owned()),
        };
        let told = with_header("3");
        assert_eq!(told.retry_after(), Some(Duration::from_secs(3)));
        let unparsable = with_header("soon");
        assert_eq!(unparsable.retry_after(), Some(RATE_LIMITED_RETRY));
    }

    #[test]
    fn status_errors_carry_buildiums_message_code_and_retry_after() {
        let c = client("https://api.buildium.com");
        let err = c.status_error(&response(
            400,
            &[("retry-after", "2")],
            r#"{"UserMessage":"The request contains invalid parameters.","ErrorCode":"BadRequest","Errors":[{"Key":"limit","Value":"limit must be an integer"}]}"#,
        ));
        assert_eq!(
            err,
            BuildiumError::Status {
                status: 400,
                message: Some(
                    "The request contains invalid parameters. (limit: limit must be an integer)"
                        .into()
                ),
                error_code: Some("BadRequest".into()),
                retry_after: Some("2".into()),
            }
        );
        assert_eq!(err.error_code(), Some("BadRequest"));
        let html = c.status_error(&response(502, &[], "<html>\nBad gateway</html>"));
        assert_eq!(
            html.to_string(),
            "Buildium answered 502: <html>Bad gateway</html>"
        );
    }

    #[test]
    fn answers_echoing_the_secret_are_scrubbed() {
        let c = client("https://api.buildium.com");
        let err = c.status_error(&response(
            401,
            &[],
            &format!(r#"{{"UserMessage":"bad secret {SECRET}"}}"#),
        ));
        let text = err.to_string();
        assert!(!text.contains(SECRET), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn only_buildiums_own_404_means_gone() {
        let c = client("https://api.buildium.com");
        let gone = response(
            404,
            &[],
            r#"{"UserMessage":"The requested resource was not found.","ErrorCode":"NotFound","Errors":[]}"#,
        );
        assert_eq!(
            c.record::<LeaseMessage>(Operation::GetLease, &gone),
            Ok(None)
        );
        let elsewhere = response(404, &[], "<html>Not Found</html>");
        let err = c
            .record::<LeaseMessage>(Operation::GetLease, &elsewhere)
            .unwrap_err();
        assert_eq!(err.status(), Some(404));
        let garbage = response(200, &[], "[]");
        assert!(matches!(
            c.record::<LeaseMessage>(Operation::GetLease, &garbage),
            Err(BuildiumError::Invalid { .. })
        ));
    }

    #[test]
    fn classes_set_429_apart() {
        let class = |s| status_class(StatusCode::from_u16(s).unwrap());
        assert_eq!(
            [200, 302, 401, 404, 429, 500, 503].map(class),
            ["2xx", "3xx", "4xx", "4xx", "429", "5xx", "5xx"]
        );
    }

    #[test]
    fn progress_reads_as_a_sentence() {
        assert_eq!(ListProgress::default().to_string(), "no page read yet");
        let progress = ListProgress {
            pages: 3,
            read: 2500,
            total: Some(5230),
        };
        assert_eq!(progress.to_string(), "2500 of 5230 leases (3 pages)");
    }
}
