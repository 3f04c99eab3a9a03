//! Webhook bodies, signatures, the retry schedule and faults.

use super::*;
use crate::buildium::webhooks::{RETRY_SCHEDULE, retry_delays, sign};

/// Checked against an independent computation:
/// `printf '%s' '1715353966.{"EventName":"Lease.Updated","EventDateTime":"2024-05-10T15:12:46.2317653Z","AccountId":123456,"LeaseId":1001}' | openssl dgst -sha256 -hmac 'sandbox-webhook-secret' -binary | base64`
/// prints `Cm5p8l+MWbLwfh/e97n1Hcmn749QycCxf2kHa+ObBoE=`, and
/// `printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'buildium-example-secret-0001' -binary | base64`
/// prints `SkUzxp5y+vpf27Zt5N1H473GDMn4DRV+j0X4dHTn5tM=` (the value lease-sync's verifier
/// test uses).
#[test]
fn signature_matches_openssl() {
    let body = r#"{"EventName":"Lease.Updated","EventDateTime":"2024-05-10T15:12:46.2317653Z","AccountId":123456,"LeaseId":1001}"#;
    assert_eq!(
        sign(SECRET, 1_715_353_966, body),
        "Cm5p8l+MWbLwfh/e97n1Hcmn749QycCxf2kHa+ObBoE="
    );
    assert_eq!(
        sign("buildium-example-secret-0001", 1_700_000_000, r#"{"a":1}"#),
        "SkUzxp5y+vpf27Zt5N1H473GDMn4DRV+j0X4dHTn5tM="
    );
}

#[test]
fn event_bodies_are_compact_in_buildium_order() {
    let event = WebhookEvent {
        event_name: EventName::LeaseUpdated,
        event_date_time: "2024-05-10T15:12:46.2317653Z".into(),
        account_id: 123_456,
        lease_id: Some(1001),
        tenant_id: None,
    };
    assert_eq!(
        event.body(),
        r#"{"EventName":"Lease.Updated","EventDateTime":"2024-05-10T15:12:46.2317653Z","AccountId":123456,"LeaseId":1001}"#
    );
    let tenant = WebhookEvent {
        event_name: EventName::TenantCreated,
        lease_id: None,
        tenant_id: Some(20_001),
        ..event.clone()
    };
    assert_eq!(
        tenant.body(),
        r#"{"EventName":"LeaseTenant.Created","EventDateTime":"2024-05-10T15:12:46.2317653Z","AccountId":123456,"TenantId":20001}"#
    );
    let move_out = WebhookEvent {
        event_name: EventName::MoveOutCreated,
        tenant_id: Some(20_001),
        ..event
    };
    assert_eq!(
        move_out.body(),
        r#"{"EventName":"Lease.MoveOut.Created","EventDateTime":"2024-05-10T15:12:46.2317653Z","AccountId":123456,"LeaseId":1001,"TenantId":20001}"#
    );
}

#[test]
fn retry_delays_divide_the_schedule() {
    assert_eq!(
        RETRY_SCHEDULE,
        [
            Duration::from_secs(60),
            Duration::from_secs(600),
            Duration::from_secs(3600)
        ]
    );
    assert_eq!(retry_delays(1.0), RETRY_SCHEDULE);
    assert_eq!(
        retry_delays(600.0),
        [
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(6)
        ]
    );
    // Unusable scales keep Buildium's schedule.
    for scale in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(retry_delays(scale), RETRY_SCHEDULE, "{scale}");
    }
}

