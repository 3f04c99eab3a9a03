//! Local, in-memory emulators of the two services lease-sync talks to.
//!
//! * [`Sandbox`]: OpenApp's building-users and users API (this module), served by
//!   `lease-sync sandbox-openapp`.
//! * [`buildium::BuildiumSandbox`]: Buildium's lease and tenant reads and its signed lease
//!   webhooks, served by `lease-sync sandbox-buildium` (see [`buildium`]).
//!
//! # The OpenApp sandbox
//!
//! It serves the operations lease-sync depends on, under the same `/api/v1` prefix as the
//! real service:
//!
//! | operation | request | success |
//! |---|---|---|
//! | list   | `GET /api/v1/integrations/{id}/building-users` | `200`, JSON array |
//! | add    | `POST /api/v1/integrations/{id}/building-users` | `201`, the row |
//! | remove | `DELETE /api/v1/integrations/{id}/building-users/{user_id}` | `204` |
//! | search users | `GET /api/v1/users/search?q=&org_id=&scope=&limit=&offset=&exclude_ids=` | `200`, `{items, total}` |
//! | create user | `POST /api/v1/users` (`X-Org`, `CreateUserRequest`) | `200`, the user; `409` on a taken email |
//!
//! It enforces OpenApp's wire contract as its published OpenAPI specification describes it
//! (auth header, required `X-Org`, integration ownership, strict request bodies), records
//! every call for later inspection, and can inject faults (error statuses,
//! slow replies, requests that never get an answer) so that retry and
//! idempotency handling can be exercised without the real service.
//!
//! Users follow the spec's `UserResponse`: `id` (a ULID), `name` (a `LocalizedString`, the
//! object `{locale: text}`, e.g. `{"en": "Alice Smith"}`), `email`, `metadata`, the nullable
//! storage fields (`created_at`, `updated_at`, …) and `roles` (org id → role names, building-user
//! roles included). The search's `q` is a case-insensitive substring match on the name and the
//! email (the spec's `ILIKE`); it is scoped to `org_id` (else `X-Org`) unless `scope=all`;
//! `limit` defaults to 50 and is capped at 200. `create_user` answers `200`, the spec's only
//! success code. Emails are unique among all users, compared case-insensitively.
//!
//! Error bodies follow `ApiErrorResponse` (`{"message", "error_code"}`).
//! `error_code` is `"unauthorized"` for 401s, `"sandbox_fault"` for injected
//! faults and `null` otherwise: the real service's codes are not documented,
//! so the sandbox does not invent any that clients could come to rely on.
//! Every response carries an `X-Request-Id` header with a fresh ULID.
//!
//! Two consumers:
//! * integrators run it with `lease-sync sandbox-openapp --listen ADDR`
//!   (see [`SandboxArgs`] and [`run`]);
//! * integration tests start it in-process on `127.0.0.1:0` with
//!   [`Sandbox::serve`], seed it with [`Sandbox::add_member`] and [`Sandbox::add_user`],
//!   and inspect it with [`Sandbox::calls`], [`Sandbox::members`], [`Sandbox::users`] and
//!   [`Sandbox::wait_for_calls`].
//!
//! Control endpoints for humans and out-of-process tests (no auth — this is a
//! local tool): `GET /_sandbox/calls` (recorded calls, credentials redacted),
//! `GET /_sandbox/state` (integration id → user id → role), `GET /_sandbox/users` and
//! `POST /_sandbox/users` (`{org_id, name, email, id?, first_name?, last_name?}`, `201`).
//!
//! This crate depends on nothing of lease-sync: the `lease-sync` binary
//! dispatches its `sandbox-openapp` and `sandbox-buildium` subcommands here, and the
//! `lease_sync` library does not link it.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod buildium;
mod cli;
mod handlers;
#[cfg(test)]
mod tests;
mod users;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::Method;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use cli::{SandboxArgs, SandboxArgsError, run};
pub use users::{DEFAULT_LOCALE, NewUser, User, UserError};

/// Most recorded calls kept in memory; older ones are dropped first so a
/// long-running sandbox cannot grow without bound.
pub const MAX_RECORDED_CALLS: usize = 10_000;

