//! `[redis] mode = "cluster"`: a real three-primary Redis Cluster on loopback runs everything
//! — ingest, workers, retries, dead letters and their replay, counts — with every key of the
//! namespace on the one primary that owns its hash slot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease_sync::config::{RedisMode, Role};
use lease_sync_sandbox::Fault;
use lease_sync_testkit::RedisCluster;
use tokio::sync::watch;

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

    // The layout switch (`queue migrate --to`) runs on a cluster too: the marker and a scan of
    // the job data hash, on the namespace's node.
    assert_eq!(queue.counts().await.expect("counts").redis_layout, 4);
    let back = queue.switch_layout("2").await.expect("to layout 2");
    assert_eq!((back.from.as_str(), back.copied), ("4", 0), "{back:?}");
    let forth = queue.switch_layout("4").await.expect("to layout 4");
    assert_eq!(forth.from, "2", "{forth:?}");

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

/// When the failover sender's event was acknowledged, as the test saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Before the namespace's primary was SIGKILLed.
    BeforeKill,
    /// After the SIGKILL, before the replica was seen promoted.
    FailingOver,
    /// After the replica was seen promoted: nothing acknowledged from then on may be lost.
    Promoted,
    /// Sent one by one once lease-sync had moved to the new primary.
    After,
}

/// What one failover run saw.
struct FailoverRun {
    /// Every acknowledged (2xx) event, and when it was acknowledged.
    acknowledged: Vec<(String, Phase)>,
    /// Acknowledged events missing from the new primary afterwards.
    lost: Vec<(String, Phase)>,
    /// The length of the new primary's ready list (one job per event that is there).
    ready: String,
}

impl FailoverRun {
    /// (lost, acknowledged) among the events acknowledged in `phase`.
    fn in_phase(&self, phase: Phase) -> (usize, usize) {
        let count = |events: &[(String, Phase)]| events.iter().filter(|e| e.1 == phase).count();
        (count(&self.lost), count(&self.acknowledged))
    }
}

/// Posts event `id` with `client`, signed now; the status, or `None` when the request failed.
async fn post_once(client: &reqwest::Client, url: &str, id: &str, body: &[u8]) -> Option<u16> {
    let mut request = client.post(url).body(body.to_vec());
    for (name, value) in signed(SECRET, id, now(), body) {
        request = request.header(name, value);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    // Read to the end, so the connection goes back to the pool.
    response.bytes().await.ok()?;
    Some(status)
}

/// One sender posting distinct events back to back (one kept-alive connection), each until
/// it is acknowledged as a sender retries a 503, recording each acknowledged id with the
/// phase it was acknowledged in; it stops after the event in hand once the phase is
/// [`Phase::After`].
fn spawn_sender(
    url: String,
    phase: watch::Receiver<Phase>,
    acknowledged: Arc<Mutex<Vec<(String, Phase)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut n = 0_usize;
        while *phase.borrow() != Phase::After {
            let id = format!("evt-{n}");
            let body = event_body("lease.signed", &format!("L-{n}"), &["user-1"]);
            wait_until(&format!("{id} to be acknowledged"), LIMIT * 2, || async {
                let status = post_once(&client, &url, &id, &body).await?;
                matches!(status, 200 | 202).then_some(())
            })
            .await;
            let at = *phase.borrow();
            acknowledged.lock().expect("not poisoned").push((id, at));
            n += 1;
        }
    })
}

