//! The `lease-sync` binary: parses the command line and hands over to the library, or, for
//! `sandbox-openapp`, to the OpenApp emulator (the `lease-sync-sandbox` crate, which the
//! library does not link).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lease_sync_sandbox::SandboxArgs;

/// Keeps residents of shared buildings in sync with OpenApp, driven by signed lease webhooks.
#[derive(Debug, Parser)]
#[command(name = "lease-sync", version, about, long_about = None)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The library's subcommands, and the sandbox.
#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Service(lease_sync::cli::Command),
    /// Run a local in-memory OpenApp emulator to try lease-sync without OpenApp credentials.
    SandboxOpenapp(SandboxArgs),
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
    fn service_commands_still_parse() {
        let cli =
            Cli::try_parse_from(["lease-sync", "serve", "--config", "c.toml"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Service(lease_sync::cli::Command::Serve(_))
        ));
    }
}
