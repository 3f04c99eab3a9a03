//! The faults, one phase each, injected while the sender runs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lease_sync_sandbox::{Fault as OpenAppFault, FaultOptions};
use lease_sync_testkit::{Appendfsync, poll_until};

use crate::checks::missing_dedupe;
use crate::cluster::Cluster;
use crate::scale::Scale;
use crate::scenario::Scenario;
use crate::sender::Sender;

/// A phase of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault: the figures to compare the others with.
    Baseline,
    /// (a) SIGKILL a worker mid-call, repeatedly, restarting it.
    WorkerKill,
    /// (b) SIGKILL redis-server and restart it at once.
    RedisKill,
    /// (c) Redis down for a while.
    RedisOutage,
    /// (d) Redis at maxmemory (noeviction): writes refused.
    RedisOom,
    /// (e) Redis paused with SIGSTOP, then SIGCONT.
    RedisPause,
    /// (f) OpenApp answering 5xx, 429 + Retry-After, slowly, or too late.
    OpenAppFaults,
    /// (g) Rolling restart of the worker processes.
    WorkerRollingRestart,
    /// (h) Rolling restart of the ingest processes.
    IngestRollingRestart,
    /// (i) Redis Sentinel failover to a replica, every process in sentinel mode.
    SentinelFailover,
    /// The rest of the events, unpaced, no fault; ends with the final check.
    Tail,
    /// (b) again with `appendfsync everysec`: a measurement, not a promise.
    RedisKillEverysec,
}

impl Fault {
    /// The strict phases in the order they run (the everysec measurement comes after them).
    pub const PLAN: [Fault; 11] = [
        Fault::Baseline,
        Fault::WorkerKill,
        Fault::RedisKill,
        Fault::RedisOutage,
        Fault::RedisOom,
        Fault::RedisPause,
        Fault::OpenAppFaults,
        Fault::WorkerRollingRestart,
        Fault::IngestRollingRestart,
        Fault::SentinelFailover,
        Fault::Tail,
    ];

    /// Short name used in the report.
    pub fn key(self) -> &'static str {
        match self {
            Fault::Baseline => "baseline",
            Fault::WorkerKill => "a",
            Fault::RedisKill => "b",
            Fault::RedisOutage => "c",
            Fault::RedisOom => "d",
            Fault::RedisPause => "e",
            Fault::OpenAppFaults => "f",
            Fault::WorkerRollingRestart => "g",
            Fault::IngestRollingRestart => "h",
            Fault::SentinelFailover => "i",
            Fault::Tail => "tail",
            Fault::RedisKillEverysec => "b′",
        }
    }

    /// What the phase does.
    pub fn title(self) -> &'static str {
        match self {
            Fault::Baseline => "no fault",
            Fault::WorkerKill => "SIGKILL a worker mid-call, restart it",
            Fault::RedisKill => "SIGKILL redis-server, restart (appendfsync always)",
            Fault::RedisOutage => "Redis down (SIGTERM), back after a while",
            Fault::RedisOom => "Redis at maxmemory, noeviction",
            Fault::RedisPause => "Redis paused (SIGSTOP ~3 s, SIGCONT)",
            Fault::OpenAppFaults => "OpenApp 500 / 429 + Retry-After / slow / past timeout",
            Fault::WorkerRollingRestart => "rolling restart of the workers (SIGTERM)",
            Fault::IngestRollingRestart => "rolling restart of the ingest processes (SIGTERM)",
            Fault::SentinelFailover => {
                "Redis Sentinel failover to a replica (wait_replicas = 1) during traffic"
            }
            Fault::Tail => "rest of the events, unpaced, no fault",
            Fault::RedisKillEverysec => "SIGKILL redis-server, restart (appendfsync everysec)",
        }
    }

    /// Whether lost events and wrong states fail the suite (everything but the everysec
    /// measurement, whose weaker setting lease-sync does not promise anything for).
    pub fn strict(self) -> bool {
        self != Fault::RedisKillEverysec
    }
}

