//! Tally of the calls the sandbox OpenApp received, per phase.
//!
//! The sandbox records every call with the status it answered (before any injected delay),
//! keeping the last [`MAX_RECORDED_CALLS`]; a background task copies new ones out often
//! enough that none is missed. The sandbox runs with `conflict_on_existing`, so a call that
//! changed nothing is visible in its status: 409 on an add, 404 on a remove.
//!
//! A **duplicated call** is such a no-op whose effect the resident's previous processed call
//! had already achieved: an add after an add, a remove after a remove. A first remove of
//! someone OpenApp never had is a needed "ensure absent", not a duplicate; it is counted
//! apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lease_sync_sandbox::{MAX_RECORDED_CALLS, RecordedCall, Sandbox};
use serde::Serialize;
use tokio::task::JoinHandle;

/// How often new calls are copied out of the sandbox.
const COLLECT_EVERY: Duration = Duration::from_millis(250);

/// Calls of one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallFigures {
    /// Every call to the building-users routes.
    pub calls: u64,
    /// `GET` (integration existence checks).
    pub lists: u64,
    /// Adds that added (201).
    pub added: u64,
    /// Removes that removed (204).
    pub removed: u64,
    /// Adds and removes that changed nothing because the same call had already been made.
    pub duplicated: u64,
    /// Removes of someone OpenApp never had (404, no earlier call for them).
    pub absent_removes: u64,
    /// Answered with an injected fault (429, 5xx): nothing applied.
    pub injected: u64,
    /// Held without an answer (scripted hang).
    pub hung: u64,
    /// Any other answer (400, 401, 422, …): never expected.
    pub rejected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Present,
    Absent,
}

#[derive(Default)]
struct Tally {
    phase: usize,
    last_request_id: Option<String>,
    /// Per (integration, user): the state the last processed add or remove left.
    effects: HashMap<(String, String), Effect>,
    phases: Vec<CallFigures>,
    /// Times the sandbox may have dropped calls before they were copied out.
    gaps: u64,
}

impl Tally {
    fn absorb(&mut self, calls: &[RecordedCall]) {
        let start = match &self.last_request_id {
            None => 0,
            Some(last) => match calls.iter().rposition(|c| &c.request_id == last) {
                Some(position) => position + 1,
                None => {
                    if calls.len() >= MAX_RECORDED_CALLS {
                        self.gaps += 1;
                    }
                    0
                }
            },
        };
        let Some(newest) = calls.last() else {
            return;
        };
        self.last_request_id = Some(newest.request_id.clone());
        if self.phases.len() <= self.phase {
            self.phases
                .resize_with(self.phase + 1, CallFigures::default);
        }
        for call in &calls[start..] {
            let figures = &mut self.phases[self.phase];
            figures.calls += 1;
            let resident = (
                call.integration_id.clone(),
                call.user_id.clone().unwrap_or_default(),
            );
            let previous = self.effects.get(&resident).copied();
            let settled = match (call.method.as_str(), call.status) {
                ("GET", _) => {
                    figures.lists += 1;
                    None
                }
                (_, 0) => {
                    figures.hung += 1;
                    None
                }
                (_, 429 | 500..=599) => {
                    figures.injected += 1;
                    None
                }
                ("POST", 200 | 201) => {
                    figures.added += 1;
                    Some(Effect::Present)
                }
                ("DELETE", 200 | 204) => {
                    figures.removed += 1;
                    Some(Effect::Absent)
                }
                ("POST", 409) => {
                    figures.duplicated += 1;
                    Some(Effect::Present)
                }
                ("DELETE", 404) => {
                    if previous == Some(Effect::Absent) {
                        figures.duplicated += 1;
                    } else {
                        figures.absent_removes += 1;
                    }
                    Some(Effect::Absent)
                }
                _ => {
                    figures.rejected += 1;
                    None
                }
            };
            if let Some(effect) = settled {
                self.effects.insert(resident, effect);
            }
        }
    }
}

/// Copies the sandbox's calls out in the background and tallies them per phase.
pub struct CallLog {
    sandbox: Sandbox,
    tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl CallLog {
    /// Starts collecting from `sandbox`, under phase 0.
    pub fn start(sandbox: Sandbox) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let task = {
            let sandbox = sandbox.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(COLLECT_EVERY);
                loop {
                    ticker.tick().await;
                    let calls = sandbox.calls();
                    lock(&tally).absorb(&calls);
                }
            })
        };
        Self {
            sandbox,
            tally,
            task,
        }
    }

    /// Collects what is new, then counts later calls under `phase`.
    pub fn set_phase(&self, phase: usize) {
        self.collect();
        lock(&self.tally).phase = phase;
    }

    /// Copies out the calls made so far.
    pub fn collect(&self) {
        let calls = self.sandbox.calls();
        lock(&self.tally).absorb(&calls);
    }

    /// The figures of `phase` (collected first).
    pub fn phase(&self, phase: usize) -> CallFigures {
        self.collect();
        lock(&self.tally)
            .phases
            .get(phase)
            .cloned()
            .unwrap_or_default()
    }

    /// Times calls may have been missed (0 unless more than the sandbox keeps came in
    /// between two collections).
    pub fn gaps(&self) -> u64 {
        lock(&self.tally).gaps
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}
