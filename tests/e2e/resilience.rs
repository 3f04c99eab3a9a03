//! Redis outages, killed workers, separate ingest and work processes, retry backlogs.

use std::time::Duration;

use lease_sync::config::Role;
use lease_sync::event::EventType;
use lease_sync::queue::{DeliveryJob, JOB_VERSION};
use lease_sync_sandbox::Fault;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

fn has_members(openapp: &FakeOpenApp, users: &[String]) -> Option<()> {
    let members = openapp.sandbox.members(INTEGRATION);
    users.iter().all(|u| members.contains_key(u)).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_503_and_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let ingest = TestApp::start(&config, Role::Ingest).await;

    // Acknowledged while no worker runs, so they sit in Redis when it crashes.
    let mut users: Vec<String> = Vec::new();
    for i in 0..5 {
        let user = format!("user-{i}");
        let reply = post_event(
            &ingest,
            &format!("evt-{i}"),
            event_body("lease.signed", "L-1", &[&user]),
        )
        .await;
        assert_eq!(reply.status, 202);
        users.push(user);
    }

    redis.kill9();
    let late = event_body("lease.signed", "L-2", &["user-late"]);
    let reply = post_event(&ingest, "evt-late", late.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (503, "queue_unavailable"),
        "{reply:?}"
    );
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );

    redis.restart().await;
    // The sender retries the refused event until it is taken.
    wait_until("ingest to accept again", LIMIT, || async {
        (post_event(&ingest, "evt-late", late.clone()).await.status == 202).then_some(())
    })
    .await;
    users.push("user-late".into());

    let worker = TestApp::start(&config, Role::Work).await;
    wait_until(
        "every acknowledged event to reach OpenApp",
        LIMIT,
        || async { has_members(&openapp, &users) },
    )
    .await;

    // A second outage while the worker runs: its supervisor brings a fresh worker back.
    redis.kill9();
    redis.restart().await;
    let reply = wait_until(
        "ingest to accept after the second outage",
        LIMIT,
        || async {
            let r = post_event(
                &ingest,
                "evt-after",
                event_body("lease.signed", "L-3", &["user-after"]),
            )
            .await;
            (r.status == 202).then_some(r)
        },
    )
    .await;
    assert_eq!(reply.status, 202);
    users.push("user-after".into());
    wait_until("delivery after the second outage", LIMIT, || async {
        has_members(&openapp, &users)
    })
    .await;
    worker.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_is_killed_mid_call_is_delivered_by_another_worker() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let ingest = TestApp::start(&config, Role::Ingest).await;

    let mut worker_a = LeaseSyncProcess::spawn(dir.path(), "worker-a", &["work"], Some(&config));
    worker_a.wait_for_log("worker starting", LIMIT).await;
    openapp.sandbox.push_fault(Fault::Hang);
    assert_eq!(
        post_event(
            &ingest,
            "evt-kill",
            event_body("lease.signed", "L-1", &["user-k"])
        )
        .await
        .status,
        202
    );

    // Worker A is inside the OpenApp call when it dies.
    tokio::time::timeout(LIMIT, openapp.sandbox.wait_for_calls(1))
        .await
        .expect("worker A calls OpenApp");
    worker_a.kill9();
    assert!(openapp.sandbox.members(INTEGRATION).is_empty());

    let worker_b = LeaseSyncProcess::spawn(dir.path(), "worker-b", &["work"], Some(&config));
    wait_until("worker B to deliver the orphaned job", LIMIT, || async {
        has_members(&openapp, &["user-k".to_owned()])
    })
    .await;
    let posts = openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.method == "POST")
        .count();
    assert_eq!(posts, 2, "one hung call by A, one delivery by B");
    let counts = wait_drained(&ingest.queue(), LIMIT).await;
    assert_eq!((counts.done, counts.dead), (1, 0));
    drop(worker_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_work_as_separate_processes_deliver_end_to_end_and_stop_cleanly() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    config.http.listen = loopback(port);
    let mut ingest = LeaseSyncProcess::spawn(dir.path(), "ingest", &["ingest"], Some(&config));
    let mut work = LeaseSyncProcess::spawn(dir.path(), "work", &["work"], Some(&config));

    let url = format!("http://127.0.0.1:{port}/webhooks/{SOURCE}");
    wait_ready(port, LIMIT).await;
    let body = event_body("lease.signed", "L-1", &["user-p"]);
    let reply = post(&url, &signed(SECRET, "evt-p1", now(), &body), body).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("the POST", LIMIT, || async {
        has_members(&openapp, &["user-p".to_owned()])
    })
    .await;

    let body = event_body("lease.ended", "L-1", &["user-p"]);
    assert_eq!(
        post(&url, &signed(SECRET, "evt-p2", now(), &body), body)
            .await
            .status,
        202
    );
    wait_until("the DELETE", LIMIT, || async {
        openapp
            .sandbox
            .members(INTEGRATION)
            .is_empty()
            .then_some(())
    })
    .await;

    assert!(
        ingest.terminate(LIMIT).await.success(),
        "ingest exits 0 on SIGTERM:\n{}",
        ingest.log()
    );
    assert!(
        work.terminate(LIMIT).await.success(),
        "work exits 0 on SIGTERM:\n{}",
        work.log()
    );
}

