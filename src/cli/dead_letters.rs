//! `lease-sync dead-letters …`: list, inspect, replay and purge dead letters from a terminal.
//!
//! Talks to Redis directly (the same store the admin API uses), with the configuration of
//! the deployment loaded for [`Role::Operate`]: only the `[redis]` section has to be usable.

use std::collections::HashSet;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Subcommand};
use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use time::OffsetDateTime;
use time::macros::format_description;

use super::{ConfigArg, load};
use crate::config::Role;
use crate::dead_letters::{
    AuditRecord, DeadLetter, DeadLetterFilter, DeadLetterSummary, DeadLetters, ReplayOutcome,
    cli_actor,
};
use crate::event::EventType;
use crate::queue::ledger::AttemptRecord;
use crate::queue::{Job, JobQueue, QueueError, connect, now_ms};
use crate::retry::DeadReason;
use crate::sources::buildium::webhook::Refresh;

/// Longest `LAST ERROR` shown in a table, in characters.
const LAST_ERROR_WIDTH: usize = 60;

/// Arguments of `dead-letters`.
#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    /// What to do with the dead letters.
    #[command(subcommand)]
    command: DeadLettersCommand,
}

/// The `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// List dead letters, newest first.
    List(ListArgs),
    /// Show everything about one dead letter: the job, the event and every attempt.
    Show(ShowArgs),
    /// Queue dead letters again with a fresh attempt budget.
    Replay(ReplayArgs),
    /// Delete dead letters for good.
    Purge(PurgeArgs),
}

/// Arguments of `dead-letters list`.
#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    filter: ListFilterArgs,
    /// Most entries shown.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
    /// Print a JSON array of summaries instead of a table.
    #[arg(long)]
    json: bool,
}

/// Filters of `list`.
#[derive(Debug, clap::Args)]
struct ListFilterArgs {
    /// Only entries from this source (a `[[sources]]` name).
    #[arg(long, value_name = "S")]
    source: Option<String>,
    /// Only entries of this event type.
    #[arg(long = "type", value_name = "lease.signed|lease.ended", value_parser = parse_type)]
    event_type: Option<EventType>,
    /// Only entries given up for this reason.
    #[arg(long, value_name = "permanent|exhausted|crash_loop", value_parser = parse_reason)]
    reason: Option<DeadReason>,
    /// Only entries that died within this long before now (`90m`, `24h`, `7d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    since: Option<Duration>,
}

impl ListFilterArgs {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            source: self.source.clone(),
            event_type: self.event_type,
            reason: self.reason,
            since: self.since,
            older_than: None,
        }
    }
}

/// Filters of the bulk operations; each needs `--all`.
#[derive(Debug, clap::Args)]
struct BulkFilterArgs {
    /// With --all: only entries from this source (a `[[sources]]` name).
    #[arg(long, value_name = "S", conflicts_with = "ids")]
    source: Option<String>,
    /// With --all: only entries of this event type.
    #[arg(long = "type", value_name = "lease.signed|lease.ended", value_parser = parse_type, conflicts_with = "ids")]
    event_type: Option<EventType>,
    /// With --all: only entries given up for this reason.
    #[arg(long, value_name = "permanent|exhausted|crash_loop", value_parser = parse_reason, conflicts_with = "ids")]
    reason: Option<DeadReason>,
    /// With --all: only entries that died within this long before now (`90m`, `24h`, `7d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "ids")]
    since: Option<Duration>,
    /// With --all: only entries that died at least this long ago (`30d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "ids")]
    older_than: Option<Duration>,
}

impl BulkFilterArgs {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            source: self.source.clone(),
            event_type: self.event_type,
            reason: self.reason,
            since: self.since,
            older_than: self.older_than,
        }
    }
}

/// Arguments of `dead-letters show`.
#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// The dead letter's id (the delivery id `list` prints).
    #[arg(value_name = "ID")]
    id: String,
    #[command(flatten)]
    config: ConfigArg,
    /// Print the dead letter as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Show the emails and names of residents known by email in full (personal data;
    /// masked by default).
    #[arg(long)]
    show_emails: bool,
}

