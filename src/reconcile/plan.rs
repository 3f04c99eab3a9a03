//! The plan: what to change so that OpenApp shows what the file says, decided from the file,
//! OpenApp's building users and lease-sync's resident state. Pure code; [`super::Reconciler`]
//! gathers the inputs and applies the result.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use time::OffsetDateTime;

use super::input::LeaseRow;
use crate::config::SourceSettings;
use crate::event::{AccessWindow, EventType, Lease, LeaseEvent, Resident, is_valid_path_id};
use crate::resident::{BuildingUser, ResidentState};

/// What queued a reconciliation job (`DeliveryJob::trigger`).
pub const TRIGGER: &str = "reconcile";

/// One property of a building and the role its residents get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildingProperty {
    /// The source's building id.
    pub id: String,
    /// The role granted ([`crate::config::PropertySettings::effective_role`]).
    pub role: String,
}

/// One OpenApp integration and the properties of the source mapped to it (usually one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Building {
    /// OpenApp integration.
    pub integration_id: String,
    /// OpenApp organisation (`X-Org`).
    pub org_id: String,
    /// The source's properties mapped to it, in configuration order.
    pub properties: Vec<BuildingProperty>,
}

impl Building {
    fn property(&self, id: &str) -> Option<&BuildingProperty> {
        self.properties.iter().find(|p| p.id == id)
    }

    /// The role a resident of `property_id` gets: that property's, or the first property's
    /// when the building no longer maps it.
    pub fn role_for(&self, property_id: &str) -> String {
        role_of(&self.properties, property_id)
    }

    /// The property used for synthetic events that name none of their own.
    fn first_property_id(&self) -> String {
        self.properties
            .first()
            .map(|p| p.id.clone())
            .unwrap_or_default()
    }
}

/// The role of `property_id` among `properties`, or of the first one when it is not there.
fn role_of(properties: &[BuildingProperty], property_id: &str) -> String {
    properties
        .iter()
        .find(|p| p.id == property_id)
        .or(properties.first())
        .map(|p| p.role.clone())
        .unwrap_or_default()
}

/// The buildings of `source`: its properties grouped by integration, in configuration order.
pub fn buildings_of(source: &SourceSettings) -> Vec<Building> {
    let mut buildings: Vec<Building> = Vec::new();
    for property in &source.properties {
        let entry = BuildingProperty {
            id: property.id.clone(),
            role: property.effective_role(),
        };
        match buildings
            .iter_mut()
            .find(|b| b.integration_id == property.integration_id)
        {
            Some(building) => building.properties.push(entry),
            None => buildings.push(Building {
                integration_id: property.integration_id.clone(),
                org_id: property.org_id.clone(),
                properties: vec![entry],
            }),
        }
    }
    buildings
}

/// What was observed for one building.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// OpenApp's building users, every role.
    pub members: Vec<BuildingUser>,
    /// lease-sync's state of the members it holds state for, by user id.
    pub residents: BTreeMap<String, ResidentState>,
}

/// A lease a synthetic event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedLease {
    /// `lease.signed` (with the file's window) or `lease.ended` (at once).
    pub event_type: EventType,
    /// The lease id (`reconcile:<user>` when the resident holds no lease to end).
    pub lease_id: String,
    /// The source's building id.
    pub property_id: String,
    /// Access begins (signed leases only).
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub starts_at: Option<OffsetDateTime>,
    /// Access ends (signed leases only).
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ends_at: Option<OffsetDateTime>,
}

/// A person to change, and the leases whose synthetic events make it so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The OpenApp user.
    pub user_id: String,
    /// Signed (add) or ended (remove, prune) by the synthetic events.
    pub leases: Vec<PlannedLease>,
}

