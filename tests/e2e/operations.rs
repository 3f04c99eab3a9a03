//! What operators on call use to see and fix access, over real HTTP and the real binary:
//! each resident's history (`GET /admin/residents/{integration_id}/{user_id}/history`,
//! `lease-sync residents history`) and pausing an integration (`POST
//! /admin/integrations/{id}/pause|resume`, `lease-sync integrations pause|resume`).

use std::time::Duration;

use lease_sync::config::{AdminToken, TokenScope};
use lease_sync::history::{HistoryEntry, HistoryEvent};
use lease_sync::queue::history::{HistoryLimits, ResidentEntry};
use lease_sync_sandbox::Fault;
use reqwest::Method;
use serde_json::Value;
use sha2::Digest as _;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(20);

const READER_TOKEN: &str = "reader-token-0123456789abcdef";

async fn admin_as(app: &TestApp, token: &str, method: Method, path: &str) -> Reply {
    request(
        method,
        &app.admin_url(path),
        &[("authorization", format!("Bearer {token}"))],
        Vec::new(),
    )
    .await
}

async fn admin(app: &TestApp, method: Method, path: &str) -> Reply {
    admin_as(app, ADMIN_TOKEN, method, path).await
}

fn history_path(user: &str) -> String {
    format!("/residents/{INTEGRATION}/{user}/history")
}

/// The entries of a history reply, newest first.
fn entries(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {reply:?}"))
        .clone()
}

