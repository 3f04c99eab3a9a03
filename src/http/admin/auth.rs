//! Bearer-token authentication and authorization, and the caller's identity for audit
//! records.
//!
//! At startup every configured token becomes its SHA-256 digest ([`AcceptedTokens`]); plain
//! tokens are hashed once and `sha256:` entries decoded, so the process holds no token. A
//! request's token is hashed and compared with every digest in constant time, folding the
//! results without an early exit, so neither the content of a token nor which one matched
//! shows in the response time. Then:
//!
//! * no, a malformed or an unknown token: 401 `unauthorized`;
//! * a token past its `not_after` (checked per request, so a running process stops taking
//!   it): 401 `token_expired`;
//! * a `read` token on anything but `GET` or `HEAD`: 403 `insufficient_scope`.
//!
//! Audit records and logs name the caller by the token's name, or by `token:` and the first
//! 12 hex characters of its SHA-256 — never by the token.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq as _};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::AdminState;
use crate::config::{AdminToken, InvalidToken, TokenDigest, TokenScope};
use crate::http::ApiError;

/// Bytes of the token's SHA-256 shown in the fingerprint (12 hex characters): enough to tell
/// an operator's tokens apart, far too little to help anyone guess one.
const FINGERPRINT_BYTES: usize = 6;

/// Who made an authenticated request, as audit records name them: the token's name, or
/// `token:<fingerprint>`.
///
/// Put into the request by [`require_bearer`]; taking it as an extractor also makes a handler
/// refuse to run (401) should it ever be routed without the middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Actor(String);

impl Actor {
    /// The identity of the token with SHA-256 `digest`: `token:` and its first 12 hex
    /// characters. For a `sha256:` entry these are the entry's own first 12, so the plain and
    /// the hashed form of one token are the same caller.
    fn for_digest(digest: &TokenDigest) -> Self {
        Self(format!(
            "token:{}",
            hex::encode(&digest[..FINGERPRINT_BYTES])
        ))
    }

    /// The identity of a console session, which signed in as this actor (checked against the
    /// configured tokens on every request).
    pub(super) fn from_session(actor: &str) -> Self {
        Self(actor.to_owned())
    }

    /// The identity as written in audit records and logs.
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

/// What signing in to the web console with a token gives: who, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Grant {
    /// Who, as audit records name them.
    pub(super) actor: Actor,
    /// `admin` or `read`.
    pub(super) scope: TokenScope,
}

/// Why a console sign-in failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SignInRefused {
    /// Not a configured token.
    Unknown,
    /// A configured token past its `not_after`.
    Expired,
}

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or_else(|| Refusal::Unauthorized.into_response())
    }
}

/// One configured token, as requests are checked against it.
#[derive(Clone)]
struct Accepted {
    digest: TokenDigest,
    actor: Actor,
    scope: TokenScope,
    not_after: Option<OffsetDateTime>,
}

/// The configured admin tokens as digests, with what each may do. Built once at startup.
#[derive(Clone, Default)]
pub struct AcceptedTokens(Vec<Accepted>);

