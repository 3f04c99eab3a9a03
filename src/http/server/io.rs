//! The socket under hyper, and JSON bodies for the requests hyper refuses by itself.
//!
//! hyper answers some requests without ever calling the service: a request line or header it
//! cannot parse (a DEL byte in a header value, two differing `Content-Length` headers, a
//! garbage request line) gets a bare 400, a head larger than its buffer a bare 431, an
//! over-long request target a bare 414 — a head with `content-length: 0`, after which it
//! closes the connection. hyper offers no hook to change those answers, so this wrapper
//! replaces them on their way to the socket.
//!
//! It tells hyper's answers from the service's by *who* is writing, not by matching bytes:
//! bytes written while the connection is idle (no request with the service and all of its
//! answers flushed, see [`Connection`]) cannot belong to a service answer, so they are
//! hyper's own. Their head is read up to its blank line for the status and replaced by the
//! same status with the usual `{"error", "message"}` body and `connection: close`. No
//! answer of the service can be mistaken for hyper's, whatever its status or bytes, and
//! nothing depends on the wording of hyper's heads beyond the status line.
//!
//! Not covered: a pipelined request that hyper refuses while the answer to the request
//! before it is still unflushed (the client is not reading) keeps hyper's bare answer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::slots::Connection;
use crate::http::ApiError;

/// hyper's own answers are a status line and two or three short headers; anything longer
/// without a blank line is not one of them and is passed on unchanged.
const MAX_OWN_HEAD: usize = 1024;

/// A connection's socket, as hyper sees it.
#[derive(Debug)]
pub(super) struct ConnectionIo {
    stream: TcpStream,
    connection: Arc<Connection>,
    /// The largest head hyper buffers, for the 431 message.
    head_limit: usize,
    own: OwnAnswer,
}

#[derive(Debug)]
enum OwnAnswer {
    /// Writes go to the socket as they are.
    None,
    /// hyper's own answer, collected until the end of its head.
    Reading(Vec<u8>),
    /// What goes out instead, `sent` bytes of it written.
    Sending { bytes: Vec<u8>, sent: usize },
}

impl ConnectionIo {
    /// Wraps `stream`; `head_limit` is hyper's `max_buf_size`.
    pub(super) fn new(stream: TcpStream, connection: Arc<Connection>, head_limit: usize) -> Self {
        Self {
            stream,
            connection,
            head_limit,
            own: OwnAnswer::None,
        }
    }

    /// Writes what is pending of a replacement answer.
    fn poll_send_own(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let OwnAnswer::Sending { bytes, sent } = &mut self.own else {
                return Poll::Ready(Ok(()));
            };
            if *sent == bytes.len() {
                self.own = OwnAnswer::None;
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
    }

    /// Before a flush or shutdown: an own answer still being collected is not one we know;
    /// it goes out unchanged.
    fn release_partial_head(&mut self) {
        if let OwnAnswer::Reading(head) = &mut self.own {
            let bytes = std::mem::take(head);
            self.own = OwnAnswer::Sending { bytes, sent: 0 };
        }
    }
}

impl AsyncRead for ConnectionIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnectionIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_send_own(cx))?;
        if matches!(this.own, OwnAnswer::None) {
            if !this.connection.is_idle() {
                return Pin::new(&mut this.stream).poll_write(cx, buf);
            }
            this.connection.writing_own_answer();
            this.own = OwnAnswer::Reading(Vec::new());
        }
        if let OwnAnswer::Reading(head) = &mut this.own {
            head.extend_from_slice(buf);
            if let Some(end) = find(head, b"\r\n\r\n") {
                // What follows the head would be a body; hyper's own answers have none.
                let bytes = json_answer(&head[..end], this.head_limit)
                    .unwrap_or_else(|| std::mem::take(head));
                this.own = OwnAnswer::Sending { bytes, sent: 0 };
            } else if head.len() > MAX_OWN_HEAD {
                this.release_partial_head();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.release_partial_head();
        ready!(this.poll_send_own(cx))?;
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        this.connection.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.release_partial_head();
        ready!(this.poll_send_own(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The JSON answer replacing hyper's `head` (without its blank line); `None` when the head
/// does not start with an HTTP/1 status line.
fn json_answer(head: &[u8], head_limit: usize) -> Option<Vec<u8>> {
    let line = head.split(|&b| b == b'\r').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = StatusCode::from_bytes(parts.next()?.as_bytes()).ok()?;
    debug!(
        http.status = status.as_u16(),
        "request refused by the HTTP parser"
    );
    Some(rejection(status, head_limit).to_http1_bytes())
}

/// The rejection for a status hyper answered with by itself.
fn rejection(status: StatusCode, head_limit: usize) -> ApiError {
    let (code, message) = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers_too_large",
            format!("the request head is over {head_limit} bytes (or has too many header fields)"),
        ),
        StatusCode::URI_TOO_LONG => ("uri_too_long", "the request target is too long".to_owned()),
        s if s.is_client_error() => (
            "bad_request",
            "the request is not valid HTTP/1.1: a malformed request line or header, a control \
             character in a header value, or conflicting Content-Length headers"
                .to_owned(),
        ),
        _ => (
            "internal_error",
            "the request could not be handled".to_owned(),
        ),
    };
    ApiError::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(head: &str) -> String {
        String::from_utf8(json_answer(head.as_bytes(), 32_768).expect("replaced")).expect("utf-8")
    }

    fn body(answer: &str) -> serde_json::Value {
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .parse()
            .expect("a number");
        assert_eq!(length, body.len(), "{answer}");
        serde_json::from_str(body).expect("json")
    }

    #[test]
    fn hypers_bare_answers_become_json_with_the_same_status() {
        for (head, status, code) in [
            (
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x",
                "400 Bad Request",
                "bad_request",
            ),
            (
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0",
                "431 Request Header Fields Too Large",
                "headers_too_large",
            ),
            (
                "HTTP/1.0 414 URI Too Long\r\ncontent-length: 0",
                "414 URI Too Long",
                "uri_too_long",
            ),
            (
                "HTTP/1.1 405 Method Not Allowed",
                "405 Method Not Allowed",
                "bad_request",
            ),
        ] {
            let answer = answer(head);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{answer}"
            );
            assert!(answer.contains("\r\ncontent-type: application/json\r\n"));
            assert!(answer.contains("\r\nconnection: close\r\n"));
            let body = body(&answer);
            assert_eq!(body["error"], code, "{answer}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        assert!(answer("HTTP/1.1 431 x").contains("over 32768 bytes"));
    }

    #[test]
    fn anything_else_is_left_alone() {
        for head in [
            "",
            "garbage",
            "HTTP/2 400 x",
            "HTTP/1.1 abc x",
            "SIP/2.0 200 OK",
        ] {
            assert!(json_answer(head.as_bytes(), 1).is_none(), "{head}");
        }
    }
}
