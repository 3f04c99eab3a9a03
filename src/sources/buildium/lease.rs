//! Buildium's lease, as its API answers `GET /v1/leases/{leaseId}`, and who it gives access
//! to, when. Pure code: the fetched lease in, per-tenant access facts out.
//!
//! The defaults (each configurable, see [`AccessRules`]):
//! * tenants whose status on the lease is `Current` or `Future`, on a lease whose status is
//!   `Active` or `Future`, get access; cosigners (guarantors, a separate list) never do;
//! * from the start of the tenant's move-in date (else the lease's `LeaseFromDate`) minus
//!   `grant_lead`, to the end of their move-out date plus `revoke_grace`; a `Fixed` lease with
//!   `AutomaticallyMoveOutTenants` also ends at the end of its `LeaseToDate`;
//! * dates are local to the property's time zone ([`PropertyZone`]);
//! * the version of everything the lease says is its `LastUpdatedDateTime`, so a late or
//!   repeated fetch can never undo a newer one.

use jiff::civil::Date;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::access::{Margins, PropertyZone};

/// The part of Buildium's `LeaseMessage` lease-sync reads. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeaseMessage {
    /// The lease id.
    pub id: i64,
    /// The property (building) id.
    pub property_id: i64,
    /// The unit.
    #[serde(default)]
    pub unit_id: Option<i64>,
    /// The unit's number, for people.
    #[serde(default)]
    pub unit_number: Option<String>,
    /// First day of the lease, `YYYY-MM-DD`.
    #[serde(default)]
    pub lease_from_date: Option<String>,
    /// Last day of the lease, `YYYY-MM-DD`.
    #[serde(default)]
    pub lease_to_date: Option<String>,
    /// `None`, `Fixed`, `FixedWithRollover` or `AtWill`.
    #[serde(default)]
    pub lease_type: Option<String>,
    /// `Active`, `Past` or `Future`.
    #[serde(default)]
    pub lease_status: Option<String>,
    /// The tenants living there now, with their contact details.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub current_tenants: Vec<TenantMessage>,
    /// Every tenant ever on the lease, with their status on it.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tenants: Vec<LeaseTenant>,
    /// Move-outs, one per tenant who gave notice or left.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub move_out_data: Vec<MoveOut>,
    /// Whether a fixed lease moves its tenants out at its end by itself.
    #[serde(default)]
    pub automatically_move_out_tenants: bool,
    /// When anything on the lease last changed: its version.
    pub last_updated_date_time: String,
}

/// The part of Buildium's `TenantMessage` lease-sync reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TenantMessage {
    /// The tenant id.
    pub id: i64,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Primary email: how the tenant is matched to an OpenApp user.
    #[serde(default)]
    pub email: Option<String>,
    /// The tenant's leases, on `GET /v1/leases/tenants/{tenantId}`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub leases: Vec<LeaseMessage>,
}

/// A tenant's place on a lease (`LeaseTenantMessage`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeaseTenant {
    /// The tenant id.
    pub id: i64,
    /// `MovedOut`, `Current` or `Future`.
    #[serde(default)]
    pub status: Option<String>,
    /// The day they move in, `YYYY-MM-DD`.
    #[serde(default)]
    pub move_in_date: Option<String>,
}

/// One move-out (`LeaseMoveOutDataMessage`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MoveOut {
    /// Who moves out.
    pub tenant_id: i64,
    /// Their last day, `YYYY-MM-DD`.
    #[serde(default)]
    pub move_out_date: Option<String>,
}

/// Who on a lease gets access, and the margins around the dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRules {
    /// Tenant statuses on the lease that grant access.
    pub tenant_statuses: Vec<String>,
    /// Lease statuses that grant access.
    pub lease_statuses: Vec<String>,
    /// Lead before starts and grace after ends.
    pub margins: Margins,
}

impl Default for AccessRules {
    fn default() -> Self {
        Self {
            tenant_statuses: vec!["Current".into(), "Future".into()],
            lease_statuses: vec!["Active".into(), "Future".into()],
            margins: Margins::default(),
        }
    }
}

