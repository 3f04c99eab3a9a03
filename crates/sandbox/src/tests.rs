//! End-to-end tests: a real server on 127.0.0.1:0 and a real HTTP client.

use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

mod users;

const KEY: &str = "http://127.0.0.1:8081_openapp_test-secret";
const ORG: &str = "01HORG00000000000000000000";
const OTHER_ORG: &str = "01HORGOTHER000000000000000";
const INTEGRATION: &str = "01HINTEGRATION00000000000000";

/// Upper bound for anything a test waits on, so a bug fails instead of hanging.
const GUARD: Duration = Duration::from_secs(5);

fn role(name: &str) -> String {
    format!("virtual_access:integration:{INTEGRATION}:{name}")
}

fn options() -> SandboxOptions {
    SandboxOptions {
        api_keys: vec![KEY.to_owned()],
        integrations: vec![(ORG.to_owned(), INTEGRATION.to_owned())],
        ..SandboxOptions::default()
    }
}

struct Harness {
    sandbox: Sandbox,
    base: String,
    client: reqwest::Client,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

async fn start(options: SandboxOptions) -> Harness {
    let sandbox = Sandbox::new(options);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (shutdown, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(sandbox.clone().serve(listener, async move {
        // Either a send or the sender being dropped means "stop".
        signal.await.ok();
    }));
    Harness {
        sandbox,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(GUARD)
            .build()
            .expect("client"),
        shutdown,
        server,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).expect("JSON body")
    }

    fn message(&self) -> String {
        self.json()["message"].as_str().expect("message").to_owned()
    }

    fn request_id(&self) -> String {
        self.headers
            .get("x-request-id")
            .expect("X-Request-Id header")
            .to_str()
            .expect("ASCII")
            .to_owned()
    }
}

impl Harness {
    fn collection(&self) -> String {
        format!(
            "{}/api/v1/integrations/{INTEGRATION}/building-users",
            self.base
        )
    }

    fn item(&self, user_id: &str) -> String {
        format!("{}/{user_id}", self.collection())
    }

    fn authed(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.bearer_auth(KEY).header("X-Org", ORG)
    }

    fn list(&self) -> reqwest::RequestBuilder {
        self.authed(self.client.get(self.collection()))
    }

    fn add(&self, user_id: &str, role_name: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.post(self.collection()))
            .json(&json!({ "user_id": user_id, "role": role(role_name) }))
    }

    fn remove(&self, user_id: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.delete(self.item(user_id)))
    }

    async fn stop(self) {
        self.shutdown.send(()).ok();
        let result = tokio::time::timeout(GUARD, self.server)
            .await
            .expect("server stops promptly")
            .expect("server task");
        result.expect("server ran without I/O error");
    }
}

async fn send(builder: reqwest::RequestBuilder) -> Reply {
    let response = builder.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    Reply {
        status,
        headers,
        text,
    }
}

fn assert_error(reply: &Reply, status: StatusCode, message: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.text);
    assert_eq!(reply.message(), message, "body: {}", reply.text);
    let body = reply.json();
    let object = body.as_object().expect("error body is an object");
    assert!(object.contains_key("error_code"), "body: {}", reply.text);
}

