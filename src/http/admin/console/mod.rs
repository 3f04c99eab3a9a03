//! The web console at `/console` on the admin listener: server-rendered HTML for operators,
//! readable without JavaScript and without any external asset.
//!
//! * **Sign-in** with an admin token (`POST /console/login`), compared like a bearer token.
//!   The session lives in Redis for [`SESSION_TTL`] under the SHA-256 of a random cookie
//!   value, so any admin process serves it; the cookie is `HttpOnly`, `SameSite=Strict`,
//!   `Path=/console`, and `Secure` when the request came over https (`X-Forwarded-Proto`). Each
//!   request checks the token is still configured and current, so removing or expiring a token
//!   ends its sessions.
//! * **CSRF.** Every form carries the session's random CSRF token, compared in constant time
//!   on every POST; the sign-in form uses a double-submit cookie. `SameSite=Strict` and a
//!   `form-action 'self'` policy stand behind both.
//! * **Scopes.** A session of a `read` token sees everything but its forms to replay, purge,
//!   pause, resume or reset are not shown, and such a POST answers 403.
//! * Every answer carries a strict Content-Security-Policy (no script at all), `no-store`,
//!   `nosniff`, `no-referrer` and `frame-ancestors 'none'`.

mod layout;
mod pages;

use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use base64::Engine as _;
use maud::html;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use tracing::{info, warn};

use self::layout::{Flash, Nav, page};
use super::AdminState;
use super::auth::{Actor, SignInRefused};
use crate::config::TokenScope;

/// How long a console session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The session cookie.
const SESSION_COOKIE: &str = "lease_sync_session";

/// The sign-in form's double-submit CSRF cookie.
const LOGIN_COOKIE: &str = "lease_sync_login";

/// The console's routes (merged into the admin router; not behind the bearer middleware).
pub(super) fn router() -> Router<AdminState> {
    Router::new()
        .route("/console", get(pages::overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/dead-letters", get(pages::dead_letters))
        .route("/console/dead-letters/confirm", get(pages::confirm_bulk))
        .route("/console/dead-letters/bulk", post(pages::bulk))
        .route("/console/dead-letters/{id}", get(pages::dead_letter))
        .route("/console/dead-letters/{id}/replay", post(pages::replay))
        .route("/console/dead-letters/{id}/purge", post(pages::purge))
        .route("/console/residents", get(pages::residents))
        .route(
            "/console/residents/{integration_id}/{user_id}",
            get(pages::resident),
        )
        .route("/console/leases/reset", post(pages::reset_lease))
        .route("/console/conflicts", get(pages::conflicts))
        .route("/console/integrations", get(pages::integrations))
        .route("/console/integrations/{id}/pause", post(pages::pause))
        .route("/console/integrations/{id}/resume", post(pages::resume))
        .layer(from_fn(security_headers))
}

/// Adds the headers every console answer carries.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let policy = format!(
        "default-src 'none'; style-src {}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        *layout::STYLE_HASH
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// What Redis keeps of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    /// Who signed in (the token's identity).
    actor: String,
    /// The random CSRF token of the session's forms.
    csrf: String,
    /// When it ends (ms since the epoch).
    expires_at: i64,
}

/// A signed-in operator: who, what they may do, and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) actor: String,
    pub(super) scope: TokenScope,
    pub(super) csrf: String,
}

impl Session {
    /// Whether this session may replay, purge, pause, resume or reset.
    pub(super) fn may_change(&self) -> bool {
        self.scope == TokenScope::Admin
    }

    /// `admin` or `read`.
    pub(super) fn scope_name(&self) -> &'static str {
        match self.scope {
            TokenScope::Admin => "admin",
            TokenScope::Read => "read only",
        }
    }

    /// The identity audit records name.
    pub(super) fn actor(&self) -> Actor {
        Actor::from_session(&self.actor)
    }

    /// Checks a form's `csrf` field and the scope a change needs: `None` when the change may
    /// go ahead, else the 403 page to answer.
    pub(super) fn refuse_change(&self, presented: &str, what: &str) -> Option<Response> {
        if !csrf_matches(presented, &self.csrf) {
            warn!(actor = %self.actor, "console form refused: its CSRF token does not match the session's");
            return Some(refused(
                Some(self),
                "This form expired or did not come from this console. Reload the page and try again.",
            ));
        }
        if !self.may_change() {
            info!(actor = %self.actor, "console change refused: a read-only token");
            return Some(refused(
                Some(self),
                &format!("Your token has the read scope: it may look but not {what}."),
            ));
        }
        None
    }
}

