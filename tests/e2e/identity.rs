//! People known by email: conflicts as operators see them (CLI, admin API, metrics), with
//! personal data masked unless asked for.

use std::time::Duration;

use lease_sync::identity::ConflictReason;
use lease_sync::queue::conflicts::Conflict;
use reqwest::Method;
use serde_json::Value;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

fn conflict(person: &str, reason: ConflictReason, email: Option<&str>) -> Conflict {
    Conflict {
        source: SOURCE.into(),
        person: person.into(),
        reason,
        email: email.map(str::to_owned),
        name: Some("Ada Lovelace".into()),
        lease_id: "L-1".into(),
        property_id: PROPERTY.into(),
        integration_id: INTEGRATION.into(),
        first_seen: 0,
        last_seen: 0,
        times: 0,
    }
}

async fn admin(app: &TestApp, path: &str) -> Reply {
    request(
        Method::GET,
        &app.admin_url(path),
        &[("authorization", format!("Bearer {ADMIN_TOKEN}"))],
        Vec::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_listed_masked_counted_and_cleared_when_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_redis, _openapp, app, config) = serve_with_config_file(dir.path()).await;
    let queue = app.queue();
    let ambiguous = conflict(
        "tenant:17",
        ConflictReason::AmbiguousEmail,
        Some("ada.lovelace@example.com"),
    );
    assert_eq!(queue.record_conflict(&ambiguous).await.expect("redis"), 1);
    assert_eq!(queue.record_conflict(&ambiguous).await.expect("redis"), 2);
    queue
        .record_conflict(&conflict("tenant:18", ConflictReason::NoEmail, None))
        .await
        .expect("redis");

    // CLI: masked by default, in full on request.
    let config = config.to_str().expect("utf-8").to_owned();
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = ["conflicts", "list", "--config", &config]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        run_lease_sync(args)
    };
    let out = run(&[]).await;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        table.contains("ambiguous_email") && table.contains("no_email"),
        "{table}"
    );
    assert!(
        table.contains("a***@example.com") && table.contains("A. L."),
        "{table}"
    );
    assert!(
        !table.contains("lovelace"),
        "an email or name shown in full: {table}"
    );
    assert!(table.contains("2 conflict(s)"), "{table}");
    let full = run(&["--show-emails", "--json"]).await;
    let listed: Value = serde_json::from_slice(&full.stdout).expect("json");
    assert_eq!(listed[0]["email"], "ada.lovelace@example.com");
    assert_eq!(listed[0]["times"], 2);
    let other_source = run(&["--source", "other-pms"]).await;
    assert!(text(&other_source.stdout).starts_with("no conflicts"));

    // Admin API: the same, masked unless show_emails=true.
    let masked = admin(&app, "/conflicts").await;
    assert_eq!(masked.status, 200, "{masked:?}");
    assert_eq!(masked.json[0]["email"], "a***@example.com");
    assert_eq!(masked.json[0]["name"], "A. L.");
    let shown = admin(&app, "/conflicts?show_emails=true&source=acme-pms").await;
    assert_eq!(shown.json[0]["email"], "ada.lovelace@example.com");
    let bad = admin(&app, "/conflicts?show_emails=yes").await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_query"));

    // Metrics: by reason, never an email.
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", app.admin_addr.expect("admin")))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    for (reason, n) in [
        ("ambiguous_email", 1),
        ("no_email", 1),
        ("no_openapp_user", 0),
    ] {
        assert!(
            metrics.contains(&format!("lease_sync_conflicts{{reason=\"{reason}\"}} {n}")),
            "{reason}: {metrics}"
        );
    }
    assert!(!metrics.contains("example.com"));

    // Resolved: gone.
    assert!(
        queue
            .resolve_conflict(SOURCE, "tenant:17")
            .await
            .expect("redis")
    );
    let left = admin(&app, "/conflicts").await;
    assert_eq!(left.json.as_array().map(Vec::len), Some(1));
}

