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

/// Posts event `id` (lease `lease`) until lease-sync acknowledges it (202, or 200 for a retry
/// it already has), as a sender retries a 503.
async fn deliver(app: &TestApp, id: &str, lease: &str) {
    let body = event_body("lease.signed", lease, &["user-1"]);
    wait_until(&format!("{id} to be acknowledged"), LIMIT, || async {
        let reply = post_event(app, id, body.clone()).await;
        matches!(reply.status, 200 | 202).then_some(())
    })
    .await;
}

/// Index of the node that is a primary and holds keys, and of its replica.
async fn namespace_primary_and_replica(cluster: &RedisCluster) -> (usize, usize) {
    let mut primary = None;
    for (i, node) in cluster.nodes().iter().enumerate() {
        let role = node.info_field("replication", "role").await;
        if role == "master" && node.command(&["DBSIZE"]).await != "int(0)" {
            primary = Some(i);
        }
    }
    let primary = primary.expect("a primary holds the namespace");
    let port = cluster.nodes()[primary].port().to_string();
    for (i, node) in cluster.nodes().iter().enumerate() {
        if node.info_field("replication", "role").await == "slave"
            && node.info_field("replication", "master_port").await == port
        {
            return (primary, i);
        }
    }
    panic!("the namespace's primary has no replica");
}

/// With `wait_replicas = 1`, the primary holding the namespace is killed during traffic: the
/// cluster promotes its replica, lease-sync follows, and every event acknowledged before,
/// during and after is on the new primary. While the new primary has no replica yet, ingest
/// refuses with 503 (nothing it acknowledges could be lost); once the old primary is back as
/// a replica, the senders' retries are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_namespace_primary_loses_no_acknowledged_event_with_wait_replicas() {
    const EVENTS: usize = 10;
    let mut cluster = RedisCluster::start_with_replicas(1)
        .await
        .expect("a cluster");
    let openapp = FakeOpenApp::start().await;
    let namespace = namespace();
    let mut config = test_config(&cluster.urls()[0], &namespace, &openapp.base_url);
    config.redis.mode = RedisMode::Cluster;
    config.redis.nodes = cluster.urls();
    config.redis.wait_replicas = 1;
    config.redis.wait_timeout = Duration::from_millis(300);
    let app = TestApp::start(&config, Role::Ingest).await;

    let mut sent = Vec::new();
    for i in 0..EVENTS {
        let id = format!("evt-before-{i}");
        deliver(&app, &id, &format!("L-{}", sent.len())).await;
        sent.push(id);
    }
    let (primary, replica) = namespace_primary_and_replica(&cluster).await;
    cluster.nodes_mut()[primary].kill9();

    // Senders go on while the cluster fails over.
    let during: Vec<String> = (0..EVENTS).map(|i| format!("evt-during-{i}")).collect();
    let sender = {
        let app_url = app.webhook_url(SOURCE);
        let during = during.clone();
        let first = sent.len();
        tokio::spawn(async move {
            for (i, id) in during.iter().enumerate() {
                let body = event_body("lease.signed", &format!("L-{}", first + i), &["user-1"]);
                wait_until(&format!("{id} to be acknowledged"), LIMIT * 2, || async {
                    let reply =
                        post(&app_url, &signed(SECRET, id, now(), &body), body.clone()).await;
                    matches!(reply.status, 200 | 202).then_some(())
                })
                .await;
            }
        })
    };
    wait_until("the replica to be promoted", LIMIT, || async {
        (cluster.nodes()[replica]
            .info_field("replication", "role")
            .await
            == "master")
            .then_some(())
    })
    .await;
    // The old primary comes back as the new primary's replica: WAIT can be satisfied again.
    cluster.nodes_mut()[primary].restart().await;
    sender.await.expect("the sender finished");
    sent.extend(during);
    for i in 0..EVENTS {
        let id = format!("evt-after-{i}");
        deliver(&app, &id, &format!("L-{}", sent.len())).await;
        sent.push(id);
    }

    let keys = lease_sync::queue::Keys::new(&namespace);
    let new_primary = &cluster.nodes()[replica];
    let mut lost = Vec::new();
    for id in &sent {
        if new_primary
            .command(&["EXISTS", &keys.dedupe(SOURCE, id)])
            .await
            != "int(1)"
        {
            lost.push(id.clone());
        }
    }
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let ready = new_primary.command(&["LLEN", &keys.ready()]).await;
    assert_eq!(ready, format!("int({})", sent.len()), "one job per event");
    app.stop().await;
}
