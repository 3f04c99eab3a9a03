//! Workers against the sandbox OpenApp: the calls they make, and how failures end.

use std::time::Duration;

use lease_sync::config::{AuthScheme, Role};
use lease_sync::queue::residents::LockPlace;
use lease_sync_sandbox::{Fault, SandboxAuth, SandboxOptions};
use serde_json::json;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_lease_adds_each_resident_and_ended_lease_removes_them() {
    let (_redis, openapp, app) = serve().await;
    let users = ["01JD3ZJ4Q8W6V5T2N9K7H1M0PX", "01JD3ZJ4Q8W6V5T2N9K7H1M0PY"];

    let reply = post_event(
        &app,
        "evt-signed",
        event_body("lease.signed", "L-1042", &users),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let calls = tokio::time::timeout(LIMIT, openapp.sandbox.wait_for_calls(2))
        .await
        .expect("two POSTs");
    assert_eq!(calls.len(), 2);
    let mut seen = Vec::new();
    for call in &calls {
        assert_eq!(call.method, "POST");
        assert_eq!(
            call.path,
            format!("/api/v1/integrations/{INTEGRATION}/building-users")
        );
        assert_eq!(
            call.authorization.as_deref(),
            Some(format!("Bearer {API_KEY}").as_str())
        );
        assert_eq!(call.x_org.as_deref(), Some(ORG));
        assert_eq!(call.status, 201);
        let body = call.body.clone().expect("a JSON body");
        assert_eq!(body["role"], json!(role()));
        assert_eq!(
            body.as_object().unwrap().len(),
            2,
            "exactly user_id and role: {body}"
        );
        seen.push(body["user_id"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, users);
    assert_eq!(openapp.sandbox.members(INTEGRATION).len(), 2);

    let reply = post_event(
        &app,
        "evt-ended",
        event_body("lease.ended", "L-1042", &users[..1]),
    )
    .await;
    assert_eq!(reply.status, 202);
    let calls = tokio::time::timeout(LIMIT, openapp.sandbox.wait_for_calls(3))
        .await
        .expect("a DELETE");
    let delete = &calls[2];
    assert_eq!(delete.method, "DELETE");
    assert_eq!(
        delete.path,
        format!(
            "/api/v1/integrations/{INTEGRATION}/building-users/{}",
            users[0]
        )
    );
    assert_eq!(delete.x_org.as_deref(), Some(ORG));
    assert_eq!(
        delete.authorization.as_deref(),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(delete.status, 204);
    let members = openapp.sandbox.members(INTEGRATION);
    assert_eq!(members.keys().collect::<Vec<_>>(), vec![users[1]]);

    let counts = wait_drained(&app.queue(), LIMIT).await;
    assert_eq!((counts.done, counts.dead), (3, 0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_the_call_succeeds() {
    let (_redis, openapp, app) = serve().await;
    openapp.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    openapp.sandbox.push_fault(Fault::Status {
        status: 429,
        retry_after: Some("1".into()),
    });

    let reply = post_event(
        &app,
        "evt-retry",
        event_body("lease.signed", "L-7", &["user-7"]),
    )
    .await;
    assert_eq!(reply.status, 202);
    wait_until("the resident to be added", LIMIT, || async {
        openapp
            .sandbox
            .members(INTEGRATION)
            .contains_key("user-7")
            .then_some(())
    })
    .await;
    let statuses: Vec<u16> = openapp.sandbox.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![503, 429, 201]);
    let counts = wait_drained(&app.queue(), LIMIT).await;
    assert_eq!((counts.done, counts.dead), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_rejection_is_not_retried() {
    let (_redis, openapp, app) = serve().await;
    openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });

    post_event(
        &app,
        "evt-400",
        event_body("lease.signed", "L-8", &["user-8"]),
    )
    .await;
    let counts = wait_until("the job to be given up", LIMIT, || async {
        let c = app.queue().counts().await.ok()?;
        (c.dead == 1).then_some(c)
    })
    .await;
    assert_eq!(counts.done, 0);
    assert_eq!(openapp.sandbox.calls().len(), 1, "a 400 is final: one call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_max_attempts() {
    let (_redis, openapp, app) = serve().await;
    for _ in 0..10 {
        openapp.sandbox.push_fault(Fault::Status {
            status: 500,
            retry_after: None,
        });
    }
    post_event(
        &app,
        "evt-500",
        event_body("lease.ended", "L-9", &["user-9"]),
    )
    .await;
    wait_until(
        "the job to be given up",
        Duration::from_secs(30),
        || async { (app.queue().counts().await.ok()?.dead == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        openapp.sandbox.calls().len(),
        4,
        "[retry] max_attempts = 4 calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_present_and_already_absent_count_as_done() {
    let redis = RedisServer::start().await;
    // A sandbox that answers 409 for an existing member, as some gateways do.
    let openapp = FakeOpenApp::with_options(SandboxOptions {
        conflict_on_existing: true,
        ..SandboxOptions::default()
    })
    .await;
    let (sandbox, base) = (&openapp.sandbox, &openapp.base_url);
    sandbox.add_member(ORG, INTEGRATION, "present", &role());
    let app = TestApp::start(&test_config(&redis.url(), &namespace(), base), Role::Serve).await;

    post_event(
        &app,
        "evt-a",
        event_body("lease.signed", "L-1", &["present"]),
    )
    .await;
    post_event(&app, "evt-b", event_body("lease.ended", "L-1", &["absent"])).await;
    let counts = wait_until("both jobs to finish", LIMIT, || async {
        let c = app.queue().counts().await.ok()?;
        (c.done + c.dead == 2).then_some(c)
    })
    .await;
    assert_eq!((counts.done, counts.dead), (2, 0));
    let mut calls: Vec<(String, u16)> = sandbox
        .calls()
        .iter()
        .map(|c| (c.method.clone(), c.status))
        .collect();
    calls.sort();
    // The 404 counts as "already absent" only after the integration list proved it exists.
    assert_eq!(
        calls,
        [
            ("DELETE".into(), 404),
            ("GET".into(), 200),
            ("POST".into(), 409)
        ]
    );
}

/// apalis-redis 1.0 never wakes an idle worker on push; without a poll interval a new job
/// waits for the next heartbeat (bug 2). With a 30 s heartbeat, delivery within 10 s shows
/// the poll interval is in effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_picks_up_new_jobs_without_waiting_for_a_heartbeat() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    config.worker.heartbeat = Duration::from_secs(30);
    let app = TestApp::start(&config, Role::Serve).await;

    post_event(
        &app,
        "evt-first",
        event_body("lease.signed", "L-1", &["first"]),
    )
    .await;
    wait_until("the first job to be acknowledged", LIMIT, || async {
        (app.queue().counts().await.ok()?.done == 1).then_some(())
    })
    .await;
    // Make the worker's next fetch visible: Redis logs every command with its arguments.
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("CONFIG")
        .arg(&["SET", "slowlog-log-slower-than", "0"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = ::redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_until(
        "the worker's fetch that finds the queue empty",
        LIMIT,
        || {
            let mut conn = conn.clone();
            async move {
                let log: ::redis::Value = ::redis::cmd("SLOWLOG")
                    .arg(&["GET", "1000"])
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                // fetch.lua is the only script whose keys include the in-flight set and the
                // ready list next to each other.
                let log = format!("{log:?}");
                (log.contains(":jobs:ready") && log.contains(":jobs:in-flight")).then_some(())
            }
        },
    )
    .await;
    // The worker is idle now; only its poll interval can make it look again soon.
    post_event(
        &app,
        "evt-second",
        event_body("lease.signed", "L-2", &["second"]),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(10), openapp.sandbox.wait_for_calls(2))
        .await
        .expect("picked up well before the 30 s heartbeat");
}

/// OpenApp applies the add but the answer comes after our timeout (a lost reply): the retry
/// adds again, which OpenApp accepts, and the job ends done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_slower_than_the_timeout_is_retried_and_converges() {
    let (_redis, openapp, app) = serve().await;
    openapp
        .sandbox
        .push_fault(Fault::Delay(Duration::from_millis(1_500)));
    post_event(
        &app,
        "evt-slow",
        event_body("lease.signed", "L-5", &["user-slow"]),
    )
    .await;
    let counts = wait_until("the job to finish", LIMIT, || async {
        let c = app.queue().counts().await.ok()?;
        (c.done == 1).then_some(c)
    })
    .await;
    assert_eq!(counts.dead, 0);
    let posts = openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.method == "POST")
        .count();
    assert_eq!(posts, 2, "the timed-out call and its retry");
    assert!(
        openapp
            .sandbox
            .members(INTEGRATION)
            .contains_key("user-slow")
    );
}

/// Newer OpenApp gateways take the key in `X-API-Key` and refuse it in `Authorization`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_key_auth_sends_the_key_in_its_own_header() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::with_options(SandboxOptions {
        api_keys: vec![API_KEY.into()],
        auth: SandboxAuth::XApiKey,
        ..SandboxOptions::default()
    })
    .await;
    let (sandbox, base) = (&openapp.sandbox, &openapp.base_url);
    let mut config = test_config(&redis.url(), &namespace(), base);
    config.openapp.auth = AuthScheme::XApiKey;
    let app = TestApp::start(&config, Role::Serve).await;

    post_event(
        &app,
        "evt-xak",
        event_body("lease.signed", "L-6", &["user-x"]),
    )
    .await;
    let calls = tokio::time::timeout(LIMIT, sandbox.wait_for_calls(1))
        .await
        .unwrap();
    assert_eq!(calls[0].status, 201);
    assert_eq!(calls[0].x_api_key.as_deref(), Some(API_KEY));
    assert_eq!(calls[0].authorization, None);
}

/// A convergence frees its worker slot once its OpenApp call returned and records the
/// outcome while the next job runs; OpenApp still never has more calls from one process at
/// once than `worker.concurrency`, and every outcome is recorded (each job delivered once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapp_never_has_more_calls_at_once_than_the_concurrency() {
    const JOBS: usize = 40;
    let (_redis, openapp, app) =
        serve_with(|s| s.worker.concurrency = std::num::NonZeroUsize::new(3).expect("3")).await;
    openapp
        .sandbox
        .set_faults(lease_sync_sandbox::FaultOptions {
            delay: Duration::from_millis(20),
            ..lease_sync_sandbox::FaultOptions::default()
        });
    let posts = (0..JOBS).map(|i| {
        let app = &app;
        async move {
            let user = format!("user-{i}");
            post_event(
                app,
                &format!("evt-{i}"),
                event_body("lease.signed", &format!("L-{i}"), &[user.as_str()]),
            )
            .await
        }
    });
    for reply in futures::future::join_all(posts).await {
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    wait_until("every resident to be added", LIMIT, || async {
        (openapp.sandbox.members(INTEGRATION).len() == JOBS).then_some(())
    })
    .await;
    let counts = wait_drained(&app.queue(), LIMIT).await;
    assert_eq!(counts.done, JOBS as u64, "{counts:?}");
    assert_eq!(counts.retries + counts.dead_lettered, 0, "{counts:?}");
    let posts = openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.method == "POST")
        .count();
    assert_eq!(posts, JOBS, "one call per job");
    let most = openapp.sandbox.max_in_flight();
    assert!(
        (2..=3).contains(&most),
        "OpenApp had {most} calls at once; the concurrency is 3"
    );
}

/// Against a slow OpenApp a worker takes few jobs beyond its calls, whatever `claim_ahead`
/// allows: what its calls get through in 25 ms, at least 16. The rest stay in the queue for
/// other workers and count no crashed attempt if this one dies. Before the pace, this worker
/// held a whole fetch (50 jobs) at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_against_a_slow_openapp_takes_few_jobs_ahead_of_its_calls() {
    const JOBS: usize = 60;
    let (redis, openapp, app) = serve_with(|s| {
        s.worker.concurrency = std::num::NonZeroUsize::new(2).expect("2");
        s.worker.claim_ahead = 256;
    })
    .await;
    // 2 calls of 50 ms: 40 jobs a second, 1 in 25 ms, so the least, 16, ahead.
    openapp
        .sandbox
        .set_faults(lease_sync_sandbox::FaultOptions {
            delay: Duration::from_millis(50),
            ..lease_sync_sandbox::FaultOptions::default()
        });
    let posts = (0..JOBS).map(|i| {
        let app = &app;
        async move {
            let user = format!("user-{i}");
            post_event(
                app,
                &format!("evt-{i}"),
                event_body("lease.signed", &format!("L-{i}"), &[user.as_str()]),
            )
            .await
        }
    });
    for reply in futures::future::join_all(posts).await {
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    let in_flight = app.queue().keys().in_flight();
    let most = std::sync::atomic::AtomicU64::new(0);
    wait_until("every resident to be added", LIMIT, || async {
        let held = redis.command(&["ZCARD", &in_flight]).await;
        let held: u64 = held
            .trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == '(')
            .trim_end_matches(')')
            .parse()
            .expect("a count");
        most.fetch_max(held, std::sync::atomic::Ordering::SeqCst);
        (openapp.sandbox.members(INTEGRATION).len() == JOBS).then_some(())
    })
    .await;
    let counts = wait_drained(&app.queue(), LIMIT).await;
    assert_eq!(counts.done, JOBS as u64, "{counts:?}");
    let most = most.into_inner();
    assert!(
        (3..=18).contains(&most),
        "the worker held {most} jobs at once; 2 calls and 16 ahead allow 18"
    );
}

/// Jobs claimed ahead of the call slots wait for a call permit holding their resident's lock.
/// A lock that expired during that wait may belong to someone else by then: the job must not
/// call. Here every lock that expires is taken by the test (as another worker would take it),
/// and OpenApp never gets a call for a resident whose lock the test holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_lock_expired_while_claimed_ahead_makes_no_call() {
    const USERS: usize = 5;
    let (redis, openapp, app) = serve_with(|s| {
        // One call at a time, the other four jobs claimed ahead of it. `claim_ahead` leaves
        // room beyond the five, so the pace never holds one back until a call ends (it fetches
        // once there is room for half of the jobs ahead): all five are claimed at once.
        s.worker.concurrency = std::num::NonZeroUsize::new(1).expect("1");
        s.worker.claim_ahead = 2 * USERS;
        // Locks live 2 × 2 s + 2 s = 6 s; the fifth job waits for four calls of 1.9 s.
        s.openapp.timeout = Duration::from_secs(2);
        s.worker.missed_heartbeats = std::num::NonZeroUsize::new(5).expect("5");
    })
    .await;
    for _ in 0..USERS - 1 {
        openapp.sandbox.push_fault_for(
            axum::http::Method::POST,
            Fault::Delay(Duration::from_millis(1_900)),
        );
    }
    let users: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    let posts = users.iter().enumerate().map(|(i, user)| {
        let app = &app;
        async move {
            post_event(
                app,
                &format!("evt-{i}"),
                event_body("lease.signed", &format!("L-{i}"), &[user.as_str()]),
            )
            .await
        }
    });
    for reply in futures::future::join_all(posts).await {
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    let keys = lease_sync::queue::Keys::new(&app.settings.redis.namespace);
    let queue = app.queue();
    wait_until(
        "every job to be claimed (its resident locked)",
        LIMIT,
        || async {
            for user in &users {
                queue.resident_lock(INTEGRATION, user).await.ok()??;
            }
            Some(())
        },
    )
    .await;

    // Take every lock that comes free while its resident has had no call, until every job
    // ended: as another worker's claim takes it (layout 4: fields of the resident hash, on
    // Redis's clock, begin_attempt.lua).
    const TAKE: &str = "local f = redis.call('HMGET', KEYS[1], 'lock', 'lock_until') \
        local t = redis.call('TIME') \
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
        if f[1] and f[1] ~= '' and tonumber(f[2]) > now then return 0 end \
        redis.call('HSET', KEYS[1], 'lock', 'the-test', 'lock_until', string.format('%d', now + 60000)) \
        return 1";
    let taken = std::sync::Mutex::new(Vec::<String>::new());
    wait_until("every job to end", LIMIT * 2, || async {
        let called: Vec<String> = openapp.sandbox.calls().iter().map(called_user).collect();
        for user in &users {
            let skip = taken.lock().expect("not poisoned").contains(user) || called.contains(user);
            let resident = keys.resident(INTEGRATION, user);
            if !skip && redis.command(&["EVAL", TAKE, "1", &resident]).await == "int(1)" {
                taken.lock().expect("not poisoned").push(user.clone());
            }
        }
        let counts = queue.counts().await.ok()?;
        (counts.done == USERS as u64 && counts.in_flight == 0).then_some(())
    })
    .await;

    let taken = taken.into_inner().expect("not poisoned");
    assert!(
        !taken.is_empty(),
        "the last job waits 7.6 s for its call and its lock lives 6 s: the test takes it"
    );
    for call in openapp.sandbox.calls() {
        let user = called_user(&call);
        assert!(
            !taken.contains(&user),
            "{} for {user} while the test held that resident's lock (taken: {taken:?})",
            call.method
        );
    }
    // The job's finish releases its lock only if still its own: the test's stay, with a time
    // to live; the others are free.
    for user in &users {
        let held = queue.resident_lock(INTEGRATION, user).await.expect("redis");
        if taken.contains(user) {
            let held = held.unwrap_or_else(|| panic!("{user}'s lock was released"));
            assert_eq!(held.holder, "the-test", "{user}");
            assert_eq!(held.place, LockPlace::ResidentHash, "{user}");
            assert!(held.remaining_ms > 0, "{user}'s lock lost its time to live");
        } else {
            assert_eq!(held, None, "{user}");
        }
    }
}

/// The user a recorded call was about: the path's for a DELETE, the body's for a POST.
fn called_user(call: &lease_sync_sandbox::RecordedCall) -> String {
    call.user_id
        .clone()
        .or_else(|| call.body.as_ref()?["user_id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
