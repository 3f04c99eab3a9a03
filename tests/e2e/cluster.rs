//! `[redis] mode = "cluster"`: a real three-primary Redis Cluster on loopback runs everything
//! — ingest, workers, retries, dead letters and their replay, counts — with every key of the
//! namespace on the one primary that owns its hash slot.

use std::time::Duration;

use lease_sync::config::{RedisMode, Role};
use lease_sync_sandbox::Fault;
use lease_sync_testkit::RedisCluster;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_primary_cluster_runs_ingest_workers_retries_and_dead_letters() {
    let cluster = RedisCluster::start().await.expect("a cluster");
    let openapp = FakeOpenApp::start().await;
    let namespace = namespace();
    let mut config = test_config(&cluster.urls()[0], &namespace, &openapp.base_url);
    config.redis.mode = RedisMode::Cluster;
    config.redis.nodes = cluster.urls();
    let app = TestApp::start(&config, Role::Serve).await;
    let queue = app.queue();

    // One retry (503), then delivered; a 400 is a dead letter.
    openapp.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let reply = post_event(
        &app,
        "evt-1",
        event_body("lease.signed", "L-1", &["user-1"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("user-1 delivered after a retry", LIMIT, || async {
        let c = queue.counts().await.ok()?;
        (c.done == 1 && c.retries == 1).then_some(())
    })
    .await;
    openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    post_event(
        &app,
        "evt-2",
        event_body("lease.signed", "L-2", &["user-2"]),
    )
    .await;
    wait_until("user-2 dead-lettered", LIMIT, || async {
        (queue.counts().await.ok()?.dead == 1).then_some(())
    })
    .await;
    // A duplicate is recognised; the dead letter replays and is delivered.
    let again = post_event(
        &app,
        "evt-1",
        event_body("lease.signed", "L-1", &["user-1"]),
    )
    .await;
    assert_eq!(
        (again.status, again.json["status"].as_str()),
        (200, Some("duplicate"))
    );
    let dead = app
        .dead_letters()
        .list(&Default::default(), 0, 10)
        .await
        .expect("list");
    assert_eq!(
        app.dead_letters()
            .replay(&dead.items[0].id, "test")
            .await
            .expect("replay"),
        lease_sync::dead_letters::ReplayOutcome::Replayed
    );
    let counts = wait_until("the replay delivered", LIMIT, || async {
        let c = queue.counts().await.ok()?;
        (c.done == 2 && c.ready == 0 && c.in_flight == 0).then_some(c)
    })
    .await;
    assert_eq!((counts.dead, counts.scheduled), (0, 0), "{counts:?}");
    let members = openapp.sandbox.members(INTEGRATION);
    assert!(
        members.contains_key("user-1") && members.contains_key("user-2"),
        "{members:?}"
    );
    assert_eq!(
        queue.deliveries_of("evt-2").await.expect("scan").len(),
        1,
        "tools find a delivery on the namespace's node"
    );

    // Every key lives on one primary: the one owning the namespace's hash slot.
    let mut holding = Vec::new();
    for node in cluster.nodes() {
        let keys = node.command(&["DBSIZE"]).await;
        if keys != "int(0)" {
            holding.push(keys);
        }
    }
    assert_eq!(
        holding.len(),
        1,
        "keys on more than one primary: {holding:?}"
    );
    app.stop().await;
}
