//! Results of the Buildium end-to-end benchmark: each change and when it reached OpenApp,
//! latency percentiles, Buildium reads per change, the pull's timings; medians over the runs,
//! the p99 target, a Markdown table, a CSV of every change and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::buildium::Read;
use crate::load::Percentiles;
use crate::report::{Machine, MachineLoad, Usage, median};

/// The p99 target of the change → OpenApp latency, in seconds.
pub const TARGET_P99_S: f64 = 2.0;

/// What a change does in the Buildium emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new lease with one current tenant: OpenApp gains a building user.
    Add,
    /// The tenant of a seeded lease moved out two days ago: OpenApp loses them.
    MoveOut,
    /// A seeded lease deleted: OpenApp loses its tenant.
    Delete,
}

impl ChangeKind {
    /// The name in tables and the CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::MoveOut => "move_out",
            Self::Delete => "delete",
        }
    }
}

/// One change of a latency run; times in seconds from the run's `t0` (when change 0 was due).
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// 0-based.
    pub index: usize,
    /// What it did.
    pub kind: ChangeKind,
    /// When it was due.
    pub scheduled_s: f64,
    /// When the harness sent it to the control API.
    pub sent_s: f64,
    /// When the control API answered (the change made, its webhooks on their way).
    pub applied_s: f64,
    /// When the OpenApp sandbox received the call it caused; `None`: it never came.
    pub openapp_s: Option<f64>,
    /// The status that call got.
    pub openapp_status: Option<u16>,
    /// The control API's error, if the change could not be made.
    pub control_error: Option<String>,
}

impl Change {
    /// From when it was due to its OpenApp call (coordinated omission corrected), seconds.
    pub fn latency_s(&self) -> Option<f64> {
        self.openapp_s.map(|t| (t - self.scheduled_s).max(0.0))
    }

    /// From when the control API answered to its OpenApp call, seconds.
    pub fn after_applied_s(&self) -> Option<f64> {
        self.openapp_s.map(|t| (t - self.applied_s).max(0.0))
    }
}

/// Percentiles of seconds (nearest rank), as milliseconds.
pub fn percentiles_of_secs(values: impl IntoIterator<Item = f64>) -> Percentiles {
    let mut nanos: Vec<u64> = values
        .into_iter()
        .filter(|v| v.is_finite())
        .map(|v| (v.max(0.0) * 1e9) as u64)
        .collect();
    Percentiles::of(&mut nanos)
}

/// Reads in the busiest one-second bucket (by arrival second).
pub fn reads_per_second_peak(reads: &[Read]) -> u64 {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for r in reads {
        *buckets.entry(r.at_ms / 1000).or_default() += 1;
    }
    buckets.values().copied().max().unwrap_or(0)
}

/// Which Buildium operation a read path is.
pub fn read_kind(path: &str) -> &'static str {
    if path.starts_with("/v1/leases/tenants/") {
        "get tenant"
    } else if path == "/v1/leases" || path == "/v1/leases/" {
        "list leases"
    } else if path.starts_with("/v1/leases/") {
        "get lease"
    } else {
        "other"
    }
}

