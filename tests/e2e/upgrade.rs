//! Upgrading in place: data written by an earlier release's layout is still delivered,
//! scheduled, dead-lettered and known after the upgrade.

use std::time::Duration;

use lease_sync::config::Role;
use lease_sync::queue::residents::LockPlace;
use lease_sync_sandbox::Fault;
use lease_sync_testkit::snapshot;
use serde_json::json;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// The namespace the fixture was written under (see `tests/fixtures/upgrade/README.md`).
const FIXTURE_NAMESPACE: &str = "upgrade";

/// Loads the fixture written by the release before the layout change into a fresh
/// `redis-server` and starts this release on it: every queued, in-flight and scheduled job,
/// dead letter, resident, conflict and cached identity is still there, the ready jobs are
/// delivered, and nothing of the old layout remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_by_the_release_before_the_layout_change_is_upgraded_in_place() {
    let redis = lease_sync_testkit::RedisServer::start().await;
    let mut conn = ::redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/upgrade/03085aa.json")).expect("fixture");
    let loaded = snapshot::load_keys(&mut conn, &fixture)
        .await
        .expect("load");
    assert!(loaded > 50, "{loaded} keys");

    // The upgrade itself, as the first process of this release runs it.
    let openapp = FakeOpenApp::start().await;
    let mut settings = test_config(&redis.url(), FIXTURE_NAMESPACE, &openapp.base_url);
    // The fixture's times are absolute (dead-at, due times): keep its dead letter whatever
    // the day this runs.
    settings.dead_letters.max_age = Duration::from_secs(100 * 365 * 86_400);
    let queue = lease_sync::queue::JobQueue::new(
        lease_sync::queue::connect(&settings.redis).expect("redis"),
        FIXTURE_NAMESPACE,
    );
    let report = queue
        .ensure_layout(Duration::from_secs(5))
        .await
        .expect("migrates")
        .expect("something to migrate");
    // Ready: 2 queued + 1 held by the dead worker; scheduled: the retry and the lease-window
    // convergence.
    assert_eq!(
        (
            report.jobs_ready,
            report.jobs_scheduled,
            report.jobs_dropped
        ),
        (3, 2, 0),
        "{report:?}"
    );
    assert!(report.keys_renamed >= 40, "{report:?}");
    assert_eq!(
        queue
            .ensure_layout(Duration::from_secs(5))
            .await
            .expect("redis"),
        None,
        "once only"
    );
    let counts = queue.counts().await.expect("counts");
    assert_eq!(
        (
            counts.ready,
            counts.scheduled,
            counts.in_flight,
            counts.dead
        ),
        (3, 2, 0, 1)
    );
    assert_eq!(counts.done, 5, "lifetime counters carried over");
    let old_keys = snapshot::dump_keys(&mut conn, &format!("{FIXTURE_NAMESPACE}:*"))
        .await
        .expect("scan");
    assert_eq!(
        old_keys["keys"],
        json!([]),
        "nothing left under the old names"
    );
    let apalis_queues: Vec<String> = ::redis::cmd("ZRANGE")
        .arg("core:apalis:queues:list")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert!(apalis_queues.is_empty(), "{apalis_queues:?}");

    // What operators see is intact.
    let resident = queue
        .resident(INTEGRATION, "user-3")
        .await
        .expect("redis")
        .expect("user-3 is known");
    assert!(
        resident.managed && resident.next_check.is_some(),
        "{resident:?}"
    );
    assert_eq!(queue.conflicts(None).await.expect("redis").len(), 1);
    let digest = lease_sync::identity::email_digest("ada@example.com");
    assert!(
        queue
            .cached_identity(ORG, &digest)
            .await
            .expect("redis")
            .is_some()
    );
    let dead_letters = lease_sync::dead_letters::DeadLetters::new(&queue);
    let page = dead_letters
        .list(&Default::default(), 0, 10)
        .await
        .expect("redis");
    assert_eq!(page.items.len(), 1);

    // This release runs the ready jobs, and a replayed dead letter.
    let dead_id = page.items[0].id.clone();
    assert_eq!(
        dead_letters.replay(&dead_id, "test").await.expect("redis"),
        lease_sync::dead_letters::ReplayOutcome::Replayed
    );
    let app = TestApp::start(&settings, Role::Serve).await;
    let counts = wait_until("the upgraded jobs to run", LIMIT, || async {
        let c = app.queue().counts().await.ok()?;
        (c.ready == 0 && c.in_flight == 0 && c.done >= 9).then_some(c)
    })
    .await;
    // The lease-window convergence (due 2099) stays scheduled; the retry was due an hour
    // after the fixture was written, so it is still scheduled or already delivered.
    assert!((1..=2).contains(&counts.scheduled), "{counts:?}");
    assert_eq!(counts.dead, 0, "{counts:?}");
    let members = openapp.sandbox.members(INTEGRATION);
    for user in ["user-4", "user-6", "user-7"] {
        assert!(members.contains_key(user), "{user} has a door: {members:?}");
    }
    app.stop().await;
}