/// Arguments of `dead-letters replay`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["ids", "all"])))]
struct ReplayArgs {
    /// Ids of the dead letters to replay.
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// Replay every dead letter that matches the filters.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    filter: BulkFilterArgs,
    /// Print what would be replayed and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay at most N entries per second (default: no limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
}

/// Arguments of `dead-letters purge`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["ids", "all"])))]
struct PurgeArgs {
    /// Ids of the dead letters to delete.
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// Delete every dead letter that matches the filters (asks for confirmation unless --yes).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    filter: BulkFilterArgs,
    /// Do not ask for confirmation (required for --all when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
}

fn parse_type(s: &str) -> Result<EventType, crate::event::UnknownEventType> {
    s.parse()
}

fn parse_reason(s: &str) -> Result<DeadReason, crate::retry::UnknownDeadReason> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90m, 24h, 30d)"))
}

/// Loads the configuration for operator commands and checks that Redis answers, so that an
/// unreachable Redis is one clear line instead of the first command's error.
pub(super) async fn open_queue(config: &ConfigArg) -> anyhow::Result<JobQueue> {
    let settings = load(config, Role::Operate)?;
    let url = redis_location(settings.redis.url.expose());
    let conn = connect(&settings.redis).explain(format!("cannot use Redis at {url}"))?;
    let queue = JobQueue::new(conn, &settings.redis.namespace)
        .with_history_limits((&settings.audit).into());
    let limit = settings
        .redis
        .connect_timeout
        .saturating_add(settings.redis.response_timeout);
    queue
        .ping(limit)
        .await
        .explain(format!("cannot reach Redis at {url}"))?;
    Ok(queue)
}

/// Turns a queue error into one line of text. [`QueueError`]'s message already includes its cause,
/// so chaining it (`.context(…)`) would print the cause two or three times.
pub(super) trait Explain<T> {
    /// `what: <the error>`.
    fn explain(self, what: impl std::fmt::Display) -> anyhow::Result<T>;
}

impl<T> Explain<T> for Result<T, QueueError> {
    fn explain(self, what: impl std::fmt::Display) -> anyhow::Result<T> {
        // Some Redis errors span lines (parse errors quote the reply); keep it to one.
        self.map_err(|e| {
            let message = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            anyhow::anyhow!("{what}: {message}")
        })
    }
}

/// The Redis URL without user name or password, for messages.
fn redis_location(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            // Only fails for URLs that cannot carry credentials, which then carry none.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            parsed.to_string()
        }
        Err(_) => "[unparseable URL]".to_owned(),
    }
}

/// Runs `dead-letters …`.
pub(super) async fn run(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DeadLettersCommand::List(args) => list(args).await,
        DeadLettersCommand::Show(args) => show(args).await,
        DeadLettersCommand::Replay(args) => replay(args).await,
        DeadLettersCommand::Purge(args) => purge(args).await,
    }
}