/// Largest request body accepted, in bytes; bigger bodies get `413`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Placeholder written instead of credential values wherever recorded calls
/// leave the process (the `/_sandbox/calls` endpoint, `Debug` output).
const REDACTED: &str = "[redacted]";

/// Options of a [`Sandbox`], fixed when it is created (except the faults,
/// which can be replaced later with [`Sandbox::set_faults`]).
#[derive(Clone, Default)]
pub struct SandboxOptions {
    /// API keys accepted. When empty, any non-empty key is accepted, which
    /// keeps throwaway test setups short.
    pub api_keys: Vec<String>,
    /// Which header carries the API key.
    pub auth: SandboxAuth,
    /// Known integrations as `(org_id, integration_id)` pairs. When empty,
    /// every integration id is accepted and bound to the `X-Org` of its first
    /// call. When an integration id is listed twice, the first pair wins.
    pub integrations: Vec<(String, String)>,
    /// Answer `409 {"message":"User already in building"}` when adding a user
    /// that is already present, instead of the default idempotent `201`.
    /// The stored spec declares no 409, but clients must survive one.
    pub conflict_on_existing: bool,
    /// Users to create at start, as `(org_id, user)` (see [`Sandbox::add_user`]); one that
    /// cannot be created (e.g. a repeated email) is logged and skipped.
    pub users: Vec<(String, NewUser)>,
    /// Random faults and slow replies.
    pub faults: FaultOptions,
}

// Manual impl so that API keys never end up in logs via `{:?}`.
impl fmt::Debug for SandboxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxOptions")
            .field(
                "api_keys",
                &format_args!("[{} redacted]", self.api_keys.len()),
            )
            .field("auth", &self.auth)
            .field("integrations", &self.integrations)
            .field("conflict_on_existing", &self.conflict_on_existing)
            .field("users", &self.users.len())
            .field("faults", &self.faults)
            .finish()
    }
}

/// Where the sandbox expects the API key.
///
/// The two variants mirror the two generations of the OpenApp spec: older gateways take the
/// key as a bearer token, newer ones in `X-API-Key`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxAuth {
    /// `Authorization: Bearer <key>` (spec @676efbdf, the default).
    #[default]
    Bearer,
    /// `X-API-Key: <key>` (spec @78043901). In this mode any `Authorization`
    /// header is rejected with `401`, as the real gateway reserves it for JWTs.
    XApiKey,
}

/// Random faults and slow replies applied to the API operations (building users and users).
///
/// The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultOptions {
    /// Status answered for a random fault; `None` disables random faults.
    /// Codes that cannot be a final HTTP status (below 200 or above 999) are
    /// answered as `500`.
    pub status: Option<u16>,
    /// Probability (`0.0..=1.0`) that a call gets the fault `status`.
    /// Values outside the range are effectively clamped; NaN means never.
    pub rate: f64,
    /// Added before every answer of the API operations, faults
    /// included. The operation itself is applied first, so a client that gives
    /// up during the delay has still changed the state (a lost reply).
    pub delay: Duration,
    /// `Retry-After` header value sent with random faults, verbatim (so that
    /// clients can also be fed malformed values).
    pub retry_after: Option<String>,
}

impl FaultOptions {
    /// Faults that answer `status` to every call.
    #[must_use]
    pub fn always(status: u16) -> Self {
        Self {
            status: Some(status),
            rate: 1.0,
            ..Self::default()
        }
    }
}

/// A scripted fault, queued with [`Sandbox::push_fault`] and consumed by the
/// next matching call, before random faults are considered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` with body
    /// `{"message":"Injected fault","error_code":"sandbox_fault"}`, without
    /// looking at the request (an outage in front of the API).
    Status {
        /// HTTP status to answer.
        status: u16,
        /// `Retry-After` header value, sent verbatim when set.
        retry_after: Option<String>,
    },
    /// Process the call normally but hold the answer back for this long (on
    /// top of [`FaultOptions::delay`]).
    Delay(Duration),
    /// Never answer: the request is held until the client gives up or the
    /// server started by [`Sandbox::serve`] shuts down (then it gets `503`).
    /// Nothing is applied to the state.
    Hang,
}

