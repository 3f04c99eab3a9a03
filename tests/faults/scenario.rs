//! The events the sender simulator posts: a few hundred (or thousand) residents in two
//! buildings, lease histories with ties, a send order that interleaves and locally shuffles
//! those histories (so events of one lease often arrive out of version order), and re-sends
//! of already delivered event ids.

use std::collections::{HashMap, HashSet, VecDeque};

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cluster::BUILDINGS;
use crate::model::{LeaseFact, Version};

/// Leases whose histories are interleaved at any moment of the send order.
const INTERLEAVED_LEASES: usize = 12;

/// The send order is shuffled within windows of this many events.
const SHUFFLE_WINDOW: usize = 24;

/// Share of sends followed by a re-send of an earlier (or the same) event id.
const DUPLICATE_RATE: f64 = 0.08;

/// A re-send repeats one of this many most recent events.
const DUPLICATE_REACH: usize = 300;

const DAY: i64 = 86_400;

/// One distinct event.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event id (`webhook-id`).
    pub id: String,
    /// The signed JSON body.
    pub body: Vec<u8>,
    /// What the model needs of it.
    pub fact: LeaseFact,
}

/// What the sender posts, in order.
#[derive(Debug)]
pub struct Scenario {
    /// Every distinct event.
    pub events: Vec<Event>,
    /// The send order as indexes into `events`; an index appears more than once when the
    /// event is re-sent.
    pub sends: Vec<usize>,
    /// Its shape, for the report.
    pub stats: ScenarioStats,
}

/// The shape of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioStats {
    /// The seed it was generated from.
    pub seed: u64,
    /// Distinct OpenApp users.
    pub residents: usize,
    /// Distinct leases.
    pub leases: usize,
    /// Distinct events.
    pub events: usize,
    /// Posts the sender makes before any retry.
    pub sends: usize,
    /// Of those, re-sends of an event id already in the order.
    pub duplicate_sends: usize,
    /// Residents with two leases in the same building.
    pub residents_with_two_leases: usize,
    /// Residents with leases in both buildings.
    pub residents_in_both_buildings: usize,
    /// Leases naming two residents.
    pub shared_leases: usize,
    /// Consecutive events of one lease with the same `occurred_at`.
    pub equal_time_pairs: usize,
    /// Sends (first sends only) of an event older than one already sent for its lease:
    /// the events lease-sync must recognise as stale.
    pub stale_arrivals: usize,
}

struct LeasePlan {
    id: String,
    building: usize,
    users: Vec<String>,
}

/// A resident's OpenApp user id.
fn user_id(index: usize) -> String {
    format!("res-{index:05}")
}

/// Generates about `target_events` events for `residents` residents from `seed`.
pub fn generate(residents: usize, target_events: usize, seed: u64) -> Scenario {
    assert!(residents >= 2, "a scenario needs at least two residents");
    let mut rng = StdRng::seed_from_u64(seed);
    let now = OffsetDateTime::now_utc().unix_timestamp();

    // Leases: one per resident; a second one in the same building for about one resident in
    // five, one in the other building for one in twenty; one lease in ten is shared.
    let mut leases: Vec<LeasePlan> = Vec::new();
    let (mut two_leases, mut both_buildings) = (0, 0);
    for r in 0..residents {
        let home = usize::from(!rng.random_bool(0.6));
        let mut add = |building: usize| {
            let id = format!("L-{:05}", leases.len());
            leases.push(LeasePlan {
                id,
                building,
                users: vec![user_id(r)],
            });
        };
        add(home);
        if rng.random_bool(0.2) {
            add(home);
            two_leases += 1;
        }
        if rng.random_bool(0.05) {
            add(1 - home);
            both_buildings += 1;
        }
    }
    let mut shared_leases = 0;
    for lease in &mut leases {
        if rng.random_bool(0.1) {
            let roommate = user_id(rng.random_range(0..residents));
            if !lease.users.contains(&roommate) {
                lease.users.push(roommate);
                shared_leases += 1;
            }
        }
    }

    // Histories: 1 to 2·average−1 events per lease, mostly alternating signed and ended, a few
    // minutes to an hour apart, 15 % at the very same second as the previous one. Event ids
    // are random, so their order says nothing about time.
    let average = (target_events as f64 / leases.len() as f64).max(1.0);
    let most = ((2.0 * average).round() as usize).saturating_sub(1).max(1);
    let mut ids: HashSet<String> = HashSet::new();
    let mut events: Vec<Event> = Vec::new();
    let mut histories: Vec<Vec<usize>> = Vec::new();
    let mut equal_time_pairs = 0;
    for lease in &leases {
        let count = rng.random_range(1..=most);
        let mut at = now - rng.random_range(2 * DAY..60 * DAY);
        let mut signed = rng.random_bool(0.85);
        let mut history = Vec::with_capacity(count);
        for k in 0..count {
            if k > 0 {
                if rng.random_bool(0.75) {
                    signed = !signed;
                }
                if rng.random_bool(0.15) {
                    equal_time_pairs += 1;
                } else {
                    at += rng.random_range(1..3_600);
                }
            }
            let id = unique_id(&mut rng, &mut ids);
            history.push(events.len());
            events.push(event(id, lease, at, signed));
        }
        histories.push(history);
    }

    // Send order: interleave a few histories at a time, each in version order, then shuffle
    // within small windows so that events of one lease arrive out of order now and then.
    let mut waiting: VecDeque<usize> = {
        let mut order: Vec<usize> = (0..leases.len()).collect();
        order.shuffle(&mut rng);
        order.into()
    };
    let mut pool: Vec<(usize, usize)> = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(events.len());
    while !pool.is_empty() || !waiting.is_empty() {
        while pool.len() < INTERLEAVED_LEASES {
            match waiting.pop_front() {
                Some(lease) => pool.push((lease, 0)),
                None => break,
            }
        }
        let pick = rng.random_range(0..pool.len());
        let (lease, next) = pool[pick];
        order.push(histories[lease][next]);
        if next + 1 == histories[lease].len() {
            pool.swap_remove(pick);
        } else {
            pool[pick].1 = next + 1;
        }
    }
    for window in order.chunks_mut(SHUFFLE_WINDOW) {
        window.shuffle(&mut rng);
    }

    // Re-sends of event ids already in the order (the sender's own retries come on top).
    let mut sends = Vec::with_capacity(order.len() + order.len() / 10);
    let mut duplicate_sends = 0;
    for (position, &event) in order.iter().enumerate() {
        sends.push(event);
        if rng.random_bool(DUPLICATE_RATE) {
            let back = rng.random_range(0..=position.min(DUPLICATE_REACH - 1));
            sends.push(order[position - back]);
            duplicate_sends += 1;
        }
    }

    let stale_arrivals = stale_arrivals(&events, &order);
    let stats = ScenarioStats {
        seed,
        residents,
        leases: leases.len(),
        events: events.len(),
        sends: sends.len(),
        duplicate_sends,
        residents_with_two_leases: two_leases,
        residents_in_both_buildings: both_buildings,
        shared_leases,
        equal_time_pairs,
        stale_arrivals,
    };
    Scenario {
        events,
        sends,
        stats,
    }
}

