//! `POST /webhooks/{source}`: verification, validation and every rejection code.

use lease_sync::config::Role;
use serde_json::json;

use crate::support::*;

async fn ingest_app() -> (RedisServer, TestApp) {
    let redis = RedisServer::start().await;
    let app = TestApp::start(
        &test_config(&redis.url(), &namespace(), "http://127.0.0.1:9/api/v1"),
        Role::Ingest,
    )
    .await;
    (redis, app)
}

#[tokio::test]
async fn standard_webhooks_public_vector_verifies_over_http() {
    let (_redis, app) = ingest_app().await;
    // The published vector (svix-webhooks rust/src/webhooks.rs) is from 2022: its signature is
    // authentic, so the only complaint is its age — a forged one would be invalid_signature.
    let body = br#"{"email":"test@example.com","username":"test_user"}"#.to_vec();
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("webhook-id", "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk".to_owned()),
        ("webhook-timestamp", "1649367553".to_owned()),
        (
            "webhook-signature",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=".to_owned(),
        ),
    ];
    let reply = app.post(SOURCE, &headers, body.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "stale_timestamp"),
        "{reply:?}"
    );

    // The same body signed now passes verification and fails only as an event.
    let reply = app
        .post(
            SOURCE,
            &signed(SECRET, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", now(), &body),
            body,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (422, "invalid_event"),
        "{reply:?}"
    );
}

#[tokio::test]
async fn forged_and_stale_requests_are_rejected_with_their_codes() {
    let (_redis, app) = ingest_app().await;
    let body = event_body("lease.signed", "L-1", &["u1"]);

    let mut tampered = body.clone();
    tampered[10] ^= 0x01;
    let reply = app
        .post(SOURCE, &signed(SECRET, "e1", now(), &body), tampered)
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "invalid_signature"),
        "one byte changed"
    );

    let reply = app
        .post(
            SOURCE,
            &signed(FOREIGN_SECRET, "e1", now(), &body),
            body.clone(),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "invalid_signature"),
        "wrong secret"
    );

    let mut headers = signed(SECRET, "e1", now(), &body);
    headers[3].1 = "v1,".into();
    let reply = app.post(SOURCE, &headers, body.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "invalid_signature"),
        "empty v1 signature (CVE-2024-21491)"
    );

    let mut headers = signed(SECRET, "e1", now(), &body);
    headers[3].1 = "v1,dGhpcyBpcyB0b28gc2hvcnQ=".into();
    let reply = app.post(SOURCE, &headers, body.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "invalid_signature"),
        "short signature"
    );

    let reply = app
        .post(
            SOURCE,
            &signed(SECRET, "e1", now() - 301, &body),
            body.clone(),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "stale_timestamp"),
        "too old"
    );
    let reply = app
        .post(
            SOURCE,
            &signed(SECRET, "e1", now() + 301, &body),
            body.clone(),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "stale_timestamp"),
        "in the future"
    );

    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let headers: Vec<_> = signed(SECRET, "e1", now(), &body)
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        let reply = app.post(SOURCE, &headers, body.clone()).await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "missing_signature"),
            "without {missing}"
        );
        assert!(reply.json["message"].as_str().unwrap().contains(missing));
    }

    // None of these queued anything.
    assert_eq!(app.queue().counts().await.unwrap().ready, 0);
}

