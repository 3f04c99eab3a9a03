//! Wiring: builds the parts a role needs and runs them until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ConnectionCaps, Role, Settings};
use crate::dead_letters::DeadLetters;
use crate::http::admin::{AcceptedTokens, AdminState, router as admin_router};
use crate::http::server::{ConnectionLimits, Listener, serve};
use crate::http::{AppState, router};
use crate::openapp::OpenAppClient;
use crate::queue::{JobQueue, connect};
use crate::worker::{WorkerStatus, run_workers};

/// A built, not yet running, lease-sync process.
pub struct Application {
    settings: Settings,
    role: Role,
    queue: JobQueue,
    listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    admin_tokens: Arc<AcceptedTokens>,
    client: Option<OpenAppClient>,
    caps: ConnectionCaps,
}

impl Application {
    /// Connects (lazily) to Redis, builds the OpenApp client and binds the listener, as
    /// `role` requires. Binding here lets callers learn the port before running (port 0).
    pub async fn build(settings: Settings, role: Role) -> anyhow::Result<Self> {
        // Early, so that nothing recorded before the admin listener starts is lost.
        crate::telemetry::metrics::install();
        for warning in settings.warnings(time::OffsetDateTime::now_utc()) {
            warn!("configuration: {warning}");
        }
        let conn = connect(&settings.redis).context("cannot set up the Redis connection")?;
        let queue = JobQueue::new(conn, &settings.redis.namespace)
            .with_history_limits((&settings.audit).into());
        let client = if role.runs_workers() {
            Some(
                OpenAppClient::new(&settings.openapp)
                    .context("cannot set up the OpenApp client")?,
            )
        } else {
            None
        };
        let listener = if role.runs_ingest() {
            let addr = settings.http.listen;
            Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            )
        } else {
            None
        };
        let (admin_listener, admin_tokens) = if settings.admin.enabled && role.is_service() {
            // Validation takes no clock; expiry is judged here, once, and per request after.
            let now = OffsetDateTime::now_utc();
            settings.admin.validate_expiry(now)?;
            let tokens = AcceptedTokens::new(&settings.admin.tokens)
                .context("an admin token is not usable")?;
            let addr = settings.admin.listen;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the admin API"))?;
            (Some(listener), Arc::new(tokens))
        } else {
            (None, Arc::default())
        };
        let caps = connection_caps(&settings, role);
        Ok(Self {
            settings,
            role,
            queue,
            listener,
            admin_listener,
            admin_tokens,
            client,
            caps,
        })
    }

    /// The bound webhook address, when this role runs ingest.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound admin API address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Runs until `shutdown` is cancelled, then stops accepting, lets in-flight requests and
    /// jobs finish (bounded by the configured grace periods) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let status = WorkerStatus::default();
        // Upgrade the namespace's layout now rather than at the first webhook, retrying while
        // Redis is away; writes wait for it anyway (`JobQueue::layout_ready`).
        let layout = tokio::spawn({
            let queue = self.queue.clone();
            async move {
                let mut delay = Duration::from_millis(250);
                while let Err(e) = queue.layout_ready().await {
                    warn!("the Redis layout is not ready: {e}; trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        });
        // Scheduled reconciliation ([reconcile] every), in processes that run workers.
        let reconciliation = match &self.client {
            Some(client) if self.role.runs_workers() => crate::reconcile::schedule::spawn(
                &self.settings,
                self.queue.clone(),
                client.clone(),
                shutdown.clone(),
            ),
            _ => None,
        };
        let workers = match self.client {
            Some(client) => {
                let settings = self.settings.clone();
                let queue = self.queue.clone();
                let status = status.clone();
                let shutdown = shutdown.clone();
                Some(tokio::spawn(async move {
                    run_workers(&settings, queue, client, status, shutdown).await;
                }))
            }
            None => None,
        };

        let admin = self.admin_listener.map(|listener| {
            let state = AdminState {
                dead_letters: DeadLetters::new(&self.queue),
                queue: self.queue.clone(),
                tokens: self.admin_tokens.clone(),
                workers: workers.as_ref().map(|_| status.clone()),
                metrics: crate::telemetry::metrics::install(),
                leases: crate::leases::Leases::new(&self.settings, self.queue.clone()),
                integrations: crate::integrations::Integrations::new(
                    &self.settings,
                    self.queue.clone(),
                ),
            };
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "admin API ready: http://{addr}/admin (OpenAPI at /admin/openapi.json)");
            }
            let limits = ConnectionLimits::new(
                Listener::Admin,
                &self.settings.http,
                self.caps.admin.unwrap_or(crate::config::ADMIN_CONNECTIONS),
            );
            tokio::spawn(serve(
                listener,
                admin_router(state),
                limits,
                shutdown.clone(),
            ))
        });

        if let Some(listener) = self.listener {
            let state = AppState::new(
                &self.settings,
                self.queue.clone(),
                workers.as_ref().map(|_| status.clone()),
            )
            .context("cannot prepare webhook sources")?;
            let addr = listener.local_addr().context("listener has no address")?;
            info!(%addr, role = ?self.role, "webhook listener ready: POST http://{addr}/webhooks/{{source}}");
            let grace = self.settings.http.shutdown_grace;
            let limits = ConnectionLimits::new(
                Listener::Webhook,
                &self.settings.http,
                self.caps.http.unwrap_or(crate::config::MIN_CONNECTIONS),
            );
            let server = tokio::spawn(serve(listener, router(state), limits, shutdown.clone()));
            shutdown.cancelled().await;
            match tokio::time::timeout(grace, server).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("webhook listener task failed: {e}"),
                Err(_) => warn!("in-flight webhook requests did not finish within {grace:?}"),
            }
        } else {
            info!(role = ?self.role, "worker process ready");
            shutdown.cancelled().await;
        }

        if let Some(admin) = admin {
            let grace = self.settings.http.shutdown_grace;
            if !matches!(tokio::time::timeout(grace, admin).await, Ok(Ok(()))) {
                warn!("the admin listener did not stop cleanly within {grace:?}");
            }
        }
        if let Some(workers) = workers
            && let Err(e) = workers.await
        {
            warn!("worker supervisor task failed: {e}");
        }
        if let Some(reconciliation) = reconciliation
            && let Err(e) = reconciliation.await
        {
            warn!("scheduled reconciliation task failed: {e}");
        }
        layout.abort();
        info!("stopped");
        Ok(())
    }
}

