//! The lease event: what a property-management system tells us, parsed and validated.
//!
//! Pure domain code: no HTTP, no Redis. Parsing happens only after the signature over the
//! raw bytes has been verified.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Most residents one event may name.
pub const MAX_RESIDENTS: usize = 50;

/// Longest accepted event id, lease id, property id or unit.
pub const MAX_ID_LEN: usize = 255;

/// What happened to the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// The lease was signed: its residents should get access.
    #[serde(rename = "lease.signed")]
    LeaseSigned,
    /// The lease ended: its residents should lose access.
    #[serde(rename = "lease.ended")]
    LeaseEnded,
}

impl EventType {
    /// The wire name (`lease.signed`, `lease.ended`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::LeaseSigned => "lease.signed",
            EventType::LeaseEnded => "lease.ended",
        }
    }
}

/// A string that names no [`EventType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}` (expected lease.signed or lease.ended)")]
pub struct UnknownEventType(pub String);

impl std::str::FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lease.signed" => Ok(EventType::LeaseSigned),
            "lease.ended" => Ok(EventType::LeaseEnded),
            other => Err(UnknownEventType(other.to_owned())),
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated lease event (body version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEvent {
    /// Event id; equals the signed `webhook-id` header.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened at the source.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The lease.
    pub lease: Lease,
    /// The people on the lease known by OpenApp user id (distinct ids).
    pub residents: Vec<Resident>,
    /// The people on the lease known only by email (distinct emails, normalized): a worker
    /// resolves them to OpenApp users before folding the event. With [`Self::residents`],
    /// 1 to [`MAX_RESIDENTS`] people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub residents_by_email: Vec<ResidentByEmail>,
    /// The access window, if the sender gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessWindow>,
}

/// The lease an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The property-management system's lease id.
    pub id: String,
    /// The property-management system's building id; maps to an OpenApp integration.
    pub property_id: String,
    /// Apartment or unit label, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// A person on the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resident {
    /// OpenApp user id; ends up in an OpenApp URL path.
    pub openapp_user_id: String,
    /// The sender's own id for the person, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// A person on the lease the sender knows only by email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidentByEmail {
    /// Their email, trimmed and lower-cased ([`normalize_email`]). Personal data.
    pub email: String,
    /// Their name, for an OpenApp user created for them (`[identity] create_missing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The sender's own id for the person, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// An email as compared: trimmed and lower-cased; `None` unless it looks like one
/// (`local@domain`, no spaces or control characters, at most 254 bytes).
pub fn normalize_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    plausible.then_some(email)
}

/// When access should start and end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessWindow {
    /// Access begins.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub starts_at: Option<OffsetDateTime>,
    /// Access ends.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ends_at: Option<OffsetDateTime>,
}

/// Why a body is not a valid lease event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON at all (syntax error, truncated, not UTF-8).
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// JSON, but not a valid event; `field` names the offending field.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the field (`residents[1].openapp_user_id`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> EventError {
    EventError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The body as sent; optional wrappers so that every missing field gets a precise message.
/// Unknown fields are ignored so senders can add fields without breaking ingest.
#[derive(Deserialize)]
struct WireEvent {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    occurred_at: Option<String>,
    lease: Option<Lease>,
    residents: Option<Vec<WireResident>>,
    #[serde(default)]
    access: Option<WireAccess>,
}

/// A resident as sent: an OpenApp user id, or an email to resolve (the id wins when both
/// are given).
#[derive(Deserialize)]
struct WireResident {
    #[serde(default)]
    openapp_user_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
}

#[derive(Deserialize)]
struct WireAccess {
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
}