/// One latency run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// 1-based.
    pub index: usize,
    /// Changes made.
    pub changes: usize,
    /// Offered changes per second.
    pub rate: f64,
    /// Changes by kind.
    pub kinds: BTreeMap<String, u64>,
    /// Changes the control API refused or failed.
    pub control_errors: u64,
    /// Changes whose OpenApp call never came within the bound.
    pub lost: u64,
    /// From due time to the OpenApp call, over the changes that got one.
    pub latency_ms: Percentiles,
    /// The same by kind.
    pub latency_ms_by_kind: BTreeMap<String, Percentiles>,
    /// From the control API's answer to the OpenApp call.
    pub from_applied_ms: Percentiles,
    /// Median latency of the first and of the last tenth of the changes (a growing backlog
    /// shows as the second far above the first).
    pub first_tenth_p50_ms: f64,
    /// See `first_tenth_p50_ms`.
    pub last_tenth_p50_ms: f64,
    /// How late the harness sent changes after their due time: p99 and max.
    pub send_lateness_ms: Percentiles,
    /// From the last change sent until OpenApp showed every change.
    pub settle_s: f64,
    /// Whether that wait ran out (changes lost).
    pub settle_timed_out: bool,
    /// Buildium API requests from change 0 until none came for 3 s after OpenApp showed
    /// every change (refreshes still queued then are counted).
    pub buildium_reads: u64,
    /// `buildium_reads / changes`.
    pub reads_per_change: f64,
    /// Reads by operation (`get lease`, `get tenant`, `list leases`).
    pub reads_by_kind: BTreeMap<String, u64>,
    /// Reads answered 429 by the emulator.
    pub reads_429: u64,
    /// Reads per second from the first read to the last.
    pub read_rate_per_s: f64,
    /// Reads in the busiest second.
    pub peak_reads_per_s: u64,
    /// Webhook events the changes emitted.
    pub webhooks: u64,
    /// Delivery attempts (more than `webhooks` when lease-sync refused or timed out some).
    pub webhook_attempts: u64,
    /// Events not acknowledged 2xx.
    pub webhooks_not_delivered: u64,
    /// OpenApp calls during the run, by operation.
    pub openapp_calls: BTreeMap<String, u64>,
    /// Building-user calls other than each change's first expected one (repeats, wrong ones).
    pub extra_building_user_calls: u64,
    /// Mean wait for a slot of the shared Buildium rate limiter (serve's histogram, whole life).
    pub rate_limit_wait_mean_ms: f64,
    /// Mean Buildium request duration, slot wait excluded (serve's histogram, whole life).
    pub buildium_request_mean_ms: f64,
    /// CPU of each process from the first change to the end.
    pub usage: BTreeMap<String, Usage>,
    /// The machine over the same time.
    pub machine: MachineLoad,
    /// OpenApp's building users at the end, and how many there should be.
    pub openapp_members: usize,
    /// See `openapp_members`.
    pub openapp_members_expected: usize,
    /// Whether serve exited 0 on SIGTERM.
    pub serve_clean_exit: bool,
    /// Every change.
    #[serde(skip)]
    pub change_list: Vec<Change>,
}

/// The figures of a latency run that follow from its changes and reads alone (the rest is
/// filled in by the caller).
pub fn latency_run(index: usize, rate: f64, changes: Vec<Change>, reads: &[Read]) -> LatencyRun {
    let n = changes.len();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for c in &changes {
        *kinds.entry(c.kind.as_str().to_owned()).or_default() += 1;
    }
    let latency_ms = percentiles_of_secs(changes.iter().filter_map(Change::latency_s));
    let mut by_kind = BTreeMap::new();
    for kind in [ChangeKind::Add, ChangeKind::MoveOut, ChangeKind::Delete] {
        let of_kind: Vec<f64> = changes
            .iter()
            .filter(|c| c.kind == kind)
            .filter_map(Change::latency_s)
            .collect();
        if !of_kind.is_empty() {
            by_kind.insert(kind.as_str().to_owned(), percentiles_of_secs(of_kind));
        }
    }
    let tenth = (n / 10).max(1);
    let p50_of =
        |slice: &[Change]| median(slice.iter().filter_map(Change::latency_s).map(|s| s * 1e3));
    let mut reads_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for r in reads {
        *reads_by_kind
            .entry(read_kind(&r.path).to_owned())
            .or_default() += 1;
    }
    let read_span_s = match (
        reads.iter().map(|r| r.at_ms).min(),
        reads.iter().map(|r| r.at_ms).max(),
    ) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e3,
        _ => 0.0,
    };
    LatencyRun {
        index,
        changes: n,
        rate,
        kinds,
        control_errors: changes.iter().filter(|c| c.control_error.is_some()).count() as u64,
        lost: changes.iter().filter(|c| c.openapp_s.is_none()).count() as u64,
        latency_ms,
        latency_ms_by_kind: by_kind,
        from_applied_ms: percentiles_of_secs(changes.iter().filter_map(Change::after_applied_s)),
        first_tenth_p50_ms: p50_of(&changes[..tenth.min(n)]),
        last_tenth_p50_ms: p50_of(&changes[n.saturating_sub(tenth)..]),
        send_lateness_ms: percentiles_of_secs(changes.iter().map(|c| c.sent_s - c.scheduled_s)),
        settle_s: 0.0,
        settle_timed_out: false,
        buildium_reads: reads.len() as u64,
        reads_per_change: reads.len() as f64 / n.max(1) as f64,
        reads_by_kind,
        reads_429: reads.iter().filter(|r| r.status == 429).count() as u64,
        read_rate_per_s: if read_span_s > 0.0 {
            (reads.len().saturating_sub(1)) as f64 / read_span_s
        } else {
            0.0
        },
        peak_reads_per_s: 0,
        webhooks: 0,
        webhook_attempts: 0,
        webhooks_not_delivered: 0,
        openapp_calls: BTreeMap::new(),
        extra_building_user_calls: 0,
        rate_limit_wait_mean_ms: 0.0,
        buildium_request_mean_ms: 0.0,
        usage: BTreeMap::new(),
        machine: MachineLoad::default(),
        openapp_members: 0,
        openapp_members_expected: 0,
        serve_clean_exit: false,
        change_list: changes,
    }
}

