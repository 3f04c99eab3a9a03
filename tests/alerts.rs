//! The Prometheus alerting rules in `deploy/prometheus/alerts.yaml` and their unit tests in
//! `deploy/prometheus/alerts.test.yaml`: promtool checks the rules and runs the tests (each
//! alert fires on some input series, with its labels and annotations, and stays quiet on
//! others), and the rules are checked against what lease-sync exports: every `lease_sync_…`
//! metric an expression names, and every label it matches on, is in the catalog of
//! `src/telemetry/metrics.rs`.
//!
//! promtool comes with Debian's `prometheus` package; `scripts/ensure-promtool.sh` installs it
//! (CI runs it before the tests).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use lease_sync::telemetry::metrics::{CATALOG, Kind, Metric};
use serde_norway::Value;

const RULES: &str = "deploy/prometheus/alerts.yaml";
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yaml";

/// The alerts operators and the runbooks refer to, by name.
const ALERTS: [&str; 9] = [
    "LeaseSyncDeadLetters",
    "LeaseSyncOldestReadyJobTooOld",
    "LeaseSyncOpenAppAuthFailing",
    "LeaseSyncWebhooksSilent",
    "LeaseSyncPullFailing",
    "LeaseSyncConflictsRising",
    "LeaseSyncQueueScrapeFailing",
    "LeaseSyncIntegrationPausedLong",
    "LeaseSyncLogLinesDropped",
];

/// Labels the scrape adds to every series (target labels), which rules may group by.
const TARGET_LABELS: [&str; 3] = ["namespace", "job", "instance"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(relative: &str) -> Value {
    let path = repo().join(relative);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value:?}"))
}

fn list<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: expected a list, found {value:?}"))
}

/// The rules of the one group, `lease-sync`.
fn rules() -> Vec<Value> {
    let file = yaml(RULES);
    let groups = list(&file["groups"], "groups");
    assert_eq!(groups.len(), 1, "{RULES}: one group");
    assert_eq!(text(&groups[0]["name"], "group name"), "lease-sync");
    list(&groups[0]["rules"], "rules").to_vec()
}

/// Runs `promtool` with `args` in the repository and panics with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed (not found on PATH); run scripts/ensure-promtool.sh, \
             which installs Debian's prometheus package"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    assert!(
        output.status.success(),
        "`promtool {}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn promtool_checks_the_rules() {
    promtool(&["check", "rules", RULES]);
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    promtool(&["test", "rules", RULE_TESTS]);
}

/// The catalog entry of `name`: the metric itself, or the histogram whose `_bucket`, `_sum` or
/// `_count` series it is.
fn catalog_metric(name: &str) -> Option<&'static Metric> {
    CATALOG.iter().find(|m| m.name == name).or_else(|| {
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            CATALOG
                .iter()
                .find(|m| m.name == base && m.kind == Kind::Histogram)
        })
    })
}

/// Every `lease_sync_…` metric in `expr`, with the label names of the matchers that follow it
/// (`name{a="x", b!~"y"}` gives `name` and `[a, b]`).
fn metrics_in(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("lease_sync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut labels = Vec::new();
        if let Some(matchers) = tail[end..].strip_prefix('{') {
            let close = matchers.find('}').expect("unclosed label matchers");
            // Label values in these rules hold no commas or operators.
            for matcher in matchers[..close].split(',') {
                let label = matcher.split(['=', '!']).next().unwrap_or_default().trim();
                labels.push(label.to_owned());
            }
        }
        out.push((name, labels));
        rest = &tail[end..];
    }
    out
}

/// Label names in `by (…)` and `on (…)` clauses of `expr`.
fn grouping_labels_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by", "on", "without", "ignoring"] {
        let mut rest = expr;
        while let Some(at) = rest.find(&format!("{keyword} (")) {
            let preceded_by_word = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let tail = &rest[at + keyword.len() + 2..];
            let close = tail.find(')').expect("unclosed grouping");
            if !preceded_by_word {
                out.extend(tail[..close].split(',').map(|l| l.trim().to_owned()));
            }
            rest = &tail[close..];
        }
    }
    out
}

