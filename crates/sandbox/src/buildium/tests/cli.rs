//! `lease-sync sandbox-buildium` arguments and entry point.

use std::io::Write as _;

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BuildiumArgs,
}

fn parse(args: &[&str]) -> Result<BuildiumArgs, clap::Error> {
    let mut all = vec![
        "sandbox-buildium",
        "--webhook-url",
        "http://127.0.0.1:9/hook",
    ];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).map(|cli| cli.args)
}

fn invalid(args: &[&str]) -> BuildiumArgsError {
    parse(args).expect("parses").options().expect_err("invalid")
}

#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory as _;
    Cli::command().debug_assert();
}

#[test]
fn defaults_follow_buildium() {
    let args = parse(&["--secret", "s"]).expect("parses");
    assert_eq!(args.listen, "127.0.0.1:8082");
    let options = args.options().expect("valid");
    assert_eq!(
        options.webhook_url.as_deref(),
        Some("http://127.0.0.1:9/hook")
    );
    assert_eq!(options.secret, "s");
    assert_eq!(options.rate_limit, 10);
    assert!((options.retry_scale - 1.0).abs() < f64::EPSILON);
    assert_eq!(options.account_id, DEFAULT_ACCOUNT_ID);
    assert_eq!(options.delivery_timeout, Duration::from_secs(10));
    assert!(options.credentials.is_none());
    assert_eq!(options.read_faults, ReadFaults::default());
    assert_eq!(options.webhook_faults, WebhookFaults::default());
}

#[test]
fn every_option_is_read_and_secrets_stay_out_of_debug() {
    let mut secret_file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(secret_file, "  from-a-file  ").expect("write");
    let path = secret_file.path().to_str().expect("UTF-8 path");
    let args = parse(&[
        "--listen",
        "127.0.0.1:0",
        "--secret-file",
        path,
        "--client-id",
        "the-id",
        "--client-secret",
        "the-client-secret",
        "--rate-limit",
        "0",
        "--retry-scale",
        "600",
        "--account-id",
        "77",
        "--read-fail-status",
        "429",
        "--read-fail-rate",
        "0.5",
        "--webhook-drop-rate",
        "0.1",
        "--webhook-duplicate-rate",
        "0.2",
        "--webhook-max-delay-ms",
        "300",
    ])
    .expect("parses");
    assert!(!format!("{args:?}").contains("the-client-secret"));
    let options = args.options().expect("valid");
    assert_eq!(options.secret, "from-a-file");
    assert_eq!(
        options.credentials,
        Some(Credentials {
            client_id: "the-id".into(),
            client_secret: "the-client-secret".into(),
        })
    );
    assert!(!format!("{options:?}").contains("the-client-secret"));
    assert!(!format!("{options:?}").contains("from-a-file"));
    assert_eq!(options.rate_limit, 0);
    assert_eq!(options.account_id, 77);
    assert_eq!(
        options.read_faults,
        ReadFaults {
            status: Some(429),
            rate: 0.5
        }
    );
    assert_eq!(
        options.webhook_faults,
        WebhookFaults {
            drop_rate: 0.1,
            duplicate_rate: 0.2,
            max_delay: Duration::from_millis(300),
        }
    );
}

#[test]
fn invalid_arguments_are_named() {
    assert_eq!(invalid(&[]), BuildiumArgsError::Missing("secret"));
    assert_eq!(
        invalid(&["--secret", " "]),
        BuildiumArgsError::Empty("secret")
    );
    assert_eq!(
        invalid(&["--secret", "s", "--secret-file", "/dev/null"]),
        BuildiumArgsError::TwoSources("secret")
    );
    assert!(matches!(
        invalid(&["--secret-file", "/nonexistent/secret"]),
        BuildiumArgsError::File { flag: "secret", .. }
    ));
    assert_eq!(
        invalid(&["--secret", "s", "--client-id", "id"]),
        BuildiumArgsError::HalfCredentials
    );
    assert!(matches!(
        invalid(&["--secret", "s", "--retry-scale", "0"]),
        BuildiumArgsError::InvalidRetryScale(_)
    ));
    assert_eq!(
        invalid(&["--secret", "s", "--read-fail-status", "200"]),
        BuildiumArgsError::InvalidFailStatus(200)
    );
    assert!(matches!(
        invalid(&["--secret", "s", "--webhook-drop-rate", "1.5"]),
        BuildiumArgsError::InvalidRate {
            flag: "webhook-drop-rate",
            ..
        }
    ));
    // clap enforces that --read-fail-rate needs --read-fail-status.
    assert!(parse(&["--secret", "s", "--read-fail-rate", "0.5"]).is_err());
    for url in ["not a url", "ftp://example.com/x", "/relative"] {
        let args = BuildiumArgs {
            webhook_url: url.into(),
            ..parse(&["--secret", "s"]).expect("parses")
        };
        assert_eq!(
            args.options().expect_err("invalid"),
            BuildiumArgsError::InvalidWebhookUrl(url.into())
        );
    }
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let args = parse(&["--listen", "127.0.0.1:0", "--secret", "s"]).expect("parses");
    tokio::time::timeout(GUARD, run(args, std::future::ready(())))
        .await
        .expect("returns promptly")
        .expect("runs cleanly");

    let bad = parse(&["--listen", "127.0.0.1:0"]).expect("parses");
    assert!(run(bad, std::future::ready(())).await.is_err());

    let unbindable = parse(&["--listen", "not an address", "--secret", "s"]).expect("parses");
    assert!(run(unbindable, std::future::ready(())).await.is_err());
}
