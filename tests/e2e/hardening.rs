//! Hostile and unusual input at the webhook listener: the `hmac-sha256` scheme in GitHub
//! and Buildium styles, secret rotation and expiry, the per-source rate limit, slow and
//! oversized requests, requests the HTTP parser refuses (JSON on both listeners), and
//! `check-config`'s expiry warnings.

use std::process::Command;
use std::time::Duration;

use lease_sync::config::{
    PropertySettings, Role, SchemeKind, Settings, SignatureEncoding, SourceSecret, SourceSettings,
};
use lease_sync::signature::hmac_sha256::{self, Format};
use time::macros::datetime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::*;

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const BUILDIUM_SECRET: &str = "buildium-example-secret-0001";

/// Two extra sources: GitHub style (hex, `sha256=`, body only, id from a header) and
/// Buildium style (base64, `{timestamp}.{body}`, id = hash of the body).
fn with_hmac_sources(settings: &mut Settings) {
    let hmac_source = |name: &str, secret: &str| {
        let mut source = SourceSettings::named(name);
        source.scheme = SchemeKind::HmacSha256;
        source.secrets = vec![SourceSecret::plain(secret)];
        source.properties = vec![PropertySettings::new(PROPERTY, ORG, INTEGRATION)];
        source
    };
    let mut github = hmac_source("github", GITHUB_SECRET);
    github.signature_header = Some("x-hub-signature-256".into());
    github.signature_prefix = Some("sha256=".into());
    github.encoding = Some(SignatureEncoding::Hex);
    github.signed_content = Some("{body}".into());
    github.event_id = Some("header:x-github-delivery".into());
    let mut buildium = hmac_source("buildium", BUILDIUM_SECRET);
    buildium.signature_header = Some("buildium-webhook-signature".into());
    buildium.encoding = Some(SignatureEncoding::Base64);
    buildium.timestamp_header = Some("buildium-webhook-timestamp".into());
    buildium.signed_content = Some("{timestamp}.{body}".into());
    buildium.event_id = Some("body-sha256".into());
    settings.sources.extend([github, buildium]);
}

async fn ingest_with(edit: impl FnOnce(&mut Settings)) -> (RedisServer, TestApp) {
    let redis = RedisServer::start().await;
    let mut config = test_config(&redis.url(), &namespace(), "http://127.0.0.1:9/api/v1");
    edit(&mut config);
    let app = TestApp::start(&config, Role::Ingest).await;
    (redis, app)
}

fn json_headers(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    headers.extend_from_slice(extra);
    headers
}