/// One `lease-sync reconcile` of the pull.
#[derive(Debug, Clone, Serialize)]
pub struct PullMeasure {
    /// Wall time of the command, start to exit.
    pub seconds: f64,
    /// Leases it read (its `read N lease(s)` line).
    pub leases_read: u64,
    /// Rows (tenants with access) it planned against.
    pub rows: u64,
    /// Tenants without an OpenApp user.
    pub conflicts: u64,
    /// Buildium API requests it made.
    pub buildium_requests: u64,
    /// OpenApp API calls it made (by the sandbox's call numbers).
    pub openapp_calls: u64,
    /// Of those still in the sandbox's record, user searches.
    pub openapp_searches_seen: u64,
    /// CPU of the reconcile process (sampled every 10 ms while it ran).
    pub reconcile_cpu_s: f64,
    /// CPU of the other processes meanwhile, by process.
    pub cpu_s: BTreeMap<String, f64>,
}

/// One pull run.
#[derive(Debug, Clone, Serialize)]
pub struct PullRun {
    /// 1-based.
    pub index: usize,
    /// Leases (one tenant each, every tenant an OpenApp user).
    pub leases: usize,
    /// Dry run with the identity cache empty.
    pub cold: PullMeasure,
    /// Dry run again, the cache filled.
    pub warm: PullMeasure,
    /// With `--apply` (the cache warm).
    pub apply: PullMeasure,
    /// From starting `--apply` until OpenApp held every tenant.
    pub apply_to_openapp_s: f64,
    /// OpenApp's building users afterwards.
    pub openapp_members: usize,
    /// Whether serve exited 0 on SIGTERM.
    pub serve_clean_exit: bool,
}

/// What the runs were made with.
#[derive(Debug, Clone, Serialize)]
pub struct BuildiumSetup {
    /// Changes per latency run.
    pub changes: usize,
    /// Offered changes per second.
    pub rate: f64,
    /// Leases per pull.
    pub pull_leases: usize,
    /// Reads per second the emulator allows and lease-sync's `rate_limit_per_sec` (0: lifted).
    pub buildium_rate_limit: u32,
    /// Redis `appendfsync`.
    pub appendfsync: String,
    /// lease-sync's `worker.concurrency` (its default).
    pub worker_concurrency: usize,
    /// Seconds after the last change within which every change must reach OpenApp.
    pub settle_limit_s: f64,
}

