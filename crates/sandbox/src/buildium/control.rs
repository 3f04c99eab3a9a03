//! The `/_sandbox` control API: changes to leases and tenants (emitting webhooks), the
//! records, and the faults. No auth: a local tool.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::api::BuildiumError;
use super::model::{ChangeError, LeaseUpdate, MoveOut, NewLease, NewTenant, TenantUpdate};
use super::{BuildiumSandbox, ReadFault, ReadFaults, ReleaseOrder, WebhookFault, WebhookFaults};

/// Most faults one `POST /_sandbox/faults/*` may queue.
const MAX_QUEUED_FAULTS: u32 = 1000;

pub(super) fn routes(router: Router<BuildiumSandbox>) -> Router<BuildiumSandbox> {
    router
        .route("/_sandbox/leases", get(list_leases).post(create_lease))
        .route(
            "/_sandbox/leases/{lease_id}",
            get(get_lease).patch(update_lease).delete(delete_lease),
        )
        .route("/_sandbox/leases/{lease_id}/tenants", post(add_tenant))
        .route(
            "/_sandbox/leases/{lease_id}/tenants/{tenant_id}",
            axum::routing::delete(remove_tenant),
        )
        .route("/_sandbox/leases/{lease_id}/moveouts", post(move_out))
        .route(
            "/_sandbox/tenants/{tenant_id}",
            axum::routing::patch(update_tenant),
        )
        .route("/_sandbox/deliveries", get(deliveries))
        .route("/_sandbox/reads", get(reads))
        .route("/_sandbox/faults", get(get_faults).put(put_faults))
        .route("/_sandbox/faults/reads", post(queue_read_faults))
        .route("/_sandbox/faults/webhooks", post(queue_webhook_faults))
        .route("/_sandbox/webhooks/hold", post(hold))
        .route("/_sandbox/webhooks/release", post(release))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

impl From<ChangeError> for BuildiumError {
    fn from(error: ChangeError) -> Self {
        let status = match error {
            ChangeError::LeaseNotFound(_) | ChangeError::TenantNotFound(_) => StatusCode::NOT_FOUND,
            ChangeError::NotOnLease { .. } | ChangeError::AlreadyOnLease { .. } => {
                StatusCode::CONFLICT
            }
            ChangeError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, error.to_string())
    }
}

/// Parses a JSON body strictly (unknown fields rejected), naming the problem in a 400.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, BuildiumError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|error| {
        BuildiumError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid request body: {error}"),
        )
    })
}

fn id(text: &str) -> Result<i32, BuildiumError> {
    text.parse().map_err(|_| BuildiumError::not_found())
}

fn lease_reply(
    sandbox: &BuildiumSandbox,
    lease_id: i32,
    status: StatusCode,
) -> Result<Response, BuildiumError> {
    let message = sandbox
        .lease(lease_id)
        .ok_or(ChangeError::LeaseNotFound(lease_id))?;
    Ok((status, Json(message)).into_response())
}

async fn list_leases(State(sandbox): State<BuildiumSandbox>) -> Response {
    Json(sandbox.leases()).into_response()
}

async fn create_lease(
    State(sandbox): State<BuildiumSandbox>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let lease: NewLease = body(&bytes)?;
    let lease_id = sandbox.create_lease(&lease)?;
    lease_reply(&sandbox, lease_id, StatusCode::CREATED)
}

async fn get_lease(
    State(sandbox): State<BuildiumSandbox>,
    Path(lease_id): Path<String>,
) -> Result<Response, BuildiumError> {
    lease_reply(&sandbox, id(&lease_id)?, StatusCode::OK)
}

async fn update_lease(
    State(sandbox): State<BuildiumSandbox>,
    Path(lease_id): Path<String>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let lease_id = id(&lease_id)?;
    let update: LeaseUpdate = body(&bytes)?;
    sandbox.update_lease(lease_id, &update)?;
    lease_reply(&sandbox, lease_id, StatusCode::OK)
}

async fn delete_lease(
    State(sandbox): State<BuildiumSandbox>,
    Path(lease_id): Path<String>,
) -> Result<Response, BuildiumError> {
    sandbox.delete_lease(id(&lease_id)?)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn add_tenant(
    State(sandbox): State<BuildiumSandbox>,
    Path(lease_id): Path<String>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let lease_id = id(&lease_id)?;
    let tenant: NewTenant = body(&bytes)?;
    sandbox.add_tenant(lease_id, &tenant)?;
    lease_reply(&sandbox, lease_id, StatusCode::CREATED)
}

async fn remove_tenant(
    State(sandbox): State<BuildiumSandbox>,
    Path((lease_id, tenant_id)): Path<(String, String)>,
) -> Result<Response, BuildiumError> {
    let lease_id = id(&lease_id)?;
    sandbox.remove_tenant(lease_id, id(&tenant_id)?)?;
    lease_reply(&sandbox, lease_id, StatusCode::OK)
}

async fn move_out(
    State(sandbox): State<BuildiumSandbox>,
    Path(lease_id): Path<String>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let lease_id = id(&lease_id)?;
    let move_out: MoveOut = body(&bytes)?;
    sandbox.move_out(lease_id, &move_out)?;
    lease_reply(&sandbox, lease_id, StatusCode::OK)
}

async fn update_tenant(
    State(sandbox): State<BuildiumSandbox>,
    Path(tenant_id): Path<String>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let tenant_id = id(&tenant_id)?;
    let update: TenantUpdate = body(&bytes)?;
    sandbox.update_tenant(tenant_id, &update)?;
    let message = sandbox
        .tenant(tenant_id)
        .ok_or(ChangeError::TenantNotFound(tenant_id))?;
    Ok(Json(message).into_response())
}

async fn deliveries(State(sandbox): State<BuildiumSandbox>) -> Response {
    Json(sandbox.deliveries()).into_response()
}

async fn reads(State(sandbox): State<BuildiumSandbox>) -> Response {
    Json(sandbox.reads()).into_response()
}

/// Body of `PUT /_sandbox/faults`; absent sections are kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    #[serde(default)]
    reads: Option<ReadFaults>,
    #[serde(default)]
    webhooks: Option<WebhookFaults>,
    #[serde(default)]
    rate_limit: Option<u32>,
}

