//! The `lease-sync` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    lease_sync::cli::run(lease_sync::cli::Cli::parse()).await
}
