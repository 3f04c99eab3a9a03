//! Admin API errors: the caller's mistakes as [`ApiError`]s, queue failures as 503 (or a
//! bare 500) whose details go to the log, once, and never to the caller.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::{error, warn};

use crate::http::ApiError;
use crate::queue::QueueError;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdminError {
    /// The request cannot be served as asked (400, 404, 409): sent as it is.
    #[error("{}: {}", .0.code, .0.message)]
    Rejected(ApiError),
    /// Redis failed, or holds something unreadable.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<ApiError> for AdminError {
    fn from(error: ApiError) -> Self {
        Self::Rejected(error)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            Self::Rejected(rejection) => rejection.into_response(),
            Self::Queue(error @ (QueueError::Redis(_) | QueueError::Timeout(_))) => {
                // The only place a queue failure is logged: handlers just pass it up.
                warn!(error = %error, "admin request failed: the queue is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    "the queue (Redis) is unavailable; try again shortly",
                )
                .into_response()
            }
            Self::Queue(error) => {
                error!(error = %error, "admin request failed: unreadable data in the queue");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the request failed; the server log has the details",
                )
                .into_response()
            }
        }
    }
}

/// 400 `invalid_query`, naming the query parameter at fault.
pub(super) fn invalid_query(parameter: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("invalid query parameter `{parameter}`: {detail}"),
    )
}

/// 400 `invalid_body`.
pub(super) fn invalid_body(detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_body",
        format!("invalid request body: {detail}"),
    )
}

/// 404 `not_found` for a delivery id that is not a dead letter.
pub(super) fn no_dead_letter(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no dead letter with id `{}`", shown(id)),
    )
}

/// Longest part of a caller's id echoed in an answer, in characters.
const SHOWN_ID_CHARS: usize = 32;

/// A caller-supplied id as echoed back: at most [`SHOWN_ID_CHARS`] characters, anything but
/// visible ASCII and spaces replaced by `?`, `…` when cut.
pub(super) fn shown(id: &str) -> String {
    let mut out: String = id
        .chars()
        .take(SHOWN_ID_CHARS)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if id.chars().count() > SHOWN_ID_CHARS {
        out.push('…');
    }
    out
}

/// Fallback for paths the admin API does not have.
pub(super) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the admin API is described at GET /admin/openapi.json",
    )
}

/// Fallback for a known path with a method it does not take.
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint; see GET /admin/openapi.json",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_ids_are_short_and_printable() {
        assert_eq!(
            shown("01JD3ZJ4Q8W6V5T2N9K7H1M0PX"),
            "01JD3ZJ4Q8W6V5T2N9K7H1M0PX"
        );
        let long = "x".repeat(10_000);
        assert_eq!(shown(&long), format!("{}…", "x".repeat(SHOWN_ID_CHARS)));
        assert_eq!(shown("a\nb\u{7f}c\u{e9}"), "a?b?c?");
    }
}