fn faults_reply(sandbox: &BuildiumSandbox) -> Response {
    let state = sandbox.lock();
    Json(json!({
        "reads": state.read_faults,
        "webhooks": state.webhook_faults,
        "rate_limit": state.rate_limit,
        "queued_read_faults": state.scripted_read_faults.len(),
        "queued_webhook_faults": state.scripted_webhook_faults.len(),
        "holding_webhooks": state.holding,
    }))
    .into_response()
}

async fn get_faults(State(sandbox): State<BuildiumSandbox>) -> Response {
    faults_reply(&sandbox)
}

fn check_rate(name: &str, rate: f64) -> Result<(), BuildiumError> {
    // `contains` is false for NaN.
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(BuildiumError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{name} must be from 0 to 1"),
        ))
    }
}

async fn put_faults(
    State(sandbox): State<BuildiumSandbox>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let faults: FaultsBody = body(&bytes)?;
    if let Some(reads) = &faults.reads {
        check_rate("reads.rate", reads.rate)?;
        if reads
            .status
            .is_some_and(|status| !(400..=599).contains(&status))
        {
            return Err(BuildiumError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "reads.status must be an HTTP error status (400-599)",
            ));
        }
    }
    if let Some(webhooks) = &faults.webhooks {
        check_rate("webhooks.drop_rate", webhooks.drop_rate)?;
        check_rate("webhooks.duplicate_rate", webhooks.duplicate_rate)?;
    }
    if let Some(reads) = faults.reads {
        sandbox.set_read_faults(reads);
    }
    if let Some(webhooks) = faults.webhooks {
        sandbox.set_webhook_faults(webhooks);
    }
    if let Some(rate_limit) = faults.rate_limit {
        sandbox.set_rate_limit(rate_limit);
    }
    Ok(faults_reply(&sandbox))
}

/// Body of `POST /_sandbox/faults/reads`: a status or a delay, `count` times.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueReadFaults {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default = "one")]
    count: u32,
}

/// Body of `POST /_sandbox/faults/webhooks`: a fault or a delay, `count` times.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueWebhookFaults {
    #[serde(default)]
    fault: Option<SimpleWebhookFault>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default = "one")]
    count: u32,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SimpleWebhookFault {
    Drop,
    Duplicate,
}

fn one() -> u32 {
    1
}

fn check_count(count: u32) -> Result<(), BuildiumError> {
    if (1..=MAX_QUEUED_FAULTS).contains(&count) {
        Ok(())
    } else {
        Err(BuildiumError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("count must be from 1 to {MAX_QUEUED_FAULTS}"),
        ))
    }
}

async fn queue_read_faults(
    State(sandbox): State<BuildiumSandbox>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let queued: QueueReadFaults = body(&bytes)?;
    check_count(queued.count)?;
    let fault = match (queued.status, queued.delay_ms) {
        (Some(status), None) if (400..=599).contains(&status) => ReadFault::Status(status),
        (None, Some(delay)) => ReadFault::Delay(Duration::from_millis(delay)),
        _ => {
            return Err(BuildiumError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give either status (400-599) or delay_ms",
            ));
        }
    };
    for _ in 0..queued.count {
        sandbox.push_read_fault(fault.clone());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn queue_webhook_faults(
    State(sandbox): State<BuildiumSandbox>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let queued: QueueWebhookFaults = body(&bytes)?;
    check_count(queued.count)?;
    let fault = match (queued.fault, queued.delay_ms) {
        (Some(SimpleWebhookFault::Drop), None) => WebhookFault::Drop,
        (Some(SimpleWebhookFault::Duplicate), None) => WebhookFault::Duplicate,
        (None, Some(delay)) => WebhookFault::Delay(Duration::from_millis(delay)),
        _ => {
            return Err(BuildiumError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"give either fault ("drop" or "duplicate") or delay_ms"#,
            ));
        }
    };
    for _ in 0..queued.count {
        sandbox.push_webhook_fault(fault.clone());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn hold(State(sandbox): State<BuildiumSandbox>) -> Response {
    sandbox.hold_webhooks();
    StatusCode::NO_CONTENT.into_response()
}

/// Body of `POST /_sandbox/webhooks/release`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    #[serde(default)]
    order: ReleaseOrder,
}

async fn release(
    State(sandbox): State<BuildiumSandbox>,
    bytes: Bytes,
) -> Result<Response, BuildiumError> {
    let release: ReleaseBody = body(&bytes)?;
    let released = sandbox.release_webhooks(release.order);
    Ok(Json(json!({ "released": released })).into_response())
}

async fn not_found(method: Method, uri: Uri) -> Response {
    tracing::info!(%method, path = uri.path(), "sandbox Buildium: no such route");
    BuildiumError::not_found().into_response()
}

async fn method_not_allowed() -> Response {
    BuildiumError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.").into_response()
}