fn kinds(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Calls the sandbox received for `user`.
fn calls_for(openapp: &FakeOpenApp, user: &str) -> usize {
    openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.user_id.as_deref() == Some(user))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_residents_history_says_what_was_done_to_their_door_and_why() {
    let (redis, openapp, app) = serve().await;
    // The first call fails (503): a retry, then success.
    openapp.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let reply = post_event(
        &app,
        "evt-h1",
        event_body("lease.signed", "L-7", &["user-h"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("the add to be delivered", LIMIT, || async {
        let h = entries(&admin(&app, Method::GET, &history_path("user-h")).await);
        h.iter()
            .any(|e| e["kind"] == "attempt" && e["outcome"] == "delivered")
            .then_some(())
    })
    .await;
    let reply = post_event(
        &app,
        "evt-h2",
        event_body("lease.ended", "L-7", &["user-h"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("the remove to be delivered", LIMIT, || async {
        let h = entries(&admin(&app, Method::GET, &history_path("user-h")).await);
        h.iter()
            .any(|e| e["method"] == "DELETE" && e["outcome"] == "delivered")
            .then_some(())
    })
    .await;

    let history = entries(&admin(&app, Method::GET, &history_path("user-h")).await);
    // Newest first: the ended lease and its removal on top of the signed lease, its failed
    // call and its retry.
    assert_eq!(
        kinds(&history),
        ["attempt", "folded", "attempt", "attempt", "folded"],
        "{history:#?}"
    );
    let times: Vec<i64> = history.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    let signed = &history[4];
    assert_eq!(signed["event_id"], "evt-h1");
    assert_eq!(signed["event_type"], "lease.signed");
    assert_eq!(signed["lease_id"], "L-7");
    assert_eq!(signed["source"], SOURCE);
    assert_eq!(signed["outcome"], "changed");
    let delivery = signed["delivery_id"]
        .as_str()
        .expect("a convergence was queued");

    let failed = &history[3];
    assert_eq!(failed["delivery_id"], delivery);
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["desired"], "present");
    assert_eq!(failed["method"], "POST");
    assert_eq!(failed["status"], 503);
    assert_eq!(failed["outcome"], "retry");
    assert!(failed["retry_at"].as_i64().unwrap() >= failed["at"].as_i64().unwrap());
    assert!(failed["latency_ms"].is_u64(), "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lease L-7") && r.contains("grants access")),
        "{failed}"
    );

    let added = &history[2];
    assert_eq!(added["attempt"], 2);
    assert_eq!(added["status"], 201);
    assert_eq!(added["outcome"], "delivered");
    // Each call's request id is OpenApp's, failed or not.
    let request_ids: Vec<String> = openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.user_id.as_deref() == Some("user-h"))
        .map(|c| c.request_id.clone())
        .collect();
    for entry in [failed, added, &history[0]] {
        let id = entry["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{entry}"));
        assert!(
            request_ids.iter().any(|r| r == id),
            "{id} not in {request_ids:?}"
        );
    }

    let ended = &history[1];
    assert_eq!(ended["event_type"], "lease.ended");
    let removed = &history[0];
    assert_eq!(removed["desired"], "absent");
    assert_eq!(removed["method"], "DELETE");
    assert!(
        removed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ended")),
        "{removed}"
    );

    // `limit` keeps the newest.
    let two = entries(
        &admin(
            &app,
            Method::GET,
            &format!("{}?limit=2", history_path("user-h")),
        )
        .await,
    );
    assert_eq!(two, history[..2].to_vec());

    // The resident's state says the same, with the reason.
    let state = admin(
        &app,
        Method::GET,
        &format!("/residents/{INTEGRATION}/user-h"),
    )
    .await;
    assert_eq!(state.status, 200, "{state:?}");
    assert_eq!(state.json["desired"], "absent");
    assert_eq!(state.json["integration_paused"], false);
    assert!(state.json["reason"].as_str().unwrap().contains("L-7"));
    assert_eq!(state.json["converging"], Value::Null, "{state:?}");
    // While a worker holds the resident's lock (here: one that died holding it), the view
    // says so, with when it lapses.
    let resident =
        lease_sync::queue::Keys::new(&app.settings.redis.namespace).resident(INTEGRATION, "user-h");
    let until = (lease_sync::queue::now_ms() + 30_000).to_string();
    redis
        .command(&[
            "HSET",
            &resident,
            "lock",
            "a-dead-worker",
            "lock_until",
            &until,
        ])
        .await;
    let state = admin(
        &app,
        Method::GET,
        &format!("/residents/{INTEGRATION}/user-h"),
    )
    .await;
    let left = state.json["converging"]["lock_remaining_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{state:?}"));
    assert!((1..=30_000).contains(&left), "{left}");
    redis.command(&["HSET", &resident, "lock", ""]).await;

    // Unknown people and buildings are 404; so is an id that could not be a user id, and a
    // bad parameter is 400.
    for path in [
        format!("/residents/{INTEGRATION}/nobody"),
        "/residents/no-such-integration/user-h".to_owned(),
        "/residents/no-such-integration/user-h/history".to_owned(),
        format!("/residents/{INTEGRATION}/a.b/history"),
    ] {
        let reply = admin(&app, Method::GET, &path).await;
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        assert_eq!(reply.code(), "not_found", "{path}");
    }
    let reply = admin(
        &app,
        Method::GET,
        &format!("{}?limit=0", history_path("user-h")),
    )
    .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.code(), "invalid_query");
    // Someone with no history yet has an empty one.
    assert!(entries(&admin(&app, Method::GET, &history_path("user-none")).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_capped_by_count_and_by_age() {
    let (_redis, _openapp, app) = serve_with(|s| s.audit.max_entries_per_resident = 3).await;
    for n in 0..4 {
        let id = format!("evt-cap-{n}");
        let reply = post_event(
            &app,
            &id,
            event_body("lease.signed", &format!("L-{n}"), &["user-c"]),
        )
        .await;
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    wait_drained(&app.queue(), LIMIT).await;
    let history = entries(&admin(&app, Method::GET, &history_path("user-c")).await);
    assert_eq!(history.len(), 3, "{history:#?}");
    // The newest three: the last event's fold is among them, the first's is not.
    assert!(
        !history.iter().any(|e| e["event_id"] == "evt-cap-0"),
        "{history:#?}"
    );

    // An entry older than max_age_days is dropped as soon as another is written, and never
    // shown meanwhile.
    let queue = app.queue().with_history_limits(HistoryLimits {
        max_entries: 100,
        max_age: Duration::from_secs(86_400),
    });
    let old = ResidentEntry {
        integration_id: INTEGRATION,
        user_id: "user-old",
        entry: HistoryEntry::new(
            lease_sync::queue::now_ms() - 2 * 86_400_000,
            HistoryEvent::Held {
                delivery_id: "old".into(),
            },
        ),
    };
    queue.append_history(&[old]).await.expect("redis");
    assert!(
        queue
            .history(INTEGRATION, "user-old", 10)
            .await
            .expect("redis")
            .is_empty()
    );
    let fresh = ResidentEntry {
        integration_id: INTEGRATION,
        user_id: "user-old",
        entry: HistoryEntry::new(
            lease_sync::queue::now_ms(),
            HistoryEvent::Held {
                delivery_id: "fresh".into(),
            },
        ),
    };
    queue.append_history(&[fresh]).await.expect("redis");
    let kept = queue
        .history(INTEGRATION, "user-old", 10)
        .await
        .expect("redis");
    assert_eq!(kept.len(), 1);
    let mut conn = redis::Client::open(app.settings.redis.url.expose())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let stored: u64 = redis::cmd("ZCARD")
        .arg(app.queue().keys().history(INTEGRATION, "user-old"))
        .query_async(&mut conn)
        .await
        .expect("redis");
    assert_eq!(stored, 1, "the old entry was deleted, not only hidden");
}

/// A resident's first convergence creates their history with two entries at once (the fold
/// and the attempt). That write skips the count and the trim a history that existed needs,
/// but the limits still hold, and the history expires like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_history_keeps_its_limits_and_expires() {
    let (_redis, _openapp, app) = serve_with(|s| s.audit.max_entries_per_resident = 1).await;
    let reply = post_event(
        &app,
        "evt-first",
        event_body("lease.signed", "L-1", &["user-first"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_drained(&app.queue(), LIMIT).await;
    let history = entries(&admin(&app, Method::GET, &history_path("user-first")).await);
    assert_eq!(
        kinds(&history),
        ["attempt"],
        "the newer of the two: {history:#?}"
    );
    let mut conn = redis::Client::open(app.settings.redis.url.expose())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = app.queue().keys().history(INTEGRATION, "user-first");
    let (stored, ttl): (u64, i64) = redis::pipe()
        .cmd("ZCARD")
        .arg(&key)
        .cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("redis");
    assert_eq!(stored, 1, "trimmed, not only hidden");
    let max_age_ms = i64::try_from(app.settings.audit.max_age.as_millis()).expect("fits");
    assert!(
        ttl > max_age_ms - 60_000 && ttl <= max_age_ms,
        "a new history expires after max_age_days: PTTL {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_integration_holds_its_calls_until_resumed() {
    let mut reader = AdminToken::new(READER_TOKEN);
    reader.scope = TokenScope::Read;
    let (_redis, openapp, app) =
        serve_with(|s| s.admin.tokens = vec![AdminToken::new(ADMIN_TOKEN), reader]).await;
    let actor = format!(
        "token:{}",
        &hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()))[..12]
    );

    // A read token may look but not pause.
    let reply = admin_as(
        &app,
        READER_TOKEN,
        Method::POST,
        &format!("/integrations/{INTEGRATION}/pause"),
    )
    .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.code(), "insufficient_scope");
    let reply = admin(&app, Method::POST, "/integrations/no-such-building/pause").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.code(), "not_found");

    let reply = admin(
        &app,
        Method::POST,
        &format!("/integrations/{INTEGRATION}/pause"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json["paused"], true);
    assert_eq!(reply.json["changed"], true);
    let again = admin(
        &app,
        Method::POST,
        &format!("/integrations/{INTEGRATION}/pause"),
    )
    .await;
    assert_eq!(again.json["changed"], false, "{again:?}");

    let list = admin_as(&app, READER_TOKEN, Method::GET, "/integrations").await;
    assert_eq!(list.status, 200, "{list:?}");
    let ours = list
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["integration_id"] == INTEGRATION)
        .cloned()
        .expect("listed");
    assert_eq!(ours["paused"]["by"], actor.as_str());
    assert_eq!(ours["properties"][0], format!("{SOURCE}/{PROPERTY}"));

    // Webhooks are still accepted; their convergences are held: no call, no attempt.
    let reply = post_event(
        &app,
        "evt-p1",
        event_body("lease.signed", "L-P", &["user-p", "user-q"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("both convergences to be held", LIMIT, || async {
        (app.queue().counts().await.ok()?.held == 2).then_some(())
    })
    .await;
    let counts = app.queue().counts().await.expect("redis");
    assert_eq!(
        (counts.ready, counts.in_flight, counts.dead),
        (0, 0, 0),
        "{counts:?}"
    );
    assert_eq!(counts.paused_integrations, 1);
    assert_eq!(
        calls_for(&openapp, "user-p") + calls_for(&openapp, "user-q"),
        0
    );
    let history = entries(&admin(&app, Method::GET, &history_path("user-p")).await);
    assert_eq!(
        kinds(&history)[..3],
        ["held", "folded", "paused"],
        "{history:#?}"
    );
    let delivery = history[0]["delivery_id"].as_str().unwrap().to_owned();
    let (_, attempts) = app
        .queue()
        .delivery_log(&delivery)
        .await
        .expect("redis")
        .expect("ledger");
    assert!(attempts.is_empty(), "no attempt was spent: {attempts:?}");

    let url = format!("http://{}/metrics", app.admin_addr.expect("admin listens"));
    let text = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    assert!(text.contains("lease_sync_integrations_paused 1"), "{text}");
    assert!(
        text.contains("lease_sync_queue_jobs{state=\"held\"} 2"),
        "{text}"
    );
    let state = admin(
        &app,
        Method::GET,
        &format!("/residents/{INTEGRATION}/user-p"),
    )
    .await;
    assert_eq!(state.json["integration_paused"], true, "{state:?}");

    // Resume: both are released and converge once, each on its first attempt.
    let reply = admin(
        &app,
        Method::POST,
        &format!("/integrations/{INTEGRATION}/resume"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json["paused"], false);
    assert_eq!(reply.json["released"], 2);
    wait_drained(&app.queue(), LIMIT).await;
    wait_until("both users to be added", LIMIT, || async {
        (calls_for(&openapp, "user-p") == 1 && calls_for(&openapp, "user-q") == 1).then_some(())
    })
    .await;
    let history = entries(&admin(&app, Method::GET, &history_path("user-p")).await);
    assert_eq!(kinds(&history)[..2], ["attempt", "resumed"], "{history:#?}");
    assert_eq!(history[0]["attempt"], 1);
    assert_eq!(history[0]["outcome"], "delivered");
    assert_eq!(history[1]["released"], 2);

    // Both actions are audited.
    let audit = admin(&app, Method::GET, "/audit").await;
    let actions: Vec<&str> = audit
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["resume", "pause"], "{audit:?}");
    let counts = app.queue().counts().await.expect("redis");
    assert_eq!((counts.held, counts.paused_integrations), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pauses_resumes_and_reads_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_redis, openapp, app, config) = serve_with_config_file(dir.path()).await;
    let config = config.to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--config".to_owned(), config.clone()]);
        run_lease_sync(all)
    };

    let out = run(&["integrations", "pause", INTEGRATION]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("paused integration"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&["integrations", "list", "--json"]).await;
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        list[0]["paused"]["by"]
            .as_str()
            .unwrap()
            .starts_with("cli:"),
        "{list}"
    );

    let reply = post_event(
        &app,
        "evt-c1",
        event_body("lease.signed", "L-C", &["user-cli"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("the convergence to be held", LIMIT, || async {
        (app.queue().counts().await.ok()?.held == 1).then_some(())
    })
    .await;
    let out = run(&["integrations", "list"]).await;
    let listed = text(&out.stdout);
    assert!(
        listed.contains("paused") && listed.contains(INTEGRATION),
        "{listed}"
    );

    let out = run(&["integrations", "resume", INTEGRATION, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let change: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(change["released"], 1, "{change}");
    wait_until("the user to be added", LIMIT, || async {
        (calls_for(&openapp, "user-cli") == 1).then_some(())
    })
    .await;
    wait_drained(&app.queue(), LIMIT).await;

    let out = run(&[
        "residents",
        "history",
        "--integration",
        INTEGRATION,
        "--user",
        "user-cli",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for needle in [
        "attempt 1",
        "POST answered 201",
        "resumed by cli:",
        "held",
        "lease.signed for lease L-C",
        "paused by cli:",
    ] {
        assert!(
            printed.contains(needle),
            "{needle} missing from:\n{printed}"
        );
    }
    let out = run(&[
        "residents",
        "history",
        "--integration",
        INTEGRATION,
        "--user",
        "user-cli",
        "--json",
        "--limit",
        "1",
    ])
    .await;
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["entries"].as_array().unwrap().len(), 1, "{json}");

    // An unknown integration is a clear error, exit 1.
    let out = run(&["integrations", "pause", "no-such-building"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no configured building maps to integration"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replays_and_purges_show_in_the_history() {
    let (_redis, openapp, app) = serve().await;
    for _ in 0..2 {
        openapp.sandbox.push_fault(Fault::Status {
            status: 400,
            retry_after: None,
        });
    }
    let reply = post_event(
        &app,
        "evt-d1",
        event_body("lease.signed", "L-D", &["user-d", "user-e"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("two dead letters", LIMIT, || async {
        (app.queue().counts().await.ok()?.dead == 2).then_some(())
    })
    .await;
    let dead_of = |user: &'static str| {
        let app = &app;
        async move {
            let h = entries(&admin(app, Method::GET, &history_path(user)).await);
            let dead = h
                .iter()
                .find(|e| e["kind"] == "attempt" && e["outcome"] == "dead")
                .cloned()
                .unwrap_or_else(|| panic!("no dead attempt: {h:#?}"));
            assert_eq!(dead["dead_reason"], "permanent");
            assert_eq!(dead["status"], 400);
            dead["delivery_id"].as_str().unwrap().to_owned()
        }
    };
    let replayed = dead_of("user-d").await;
    let purged = dead_of("user-e").await;

    let reply = admin(
        &app,
        Method::POST,
        &format!("/dead-letters/{replayed}/replay"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = admin(&app, Method::DELETE, &format!("/dead-letters/{purged}")).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    wait_drained(&app.queue(), LIMIT).await;

    let history = entries(&admin(&app, Method::GET, &history_path("user-d")).await);
    assert_eq!(
        kinds(&history)[..3],
        ["attempt", "replayed", "attempt"],
        "{history:#?}"
    );
    assert_eq!(history[0]["outcome"], "delivered");
    assert_eq!(history[1]["delivery_id"], replayed.as_str());
    assert!(
        history[1]["by"]
            .as_str()
            .is_some_and(|by| by.starts_with("token:"))
    );
    let history = entries(&admin(&app, Method::GET, &history_path("user-e")).await);
    assert_eq!(kinds(&history)[..2], ["purged", "attempt"], "{history:#?}");
    assert_eq!(history[0]["delivery_id"], purged.as_str());
}
