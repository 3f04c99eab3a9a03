//! Failure handling: backoff with jitter, Retry-After, dead-letter reasons, crash counting.

use std::time::Duration;

use lease_sync::config::{PropertySettings, Role};
use lease_sync::queue::ledger::AttemptRecord;
use lease_sync::retry::DeadReason;
use lease_sync_sandbox::{Fault, FaultOptions};

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Waits until the only delivery of `event_id` reaches `status`; returns its attempt log.
async fn wait_for_delivery(
    app: &TestApp,
    event_id: &str,
    status: &str,
) -> (String, Vec<AttemptRecord>) {
    let queue = app.queue();
    wait_until(
        &format!("delivery of {event_id} to be {status}"),
        LIMIT,
        || async {
            let ids = queue.deliveries_of(event_id).await.ok()?;
            let id = ids.first()?;
            let (s, log) = queue.delivery_log(id).await.ok()??;
            (s == status).then(|| (id.clone(), log))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_503s_then_201_is_delivered_on_attempt_4_after_growing_jittered_waits() {
    let (redis, openapp, app) = serve_with(|c| c.retry.base = Duration::from_millis(300)).await;
    for _ in 0..3 {
        openapp.sandbox.push_fault(Fault::Status {
            status: 503,
            retry_after: None,
        });
    }
    post_event(
        &app,
        "evt-503",
        event_body("lease.signed", "L-1", &["user-1"]),
    )
    .await;
    let (id, log) = wait_for_delivery(&app, "evt-503", "delivered").await;

    let outcomes: Vec<&str> = log.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "delivered"]);
    assert_eq!(log[3].attempt, Some(4));
    // The records are kept in the ledger hash, which expires: no second key per delivery.
    let keys = app.queue().keys().clone();
    let ledger = keys.delivery(&id);
    assert_eq!(redis.command(&["HGET", &ledger, "records"]).await, "4");
    assert_eq!(
        redis.command(&["EXISTS", &keys.attempts(&id)]).await,
        "int(0)"
    );
    assert!(
        redis.command(&["TTL", &ledger]).await != "int(-1)",
        "a delivered ledger expires"
    );
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [Some(503), Some(503), Some(503), Some(201)]
    );

    // The jitter window doubles: 300, 600, 1200 ms; each wait is drawn inside it, and the next
    // attempt starts no earlier than that wait after the previous one ended.
    let caps: Vec<u64> = log[..3].iter().map(|r| r.backoff_cap_ms.unwrap()).collect();
    assert_eq!(caps, [300, 600, 1200]);
    for pair in log.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let delay = prev.delay_ms.unwrap();
        assert!(delay <= prev.backoff_cap_ms.unwrap());
        let gap = next.started_at.unwrap() - prev.finished_at.unwrap();
        assert!(
            gap + 50 >= delay as i64,
            "attempt {:?} started {gap} ms after the previous ended, before its {delay} ms wait",
            next.attempt
        );
    }
    assert_eq!(openapp.sandbox.members(INTEGRATION).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_openapp_is_a_floor_for_the_next_attempt() {
    let (_redis, openapp, app) = serve().await;
    openapp.sandbox.push_fault(Fault::Status {
        status: 429,
        retry_after: Some("2".into()),
    });
    post_event(
        &app,
        "evt-429",
        event_body("lease.signed", "L-2", &["user-2"]),
    )
    .await;
    let (_, log) = wait_for_delivery(&app, "evt-429", "delivered").await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].status, Some(429));
    assert_eq!(log[0].retry_after.as_deref(), Some("2"));
    assert!(log[0].delay_ms.unwrap() >= 2_000, "{:?}", log[0]);
    let gap = log[1].started_at.unwrap() - log[0].finished_at.unwrap();
    assert!(
        gap >= 1_950,
        "next attempt {gap} ms after a Retry-After of 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_a_permanent_dead_letter_after_one_attempt_with_the_message_kept() {
    // The sandbox refuses a role outside the integration, as OpenApp does, with a message.
    let (_redis, openapp, app) = serve_with(|c| {
        c.sources[0].properties[0].role =
            Some("virtual_access:integration:someone-else:resident".into());
    })
    .await;
    post_event(
        &app,
        "evt-400",
        event_body("lease.signed", "L-3", &["user-3"]),
    )
    .await;
    let (id, log) = wait_for_delivery(&app, "evt-400", "dead").await;
    assert_eq!(log.len(), 1);
    let entry = app
        .dead_letters()
        .get(&id)
        .await
        .unwrap()
        .expect("a dead letter");
    assert_eq!(entry.summary.reason, DeadReason::Permanent);
    assert_eq!(entry.summary.attempts, 1);
    let sandbox_message = openapp.sandbox.calls()[0].status;
    assert_eq!(sandbox_message, 400);
    let kept = entry.attempt_log[0].message.clone().unwrap_or_default();
    assert!(kept.contains("role"), "OpenApp's message is kept: {kept:?}");
    assert!(
        entry.attempt_log[0].request_id.is_some(),
        "X-Request-Id is kept"
    );
    let lease_sync::queue::Job::Converge(job) = &entry.job else {
        panic!("a convergence: {:?}", entry.job)
    };
    assert_eq!(job.user_id, "user-3");
    assert_eq!(entry.event["lease"]["id"], "L-3");
    assert_eq!(openapp.sandbox.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_500_with_max_attempts_3_is_exhausted_after_3_attempts() {
    let (_redis, openapp, app) = serve_with(|c| c.retry.max_attempts = count(3)).await;
    openapp.sandbox.set_faults(FaultOptions::always(500));
    post_event(
        &app,
        "evt-500",
        event_body("lease.ended", "L-4", &["user-4"]),
    )
    .await;
    let (id, log) = wait_for_delivery(&app, "evt-500", "dead").await;
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r.status == Some(500)));
    let entry = app.dead_letters().get(&id).await.unwrap().unwrap();
    assert_eq!(entry.summary.reason, DeadReason::Exhausted);
    assert_eq!(entry.summary.action, "remove");
    assert_eq!(openapp.sandbox.calls().len(), 3);
    assert_eq!(app.queue().counts().await.unwrap().dead, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_remove_for_a_missing_integration_is_a_configuration_error() {
    let (_redis, openapp, app) = serve_with(|c| {
        c.sources[0].properties.push(PropertySettings::new(
            "P-GONE",
            ORG,
            "01HMISSINGINTEGRATION00000",
        ));
    })
    .await;
    let body = String::from_utf8(event_body("lease.ended", "L-5", &["user-5"]))
        .unwrap()
        .replace(PROPERTY, "P-GONE");
    post_event(&app, "evt-gone", body.into_bytes()).await;
    let (id, _) = wait_for_delivery(&app, "evt-gone", "dead").await;
    let entry = app.dead_letters().get(&id).await.unwrap().unwrap();
    assert_eq!(entry.summary.reason, DeadReason::Permanent);
    assert_eq!(
        entry.attempt_log[0].error_code.as_deref(),
        Some("integration_not_found")
    );
    let methods: Vec<String> = openapp
        .sandbox
        .calls()
        .iter()
        .map(|c| c.method.clone())
        .collect();
    assert_eq!(
        methods,
        ["DELETE", "GET"],
        "the 404 was checked against the integration list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_and_forbidden_are_retried_and_counted_separately() {
    let (_redis, openapp, app) = serve().await;
    openapp.sandbox.push_fault(Fault::Status {
        status: 401,
        retry_after: None,
    });
    openapp.sandbox.push_fault(Fault::Status {
        status: 403,
        retry_after: None,
    });
    post_event(
        &app,
        "evt-auth",
        event_body("lease.signed", "L-6", &["user-6"]),
    )
    .await;
    let (_, log) = wait_for_delivery(&app, "evt-auth", "delivered").await;
    assert_eq!(log.len(), 3);
    assert_eq!(app.queue().counts().await.unwrap().auth_failures, 2);
    // And for alerting, per status (the recorder is shared by the tests of this binary, and
    // only this one provokes 401/403).
    let text = reqwest::get(format!(
        "http://{}/metrics",
        app.admin_addr.expect("admin listens")
    ))
    .await
    .expect("scrape")
    .text()
    .await
    .expect("body");
    for status in ["401", "403"] {
        let counted = text.lines().any(|l| {
            l.starts_with("lease_sync_openapp_auth_failures_total{")
                && l.contains(&format!("status=\"{status}\""))
                && !l.ends_with(" 0")
        });
        assert!(counted, "no {status} counted in:\n{text}");
    }
}

/// A worker SIGKILLed inside the call still uses up the attempt; a delivery whose call kills
/// its worker every time ends as a `crash_loop` dead letter instead of looping forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_always_kills_its_worker_ends_as_crash_loop() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    config.retry.max_attempts = count(3);
    let ingest = TestApp::start(&config, Role::Ingest).await;
    post_event(
        &ingest,
        "evt-crash",
        event_body("lease.signed", "L-7", &["user-7"]),
    )
    .await;

    for round in 1..=3 {
        openapp.sandbox.push_fault(Fault::Hang);
        let mut worker = LeaseSyncProcess::spawn(
            dir.path(),
            &format!("worker-{round}"),
            &["work"],
            Some(&config),
        );
        tokio::time::timeout(LIMIT, openapp.sandbox.wait_for_calls(round))
            .await
            .expect("the worker calls OpenApp");
        worker.kill9();
        if round == 1 {
            // The killed attempt was counted before the call.
            let ids = ingest.queue().deliveries_of("evt-crash").await.unwrap();
            let (_, log) = ingest.queue().delivery_log(&ids[0]).await.unwrap().unwrap();
            assert_eq!((log.len(), log[0].outcome.as_str()), (1, "started"));
        }
    }
    let _last = LeaseSyncProcess::spawn(dir.path(), "worker-last", &["work"], Some(&config));
    let (id, log) = wait_for_delivery(&ingest, "evt-crash", "dead").await;
    assert_eq!(
        log.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
        ["crashed", "crashed", "crashed"]
    );
    // Each crashed record is the attempt the ledger had marked open: its number and start.
    assert_eq!(
        log.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
    assert!(
        log.iter().all(|r| r
            .started_at
            .is_some_and(|s| r.finished_at.is_some_and(|f| f >= s))),
        "{log:#?}"
    );
    let entry = ingest.dead_letters().get(&id).await.unwrap().unwrap();
    assert_eq!(entry.summary.reason, DeadReason::CrashLoop);
    assert_eq!(entry.summary.attempts, 3);
    assert_eq!(openapp.sandbox.calls().len(), 3, "no fourth call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_beyond_max_entries_are_trimmed_oldest_first_and_counted() {
    let (_redis, openapp, app) = serve_with(|c| c.dead_letters.max_entries = 2).await;
    openapp.sandbox.set_faults(FaultOptions::always(400));
    for i in 0..3 {
        post_event(
            &app,
            &format!("evt-trim-{i}"),
            event_body("lease.signed", "L-8", &[&format!("user-t{i}")]),
        )
        .await;
        // One at a time, so dead-at order is the posting order.
        wait_for_delivery(&app, &format!("evt-trim-{i}"), "dead").await;
    }
    let counts = wait_until("the cap to be enforced", LIMIT, || async {
        let c = app.queue().counts().await.ok()?;
        (c.dead == 2).then_some(c)
    })
    .await;
    assert_eq!(counts.dead_letters_trimmed, 1);
    let page = app
        .dead_letters()
        .list(&Default::default(), 0, 10)
        .await
        .unwrap();
    let users: Vec<&str> = page.items.iter().map(|e| e.user_id.as_str()).collect();
    assert_eq!(
        users,
        ["user-t2", "user-t1"],
        "newest first; the oldest was trimmed"
    );
}

/// A finished job leaves nothing behind in the queue: the script that records its outcome
/// also drops its payload and its hold (apalis-redis kept every payload for ever,
/// apalis-redis#10), and a retry's payload lives only until the retry runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_leaves_no_payload_or_hold_behind() {
    let (redis, openapp, app) = serve().await;
    openapp.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    post_event(
        &app,
        "evt-h1",
        event_body("lease.signed", "L-9", &["user-h1"]),
    )
    .await;
    let (_, log) = wait_for_delivery(&app, "evt-h1", "delivered").await;
    assert_eq!(log.len(), 2, "one retry, then delivered");
    let keys = app.queue().keys().clone();
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (payloads, held, ready, scheduled): (u64, u64, u64, u64) = ::redis::pipe()
        .hlen(keys.job_data())
        .zcard(keys.in_flight())
        .llen(keys.ready())
        .zcard(keys.scheduled())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((payloads, held, ready, scheduled), (0, 0, 0, 0));
}
