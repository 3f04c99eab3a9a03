//! `[redis] wait_replicas`: ingest acknowledges an event only once a replica holds it, so a
//! failover to that replica cannot lose it. A real primary and replica on loopback.

use std::time::Duration;

use lease_sync::config::{RedisMode, Role};
use lease_sync_testkit::SentinelServer;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A primary and a replica in sync with it.
async fn primary_and_replica() -> (RedisServer, RedisServer) {
    let primary = RedisServer::start().await;
    let replica = RedisServer::start().await;
    replica
        .command(&["REPLICAOF", "127.0.0.1", &primary.port().to_string()])
        .await;
    wait_until("the replica to be in sync", LIMIT, || async {
        (replica
            .info_field("replication", "master_link_status")
            .await
            == "up")
            .then_some(())
    })
    .await;
    (primary, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_an_event_is_acknowledged_only_once_a_replica_holds_it() {
    let (primary, replica) = primary_and_replica().await;
    let openapp = FakeOpenApp::start().await;
    let namespace = namespace();
    let mut config = test_config(&primary.url(), &namespace, &openapp.base_url);
    config.redis.wait_replicas = 1;
    config.redis.wait_timeout = Duration::from_millis(300);
    let app = TestApp::start(&config, Role::Ingest).await;

    let body = event_body("lease.signed", "L-1", &["user-1"]);
    let reply = post_event(&app, "evt-replicated", body).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    // Acknowledged means the replica has it: its dedupe marker is there already.
    let marker = lease_sync::queue::Keys::new(&namespace).dedupe(SOURCE, "evt-replicated");
    assert_eq!(replica.command(&["EXISTS", &marker]).await, "int(1)");

    // The replica stops answering: no confirmation in time, so no acknowledgement.
    replica.pause();
    let body = event_body("lease.signed", "L-2", &["user-2"]);
    let refused = post_event(&app, "evt-unconfirmed", body.clone()).await;
    assert_eq!(
        (refused.status, refused.code()),
        (503, "queue_unavailable"),
        "{refused:?}"
    );
    assert!(refused.headers.get("retry-after").is_some(), "{refused:?}");

    // The sender retries once the replica is back: a duplicate, acknowledged once confirmed.
    replica.resume();
    let retried = post_event(&app, "evt-unconfirmed", body).await;
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(retried.json["status"], "duplicate");
    let marker = lease_sync::queue::Keys::new(&namespace).dedupe(SOURCE, "evt-unconfirmed");
    assert_eq!(replica.command(&["EXISTS", &marker]).await, "int(1)");
    app.stop().await;
}

/// The `redis_primary` that the app's `/readyz` reports (it must answer 200).
async fn readyz_primary(app: &TestApp) -> Option<String> {
    let url = format!("http://{}/readyz", app.addr.expect("the webhook listener"));
    let reply = reqwest::Client::new()
        .get(&url)
        .timeout(LIMIT)
        .send()
        .await
        .expect("/readyz answers");
    assert_eq!(reply.status(), 200, "/readyz");
    let body: serde_json::Value = reply.json().await.expect("/readyz is JSON");
    body["redis_primary"].as_str().map(str::to_owned)
}

/// The port of the primary the sentinels name `master`, if they agree on one.
async fn primary_port(sentinel: &SentinelServer, master: &str) -> Option<u16> {
    let mut conn = sentinel.connection().await;
    let addr: Vec<String> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query_async(&mut conn)
        .await
        .ok()?;
    addr.get(1)?.parse().ok()
}

/// Posts `id` until lease-sync acknowledges it (202, or 200 for a retry it already has),
/// as a sender retries a 503.
async fn deliver(app: &TestApp, id: &str, lease: &str) {
    let body = event_body("lease.signed", lease, &["user-1"]);
    wait_until(&format!("{id} to be acknowledged"), LIMIT, || async {
        let reply = post_event(app, id, body.clone()).await;
        matches!(reply.status, 200 | 202).then_some(())
    })
    .await;
}

/// What one failover run saw.
struct FailoverRun {
    /// Events acknowledged (2xx), before, during and after the failover.
    acknowledged: usize,
    /// Acknowledged events missing from the new primary afterwards.
    lost: Vec<String>,
}

/// A primary, a replica and three sentinels; `ingest` in `mode = "sentinel"` with
/// `wait_replicas`; events sent before `SENTINEL FAILOVER`, during it (until the sentinels
/// name the replica primary) and after it, each until acknowledged; then which acknowledged
/// events the new primary lacks.
async fn failover_during_traffic(wait_replicas: u32) -> FailoverRun {
    const MASTER: &str = "lease-sync-test";
    const EVENTS: usize = 20;
    let (primary, replica) = primary_and_replica().await;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(
            SentinelServer::start(primary.port(), MASTER)
                .await
                .expect("a sentinel"),
        );
    }
    // A sentinel can promote only a replica it has discovered.
    wait_until("the sentinels to know the replica", LIMIT, || async {
        let mut conn = sentinels[0].connection().await;
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(MASTER)
            .query_async(&mut conn)
            .await
            .ok()?;
        replicas
            .iter()
            .any(|r| r.get("port") == Some(&replica.port().to_string()))
            .then_some(())
    })
    .await;

    let openapp = FakeOpenApp::start().await;
    let namespace = namespace();
    // Only the password and database of `url` count in sentinel mode; this one has neither.
    let mut config = test_config("redis://127.0.0.1:1", &namespace, &openapp.base_url);
    config.redis.mode = RedisMode::Sentinel;
    config.redis.sentinels = sentinels.iter().map(SentinelServer::url).collect();
    config.redis.master_name = MASTER.into();
    config.redis.wait_replicas = wait_replicas;
    config.redis.wait_timeout = Duration::from_millis(300);
    let app = TestApp::start(&config, Role::Ingest).await;

    let mut sent = Vec::new();
    for i in 0..EVENTS {
        let id = format!("evt-before-{i}");
        deliver(&app, &id, "L-1").await;
        sent.push(id);
    }
    // `/readyz` names the primary the process is on.
    assert_eq!(
        readyz_primary(&app).await,
        Some(format!("127.0.0.1:{}", primary.port()))
    );
    sentinels[0]
        .command(&["SENTINEL", "FAILOVER", MASTER])
        .await
        .expect("a failover starts");
    // Traffic during the failover, until the sentinels name the replica primary.
    let started = tokio::time::Instant::now();
    loop {
        let id = format!("evt-during-{}", sent.len());
        deliver(&app, &id, "L-1").await;
        sent.push(id);
        if primary_port(&sentinels[0], MASTER).await == Some(replica.port()) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the failover did not finish within {LIMIT:?}"
        );
    }
    // lease-sync moves to the new primary once the sentinels name it (it asks them every
    // second): a probe acknowledged from then on is on the new primary.
    let started = tokio::time::Instant::now();
    loop {
        let id = format!("evt-probe-{}", sent.len());
        deliver(&app, &id, "L-1").await;
        let marker = lease_sync::queue::Keys::new(&namespace).dedupe(SOURCE, &id);
        let landed = replica.command(&["EXISTS", &marker]).await == "int(1)";
        sent.push(id);
        if landed {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "lease-sync did not move to the new primary within {LIMIT:?}"
        );
    }
    // And after it, every event goes there.
    for i in 0..EVENTS {
        let id = format!("evt-after-{i}");
        deliver(&app, &id, "L-2").await;
        sent.push(id);
    }
    // The move shows: `/readyz` names the new primary. (The move's counter,
    // lease_sync_redis_primary_changes_total, is process-wide: the other failover test of this
    // binary may move it too, so it is checked in src/queue/connection.rs's tests.)
    assert_eq!(
        readyz_primary(&app).await,
        Some(format!("127.0.0.1:{}", replica.port()))
    );

    let acknowledged = sent.len();
    let mut lost = Vec::new();
    for id in sent {
        let marker = lease_sync::queue::Keys::new(&namespace).dedupe(SOURCE, &id);
        if replica.command(&["EXISTS", &marker]).await != "int(1)" {
            lost.push(id);
        }
    }
    assert_eq!(
        replica.info_field("replication", "role").await,
        "master",
        "the failover happened"
    );
    app.stop().await;
    FailoverRun { acknowledged, lost }
}

/// `[redis] mode = "sentinel"` follows a failover (`SENTINEL FAILOVER` during traffic), and
/// with `wait_replicas = 1` every event acknowledged before, during and after it is on the new
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_a_failover_loses_no_acknowledged_event() {
    let run = failover_during_traffic(1).await;
    assert!(
        run.lost.is_empty(),
        "acknowledged but lost in the failover: {:?}",
        run.lost
    );
}

/// Without `wait_replicas`, lease-sync still follows the failover (every event sent after it
/// is acknowledged and on the new primary); events acknowledged in its last moments may be
/// lost, and how many is printed (docs/DEPLOY.md gives the figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_without_wait_replicas_the_failover_is_followed() {
    let run = failover_during_traffic(0).await;
    eprintln!(
        "failover without wait_replicas: {} of {} acknowledged events lost (first {:?}, last {:?})",
        run.lost.len(),
        run.acknowledged,
        run.lost.first(),
        run.lost.last()
    );
    assert!(
        run.lost.iter().all(|id| !id.starts_with("evt-after-")),
        "events acknowledged after the failover were lost: {:?}",
        run.lost
    );
}
