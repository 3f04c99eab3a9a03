//! Unauthenticated operational routes of the admin listener: `GET /metrics` (Prometheus
//! text), `GET /healthz` and `GET /readyz`. They hold no secrets and no personal data (labels
//! are sources, outcomes and classes), so scrapers and probes need no token; the listener
//! itself stays off the public network.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AdminState;
use crate::identity::ConflictReason;
use crate::queue::now_ms;
use crate::telemetry::metrics::{
    CONFLICTS, INTEGRATIONS_PAUSED, LOG_LINES_DROPPED, QUEUE_JOBS, QUEUE_OLDEST_READY_AGE,
    QUEUE_SCRAPE_OK, SCHEDULED_CONVERGENCES,
};

/// `GET /metrics`: refreshes the queue gauges from Redis and the count of dropped log lines,
/// then renders every metric. A Redis
/// failure still answers 200 with `lease_sync_queue_scrape_ok 0`, so the process's own
/// counters are not lost with it.
pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    let counts = state.queue.counts().await;
    let pending = state.queue.pending_convergences(now_ms()).await;
    let conflicts = state.queue.conflicts(None).await;
    match (&counts, &pending, &conflicts) {
        (Ok(c), Ok(pending), Ok(conflicts)) => {
            for reason in [
                ConflictReason::NoEmail,
                ConflictReason::NoOpenappUser,
                ConflictReason::AmbiguousEmail,
            ] {
                let n = conflicts.iter().filter(|c| c.reason == reason).count();
                metrics::gauge!(CONFLICTS, "reason" => reason.as_str()).set(n as f64);
            }
            for (queue_state, n) in [
                ("ready", c.ready),
                ("scheduled", c.scheduled),
                ("in_flight", c.in_flight),
                ("dead", c.dead),
                ("held", c.held),
            ] {
                metrics::gauge!(QUEUE_JOBS, "state" => queue_state).set(n as f64);
            }
            metrics::gauge!(QUEUE_OLDEST_READY_AGE).set(c.oldest_ready_age_secs.unwrap_or(0.0));
            metrics::gauge!(SCHEDULED_CONVERGENCES).set(*pending as f64);
            metrics::gauge!(INTEGRATIONS_PAUSED).set(c.paused_integrations as f64);
            metrics::gauge!(QUEUE_SCRAPE_OK).set(1.0);
        }
        _ => metrics::gauge!(QUEUE_SCRAPE_OK).set(0.0),
    }
    metrics::counter!(LOG_LINES_DROPPED).absolute(crate::telemetry::log_lines_dropped());
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /readyz`: Redis answers and, in a process that runs workers, they are running.
pub(super) async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<Value>) {
    crate::http::health::readiness(&state.queue, state.workers.as_ref()).await
}
