//! The webhook listener: `POST /webhooks/{source}`, `GET /healthz`, `GET /readyz`.
//! The only module (with the sandbox) that knows axum.

pub mod admin;
mod error;
mod health;
mod ingest;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::config::{HttpSettings, PropertySettings, Settings, SourceSettings};
use crate::queue::JobQueue;
use crate::signature::standard_webhooks::{SecretError, Verifier};
use crate::worker::WorkerStatus;

/// What ingest knows about one configured source.
#[derive(Debug)]
pub struct SourceRuntime {
    /// The source's name.
    pub name: String,
    /// Its signature verifier.
    pub verifier: Verifier,
    /// Its buildings by property id.
    pub properties: HashMap<String, PropertySettings>,
}

impl SourceRuntime {
    /// Prepares `source` for ingest (decodes its secrets once).
    pub fn new(source: &SourceSettings) -> Result<Self, SecretError> {
        Ok(Self {
            name: source.name.clone(),
            verifier: Verifier::new(
                source.secrets.iter().map(|s| s.expose()),
                source.tolerance_secs,
            )?,
            properties: source
                .properties
                .iter()
                .map(|p| (p.id.clone(), p.clone()))
                .collect(),
        })
    }
}

/// Shared state of the listener.
#[derive(Debug, Clone)]
pub struct AppState {
    sources: Arc<HashMap<String, SourceRuntime>>,
    queue: JobQueue,
    http: Arc<HttpSettings>,
    /// Present when this process runs workers, so readiness includes them.
    workers: Option<WorkerStatus>,
}

impl AppState {
    /// State for a listener over `queue`; `workers` is `Some` when this process also works.
    pub fn new(
        settings: &Settings,
        queue: JobQueue,
        workers: Option<WorkerStatus>,
    ) -> Result<Self, SecretError> {
        let sources = settings
            .sources
            .iter()
            .map(|s| SourceRuntime::new(s).map(|r| (s.name.clone(), r)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sources: Arc::new(sources),
            queue,
            http: Arc::new(settings.http.clone()),
            workers,
        })
    }

    fn enqueue_timeout(&self) -> Duration {
        Duration::from_millis(self.http.enqueue_timeout_ms)
    }
}

/// The listener's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/{source}", post(ingest::receive))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}