/// Random 32 bytes as URL-safe base64: session ids and CSRF tokens.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 (hex) of a session cookie's value: the Redis key holds this, not the value.
fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn csrf_matches(presented: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// Whether the request reached the proxy in front of us over https: cookies are then `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .next()
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        });
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded_proto || forwarded
}

/// A console cookie: `HttpOnly`, `SameSite=Strict`, `Path=/console`, `Secure` over https.
fn cookie(name: &'static str, value: String, max_age: Duration, secure: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/console")
        .secure(secure)
        .max_age(time::Duration::seconds(
            i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
        ))
        .build()
}

/// Why a page could not be served to this request.
pub(super) enum NoSession {
    /// Not signed in (or the session ended): go to the sign-in page.
    SignIn,
    /// Redis is unavailable.
    Unavailable,
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn => Redirect::to("/console/login").into_response(),
            Self::Unavailable => unavailable(None),
        }
    }
}

impl FromRequestParts<AdminState> for Session {
    type Rejection = NoSession;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(value) = jar.get(SESSION_COOKIE).map(Cookie::value) else {
            return Err(NoSession::SignIn);
        };
        let record = match state.queue.console_session(&digest(value)).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(NoSession::SignIn),
            Err(e) => {
                warn!("console session lookup failed: {e}");
                return Err(NoSession::Unavailable);
            }
        };
        let Ok(record) = serde_json::from_str::<SessionRecord>(&record) else {
            return Err(NoSession::SignIn);
        };
        let now = OffsetDateTime::now_utc();
        if record.expires_at < crate::queue::now_ms() {
            return Err(NoSession::SignIn);
        }
        // The token may have been removed, or have expired, since sign-in.
        let grant = state
            .tokens
            .still_valid(&record.actor, now)
            .ok_or(NoSession::SignIn)?;
        Ok(Self {
            actor: record.actor,
            scope: grant.scope,
            csrf: record.csrf,
        })
    }
}

/// A page saying the console cannot reach Redis: 503.
pub(super) fn unavailable(session: Option<&Session>) -> Response {
    let body = html! {
        p { "Redis is unavailable, so the console cannot read or change anything. Try again shortly; the service's logs say more." }
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(page("Unavailable", session, Nav::Overview, None, &body).into_string()),
    )
        .into_response()
}

/// A 403 page saying why.
pub(super) fn refused(session: Option<&Session>, why: &str) -> Response {
    let body = html! { p { a href="/console" { "Back to the overview" } } };
    let flash = Flash::Error(why.to_owned());
    (
        StatusCode::FORBIDDEN,
        Html(page("Not allowed", session, Nav::Overview, Some(&flash), &body).into_string()),
    )
        .into_response()
}

/// The sign-in form.
async fn login_form(headers: HeaderMap) -> Response {
    login_page(&headers, None, StatusCode::OK)
}

fn login_page(headers: &HeaderMap, error: Option<&str>, status: StatusCode) -> Response {
    let csrf = random_token();
    let body = html! {
        form method="post" action="/console/login" {
            input type="hidden" name="csrf" value=(csrf);
            fieldset {
                legend { "Sign in with an admin token" }
                div.row {
                    div {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    }
                    div { button type="submit" { "Sign in" } }
                }
            }
        }
        p.muted { "One of the [admin] tokens of the configuration. A read-only token can look at everything but change nothing. The session lasts 8 hours." }
    };
    let flash = error.map(|e| Flash::Error(e.to_owned()));
    let jar = CookieJar::new().add(cookie(
        LOGIN_COOKIE,
        csrf,
        Duration::from_secs(3600),
        over_https(headers),
    ));
    (
        status,
        jar,
        Html(page("Sign in", None, Nav::None, flash.as_ref(), &body).into_string()),
    )
        .into_response()
}

