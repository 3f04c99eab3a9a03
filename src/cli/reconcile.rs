//! `lease-sync reconcile`: compare a file of the active leases of a source with OpenApp and
//! lease-sync's state, print the plan, and with `--apply` enqueue the changes.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::dead_letters::open_queue;
use super::{ConfigArg, load};
use crate::config::{Role, SourceKind, redacted_location};
use crate::event::EventType;
use crate::openapp::OpenAppClient;
use crate::reconcile::{ApplyReport, BuildingPlan, Change, Plan, Reconciler, input, pull};
use crate::refresh::Refresher;

/// Arguments of `reconcile`.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The source (a `[[sources]]` name) whose active leases the file lists.
    #[arg(long, value_name = "S")]
    source: String,
    /// The active leases right now: CSV (header lease_id,property_id,openapp_user_id,starts_at,ends_at;
    /// the last two optional) or a JSON array of objects with those keys; a path or an http(s) URL.
    /// Omit it for a `kind = "buildium"` source: its Active and Future leases are read from
    /// Buildium's API.
    #[arg(long, value_name = "FILE")]
    from: Option<String>,
    /// Enqueue the changes (without it: a dry run that changes nothing).
    #[arg(long)]
    apply: bool,
    /// Also remove building users with the role whom lease-sync never added and knows nothing of.
    #[arg(long)]
    prune_unmanaged: bool,
    /// Print the plan (and what was enqueued) as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `reconcile`: exit 0 when planned (and applied), 1 on any error, with nothing applied