impl AcceptedTokens {
    /// Digests `tokens`; fails on an entry validation would have refused.
    pub fn new(tokens: &[AdminToken]) -> Result<Self, InvalidToken> {
        tokens
            .iter()
            .map(|token| {
                let digest = token.digest()?;
                Ok(Accepted {
                    digest,
                    actor: token
                        .name
                        .clone()
                        .map_or_else(|| Actor::for_digest(&digest), Actor),
                    scope: token.scope,
                    not_after: token.not_after,
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The configured token `presented` is, if any. Every digest is compared, whatever
    /// matched before, and the match is selected without branching on it.
    fn find(&self, presented: &str) -> Option<&Accepted> {
        let digest: TokenDigest = Sha256::digest(presented.as_bytes()).into();
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, accepted) in self.0.iter().enumerate() {
            let equal = digest.as_slice().ct_eq(accepted.digest.as_slice());
            index.conditional_assign(&(i as u64), equal);
            found |= equal;
        }
        if bool::from(found) {
            self.0.get(usize::try_from(index).ok()?)
        } else {
            None
        }
    }

    /// Who may make a `method` request with `presented` (the bearer token, if any) at `now`.
    fn authorize(
        &self,
        presented: Option<&str>,
        method: &Method,
        now: OffsetDateTime,
    ) -> Result<Actor, Refusal> {
        let accepted = presented
            .and_then(|token| self.find(token))
            .ok_or(Refusal::Unauthorized)?;
        if accepted.not_after.is_some_and(|not_after| now > not_after) {
            return Err(Refusal::Expired(accepted.actor.clone()));
        }
        if accepted.scope == TokenScope::Read && !matches!(*method, Method::GET | Method::HEAD) {
            return Err(Refusal::InsufficientScope(accepted.actor.clone()));
        }
        Ok(accepted.actor.clone())
    }
}

impl AcceptedTokens {
    /// Signs in to the console with `presented`: who it is and what it may do, if it is a
    /// configured, current token. Compared like a bearer token (constant time).
    pub(super) fn sign_in(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Grant, SignInRefused> {
        let accepted = self.find(presented.trim()).ok_or(SignInRefused::Unknown)?;
        if accepted.not_after.is_some_and(|not_after| now > not_after) {
            return Err(SignInRefused::Expired);
        }
        Ok(Grant {
            actor: accepted.actor.clone(),
            scope: accepted.scope,
        })
    }

    /// What a console session signed in as `actor` may still do at `now`: the scope of the
    /// configured token with that identity, unless it is gone from the configuration or past
    /// its `not_after` (the session then ends).
    pub(super) fn still_valid(&self, actor: &str, now: OffsetDateTime) -> Option<Grant> {
        let accepted = self.0.iter().find(|a| a.actor.as_str() == actor)?;
        if accepted.not_after.is_some_and(|not_after| now > not_after) {
            return None;
        }
        Some(Grant {
            actor: accepted.actor.clone(),
            scope: accepted.scope,
        })
    }
}

impl std::fmt::Debug for AcceptedTokens {
    /// Identities and limits only: a digest of a weak plain token could be guessed offline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|a| (a.actor.as_str(), a.scope, a.not_after)),
            )
            .finish()
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// No token, a malformed header, or a token that is not configured.
    Unauthorized,
    /// A configured token past its `not_after`.
    Expired(Actor),
    /// A `read` token on a request that changes something.
    InsufficientScope(Actor),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, message, challenge) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin token is required: send `Authorization: Bearer <token>`",
                "Bearer",
            ),
            Self::Expired(_) => (
                StatusCode::UNAUTHORIZED,
                "token_expired",
                "this admin token has expired (its not_after has passed); use a current token",
                r#"Bearer error="invalid_token""#,
            ),
            Self::InsufficientScope(_) => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "this admin token has the `read` scope and may only read (GET); replays and purges need a token with the `admin` scope",
                r#"Bearer error="insufficient_scope""#,
            ),
        };
        let mut response = ApiError::new(status, code, message).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

/// Middleware: lets the request through only with an accepted, current token of enough
/// scope, recording the caller as an [`Actor`] in the request's extensions.
pub(super) async fn require_bearer(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let verdict = state.tokens.authorize(
        bearer_token(request.headers()),
        request.method(),
        OffsetDateTime::now_utc(),
    );
    let refusal = match verdict {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            return next.run(request).await;
        }
        Err(refusal) => refusal,
    };
    // Method, path and identity only: the header may hold a real token with a typo in it.
    let (method, path) = (request.method(), request.uri().path());
    match &refusal {
        Refusal::Unauthorized => info!(
            http.method = %method,
            http.path = path,
            "admin request rejected: missing or invalid bearer token"
        ),
        // Someone still uses a token that should be gone: worth an operator's attention.
        Refusal::Expired(actor) => warn!(
            http.method = %method,
            http.path = path,
            actor = actor.as_str(),
            "admin request rejected: the token has expired"
        ),
        Refusal::InsufficientScope(actor) => info!(
            http.method = %method,
            http.path = path,
            actor = actor.as_str(),
            "admin request rejected: a read-only token may not change anything"
        ),
    }
    refusal.into_response()
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, as
/// RFC 9110 has it); `None` when absent, malformed, another scheme, or empty.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::config::hash_token;

