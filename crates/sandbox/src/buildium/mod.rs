//! Local, in-memory emulator of Buildium for lease-sync: the lease and tenant reads of its
//! Open API, and the signed lease webhooks it posts.
//!
//! # Reads (`/v1`, as Buildium's Open API describes them)
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/leases/{leaseId}` | `LeaseMessage` |
//! | `GET /v1/leases?leasestatuses=&propertyids=&leasetypes=&lastupdatedfrom=&lastupdatedto=&orderby=&limit=&offset=` | `[LeaseMessage]`, total in `X-Total-Count` |
//! | `GET /v1/leases/tenants/{tenantId}` | `TenantMessage` with its `Leases` |
//!
//! Field names are Buildium's (PascalCase); dates are `YYYY-MM-DD`, date-times UTC with
//! 7 fractional digits. `leasestatuses`, `propertyids` and `leasetypes` repeat; `limit`
//! defaults to 50, and above 1000 is lowered to 1000; `orderby` takes `Field [asc|desc]`
//! pairs, comma-separated, over `Id`, `PropertyId`, `UnitId`, `LeaseFromDate`,
//! `LeaseToDate`, `CreatedDateTime` and `LastUpdatedDateTime` (`Id` ascending by default).
//! Every read needs `x-buildium-client-id` and `x-buildium-client-secret` (`401` otherwise),
//! is limited to `rate_limit` requests per second (`429` above, without `Retry-After`, as
//! Buildium only says to retry after a short interval), and a query string over 4096
//! characters gets `500`. Errors have Buildium's `ApiErrorResponse` shape,
//! `{"UserMessage", "ErrorCode", "Errors": [{"Key", "Value"}]}`; Buildium documents no
//! `ErrorCode` values, so the emulator uses the status's name (`NotFound`,
//! `Unauthorized`, `TooManyRequests`, `BadRequest`, …).
//!
//! # Changes and webhooks
//!
//! Leases change only through the control API (or the in-process methods), and every change
//! stamps a strictly increasing `LastUpdatedDateTime` and emits its events:
//!
//! | change | events |
//! |---|---|
//! | create a lease | `Lease.Created`, `LeaseTenant.Created` per tenant |
//! | update a lease (dates, renewal, status, type, unit) | `Lease.Updated` |
//! | move a tenant out | `Lease.MoveOut.Created` (`LeaseId`, `TenantId`), `Lease.Updated` |
//! | add a tenant | `LeaseTenant.Created` (new) or `.Updated` (existing tenant), `Lease.Updated` |
//! | remove a tenant | `LeaseTenant.Deleted` (or `.Updated` if still on another lease), `Lease.Updated` |
//! | update a tenant | `LeaseTenant.Updated` |
//! | delete a lease | `Lease.Deleted` |
//!
//! Each event is posted in the background to the webhook URL exactly as Buildium does: the
//! compact JSON body `{"EventName","EventDateTime","AccountId","LeaseId"|"TenantId"}`,
//! `Content-Type: application/json`, `buildium-webhook-timestamp` (Unix seconds when sent) and
//! `buildium-webhook-signature` (base64 of HMAC-SHA256 over `{timestamp}.{body}`, keyed with
//! the secret's UTF-8 bytes), a 10 s timeout, and on a non-2xx answer or a timeout retries
//! after 1 min, 10 min and 1 h (divided by `retry_scale`), each freshly signed, then the
//! event is dropped. Every delivery and attempt is recorded ([`BuildiumSandbox::deliveries`],
//! `GET /_sandbox/deliveries`). Faults for convergence tests: drop, duplicate or delay
//! events, or hold them and release them reordered.
//!
//! # Consumers
//!
//! * `lease-sync sandbox-buildium --listen ADDR --webhook-url URL --secret S` ([`BuildiumArgs`],
//!   [`run`]), driven through the control API under `/_sandbox/` (see [`BuildiumSandbox::router`]);
//! * Rust tests: [`BuildiumSandbox::new`], [`BuildiumSandbox::serve`], the change methods
//!   ([`BuildiumSandbox::create_lease`], …), [`BuildiumSandbox::deliveries`] and
//!   [`BuildiumSandbox::wait_for_deliveries`].

mod api;
mod cli;
mod control;
pub mod model;
#[cfg(test)]
mod tests;
pub mod webhooks;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

pub use api::{CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, DEFAULT_LIMIT, MAX_LIMIT, MAX_QUERY_CHARS};
pub use cli::{BuildiumArgs, BuildiumArgsError, run};
pub use model::{
    ChangeError, EventName, LeaseStatus, LeaseType, LeaseUpdate, MoveOut, NewLease, NewTenant,
    TenantStatus, TenantUpdate,
};
pub use webhooks::{
    Attempt, AttemptOutcome, DELIVERY_TIMEOUT, Delivery, DeliveryState, RETRY_SCHEDULE,
    ReleaseOrder, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookEvent, WebhookFault, WebhookFaults,
    retry_delays, sign,
};

use model::{Occurred, Store};
use webhooks::{HttpPoster, Plan, SharedPoster};

/// Most deliveries and reads kept in memory; older ones are dropped first.
pub const MAX_RECORDED: usize = 10_000;

/// Buildium's documented rate limit, in requests per second.
pub const DEFAULT_RATE_LIMIT: u32 = 10;

/// The account id of the events when none is given (the one in Buildium's own examples).
pub const DEFAULT_ACCOUNT_ID: i64 = 123_456;

/// The API credentials the emulator accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Expected `x-buildium-client-id`.
    pub client_id: String,
    /// Expected `x-buildium-client-secret`.
    pub client_secret: String,
}

// Manual impl so that the secret never ends up in logs via `{:?}`.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// Random faults of the reads. The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadFaults {
    /// Status answered by a random fault (e.g. 503 or 429); `None` disables them.
    pub status: Option<u16>,
    /// Probability (0 to 1) that a read gets `status`.
    pub rate: f64,
}

/// A scripted fault for the next read, queued with [`BuildiumSandbox::push_read_fault`] and
/// applied before the random ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ReadFault {
    /// Answer this status (an `ApiErrorResponse` body) without looking at the request.
    Status(u16),
    /// Answer normally after this long.
    Delay(#[serde(with = "millis")] Duration),
}

/// Durations as whole milliseconds in JSON.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// Options of a [`BuildiumSandbox`].
#[derive(Clone)]
pub struct BuildiumOptions {
    /// Where webhooks are posted; `None` records them as [`DeliveryState::NotSent`]. Can be
    /// changed later with [`BuildiumSandbox::set_webhook_url`].
    pub webhook_url: Option<String>,
    /// The webhook signing secret.
    pub secret: String,
    /// `AccountId` of the events.
    pub account_id: i64,
    /// Accepted API credentials; `None` accepts any non-empty pair.
    pub credentials: Option<Credentials>,
    /// Reads allowed per second (sliding one-second window); 0 disables the limit.
    pub rate_limit: u32,
    /// Divides Buildium's retry schedule (1 min, 10 min, 1 h); 1 keeps it.
    pub retry_scale: f64,
    /// How long a delivery attempt waits for the receiver (Buildium: 10 s).
    pub delivery_timeout: Duration,
    /// Random faults of the webhooks.
    pub webhook_faults: WebhookFaults,
    /// Random faults of the reads.
    pub read_faults: ReadFaults,
}

// Manual impl so that the signing secret never ends up in logs via `{:?}`.
impl fmt::Debug for BuildiumOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildiumOptions")
            .field("webhook_url", &self.webhook_url)
            .field("secret", &"[redacted]")
            .field("account_id", &self.account_id)
            .field("credentials", &self.credentials)
            .field("rate_limit", &self.rate_limit)
            .field("retry_scale", &self.retry_scale)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("webhook_faults", &self.webhook_faults)
            .field("read_faults", &self.read_faults)
            .finish()
    }
}

impl Default for BuildiumOptions {
    fn default() -> Self {
        Self {
            webhook_url: None,
            secret: String::new(),
            account_id: DEFAULT_ACCOUNT_ID,
            credentials: None,
            rate_limit: DEFAULT_RATE_LIMIT,
            retry_scale: 1.0,
            delivery_timeout: webhooks::DELIVERY_TIMEOUT,
            webhook_faults: WebhookFaults::default(),
            read_faults: ReadFaults::default(),
        }
    }
}

/// One read of the `/v1` API, as the emulator saw it (credentials left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRead {
    /// HTTP method.
    pub method: String,
    /// Path as sent.
    pub path: String,
    /// Query string as sent, if any.
    pub query: Option<String>,
    /// The `x-buildium-client-id` sent, if any.
    pub client_id: Option<String>,
    /// Status answered.
    pub status: u16,
    /// When the read arrived, in milliseconds since the Unix epoch (the machine's clock).
    #[serde(default)]
    pub at_ms: u64,
}

/// [`BuildiumSandbox::wait_for_deliveries`] ran out of time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out waiting for webhook deliveries ({} recorded)", deliveries.len())]
pub struct WaitTimeout {
    /// The deliveries when the wait gave up.
    pub deliveries: Vec<Delivery>,
}

/// The in-memory Buildium emulator. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct BuildiumSandbox {
    shared: Arc<Shared>,
}

struct Shared {
    account_id: i64,
    secret: String,
    credentials: Option<Credentials>,
    retry_scale: f64,
    delivery_timeout: Duration,
    poster: SharedPoster,
    // A std mutex: never held across an `.await`.
    state: Mutex<State>,
    /// Bumped on every change of the deliveries, so that waits need no polling.
    version: watch::Sender<u64>,
}

struct State {
    store: Store,
    webhook_url: Option<String>,
    deliveries: BTreeMap<u64, Delivery>,
    next_delivery: u64,
    holding: bool,
    /// Held deliveries with the instant their event was emitted.
    held: Vec<(u64, Instant)>,
    webhook_faults: WebhookFaults,
    scripted_webhook_faults: VecDeque<WebhookFault>,
    read_faults: ReadFaults,
    scripted_read_faults: VecDeque<ReadFault>,
    rate_limit: u32,
    /// Start times of the reads let through in the last second.
    window: VecDeque<Instant>,
    reads: VecDeque<RecordedRead>,
}

impl BuildiumSandbox {
    /// Creates an emulator without leases.
    #[must_use]
    pub fn new(options: BuildiumOptions) -> Self {
        Self::with_poster(options, Arc::new(HttpPoster::new()))
    }

    pub(crate) fn with_poster(options: BuildiumOptions, poster: SharedPoster) -> Self {
        let BuildiumOptions {
            webhook_url,
            secret,
            account_id,
            credentials,
            rate_limit,
            retry_scale,
            delivery_timeout,
            webhook_faults,
            read_faults,
        } = options;
        Self {
            shared: Arc::new(Shared {
                account_id,
                secret,
                credentials,
                retry_scale,
                delivery_timeout,
                poster,
                state: Mutex::new(State {
                    store: Store::default(),
                    webhook_url,
                    deliveries: BTreeMap::new(),
                    next_delivery: 1,
                    holding: false,
                    held: Vec::new(),
                    webhook_faults,
                    scripted_webhook_faults: VecDeque::new(),
                    read_faults,
                    scripted_read_faults: VecDeque::new(),
                    rate_limit,
                    window: VecDeque::new(),
                    reads: VecDeque::new(),
                }),
                version: watch::Sender::new(0),
            }),
        }
    }

    /// The HTTP routes: the `/v1` reads and the `/_sandbox` control API.
    ///
    /// Control API (no auth, not rate limited; Buildium objects in PascalCase, the emulator's
    /// own in snake_case; errors as `ApiErrorResponse`):
    ///
    /// | method, path | body | answer |
    /// |---|---|---|
    /// | `GET /_sandbox/leases` | | `[LeaseMessage]` |
    /// | `POST /_sandbox/leases` | [`NewLease`] | `201` `LeaseMessage` |
    /// | `GET /_sandbox/leases/{id}` | | `LeaseMessage` |
    /// | `PATCH /_sandbox/leases/{id}` | [`LeaseUpdate`] | `LeaseMessage` |
    /// | `DELETE /_sandbox/leases/{id}` | | `204` |
    /// | `POST /_sandbox/leases/{id}/tenants` | [`NewTenant`] (or `{"TenantId"}`) | `201` `LeaseMessage` |
    /// | `DELETE /_sandbox/leases/{id}/tenants/{tenantId}` | | `LeaseMessage` |
    /// | `POST /_sandbox/leases/{id}/moveouts` | [`MoveOut`] | `LeaseMessage` |
    /// | `PATCH /_sandbox/tenants/{tenantId}` | [`TenantUpdate`] | `TenantMessage` |
    /// | `GET /_sandbox/deliveries` | | `[Delivery]` |
    /// | `GET /_sandbox/reads` | | `[RecordedRead]` |
    /// | `GET`/`PUT /_sandbox/faults` | `{"reads": ReadFaults, "webhooks": WebhookFaults, "rate_limit"}`, each optional | the faults in force |
    /// | `POST /_sandbox/faults/reads` | `{"status": 503, "count": 1}` or `{"delay_ms": 500, "count": 1}` | `204` |
    /// | `POST /_sandbox/faults/webhooks` | `{"fault": "drop" \| "duplicate", "count": 1}` or `{"delay_ms": 500, "count": 1}` | `204` |
    /// | `POST /_sandbox/webhooks/hold` | | `204` |
    /// | `POST /_sandbox/webhooks/release` | `{"order": "emitted" \| "reversed" \| "shuffled"}` (optional) | `{"released": n}` |
    pub fn router(&self) -> axum::Router {
        control::routes(api::routes(self)).with_state(self.clone())
    }

    /// Serves [`BuildiumSandbox::router`] on `listener` until `shutdown` resolves, then
    /// finishes in-flight requests and returns. Deliveries under way go on in the background
    /// as long as the runtime runs.
    ///
    /// # Errors
    /// The I/O error that stopped the server.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    // -----------------------------------------------------------------------
    // Changes (each emits its webhooks; call them inside a Tokio runtime, or the
    // deliveries are recorded as not sent)

    /// Creates a lease with its tenants and cosigners; returns its id.
    ///
    /// # Errors
    /// [`ChangeError::Invalid`] for a term ending before it starts or a nameless person.
    pub fn create_lease(&self, lease: &NewLease) -> Result<i32, ChangeError> {
        self.apply(|store| store.create_lease(lease))
    }

    /// Changes a lease's dates (a renewal is a later `LeaseToDate`), status, type or unit.
    ///
    /// # Errors
    /// [`ChangeError::LeaseNotFound`], or [`ChangeError::Invalid`] for an impossible term.
    pub fn update_lease(&self, lease_id: i32, update: &LeaseUpdate) -> Result<(), ChangeError> {
        self.apply(|store| Ok(((), store.update_lease(lease_id, update)?)))
    }

    /// Records a tenant's move-out (`MoveOutData`) and updates its status.
    ///
    /// # Errors
    /// [`ChangeError::LeaseNotFound`] or [`ChangeError::NotOnLease`].
    pub fn move_out(&self, lease_id: i32, move_out: &MoveOut) -> Result<(), ChangeError> {
        self.apply(|store| Ok(((), store.move_out(lease_id, move_out)?)))
    }

    /// Puts a new or existing ([`NewTenant::existing`]) tenant on a lease; returns its id.
    ///
    /// # Errors
    /// [`ChangeError::LeaseNotFound`], [`ChangeError::TenantNotFound`],
    /// [`ChangeError::AlreadyOnLease`] or [`ChangeError::Invalid`].
    pub fn add_tenant(&self, lease_id: i32, tenant: &NewTenant) -> Result<i32, ChangeError> {
        self.apply(|store| store.add_tenant(lease_id, tenant))
    }

    /// Takes a tenant off a lease.
    ///
    /// # Errors
    /// [`ChangeError::LeaseNotFound`] or [`ChangeError::NotOnLease`].
    pub fn remove_tenant(&self, lease_id: i32, tenant_id: i32) -> Result<(), ChangeError> {
        self.apply(|store| Ok(((), store.remove_tenant(lease_id, tenant_id)?)))
    }

    /// Changes a tenant's name or email.
    ///
    /// # Errors
    /// [`ChangeError::TenantNotFound`] or [`ChangeError::Invalid`].
    pub fn update_tenant(&self, tenant_id: i32, update: &TenantUpdate) -> Result<(), ChangeError> {
        self.apply(|store| Ok(((), store.update_tenant(tenant_id, update)?)))
    }

    /// Deletes a lease.
    ///
    /// # Errors
    /// [`ChangeError::LeaseNotFound`].
    pub fn delete_lease(&self, lease_id: i32) -> Result<(), ChangeError> {
        self.apply(|store| Ok(((), store.delete_lease(lease_id)?)))
    }

    // -----------------------------------------------------------------------
    // State

    /// The `LeaseMessage` of a lease, as `GET /v1/leases/{id}` answers it.
    #[must_use]
    pub fn lease(&self, lease_id: i32) -> Option<Value> {
        self.lock().store.lease_message(lease_id)
    }

    /// Every lease's `LeaseMessage`, by id.
    #[must_use]
    pub fn leases(&self) -> Vec<Value> {
        let state = self.lock();
        state
            .store
            .lease_ids()
            .filter_map(|id| state.store.lease_message(id))
            .collect()
    }

    /// The `TenantMessage` of a tenant, as `GET /v1/leases/tenants/{id}` answers it.
    #[must_use]
    pub fn tenant(&self, tenant_id: i32) -> Option<Value> {
        self.lock().store.tenant_message(tenant_id)
    }

    /// Every delivery (at most [`MAX_RECORDED`]), oldest first.
    #[must_use]
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.values().cloned().collect()
    }

    /// Every read of the `/v1` API (at most [`MAX_RECORDED`]), oldest first.
    #[must_use]
    pub fn reads(&self) -> Vec<RecordedRead> {
        self.lock().reads.iter().cloned().collect()
    }

    /// Waits until at least `count` deliveries are settled (delivered, given up, dropped or
    /// not sent), for at most `limit`; returns [`BuildiumSandbox::deliveries`]. Works under
    /// Tokio's paused clock.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the deliveries so far when `limit` passes first.
    pub async fn wait_for_deliveries(
        &self,
        count: usize,
        limit: Duration,
    ) -> Result<Vec<Delivery>, WaitTimeout> {
        self.wait_until(limit, |deliveries| {
            deliveries
                .iter()
                .filter(|delivery| delivery.state.is_settled())
                .count()
                >= count
        })
        .await
    }

    /// Waits until `done` holds for the deliveries, for at most `limit`.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the deliveries so far when `limit` passes first.
    pub async fn wait_until(
        &self,
        limit: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Result<Vec<Delivery>, WaitTimeout> {
        // Subscribing before looking means no change can slip between the two.
        let mut version = self.shared.version.subscribe();
        let waiting = async {
            loop {
                let deliveries = self.deliveries();
                if done(&deliveries) {
                    return deliveries;
                }
                // The sender lives in `self`: the channel cannot close while we wait.
                if version.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(limit, waiting)
            .await
            .map_err(|_| WaitTimeout {
                deliveries: self.deliveries(),
            })
    }

    // -----------------------------------------------------------------------
    // Webhook control and faults

    /// Changes where webhooks go (for attempts from now on, retries included).
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.lock().webhook_url = url;
    }

    /// Replaces the random webhook faults.
    pub fn set_webhook_faults(&self, faults: WebhookFaults) {
        self.lock().webhook_faults = faults;
    }

    /// Queues a fault for the next event.
    pub fn push_webhook_fault(&self, fault: WebhookFault) {
        self.lock().scripted_webhook_faults.push_back(fault);
    }

    /// Keeps new events back (recorded as [`DeliveryState::Held`]) until
    /// [`BuildiumSandbox::release_webhooks`].
    pub fn hold_webhooks(&self) {
        self.lock().holding = true;
    }

    /// Stops holding and sends the held events in `order`, one first attempt after the
    /// other (retries then run on their own); returns how many were held.
    pub fn release_webhooks(&self, order: ReleaseOrder) -> usize {
        let mut held = {
            let mut state = self.lock();
            state.holding = false;
            let held = std::mem::take(&mut state.held);
            for (id, _) in &held {
                if let Some(delivery) = state.deliveries.get_mut(id) {
                    delivery.state = DeliveryState::Pending;
                }
            }
            held
        };
        self.changed();
        match order {
            ReleaseOrder::Emitted => {}
            ReleaseOrder::Reversed => held.reverse(),
            ReleaseOrder::Shuffled => held.shuffle(&mut rand::rng()),
        }
        let count = held.len();
        let sandbox = self.clone();
        self.spawn_or_give_up(held.iter().map(|(id, _)| *id).collect(), async move {
            for (id, emitted) in held {
                if !sandbox.attempt(id, 1, emitted).await {
                    tokio::spawn(sandbox.clone().retry(id, emitted));
                }
            }
        });
        count
    }

    /// Replaces the random read faults.
    pub fn set_read_faults(&self, faults: ReadFaults) {
        self.lock().read_faults = faults;
    }

    /// Queues a fault for the next read.
    pub fn push_read_fault(&self, fault: ReadFault) {
        self.lock().scripted_read_faults.push_back(fault);
    }

    /// Changes the reads allowed per second (0: no limit).
    pub fn set_rate_limit(&self, per_second: u32) {
        let mut state = self.lock();
        state.rate_limit = per_second;
        state.window.clear();
    }

    // -----------------------------------------------------------------------
    // Internals

    /// Locks the state; a poisoned lock is recovered (no path leaves it half-updated).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.shared.version.send_modify(|version| *version += 1);
    }

    /// Applies a change under the lock, records a delivery for each event it caused (and
    /// each injected duplicate), then starts the deliveries that are not held or dropped.
    fn apply<T>(
        &self,
        change: impl FnOnce(&mut Store) -> Result<(T, Vec<Occurred>), ChangeError>,
    ) -> Result<T, ChangeError> {
        let emitted = Instant::now();
        let mut start = Vec::new();
        let value = {
            let mut state = self.lock();
            let (value, occurred) = change(&mut state.store)?;
            for event in &occurred {
                let event = WebhookEvent::new(event, self.shared.account_id);
                let plan = state.plan();
                let original = state.record_delivery(event.clone(), None, plan.drop);
                if plan.drop {
                    continue;
                }
                let mut ids = vec![original];
                if plan.duplicate {
                    ids.push(state.record_delivery(event, Some(original), false));
                }
                for id in ids {
                    if state.holding {
                        state.held.push((id, emitted));
                    } else {
                        start.push((id, plan.delay));
                    }
                }
            }
            value
        };
        self.changed();
        for (id, delay) in start {
            let delivery = self.clone().deliver(id, emitted, delay);
            self.spawn_or_give_up(vec![id], delivery);
        }
        Ok(value)
    }

    /// Spawns `task` on the current Tokio runtime; without one, marks `ids` as not sent.
    fn spawn_or_give_up(&self, ids: Vec<u64>, task: impl Future<Output = ()> + Send + 'static) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(task);
            }
            Err(_) => {
                for id in ids {
                    self.set_state(
                        id,
                        DeliveryState::NotSent,
                        Some("no Tokio runtime was running to send it".into()),
                    );
                }
            }
        }
    }

    /// Marks a delivery as being sent and returns its body and the URL to use.
    fn prepare_attempt(&self, id: u64) -> Option<(String, Option<String>)> {
        let prepared = {
            let mut state = self.lock();
            let url = state.webhook_url.clone();
            let delivery = state.deliveries.get_mut(&id)?;
            delivery.state = DeliveryState::Pending;
            (delivery.body.clone(), url)
        };
        self.changed();
        Some(prepared)
    }

    fn record_attempt(&self, id: u64, attempt: webhooks::Attempt, delivered: bool) {
        {
            let mut state = self.lock();
            if let Some(delivery) = state.deliveries.get_mut(&id) {
                delivery.attempts.push(attempt);
                if delivered {
                    delivery.state = DeliveryState::Delivered;
                }
            }
        }
        self.changed();
    }

    fn set_state(&self, id: u64, to: DeliveryState, note: Option<String>) {
        {
            let mut state = self.lock();
            if let Some(delivery) = state.deliveries.get_mut(&id) {
                delivery.state = to;
                if note.is_some() {
                    delivery.note = note;
                }
            }
        }
        self.changed();
    }
}

impl State {
    /// Decides the faults of a new event: a scripted one first, else the random ones.
    fn plan(&mut self) -> Plan {
        if let Some(fault) = self.scripted_webhook_faults.pop_front() {
            return match fault {
                WebhookFault::Drop => Plan {
                    drop: true,
                    ..Plan::default()
                },
                WebhookFault::Duplicate => Plan {
                    duplicate: true,
                    ..Plan::default()
                },
                WebhookFault::Delay(delay) => Plan {
                    delay,
                    ..Plan::default()
                },
            };
        }
        let faults = &self.webhook_faults;
        // `random::<f64>()` is in [0, 1): rate 1 always fires, 0 and NaN never do.
        let delay = if faults.max_delay.is_zero() {
            Duration::ZERO
        } else {
            faults.max_delay.mul_f64(rand::random::<f64>())
        };
        Plan {
            drop: rand::random::<f64>() < faults.drop_rate,
            duplicate: rand::random::<f64>() < faults.duplicate_rate,
            delay,
        }
    }

    /// Records a new delivery (dropped or pending) and returns its id.
    fn record_delivery(
        &mut self,
        event: WebhookEvent,
        duplicate_of: Option<u64>,
        dropped: bool,
    ) -> u64 {
        let id = self.next_delivery;
        self.next_delivery += 1;
        let (state, note) = if dropped {
            (
                DeliveryState::Dropped,
                Some("dropped by an injected fault".to_owned()),
            )
        } else if self.holding {
            (DeliveryState::Held, None)
        } else {
            (DeliveryState::Pending, None)
        };
        if self.deliveries.len() >= MAX_RECORDED {
            self.deliveries.pop_first();
        }
        let body = event.body();
        self.deliveries.insert(
            id,
            Delivery {
                id,
                event,
                body,
                duplicate_of,
                state,
                note,
                attempts: Vec::new(),
            },
        );
        id
    }

    fn record_read(&mut self, read: RecordedRead) {
        if self.reads.len() >= MAX_RECORDED {
            self.reads.pop_front();
        }
        self.reads.push_back(read);
    }
}
