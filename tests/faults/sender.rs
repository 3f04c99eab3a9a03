//! The sender simulator: a property-management system posting the scenario's signed events
//! through a few concurrent lanes at a set rate, alternating the two ingest processes, and
//! retrying every post that did not get a 2xx (503, connection refused while an ingest
//! restarts, timeouts) with a short backoff until it does. It records, per phase, what every
//! post got back and which event ids were acknowledged (202 queued or 200 duplicate).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lease_sync::signature::standard_webhooks;
use lease_sync_testkit::wait_until;
use rand::Rng as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::cluster::SECRET;
use crate::scenario::{Event, Scenario};

/// Concurrent posting lanes.
pub const LANES: usize = 6;

/// Limit on one post; ingest answers within `http.enqueue_timeout_ms` (2 s) when it runs.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest the sender keeps retrying one event before recording it as never acknowledged.
const EVENT_DEADLINE: Duration = Duration::from_secs(180);

/// Most posts of one event (the deadline normally ends the retries first).
const MAX_POSTS_PER_EVENT: u32 = 10_000;

/// What the posts of one phase got back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SendFigures {
    /// Posts made, retries included.
    pub posts: u64,
    /// 202 `queued`.
    pub queued: u64,
    /// 200 `duplicate`.
    pub duplicate: u64,
    /// 503 `queue_unavailable`.
    pub unavailable: u64,
    /// Connection refused (an ingest process restarting).
    pub refused: u64,
    /// No answer within the post timeout.
    pub timeouts: u64,
    /// Other transport errors (connection reset, …); see [`SendLog::transport_examples`].
    pub transport_errors: u64,
    /// Any other status, by code: never expected, every event is valid.
    pub unexpected: BTreeMap<u16, u64>,
}

impl SendFigures {
    /// Posts that did not get a 2xx and were retried.
    pub fn retried(&self) -> u64 {
        self.unavailable
            + self.refused
            + self.timeouts
            + self.transport_errors
            + self.unexpected.values().sum::<u64>()
    }
}

/// Everything the sender recorded.
#[derive(Debug, Clone, Default)]
pub struct SendLog {
    /// Per event: the phase of its first acknowledgement and when it came.
    pub first_ack: Vec<Option<(usize, Instant)>>,
    /// Per event: how many 202 answers it got. Two mean the dedupe marker of an acknowledged
    /// event was gone when it was sent again: Redis lost an acknowledged write.
    pub queued_answers: Vec<u32>,
    /// Per phase.
    pub phases: Vec<SendFigures>,
    /// Events given up after [`EVENT_DEADLINE`].
    pub unacknowledged: Vec<usize>,
    /// How often each other transport error occurred, by its innermost message.
    pub transport_examples: BTreeMap<String, u64>,
}

impl SendLog {
    fn phase(&mut self, phase: usize) -> &mut SendFigures {
        if self.phases.len() <= phase {
            self.phases.resize_with(phase + 1, SendFigures::default);
        }
        &mut self.phases[phase]
    }

    /// Events acknowledged so far.
    pub fn acknowledged(&self) -> impl Iterator<Item = usize> + '_ {
        self.first_ack
            .iter()
            .enumerate()
            .filter_map(|(event, ack)| ack.map(|_| event))
    }
}

enum PostOutcome {
    Status(u16),
    Refused,
    Timeout,
    Transport(String),
}

struct Shared {
    scenario: Arc<Scenario>,
    urls: [String; 2],
    client: reqwest::Client,
    /// Next position in `scenario.sends`.
    next: AtomicUsize,
    /// Alternates the ingest processes.
    turn: AtomicUsize,
    /// Lanes between taking a send and recording its acknowledgement.
    in_flight: AtomicUsize,
    /// Phase the next outcomes are recorded under.
    phase: AtomicUsize,
    /// Whether lanes may take sends, and up to which position.
    gate: watch::Sender<Gate>,
    /// One tick per send; `None` sends as fast as the lanes go.
    pacer: tokio::sync::Mutex<Option<Interval>>,
    log: Mutex<SendLog>,
    stop: CancellationToken,
}

/// When lanes may take the next send.
#[derive(Debug, Clone, Copy)]
struct Gate {
    paused: bool,
    /// Sends at positions from here on wait for a higher limit.
    limit: usize,
}

