//! The HTTP/1.1 server loop under both listeners.
//!
//! `axum::serve` sets no timer on hyper, caps nothing and answers some malformed requests
//! with hyper's bare error heads, so lease-sync runs its own loop:
//!
//! * **Time.** hyper's header-read timeout (`http.read_timeout_ms`) runs from the moment a
//!   connection is accepted and again from the end of each answer, so a connection that
//!   sends nothing, trickles its head (slow-loris) or sits idle between keep-alive requests
//!   is closed after that long. hyper's own HTTP/1 connection is used directly: hyper-util's
//!   protocol-detecting `auto` connection first waits, without any timer, for bytes that
//!   tell HTTP/1 from HTTP/2, which is what let a silent client hold a socket for ever.
//! * **Space.** A request head may be at most twice `http.header_limit_bytes` (hyper's
//!   buffer); [`reject_large_headers`] answers 431 in JSON above the limit itself.
//! * **Connections.** Each listener holds at most its cap. At the cap, the connection idle
//!   the longest is closed to make room (see the `slots` module); when none is idle, the new
//!   connection is answered 503 `overloaded` with `Retry-After` and closed. The loop never
//!   stops accepting.
//! * **Answers.** Requests hyper refuses by itself get a JSON body too (the `io` module).
//! * **Shutdown.** Accepting stops, idle connections are closed, and open requests are
//!   answered (the caller bounds the wait).

mod io;
mod slots;

use std::convert::Infallible;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use self::io::ConnectionIo;
use self::slots::{Admission, Connection, Refusal, Slots};
use super::ApiError;

/// Which listener a server loop runs, for metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `http.listen`: webhooks and probes.
    Webhook,
    /// `admin.listen`: the admin API, metrics and probes.
    Admin,
}

impl Listener {
    /// The `listener` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Admin => "admin",
        }
    }
}

/// Limits every connection of a listener gets.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// The listener these limits are for.
    pub listener: Listener,
    /// Time allowed for a request's whole head, counted from accept and from the end of the
    /// previous answer; the connection is closed after it.
    pub header_read_timeout: Duration,
    /// Largest request head answered with a JSON 431 by [`reject_large_headers`]; hyper
    /// itself refuses heads larger than twice this (answered 431 in JSON as well), so no
    /// connection buffers more than that.
    pub header_limit_bytes: usize,
    /// Connections held at once (see the module documentation for what happens past it).
    pub max_connections: usize,
    /// `Retry-After` of a 503 `overloaded`.
    pub retry_after_secs: u64,
}

impl ConnectionLimits {
    /// The limits of `listener`: `[http]`'s timeouts and sizes (both listeners use them)
    /// and the listener's connection cap (see `Settings::connection_caps`).
    pub fn new(
        listener: Listener,
        http: &crate::config::HttpSettings,
        max_connections: usize,
    ) -> Self {
        Self {
            listener,
            header_read_timeout: http.read_timeout,
            header_limit_bytes: http.header_limit_bytes,
            max_connections,
            retry_after_secs: http.retry_after.as_secs(),
        }
    }

    /// hyper's read buffer, the largest head it accepts; hyper's floor for it is 8 KiB.
    fn max_buf_size(&self) -> usize {
        (self.header_limit_bytes * 2).max(8192)
    }
}

/// How long a refused connection is given to read its 503 before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown`, then stops accepting, closes idle
/// connections and waits for open requests to be answered (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buf_size());
    let slots = Slots::new(limits.listener.label(), limits.max_connections);
    let overloaded = Arc::new(overloaded(&limits));
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(listener = limits.listener.label(), "cannot accept a connection: {e}");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        match slots.admit() {
            Admission::Admitted {
                connection,
                reclaimed,
            } => {
                let io = ConnectionIo::new(stream, connection.clone(), limits.max_buf_size());
                tasks.spawn(serve_connection(
                    builder.clone(),
                    io,
                    router.clone(),
                    connection,
                    shutdown.clone(),
                    peer,
                ));
                if reclaimed {
                    // Let the reclaimed connection's task close it before the next accept.
                    tokio::task::yield_now().await;
                }
            }
            Admission::Refused(refusal) => {
                debug!(%peer, listener = limits.listener.label(), "connection refused: at the cap");
                tasks.spawn(refuse(stream, overloaded.clone(), refusal));
            }
            Admission::Dropped => {
                debug!(%peer, listener = limits.listener.label(), "connection closed: at the cap");
                drop(stream);
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

fn overloaded(limits: &ConnectionLimits) -> ApiError {
    ApiError {
        retry_after_secs: Some(limits.retry_after_secs),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "all {} connections of this listener are busy; retry after {} s",
                limits.max_connections, limits.retry_after_secs
            ),
        )
    }
}

/// One connection, until it ends, is reclaimed while idle, or is drained at shutdown.
async fn serve_connection(
    builder: http1::Builder,
    io: ConnectionIo,
    router: Router,
    connection: Arc<Connection>,
    shutdown: CancellationToken,
    peer: std::net::SocketAddr,
) {
    let service = TrackedService {
        router,
        connection: connection.clone(),
    };
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let reclaimed = connection.reclaimed().clone();
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, "connection ended: {e}");
            }
            return;
        }
        () = reclaimed.cancelled() => debug!(%peer, "reclaiming an idle connection"),
        () = shutdown.cancelled() => {}
    }
    // Idle: no request of it is with the service and its answers are flushed, so dropping
    // it loses nothing. Otherwise hyper finishes the open request and then closes.
    if connection.is_idle() {
        return;
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        debug!(%peer, "connection ended: {e}");
    }
}

/// Answers 503 `overloaded` and closes. The rest of the request is read and discarded for a
/// moment first: closing a socket with unread input resets it, which can destroy the answer
/// before the client has read it.
async fn refuse(mut stream: TcpStream, answer: Arc<ApiError>, refusal: Refusal) {
    let _refusal = refusal;
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(&answer.to_http1_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0_u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The router as hyper's service, telling the connection when a request is with it.
#[derive(Debug)]
struct TrackedService {
    router: Router,
    connection: Arc<Connection>,
}

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.connection.request_started();
        // Reports the end of the answer when dropped: with the body, or with this future if
        // the connection goes first.
        let done = ResponseDone(self.connection.clone());
        let answer = self.router.clone().oneshot(request.map(Body::new));
        Box::pin(async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|inner| TrackedBody { inner, _done: done }))
        })
    }
}

#[derive(Debug)]
struct ResponseDone(Arc<Connection>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.response_finished();
    }
}

/// A response body that reports its end (hyper drops it once it has taken all of it).
#[derive(Debug)]
struct TrackedBody {
    inner: Body,
    _done: ResponseDone,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: 431 `headers_too_large` when the request's header block is larger than
/// `limit` bytes (names, values and the `: ` and CRLF around each).
pub async fn reject_large_headers(limit: usize, request: Request, next: Next) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are {size} bytes; at most {limit} are accepted"),
        )
        .into_response();
    }
    next.run(request).await
}
