//! Buildium's webhook events: thin objects naming what changed, e.g.
//! `{"EventName": "Lease.Updated", "EventDateTime": "2022-05-10T15:12:46.2317653Z",
//! "AccountId": 123456, "LeaseId": 501}`. They carry no event id and no order, so ingest
//! only learns *what to fetch again*: the lease, or the tenant and their leases.

use serde::Deserialize;
use time::OffsetDateTime;

/// What a Buildium event asks lease-sync to read again from Buildium's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refresh {
    /// `GET /v1/leases/{lease_id}`.
    Lease {
        /// Buildium's lease id.
        lease_id: i64,
    },
    /// `GET /v1/leases/tenants/{tenant_id}` and the leases it lists.
    Tenant {
        /// Buildium's tenant id.
        tenant_id: i64,
        /// The tenant was just added (`LeaseTenant.Created`): a lease read that already lists
        /// them as a current tenant says all the event does, so the tenant need not be read.
        /// An update or a deletion always reads the tenant.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        added: bool,
    },
}

/// What one event means for lease-sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpretation {
    /// A lease-related event: refresh this.
    Refresh(Refresh),
    /// An event lease-sync does not need (`Rental.*`, `Applicant.*`, …): acknowledged, counted
    /// as `ignored`, nothing queued.
    Ignored,
}

/// A body that is not a Buildium event, or a lease event without the id it must carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not one JSON object.
    #[error("body is not a JSON object: {0}")]
    NotAnObject(String),
    /// A field is missing or has the wrong type.
    #[error("{field}: {message}")]
    Field {
        /// The field (`EventName`, `LeaseId`, …).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// One Buildium event as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildiumEvent {
    /// `Lease.Updated`, `LeaseTenant.Created`, …
    pub name: String,
    /// When it happened at Buildium (UTC).
    pub occurred_at: OffsetDateTime,
    /// The Buildium account.
    pub account_id: i64,
    /// `LeaseId`, when the event carries one.
    pub lease_id: Option<i64>,
    /// `TenantId`, when the event carries one.
    pub tenant_id: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Wire {
    event_name: Option<serde_json::Value>,
    event_date_time: Option<serde_json::Value>,
    account_id: Option<serde_json::Value>,
    lease_id: Option<serde_json::Value>,
    tenant_id: Option<serde_json::Value>,
}

/// The lease-related events lease-sync handles, and the id each must carry.
const LEASE_EVENTS: [&str; 3] = ["Lease.Created", "Lease.Updated", "Lease.Deleted"];
const TENANT_EVENTS: [&str; 3] = [
    "LeaseTenant.Created",
    "LeaseTenant.Updated",
    "LeaseTenant.Deleted",
];
const MOVE_OUT_EVENTS: [&str; 3] = [
    "Lease.MoveOut.Created",
    "Lease.MoveOut.Updated",
    "Lease.MoveOut.Deleted",
];

/// Parses a Buildium event body (already verified). Unknown fields are ignored.
pub fn parse(body: &[u8]) -> Result<BuildiumEvent, WebhookError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::NotAnObject(e.to_string()))?;
    if !value.is_object() {
        return Err(WebhookError::NotAnObject("it is another JSON value".into()));
    }
    let wire: Wire =
        serde_json::from_value(value).map_err(|e| WebhookError::NotAnObject(e.to_string()))?;
    let name = match wire.event_name {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() && s.len() <= 100 => s,
        Some(_) => return Err(field("EventName", "must be a non-empty string")),
        None => return Err(field("EventName", "is required")),
    };
    let occurred_at = match wire.event_date_time {
        Some(serde_json::Value::String(s)) => {
            OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).map_err(
                |_| {
                    field(
                        "EventDateTime",
                        "must be a UTC timestamp such as 2022-05-10T15:12:46.2317653Z",
                    )
                },
            )?
        }
        Some(_) => return Err(field("EventDateTime", "must be a string")),
        None => return Err(field("EventDateTime", "is required")),
    };
    let account_id =
        id("AccountId", wire.account_id)?.ok_or_else(|| field("AccountId", "is required"))?;
    Ok(BuildiumEvent {
        name,
        occurred_at,
        account_id,
        lease_id: id("LeaseId", wire.lease_id)?,
        tenant_id: id("TenantId", wire.tenant_id)?,
    })
}

