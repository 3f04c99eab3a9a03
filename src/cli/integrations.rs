//! `lease-sync integrations list|pause|resume`: hold the OpenApp calls of one building (an
//! OpenApp integration) and release them again.

use std::process::ExitCode;

use clap::Subcommand;

use super::dead_letters::{Explain as _, open_queue, timestamp};
use super::{ConfigArg, load};
use crate::config::Role;
use crate::dead_letters::cli_actor;
use crate::integrations::{IntegrationError, Integrations};

/// Arguments of `integrations`.
#[derive(Debug, clap::Args)]
pub struct IntegrationsArgs {
    /// What to do.
    #[command(subcommand)]
    command: IntegrationsCommand,
}

/// The `integrations` subcommands.
#[derive(Debug, Subcommand)]
enum IntegrationsCommand {
    /// List the configured integrations: paused or not, and the convergences held.
    List(ListArgs),
    /// Pause an integration: its residents' convergences are held (no OpenApp call, no
    /// attempt spent) until it is resumed; webhooks are still accepted. Audited.
    Pause(ChangeArgs),
    /// Resume an integration and release its held convergences. Audited.
    Resume(ChangeArgs),
}

/// Arguments of `integrations list`.
#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `integrations pause|resume`.
#[derive(Debug, clap::Args)]
struct ChangeArgs {
    /// The OpenApp integration id.
    #[arg(value_name = "ID")]
    id: String,
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `integrations …`.
pub(super) async fn run(args: IntegrationsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        IntegrationsCommand::List(args) => list(args).await,
        IntegrationsCommand::Pause(args) => change(args, true).await,
        IntegrationsCommand::Resume(args) => change(args, false).await,
    }
}

async fn open(config: &ConfigArg) -> anyhow::Result<Integrations> {
    let settings = load(config, Role::Operate)?;
    let queue = open_queue(config).await?;
    Ok(Integrations::new(&settings, queue))
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let integrations = open(&args.config).await?;
    let list = integrations
        .list()
        .await
        .explain("cannot read the paused integrations")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<8} {:>6}  buildings",
        "INTEGRATION", "STATE", "HELD"
    );
    for status in &list {
        let state = match &status.paused {
            Some(_) => "paused",
            None => "active",
        };
        println!(
            "{:<24} {:<8} {:>6}  {}",
            status.integration_id,
            state,
            status.held_jobs,
            if status.properties.is_empty() {
                "(no longer configured)".to_owned()
            } else {
                status.properties.join(", ")
            }
        );
        if let Some(paused) = &status.paused {
            println!(
                "{:<24} paused by {} at {}",
                "",
                paused.by,
                timestamp(paused.at)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn change(args: ChangeArgs, pause: bool) -> anyhow::Result<ExitCode> {
    let integrations = open(&args.config).await?;
    let actor = cli_actor();
    let result = if pause {
        integrations.pause(&args.id, &actor).await
    } else {
        integrations.resume(&args.id, &actor).await
    };
    let change = match result {
        Ok(change) => change,
        Err(IntegrationError::NotFound(id)) => {
            eprintln!(
                "error: no configured building maps to integration `{id}` (see [[sources.properties]] integration_id; `lease-sync integrations list` shows them)"
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(IntegrationError::Queue(e)) => {
            return Err(e).explain(if pause {
                "cannot pause the integration"
            } else {
                "cannot resume the integration"
            });
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&change)?);
        return Ok(ExitCode::SUCCESS);
    }
    match (pause, change.changed) {
        (true, true) => println!(
            "paused integration {}: its convergences are held until `lease-sync integrations resume {}` ({} held now)",
            change.integration_id, change.integration_id, change.held_jobs
        ),
        (true, false) => println!(
            "integration {} was already paused ({} convergences held)",
            change.integration_id, change.held_jobs
        ),
        (false, changed) => {
            let was = if changed {
                "resumed"
            } else {
                "was not paused; checked"
            };
            println!(
                "{was} integration {}: {} held convergence(s) released",
                change.integration_id, change.released
            );
            if change.paused {
                println!(
                    "it was paused again meanwhile: {} convergence(s) stay held",
                    change.held_jobs
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