#[test]
fn the_helpers_find_metrics_and_labels() {
    assert_eq!(
        metrics_in(
            r#"sum by (job) (rate(lease_sync_ingest_duration_seconds_bucket{outcome="accepted"}[5m]))"#
        ),
        [(
            "lease_sync_ingest_duration_seconds_bucket".to_owned(),
            vec!["outcome".to_owned()]
        )]
    );
    assert_eq!(
        metrics_in(r#"lease_sync_a_total{x!="1", y=~"2"} / lease_sync_b"#),
        [
            (
                "lease_sync_a_total".to_owned(),
                vec!["x".to_owned(), "y".to_owned()]
            ),
            ("lease_sync_b".to_owned(), vec![])
        ]
    );
    assert_eq!(
        catalog_metric("lease_sync_ingest_duration_seconds_count").map(|m| m.name),
        Some("lease_sync_ingest_duration_seconds")
    );
    assert!(catalog_metric("lease_sync_jobs_total_count").is_none());
    assert!(catalog_metric("lease_sync_nope_total").is_none());
    assert_eq!(
        grouping_labels_in("max by (job, reason) (x) > on (job) y and max(z)"),
        ["job", "reason", "job"]
    );
}

#[test]
fn the_rules_use_only_exported_metrics_and_labels() {
    for rule in rules() {
        let alert = text(&rule["alert"], "alert").to_owned();
        let expr = text(&rule["expr"], &alert);
        let metrics = metrics_in(expr);
        assert!(!metrics.is_empty(), "{alert} queries no lease-sync metric");
        let mut allowed: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
        for (name, labels) in metrics {
            let metric = catalog_metric(&name).unwrap_or_else(|| {
                panic!("{alert} queries {name}, which is not in src/telemetry/metrics.rs")
            });
            for label in labels {
                assert!(
                    metric.labels.contains(&label.as_str()),
                    "{alert} matches {name} on label `{label}`, which it does not have \
                     (its labels: {:?})",
                    metric.labels
                );
            }
            allowed.extend(metric.labels.iter().copied());
        }
        for label in grouping_labels_in(expr) {
            assert!(
                allowed.contains(label.as_str()),
                "{alert} groups or matches by `{label}`, which neither its metrics nor the \
                 scrape ({TARGET_LABELS:?}) provide"
            );
        }
    }
}

#[test]
fn every_alert_is_there_with_severity_and_what_to_do() {
    let rules = rules();
    let names: Vec<&str> = rules.iter().map(|r| text(&r["alert"], "alert")).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "duplicate alert names: {names:?}"
    );
    for alert in ALERTS {
        assert!(names.contains(&alert), "{RULES} has no alert {alert}");
    }
    let readme = fs::read_to_string(repo().join("README.md")).expect("README.md");
    for rule in &rules {
        let alert = text(&rule["alert"], "alert");
        let severity = text(&rule["labels"]["severity"], alert);
        assert!(
            matches!(severity, "page" | "ticket"),
            "{alert}: severity {severity}"
        );
        let summary = text(&rule["annotations"]["summary"], alert);
        let description = text(&rule["annotations"]["description"], alert);
        assert!(!summary.is_empty(), "{alert}: empty summary");
        // What to run: a lease-sync command the README documents, or an admin endpoint.
        let commands: Vec<&str> = description
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|quoted| quoted.starts_with("lease-sync "))
            .collect();
        assert!(
            !commands.is_empty() || description.contains("/admin/"),
            "{alert}: the description names no command or admin endpoint: {description}"
        );
        for command in commands {
            let words: Vec<&str> = command
                .split_whitespace()
                .take_while(|w| {
                    !w.starts_with('-') && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                })
                .collect();
            let prefix = words.join(" ");
            assert!(
                readme.contains(&prefix),
                "{alert}: `{command}`: README.md does not document `{prefix}`"
            );
        }
    }
}

#[test]
fn every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() {
    let tests = yaml(RULE_TESTS);
    let rule_files: Vec<&str> = list(&tests["rule_files"], "rule_files")
        .iter()
        .map(|f| text(f, "rule_files"))
        .collect();
    assert_eq!(rule_files, ["alerts.yaml"], "{RULE_TESTS} tests {RULES}");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in list(&tests["tests"], "tests") {
        let Some(cases) = test.get("alert_rule_test") else {
            continue;
        };
        for case in list(cases, "alert_rule_test") {
            let alert = text(&case["alertname"], "alertname").to_owned();
            match case.get("exp_alerts").map(|e| list(e, "exp_alerts")) {
                Some(expected) if !expected.is_empty() => {
                    for exp in expected {
                        assert!(
                            exp.get("exp_annotations").is_some(),
                            "{RULE_TESTS}: a firing {alert} without its annotations"
                        );
                    }
                    fires.insert(alert);
                }
                _ => {
                    quiet.insert(alert);
                }
            }
        }
    }
    for rule in rules() {
        let alert = text(&rule["alert"], "alert");
        assert!(fires.contains(alert), "{RULE_TESTS}: {alert} never fires");
        assert!(
            quiet.contains(alert),
            "{RULE_TESTS}: no case where {alert} stays quiet"
        );
    }
}