#[tokio::test(start_paused = true)]
async fn failed_deliveries_retry_after_1_min_10_min_1_h_then_give_up() {
    let poster = ScriptedPoster::answering([
        status(500),
        AttemptOutcome::Timeout,
        status(404),
        status(503),
    ]);
    let sandbox = scripted(options(), &poster);
    let lease_id = sandbox
        .create_lease(&NewLease::new(7, 70, date!(2024 - 01 - 01), None))
        .expect("created");
    let deliveries = sandbox
        .wait_for_deliveries(1, Duration::from_secs(3 * 3600))
        .await
        .expect("settled");
    let delivery = &deliveries[0];
    assert_eq!(delivery.event.event_name, EventName::LeaseCreated);
    assert_eq!(delivery.event.lease_id, Some(lease_id));
    assert_eq!(delivery.state, DeliveryState::GaveUp);
    let after: Vec<u64> = delivery.attempts.iter().map(|a| a.after_ms).collect();
    // 0; +60 s; the timed-out attempt waits 10 s, then +600 s; then +3600 s.
    assert_eq!(after, [0, 60_000, 670_000, 4_270_000]);
    let numbers: Vec<u32> = delivery.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    assert_eq!(delivery.attempts[1].outcome, AttemptOutcome::Timeout);
    // Every attempt is signed over its own timestamp, and sent as recorded.
    let sent = poster.sent();
    assert_eq!(sent.len(), 4);
    for (attempt, request) in delivery.attempts.iter().zip(&sent) {
        assert_eq!(request.body, delivery.body);
        assert_eq!(request.timestamp, attempt.timestamp);
        assert_eq!(
            attempt.signature,
            sign(SECRET, attempt.timestamp, &delivery.body)
        );
        assert_eq!(request.signature, attempt.signature);
        assert_eq!(request.timeout, Duration::from_secs(10));
        assert_eq!(request.url, "http://receiver.test/webhooks");
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_succeeds_ends_the_delivery_and_the_scale_divides_the_waits() {
    let poster = ScriptedPoster::answering([status(500), status(502), status(204)]);
    let sandbox = scripted(
        BuildiumOptions {
            retry_scale: 600.0,
            ..options()
        },
        &poster,
    );
    sandbox
        .create_lease(&NewLease::new(7, 70, date!(2024 - 01 - 01), None))
        .expect("created");
    let deliveries = sandbox
        .wait_for_deliveries(1, GUARD)
        .await
        .expect("settled");
    assert_eq!(deliveries[0].state, DeliveryState::Delivered);
    let after: Vec<u64> = deliveries[0].attempts.iter().map(|a| a.after_ms).collect();
    assert_eq!(after, [0, 100, 1100]);
}

#[tokio::test(start_paused = true)]
async fn every_change_emits_its_events() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(options(), &poster);
    let lease_id = sandbox
        .create_lease(&lease_in(1, 11).with_tenant(NewTenant::new(
            "Bob",
            "Jones",
            "bob@example.com",
        )))
        .expect("created");
    let lease = sandbox.lease(lease_id).expect("lease");
    let alice = lease["Tenants"][0]["Id"].as_i64().expect("id");
    let alice = i32::try_from(alice).expect("i32");
    sandbox
        .update_lease(
            lease_id,
            &LeaseUpdate {
                lease_to_date: Some(date!(2100 - 06 - 30)),
                ..LeaseUpdate::default()
            },
        )
        .expect("renewed");
    sandbox
        .move_out(
            lease_id,
            &MoveOut {
                tenant_id: alice,
                move_out_date: date!(2024 - 06 - 30),
                notice_given_date: None,
                tenant_status: None,
            },
        )
        .expect("moved out");
    let carol = sandbox
        .add_tenant(
            lease_id,
            &NewTenant::new("Carol", "King", "carol@example.com"),
        )
        .expect("added");
    sandbox
        .update_tenant(
            carol,
            &TenantUpdate {
                email: Some("carol@new.example.com".into()),
                ..TenantUpdate::default()
            },
        )
        .expect("updated");
    sandbox.remove_tenant(lease_id, carol).expect("removed");
    sandbox.delete_lease(lease_id).expect("deleted");

    let deliveries = sandbox
        .wait_for_deliveries(12, GUARD)
        .await
        .expect("settled");
    assert_eq!(
        event_names(&deliveries),
        [
            "Lease.Created",
            "LeaseTenant.Created",
            "LeaseTenant.Created",
            "Lease.Updated",
            "Lease.MoveOut.Created",
            "Lease.Updated",
            "LeaseTenant.Created",
            "Lease.Updated",
            "LeaseTenant.Updated",
            "LeaseTenant.Deleted",
            "Lease.Updated",
            "Lease.Deleted",
        ][..]
    );
    // `LeaseTenant.*` carry the tenant only, `Lease.MoveOut.Created` both ids.
    assert_eq!(deliveries[1].event.lease_id, None);
    assert_eq!(deliveries[1].event.tenant_id, Some(alice));
    assert_eq!(deliveries[4].event.lease_id, Some(lease_id));
    assert_eq!(deliveries[4].event.tenant_id, Some(alice));
    assert!(
        deliveries
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    );
    assert!(
        deliveries
            .iter()
            .all(|d| d.event.account_id == DEFAULT_ACCOUNT_ID)
    );
    // EventDateTime: UTC with 7 fractional digits.
    let stamp = &deliveries[0].event.event_date_time;
    assert_eq!(stamp.len(), "2024-05-10T15:12:46.2317653Z".len(), "{stamp}");
    assert!(stamp.ends_with('Z'));
}

#[tokio::test(start_paused = true)]
async fn last_updated_strictly_increases_with_every_change() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(options(), &poster);
    let lease_id = sandbox.create_lease(&lease_in(1, 11)).expect("created");
    let mut seen = vec![sandbox.lease(lease_id).expect("lease")["LastUpdatedDateTime"].clone()];
    for day in 1..=5 {
        let to = date!(2100 - 01 - 01).replace_day(day).expect("valid day");
        sandbox
            .update_lease(
                lease_id,
                &LeaseUpdate {
                    lease_to_date: Some(to),
                    ..LeaseUpdate::default()
                },
            )
            .expect("updated");
        seen.push(sandbox.lease(lease_id).expect("lease")["LastUpdatedDateTime"].clone());
    }
    let texts: Vec<&str> = seen.iter().map(|v| v.as_str().expect("text")).collect();
    // Same length and format, so text order is time order.
    assert!(texts.windows(2).all(|pair| pair[0] < pair[1]), "{texts:?}");
    // And the events carry the same instants.
    let deliveries = sandbox
        .wait_for_deliveries(7, GUARD)
        .await
        .expect("settled");
    let updated: Vec<&str> = deliveries
        .iter()
        .filter(|d| d.event.event_name == EventName::LeaseUpdated)
        .map(|d| d.event.event_date_time.as_str())
        .collect();
    assert_eq!(updated, texts[1..]);
}

