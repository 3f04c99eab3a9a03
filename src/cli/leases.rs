//! `lease-sync leases …`: what lease-sync recorded about one lease, and resetting it.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Subcommand;

use super::dead_letters::{Explain as _, confirm, open_queue, timestamp};
use super::{ConfigArg, load};
use crate::config::Role;
use crate::dead_letters::cli_actor;
use crate::leases::{Holder, LeaseError, Leases, ResetReport};
use crate::queue::now_ms;
use crate::resident::{Desired, LeaseState};

/// Arguments of `leases`.
#[derive(Debug, clap::Args)]
pub struct LeasesArgs {
    /// What to do.
    #[command(subcommand)]
    command: LeasesCommand,
}

/// The `leases` subcommands.
#[derive(Debug, Subcommand)]
enum LeasesCommand {
    /// Show which residents hold lease-sync's record of a lease, and what a reset would do.
    Show(LeaseArgs),
    /// Forget lease-sync's record of a lease and converge its residents again (from their
    /// other leases); the next event or reconciliation records the lease afresh. Audited.
    Reset(ResetArgs),
}

/// Which lease.
#[derive(Debug, clap::Args)]
struct LeaseArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The source whose record to look at (a `[[sources]]` name).
    #[arg(long, value_name = "S")]
    source: String,
    /// The lease id, as the source sends it.
    #[arg(long, value_name = "ID")]
    lease: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `leases reset`.
#[derive(Debug, clap::Args)]
struct ResetArgs {
    #[command(flatten)]
    lease: LeaseArgs,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
}

/// Runs `leases …`.
pub(super) async fn run(args: LeasesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LeasesCommand::Show(args) => show(args).await,
        LeasesCommand::Reset(args) => reset(args).await,
    }
}

async fn open(args: &LeaseArgs) -> anyhow::Result<Leases> {
    let settings = load(&args.config, Role::Operate)?;
    let queue = open_queue(&args.config).await?;
    Ok(Leases::new(&settings, queue))
}

async fn show(args: LeaseArgs) -> anyhow::Result<ExitCode> {
    let leases = open(&args).await?;
    let holders = match leases.holders(&args.source, &args.lease, now_ms()).await {
        Ok(holders) => holders,
        Err(e) => return failed(e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&holders)?);
    } else if holders.is_empty() {
        println!(
            "lease-sync holds no record of lease {} from source {}",
            args.lease, args.source
        );
    } else {
        print!("{}", describe_holders(&args.source, &args.lease, &holders));
    }
    Ok(ExitCode::SUCCESS)
}

async fn reset(args: ResetArgs) -> anyhow::Result<ExitCode> {
    let lease = &args.lease;
    let leases = open(lease).await?;
    if !args.yes {
        let holders = match leases.holders(&lease.source, &lease.lease, now_ms()).await {
            Ok(holders) => holders,
            Err(e) => return failed(e),
        };
        if holders.is_empty() {
            return failed(LeaseError::NotFound {
                source_name: lease.source.clone(),
                lease_id: lease.lease.clone(),
            });
        }
        eprint!(
            "{}",
            describe_holders(&lease.source, &lease.lease, &holders)
        );
        if !std::io::stdin().is_terminal() {
            eprintln!("refusing to reset lease {} without --yes", lease.lease);
            return Ok(ExitCode::FAILURE);
        }
        if !confirm(format!("reset lease {}? [y/N] ", lease.lease)).await? {
            eprintln!("nothing reset");
            return Ok(ExitCode::FAILURE);
        }
    }
    let report = match leases
        .reset(&lease.source, &lease.lease, &cli_actor())
        .await
    {
        Ok(report) => report,
        Err(e) => return failed(e),
    };
    if lease.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", describe_report(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `error` as one line and fails; Redis errors keep their explanation.
fn failed(error: LeaseError) -> anyhow::Result<ExitCode> {
    match error {
        LeaseError::Queue(e) => Err(e).explain("cannot read or write lease-sync's state"),
        other => {
            eprintln!("error: {other}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn desired(d: Desired) -> &'static str {
    match d {
        Desired::Present => "present",
        Desired::Absent => "absent",
        Desired::Untouched => "left alone",
    }
}

fn describe_holders(source: &str, lease_id: &str, holders: &[Holder]) -> String {
    let mut out = format!(
        "lease {lease_id} from source {source} is recorded for {} resident(s):\n",
        holders.len()
    );
    for h in holders {
        let r = &h.record;
        out.push_str(&format!(
            "  integration {} user {}: {} (event {}, occurred {}); OpenApp now {}, after a reset {}\n",
            h.integration_id,
            h.user_id,
            match r.state {
                LeaseState::Active => "signed",
                LeaseState::Ended => "ended",
            },
            r.event_id,
            timestamp(r.occurred_at),
            desired(h.desired_now),
            desired(h.desired_after_reset),
        ));
    }
    out
}

fn describe_report(report: &ResetReport) -> String {
    let mut out = format!(
        "reset lease {} of source {}: record forgotten for {} resident(s), {} convergence job(s) queued\n",
        report.lease_id,
        report.source,
        report.residents.len(),
        report.jobs
    );
    for h in &report.residents {
        out.push_str(&format!(
            "  integration {} user {}: OpenApp will show {}\n",
            h.integration_id,
            h.user_id,
            desired(h.desired_after_reset)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resident::LeaseRecord;

    #[test]
    fn holders_and_reports_say_what_changes() {
        let holder = Holder {
            integration_id: "int".into(),
            user_id: "u1".into(),
            record: LeaseRecord {
                state: LeaseState::Active,
                starts_at: None,
                ends_at: None,
                occurred_at: 253_370_764_800_000,
                rank: 0,
                event_id: "evt-9".into(),
                source: "acme".into(),
                property_id: "P-17".into(),
            },
            desired_now: Desired::Present,
            desired_after_reset: Desired::Absent,
        };
        let text = describe_holders("acme", "L-1", std::slice::from_ref(&holder));
        assert!(
            text.contains("integration int user u1: signed (event evt-9, occurred 9999-01-01T00:00:00Z); OpenApp now present, after a reset absent"),
            "{text}"
        );
        let report = ResetReport {
            source: "acme".into(),
            lease_id: "L-1".into(),
            residents: vec![holder],
            jobs: 1,
        };
        let text = describe_report(&report);
        assert!(
            text.starts_with("reset lease L-1 of source acme: record forgotten for 1 resident(s), 1 convergence job(s) queued\n"),
            "{text}"
        );
        assert!(text.contains("user u1: OpenApp will show absent"), "{text}");
    }
}
