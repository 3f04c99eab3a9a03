//! Webhook signature schemes. Each verifies the raw request bytes before anything parses
//! them, compares in constant time after checking lengths, and fails closed.
//!
//! Pure code: headers come in through [`HeaderLookup`], so this module knows nothing of HTTP.
//!
//! - [`standard_webhooks`]: Standard Webhooks 1.0 / Svix (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`).
//! - [`hmac_sha256`]: a configurable HMAC-SHA256 over the body (GitHub's
//!   `X-Hub-Signature-256`) or over `{timestamp}.{body}` (Buildium), hex or base64.
//! - [`source_verifier`]: the verifier of a configured `[[sources]]` entry, at a given
//!   instant (the one piece that reads configuration types).

pub mod hmac_sha256;
mod source;
pub mod standard_webhooks;

pub use source::{MIN_HMAC_SECRET_LEN, SourceKeyError, hmac_format, source_verifier};

#[cfg(test)]
mod properties;

use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest as _, Sha256};

/// Why a request's signature was not accepted. Each maps to one public error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header the scheme needs is absent or empty.
    #[error("missing {0} header")]
    Missing(String),
    /// A header is malformed, or no signature matches any active secret.
    #[error("{0}")]
    Invalid(&'static str),
    /// The signature is authentic but its timestamp is outside the tolerance.
    #[error(
        "timestamp is {age_secs} s {direction} the server clock; tolerance is {tolerance_secs} s"
    )]
    Stale {
        /// How far off the timestamp is, in seconds.
        age_secs: u64,
        /// `"behind"` (too old) or `"ahead of"` (in the future).
        direction: &'static str,
        /// The configured tolerance.
        tolerance_secs: u64,
    },
}

impl SignatureError {
    /// The machine-readable code returned to the sender.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing(_) => "missing_signature",
            SignatureError::Invalid(_) => "invalid_signature",
            SignatureError::Stale { .. } => "stale_timestamp",
        }
    }
}

/// The message a request gets when no active secret produced its signature. The same for
/// every cause (wrong secret, expired secret, tampered body), so a forger learns nothing.
pub(crate) const NO_MATCH: &str = "no signature matches an active secret for this source";

/// Read access to a request's headers by lower-case name. A value that is not visible ASCII
/// should be returned as something that cannot verify (the HTTP layer returns `"\u{fffd}"`),
/// never dropped, so that it is reported as invalid rather than missing.
pub trait HeaderLookup {
    /// The value of header `name`, if present.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> HeaderLookup for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// One HMAC key and the end of its validity. Expiry is checked at every request, so a
/// running process stops accepting a rotated-out secret at `not_after` without a restart.
pub struct SigningKey {
    bytes: SecretBox<Vec<u8>>,
    not_after: Option<i64>,
}

impl SigningKey {
    /// A key of `bytes`, valid until Unix second `not_after` inclusive (`None`: no end).
    pub fn new(bytes: Vec<u8>, not_after: Option<i64>) -> Self {
        Self {
            bytes: SecretBox::new(Box::new(bytes)),
            not_after,
        }
    }

    /// Whether the key may verify at Unix second `now`.
    pub fn is_active_at(&self, now: i64) -> bool {
        self.not_after.is_none_or(|end| now <= end)
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.bytes.expose_secret()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("bytes", &"[redacted]")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// HMAC-SHA256 of `content` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], content: &[&[u8]]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in content {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether any of `candidates` equals the HMAC of `content` under any key active at `now`.
/// Every key and every candidate is compared, whatever matched before, in constant time;
/// candidates are fixed-length tags, so the `v1,` empty-signature bypass of CVE-2024-21491
/// cannot happen here.
pub(crate) fn any_key_matches(
    keys: &[SigningKey],
    candidates: &[[u8; 32]],
    content: &[&[u8]],
    now: i64,
) -> bool {
    use subtle::ConstantTimeEq as _;
    let mut matched = subtle::Choice::from(0);
    for key in keys.iter().filter(|k| k.is_active_at(now)) {
        let tag = hmac_sha256(key.expose(), content);
        for candidate in candidates {
            matched |= candidate.ct_eq(&tag);
        }
    }
    matched.into()
}

/// Parses a signed timestamp header: ASCII digits only, Unix seconds, or Unix milliseconds
/// when the number is too large to be seconds (senders such as Buildium-style emulators use
/// `Date.now()`); seconds reach 10^11 only in the year 5138.
pub(crate) fn parse_timestamp(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i64 = text.parse().ok()?;
    Some(if value >= 100_000_000_000 {
        value / 1000
    } else {
        value
    })
}

/// Checks a verified timestamp against `now`: `Stale` when more than `tolerance_secs` off
/// either way.
pub(crate) fn check_freshness(
    timestamp: i64,
    now: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let skew = now.saturating_sub(timestamp);
    if skew.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::Stale {
            age_secs: skew.unsigned_abs(),
            direction: if skew > 0 { "behind" } else { "ahead of" },
            tolerance_secs,
        });
    }
    Ok(())
}

/// What a successful verification vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The event id, when the scheme signs one (Standard Webhooks' `webhook-id`); `None`
    /// when it comes from the source's `event_id` setting instead.
    pub id: Option<String>,
    /// The signed timestamp, when the scheme has one.
    pub timestamp: Option<i64>,
}