/// A fresh random event id (`evt-` and 12 hex digits), unique within the scenario.
fn unique_id(rng: &mut StdRng, taken: &mut HashSet<String>) -> String {
    for _ in 0..1_000 {
        let id = format!("evt-{:012x}", rng.random::<u64>() & 0xffff_ffff_ffff);
        if taken.insert(id.clone()) {
            return id;
        }
    }
    panic!("could not draw a unique event id in 1,000 tries");
}

fn event(id: String, lease: &LeasePlan, at: i64, signed: bool) -> Event {
    let building = &BUILDINGS[lease.building];
    let occurred_at = OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| panic!("{at} is not a representable time"));
    let residents: Vec<_> = lease
        .users
        .iter()
        .map(|u| json!({"openapp_user_id": u, "external_id": format!("T-{u}")}))
        .collect();
    let body = serde_json::to_vec(&json!({
        "type": if signed { "lease.signed" } else { "lease.ended" },
        "occurred_at": occurred_at,
        "lease": {"id": lease.id, "property_id": building.property, "unit": "4B"},
        "residents": residents,
    }))
    .expect("a JSON value serializes");
    Event {
        fact: LeaseFact {
            integration: building.integration.to_owned(),
            lease: lease.id.clone(),
            users: lease.users.clone(),
            version: Version {
                occurred_ms: at * 1_000,
                rank: u8::from(!signed),
                event_id: id.clone(),
            },
        },
        id,
        body,
    }
}

/// First sends of an event older than one already sent for the same lease.
fn stale_arrivals(events: &[Event], order: &[usize]) -> usize {
    let mut newest: HashMap<&str, &Version> = HashMap::new();
    let mut stale = 0;
    for &index in order {
        let fact = &events[index].fact;
        match newest.get(fact.lease.as_str()) {
            Some(seen) if **seen > fact.version => stale += 1,
            _ => {
                newest.insert(&fact.lease, &fact.version);
            }
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_has_the_promised_shape() {
        let scenario = generate(300, 1_500, 42);
        let stats = &scenario.stats;
        assert!((1_000..=2_200).contains(&stats.events), "{stats:?}");
        assert!(stats.residents_with_two_leases > 0, "{stats:?}");
        assert!(stats.residents_in_both_buildings > 0, "{stats:?}");
        assert!(stats.shared_leases > 0, "{stats:?}");
        assert!(stats.equal_time_pairs > 0, "{stats:?}");
        assert!(stats.stale_arrivals > 0, "{stats:?}");
        assert!(stats.duplicate_sends > 0, "{stats:?}");
        let distinct: HashSet<usize> = scenario.sends.iter().copied().collect();
        assert_eq!(distinct.len(), scenario.events.len(), "every event is sent");
    }
}