#[tokio::test]
async fn add_is_idempotent_and_list_returns_sorted_rows() {
    let h = start(options()).await;

    let first = send(h.add("user-b", "resident")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        first.json(),
        json!({
            "user_id": "user-b",
            "role": role("resident"),
            "apartments": [],
            "user_email": null,
            "user_name": null,
        })
    );

    // Adding again is fine and updates the role.
    let again = send(h.add("user-b", "manager")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.json()["role"], json!(role("manager")));

    assert_eq!(
        send(h.add("user-a", "resident")).await.status,
        StatusCode::CREATED
    );

    let list = send(h.list()).await;
    assert_eq!(list.status, StatusCode::OK);
    let rows = list.json();
    let ids: Vec<&str> = rows
        .as_array()
        .expect("array")
        .iter()
        .map(|row| row["user_id"].as_str().expect("user_id"))
        .collect();
    assert_eq!(ids, ["user-a", "user-b"]);
    assert_eq!(rows[1]["role"], json!(role("manager")));
    assert_eq!(rows[0]["apartments"], json!([]));

    let members = h.sandbox.members(INTEGRATION);
    assert_eq!(members.get("user-b"), Some(&role("manager")));
    assert_eq!(members.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn conflict_on_existing_answers_409() {
    let h = start(SandboxOptions {
        conflict_on_existing: true,
        ..options()
    })
    .await;
    assert_eq!(
        send(h.add("user-1", "resident")).await.status,
        StatusCode::CREATED
    );
    let again = send(h.add("user-1", "manager")).await;
    assert_error(&again, StatusCode::CONFLICT, "User already in building");
    // The role was not changed by the rejected call.
    assert_eq!(h.sandbox.members(INTEGRATION)["user-1"], role("resident"));
    h.stop().await;
}

#[tokio::test]
async fn delete_answers_204_then_404() {
    let h = start(options()).await;
    h.sandbox
        .add_member(ORG, INTEGRATION, "user-1", &role("resident"));

    let removed = send(h.remove("user-1")).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    assert!(removed.text.is_empty());
    assert!(h.sandbox.members(INTEGRATION).is_empty());

    let absent = send(h.remove("user-1")).await;
    assert_error(&absent, StatusCode::NOT_FOUND, "User not found");
    h.stop().await;
}

#[tokio::test]
async fn bearer_auth_failures_answer_401() {
    let h = start(options()).await;
    let unauthorized = json!({ "message": "Unauthorized", "error_code": "unauthorized" });

    let missing = send(h.client.get(h.collection()).header("X-Org", ORG)).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json(), unauthorized);

    let wrong = send(
        h.client
            .get(h.collection())
            .bearer_auth("wrong")
            .header("X-Org", ORG),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json(), unauthorized);

    let not_bearer = send(
        h.client
            .get(h.collection())
            .header("Authorization", KEY)
            .header("X-Org", ORG),
    )
    .await;
    assert_eq!(not_bearer.status, StatusCode::UNAUTHORIZED);

    // In bearer mode X-API-Key is not a substitute.
    let x_api_key = send(
        h.client
            .get(h.collection())
            .header("X-API-Key", KEY)
            .header("X-Org", ORG),
    )
    .await;
    assert_eq!(x_api_key.status, StatusCode::UNAUTHORIZED);

    // Non-UTF-8 header bytes are rejected, not a crash.
    let garbage = send(
        h.client
            .get(h.collection())
            .header(
                "Authorization",
                reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("obs-text"),
            )
            .header("X-Org", ORG),
    )
    .await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(h.list()).await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn x_api_key_mode_rejects_keys_in_authorization() {
    let h = start(SandboxOptions {
        auth: SandboxAuth::XApiKey,
        ..options()
    })
    .await;

    let in_authorization = send(h.list()).await;
    assert_error(&in_authorization, StatusCode::UNAUTHORIZED, "Unauthorized");

    // Even next to a valid X-API-Key, Authorization is taken as a bad JWT.
    let both = send(h.list().header("X-API-Key", KEY)).await;
    assert_eq!(both.status, StatusCode::UNAUTHORIZED);

    let wrong = send(
        h.client
            .get(h.collection())
            .header("X-API-Key", "wrong")
            .header("X-Org", ORG),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let ok = send(
        h.client
            .get(h.collection())
            .header("X-API-Key", KEY)
            .header("X-Org", ORG),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn empty_key_list_accepts_any_non_empty_key() {
    let h = start(SandboxOptions {
        api_keys: Vec::new(),
        ..options()
    })
    .await;
    let any = send(
        h.client
            .get(h.collection())
            .bearer_auth("anything")
            .header("X-Org", ORG),
    )
    .await;
    assert_eq!(any.status, StatusCode::OK);
    let empty = send(
        h.client
            .get(h.collection())
            .header("Authorization", "Bearer ")
            .header("X-Org", ORG),
    )
    .await;
    assert_eq!(empty.status, StatusCode::UNAUTHORIZED);
    h.stop().await;
}

#[tokio::test]
async fn missing_or_empty_x_org_answers_400() {
    let h = start(options()).await;
    let missing = send(h.client.get(h.collection()).bearer_auth(KEY)).await;
    assert_error(&missing, StatusCode::BAD_REQUEST, "Missing X-Org header");
    assert_eq!(missing.json()["error_code"], Value::Null);

    let empty = send(
        h.client
            .delete(h.item("user-1"))
            .bearer_auth(KEY)
            .header("X-Org", ""),
    )
    .await;
    assert_error(&empty, StatusCode::BAD_REQUEST, "Missing X-Org header");
    h.stop().await;
}

#[tokio::test]
async fn bad_bodies_answer_400_naming_the_problem() {
    let h = start(options()).await;
    let post = || h.authed(h.client.post(h.collection()));
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (post().body(r#"{"user_id":"u","role":"x"}"#), "Content-Type"),
        (
            post()
                .header("Content-Type", "text/plain")
                .body(r#"{"user_id":"u"}"#),
            "Content-Type",
        ),
        (
            post().header("Content-Type", "application/json"),
            "required",
        ),
        (
            post()
                .header("Content-Type", "application/json")
                .body("{not json"),
            "not valid JSON",
        ),
        (post().json(&json!(["user_id", "role"])), "JSON object"),
        (
            post().json(&json!({ "role": role("resident") })),
            "`user_id`",
        ),
        (post().json(&json!({ "user_id": "u" })), "`role`"),
        (
            post().json(&json!({ "user_id": 7, "role": role("resident") })),
            "`user_id` must be a string",
        ),
        (
            post().json(&json!({ "user_id": "", "role": role("resident") })),
            "`user_id` must not be empty",
        ),
        (
            post().json(&json!({ "user_id": "u", "role": role("resident"), "extra": 1 })),
            "`extra`",
        ),
        (
            post().json(&json!({
                "user_id": "u",
                "role": "virtual_access:integration:01HSOMEONEELSE:resident",
            })),
            "`role`",
        ),
        (
            post().json(&json!({ "user_id": "u", "role": role("") })),
            "`role`",
        ),
    ];
    for (request, needle) in cases {
        let reply = send(request).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{needle}: {}",
            reply.text
        );
        assert!(
            reply.message().contains(needle),
            "expected {needle:?} in {}",
            reply.text
        );
    }

    // Parameters after the media type are fine.
    let with_charset = send(
        post()
            .header("Content-Type", "Application/JSON; charset=utf-8")
            .body(json!({ "user_id": "u", "role": role("resident") }).to_string()),
    )
    .await;
    assert_eq!(with_charset.status, StatusCode::CREATED);
    assert_eq!(h.sandbox.members(INTEGRATION).len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn oversized_body_answers_413() {
    let h = start(options()).await;
    let big = json!({ "user_id": "x".repeat(MAX_BODY_BYTES), "role": role("resident") });
    let reply = send(h.authed(h.client.post(h.collection())).json(&big)).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert!(h.sandbox.members(INTEGRATION).is_empty());
    h.stop().await;
}

#[tokio::test]
async fn unknown_integration_404_and_wrong_org_403() {
    let h = start(options()).await;
    let unknown = send(h.authed(h.client.get(format!(
        "{}/api/v1/integrations/01HUNKNOWN/building-users",
        h.base
    ))))
    .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "Integration not found");

    let wrong_org = send(
        h.client
            .get(h.collection())
            .bearer_auth(KEY)
            .header("X-Org", OTHER_ORG),
    )
    .await;
    assert_error(
        &wrong_org,
        StatusCode::FORBIDDEN,
        "Forbidden: integration belongs to another org",
    );
    h.stop().await;
}

#[tokio::test]
async fn open_registration_binds_integration_to_first_org() {
    let h = start(SandboxOptions {
        integrations: Vec::new(),
        ..options()
    })
    .await;
    assert_eq!(
        send(h.add("user-1", "resident")).await.status,
        StatusCode::CREATED
    );
    let other = send(
        h.client
            .get(h.collection())
            .bearer_auth(KEY)
            .header("X-Org", OTHER_ORG),
    )
    .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(send(h.list()).await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn checks_run_in_contract_order() {
    let h = start(options()).await;
    let unknown = format!("{}/api/v1/integrations/01HUNKNOWN/building-users", h.base);
    let bad_body = json!({ "extra": true });

    // Auth before X-Org, integration and body.
    let reply = send(h.client.post(&unknown).json(&bad_body)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // X-Org before integration and body.
    let reply = send(h.client.post(&unknown).bearer_auth(KEY).json(&bad_body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.message(), "Missing X-Org header");
    // Integration before body.
    let reply = send(h.authed(h.client.post(&unknown)).json(&bad_body)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    // A scripted fault comes before everything, even auth.
    h.sandbox.push_fault(Fault::Status {
        status: 502,
        retry_after: None,
    });
    let reply = send(h.client.post(&unknown).json(&bad_body)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    h.stop().await;
}

#[tokio::test]
async fn scripted_status_fault_with_retry_after_then_normal() {
    let h = start(options()).await;
    h.sandbox.push_fault(Fault::Status {
        status: 429,
        retry_after: Some("2".to_owned()),
    });

    let faulted = send(h.add("user-1", "resident")).await;
    assert_eq!(faulted.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(faulted.headers[RETRY_AFTER], "2");
    assert_eq!(
        faulted.json(),
        json!({ "message": "Injected fault", "error_code": "sandbox_fault" })
    );
    // The outage happened before the operation.
    assert!(h.sandbox.members(INTEGRATION).is_empty());

    // The queue is consumed: the retry goes through.
    let retried = send(h.add("user-1", "resident")).await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert!(!retried.headers.contains_key(RETRY_AFTER));

    let statuses: Vec<u16> = h.sandbox.calls().iter().map(|call| call.status).collect();
    assert_eq!(statuses, [429, 201]);
    h.stop().await;
}

#[tokio::test]
async fn scripted_faults_can_target_a_method() {
    let h = start(options()).await;
    h.sandbox
        .add_member(ORG, INTEGRATION, "user-1", &role("resident"));
    h.sandbox.push_fault_for(
        Method::DELETE,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    h.sandbox.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
    });

    // The GET skips the DELETE-only fault and takes the next one.
    assert_eq!(
        send(h.list()).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(send(h.list()).await.status, StatusCode::OK);
    assert_eq!(
        send(h.remove("user-1")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        send(h.remove("user-1")).await.status,
        StatusCode::NO_CONTENT
    );
    h.stop().await;
}

#[tokio::test]
async fn scripted_delay_answers_normally_after_the_delay() {
    let h = start(options()).await;
    let delay = Duration::from_millis(50);
    h.sandbox.push_fault(Fault::Delay(delay));
    let started = Instant::now();
    let reply = send(h.add("user-1", "resident")).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(reply.status, StatusCode::CREATED);
    h.stop().await;
}

#[tokio::test]
async fn delayed_reply_is_a_lost_reply_when_the_client_gives_up() {
    let h = start(options()).await;
    // Far longer than the client waits; shutdown must still be prompt.
    h.sandbox.push_fault(Fault::Delay(Duration::from_secs(60)));
    let error = h
        .add("user-1", "resident")
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .expect_err("client times out");
    assert!(error.is_timeout(), "{error}");
    // The add was applied before the delay.
    assert_eq!(h.sandbox.members(INTEGRATION).len(), 1);
    assert_eq!(h.sandbox.calls()[0].status, 201);
    h.stop().await;
}

#[tokio::test]
async fn hang_holds_until_the_client_gives_up() {
    let h = start(options()).await;
    h.sandbox.push_fault(Fault::Hang);
    let error = h
        .add("user-1", "resident")
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .expect_err("client times out");
    assert!(error.is_timeout(), "{error}");

    let calls = tokio::time::timeout(GUARD, h.sandbox.wait_for_calls(1))
        .await
        .expect("hung call recorded");
    assert_eq!(calls[0].status, 0);
    assert_eq!(calls[0].user_id.as_deref(), Some("user-1"));
    // Nothing was applied.
    assert!(h.sandbox.members(INTEGRATION).is_empty());
    // The queue is consumed: the retry succeeds.
    assert_eq!(
        send(h.add("user-1", "resident")).await.status,
        StatusCode::CREATED
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_releases_a_hung_request() {
    let h = start(options()).await;
    h.sandbox.push_fault(Fault::Hang);
    let pending = tokio::spawn(h.list().send());
    tokio::time::timeout(GUARD, h.sandbox.wait_for_calls(1))
        .await
        .expect("hung call recorded");

    let sandbox = h.sandbox.clone();
    h.stop().await;
    let outcome = tokio::time::timeout(GUARD, pending)
        .await
        .expect("client finishes")
        .expect("client task");
    // Released at shutdown with a 503 rather than held forever.
    let response = outcome.expect("answered at shutdown");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sandbox.calls()[0].status, 503);
}

#[tokio::test]
async fn random_faults_at_rate_one_fail_every_call() {
    let h = start(SandboxOptions {
        faults: FaultOptions {
            retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
            ..FaultOptions::always(503)
        },
        ..options()
    })
    .await;
    for _ in 0..3 {
        let reply = send(h.add("user-1", "resident")).await;
        assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "Injected fault");
        assert_eq!(reply.json()["error_code"], "sandbox_fault");
        assert_eq!(reply.headers[RETRY_AFTER], "Wed, 21 Oct 2015 07:28:00 GMT");
    }
    // Faulted calls are recorded.
    assert_eq!(h.sandbox.calls().len(), 3);
    assert!(h.sandbox.members(INTEGRATION).is_empty());

    h.sandbox.set_faults(FaultOptions {
        rate: 0.0,
        ..FaultOptions::always(503)
    });
    assert_eq!(
        send(h.add("user-1", "resident")).await.status,
        StatusCode::CREATED
    );
    h.stop().await;
}

#[tokio::test]
async fn base_delay_slows_every_answer() {
    let delay = Duration::from_millis(30);
    let h = start(SandboxOptions {
        faults: FaultOptions {
            delay,
            ..FaultOptions::default()
        },
        ..options()
    })
    .await;
    let started = Instant::now();
    assert_eq!(send(h.list()).await.status, StatusCode::OK);
    assert!(started.elapsed() >= delay);
    h.stop().await;
}

#[tokio::test]
async fn every_response_has_a_fresh_ulid_request_id() {
    let h = start(options()).await;
    h.sandbox.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
    });
    let replies = [
        send(h.list()).await,                                 // fault
        send(h.list()).await,                                 // success
        send(h.client.get(h.collection())).await,             // 401
        send(h.client.get(format!("{}/nope", h.base))).await, // unknown route
        send(h.client.put(h.collection())).await,             // 405
    ];
    let mut ids: Vec<String> = replies.iter().map(Reply::request_id).collect();
    for id in &ids {
        assert!(ulid::Ulid::from_string(id).is_ok(), "{id} is a ULID");
    }
    let recorded: Vec<String> = h
        .sandbox
        .calls()
        .into_iter()
        .map(|call| call.request_id)
        .collect();
    assert_eq!(recorded, ids[..3]);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    h.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let h = start(options()).await;
    let not_found = send(h.authed(h.client.get(format!("{}/api/v1/nope", h.base)))).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    assert!(not_found.message().contains("/api/v1/nope"));

    let not_allowed = send(h.authed(h.client.put(h.collection()))).await;
    assert_eq!(not_allowed.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(not_allowed.message().contains("PUT"));
    assert!(not_allowed.headers.contains_key("allow"));

    let not_allowed = send(h.authed(h.client.get(h.item("user-1")))).await;
    assert_eq!(not_allowed.status, StatusCode::METHOD_NOT_ALLOWED);

    // Neither is recorded as a building-users call.
    assert!(h.sandbox.calls().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn control_endpoints_redact_keys_and_are_not_recorded() {
    let h = start(options()).await;
    assert_eq!(
        send(h.add("user-1", "resident")).await.status,
        StatusCode::CREATED
    );

    let calls = send(h.client.get(format!("{}/_sandbox/calls", h.base))).await;
    assert_eq!(calls.status, StatusCode::OK);
    assert!(!calls.text.contains("test-secret"), "{}", calls.text);
    let calls: Vec<RecordedCall> = serde_json::from_str(&calls.text).expect("calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer [redacted]"));
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].integration_id, INTEGRATION);
    assert_eq!(calls[0].user_id.as_deref(), Some("user-1"));
    assert_eq!(calls[0].x_org.as_deref(), Some(ORG));
    assert_eq!(calls[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        calls[0].body.as_ref().expect("body")["role"],
        json!(role("resident"))
    );
    assert_eq!(calls[0].status, 201);

    let state = send(h.client.get(format!("{}/_sandbox/state", h.base))).await;
    assert_eq!(
        state.json(),
        json!({ INTEGRATION: { "user-1": role("resident") } })
    );

    // In-process callers see the raw header; Debug output never does.
    let raw = h.sandbox.calls();
    assert_eq!(raw.len(), 1);
    assert_eq!(
        raw[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(!format!("{:?}", raw[0]).contains("test-secret"));
    h.stop().await;
}

#[test]
fn recorded_calls_are_capped() {
    let sandbox = Sandbox::new(SandboxOptions::default());
    let call = |n: usize| RecordedCall {
        method: "GET".to_owned(),
        path: "/".to_owned(),
        integration_id: String::new(),
        user_id: None,
        authorization: None,
        x_api_key: None,
        x_org: None,
        content_type: None,
        body: None,
        status: 200,
        request_id: n.to_string(),
        at_ms: 0,
        seq: 0,
    };
    for n in 0..=MAX_RECORDED_CALLS {
        sandbox.record(call(n));
    }
    let calls = sandbox.calls();
    assert_eq!(calls.len(), MAX_RECORDED_CALLS);
    assert_eq!(calls[0].request_id, "1");
    // Numbered in order from 1, the dropped first one included.
    assert_eq!(calls[0].seq, 2);
    assert_eq!(
        calls.last().map(|c| c.seq),
        Some(MAX_RECORDED_CALLS as u64 + 1)
    );
}

#[test]
fn redaction_keeps_the_scheme_only() {
    assert_eq!(redact_authorization("Bearer secret"), "Bearer [redacted]");
    assert_eq!(redact_authorization("secret"), "[redacted]");
}

// ---------------------------------------------------------------------------
// CLI arguments

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SandboxArgs,
}

fn parse(args: &[&str]) -> Result<SandboxArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("sandbox-openapp").chain(args.iter().copied()))
        .map(|cli| cli.args)
}

#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn cli_defaults_give_a_fault_free_bearer_sandbox() {
    let args = parse(&[]).expect("parse");
    assert_eq!(args.listen, "127.0.0.1:8081");
    let options = args.options().expect("valid");
    assert_eq!(options.auth, SandboxAuth::Bearer);
    assert!(options.api_keys.is_empty());
    assert!(options.integrations.is_empty());
    assert!(!options.conflict_on_existing);
    assert_eq!(options.faults, FaultOptions::default());
}

#[test]
fn cli_parses_every_option() {
    let args = parse(&[
        "--listen",
        "0.0.0.0:9000",
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--auth",
        "x-api-key",
        "--integration",
        "org1:int1",
        "--integration",
        "org2:int2",
        "--fail-status",
        "503",
        "--fail-rate",
        "0.25",
        "--delay-ms",
        "20",
        "--retry-after",
        "3",
        "--conflict-on-existing",
        "--user",
        "org1:ann@example.com:Ann: the first",
    ])
    .expect("parse");
    assert!(!format!("{args:?}").contains("k1"));
    let options = args.options().expect("valid");
    assert_eq!(options.api_keys, ["k1", "k2"]);
    assert_eq!(options.auth, SandboxAuth::XApiKey);
    assert_eq!(
        options.integrations,
        [
            ("org1".to_owned(), "int1".to_owned()),
            ("org2".to_owned(), "int2".to_owned())
        ]
    );
    assert!(options.conflict_on_existing);
    assert_eq!(
        options.users,
        [(
            "org1".to_owned(),
            NewUser::new("Ann: the first", "ann@example.com")
        )]
    );
    assert_eq!(Sandbox::new(options.clone()).users().len(), 1);
    assert_eq!(
        options.faults,
        FaultOptions {
            status: Some(503),
            rate: 0.25,
            delay: Duration::from_millis(20),
            retry_after: Some("3".to_owned()),
        }
    );
    // --fail-status alone fails every call.
    let always = parse(&["--fail-status", "500"]).expect("parse");
    assert_eq!(always.options().expect("valid").faults.rate, 1.0);
}

#[test]
fn cli_rejects_invalid_values() {
    // clap-level: fail-rate / retry-after need fail-status, bad auth mode.
    assert!(parse(&["--fail-rate", "0.5"]).is_err());
    assert!(parse(&["--retry-after", "1"]).is_err());
    assert!(parse(&["--auth", "basic"]).is_err());

    let invalid = |args: &[&str]| parse(args).expect("parse").options().expect_err("invalid");
    assert!(matches!(
        invalid(&["--integration", "no-colon"]),
        SandboxArgsError::InvalidIntegration { .. }
    ));
    assert!(matches!(
        invalid(&["--integration", ":int"]),
        SandboxArgsError::InvalidIntegration { .. }
    ));
    assert!(matches!(
        invalid(&["--integration", "org:"]),
        SandboxArgsError::InvalidIntegration { .. }
    ));
    assert!(matches!(
        invalid(&["--integration", "org:a/b"]),
        SandboxArgsError::InvalidIntegration { .. }
    ));
    assert!(matches!(
        invalid(&["--integration", "org a:int"]),
        SandboxArgsError::InvalidIntegration { .. }
    ));
    assert_eq!(
        invalid(&["--integration", "o1:i", "--integration", "o2:i"]),
        SandboxArgsError::DuplicateIntegration {
            integration_id: "i".to_owned()
        }
    );
    assert_eq!(
        invalid(&["--fail-status", "200"]),
        SandboxArgsError::InvalidFailStatus(200)
    );
    assert_eq!(
        invalid(&["--fail-status", "500", "--fail-rate", "1.5"]),
        SandboxArgsError::InvalidFailRate(1.5)
    );
    assert!(matches!(
        invalid(&["--fail-status", "500", "--fail-rate", "NaN"]),
        SandboxArgsError::InvalidFailRate(_)
    ));
    assert_eq!(
        invalid(&["--fail-status", "500", "--retry-after", "bad\u{7f}"]),
        SandboxArgsError::InvalidRetryAfter("bad\u{7f}".to_owned())
    );
    assert_eq!(invalid(&["--api-key", ""]), SandboxArgsError::EmptyApiKey);
    for user in [
        "org:ann@example.com",
        ":a@b:Ann",
        "org:nope:Ann",
        "org:a@b: ",
    ] {
        assert!(
            matches!(
                invalid(&["--user", user]),
                SandboxArgsError::InvalidUser { .. }
            ),
            "{user}"
        );
    }

    // Built in code, without clap's `requires`.
    let args = SandboxArgs {
        fail_rate: Some(0.5),
        ..parse(&[]).expect("parse")
    };
    assert_eq!(
        args.options().err(),
        Some(SandboxArgsError::RequiresFailStatus("fail-rate"))
    );
}

#[test]
fn cli_reads_api_keys_from_files_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("openapp-api-key");
    std::fs::write(&key_file, "  oa_test_0123456789abcdef\n").expect("write");
    let key_path = key_file.to_str().expect("utf-8");
    let args = parse(&["--api-key", "k1", "--api-key-file", key_path]).expect("parse");
    assert!(!format!("{args:?}").contains("oa_test_"));
    let options = args.options().expect("valid");
    assert_eq!(options.api_keys, ["k1", "oa_test_0123456789abcdef"]);

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n \n").expect("write");
    let args = parse(&["--api-key-file", empty.to_str().expect("utf-8")]).expect("parse");
    assert!(matches!(
        args.options(),
        Err(SandboxArgsError::ApiKeyFile { path, .. }) if path == empty
    ));

    let missing = dir.path().join("missing");
    let args = parse(&["--api-key-file", missing.to_str().expect("utf-8")]).expect("parse");
    let err = args.options().expect_err("a missing file is an error");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let args = parse(&["--listen", "127.0.0.1:0"]).expect("parse");
    tokio::time::timeout(GUARD, run(args, std::future::ready(())))
        .await
        .expect("returns promptly")
        .expect("runs cleanly");

    let bad = parse(&["--listen", "127.0.0.1:0", "--fail-status", "42"]).expect("parse");
    assert!(run(bad, std::future::ready(())).await.is_err());

    let unbindable = parse(&["--listen", "not an address"]).expect("parse");
    assert!(run(unbindable, std::future::ready(())).await.is_err());
}