#[tokio::test]
async fn rotated_secret_verifies_and_a_repeated_event_id_queues_once() {
    let (_redis, app) = ingest_app().await;
    let body = event_body("lease.signed", "L-2", &["u1", "u2"]);
    let reply = app
        .post(
            SOURCE,
            &signed(SECOND_SECRET, "evt-rot", now(), &body),
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(
        reply.json,
        json!({"status": "queued", "event_id": "evt-rot", "jobs": 2, "stale": 0})
    );

    // The sender retries (a new timestamp and signature, same id): acknowledged, not queued again.
    let reply = app
        .post(
            SOURCE,
            &signed(SECRET, "evt-rot", now(), &body),
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json,
        json!({"status": "duplicate", "event_id": "evt-rot"})
    );
    assert_eq!(
        app.queue().counts().await.unwrap().ready,
        2,
        "one job per resident, once"
    );
}

#[tokio::test]
async fn every_client_error_has_its_status_and_code() {
    let (_redis, app) = ingest_app().await;
    let good = event_body("lease.signed", "L-3", &["u1"]);

    let reply = app
        .post("nobody", &signed(SECRET, "e", now(), &good), good.clone())
        .await;
    assert_eq!((reply.status, reply.code()), (404, "unknown_source"));

    let big = vec![b' '; 5000];
    let reply = app
        .post(SOURCE, &signed(SECRET, "e", now(), &big), big.clone())
        .await;
    assert_eq!((reply.status, reply.code()), (413, "body_too_large"));

    // Without Content-Length (chunked), the limit still holds while reading.
    let stream = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let mut request = reqwest::Client::new()
        .post(app.webhook_url(SOURCE))
        .body(reqwest::Body::wrap_stream(stream));
    for (k, v) in signed(SECRET, "e", now(), &big) {
        request = request.header(k, v);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);

    let mut headers = signed(SECRET, "e", now(), &good);
    headers[0].1 = "text/plain".into();
    let reply = app.post(SOURCE, &headers, good.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (415, "unsupported_media_type")
    );
    let mut headers = signed(SECRET, "e", now(), &good);
    headers[0].1 = "application/json; charset=utf-8".into();
    assert_eq!(
        app.post(SOURCE, &headers, good.clone()).await.status,
        202,
        "parameters are fine"
    );

    let junk = b"{\"type\": lease".to_vec();
    let reply = app
        .post(SOURCE, &signed(SECRET, "e2", now(), &junk), junk)
        .await;
    assert_eq!((reply.status, reply.code()), (400, "invalid_json"));

    let bad_user = event_body("lease.signed", "L-3", &["../../admin"]);
    let reply = app
        .post(SOURCE, &signed(SECRET, "e3", now(), &bad_user), bad_user)
        .await;
    assert_eq!((reply.status, reply.code()), (422, "invalid_event"));
    assert!(
        reply.json["message"]
            .as_str()
            .unwrap()
            .contains("residents[0].openapp_user_id"),
        "{reply:?}"
    );

    let wrong_type = String::from_utf8(good.clone())
        .unwrap()
        .replace("lease.signed", "lease.renewed")
        .into_bytes();
    let reply = app
        .post(
            SOURCE,
            &signed(SECRET, "e4", now(), &wrong_type),
            wrong_type,
        )
        .await;
    assert_eq!((reply.status, reply.code()), (422, "invalid_event"));
    assert!(
        reply.json["message"].as_str().unwrap().starts_with("type:"),
        "{reply:?}"
    );

    let unmapped = String::from_utf8(good.clone())
        .unwrap()
        .replace(PROPERTY, "P-99")
        .into_bytes();
    let reply = app
        .post(SOURCE, &signed(SECRET, "e5", now(), &unmapped), unmapped)
        .await;
    assert_eq!((reply.status, reply.code()), (422, "unknown_property"));
    assert!(reply.json["message"].as_str().unwrap().contains("P-99"));

    let reply = app
        .post(
            SOURCE,
            &signed(SECRET, "bad id with spaces", now(), &good),
            good.clone(),
        )
        .await;
    assert_eq!((reply.status, reply.code()), (422, "invalid_event"));

    let response = reqwest::Client::new()
        .get(app.webhook_url(SOURCE))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    // Every rejection carries a human sentence too.
    let reply = app.post("nobody", &[], Vec::new()).await;
    assert!(!reply.json["message"].as_str().unwrap_or("").is_empty());
}

#[tokio::test]
async fn malformed_headers_and_bodies_never_cause_a_5xx() {
    let (_redis, app) = ingest_app().await;
    let good = event_body("lease.signed", "L-4", &["u1"]);
    let t = now();
    let sig =
        |body: &[u8]| lease_sync::signature::standard_webhooks::sign(SECRET, "e", t, body).unwrap();

    let long = "v1,".to_owned() + &"A".repeat(6000);
    let many = vec!["v1,AAAA"; 500].join(" ");
    let header_cases: Vec<Vec<(&str, String)>> = vec![
        vec![("webhook-signature", long)],
        vec![("webhook-signature", many)],
        vec![("webhook-signature", "v1,,,, ,v1".into())],
        vec![("webhook-signature", "\t".into())],
        vec![("webhook-timestamp", "99999999999999999999999999".into())],
        vec![("webhook-timestamp", "-1".into())],
        vec![("webhook-timestamp", "1.5".into())],
        vec![("webhook-id", "x".repeat(3000))],
        vec![("content-type", "application/jsonp".into())],
        vec![("content-type", ";;;".into())],
    ];
    for case in header_cases {
        let mut headers = signed(SECRET, "e", t, &good);
        for (k, v) in case {
            headers.retain(|(name, _)| *name != k);
            headers.push((k, v));
        }
        let reply = app.post(SOURCE, &headers, good.clone()).await;
        assert!(
            (400..500).contains(&reply.status),
            "{headers:?} → {reply:?}"
        );
    }

    // Raw, non-UTF-8 header bytes.
    let mut request = reqwest::Client::new()
        .post(app.webhook_url(SOURCE))
        .body(good.clone());
    for (k, v) in signed(SECRET, "e", t, &good)
        .into_iter()
        .filter(|(k, _)| *k != "webhook-signature")
    {
        request = request.header(k, v);
    }
    let response = request
        .header(
            "webhook-signature",
            reqwest::header::HeaderValue::from_bytes(b"v1,\xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Authentic bodies that are not events: each a 4xx.
    let deep = "[".repeat(3000) + &"]".repeat(3000);
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xff, 0x00, 0xfe],
        b"null".to_vec(),
        b"12".to_vec(),
        deep.into_bytes(),
        br#"{"type":"lease.signed","occurred_at":"2026-11-22T10:15:00Z","lease":{"id":"L","property_id":"P-17"},"residents":[{"openapp_user_id":"u"}],"access":{"starts_at":"not a date"}}"#.to_vec(),
        br#"{"type":"lease.signed","occurred_at":"9999-99-99T99:99:99Z","lease":null,"residents":null}"#.to_vec(),
        format!(r#"{{"type":"lease.signed","occurred_at":"2026-11-22T10:15:00Z","lease":{{"id":"{}","property_id":"P-17"}},"residents":[{{"openapp_user_id":"u"}}]}}"#, "L".repeat(300)).into_bytes(),
    ];
    for body in bodies {
        let headers = vec![
            ("content-type", "application/json".to_owned()),
            ("webhook-id", "e".to_owned()),
            ("webhook-timestamp", t.to_string()),
            ("webhook-signature", sig(&body)),
        ];
        let reply = app.post(SOURCE, &headers, body.clone()).await;
        assert!(
            matches!(reply.status, 400 | 413 | 422),
            "{:?} → {reply:?}",
            String::from_utf8_lossy(&body)
        );
    }

    // Still healthy afterwards.
    let reply = post_event(&app, "after", good).await;
    assert_eq!(reply.status, 202);
}

#[tokio::test]
async fn health_and_readiness() {
    let (mut redis, app) = ingest_app().await;
    let base = format!("http://{}", app.addr.unwrap());
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    let (status, body) = get("/readyz").await;
    assert_eq!((status, body["redis"].as_str()), (200, Some("ok")));
    redis.kill9();
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        get("/healthz").await.0,
        200,
        "liveness does not depend on Redis"
    );
}
