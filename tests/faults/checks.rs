//! What is checked after every phase, once the queue has drained: durability of every
//! acknowledged event and OpenApp's membership against the model.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use lease_sync::queue::JobQueue;
use lease_sync_sandbox::Sandbox;
use lease_sync_testkit::RedisServer;
use serde::Serialize;

use crate::cluster::{BUILDINGS, SOURCE, role};
use crate::model::{Model, Resident};
use crate::scenario::Scenario;
use crate::sender::SendLog;

/// Keys checked per pipeline.
const CHUNK: usize = 500;

/// The events among `events` whose dedupe marker is not in Redis. Ingest writes the marker
/// and the event's jobs in one Lua script, so a missing marker means the acknowledged event is
/// gone.
pub async fn missing_dedupe(
    redis: &RedisServer,
    queue: &JobQueue,
    scenario: &Scenario,
    events: &[usize],
) -> Vec<usize> {
    let mut conn = redis.connection().await;
    let mut missing = Vec::new();
    for chunk in events.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for &event in chunk {
            pipe.cmd("EXISTS")
                .arg(queue.keys().dedupe(SOURCE, &scenario.events[event].id));
        }
        let found: Vec<bool> = match tokio::time::timeout(
            Duration::from_secs(10),
            pipe.query_async(&mut conn),
        )
        .await
        {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => panic!("checking dedupe markers failed: {e}"),
            Err(_) => panic!("checking dedupe markers took longer than 10 s"),
        };
        missing.extend(
            chunk
                .iter()
                .zip(found)
                .filter(|(_, present)| !present)
                .map(|(&event, _)| event),
        );
    }
    missing
}

/// A resident whose OpenApp state differs from the model.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// The building's integration.
    pub integration: String,
    /// The user.
    pub user: String,
    /// Whether the model wants them present.
    pub expected: bool,
    /// Whether OpenApp has them.
    pub actual: bool,
    /// Their OpenApp role when present and not the expected one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrong_role: Option<String>,
}

/// Every resident whose OpenApp membership (or role) differs from `model`.
pub fn compare(model: &Model, sandbox: &Sandbox) -> Vec<Mismatch> {
    let present = model.present();
    let mut mismatches = Vec::new();
    for building in &BUILDINGS {
        let integration = building.integration;
        let members = sandbox.members(integration);
        let expected = present.get(integration).cloned().unwrap_or_default();
        let everyone: BTreeSet<&String> = expected.iter().chain(members.keys()).collect();
        let wanted_role = role(integration);
        for user in everyone {
            let should = expected.contains(user);
            let has = members.get(user);
            let wrong_role = has.filter(|r| **r != wanted_role).cloned();
            if should != has.is_some() || wrong_role.is_some() {
                mismatches.push(Mismatch {
                    integration: integration.to_owned(),
                    user: user.clone(),
                    expected: should,
                    actual: has.is_some(),
                    wrong_role,
                });
            }
        }
    }
    mismatches
}

/// Acknowledged events not accounted for: their dedupe marker is gone, they were queued twice
/// (the marker vanished in between), or one of their residents is in the wrong state.
pub fn unaccounted(
    scenario: &Scenario,
    log: &SendLog,
    missing: &BTreeSet<usize>,
    wrong: &[Mismatch],
) -> BTreeSet<usize> {
    let wrong: HashSet<Resident> = wrong
        .iter()
        .map(|m| (m.integration.clone(), m.user.clone()))
        .collect();
    log.acknowledged()
        .filter(|&event| {
            let fact = &scenario.events[event].fact;
            missing.contains(&event)
                || log.queued_answers[event] >= 2
                || fact
                    .users
                    .iter()
                    .any(|u| wrong.contains(&(fact.integration.clone(), u.clone())))
        })
        .collect()
}

/// Resident locks held now (per-resident serialization of OpenApp calls) and the longest
/// remaining TTL among them, in ms. A lock whose holder died blocks its resident until the TTL
/// runs out, which bounds recovery after worker and Redis faults. Layout 4 keeps a lock in its
/// resident's hash, earlier layouts in a key of its own: both are counted.
pub async fn resident_locks(redis: &RedisServer, queue: &JobQueue) -> (u64, i64) {
    // `<namespace>:lock:<integration>:<user>`, so with both empty: `<namespace>:lock::`; the
    // same for `resident`.
    let prefix = |key: String| format!("{}*", key.trim_end_matches(':'));
    let mut conn = redis.connection().await;
    let (mut held, mut longest) = (0, 0);
    for key in scan(&mut conn, &prefix(queue.keys().resident_lock("", ""))).await {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or(-2);
        if ttl != -2 {
            held += 1;
            longest = longest.max(ttl);
        }
    }
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    for key in scan(&mut conn, &prefix(queue.keys().resident("", ""))).await {
        let fields: Result<(Option<String>, Option<i64>), _> = redis::cmd("HMGET")
            .arg(&key)
            .arg("lock")
            .arg("lock_until")
            .query_async(&mut conn)
            .await;
        // Redis's clock is this machine's: the test's Redis runs here.
        if let Ok((Some(holder), Some(until))) = fields
            && !holder.is_empty()
            && until > now_ms()
        {
            held += 1;
            longest = longest.max(until - now_ms());
        }
    }
    (held, longest)
}

/// Every key matching `pattern` (at most 10,000 SCAN steps; what a failing step found so far).
async fn scan(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..10_000 {
        let scanned: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await;
        let Ok((next, keys)) = scanned else {
            break;
        };
        found.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    found
}
