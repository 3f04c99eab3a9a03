//! Prometheus metrics: every metric lease-sync exports, its help text, and the recorder.
//!
//! Code records through the `metrics` facade (`metrics::counter!(WEBHOOKS, …)`); the admin
//! listener renders the Prometheus text at `GET /metrics`. Labels are low-cardinality by
//! construction: source names (from configuration; unknown ones become `unknown`), outcome
//! and error codes, operations, status classes — never user, lease or event ids.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Webhooks received, by `source` and `outcome` (`accepted`, `duplicate` or the rejection
/// code, e.g. `invalid_signature`).
pub const WEBHOOKS: &str = "lease_sync_webhooks_received_total";
/// Time from a webhook's arrival to its answer, by `outcome` class (`accepted`,
/// `duplicate`, `rejected`, `unavailable`).
pub const INGEST_DURATION: &str = "lease_sync_ingest_duration_seconds";
/// Per-resident events ignored because they were older than what the lease recorded.
pub const STALE_EVENTS: &str = "lease_sync_stale_events_total";
/// Lease records dated beyond their source's clock skew that an event replaced, by `source`.
pub const FUTURE_VERSIONS_OVERRIDDEN: &str = "lease_sync_future_versions_overridden_total";
/// Job attempts by `outcome` (`converged`, `retried`, `dead_lettered`, `deferred`, `held`) and
/// `reason` (the dead-letter reason, empty otherwise).
pub const JOBS: &str = "lease_sync_jobs_total";
/// OpenApp call latency, by `operation` (`add`, `remove`, `list`).
pub const OPENAPP_DURATION: &str = "lease_sync_openapp_request_duration_seconds";
/// OpenApp call results, by `operation` and `class` (`2xx`, `4xx`, `5xx`, `timeout`,
/// `connect`, `io`).
pub const OPENAPP_RESPONSES: &str = "lease_sync_openapp_responses_total";
/// OpenApp answers 401 or 403: the API key or its roles need fixing.
pub const OPENAPP_AUTH_FAILURES: &str = "lease_sync_openapp_auth_failures_total";
/// Buildium API requests answered or failed, by `operation` (`get_lease`, `get_tenant`,
/// `list_leases`) and `class` (`2xx`, `3xx`, `4xx`, `429`, `5xx`, `timeout`, `connect`, `io`,
/// `body`).
pub const BUILDIUM_REQUESTS: &str = "lease_sync_buildium_requests_total";
/// Buildium API request latency, by `operation`; the wait for a rate-limit slot is not in it.
pub const BUILDIUM_DURATION: &str = "lease_sync_buildium_request_duration_seconds";
/// Time a Buildium request waited for a slot of the rate shared by every worker process.
pub const BUILDIUM_RATE_LIMIT_WAIT: &str = "lease_sync_buildium_rate_limit_wait_seconds";
/// Jobs in the queue by `state` (`ready`, `scheduled`, `in_flight`, `dead`, `held`), read
/// from Redis at scrape time.
pub const QUEUE_JOBS: &str = "lease_sync_queue_jobs";
/// Age of the oldest ready job, 0 when none is waiting; read at scrape time.
pub const QUEUE_OLDEST_READY_AGE: &str = "lease_sync_queue_oldest_ready_age_seconds";
/// People a source names who have no OpenApp user yet, by `reason` (`no_email`,
/// `no_openapp_user`, `ambiguous_email`); read from Redis at scrape time.
pub const CONFLICTS: &str = "lease_sync_conflicts";
/// Scheduled convergences (lease windows opening or closing) still to come.
pub const SCHEDULED_CONVERGENCES: &str = "lease_sync_scheduled_convergences";
/// OpenApp integrations paused by an operator (their convergences held); read at scrape time.
pub const INTEGRATIONS_PAUSED: &str = "lease_sync_integrations_paused";
/// Differences reconciliation found between the source of truth and OpenApp, by `kind`
/// (`add`, `remove`, `unmanaged`).
pub const RECONCILE_DRIFT: &str = "lease_sync_reconcile_drift_total";
/// Scheduled reconciliation runs (pulls), by source and outcome.
pub const RECONCILE_RUNS: &str = "lease_sync_reconcile_runs_total";
/// Whether the last scrape could read the queue from Redis (1) or not (0).
pub const QUEUE_SCRAPE_OK: &str = "lease_sync_queue_scrape_ok";
/// Jobs a worker process may take beyond its calls now, following their pace
/// ([`crate::queue::pace`]).
pub const WORKER_JOBS_AHEAD: &str = "lease_sync_worker_jobs_ahead";
/// Jobs a worker process fetched and has not let go of.
pub const WORKER_JOBS_TAKEN: &str = "lease_sync_worker_jobs_taken";
/// Open connections of a listener, by `listener` (`webhook`, `admin`).
pub const HTTP_CONNECTIONS: &str = "lease_sync_http_connections";
/// The connection cap of a listener, by `listener`.
pub const HTTP_CONNECTION_LIMIT: &str = "lease_sync_http_connection_limit";
/// Idle connections closed to make room for a new one at the cap, by `listener`.
pub const HTTP_CONNECTIONS_RECLAIMED: &str = "lease_sync_http_connections_reclaimed_total";
/// Connections refused at the cap (503 `overloaded`, or closed at once), by `listener`.
pub const HTTP_CONNECTIONS_REFUSED: &str = "lease_sync_http_connections_refused_total";
/// The `listener` label values.
pub const LISTENERS: [&str; 2] = ["webhook", "admin"];
/// Always 1, labelled with the running `version`.
pub const BUILD_INFO: &str = "lease_sync_build_info";
/// Times the Redis primary moved to another address under `[redis] mode = "sentinel"` (a
/// failover lease-sync followed).
pub const REDIS_PRIMARY_CHANGES: &str = "lease_sync_redis_primary_changes_total";
/// Log lines dropped because the log thread was [`crate::telemetry::LOG_LINES_BUFFERED`]
/// lines behind (stderr not being read); read at scrape time.
pub const LOG_LINES_DROPPED: &str = "lease_sync_log_lines_dropped_total";

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// One exported metric: name, kind, labels and help text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Label names.
    pub labels: &'static [&'static str],
    /// What it counts, as shown in `# HELP`.
    pub help: &'static str,
}

