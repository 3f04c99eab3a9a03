//! The `lease-sync` binary: parses the command line and hands over to the library, or, for
//! `sandbox-openapp` and `sandbox-buildium`, to the OpenApp and Buildium emulators (the
//! `lease-sync-sandbox` crate, which the library does not link).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lease_sync_sandbox::SandboxArgs;
use lease_sync_sandbox::buildium::BuildiumArgs;

/// mimalloc instead of the system allocator: a worker spent about a quarter of its CPU in
/// glibc's malloc and free (measured with `perf` during the 0 ms drain; BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps residents of shared buildings in sync with OpenApp, driven by signed lease webhooks.
#[derive(Debug, Parser)]
#[command(name = "lease-sync", version, about, long_about = None)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The library's subcommands, and the emulators.
#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Service(lease_sync::cli::Command),
    /// Run a local in-memory OpenApp emulator to try lease-sync without OpenApp credentials.
    SandboxOpenapp(SandboxArgs),
    /// Run a local in-memory Buildium emulator: lease and tenant reads, and signed lease
    /// webhooks posted to --webhook-url for every change made through its control API.
    SandboxBuildium(BuildiumArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Service(command) => lease_sync::cli::run(command).await,
        Command::SandboxOpenapp(args) => {
            lease_sync::cli::run_standalone(|shutdown| {
                lease_sync_sandbox::run(args, shutdown.cancelled_owned())
            })
            .await
        }
        Command::SandboxBuildium(args) => {
            lease_sync::cli::run_standalone(|shutdown| {
                lease_sync_sandbox::buildium::run(args, shutdown.cancelled_owned())
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn sandbox_openapp_takes_every_emulator_flag() {
        let cli = Cli::try_parse_from([
            "lease-sync",
            "sandbox-openapp",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "k",
            "--api-key-file",
            "/dev/null",
            "--auth",
            "x-api-key",
            "--integration",
            "O:I",
            "--fail-status",
            "503",
            "--fail-rate",
            "0.5",
            "--delay-ms",
            "7",
            "--retry-after",
            "2",
            "--conflict-on-existing",
        ])
        .expect("parses");
        let Command::SandboxOpenapp(args) = cli.command else {
            panic!("not sandbox-openapp: {cli:?}");
        };
        assert_eq!(args.listen, "127.0.0.1:0");
        assert_eq!(args.api_keys, ["k"]);
        assert_eq!(args.api_key_files.len(), 1);
        assert_eq!(args.integrations, ["O:I"]);
        assert_eq!(
            (args.fail_status, args.fail_rate, args.delay_ms),
            (Some(503), Some(0.5), 7)
        );
        assert_eq!(args.retry_after.as_deref(), Some("2"));
        assert!(args.conflict_on_existing);
    }

    #[test]
    fn sandbox_buildium_takes_every_emulator_flag() {
        let cli = Cli::try_parse_from([
            "lease-sync",
            "sandbox-buildium",
            "--listen",
            "127.0.0.1:0",
            "--webhook-url",
            "http://127.0.0.1:8080/webhooks/buildium",
            "--secret-file",
            "/dev/null",
            "--client-id",
            "id",
            "--client-secret-file",
            "/dev/null",
            "--rate-limit",
            "20",
            "--retry-scale",
            "600",
            "--account-id",
            "42",
            "--read-fail-status",
            "503",
            "--read-fail-rate",
            "0.5",
            "--webhook-drop-rate",
            "0.1",
            "--webhook-duplicate-rate",
            "0.2",
            "--webhook-max-delay-ms",
            "30",
        ])
        .expect("parses");
        let Command::SandboxBuildium(args) = cli.command else {
            panic!("not sandbox-buildium: {cli:?}");
        };
        assert_eq!(args.listen, "127.0.0.1:0");
        assert_eq!(args.webhook_url, "http://127.0.0.1:8080/webhooks/buildium");
        assert_eq!(args.client_id.as_deref(), Some("id"));
        assert!(args.secret_file.is_some() && args.client_secret_file.is_some());
        assert_eq!((args.rate_limit, args.account_id), (20, 42));
        assert!((args.retry_scale - 600.0).abs() < f64::EPSILON);
        assert_eq!(args.read_fail_status, Some(503));
        assert_eq!(args.webhook_max_delay_ms, 30);
    }

    #[test]
    fn service_commands_still_parse() {
        let cli =
            Cli::try_parse_from(["lease-sync", "serve", "--config", "c.toml"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Service(lease_sync::cli::Command::Serve(_))
        ));
    }
}