/// Emails resolve to the one OpenApp user with that exact email (OpenApp's search matches
/// substrings), through the cache; no match is a conflict, or a new user with create_missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_resolve_to_the_exact_user_and_missing_ones_are_created_on_request() {
    use lease_sync::identity::{Resolved, Resolver};
    use lease_sync::openapp::OpenAppClient;
    use lease_sync_sandbox::NewUser;

    let (_redis, openapp, app) = serve().await;
    let ada = openapp
        .sandbox
        .add_user(ORG, NewUser::new("Ada Lovelace", "ada@example.com"))
        .expect("add user");
    // A substring match that must not be taken for Ada.
    openapp
        .sandbox
        .add_user(ORG, NewUser::new("Ada King", "ada@example.com.au"))
        .expect("add user");
    let client = OpenAppClient::new(&app.settings.openapp).expect("client");
    let resolver = Resolver::new(client.clone(), app.queue(), false);

    let found = resolver
        .resolve(ORG, Some(" ADA@example.com "), Some("Ada"))
        .await
        .expect("resolve");
    assert_eq!(found, Resolved::User(ada.id.clone()));
    // Cached: found again without another search.
    let searches = || {
        openapp
            .sandbox
            .calls()
            .iter()
            .filter(|c| c.path.contains("/users/search"))
            .count()
    };
    let before = searches();
    assert_eq!(
        resolver
            .resolve(ORG, Some("ada@example.com"), None)
            .await
            .expect("resolve"),
        Resolved::User(ada.id.clone())
    );
    assert_eq!(
        searches(),
        before,
        "the second resolution came from the cache"
    );

    for (email, reason) in [
        (None, ConflictReason::NoEmail),
        (Some("not an email"), ConflictReason::NoEmail),
        (Some("grace@example.com"), ConflictReason::NoOpenappUser),
    ] {
        assert_eq!(
            resolver
                .resolve(ORG, email, Some("Grace"))
                .await
                .expect("resolve"),
            Resolved::Conflict(reason),
            "{email:?}"
        );
    }

    let creating = Resolver::new(client, app.queue(), true);
    let Resolved::User(grace) = creating
        .resolve(ORG, Some("grace@example.com"), Some("Grace Hopper"))
        .await
        .expect("resolve")
    else {
        panic!("create_missing creates the user");
    };
    let created = openapp
        .sandbox
        .users()
        .into_iter()
        .find(|u| u.id == grace)
        .expect("the sandbox holds the new user");
    assert_eq!(created.email, "grace@example.com");
}

/// A lease-sync event whose residents are given by `openapp_user_id` or by `email`,
/// dated `ms` since the epoch.
fn event_with(event_type: &str, lease: &str, ms: i64, residents: Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": event_type,
        "occurred_at": rfc3339(ms),
        "lease": {"id": lease, "property_id": PROPERTY},
        "residents": residents,
    }))
    .expect("json")
}

fn now_ms() -> i64 {
    now() * 1000
}

/// A native event may name residents by email instead of OpenApp user id: a worker resolves
/// each to the one user with exactly that email and folds the event as if the ids had been
/// sent; an unknown email is a conflict until the user exists, and the lease's next event
/// resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_event_with_emails_reaches_openapp() {
    use lease_sync_sandbox::NewUser;

    let (_redis, openapp, app) = serve().await;
    let add = |name: &str, email: &str| {
        openapp
            .sandbox
            .add_user(ORG, NewUser::new(name, email))
            .expect("add user")
            .id
    };
    let ada = add("Ada Lovelace", "ada@example.com");
    // OpenApp's search matches substrings: this one is found too, and must not be picked.
    let other = add("Ada Other", "ada@example.com.au");
    let present = |user: &str| openapp.sandbox.members(INTEGRATION).contains_key(user);
    let t0 = now_ms() - 60_000;

    let signed = event_with(
        "lease.signed",
        "L-77",
        t0,
        serde_json::json!([
            {"email": "  ADA@Example.com ", "name": "Ada Lovelace"},
            {"openapp_user_id": "user-direct"},
            {"email": "grace@example.com", "name": "Grace Hopper"},
        ]),
    );
    let reply = post_event(&app, "evt-email-1", signed.clone()).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("Ada and the direct user to be added", LIMIT, || async {
        (present(&ada) && present("user-direct")).then_some(())
    })
    .await;
    wait_drained(&app.queue(), LIMIT).await;
    assert!(!present(&other), "only the exact email match gets access");
    let conflicts = app.queue().conflicts(Some(SOURCE)).await.expect("redis");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].reason, ConflictReason::NoOpenappUser);
    assert_eq!(conflicts[0].email.as_deref(), Some("grace@example.com"));
    assert_eq!(conflicts[0].lease_id, "L-77");
    assert!(
        !conflicts[0].person.contains("grace"),
        "the conflict's key holds no email: {}",
        conflicts[0].person
    );

    // The same delivery again is a duplicate and queues nothing.
    let again = post_event(&app, "evt-email-1", signed).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json["status"], "duplicate", "{again:?}");

    // Grace gets an OpenApp user; the lease's next event gives her the door.
    let grace = add("Grace Hopper", "grace@example.com");
    let renewed = event_with(
        "lease.signed",
        "L-77",
        t0 + 1_000,
        serde_json::json!([
            {"email": "ada@example.com"},
            {"openapp_user_id": "user-direct"},
            {"email": "grace@example.com"},
        ]),
    );
    assert_eq!(post_event(&app, "evt-email-2", renewed).await.status, 202);
    wait_until("Grace to be added", LIMIT, || async {
        present(&grace).then_some(())
    })
    .await;
    wait_drained(&app.queue(), LIMIT).await;
    assert!(
        app.queue()
            .conflicts(Some(SOURCE))
            .await
            .expect("redis")
            .is_empty(),
        "resolved conflicts are cleared"
    );

    // The lease ends: everyone it named by email loses the door.
    let ended = event_with(
        "lease.ended",
        "L-77",
        t0 + 2_000,
        serde_json::json!([
            {"email": "ada@example.com"},
            {"email": "grace@example.com"},
            {"openapp_user_id": "user-direct"},
        ]),
    );
    assert_eq!(post_event(&app, "evt-email-3", ended).await.status, 202);
    wait_until("everyone to be removed", LIMIT, || async {
        (!present(&ada) && !present(&grace) && !present("user-direct")).then_some(())
    })
    .await;
    let searches = openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("/users/search"))
        .count();
    assert_eq!(
        searches, 3,
        "Ada and Grace's first events search (Grace twice: no user, then found); the rest is cached"
    );
}

