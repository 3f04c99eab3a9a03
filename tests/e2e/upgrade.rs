//! Upgrading in place: data written by an earlier release's layout is still delivered,
//! scheduled, dead-lettered and known after the upgrade.

use std::time::Duration;

use lease_sync::config::Role;
use lease_sync::identity::ConflictReason;
use lease_sync::queue::conflicts::Conflict;
use lease_sync_sandbox::{Fault, NewUser};
use lease_sync_testkit::snapshot;
use serde_json::json;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// The namespace the fixtures are written under.
const FIXTURE_NAMESPACE: &str = "upgrade";

/// A signed event for `users` on `lease`, with an access window ending `ends_at` if given.
fn event(event_type: &str, lease: &str, users: &[&str], ends_at: Option<&str>) -> Vec<u8> {
    let mut body: serde_json::Value =
        serde_json::from_slice(&event_body(event_type, lease, users)).expect("json");
    if let Some(ends_at) = ends_at {
        body["access"] = json!({ "ends_at": ends_at });
    }
    serde_json::to_vec(&body).expect("json")
}

/// Writes `tests/fixtures/upgrade/<commit>.json`: every key this release leaves in Redis
/// after a delivered lease, a lease whose access ends in the future (a scheduled
/// convergence), a dead letter, a retry scheduled an hour ahead, a conflict, a cached
/// identity, jobs ready in the queue and one job in flight at a worker that died.
///
/// Run at the release whose layout the fixture captures:
/// `cargo test --test e2e upgrade::write_fixture -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a fixture of this release's Redis layout; run by hand at a release"]
async fn write_fixture() {
    let redis = lease_sync_testkit::RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let mut settings = test_config(&redis.url(), FIXTURE_NAMESPACE, &openapp.base_url);
    settings.retry.max_delay = Duration::from_secs(7200);
    let app = TestApp::start(&settings, Role::Serve).await;
    let queue = app.queue();
    let status_of = |event_id: &'static str, status: &'static str| {
        let queue = queue.clone();
        async move {
            wait_until(&format!("{event_id} {status}"), LIMIT, || async {
                let ids = queue.deliveries_of(event_id).await.ok()?;
                for id in &ids {
                    let (s, log) = queue.delivery_log(id).await.ok()??;
                    let retrying = log.last().is_some_and(|r| r.outcome == "retry");
                    if s == status || (status == "retry" && retrying) {
                        return Some(());
                    }
                }
                None
            })
            .await;
        }
    };

    // Delivered: two residents with state, applied and managed.
    assert_eq!(
        post_event(
            &app,
            "evt-delivered",
            event("lease.signed", "L-1", &["user-1", "user-2"], None)
        )
        .await
        .status,
        202
    );
    status_of("evt-delivered", "delivered").await;
    // Delivered, with a convergence scheduled at the end of the access window.
    assert_eq!(
        post_event(
            &app,
            "evt-window",
            event(
                "lease.signed",
                "L-2",
                &["user-3"],
                Some("2099-01-01T00:00:00Z")
            )
        )
        .await
        .status,
        202
    );
    status_of("evt-window", "delivered").await;
    // A dead letter: OpenApp refuses the call for good.
    openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    post_event(
        &app,
        "evt-dead",
        event("lease.signed", "L-3", &["user-4"], None),
    )
    .await;
    status_of("evt-dead", "dead").await;
    // A retry due in an hour.
    openapp.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: Some("3600".into()),
    });
    post_event(
        &app,
        "evt-retry",
        event("lease.signed", "L-4", &["user-5"], None),
    )
    .await;
    status_of("evt-retry", "retry").await;
    // A cached identity (a resident known by email) and a conflict.
    openapp
        .sandbox
        .add_user(ORG, NewUser::new("Ada Lovelace", "ada@example.com"))
        .expect("user");
    let by_email = serde_json::to_vec(&json!({
        "type": "lease.signed",
        "occurred_at": "2026-11-22T10:15:00Z",
        "lease": {"id": "L-6", "property_id": PROPERTY, "unit": "2A"},
        "residents": [{"email": "ada@example.com"}],
    }))
    .expect("json");
    post_event(&app, "evt-email", by_email).await;
    status_of("evt-email", "delivered").await;
    queue
        .record_conflict(&Conflict {
            source: SOURCE.into(),
            person: "tenant:18".into(),
            reason: ConflictReason::NoOpenappUser,
            email: Some("grace@example.com".into()),
            name: Some("Grace Hopper".into()),
            lease_id: "L-7".into(),
            property_id: PROPERTY.into(),
            integration_id: INTEGRATION.into(),
            first_seen: 0,
            last_seen: 0,
            times: 0,
        })
        .await
        .expect("redis");
    app.stop().await;

    // Ready jobs: accepted while no worker runs (one of them a removal).
    let ingest = TestApp::start(&settings, Role::Ingest).await;
    for (id, body) in [
        (
            "evt-ready",
            event("lease.signed", "L-5", &["user-6", "user-7"], None),
        ),
        ("evt-ended", event("lease.ended", "L-1", &["user-1"], None)),
    ] {
        assert_eq!(post_event(&ingest, id, body).await.status, 202);
    }
    ingest.stop().await;

    // In flight at a worker that died: what apalis-redis's fetch does (`RPOP` the ready
    // list, `SADD` the worker's in-flight set), with a heartbeat long past.
    let mut conn = ::redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let q = format!("{FIXTURE_NAMESPACE}:deliveries");
    let task: String = ::redis::cmd("RPOP")
        .arg(format!("{q}:active"))
        .query_async(&mut conn)
        .await
        .expect("a ready task");
    let dead_worker = "host-1-01JDEADWORKER0000000000000";
    let _: () = ::redis::pipe()
        .sadd(format!("{q}:inflight:{dead_worker}"), &task)
        .zadd(format!("{q}:workers"), dead_worker, 1_700_000_000)
        .sadd(format!("{FIXTURE_NAMESPACE}:worker-names"), dead_worker)
        .query_async(&mut conn)
        .await
        .expect("redis");

    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .expect("git");
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
    let mut dump = snapshot::dump_keys(&mut conn, "*").await.expect("dump");
    dump["written_by"] = json!(format!(
        "lease-sync at {commit}, namespace {FIXTURE_NAMESPACE}"
    ));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/upgrade/{commit}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&dump).expect("json") + "\n",
    )
    .expect("write fixture");
    eprintln!("wrote {}", path.display());
}
