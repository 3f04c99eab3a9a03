//! `lease-sync queue stats`: queue depths and lifetime counters, read straight from Redis;
//! `lease-sync queue migrate`: the upgrade from an earlier release's Redis layout, by hand.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::ConfigArg;
use super::dead_letters::{Explain as _, open_queue};
use crate::queue::QueueCounts;

/// Arguments of `queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// What to look at.
    #[command(subcommand)]
    command: QueueCommand,
}

/// The `queue` subcommands.
#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Print queue depths (ready, scheduled, in flight, dead letters) and lifetime counters.
    Stats(StatsArgs),
    /// Move what an earlier release left in Redis into this release's layout. Every process
    /// does this at startup; run it by hand for what an old process wrote afterwards. With
    /// `--to`, also switch the namespace between the layouts this release runs on.
    Migrate(MigrateArgs),
}

/// Arguments of `queue migrate`.
#[derive(Debug, clap::Args)]
struct MigrateArgs {
    #[command(flatten)]
    common: StatsArgs,
    /// Switch the namespace to this layout: `4` once every process runs this release (ledgers
    /// stop keeping a copy of each queued job, residents are locked in their own hash), `3`
    /// before rolling back to a release of layout 3 (residents are locked by keys of their own
    /// again), `2` before rolling back to one of layout 2 (every queued job's ledger also gets
    /// its copy back).
    #[arg(long, value_name = "LAYOUT", value_parser = ["2", "3", "4"])]
    to: Option<String>,
}

/// Arguments of `queue stats` (and the common ones of `queue migrate`).
#[derive(Debug, clap::Args)]
struct StatsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `queue …`.
pub(super) async fn run(args: QueueArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        QueueCommand::Stats(args) => stats(args).await,
        QueueCommand::Migrate(args) => migrate(args).await,
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let MigrateArgs { common: args, to } = args;
    let queue = open_queue(&args.config).await?;
    // The first run marks the namespace; a later one moves what old processes wrote since.
    let report = match queue
        .ensure_layout(Duration::from_secs(60))
        .await
        .explain("cannot upgrade the Redis layout")?
    {
        Some(report) => report,
        None => queue
            .migrate_legacy()
            .await
            .explain("cannot upgrade the Redis layout")?,
    };
    let switch = match to {
        Some(to) => Some(
            queue
                .switch_layout(&to)
                .await
                .explain("cannot switch the Redis layout")?,
        ),
        None => None,
    };
    let layout = queue
        .layout_version()
        .await
        .explain("cannot read the Redis layout")?
        .unwrap_or_default();
    if args.json {
        let mut out = serde_json::to_value(report)?;
        out["layout"] = layout.into();
        if let Some(switch) = &switch {
            out["switched"] = serde_json::to_value(switch)?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(switch) = &switch {
            println!(
                "switched layout {} → {}; {} ledger(s) given a copy of their queued job",
                switch.from, switch.to, switch.copied
            );
            if switch.to == crate::queue::migrate::LAYOUT_VERSION && switch.from != switch.to {
                println!(
                    "the upgrade is finished: a worker of an earlier release, if any still runs, no longer shares the residents' locks with this one (and one of layout 2 loses the retries and deferrals of jobs queued from now on; docs/DEPLOY.md)"
                );
            }
        }
        println!(
            "layout {}: {} job(s) ready, {} scheduled, {} dropped; {} key(s) renamed, {} apalis-redis key(s) deleted, {} key(s) left under their old name (the new one exists)",
            layout,
            report.jobs_ready,
            report.jobs_scheduled,
            report.jobs_dropped,
            report.keys_renamed,
            report.keys_deleted,
            report.keys_left
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let queue = open_queue(&args.config).await?;
    let counts = queue
        .counts()
        .await
        .explain("cannot read the queue counts")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&counts)?);
    } else {
        print!("{}", describe(&counts));
    }
    Ok(ExitCode::SUCCESS)
}