impl BuildiumEvent {
    /// What the event asks for; a handled event without its id is an error.
    pub fn interpret(&self) -> Result<Interpretation, WebhookError> {
        let name = self.name.as_str();
        let lease = || {
            self.lease_id
                .map(|lease_id| Interpretation::Refresh(Refresh::Lease { lease_id }))
                .ok_or_else(|| field("LeaseId", &format!("is required in a {name} event")))
        };
        if LEASE_EVENTS.contains(&name) || MOVE_OUT_EVENTS.contains(&name) {
            lease()
        } else if TENANT_EVENTS.contains(&name) {
            self.tenant_id
                .map(|tenant_id| {
                    Interpretation::Refresh(Refresh::Tenant {
                        tenant_id,
                        added: name == "LeaseTenant.Created",
                    })
                })
                .ok_or_else(|| field("TenantId", &format!("is required in a {name} event")))
        } else {
            Ok(Interpretation::Ignored)
        }
    }
}

fn field(field: &'static str, message: &str) -> WebhookError {
    WebhookError::Field {
        field,
        message: message.to_owned(),
    }
}

/// A positive integer id, absent when missing or null.
fn id(name: &'static str, value: Option<serde_json::Value>) -> Result<Option<i64>, WebhookError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| field(name, "must be a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &str) -> Result<Interpretation, WebhookError> {
        parse(body.as_bytes()).and_then(|e| e.interpret())
    }

    #[test]
    fn the_guide_example_parses() {
        let e = parse(
            br#"{"EventName":"Lease.Updated","EventDateTime":"2022-05-10T15:12:46.2317653Z","AccountId":123456,"LeaseId":501}"#,
        )
        .unwrap();
        assert_eq!(e.name, "Lease.Updated");
        assert_eq!(e.account_id, 123_456);
        assert_eq!(e.occurred_at.nanosecond(), 231_765_300);
        assert_eq!(
            e.interpret().unwrap(),
            Interpretation::Refresh(Refresh::Lease { lease_id: 501 })
        );
    }

    #[test]
    fn each_handled_event_names_what_to_refresh() {
        let at = r#""EventDateTime":"2022-05-10T15:12:46Z","AccountId":1"#;
        for name in LEASE_EVENTS.iter().chain(&MOVE_OUT_EVENTS) {
            let body = format!(r#"{{"EventName":"{name}",{at},"LeaseId":7,"TenantId":9}}"#);
            assert_eq!(
                event(&body).unwrap(),
                Interpretation::Refresh(Refresh::Lease { lease_id: 7 }),
                "{name}"
            );
        }
        for name in TENANT_EVENTS {
            let body = format!(r#"{{"EventName":"{name}",{at},"TenantId":9}}"#);
            assert_eq!(
                event(&body).unwrap(),
                Interpretation::Refresh(Refresh::Tenant {
                    tenant_id: 9,
                    added: name == "LeaseTenant.Created"
                }),
                "{name}"
            );
        }
        for name in [
            "Rental.Updated",
            "Applicant.Created",
            "LeaseTransaction.Created",
        ] {
            let body = format!(r#"{{"EventName":"{name}",{at},"PropertyId":3}}"#);
            assert_eq!(event(&body).unwrap(), Interpretation::Ignored, "{name}");
        }
    }

    #[test]
    fn bodies_that_are_not_buildium_events_are_refused_naming_the_field() {
        let at = r#""EventDateTime":"2022-05-10T15:12:46Z""#;
        for (body, expected) in [
            ("[]", "body is not a JSON object"),
            ("not json", "body is not a JSON object"),
            (r#"{"AccountId":1}"#, "EventName: is required"),
            (
                &format!(r#"{{"EventName":5,{at},"AccountId":1}}"#),
                "EventName: must be",
            ),
            (
                r#"{"EventName":"Lease.Updated","AccountId":1}"#,
                "EventDateTime: is required",
            ),
            (
                r#"{"EventName":"Lease.Updated","EventDateTime":"yesterday","AccountId":1}"#,
                "EventDateTime: must be",
            ),
            (
                &format!(r#"{{"EventName":"Lease.Updated",{at}}}"#),
                "AccountId: is required",
            ),
            (
                &format!(r#"{{"EventName":"Lease.Updated",{at},"AccountId":1}}"#),
                "LeaseId: is required in a Lease.Updated event",
            ),
            (
                &format!(r#"{{"EventName":"Lease.Updated",{at},"AccountId":1,"LeaseId":"7"}}"#),
                "LeaseId: must be a positive integer",
            ),
            (
                &format!(r#"{{"EventName":"LeaseTenant.Deleted",{at},"AccountId":1,"LeaseId":7}}"#),
                "TenantId: is required in a LeaseTenant.Deleted event",
            ),
        ] {
            let err = event(body).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{body}: {err}");
        }
    }
}