/// What a lease says about one tenant's access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantAccess {
    /// Access within `[starts_at, ends_at)` (ms; `None` = open on that side).
    Grants {
        /// When access starts.
        starts_at: Option<i64>,
        /// When it ends.
        ends_at: Option<i64>,
    },
    /// No access through this lease from `ends_at` (ms) on.
    Ended {
        /// When access ends (their move-out plus grace, or the lease's version time).
        ends_at: i64,
    },
}

/// One tenant on a lease, and their access through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantFacts {
    /// Buildium's tenant id.
    pub tenant_id: i64,
    /// Their email, when the lease lists them among its current tenants.
    pub email: Option<String>,
    /// Their name, for creating an OpenApp user.
    pub name: Option<String>,
    /// Their access through this lease.
    pub access: TenantAccess,
}

/// What a lease says, version included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFacts {
    /// The lease id.
    pub lease_id: i64,
    /// The property id.
    pub property_id: i64,
    /// `LastUpdatedDateTime` in ms: the version of every record made from it.
    pub version: i64,
    /// Every tenant ever on the lease. Cosigners are never here.
    pub tenants: Vec<TenantFacts>,
}

/// A lease that cannot be read as Buildium documents it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease {lease_id}: {field}: {message}")]
pub struct LeaseError {
    /// The lease.
    pub lease_id: i64,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl LeaseMessage {
    /// The access this lease gives each of its tenants, under `rules`, with dates in `zone`.
    pub fn facts(
        &self,
        zone: &PropertyZone,
        rules: &AccessRules,
    ) -> Result<LeaseFacts, LeaseError> {
        let fail = |field: &'static str, message: String| LeaseError {
            lease_id: self.id,
            field,
            message,
        };
        let version = parse_timestamp(&self.last_updated_date_time).ok_or_else(|| {
            fail(
                "LastUpdatedDateTime",
                format!("`{}` is not a date-time", self.last_updated_date_time),
            )
        })?;
        let date =
            |field: &'static str, value: &Option<String>| -> Result<Option<Date>, LeaseError> {
                value
                    .as_deref()
                    .map(|v| v.get(..10).unwrap_or(v).parse::<Date>())
                    .transpose()
                    .map_err(|_| {
                        fail(
                            field,
                            format!("`{}` is not a date", value.as_deref().unwrap_or("")),
                        )
                    })
            };
        let lease_from = date("LeaseFromDate", &self.lease_from_date)?;
        let lease_to = date("LeaseToDate", &self.lease_to_date)?;
        let lease_grants = self
            .lease_status
            .as_ref()
            .is_some_and(|s| rules.lease_statuses.contains(s));
        let ends_with_lease =
            self.lease_type.as_deref() == Some("Fixed") && self.automatically_move_out_tenants;
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for tenant in &self.tenants {
            let move_in = date("Tenants.MoveInDate", &tenant.move_in_date)?;
            let move_out = self
                .move_out_data
                .iter()
                .find(|m| m.tenant_id == tenant.id)
                .map(|m| date("MoveOutData.MoveOutDate", &m.move_out_date))
                .transpose()?
                .flatten();
            let starts_at = move_in
                .or(lease_from)
                .and_then(|d| zone.start_of(d))
                .map(|s| rules.margins.lead(s));
            let ends_at = move_out
                .or(lease_to.filter(|_| ends_with_lease))
                .and_then(|d| zone.end_of(d))
                .map(|e| rules.margins.grace(e));
            let tenant_grants = tenant
                .status
                .as_ref()
                .is_some_and(|s| rules.tenant_statuses.contains(s));
            let access = if lease_grants && tenant_grants {
                TenantAccess::Grants { starts_at, ends_at }
            } else {
                // Moved out, or the lease is past: until their move-out (with grace) if
                // known, else from the moment the lease says so.
                TenantAccess::Ended {
                    ends_at: ends_at.unwrap_or(version),
                }
            };
            let current = self.current_tenants.iter().find(|t| t.id == tenant.id);
            tenants.push(TenantFacts {
                tenant_id: tenant.id,
                email: current
                    .and_then(|t| t.email.clone())
                    .filter(|e| !e.trim().is_empty()),
                name: current.and_then(TenantMessage::full_name),
                access,
            });
        }
        Ok(LeaseFacts {
            lease_id: self.id,
            property_id: self.property_id,
            version,
            tenants,
        })
    }
}

