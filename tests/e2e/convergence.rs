//! Correct access whatever the order: resident state, convergence and effective dates.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lease_sync::config::Role;
use lease_sync::event::parse_event;
use lease_sync::queue::{DeliveryJob, EnqueueLimits, JOB_VERSION};
use lease_sync::resident::Desired;
use lease_sync_sandbox::{Fault, FaultOptions};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A lease event body with an explicit time and optional access window (RFC 3339 strings).
fn event_at(
    event_type: &str,
    lease: &str,
    users: &[&str],
    occurred_at: &str,
    access: Option<Value>,
) -> Vec<u8> {
    let residents: Vec<Value> = users
        .iter()
        .map(|u| json!({"openapp_user_id": u}))
        .collect();
    let mut body = json!({
        "type": event_type,
        "occurred_at": occurred_at,
        "lease": {"id": lease, "property_id": PROPERTY},
        "residents": residents,
    });
    if let Some(access) = access {
        body["access"] = access;
    }
    serde_json::to_vec(&body).expect("json")
}

fn present(openapp: &FakeOpenApp, user: &str) -> bool {
    openapp.sandbox.members(INTEGRATION).contains_key(user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_signed_event_cannot_revive_an_ended_lease() {
    let (_redis, openapp, app) = serve().await;
    // "ended" (10:00) arrives before the older "signed" (09:00) it supersedes.
    let ended = event_at(
        "lease.ended",
        "L-1",
        &["user-late"],
        "2026-11-22T10:00:00Z",
        None,
    );
    assert_eq!(post_event(&app, "evt-ended", ended).await.status, 202);
    let signed = event_at(
        "lease.signed",
        "L-1",
        &["user-late"],
        "2026-11-22T09:00:00Z",
        None,
    );
    let reply = post_event(&app, "evt-signed-late", signed).await;
    assert_eq!(
        (reply.json["jobs"].as_u64(), reply.json["stale"].as_u64()),
        (Some(0), Some(1))
    );
    let counts = wait_drained(&app.queue(), LIMIT).await;
    assert_eq!(counts.stale_events, 1);
    assert!(!present(&openapp, "user-late"));
    assert!(
        openapp.sandbox.calls().iter().all(|c| c.method != "POST"),
        "never granted"
    );

    // Only a newer event revives it.
    let resigned = event_at(
        "lease.signed",
        "L-1",
        &["user-late"],
        "2026-11-22T11:00:00Z",
        None,
    );
    post_event(&app, "evt-resigned", resigned).await;
    wait_until("the newer signing to grant access", LIMIT, || async {
        present(&openapp, "user-late").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_one_of_two_leases_in_a_building_removes_nobody() {
    let (_redis, openapp, app) = serve().await;
    post_event(
        &app,
        "evt-3a",
        event_at(
            "lease.signed",
            "3A",
            &["mover"],
            "2026-01-01T00:00:00Z",
            None,
        ),
    )
    .await;
    post_event(
        &app,
        "evt-5b",
        event_at(
            "lease.signed",
            "5B",
            &["mover"],
            "2026-11-01T00:00:00Z",
            None,
        ),
    )
    .await;
    wait_until("the resident to be added", LIMIT, || async {
        present(&openapp, "mover").then_some(())
    })
    .await;
    post_event(
        &app,
        "evt-3a-end",
        event_at(
            "lease.ended",
            "3A",
            &["mover"],
            "2026-11-20T00:00:00Z",
            None,
        ),
    )
    .await;
    wait_drained(&app.queue(), LIMIT).await;
    assert!(present(&openapp, "mover"), "5B still grants access");
    assert!(openapp.sandbox.calls().iter().all(|c| c.method != "DELETE"));

    post_event(
        &app,
        "evt-5b-end",
        event_at(
            "lease.ended",
            "5B",
            &["mover"],
            "2026-11-21T00:00:00Z",
            None,
        ),
    )
    .await;
    wait_until("the last lease's end to remove them", LIMIT, || async {
        (!present(&openapp, "mover")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_start_is_granted_at_that_moment_and_not_before() {
    let (_redis, openapp, app) = serve().await;
    let starts = lease_sync::queue::now_ms() + 2_000;
    let access = json!({"starts_at": rfc3339(starts)});
    post_event(
        &app,
        "evt-future",
        event_at(
            "lease.signed",
            "L-F",
            &["newcomer"],
            &rfc3339(lease_sync::queue::now_ms()),
            Some(access),
        ),
    )
    .await;
    wait_until("the grant", LIMIT, || async {
        present(&openapp, "newcomer").then_some(())
    })
    .await;
    let post = openapp
        .sandbox
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .expect("a POST");
    assert_eq!(post.status, 201);
    assert!(
        lease_sync::queue::now_ms() >= starts,
        "granted no earlier than starts_at"
    );
    // Before the start, nothing was removed either: lease-sync never added this person.
    assert!(openapp.sandbox.calls().iter().all(|c| c.method != "DELETE"));
}

/// A resident who gives notice keeps the door until `ends_at`; the removal is a scheduled
/// convergence that survives a worker restart, and a newer signing that extends access
/// cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_at_ends_at_survives_a_worker_restart_and_is_cancelled_by_an_extension() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let ingest = TestApp::start(&config, Role::Ingest).await;
    let worker = TestApp::start(&config, Role::Work).await;
    let now = lease_sync::queue::now_ms();

    for user in ["leaver", "stayer"] {
        post_event(
            &ingest,
            &format!("evt-sign-{user}"),
            event_at(
                "lease.signed",
                &format!("L-{user}"),
                &[user],
                &rfc3339(now - 60_000),
                None,
            ),
        )
        .await;
    }
    wait_until("both to be added", LIMIT, || async {
        (present(&openapp, "leaver") && present(&openapp, "stayer")).then_some(())
    })
    .await;

    // Both give notice: access ends in 3 s.
    // Counted from here, so the set-up above does not eat into the window.
    let ends = lease_sync::queue::now_ms() + 6_000;
    for user in ["leaver", "stayer"] {
        let access = json!({"ends_at": rfc3339(ends)});
        post_event(
            &ingest,
            &format!("evt-notice-{user}"),
            event_at(
                "lease.ended",
                &format!("L-{user}"),
                &[user],
                &rfc3339(now - 1_000),
                Some(access),
            ),
        )
        .await;
    }
    // The stayer renews before moving out: a newer signing without an end.
    post_event(
        &ingest,
        "evt-renew",
        event_at("lease.signed", "L-stayer", &["stayer"], &rfc3339(now), None),
    )
    .await;
    // Every event's convergence has run (the scheduled removal still waits in Redis).
    wait_until("the five convergences", LIMIT, || async {
        let c = ingest.queue().counts().await.ok()?;
        (c.done == 5 && c.ready == 0 && c.in_flight == 0).then_some(())
    })
    .await;
    // On a machine slow enough to pass `ends` already, the checks before it do not apply.
    let before_ends = || lease_sync::queue::now_ms() < ends - 200;
    if before_ends() {
        assert!(
            present(&openapp, "leaver") && present(&openapp, "stayer"),
            "notice keeps the door until move-out"
        );
    }

    // The only worker stops before the removal is due; a new one starts after.
    worker.stop().await;
    let stopped_in_time = before_ends();
    let state = ingest
        .queue()
        .resident(INTEGRATION, "leaver")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state.next_check,
        Some(ends),
        "the removal is scheduled in Redis"
    );
    wait_until("ends_at to pass", LIMIT, || async {
        (lease_sync::queue::now_ms() > ends + 200).then_some(())
    })
    .await;
    if stopped_in_time {
        assert!(present(&openapp, "leaver"), "no worker ran meanwhile");
    }
    let _worker = TestApp::start(&config, Role::Work).await;

    wait_until("the scheduled removal", LIMIT, || async {
        (!present(&openapp, "leaver")).then_some(())
    })
    .await;
    let removal = openapp
        .sandbox
        .calls()
        .into_iter()
        .find(|c| c.method == "DELETE")
        .expect("a DELETE");
    assert_eq!(removal.user_id.as_deref(), Some("leaver"));
    wait_drained(&ingest.queue(), LIMIT).await;
    assert!(
        present(&openapp, "stayer"),
        "the extension cancelled the stayer's removal"
    );
    assert!(
        !openapp
            .sandbox
            .calls()
            .iter()
            .any(|c| c.method == "DELETE" && c.user_id.as_deref() == Some("stayer"))
    );
}

/// One random history: events over three leases of two residents in one building, the first
/// resident holding two leases. Times are drawn from a few values, so ties happen.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    lease: &'static str,
    user: &'static str,
    kind: &'static str,
    minute: u32,
}

const LEASES: [(&str, &str); 3] = [("L1", "u1"), ("L2", "u1"), ("L3", "u2")];

fn random_history(rng: &mut impl Rng, case: usize) -> Vec<Event> {
    let n = rng.random_range(1..=8);
    (0..n)
        .map(|i| {
            let (lease, user) = LEASES[rng.random_range(0..LEASES.len())];
            Event {
                id: format!("c{case}-e{i}"),
                lease,
                user,
                kind: if rng.random_bool(0.5) {
                    "lease.signed"
                } else {
                    "lease.ended"
                },
                minute: rng.random_range(0..4),
            }
        })
        .collect()
}

/// The state implied by applying the events in version order: per lease the newest event by
/// (time, ended over signed, id); a resident is present iff one of their leases is signed.
fn model(history: &[Event]) -> BTreeSet<&'static str> {
    let mut latest: BTreeMap<&str, &Event> = BTreeMap::new();
    for e in history {
        let key = |e: &Event| (e.minute, u8::from(e.kind == "lease.ended"), e.id.clone());
        if latest.get(e.lease).is_none_or(|cur| key(e) > key(cur)) {
            latest.insert(e.lease, e);
        }
    }
    latest
        .values()
        .filter(|e| e.kind == "lease.signed")
        .map(|e| e.user)
        .collect()
}

fn body_of(e: &Event, user: &str) -> Vec<u8> {
    event_at(
        e.kind,
        e.lease,
        &[user],
        &format!("2026-11-22T10:0{}:00Z", e.minute),
        None,
    )
}

/// Folding is one Lua step per event; for many histories in every order tried, the folded
/// state gives the same answer as the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folding_any_permutation_of_a_history_gives_the_version_order_state() {
    const HISTORIES: usize = 400;
    const PERMUTATIONS: usize = 8;
    let seed: u64 = std::env::var("CONVERGENCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261123);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis);
    let mut folds = 0;
    for case in 0..HISTORIES {
        let history = random_history(&mut rng, case);
        let expected = model(&history);
        for perm in 0..PERMUTATIONS {
            let mut order = history.clone();
            order.shuffle(&mut rng);
            // Duplicates: some events twice (the sender retrying after a lost 2xx).
            let dups: Vec<Event> = order
                .iter()
                .filter(|_| rng.random_bool(0.3))
                .cloned()
                .collect();
            order.extend(dups);
            let tag = format!("h{case}p{perm}");
            for e in &order {
                let user = format!("{tag}-{}", e.user);
                let id = format!("{tag}-{}", e.id);
                let event = parse_event(&body_of(e, &user), &id).expect("valid event");
                let job = DeliveryJob {
                    v: JOB_VERSION,
                    delivery_id: ulid::Ulid::new().to_string(),
                    event_id: id.clone(),
                    source: SOURCE.into(),
                    event_type: event.event_type,
                    occurred_at: event.occurred_at,
                    lease_id: e.lease.into(),
                    property_id: PROPERTY.into(),
                    user_id: user.clone(),
                    org_id: ORG.into(),
                    integration_id: INTEGRATION.into(),
                    role: role(),
                    trigger: None,
                };
                queue
                    .enqueue_event(
                        SOURCE,
                        &event,
                        &[job],
                        EnqueueLimits {
                            dedupe_ttl: Duration::from_secs(60),
                            max_clock_skew: Duration::from_secs(300),
                            timeout: Duration::from_secs(5),
                        },
                    )
                    .await
                    .unwrap();
                folds += 1;
            }
            for user in ["u1", "u2"] {
                let state = queue
                    .resident(INTEGRATION, &format!("{tag}-{user}"))
                    .await
                    .unwrap();
                // Evaluated after every event's time: ended leases have ended by then.
                let is_present = state
                    .is_some_and(|s| s.desired(lease_sync::queue::now_ms()) == Desired::Present);
                assert_eq!(
                    is_present,
                    expected.contains(user),
                    "seed {seed}, history {history:?}, order {order:?}, {user}"
                );
            }
        }
    }
    println!(
        "fold property: {HISTORIES} histories × {PERMUTATIONS} permutations (with duplicates), {folds} folds, seed {seed}: all matched the model"
    );
}

/// End to end: random histories delivered in random order with duplicates, through ingest,
/// to two worker processes' worth of workers against a fake OpenApp that fails some calls
/// (retries) and dead-letters a few (replayed afterwards). The final OpenApp membership always
/// equals the model, and nobody is ever granted after the model says their access ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_order_with_duplicates_retries_and_replays_converges_to_the_model() {
    let cases: usize = std::env::var("CONVERGENCE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("CONVERGENCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let app = TestApp::start(&config, Role::Serve).await;
    let _second_worker = TestApp::start(&config, Role::Work).await;
    openapp.sandbox.set_faults(FaultOptions {
        status: Some(503),
        rate: 0.15,
        ..FaultOptions::default()
    });

    let mut posted = 0;
    let mut replayed = 0;
    for case in 0..cases {
        let history = random_history(&mut rng, case);
        let expected = model(&history);
        // A couple of permanent refusals, so some deliveries dead-letter and get replayed.
        openapp.sandbox.push_fault(Fault::Status {
            status: 400,
            retry_after: None,
        });
        let mut order = history.clone();
        order.shuffle(&mut rng);
        let dups: Vec<Event> = order
            .iter()
            .filter(|_| rng.random_bool(0.3))
            .cloned()
            .collect();
        order.extend(dups);
        for e in &order {
            let user = format!("p{case}-{}", e.user);
            let reply = post_event(&app, &format!("p{case}-{}", e.id), body_of(e, &user)).await;
            assert!(matches!(reply.status, 200 | 202), "{reply:?}");
            posted += 1;
        }
        wait_drained(&app.queue(), LIMIT).await;
        // Replay until none is left: a refusal queued for a case that made no call is used up
        // by a later call, possibly a replay, which then dead-letters again.
        let dead_letters = app.dead_letters();
        for _round in 0..5 {
            let ids = dead_letters
                .matching_ids(&Default::default())
                .await
                .unwrap();
            if ids.is_empty() {
                break;
            }
            for id in ids {
                dead_letters.replay(&id, "test").await.unwrap();
                replayed += 1;
            }
            wait_drained(&app.queue(), LIMIT).await;
        }
        wait_drained(&app.queue(), LIMIT).await;
        let left = dead_letters
            .list(&Default::default(), 0, 100)
            .await
            .unwrap()
            .items;
        assert!(
            left.is_empty(),
            "replays succeed once OpenApp accepts; left: {:?}",
            left.iter()
                .map(|d| (d.reason, d.attempts, d.replays, d.last_error.clone()))
                .collect::<Vec<_>>()
        );
        for user in ["u1", "u2"] {
            let member = present(&openapp, &format!("p{case}-{user}"));
            assert_eq!(
                member,
                expected.contains(user),
                "seed {seed}, case {case}: {history:?} delivered as {order:?}"
            );
        }
    }
    println!(
        "convergence property: {cases} histories, {posted} deliveries (with duplicates, 15% 503s), {replayed} dead letters replayed, seed {seed}: final OpenApp state matched the model every time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residents_show_prints_leases_windows_desired_and_applied_state() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let app = TestApp::start(&config, Role::Serve).await;
    post_event(
        &app,
        "evt-a",
        event_at(
            "lease.signed",
            "3A",
            &["shown"],
            "2026-01-01T00:00:00Z",
            None,
        ),
    )
    .await;
    let access = json!({"ends_at": "2099-01-01T00:00:00Z"});
    post_event(
        &app,
        "evt-b",
        event_at(
            "lease.ended",
            "5B",
            &["shown"],
            "2026-02-01T00:00:00Z",
            Some(access),
        ),
    )
    .await;
    wait_until("both convergences", LIMIT, || async {
        let c = app.queue().counts().await.ok()?;
        (c.done == 2 && c.ready == 0 && c.in_flight == 0).then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    write_config(&config, &path);
    let run = |extra: &'static [&'static str]| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "residents",
                "show",
                "--config",
                path.to_str().unwrap(),
                "--integration",
                INTEGRATION,
            ];
            args.extend(extra);
            std::process::Command::new(env!("CARGO_BIN_EXE_lease-sync"))
                .args(args)
                .output()
                .unwrap()
        })
    };
    let out = run(&["--user", "shown", "--json"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["desired"], "present");
    assert_eq!(json["state"]["leases"]["3A"]["state"], "active");
    assert_eq!(json["state"]["leases"]["5B"]["state"], "ended");
    assert_eq!(json["state"]["applied"]["present"], true);
    assert_eq!(json["state"]["managed"], true);
    assert_eq!(
        json["next_transition"].as_i64(),
        Some(4_070_908_800_000),
        "5B's move-out"
    );

    let out = run(&["--user", "shown"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("5B: ended")
            && text.contains("2099-01-01T00:00:00Z")
            && text.contains("desired now        present"),
        "{text}"
    );

    let out = run(&["--user", "nobody"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state for user nobody"));
}

/// The version order exists twice: in the enqueue script (what production runs) and in
/// `resident::supersedes` (what the pure code and its tests use). For random pairs of records
/// — equal and distinct times, both types, both id orders, and times beyond the allowed clock
/// skew — the script replaces a record exactly when `supersedes` says the newcomer wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enqueue_script_and_supersedes_agree_on_the_version_order() {
    use lease_sync::event::{EventType, Lease, LeaseEvent, Resident};
    use lease_sync::queue::{EnqueueOutcome, Target};
    use lease_sync::resident::{LeaseRecord, future_cutoff, supersedes};

    const PAIRS: usize = 600;
    let skew = Duration::from_secs(300);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261203);
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis);
    let limits = EnqueueLimits {
        dedupe_ttl: Duration::from_secs(60),
        max_clock_skew: skew,
        timeout: Duration::from_secs(5),
    };
    let role = role();
    let target = Target {
        org_id: ORG,
        integration_id: INTEGRATION,
        role: &role,
    };
    let now = time::OffsetDateTime::now_utc();
    // Past, within the skew, and far beyond it: minutes from the cutoff, so the run's own
    // clock cannot tip a case.
    let times = [
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
        now + time::Duration::seconds(60),
        time::macros::datetime!(9999-01-01 0:00 UTC),
    ];
    let (mut replaced, mut kept) = (0, 0);
    for pair in 0..PAIRS {
        let user = format!("vo-{pair}");
        let mut draw = |name: &str| LeaseEvent {
            id: format!("{pair}-{name}{}", rng.random_range(0..2)),
            event_type: if rng.random_bool(0.5) {
                EventType::LeaseSigned
            } else {
                EventType::LeaseEnded
            },
            occurred_at: times[rng.random_range(0..times.len())],
            lease: Lease {
                id: "L".into(),
                property_id: PROPERTY.into(),
                unit: None,
            },
            residents: vec![Resident {
                openapp_user_id: user.clone(),
                external_id: None,
            }],
            residents_by_email: Vec::new(),
            access: None,
        };
        let (first, second) = (draw("a"), draw("b"));
        for event in [&first, &second] {
            let job = DeliveryJob::for_event(event, SOURCE, &user, target, None);
            let outcome = queue
                .enqueue_event(SOURCE, event, &[job], limits)
                .await
                .unwrap();
            let EnqueueOutcome::Queued { jobs, stale, .. } = outcome else {
                panic!("{outcome:?}");
            };
            if std::ptr::eq(event, &second) {
                let recorded = LeaseRecord::from_event(&first, SOURCE);
                let incoming = LeaseRecord::from_event(&second, SOURCE);
                let cutoff = future_cutoff(lease_sync::queue::now_ms(), skew);
                let wins = supersedes(&incoming, Some(&recorded), cutoff);
                assert_eq!(
                    (jobs, stale),
                    if wins { (1, 0) } else { (0, 1) },
                    "pair {pair}: {recorded:?} then {incoming:?}"
                );
                if wins {
                    replaced += 1;
                } else {
                    kept += 1;
                }
            }
        }
    }
    // Both answers occur often enough for the comparison to mean something.
    assert!(
        replaced > PAIRS / 5 && kept > PAIRS / 5,
        "{replaced} replaced, {kept} kept"
    );
}