/// What injecting a fault did.
#[derive(Debug, Default)]
pub struct Injected {
    /// Times the fault was applied.
    pub repetitions: u32,
    /// Acknowledged events whose dedupe marker was gone right after a Redis restart.
    pub lost_at_restart: BTreeSet<usize>,
    /// Observations worth reporting.
    pub notes: Vec<String>,
    /// Things that went wrong (a process that did not exit 0 on SIGTERM, …).
    pub failures: Vec<String>,
}

/// Everything a fault routine needs.
pub struct Target<'a> {
    /// The processes.
    pub cluster: &'a mut Cluster,
    /// The running sender.
    pub sender: &'a Sender,
    /// What it sends.
    pub scenario: &'a Scenario,
    /// Sizes and durations.
    pub scale: &'a Scale,
}

/// Applies `fault` (the sender is running) and returns once it is over.
pub async fn inject(fault: Fault, target: Target<'_>) -> Injected {
    match fault {
        Fault::Baseline => {
            tokio::time::sleep(target.scale.baseline).await;
            Injected::default()
        }
        Fault::WorkerKill => worker_kills(target).await,
        Fault::RedisKill => redis_kills(target).await,
        Fault::RedisOutage => redis_outages(target).await,
        Fault::RedisOom => redis_oom(target).await,
        Fault::RedisPause => redis_pauses(target).await,
        Fault::OpenAppFaults => openapp_faults(target).await,
        Fault::WorkerRollingRestart => worker_rolling_restarts(target).await,
        Fault::IngestRollingRestart => ingest_rolling_restarts(target).await,
        Fault::SentinelFailover => sentinel_failover(target).await,
        Fault::Tail => tail(target).await,
        Fault::RedisKillEverysec => {
            // The sends held back for this phase, at three times the usual rate.
            target.sender.set_limit(usize::MAX);
            target
                .sender
                .set_rate(Some(target.scale.rate * EVERYSEC_RATE_FACTOR))
                .await;
            target
                .cluster
                .redis
                .set_appendfsync(Appendfsync::Everysec)
                .await;
            let Target {
                cluster,
                sender,
                scenario,
                scale,
            } = target;
            let mut injected = redis_kills(Target {
                cluster: &mut *cluster,
                sender,
                scenario,
                scale,
            })
            .await;
            cluster.redis.set_appendfsync(Appendfsync::Always).await;
            injected
                .notes
                .push("appendfsync switched back to always afterwards".into());
            injected
        }
    }
}

/// The everysec measurement sends this many times faster than the other phases.
pub const EVERYSEC_RATE_FACTOR: f64 = 3.0;

/// Sleeps until `at` (pacing the repetitions of a fault).
async fn pace_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

/// Splits the fault window into `reps` equal slots.
fn slots(scale: &Scale, reps: u32) -> (Instant, Duration) {
    (Instant::now(), scale.fault / reps.max(1))
}

/// (a) Every call is held 400 ms, so jobs are mid-call most of the time; a worker is killed
/// once it holds a job in flight, and a replacement is started at once.
async fn worker_kills(target: Target<'_>) -> Injected {
    let Target { cluster, scale, .. } = target;
    let reps = scale.worker_kills;
    cluster.openapp.sandbox.set_faults(FaultOptions {
        delay: Duration::from_millis(400),
        ..FaultOptions::default()
    });
    let (start, slot) = slots(scale, reps);
    let mut mid_call = 0;
    for rep in 0..reps {
        let victim = (rep % 2) as usize;
        let queue = cluster.queue.clone();
        let busy = poll_until(slot.max(Duration::from_secs(2)), || jobs_in_flight(&queue)).await;
        if busy.is_some() {
            mid_call += 1;
        }
        cluster.kill_and_replace_worker(victim).await;
        pace_until(start + slot * (rep + 1)).await;
    }
    cluster.openapp.sandbox.set_faults(FaultOptions::default());
    Injected {
        repetitions: reps,
        notes: vec![format!(
            "{mid_call} of {reps} kills happened while workers held jobs in flight (OpenApp replies held 400 ms)"
        )],
        ..Injected::default()
    }
}

