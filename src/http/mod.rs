//! The webhook listener: `POST /webhooks/{source}`, `GET /healthz`, `GET /readyz`.
//! The only module of the library that knows axum.

pub mod admin;
mod error;
pub(crate) mod health;
mod ingest;
pub mod server;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use time::OffsetDateTime;

pub use error::ApiError;

use crate::config::{ConfigError, HttpSettings, PropertySettings, Settings, SourceSettings};
use crate::queue::JobQueue;
use crate::signature::SourceVerifier;
use crate::worker::WorkerStatus;

/// What ingest knows about one configured source.
#[derive(Debug)]
pub struct SourceRuntime {
    /// The source's name.
    pub name: String,
    /// Its signature verifier.
    pub verifier: SourceVerifier,
    /// Its buildings by property id.
    pub properties: HashMap<String, PropertySettings>,
    /// Its rate limit in this process; `None` when off.
    pub rate_limiter: Option<governor::DefaultDirectRateLimiter>,
    /// `max_clock_skew_secs`: how far ahead of our clock an event's `occurred_at` may be.
    pub max_clock_skew: std::time::Duration,
    /// What the source sends.
    pub kind: crate::config::SourceKind,
}

impl SourceRuntime {
    /// Prepares source number `index` for ingest: its verifier is built once, here, with
    /// secrets judged at `now` ([`crate::signature::source_verifier`]).
    pub fn new(
        index: usize,
        source: &SourceSettings,
        http: &HttpSettings,
        now: OffsetDateTime,
    ) -> Result<Self, ConfigError> {
        let per_sec = source.rate_limit_per_sec.unwrap_or(http.rate_limit_per_sec);
        let burst = source.rate_limit_burst.unwrap_or(http.rate_limit_burst);
        let rate_limiter = NonZeroU32::new(per_sec).map(|per_sec| {
            let quota = governor::Quota::per_second(per_sec)
                .allow_burst(NonZeroU32::new(burst).unwrap_or(per_sec));
            governor::RateLimiter::direct(quota)
        });
        Ok(Self {
            rate_limiter,
            max_clock_skew: source.max_clock_skew,
            kind: source.kind,
            name: source.name.clone(),
            verifier: source.verifier(index, now)?,
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
    /// `[redis] wait_replicas` and `wait_timeout_ms`: replicas that must hold an event before
    /// it is acknowledged (0: none).
    wait_replicas: (u32, Duration),
    /// When this process last recorded each source's latest webhook in Redis (for the
    /// console's overview): at most once a second per source, off the request's path.
    last_events: Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
}

impl AppState {
    /// State for a listener over `queue`; `workers` is `Some` when this process also works.
    pub fn new(
        settings: &Settings,
        queue: JobQueue,
        workers: Option<WorkerStatus>,
    ) -> Result<Self, ConfigError> {
        let now = OffsetDateTime::now_utc();
        let sources = settings
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                SourceRuntime::new(i, s, &settings.http, now).map(|r| (s.name.clone(), r))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sources: Arc::new(sources),
            queue,
            http: Arc::new(settings.http.clone()),
            workers,
            wait_replicas: (settings.redis.wait_replicas, settings.redis.wait_timeout),
            last_events: Arc::default(),
        })
    }

    /// Records, at most once a second per source and without delaying the answer, that
    /// `source` (a configured one) just sent a webhook that was accepted.
    fn note_event(&self, source: &str) {
        let due = {
            let mut last = self
                .last_events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = std::time::Instant::now();
            match last.get(source) {
                Some(at) if now.duration_since(*at) < Duration::from_secs(1) => false,
                _ => {
                    last.insert(source.to_owned(), now);
                    true
                }
            }
        };
        if due {
            let queue = self.queue.clone();
            let source = source.to_owned();
            tokio::spawn(async move {
                if let Err(e) = queue
                    .record_last_event(&source, crate::queue::now_ms())
                    .await
                {
                    tracing::debug!("could not record the source's last webhook: {e}");
                }
            });
        }
    }

    fn enqueue_timeout(&self) -> Duration {
        self.http.enqueue_timeout
    }
}

/// The listener's routes.
pub fn router(state: AppState) -> Router {
    let header_limit = state.http.header_limit_bytes;
    Router::new()
        .route("/webhooks/{source}", post(ingest::receive))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(move |request, next| {
            server::reject_large_headers(header_limit, request, next)
        }))
        .with_state(state)
}