/// Whether `s` may be used as an id inside an OpenApp URL path: `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_path_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` is acceptable as an event id: 1 to 255 visible ASCII characters.
pub fn is_valid_event_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses and validates a version-1 event body whose signed id is `event_id`.
pub fn parse_event(body: &[u8], event_id: &str) -> Result<LeaseEvent, EventError> {
    let wire = parse_wire(body)?;
    if let Some(version) = wire.version
        && version != 1
    {
        return Err(invalid(
            "version",
            format!("version {version} is not supported (expected 1)"),
        ));
    }
    if let Some(id) = &wire.id
        && id != event_id
    {
        return Err(invalid("id", "must equal the webhook-id header"));
    }
    let event_type = wire
        .event_type
        .ok_or_else(|| invalid("type", "is required"))?
        .parse::<EventType>()
        .map_err(|e| invalid("type", e.to_string()))?;
    let occurred_at = parse_time(
        "occurred_at",
        wire.occurred_at
            .as_deref()
            .ok_or_else(|| invalid("occurred_at", "is required"))?,
    )?;
    let lease = wire.lease.ok_or_else(|| invalid("lease", "is required"))?;
    check_text("lease.id", &lease.id)?;
    check_text("lease.property_id", &lease.property_id)?;
    if let Some(unit) = &lease.unit {
        check_len("lease.unit", unit)?;
    }
    let (residents, residents_by_email) = residents(wire.residents)?;
    Ok(LeaseEvent {
        id: event_id.to_owned(),
        event_type,
        occurred_at,
        lease,
        residents,
        residents_by_email,
        access: wire.access.map(access_window).transpose()?,
    })
}

/// The body as one UTF-8 JSON object, read into [`WireEvent`] with the path of any field
/// of the wrong type.
fn parse_wire(body: &[u8]) -> Result<WireEvent, EventError> {
    // The whole body must be one JSON text before any field is looked at: serde_json stops
    // reading after the event's closing brace and does not check the UTF-8 of strings it
    // skips, so neither trailing bytes nor bad UTF-8 in unknown fields would be noticed.
    let text = std::str::from_utf8(body).map_err(|e| {
        EventError::InvalidJson(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| EventError::InvalidJson(e.to_string()))?;
    // serde reads a struct from an array in field order too; an event is an object only.
    if !text.trim_start().starts_with('{') {
        return Err(invalid("body", "must be a JSON object"));
    }
    let deserializer = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => invalid(
                if path == "." { "body".into() } else { path },
                strip_position(&inner),
            ),
            _ => EventError::InvalidJson(inner.to_string()),
        }
    })
}

/// 1 to [`MAX_RESIDENTS`] people, each with a valid OpenApp user id or else a plausible
/// email, each once: those known by id, and those known only by email.
fn residents(
    residents: Option<Vec<WireResident>>,
) -> Result<(Vec<Resident>, Vec<ResidentByEmail>), EventError> {
    let wire = residents.ok_or_else(|| invalid("residents", "is required"))?;
    if wire.is_empty() || wire.len() > MAX_RESIDENTS {
        return Err(invalid(
            "residents",
            format!("must hold 1 to {MAX_RESIDENTS} entries, got {}", wire.len()),
        ));
    }
    let mut by_id: Vec<Resident> = Vec::new();
    let mut by_email: Vec<ResidentByEmail> = Vec::new();
    for (i, r) in wire.into_iter().enumerate() {
        if let Some(ext) = &r.external_id {
            check_len(&format!("residents[{i}].external_id"), ext)?;
        }
        if let Some(name) = &r.name {
            check_len(&format!("residents[{i}].name"), name)?;
        }
        match (r.openapp_user_id, r.email) {
            (Some(id), _) => {
                if !is_valid_path_id(&id) {
                    return Err(invalid(
                        format!("residents[{i}].openapp_user_id"),
                        "must match [A-Za-z0-9_-]{1,64}",
                    ));
                }
                // The same person listed twice needs one job, not two.
                if !by_id.iter().any(|seen| seen.openapp_user_id == id) {
                    by_id.push(Resident {
                        openapp_user_id: id,
                        external_id: r.external_id,
                    });
                }
            }
            (None, Some(email)) => {
                // The message never repeats the email: it is personal data.
                let email = normalize_email(&email).ok_or_else(|| {
                    invalid(
                        format!("residents[{i}].email"),
                        "must be an email address (local@domain, at most 254 bytes)",
                    )
                })?;
                if !by_email.iter().any(|seen| seen.email == email) {
                    by_email.push(ResidentByEmail {
                        email,
                        name: r.name.filter(|n| !n.trim().is_empty()),
                        external_id: r.external_id,
                    });
                }
            }
            (None, None) => {
                return Err(invalid(
                    format!("residents[{i}]"),
                    "needs openapp_user_id or email",
                ));
            }
        }
    }
    Ok((by_id, by_email))
}