/// A configured source's verifier, whichever scheme it uses.
#[derive(Debug)]
pub enum SourceVerifier {
    /// Standard Webhooks 1.0.
    StandardWebhooks(standard_webhooks::Verifier),
    /// Configurable HMAC-SHA256 (GitHub, Buildium and similar).
    HmacSha256(hmac_sha256::Verifier),
}

impl SourceVerifier {
    /// Verifies `body` with the request's `headers` at Unix time `now`.
    pub fn verify(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
        now: i64,
    ) -> Result<Verified, SignatureError> {
        match self {
            SourceVerifier::StandardWebhooks(v) => {
                let signed = standard_webhooks::SignedHeaders {
                    id: headers.header(standard_webhooks::ID_HEADER),
                    timestamp: headers.header(standard_webhooks::TIMESTAMP_HEADER),
                    signature: headers.header(standard_webhooks::SIGNATURE_HEADER),
                };
                v.verify(signed, body, now).map(|ok| Verified {
                    id: Some(ok.id),
                    timestamp: Some(ok.timestamp),
                })
            }
            SourceVerifier::HmacSha256(v) => v.verify(headers, body, now),
        }
    }

    /// The event id of a verified request: the signed id, or the one the source's `event_id`
    /// setting points to.
    pub fn event_id(
        &self,
        verified: &Verified,
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
    ) -> Result<String, EventIdError> {
        if let Some(id) = &verified.id {
            return Ok(id.clone());
        }
        match self {
            SourceVerifier::StandardWebhooks(_) => Err(EventIdError::Missing(
                standard_webhooks::ID_HEADER.to_owned(),
            )),
            SourceVerifier::HmacSha256(v) => v.event_id_source().extract(headers, body),
        }
    }

    /// How many of this source's keys are active at `now`, of how many configured.
    pub fn key_status(&self, now: i64) -> KeyStatus {
        let keys = match self {
            SourceVerifier::StandardWebhooks(v) => v.keys(),
            SourceVerifier::HmacSha256(v) => v.keys(),
        };
        KeyStatus {
            active: keys.iter().filter(|k| k.is_active_at(now)).count(),
            total: keys.len(),
        }
    }
}

/// How many of a source's keys may verify now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStatus {
    /// Keys not yet past their `not_after`.
    pub active: usize,
    /// All configured keys.
    pub total: usize,
}

/// Where a source's dedupe id comes from when its scheme does not sign one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventIdSource {
    /// A request header (`header:x-event-id`). Not covered by the signature unless the
    /// scheme signs it, so a replayed capture with a new id is not deduplicated; prefer a
    /// body field or a timestamped scheme.
    Header(String),
    /// A field of the JSON body, by dotted path (`body:id`, `body:meta.delivery_id`); a
    /// string or an integer.
    BodyField(Vec<String>),
    /// The SHA-256 of the body (`body-sha256`), for senders without any id: a re-sent
    /// identical body is a duplicate.
    BodySha256,
}