/// An interval of one tick per send at `rate` per second.
fn pacer(rate: f64) -> Interval {
    let mut pacer = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    pacer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    pacer
}

/// The running sender. Starts paused.
pub struct Sender {
    shared: Arc<Shared>,
    lanes: Vec<JoinHandle<()>>,
}

impl Sender {
    /// Starts [`LANES`] lanes posting `scenario` to the two ingest URLs at `rate` events per
    /// second, paused until [`Sender::resume`], and only the sends before position `limit`
    /// until [`Sender::set_limit`] allows more.
    pub fn start(scenario: Arc<Scenario>, urls: [String; 2], rate: f64, limit: usize) -> Self {
        let client = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_else(|e| panic!("cannot build the sender's HTTP client: {e}"));
        let events = scenario.events.len();
        let shared = Arc::new(Shared {
            scenario,
            urls,
            client,
            next: AtomicUsize::new(0),
            turn: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            phase: AtomicUsize::new(0),
            gate: watch::Sender::new(Gate {
                paused: true,
                limit,
            }),
            pacer: tokio::sync::Mutex::new(Some(pacer(rate))),
            log: Mutex::new(SendLog {
                first_ack: vec![None; events],
                queued_answers: vec![0; events],
                ..SendLog::default()
            }),
            stop: CancellationToken::new(),
        });
        let lanes = (0..LANES)
            .map(|_| tokio::spawn(lane(shared.clone())))
            .collect();
        Self { shared, lanes }
    }

    /// Records later outcomes under `phase`.
    pub fn set_phase(&self, phase: usize) {
        self.shared.phase.store(phase, SeqCst);
    }

    /// Lets the lanes post.
    pub fn resume(&self) {
        self.shared.gate.send_modify(|g| g.paused = false);
    }

    /// Stops taking new sends and waits (bounded) until every send taken is acknowledged.
    pub async fn pause(&self, limit: Duration) {
        self.shared.gate.send_modify(|g| g.paused = true);
        let shared = &self.shared;
        wait_until(
            "the sender's posts in flight to be acknowledged",
            limit,
            || async { (shared.in_flight.load(SeqCst) == 0).then_some(()) },
        )
        .await;
    }

    /// Posts at `rate` events per second from now on, or as fast as the lanes go (`None`).
    pub async fn set_rate(&self, rate: Option<f64>) {
        *self.shared.pacer.lock().await = rate.map(pacer);
    }

    /// Lets the lanes take sends up to (not including) position `limit`.
    pub fn set_limit(&self, limit: usize) {
        self.shared.gate.send_modify(|g| g.limit = limit);
    }

    /// True once every send below the limit has been taken and acknowledged (or given up).
    pub fn finished(&self) -> bool {
        let limit = self.shared.gate.borrow().limit;
        self.shared.next.load(SeqCst) >= limit.min(self.shared.scenario.sends.len())
            && self.shared.in_flight.load(SeqCst) == 0
    }

    /// Sends taken so far.
    pub fn progress(&self) -> usize {
        self.shared
            .next
            .load(SeqCst)
            .min(self.shared.scenario.sends.len())
    }

    /// A copy of everything recorded so far.
    pub fn log(&self) -> SendLog {
        self.shared.lock().clone()
    }

    /// Posts an already acknowledged event again to ingest `slot`, outside the log; true on a
    /// 2xx. Tells whether that ingest accepts (and reaches Redis) again after a fault.
    pub async fn probe(&self, slot: usize) -> bool {
        let event = self.shared.lock().acknowledged().next();
        let Some(event) = event else {
            return false;
        };
        let event = &self.shared.scenario.events[event];
        matches!(
            self.shared.post(&self.shared.urls[slot], event).await,
            PostOutcome::Status(200..=299)
        )
    }