/// when the file, OpenApp or Redis fails before the first event.
pub(super) async fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let settings = load(&args.config, Role::Operate)?;
    let source = settings
        .source(&args.source)
        .with_context(|| format!("no [[sources]] entry is named `{}`", args.source))?
        .clone();
    let client =
        OpenAppClient::new(&settings.openapp).context("cannot set up the OpenApp client")?;
    let queue = open_queue(&args.config).await?;
    let reconciler = Reconciler::new(&settings, queue.clone(), client.clone());
    let (plan, from) = match (&args.from, source.kind) {
        (Some(location), _) => {
            let bytes = input::load(location).await?;
            let rows = input::parse(location, &bytes, &source)
                .context("the file was refused; nothing was changed")?;
            let plan = reconciler
                .plan(
                    &source,
                    &rows,
                    OffsetDateTime::now_utc(),
                    args.prune_unmanaged,
                )
                .await
                .context("cannot plan the reconciliation; nothing was changed")?;
            (plan, redacted_location(location))
        }
        (None, SourceKind::Buildium) => {
            let refresher = Refresher::new(&settings, queue, client)
                .context("cannot set up the Buildium client")?
                .filter(|r| r.knows(&source.name))
                .with_context(|| {
                    format!(
                        "source `{}` has no usable [sources.buildium] section",
                        source.name
                    )
                })?;
            let bar = pull_progress();
            let pulled = pull::plan_from_buildium(
                &refresher,
                &reconciler,
                &source,
                args.prune_unmanaged,
                |p| {
                    bar.set_length(p.total.unwrap_or(0));
                    bar.set_position(p.read);
                },
            )
            .await;
            bar.finish_and_clear();
            let (plan, pulled) =
                pulled.context("cannot plan the reconciliation; nothing was changed")?;
            eprintln!(
                "read {} lease(s) from Buildium: {} row(s), {} conflict(s), {} of unmapped buildings, {} invalid, {} re-read to confirm a removal",
                pulled.leases,
                pulled.rows.len(),
                pulled.conflicts,
                pulled.unmapped,
                pulled.invalid,
                pulled.confirmed
            );
            (plan, format!("buildium:{}", source.name))
        }
        (None, SourceKind::LeaseSync) => {
            anyhow::bail!(
                "--from is required for source `{}` (only a kind = \"buildium\" source can be read from its API)",
                source.name
            );
        }
    };

    if !args.json {
        print!("{}", describe(&plan, &from));
    }
    let report = match (args.apply, plan.changes()) {
        (false, _) => None,
        (true, 0) => Some(ApplyReport::default()),
        (true, _) => Some(apply(&reconciler, &plan).await?),
    };
    if args.json {
        let out = JsonOutput {
            from: &from,
            dry_run: !args.apply,
            plan: &plan,
            enqueued: report.as_ref(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Some(report) = &report
        && !report.events.is_empty()
    {
        print!("{}", describe_report(report));
    }
    if !args.apply {
        eprintln!("dry run: nothing was changed; run again with --apply to make it so");
    } else if plan.changes() == 0 {
        eprintln!("nothing to change");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `--json` prints: the plan, where it came from, and what was enqueued (`null` on a dry
/// run).
#[derive(Serialize)]
struct JsonOutput<'a> {
    from: &'a str,
    dry_run: bool,
    #[serde(flatten)]
    plan: &'a Plan,
    enqueued: Option<&'a ApplyReport>,
}

async fn apply(reconciler: &Reconciler, plan: &Plan) -> anyhow::Result<ApplyReport> {
    let total: usize = plan
        .buildings
        .iter()
        .map(|b| {
            let leases = |changes: &[Change]| changes.iter().map(|c| c.leases.len()).sum::<usize>();
            leases(&b.add)
                + leases(&b.remove)
                + if plan.prune_unmanaged {
                    leases(&b.unmanaged)
                } else {
                    0
                }
        })
        .sum();
    let bar = progress(total);
    let report = reconciler.apply(plan, |_| bar.inc(1)).await;
    bar.finish_and_clear();
    report.context("the reconciliation was applied only in part; run it again to finish")
}

/// The progress of a pull on stderr (leases read of the total), hidden when stderr is not a
/// terminal.
fn pull_progress() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("reading leases {wide_bar} {pos}/{len} ({eta} left)")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("enqueuing {wide_bar} {pos}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// The text plan: a header, a table of adds, removals and unmanaged people, and the counts.
fn describe(plan: &Plan, from: &str) -> String {
    let at = plan.at.format(&Rfc3339).unwrap_or_default();
    let mut out = format!(
        "reconciling source {} against {from} at {at}\n",
        plan.source
    );
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["BUILDING", "INTEGRATION", "ACTION", "USER", "DETAIL"]);
    let mut rows = 0;
    for building in &plan.buildings {
        for (action, change, detail) in building_rows(building, plan.prune_unmanaged) {
            table.add_row(vec![
                property_ids(building),
                building.integration_id.clone(),
                action.to_owned(),
                change.user_id.clone(),
                detail,
            ]);
            rows += 1;
        }
    }
    if rows == 0 {
        out.push_str("no differences: OpenApp matches the file\n");
    } else {
        out.push_str(&format!("{table}\n"));
    }
    out.push_str(&plan.summary());
    out.push('\n');
    out
}

fn property_ids(building: &BuildingPlan) -> String {
    building
        .properties
        .iter()
        .map(|p| p.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn building_rows(building: &BuildingPlan, prune: bool) -> Vec<(&'static str, &Change, String)> {
    let mut rows = Vec::new();
    for c in &building.add {
        rows.push(("add", c, leases(c)));
    }
    for c in &building.remove {
        rows.push(("remove", c, leases(c)));
    }
    for c in &building.unmanaged {
        let detail = if prune {
            format!("pruned: {}", leases(c))
        } else {
            "kept (unmanaged)".to_owned()
        };
        rows.push(("unmanaged", c, detail));
    }
    rows
}

/// `lease L-A; ends lease L-B; lease L-C from 2027-01-01T00:00:00Z`.
fn leases(change: &Change) -> String {
    let time = |t: Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
    change
        .leases
        .iter()
        .map(|l| match l.event_type {
            EventType::LeaseEnded => format!("ends lease {}", l.lease_id),
            EventType::LeaseSigned => {
                let mut text = format!("lease {}", l.lease_id);
                if let Some(from) = time(l.starts_at) {
                    text.push_str(&format!(" from {from}"));
                }
                if let Some(until) = time(l.ends_at) {
                    text.push_str(&format!(" until {until}"));
                }
                text
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What `--apply` enqueued.
fn describe_report(report: &ApplyReport) -> String {
    let mut out = format!(
        "enqueued {} event(s), {} convergence job(s){}:\n",
        report.events.len(),
        report.jobs,
        [
            (report.stale > 0).then(|| {
                format!(
                    ", {} stale (the lease already records a newer event)",
                    report.stale
                )
            }),
            (report.overridden > 0).then(|| {
                format!(
                    ", {} future-dated lease record(s) overridden",
                    report.overridden
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect::<String>()
    );
    for e in &report.events {
        out.push_str(&format!(
            "  {:<13}{:<28}lease {:<20}{} ({} job{})\n",
            e.event_type.as_str(),
            e.user_id,
            e.lease_id,
            e.event_id,
            e.jobs,
            if e.jobs == 1 { "" } else { "s" }
        ));
    }
    out.push_str("workers converge OpenApp now; follow with `lease-sync queue stats`\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::reconcile::plan::{BuildingProperty, PlannedLease};
    use crate::reconcile::{Counts, Enqueued};

    fn change(user: &str, lease: &str, event_type: EventType) -> Change {
        Change {
            user_id: user.into(),
            leases: vec![PlannedLease {
                event_type,
                lease_id: lease.into(),
                property_id: "P-17".into(),
                starts_at: None,
                ends_at: None,
            }],
        }
    }

    fn sample(prune: bool) -> Plan {
        Plan {
            source: "acme".into(),
            at: OffsetDateTime::UNIX_EPOCH,
            prune_unmanaged: prune,
            counts: Counts {
                add: 1,
                remove: 1,
                unmanaged: 1,
                unchanged: 4,
            },
            buildings: vec![BuildingPlan {
                integration_id: "int".into(),
                org_id: "org".into(),
                properties: vec![BuildingProperty {
                    id: "P-17".into(),
                    role: "r".into(),
                }],
                add: vec![change("user-a", "L-A", EventType::LeaseSigned)],
                remove: vec![change("user-b", "L-B", EventType::LeaseEnded)],
                unmanaged: vec![change("user-c", "reconcile:user-c", EventType::LeaseEnded)],
                unchanged: vec!["user-d".into()],
            }],
        }
    }

    #[test]
    fn the_text_plan_lists_each_change_and_the_counts() {
        let text = describe(&sample(false), "leases.csv");
        assert!(
            text.starts_with(
                "reconciling source acme against leases.csv at 1970-01-01T00:00:00Z\n"
            ),
            "{text}"
        );
        for needle in [
            "user-a",
            "lease L-A",
            "user-b",
            "ends lease L-B",
            "user-c",
            "kept (unmanaged)",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(
            !text.contains("user-d"),
            "unchanged people are only counted: {text}"
        );
        assert!(
            text.ends_with("add 1, remove 1, unmanaged 1 (kept), unchanged 4\n"),
            "{text}"
        );
        let pruned = describe(&sample(true), "leases.csv");
        assert!(
            pruned.contains("pruned: ends lease reconcile:user-c"),
            "{pruned}"
        );
        assert!(pruned.contains("unmanaged 1 (pruned)"), "{pruned}");
    }

    #[test]
    fn the_report_lists_each_event() {
        let report = ApplyReport {
            events: vec![Enqueued {
                event_id: "reconcile-X-1".into(),
                event_type: EventType::LeaseSigned,
                user_id: "user-a".into(),
                lease_id: "L-A".into(),
                integration_id: "int".into(),
                jobs: 1,
                stale: 0,
                overridden: 0,
            }],
            jobs: 1,
            stale: 0,
            overridden: 0,
        };
        let text = describe_report(&report);
        assert!(
            text.starts_with("enqueued 1 event(s), 1 convergence job(s):\n"),
            "{text}"
        );
        assert!(
            text.contains("lease.signed") && text.contains("reconcile-X-1 (1 job)"),
            "{text}"
        );
    }
}