#[tokio::test(start_paused = true)]
async fn scripted_faults_drop_duplicate_and_delay() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(options(), &poster);
    sandbox.push_webhook_fault(WebhookFault::Drop);
    sandbox.push_webhook_fault(WebhookFault::Duplicate);
    sandbox.push_webhook_fault(WebhookFault::Delay(Duration::from_secs(5)));
    // Three events: Lease.Created, two LeaseTenant.Created.
    sandbox
        .create_lease(&lease_in(1, 11).with_tenant(NewTenant::new(
            "Bob",
            "Jones",
            "bob@example.com",
        )))
        .expect("created");
    let deliveries = sandbox
        .wait_for_deliveries(4, GUARD)
        .await
        .expect("settled");
    assert_eq!(deliveries.len(), 4);
    assert_eq!(deliveries[0].state, DeliveryState::Dropped);
    assert!(deliveries[0].attempts.is_empty());
    // The duplicate has the same body, and its own delivery.
    assert_eq!(deliveries[2].duplicate_of, Some(deliveries[1].id));
    assert_eq!(deliveries[2].body, deliveries[1].body);
    assert_eq!(deliveries[1].state, DeliveryState::Delivered);
    assert_eq!(deliveries[2].state, DeliveryState::Delivered);
    // The delayed one went 5 s after it was emitted.
    assert_eq!(deliveries[3].attempts[0].after_ms, 5000);
    assert_eq!(poster.sent().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn held_events_are_released_in_the_order_asked() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(options(), &poster);
    sandbox.hold_webhooks();
    let lease_id = sandbox.create_lease(&lease_in(1, 11)).expect("created");
    sandbox
        .update_lease(
            lease_id,
            &LeaseUpdate {
                lease_status: Some(LeaseStatus::Past),
                ..LeaseUpdate::default()
            },
        )
        .expect("updated");
    assert!(
        sandbox
            .deliveries()
            .iter()
            .all(|d| d.state == DeliveryState::Held)
    );
    assert!(poster.sent().is_empty());
    assert_eq!(sandbox.release_webhooks(ReleaseOrder::Reversed), 3);
    sandbox
        .wait_for_deliveries(3, GUARD)
        .await
        .expect("settled");
    let sent: Vec<String> = poster
        .sent()
        .iter()
        .map(|request| {
            let event: WebhookEvent = serde_json::from_str(&request.body).expect("event");
            event.event_name.as_str().to_owned()
        })
        .collect();
    assert_eq!(
        sent,
        ["Lease.Updated", "LeaseTenant.Created", "Lease.Created"]
    );
    // Later events are no longer held.
    sandbox.delete_lease(lease_id).expect("deleted");
    sandbox
        .wait_for_deliveries(4, GUARD)
        .await
        .expect("settled");
}

#[tokio::test(start_paused = true)]
async fn random_faults_at_rate_one_drop_or_duplicate_everything() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(
        BuildiumOptions {
            webhook_faults: WebhookFaults {
                drop_rate: 1.0,
                ..WebhookFaults::default()
            },
            ..options()
        },
        &poster,
    );
    sandbox.create_lease(&lease_in(1, 11)).expect("created");
    let deliveries = sandbox
        .wait_for_deliveries(2, GUARD)
        .await
        .expect("settled");
    assert!(deliveries.iter().all(|d| d.state == DeliveryState::Dropped));
    sandbox.set_webhook_faults(WebhookFaults {
        duplicate_rate: 1.0,
        ..WebhookFaults::default()
    });
    sandbox.create_lease(&lease_in(1, 12)).expect("created");
    let deliveries = sandbox
        .wait_for_deliveries(6, GUARD)
        .await
        .expect("settled");
    assert_eq!(
        deliveries
            .iter()
            .filter(|d| d.duplicate_of.is_some())
            .count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_webhook_url_events_are_recorded_not_sent() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(
        BuildiumOptions {
            webhook_url: None,
            ..options()
        },
        &poster,
    );
    sandbox.create_lease(&lease_in(1, 11)).expect("created");
    let deliveries = sandbox
        .wait_for_deliveries(2, GUARD)
        .await
        .expect("settled");
    assert!(
        deliveries
            .iter()
            .all(|d| d.state == DeliveryState::NotSent && d.note.is_some())
    );
    assert!(poster.sent().is_empty());
}