/// The access window, its end not before its start.
fn access_window(access: WireAccess) -> Result<AccessWindow, EventError> {
    let starts_at = access
        .starts_at
        .as_deref()
        .map(|s| parse_time("access.starts_at", s))
        .transpose()?;
    let ends_at = access
        .ends_at
        .as_deref()
        .map(|s| parse_time("access.ends_at", s))
        .transpose()?;
    if let (Some(s), Some(e)) = (starts_at, ends_at)
        && e < s
    {
        return Err(invalid(
            "access.ends_at",
            "must not be before access.starts_at",
        ));
    }
    Ok(AccessWindow { starts_at, ends_at })
}

/// Refuses an event that claims to have happened more than `max_skew` after `now`.
///
/// An event's `occurred_at` is its version: one dated in the future would outrank every
/// real event of its lease until that moment, keeping a door open (or shut) for as long.
/// So a sender's clock may run ahead by `max_skew` at most. Access windows
/// (`access.starts_at`, `access.ends_at`) are not versions and may lie in the future.
pub fn check_not_future(
    event: &LeaseEvent,
    now: OffsetDateTime,
    max_skew: std::time::Duration,
) -> Result<(), EventError> {
    let ahead = event.occurred_at - now;
    if ahead <= time::Duration::try_from(max_skew).unwrap_or(time::Duration::MAX) {
        return Ok(());
    }
    Err(invalid(
        "occurred_at",
        format!(
            "is {} s ahead of the server clock; at most {} s is accepted (max_clock_skew_secs)",
            ahead.whole_seconds(),
            max_skew.as_secs()
        ),
    ))
}

fn parse_time(field: &str, value: &str) -> Result<OffsetDateTime, EventError> {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(|_| {
        invalid(
            field,
            "must be an RFC 3339 timestamp such as 2026-11-22T10:15:00Z",
        )
    })
}

fn check_text(field: &str, value: &str) -> Result<(), EventError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    check_len(field, value)
}

