//! The web console over real HTTP, as a browser without JavaScript uses it: sign-in and its
//! cookie, CSRF on every form, what a read-only token may do, and the pages operators use
//! (dead letters with filters, replay and bulk purge; residents and their history;
//! integrations). `tests/browser.rs` drives the same pages in headless Chromium.

use std::collections::BTreeMap;
use std::time::Duration;

use lease_sync::config::{AdminToken, TokenScope};
use lease_sync_sandbox::Fault;
use reqwest::Method;
use reqwest::header::{COOKIE, HeaderMap, LOCATION, SET_COOKIE};

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(20);
const READER_TOKEN: &str = "reader-token-0123456789abcdef";

/// One answer of the console.
#[derive(Debug)]
struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').expect("closing quote") + start;
        self.body[start..end].to_owned()
    }

    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }
}

/// A cookie-keeping client that does not follow redirects, so each step can be checked.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
    extra: Vec<(&'static str, &'static str)>,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            base: format!("http://{}", app.admin_addr.expect("admin listens")),
            cookies: BTreeMap::new(),
            extra: Vec::new(),
        }
    }

    async fn send(&mut self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header(COOKIE, jar.join("; "));
        }
        for (name, value) in &self.extra {
            request = request.header(*name, *value);
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        let response = request.send().await.expect("console answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for value in headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            let pair = value.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || value.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
            if value.contains("Max-Age=0") {
                self.cookies
                    .remove(pair.split('=').next().unwrap_or_default());
            }
        }
        let body = response.text().await.expect("body");
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send(Method::GET, path, None).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(Method::POST, path, Some(form)).await
    }

    /// Signs in with `token` and returns the overview.
    async fn sign_in(&mut self, token: &str) -> Page {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200, "{form:?}");
        let csrf = form.csrf();
        let signed_in = self
            .post("/console/login", &[("token", token), ("csrf", &csrf)])
            .await;
        assert_eq!(signed_in.status, 303, "{}", signed_in.body);
        assert_eq!(signed_in.location(), "/console");
        let overview = self.get("/console").await;
        assert_eq!(overview.status, 200, "{}", overview.body);
        overview
    }
}