#[test]
fn without_a_runtime_deliveries_are_marked_not_sent() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(options(), &poster);
    sandbox.create_lease(&lease_in(1, 11)).expect("created");
    let deliveries = sandbox.deliveries();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().all(|d| d.state == DeliveryState::NotSent));
}

#[tokio::test(start_paused = true)]
async fn waiting_gives_up_with_what_it_has() {
    let poster = ScriptedPoster::answering([status(500)]);
    let sandbox = scripted(options(), &poster);
    sandbox
        .create_lease(&NewLease::new(7, 70, date!(2024 - 01 - 01), None))
        .expect("created");
    // The first retry is a minute away.
    let timeout = sandbox
        .wait_for_deliveries(1, Duration::from_secs(30))
        .await
        .expect_err("not settled in 30 s");
    assert_eq!(timeout.deliveries.len(), 1);
    assert_eq!(timeout.deliveries[0].state, DeliveryState::Retrying);
}

/// A real receiver on loopback: what it got, and the statuses it answers (then 200).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>,
}

async fn receiver(statuses: Vec<u16>) -> Receiver {
    let got: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>> = Arc::default();
    let script = Arc::new(Mutex::new(VecDeque::from(statuses)));
    let store = got.clone();
    let app = axum::Router::new().route(
        "/webhooks/buildium",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let store = store.clone();
            let script = script.clone();
            async move {
                store.lock().expect("lock").push((headers, body));
                let code = script.lock().expect("lock").pop_front().unwrap_or(200);
                StatusCode::from_u16(code).expect("status")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url: format!("http://{addr}/webhooks/buildium"),
        got,
    }
}

#[tokio::test]
async fn deliveries_reach_a_real_receiver_signed_as_buildium_signs() {
    let receiver = receiver(vec![500]).await;
    let sandbox = BuildiumSandbox::new(BuildiumOptions {
        webhook_url: Some(receiver.url.clone()),
        // 1 min → 1 ms: the retry comes at once.
        retry_scale: 60_000.0,
        ..options()
    });
    let lease_id = sandbox
        .create_lease(&NewLease::new(7, 70, date!(2024 - 01 - 01), None))
        .expect("created");
    let deliveries = sandbox
        .wait_for_deliveries(1, GUARD)
        .await
        .expect("settled");
    assert_eq!(deliveries[0].state, DeliveryState::Delivered);
    assert_eq!(deliveries[0].attempts.len(), 2);
    let got = receiver.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    for (headers, body) in &got {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .expect(name)
                .to_owned()
        };
        assert_eq!(text("content-type"), "application/json");
        let timestamp: u64 = text("buildium-webhook-timestamp").parse().expect("seconds");
        assert!(now.abs_diff(timestamp) < 60, "{timestamp} vs {now}");
        assert_eq!(
            text("buildium-webhook-signature"),
            sign(SECRET, timestamp, body)
        );
        let event: Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(event["EventName"], "Lease.Created");
        assert_eq!(event["LeaseId"], lease_id);
        assert_eq!(event["AccountId"], DEFAULT_ACCOUNT_ID);
        assert!(!body.contains('\n') && !body.contains(": "), "{body}");
    }
    assert_eq!(
        deliveries[0].attempts[0].outcome,
        AttemptOutcome::Status { status: 500 }
    );
}

#[tokio::test]
async fn an_unreachable_receiver_is_an_error_attempt() {
    // Bind then drop: nothing listens there any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let sandbox = BuildiumSandbox::new(BuildiumOptions {
        webhook_url: Some(format!("http://{addr}/webhooks")),
        retry_scale: 3_600_000.0,
        ..options()
    });
    sandbox
        .create_lease(&NewLease::new(7, 70, date!(2024 - 01 - 01), None))
        .expect("created");
    let deliveries = sandbox
        .wait_for_deliveries(1, GUARD)
        .await
        .expect("settled");
    assert_eq!(deliveries[0].state, DeliveryState::GaveUp);
    assert_eq!(deliveries[0].attempts.len(), 4);
    assert!(matches!(
        deliveries[0].attempts[0].outcome,
        AttemptOutcome::Error { .. }
    ));
}
