//! Every rejection as `{"error": "<code>", "message": "<sentence>"}` with its status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A rejection: status, machine-readable code and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code senders can branch on (`invalid_signature`).
    pub code: &'static str,
    /// What went wrong, for a person. Never holds secrets or the body.
    pub message: String,
    /// Seconds to send as `Retry-After`.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// A rejection without `Retry-After`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

impl ApiError {
    fn body(&self) -> serde_json::Value {
        json!({"error": self.code, "message": self.message})
    }

    /// The whole answer as HTTP/1.1 bytes, ending with `connection: close`: for the
    /// connection layer, which answers where no router runs (503 `overloaded` at the cap, a
    /// request hyper could not parse). Same status, headers and body as the router's.
    pub(super) fn to_http1_bytes(&self) -> Vec<u8> {
        let body = self.body().to_string();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.status.as_str(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(secs) = self.retry_after_secs {
            head.push_str(&format!("retry-after: {secs}\r\n"));
        }
        head.push_str(&format!(
            "connection: close\r\ndate: {}\r\n\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now())
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; webhooks go to POST /webhooks/{source}",
    )
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}
