//! Bearer-token authentication, and the caller's identity for audit records.
//!
//! The presented token is compared with every configured token in constant time and the
//! results are folded, so neither the content of a token nor which of several tokens matched
//! shows in the response time. Tokens are never logged or stored: audit records name the
//! caller by a short fingerprint of the token.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConstantTimeEq as _};
use tracing::info;

use super::AdminState;
use crate::config::Secret;
use crate::http::ApiError;

/// Bytes of the token's SHA-256 shown in the fingerprint (12 hex characters): enough to tell
/// an operator's tokens apart, far too little to help anyone guess one.
const FINGERPRINT_BYTES: usize = 6;

/// Who made an authenticated request, as audit records name them: `token:<fingerprint>`.
///
/// Put into the request by [`require_bearer`]; taking it as an extractor also makes a handler
/// refuse to run (401) should it ever be routed without the middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Actor(String);

impl Actor {
    /// The identity of whoever holds `token`: `token:` and the first 12 hex characters of
    /// its SHA-256.
    pub(super) fn for_token(token: &str) -> Self {
        let digest = Sha256::digest(token.as_bytes());
        let hex: String = digest
            .iter()
            .take(FINGERPRINT_BYTES)
            .map(|b| format!("{b:02x}"))
            .collect();
        Self(format!("token:{hex}"))
    }

    /// The identity as written in audit records and logs.
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or_else(unauthorized)
    }
}

/// Middleware: lets the request through only with an accepted bearer token, recording the
/// caller as an [`Actor`] in the request's extensions.
pub(super) async fn require_bearer(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let actor = bearer_token(request.headers())
        .filter(|token| token_accepted(token, &state.tokens))
        .map(Actor::for_token);
    match actor {
        Some(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        None => {
            // Path and method only: the header may hold a real token with a typo in it.
            info!(
                http.method = %request.method(),
                http.path = request.uri().path(),
                "admin request rejected: missing or invalid bearer token"
            );
            unauthorized()
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, as
/// RFC 9110 has it); `None` when absent, malformed, another scheme, or empty.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `presented` equals one of `tokens`. Every token is compared, whatever matched
/// before; each comparison checks the length and then every byte without an early exit.
fn token_accepted(presented: &str, tokens: &[Secret]) -> bool {
    let matched = tokens.iter().fold(Choice::from(0), |matched, token| {
        matched | presented.as_bytes().ct_eq(token.expose().as_bytes())
    });
    bool::from(matched)
}

/// 401 with `WWW-Authenticate: Bearer`, so clients know which scheme to use.
fn unauthorized() -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid admin token is required: send `Authorization: Bearer <token>`",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-admin";

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(header::AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn only_a_configured_token_is_accepted() {
        let tokens = vec![Secret::new("another-token-of-16+"), Secret::new(TOKEN)];
        assert!(token_accepted(TOKEN, &tokens));
        assert!(
            !token_accepted("0123456789abcdef-admiN", &tokens),
            "last char"
        );
        assert!(!token_accepted("0123456789abcdef-admi", &tokens), "prefix");
        assert!(
            !token_accepted("0123456789abcdef-admin2", &tokens),
            "longer"
        );
        assert!(!token_accepted("", &tokens));
        assert!(!token_accepted(TOKEN, &[]), "no tokens configured");
    }

    #[test]
    fn the_bearer_scheme_is_required_in_any_case() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&headers("Bearer  ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn the_actor_is_a_short_fingerprint_not_the_token() {
        let actor = Actor::for_token(TOKEN);
        let digest = Sha256::digest(TOKEN.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(actor.as_str(), format!("token:{}", &hex[..12]));
        assert!(!actor.as_str().contains(TOKEN));
        assert_ne!(actor, Actor::for_token("0123456789abcdef-admiN"));
    }
}