/// `Some` when some worker holds a job (holds are not per process: with both workers busy
/// on 400 ms calls, the victim almost always holds one too).
async fn jobs_in_flight(queue: &lease_sync::queue::JobQueue) -> Option<()> {
    let counts = queue.counts().await.ok()?;
    (counts.in_flight > 0).then_some(())
}

/// (b) SIGKILL redis-server mid-slot and restart it on the same port and directory; right
/// after each restart, every event acknowledged before the kill must still have its dedupe
/// marker (written in the same atomic step as its jobs).
async fn redis_kills(target: Target<'_>) -> Injected {
    let Target {
        cluster,
        sender,
        scenario,
        scale,
    } = target;
    let reps = scale.redis_kills;
    let (start, slot) = slots(scale, reps);
    let mut injected = Injected {
        repetitions: reps,
        ..Injected::default()
    };
    let mut restart_times = Vec::new();
    for rep in 0..reps {
        pace_until(start + slot * rep + slot / 2).await;
        let log = sender.log();
        let before: Vec<usize> = log.acknowledged().collect();
        let killed = Instant::now();
        let last_second = log
            .first_ack
            .iter()
            .flatten()
            .filter(|(_, at)| killed.duration_since(*at) < Duration::from_secs(1))
            .count();
        cluster.redis.kill9();
        cluster.redis.restart().await;
        restart_times.push(killed.elapsed().as_millis());
        let missing = missing_dedupe(&cluster.redis, &cluster.queue, scenario, &before).await;
        injected.notes.push(format!(
            "kill {}: {} events acknowledged before it ({last_second} in its last second), {} of them without their dedupe marker after the restart",
            rep + 1,
            before.len(),
            missing.len()
        ));
        injected.lost_at_restart.extend(missing);
    }
    pace_until(start + slot * reps).await;
    injected.notes.push(format!(
        "appendfsync {}; kill-to-PONG times (ms): {restart_times:?}",
        cluster.redis.appendfsync()
    ));
    injected
}

/// (c) Stop Redis gracefully, keep it down for `scale.outage`, start it again.
async fn redis_outages(target: Target<'_>) -> Injected {
    let Target { cluster, scale, .. } = target;
    let reps = scale.outages;
    let (start, slot) = slots(scale, reps);
    for rep in 0..reps {
        cluster.redis.terminate(Duration::from_secs(10)).await;
        tokio::time::sleep(scale.outage).await;
        cluster.redis.restart().await;
        pace_until(start + slot * (rep + 1)).await;
    }
    Injected {
        repetitions: reps,
        notes: vec![format!("{reps} outage(s) of {:?}", scale.outage)],
        ..Injected::default()
    }
}

/// Headroom above current use when Redis is put at its memory limit.
const OOM_MARGIN_BYTES: u64 = 64 * 1024;

/// (d) `maxmemory` just above current use: with `noeviction`, writes fail with OOM until
/// the limit is lifted (`maxmemory 0`).
async fn redis_oom(target: Target<'_>) -> Injected {
    let Target { cluster, scale, .. } = target;
    let reps = scale.oom_episodes;
    let (start, slot) = slots(scale, reps);
    let mut notes = Vec::new();
    for rep in 0..reps {
        let used: u64 = cluster
            .redis
            .info_field("memory", "used_memory")
            .await
            .parse()
            .unwrap_or_else(|e| panic!("INFO memory used_memory is not a number: {e}"));
        let limit = used + OOM_MARGIN_BYTES;
        cluster
            .redis
            .command(&["CONFIG", "SET", "maxmemory", &limit.to_string()])
            .await;
        notes.push(format!(
            "episode {}: maxmemory {limit} B (used {used} B + {OOM_MARGIN_BYTES} B)",
            rep + 1
        ));
        pace_until(start + slot * rep + slot * 4 / 5).await;
        cluster
            .redis
            .command(&["CONFIG", "SET", "maxmemory", "0"])
            .await;
        pace_until(start + slot * (rep + 1)).await;
    }
    Injected {
        repetitions: reps,
        notes,
        ..Injected::default()
    }
}