/// Every metric lease-sync exports. The README's table and the tests are checked against it.
pub const CATALOG: &[Metric] = &[
    Metric {
        name: WEBHOOKS,
        kind: Kind::Counter,
        labels: &["source", "outcome"],
        help: "Webhooks received, by source and outcome (accepted, duplicate, or the rejection code).",
    },
    Metric {
        name: INGEST_DURATION,
        kind: Kind::Histogram,
        labels: &["outcome"],
        help: "Seconds from a webhook's arrival to its answer, by outcome class (accepted, duplicate, rejected, unavailable).",
    },
    Metric {
        name: STALE_EVENTS,
        kind: Kind::Counter,
        labels: &["source"],
        help: "Per-resident events ignored because they were older than what the lease already recorded.",
    },
    Metric {
        name: FUTURE_VERSIONS_OVERRIDDEN,
        kind: Kind::Counter,
        labels: &["source"],
        help: "Lease records dated beyond their source's clock skew (written before such events were refused) that a newer event replaced.",
    },
    Metric {
        name: JOBS,
        kind: Kind::Counter,
        labels: &["outcome", "reason"],
        help: "Delivery job runs by outcome (converged, retried, dead_lettered, deferred, held: its integration is paused) and dead-letter reason.",
    },
    Metric {
        name: OPENAPP_DURATION,
        kind: Kind::Histogram,
        labels: &["operation"],
        help: "Seconds per OpenApp call, by operation (add, remove, list).",
    },
    Metric {
        name: OPENAPP_RESPONSES,
        kind: Kind::Counter,
        labels: &["operation", "class"],
        help: "OpenApp call results by operation and class (2xx, 3xx, 4xx, 5xx, timeout, connect, io).",
    },
    Metric {
        name: OPENAPP_AUTH_FAILURES,
        kind: Kind::Counter,
        labels: &["operation", "status"],
        help: "OpenApp answers 401 or 403, by operation and status: the API key or its roles need fixing.",
    },
    Metric {
        name: BUILDIUM_REQUESTS,
        kind: Kind::Counter,
        labels: &["operation", "class"],
        help: "Buildium API requests by operation (get_lease, get_tenant, list_leases) and class (2xx, 3xx, 4xx, 429, 5xx, timeout, connect, io, body).",
    },
    Metric {
        name: BUILDIUM_DURATION,
        kind: Kind::Histogram,
        labels: &["operation"],
        help: "Seconds per Buildium API request, by operation (get_lease, get_tenant, list_leases), without the wait for a rate-limit slot.",
    },
    Metric {
        name: BUILDIUM_RATE_LIMIT_WAIT,
        kind: Kind::Histogram,
        labels: &[],
        help: "Seconds a Buildium request waited for a slot of the request rate shared by every worker process.",
    },
    Metric {
        name: QUEUE_JOBS,
        kind: Kind::Gauge,
        labels: &["state"],
        help: "Jobs in the queue by state (ready, scheduled, in_flight, dead, held: waiting for a paused integration), read from Redis at scrape time.",
    },
    Metric {
        name: QUEUE_OLDEST_READY_AGE,
        kind: Kind::Gauge,
        labels: &[],
        help: "Seconds the oldest ready job has waited (0 when none is waiting), read at scrape time.",
    },
    Metric {
        name: CONFLICTS,
        kind: Kind::Gauge,
        labels: &["reason"],
        help: "People a source names who have no OpenApp user yet (no access until resolved), by reason (no_email, no_openapp_user, ambiguous_email), read from Redis at scrape time.",
    },
    Metric {
        name: SCHEDULED_CONVERGENCES,
        kind: Kind::Gauge,
        labels: &[],
        help: "Scheduled convergences (lease windows opening or closing) still to come, read at scrape time.",
    },
    Metric {
        name: INTEGRATIONS_PAUSED,
        kind: Kind::Gauge,
        labels: &[],
        help: "OpenApp integrations paused by an operator (their convergences held until resumed), read from Redis at scrape time.",
    },
    Metric {
        name: RECONCILE_DRIFT,
        kind: Kind::Counter,
        labels: &["kind"],
        help: "Differences reconciliation found between the source of truth and OpenApp, by kind (add, remove, unmanaged).",
    },
    Metric {
        name: RECONCILE_RUNS,
        kind: Kind::Counter,
        labels: &["source", "outcome"],
        help: "Scheduled reconciliation runs by source and outcome (done, skipped: another process had the period, empty: the source listed nothing, failed).",
    },
    Metric {
        name: QUEUE_SCRAPE_OK,
        kind: Kind::Gauge,
        labels: &[],
        help: "1 when the last scrape read the queue from Redis, 0 when Redis did not answer.",
    },
    Metric {
        name: WORKER_JOBS_AHEAD,
        kind: Kind::Gauge,
        labels: &[],
        help: "Jobs this worker process may take beyond its worker.concurrency calls now: what its jobs got through in the last 25 ms, between concurrency (or 16) and worker.claim_ahead.",
    },
    Metric {
        name: WORKER_JOBS_TAKEN,
        kind: Kind::Gauge,
        labels: &[],
        help: "Jobs this worker process fetched and has not let go of (claimed, waiting for a call or calling); at most worker.concurrency plus the jobs ahead.",
    },
    Metric {
        name: HTTP_CONNECTIONS,
        kind: Kind::Gauge,
        labels: &["listener"],
        help: "Open connections, by listener (webhook, admin).",
    },
    Metric {
        name: HTTP_CONNECTION_LIMIT,
        kind: Kind::Gauge,
        labels: &["listener"],
        help: "Connections a listener holds at most (http.max_connections, admin.max_connections or derived from the open-file limit).",
    },
    Metric {
        name: HTTP_CONNECTIONS_RECLAIMED,
        kind: Kind::Counter,
        labels: &["listener"],
        help: "Idle connections closed to make room for a new one at the cap, by listener.",
    },
    Metric {
        name: HTTP_CONNECTIONS_REFUSED,
        kind: Kind::Counter,
        labels: &["listener"],
        help: "Connections refused at the cap with nothing idle to reclaim (503 overloaded, or closed at once), by listener.",
    },
    Metric {
        name: BUILD_INFO,
        kind: Kind::Gauge,
        labels: &["version"],
        help: "Always 1; the version label says which lease-sync is running.",
    },
    Metric {
        name: LOG_LINES_DROPPED,
        kind: Kind::Counter,
        labels: &[],
        help: "Log lines dropped because stderr was not being read fast enough (the log thread fell 100,000 lines behind).",
    },
    Metric {
        name: REDIS_PRIMARY_CHANGES,
        kind: Kind::Counter,
        labels: &[],
        help: "Times the Redis primary named by Sentinel moved to another address and lease-sync followed (mode = \"sentinel\").",
    },
];