/// The sign-in form's fields.
#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// Signs in: checks the form's CSRF token against its cookie and the token against the
/// configured ones, then starts a session.
async fn login(
    State(state): State<AdminState>,
    headers: HeaderMap,
    jar: CookieJar,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(form)) = form else {
        return login_page(
            &headers,
            Some("The sign-in form was not sent as a form."),
            StatusCode::BAD_REQUEST,
        );
    };
    let expected = jar.get(LOGIN_COOKIE).map(Cookie::value).unwrap_or_default();
    if !csrf_matches(&form.csrf, expected) {
        return login_page(
            &headers,
            Some("The sign-in form expired or did not come from this console; try again."),
            StatusCode::FORBIDDEN,
        );
    }
    let grant = match state.tokens.sign_in(&form.token, OffsetDateTime::now_utc()) {
        Ok(grant) => grant,
        Err(refusal) => {
            info!(
                "console sign-in refused: {}",
                match refusal {
                    SignInRefused::Unknown => "not a configured token",
                    SignInRefused::Expired => "an expired token",
                }
            );
            let why = match refusal {
                SignInRefused::Unknown => "That is not an admin token of this service.",
                SignInRefused::Expired => "That token has expired (its not_after has passed).",
            };
            return login_page(&headers, Some(why), StatusCode::UNAUTHORIZED);
        }
    };
    let value = random_token();
    let record = SessionRecord {
        actor: grant.actor.as_str().to_owned(),
        csrf: random_token(),
        expires_at: crate::queue::now_ms()
            + i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX),
    };
    let Ok(json) = serde_json::to_string(&record) else {
        return unavailable(None);
    };
    if let Err(e) = state
        .queue
        .put_console_session(&digest(&value), &json, SESSION_TTL)
        .await
    {
        warn!("console session could not be stored: {e}");
        return unavailable(None);
    }
    info!(actor = grant.actor.as_str(), "console sign-in");
    let secure = over_https(&headers);
    let jar = jar
        .add(cookie(SESSION_COOKIE, value, SESSION_TTL, secure))
        .remove(Cookie::build(LOGIN_COOKIE).path("/console"));
    (jar, Redirect::to("/console")).into_response()
}

/// The sign-out form's fields.
#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Signs out: ends the session in Redis and clears the cookie.
async fn logout(
    State(state): State<AdminState>,
    session: Session,
    jar: CookieJar,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if !csrf_matches(&form.csrf, &session.csrf) {
        return refused(
            Some(&session),
            "This form expired; reload the page and sign out again.",
        );
    }
    if let Some(value) = jar.get(SESSION_COOKIE).map(|c| c.value().to_owned())
        && let Err(e) = state.queue.delete_console_session(&digest(&value)).await
    {
        warn!("console session could not be ended in Redis (it expires on its own): {e}");
    }
    info!(actor = %session.actor, "console sign-out");
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/console"));
    (jar, Redirect::to("/console/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_compare_whole_and_never_match_empty() {
        let token = random_token();
        assert_eq!(token.len(), 43);
        assert!(csrf_matches(&token, &token));
        assert!(!csrf_matches(&token[..42], &token));
        assert!(!csrf_matches("", ""));
        assert_ne!(random_token(), token);
    }

    #[test]
    fn https_is_read_from_the_proxy_headers() {
        let mut headers = HeaderMap::new();
        assert!(!over_https(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        assert!(over_https(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=1.2.3.4;proto=https"),
        );
        assert!(over_https(&headers));
    }

    #[test]
    fn session_cookies_are_http_only_strict_and_scoped_to_the_console() {
        let text = cookie(SESSION_COOKIE, "v".into(), SESSION_TTL, true).to_string();
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/console",
            "Secure",
            "Max-Age=28800",
        ] {
            assert!(text.contains(part), "{text}");
        }
        let plain = cookie(SESSION_COOKIE, "v".into(), SESSION_TTL, false).to_string();
        assert!(!plain.contains("Secure"), "{plain}");
    }
}