async fn open(config: &ConfigArg) -> anyhow::Result<DeadLetters> {
    Ok(DeadLetters::new(&open_queue(config).await?))
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let dls = open(&args.config).await?;
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let page = dls
        .list(&args.filter.filter(), 0, limit)
        .await
        .explain("cannot list dead letters")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&page.items)?);
        return Ok(ExitCode::SUCCESS);
    }
    if page.items.is_empty() {
        println!("no dead letters match");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", summary_table(&page.items));
    if page.next_offset.is_some() {
        println!("{} shown; more match (use --limit)", page.items.len());
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let dls = open(&args.config).await?;
    let Some(entry) = dls
        .get(&args.id)
        .await
        .explain(format!("cannot read dead letter {}", args.id))?
    else {
        eprintln!("no dead letter with id {}", args.id);
        return Ok(ExitCode::FAILURE);
    };
    let entry = if args.show_emails {
        entry
    } else {
        entry.masked()
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entry)?);
    } else {
        print!("{}", describe(&entry));
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let dls = open(&args.config).await?;
    let actor = cli_actor();
    let filter = args.all.then(|| args.filter.filter());

    if args.dry_run {
        return dry_run(&dls, filter.as_ref(), &args.ids).await;
    }

    let ids = match &filter {
        Some(filter) => dls
            .matching_ids(filter)
            .await
            .explain("cannot list matching dead letters")?,
        None => unique(&args.ids),
    };
    if ids.is_empty() {
        println!("no dead letters match");
        return Ok(ExitCode::SUCCESS);
    }

    let bar = progress(ids.len(), "replaying");
    let mut ticker = args.rate.map(|n| {
        let mut ticker = tokio::time::interval(Duration::from_secs(1) / n);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let (mut replayed, mut skipped, mut not_found) = (Vec::new(), 0usize, 0usize);
    let mut failure = None;
    for id in &ids {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        match dls.replay(id, &actor).await {
            Ok(ReplayOutcome::Replayed) => replayed.push(id.clone()),
            Ok(ReplayOutcome::NotDead) => {
                skipped += 1;
                if filter.is_none() {
                    bar.suspend(|| eprintln!("{id} is not a dead letter any more; skipped"));
                }
            }
            Ok(ReplayOutcome::NotFound) => {
                not_found += 1;
                if filter.is_none() {
                    bar.suspend(|| eprintln!("no dead letter with id {id}"));
                }
            }
            Err(e) => {
                failure = Some(anyhow::anyhow!("cannot replay {id}: {e}"));
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    println!(
        "replayed {}; skipped {skipped} (not a dead letter any more); not found {not_found}",
        replayed.len()
    );
    // What was replayed is recorded even when a later replay failed.
    let audited = write_audit(&dls, actor, "replay", replayed, filter).await;
    if let Some(e) = failure {
        return Err(e);
    }
    audited?;
    let named_missing = !args.all && skipped + not_found > 0;
    Ok(if named_missing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `replay --dry-run`: the entries that would be replayed, and how many.
async fn dry_run(
    dls: &DeadLetters,
    filter: Option<&DeadLetterFilter>,
    ids: &[String],
) -> anyhow::Result<ExitCode> {
    let mut missing = false;
    let entries = match filter {
        Some(filter) => {
            dls.list(filter, 0, usize::MAX)
                .await
                .explain("cannot list matching dead letters")?
                .items
        }
        None => {
            let mut entries = Vec::new();
            for id in unique(ids) {
                match dls
                    .get(&id)
                    .await
                    .explain(format!("cannot read dead letter {id}"))?
                {
                    Some(entry) => entries.push(entry.summary),
                    None => {
                        eprintln!("no dead letter with id {id}");
                        missing = true;
                    }
                }
            }
            entries
        }
    };
    if entries.is_empty() {
        println!("no dead letters match");
    } else {
        println!("{}", summary_table(&entries));
    }
    println!("would replay {}", entries.len());
    Ok(if missing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn purge(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let dls = open(&args.config).await?;
    let actor = cli_actor();
    let filter = args.all.then(|| args.filter.filter());
    let bulk = filter.is_some();

    let ids = match &filter {
        Some(filter) => dls
            .matching_ids(filter)
            .await
            .explain("cannot list matching dead letters")?,
        None => unique(&args.ids),
    };
    if ids.is_empty() {
        println!("no dead letters match");
        return Ok(ExitCode::SUCCESS);
    }
    if bulk && !args.yes {
        let n = ids.len();
        if !std::io::stdin().is_terminal() {
            eprintln!("refusing to purge {n} dead letters without --yes");
            return Ok(ExitCode::FAILURE);
        }
        if !confirm(format!("purge {n} dead letters? [y/N] ")).await? {
            eprintln!("nothing purged");
            return Ok(ExitCode::FAILURE);
        }
    }

    let bar = progress(ids.len(), "purging");
    let (mut purged, mut skipped) = (Vec::new(), 0usize);
    let mut failure = None;
    for id in &ids {
        match dls.purge(id, &actor).await {
            Ok(true) => purged.push(id.clone()),
            Ok(false) => {
                skipped += 1;
                if !bulk {
                    bar.suspend(|| eprintln!("no dead letter with id {id}"));
                }
            }
            Err(e) => {
                failure = Some(anyhow::anyhow!("cannot purge {id}: {e}"));
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    if bulk && skipped > 0 {
        println!(
            "purged {}; skipped {skipped} (not a dead letter any more)",
            purged.len()
        );
    } else {
        println!("purged {}", purged.len());
    }
    let audited = write_audit(&dls, actor, "purge", purged, filter).await;
    if let Some(e) = failure {
        return Err(e);
    }
    audited?;
    Ok(if !bulk && skipped > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes one audit record for `ids`, unless nothing was done.
async fn write_audit(
    dls: &DeadLetters,
    actor: String,
    action: &str,
    ids: Vec<String>,
    filter: Option<DeadLetterFilter>,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let record = AuditRecord {
        at: now_ms(),
        actor,
        action: action.to_owned(),
        ids,
        filter,
        lease: None,
    };
    dls.audit(&record)
        .await
        .explain(format!("cannot write the audit record of this {action}"))
}

/// Asks `question` on stderr and reads the answer from stdin; true on `y` or `yes`.
pub(super) async fn confirm(question: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut stderr = std::io::stderr();
        write!(stderr, "{question}")?;
        stderr.flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        let answer = answer.trim().to_ascii_lowercase();
        Ok::<_, std::io::Error>(answer == "y" || answer == "yes")
    })
    .await
    .context("cannot ask for confirmation")?
    .context("cannot read the answer")
}

/// A progress bar on stderr for bulk work (more than one id); indicatif hides it by itself
/// when stderr is not a terminal.
fn progress(len: usize, what: &str) -> ProgressBar {
    if len <= 1 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} ({eta} left)")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// `ids` without repeats, in their order.
fn unique(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// The table `list` and `replay --dry-run` print.
fn summary_table(items: &[DeadLetterSummary]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "ID",
            "DEAD AT",
            "REASON",
            "SOURCE",
            "TYPE",
            "LEASE",
            "USER",
            "ATTEMPTS",
            "LAST ERROR",
        ]);
    for item in items {
        table.add_row(vec![
            item.id.clone(),
            timestamp(item.dead_at),
            item.reason.to_string(),
            item.source.clone(),
            item.event_type
                .map_or_else(|| item.kind.clone(), |t| t.to_string()),
            item.lease_id.clone(),
            item.user_id.clone(),
            item.attempts.to_string(),
            item.last_error
                .as_deref()
                .map_or_else(|| "-".to_owned(), |e| truncate(e, LAST_ERROR_WIDTH)),
        ]);
    }
    table
}

/// `show`'s text: the summary, the job, the event and the attempt log.
fn describe(entry: &DeadLetter) -> String {
    use std::fmt::Write as _;
    let s = &entry.summary;
    let job = &entry.job;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<13}{value}");
    };
    field("id", &s.id);
    field("reason", s.reason.as_str());
    field("dead at", &timestamp(s.dead_at));
    field("first seen", &timestamp(s.first_seen));
    field("attempts", &s.attempts.to_string());
    field("replays", &s.replays.to_string());
    field("last error", s.last_error.as_deref().unwrap_or("-"));
    field("source", &s.source);
    field("event id", &s.event_id);
    field("kind", &s.kind);
    match job {
        Job::Converge(job) => {
            field("event type", job.event_type.as_str());
            field("lease", &s.lease_id);
            field("property", &job.property_id);
            field("user", &s.user_id);
            out.push_str("\njob\n");
            let mut field = |name: &str, value: &str| {
                let _ = writeln!(out, "  {name:<13}{value}");
            };
            field("org", &job.org_id);
            field("integration", &job.integration_id);
            field("role", &job.role);
            field("action", job.action());
        }
        Job::Refresh(job) => {
            let what = match job.refresh {
                Refresh::Lease { lease_id } => format!("lease {lease_id}"),
                Refresh::Tenant { tenant_id, .. } => format!("tenant {tenant_id} and their leases"),
            };
            field("refresh", &what);
        }
        Job::Resolve(job) => {
            field("event type", job.event.event_type.as_str());
            field("lease", &s.lease_id);
            field("property", &job.event.lease.property_id);
            field(
                "resolve",
                &format!(
                    "{} resident(s) known by email",
                    job.event.residents_by_email.len()
                ),
            );
        }
    }

    out.push_str("\nevent\n");
    let event = serde_json::to_string_pretty(&entry.event).unwrap_or_else(|_| "null".into());
    for line in event.lines() {
        let _ = writeln!(out, "  {line}");
    }

    out.push_str("\nattempt log\n");
    if entry.attempt_log.is_empty() {
        out.push_str("  (no attempts recorded)\n");
    }
    for record in &entry.attempt_log {
        out.push_str(&describe_attempt(record));
    }
    out
}

/// One entry of the attempt log, indented.
fn describe_attempt(r: &AttemptRecord) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if r.outcome == "replayed" {
        let at = r.at.map_or_else(|| "?".to_owned(), timestamp);
        let by = r.by.as_deref().unwrap_or("?");
        let _ = writeln!(out, "  replayed at {at} by {by}");
        return out;
    }
    let number = r.attempt.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let _ = writeln!(out, "  attempt {number}: {}", r.outcome);
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "    {name:<13}{value}");
    };
    if let Some(at) = r.started_at {
        field("started", timestamp(at));
    }
    if let Some(at) = r.finished_at {
        let took = r
            .started_at
            .map(|start| format!(" ({} ms)", (at - start).max(0)))
            .unwrap_or_default();
        field("finished", format!("{}{took}", timestamp(at)));
    }
    if let Some(status) = r.status {
        field("status", status.to_string());
    }
    if let Some(error) = &r.error {
        field("error", error.clone());
    }
    if let Some(code) = &r.error_code {
        field("error code", code.clone());
    }
    if let Some(message) = &r.message {
        field("message", message.clone());
    }
    if let Some(id) = &r.request_id {
        field("request id", id.clone());
    }
    if let Some(retry_after) = &r.retry_after {
        field("retry-after", retry_after.clone());
    }
    match (r.delay_ms, r.backoff_cap_ms) {
        (Some(delay), Some(cap)) => field(
            "delay chosen",
            format!("{} (backoff cap {})", millis(delay), millis(cap)),
        ),
        (Some(delay), None) => field("delay chosen", millis(delay)),
        (None, Some(cap)) => field("backoff cap", millis(cap)),
        (None, None) => {}
    }
    if let Some(task) = &r.task {
        field("task", task.clone());
    }
    out
}

/// `2026-11-22T10:15:00Z` for ms since the epoch (UTC, to the second).
pub(super) fn timestamp(ms: i64) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `1s 500ms` for a number of milliseconds.
fn millis(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// `text` cut to at most `width` characters, with `…` when cut.
fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339_to_the_second() {
        assert_eq!(timestamp(1_795_342_500_999), "2026-11-22T10:15:00Z");
    }

    #[test]
    fn long_errors_are_cut_on_character_boundaries() {
        assert_eq!(truncate("short", 60), "short");
        let cut = truncate(&"é".repeat(100), 60);
        assert_eq!(cut.chars().count(), 60);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn redis_locations_carry_no_credentials() {
        assert_eq!(
            redis_location("redis://user:hunter2@10.0.0.5:6380/2"),
            "redis://10.0.0.5:6380/2"
        );
        assert_eq!(redis_location("not a url"), "[unparseable URL]");
    }

    #[test]
    fn repeated_ids_are_handled_once() {
        let ids = ["a", "b", "a"].map(String::from);
        assert_eq!(unique(&ids), ["a", "b"]);
    }
}
