//! Fault suite: lease-sync as it is deployed — one real `redis-server` with production
//! persistence, two `lease-sync ingest` and two `lease-sync work` processes, the sandbox
//! OpenApp — while a sender simulator posts signed, duplicated and reordered events and
//! faults fire one phase at a time (worker and Redis kills, Redis outages, out-of-memory and
//! stalls, OpenApp errors and timeouts, rolling restarts).
//!
//! After every phase the sender pauses, the queue drains, and the suite checks that every
//! acknowledged event is still in Redis and that OpenApp's membership equals a model folded
//! from the acknowledged events (`model.rs`). Per-phase figures are printed as a Markdown
//! table (`--nocapture`) and written as JSON to `FAULT_SUITE_REPORT` when set.
//!
//! ```text
//! cargo test --test faults -- --nocapture                          # CI size, well under 3 minutes
//! FAULT_SUITE_SCALE=long FAULT_SUITE_REPORT=target/fault-report.json \
//!     cargo test --release --test faults -- --nocapture            # the long run (docs/RELIABILITY.md)
//! ```
//!
//! `FAULT_SUITE_SEED` replays a scenario; `FAULT_SUITE_EVERYSEC=1` adds the `appendfsync
//! everysec` measurement to a CI-sized run (a long run includes it; `=0` leaves it out);
//! `FAULT_SUITE_KEEP=1` keeps the work directory (process logs, configs, Redis data), which is
//! otherwise kept only when the suite fails.

mod calls;
mod checks;
mod cluster;
mod faults;
mod model;
mod report;
mod scale;
mod scenario;
mod sender;
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_sync::dead_letters::{DeadLetterFilter, DeadLetters};
use lease_sync::queue::QueueCounts;
use lease_sync_testkit::{Appendfsync, poll_until};

use crate::calls::CallLog;
use crate::checks::{Mismatch, compare, missing_dedupe, resident_locks, unaccounted};
use crate::cluster::Cluster;
use crate::faults::{Fault, Target, inject};
use crate::model::Model;
use crate::report::{DeadLetterLine, PhaseFigures, RunReport, Totals};
use crate::scale::{Scale, seed_from_env};
use crate::scenario::Scenario;
use crate::sender::{SendLog, Sender};
use crate::support::secs;

/// Longest wait for the sender's posts in flight when it pauses.
const PAUSE_LIMIT: Duration = Duration::from_secs(240);

/// Examples kept per phase in the report.
const EXAMPLES: usize = 20;

/// The running suite.
struct Suite {
    scale: Scale,
    scenario: Arc<Scenario>,
    cluster: Cluster,
    sender: Sender,
    calls: CallLog,
    phases: Vec<PhaseFigures>,
    /// Events unaccounted for at the previous check.
    unaccounted: BTreeSet<usize>,
    /// Dead letters stored at the previous check.
    dead_letters: u64,
    /// Jobs put off (resident locked by another worker) up to the previous check.
    deferred: u64,
}

impl Suite {
    /// Runs one phase: the fault while the sender runs, then recovery and the checks.
    async fn run_phase(&mut self, fault: Fault) {
        let index = self.phases.len();
        self.calls.set_phase(index);
        self.sender.set_phase(index);
        eprintln!(
            "[faults] phase {} ({}) starting; {} of {} sends taken",
            fault.key(),
            fault.title(),
            self.sender.progress(),
            self.scenario.sends.len()
        );
        self.sender.resume();
        let started = Instant::now();
        let injected = inject(
            fault,
            Target {
                cluster: &mut self.cluster,
                sender: &self.sender,
                scenario: &self.scenario,
                scale: &self.scale,
            },
        )
        .await;
        let fault_end = Instant::now();
        let fault_secs = secs(fault_end - started);
        let (locks, longest_lock_ms) =
            resident_locks(&self.cluster.redis, &self.cluster.queue).await;

        let ingest_back = self.wait_ingest_back().await.map(|at| secs(at - fault_end));
        self.sender.pause(PAUSE_LIMIT).await;
        let log = self.sender.log();
        let expected = Model::fold(log.acknowledged().map(|e| &self.scenario.events[e].fact));
        let recovered = self
            .wait_recovered(&expected)
            .await
            .map(|at| secs(at - fault_end));

        let (lost, wrong) = self.account(&log, &expected).await;
        let counts = self.counts().await;
        let dead_added = counts.dead.saturating_sub(self.dead_letters);
        self.dead_letters = counts.dead;
        let deferred = counts.deferred.saturating_sub(self.deferred);
        self.deferred = counts.deferred;

        let mut notes = injected.notes;
        notes.push(format!(
            "{locks} resident locks held when the fault ended (longest remaining TTL {longest_lock_ms} ms); \
             {deferred} jobs put off because their resident was locked"
        ));
        let mut failures = injected.failures;
        if recovered.is_none() {
            failures.push(format!(
                "not recovered (queue drained and OpenApp equal to the model) within {:?}",
                self.scale.recovery_limit
            ));
        }
        if ingest_back.is_none() {
            failures.push(format!(
                "ingest did not take events again within {:?}",
                self.scale.recovery_limit
            ));
        }
        let sender = log.phases.get(index).cloned().unwrap_or_default();
        let figures = PhaseFigures {
            phase: fault.key(),
            fault: fault.title(),
            strict: fault.strict(),
            repetitions: injected.repetitions,
            fault_secs,
            events_acknowledged: log
                .first_ack
                .iter()
                .filter(|ack| ack.is_some_and(|(phase, _)| phase == index))
                .count(),
            sender,
            lost: lost.len(),
            lost_at_restart: injected.lost_at_restart.len(),
            wrong_state: wrong.len(),
            calls: self.calls.phase(index),
            dead_letters: dead_added,
            ingest_back_secs: ingest_back,
            recovered_secs: recovered,
            notes,
            failures,
            lost_examples: lost
                .iter()
                .take(EXAMPLES)
                .map(|&e| self.scenario.events[e].id.clone())
                .collect(),
            wrong_examples: wrong.into_iter().take(EXAMPLES).collect(),
        };
        eprintln!(
            "[faults] phase {} done: {} events acked, {} lost, {} wrong, recovered in {}",
            figures.phase,
            figures.events_acknowledged,
            figures.lost,
            figures.wrong_state,
            figures
                .recovered_secs
                .map_or_else(|| "—".to_owned(), |s| format!("{s:.2} s"))
        );
        self.phases.push(figures);
    }