/// Medians over the runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildiumSummary {
    /// Latency p50, ms (median of the runs' p50s).
    pub p50_ms: f64,
    /// p90.
    pub p90_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// max.
    pub max_ms: f64,
    /// Changes over every run.
    pub changes: u64,
    /// Changes that never reached OpenApp, over every run.
    pub lost: u64,
    /// Control-API failures, over every run.
    pub control_errors: u64,
    /// Whether the p99 target is met.
    pub p99_pass: bool,
    /// Buildium reads per change.
    pub reads_per_change: f64,
    /// Webhook events per change.
    pub webhooks_per_change: f64,
    /// Reads per second during the runs.
    pub read_rate_per_s: f64,
    /// Pull: cold dry run, s.
    pub pull_cold_s: f64,
    /// Pull: warm dry run, s.
    pub pull_warm_s: f64,
    /// Pull: `--apply`, s.
    pub pull_apply_s: f64,
    /// Pull: from `--apply` until OpenApp held everyone, s.
    pub pull_apply_to_openapp_s: f64,
    /// Buildium requests of one pull.
    pub pull_buildium_requests: f64,
    /// OpenApp calls of the cold pull.
    pub pull_cold_openapp_calls: f64,
    /// OpenApp calls of the warm pull.
    pub pull_warm_openapp_calls: f64,
}

/// Everything one `lease-sync-bench buildium` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct BuildiumResults {
    /// Short (CI) or full.
    pub mode: String,
    /// The machine.
    pub machine: Machine,
    /// The configuration.
    pub setup: BuildiumSetup,
    /// Latency runs.
    pub latency: Vec<LatencyRun>,
    /// Pull runs.
    pub pull: Vec<PullRun>,
    /// Medians.
    pub summary: BuildiumSummary,
}

/// Medians of `latency` and `pull`.
pub fn summarize(latency: &[LatencyRun], pull: &[PullRun]) -> BuildiumSummary {
    let l = |f: &dyn Fn(&LatencyRun) -> f64| median(latency.iter().map(f));
    let p = |f: &dyn Fn(&PullRun) -> f64| median(pull.iter().map(f));
    let p99 = l(&|r| r.latency_ms.p99);
    BuildiumSummary {
        p50_ms: l(&|r| r.latency_ms.p50),
        p90_ms: l(&|r| r.latency_ms.p90),
        p99_ms: p99,
        max_ms: l(&|r| r.latency_ms.max),
        changes: latency.iter().map(|r| r.changes as u64).sum(),
        lost: latency.iter().map(|r| r.lost).sum(),
        control_errors: latency.iter().map(|r| r.control_errors).sum(),
        p99_pass: !latency.is_empty()
            && p99 <= TARGET_P99_S * 1e3
            && latency.iter().all(|r| r.lost == 0),
        reads_per_change: l(&|r| r.reads_per_change),
        webhooks_per_change: l(&|r| r.webhooks as f64 / r.changes.max(1) as f64),
        read_rate_per_s: l(&|r| r.read_rate_per_s),
        pull_cold_s: p(&|r| r.cold.seconds),
        pull_warm_s: p(&|r| r.warm.seconds),
        pull_apply_s: p(&|r| r.apply.seconds),
        pull_apply_to_openapp_s: p(&|r| r.apply_to_openapp_s),
        pull_buildium_requests: p(&|r| r.cold.buildium_requests as f64),
        pull_cold_openapp_calls: p(&|r| r.cold.openapp_calls as f64),
        pull_warm_openapp_calls: p(&|r| r.warm.openapp_calls as f64),
    }
}

fn cells<T>(runs: &[T], f: impl Fn(&T) -> f64, digits: usize) -> String {
    runs.iter()
        .map(|r| format!("{:.*}", digits, f(r)))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Seconds with a precision that suits them.
fn secs(ms: f64) -> String {
    let s = ms / 1e3;
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.2} s")
    }
}