fn check_len(field: &str, value: &str) -> Result<(), EventError> {
    if value.len() > MAX_ID_LEN {
        return Err(invalid(
            field,
            format!("must be at most {MAX_ID_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// serde_json appends "at line 1 column 42"; the field path already says where.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "type": "lease.signed",
      "occurred_at": "2026-11-22T10:15:00Z",
      "lease": { "id": "L-1042", "property_id": "P-17", "unit": "4B" },
      "residents": [ { "openapp_user_id": "01JD3ZJ4Q8W6V5T2N9K7H1M0PX", "external_id": "T-88" } ],
      "access": { "starts_at": "2026-12-01T00:00:00Z", "ends_at": "2027-11-30T23:59:59Z" }
    }"#;

    fn field_of(body: &str) -> String {
        match parse_event(body.as_bytes(), "evt-1") {
            Err(EventError::Invalid { field, .. }) => field,
            other => panic!("expected invalid event, got {other:?}"),
        }
    }

    #[test]
    fn sample_event_parses() {
        let e = parse_event(SAMPLE.as_bytes(), "evt-1").unwrap();
        assert_eq!(e.event_type, EventType::LeaseSigned);
        assert_eq!(e.lease.property_id, "P-17");
        assert_eq!(e.residents.len(), 1);
        assert!(e.access.unwrap().starts_at.is_some());
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        for body in ["", "{", "not json", "{\"type\": }", "\u{0}"] {
            assert!(
                matches!(
                    parse_event(body.as_bytes(), "e"),
                    Err(EventError::InvalidJson(_))
                ),
                "{body:?}"
            );
        }
        assert!(matches!(
            parse_event(&[0xff, 0xfe], "e"),
            Err(EventError::InvalidJson(_))
        ));
    }

    /// Found by the `event_parser` fuzz target: bytes after the event, and invalid UTF-8 in
    /// a field the parser skips, were accepted; a syntax error after a bad field was
    /// reported as an invalid event.
    #[test]
    fn a_body_that_is_not_one_json_text_is_invalid_json() {
        let mut not_utf8 = b"{\"note\": \"a\xe1Z\",".to_vec();
        not_utf8.extend_from_slice(&SAMPLE.as_bytes()[1..]);
        for body in [
            format!("{SAMPLE}}}").into_bytes(),
            format!("{SAMPLE} {{\"type\": \"lease.ended\"}}").into_bytes(),
            format!("{SAMPLE}[]").into_bytes(),
            not_utf8,
            b"{\"type\": 5, garbage".to_vec(),
        ] {
            assert!(
                matches!(parse_event(&body, "evt-1"), Err(EventError::InvalidJson(_))),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
        assert!(parse_event(format!("{SAMPLE}\r\n \t").as_bytes(), "evt-1").is_ok());
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(&SAMPLE.replace("lease.signed", "lease.renewed")),
            "type"
        );
        assert_eq!(
            field_of(&SAMPLE.replace("2026-11-22T10:15:00Z", "yesterday")),
            "occurred_at"
        );
        assert_eq!(
            field_of(&SAMPLE.replace("01JD3ZJ4Q8W6V5T2N9K7H1M0PX", "../admin")),
            "residents[0].openapp_user_id"
        );
        assert_eq!(field_of(&SAMPLE.replace("\"L-1042\"", "\"\"")), "lease.id");
        assert_eq!(field_of(&SAMPLE.replace("\"L-1042\"", "42")), "lease.id");
        assert_eq!(
            field_of(&SAMPLE.replace("\"unit\": \"4B\"", "\"unit\": 4")),
            "lease.unit"
        );
        assert_eq!(
            field_of(&SAMPLE.replace("2027-11-30T23:59:59Z", "2026-01-01T00:00:00Z")),
            "access.ends_at"
        );
        assert_eq!(field_of("[]"), "body");
        assert_eq!(field_of("{}"), "type");
        assert_eq!(
            field_of(
                r#"{"type":"lease.ended","occurred_at":"2026-11-22T10:15:00Z","lease":{"id":"L","property_id":"P"},"residents":[]}"#
            ),
            "residents"
        );
    }

    fn with_residents(residents: &str) -> String {
        format!(
            r#"{{"type":"lease.signed","occurred_at":"2026-11-22T10:15:00Z","lease":{{"id":"L","property_id":"P"}},"residents":{residents}}}"#
        )
    }

    #[test]
    fn residents_may_be_named_by_email() {
        let body = with_residents(
            r#"[{"email":" Ada@Example.COM ","name":"Ada Lovelace","external_id":"T-1"},
                {"openapp_user_id":"u-2","email":"alan@example.com"},
                {"email":"ada@example.com"},
                {"openapp_user_id":"u-2"}]"#,
        );
        let event = parse_event(body.as_bytes(), "evt-1").unwrap();
        assert_eq!(
            event.residents,
            [Resident {
                openapp_user_id: "u-2".into(),
                external_id: None
            }],
            "the id wins over an email given beside it; one job per person"
        );
        assert_eq!(
            event.residents_by_email,
            [ResidentByEmail {
                email: "ada@example.com".into(),
                name: Some("Ada Lovelace".into()),
                external_id: Some("T-1".into()),
            }],
            "normalized, and the same email twice is one person"
        );
        // Events without emails serialize as before: their digests do not change.
        let plain = parse_event(SAMPLE.as_bytes(), "evt-1").unwrap();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("residents_by_email"), "{json}");
        let back: LeaseEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn a_resident_needs_an_id_or_a_plausible_email_which_errors_never_repeat() {
        for (residents, field) in [
            (r#"[{"external_id":"T-1"}]"#, "residents[0]"),
            (r#"[{"email":"ada.example.com"}]"#, "residents[0].email"),
            (
                r#"[{"email":"ada lovelace@example.com"}]"#,
                "residents[0].email",
            ),
            (r#"[{"email":"@example.com"}]"#, "residents[0].email"),
            (r#"[{"email":"ada@"}]"#, "residents[0].email"),
            (r#"[{"email":"a@b@c"}]"#, "residents[0].email"),
            (r#"[{"email":"a@b.c"}, {"email":7}]"#, "residents[1].email"),
            (
                r#"[{"email":"a@b.c", "name":"x\u0000"}]"#,
                "residents[0].name",
            ),
        ] {
            let body = with_residents(residents);
            let err = parse_event(body.as_bytes(), "evt-1").unwrap_err();
            match &err {
                EventError::Invalid { field: f, message } => {
                    assert_eq!(f, field, "{residents}");
                    assert!(!message.contains("example"), "echoes the email: {message}");
                }
                other @ EventError::InvalidJson(_) => panic!("{residents}: {other:?}"),
            }
        }
        let long = format!(r#"[{{"email":"{}@example.com"}}]"#, "a".repeat(250));
        assert_eq!(field_of(&with_residents(&long)), "residents[0].email");
        let many = format!(
            "[{}]",
            vec![r#"{"email":"a@b.c"}"#; MAX_RESIDENTS + 1].join(",")
        );
        assert_eq!(field_of(&with_residents(&many)), "residents");
    }

    #[test]
    fn only_a_json_object_is_an_event() {
        let sample = r#"["v", "evt-1", "lease.signed", "2026-11-22T10:15:00Z", {"id": "L", "property_id": "P"}, [{"openapp_user_id": "u"}]]"#;
        for body in [sample, "5", "\"event\"", "null"] {
            let err = parse_event(body.as_bytes(), "evt-1").unwrap_err();
            assert!(
                matches!(&err, EventError::Invalid { field, .. } if field == "body"),
                "{body}: {err:?}"
            );
        }
    }

    #[test]
    fn body_id_must_match_the_signed_id() {
        let body = SAMPLE.replacen('{', "{\"id\": \"evt-2\",", 1);
        assert_eq!(field_of(&body), "id");
        let body = SAMPLE.replacen('{', "{\"id\": \"evt-1\",", 1);
        assert!(parse_event(body.as_bytes(), "evt-1").is_ok());
    }

    #[test]
    fn too_many_residents_are_refused_and_duplicates_merged() {
        let one = r#"{ "openapp_user_id": "u1" }"#;
        let many = vec![one; 51].join(",");
        let body = SAMPLE.replace(
            r#"[ { "openapp_user_id": "01JD3ZJ4Q8W6V5T2N9K7H1M0PX", "external_id": "T-88" } ]"#,
            &format!("[{many}]"),
        );
        assert_eq!(field_of(&body), "residents");
        let twice = SAMPLE.replace(
            r#"[ { "openapp_user_id": "01JD3ZJ4Q8W6V5T2N9K7H1M0PX", "external_id": "T-88" } ]"#,
            &format!("[{one},{one}]"),
        );
        assert_eq!(
            parse_event(twice.as_bytes(), "evt-1")
                .unwrap()
                .residents
                .len(),
            1
        );
    }

    #[test]
    fn path_ids() {
        assert!(is_valid_path_id("01JD3ZJ4Q8W6V5T2N9K7H1M0PX"));
        assert!(is_valid_path_id("a_b-C"));
        assert!(!is_valid_path_id(""));
        assert!(!is_valid_path_id(&"a".repeat(65)));
        assert!(!is_valid_path_id("a b"));
        assert!(!is_valid_path_id("a%2F"));
    }

    #[test]
    fn occurred_at_may_run_ahead_by_the_skew_only_and_windows_may_lie_ahead() {
        use time::macros::datetime;
        let event = parse_event(SAMPLE.as_bytes(), "evt-1").unwrap();
        let skew = std::time::Duration::from_secs(300);
        // SAMPLE occurred at 10:15 and its access window starts weeks later.
        for now in [
            datetime!(2026-11-22 10:10 UTC),
            datetime!(2030-01-01 0:00 UTC),
        ] {
            check_not_future(&event, now, skew).unwrap();
        }
        match check_not_future(&event, datetime!(2026-11-22 10:09:59 UTC), skew) {
            Err(EventError::Invalid { field, message }) => {
                assert_eq!(field, "occurred_at");
                assert!(message.starts_with("is 301 s ahead"), "{message}");
            }
            other => panic!("expected occurred_at to be refused, got {other:?}"),
        }
        let far = SAMPLE.replace("2026-11-22T10:15:00Z", "9999-01-01T00:00:00Z");
        let far = parse_event(far.as_bytes(), "evt-1").unwrap();
        assert!(check_not_future(&far, datetime!(2026-11-22 0:00 UTC), skew).is_err());
        assert!(
            check_not_future(
                &far,
                datetime!(2026-11-22 0:00 UTC),
                std::time::Duration::MAX
            )
            .is_ok(),
            "an unbounded skew does not overflow"
        );
    }
}
