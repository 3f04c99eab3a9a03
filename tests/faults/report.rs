//! The figures of a run: one row per phase, printed as a Markdown table and, when
//! `FAULT_SUITE_REPORT=path` is set, written to that path as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::calls::CallFigures;
use crate::checks::Mismatch;
use crate::scenario::ScenarioStats;
use crate::sender::SendFigures;

/// The figures of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFigures {
    /// Short name (`a` … `h`, `baseline`, `tail`, `b′`).
    pub phase: &'static str,
    /// What the fault was.
    pub fault: &'static str,
    /// Whether losses fail the suite in this phase.
    pub strict: bool,
    /// Times the fault was applied.
    pub repetitions: u32,
    /// Seconds the fault routine ran (the sender running all along).
    pub fault_secs: f64,
    /// Distinct events first acknowledged in this phase.
    pub events_acknowledged: usize,
    /// What the sender's posts got back.
    pub sender: SendFigures,
    /// Acknowledged events that became unaccounted for in this phase (gone from Redis, queued
    /// twice, or a resident of theirs in the wrong state): must be 0.
    pub lost: usize,
    /// Of the acknowledged events, those without a dedupe marker right after a Redis restart.
    pub lost_at_restart: usize,
    /// Residents whose OpenApp state differs from the model after the phase: must be 0.
    pub wrong_state: usize,
    /// OpenApp calls.
    pub calls: CallFigures,
    /// Dead letters added.
    pub dead_letters: u64,
    /// Seconds from the fault's end until both ingest processes took events again.
    pub ingest_back_secs: Option<f64>,
    /// Seconds from the fault's end until the queue was drained and OpenApp matched the model
    /// (`None`: not within the recovery limit).
    pub recovered_secs: Option<f64>,
    /// Observations.
    pub notes: Vec<String>,
    /// Problems that fail the suite.
    pub failures: Vec<String>,
    /// Up to 20 unaccounted event ids.
    pub lost_examples: Vec<String>,
    /// Up to 20 residents in the wrong state.
    pub wrong_examples: Vec<Mismatch>,
}

/// One dead letter, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterLine {
    /// Its id.
    pub id: String,
    /// Why it was given up.
    pub reason: String,
    /// The event.
    pub event_id: String,
    /// The resident.
    pub user_id: String,
    /// `add` or `remove`.
    pub action: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

/// Totals over the strict phases.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Distinct events acknowledged.
    pub acknowledged: usize,
    /// Events the sender gave up on (never acknowledged).
    pub unacknowledged: usize,
    /// Acknowledged events unaccounted for at the final check.
    pub lost: usize,
    /// Residents in the wrong state at the final check.
    pub wrong_state: usize,
    /// Dead letters stored at the final check.
    pub dead_letters: u64,
    /// OpenApp calls.
    pub openapp_calls: u64,
    /// Duplicated OpenApp calls.
    pub duplicated_calls: u64,
    /// OpenApp answers other than success, no-op, 404 or injected faults.
    pub rejected_calls: u64,
    /// Ingest answers other than 200, 202 and 503, by status.
    pub unexpected_ingest_statuses: u64,
    /// Times the call log may have missed calls.
    pub call_log_gaps: u64,
}

/// Everything about a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `ci` or `long`.
    pub scale: String,
    /// Cores of this machine.
    pub cpus: usize,
    /// `redis_version` from `INFO`.
    pub redis_version: String,
    /// Wall time of the whole run.
    pub wall_secs: f64,
    /// The scenario.
    pub scenario: ScenarioStats,
    /// Sends held back for the `appendfsync everysec` measurement (0 when it does not run).
    pub everysec_sends: usize,
    /// Per phase.
    pub phases: Vec<PhaseFigures>,
    /// Totals (strict phases).
    pub totals: Totals,
    /// Every dead letter at the end.
    pub dead_letters: Vec<DeadLetterLine>,
    /// The sender's transport errors other than refused connections and timeouts, by message.
    pub transport_errors: BTreeMap<String, u64>,
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "—".into(), |v| format!("{v:.2}"))
}

impl RunReport {
    /// The per-phase table and a summary, in Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let s = &self.scenario;
        let _ = writeln!(
            out,
            "\n## lease-sync fault suite ({} scale, seed {}, {} CPUs, Redis {}, {:.0} s)\n",
            self.scale, s.seed, self.cpus, self.redis_version, self.wall_secs
        );
        let _ = writeln!(
            out,
            "Scenario: {} residents, {} leases, {} events, {} sends ({} re-sends of a delivered id), \
             {} residents with two leases in one building, {} in both buildings, {} shared leases, \
             {} equal-time pairs, {} stale arrivals; {} sends held back for the everysec measurement.\n",
            s.residents,
            s.leases,
            s.events,
            s.sends,
            s.duplicate_sends,
            s.residents_with_two_leases,
            s.residents_in_both_buildings,
            s.shared_leases,
            s.equal_time_pairs,
            s.stale_arrivals,
            self.everysec_sends
        );
        out.push_str(
            "| phase | fault | reps | events acked | sender retries (503 / refused / timeout) | lost | wrong state | OpenApp calls (faulted) | duplicated calls | dead letters | ingest back (s) | recovered (s) |\n",
        );
        out.push_str("|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|\n");
        for p in &self.phases {
            let c = &p.calls;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} ({} / {} / {}) | {} | {} | {} ({}) | {} | {} | {} | {} |",
                p.phase,
                p.fault,
                p.repetitions,
                p.events_acknowledged,
                p.sender.retried(),
                p.sender.unavailable,
                p.sender.refused,
                p.sender.timeouts,
                p.lost,
                p.wrong_state,
                c.calls,
                c.injected + c.hung,
                c.duplicated,
                p.dead_letters,
                seconds(p.ingest_back_secs),
                seconds(p.recovered_secs),
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "\nTotals (strict phases): {} events acknowledged, {} never acknowledged, {} lost, {} residents in the wrong state, \
             {} dead letters, {} OpenApp calls of which {} duplicated, {} unexpected OpenApp answers, {} unexpected ingest answers.",
            t.acknowledged,
            t.unacknowledged,
            t.lost,
            t.wrong_state,
            t.dead_letters,
            t.openapp_calls,
            t.duplicated_calls,
            t.rejected_calls,
            t.unexpected_ingest_statuses
        );
        for d in &self.dead_letters {
            let _ = writeln!(
                out,
                "- dead letter {}: {} ({} {} for event {}, {} attempts): {}",
                d.id,
                d.reason,
                d.action,
                d.user_id,
                d.event_id,
                d.attempts,
                d.last_error.as_deref().unwrap_or("-")
            );
        }
        for p in &self.phases {
            for line in p.notes.iter().chain(&p.failures) {
                let _ = writeln!(out, "- {}: {line}", p.phase);
            }
        }
        out
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        let json = serde_json::to_vec_pretty(self).expect("the report serializes");
        std::fs::write(path, json)
            .unwrap_or_else(|e| panic!("cannot write the report to {}: {e}", path.display()));
    }
}