/// One call to an API route (building users or users), as the sandbox saw it.
///
/// [`Sandbox::calls`] returns credentials verbatim so that tests can assert
/// what the client sent; use [`RecordedCall::redacted`] before showing calls
/// to anyone (the `/_sandbox/calls` endpoint does).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedCall {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path as sent (percent-encoded), without the query.
    pub path: String,
    /// Integration id from the path (percent-decoded); empty for the users routes and
    /// when the path parameters could not be decoded.
    pub integration_id: String,
    /// The building user concerned: the path `user_id` for `DELETE`, the body
    /// `user_id` for `POST` (when it is a string), `None` for `GET` and for the users
    /// routes.
    pub user_id: Option<String>,
    /// `Authorization` header, lossily decoded as UTF-8.
    pub authorization: Option<String>,
    /// `X-API-Key` header, lossily decoded as UTF-8.
    pub x_api_key: Option<String>,
    /// `X-Org` header, lossily decoded as UTF-8.
    pub x_org: Option<String>,
    /// `Content-Type` header, lossily decoded as UTF-8.
    pub content_type: Option<String>,
    /// Request body when it was read and parsed as JSON (only `POST` bodies
    /// are read; `None` when absent, too large or not JSON).
    pub body: Option<serde_json::Value>,
    /// Status answered; `0` while a [`Fault::Hang`] holds the request (it
    /// becomes `503` if the hang is ended by shutdown).
    pub status: u16,
    /// Value of the `X-Request-Id` response header (a ULID).
    pub request_id: String,
    /// When the sandbox received the call, in milliseconds since the Unix epoch (the
    /// machine's clock), so that a benchmark can time a change elsewhere to this call.
    #[serde(default)]
    pub at_ms: u64,
    /// Position of the call among every call recorded since the sandbox started, from 1;
    /// set when it is recorded. A gap before the oldest one kept shows how many calls the
    /// cap ([`MAX_RECORDED_CALLS`]) dropped, and the newest one's is the total.
    #[serde(default)]
    pub seq: u64,
}

impl RecordedCall {
    /// A copy with the credential values replaced by `[redacted]`; the
    /// `Authorization` scheme is kept (`Bearer [redacted]`) because a wrong
    /// scheme is a common client bug worth seeing.
    #[must_use]
    pub fn redacted(&self) -> Self {
        Self {
            authorization: self.authorization.as_deref().map(redact_authorization),
            x_api_key: self.x_api_key.as_ref().map(|_| REDACTED.to_owned()),
            ..self.clone()
        }
    }
}

/// Milliseconds since the Unix epoch now, on the machine's clock (0 before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn redact_authorization(value: &str) -> String {
    match value.trim_start().split_once(' ') {
        Some((scheme, _)) => format!("{scheme} {REDACTED}"),
        None => REDACTED.to_owned(),
    }
}

// Manual impl so that a stray `{:?}` in a test or log never prints a key.
impl fmt::Debug for RecordedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.redacted();
        f.debug_struct("RecordedCall")
            .field("method", &shown.method)
            .field("path", &shown.path)
            .field("integration_id", &shown.integration_id)
            .field("user_id", &shown.user_id)
            .field("authorization", &shown.authorization)
            .field("x_api_key", &shown.x_api_key)
            .field("x_org", &shown.x_org)
            .field("content_type", &shown.content_type)
            .field("body", &shown.body)
            .field("status", &shown.status)
            .field("request_id", &shown.request_id)
            .field("at_ms", &shown.at_ms)
            .field("seq", &shown.seq)
            .finish()
    }
}

/// The in-memory OpenApp emulator. Cheap to clone; clones share state, so a
/// test can keep one handle while another one serves.
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
}