    /// Checks every acknowledged event against Redis and OpenApp against `expected`; returns
    /// the events that became unaccounted for since the previous check, and the residents in
    /// the wrong state.
    async fn account(&mut self, log: &SendLog, expected: &Model) -> (Vec<usize>, Vec<Mismatch>) {
        let acknowledged: Vec<usize> = log.acknowledged().collect();
        let missing: BTreeSet<usize> = missing_dedupe(
            &self.cluster.redis,
            &self.cluster.queue,
            &self.scenario,
            &acknowledged,
        )
        .await
        .into_iter()
        .collect();
        let wrong = compare(expected, &self.cluster.openapp.sandbox);
        let now_unaccounted = unaccounted(&self.scenario, log, &missing, &wrong);
        let lost = now_unaccounted
            .difference(&self.unaccounted)
            .copied()
            .collect();
        self.unaccounted = now_unaccounted;
        (lost, wrong)
    }

    /// When both ingest processes take an (already delivered) event again.
    async fn wait_ingest_back(&self) -> Option<Instant> {
        poll_until(self.scale.recovery_limit, || async {
            for slot in 0..2 {
                if !self.sender.probe(slot).await {
                    return None;
                }
            }
            Some(Instant::now())
        })
        .await
    }

    /// When the queue has nothing ready, scheduled or in flight and OpenApp equals `expected`.
    async fn wait_recovered(&self, expected: &Model) -> Option<Instant> {
        poll_until(self.scale.recovery_limit, || async {
            let counts = self.cluster.queue.counts().await.ok()?;
            let drained = counts.ready == 0 && counts.scheduled == 0 && counts.in_flight == 0;
            (drained && compare(expected, &self.cluster.openapp.sandbox).is_empty())
                .then(Instant::now)
        })
        .await
    }

    /// Queue depths and counters now.
    async fn counts(&self) -> QueueCounts {
        let queue = &self.cluster.queue;
        poll_until(Duration::from_secs(30), || async {
            queue.counts().await.ok()
        })
        .await
        .unwrap_or_else(|| panic!("queue counts unavailable for 30 s"))
    }