/// `lease-sync queue migrate` upgrades by hand; running it again moves only what an old
/// process wrote since, and never overwrites a key the new release has written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_migrate_upgrades_by_hand_and_again_moves_nothing() {
    let redis = lease_sync_testkit::RedisServer::start().await;
    let mut conn = ::redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/upgrade/03085aa.json")).expect("fixture");
    snapshot::load_keys(&mut conn, &fixture)
        .await
        .expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    write_config(
        &test_config(&redis.url(), FIXTURE_NAMESPACE, "http://127.0.0.1:9"),
        &config,
    );
    let run = || queue_migrate(&config, &[]);
    let first = run().await;
    assert_eq!(
        (&first["jobs_ready"], &first["jobs_scheduled"]),
        (&json!(3), &json!(2)),
        "{first}"
    );
    let again = run().await;
    assert_eq!(
        again,
        json!({"jobs_ready": 0, "jobs_scheduled": 0, "jobs_dropped": 0, "keys_renamed": 0, "keys_deleted": 0, "keys_left": 0, "layout": "4"})
    );

    // An old process still running writes a job, a dedupe marker and its counters.
    let old = FIXTURE_NAMESPACE;
    let _: () = ::redis::pipe()
        .rpush(
            format!("{old}:deliveries:active"),
            "01JLATEJOB00000000000000000",
        )
        .hset(
            format!("{old}:deliveries:data"),
            "01JLATEJOB00000000000000000",
            "{}",
        )
        .set(format!("{old}:dedupe:{SOURCE}:evt-late"), "sha256:00")
        .hset(format!("{old}:stats"), "delivered", 99)
        .query_async(&mut conn)
        .await
        .expect("redis");
    let stragglers = run().await;
    assert_eq!(
        (
            &stragglers["jobs_ready"],
            &stragglers["keys_renamed"],
            &stragglers["keys_left"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{stragglers}"
    );
    let keys = lease_sync::queue::Keys::new(FIXTURE_NAMESPACE);
    let delivered: u64 = ::redis::cmd("HGET")
        .arg(keys.stats())
        .arg("delivered")
        .query_async(&mut conn)
        .await
        .expect("redis");
    assert_eq!(
        delivered, 5,
        "the new release's counters are not overwritten"
    );
}

/// A ledger written by a release before the ledger's `open` field, whose worker died during
/// an attempt, still has that attempt marked `crashed` when the job runs again: without the
/// field the claim reads the last attempt record every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_left_open_by_a_release_without_the_open_field_is_marked_crashed() {
    attempt_left_open_by_an_older_release_is_marked_crashed(None).await;
}

/// Releases from `open` to 2026-12-04 pushed a `started` record at each claim and set `open`
/// to `1`; one whose worker died mid-call leaves both. The claim marks that record `crashed`
/// in place, and the attempts that follow are recorded the new way (no placeholder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_left_open_by_a_release_with_started_records_is_marked_crashed() {
    attempt_left_open_by_an_older_release_is_marked_crashed(Some("1")).await;
}