/// Configuration that never changes after [`Sandbox::new`], plus the mutable
/// state behind a mutex.
struct Shared {
    api_keys: Vec<String>,
    auth: SandboxAuth,
    /// True when no integrations were configured: unknown integration ids are
    /// then accepted and bound to the first `X-Org` seen.
    open_registration: bool,
    conflict_on_existing: bool,
    // A std mutex is enough: it is never held across an `.await`.
    state: Mutex<State>,
    /// Total number of calls ever recorded (not capped), so that
    /// [`Sandbox::wait_for_calls`] can wait without polling.
    recorded: watch::Sender<usize>,
    /// Requests being answered now, and the most ever at once.
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

/// One request being answered; counted out when dropped.
pub(crate) struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct State {
    faults: FaultOptions,
    scripted: VecDeque<ScriptedFault>,
    integrations: BTreeMap<String, IntegrationState>,
    /// User id → user (`/api/v1/users`).
    users: BTreeMap<String, User>,
    /// Monotonic, so that ordering users by id is ordering them by creation.
    user_ids: ulid::Generator,
    /// Users deleted with [`Sandbox::delete_user`]: adding one answers `404 User not found`,
    /// as OpenApp does for an id it does not know. (Other unknown ids are accepted, so tests
    /// may use made-up ids without creating users.)
    deleted_users: std::collections::BTreeSet<String>,
    calls: VecDeque<RecordedCall>,
    /// Calls recorded so far (never capped): the `seq` of the latest one.
    calls_recorded: u64,
}

struct ScriptedFault {
    /// Only calls with this method consume the fault; `None` matches all.
    method: Option<Method>,
    fault: Fault,
}

struct IntegrationState {
    org_id: String,
    /// user id → role.
    members: BTreeMap<String, String>,
}

impl Sandbox {
    /// Creates a sandbox with no members and no recorded calls.
    #[must_use]
    pub fn new(options: SandboxOptions) -> Self {
        let SandboxOptions {
            api_keys,
            auth,
            integrations: known,
            conflict_on_existing,
            users,
            faults,
        } = options;
        let open_registration = known.is_empty();
        let mut integrations = BTreeMap::new();
        for (org_id, integration_id) in known {
            if integrations.contains_key(&integration_id) {
                tracing::warn!(%integration_id, "integration listed twice; keeping the first org");
                continue;
            }
            integrations.insert(
                integration_id,
                IntegrationState {
                    org_id,
                    members: BTreeMap::new(),
                },
            );
        }
        let sandbox = Self {
            shared: Arc::new(Shared {
                api_keys,
                auth,
                open_registration,
                conflict_on_existing,
                state: Mutex::new(State {
                    faults,
                    scripted: VecDeque::new(),
                    integrations,
                    users: BTreeMap::new(),
                    user_ids: ulid::Generator::new(),
                    deleted_users: std::collections::BTreeSet::new(),
                    calls: VecDeque::new(),
                    calls_recorded: 0,
                }),
                recorded: watch::Sender::new(0),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                max_in_flight: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        for (org, user) in users {
            if let Err(error) = sandbox.add_user(&org, user) {
                tracing::warn!(%org, %error, "seed user not created");
            }
        }
        sandbox
    }

    /// The HTTP routes: the three building-users operations under `/api/v1`
    /// and the `/_sandbox/*` control endpoints.
    ///
    /// When the router is served by other means than [`Sandbox::serve`], a
    /// [`Fault::Hang`] lasts until the client disconnects, and delays are not
    /// cut short by shutdown.
    pub fn router(&self) -> axum::Router {
        handlers::router(self.clone())
    }

    /// Serves [`Sandbox::router`] on `listener` until `shutdown` resolves,
    /// then finishes in-flight requests and returns. Requests held by
    /// [`Fault::Hang`] or a delay are released at shutdown so that it
    /// completes promptly.
    ///
    /// # Errors
    /// Returns the I/O error that stopped the server.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Dropping the sender is the release signal: receivers see the
        // channel close, including requests that arrive after shutdown began.
        let (release, release_rx) = watch::channel(());
        let app = self
            .router()
            .layer(axum::Extension(handlers::ShutdownSignal(release_rx)));
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                drop(release);
            })
            .await
    }

