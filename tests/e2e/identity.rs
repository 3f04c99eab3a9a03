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