    /// Stops every lane.
    pub async fn stop(mut self) {
        self.shared.stop.cancel();
        for lane in std::mem::take(&mut self.lanes) {
            let _ = lane.await;
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// One lane: wait while paused or at the limit, keep the pace, take the next send, post it
/// until 2xx.
async fn lane(shared: Arc<Shared>) {
    let mut gate = shared.gate.subscribe();
    let sends = shared.scenario.sends.len();
    // Bounded by the number of sends: every pass takes one, or loses a race for one to
    // another lane or to a pause.
    for _ in 0..sends.saturating_mul(4).max(1_000) {
        // `next` only grows, so the condition can only turn true through a gate change.
        let open = tokio::select! {
            g = gate.wait_for(|g| !g.paused && shared.next.load(SeqCst) < g.limit) => g.is_ok(),
            () = shared.stop.cancelled() => false,
        };
        if !open {
            return;
        }
        {
            let mut pacer = shared.pacer.lock().await;
            if let Some(pacer) = pacer.as_mut() {
                tokio::select! {
                    _ = pacer.tick() => {}
                    () = shared.stop.cancelled() => return,
                }
            }
        }
        // Counted before looking at the gate, so `pause` cannot miss this send.
        shared.in_flight.fetch_add(1, SeqCst);
        let Gate { paused, limit } = *shared.gate.borrow();
        let position = shared.next.load(SeqCst);
        let taken = !paused
            && position < limit.min(sends)
            && shared
                .next
                .compare_exchange(position, position + 1, SeqCst, SeqCst)
                .is_ok();
        if taken {
            shared.deliver(shared.scenario.sends[position]).await;
        }
        shared.in_flight.fetch_sub(1, SeqCst);
        if position >= sends {
            return;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SendLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Posts event `index` until it is acknowledged, backing off 25 ms … 1 s between tries.
    async fn deliver(&self, index: usize) {
        let event = &self.scenario.events[index];
        let deadline = Instant::now() + EVENT_DEADLINE;
        for attempt in 0..MAX_POSTS_PER_EVENT {
            let slot = self.turn.fetch_add(1, SeqCst) % 2;
            let outcome = self.post(&self.urls[slot], event).await;
            if self.record(index, &outcome) {
                return;
            }
            if Instant::now() >= deadline || self.stop.is_cancelled() {
                break;
            }
            let cap = 25u64.saturating_mul(1 << attempt.min(6)).min(1_000);
            let backoff = Duration::from_millis(rand::rng().random_range(cap / 2..=cap));
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => {}
            }
        }
        self.lock().unacknowledged.push(index);
    }

    /// One signed post of `event` to `url`, signed at the current time.
    async fn post(&self, url: &str, event: &Event) -> PostOutcome {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = standard_webhooks::sign(SECRET, &event.id, timestamp, &event.body)
            .expect("the suite's webhook secret is valid");
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(event.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body so the connection can be reused.
                let _ = response.bytes().await;
                PostOutcome::Status(status)
            }
            Err(e) if e.is_timeout() => PostOutcome::Timeout,
            Err(e) if e.is_connect() => PostOutcome::Refused,
            Err(e) => PostOutcome::Transport(transport_message(&e)),
        }
    }

    /// Records one outcome under the current phase; true when it acknowledged the event.
    fn record(&self, event: usize, outcome: &PostOutcome) -> bool {
        let phase = self.phase.load(SeqCst);
        let mut log = self.lock();
        let figures = log.phase(phase);
        figures.posts += 1;
        let acknowledged = match outcome {
            PostOutcome::Status(202) => {
                figures.queued += 1;
                log.queued_answers[event] += 1;
                true
            }
            PostOutcome::Status(200) => {
                figures.duplicate += 1;
                true
            }
            PostOutcome::Status(503) => {
                figures.unavailable += 1;
                false
            }
            PostOutcome::Status(other) => {
                *figures.unexpected.entry(*other).or_default() += 1;
                false
            }
            PostOutcome::Refused => {
                figures.refused += 1;
                false
            }
            PostOutcome::Timeout => {
                figures.timeouts += 1;
                false
            }
            PostOutcome::Transport(message) => {
                figures.transport_errors += 1;
                *log.transport_examples.entry(message.clone()).or_default() += 1;
                false
            }
        };
        if acknowledged && log.first_ack[event].is_none() {
            log.first_ack[event] = Some((phase, Instant::now()));
        }
        acknowledged
    }
}

/// The innermost cause of a reqwest error, which names what really happened.
fn transport_message(error: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = error;
    while let Some(inner) = source.source() {
        source = inner;
    }
    source.to_string()
}