/// Why no event id could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    /// The header or body field that should hold the id is absent or empty.
    #[error("the event id is missing: {0} is absent or empty")]
    Missing(String),
    /// The body field is not a string or integer, or the body is not a JSON object.
    #[error("the event id at {0} must be a string or an integer")]
    NotScalar(String),
}

impl std::str::FromStr for EventIdSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str =
            "expected `header:<name>`, `body:<field>` (dotted path) or `body-sha256`";
        if s == "body-sha256" {
            return Ok(EventIdSource::BodySha256);
        }
        if let Some(name) = s.strip_prefix("header:") {
            let name = name.trim();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            return if valid {
                Ok(EventIdSource::Header(name.to_ascii_lowercase()))
            } else {
                Err(format!("`{s}` does not name a valid header; {EXPECTED}"))
            };
        }
        if let Some(path) = s.strip_prefix("body:") {
            let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            return if parts.iter().all(|p| !p.is_empty()) {
                Ok(EventIdSource::BodyField(parts))
            } else {
                Err(format!("`{s}` has an empty field name; {EXPECTED}"))
            };
        }
        Err(format!("`{s}` is not an event id source; {EXPECTED}"))
    }
}

impl EventIdSource {
    /// The id for a request with these `headers` and `body`. Call after verification: a
    /// body field is then authentic.
    pub fn extract(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
    ) -> Result<String, EventIdError> {
        match self {
            EventIdSource::Header(name) => headers
                .header(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| EventIdError::Missing(format!("header {name}"))),
            EventIdSource::BodyField(path) => {
                let shown = format!("body field {}", path.join("."));
                // A body that is not JSON has no id; the event parser reports it properly.
                let value: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|_| EventIdError::Missing(shown.clone()))?;
                let mut at = &value;
                for part in path {
                    at = at
                        .get(part)
                        .ok_or_else(|| EventIdError::Missing(shown.clone()))?;
                }
                match at {
                    serde_json::Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                    serde_json::Value::String(_) | serde_json::Value::Null => {
                        Err(EventIdError::Missing(shown))
                    }
                    serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
                    _ => Err(EventIdError::NotScalar(shown)),
                }
            }
            EventIdSource::BodySha256 => {
                Ok(format!("sha256:{}", hex::encode(Sha256::digest(body))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_seconds_or_milliseconds() {
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_timestamp("1700000000123"), Some(1_700_000_000));
        for bad in ["", "-1", "1e9", "12a", " 1", "99999999999999999999", "１"] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn expired_keys_stop_matching_at_not_after() {
        let keys = [SigningKey::new(b"0123456789abcdef".to_vec(), Some(100))];
        let tag = hmac_sha256(b"0123456789abcdef", &[b"body"]);
        assert!(any_key_matches(&keys, &[tag], &[b"body"], 100));
        assert!(!any_key_matches(&keys, &[tag], &[b"body"], 101));
        assert!(format!("{:?}", keys[0]).contains("redacted"));
        assert!(!format!("{:?}", keys[0]).contains("0123456789abcdef"));
    }

    #[test]
    fn event_id_sources_parse_and_extract() {
        let headers = [("X-Event-Id", " evt_1 ")];
        let body = br#"{"id":"evt_2","meta":{"n":42,"obj":{}},"empty":""}"#;
        let id = |s: &str| s.parse::<EventIdSource>().unwrap().extract(&headers, body);
        assert_eq!(id("header:x-event-id").unwrap(), "evt_1");
        assert_eq!(id("body:id").unwrap(), "evt_2");
        assert_eq!(id("body:meta.n").unwrap(), "42");
        assert!(id("body-sha256").unwrap().starts_with("sha256:"));
        assert_eq!(id("body-sha256").unwrap().len(), 7 + 64);
        assert!(matches!(
            id("header:x-other"),
            Err(EventIdError::Missing(_))
        ));
        assert!(matches!(id("body:nope"), Err(EventIdError::Missing(_))));
        assert!(matches!(id("body:empty"), Err(EventIdError::Missing(_))));
        assert!(matches!(
            id("body:meta.obj"),
            Err(EventIdError::NotScalar(_))
        ));
        for bad in [
            "header:",
            "header:a b",
            "body:",
            "body:a..b",
            "id",
            "query:x",
        ] {
            assert!(bad.parse::<EventIdSource>().is_err(), "{bad}");
        }
    }
}