/// A row of a table: its label and how to read its figure from a run.
type Row<R, T> = (&'static str, fn(&R) -> T);

/// A row of the pull table: its label and which measure of a run it shows.
type PullRow = (&'static str, fn(&PullRun) -> &PullMeasure);

/// The results as Markdown: the main table, then the pull.
pub fn markdown(results: &BuildiumResults) -> String {
    let s = &results.summary;
    let setup = &results.setup;
    let lat = &results.latency;
    let mut out = String::new();
    let limit = if setup.buildium_rate_limit == 0 {
        "Buildium's rate limit lifted (diagnostic)".to_owned()
    } else {
        format!(
            "Buildium's limit of {} reads/s in the emulator and in lease-sync",
            setup.buildium_rate_limit
        )
    };
    if !lat.is_empty() {
        let _ = writeln!(
            out,
            "Change → OpenApp call, {} changes per run at {} changes/s, {limit}:\n",
            setup.changes, setup.rate
        );
        let _ = writeln!(
            out,
            "| measure | runs | median | target | result |\n|---|---|---|---|---|"
        );
        let rows: [Row<LatencyRun, f64>; 4] = [
            ("p50", |r| r.latency_ms.p50),
            ("p90", |r| r.latency_ms.p90),
            ("p99", |r| r.latency_ms.p99),
            ("max", |r| r.latency_ms.max),
        ];
        for (name, f) in rows {
            let (target, result) = if name == "p99" {
                (
                    format!("≤ {TARGET_P99_S:.0} s"),
                    if s.p99_pass { "**pass**" } else { "**miss**" },
                )
            } else {
                ("—".to_owned(), "—")
            };
            let _ = writeln!(
                out,
                "| change → OpenApp call, {name} | {} | {} | {target} | {result} |",
                lat.iter()
                    .map(|r| secs(f(r)))
                    .collect::<Vec<_>>()
                    .join(" / "),
                secs(median(lat.iter().map(f))),
            );
        }
        let _ = writeln!(
            out,
            "| changes that never reached OpenApp (bound: {:.0} s after the last change) | {} | {} of {} (total) | 0 | {} |",
            setup.settle_limit_s,
            cells(lat, |r| r.lost as f64, 0),
            s.lost,
            s.changes,
            if s.lost == 0 { "**pass**" } else { "**miss**" }
        );
        let _ = writeln!(
            out,
            "| p50 of the first / last tenth of the changes | {} | — | — | — |",
            lat.iter()
                .map(|r| format!(
                    "{} → {}",
                    secs(r.first_tenth_p50_ms),
                    secs(r.last_tenth_p50_ms)
                ))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        let _ = writeln!(
            out,
            "| Buildium API calls per lease change | {} | {:.2} | — | — |",
            cells(lat, |r| r.reads_per_change, 2),
            s.reads_per_change
        );
        let _ = writeln!(
            out,
            "| Buildium webhooks per lease change | {} | {:.2} | — | — |",
            cells(lat, |r| r.webhooks as f64 / r.changes.max(1) as f64, 2),
            s.webhooks_per_change
        );
        let _ = writeln!(
            out,
            "| Buildium reads per second (first read to last) | {} | {:.2} | — | — |",
            cells(lat, |r| r.read_rate_per_s, 2),
            s.read_rate_per_s
        );
        let _ = writeln!(
            out,
            "\n| by kind (median of runs) | changes per run | p50 | p99 | max |\n|---|---|---|---|---|"
        );
        for kind in ["add", "move_out", "delete"] {
            let of = |f: &dyn Fn(&Percentiles) -> f64| {
                median(
                    lat.iter()
                        .filter_map(|r| r.latency_ms_by_kind.get(kind))
                        .map(f),
                )
            };
            let count = median(
                lat.iter()
                    .map(|r| r.kinds.get(kind).copied().unwrap_or(0) as f64),
            );
            let _ = writeln!(
                out,
                "| {kind} | {count:.0} | {} | {} | {} |",
                secs(of(&|p| p.p50)),
                secs(of(&|p| p.p99)),
                secs(of(&|p| p.max))
            );
        }
        let _ = writeln!(
            out,
            "\n| per run | reads (lease / tenant / list) | 429s | webhooks (attempts) | OpenApp calls | extra calls | rate-limit wait, mean | CPU s: serve / redis / OpenApp / Buildium |\n|---|---|---|---|---|---|---|---|"
        );
        for r in lat {
            let get = |k: &str| r.reads_by_kind.get(k).copied().unwrap_or(0);
            let cpu = |k: &str| r.usage.get(k).map_or(0.0, |u| u.cpu_s);
            let _ = writeln!(
                out,
                "| {} | {} ({} / {} / {}) | {} | {} ({}) | {} | {} | {:.0} ms | {:.1} / {:.1} / {:.1} / {:.1} |",
                r.index,
                r.buildium_reads,
                get("get lease"),
                get("get tenant"),
                get("list leases"),
                r.reads_429,
                r.webhooks,
                r.webhook_attempts,
                r.openapp_calls.values().sum::<u64>(),
                r.extra_building_user_calls,
                r.rate_limit_wait_mean_ms,
                cpu("lease-sync serve"),
                cpu("redis-server"),
                cpu("OpenApp sandbox"),
                cpu("Buildium emulator"),
            );
        }
    }
    let pull = &results.pull;
    if !pull.is_empty() {
        let _ = writeln!(
            out,
            "\nPull: `lease-sync reconcile --source buildium` over {} leases (one tenant each):\n",
            setup.pull_leases
        );
        let _ = writeln!(
            out,
            "| pull of {} leases | runs (s) | median (s) | Buildium requests | OpenApp calls | reconcile CPU (s) | OpenApp sandbox CPU (s) |\n|---|---|---|---|---|---|---|",
            setup.pull_leases
        );
        let rows: [PullRow; 3] = [
            ("dry run, cold (identity cache empty)", |r| &r.cold),
            ("dry run, warm (cache filled)", |r| &r.warm),
            ("`--apply` (cache warm; enqueues)", |r| &r.apply),
        ];
        for (name, f) in rows {
            let _ = writeln!(
                out,
                "| {name} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} |",
                cells(pull, |r| f(r).seconds, 2),
                median(pull.iter().map(|r| f(r).seconds)),
                median(pull.iter().map(|r| f(r).buildium_requests as f64)),
                median(pull.iter().map(|r| f(r).openapp_calls as f64)),
                median(pull.iter().map(|r| f(r).reconcile_cpu_s)),
                median(
                    pull.iter()
                        .map(|r| f(r).cpu_s.get("OpenApp sandbox").copied().unwrap_or(0.0))
                ),
            );
        }
        let _ = writeln!(
            out,
            "| `--apply` until OpenApp holds every tenant | {} | {:.2} | — | — | — | — |",
            cells(pull, |r| r.apply_to_openapp_s, 2),
            s.pull_apply_to_openapp_s
        );
    }
    out
}

/// Every change of every run as CSV (times in seconds from each run's `t0`).
pub fn changes_csv(results: &BuildiumResults) -> String {
    let mut out = String::from(
        "run,index,kind,scheduled_s,sent_s,applied_s,openapp_s,latency_s,openapp_status,control_error\n",
    );
    for r in &results.latency {
        for c in &r.change_list {
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "{},{},{},{:.3},{:.3},{:.3},{},{},{},{}",
                r.index,
                c.index,
                c.kind.as_str(),
                c.scheduled_s,
                c.sent_s,
                c.applied_s,
                opt(c.openapp_s),
                opt(c.latency_s()),
                c.openapp_status.map_or(String::new(), |s| s.to_string()),
                c.control_error
                    .as_deref()
                    .unwrap_or_default()
                    .replace([',', '\n'], " "),
            );
        }
    }
    out
}

/// An SVG chart: each change's latency against when it was due, one colour per kind, the
/// 2 s target as a line (first run; the others are in the CSV).
pub fn chart(results: &BuildiumResults) -> String {
    let (w, h) = (900.0, 420.0);
    let (x0, y0, pw, ph) = (70.0, 60.0, 780.0, 290.0);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="#ffffff"/>
"##
    );
    let Some(run) = results.latency.first() else {
        svg.push_str("<text x=\"20\" y=\"30\">no latency run</text>\n</svg>\n");
        return svg;
    };
    let _ = writeln!(
        svg,
        r#"<text x="16" y="24" font-size="15" font-weight="bold">Buildium change → OpenApp call: run 1, {} changes at {}/s ({} build)</text>"#,
        run.changes, run.rate, results.machine.build
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="42" font-size="12">p50 {} · p99 {} · max {} · {:.2} Buildium reads per change at {:.2} reads/s ({})</text>"#,
        secs(run.latency_ms.p50),
        secs(run.latency_ms.p99),
        secs(run.latency_ms.max),
        run.reads_per_change,
        run.read_rate_per_s,
        if results.setup.buildium_rate_limit == 0 {
            "rate limit lifted".to_owned()
        } else {
            format!("limit {}/s", results.setup.buildium_rate_limit)
        }
    );
    let xmax = run
        .change_list
        .iter()
        .map(|c| c.scheduled_s)
        .fold(1.0, f64::max);
    let ymax = run
        .change_list
        .iter()
        .filter_map(Change::latency_s)
        .fold(TARGET_P99_S * 1.5, f64::max)
        * 1.05;
    let x = |t: f64| x0 + t / xmax * pw;
    let y = |s: f64| y0 + ph - s / ymax * ph;
    let _ = writeln!(
        svg,
        r##"<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{}" stroke="#555"/><line x1="{x0}" x2="{}" y1="{}" y2="{}" stroke="#555"/>"##,
        y0 + ph,
        x0 + pw,
        y0 + ph,
        y0 + ph
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end" font-size="11">{v:.1} s</text>"#,
            x0 - 6.0,
            y(v) + 4.0
        );
        let t = xmax * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="11">{t:.0} s</text>"#,
            x(t),
            y0 + ph + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">when the change was due (s after the first)</text>"#,
        x0 + pw / 2.0,
        y0 + ph + 36.0
    );
    for c in &run.change_list {
        let (color, latency) = match (c.kind, c.latency_s()) {
            (ChangeKind::Add, Some(l)) => ("#1f77b4", l),
            (ChangeKind::MoveOut, Some(l)) => ("#ff7f0e", l),
            (ChangeKind::Delete, Some(l)) => ("#2ca02c", l),
            (_, None) => ("#d62728", ymax),
        };
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{color}"/>"#,
            x(c.scheduled_s),
            y(latency)
        );
    }
    let ty = y(TARGET_P99_S);
    let _ = writeln!(
        svg,
        r##"<line x1="{x0}" x2="{}" y1="{ty:.1}" y2="{ty:.1}" stroke="#d62728" stroke-dasharray="6 3"/><text x="{}" y="{:.1}" fill="#d62728" text-anchor="end" font-size="11">p99 target {TARGET_P99_S:.0} s</text>"##,
        x0 + pw,
        x0 + pw,
        ty - 4.0
    );
    let legend_y = h - 18.0;
    for (i, (label, color)) in [
        ("add (new lease)", "#1f77b4"),
        ("move-out", "#ff7f0e"),
        ("lease deleted", "#2ca02c"),
        ("never reached OpenApp", "#d62728"),
    ]
    .iter()
    .enumerate()
    {
        let lx = x0 + i as f64 * 190.0;
        let _ = writeln!(
            svg,
            r#"<circle cx="{lx}" cy="{}" r="5" fill="{color}"/><text x="{}" y="{}">{label}</text>"#,
            legend_y - 4.0,
            lx + 10.0,
            legend_y
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(index: usize, kind: ChangeKind, scheduled: f64, openapp: Option<f64>) -> Change {
        Change {
            index,
            kind,
            scheduled_s: scheduled,
            sent_s: scheduled + 0.001,
            applied_s: scheduled + 0.002,
            openapp_s: openapp,
            openapp_status: openapp.map(|_| 201),
            control_error: None,
        }
    }

    fn read(path: &str, at_ms: u64, status: u16) -> Read {
        Read {
            path: path.to_owned(),
            status,
            at_ms,
        }
    }

    #[test]
    fn latency_counts_from_the_due_time_and_lost_changes_apart() {
        let changes = vec![
            change(0, ChangeKind::Add, 0.0, Some(0.5)),
            change(1, ChangeKind::MoveOut, 0.1, Some(1.1)),
            change(2, ChangeKind::Add, 0.2, None),
            change(3, ChangeKind::Delete, 0.3, Some(0.4)),
        ];
        let reads = [
            read("/v1/leases/1", 1_000, 200),
            read("/v1/leases/tenants/9", 1_100, 200),
            read("/v1/leases", 2_000, 429),
        ];
        let run = latency_run(1, 10.0, changes, &reads);
        assert_eq!(run.lost, 1);
        assert_eq!(run.changes, 4);
        assert_eq!(run.kinds.get("add"), Some(&2));
        // Nearest rank over 0.1, 0.5, 1.0 s.
        assert!((run.latency_ms.p50 - 500.0).abs() < 1e-6);
        assert!((run.latency_ms.max - 1000.0).abs() < 1e-6);
        assert!((run.latency_ms_by_kind["delete"].p50 - 100.0).abs() < 1e-6);
        assert_eq!(run.buildium_reads, 3);
        assert!((run.reads_per_change - 0.75).abs() < 1e-9);
        assert_eq!(run.reads_429, 1);
        assert_eq!(run.reads_by_kind["get tenant"], 1);
        assert_eq!(run.reads_by_kind["list leases"], 1);
        assert!((run.read_rate_per_s - 2.0).abs() < 1e-9);
        assert_eq!(reads_per_second_peak(&reads), 2);
    }

    #[test]
    fn the_summary_misses_the_target_when_a_change_is_lost() {
        let fast = |lost: bool| {
            let changes = vec![
                change(0, ChangeKind::Add, 0.0, Some(0.1)),
                change(1, ChangeKind::Add, 0.1, (!lost).then_some(0.2)),
            ];
            latency_run(1, 10.0, changes, &[])
        };
        assert!(summarize(&[fast(false)], &[]).p99_pass);
        let s = summarize(&[fast(false), fast(true)], &[]);
        assert_eq!(s.lost, 1);
        assert!(!s.p99_pass);
        assert!(
            !summarize(&[], &[]).p99_pass,
            "nothing measured passes nothing"
        );
    }

    #[test]
    fn the_chart_has_a_point_per_change_and_the_csv_a_line() {
        let changes = vec![
            change(0, ChangeKind::Add, 0.0, Some(0.5)),
            change(1, ChangeKind::Delete, 0.1, None),
        ];
        let results = BuildiumResults {
            mode: "short".into(),
            machine: crate::suite::machine("debug", 0.0),
            setup: BuildiumSetup {
                changes: 2,
                rate: 10.0,
                pull_leases: 0,
                buildium_rate_limit: 10,
                appendfsync: "always".into(),
                worker_concurrency: 16,
                settle_limit_s: 1.0,
            },
            latency: vec![latency_run(1, 10.0, changes, &[])],
            pull: Vec::new(),
            summary: BuildiumSummary::default(),
        };
        let svg = chart(&results);
        // Two changes and four legend entries.
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.ends_with("</svg>\n"));
        let csv = changes_csv(&results);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.contains("1,1,delete,0.100,"));
    }

    #[test]
    fn read_paths_are_classified() {
        assert_eq!(read_kind("/v1/leases/12"), "get lease");
        assert_eq!(read_kind("/v1/leases/tenants/3"), "get tenant");
        assert_eq!(read_kind("/v1/leases"), "list leases");
        assert_eq!(read_kind("/v2/else"), "other");
    }
}