/// apalis-redis 1.0 moves all due retries in one Lua `unpack`, which fails from about
/// 8,000 ids and kills the worker (bug 3); our promoter moves them in bounded chunks.
/// Here 20,000 deliveries, each after one failed attempt, fall due at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_retries_falling_due_at_once_drain() {
    const N: usize = 20_000;
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let ns = namespace();
    let mut config = test_config(&redis.url(), &ns, &openapp.base_url);
    config.worker.concurrency = count(32);
    config.worker.batch_size = count(100);

    // The ledger and queue entries a first failed attempt leaves behind, all due now.
    let client = ::redis::Client::open(redis.url()).unwrap();
    // Bulk set-up pipelines can take longer than the client's default response timeout.
    let setup =
        ::redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&setup)
        .await
        .unwrap();
    let keys = lease_sync::queue::Keys::new(&ns);
    let due = lease_sync::queue::now_ms() - 1;
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = ::redis::pipe();
        for i in chunk {
            let task = ulid::Ulid::new().to_string();
            let delivery = ulid::Ulid::new().to_string();
            let job = serde_json::to_string(&DeliveryJob {
                v: JOB_VERSION,
                delivery_id: delivery.clone(),
                event_id: format!("evt-{i}"),
                source: SOURCE.into(),
                event_type: EventType::LeaseEnded,
                occurred_at: time::OffsetDateTime::now_utc(),
                lease_id: "L".into(),
                property_id: PROPERTY.into(),
                user_id: format!("gone-{i}"),
                org_id: ORG.into(),
                integration_id: INTEGRATION.into(),
                role: role(),
                trigger: None,
            })
            .unwrap();
            pipe.hset_multiple(
                keys.delivery(&delivery),
                &[
                    ("job", job.as_str()),
                    ("event", "{}"),
                    ("attempts", "1"),
                    ("current_task", &task),
                    ("status", "pending"),
                ],
            )
            .ignore();
            // The resident's lease ended, so the convergence removes them.
            pipe.hset(
                keys.resident(INTEGRATION, &format!("gone-{i}")),
                "lease:L",
                format!(r#"{{"state":"ended","starts_at":null,"ends_at":0,"occurred_at":0,"rank":1,"event_id":"evt-{i}","source":"{SOURCE}","property_id":"{PROPERTY}"}}"#),
            )
            .ignore();
            pipe.rpush(
                keys.attempts(&delivery),
                r#"{"attempt":1,"outcome":"retry","status":503}"#,
            )
            .ignore();
            pipe.hset(keys.job_data(), &task, &job).ignore();
            pipe.zadd(keys.scheduled(), &task, due).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }

    let worker = TestApp::start(&config, Role::Work).await;
    let counts = wait_drained(&worker.queue(), Duration::from_secs(240)).await;
    assert_eq!(
        (counts.done, counts.dead, counts.stale_tasks),
        (N as u64, 0, 0)
    );
    // The sandbox keeps the last 10,000 calls; all of them are the DELETEs.
    let calls = openapp.sandbox.calls();
    assert_eq!(calls.len(), lease_sync_sandbox::MAX_RECORDED_CALLS);
    assert!(
        calls
            .iter()
            .all(|c| c.method == "DELETE" || c.method == "GET")
    );
    worker.stop().await;
}