/// (e) SIGSTOP redis-server for `scale.pause`, then SIGCONT: every connection stays open but
/// nothing answers, longer than lease-sync's Redis response timeout (2 s).
async fn redis_pauses(target: Target<'_>) -> Injected {
    let Target { cluster, scale, .. } = target;
    let reps = scale.pauses;
    let (start, slot) = slots(scale, reps);
    for rep in 0..reps {
        cluster.redis.pause();
        tokio::time::sleep(scale.pause).await;
        cluster.redis.resume();
        pace_until(start + slot * (rep + 1)).await;
    }
    Injected {
        repetitions: reps,
        notes: vec![format!("{reps} pause(s) of {:?}", scale.pause)],
        ..Injected::default()
    }
}

/// (f) The fault window is cut into sub-windows that cycle through four OpenApp behaviours;
/// two scripted hangs and two scripted 429s come first.
async fn openapp_faults(target: Target<'_>) -> Injected {
    let Target { cluster, scale, .. } = target;
    let sandbox = &cluster.openapp.sandbox;
    let behaviours: [(&str, FaultOptions); 4] = [
        (
            "500 to 30 % of calls",
            FaultOptions {
                status: Some(500),
                rate: 0.3,
                ..FaultOptions::default()
            },
        ),
        (
            "429 with Retry-After: 1 to 30 % of calls",
            FaultOptions {
                status: Some(429),
                rate: 0.3,
                retry_after: Some("1".into()),
                ..FaultOptions::default()
            },
        ),
        (
            "every reply 300 ms late",
            FaultOptions {
                delay: Duration::from_millis(300),
                ..FaultOptions::default()
            },
        ),
        (
            "every reply 1.5 s late (past the 1 s client timeout: applied, unanswered), 503 to 20 %",
            FaultOptions {
                status: Some(503),
                rate: 0.2,
                delay: Duration::from_millis(1_500),
                ..FaultOptions::default()
            },
        ),
    ];
    for _ in 0..2 {
        sandbox.push_fault(OpenAppFault::Hang);
        sandbox.push_fault(OpenAppFault::Status {
            status: 429,
            retry_after: Some("1".into()),
        });
    }
    let reps = scale.openapp_windows;
    let (start, slot) = slots(scale, reps);
    for rep in 0..reps {
        sandbox.set_faults(behaviours[rep as usize % behaviours.len()].1.clone());
        pace_until(start + slot * (rep + 1)).await;
    }
    sandbox.set_faults(FaultOptions::default());
    let mut notes = vec!["2 scripted hangs and 2 scripted 429s first".to_owned()];
    notes.extend(
        behaviours
            .iter()
            .map(|(name, _)| format!("windows of {slot:?}: {name}")),
    );
    Injected {
        repetitions: reps,
        notes,
        ..Injected::default()
    }
}