async fn attempt_left_open_by_an_older_release_is_marked_crashed(open: Option<&str>) {
    let redis = lease_sync_testkit::RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let settings = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let ingest = TestApp::start(&settings, Role::Ingest).await;
    let reply = post_event(
        &ingest,
        "evt-1",
        event_body("lease.signed", "L-1", &["user-1"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let queue = ingest.queue();
    let deliveries = queue.deliveries_of("evt-1").await.expect("redis");
    let [delivery] = deliveries.as_slice() else {
        panic!("one delivery: {deliveries:?}")
    };
    ingest.stop().await;

    // As such a release leaves it: attempt 1 counted and started, `open` as it wrote it.
    let keys = lease_sync::queue::Keys::new(&settings.redis.namespace);
    let ledger = keys.delivery(delivery);
    let task = redis.command(&["HGET", &ledger, "current_task"]).await;
    match open {
        Some(open) => redis.command(&["HSET", &ledger, "open", open]).await,
        None => redis.command(&["HDEL", &ledger, "open"]).await,
    };
    // Those releases kept every record in the attempts list.
    redis.command(&["HDEL", &ledger, "records"]).await;
    redis.command(&["HSET", &ledger, "attempts", "1"]).await;
    let started = json!({"attempt": 1, "task": task, "started_at": 1, "outcome": "started"});
    redis
        .command(&["RPUSH", &keys.attempts(delivery), &started.to_string()])
        .await;

    let worker = TestApp::start(&settings, Role::Work).await;
    let (status, records) = wait_until("the delivery to be delivered", LIMIT, || async {
        let (status, records) = queue.delivery_log(delivery).await.ok()??;
        (status == "delivered").then_some((status, records))
    })
    .await;
    let outcomes: Vec<(Option<u32>, &str)> = records
        .iter()
        .map(|r| (r.attempt, r.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [(Some(1), "crashed"), (Some(2), "delivered")],
        "{status}: {records:?}"
    );
    assert_eq!(redis.command(&["HGET", &ledger, "open"]).await, "0");
    assert_eq!(redis.command(&["HGET", &ledger, "started_at"]).await, "0");
    worker.stop().await;
}

/// Releases before attempt records moved into the ledger hash kept them in a list next to it
/// (and wrote no `records` field). Such a delivery, queued and tried once by that release,
/// goes on keeping its records in its list after the upgrade, and the list expires with the
/// ledger once delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_tried_by_the_release_with_attempt_lists_keeps_its_list() {
    let (redis, _openapp, settings, ingest, delivery) = one_queued_delivery().await;
    let keys = lease_sync::queue::Keys::new(&settings.redis.namespace);
    let ledger = keys.delivery(&delivery);
    redis.command(&["HDEL", &ledger, "records"]).await;
    retried_once_by_an_older_worker(&redis, &keys, &delivery).await;

    let worker = TestApp::start(&settings, Role::Work).await;
    let records = delivered_log(&ingest.queue(), &delivery).await;
    assert_eq!(
        records,
        [
            (Some(1), "retry".to_owned()),
            (Some(2), "delivered".to_owned())
        ]
    );
    assert_eq!(
        redis.command(&["LLEN", &keys.attempts(&delivery)]).await,
        "int(2)",
        "both records in the list"
    );
    assert_eq!(
        redis.command(&["HEXISTS", &ledger, "record:1"]).await,
        "int(0)"
    );
    assert_expires(&redis, &keys.attempts(&delivery)).await;
    assert_expires(&redis, &ledger).await;
    worker.stop().await;
}

/// During a rolling upgrade, a worker of the release with attempt lists may record an attempt
/// of a delivery queued by this release (it pushes to the list; this release writes to the
/// ledger hash). The log shows both stores' records in time order, and the list expires with
/// the ledger: it is not left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_recorded_in_a_list_during_a_rolling_upgrade_is_shown_and_expires() {
    let (redis, _openapp, settings, ingest, delivery) = one_queued_delivery().await;
    let keys = lease_sync::queue::Keys::new(&settings.redis.namespace);
    let ledger = keys.delivery(&delivery);
    assert_eq!(redis.command(&["HGET", &ledger, "records"]).await, "0");
    retried_once_by_an_older_worker(&redis, &keys, &delivery).await;

    let worker = TestApp::start(&settings, Role::Work).await;
    let records = delivered_log(&ingest.queue(), &delivery).await;
    assert_eq!(
        records,
        [
            (Some(1), "retry".to_owned()),
            (Some(2), "delivered".to_owned())
        ]
    );
    assert_eq!(redis.command(&["HGET", &ledger, "records"]).await, "1");
    assert_expires(&redis, &keys.attempts(&delivery)).await;
    assert_expires(&redis, &ledger).await;
    worker.stop().await;
}

/// From layout 3 (a namespace this release creates is in layout 4) a queued job's payload is
/// stored once, in the job data hash: its ledger has none. A dead letter's ledger gets it, as
/// replays and the dead-letter views read it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_stored_once_and_its_dead_letter_keeps_it() {
    let (redis, openapp, settings, ingest, delivery) = one_queued_delivery().await;
    let keys = lease_sync::queue::Keys::new(&settings.redis.namespace);
    let ledger = keys.delivery(&delivery);
    assert_eq!(redis.command(&["GET", &keys.layout()]).await, "4");
    assert_eq!(redis.command(&["HEXISTS", &ledger, "job"]).await, "int(0)");
    let task = redis.command(&["HGET", &ledger, "current_task"]).await;
    let payload = redis.command(&["HGET", &keys.job_data(), &task]).await;
    assert!(payload.contains(&delivery), "{payload}");

    openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    let worker = TestApp::start(&settings, Role::Work).await;
    let entry = wait_until("the dead letter", LIMIT, || async {
        ingest.dead_letters().get(&delivery).await.ok()?
    })
    .await;
    assert_eq!(entry.summary.attempts, 1);
    assert_eq!(redis.command(&["HGET", &ledger, "job"]).await, payload);
    assert_eq!(
        redis.command(&["HEXISTS", &keys.job_data(), &task]).await,
        "int(0)",
        "the queued copy goes"
    );
    worker.stop().await;
}

/// A namespace written by the release before (layout 2) is run in that layout: each new ledger
/// keeps a copy of its job, which that release's workers read for retries and deferrals, so
/// both releases can share it during a rolling upgrade. `queue migrate --to 3` ends that;
/// `--to 2` gives every queued job's ledger its copy back before a rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_2_keeps_a_copy_in_each_ledger_until_queue_migrate_moves_it_to_3_and_back() {
    let redis = lease_sync_testkit::RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let settings = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let keys = lease_sync::queue::Keys::new(&settings.redis.namespace);
    // What the release before leaves on a namespace it created.
    redis.command(&["SET", &keys.layout(), "2"]).await;
    let ingest = TestApp::start(&settings, Role::Ingest).await;
    let queued = |id: &'static str, user: &'static str| {
        let ingest = &ingest;
        let redis = &redis;
        let keys = &keys;
        async move {
            let reply = post_event(ingest, id, event_body("lease.signed", id, &[user])).await;
            assert_eq!(reply.status, 202, "{reply:?}");
            let deliveries = ingest.queue().deliveries_of(id).await.expect("redis");
            let [delivery] = deliveries.as_slice() else {
                panic!("one delivery: {deliveries:?}")
            };
            let ledger = keys.delivery(delivery);
            let task = redis.command(&["HGET", &ledger, "current_task"]).await;
            let payload = redis.command(&["HGET", &keys.job_data(), &task]).await;
            let in_ledger = redis.command(&["HGET", &ledger, "job"]).await;
            (ledger, payload, in_ledger)
        }
    };
    let (_, payload, in_ledger) = queued("evt-1", "user-1").await;
    assert_eq!(in_ledger, payload, "layout 2: the ledger keeps a copy");
    assert_eq!(redis.command(&["GET", &keys.layout()]).await, "2");
    assert_eq!(
        ingest.queue().counts().await.expect("counts").redis_layout,
        2
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    write_config(&settings, &config);
    let to_3 = queue_migrate(&config, &["--to", "3"]).await;
    assert_eq!(
        (&to_3["layout"], &to_3["switched"]),
        (&json!("3"), &json!({"from": "2", "to": "3", "copied": 0})),
        "{to_3}"
    );
    let (second_ledger, _, in_ledger) = queued("evt-2", "user-2").await;
    assert_eq!(in_ledger, "nil", "layout 3: no copy");
    assert_eq!(
        ingest.queue().counts().await.expect("counts").redis_layout,
        3
    );

    let to_2 = queue_migrate(&config, &["--to", "2"]).await;
    assert_eq!(
        &to_2["switched"],
        &json!({"from": "3", "to": "2", "copied": 1}),
        "{to_2}"
    );
    assert!(
        redis
            .command(&["HGET", &second_ledger, "job"])
            .await
            .contains("user-2"),
        "the queued job's ledger has its copy back"
    );
    let refused = run_lease_sync(vec![
        "queue".into(),
        "migrate".into(),
        "--config".into(),
        config.display().to_string(),
        "--to".into(),
        "5".into(),
    ])
    .await;
    assert!(!refused.status.success());

    // Both jobs run, whichever layout queued them.
    let worker = TestApp::start(&settings, Role::Work).await;
    let counts = wait_drained(&ingest.queue(), LIMIT).await;
    assert_eq!((counts.done, counts.dead), (2, 0), "{counts:?}");
    worker.stop().await;
}

/// A namespace in layout 3 (the release before) locks each resident by a key of its own,
/// which that release's workers take: a claim of this release is put off while an older
/// worker holds it, so both releases exclude each other during a rolling upgrade. `queue
/// migrate --to 4` moves the lock into the resident hash (no key); a claim made before the
/// switch still releases its key. In layout 4 a claim is put off while another worker holds
/// the hash's lock, and finishing empties it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_3_locks_residents_by_key_until_queue_migrate_moves_the_lock_into_their_hash() {
    let redis = lease_sync_testkit::RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let settings = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let keys = lease_sync::queue::Keys::new(&settings.redis.namespace);
    redis.command(&["SET", &keys.layout(), "3"]).await;
    let app = TestApp::start(&settings, Role::Serve).await;
    let queue = app.queue();
    let post = |n: usize| {
        let app = &app;
        async move {
            let (id, user) = (format!("evt-{n}"), format!("user-{n}"));
            let reply = post_event(app, &id, event_body("lease.signed", &id, &[&user])).await;
            assert_eq!(reply.status, 202, "{reply:?}");
        }
    };
    let called = |user: &str| {
        openapp
            .sandbox
            .calls()
            .iter()
            .any(|c| c.user_id.as_deref() == Some(user))
    };
    let locked_at = |n: usize| {
        let queue = &queue;
        async move {
            let user = format!("user-{n}");
            wait_until("the resident to be locked", LIMIT, || async {
                queue.resident_lock(INTEGRATION, &user).await.ok()?
            })
            .await
        }
    };
    let delivered = |n: u64| {
        let queue = &queue;
        async move {
            wait_until("the deliveries", LIMIT, || async {
                let counts = queue.counts().await.ok()?;
                (counts.done >= n && counts.in_flight == 0).then_some(counts)
            })
            .await
        }
    };

    // Layout 3: a worker of the release before holds user-1's lock key; the claim waits.
    let old_lock = keys.resident_lock(INTEGRATION, "user-1");
    redis
        .command(&["SET", &old_lock, "older-worker", "PX", "60000"])
        .await;
    post(1).await;
    wait_until("the claim to be put off", LIMIT, || async {
        (queue.counts().await.ok()?.deferred > 0).then_some(())
    })
    .await;
    assert!(
        !called("user-1"),
        "a call while an older worker held the resident"
    );
    redis.command(&["DEL", &old_lock]).await;
    delivered(1).await;
    assert!(called("user-1"));

    // A claim in layout 3 takes the key, and releases it after the switch to layout 4.
    openapp.sandbox.push_fault_for(
        axum::http::Method::POST,
        Fault::Delay(Duration::from_millis(1_500)),
    );
    post(2).await;
    let held = locked_at(2).await;
    assert_eq!(held.place, LockPlace::OwnKey, "{held:?}");
    let resident_2 = keys.resident(INTEGRATION, "user-2");
    assert_eq!(redis.command(&["HGET", &resident_2, "lock"]).await, "nil");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    write_config(&settings, &config);
    let to_4 = queue_migrate(&config, &["--to", "4"]).await;
    assert_eq!(
        &to_4["switched"],
        &json!({"from": "3", "to": "4", "copied": 0}),
        "{to_4}"
    );
    delivered(2).await;
    let lock_2 = keys.resident_lock(INTEGRATION, "user-2");
    assert_eq!(redis.command(&["EXISTS", &lock_2]).await, "int(0)");
    assert_eq!(
        queue
            .resident_lock(INTEGRATION, "user-2")
            .await
            .expect("redis"),
        None
    );

    // Layout 4: the lock is in the resident hash, and emptied when the job ends.
    openapp.sandbox.push_fault_for(
        axum::http::Method::POST,
        Fault::Delay(Duration::from_millis(1_500)),
    );
    post(3).await;
    let held = locked_at(3).await;
    assert_eq!(held.place, LockPlace::ResidentHash, "{held:?}");
    let resident_3 = keys.resident(INTEGRATION, "user-3");
    assert_eq!(
        redis.command(&["HGET", &resident_3, "lock"]).await,
        held.holder
    );
    let lock_3 = keys.resident_lock(INTEGRATION, "user-3");
    assert_eq!(redis.command(&["EXISTS", &lock_3]).await, "int(0)");
    delivered(3).await;
    assert_eq!(redis.command(&["HGET", &resident_3, "lock"]).await, "");
    assert_eq!(
        queue
            .resident_lock(INTEGRATION, "user-3")
            .await
            .expect("redis"),
        None
    );

    // Another worker holds user-4's lock in its hash: the claim waits until it is released.
    post(4).await;
    let deferred = delivered(4).await.deferred;
    let resident_4 = keys.resident(INTEGRATION, "user-4");
    let until = (lease_sync::queue::now_ms() + 60_000).to_string();
    redis
        .command(&[
            "HSET",
            &resident_4,
            "lock",
            "another-worker",
            "lock_until",
            &until,
        ])
        .await;
    let calls_before = openapp.sandbox.calls().len();
    let reply = post_event(
        &app,
        "evt-4b",
        event_body("lease.ended", "evt-4", &["user-4"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("the claim to be put off", LIMIT, || async {
        (queue.counts().await.ok()?.deferred > deferred).then_some(())
    })
    .await;
    assert_eq!(
        openapp.sandbox.calls().len(),
        calls_before,
        "a call while another worker held the resident"
    );
    redis.command(&["HSET", &resident_4, "lock", ""]).await;
    delivered(5).await;
    assert_eq!(openapp.sandbox.calls().len(), calls_before + 1);
    app.stop().await;
}

/// Runs `lease-sync queue migrate --config CONFIG ARGS… --json`, which must succeed; its output.
async fn queue_migrate(config: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut argv: Vec<String> = vec![
        "queue".into(),
        "migrate".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv.push("--json".into());
    let out = run_lease_sync(argv).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// One convergence queued through ingest, with its delivery id.
async fn one_queued_delivery() -> (
    lease_sync_testkit::RedisServer,
    FakeOpenApp,
    lease_sync::config::Settings,
    TestApp,
    String,
) {
    let redis = lease_sync_testkit::RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let settings = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let ingest = TestApp::start(&settings, Role::Ingest).await;
    let reply = post_event(
        &ingest,
        "evt-1",
        event_body("lease.signed", "L-1", &["user-1"]),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let deliveries = ingest.queue().deliveries_of("evt-1").await.expect("redis");
    let [delivery] = deliveries.as_slice() else {
        panic!("one delivery: {deliveries:?}")
    };
    let delivery = delivery.clone();
    (redis, openapp, settings, ingest, delivery)
}

/// What a worker of the release with attempt lists leaves after attempt 1 of `delivery` got
/// a 503: the attempt counted and its record in the list. (That release queued the retry as a
/// new job; here the queued job stays current, which the next claim cannot tell apart.)
async fn retried_once_by_an_older_worker(
    redis: &lease_sync_testkit::RedisServer,
    keys: &lease_sync::queue::Keys,
    delivery: &str,
) {
    let ledger = keys.delivery(delivery);
    let task = redis.command(&["HGET", &ledger, "current_task"]).await;
    let started_at = lease_sync::queue::now_ms() - 2_000;
    let record = json!({"attempt": 1, "task": task, "started_at": started_at,
        "finished_at": started_at + 10, "outcome": "retry", "status": 503});
    redis.command(&["HSET", &ledger, "attempts", "1"]).await;
    redis
        .command(&["RPUSH", &keys.attempts(delivery), &record.to_string()])
        .await;
}

/// Waits for `delivery` to be delivered; its records' attempt numbers and outcomes.
async fn delivered_log(
    queue: &lease_sync::queue::JobQueue,
    delivery: &str,
) -> Vec<(Option<u32>, String)> {
    let records = wait_until("the delivery to be delivered", LIMIT, || async {
        let (status, records) = queue.delivery_log(delivery).await.ok()??;
        (status == "delivered").then_some(records)
    })
    .await;
    records
        .into_iter()
        .map(|r| (r.attempt, r.outcome))
        .collect()
}

/// `key` exists and expires.
async fn assert_expires(redis: &lease_sync_testkit::RedisServer, key: &str) {
    let ttl = redis.command(&["PTTL", key]).await;
    let ms: i64 = ttl
        .strip_prefix("int(")
        .and_then(|t| t.strip_suffix(')'))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("PTTL {key}: {ttl}"));
    assert!(ms > 0, "{key} does not expire (PTTL {ms})");
}
