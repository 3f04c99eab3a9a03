//! Access safety: events dated in the future, state such events left behind before ingest
//! refused them, resetting one lease, event ids reused for other events, lenient signature
//! headers and admin ids that are not delivery ids.

use std::path::Path;
use std::time::Duration;

use lease_sync::config::LogFormat;
use lease_sync::queue::{EnqueueOutcome, now_ms};
use lease_sync_sandbox::Fault;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// 9999-01-01T00:00:00Z, the date of the issue's example.
const YEAR_9999: &str = "9999-01-01T00:00:00Z";

fn body(event_type: &str, lease: &str, users: &[&str], occurred_at: &str) -> Vec<u8> {
    let residents: Vec<Value> = users
        .iter()
        .map(|u| json!({"openapp_user_id": u}))
        .collect();
    serde_json::to_vec(&json!({
        "type": event_type,
        "occurred_at": occurred_at,
        "lease": {"id": lease, "property_id": PROPERTY},
        "residents": residents,
    }))
    .expect("json")
}

fn present(openapp: &FakeOpenApp, user: &str) -> bool {
    openapp.sandbox.members(INTEGRATION).contains_key(user)
}

async fn wait_presence(openapp: &FakeOpenApp, user: &str, want: bool) {
    let what = format!("{user} to be {}", if want { "present" } else { "absent" });
    wait_until(&what, LIMIT, || async {
        (present(openapp, user) == want).then_some(())
    })
    .await;
}

fn args(parts: &[&str], config: &Path) -> Vec<String> {
    let mut out: Vec<String> = parts.iter().map(|s| (*s).to_owned()).collect();
    out.push("--config".into());
    out.push(config.to_str().expect("utf-8 path").to_owned());
    out
}

