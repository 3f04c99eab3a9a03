//! What operators watch: Prometheus metrics at `/metrics`, `/healthz` and `/readyz` on the
//! admin listener (the only listener of a `work` process), and `lease-sync healthcheck`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use lease_sync::config::{LogFormat, Role};
use lease_sync::queue::rate_limit::RateLimit;
use lease_sync::telemetry::metrics::{CATALOG, Kind};
use lease_sync_sandbox::Fault;
use serde_json::json;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(app: &TestApp) -> (String, BTreeMap<String, f64>) {
    let url = format!("http://{}/metrics", app.admin_addr.expect("admin listens"));
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        response.headers()
    );
    let text = response.text().await.expect("body");
    let parsed = samples(&text);
    (text, parsed)
}

/// The value of the series whose name and labels include all of `parts` (0 when absent).
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

fn body_at(event_type: &str, lease: &str, user: &str, occurred_at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": event_type,
        "occurred_at": occurred_at,
        "lease": {"id": lease, "property_id": PROPERTY},
        "residents": [{"openapp_user_id": user}],
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_documented_metric_and_move_as_the_pipeline_runs() {
    // A scheduled (dry-run) reconciliation from a file, for its run counter.
    let dir = tempfile::tempdir().expect("tempdir");
    let leases = dir.path().join("leases.csv");
    std::fs::write(
        &leases,
        format!("lease_id,property_id,openapp_user_id,starts_at,ends_at\nL-m1,{PROPERTY},u-m1,,\n"),
    )
    .expect("write");
    let (_redis, openapp, app) = serve_with(|c| {
        c.reconcile.every = Some("1h".into());
        c.reconcile.from = Some(leases.display().to_string());
        c.reconcile.source = Some(SOURCE.into());
    })
    .await;
    let buildium = FakeBuildium::start(0).await;
    let (_, before) = scrape(&app).await;
    let source = format!("source=\"{SOURCE}\"");

    // Accepted and converged; then the same id again (duplicate) and a forgery.
    let body = event_body("lease.signed", "L-m1", &["u-m1"]);
    assert_eq!(post_event(&app, "evt-m1", body.clone()).await.status, 202);
    assert_eq!(post_event(&app, "evt-m1", body.clone()).await.status, 200);
    let forged = app
        .post(
            SOURCE,
            &signed(FOREIGN_SECRET, "evt-m2", now(), &body),
            body,
        )
        .await;
    assert_eq!(forged.code(), "invalid_signature");
    // An older event for the same resident is stale.
    let old = body_at("lease.ended", "L-m1", "u-m1", "2020-01-01T00:00:00Z");
    let reply = post_event(&app, "evt-m3", old).await;
    assert_eq!(reply.json["stale"], 1, "{reply:?}");
    // A record dated in 9999, as ingest wrote them before it refused such events, is
    // replaced by the next event of its lease.
    let from_the_future = body_at("lease.signed", "L-m7", "u-m7", "9999-01-01T00:00:00Z");
    fold_without_ingest_checks(&app, "evt-m7", &from_the_future).await;
    let current = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let current = current
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let reply = post_event(
        &app,
        "evt-m7b",
        body_at("lease.ended", "L-m7", "u-m7", &current),
    )
    .await;
    assert_eq!(reply.json["jobs"], 1, "{reply:?}");
    // Its convergences must not meet the faults scripted below.
    wait_drained(&app.queue(), LIMIT).await;
    // One 503 then success (a retry), and one permanent 400 (a dead letter).
    openapp.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let body = event_body("lease.signed", "L-m4", &["u-m4"]);
    assert_eq!(post_event(&app, "evt-m4", body).await.status, 202);
    wait_until("the retried add", LIMIT, || async {
        openapp
            .sandbox
            .members(INTEGRATION)
            .contains_key("u-m4")
            .then_some(())
    })
    .await;
    openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    let body = event_body("lease.signed", "L-m5", &["u-m5"]);
    assert_eq!(post_event(&app, "evt-m5", body).await.status, 202);
    wait_until("a dead letter", LIMIT, || async {
        (app.queue().counts().await.ok()?.dead >= 1).then_some(())
    })
    .await;
    // A lease that starts in a year: granted at its start, a convergence is scheduled.
    let starts = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    let fmt = &time::format_description::well_known::Rfc3339;
    let future = serde_json::to_vec(&json!({
        "type": "lease.signed",
        "occurred_at": "2026-11-22T10:15:00Z",
        "lease": {"id": "L-m6", "property_id": PROPERTY},
        "residents": [{"openapp_user_id": "u-m6"}],
        "access": {"starts_at": starts.format(fmt).expect("format")},
    }))
    .expect("json");
    assert_eq!(post_event(&app, "evt-m6", future).await.status, 202);
    // Drained but for the convergence a year out.
    wait_until("the queue to drain", LIMIT, || async {
        let queue = app.queue();
        let c = queue.counts().await.ok()?;
        let pending = queue
            .pending_convergences(lease_sync::queue::now_ms())
            .await
            .ok()?;
        (c.ready == 0 && c.in_flight == 0 && c.scheduled == 1 && pending == 1).then_some(())
    })
    .await;

    // Buildium reads through the rate every worker process shares: a lease, and a deleted one.
    let lease = buildium.lease(17, 1, BuildiumLeaseStatus::Active);
    let client = buildium.client().with_rate_limiter(
        app.queue()
            .rate_limiter("buildium", RateLimit::per_second(10)),
    );
    assert!(client.get_lease(lease).await.expect("read").is_some());
    assert_eq!(client.get_lease(lease + 1_000).await, Ok(None));

    let (text, after) = scrape(&app).await;
    // Every documented metric is described and has at least one sample.
    for metric in CATALOG {
        assert!(
            text.contains(&format!("# HELP {} ", metric.name)),
            "{} is not described",
            metric.name
        );
        let sample = match metric.kind {
            Kind::Histogram => format!("{}_bucket", metric.name),
            _ => metric.name.to_owned(),
        };
        assert!(
            after
                .keys()
                .any(|s| s.split('{').next() == Some(sample.as_str())),
            "{} has no sample",
            metric.name
        );
    }
    // Values moved by at least what this test did (other tests share the recorder).
    let grew = |name: &str, labels: &[&str], by: f64| {
        let delta = value(&after, name, labels) - value(&before, name, labels);
        assert!(
            delta >= by,
            "{name}{labels:?} grew by {delta}, expected ≥ {by}"
        );
    };
    let webhooks = "lease_sync_webhooks_received_total";
    grew(webhooks, &[&source, "outcome=\"accepted\""], 4.0);
    grew(webhooks, &[&source, "outcome=\"duplicate\""], 1.0);
    grew(webhooks, &[&source, "outcome=\"invalid_signature\""], 1.0);
    grew(
        "lease_sync_ingest_duration_seconds_count",
        &["outcome=\"accepted\""],
        4.0,
    );
    grew("lease_sync_stale_events_total", &[&source], 1.0);
    grew(
        "lease_sync_future_versions_overridden_total",
        &[&source],
        1.0,
    );
    grew("lease_sync_jobs_total", &["outcome=\"converged\""], 2.0);
    grew("lease_sync_jobs_total", &["outcome=\"retried\""], 1.0);
    grew(
        "lease_sync_jobs_total",
        &["outcome=\"dead_lettered\"", "reason=\"permanent\""],
        1.0,
    );
    grew(
        "lease_sync_openapp_responses_total",
        &["operation=\"add\"", "class=\"2xx\""],
        2.0,
    );
    grew(
        "lease_sync_openapp_responses_total",
        &["operation=\"add\"", "class=\"5xx\""],
        1.0,
    );
    grew(
        "lease_sync_openapp_request_duration_seconds_count",
        &["operation=\"add\""],
        4.0,
    );
    let buildium = "lease_sync_buildium_requests_total";
    grew(buildium, &["operation=\"get_lease\"", "class=\"2xx\""], 1.0);
    grew(buildium, &["operation=\"get_lease\"", "class=\"4xx\""], 1.0);
    grew(
        "lease_sync_buildium_request_duration_seconds_count",
        &["operation=\"get_lease\""],
        2.0,
    );
    grew(
        "lease_sync_buildium_rate_limit_wait_seconds_count",
        &[],
        2.0,
    );
    // Gauges read this instance's Redis at scrape time.
    assert_eq!(
        value(&after, "lease_sync_queue_jobs", &["state=\"dead\""]),
        1.0
    );
    assert_eq!(
        value(&after, "lease_sync_queue_jobs", &["state=\"ready\""]),
        0.0
    );
    assert_eq!(value(&after, "lease_sync_scheduled_convergences", &[]), 1.0);
    assert_eq!(value(&after, "lease_sync_queue_scrape_ok", &[]), 1.0);
    // No user, lease or event id ever becomes a label.
    for id in ["u-m1", "L-m1", "evt-m1", "u-m6"] {
        assert!(!text.contains(id), "{id} appears in /metrics");
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_sources_share_one_label() {
    let (_redis, _openapp, app) = serve().await;
    let (_, before) = scrape(&app).await;
    for n in 0..3 {
        let reply = app.post(&format!("scanner-{n}"), &[], b"{}".to_vec()).await;
        assert_eq!(reply.code(), "unknown_source");
    }
    let (text, after) = scrape(&app).await;
    assert!(!text.contains("scanner-"), "a path became a label");
    let labels = ["source=\"unknown\"", "outcome=\"unknown_source\""];
    let name = "lease_sync_webhooks_received_total";
    assert!(value(&after, name, &labels) - value(&before, name, &labels) >= 3.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_answers_health_probes_and_the_healthcheck_command() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    let app = TestApp::start(&config, Role::Work).await;
    assert!(app.addr.is_none(), "a worker has no webhook listener");
    let admin = app.admin_addr.expect("admin listens");

    let live = request(
        reqwest::Method::GET,
        &format!("http://{admin}/healthz"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!((live.status, &live.json["status"]), (200, &json!("ok")));
    let ready = wait_until("workers running", LIMIT, || async {
        let reply = request(
            reqwest::Method::GET,
            &format!("http://{admin}/readyz"),
            &[],
            Vec::new(),
        )
        .await;
        (reply.status == 200).then_some(reply)
    })
    .await;
    assert_eq!(ready.json["workers"], "running");
    assert_eq!(ready.json["redis"], "ok");

    let healthcheck = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lease-sync"))
            .arg("healthcheck")
            .args(args)
            .output()
            .expect("runs")
    };
    let ok = healthcheck(&["--url", &format!("http://{admin}/readyz")]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // Derived from the configuration: the admin listener's address.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    config.admin.listen = admin;
    write_config(&config, &path);
    let derived = healthcheck(&["--config", path.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&derived.stdout);
    assert!(derived.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("http://{admin}/readyz: 200")),
        "{stdout}"
    );

    // Redis gone: alive, not ready, and the command says so with exit 1.
    drop(redis);
    let not_ready = wait_until("not ready", LIMIT, || async {
        let out = healthcheck(&["--url", &format!("http://{admin}/readyz")]);
        (!out.status.success()).then_some(out)
    })
    .await;
    assert!(String::from_utf8_lossy(&not_ready.stdout).contains("503"));
    let live = healthcheck(&["--url", &format!("http://{admin}/healthz")]);
    assert!(live.status.success());
    app.stop().await;
    // Nobody listening at all.
    let gone = healthcheck(&[
        "--url",
        &format!("http://{admin}/readyz"),
        "--timeout-ms",
        "500",
    ]);
    assert!(!gone.status.success());
}

/// `[log] format = "json"`: every line is one JSON object; lines about an event carry
/// `event.id`, `source`, `lease.id` (and `attempt` in workers); OpenApp failures carry the
/// status and OpenApp's request id; no body is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_documented_fields() {
    use serde_json::Value;

    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    config.http.listen = loopback(port);
    config.log.format = LogFormat::Json;
    let mut serve = LeaseSyncProcess::spawn(dir.path(), "serve", &["serve"], Some(&config));
    wait_ready(port, LIMIT).await;

    openapp.sandbox.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let body = event_body("lease.signed", "L-json", &["u-json"]);
    let url = format!("http://127.0.0.1:{port}/webhooks/{SOURCE}");
    let reply = post(&url, &signed(SECRET, "evt-json-1", now(), &body), body).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    serve
        .wait_for_log("delivered: add user u-json", LIMIT)
        .await;
    assert!(serve.terminate(LIMIT).await.success());

    let log = serve.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "no {field}: {line}");
        }
    }
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{log}"))
    };
    let ingest = find("webhook queued");
    assert_eq!(ingest["event.id"], "evt-json-1");
    assert_eq!(ingest["source"], SOURCE);
    assert_eq!(ingest["lease.id"], "L-json");
    assert_eq!(ingest["http.status"], 202);
    let failed = find("failed, will retry");
    assert_eq!(failed["event.id"], "evt-json-1");
    assert_eq!(failed["lease.id"], "L-json");
    assert_eq!(failed["source"], SOURCE);
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["http.status"], 503);
    assert!(
        failed["openapp.request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{failed}"
    );
    let delivered = find("delivered: add user u-json");
    assert_eq!(delivered["event.id"], "evt-json-1");
    assert_eq!(delivered["attempt"], 2);
    // Bodies are never logged: a field only the body has stays out.
    assert!(
        !log.contains("\"external_id\"") && !log.contains("T-1"),
        "a body was logged"
    );
}