/// (g) Each round: SIGTERM worker 0 and start its replacement while it drains, then worker 1.
/// Replies are held 300 ms so the SIGTERM finds jobs mid-call. Each old worker must exit 0.
async fn worker_rolling_restarts(target: Target<'_>) -> Injected {
    let Target { cluster, scale, .. } = target;
    cluster.openapp.sandbox.set_faults(FaultOptions {
        delay: Duration::from_millis(300),
        ..FaultOptions::default()
    });
    let rounds = scale.rolling_rounds;
    let (start, slot) = slots(scale, rounds);
    let mut failures = Vec::new();
    for round in 0..rounds {
        for victim in 0..2 {
            let status = cluster.replace_worker_gracefully(victim).await;
            if !status.success() {
                failures.push(format!(
                    "round {}: worker {victim} exited with {status} on SIGTERM",
                    round + 1
                ));
            }
        }
        pace_until(start + slot * (round + 1)).await;
    }
    cluster.openapp.sandbox.set_faults(FaultOptions::default());
    Injected {
        repetitions: rounds * 2,
        notes: vec!["OpenApp replies held 300 ms during the restarts".into()],
        failures,
        ..Injected::default()
    }
}

/// (i) A replica and three sentinels join; every process restarts (rolling) in sentinel mode
/// with `wait_replicas = 1`; then `SENTINEL FAILOVER` while the sender runs. From here on the
/// suite runs on the promoted replica, and the phase's checks find every event acknowledged
/// before, during and after the failover there. Both ingest processes must follow within
/// 30 s (their `/readyz` names the new primary).
async fn sentinel_failover(target: Target<'_>) -> Injected {
    let Target { cluster, scale, .. } = target;
    let started = Instant::now();
    let failures = cluster.switch_to_sentinel().await;
    let switched = started.elapsed();
    let took = cluster.sentinel_failover().await;
    let mut failures = failures;
    // Each ingest process follows: its `/readyz` names the new primary (they ask the sentinels
    // every second).
    let primary = Some(format!("127.0.0.1:{}", cluster.redis.port()));
    let followed = poll_until(Duration::from_secs(30), || async {
        let named = cluster.ingest_primaries().await;
        named.iter().all(|p| *p == primary).then_some(())
    })
    .await;
    if followed.is_none() {
        failures.push(format!(
            "30 s after the failover, the ingest processes' /readyz named {:?}, not {primary:?}",
            cluster.ingest_primaries().await
        ));
    }
    pace_until(started + scale.fault.max(switched + took)).await;
    Injected {
        repetitions: 1,
        notes: vec![format!(
            "switched every process to sentinel mode (rolling restart) in {:.1} s; the sentinels promoted the replica {:.1} s after SENTINEL FAILOVER",
            switched.as_secs_f64(),
            took.as_secs_f64()
        )],
        failures,
        ..Injected::default()
    }
}

/// (h) Each round: SIGTERM ingest 0, wait for its exit, start it on the same port, then
/// ingest 1. The sender meanwhile sees refused connections and retries.
async fn ingest_rolling_restarts(target: Target<'_>) -> Injected {
    let Target { cluster, scale, .. } = target;
    let rounds = scale.rolling_rounds;
    let (start, slot) = slots(scale, rounds);
    let mut failures = Vec::new();
    for round in 0..rounds {
        for victim in 0..2 {
            let status = cluster.restart_ingest(victim).await;
            if !status.success() {
                failures.push(format!(
                    "round {}: ingest {victim} exited with {status} on SIGTERM",
                    round + 1
                ));
            }
        }
        pace_until(start + slot * (round + 1)).await;
    }
    Injected {
        repetitions: rounds * 2,
        failures,
        ..Injected::default()
    }
}

/// The rest of the scenario, as fast as the sender goes.
async fn tail(target: Target<'_>) -> Injected {
    let Target { sender, scale, .. } = target;
    sender.set_rate(None).await;
    let before = sender.progress();
    let done = poll_until(scale.tail_limit, || async {
        sender.finished().then_some(())
    })
    .await;
    let mut injected = Injected::default();
    injected.notes.push(format!(
        "{} sends in the tail",
        sender.progress().saturating_sub(before)
    ));
    if done.is_none() {
        injected.failures.push(format!(
            "the sender did not finish within {:?} ({} of its sends taken)",
            scale.tail_limit,
            sender.progress()
        ));
    }
    injected
}
