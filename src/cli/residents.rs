//! `lease-sync residents show|history`: what lease-sync knows about one person in one
//! building, and what it did about them.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;

use super::ConfigArg;
use super::dead_letters::{Explain as _, open_queue, timestamp};
use crate::history::HistoryEntry;
use crate::queue::now_ms;
use crate::resident::{Desired, LeaseState, ResidentState};

/// Arguments of `residents`.
#[derive(Debug, clap::Args)]
pub struct ResidentsArgs {
    /// What to do.
    #[command(subcommand)]
    command: ResidentsCommand,
}

/// The `residents` subcommands.
#[derive(Debug, Subcommand)]
enum ResidentsCommand {
    /// Print a resident's leases, access windows, desired and last applied state.
    Show(ShowArgs),
    /// Print a resident's history, newest first: events folded, emails resolved, OpenApp
    /// calls with the decision they carried out, retries, dead letters, replays, pauses.
    History(HistoryArgs),
}

/// Arguments of `residents history`.
#[derive(Debug, clap::Args)]
struct HistoryArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// OpenApp integration id (the building).
    #[arg(long, value_name = "ID")]
    integration: String,
    /// OpenApp user id.
    #[arg(long, value_name = "ID")]
    user: String,
    /// Most entries to print (newest first).
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// Show emails in full (personal data; masked by default).
    #[arg(long)]
    show_emails: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `residents show`.
#[derive(Debug, clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// OpenApp integration id (the building).
    #[arg(long, value_name = "ID")]
    integration: String,
    /// OpenApp user id.
    #[arg(long, value_name = "ID")]
    user: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `residents …`.
pub(super) async fn run(args: ResidentsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ResidentsCommand::Show(args) => show(args).await,
        ResidentsCommand::History(args) => history(args).await,
    }
}

async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let queue = open_queue(&args.config).await?;
    let entries = queue
        .history(&args.integration, &args.user, usize::from(args.limit))
        .await
        .explain("cannot read the resident's history")?;
    let entries: Vec<HistoryEntry> = if args.show_emails {
        entries
    } else {
        entries.into_iter().map(HistoryEntry::masked).collect()
    };
    if args.json {
        let value = json!({
            "integration_id": args.integration,
            "user_id": args.user,
            "entries": entries,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!(
            "no history for user {} in integration {} (nothing recorded, or older than [audit] max_age_days)",
            args.user, args.integration
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "history of user {} in integration {}, newest first\n",
        args.user, args.integration
    );
    for entry in &entries {
        println!(
            "{}  {:<17} {}",
            timestamp(entry.at),
            entry.kind(),
            entry.describe()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let queue = open_queue(&args.config).await?;
    let Some(state) = queue
        .resident(&args.integration, &args.user)
        .await
        .explain("cannot read the resident's state")?
    else {
        bail!(
            "lease-sync has no state for user {} in integration {}",
            args.user,
            args.integration
        );
    };
    let lock_remaining_ms = queue
        .resident_lock(&args.integration, &args.user)
        .await
        .explain("cannot read the resident's lock")?
        .map(|lock| lock.remaining_ms);
    let now = now_ms();
    if args.json {
        let value = json!({
            "state": state,
            "desired": state.desired(now),
            "next_transition": state.next_transition(now),
            "converging": lock_remaining_ms.map(|ms| json!({"lock_remaining_ms": ms})),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", describe(&state, now, lock_remaining_ms));
    }
    Ok(ExitCode::SUCCESS)
}

/// The text `residents show` prints; `lock_remaining_ms` while a worker holds the resident's
/// lock.
fn describe(state: &ResidentState, now: i64, lock_remaining_ms: Option<u64>) -> String {
    let when = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), timestamp);
    let mut out = format!(
        "resident {} in integration {} (state version {})\n\nleases\n",
        state.user_id, state.integration_id, state.version
    );
    for (id, lease) in &state.leases {
        let state_name = match lease.state {
            LeaseState::Active => "signed",
            LeaseState::Ended => "ended",
        };
        out.push_str(&format!(
            "  {id}: {state_name} (event {} from {}, occurred {}), access {} → {}, {}\n",
            lease.event_id,
            lease.source,
            timestamp(lease.occurred_at),
            when(lease.starts_at),
            when(lease.ends_at),
            if lease.grants_access(now) {
                "grants access now"
            } else {
                "no access now"
            },
        ));
    }
    let desired = match state.desired(now) {
        Desired::Present => "present (a lease grants access)",
        Desired::Absent => "absent (no lease grants access)",
        Desired::Untouched => {
            "left alone (no lease grants access; lease-sync never added them and no lease ended)"
        }
    };
    out.push_str(&format!("\ndesired now        {desired}\n"));
    let applied = state.applied.as_ref().map_or_else(
        || "never".to_owned(),
        |a| {
            format!(
                "{} at {} (state version {})",
                if a.present { "present" } else { "absent" },
                timestamp(a.at),
                a.version
            )
        },
    );
    out.push_str(&format!("last applied       {applied}\n"));
    out.push_str(&format!(
        "managed            {}\n",
        if state.managed {
            "yes (lease-sync added them)"
        } else {
            "no"
        }
    ));
    out.push_str(&format!(
        "next convergence   {}\n",
        when(state.next_check.filter(|t| *t > now))
    ));
    out.push_str(&format!(
        "converging now     {}\n",
        lock_remaining_ms.map_or_else(
            || "no".to_owned(),
            |ms| format!(
                "yes: a worker holds the resident's lock, which lapses in {:.1} s unless renewed (a dead worker's keeps others off until then)",
                ms as f64 / 1000.0
            )
        )
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resident::LeaseRecord;

    #[test]
    fn describes_leases_desired_and_applied_state() {
        let lease = LeaseRecord {
            state: LeaseState::Ended,
            starts_at: None,
            ends_at: Some(2_000_000_000_000),
            occurred_at: 1_795_342_500_000,
            rank: 1,
            event_id: "evt-9".into(),
            source: "acme".into(),
            property_id: "P-17".into(),
        };
        let state = ResidentState {
            integration_id: "int".into(),
            user_id: "u1".into(),
            version: 3,
            leases: [("L-1".to_owned(), lease)].into(),
            applied: None,
            managed: true,
            next_check: Some(2_000_000_000_000),
        };
        let text = describe(&state, 1_795_342_600_000, None);
        assert!(text.contains("L-1: ended (event evt-9 from acme"), "{text}");
        assert!(text.contains("grants access now"), "{text}");
        assert!(text.contains("desired now        present"), "{text}");
        assert!(text.contains("last applied       never"), "{text}");
        assert!(
            text.contains("next convergence   2033-05-18T03:33:20Z"),
            "{text}"
        );
        assert!(text.contains("converging now     no"), "{text}");
        let text = describe(&state, 1_795_342_600_000, Some(4_240));
        assert!(
            text.contains(
                "converging now     yes: a worker holds the resident's lock, which lapses in 4.2 s"
            ),
            "{text}"
        );
    }
}