/// The plan for one building.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildingPlan {
    /// OpenApp integration.
    pub integration_id: String,
    /// OpenApp organisation.
    pub org_id: String,
    /// The source's properties mapped to it.
    pub properties: Vec<BuildingProperty>,
    /// Granted access by the file, not a building user with the role: added.
    pub add: Vec<Change>,
    /// A building user with the role, no access by the file, and lease-sync holds state for
    /// them: removed.
    pub remove: Vec<Change>,
    /// A building user with the role, no access by the file, unknown to lease-sync: kept,
    /// or removed with `prune_unmanaged` (through the lease in [`Change::leases`]).
    pub unmanaged: Vec<Change>,
    /// Everyone else in the file or among the building users with the role.
    pub unchanged: Vec<String>,
}

/// How many people each part of a plan holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// To add.
    pub add: usize,
    /// To remove.
    pub remove: usize,
    /// Unknown to lease-sync (kept unless pruned).
    pub unmanaged: usize,
    /// Nothing to do.
    pub unchanged: usize,
}

/// The plan for every building of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The source whose truth the file is.
    pub source: String,
    /// The moment the plan is for.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Whether unmanaged building users are removed too.
    pub prune_unmanaged: bool,
    /// Totals over all buildings.
    pub counts: Counts,
    /// Per building.
    pub buildings: Vec<BuildingPlan>,
}

impl Plan {
    /// `add N, remove N, unmanaged N (kept|pruned), unchanged N`.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "add {}, remove {}, unmanaged {} ({}), unchanged {}",
            c.add,
            c.remove,
            c.unmanaged,
            if self.prune_unmanaged {
                "pruned"
            } else {
                "kept"
            },
            c.unchanged
        )
    }

    /// People whose access changes when the plan is applied.
    pub fn changes(&self) -> usize {
        let c = &self.counts;
        c.add + c.remove + if self.prune_unmanaged { c.unmanaged } else { 0 }
    }
}

/// The plan for `source` at `now`: each building with what was observed for it (same
/// order), against the validated rows of the file.
pub fn plan(
    source: &str,
    observed: &[(Building, Observed)],
    rows: &[LeaseRow],
    now: OffsetDateTime,
    prune_unmanaged: bool,
) -> Plan {
    let buildings: Vec<BuildingPlan> = observed
        .iter()
        .map(|(building, observed)| plan_building(source, building, observed, rows, now))
        .collect();
    let mut counts = Counts::default();
    for b in &buildings {
        counts.add += b.add.len();
        counts.remove += b.remove.len();
        counts.unmanaged += b.unmanaged.len();
        counts.unchanged += b.unchanged.len();
    }
    Plan {
        source: source.to_owned(),
        at: now,
        prune_unmanaged,
        counts,
        buildings,
    }
}

/// The plan for one building. Rows of other buildings are ignored; so are building users
/// without one of the building's roles, and user ids lease-sync could never have added.
pub fn plan_building(
    source: &str,
    building: &Building,
    observed: &Observed,
    rows: &[LeaseRow],
    now: OffsetDateTime,
) -> BuildingPlan {
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let mut granted: BTreeMap<&str, Vec<&LeaseRow>> = BTreeMap::new();
    let mut listed: BTreeMap<(&str, &str), &LeaseRow> = BTreeMap::new();
    for row in rows {
        if building.property(&row.property_id).is_none() {
            continue;
        }
        listed.insert((row.user_id.as_str(), row.lease_id.as_str()), row);
        if row.grants_access(now) {
            granted.entry(row.user_id.as_str()).or_default().push(row);
        }
    }
    let roles: BTreeSet<&str> = building
        .properties
        .iter()
        .map(|p| p.role.as_str())
        .collect();
    let members: BTreeSet<&str> = observed
        .members
        .iter()
        .filter(|m| roles.contains(m.role.as_str()) && is_valid_path_id(&m.user_id))
        .map(|m| m.user_id.as_str())
        .collect();

    let mut plan = BuildingPlan {
        integration_id: building.integration_id.clone(),
        org_id: building.org_id.clone(),
        properties: building.properties.clone(),
        add: Vec::new(),
        remove: Vec::new(),
        unmanaged: Vec::new(),
        unchanged: Vec::new(),
    };
    for (user, rows) in &granted {
        if members.contains(user) {
            plan.unchanged.push((*user).to_owned());
        } else {
            plan.add.push(Change {
                user_id: (*user).to_owned(),
                leases: rows
                    .iter()
                    .map(|r| PlannedLease {
                        event_type: EventType::LeaseSigned,
                        lease_id: r.lease_id.clone(),
                        property_id: r.property_id.clone(),
                        starts_at: r.starts_at,
                        ends_at: r.ends_at,
                    })
                    .collect(),
            });
        }
    }
    let fallback = |user: &str| PlannedLease {
        event_type: EventType::LeaseEnded,
        lease_id: format!("reconcile:{user}"),
        property_id: building.first_property_id(),
        starts_at: None,
        ends_at: None,
    };
    for user in members.iter().filter(|u| !granted.contains_key(*u)) {
        let Some(state) = observed.residents.get(*user) else {
            plan.unmanaged.push(Change {
                user_id: (*user).to_owned(),
                leases: vec![fallback(user)],
            });
            continue;
        };
        // Access through another source's lease is not this file's to take away.
        if state
            .leases
            .values()
            .any(|l| l.source != source && l.grants_access(now_ms))
        {
            plan.unchanged.push((*user).to_owned());
            continue;
        }
        let mut leases = leases_to_end(building, state, user, &listed, now_ms);
        if leases.is_empty() {
            leases.push(fallback(user));
        }
        plan.remove.push(Change {
            user_id: (*user).to_owned(),
            leases,
        });
    }
    plan
}

