//! The connection every part of lease-sync talks to Redis through: one address
//! (`[redis] mode = "standalone"`), the primary that Redis Sentinel names (`mode =
//! "sentinel"`), or a Redis Cluster (`mode = "cluster"`: redis-rs's cluster connection, which
//! follows `MOVED`/`ASK` and failovers; every key of a namespace shares one hash slot, so each
//! script and pipeline goes to one node).
//!
//! With Sentinel, the primary's address is asked from the sentinels on first use, and asked
//! again after a connection error (the primary is gone) or a `READONLY` reply (the node was
//! demoted to a replica by a failover: the command did not run, so it is sent once more to the
//! new primary). Other failed commands are not sent again — they may have run — and the caller
//! retries as it always does (ingest answers 503, workers retry the job). The sentinels are
//! also asked every [`WATCH_EVERY`]: after a failover the old primary goes on accepting writes
//! until Sentinel demotes it, and then discards them, so lease-sync moves to the new primary as
//! soon as the sentinels name it rather than when the old one refuses.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::config::{RedisMode, RedisSettings};

/// How often the sentinels are asked whether the primary moved.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A Redis connection that follows the primary. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisConnection {
    route: Route,
    db: i64,
}

#[derive(Clone)]
enum Route {
    /// One address: a connection manager that reconnects on its own.
    Direct(ConnectionManager),
    /// Wherever the sentinels say the primary is.
    Sentinel(Arc<SentinelRoute>),
    /// A Redis Cluster; connects in the background on first use.
    Cluster(redis::cluster_async::ClusterConnection),
}

/// The connection to the primary last resolved.
#[derive(Clone)]
struct Current {
    /// Which resolution made it: a stale error does not discard a newer connection.
    generation: u64,
    /// The primary's address, as the sentinels named it.
    addr: String,
    conn: ConnectionManager,
}

/// The primary named by the sentinels, and the connection to it.
struct SentinelRoute {
    /// Asking the sentinels is serialized: one resolution after a failover, not one per
    /// command in flight.
    sentinels: tokio::sync::Mutex<SentinelClient>,
    config: ConnectionManagerConfig,
    /// The connection to the primary last resolved, with a generation so that a stale error
    /// does not discard a newer connection.
    current: Mutex<Option<Current>>,
    /// Resolutions so far: the next generation.
    resolutions: std::sync::atomic::AtomicU64,
    /// The address the last resolution named, kept across dropped connections: shown by
    /// `/readyz`, and compared with the next one to count the primary's changes.
    primary: Mutex<Option<String>>,
}

impl RedisConnection {
    /// The connection `settings` describe. Lazy: nothing is contacted until the first
    /// command, so a process can start (and report not-ready) while Redis is down.
    pub fn open(
        settings: &RedisSettings,
        config: ConnectionManagerConfig,
    ) -> Result<Self, RedisError> {
        let info = settings.url.expose().into_connection_info()?;
        let db = info.redis_settings().db();
        let route = match settings.mode {
            RedisMode::Standalone => {
                let client = redis::Client::open(info)?;
                Route::Direct(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            RedisMode::Sentinel => {
                // The primary is reached with the credentials and database of `url`.
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info.redis_settings().clone());
                let sentinels = SentinelClient::build(
                    settings.sentinels.iter().map(String::as_str).collect(),
                    settings.master_name.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                let route = Arc::new(SentinelRoute {
                    sentinels: tokio::sync::Mutex::new(sentinels),
                    config,
                    current: Mutex::new(None),
                    resolutions: std::sync::atomic::AtomicU64::new(0),
                    primary: Mutex::new(None),
                });
                // Outside a runtime (a synchronous caller) there is no watch; errors and
                // READONLY replies still move the connection.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(watch(Arc::downgrade(&route)));
                }
                Route::Sentinel(route)
            }
            RedisMode::Cluster => {
                let auth = info.redis_settings();
                let mut builder = redis::cluster::ClusterClient::builder(
                    settings.nodes.iter().map(String::as_str),
                )
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.response_timeout)
                .retries(1);
                if let Some(username) = auth.username() {
                    builder = builder.username(username);
                }
                if let Some(password) = auth.password() {
                    builder = builder.password(password);
                }
                let client = builder.build()?;
                Route::Cluster(
                    client.get_pending_async_connection_with_config(
                        redis::cluster::ClusterConfig::new()
                            .set_connection_timeout(settings.connect_timeout)
                            .set_response_timeout(settings.response_timeout),
                    ),
                )
            }
        };
        Ok(Self { route, db })
    }

    /// With Sentinel, the address (`host:port`) of the primary the sentinels last named, once
    /// one was asked for; `None` in the other modes, whose address is the configured one.
    pub fn sentinel_primary(&self) -> Option<String> {
        match &self.route {
            Route::Sentinel(route) => route
                .primary
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            Route::Direct(_) | Route::Cluster(_) => None,
        }
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.route, Route::Cluster(_))
    }

    /// Runs `cmd`, which names no key (`WAIT`, `SCAN`), on the primary holding `key`: in a
    /// cluster it would otherwise go to any node. Elsewhere there is one primary.
    pub async fn on_primary_of(&self, key: &str, cmd: &Cmd) -> RedisResult<Value> {
        match &self.route {
            Route::Cluster(conn) => {
                use redis::cluster_routing::{
                    Route as SlotRoute, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                };
                let route = SlotRoute::with_key(key, SlotAddr::Master);
                conn.clone()
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await
            }
            _ => cmd.query_async(&mut self.clone()).await,
        }
    }
}