/// Bucket bounds in seconds: from half a millisecond (an ingest on loopback) to 10 s (the
/// OpenApp timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders it. When
/// another recorder is already installed (a host application's), lease-sync keeps its own
/// registry anyway, so `/metrics` still works; its values then stay empty.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

/// Registers help texts and the series that exist from the start.
fn describe() {
    for metric in CATALOG {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::counter!(REDIS_PRIMARY_CHANGES).increment(0);
    // Known label sets start at 0, so rates and alerts work before the first occurrence.
    for listener in LISTENERS {
        metrics::gauge!(HTTP_CONNECTIONS, "listener" => listener).increment(0.0);
        metrics::counter!(HTTP_CONNECTIONS_RECLAIMED, "listener" => listener).increment(0);
        metrics::counter!(HTTP_CONNECTIONS_REFUSED, "listener" => listener).increment(0);
    }
    for operation in ["add", "remove", "list", "search"] {
        for status in ["401", "403"] {
            metrics::counter!(OPENAPP_AUTH_FAILURES, "operation" => operation, "status" => status)
                .increment(0);
        }
    }
    for kind in ["add", "remove", "unmanaged"] {
        metrics::counter!(RECONCILE_DRIFT, "kind" => kind).increment(0);
    }
    for (outcome, reason) in [
        ("converged", ""),
        ("refreshed", ""),
        ("resolved", ""),
        ("retried", ""),
        ("deferred", ""),
        ("held", ""),
        ("dead_lettered", "permanent"),
        ("dead_lettered", "exhausted"),
        ("dead_lettered", "crash_loop"),
    ] {
        metrics::counter!(JOBS, "outcome" => outcome, "reason" => reason).increment(0);
    }
}

/// The source label for `name`: the configured name, or `unknown` for a path that names no
/// source (so a scanner cannot create series at will).
pub fn source_label(name: &str, known: bool) -> String {
    if known {
        name.to_owned()
    } else {
        "unknown".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_documents_every_metric() {
        let readme = include_str!("../../README.md");
        for m in CATALOG {
            assert!(
                readme.contains(&format!("| `{}` |", m.name)),
                "{} is not in the README",
                m.name
            );
        }
    }

    /// Every metric name in `expr`: `lease_sync_…` tokens, histogram suffixes removed.
    fn metrics_in(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("lease_sync_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix).filter(|b| {
                        CATALOG
                            .iter()
                            .any(|m| m.name == *b && m.kind == Kind::Histogram)
                    })
                })
                .unwrap_or(name);
            out.push(base.to_owned());
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn the_dashboard_uses_only_exported_metrics_and_shows_them_all() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana/lease-sync.json"))
                .expect("the dashboard is JSON");
        let mut used = std::collections::BTreeSet::new();
        let panels = dashboard["panels"].as_array().expect("panels");
        for panel in panels.iter().filter(|p| p["type"] != "row") {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
            for target in targets {
                let expr = target["expr"].as_str().expect("expr");
                let names = metrics_in(expr);
                assert!(!names.is_empty(), "{expr} queries no lease-sync metric");
                for name in names {
                    assert!(
                        CATALOG.iter().any(|m| m.name == name),
                        "panel {} queries {name}, which lease-sync does not export",
                        panel["title"]
                    );
                    used.insert(name);
                }
            }
        }
        for m in CATALOG {
            assert!(used.contains(m.name), "{} is on no dashboard panel", m.name);
        }
        assert_eq!(
            metrics_in("rate(lease_sync_ingest_duration_seconds_bucket[5m])"),
            ["lease_sync_ingest_duration_seconds"]
        );
        assert_eq!(
            metrics_in("lease_sync_nope_total"),
            ["lease_sync_nope_total"]
        );
    }

    #[test]
    fn the_catalog_is_well_formed() {
        let mut names: Vec<_> = CATALOG.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len(), "duplicate metric names");
        for m in CATALOG {
            assert!(m.name.starts_with("lease_sync_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert!(!m.help.is_empty());
            for label in m.labels {
                assert!(
                    !matches!(*label, "user" | "user_id" | "lease" | "event" | "event_id"),
                    "{} has a high-cardinality label",
                    m.name
                );
            }
        }
    }
}
