//! The command line: check-config, send-test-event, serve's shutdown.

use std::process::Command;
use std::time::Duration;

use lease_sync::config::Role;
use lease_sync_testkit::toml_with_secrets;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

fn lease_sync(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lease-sync"))
        .args(args)
        .output()
        .expect("run lease-sync")
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let mut config = test_config(
        "redis://:hunter2@127.0.0.1:6390",
        "ns",
        "https://api.openapp.house/api/v1",
    );
    config.http.listen = loopback(8080);
    write_config(&config, &path);
    let out = lease_sync(&["check-config", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("dedupe_ttl_secs = 259200"),
        "defaults are shown:\n{stdout}"
    );
    assert!(stdout.contains("[redacted]"));
    for secret in ["hunter2", "C2FVsBQI", "MfKQ9r8G", "testsecret"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
}

/// `text` with `from` replaced by `to`, for a configuration broken on purpose; panics unless
/// `from` occurs exactly once, so that a change of the written configuration cannot leave a
/// case testing nothing.
fn broken(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` once in:\n{text}");
    text.replacen(from, to, 1)
}

/// Parsing, on purpose: the file is the test config as TOML text, broken by hand.
#[test]
fn check_config_names_the_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let mut config = test_config(
        "redis://127.0.0.1:6390",
        "ns",
        "https://api.openapp.house/api/v1",
    );
    config.http.listen = loopback(8080);
    let good = toml_with_secrets(&config).unwrap();
    for (broken, needle) in [
        (
            broken(&good, "body_limit_bytes", "body_limit"),
            "body_limit",
        ),
        (
            broken(&good, "scheme = \"standard-webhooks\"", "scheme = \"none\""),
            "scheme",
        ),
        (
            // At a line's start: `wait_timeout_ms = 1000` ([redis]) ends the same way.
            broken(&good, "\ntimeout_ms = 1000", "\ntimeout_ms = \"soon\""),
            "openapp.timeout_ms",
        ),
        (
            broken(
                &good,
                &format!("integration_id = \"{INTEGRATION}\""),
                "integration_id = \"a b\"",
            ),
            "integration_id",
        ),
        ("this is not toml".to_owned(), "not valid TOML"),
    ] {
        std::fs::write(&path, &broken).unwrap();
        let out = lease_sync(&["check-config", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    }
    let out = lease_sync(&["check-config", "--config", "/nonexistent/lease-sync.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lease-sync.toml"));
}

#[test]
fn environment_overrides_config_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let mut config = test_config("redis://127.0.0.1:6390", "ns", "https://x.test/api/v1");
    config.http.listen = loopback(8080);
    write_config(&config, &path);
    let out = Command::new(env!("CARGO_BIN_EXE_lease-sync"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("LEASE_SYNC__WORKER__CONCURRENCY", "3")
        .env("LEASE_SYNC__SOURCES__0__TOLERANCE_SECS", "42")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("concurrency = 3") && stdout.contains("tolerance_secs = 42"),
        "{stdout}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_lease-sync"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("LEASE_SYNC__WORKER__CONCURENCY", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("concurency"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_event_posts_a_signed_event_and_prints_curl() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&redis.url(), &namespace(), "http://127.0.0.1:9/api/v1");
    let ingest = TestApp::start(&config, Role::Ingest).await;
    let path = dir.path().join("c.toml");
    write_config(&config, &path);
    let url = ingest.webhook_url(SOURCE);
    let out = tokio::task::spawn_blocking(move || {
        lease_sync(&[
            "send-test-event",
            "--config",
            path.to_str().unwrap(),
            "--source",
            SOURCE,
            "--type",
            "lease.signed",
            "--lease",
            "L-1",
            "--property",
            PROPERTY,
            "--user",
            "01JD3ZJ4Q8W6V5T2N9K7H1M0PX",
            "--url",
            &url,
        ])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("curl -sS -X POST") && stdout.contains("webhook-signature: v1,"),
        "{stdout}"
    );
    assert!(stdout.contains("\"status\":\"queued\""), "{stdout}");
    assert!(!stdout.contains("C2FVsBQI"), "the secret is never printed");
    assert_eq!(ingest.queue().counts().await.unwrap().ready, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_on_sigterm_with_exit_0() {
    let redis = RedisServer::start().await;
    let openapp = FakeOpenApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = test_config(&redis.url(), &namespace(), &openapp.base_url);
    config.http.listen = loopback(port);
    let mut serve = LeaseSyncProcess::spawn(dir.path(), "serve", &["serve"], Some(&config));
    let body = wait_ready(port, LIMIT).await;
    assert_eq!(body["workers"], "running");
    let status = serve.terminate(LIMIT).await;
    assert!(status.success(), "{}", serve.log());
    assert!(serve.log().contains("stopped"));
}

/// Runs `lease-sync <args…>` with `input` on stdin.
fn lease_sync_with_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_lease-sync"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lease-sync");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A process that refuses early may close stdin first; its exit status tells.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    child.wait_with_output().expect("wait for lease-sync")
}

/// `sha256:<lowercase hex>` of `token`, computed independently of lease-sync.
fn expected_hash(token: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let hex: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

#[test]
fn admin_hash_token_prints_the_sha256_of_the_first_line_of_stdin() {
    let token = "operator-token-0123456789";
    for input in [
        format!("{token}\n"),
        format!("{token}\r\n"),
        token.to_owned(),
        format!("{token}\nnot read\n"),
    ] {
        let out = lease_sync_with_stdin(&["admin", "hash-token"], &input);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{input:?}: {stderr}");
        assert_eq!(stdout, format!("{}\n", expected_hash(token)), "{input:?}");
        assert!(!stderr.contains(token), "the token is never echoed");
    }
}

#[test]
fn admin_hash_token_refuses_a_short_or_missing_token_with_exit_1() {
    for (input, needle) in [("short-secret\n", "at least 16"), ("", "no token")] {
        let out = lease_sync_with_stdin(&["admin", "hash-token"], input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{input:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{input:?}: nothing on stdout");
        assert!(stderr.contains(needle), "{input:?}: {stderr}");
        assert!(!stderr.contains("short-secret"), "{stderr}");
    }
}

#[test]
fn admin_hash_token_generate_prints_a_new_token_and_its_hash() {
    use base64::Engine as _;

    let run = || {
        let out = lease_sync_with_stdin(&["admin", "hash-token", "--generate"], "");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        (lines[0].clone(), lines[1].clone(), stderr)
    };
    let (token, hash, hint) = run();
    let random = token
        .strip_prefix("lsat_")
        .unwrap_or_else(|| panic!("{token}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(random)
        .unwrap_or_else(|e| panic!("{token}: {e}"));
    assert_eq!(bytes.len(), 32);
    assert_eq!(hash, expected_hash(&token));
    assert!(
        hint.contains("line 1") && hint.contains("line 2") && !hint.contains(&token),
        "{hint}"
    );
    // hash-token agrees with its own output, and every run makes a new token.
    let out = lease_sync_with_stdin(&["admin", "hash-token"], &format!("{token}\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{hash}\n"));
    assert_ne!(run().0, token);
}