    /// The most requests (any route) this sandbox was answering at once.
    #[must_use]
    pub fn max_in_flight(&self) -> usize {
        self.shared
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a request in until the guard is dropped.
    pub(crate) fn enter_call(&self) -> InFlight<'_> {
        use std::sync::atomic::Ordering;
        let now = self.shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(&self.shared)
    }

    /// All recorded calls, oldest first (at most [`MAX_RECORDED_CALLS`]),
    /// with credentials verbatim. Calls to `/_sandbox/*` and to unknown routes
    /// are not recorded.
    #[must_use]
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.lock().calls.iter().cloned().collect()
    }

    /// Waits until at least `count` calls have been recorded since the
    /// sandbox was created, then returns [`Sandbox::calls`]. Lets tests wait
    /// for a background client without sleeping; wrap it in a timeout.
    pub async fn wait_for_calls(&self, count: usize) -> Vec<RecordedCall> {
        let mut recorded = self.shared.recorded.subscribe();
        // The sender lives in `self`, so the channel cannot close while we
        // wait; an error could only mean it did, and then there is nothing
        // more to wait for.
        if recorded.wait_for(|&total| total >= count).await.is_err() {
            tracing::debug!("call counter closed while waiting");
        }
        self.calls()
    }

    /// Members of `integration_id` as user id → role; empty when the
    /// integration is unknown.
    #[must_use]
    pub fn members(&self, integration_id: &str) -> BTreeMap<String, String> {
        self.lock()
            .integrations
            .get(integration_id)
            .map(|integration| integration.members.clone())
            .unwrap_or_default()
    }

    /// Queues a scripted fault for the next call of any method.
    pub fn push_fault(&self, fault: Fault) {
        self.push_scripted(None, fault);
    }

    /// Queues a scripted fault for the next call with `method` only (e.g.
    /// fail the next `DELETE` but let the `GET` before it through). Calls with
    /// other methods skip it; faults are still consumed in FIFO order among
    /// those that match a call.
    pub fn push_fault_for(&self, method: Method, fault: Fault) {
        self.push_scripted(Some(method), fault);
    }

    fn push_scripted(&self, method: Option<Method>, fault: Fault) {
        self.lock()
            .scripted
            .push_back(ScriptedFault { method, fault });
    }

    /// Replaces the random fault and delay options.
    pub fn set_faults(&self, faults: FaultOptions) {
        self.lock().faults = faults;
    }

    /// Seeds a member, bypassing HTTP. The integration becomes known and is
    /// bound to `org` if it was not known yet; an existing binding is kept.
    pub fn add_member(&self, org: &str, integration_id: &str, user_id: &str, role: &str) {
        let mut state = self.lock();
        let integration = state
            .integrations
            .entry(integration_id.to_owned())
            .or_insert_with(|| IntegrationState {
                org_id: org.to_owned(),
                members: BTreeMap::new(),
            });
        if integration.org_id != org {
            tracing::warn!(
                %integration_id,
                "add_member: integration already bound to another org; keeping that org"
            );
        }
        integration
            .members
            .insert(user_id.to_owned(), role.to_owned());
    }

    /// Locks the state. A poisoned lock is recovered rather than propagated:
    /// no code path leaves the state half-updated, and a test that panicked
    /// elsewhere should not turn every later request into a panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Integration id → (user id → role), for `/_sandbox/state`.
    fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.lock()
            .integrations
            .iter()
            .map(|(id, integration)| (id.clone(), integration.members.clone()))
            .collect()
    }

    fn record(&self, mut call: RecordedCall) {
        {
            let mut state = self.lock();
            if state.calls.len() >= MAX_RECORDED_CALLS {
                state.calls.pop_front();
            }
            state.calls_recorded += 1;
            call.seq = state.calls_recorded;
            state.calls.push_back(call);
        }
        self.shared.recorded.send_modify(|total| *total += 1);
    }

    /// Sets the status of an already recorded call (used when a hung request
    /// is finally answered).
    fn update_recorded_status(&self, request_id: &str, status: u16) {
        let mut state = self.lock();
        if let Some(call) = state
            .calls
            .iter_mut()
            .rev()
            .find(|call| call.request_id == request_id)
        {
            call.status = status;
        }
    }
}
