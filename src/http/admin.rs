//! The admin API: dead letters, lease resets and queue stats for operators, on its own
//! listener.
//!
//! Every route under `/admin` requires `Authorization: Bearer <token>` with one of the
//! configured `[admin] tokens`, except `GET /admin/openapi.json`, which describes the API
//! and holds nothing secret; a `read` token may only `GET`. Every answer, rejections
//! included, is JSON in the shape of [`ApiError`]; axum's plain-text rejections never reach
//! the caller.
//!
//! Replays, purges and lease resets write an audit record naming the caller by the token's name or as
//! `token:<fingerprint>` (see the `auth` module), never by the token. The OpenAPI document is generated from the
//! handlers' annotations (see the `openapi` module); the e2e tests check every route
//! against it.
//!
//! [`ApiError`]: super::ApiError

mod auth;
mod console;
mod error;
mod handlers;
mod observability;
mod openapi;
mod residents;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

pub use self::auth::AcceptedTokens;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::dead_letters::DeadLetters;
use crate::queue::JobQueue;
use crate::worker::WorkerStatus;

/// State of the admin listener.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The queue, for stats.
    pub queue: JobQueue,
    /// The dead letters.
    pub dead_letters: DeadLetters,
    /// Accepted bearer tokens, as digests.
    pub tokens: Arc<AcceptedTokens>,
    /// The process's workers, when it runs them (for `/readyz`).
    pub workers: Option<WorkerStatus>,
    /// Renders the Prometheus registry (for `/metrics`).
    pub metrics: PrometheusHandle,
    /// Lease lookups and resets.
    pub leases: crate::leases::Leases,
    /// Paused integrations.
    pub integrations: crate::integrations::Integrations,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    // `route_layer` rather than `layer`: authentication guards the matched routes only, so
    // the public OpenAPI route merged below stays public and unknown paths answer 404.
    let protected = Router::new()
        .route("/admin/dead-letters", get(handlers::list_dead_letters))
        .route(
            "/admin/dead-letters/replay",
            post(handlers::replay_dead_letters),
        )
        .route(
            "/admin/dead-letters/{id}",
            get(handlers::get_dead_letter).delete(handlers::purge_dead_letter),
        )
        .route(
            "/admin/dead-letters/{id}/replay",
            post(handlers::replay_dead_letter),
        )
        .route(
            "/admin/leases/{source}/{lease_id}/reset",
            post(handlers::reset_lease),
        )
        .route("/admin/conflicts", get(handlers::list_conflicts))
        .route("/admin/queue", get(handlers::queue_counts))
        .route("/admin/audit", get(handlers::recent_audit))
        .route(
            "/admin/residents/{integration_id}/{user_id}",
            get(residents::get_resident),
        )
        .route(
            "/admin/residents/{integration_id}/{user_id}/history",
            get(residents::resident_history),
        )
        .route("/admin/integrations", get(residents::list_integrations))
        .route(
            "/admin/integrations/{id}/pause",
            post(residents::pause_integration),
        )
        .route(
            "/admin/integrations/{id}/resume",
            post(residents::resume_integration),
        )
        .route_layer(from_fn_with_state(state.clone(), auth::require_bearer));
    Router::new()
        .route("/admin/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(observability::metrics))
        .route("/healthz", get(crate::http::health::healthz))
        .route("/readyz", get(observability::readyz))
        .merge(protected)
        .merge(console::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}
