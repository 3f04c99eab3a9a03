//! The admin API over real HTTP: authentication, the OpenAPI document, listing, showing,
//! replaying and purging dead letters, the audit trail and queue counts.
//!
//! Dead letters are made the way production makes them: the sandbox OpenApp refuses the
//! first call of each delivery with a 400, which is final.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lease_sync::app::Application;
use lease_sync::config::{AdminToken, Role, Settings, TokenScope};
use lease_sync_sandbox::Fault;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// `method url`, with `authorization` as the header when given and `body` as JSON text.
async fn call(method: Method, url: &str, authorization: Option<&str>, body: Option<&str>) -> Reply {
    let mut headers = Vec::new();
    if let Some(value) = authorization {
        headers.push(("authorization", value.to_owned()));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json".to_owned()));
    }
    request(
        method,
        url,
        &headers,
        body.unwrap_or_default().as_bytes().to_vec(),
    )
    .await
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<&str>) -> Reply {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    call(method, &app.admin_url(path), Some(&bearer), body).await
}

/// What audit records must name the caller with the test token.
fn token_actor() -> String {
    format!("token:{}", &sha256_hex(ADMIN_TOKEN)[..12])
}

/// Posts a `event_type` event for `users` after scripting a 400 for each of their calls,
/// waits until the queue holds `dead_after` dead letters and returns the new ones' ids by
/// user. Call it with an idle queue, so the scripted faults meet these calls.
async fn make_dead_letters(
    app: &TestApp,
    openapp: &FakeOpenApp,
    event_id: &str,
    event_type: &str,
    users: &[&str],
    dead_after: u64,
) -> BTreeMap<String, String> {
    for _ in users {
        openapp.sandbox.push_fault(Fault::Status {
            status: 400,
            retry_after: None,
        });
    }
    let reply = post_event(app, event_id, event_body(event_type, "L-1", users)).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("the deliveries to be dead letters", LIMIT, || async {
        (app.queue().counts().await.ok()?.dead == dead_after).then_some(())
    })
    .await;
    let page = app
        .dead_letters()
        .list(&Default::default(), 0, 1000)
        .await
        .expect("list dead letters");
    users
        .iter()
        .map(|user| {
            let entry = page
                .items
                .iter()
                .find(|e| e.user_id == *user && e.event_id == event_id)
                .unwrap_or_else(|| panic!("no dead letter for {user}"));
            ((*user).to_owned(), entry.id.clone())
        })
        .collect()
}

fn ids(reply: &Reply, field: &str) -> BTreeSet<String> {
    reply.json[field]
        .as_array()
        .unwrap_or_else(|| panic!("no `{field}` array in {reply:?}"))
        .iter()
        .map(|v| v.as_str().expect("string id").to_owned())
        .collect()
}

fn item_ids(reply: &Reply) -> Vec<String> {
    reply.json["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {reply:?}"))
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_owned())
        .collect()
}

/// POST calls the sandbox received for `user`.
fn posts_for(openapp: &FakeOpenApp, user: &str) -> usize {
    openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.user_id.as_deref() == Some(user))
        .count()
}

fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    assert_eq!(reply.code(), "unauthorized", "{what}");
    assert!(reply.json["message"].is_string(), "{what}");
    let challenge = reply
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{what}: `{challenge}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_a_missing_or_wrong_token() {
    let (_redis, openapp, app) = serve().await;
    let dead = make_dead_letters(&app, &openapp, "evt-auth", "lease.signed", &["user-a"], 1).await;
    let id = &dead["user-a"];

    let mut last_char_differs = ADMIN_TOKEN.to_owned();
    let last = last_char_differs.pop().expect("non-empty token");
    last_char_differs.push(if last == '9' { '8' } else { '9' });
    let prefix = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
    let bad_headers = [
        None,
        Some("Bearer wrong-token-wrong-token-00".to_owned()),
        Some(format!("Bearer {last_char_differs}")),
        Some(format!("Bearer {prefix}")),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(ADMIN_TOKEN.to_owned()),
        Some("Bearer ".to_owned()),
    ];
    let endpoints = [
        (Method::GET, "/dead-letters".to_owned(), None),
        (Method::GET, format!("/dead-letters/{id}"), None),
        (Method::POST, format!("/dead-letters/{id}/replay"), None),
        (
            Method::POST,
            "/dead-letters/replay".to_owned(),
            Some(r#"{"filter": {}}"#),
        ),
        (Method::DELETE, format!("/dead-letters/{id}"), None),
        (Method::GET, "/queue".to_owned(), None),
        (Method::GET, "/audit".to_owned(), None),
        (Method::POST, "/leases/acme-pms/L-1/reset".to_owned(), None),
        (Method::GET, "/conflicts".to_owned(), None),
        (
            Method::GET,
            format!("/residents/{INTEGRATION}/user-a"),
            None,
        ),
        (
            Method::GET,
            format!("/residents/{INTEGRATION}/user-a/history"),
            None,
        ),
        (Method::GET, "/integrations".to_owned(), None),
        (
            Method::POST,
            format!("/integrations/{INTEGRATION}/pause"),
            None,
        ),
        (
            Method::POST,
            format!("/integrations/{INTEGRATION}/resume"),
            None,
        ),
    ];
    for (method, path, body) in &endpoints {
        for header in &bad_headers {
            let reply = call(
                method.clone(),
                &app.admin_url(path),
                header.as_deref(),
                *body,
            )
            .await;
            assert_unauthorized(&reply, &format!("{method} {path} with {header:?}"));
        }
    }

    // Nothing was replayed, purged or audited by all of that.
    let entry = app.dead_letters().get(id).await.expect("redis");
    assert!(entry.is_some(), "the dead letter is still there");
    assert!(
        app.dead_letters()
            .recent_audit(10)
            .await
            .expect("redis")
            .is_empty()
    );
    assert_eq!(posts_for(&openapp, "user-a"), 1);

    // The scheme is case-insensitive; the token is not.
    let reply = call(
        Method::GET,
        &app.admin_url("/queue"),
        Some(&format!("bearer {ADMIN_TOKEN}")),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let upper = format!("Bearer {}", ADMIN_TOKEN.to_uppercase());
    let reply = call(Method::GET, &app.admin_url("/queue"), Some(&upper), None).await;
    assert_unauthorized(&reply, "upper-cased token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_public_and_lists_every_endpoint() {
    let (_redis, _openapp, app) = serve().await;
    let reply = call(Method::GET, &app.admin_url("/openapi.json"), None, None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.headers["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("application/json"))
    );
    let doc = &reply.json;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi: {}",
        doc["openapi"]
    );
    let expected = [
        ("/admin/dead-letters", "get"),
        ("/admin/dead-letters/{id}", "get"),
        ("/admin/dead-letters/{id}", "delete"),
        ("/admin/dead-letters/{id}/replay", "post"),
        ("/admin/dead-letters/replay", "post"),
        ("/admin/queue", "get"),
        ("/admin/audit", "get"),
        ("/admin/leases/{source}/{lease_id}/reset", "post"),
        ("/admin/conflicts", "get"),
        ("/admin/residents/{integration_id}/{user_id}", "get"),
        ("/admin/residents/{integration_id}/{user_id}/history", "get"),
        ("/admin/integrations", "get"),
        ("/admin/integrations/{id}/pause", "post"),
        ("/admin/integrations/{id}/resume", "post"),
        ("/admin/openapi.json", "get"),
    ];
    for (path, method) in expected {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        if path == "/admin/openapi.json" {
            assert!(
                operation.get("security").is_none(),
                "the document is public"
            );
        } else {
            assert_eq!(
                operation["security"],
                json!([{"bearer": []}]),
                "{method} {path}"
            );
            assert!(operation["responses"]["401"].is_object(), "{method} {path}");
        }
    }
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (scheme["type"].as_str(), scheme["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );

    let list = &doc["paths"]["/admin/dead-letters"]["get"];
    let params: BTreeSet<&str> = list["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let want = [
        "source",
        "type",
        "reason",
        "since",
        "older_than",
        "limit",
        "offset",
    ];
    assert_eq!(params, want.into_iter().collect());
    let replay = &doc["paths"]["/admin/dead-letters/{id}/replay"]["post"]["responses"];
    for status in ["200", "401", "404", "409", "503"] {
        assert!(replay[status].is_object(), "replay documents {status}");
    }
    assert!(doc["paths"]["/admin/dead-letters/{id}"]["delete"]["responses"]["204"].is_object());
    assert!(doc["paths"]["/admin/dead-letters/replay"]["post"]["requestBody"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods_answer_json() {
    let (_redis, _openapp, app) = serve().await;
    for path in ["/nope", "/dead-letters/x/y/z"] {
        let reply = admin(&app, Method::GET, path, None).await;
        assert_eq!((reply.status, reply.code()), (404, "not_found"), "{path}");
    }
    for (method, path) in [
        (Method::PUT, "/queue"),
        (Method::POST, "/dead-letters"),
        (Method::GET, "/dead-letters/some-id/replay"),
        (Method::DELETE, "/openapi.json"),
    ] {
        let reply = admin(&app, method.clone(), path, None).await;
        assert_eq!(
            (reply.status, reply.code()),
            (405, "method_not_allowed"),
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_and_pages_newest_first() {
    let (_redis, openapp, app) = serve().await;
    let signed = make_dead_letters(
        &app,
        &openapp,
        "evt-list-1",
        "lease.signed",
        &["user-1", "user-2", "user-3"],
        3,
    )
    .await;
    let ended =
        make_dead_letters(&app, &openapp, "evt-list-2", "lease.ended", &["user-4"], 4).await;

    let first = admin(&app, Method::GET, "/dead-letters?limit=2", None).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json["next_offset"], 2);
    let first_ids = item_ids(&first);
    assert_eq!(first_ids.len(), 2);
    assert_eq!(first_ids[0], ended["user-4"], "newest first");
    assert_eq!(first.json["items"][0]["event_type"], "lease.ended");
    assert_eq!(first.json["items"][0]["action"], "remove");
    assert_eq!(first.json["items"][0]["reason"], "permanent");
    let second = admin(&app, Method::GET, "/dead-letters?limit=2&offset=2", None).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json["next_offset"], Value::Null);
    let all: BTreeSet<String> = first_ids.into_iter().chain(item_ids(&second)).collect();
    let expected: BTreeSet<String> = signed.values().chain(ended.values()).cloned().collect();
    assert_eq!(all, expected);

    let count = |query: &'static str| {
        let app = &app;
        async move {
            let reply = admin(app, Method::GET, &format!("/dead-letters?{query}"), None).await;
            assert_eq!(reply.status, 200, "{query}: {reply:?}");
            item_ids(&reply).len()
        }
    };
    assert_eq!(count("type=lease.ended").await, 1);
    assert_eq!(count("type=lease.signed&reason=permanent").await, 3);
    assert_eq!(count("reason=exhausted").await, 0);
    assert_eq!(count("source=acme-pms").await, 4);
    assert_eq!(count("source=someone-else").await, 0);
    assert_eq!(count("since=1h").await, 4);
    assert_eq!(count("older_than=1h").await, 0);
    assert_eq!(count("source=&type=&reason=&since=&older_than=").await, 4);
    assert_eq!(count("offset=4").await, 0);

    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=many", "limit"),
        ("offset=-1", "offset"),
        ("type=lease.renewed", "type"),
        ("reason=bored", "reason"),
        ("since=yesterday", "since"),
        ("older_than=30", "older_than"),
        ("limt=5", "limt"),
    ] {
        let reply = admin(&app, Method::GET, &format!("/dead-letters?{query}"), None).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_query"),
            "{query}: {reply:?}"
        );
        let message = reply.json["message"].as_str().unwrap_or_default();
        assert!(message.contains(parameter), "{query}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_letter_shows_its_job_event_and_attempts() {
    let (_redis, openapp, app) = serve().await;
    let dead = make_dead_letters(&app, &openapp, "evt-show", "lease.signed", &["user-s"], 1).await;
    let id = &dead["user-s"];

    let reply = admin(&app, Method::GET, &format!("/dead-letters/{id}"), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let entry = &reply.json;
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["reason"], "permanent");
    assert_eq!(entry["event_id"], "evt-show");
    assert_eq!(entry["user_id"], "user-s");
    assert_eq!(entry["attempts"], 1);
    assert_eq!(entry["job"]["delivery_id"], id.as_str());
    assert_eq!(entry["job"]["integration_id"], INTEGRATION);
    assert_eq!(entry["event"]["lease"]["id"], "L-1");
    let last_error = entry["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("400") && last_error.contains("Injected fault"),
        "{last_error}"
    );
    let log = entry["attempt_log"].as_array().expect("attempt_log");
    let failed = log
        .iter()
        .find(|r| r["status"] == 400)
        .unwrap_or_else(|| panic!("no 400 attempt in {log:?}"));
    assert_eq!(failed["attempt"], 1);
    assert_eq!(
        failed["message"], "Injected fault",
        "OpenApp's message is kept"
    );
    assert_eq!(failed["error_code"], "sandbox_fault");

    let reply = admin(&app, Method::GET, "/dead-letters/01NOSUCHDELIVERY", None).await;
    assert_eq!((reply.status, reply.code()), (404, "not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_delivered_once_openapp_recovers() {
    let (_redis, openapp, app) = serve().await;
    let dead =
        make_dead_letters(&app, &openapp, "evt-replay", "lease.signed", &["user-r"], 1).await;
    let id = &dead["user-r"];
    assert!(!openapp.sandbox.members(INTEGRATION).contains_key("user-r"));

    // The scripted 400 is used up: OpenApp has recovered.
    let reply = admin(
        &app,
        Method::POST,
        &format!("/dead-letters/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json, json!({"id": id, "outcome": "replayed"}));
    wait_until("the resident to be added", LIMIT, || async {
        openapp
            .sandbox
            .members(INTEGRATION)
            .contains_key("user-r")
            .then_some(())
    })
    .await;
    let reply = admin(&app, Method::GET, &format!("/dead-letters/{id}"), None).await;
    assert_eq!(reply.status, 404, "no longer a dead letter");

    let again = admin(
        &app,
        Method::POST,
        &format!("/dead-letters/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(
        (again.status, again.code()),
        (409, "not_dead_letter"),
        "{again:?}"
    );
    let unknown = admin(&app, Method::POST, "/dead-letters/01NOSUCH/replay", None).await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));

    let audit = admin(&app, Method::GET, "/audit", None).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    assert_eq!(
        audit.json,
        json!([{
            "at": audit.json[0]["at"],
            "actor": token_actor(),
            "action": "replay",
            "ids": [id],
        }])
    );
    assert!(audit.json[0]["at"].as_i64().is_some_and(|at| at > 0));
    assert!(
        !audit.json.to_string().contains(ADMIN_TOKEN),
        "never the token itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_of_one_entry_replay_it_exactly_once() {
    let (_redis, openapp, app) = serve().await;
    let dead = make_dead_letters(&app, &openapp, "evt-race", "lease.signed", &["user-c"], 1).await;
    let path = format!("/dead-letters/{}/replay", dead["user-c"]);
    assert_eq!(posts_for(&openapp, "user-c"), 1);

    let (a, b) = tokio::join!(
        admin(&app, Method::POST, &path, None),
        admin(&app, Method::POST, &path, None)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{a:?} {b:?}");
    let loser = if a.status == 409 { &a } else { &b };
    assert_eq!(loser.code(), "not_dead_letter");

    wait_until("the resident to be added", LIMIT, || async {
        openapp
            .sandbox
            .members(INTEGRATION)
            .contains_key("user-c")
            .then_some(())
    })
    .await;
    wait_drained(&app.queue(), LIMIT).await;
    assert_eq!(
        posts_for(&openapp, "user-c"),
        2,
        "the first call and one replay"
    );
    let audit = app.dead_letters().recent_audit(10).await.expect("redis");
    assert_eq!(audit.len(), 1, "one replay, one record: {audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_replay_rehearses_then_replays_only_the_filtered_entries() {
    let (_redis, openapp, app) = serve().await;
    let signed = make_dead_letters(
        &app,
        &openapp,
        "evt-bulk-1",
        "lease.signed",
        &["user-a", "user-b"],
        2,
    )
    .await;
    let ended =
        make_dead_letters(&app, &openapp, "evt-bulk-2", "lease.ended", &["user-x"], 3).await;
    let signed_ids: BTreeSet<String> = signed.values().cloned().collect();
    let calls_before = openapp.sandbox.calls().len();

    let filter = r#""filter": {"type": "lease.signed", "since": "1h"}"#;
    let rehearsal = admin(
        &app,
        Method::POST,
        "/dead-letters/replay",
        Some(&format!(r#"{{{filter}, "dry_run": true}}"#)),
    )
    .await;
    assert_eq!(rehearsal.status, 200, "{rehearsal:?}");
    assert_eq!(rehearsal.json["dry_run"], true);
    assert_eq!(rehearsal.json["matched"], 2);
    assert_eq!(ids(&rehearsal, "ids"), signed_ids);
    assert!(rehearsal.json.get("replayed").is_none());
    let limited = admin(
        &app,
        Method::POST,
        "/dead-letters/replay",
        Some(&format!(r#"{{{filter}, "dry_run": true, "limit": 1}}"#)),
    )
    .await;
    assert_eq!(
        (limited.json["matched"].as_u64(), ids(&limited, "ids").len()),
        (Some(2), 1)
    );

    for bad in [
        "not json",
        "{}",
        r#"{"filter": {"typo": "lease.signed"}}"#,
        r#"{"filter": {}, "dryrun": true}"#,
        r#"{"filter": {"type": "lease.renewed"}}"#,
        r#"{"filter": {}, "limit": 0}"#,
    ] {
        let reply = admin(&app, Method::POST, "/dead-letters/replay", Some(bad)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_body"),
            "{bad}: {reply:?}"
        );
    }

    // Neither the rehearsals nor the rejected bodies changed anything.
    let counts = admin(&app, Method::GET, "/queue", None).await;
    assert_eq!(
        (
            &counts.json["dead"],
            &counts.json["ready"],
            &counts.json["scheduled"]
        ),
        (&json!(3), &json!(0), &json!(0))
    );
    assert!(
        app.dead_letters()
            .recent_audit(10)
            .await
            .expect("redis")
            .is_empty()
    );
    assert_eq!(openapp.sandbox.calls().len(), calls_before);

    let run = admin(
        &app,
        Method::POST,
        "/dead-letters/replay",
        Some(&format!("{{{filter}}}")),
    )
    .await;
    assert_eq!(run.status, 200, "{run:?}");
    assert_eq!(
        (
            &run.json["dry_run"],
            &run.json["matched"],
            &run.json["replayed"],
            &run.json["skipped"]
        ),
        (&json!(false), &json!(2), &json!(2), &json!(0))
    );
    assert_eq!(ids(&run, "ids"), signed_ids);
    wait_until("both residents to be added", LIMIT, || async {
        let members = openapp.sandbox.members(INTEGRATION);
        (members.contains_key("user-a") && members.contains_key("user-b")).then_some(())
    })
    .await;
    let left = admin(&app, Method::GET, "/dead-letters", None).await;
    assert_eq!(
        item_ids(&left),
        vec![ended["user-x"].clone()],
        "the filter spared it"
    );

    let audit = admin(&app, Method::GET, "/audit", None).await;
    let records = audit.json.as_array().expect("records");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["action"], "replay");
    assert_eq!(records[0]["actor"], token_actor());
    assert_eq!(
        records[0]["filter"],
        json!({"type": "lease.signed", "since": "1h"})
    );
    let audited: BTreeSet<String> = records[0]["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(audited, signed_ids);

    // Nothing matches any more: nothing happens, nothing is audited.
    let rerun = admin(
        &app,
        Method::POST,
        "/dead-letters/replay",
        Some(&format!("{{{filter}}}")),
    )
    .await;
    assert_eq!(
        (&rerun.json["matched"], &rerun.json["replayed"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(
        app.dead_letters()
            .recent_audit(10)
            .await
            .expect("redis")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_deletes_a_dead_letter_and_is_audited() {
    let (_redis, openapp, app) = serve().await;
    let dead = make_dead_letters(&app, &openapp, "evt-purge", "lease.signed", &["user-p"], 1).await;
    let path = format!("/dead-letters/{}", dead["user-p"]);

    let reply = admin(&app, Method::DELETE, &path, None).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.json, Value::Null, "no body");
    let reply = admin(&app, Method::GET, &path, None).await;
    assert_eq!((reply.status, reply.code()), (404, "not_found"));
    let reply = admin(&app, Method::DELETE, &path, None).await;
    assert_eq!((reply.status, reply.code()), (404, "not_found"));
    let reply = admin(&app, Method::POST, &format!("{path}/replay"), None).await;
    assert_eq!(
        reply.status, 404,
        "a purged entry cannot be replayed: {reply:?}"
    );

    let audit = admin(&app, Method::GET, "/audit?limit=1", None).await;
    assert_eq!(audit.status, 200);
    assert_eq!(
        audit.json,
        json!([{
            "at": audit.json[0]["at"],
            "actor": token_actor(),
            "action": "purge",
            "ids": [dead["user-p"]],
        }])
    );
    let counts = admin(&app, Method::GET, "/queue", None).await;
    assert_eq!(counts.json["dead"], 0);
    let reply = admin(&app, Method::GET, "/audit?limit=0", None).await;
    assert_eq!((reply.status, reply.code()), (400, "invalid_query"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_counts_report_depths_and_counters() {
    let (_redis, openapp, app) = serve().await;
    post_event(
        &app,
        "evt-ok",
        event_body("lease.signed", "L-2", &["user-ok"]),
    )
    .await;
    wait_until("the delivery to finish", LIMIT, || async {
        (app.queue().counts().await.ok()?.done == 1).then_some(())
    })
    .await;
    make_dead_letters(&app, &openapp, "evt-counts", "lease.signed", &["user-d"], 1).await;

    let reply = admin(&app, Method::GET, "/queue", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let counts = reply.json.as_object().expect("an object");
    for field in [
        "ready",
        "scheduled",
        "in_flight",
        "dead",
        "oldest_ready_age_secs",
        "done",
        "retries",
        "dead_lettered",
        "auth_failures",
        "dead_letters_trimmed",
        "stale_tasks",
    ] {
        assert!(counts.contains_key(field), "{field} missing from {reply:?}");
    }
    assert_eq!(
        (
            &reply.json["done"],
            &reply.json["dead"],
            &reply.json["dead_lettered"]
        ),
        (&json!(1), &json!(1), &json!(1))
    );
    assert_eq!(
        (&reply.json["ready"], &reply.json["scheduled"]),
        (&json!(0), &json!(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_503_without_details() {
    let (mut redis, _openapp, app) = serve().await;
    assert_eq!(admin(&app, Method::GET, "/queue", None).await.status, 200);
    redis.kill9();
    for path in ["/queue", "/dead-letters", "/audit"] {
        let reply = admin(&app, Method::GET, path, None).await;
        assert_eq!(
            (reply.status, reply.code()),
            (503, "queue_unavailable"),
            "{path}: {reply:?}"
        );
        let message = reply.json["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("redis://") && !message.contains("refused"),
            "{message}"
        );
    }
    // Authentication still comes first.
    let reply = call(Method::GET, &app.admin_url("/queue"), None, None).await;
    assert_unauthorized(&reply, "during the outage");
}

/// Tokens of the hardened-authentication tests; configured hashed unless said otherwise.
const OPS_TOKEN: &str = "ops-token-0123456789abcdef";
const ONCALL_TOKEN: &str = "oncall-token-0123456789";
const VIEWER_TOKEN: &str = "viewer-token-0123456789";
const OLD_TOKEN: &str = "old-token-0123456789";

/// Lowercase hex SHA-256 of `token`.
fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `sha256:<hex>`, as `[admin] tokens` takes a hashed token.
fn hashed(token: &str) -> String {
    format!("sha256:{}", sha256_hex(token))
}

/// An edit of the test config that sets `[admin] tokens` to `tokens` instead.
fn with_tokens(tokens: Vec<AdminToken>) -> impl FnOnce(&mut Settings) {
    move |settings| settings.admin.tokens = tokens
}

/// `token` (plain or `sha256:…`) named `name`.
fn named(name: &str, token: String) -> AdminToken {
    let mut entry = AdminToken::new(token);
    entry.name = Some(name.to_owned());
    entry
}

/// `token`, refused after `not_after`.
fn expiring(mut token: AdminToken, not_after: OffsetDateTime) -> AdminToken {
    token.not_after = Some(not_after);
    token
}

async fn as_token(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let bearer = format!("Bearer {token}");
    call(method, &app.admin_url(path), Some(&bearer), body).await
}

fn assert_refused(reply: &Reply, status: u16, code: &str, challenge: &str, what: &str) {
    assert_eq!(
        (reply.status, reply.code()),
        (status, code),
        "{what}: {reply:?}"
    );
    assert_eq!(
        reply
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some(challenge),
        "{what}"
    );
    let text = reply.json.to_string();
    for token in [
        ADMIN_TOKEN,
        OPS_TOKEN,
        ONCALL_TOKEN,
        VIEWER_TOKEN,
        OLD_TOKEN,
    ] {
        assert!(!text.contains(token), "{what}: the answer quotes a token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_tokens_are_accepted_and_wrong_missing_or_expired_ones_are_not() {
    let (_redis, openapp, app) = serve_with(with_tokens(vec![
        AdminToken::new(hashed(OPS_TOKEN)),
        // Hex in either case.
        named(
            "oncall",
            hashed(ONCALL_TOKEN)
                .to_uppercase()
                .replace("SHA256:", "sha256:"),
        ),
        expiring(
            named("old", hashed(OLD_TOKEN)),
            datetime!(2020-01-01 0:00 UTC),
        ),
    ]))
    .await;
    let dead = make_dead_letters(&app, &openapp, "evt-hash", "lease.signed", &["user-h"], 1).await;
    let id = &dead["user-h"];

    for token in [OPS_TOKEN, ONCALL_TOKEN] {
        let reply = as_token(&app, token, Method::GET, "/queue", None).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json["dead"], 1);
    }

    let unauthorized = [
        ("no header", None),
        (
            "a wrong token",
            Some("Bearer wrong-token-wrong-token-00".to_owned()),
        ),
        (
            "the token of the other tests",
            Some(format!("Bearer {ADMIN_TOKEN}")),
        ),
        // The stored hash must not work as a password.
        (
            "the stored hash",
            Some(format!("Bearer {}", hashed(OPS_TOKEN))),
        ),
        (
            "the stored hex",
            Some(format!("Bearer {}", sha256_hex(OPS_TOKEN))),
        ),
        (
            "a prefix",
            Some(format!("Bearer {}", &OPS_TOKEN[..OPS_TOKEN.len() - 1])),
        ),
    ];
    let endpoints = [
        (Method::GET, "/queue".to_owned(), None),
        (Method::GET, format!("/dead-letters/{id}"), None),
        (Method::POST, format!("/dead-letters/{id}/replay"), None),
        (Method::DELETE, format!("/dead-letters/{id}"), None),
    ];
    for (method, path, body) in &endpoints {
        for (what, header) in &unauthorized {
            let reply = call(
                method.clone(),
                &app.admin_url(path),
                header.as_deref(),
                *body,
            )
            .await;
            assert_refused(
                &reply,
                401,
                "unauthorized",
                "Bearer",
                &format!("{method} {path} with {what}"),
            );
        }
        let reply = as_token(&app, OLD_TOKEN, method.clone(), path, *body).await;
        let what = format!("{method} {path} with an expired token");
        assert_refused(
            &reply,
            401,
            "token_expired",
            r#"Bearer error="invalid_token""#,
            &what,
        );
        let message = reply.json["message"].as_str().unwrap_or_default();
        assert!(message.contains("expired"), "{what}: {message}");
    }

    // None of that changed anything.
    assert!(app.dead_letters().get(id).await.expect("redis").is_some());
    assert!(
        app.dead_letters()
            .recent_audit(10)
            .await
            .expect("redis")
            .is_empty()
    );
    assert_eq!(posts_for(&openapp, "user-h"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_stops_accepting_a_token_when_it_expires() {
    // Set when the config is built, just before the service starts.
    let mut not_after = None;
    let (_redis, _openapp, app) = serve_with(|settings| {
        let at = OffsetDateTime::now_utc() + Duration::from_secs(4);
        not_after = Some(at);
        settings.admin.tokens = vec![
            AdminToken::new(hashed(OPS_TOKEN)),
            expiring(named("brief", hashed(ONCALL_TOKEN)), at),
        ];
    })
    .await;
    let not_after = not_after.expect("config built");

    let sent = OffsetDateTime::now_utc();
    let first = as_token(&app, ONCALL_TOKEN, Method::GET, "/queue", None).await;
    // Only a machine too slow to send one request within 3 s could see it expired already.
    if sent + Duration::from_secs(1) < not_after {
        assert_eq!(first.status, 200, "accepted before not_after: {first:?}");
    }
    let expired = wait_until("the token to expire", LIMIT, || async {
        let reply = as_token(&app, ONCALL_TOKEN, Method::GET, "/queue", None).await;
        (reply.status != 200).then_some(reply)
    })
    .await;
    assert!(
        OffsetDateTime::now_utc() > not_after,
        "refused before not_after: {expired:?}"
    );
    assert_refused(
        &expired,
        401,
        "token_expired",
        r#"Bearer error="invalid_token""#,
        "after not_after",
    );
    let other = as_token(&app, OPS_TOKEN, Method::GET, "/queue", None).await;
    assert_eq!(other.status, 200, "the other token still works: {other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_reads_but_may_not_replay_or_purge() {
    let mut viewer = named("viewer", hashed(VIEWER_TOKEN));
    viewer.scope = TokenScope::Read;
    let (_redis, openapp, app) =
        serve_with(with_tokens(vec![AdminToken::new(ADMIN_TOKEN), viewer])).await;
    let dead = make_dead_letters(&app, &openapp, "evt-read", "lease.signed", &["user-v"], 1).await;
    let id = &dead["user-v"];

    let list = as_token(&app, VIEWER_TOKEN, Method::GET, "/dead-letters", None).await;
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(item_ids(&list), vec![id.clone()]);
    for path in [
        format!("/dead-letters/{id}"),
        "/queue".to_owned(),
        "/audit".to_owned(),
    ] {
        let reply = as_token(&app, VIEWER_TOKEN, Method::GET, &path, None).await;
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
    }

    for (method, path, body) in [
        (Method::POST, format!("/dead-letters/{id}/replay"), None),
        (Method::DELETE, format!("/dead-letters/{id}"), None),
        (
            Method::POST,
            "/dead-letters/replay".to_owned(),
            Some(r#"{"filter": {}, "dry_run": true}"#),
        ),
        (Method::POST, "/leases/acme-pms/L-1/reset".to_owned(), None),
        (
            Method::POST,
            format!("/integrations/{INTEGRATION}/pause"),
            None,
        ),
        (
            Method::POST,
            format!("/integrations/{INTEGRATION}/resume"),
            None,
        ),
    ] {
        let reply = as_token(&app, VIEWER_TOKEN, method.clone(), &path, body).await;
        assert_refused(
            &reply,
            403,
            "insufficient_scope",
            r#"Bearer error="insufficient_scope""#,
            &format!("{method} {path}"),
        );
    }
    assert!(
        app.dead_letters().get(id).await.expect("redis").is_some(),
        "not purged"
    );
    assert!(
        app.dead_letters()
            .recent_audit(10)
            .await
            .expect("redis")
            .is_empty()
    );
    assert_eq!(posts_for(&openapp, "user-v"), 1, "not replayed");

    // The same request with an `admin` token goes through: the 403 was the scope's doing.
    let reply = admin(
        &app,
        Method::POST,
        &format!("/dead-letters/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_name_a_named_token_by_its_name() {
    let (_redis, openapp, app) = serve_with(with_tokens(vec![
        named("oncall", hashed(ONCALL_TOKEN)),
        AdminToken::new(hashed(OPS_TOKEN)),
    ]))
    .await;
    let dead = make_dead_letters(
        &app,
        &openapp,
        "evt-named",
        "lease.signed",
        &["user-n", "user-u"],
        2,
    )
    .await;

    let reply = as_token(
        &app,
        ONCALL_TOKEN,
        Method::POST,
        &format!("/dead-letters/{}/replay", dead["user-n"]),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = as_token(
        &app,
        OPS_TOKEN,
        Method::DELETE,
        &format!("/dead-letters/{}", dead["user-u"]),
        None,
    )
    .await;
    assert_eq!(reply.status, 204, "{reply:?}");

    let audit = as_token(&app, ONCALL_TOKEN, Method::GET, "/audit", None).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    assert_eq!(
        audit.json,
        json!([
            {
                "at": audit.json[0]["at"],
                // Unnamed: the fingerprint, which for a hashed entry is its first 12 hex.
                "actor": format!("token:{}", &sha256_hex(OPS_TOKEN)[..12]),
                "action": "purge",
                "ids": [dead["user-u"]],
            },
            {
                "at": audit.json[1]["at"],
                "actor": "oncall",
                "action": "replay",
                "ids": [dead["user-n"]],
            },
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_every_token_expired_refuses_to_start() {
    // Redis is connected lazily and never reached: the check comes first.
    let mut settings = test_config(
        "redis://127.0.0.1:9",
        &namespace(),
        "http://127.0.0.1:9/api/v1",
    );
    settings.admin.tokens = vec![expiring(
        named("old", hashed(OLD_TOKEN)),
        datetime!(2020-01-01 0:00 UTC),
    )];
    settings
        .validate(Role::Serve)
        .expect("valid without a clock");
    let error = match Application::build(settings.clone(), Role::Serve).await {
        Ok(_) => panic!("started with only expired admin tokens"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("admin.tokens") && error.contains("every token has expired"),
        "{error}"
    );
    // Without the admin API, the expired tokens do not matter.
    settings.admin.enabled = false;
    assert!(Application::build(settings, Role::Serve).await.is_ok());
}

/// Jobs a worker holds are counted in flight (one `ZCARD`, whatever the keyspace holds);
/// when their holder stops renewing them (it died), they go back to the head of the ready
/// list, and jobs still being renewed stay where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_jobs_are_counted_in_flight_and_recovered_when_their_hold_lapses() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis);
    queue.layout_ready().await.expect("layout");
    for i in 0..5 {
        let user = format!("user-{i}");
        let body = event_body("lease.signed", &format!("L-{i}"), &[user.as_str()]);
        fold_on(&queue, &format!("evt-{i}"), &body).await;
    }
    let now = lease_sync::queue::now_ms();
    // A worker takes three and dies; another takes two and keeps renewing them.
    let dead = queue.fetch(3, now + 1_000).await.expect("fetch");
    let alive = queue.fetch(10, now + 1_000).await.expect("fetch");
    assert_eq!((dead.len(), alive.len()), (3, 2));
    let counts = queue.counts().await.expect("counts");
    assert_eq!((counts.ready, counts.in_flight), (0, 5));
    let alive_ids: Vec<String> = alive.iter().map(|(id, _)| id.clone()).collect();
    queue
        .renew_holds(&alive_ids, now + 60_000)
        .await
        .expect("renew");

    assert_eq!(queue.recover_lapsed(now + 2_000).await.expect("recover"), 3);
    let counts = queue.counts().await.expect("counts");
    assert_eq!((counts.ready, counts.in_flight), (3, 2));
    let again = queue.fetch(10, now + 60_000).await.expect("fetch");
    let mut again: Vec<String> = again.into_iter().map(|(id, _)| id).collect();
    let mut dead: Vec<String> = dead.into_iter().map(|(id, _)| id).collect();
    again.sort();
    dead.sort();
    assert_eq!(
        again, dead,
        "the dead worker's jobs, and only those, are ready again"
    );
}
