//! Tests of the Buildium emulator: webhooks (signature, body, retry schedule under Tokio's
//! paused clock, real HTTP deliveries), the reads (auth, rate limit, pagination, filters,
//! errors), the control API and the command line.

mod api;
mod cli;
mod control;
mod webhooks;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use time::Date;
use time::macros::date;
use tower::ServiceExt as _;

use super::webhooks::{AttemptOutcome, PostRequest, Poster};
use super::*;

/// Upper bound for anything a test waits on, so that a bug fails instead of hanging.
const GUARD: Duration = Duration::from_secs(10);

const SECRET: &str = "sandbox-webhook-secret";
const CLIENT_ID: &str = "client-id-1";
const CLIENT_SECRET: &str = "client-secret-1";

/// A poster that answers from a script (then 200) and records what it was asked to send.
/// A scripted [`AttemptOutcome::Timeout`] first waits for the request's timeout, as a silent
/// receiver would make Buildium wait.
#[derive(Default)]
struct ScriptedPoster {
    script: Mutex<VecDeque<AttemptOutcome>>,
    sent: Mutex<Vec<PostRequest>>,
}

impl ScriptedPoster {
    fn answering(outcomes: impl IntoIterator<Item = AttemptOutcome>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(outcomes.into_iter().collect()),
            sent: Mutex::default(),
        })
    }

    fn sent(&self) -> Vec<PostRequest> {
        self.sent.lock().expect("lock").clone()
    }
}

impl Poster for ScriptedPoster {
    fn post(
        &self,
        request: PostRequest,
    ) -> Pin<Box<dyn Future<Output = AttemptOutcome> + Send + 'static>> {
        let timeout = request.timeout;
        self.sent.lock().expect("lock").push(request);
        let outcome = self
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(AttemptOutcome::Status { status: 200 });
        Box::pin(async move {
            if outcome == AttemptOutcome::Timeout {
                tokio::time::sleep(timeout).await;
            }
            outcome
        })
    }
}

fn status(status: u16) -> AttemptOutcome {
    AttemptOutcome::Status { status }
}

fn options() -> BuildiumOptions {
    BuildiumOptions {
        webhook_url: Some("http://receiver.test/webhooks".into()),
        secret: SECRET.into(),
        credentials: Some(Credentials {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        }),
        ..BuildiumOptions::default()
    }
}

/// An emulator whose webhooks go to `poster`.
fn scripted(options: BuildiumOptions, poster: &Arc<ScriptedPoster>) -> BuildiumSandbox {
    let poster: Arc<dyn Poster> = poster.clone();
    BuildiumSandbox::with_poster(options, poster)
}

fn lease_in(property_id: i32, unit_id: i32) -> NewLease {
    NewLease::new(
        property_id,
        unit_id,
        date!(2024 - 01 - 01),
        Some(date!(2099 - 12 - 31)),
    )
    .with_tenant(NewTenant::new("Alice", "Smith", "alice@example.com"))
}

fn today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

/// An answer of the router, read in memory.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
}

/// Sends a request through the router without a socket (works under the paused clock).
async fn call(sandbox: &BuildiumSandbox, request: Request<Body>) -> Answer {
    let response = sandbox.router().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    Answer {
        status,
        headers,
        json,
    }
}

/// An authenticated read.
fn read(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("x-buildium-client-id", CLIENT_ID)
        .header("x-buildium-client-secret", CLIENT_SECRET)
        .body(Body::empty())
        .expect("request")
}

/// A control-API request with a JSON body.
fn control(method: &str, uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn event_names(deliveries: &[Delivery]) -> Vec<&'static str> {
    deliveries
        .iter()
        .map(|delivery| delivery.event.event_name.as_str())
        .collect()
}
