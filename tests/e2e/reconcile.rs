//! Reconciliation: a file of a source's active leases against OpenApp and lease-sync's state,
//! from the CLI (dry run, apply, prune; CSV and JSON) and on a schedule inside `serve`.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use lease_sync::config::Role;
use serde_json::{Value, json};

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

const HEADER: &str = "lease_id,property_id,openapp_user_id,starts_at,ends_at\n";

/// `reconcile --config <config> --source SOURCE --from <from>` plus `extra`.
async fn reconcile(config: &Path, from: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = [
        "reconcile",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--source",
        SOURCE,
        "--from",
        from.to_str().expect("utf-8 path"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    run_lease_sync(args).await
}

/// The `--json` plan printed by a successful run.
fn plan_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "reconcile failed:\n{}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// User ids of one action in the (single) building of a JSON plan.
fn users(plan: &Value, action: &str) -> Vec<String> {
    plan["buildings"][0][action]
        .as_array()
        .expect("an array")
        .iter()
        .map(|entry| {
            entry["user_id"]
                .as_str()
                .or(entry.as_str())
                .expect("a user id")
                .to_owned()
        })
        .collect()
}

fn counts(plan: &Value) -> [u64; 4] {
    ["add", "remove", "unmanaged", "unchanged"].map(|k| plan["counts"][k].as_u64().expect(k))
}

fn present(openapp: &FakeOpenApp, user: &str) -> bool {
    openapp.sandbox.members(INTEGRATION).contains_key(user)
}

/// Calls that change OpenApp (the plan itself only lists).
fn changes(openapp: &FakeOpenApp) -> usize {
    openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.method != "GET")
        .count()
}

/// A signed event for `user` on `lease` that happened a minute ago.
fn signed_event(lease: &str, user: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "lease.signed",
        "occurred_at": rfc3339(lease_sync::queue::now_ms() - 60_000),
        "lease": {"id": lease, "property_id": PROPERTY},
        "residents": [{"openapp_user_id": user}],
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_drift_is_planned_then_applied_and_unmanaged_people_are_pruned_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, openapp, app, config) = serve_with_config_file(dir.path()).await;
    let guest_role = format!("virtual_access:integration:{INTEGRATION}:guest");

    // B was added through lease-sync; C and D by hand; E holds another role.
    assert_eq!(
        post_event(&app, "evt-b", signed_event("L-B", "user-b"))
            .await
            .status,
        202
    );
    wait_until("B to be added", LIMIT, || async {
        present(&openapp, "user-b").then_some(())
    })
    .await;
    wait_drained(&app.queue(), LIMIT).await;
    for user in ["user-c", "user-d"] {
        openapp.sandbox.add_member(ORG, INTEGRATION, user, &role());
    }
    openapp
        .sandbox
        .add_member(ORG, INTEGRATION, "user-e", &guest_role);

    // The truth: A and D hold active leases; F's starts next year; B and C hold none.
    let csv = dir.path().join("leases.csv");
    std::fs::write(
        &csv,
        format!(
            "{HEADER}L-A,{PROPERTY},user-a,2020-01-01T00:00:00Z,\nL-D,{PROPERTY},user-d,,\nL-F,{PROPERTY},user-f,{},\n",
            rfc3339(lease_sync::queue::now_ms() + 365 * 86_400_000)
        ),
    )
    .unwrap();

    // Dry run: exactly that plan, and nothing changes.
    let before = changes(&openapp);
    let plan = plan_of(&reconcile(&config, &csv, &["--json"]).await);
    assert_eq!(counts(&plan), [1, 1, 1, 1], "{plan:#}");
    assert_eq!(users(&plan, "add"), ["user-a"]);
    assert_eq!(users(&plan, "remove"), ["user-b"]);
    assert_eq!(users(&plan, "unmanaged"), ["user-c"]);
    assert_eq!(users(&plan, "unchanged"), ["user-d"]);
    assert_eq!(
        plan["buildings"][0]["remove"][0]["leases"][0]["lease_id"],
        "L-B"
    );
    assert_eq!(
        (plan["dry_run"].as_bool(), plan["enqueued"].is_null()),
        (Some(true), true)
    );
    let out = reconcile(&config, &csv, &[]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("add 1, remove 1, unmanaged 1 (kept), unchanged 1"),
        "{stdout}"
    );
    assert!(stdout.contains("kept (unmanaged)"), "{stdout}");
    assert!(text(&out.stderr).contains("dry run: nothing was changed"));
    let counts_now = app.queue().counts().await.unwrap();
    assert_eq!(
        (counts_now.ready, counts_now.scheduled),
        (0, 0),
        "nothing queued"
    );
    assert_eq!(
        changes(&openapp),
        before,
        "a dry run calls nothing but the list"
    );
    assert!(!present(&openapp, "user-a") && present(&openapp, "user-b"));

    // Apply: through the pipeline, A added, B removed, C kept, D and E untouched.
    let out = reconcile(&config, &csv, &["--apply"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("enqueued 2 event(s), 2 convergence job(s)"),
        "{stdout}"
    );
    wait_until("A added and B removed", LIMIT, || async {
        (present(&openapp, "user-a") && !present(&openapp, "user-b")).then_some(())
    })
    .await;
    wait_drained(&app.queue(), LIMIT).await;
    for user in ["user-c", "user-d", "user-e"] {
        assert!(present(&openapp, user), "{user} kept");
    }
    assert!(
        !present(&openapp, "user-f"),
        "a future lease grants nothing yet"
    );
    let b = app
        .queue()
        .resident(INTEGRATION, "user-b")
        .await
        .unwrap()
        .expect("B's state");
    assert!(
        b.leases["L-B"].event_id.starts_with("reconcile-"),
        "ended by a synthetic event"
    );

    // Converged: only the unmanaged person is left, and kept.
    let plan = plan_of(&reconcile(&config, &csv, &["--json"]).await);
    assert_eq!(counts(&plan), [0, 0, 1, 2], "{plan:#}");

    // Pruning removes the person lease-sync never added, and nobody else.
    let plan =
        plan_of(&reconcile(&config, &csv, &["--apply", "--prune-unmanaged", "--json"]).await);
    assert_eq!(counts(&plan), [0, 0, 1, 2]);
    assert_eq!(plan["prune_unmanaged"], true);
    assert_eq!(
        plan["enqueued"]["events"][0]["lease_id"],
        "reconcile:user-c"
    );
    wait_until("C pruned", LIMIT, || async {
        (!present(&openapp, "user-c")).then_some(())
    })
    .await;
    wait_drained(&app.queue(), LIMIT).await;
    for user in ["user-a", "user-d", "user-e"] {
        assert!(present(&openapp, user), "{user} kept");
    }
    assert_eq!(
        app.queue().counts().await.unwrap().dead,
        0,
        "no dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_files_work_and_a_bad_row_is_named_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, openapp, app, config) = serve_with_config_file(dir.path()).await;

    // JSON, told by its extension and, without one, by its first character.
    let rows = json!([
        {"lease_id": "L-J", "property_id": PROPERTY, "openapp_user_id": "user-j", "starts_at": null, "note": "ignored"},
    ]);
    for name in ["leases.json", "leases-export"] {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&rows).unwrap()).unwrap();
        let plan = plan_of(&reconcile(&config, &path, &["--json"]).await);
        assert_eq!(users(&plan, "add"), ["user-j"], "{name}");
    }

    // A bad row anywhere: exit 1, the row named, nothing applied.
    let bad_csv = dir.path().join("bad.csv");
    std::fs::write(
        &bad_csv,
        format!("{HEADER}L-1,{PROPERTY},user-1,,\nL-2,{PROPERTY},not a user,,\n"),
    )
    .unwrap();
    let bad_json = dir.path().join("bad.json");
    std::fs::write(
        &bad_json,
        json!([
            {"lease_id": "L-1", "property_id": PROPERTY, "openapp_user_id": "user-1"},
            {"lease_id": "L-2", "property_id": "P-UNKNOWN", "openapp_user_id": "user-2"},
        ])
        .to_string(),
    )
    .unwrap();
    for (path, needle) in [
        (&bad_csv, "line 3: openapp_user_id"),
        (
            &bad_json,
            "entry [1]: property_id: `P-UNKNOWN` is not mapped",
        ),
    ] {
        let out = reconcile(&config, path, &["--apply"]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    let missing = reconcile(&config, &dir.path().join("nope.csv"), &[]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("cannot read"),
        "{}",
        text(&missing.stderr)
    );

    let counts = app.queue().counts().await.unwrap();
    assert_eq!(
        (counts.ready, counts.scheduled, counts.done),
        (0, 0, 0),
        "nothing queued"
    );
    assert_eq!(changes(&openapp), 0);
    assert!(
        app.queue()
            .residents_of(INTEGRATION)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reconciles_on_its_schedule_without_any_cli_call() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    openapp
        .sandbox
        .add_member(ORG, INTEGRATION, "user-manual", &role());
    let csv = dir.path().join("leases.csv");
    let write = |users: &[&str]| {
        let mut body = HEADER.to_owned();
        for user in users {
            body.push_str(&format!("L-{user},{PROPERTY},{user},,\n"));
        }
        // Replace atomically: a run never reads half a file.
        let tmp = dir.path().join("leases.csv.tmp");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, &csv).unwrap();
    };
    write(&["user-1", "user-2"]);
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    config.reconcile.every = Some("1s".into());
    config.reconcile.from = Some(csv.display().to_string());
    config.reconcile.source = Some(SOURCE.into());
    let app = TestApp::start(&config, Role::Serve).await;

    wait_until("the scheduled run to add both", LIMIT, || async {
        (present(&openapp, "user-1") && present(&openapp, "user-2")).then_some(())
    })
    .await;
    // user-2's lease is gone from the next export: the next run removes them.
    write(&["user-1"]);
    wait_until("the next run to remove user-2", LIMIT, || async {
        (!present(&openapp, "user-2")).then_some(())
    })
    .await;
    assert!(present(&openapp, "user-1"));
    assert!(
        present(&openapp, "user-manual"),
        "unmanaged people are kept by default"
    );
    // Each run is counted for alerting (lease_sync_reconcile_runs_total).
    let text = reqwest::get(format!(
        "http://{}/metrics",
        app.admin_addr.expect("admin listens")
    ))
    .await
    .expect("scrape")
    .text()
    .await
    .expect("body");
    let runs: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("lease_sync_reconcile_runs_total{")
                && l.contains("outcome=\"done\"")
                && l.contains(&format!("source=\"{SOURCE}\""))
        })
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or_else(|| panic!("no done runs of {SOURCE} in:\n{text}"));
    assert!(runs >= 2.0, "{runs} runs done");
    // The console's overview shows when it last ran.
    let last = app
        .queue()
        .last_file_reconcile(SOURCE)
        .await
        .expect("redis")
        .expect("a run was recorded");
    assert!((now() - last).abs() < 300, "{last}");
    app.stop().await;
}
