//! `[redis] wait_replicas`: ingest acknowledges an event only once a replica holds it, so a
//! failover to that replica cannot lose it. A real primary and replica on loopback.

use std::time::Duration;

use lease_sync::config::Role;

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
    let marker = format!("{namespace}:dedupe:{SOURCE}:evt-replicated");
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
    let marker = format!("{namespace}:dedupe:{SOURCE}:evt-unconfirmed");
    assert_eq!(replica.command(&["EXISTS", &marker]).await, "int(1)");
    app.stop().await;
}
