//! The reference model the suite checks OpenApp against: small, pure and independent of
//! lease-sync's code.
//!
//! Per resident (OpenApp integration, OpenApp user) and lease, the event with the greatest
//! version wins; a version is `occurred_at`, then `lease.ended` over `lease.signed`, then the
//! event id (byte-wise). An event whose version is not greater than the recorded one changes
//! nothing. A resident is present in OpenApp iff at least one of their leases is active (its
//! winning event is `lease.signed`). Access windows are not modelled; the suite sends none.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The order of events for one lease. Field order is the comparison order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// `occurred_at`, milliseconds since the epoch.
    pub occurred_ms: i64,
    /// 0 for `lease.signed`, 1 for `lease.ended`: at equal times, ended wins.
    pub rank: u8,
    /// The event id, the last tie-breaker.
    pub event_id: String,
}

/// What one event says, as far as the model is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFact {
    /// The OpenApp integration of the event's building.
    pub integration: String,
    /// The lease.
    pub lease: String,
    /// The residents the event names (OpenApp user ids).
    pub users: Vec<String>,
    /// The event's version.
    pub version: Version,
}

/// A resident: (integration, user).
pub type Resident = (String, String);

/// Folded state: per resident, per lease, the winning version.
#[derive(Debug, Default, Clone)]
pub struct Model {
    residents: HashMap<Resident, HashMap<String, Version>>,
}

impl Model {
    /// The state after every fact in `facts`, in any order.
    pub fn fold<'a>(facts: impl IntoIterator<Item = &'a LeaseFact>) -> Self {
        let mut model = Self::default();
        for fact in facts {
            model.apply(fact);
        }
        model
    }

    /// Folds one fact in; stale facts (version not greater) change nothing.
    pub fn apply(&mut self, fact: &LeaseFact) {
        for user in &fact.users {
            let leases = self
                .residents
                .entry((fact.integration.clone(), user.clone()))
                .or_default();
            match leases.get(&fact.lease) {
                Some(recorded) if *recorded >= fact.version => {}
                _ => {
                    leases.insert(fact.lease.clone(), fact.version.clone());
                }
            }
        }
    }

    /// Whether `resident` should be an OpenApp building user.
    pub fn is_present(&self, resident: &Resident) -> bool {
        self.residents
            .get(resident)
            .is_some_and(|leases| leases.values().any(|v| v.rank == 0))
    }

    /// Desired OpenApp membership: integration → users.
    pub fn present(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut present: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for resident in self.residents.keys() {
            if self.is_present(resident) {
                present
                    .entry(resident.0.clone())
                    .or_default()
                    .insert(resident.1.clone());
            }
        }
        present
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom as _;

    use super::*;

    fn fact(lease: &str, user: &str, at: i64, signed: bool, id: &str) -> LeaseFact {
        LeaseFact {
            integration: "I".into(),
            lease: lease.into(),
            users: vec![user.into()],
            version: Version {
                occurred_ms: at,
                rank: u8::from(!signed),
                event_id: id.into(),
            },
        }
    }

    fn present(facts: &[LeaseFact], user: &str) -> bool {
        Model::fold(facts).is_present(&("I".into(), user.into()))
    }

    #[test]
    fn the_newest_event_of_a_lease_wins_whatever_the_arrival_order() {
        let facts = vec![
            fact("L1", "u", 1, true, "e1"),
            fact("L1", "u", 2, false, "e2"),
            fact("L1", "u", 3, true, "e3"),
            fact("L2", "v", 5, true, "e4"),
            fact("L2", "v", 9, false, "e5"),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut shuffled = facts.clone();
            shuffled.shuffle(&mut rng);
            assert!(present(&shuffled, "u"));
            assert!(!present(&shuffled, "v"));
        }
    }

    #[test]
    fn at_equal_times_ended_beats_signed_whatever_the_ids() {
        for (signed_id, ended_id) in [("a", "b"), ("b", "a")] {
            let facts = [
                fact("L", "u", 4, true, signed_id),
                fact("L", "u", 4, false, ended_id),
            ];
            assert!(!present(&facts, "u"));
            assert!(!present(&[facts[1].clone(), facts[0].clone()], "u"));
        }
    }

    #[test]
    fn at_equal_times_and_types_the_greater_event_id_wins() {
        // Same type, so presence cannot tell; the recorded version can.
        let facts = [fact("L", "u", 4, true, "b"), fact("L", "u", 4, true, "a")];
        let model = Model::fold(&facts);
        let leases = &model.residents[&("I".to_owned(), "u".to_owned())];
        assert_eq!(leases["L"].event_id, "b");
    }

    #[test]
    fn a_resident_stays_present_while_any_lease_is_active() {
        let facts = [
            fact("L1", "u", 1, true, "e1"),
            fact("L2", "u", 2, true, "e2"),
            fact("L1", "u", 3, false, "e3"),
        ];
        assert!(present(&facts, "u"));
        let all_ended = [
            facts[0].clone(),
            facts[2].clone(),
            fact("L2", "u", 4, false, "e4"),
        ];
        assert!(!present(&all_ended, "u"));
    }

    #[test]
    fn a_replayed_or_older_event_changes_nothing() {
        let ended = fact("L", "u", 10, false, "e2");
        let facts = [
            fact("L", "u", 5, true, "e1"),
            ended.clone(),
            ended,
            fact("L", "u", 5, true, "e1"),
        ];
        assert!(!present(&facts, "u"));
    }

    #[test]
    fn buildings_are_separate_residents() {
        let mut other = fact("L9", "u", 1, true, "e9");
        other.integration = "J".into();
        let model = Model::fold(&[fact("L1", "u", 1, false, "e1"), other]);
        assert!(!model.is_present(&("I".into(), "u".into())));
        assert!(model.is_present(&("J".into(), "u".into())));
    }
}