/// The listeners' connection caps under the open-file limit in force (the command line
/// raised it first), logged once.
fn connection_caps(settings: &Settings, role: Role) -> ConnectionCaps {
    let fd_limit = match crate::fd_limit::current() {
        Ok(limit) => limit.soft,
        Err(e) => {
            // The most common soft limit: caps that fit it are safe wherever it is higher.
            warn!("cannot read the open-file limit (RLIMIT_NOFILE), assuming 1024: {e}");
            1024
        }
    };
    let caps = settings.connection_caps(role, fd_limit);
    let shown = |cap: Option<usize>| cap.map_or_else(|| "-".to_owned(), |c| c.to_string());
    info!(
        "connection caps: webhook listener {}, admin listener {} (open-file limit {fd_limit}, {} descriptors for connections)",
        shown(caps.http),
        shown(caps.admin),
        caps.budget
    );
    if caps.overcommitted() {
        warn!(
            "http.max_connections and admin.max_connections together exceed the {} file descriptors the open-file limit ({fd_limit}) leaves for connections: the process may run out of descriptors before it refuses a connection",
            caps.budget
        );
    }
    caps
}

/// Cancels the returned token on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("cannot listen for SIGTERM: {e}");
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => info!("SIGINT received, shutting down"),
                _ = term.recv() => info!("SIGTERM received, shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        cancel.cancel();
    });
    token
}