async fn admin(app: &TestApp, method: Method, path: &str) -> Reply {
    request(
        method,
        &app.admin_url(path),
        &[("authorization", format!("Bearer {ADMIN_TOKEN}"))],
        Vec::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_dated_beyond_the_clock_skew_is_refused_but_future_windows_are_not() {
    let (_redis, _openapp, app) =
        serve_with(|config| config.sources[0].max_clock_skew = Duration::from_secs(120)).await;
    let now = now_ms();
    for (id, occurred_at) in [
        ("evt-9999", YEAR_9999.to_owned()),
        ("evt-day-ahead", rfc3339(now + 86_400_000)),
        ("evt-skew", rfc3339(now + 600_000)),
    ] {
        let reply = post_event(&app, id, body("lease.signed", "L-1", &["u1"], &occurred_at)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (422, "invalid_event"),
            "{id}: {reply:?}"
        );
        let message = reply.json["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("occurred_at: is "), "{id}: {message}");
        assert!(message.contains("max_clock_skew_secs"), "{id}: {message}");
    }
    let counts = app.queue().counts().await.expect("redis");
    assert_eq!(counts.ready + counts.scheduled + counts.in_flight, 0);
    assert!(
        app.queue()
            .resident(INTEGRATION, "u1")
            .await
            .expect("redis")
            .is_none()
    );

    // Within the skew: accepted. And a lease signed now whose access starts next year is fine.
    let reply = post_event(
        &app,
        "evt-slightly-ahead",
        body("lease.signed", "L-1", &["u1"], &rfc3339(now + 60_000)),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let mut with_window: Value = serde_json::from_slice(&body(
        "lease.signed",
        "L-2",
        &["u2"],
        &rfc3339(now - 60_000),
    ))
    .expect("json");
    with_window["access"] = json!({
        "starts_at": rfc3339(now + 365 * 86_400_000),
        "ends_at": YEAR_9999,
    });
    let reply = post_event(
        &app,
        "evt-window",
        serde_json::to_vec(&with_window).expect("json"),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
}

/// State written before the check (a lease signed "in 9999") no longer freezes the lease:
/// a current event overrides it, and so does a current `lease.ended` for one ended in 9999.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_dated_state_written_before_the_check_heals_with_the_next_event() {
    let (_redis, openapp, app) = serve().await;

    // The door stays open for ever: signed "in 9999", then the real move-out.
    let outcome = fold_without_ingest_checks(
        &app,
        "evt-old-9999",
        &body("lease.signed", "L-1", &["u-open"], YEAR_9999),
    )
    .await;
    assert!(
        matches!(outcome, EnqueueOutcome::Queued { jobs: 1, .. }),
        "{outcome:?}"
    );
    wait_presence(&openapp, "u-open", true).await;
    let reply = post_event(
        &app,
        "evt-move-out",
        body(
            "lease.ended",
            "L-1",
            &["u-open"],
            &rfc3339(now_ms() - 1_000),
        ),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(
        (reply.json["jobs"].as_u64(), reply.json["stale"].as_u64()),
        (Some(1), Some(0))
    );
    wait_presence(&openapp, "u-open", false).await;
    // The resident's history says the move-out replaced a record dated in the future. The
    // fold is written with the first attempt of the move-out's own convergence, which may
    // still be running: the convergence that was running when the move-out came already
    // removed the door (its state moved during the call, so it converged again).
    let fold = wait_until("the fold of the move-out in the history", LIMIT, || async {
        let history = app
            .queue()
            .history(INTEGRATION, "u-open", 20)
            .await
            .expect("redis");
        history
            .iter()
            .map(|e| serde_json::to_value(e).expect("json"))
            .find(|e| e["kind"] == "folded" && e["event_id"] == "evt-move-out")
    })
    .await;
    assert_eq!(fold["outcome"], "overrode_future", "{fold}");

    // Locked out: ended "in 9999" (access ended long ago), then signed again for real.
    let mut ended: Value =
        serde_json::from_slice(&body("lease.ended", "L-2", &["u-shut"], YEAR_9999)).expect("json");
    ended["access"] = json!({"ends_at": "2020-01-01T00:00:00Z"});
    let ended = serde_json::to_vec(&ended).expect("json");
    fold_without_ingest_checks(&app, "evt-old-ended-9999", &ended).await;
    let reply = post_event(
        &app,
        "evt-signed-again",
        body(
            "lease.signed",
            "L-2",
            &["u-shut"],
            &rfc3339(now_ms() - 1_000),
        ),
    )
    .await;
    assert_eq!(
        (reply.status, reply.json["stale"].as_u64()),
        (202, Some(0)),
        "{reply:?}"
    );
    wait_presence(&openapp, "u-shut", true).await;

    let stats: Option<u64> = ::redis::cmd("HGET")
        .arg(app.queue().keys().stats())
        .arg("future_versions_overridden")
        .query_async(&mut app.queue().connection())
        .await
        .expect("redis");
    assert_eq!(stats, Some(2));
}

/// `reconcile --apply` used to plan the removal on every run and queue nothing ("1 stale
/// (0 jobs)"); now its event overrides the future-dated record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_overrides_a_future_dated_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_redis, openapp, app, config) = serve_with_config_file(dir.path()).await;
    fold_without_ingest_checks(
        &app,
        "evt-old-9999",
        &body("lease.signed", "L-9", &["u-gone"], YEAR_9999),
    )
    .await;
    wait_presence(&openapp, "u-gone", true).await;
    wait_drained(&app.queue(), LIMIT).await;

    // The source of truth lists someone else only.
    let csv = dir.path().join("leases.csv");
    std::fs::write(
        &csv,
        format!(
            "lease_id,property_id,openapp_user_id,starts_at,ends_at\nL-10,{PROPERTY},u-stays,,\n"
        ),
    )
    .expect("write csv");
    let mut cli = args(&["reconcile"], &config);
    cli.extend(
        [
            "--source",
            SOURCE,
            "--from",
            csv.to_str().expect("utf-8"),
            "--apply",
        ]
        .map(str::to_owned),
    );
    let out = run_lease_sync(cli).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("2 convergence job(s), 1 future-dated lease record(s) overridden"),
        "{stdout}"
    );
    assert!(!stdout.contains("stale"), "{stdout}");
    wait_presence(&openapp, "u-gone", false).await;
    wait_presence(&openapp, "u-stays", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_reset_forgets_one_lease_and_converges_its_residents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_redis, openapp, app, config) = serve_with_config_file(dir.path()).await;
    // u-a and u-b hold L-7 "from 9999"; u-b also holds L-8, which still grants access.
    fold_without_ingest_checks(
        &app,
        "evt-7",
        &body("lease.signed", "L-7", &["u-a", "u-b"], YEAR_9999),
    )
    .await;
    let signed_8 = body("lease.signed", "L-8", &["u-b"], &rfc3339(now_ms() - 60_000));
    assert_eq!(post_event(&app, "evt-8", signed_8).await.status, 202);
    wait_presence(&openapp, "u-a", true).await;
    wait_presence(&openapp, "u-b", true).await;
    wait_drained(&app.queue(), LIMIT).await;

    let show = run_lease_sync(args(
        &[
            "leases", "show", "--source", SOURCE, "--lease", "L-7", "--json",
        ],
        &config,
    ))
    .await;
    assert!(show.status.success(), "{}", text(&show.stderr));
    let holders: Value = serde_json::from_slice(&show.stdout).expect("json");
    let after: Vec<(&str, &str)> = holders
        .as_array()
        .expect("array")
        .iter()
        .map(|h| {
            (
                h["user_id"].as_str().unwrap_or_default(),
                h["desired_after_reset"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(after, vec![("u-a", "absent"), ("u-b", "present")]);

    // Without --yes and without a terminal: refused, nothing changed.
    let refused = run_lease_sync(args(
        &["leases", "reset", "--source", SOURCE, "--lease", "L-7"],
        &config,
    ))
    .await;
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("refusing to reset lease L-7 without --yes"));
    assert!(
        app.queue()
            .resident(INTEGRATION, "u-a")
            .await
            .expect("redis")
            .is_some_and(|s| s.leases.contains_key("L-7"))
    );

    let reset = run_lease_sync(args(
        &[
            "leases", "reset", "--source", SOURCE, "--lease", "L-7", "--yes",
        ],
        &config,
    ))
    .await;
    let stdout = text(&reset.stdout);
    assert!(reset.status.success(), "{stdout}\n{}", text(&reset.stderr));
    assert!(
        stdout.starts_with("reset lease L-7 of source acme-pms: record forgotten for 2 resident(s), 2 convergence job(s) queued"),
        "{stdout}"
    );
    wait_presence(&openapp, "u-a", false).await;
    wait_drained(&app.queue(), LIMIT).await;
    assert!(present(&openapp, "u-b"), "L-8 still grants u-b access");
    for user in ["u-a", "u-b"] {
        let state = app
            .queue()
            .resident(INTEGRATION, user)
            .await
            .expect("redis")
            .expect("state");
        assert!(!state.leases.contains_key("L-7"), "{user} still holds L-7");
    }
    let audit = app.dead_letters().recent_audit(1).await.expect("redis");
    assert_eq!(audit[0].action, "lease_reset");
    assert!(audit[0].actor.starts_with("cli:"), "{:?}", audit[0]);
    assert_eq!(
        audit[0]
            .lease
            .as_ref()
            .map(|l| (l.source.as_str(), l.lease_id.as_str())),
        Some((SOURCE, "L-7"))
    );
    assert_eq!(
        audit[0].ids,
        vec![format!("{INTEGRATION}/u-a"), format!("{INTEGRATION}/u-b")]
    );

    // The next event records the lease afresh.
    let signed = body("lease.signed", "L-7", &["u-a"], &rfc3339(now_ms() - 1_000));
    let reply = post_event(&app, "evt-7-again", signed).await;
    assert_eq!(
        (reply.status, reply.json["jobs"].as_u64()),
        (202, Some(1)),
        "{reply:?}"
    );
    wait_presence(&openapp, "u-a", true).await;

    // Nothing left to reset for a lease nobody holds, or a source that does not exist.
    for (source, lease, expected) in [
        (
            SOURCE,
            "L-404",
            "lease-sync holds no record of lease `L-404` from source `acme-pms`",
        ),
        ("nope", "L-7", "no source named `nope` is configured"),
    ] {
        let out = run_lease_sync(args(
            &[
                "leases", "reset", "--source", source, "--lease", lease, "--yes",
            ],
            &config,
        ))
        .await;
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains(expected),
            "{}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_resets_a_lease_and_audits_it() {
    let (_redis, openapp, app) = serve().await;
    fold_without_ingest_checks(
        &app,
        "evt-7",
        &body("lease.signed", "L 7/B", &["u-r"], YEAR_9999),
    )
    .await;
    wait_presence(&openapp, "u-r", true).await;

    let reply = admin(&app, Method::POST, "/leases/acme-pms/L%207%2FB/reset").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json["lease_id"], "L 7/B");
    assert_eq!(reply.json["jobs"], 1);
    assert_eq!(reply.json["residents"][0]["user_id"], "u-r");
    assert_eq!(reply.json["residents"][0]["desired_after_reset"], "absent");
    wait_presence(&openapp, "u-r", false).await;
    let audit = admin(&app, Method::GET, "/audit").await;
    assert_eq!(audit.json[0]["action"], "lease_reset", "{audit:?}");
    assert_eq!(audit.json[0]["lease"]["lease_id"], "L 7/B");
    assert!(
        audit.json[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("token:")),
        "{audit:?}"
    );

    let again = admin(&app, Method::POST, "/leases/acme-pms/L%207%2FB/reset").await;
    assert_eq!(
        (again.status, again.code()),
        (404, "not_found"),
        "{again:?}"
    );
    let unknown = admin(&app, Method::POST, "/leases/nope/L-1/reset").await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, "unknown_source"),
        "{unknown:?}"
    );
    let long = format!("/leases/acme-pms/{}/reset", "x".repeat(5_000));
    let long = admin(&app, Method::POST, &long).await;
    assert_eq!((long.status, long.code()), (404, "not_found"));
    assert!(
        long.json["message"].as_str().is_some_and(|m| m.len() < 200),
        "{long:?}"
    );
}

/// A different event under a used id is refused (and counted, and logged at warn) instead
/// of being dropped as a duplicate; the same event again, however re-serialized, is a
/// duplicate; markers written before digests were kept still mean duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_reused_for_another_event_is_a_conflict() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let namespace = namespace();
    let mut config = test_config(&redis.url(), &namespace, &openapp.base_url);
    config.http.listen = loopback(port);
    config.admin.listen = loopback(admin_port);
    config.log.format = LogFormat::Json;
    let serve = LeaseSyncProcess::spawn(dir.path(), "serve", &["serve"], Some(&config));
    wait_ready(port, LIMIT).await;
    let url = format!("http://127.0.0.1:{port}/webhooks/{SOURCE}");
    let send = |id: &'static str, body: Vec<u8>| {
        let url = url.clone();
        async move { post(&url, &signed(SECRET, id, now(), &body), body).await }
    };

    let occurred = rfc3339(now_ms() - 60_000);
    let first = body("lease.signed", "L-1", &["u-1"], &occurred);
    assert_eq!(send("evt-1", first.clone()).await.status, 202);
    let again = send("evt-1", first.clone()).await;
    assert_eq!(
        (again.status, again.json["status"].as_str()),
        (200, Some("duplicate"))
    );
    // The same event, re-serialized with other whitespace and key order.
    let value: Value = serde_json::from_slice(&first).expect("json");
    let pretty = serde_json::to_vec_pretty(&json!({
        "residents": value["residents"],
        "lease": value["lease"],
        "occurred_at": value["occurred_at"],
        "type": value["type"],
    }))
    .expect("json");
    let reformatted = send("evt-1", pretty).await;
    assert_eq!(reformatted.json["status"], "duplicate", "{reformatted:?}");

    let queue = lease_sync::queue::JobQueue::new(
        lease_sync::queue::connect(&config.redis).expect("redis"),
        &namespace,
    );
    // Let the first event's convergence finish, so the state below only changes if a
    // refused event changed it.
    wait_until("u-1 to be added", LIMIT, || async {
        openapp
            .sandbox
            .members(INTEGRATION)
            .contains_key("u-1")
            .then_some(())
    })
    .await;
    wait_drained(&queue, LIMIT).await;
    let state_before = queue.resident(INTEGRATION, "u-1").await.expect("redis");
    for other in [
        body("lease.ended", "L-1", &["u-1"], &occurred),
        body("lease.signed", "L-1", &["u-2"], &occurred),
    ] {
        let reply = send("evt-1", other).await;
        assert_eq!(
            (reply.status, reply.code()),
            (409, "event_id_conflict"),
            "{reply:?}"
        );
        let message = reply.json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("`evt-1`") && message.contains("new id"),
            "{message}"
        );
    }
    assert_eq!(
        queue.resident(INTEGRATION, "u-1").await.expect("redis"),
        state_before
    );
    assert!(
        queue
            .resident(INTEGRATION, "u-2")
            .await
            .expect("redis")
            .is_none()
    );

    // A marker written by a release that kept no digest (it held the time) stays a duplicate.
    let _: () = ::redis::cmd("SET")
        .arg(queue.keys().dedupe(SOURCE, "evt-legacy"))
        .arg(now_ms())
        .query_async(&mut queue.connection())
        .await
        .expect("redis");
    let legacy = send(
        "evt-legacy",
        body("lease.ended", "L-1", &["u-1"], &occurred),
    )
    .await;
    assert_eq!(legacy.json["status"], "duplicate", "{legacy:?}");

    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains(&format!(
            "lease_sync_webhooks_received_total{{source=\"{SOURCE}\",outcome=\"event_id_conflict\"}} 2"
        )),
        "{metrics}"
    );
    let log = serve.log();
    let warned = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == "WARN" && l["code"] == "event_id_conflict")
        .count();
    assert_eq!(warned, 2, "{log}");
}

