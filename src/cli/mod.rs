//! The `lease-sync` command line: every subcommand but `sandbox-openapp`, which lives in its
//! own crate (`lease-sync-sandbox`) and is added by the binary (`src/main.rs`), so that this
//! library does not carry the emulator.

mod admin;
mod conflicts;
mod dead_letters;
mod healthcheck;
mod integrations;
mod leases;
mod queue_stats;
mod reconcile;
mod residents;
mod send_test_event;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::app::{Application, shutdown_on_signals};
use crate::config::{Role, Settings};
use crate::telemetry;

/// Path of the configuration file, shared by most commands.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// TOML configuration file; keys can be overridden by LEASE_SYNC__SECTION__KEY variables.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

/// The subcommands of this library; the binary flattens them into its own command line.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run webhook ingest and workers in one process.
    Serve(ConfigArg),
    /// Run webhook ingest only (scale separately from workers).
    Ingest(ConfigArg),
    /// Run workers only (scale separately from ingest).
    Work(ConfigArg),
    /// Validate the configuration and print it with secrets redacted; exit 1 on any problem.
    CheckConfig(ConfigArg),
    /// Build, sign and post a sample lease event, and print the equivalent curl command.
    SendTestEvent(send_test_event::SendTestEventArgs),
    /// Inspect, replay and purge dead letters (deliveries that were given up).
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Inspect the delivery queue.
    Queue(queue_stats::QueueArgs),
    /// Compare a file of a source's active leases with OpenApp and lease-sync's state; print
    /// the plan, and with --apply enqueue the changes.
    Reconcile(reconcile::ReconcileArgs),
    /// Inspect what lease-sync knows about residents, and their history.
    Residents(residents::ResidentsArgs),
    /// List, pause and resume OpenApp integrations (buildings): a paused one's OpenApp calls
    /// are held until it is resumed.
    Integrations(integrations::IntegrationsArgs),
    /// People a source names who have no OpenApp user yet (no email, no user, several).
    Conflicts(conflicts::ConflictsArgs),
    /// Inspect lease-sync's record of one lease, or reset it (forget it and converge its
    /// residents again).
    Leases(leases::LeasesArgs),
    /// Ask a running instance whether it is ready (exit 0) or not (exit 1); for container
    /// health checks.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Admin API helpers: `admin hash-token` prints the `sha256:…` form of a token for
    /// `[admin] tokens`.
    Admin(admin::AdminArgs),
}

/// Runs the parsed command; errors are printed with their causes and exit with status 1.
pub async fn run(command: Command) -> ExitCode {
    exit_code(dispatch(command).await)
}

/// Runs a tool that needs no configuration file (such as the binary's `sandbox-openapp`) the
/// way the other commands run: logs at the default level (`RUST_LOG` overrides it), `shutdown`
/// cancelled on SIGINT or SIGTERM, errors printed with their causes and exit status 1.
pub async fn run_standalone<F, Fut>(tool: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let logs = telemetry::init(&crate::config::LogSettings::default());
    let result = tool(shutdown_on_signals())
        .await
        .map(|()| ExitCode::SUCCESS);
    // The lines still queued go out before the error.
    drop(logs);
    exit_code(result)
}

fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(arg: &ConfigArg, role: Role) -> anyhow::Result<Settings> {
    Settings::load(&arg.config, std::env::vars(), role)
        .with_context(|| format!("configuration {} is not usable", arg.config.display()))
}

async fn run_role(arg: &ConfigArg, role: Role) -> anyhow::Result<ExitCode> {
    let settings = load(arg, role)?;
    let _logs = telemetry::init(&settings.log);
    raise_open_file_limit();
    let app = Application::build(settings, role).await?;
    app.run(shutdown_on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Every connection costs a file descriptor, and the soft limit is often 1,024 while the
/// hard one is far higher: serving processes take what they may. The listeners' connection
/// caps are derived from the result (see `Settings::connection_caps`).
fn raise_open_file_limit() {
    match crate::fd_limit::raise_soft_to_hard() {
        Ok((before, after)) => tracing::info!(
            soft = after.soft,
            hard = after.hard,
            "open-file limit (RLIMIT_NOFILE): soft {} (was {}), hard {}",
            after.soft,
            before.soft,
            after.hard
        ),
        Err(e) => tracing::warn!("cannot raise the open-file limit (RLIMIT_NOFILE): {e}"),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(arg) => run_role(&arg, Role::Serve).await,
        Command::Ingest(arg) => run_role(&arg, Role::Ingest).await,
        Command::Work(arg) => run_role(&arg, Role::Work).await,
        Command::CheckConfig(arg) => {
            let settings = load(&arg, Role::Serve)?;
            let now = time::OffsetDateTime::now_utc();
            settings
                .admin
                .validate_expiry(now)
                .with_context(|| format!("configuration {} is not usable", arg.config.display()))?;
            print!("{}", settings.to_redacted_toml());
            let warnings = settings.warnings(now);
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            eprintln!(
                "configuration {} is valid{}",
                arg.config.display(),
                match warnings.len() {
                    0 => String::new(),
                    n => format!(" ({n} warning{})", if n == 1 { "" } else { "s" }),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::SendTestEvent(args) => send_test_event::run(args).await,
        Command::DeadLetters(args) => dead_letters::run(args).await,
        Command::Queue(args) => queue_stats::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
        Command::Residents(args) => residents::run(args).await,
        Command::Integrations(args) => integrations::run(args).await,
        Command::Conflicts(args) => conflicts::run(args).await,
        Command::Leases(args) => leases::run(args).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Admin(args) => admin::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary's command line without its `sandbox-openapp` (src/main.rs tests the whole).
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
