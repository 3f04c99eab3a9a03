//! Outbound HTTP: the one place lease-sync builds HTTP clients, reads answers with a bound
//! and describes transport failures. The OpenApp client, reconciliation's URL input and the
//! `healthcheck` and `send-test-event` commands go through it; none of them knows reqwest.
//!
//! Every answer is read whole, up to a limit chosen per call, so no caller can be made to
//! buffer an unbounded body. Error messages never carry the URL (it may hold a token).

use std::time::Duration;

use ::http::{HeaderMap, Method, StatusCode};
use bytes::Bytes;
use url::Url;

/// The `User-Agent` of every outbound request.
const USER_AGENT: &str = concat!("lease-sync/", env!("CARGO_PKG_VERSION"));

/// What kind of transport failure a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// No answer in time (connect or whole request).
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The connection broke, or the request could not be sent.
    Io,
    /// The answer's body was larger than the caller allows, or could not be read as expected.
    Body,
}

impl TransportKind {
    /// `timeout`, `connect`, `io` or `body`: the name in attempt records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Timeout => "timeout",
            TransportKind::Connect => "connect",
            TransportKind::Io => "io",
            TransportKind::Body => "body",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that got no (complete) answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct TransportError {
    /// What went wrong.
    pub kind: TransportKind,
    /// Details (the error chain), without the URL.
    pub message: String,
}

impl TransportError {
    /// A [`TransportKind::Body`] failure with `message`.
    pub fn body(message: impl Into<String>) -> Self {
        Self {
            kind: TransportKind::Body,
            message: message.into(),
        }
    }
}

/// The client could not be set up (TLS roots and the like).
#[derive(Debug, thiserror::Error)]
#[error("cannot build an HTTP client: {0}")]
pub struct BuildError(String);

/// Where redirects may lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Never followed: an answer is what the first server said. For anything carrying
    /// credentials, which a redirect could take to another host.
    Never,
    /// Followed up to this many hops.
    Limited(usize),
}

/// How a client behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Limit on a whole request, answer included.
    pub timeout: Duration,
    /// Limit on establishing the connection.
    pub connect_timeout: Duration,
    /// Redirect policy.
    pub redirects: Redirects,
    /// Refuse plain `http://` URLs, so no code path sends a credential in clear text.
    pub https_only: bool,
}

impl ClientOptions {
    /// `timeout` for everything, no redirects, plain http allowed (local probes and tools).
    pub fn local(timeout: Duration) -> Self {
        Self {
            timeout,
            connect_timeout: timeout,
            redirects: Redirects::Never,
            https_only: false,
        }
    }
}

/// How much of an answer's body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// Read it all, failing with [`TransportKind::Body`] beyond this many bytes.
    Fail(usize),
    /// Read up to this many bytes and drop the rest (error bodies, which are only shown).
    Truncate(usize),
}

/// An answer, read whole (within its [`BodyLimit`]).
#[derive(Debug, Clone)]
pub struct Response {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Response {
    /// Header `name` as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The URL.
    pub url: Url,
    /// Headers besides `User-Agent`.
    pub headers: HeaderMap,
    /// The body, if any (set `Content-Type` in `headers`).
    pub body: Option<Bytes>,
}

impl Request {
    /// A request without headers or body.
    pub fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
        }
    }

    /// With `headers` added.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers.extend(headers);
        self
    }

    /// With `value` serialized as a JSON body.
    pub fn json(mut self, value: &impl serde::Serialize) -> Self {
        self.headers.insert(
            ::http::header::CONTENT_TYPE,
            ::http::HeaderValue::from_static("application/json"),
        );
        // Serializing our own request types cannot fail; an empty body would be refused.
        self.body = Some(serde_json::to_vec(value).unwrap_or_default().into());
        self
    }

    /// With `body` as it is.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }
}

/// An HTTP client. Cheap to clone (connections are pooled and shared).
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    /// A client behaving as `options` says.
    pub fn new(options: ClientOptions) -> Result<Self, BuildError> {
        let redirects = match options.redirects {
            Redirects::Never => reqwest::redirect::Policy::none(),
            Redirects::Limited(hops) => reqwest::redirect::Policy::limited(hops),
        };
        let inner = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .redirect(redirects)
            .https_only(options.https_only)
            .build()
            .map_err(|e| BuildError(error_chain(&e.without_url())))?;
        Ok(Self { inner })
    }

    /// Sends `request` and reads the answer within `limit`. Any status is an answer; only a
    /// missing or unreadable one is an error.
    pub async fn send(
        &self,
        request: Request,
        limit: BodyLimit,
    ) -> Result<Response, TransportError> {
        let mut builder = self
            .inner
            .request(request.method, request.url)
            .headers(request.headers);
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let mut response = builder.send().await.map_err(transport_error)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => match limit {
                    BodyLimit::Fail(max) if body.len() + chunk.len() > max => {
                        return Err(TransportError::body(format!(
                            "the answer is larger than {max} bytes"
                        )));
                    }
                    BodyLimit::Truncate(max) => {
                        let room = max.saturating_sub(body.len());
                        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        if body.len() >= max {
                            break;
                        }
                    }
                    BodyLimit::Fail(_) => body.extend_from_slice(&chunk),
                },
                Ok(None) => break,
                // A truncated error body is still worth showing; a broken full body is not.
                Err(_) if matches!(limit, BodyLimit::Truncate(_)) => break,
                Err(e) => return Err(transport_error(e)),
            }
        }
        Ok(Response {
            status,
            headers,
            body: body.into(),
        })
    }
}

fn transport_error(e: reqwest::Error) -> TransportError {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Io
    };
    TransportError {
        kind,
        message: error_chain(&e.without_url()),
    }
}

/// `e` and its sources, joined by `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn error_chains_name_every_cause() {
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner");
    }

    #[test]
    fn kinds_have_their_record_names() {
        let names: Vec<&str> = [
            TransportKind::Timeout,
            TransportKind::Connect,
            TransportKind::Io,
            TransportKind::Body,
        ]
        .iter()
        .map(|k| k.as_str())
        .collect();
        assert_eq!(names, ["timeout", "connect", "io", "body"]);
    }
}