/// The events that take access away from `user`, whom the file does not grant access now:
/// `lease.ended` for each of their leases that still grants access, except that a lease the
/// file lists for later gets the file's window instead of being ended.
fn leases_to_end(
    building: &Building,
    state: &ResidentState,
    user: &str,
    listed: &BTreeMap<(&str, &str), &LeaseRow>,
    now_ms: i64,
) -> Vec<PlannedLease> {
    state
        .leases
        .iter()
        .filter(|(_, l)| l.grants_access(now_ms))
        .map(|(id, l)| match listed.get(&(user, id.as_str())) {
            Some(row) => PlannedLease {
                event_type: EventType::LeaseSigned,
                lease_id: id.clone(),
                property_id: row.property_id.clone(),
                starts_at: row.starts_at,
                ends_at: row.ends_at,
            },
            None => PlannedLease {
                event_type: EventType::LeaseEnded,
                lease_id: id.clone(),
                property_id: building
                    .property(&l.property_id)
                    .map_or_else(|| building.first_property_id(), |p| p.id.clone()),
                starts_at: None,
                ends_at: None,
            },
        })
        .collect()
}

/// One synthetic event of an applied plan, and where in OpenApp its one resident lives.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEvent {
    /// The event, folded into the resident's state like a webhook's.
    pub event: LeaseEvent,
    /// Its resident's building in OpenApp.
    pub target: PlannedTarget,
}

/// The OpenApp side of a [`PlannedEvent`]: whom to converge, in which building, with which
/// role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTarget {
    /// The OpenApp user.
    pub user_id: String,
    /// OpenApp organisation (`X-Org`).
    pub org_id: String,
    /// OpenApp integration.
    pub integration_id: String,
    /// Role granted on add.
    pub role: String,
}

