//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::queue::JobQueue;
use crate::worker::WorkerStatus;

/// Readiness waits at most this long for Redis.
const READY_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /healthz`: the process is up and serving.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: Redis answers and, where this process runs workers, they are running.
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    readiness(&state.queue, state.workers.as_ref()).await
}

/// Readiness of a process using `queue`, with `workers` when it runs them. Shared by the
/// webhook and admin listeners (a `work` process has only the latter).
pub(super) async fn readiness(
    queue: &JobQueue,
    workers: Option<&WorkerStatus>,
) -> (StatusCode, Json<Value>) {
    let redis = match queue.ping(READY_REDIS_TIMEOUT).await {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("unavailable: {e}"),
    };
    let workers = workers.map(|w| {
        if w.is_running() {
            "running"
        } else {
            "not running"
        }
    });
    let ready = redis == "ok" && workers.is_none_or(|w| w == "running");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"status": if ready { "ready" } else { "not_ready" }, "redis": redis});
    // Under Sentinel, where the sentinels last said the primary is: after a failover, whether
    // this process followed it.
    if let Some(primary) = queue.connection().sentinel_primary() {
        body["redis_primary"] = json!(primary);
    }
    if let Some(w) = workers {
        body["workers"] = json!(w);
    }
    (status, Json(body))
}
