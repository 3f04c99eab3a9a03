//! Connections as a resource: idle ones are closed after `http.read_timeout_ms`, each
//! listener holds at most its cap, idle connections make room for new ones at the cap, busy
//! ones get company refused with 503 `overloaded`, and 1,100 idle sockets against a process
//! limited to 1,024 file descriptors stop neither ingest nor the probes.

use std::net::SocketAddr;
use std::time::Duration;

use lease_sync::config::{Role, Settings};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::*;

/// Bound on anything the server should do by itself within a timeout of a few hundred ms.
const LIVENESS: Duration = Duration::from_secs(10);

async fn ingest_with(edit: impl FnOnce(&mut Settings)) -> (RedisServer, TestApp) {
    let redis = RedisServer::start().await;
    let mut config = test_config(&redis.url(), &namespace(), "http://127.0.0.1:9/api/v1");
    edit(&mut config);
    let app = TestApp::start(&config, Role::Ingest).await;
    (redis, app)
}

/// `[http]` of the test config with `read_timeout_ms` and, when given, `max_connections`.
fn with_http(read_timeout_ms: u64, max_connections: Option<usize>) -> impl FnOnce(&mut Settings) {
    move |settings| {
        settings.http.read_timeout = Duration::from_millis(read_timeout_ms);
        settings.http.max_connections = max_connections.map(count);
    }
}

/// Reads until the server closes the connection (or resets it), bounded by [`LIVENESS`];
/// returns what arrived.
async fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    tokio::time::timeout(LIVENESS, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server did not close {what} within {LIVENESS:?}"));
    got
}

/// Reads one whole answer with a `content-length`, bounded by [`LIVENESS`].
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    tokio::time::timeout(LIVENESS, async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return text;
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before a whole answer: {text}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer within the liveness bound")
}

/// The value of `series` (name and labels, as printed) on the admin listener's `/metrics`.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_silent_connection_and_an_idle_keep_alive_one_are_closed_after_the_read_timeout() {
    let (_redis, app) = ingest_with(with_http(300, None)).await;
    let addr = app.addr.expect("listens");

    // Connects and sends nothing: closed without an answer.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let got = read_until_closed(&mut silent, "a connection that sent nothing").await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // One request, answered, then nothing: the keep-alive connection is closed too.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "kept alive: {answer}"
    );
    let got = read_until_closed(&mut kept, "an idle keep-alive connection").await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    app.stop().await;
}