/// As the Standard Webhooks reference libraries: unparsable entries are skipped and any
/// well-formed `v1` entry may match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_header_with_malformed_entries_verifies_by_its_valid_one() {
    let (_redis, _openapp, app) = serve().await;
    let payload = body("lease.signed", "L-1", &["u1"], &rfc3339(now_ms() - 1_000));
    let mut headers = signed(SECRET, "evt-lenient", now(), &payload);
    let valid = headers[3].1.clone();
    headers[3].1 = format!("garbage v1,!!! v1,dGVzdA== {valid} v1a,abc");
    let reply = app.post(SOURCE, &headers, payload.clone()).await;
    assert_eq!(reply.status, 202, "{reply:?}");

    headers[3].1 = format!("{}{valid}", "junk ".repeat(32));
    let reply = app.post(SOURCE, &headers, payload).await;
    assert_eq!((reply.status, reply.code()), (401, "invalid_signature"));
    assert!(
        reply.json["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than 32 entries"))
    );
}

/// Ids in admin paths are checked against the delivery id format before they come near a
/// Redis key: a key that exists under another name is a 404 like any other, and a long id
/// is not echoed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ids_that_are_not_delivery_ids_are_not_found() {
    let (_redis, openapp, app) = serve().await;
    openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    let payload = body(
        "lease.signed",
        "L-1",
        &["u-dead"],
        &rfc3339(now_ms() - 1_000),
    );
    assert_eq!(post_event(&app, "evt-dead", payload).await.status, 202);
    let id = wait_until("a dead letter", LIMIT, || async {
        let page = app
            .dead_letters()
            .list(&Default::default(), 0, 10)
            .await
            .ok()?;
        page.items.first().map(|d| d.id.clone())
    })
    .await;

    for (method, path) in [
        (Method::POST, format!("/dead-letters/{id}:attempts/replay")),
        (Method::GET, format!("/dead-letters/{id}:attempts")),
        (Method::DELETE, format!("/dead-letters/{id}:attempts")),
        (Method::GET, format!("/dead-letters/{}", id.to_lowercase())),
        (Method::POST, "/dead-letters/*/replay".to_owned()),
        (Method::GET, format!("/dead-letters/{}", "Z".repeat(10_000))),
    ] {
        let reply = admin(&app, method.clone(), &path).await;
        assert_eq!(
            (reply.status, reply.code()),
            (404, "not_found"),
            "{method} {path}: {reply:?}"
        );
        let message = reply.json["message"].as_str().unwrap_or_default();
        assert!(message.len() < 100, "{method} {path}: {message}");
    }
    assert!(
        app.dead_letters().get(&id).await.expect("redis").is_some(),
        "nothing was touched"
    );
    let reply = admin(&app, Method::GET, &format!("/dead-letters/{id}")).await;
    assert_eq!(reply.status, 200, "the real id still answers");
}