impl TenantMessage {
    /// `First Last`, when either is known.
    pub fn full_name(&self) -> Option<String> {
        let parts: Vec<&str> = [&self.first_name, &self.last_name]
            .into_iter()
            .flatten()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// A list Buildium may send as `null` (its arrays are nullable): empty.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Buildium's date-times, in ms: RFC 3339, or without an offset, which Buildium means as UTC.
fn parse_timestamp(text: &str) -> Option<i64> {
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let parsed = OffsetDateTime::parse(text, rfc3339)
        .or_else(|_| OffsetDateTime::parse(&format!("{text}Z"), rfc3339))
        .ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: i64 = 3_600_000;

    /// A lease with two current tenants and a cosigner, as Buildium answers it.
    fn lease(json: serde_json::Value) -> LeaseMessage {
        let mut base = serde_json::json!({
            "Id": 501,
            "PropertyId": 23,
            "UnitId": 7,
            "UnitNumber": "4B",
            "LeaseFromDate": "2026-12-01",
            "LeaseToDate": "2027-11-30",
            "LeaseType": "Fixed",
            "LeaseStatus": "Active",
            "AutomaticallyMoveOutTenants": false,
            "LastUpdatedDateTime": "2026-11-20T10:00:00Z",
            "CurrentTenants": [
                {"Id": 1, "FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com"},
                {"Id": 2, "FirstName": "Alan", "LastName": "Turing", "Email": "alan@example.com"}
            ],
            "Tenants": [
                {"Id": 1, "Status": "Current", "MoveInDate": "2026-12-01"},
                {"Id": 2, "Status": "Current", "MoveInDate": "2026-12-15"}
            ],
            "Cosigners": [{"Id": 99, "FirstName": "Guarantor", "Email": "g@example.com"}],
            "MoveOutData": []
        });
        if let (Some(base), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn ny() -> PropertyZone {
        PropertyZone::new("America/New_York").unwrap()
    }

    fn local_midnight(zone: &PropertyZone, date: &str) -> i64 {
        zone.start_of(date.parse().unwrap()).unwrap()
    }

    #[test]
    fn tenants_get_access_from_their_move_in_and_cosigners_never() {
        let facts = lease(serde_json::json!({}))
            .facts(&ny(), &AccessRules::default())
            .unwrap();
        assert_eq!(
            facts.version,
            parse_timestamp("2026-11-20T10:00:00Z").unwrap()
        );
        let ids: Vec<i64> = facts.tenants.iter().map(|t| t.tenant_id).collect();
        assert_eq!(ids, [1, 2], "the cosigner (99) is not a tenant");
        assert_eq!(
            facts.tenants[1].access,
            TenantAccess::Grants {
                starts_at: Some(local_midnight(&ny(), "2026-12-15")),
                ends_at: None,
            }
        );
        assert_eq!(facts.tenants[0].email.as_deref(), Some("ada@example.com"));
        assert_eq!(facts.tenants[0].name.as_deref(), Some("Ada Lovelace"));
    }

    #[test]
    fn a_move_out_ends_that_tenant_at_the_end_of_the_local_day_plus_grace() {
        let rules = AccessRules {
            margins: Margins {
                grant_lead: Duration::from_secs(24 * 3600),
                revoke_grace: Duration::from_secs(2 * 3600),
            },
            ..AccessRules::default()
        };
        let facts = lease(serde_json::json!({
            "MoveOutData": [{"TenantId": 2, "MoveOutDate": "2027-03-31", "NoticeGivenDate": "2027-02-28"}]
        }))
        .facts(&ny(), &rules)
        .unwrap();
        assert_eq!(
            facts.tenants[1].access,
            TenantAccess::Grants {
                starts_at: Some(local_midnight(&ny(), "2026-12-15") - 24 * HOUR),
                ends_at: Some(local_midnight(&ny(), "2027-04-01") + 2 * HOUR),
            }
        );
        assert!(
            matches!(
                facts.tenants[0].access,
                TenantAccess::Grants { ends_at: None, .. }
            ),
            "the co-tenant keeps open-ended access"
        );
    }

    #[test]
    fn a_fixed_lease_that_moves_tenants_out_ends_at_its_last_day() {
        let facts = lease(serde_json::json!({"AutomaticallyMoveOutTenants": true}))
            .facts(&ny(), &AccessRules::default())
            .unwrap();
        let end = local_midnight(&ny(), "2027-12-01");
        for t in &facts.tenants {
            assert!(
                matches!(t.access, TenantAccess::Grants { ends_at: Some(e), .. } if e == end),
                "{t:?}"
            );
        }
        let rollover = lease(serde_json::json!({
            "AutomaticallyMoveOutTenants": true, "LeaseType": "FixedWithRollover"
        }))
        .facts(&ny(), &AccessRules::default())
        .unwrap();
        assert!(matches!(
            rollover.tenants[0].access,
            TenantAccess::Grants { ends_at: None, .. }
        ));
    }

    #[test]
    fn past_leases_and_moved_out_tenants_end() {
        let past = lease(serde_json::json!({"LeaseStatus": "Past"}))
            .facts(&ny(), &AccessRules::default())
            .unwrap();
        for t in &past.tenants {
            assert_eq!(
                t.access,
                TenantAccess::Ended {
                    ends_at: past.version
                },
                "{t:?}"
            );
        }
        let moved = lease(serde_json::json!({
            "CurrentTenants": [
                {"Id": 1, "FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com"}
            ],
            "Tenants": [
                {"Id": 1, "Status": "Current", "MoveInDate": "2026-12-01"},
                {"Id": 2, "Status": "MovedOut", "MoveInDate": "2026-12-15"}
            ],
            "MoveOutData": [{"TenantId": 2, "MoveOutDate": "2027-01-10"}]
        }))
        .facts(&ny(), &AccessRules::default())
        .unwrap();
        assert_eq!(
            moved.tenants[1].access,
            TenantAccess::Ended {
                ends_at: local_midnight(&ny(), "2027-01-11")
            }
        );
        assert!(
            moved.tenants[1].email.is_none(),
            "not a current tenant any more"
        );
    }

    #[test]
    fn statuses_that_grant_access_are_configurable() {
        let rules = AccessRules {
            tenant_statuses: vec!["Current".into()],
            ..AccessRules::default()
        };
        let facts = lease(serde_json::json!({
            "Tenants": [{"Id": 1, "Status": "Future", "MoveInDate": "2027-01-01"}]
        }))
        .facts(&ny(), &rules)
        .unwrap();
        assert!(matches!(
            facts.tenants[0].access,
            TenantAccess::Ended { .. }
        ));
    }

    #[test]
    fn bad_dates_name_the_lease_and_field() {
        let err = lease(serde_json::json!({"LeaseFromDate": "first of May"}))
            .facts(&ny(), &AccessRules::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "lease 501: LeaseFromDate: `first of May` is not a date"
        );
        let err = lease(serde_json::json!({"LastUpdatedDateTime": "soon"}))
            .facts(&ny(), &AccessRules::default())
            .unwrap_err();
        assert_eq!(err.field, "LastUpdatedDateTime");
        // Without an offset Buildium means UTC.
        assert_eq!(
            parse_timestamp("2026-11-20T10:00:00"),
            parse_timestamp("2026-11-20T10:00:00Z")
        );
    }

    #[test]
    fn null_lists_read_as_empty_as_buildium_documents_them_nullable() {
        let lease = lease(serde_json::json!({
            "CurrentTenants": null, "Tenants": null, "MoveOutData": null
        }));
        assert!(lease.current_tenants.is_empty() && lease.tenants.is_empty());
        assert!(lease.move_out_data.is_empty());
        let tenant: TenantMessage =
            serde_json::from_value(serde_json::json!({"Id": 1, "Leases": null})).unwrap();
        assert!(tenant.leases.is_empty());
    }
}