async fn serve_with_reader() -> (lease_sync_testkit::RedisServer, FakeOpenApp, TestApp) {
    let mut reader = AdminToken::new(READER_TOKEN);
    reader.scope = TokenScope::Read;
    serve_with(|s| s.admin.tokens = vec![AdminToken::new(ADMIN_TOKEN), reader]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_starts_a_strict_http_only_session_and_signing_out_ends_it() {
    let (_redis, _openapp, app) = serve().await;
    let mut browser = Browser::new(&app);

    // Every page but the sign-in form sends a stranger there.
    for path in ["/console", "/console/dead-letters", "/console/integrations"] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location(), "/console/login", "{path}");
    }

    let form = browser.get("/console/login").await;
    assert_eq!(form.status, 200);
    let policy = form.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert!(
        !policy.contains("script-src"),
        "no script is allowed: {policy}"
    );
    assert_eq!(form.headers["cache-control"], "no-store");
    assert_eq!(form.headers["x-frame-options"], "DENY");
    assert!(
        form.body.contains(r#"<label for="token">"#),
        "the token field is labelled"
    );
    assert!(!form.body.contains("<script"), "no JavaScript");
    let login_cookie = form
        .set_cookie("lease_sync_login")
        .expect("a login CSRF cookie");
    assert!(
        login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"),
        "{login_cookie}"
    );

    // Wrong token, then a right token with another form's CSRF value: both refused.
    let csrf = form.csrf();
    let wrong = browser
        .post(
            "/console/login",
            &[("token", "not-a-token-not-a-token"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not an admin token"), "{}", wrong.body);
    assert!(wrong.set_cookie("lease_sync_session").is_none());
    let forged = browser
        .post(
            "/console/login",
            &[("token", ADMIN_TOKEN), ("csrf", "forged-value")],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(forged.set_cookie("lease_sync_session").is_none());

    let form = browser.get("/console/login").await;
    let csrf = form.csrf();
    let signed_in = browser
        .post("/console/login", &[("token", ADMIN_TOKEN), ("csrf", &csrf)])
        .await;
    assert_eq!(signed_in.status, 303);
    let session = signed_in
        .set_cookie("lease_sync_session")
        .expect("session cookie");
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains("Secure"), "plain http here: {session}");
    assert!(
        !session.contains(ADMIN_TOKEN),
        "the cookie is not the token"
    );

    let overview = browser.get("/console").await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("Signed in as"), "{}", overview.body);
    assert!(overview.body.contains(r#"aria-current="page""#));

    // Sign out: the session is gone from Redis, not only from this browser.
    let old_cookie = browser.cookies["lease_sync_session"].clone();
    let csrf = overview.csrf();
    let out = browser.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(out.location(), "/console/login");
    browser
        .cookies
        .insert("lease_sync_session".into(), old_cookie);
    let after = browser.get("/console").await;
    assert_eq!(after.status, 303, "the old cookie no longer works");

    // Behind an https proxy the cookies are Secure.
    let mut secure = Browser::new(&app);
    secure.extra.push(("x-forwarded-proto", "https"));
    let form = secure.get("/console/login").await;
    assert!(
        form.set_cookie("lease_sync_login")
            .unwrap()
            .contains("Secure")
    );
    let csrf = form.csrf();
    let signed_in = secure
        .post("/console/login", &[("token", ADMIN_TOKEN), ("csrf", &csrf)])
        .await;
    assert!(
        signed_in
            .set_cookie("lease_sync_session")
            .unwrap()
            .contains("Secure")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_needs_the_sessions_csrf_token_and_a_read_token_changes_nothing() {
    let (_redis, _openapp, app) = serve_with_reader().await;
    let mut admin = Browser::new(&app);
    let overview = admin.sign_in(ADMIN_TOKEN).await;
    let csrf = overview.csrf();
    let pause = format!("/console/integrations/{INTEGRATION}/pause");

    // No or a wrong CSRF value: 403 and nothing paused.
    for form in [vec![], vec![("csrf", "wrong")]] {
        let refused = admin.post(&pause, &form).await;
        assert_eq!(refused.status, 403, "{form:?}");
    }
    assert_eq!(app.queue().counts().await.unwrap().paused_integrations, 0);
    let paused = admin.post(&pause, &[("csrf", &csrf)]).await;
    assert_eq!(paused.status, 303, "{}", paused.body);
    assert_eq!(paused.location(), "/console/integrations?done=paused&n=0");
    let page = admin.get(paused.location()).await;
    assert!(page.body.contains("Integration paused"), "{}", page.body);
    assert!(
        page.body.contains(&format!("Resume {INTEGRATION}")),
        "{}",
        page.body
    );
    assert_eq!(app.queue().counts().await.unwrap().paused_integrations, 1);

    // A read token sees the page, but no form that changes anything, and its POSTs fail.
    let mut reader = Browser::new(&app);
    let overview = reader.sign_in(READER_TOKEN).await;
    assert!(overview.body.contains("read only"), "{}", overview.body);
    let csrf = overview.csrf();
    let page = reader.get("/console/integrations").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("/resume\""), "{}", page.body);
    let resume = format!("/console/integrations/{INTEGRATION}/resume");
    let refused = reader.post(&resume, &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("read scope"), "{}", refused.body);
    assert_eq!(app.queue().counts().await.unwrap().paused_integrations, 1);
    for path in [
        "/console/dead-letters/confirm?action=replay",
        "/console/dead-letters/confirm?action=purge",
    ] {
        assert_eq!(reader.get(path).await.status, 403, "{path}");
    }
    let bulk = reader
        .post(
            "/console/dead-letters/bulk",
            &[("csrf", &csrf), ("action", "purge")],
        )
        .await;
    assert_eq!(bulk.status, 403);
    let reset = reader
        .post(
            "/console/leases/reset",
            &[
                ("csrf", &csrf),
                ("source", SOURCE),
                ("lease_id", "L-1"),
                ("integration_id", INTEGRATION),
                ("user_id", "u"),
            ],
        )
        .await;
    assert_eq!(reset.status, 403);

    // One session's CSRF value does not work for another's.
    let cross = reader
        .post(&resume, &[("csrf", &admin_csrf(&mut admin).await)])
        .await;
    assert_eq!(cross.status, 403);
}

async fn admin_csrf(browser: &mut Browser) -> String {
    browser.get("/console").await.csrf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_filter_inspect_replay_and_purge_dead_letters() {
    let (_redis, openapp, app) = serve().await;
    for _ in 0..2 {
        openapp.sandbox.push_fault(Fault::Status {
            status: 400,
            retry_after: None,
        });
    }
    let reply = post_event(
        &app,
        "evt-dl",
        event_body("lease.signed", "L-9", &["user-r", "user-s"]),
    )
    .await;
    assert_eq!(reply.status, 202);
    wait_until("two dead letters", LIMIT, || async {
        (app.queue().counts().await.ok()?.dead == 2).then_some(())
    })
    .await;
    let mut browser = Browser::new(&app);
    let overview = browser.sign_in(ADMIN_TOKEN).await;
    assert!(
        overview
            .body
            .contains(r#"href="/console/dead-letters">2</a>"#),
        "{}",
        overview.body
    );
    assert!(
        overview.body.contains(SOURCE),
        "the sources table lists {SOURCE}"
    );

    let list = browser
        .get("/console/dead-letters?reason=permanent&type=lease.signed")
        .await;
    assert_eq!(list.status, 200);
    assert_eq!(
        list.body.matches("/console/dead-letters/01").count(),
        2,
        "{}",
        list.body
    );
    let none = browser.get("/console/dead-letters?reason=exhausted").await;
    assert!(none.body.contains("No dead letters match"), "{}", none.body);
    let bad = browser.get("/console/dead-letters?since=soon").await;
    assert!(bad.body.contains("is not a duration"), "{}", bad.body);

    let dead = app
        .dead_letters()
        .list(&Default::default(), 0, 10)
        .await
        .unwrap();
    let (replayed, purged) = (&dead.items[0], &dead.items[1]);
    let detail = browser
        .get(&format!("/console/dead-letters/{}", replayed.id))
        .await;
    assert_eq!(detail.status, 200);
    assert!(detail.body.contains("Attempt timeline"));
    assert!(
        detail.body.contains("<td>400 </td>") || detail.body.contains("400"),
        "{}",
        detail.body
    );
    let csrf = detail.csrf();
    let done = browser
        .post(
            &format!("/console/dead-letters/{}/replay", replayed.id),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(done.status, 303);
    assert_eq!(done.location(), "/console/dead-letters?done=replayed&n=1");
    let user = replayed.user_id.clone();
    wait_until("the replay to be delivered", LIMIT, || async {
        let posts = openapp
            .sandbox
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.user_id.as_deref() == Some(user.as_str()))
            .count();
        (posts == 2).then_some(())
    })
    .await;

    // Bulk purge: the count first, then the purge.
    let confirm = browser
        .get(&format!(
            "/console/dead-letters/confirm?action=purge&source={SOURCE}"
        ))
        .await;
    assert_eq!(confirm.status, 200);
    assert!(
        confirm.body.contains("<strong>1 dead letter(s)</strong>"),
        "{}",
        confirm.body
    );
    let csrf = confirm.csrf();
    let purge = browser
        .post(
            "/console/dead-letters/bulk",
            &[
                ("csrf", &csrf),
                ("action", "purge"),
                ("source", SOURCE),
                ("type", ""),
                ("reason", ""),
                ("since", ""),
            ],
        )
        .await;
    assert_eq!(purge.status, 303, "{}", purge.body);
    assert!(
        purge.location().ends_with("done=bulk-purged&n=1"),
        "{}",
        purge.location()
    );
    assert!(app.dead_letters().get(&purged.id).await.unwrap().is_none());
    let audit = app.dead_letters().recent_audit(10).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["purge", "replay"]);
    assert!(audit.iter().all(|r| r.actor.starts_with("token:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residents_are_found_by_user_email_or_lease_and_show_why_and_their_history() {
    let (_redis, _openapp, app) = serve().await;
    let reply = post_event(
        &app,
        "evt-res",
        event_body("lease.signed", "L-42", &["user-x"]),
    )
    .await;
    assert_eq!(reply.status, 202);
    wait_drained(&app.queue(), LIMIT).await;
    let digest = lease_sync::identity::email_digest("ada@example.com");
    app.queue()
        .cache_identity(ORG, &digest, "user-x")
        .await
        .expect("redis");

    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_TOKEN).await;
    let link = format!(r#"href="/console/residents/{INTEGRATION}/user-x""#);
    for query in [
        "by=user&q=user-x",
        "by=lease&q=L-42",
        "by=email&q=Ada%40Example.com",
    ] {
        let found = browser.get(&format!("/console/residents?{query}")).await;
        assert_eq!(found.status, 200, "{query}");
        assert!(found.body.contains(&link), "{query}: {}", found.body);
    }
    let nobody = browser
        .get("/console/residents?by=user&q=user-nobody")
        .await;
    assert!(nobody.body.contains("Nobody found"), "{}", nobody.body);

    let page = browser
        .get(&format!("/console/residents/{INTEGRATION}/user-x"))
        .await;
    assert_eq!(page.status, 200);
    for needle in [
        "present (a building user)",
        "lease L-42 of acme-pms grants access",
        "History",
        "folded",
        "attempt",
        "POST answered 201",
    ] {
        assert!(
            page.body.contains(needle),
            "{needle} missing:\n{}",
            page.body
        );
    }
    assert_eq!(
        browser.get("/console/residents/nope/user-x").await.status,
        404
    );
}