    /// Every dead letter, with its reason.
    async fn dead_letter_lines(&self) -> Vec<DeadLetterLine> {
        let store = DeadLetters::new(&self.cluster.queue);
        let page = store
            .list(&DeadLetterFilter::default(), 0, 10_000)
            .await
            .unwrap_or_else(|e| panic!("cannot list dead letters: {e}"));
        page.items
            .into_iter()
            .map(|d| DeadLetterLine {
                id: d.id,
                reason: d.reason.as_str().to_owned(),
                event_id: d.event_id,
                user_id: d.user_id,
                action: d.action,
                attempts: d.attempts,
                last_error: d.last_error,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_every_fault_and_openapp_converges_to_the_model() {
    let run_started = Instant::now();
    let scale = Scale::from_env();
    let seed = seed_from_env();
    let scenario = Arc::new(scenario::generate(scale.residents, scale.events, seed));
    eprintln!(
        "[faults] {} scale, seed {seed}: {} events in {} sends",
        scale.name,
        scenario.events.len(),
        scenario.sends.len()
    );

    let cluster = Cluster::start(Appendfsync::Always).await;
    let redis_version = cluster.redis.info_field("server", "redis_version").await;
    let calls = CallLog::start(cluster.openapp.sandbox.clone());
    let urls = [cluster.webhook_url(0), cluster.webhook_url(1)];
    // The everysec measurement needs traffic of its own: hold back what it sends in its window.
    let held_back = if scale.everysec {
        let rate = scale.rate * faults::EVERYSEC_RATE_FACTOR;
        ((rate * scale.fault.as_secs_f64() * 1.25) as usize).min(scenario.sends.len() / 3)
    } else {
        0
    };
    let sender = Sender::start(
        scenario.clone(),
        urls,
        scale.rate,
        scenario.sends.len() - held_back,
    );
    let mut suite = Suite {
        scale,
        scenario,
        cluster,
        sender,
        calls,
        phases: Vec::new(),
        unaccounted: BTreeSet::new(),
        dead_letters: 0,
        deferred: 0,
    };

    for fault in Fault::PLAN {
        suite.run_phase(fault).await;
    }
    let log = suite.sender.log();
    let strict: Vec<&PhaseFigures> = suite.phases.iter().filter(|p| p.strict).collect();
    let tail = suite.phases.last().expect("the plan has phases");
    let totals = Totals {
        acknowledged: log.acknowledged().count(),
        unacknowledged: log.unacknowledged.len(),
        lost: suite.unaccounted.len(),
        wrong_state: tail.wrong_state,
        dead_letters: suite.dead_letters,
        openapp_calls: strict.iter().map(|p| p.calls.calls).sum(),
        duplicated_calls: strict.iter().map(|p| p.calls.duplicated).sum(),
        rejected_calls: strict.iter().map(|p| p.calls.rejected).sum(),
        unexpected_ingest_statuses: strict
            .iter()
            .map(|p| p.sender.unexpected.values().sum::<u64>())
            .sum(),
        call_log_gaps: suite.calls.gaps(),
    };
    let dead_letters = suite.dead_letter_lines().await;
    let final_tails = suite.cluster.log_tails(15);

    // The weaker setting, measured after the strict checks so it cannot blur them.
    if suite.scale.everysec {
        suite.run_phase(Fault::RedisKillEverysec).await;
    }

    let report = RunReport {
        scale: suite.scale.name.to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        redis_version,
        wall_secs: secs(run_started.elapsed()),
        scenario: suite.scenario.stats.clone(),
        everysec_sends: held_back,
        phases: suite.phases.clone(),
        totals,
        dead_letters,
        transport_errors: suite.sender.log().transport_examples,
    };
    let table = report.markdown();
    println!("{table}");
    if let Some(path) = std::env::var_os("FAULT_SUITE_REPORT") {
        let path = PathBuf::from(path);
        report.write_json(&path);
        println!("report written to {}", path.display());
    }

    let sender = suite.sender;
    let work_dir = suite.cluster.dir().display().to_string();
    sender.stop().await;

    // The promises, checked after the figures are out.
    let mut problems: Vec<String> = Vec::new();
    let t = &report.totals;
    if t.unacknowledged > 0 {
        problems.push(format!(
            "{} events were never acknowledged",
            t.unacknowledged
        ));
    }
    if t.lost > 0 || t.wrong_state > 0 {
        problems.push(format!(
            "{} acknowledged events unaccounted for, {} residents in the wrong state at the end",
            t.lost, t.wrong_state
        ));
    }
    if t.rejected_calls > 0 || t.unexpected_ingest_statuses > 0 {
        problems.push(format!(
            "{} OpenApp calls were rejected and {} ingest answers were unexpected",
            t.rejected_calls, t.unexpected_ingest_statuses
        ));
    }
    for p in report.phases.iter().filter(|p| p.strict) {
        if p.lost > 0 || p.lost_at_restart > 0 || p.wrong_state > 0 {
            problems.push(format!(
                "phase {}: {} lost, {} missing right after a Redis restart, {} residents wrong",
                p.phase, p.lost, p.lost_at_restart, p.wrong_state
            ));
        }
        problems.extend(p.failures.iter().map(|f| format!("phase {}: {f}", p.phase)));
    }
    // A fault that never reached the sender tested nothing.
    for p in &report.phases {
        let refused = matches!(p.phase, "c" | "d" | "e");
        if refused && p.sender.unavailable == 0 {
            problems.push(format!(
                "phase {}: ingest never answered 503, so the fault did not bite",
                p.phase
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the fault suite found problems:\n- {}\n{table}\nwork directory: {work_dir}\nlog tails after the final check:\n{final_tails}",
        problems.join("\n- ")
    );
}
