//! `lease-sync conflicts list`: people a source names who have no OpenApp user yet, and why.
//! Emails and names are personal data: masked unless `--show-emails`.

use std::process::ExitCode;

use clap::Subcommand;
use comfy_table::{ContentArrangement, Table, presets};

use super::ConfigArg;
use super::dead_letters::{Explain as _, open_queue, timestamp};
use crate::queue::conflicts::Conflict;

/// Arguments of `conflicts`.
#[derive(Debug, clap::Args)]
pub struct ConflictsArgs {
    /// What to do.
    #[command(subcommand)]
    command: ConflictsCommand,
}

/// The `conflicts` subcommands.
#[derive(Debug, Subcommand)]
enum ConflictsCommand {
    /// List unresolved people, oldest first: who, why, for which lease and building.
    List(ListArgs),
}

/// Arguments of `conflicts list`.
#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only people this source names (a `[[sources]]` name).
    #[arg(long, value_name = "S")]
    source: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show emails and names in full (personal data; masked by default).
    #[arg(long)]
    show_emails: bool,
}

/// Runs `conflicts …`.
pub(super) async fn run(args: ConflictsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConflictsCommand::List(args) => list(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let queue = open_queue(&args.config).await?;
    let mut conflicts = queue
        .conflicts(args.source.as_deref())
        .await
        .explain("cannot read the conflicts")?;
    if !args.show_emails {
        conflicts = conflicts.into_iter().map(Conflict::masked).collect();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&conflicts)?);
    } else if conflicts.is_empty() {
        println!("no conflicts: everyone the sources name has an OpenApp user");
    } else {
        println!("{}", table(&conflicts));
        println!(
            "{} conflict(s); each person has no access until resolved (give them an email at the source, or create or merge the OpenApp user); the next change or pull retries",
            conflicts.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn table(conflicts: &[Conflict]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "SOURCE",
            "PERSON",
            "REASON",
            "EMAIL",
            "NAME",
            "LEASE",
            "PROPERTY",
            "INTEGRATION",
            "FIRST SEEN",
            "LAST SEEN",
            "TIMES",
        ]);
    for c in conflicts {
        table.add_row(vec![
            c.source.clone(),
            c.person.clone(),
            c.reason.to_string(),
            c.email.clone().unwrap_or_else(|| "-".into()),
            c.name.clone().unwrap_or_else(|| "-".into()),
            c.lease_id.clone(),
            c.property_id.clone(),
            c.integration_id.clone(),
            timestamp(c.first_seen),
            timestamp(c.last_seen),
            c.times.to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ConflictReason;

    #[test]
    fn personal_data_is_masked_by_default() {
        let mut conflict = Conflict {
            source: "buildium".into(),
            person: "tenant:17".into(),
            reason: ConflictReason::NoOpenappUser,
            email: Some("ada.lovelace@example.com".into()),
            name: Some("Ada  Lovelace".into()),
            lease_id: "501".into(),
            property_id: "23".into(),
            integration_id: "int".into(),
            first_seen: 1_795_342_500_000,
            last_seen: 1_795_342_600_000,
            times: 2,
        };
        conflict = conflict.masked();
        assert_eq!(conflict.email.as_deref(), Some("a***@example.com"));
        assert_eq!(conflict.name.as_deref(), Some("A. L."));
        let text = table(std::slice::from_ref(&conflict)).to_string();
        assert!(
            text.contains("no_openapp_user") && text.contains("tenant:17"),
            "{text}"
        );
        assert!(!text.contains("lovelace"), "{text}");
    }
}
