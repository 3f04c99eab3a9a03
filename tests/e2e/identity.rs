//! People known by email: conflicts as operators see them (CLI, admin API, metrics), with
//! personal data masked unless asked for.

use std::time::Duration;

use lease_sync::identity::ConflictReason;
use lease_sync::queue::conflicts::Conflict;
use reqwest::Method;
use serde_json::Value;

use crate::support::*;

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