impl SentinelRoute {
    fn current(&self) -> Option<Current> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The connection to the primary, resolving it first if there is none.
    async fn connection(&self) -> RedisResult<Current> {
        match self.current() {
            Some(current) => Ok(current),
            None => self.resolve(None).await,
        }
    }

    /// Asks the sentinels where the primary is and connects to it — unless another caller
    /// did so since generation `stale` was handed out.
    async fn resolve(&self, stale: Option<u64>) -> RedisResult<Current> {
        let mut sentinels = self.sentinels.lock().await;
        if let Some(current) = self.current()
            && Some(current.generation) != stale
        {
            return Ok(current);
        }
        let client = sentinels.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let conn = ConnectionManager::new_with_config(client, self.config.clone()).await?;
        let generation = self
            .resolutions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let current = Current {
            generation,
            addr,
            conn,
        };
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(current.clone());
        tracing::info!(generation, addr = %current.addr, "connected to the Redis primary named by Sentinel");
        if note_primary(&self.primary, &current.addr) {
            metrics::counter!(crate::telemetry::metrics::REDIS_PRIMARY_CHANGES).increment(1);
        }
        Ok(current)
    }

    /// Whether the sentinels name another primary than the one connected to (then the
    /// connection is dropped, and the next command connects to the new one).
    async fn check(&self) {
        let Some(current) = self.current() else {
            return;
        };
        let named = {
            let mut sentinels = self.sentinels.lock().await;
            sentinels.async_get_client().await
        };
        match named {
            Ok(client) => {
                let addr = client.get_connection_info().addr().to_string();
                if addr != current.addr {
                    tracing::warn!(from = %current.addr, to = %addr, "the sentinels name another Redis primary; moving to it");
                    self.forget(current.generation);
                }
            }
            Err(e) => tracing::debug!("could not ask the sentinels for the primary: {e}"),
        }
    }

    /// Drops connection `generation` after it failed, so the next command resolves again.
    fn forget(&self, generation: u64) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }

    /// Sends `request` to the primary, following a failover as the module says.
    async fn run(&self, request: Request<'_>) -> RedisResult<Reply> {
        let Current {
            generation,
            mut conn,
            ..
        } = self.connection().await?;
        match request.send(&mut conn).await {
            Err(e) if is_read_only(&e) => {
                tracing::warn!("the Redis primary became a replica; asking Sentinel again");
                let mut conn = self.resolve(Some(generation)).await?.conn;
                request.send(&mut conn).await
            }
            Err(e) if lost_connection(&e) => {
                self.forget(generation);
                Err(e)
            }
            result => result,
        }
    }
}

/// Records `addr` as the primary last named in `slot`; whether that is a move (a first
/// resolution is not, nor a reconnection to the same address).
fn note_primary(slot: &Mutex<Option<String>>, addr: &str) -> bool {
    let previous = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .replace(addr.to_owned());
    previous.is_some_and(|previous| previous != addr)
}

/// Asks the sentinels every [`WATCH_EVERY`] whether the primary moved, for as long as the
/// connection exists.
async fn watch(route: Weak<SentinelRoute>) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(route) = route.upgrade() else {
            return;
        };
        route.check().await;
    }
}

/// One command or a pipeline, as [`ConnectionLike`] sends them.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Cmd),
    Many {
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    },
}

enum Reply {
    One(Value),
    Many(Vec<Value>),
}

impl Request<'_> {
    async fn send(self, conn: &mut ConnectionManager) -> RedisResult<Reply> {
        match self {
            Request::One(cmd) => conn.req_packed_command(cmd).await.map(Reply::One),
            Request::Many {
                pipeline,
                offset,
                count,
            } => conn
                .req_packed_commands(pipeline, offset, count)
                .await
                .map(Reply::Many),
        }
    }
}

/// A write refused by a replica: a failover happened.
fn is_read_only(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    )
}

/// The node is unreachable or gone.
fn lost_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.route {
            Route::Direct(conn) => conn.req_packed_command(cmd),
            Route::Cluster(conn) => conn.req_packed_command(cmd),
            Route::Sentinel(route) => {
                let route = Arc::clone(route);
                Box::pin(async move {
                    match route.run(Request::One(cmd)).await? {
                        Reply::One(value) => Ok(value),
                        Reply::Many(mut values) => Ok(values.pop().unwrap_or(Value::Nil)),
                    }
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.route {
            Route::Direct(conn) => conn.req_packed_commands(pipeline, offset, count),
            Route::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Route::Sentinel(route) => {
                let route = Arc::clone(route);
                Box::pin(async move {
                    let request = Request::Many {
                        pipeline,
                        offset,
                        count,
                    };
                    match route.run(request).await? {
                        Reply::Many(values) => Ok(values),
                        Reply::One(value) => Ok(vec![value]),
                    }
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_resolution_to_another_address_counts_as_a_move() {
        let slot = Mutex::new(None);
        assert!(
            !note_primary(&slot, "127.0.0.1:6379"),
            "the first resolution"
        );
        assert!(
            !note_primary(&slot, "127.0.0.1:6379"),
            "a reconnection to the same primary"
        );
        assert!(note_primary(&slot, "127.0.0.1:6380"), "a failover");
        assert_eq!(slot.lock().unwrap().as_deref(), Some("127.0.0.1:6380"));
        assert!(note_primary(&slot, "127.0.0.1:6379"), "and back");
    }

    #[tokio::test]
    async fn outside_sentinel_mode_no_primary_is_named() {
        let settings = RedisSettings::default();
        let conn = RedisConnection::open(&settings, ConnectionManagerConfig::new())
            .expect("a lazy connection");
        assert_eq!(conn.sentinel_primary(), None);
    }
}