/// The text `queue stats` prints.
fn describe(c: &QueueCounts) -> String {
    let oldest = c.oldest_ready_age_secs.map_or_else(|| "-".to_owned(), age);
    let depths = [
        ("ready", c.ready.to_string()),
        ("scheduled", c.scheduled.to_string()),
        ("in flight", c.in_flight.to_string()),
        ("held (paused)", c.held.to_string()),
        ("paused integrations", c.paused_integrations.to_string()),
        ("dead letters", c.dead.to_string()),
        ("oldest ready age", oldest),
        (
            "Redis layout",
            match c.redis_layout {
                0 => "-".to_owned(),
                2 | 3 => format!(
                    "{} (rolling upgrade: `queue migrate --to 4` finishes it)",
                    c.redis_layout
                ),
                other => other.to_string(),
            },
        ),
    ];
    let counters = [
        ("delivered", c.done),
        ("retries", c.retries),
        ("dead-lettered", c.dead_lettered),
        ("OpenApp 401/403", c.auth_failures),
        ("dead letters trimmed", c.dead_letters_trimmed),
        ("stale tasks", c.stale_tasks),
        ("stale events ignored", c.stale_events),
        ("deferred (resident busy)", c.deferred),
    ];
    // One column for every value: the longest label, then at least two spaces.
    let width = depths
        .iter()
        .map(|(name, _)| name.len())
        .chain(counters.iter().map(|(name, _)| name.len()))
        .max()
        .unwrap_or(0)
        + 2;
    let mut out = String::from("queue\n");
    for (name, value) in depths {
        out.push_str(&format!("  {name:<width$}{value}\n"));
    }
    out.push_str("\nlifetime counters\n");
    for (name, value) in counters {
        out.push_str(&format!("  {name:<width$}{value}\n"));
    }
    out
}

/// `2m 5s` for a number of seconds (rounded to the second; `<1s` below one second).
fn age(secs: f64) -> String {
    if secs < 1.0 {
        return "<1s".to_owned();
    }
    humantime::format_duration(Duration::from_secs(secs.round() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_humanised() {
        assert_eq!(age(0.2), "<1s");
        assert_eq!(age(125.4), "2m 5s");
    }

    #[test]
    fn text_labels_every_counter() {
        let text = describe(&QueueCounts {
            dead: 2,
            auth_failures: 3,
            held: 4,
            paused_integrations: 1,
            redis_layout: 2,
            ..QueueCounts::default()
        });
        assert!(
            text.contains(
                "Redis layout              2 (rolling upgrade: `queue migrate --to 4` finishes it)"
            ),
            "{text}"
        );
        assert!(text.contains("held (paused)             4"), "{text}");
        assert!(text.contains("paused integrations       1"), "{text}");
        assert!(text.contains("oldest ready age          -"), "{text}");
        assert!(text.contains("OpenApp 401/403           3"), "{text}");
        assert!(text.contains("dead letters              2"), "{text}");
        assert!(text.contains("deferred (resident busy)  0"), "{text}");
    }

    #[test]
    fn every_value_is_apart_from_its_label_and_in_one_column() {
        let text = describe(&QueueCounts {
            ready: 7,
            oldest_ready_age_secs: Some(125.0),
            deferred: 12,
            stale_events: 3,
            ..QueueCounts::default()
        });
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
        assert_eq!(rows.len(), 16, "{text}");
        let mut columns = std::collections::BTreeSet::new();
        for row in rows {
            // The value is the text after the last run of two or more spaces.
            let split = row
                .trim_start()
                .rfind("  ")
                .unwrap_or_else(|| panic!("no two spaces between label and value in {row:?}"));
            let label = row.trim_start()[..split].trim_end();
            let value = row.trim_start()[split..].trim_start();
            assert!(!label.is_empty() && !value.is_empty(), "{row:?}");
            assert!(
                !value.contains(' ') || value == "2m 5s" || value.starts_with("2 (rolling"),
                "the label runs into the value in {row:?}"
            );
            columns.insert(row.len() - value.len());
        }
        assert_eq!(columns.len(), 1, "values not in one column:\n{text}");
    }
}