    const TOKEN: &str = "0123456789abcdef-admin";
    const NOW: OffsetDateTime = datetime!(2027-01-20 12:00 UTC);

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(header::AUTHORIZATION, value);
        }
        headers
    }

    fn accepted(tokens: &[AdminToken]) -> AcceptedTokens {
        AcceptedTokens::new(tokens).unwrap_or_else(|e| panic!("{e}"))
    }

    fn named(name: &str, token: &str, scope: TokenScope, not_after: Option<&str>) -> AdminToken {
        let mut entry = AdminToken::new(token);
        entry.name = Some(name.into());
        entry.scope = scope;
        entry.not_after = not_after.map(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{e}"))
        });
        entry
    }

    fn fingerprint(token: &str) -> String {
        format!("token:{}", &hash_token(token)["sha256:".len()..][..12])
    }

    #[test]
    fn only_a_configured_token_is_accepted_plain_or_hashed() {
        let tokens = accepted(&[
            AdminToken::new("another-token-of-16+"),
            AdminToken::new(hash_token(TOKEN)),
        ]);
        let get = |token: &str| tokens.authorize(Some(token), &Method::GET, NOW);
        assert!(get(TOKEN).is_ok());
        assert!(get("another-token-of-16+").is_ok());
        for wrong in [
            "0123456789abcdef-admiN",
            "0123456789abcdef-admi",
            "0123456789abcdef-admin2",
            "",
            // The stored hash is not a password.
            &hash_token(TOKEN),
        ] {
            assert_eq!(get(wrong), Err(Refusal::Unauthorized), "{wrong}");
        }
        assert_eq!(
            tokens.authorize(None, &Method::GET, NOW),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            AcceptedTokens::default().authorize(Some(TOKEN), &Method::GET, NOW),
            Err(Refusal::Unauthorized),
            "no tokens configured"
        );
    }

    #[test]
    fn the_match_is_selected_from_any_position() {
        let entries: Vec<AdminToken> = (0..5)
            .map(|i| {
                named(
                    &format!("t{i}"),
                    &format!("token-number-{i}-0123456789"),
                    TokenScope::Admin,
                    None,
                )
            })
            .collect();
        let tokens = accepted(&entries);
        for i in 0..5 {
            let token = format!("token-number-{i}-0123456789");
            assert_eq!(
                tokens
                    .authorize(Some(&token), &Method::GET, NOW)
                    .map(|a| a.0),
                Ok(format!("t{i}"))
            );
        }
    }

    #[test]
    fn an_expired_token_is_refused_from_the_instant_after_not_after() {
        let tokens = accepted(&[named(
            "old",
            TOKEN,
            TokenScope::Admin,
            Some("2027-01-20T12:00:00Z"),
        )]);
        assert!(tokens.authorize(Some(TOKEN), &Method::GET, NOW).is_ok());
        let later = NOW + time::Duration::SECOND;
        let refusal = tokens.authorize(Some(TOKEN), &Method::GET, later);
        assert_eq!(refusal, Err(Refusal::Expired(Actor("old".into()))));
        // An expired token is refused as expired even where its scope would not do either.
        let tokens = accepted(&[named(
            "old",
            TOKEN,
            TokenScope::Read,
            Some("2027-01-20T12:00:00Z"),
        )]);
        assert!(matches!(
            tokens.authorize(Some(TOKEN), &Method::POST, later),
            Err(Refusal::Expired(_))
        ));
    }

    #[test]
    fn a_read_token_may_only_get() {
        let tokens = accepted(&[
            named("viewer", TOKEN, TokenScope::Read, None),
            AdminToken::new("admin-token-0123456789"),
        ]);
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(
                tokens.authorize(Some(TOKEN), &method, NOW),
                Ok(Actor("viewer".into()))
            );
        }
        for method in [Method::POST, Method::DELETE, Method::PUT, Method::PATCH] {
            assert_eq!(
                tokens.authorize(Some(TOKEN), &method, NOW),
                Err(Refusal::InsufficientScope(Actor("viewer".into()))),
                "{method}"
            );
            assert!(
                tokens
                    .authorize(Some("admin-token-0123456789"), &method, NOW)
                    .is_ok()
            );
        }
    }

    #[test]
    fn refusals_answer_with_their_code_and_challenge() {
        for (refusal, status, code, challenge) in [
            (Refusal::Unauthorized, 401, "unauthorized", "Bearer"),
            (
                Refusal::Expired(Actor("a".into())),
                401,
                "token_expired",
                r#"Bearer error="invalid_token""#,
            ),
            (
                Refusal::InsufficientScope(Actor("a".into())),
                403,
                "insufficient_scope",
                r#"Bearer error="insufficient_scope""#,
            ),
        ] {
            let response = refusal.into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            assert_eq!(
                response.headers().get(header::WWW_AUTHENTICATE),
                Some(&HeaderValue::from_static(challenge)),
                "{code}"
            );
        }
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
    fn the_actor_is_the_name_or_a_fingerprint_the_same_for_both_forms() {
        let tokens = accepted(&[
            AdminToken::new(TOKEN),
            AdminToken::new(hash_token("hashed-token-0123456789")),
            named("oncall", "named-token-0123456789", TokenScope::Admin, None),
        ]);
        let actor = |token: &str| {
            tokens
                .authorize(Some(token), &Method::GET, NOW)
                .map(|a| a.0)
                .unwrap_or_else(|e| panic!("{e:?}"))
        };
        assert_eq!(actor(TOKEN), fingerprint(TOKEN));
        assert!(!actor(TOKEN).contains(TOKEN));
        assert_eq!(
            actor("hashed-token-0123456789"),
            fingerprint("hashed-token-0123456789"),
            "a hashed entry names its caller as the plain entry would"
        );
        assert_eq!(actor("named-token-0123456789"), "oncall");
        assert_ne!(fingerprint(TOKEN), fingerprint("0123456789abcdef-admiN"));
        let debug = format!("{tokens:?}");
        assert!(
            debug.contains("oncall") && !debug.contains(TOKEN),
            "{debug}"
        );
    }
}