/// Resolving fails like any call: a 503 from OpenApp's search is retried after its
/// Retry-After, and a permanent refusal (400) dead-letters the resolve job, which a replay
/// finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resolution_is_retried_dead_lettered_and_replayed() {
    use lease_sync_sandbox::{Fault, NewUser};

    let (_redis, openapp, app) = serve().await;
    let ada = openapp
        .sandbox
        .add_user(ORG, NewUser::new("Ada Lovelace", "ada@example.com"))
        .expect("add user")
        .id;
    let present = |user: &str| openapp.sandbox.members(INTEGRATION).contains_key(user);

    openapp.sandbox.push_fault_for(
        Method::GET,
        Fault::Status {
            status: 503,
            retry_after: Some("1".into()),
        },
    );
    let body = event_with(
        "lease.signed",
        "L-78",
        now_ms() - 1_000,
        serde_json::json!([{"email": "ada@example.com"}]),
    );
    assert_eq!(post_event(&app, "evt-resolve-1", body).await.status, 202);
    wait_until("Ada to be added after a retry", LIMIT, || async {
        present(&ada).then_some(())
    })
    .await;

    // A 400 is permanent: the resolve job becomes a dead letter.
    let alan = openapp
        .sandbox
        .add_user(ORG, NewUser::new("Alan Turing", "alan@example.com"))
        .expect("add user")
        .id;
    openapp.sandbox.push_fault_for(
        Method::GET,
        Fault::Status {
            status: 400,
            retry_after: None,
        },
    );
    let body = event_with(
        "lease.signed",
        "L-79",
        now_ms() - 1_000,
        serde_json::json!([{"email": "alan@example.com"}]),
    );
    assert_eq!(post_event(&app, "evt-resolve-2", body).await.status, 202);
    let entry = wait_until("the resolve job to be a dead letter", LIMIT, || async {
        let page = app
            .dead_letters()
            .list(&Default::default(), 0, 100)
            .await
            .ok()?;
        page.items
            .into_iter()
            .find(|e| e.event_id == "evt-resolve-2")
    })
    .await;
    assert_eq!(entry.kind, "resolve");
    assert_eq!(entry.lease_id, "L-79");
    assert!(!present(&alan));

    // `dead-letters show` masks the emails of the event it shows unless asked.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    write_config(&app.settings, &config);
    let show = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "dead-letters",
            "show",
            &entry.id,
            "--config",
            config.to_str().expect("utf-8"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        run_lease_sync(args)
    };
    let masked = show(&[]).await;
    assert!(masked.status.success(), "{}", text(&masked.stderr));
    let out = text(&masked.stdout);
    assert!(
        out.contains("a***@example.com") && !out.contains("alan@"),
        "{out}"
    );
    let shown = show(&["--show-emails"]).await;
    assert!(text(&shown.stdout).contains("alan@example.com"));

    let replayed = app
        .dead_letters()
        .replay(&entry.id, "test")
        .await
        .expect("replay");
    assert!(
        matches!(replayed, lease_sync::dead_letters::ReplayOutcome::Replayed),
        "{replayed:?}"
    );
    wait_until("Alan to be added after the replay", LIMIT, || async {
        present(&alan).then_some(())
    })
    .await;
}