/// Three primaries with a replica each; `ingest` in `mode = "cluster"` with `wait_replicas`.
/// One sender posts events back to back; while it does, the primary holding the namespace is
/// SIGKILLed, its replica is promoted, the killed node is restarted (it rejoins as the new
/// primary's replica, discarding its data) and lease-sync moves to the new primary; then
/// more events are sent one by one, each until acknowledged. Then which acknowledged events
/// the new primary lacks.
async fn kill_primary_during_traffic(wait_replicas: u32) -> FailoverRun {
    /// Events the sender has acknowledged (a few hundred a second) when the kill comes.
    const BEFORE: usize = 100;
    /// Events sent one by one after lease-sync has moved.
    const EVENTS: usize = 10;
    let mut cluster = RedisCluster::start_with_replicas(1)
        .await
        .expect("a cluster");
    // The cluster is ready before its replicas have their primaries' data (a primary waits
    // `repl-diskless-sync-delay`, 5 s, before the first full sync), and a replica that never
    // synced refuses to fail over (`cluster-replica-validity-factor`).
    wait_until("every replica to be in sync", LIMIT, || async {
        let mut replicas = 0;
        for node in cluster.nodes() {
            if node.info_field("replication", "role").await == "slave" {
                if node.info_field("replication", "master_link_status").await != "up" {
                    return None;
                }
                replicas += 1;
            }
        }
        (replicas == 3).then_some(())
    })
    .await;
    let openapp = FakeOpenApp::start().await;
    let namespace = namespace();
    let mut config = test_config(&cluster.urls()[0], &namespace, &openapp.base_url);
    config.redis.mode = RedisMode::Cluster;
    config.redis.nodes = cluster.urls();
    config.redis.wait_replicas = wait_replicas;
    config.redis.wait_timeout = Duration::from_millis(300);
    let app = TestApp::start(&config, Role::Ingest).await;
    let keys = lease_sync::queue::Keys::new(&namespace);

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let acknowledged_count = || acknowledged.lock().expect("not poisoned").len();
    let (phase, watching) = watch::channel(Phase::BeforeKill);
    let sender = spawn_sender(app.webhook_url(SOURCE), watching, Arc::clone(&acknowledged));
    wait_until(
        "events to be acknowledged before the kill",
        LIMIT,
        || async { (acknowledged_count() >= BEFORE).then_some(()) },
    )
    .await;
    let (primary, replica) = namespace_primary_and_replica(&cluster).await;
    let replica_port = cluster.nodes()[replica].port().to_string();
    // Whatever is acknowledged from here on is labelled as acknowledged after the kill.
    phase.send_replace(Phase::FailingOver);
    cluster.nodes_mut()[primary].kill9();

    // The sender goes on while the cluster fails over.
    wait_until("the replica to be promoted", LIMIT, || async {
        (cluster.nodes()[replica]
            .info_field("replication", "role")
            .await
            == "master")
            .then_some(())
    })
    .await;
    phase.send_replace(Phase::Promoted);
    // The old primary comes back as the new primary's replica (with `wait_replicas = 1`,
    // WAIT can be satisfied again); it takes the new primary's data, discarding its own.
    cluster.nodes_mut()[primary].restart().await;
    wait_until("the old primary to rejoin as a replica", LIMIT, || async {
        let old = &cluster.nodes()[primary];
        (old.info_field("replication", "role").await == "slave"
            && old.info_field("replication", "master_port").await == replica_port)
            .then_some(())
    })
    .await;
    // lease-sync has moved once an event acknowledged after the promotion is on the new
    // primary.
    let new_primary = &cluster.nodes()[replica];
    wait_until(
        "lease-sync to move to the new primary",
        LIMIT * 2,
        || async {
            let last = acknowledged
                .lock()
                .expect("not poisoned")
                .iter()
                .rev()
                .find(|(_, at)| *at == Phase::Promoted)
                .map(|(id, _)| id.clone())?;
            (new_primary
                .command(&["EXISTS", &keys.dedupe(SOURCE, &last)])
                .await
                == "int(1)")
                .then_some(())
        },
    )
    .await;
    phase.send_replace(Phase::After);
    sender.await.expect("the sender finished");

    let mut acknowledged = std::mem::take(&mut *acknowledged.lock().expect("not poisoned"));
    for i in 0..EVENTS {
        let id = format!("evt-after-{i}");
        deliver(&app, &id, &format!("L-after-{i}")).await;
        acknowledged.push((id, Phase::After));
    }

    assert_eq!(
        new_primary.info_field("replication", "role").await,
        "master",
        "the promoted replica is still the primary"
    );
    let mut conn = new_primary.connection().await;
    let mut lost = Vec::new();
    for (id, at) in &acknowledged {
        let there: bool = redis::cmd("EXISTS")
            .arg(keys.dedupe(SOURCE, id))
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        if !there {
            lost.push((id.clone(), *at));
        }
    }
    let ready = new_primary.command(&["LLEN", &keys.ready()]).await;
    app.stop().await;
    FailoverRun {
        acknowledged,
        lost,
        ready,
    }
}

/// With `wait_replicas = 1`, the primary holding the namespace is killed during traffic: the
/// cluster promotes its replica, lease-sync follows, and every event acknowledged before,
/// during and after is on the new primary. While the new primary has no replica yet, ingest
/// refuses with 503 (nothing it acknowledges could be lost); once the old primary is back as
/// a replica, the senders' retries are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_namespace_primary_loses_no_acknowledged_event_with_wait_replicas() {
    let run = kill_primary_during_traffic(1).await;
    eprintln!(
        "cluster failover with wait_replicas = 1: {} of {} acknowledged events lost \
         ({} acknowledged after the kill)",
        run.lost.len(),
        run.acknowledged.len(),
        run.acknowledged.len() - run.in_phase(Phase::BeforeKill).1
    );
    assert!(run.lost.is_empty(), "acknowledged but lost: {:?}", run.lost);
    assert_eq!(
        run.ready,
        format!("int({})", run.acknowledged.len()),
        "one job per event"
    );
}

/// Without `wait_replicas`, lease-sync still follows the failover: every event acknowledged
/// after the promotion is on the new primary. Events the SIGKILLed primary acknowledged but
/// had not yet sent to its replica are lost; how many is printed (docs/DEPLOY.md gives the
/// figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_namespace_primary_without_wait_replicas_is_followed() {
    let run = kill_primary_during_traffic(0).await;
    let (lost_before, before) = run.in_phase(Phase::BeforeKill);
    let (lost_during, during) = run.in_phase(Phase::FailingOver);
    let (_, promoted) = run.in_phase(Phase::Promoted);
    eprintln!(
        "cluster failover without wait_replicas: {} of {} acknowledged events lost \
         ({lost_before} of {before} acknowledged before the kill, {lost_during} of {during} \
         during the failover; {promoted} acknowledged after the promotion; first lost {:?}, \
         last {:?}; ready list {})",
        run.lost.len(),
        run.acknowledged.len(),
        run.lost.first(),
        run.lost.last(),
        run.ready
    );
    assert!(
        run.lost.iter().all(|(_, at)| *at < Phase::Promoted),
        "events acknowledged after the promotion were lost: {:?}",
        run.lost
    );
}
