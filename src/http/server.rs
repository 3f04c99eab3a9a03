//! The HTTP/1.1 server loop under both listeners.
//!
//! `axum::serve` sets no timer on hyper, so hyper's header-read timeout never fires and a
//! client trickling its request head one byte at a time holds a connection for ever (the
//! classic slow-loris). This loop sets the timer, the timeout and a bound on the buffered
//! head, and drains connections gracefully on shutdown.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use super::ApiError;

/// Limits every connection of a listener gets.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for a request's whole head; the connection is closed after it.
    pub header_read_timeout: Duration,
    /// Largest request head answered with a JSON 431 by [`reject_large_headers`]; hyper
    /// itself refuses (with a bare 431) heads larger than twice this, so no connection
    /// buffers more than that.
    pub header_limit_bytes: usize,
}

impl ConnectionLimits {
    /// The limits `[http]` sets; both listeners use them.
    pub fn from_settings(http: &crate::config::HttpSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(http.read_timeout_ms),
            header_limit_bytes: http.header_limit_bytes,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then stops accepting and waits for open
/// connections to finish their current request (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's floor for this buffer is 8 KiB.
        .max_buf_size((limits.header_limit_bytes * 2).max(8192));
    let builder = builder.http1_only();
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = router
            .clone()
            .map_request(|request: Request<Incoming>| request.map(Body::new));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