/// The events that apply `plan`, one per [`PlannedLease`] of each add, removal and, with
/// `prune_unmanaged`, unmanaged user: `lease.signed` with the file's window for an add,
/// `lease.ended` to take access away. All occur at `plan.at`; ids are
/// `reconcile-<run_id>-<n>`, n from 1.
pub fn events_for(plan: &Plan, run_id: &str) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    for building in &plan.buildings {
        let mut push = |change: &Change| {
            for lease in &change.leases {
                let event_type = lease.event_type;
                let n = events.len() + 1;
                let event = LeaseEvent {
                    id: format!("reconcile-{run_id}-{n}"),
                    event_type,
                    occurred_at: plan.at,
                    lease: Lease {
                        id: lease.lease_id.clone(),
                        property_id: lease.property_id.clone(),
                        unit: None,
                    },
                    residents: vec![Resident {
                        openapp_user_id: change.user_id.clone(),
                        external_id: None,
                    }],
                    residents_by_email: Vec::new(),
                    access: (lease.starts_at.is_some() || lease.ends_at.is_some()).then_some(
                        AccessWindow {
                            starts_at: lease.starts_at,
                            ends_at: lease.ends_at,
                        },
                    ),
                };
                let target = PlannedTarget {
                    user_id: change.user_id.clone(),
                    org_id: building.org_id.clone(),
                    integration_id: building.integration_id.clone(),
                    role: role_of(&building.properties, &lease.property_id),
                };
                events.push(PlannedEvent { event, target });
            }
        };
        for change in &building.add {
            push(change);
        }
        for change in &building.remove {
            push(change);
        }
        if plan.prune_unmanaged {
            for change in &building.unmanaged {
                push(change);
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resident::{Desired, LeaseRecord, LeaseState};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);
    const ROLE: &str = "virtual_access:integration:int:resident";

    fn building() -> Building {
        Building {
            integration_id: "int".into(),
            org_id: "org".into(),
            properties: vec![BuildingProperty {
                id: "P-17".into(),
                role: ROLE.into(),
            }],
        }
    }

    fn row(user: &str, lease: &str) -> LeaseRow {
        LeaseRow {
            lease_id: lease.into(),
            property_id: "P-17".into(),
            user_id: user.into(),
            starts_at: None,
            ends_at: None,
            at: "line 2".into(),
        }
    }

    fn member(user: &str, role: &str) -> BuildingUser {
        BuildingUser {
            user_id: user.into(),
            role: role.into(),
        }
    }

    fn state(user: &str, leases: &[(&str, &str, LeaseState)], managed: bool) -> ResidentState {
        let ms = i64::try_from(NOW.unix_timestamp_nanos() / 1_000_000).unwrap();
        ResidentState {
            integration_id: "int".into(),
            user_id: user.into(),
            version: 1,
            leases: leases
                .iter()
                .map(|(id, source, lease_state)| {
                    let ended = *lease_state == LeaseState::Ended;
                    let record = LeaseRecord {
                        state: *lease_state,
                        starts_at: None,
                        ends_at: ended.then_some(ms - 1_000),
                        occurred_at: ms - 60_000,
                        rank: u8::from(ended),
                        event_id: format!("e-{id}"),
                        source: (*source).into(),
                        property_id: "P-17".into(),
                    };
                    ((*id).to_owned(), record)
                })
                .collect(),
            applied: None,
            managed,
            next_check: None,
        }
    }

    fn users(changes: &[Change]) -> Vec<&str> {
        changes.iter().map(|c| c.user_id.as_str()).collect()
    }

    /// The drift of the end-to-end test: A leased but missing, B ours but gone from the file,
    /// C added by hand, D fine, E with another role.
    #[test]
    fn planted_drift_is_classified() {
        let rows = vec![row("A", "L-A"), row("D", "L-D")];
        let observed = Observed {
            members: vec![
                member("B", ROLE),
                member("C", ROLE),
                member("D", ROLE),
                member("E", "virtual_access:integration:int:guest"),
            ],
            residents: [(
                "B".to_owned(),
                state("B", &[("L-B", "acme", LeaseState::Active)], true),
            )]
            .into(),
        };
        let plan = plan("acme", &[(building(), observed)], &rows, NOW, false);
        let b = &plan.buildings[0];
        assert_eq!(users(&b.add), ["A"]);
        assert_eq!(b.add[0].leases[0].lease_id, "L-A");
        assert_eq!(users(&b.remove), ["B"]);
        assert_eq!(
            b.remove[0].leases[0].lease_id, "L-B",
            "B's active lease is ended"
        );
        assert_eq!(users(&b.unmanaged), ["C"]);
        assert_eq!(b.unchanged, ["D"]);
        assert_eq!(
            plan.summary(),
            "add 1, remove 1, unmanaged 1 (kept), unchanged 1"
        );
        assert_eq!(plan.changes(), 2, "the unmanaged one is kept");
    }

    #[test]
    fn windows_decide_who_has_access_now() {
        let mut future = row("F", "L-F");
        future.starts_at = Some(datetime!(2026-12-01 0:00 UTC));
        let mut expired = row("X", "L-X");
        expired.ends_at = Some(NOW);
        let mut current = row("A", "L-A");
        current.starts_at = Some(datetime!(2026-01-01 0:00 UTC));
        current.ends_at = Some(datetime!(2027-01-01 0:00 UTC));
        let observed = Observed {
            members: vec![member("X", ROLE)],
            residents: [(
                "X".to_owned(),
                state("X", &[("L-X", "acme", LeaseState::Active)], true),
            )]
            .into(),
        };
        let plan = plan(
            "acme",
            &[(building(), observed)],
            &[future, expired, current],
            NOW,
            false,
        );
        let b = &plan.buildings[0];
        assert_eq!(users(&b.add), ["A"], "F has not started; X has ended");
        assert_eq!(
            b.add[0].leases[0].ends_at,
            Some(datetime!(2027-01-01 0:00 UTC))
        );
        assert_eq!(users(&b.remove), ["X"]);
        assert_eq!(
            plan.counts,
            Counts {
                add: 1,
                remove: 1,
                unmanaged: 0,
                unchanged: 0
            }
        );
    }

    #[test]
    fn removal_ends_only_leases_that_still_grant_access_or_a_reconcile_lease() {
        let observed = Observed {
            members: vec![member("B", ROLE), member("G", ROLE)],
            residents: [
                (
                    "B".to_owned(),
                    state(
                        "B",
                        &[
                            ("L-1", "acme", LeaseState::Ended),
                            ("L-2", "acme", LeaseState::Active),
                        ],
                        true,
                    ),
                ),
                // Known to lease-sync, nothing active (e.g. re-added by hand after an end).
                (
                    "G".to_owned(),
                    state("G", &[("L-3", "acme", LeaseState::Ended)], false),
                ),
            ]
            .into(),
        };
        let plan = plan("acme", &[(building(), observed)], &[], NOW, false);
        let b = &plan.buildings[0];
        let leases = |i: usize| {
            b.remove[i]
                .leases
                .iter()
                .map(|l| l.lease_id.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(users(&b.remove), ["B", "G"]);
        assert_eq!(leases(0), ["L-2"]);
        assert_eq!(leases(1), ["reconcile:G"]);
    }

    #[test]
    fn a_removal_keeps_a_lease_the_file_lists_for_later() {
        let mut later = row("B", "L-B");
        later.starts_at = Some(datetime!(2027-01-01 0:00 UTC));
        let observed = Observed {
            members: vec![member("B", ROLE)],
            residents: [(
                "B".to_owned(),
                state("B", &[("L-B", "acme", LeaseState::Active)], true),
            )]
            .into(),
        };
        let plan = plan("acme", &[(building(), observed)], &[later], NOW, false);
        let lease = &plan.buildings[0].remove[0].leases[0];
        assert_eq!(
            lease.event_type,
            EventType::LeaseSigned,
            "re-signed with its window"
        );
        assert_eq!(lease.starts_at, Some(datetime!(2027-01-01 0:00 UTC)));

        // Folded, it takes access away now and gives it back at the start.
        let events = events_for(&plan, "RUN");
        let ms = |t: OffsetDateTime| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap();
        let mut b = state("B", &[("L-B", "acme", LeaseState::Active)], true);
        b.leases.insert(
            "L-B".into(),
            LeaseRecord::from_event(&events[0].event, "acme"),
        );
        assert_eq!(b.desired(ms(NOW)), Desired::Absent);
        assert_eq!(
            b.desired(ms(datetime!(2027-01-01 0:00 UTC))),
            Desired::Present
        );
    }

    #[test]
    fn access_through_another_source_is_left_alone() {
        let observed = Observed {
            members: vec![member("M", ROLE)],
            residents: [(
                "M".to_owned(),
                state("M", &[("L-9", "other-pms", LeaseState::Active)], true),
            )]
            .into(),
        };
        let plan = plan("acme", &[(building(), observed)], &[], NOW, true);
        assert_eq!(plan.buildings[0].unchanged, ["M"]);
        assert_eq!(plan.changes(), 0);
    }

    #[test]
    fn rows_of_other_buildings_and_odd_member_ids_are_ignored() {
        let mut elsewhere = row("A", "L-A");
        elsewhere.property_id = "P-99".into();
        let observed = Observed {
            members: vec![member("../x", ROLE)],
            residents: BTreeMap::new(),
        };
        let plan = plan("acme", &[(building(), observed)], &[elsewhere], NOW, true);
        assert_eq!(plan.counts, Counts::default());
    }

    #[test]
    fn properties_sharing_an_integration_form_one_building() {
        use crate::config::PropertySettings;
        let property = |id: &str, integration: &str| PropertySettings::new(id, "org", integration);
        let source = SourceSettings {
            name: "acme".into(),
            properties: vec![
                property("P-1", "int-a"),
                property("P-2", "int-b"),
                property("P-3", "int-a"),
            ],
            ..SourceSettings::named("acme")
        };
        let buildings = buildings_of(&source);
        assert_eq!(buildings.len(), 2);
        assert_eq!(
            buildings[0]
                .properties
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>(),
            ["P-1", "P-3"]
        );
        assert_eq!(
            buildings[1].properties[0].role,
            "virtual_access:integration:int-b:resident"
        );
    }

    #[test]
    fn applying_folds_events_that_make_desired_state_match() {
        let rows = vec![row("A", "L-A")];
        let observed = Observed {
            members: vec![member("B", ROLE), member("C", ROLE)],
            residents: [(
                "B".to_owned(),
                state("B", &[("L-B", "acme", LeaseState::Active)], true),
            )]
            .into(),
        };
        let kept = plan("acme", &[(building(), observed.clone())], &rows, NOW, false);
        let events = events_for(&kept, "RUN");
        let summary: Vec<(&str, EventType, &str, &str)> = events
            .iter()
            .map(|e| {
                (
                    e.event.id.as_str(),
                    e.event.event_type,
                    e.target.user_id.as_str(),
                    e.event.lease.id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("reconcile-RUN-1", EventType::LeaseSigned, "A", "L-A"),
                ("reconcile-RUN-2", EventType::LeaseEnded, "B", "L-B"),
            ]
        );
        for e in &events {
            assert_eq!(
                (
                    e.target.integration_id.as_str(),
                    e.target.org_id.as_str(),
                    e.target.role.as_str()
                ),
                ("int", "org", ROLE)
            );
            assert_eq!(e.event.occurred_at, NOW);
            // The job the runner makes of it carries the trigger and the event id.
            let job = super::super::job_for(e, "acme");
            assert_eq!(job.trigger.as_deref(), Some(TRIGGER));
            assert_eq!(job.event_id, e.event.id);
            assert_eq!(job.user_id, e.target.user_id);
        }

        // Folding the events gives the desired states the plan promises.
        let ms = i64::try_from(NOW.unix_timestamp_nanos() / 1_000_000).unwrap();
        let mut b = state("B", &[("L-B", "acme", LeaseState::Active)], true);
        let ended = LeaseRecord::from_event(&events[1].event, "acme");
        assert!(crate::resident::supersedes(
            &ended,
            b.leases.get("L-B"),
            i64::MAX
        ));
        b.leases.insert("L-B".into(), ended);
        assert_eq!(b.desired(ms), Desired::Absent);

        let pruned = plan("acme", &[(building(), observed)], &rows, NOW, true);
        assert_eq!(
            pruned.summary(),
            "add 1, remove 1, unmanaged 1 (pruned), unchanged 0"
        );
        let events = events_for(&pruned, "RUN");
        let last = events.last().unwrap();
        assert_eq!(
            (last.target.user_id.as_str(), last.event.lease.id.as_str()),
            ("C", "reconcile:C")
        );
        let mut c = state("C", &[], false);
        c.leases.insert(
            "reconcile:C".into(),
            LeaseRecord::from_event(&last.event, "acme"),
        );
        assert_eq!(
            c.desired(ms),
            Desired::Absent,
            "an ended lease makes an unknown person removable"
        );
    }
}