#[tokio::test]
async fn github_style_source_verifies_the_public_vector_and_dedupes_on_the_delivery_id() {
    let (_redis, app) = ingest_with(with_hmac_sources).await;

    // GitHub's published vector is authentic; its body is not a lease event, so it fails
    // only after verification, as JSON.
    let vector = [
        ("x-github-delivery", "d-0".to_owned()),
        (
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned(),
        ),
    ];
    let reply = app
        .post("github", &json_headers(&vector), b"Hello, World!".to_vec())
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (400, "invalid_json"),
        "{reply:?}"
    );

    let body = event_body("lease.signed", "L-gh", &["u-gh"]);
    let signature = hmac_sha256::sign(&Format::github(), GITHUB_SECRET, None, &body);
    let headers = json_headers(&[
        ("x-github-delivery", "d-1".to_owned()),
        ("x-hub-signature-256", signature.clone()),
    ]);
    let reply = app.post("github", &headers, body.clone()).await;
    assert_eq!(
        (reply.status, reply.json["event_id"].as_str()),
        (202, Some("d-1")),
        "{reply:?}"
    );
    let reply = app.post("github", &headers, body.clone()).await;
    assert_eq!(
        (reply.status, reply.json["status"].as_str()),
        (200, Some("duplicate"))
    );

    // Each rejection with its code.
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let cases = [
        (
            "tampered body",
            "github",
            headers.clone(),
            tampered,
            401,
            "invalid_signature",
        ),
        (
            "no signature",
            "github",
            json_headers(&[("x-github-delivery", "d-2".into())]),
            body.clone(),
            401,
            "missing_signature",
        ),
        (
            "empty tag",
            "github",
            json_headers(&[("x-hub-signature-256", "sha256=".into())]),
            body.clone(),
            401,
            "invalid_signature",
        ),
        // Signed but without the id header: nothing to deduplicate on, so refused.
        (
            "no delivery id",
            "github",
            json_headers(&[("x-hub-signature-256", signature)]),
            body.clone(),
            422,
            "invalid_event",
        ),
        // The Standard Webhooks source does not accept the other scheme's signature.
        (
            "other scheme",
            SOURCE,
            headers,
            body,
            401,
            "missing_signature",
        ),
    ];
    for (what, source, headers, body, status, code) in cases {
        let reply = app.post(source, &headers, body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{what}: {reply:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn buildium_style_source_checks_the_timestamp_and_dedupes_on_the_body() {
    let (_redis, app) = ingest_with(with_hmac_sources).await;
    let body = event_body("lease.signed", "L-bd", &["u-bd"]);
    let send = |timestamp: String, body: Vec<u8>| {
        let signature = hmac_sha256::sign(
            &Format::buildium(),
            BUILDIUM_SECRET,
            Some(&timestamp),
            &body,
        );
        let headers = json_headers(&[
            ("buildium-webhook-timestamp", timestamp),
            ("buildium-webhook-signature", signature),
        ]);
        let app = &app;
        async move { app.post("buildium", &headers, body).await }
    };

    let reply = send(now().to_string(), body.clone()).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let id = reply.json["event_id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("sha256:"), "{id}");
    // A sender retry re-signs the same body with a new timestamp (here in milliseconds):
    // same event.
    let reply = send(format!("{}123", now()), body.clone()).await;
    assert_eq!(
        (reply.status, reply.json["status"].as_str()),
        (200, Some("duplicate")),
        "{reply:?}"
    );
    // Outside the tolerance either way: authentic but stale.
    let reply = send((now() - 400).to_string(), body.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "stale_timestamp"),
        "{reply:?}"
    );
    let reply = send((now() + 400).to_string(), body.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "stale_timestamp"),
        "{reply:?}"
    );
    // The timestamp is signed: moving it breaks the signature.
    let ts = now().to_string();
    let signature = hmac_sha256::sign(&Format::buildium(), BUILDIUM_SECRET, Some(&ts), &body);
    let moved = json_headers(&[
        ("buildium-webhook-timestamp", (now() - 1).to_string()),
        ("buildium-webhook-signature", signature.clone()),
    ]);
    let reply = app.post("buildium", &moved, body.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "invalid_signature"),
        "{reply:?}"
    );
    let no_ts = json_headers(&[("buildium-webhook-signature", signature)]);
    let reply = app.post("buildium", &no_ts, body.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "missing_signature"),
        "{reply:?}"
    );
    let reply = send("17e8".into(), body).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "invalid_signature"),
        "{reply:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_secret_stops_verifying_while_its_replacement_works() {
    let (_redis, app) = ingest_with(|c| {
        let [old, new] = &mut c.sources[0].secrets[..] else {
            panic!("the test source has two secrets");
        };
        old.not_after = Some(datetime!(2020-01-01 0:00 UTC));
        new.not_after = Some(datetime!(2999-01-01 0:00 UTC));
    })
    .await;
    let body = event_body("lease.signed", "L-rot", &["u-rot"]);
    let reply = app
        .post(
            SOURCE,
            &signed(SECRET, "evt-old-key", now(), &body),
            body.clone(),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "invalid_signature"),
        "{reply:?}"
    );
    let reply = app
        .post(
            SOURCE,
            &signed(SECOND_SECRET, "evt-new-key", now(), &body),
            body,
        )
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_forgeries_do_not_count() {
    let (_redis, app) = ingest_with(|c| {
        c.http.rate_limit_per_sec = 1;
        c.http.rate_limit_burst = 3;
    })
    .await;
    let body = event_body("lease.signed", "L-rl", &["u-rl"]);
    // Forged requests are refused before the limiter, so they leave the budget untouched.
    for n in 0..20 {
        let reply = app
            .post(
                SOURCE,
                &signed(FOREIGN_SECRET, &format!("evt-forged-{n}"), now(), &body),
                body.clone(),
            )
            .await;
        assert_eq!(reply.code(), "invalid_signature");
    }
    let mut accepted = 0;
    let mut limited = Vec::new();
    for n in 0..10 {
        let reply = post_event(&app, &format!("evt-rl-{n}"), body.clone()).await;
        match reply.status {
            202 => accepted += 1,
            429 => limited.push(reply),
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    // The burst of 3 is accepted whatever the timing; 10 in a row cannot all fit at 1/s.
    assert!(accepted >= 3, "accepted {accepted}");
    let first = limited.first().expect("at least one request is limited");
    assert_eq!(first.code(), "rate_limited", "{first:?}");
    let retry_after: u64 = first.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    // Nothing limited was queued: it can be sent again later and is not a duplicate.
    let stats = app.queue().counts().await.expect("counts");
    assert_eq!(stats.ready + stats.scheduled, accepted as u64, "{stats:?}");
    app.stop().await;
}

/// Sends `head` and `body_part` on a raw connection, then waits (bounded) for the answer.
async fn raw_exchange(addr: std::net::SocketAddr, head: &str, body_part: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body_part).await.expect("write body");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes within 10 s")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_slow_body_gets_408_and_a_slow_head_is_cut_off() {
    let (_redis, app) = ingest_with(|c| c.http.read_timeout = Duration::from_millis(300)).await;
    let addr = app.addr.expect("listens");
    // Headers promise 200 bytes; 10 arrive and then nothing.
    let head = format!(
        "POST /webhooks/{SOURCE} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\nconnection: close\r\n\r\n"
    );
    let answer = raw_exchange(addr, &head, b"{\"type\":\"l").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");

    // A head that never completes: the connection is closed without holding a slot.
    let answer = raw_exchange(
        addr,
        "POST /webhooks/acme-pms HTTP/1.1\r\nhost: x\r\nx-slow: ",
        b"",
    )
    .await;
    assert!(!answer.contains("202"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (_redis, app) = ingest_with(|_| {}).await;
    let body = event_body("lease.signed", "L-big", &["u-big"]);
    let mut headers = signed(SECRET, "evt-big-headers", now(), &body);
    headers.push(("x-padding", "a".repeat(20_000)));
    let reply = app.post(SOURCE, &headers, body.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (431, "headers_too_large"),
        "{reply:?}"
    );
    // Far larger heads are refused by the HTTP layer before they are buffered.
    let mut headers = signed(SECRET, "evt-huge-headers", now(), &body);
    headers.push(("x-padding", "a".repeat(200_000)));
    let reply = app.post(SOURCE, &headers, body).await;
    assert_eq!(
        (reply.status, reply.code()),
        (431, "headers_too_large"),
        "{reply:?}"
    );
    app.stop().await;
}

/// Sends `request` on a raw connection and reads until the server closes it. A reset after
/// the answer (the server closed with part of an oversized request unread) ends the read.
async fn raw_answer(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before the whole of an oversized request is written.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let mut buf = [0_u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the server answers and closes within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

/// hyper refuses these before any handler runs, with a bare head; they get the same JSON
/// body as every other rejection, on both listeners.
#[tokio::test]
async fn requests_the_http_parser_refuses_get_json_with_a_code() {
    let (_redis, app) = ingest_with(|_| {}).await;
    let (webhook, admin) = (app.addr.expect("listens"), app.admin_addr.expect("admin"));
    let over = "a".repeat(2 * app.settings.http.header_limit_bytes + 1024);
    let cases: [(&str, _, Vec<u8>, u16, &str); 5] = [
        (
            "a DEL byte in a header value",
            webhook,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-note: a\x7fb\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "two Content-Length headers",
            webhook,
            format!(
                "POST /webhooks/{SOURCE} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"
            )
            .into_bytes(),
            400,
            "bad_request",
        ),
        (
            "a head over twice http.header_limit_bytes",
            webhook,
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: {over}\r\n\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a garbage request line",
            webhook,
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a DEL byte at the admin listener",
            admin,
            b"GET /admin/queue HTTP/1.1\r\nhost: x\r\nx-note: a\x7fb\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
    ];
    for (what, addr, request, status, code) in cases {
        let answer = raw_answer(addr, &request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {answer}"
        );
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{what}: {answer}"
        );
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{what}: {answer}"
        );
        let json: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {answer}"));
        assert_eq!(json["error"], code, "{what}: {answer}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
    }
    // The listener still serves after all that.
    let reply = request(
        reqwest::Method::GET,
        &format!("http://{webhook}/healthz"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    app.stop().await;
}

#[test]
fn check_config_warns_about_secrets_that_expire_soon_without_printing_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config("redis://127.0.0.1:9", "ns", "http://127.0.0.1:9/api/v1");
    config.sources[0].secrets[0].not_after =
        Some(time::OffsetDateTime::now_utc() + time::Duration::days(2));
    let path = dir.path().join("config.toml");
    write_config(&config, &path);
    let out = Command::new(env!("CARGO_BIN_EXE_lease-sync"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: sources[0].secrets[0] (source `acme-pms`) expires at"),
        "{stderr}"
    );
    assert!(stderr.contains("allow_insecure_http"), "{stderr}");
    for secret in [SECRET, SECOND_SECRET, API_KEY, ADMIN_TOKEN] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
}

/// The whole pipeline at trace level with known secrets: webhook secrets, the OpenApp key
/// and the admin token must not appear in any log line, response body or CLI output, on
/// the happy path or on the error paths (forgeries, a secret pasted as a signature, wrong
/// admin tokens, OpenApp refusing the key, a dead letter and its replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_error_bodies_or_cli_output_at_trace_level() {
    use lease_sync_sandbox::Fault;

    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    config.http.listen = loopback(port);
    config.admin.listen = loopback(admin_port);
    config.log.level = "trace".into();
    let config_path = dir.path().join("serve.toml");
    let mut serve = LeaseSyncProcess::spawn_with_log_filter(
        dir.path(),
        "serve",
        &["serve"],
        Some(&config),
        "trace",
    );
    wait_ready(port, Duration::from_secs(30)).await;
    let webhooks = format!("http://127.0.0.1:{port}/webhooks/{SOURCE}");
    let admin = |path: &str| format!("http://127.0.0.1:{admin_port}{path}");
    let mut seen = Vec::<String>::new();

    // Delivered normally.
    let body = event_body("lease.signed", "L-leak", &["u-leak-1"]);
    let reply = post(
        &webhooks,
        &signed(SECRET, "evt-leak-1", now(), &body),
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    seen.push(reply.json.to_string());
    openapp.sandbox.wait_for_calls(1).await;

    // Forged, and a secret pasted where the signature goes.
    let reply = post(
        &webhooks,
        &signed(FOREIGN_SECRET, "evt-leak-2", now(), &body),
        body.clone(),
    )
    .await;
    assert_eq!(reply.code(), "invalid_signature");
    seen.push(reply.json.to_string());
    let mut pasted = signed(SECRET, "evt-leak-3", now(), &body);
    pasted[3].1 = format!("v1,{SECRET} {SECOND_SECRET}");
    let reply = post(&webhooks, &pasted, body.clone()).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    seen.push(reply.json.to_string());

    // OpenApp refuses the key once, then a permanent refusal makes a dead letter.
    openapp.sandbox.push_fault(Fault::Status {
        status: 401,
        retry_after: None,
    });
    let body = event_body("lease.signed", "L-leak-2", &["u-leak-2"]);
    let reply = post(&webhooks, &signed(SECRET, "evt-leak-4", now(), &body), body).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    let body = event_body("lease.signed", "L-leak-3", &["u-leak-3"]);
    let reply = post(&webhooks, &signed(SECRET, "evt-leak-5", now(), &body), body).await;
    assert_eq!(reply.status, 202, "{reply:?}");

    // The admin API with the right token, a near miss, and the OpenApp key as a token.
    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];
    let dead = wait_until("a dead letter", Duration::from_secs(30), || async {
        let reply = request(
            reqwest::Method::GET,
            &admin("/admin/dead-letters"),
            &bearer(ADMIN_TOKEN),
            Vec::new(),
        )
        .await;
        reply.json["items"][0]["id"]
            .as_str()
            .map(|id| (id.to_owned(), reply.json.to_string()))
    })
    .await;
    seen.push(dead.1);
    let dead = dead.0;
    for token in [
        format!("{ADMIN_TOKEN}x"),
        API_KEY.to_owned(),
        SECRET.to_owned(),
    ] {
        let reply = request(
            reqwest::Method::GET,
            &admin("/admin/queue"),
            &bearer(&token),
            Vec::new(),
        )
        .await;
        assert_eq!(reply.status, 401, "{reply:?}");
        seen.push(reply.json.to_string());
    }
    let reply = request(
        reqwest::Method::POST,
        &admin(&format!("/admin/dead-letters/{dead}/replay")),
        &bearer(ADMIN_TOKEN),
        Vec::new(),
    )
    .await;
    seen.push(reply.json.to_string());
    let reply = request(
        reqwest::Method::GET,
        &admin("/admin/audit"),
        &bearer(ADMIN_TOKEN),
        Vec::new(),
    )
    .await;
    seen.push(reply.json.to_string());

    // The operator CLI, with the same configuration.
    for args in [
        vec!["check-config"],
        vec!["queue", "stats"],
        vec!["dead-letters", "list"],
        vec![
            "send-test-event",
            "--source",
            SOURCE,
            "--type",
            "lease.signed",
            "--lease",
            "L-cli",
            "--property",
            PROPERTY,
            "--user",
            "u-cli",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lease-sync"))
            .args(&args)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "trace")
            .output()
            .expect("runs");
        seen.push(format!(
            "{args:?}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let status = serve.terminate(Duration::from_secs(20)).await;
    assert!(status.success());
    let log = serve.log();
    // Trace really was on, and the error paths really ran.
    assert!(log.contains("TRACE"), "trace logging was not on");
    assert!(log.contains("401"), "OpenApp's refusal was not logged");
    seen.push(log);

    let decoded_key: String = lease_sync::signature::standard_webhooks::decode_secret(SECRET)
        .expect("key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let needles = [
        SECRET,
        &SECRET["whsec_".len()..],
        SECOND_SECRET,
        &SECOND_SECRET["whsec_".len()..],
        &decoded_key,
        API_KEY,
        "_openapp_testsecret",
        ADMIN_TOKEN,
    ];
    for text in &seen {
        for needle in needles {
            assert!(
                !text.contains(needle),
                "a secret ({}…) appears in:\n{}",
                needle.chars().take(6).collect::<String>(),
                text.lines()
                    .filter(|l| l.contains(needle))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// `send-test-event` signs as each source's sender would, so integrators can try an
/// `hmac-sha256` source end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_event_signs_for_hmac_sources() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&redis.url(), &namespace(), "http://127.0.0.1:9/api/v1");
    with_hmac_sources(&mut config);
    let app = TestApp::start(&config, Role::Ingest).await;
    let path = dir.path().join("config.toml");
    write_config(&config, &path);
    for source in ["github", "buildium"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lease-sync"))
            .args([
                "send-test-event",
                "--source",
                source,
                "--type",
                "lease.signed",
            ])
            .args([
                "--lease",
                "L-send",
                "--property",
                PROPERTY,
                "--user",
                "u-send",
            ])
            .args(["--url", &app.webhook_url(source), "--config"])
            .arg(&path)
            .output()
            .await
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{source}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("202 Accepted"), "{stdout}");
        assert!(!stdout.contains(GITHUB_SECRET) && !stdout.contains(BUILDIUM_SECRET));
    }
    assert_eq!(app.queue().counts().await.expect("counts").ready, 2);
    app.stop().await;
}