#[tokio::test]
async fn at_the_cap_the_connection_idle_longest_makes_room_for_a_new_one() {
    // A read timeout far beyond the test: only reclaiming can free a slot in time.
    let (_redis, app) = ingest_with(with_http(60_000, Some(2))).await;
    let (addr, admin) = (app.addr.expect("listens"), app.admin_addr.expect("admin"));
    let series = "lease_sync_http_connections_reclaimed_total{listener=\"webhook\"}";
    let before = metric(admin, series).await;

    // Accepted in connect order: `oldest` has been idle longest.
    let mut oldest = TcpStream::connect(addr).await.expect("connect");
    let younger = TcpStream::connect(addr).await.expect("connect");
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer =
        String::from_utf8_lossy(&read_until_closed(&mut third, "an answered request").await)
            .into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let got = read_until_closed(&mut oldest, "the connection idle longest").await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // The younger one was left alone (a closed socket would read 0 bytes, not block).
    let mut probe = [0_u8; 1];
    assert!(
        matches!(younger.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the younger idle connection was closed as well"
    );
    assert!(metric(admin, series).await >= before + 1.0);
    drop(younger);
    app.stop().await;
}

#[tokio::test]
async fn at_the_cap_with_nothing_idle_a_new_connection_gets_503_overloaded() {
    let (_redis, app) = ingest_with(with_http(60_000, Some(1))).await;
    let (addr, admin) = (app.addr.expect("listens"), app.admin_addr.expect("admin"));
    let series = "lease_sync_http_connections_refused_total{listener=\"webhook\"}";
    let before = metric(admin, series).await;

    // A webhook whose body is still coming: `100 Continue` shows it is with the handler.
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    busy.write_all(
        format!(
            "POST /webhooks/{SOURCE} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\nexpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0_u8; 256];
    tokio::time::timeout(LIVENESS, async {
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let n = busy.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("100 Continue within the liveness bound");
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&seen)
    );

    let mut refused = TcpStream::connect(addr).await.expect("connect");
    refused
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let answer =
        String::from_utf8_lossy(&read_until_closed(&mut refused, "a refused connection").await)
            .into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\r\nretry-after: 7\r\n"), "{answer}");
    assert!(
        answer.contains("\r\ncontent-type: application/json\r\n"),
        "{answer}"
    );
    let body: Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").expect("head").1).expect("json");
    assert_eq!(body["error"], "overloaded", "{answer}");
    assert!(metric(admin, series).await >= before + 1.0);

    // The busy request still completes once its body arrives.
    let body = br#"{"type":"nonsense"}"#;
    let padded = [body.as_slice(), &[b' '; 100][..100 - body.len()]].concat();
    busy.write_all(&padded).await.expect("write body");
    let answer = read_answer(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    app.stop().await;
}

/// The issue's scenario: a process whose soft and hard open-file limits are both 1,024, so
/// raising the soft limit cannot help, and 1,100 idle connections to the webhook listener
/// (100 more to the admin listener). Ingest and both `/readyz` still answer within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_connections_under_a_1024_fd_limit_stop_neither_ingest_nor_probes() {
    const IDLE_WEBHOOK: usize = 1_100;
    const IDLE_ADMIN: usize = 100;
    const BOUND: Duration = Duration::from_secs(2);
    // This process holds all the idle sockets, besides its own files and other tests'.
    let needed = (IDLE_WEBHOOK + IDLE_ADMIN + 512) as u64;
    // Raised only as far as needed: an unlimited hard limit cannot be the soft one on Linux.
    let soft = rlimit::increase_nofile_limit(needed).expect("raise this process's soft limit");
    if soft < needed {
        eprintln!(
            "SKIPPED: this test opens {} sockets and needs an open-file limit of {needed}; the hard limit here allows {soft}",
            IDLE_WEBHOOK + IDLE_ADMIN
        );
        return;
    }

    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    // Idle connections are only closed after a minute: within the test, only reclaiming
    // frees a slot.
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    config.http.listen = loopback(port);
    config.admin.listen = loopback(admin_port);
    config.http.read_timeout = Duration::from_secs(60);
    let mut serve =
        LeaseSyncProcess::spawn_with_fd_limit(dir.path(), "serve", &["serve"], Some(&config), 1024);
    wait_ready(port, Duration::from_secs(30)).await;
    wait_ready(admin_port, Duration::from_secs(30)).await;
    // The limit really is 1,024 both ways.
    serve
        .wait_for_log("soft 1024 (was 1024), hard 1024", LIVENESS)
        .await;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let cap = metric(
        admin,
        "lease_sync_http_connection_limit{listener=\"webhook\"}",
    )
    .await;
    assert!(
        cap > 0.0 && cap < IDLE_WEBHOOK as f64,
        "the derived cap ({cap}) must be below {IDLE_WEBHOOK} for this test to mean anything"
    );

    let mut idle = Vec::with_capacity(IDLE_WEBHOOK + IDLE_ADMIN);
    for _ in 0..IDLE_WEBHOOK {
        let stream = tokio::time::timeout(LIVENESS, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect within the liveness bound")
            .expect("connect");
        idle.push(stream);
    }
    // Every connection beyond the cap was taken in the place of an idle one.
    let reclaimed = "lease_sync_http_connections_reclaimed_total{listener=\"webhook\"}";
    wait_until(
        "the webhook listener to reclaim",
        Duration::from_secs(30),
        || async { (metric(admin, reclaimed).await >= IDLE_WEBHOOK as f64 - cap).then_some(()) },
    )
    .await;
    for _ in 0..IDLE_ADMIN {
        let stream = tokio::time::timeout(LIVENESS, TcpStream::connect(admin))
            .await
            .expect("connect within the liveness bound")
            .expect("connect");
        idle.push(stream);
    }

    let client = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("client");
    let body = event_body("lease.signed", "L-fd", &["u-fd"]);
    let mut request = client
        .post(format!("http://127.0.0.1:{port}/webhooks/{SOURCE}"))
        .body(body.clone());
    for (k, v) in signed(SECRET, "evt-fd", now(), &body) {
        request = request.header(k, v);
    }
    let accepted = request
        .send()
        .await
        .expect("the webhook is answered within 2 s");
    assert_eq!(accepted.status(), 202);
    for (what, url) in [
        ("webhook", format!("http://127.0.0.1:{port}/readyz")),
        ("admin", format!("http://127.0.0.1:{admin_port}/readyz")),
    ] {
        let ready = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what} /readyz is not answered within 2 s: {e}"));
        assert_eq!(ready.status(), 200, "{what} /readyz");
    }

    let log = serve.log();
    assert!(
        !log.contains("cannot accept a connection"),
        "the process ran out of file descriptors:\n{log}"
    );
    drop(idle);
    let status = serve.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", serve.log());
}
