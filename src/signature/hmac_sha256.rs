//! A configurable HMAC-SHA256 scheme for senders that are not Standard Webhooks.
//!
//! One header carries `<prefix><tag>`, the tag hex or base64, computed over a template of
//! the raw body and, optionally, a signed timestamp header:
//!
//! | Sender | `signature_header` | `signature_prefix` | `encoding` | `signed_content` |
//! |---|---|---|---|---|
//! | GitHub | `x-hub-signature-256` | `sha256=` | `hex` | `{body}` |
//! | Buildium | `buildium-webhook-signature` | (none) | `base64` | `{timestamp}.{body}` |
//!
//! The secret's UTF-8 bytes are the key, as both senders do. When `timestamp_header` is set,
//! the timestamp must be in the signed content and within the source's tolerance; without
//! one (GitHub) a captured request stays valid, and only deduplication on the event id
//! stops its replay.

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};

use super::{
    EventIdSource, HeaderLookup, NO_MATCH, SignatureError, SigningKey, Verified, any_key_matches,
    check_freshness, hmac_sha256, parse_timestamp,
};

/// Longest signature header value looked at; a hex tag with a long prefix is far shorter.
const MAX_SIGNATURE_LEN: usize = 256;

/// Standard base64 alphabet, padding optional: some senders strip it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How the tag is written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Lower- or upper-case hex (GitHub).
    Hex,
    /// Standard base64 (Buildium).
    Base64,
}

/// One piece of the signed-content template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Timestamp,
    Body,
}

/// The signed content, parsed from a template such as `{timestamp}.{body}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedContent(Vec<Part>);

impl SignedContent {
    /// Whether the template signs the timestamp header.
    pub fn uses_timestamp(&self) -> bool {
        self.0.contains(&Part::Timestamp)
    }

    /// The pieces to feed the MAC, in order, for `body` and the timestamp header's text.
    fn render<'a>(&'a self, body: &'a [u8], timestamp: Option<&'a str>) -> Vec<&'a [u8]> {
        self.0
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.as_bytes(),
                Part::Body => body,
                // `Format::validate` guarantees a timestamp header whenever one is signed.
                Part::Timestamp => timestamp.unwrap_or_default().as_bytes(),
            })
            .collect()
    }
}

impl std::str::FromStr for SignedContent {
    type Err = String;

    /// `{body}` must appear exactly once and `{timestamp}` at most once; any other text is
    /// signed as written.
    fn from_str(template: &str) -> Result<Self, Self::Err> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{template}` has an unclosed `{{`"))?;
            let part = match &rest[open + 1..open + close] {
                "body" => Part::Body,
                "timestamp" => Part::Timestamp,
                other => {
                    return Err(format!(
                        "`{{{other}}}` is not a placeholder; use {{body}} and {{timestamp}}"
                    ));
                }
            };
            parts.push(part);
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let count = |p: &Part| parts.iter().filter(|x| *x == p).count();
        if count(&Part::Body) != 1 {
            return Err("must contain {body} exactly once".into());
        }
        if count(&Part::Timestamp) > 1 {
            return Err("may contain {timestamp} at most once".into());
        }
        Ok(Self(parts))
    }
}

/// The wire format of one source, from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// Header holding the signature, lower case.
    pub signature_header: String,
    /// Text before the tag (`sha256=` for GitHub); may be empty.
    pub signature_prefix: String,
    /// How the tag is written.
    pub encoding: Encoding,
    /// Header holding the signed Unix timestamp, lower case; `None` when the sender signs none.
    pub timestamp_header: Option<String>,
    /// What is signed.
    pub signed_content: SignedContent,
    /// Where the event id comes from.
    pub event_id: EventIdSource,
}

/// Why a format cannot be used. Names the offending configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct FormatError {
    /// The configuration key at fault.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl Format {
    /// GitHub's format: `x-hub-signature-256: sha256=<hex>` over the body, no timestamp, the
    /// delivery id in `x-github-delivery`.
    pub fn github() -> Self {
        Self {
            signature_header: "x-hub-signature-256".into(),
            signature_prefix: "sha256=".into(),
            encoding: Encoding::Hex,
            timestamp_header: None,
            signed_content: SignedContent(vec![Part::Body]),
            event_id: EventIdSource::Header("x-github-delivery".into()),
        }
    }

    /// Buildium's format: `buildium-webhook-signature: <base64>` over
    /// `{timestamp}.{body}` with `buildium-webhook-timestamp`; no event id, so the body's hash.
    pub fn buildium() -> Self {
        Self {
            signature_header: "buildium-webhook-signature".into(),
            signature_prefix: String::new(),
            encoding: Encoding::Base64,
            timestamp_header: Some("buildium-webhook-timestamp".into()),
            signed_content: SignedContent(vec![
                Part::Timestamp,
                Part::Literal(".".into()),
                Part::Body,
            ]),
            event_id: EventIdSource::BodySha256,
        }
    }

    /// Checks that the pieces fit together: a signed `{timestamp}` needs `timestamp_header`,
    /// and a `timestamp_header` must be signed, or anyone could change it.
    pub fn validate(&self) -> Result<(), FormatError> {
        let err = |key, message: &str| {
            Err(FormatError {
                key,
                message: message.to_owned(),
            })
        };
        if !is_header_name(&self.signature_header) {
            return err(
                "signature_header",
                "must be a header name such as x-hub-signature-256",
            );
        }
        if self.signature_prefix.len() > 32
            || !self.signature_prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return err(
                "signature_prefix",
                "must be at most 32 visible ASCII characters",
            );
        }
        match (&self.timestamp_header, self.signed_content.uses_timestamp()) {
            (Some(h), true) if is_header_name(h) => Ok(()),
            (Some(_), true) => err("timestamp_header", "must be a header name"),
            (Some(_), false) => err(
                "signed_content",
                "must contain {timestamp} when timestamp_header is set; an unsigned timestamp proves nothing",
            ),
            (None, true) => err(
                "timestamp_header",
                "is required when signed_content contains {timestamp}",
            ),
            (None, false) => Ok(()),
        }
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Verifies requests of one source against its active secrets.
pub struct Verifier {
    format: Format,
    keys: Vec<SigningKey>,
    tolerance_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("format", &self.format)
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

/// The key bytes of a secret: its UTF-8 bytes, as GitHub and Buildium use them.
pub fn key_of(secret: &str) -> Vec<u8> {
    secret.as_bytes().to_vec()
}

impl Verifier {
    /// The wire format this verifier reads.
    pub fn format(&self) -> &Format {
        &self.format
    }

    /// A verifier for `format` accepting any key of `keys` that is active at request time.
    pub fn new(
        format: Format,
        keys: Vec<SigningKey>,
        tolerance_secs: u64,
    ) -> Result<Self, FormatError> {
        format.validate()?;
        Ok(Self {
            format,
            keys,
            tolerance_secs,
        })
    }

    /// The configured keys, active or not.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// Where this source's event ids come from.
    pub fn event_id_source(&self) -> &EventIdSource {
        &self.format.event_id
    }

    /// Verifies `body` as received at Unix time `now`. The signature is checked before the
    /// timestamp's age, so only authentic requests learn that they are stale.
    pub fn verify(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
        now: i64,
    ) -> Result<Verified, SignatureError> {
        let format = &self.format;
        let signature = headers
            .header(&format.signature_header)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SignatureError::Missing(format.signature_header.clone()))?;
        let timestamp = match &format.timestamp_header {
            None => None,
            Some(name) => {
                let text = headers
                    .header(name)
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| SignatureError::Missing(name.clone()))?;
                let value = parse_timestamp(text).ok_or(SignatureError::Invalid(
                    "the timestamp header must be an integer Unix time",
                ))?;
                Some((text, value))
            }
        };
        let tag = self.decode_tag(signature)?;

        let content = format
            .signed_content
            .render(body, timestamp.map(|(text, _)| text));
        if !any_key_matches(&self.keys, &[tag], &content, now) {
            return Err(SignatureError::Invalid(NO_MATCH));
        }
        if let Some((_, value)) = timestamp {
            check_freshness(value, now, self.tolerance_secs)?;
        }
        Ok(Verified {
            id: None,
            timestamp: timestamp.map(|(_, value)| value),
        })
    }

    /// The 32-byte tag of a signature header value; wrong prefixes, encodings and lengths are
    /// rejected before any comparison.
    fn decode_tag(&self, value: &str) -> Result<[u8; 32], SignatureError> {
        if value.len() > MAX_SIGNATURE_LEN {
            return Err(SignatureError::Invalid("the signature header is too long"));
        }
        let prefix = &self.format.signature_prefix;
        let encoded = match value.get(..prefix.len()) {
            Some(head) if head.eq_ignore_ascii_case(prefix) => &value[prefix.len()..],
            _ => {
                return Err(SignatureError::Invalid(
                    "the signature does not start with the configured prefix",
                ));
            }
        };
        let decoded = match self.format.encoding {
            Encoding::Hex => hex::decode(encoded).ok(),
            Encoding::Base64 => BASE64.decode(encoded).ok(),
        }
        .ok_or(SignatureError::Invalid(match self.format.encoding {
            Encoding::Hex => "the signature is not hex",
            Encoding::Base64 => "the signature is not base64",
        }))?;
        decoded.try_into().map_err(|_| {
            SignatureError::Invalid("the signature has the wrong length for HMAC-SHA256")
        })
    }
}

/// Signs like a sender of `format` would: returns the signature header's value. Used by
/// `send-test-event` and the tests.
pub fn sign(format: &Format, secret: &str, timestamp: Option<&str>, body: &[u8]) -> String {
    let content = format.signed_content.render(body, timestamp);
    let tag = hmac_sha256(&key_of(secret), &content);
    let encoded = match format.encoding {
        Encoding::Hex => hex::encode(tag),
        Encoding::Base64 => general_purpose::STANDARD.encode(tag),
    };
    format!("{}{encoded}", format.signature_prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's public vector (docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries).
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIG: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn verifier(format: Format, secrets: &[&str]) -> Verifier {
        let keys = secrets
            .iter()
            .map(|s| SigningKey::new(key_of(s), None))
            .collect();
        Verifier::new(format, keys, 300).unwrap()
    }

    #[test]
    fn github_public_vector_signs_and_verifies() {
        assert_eq!(
            sign(&Format::github(), GITHUB_SECRET, None, GITHUB_BODY),
            GITHUB_SIG
        );
        let v = verifier(Format::github(), &[GITHUB_SECRET]);
        let ok = v
            .verify(&[("X-Hub-Signature-256", GITHUB_SIG)], GITHUB_BODY, 0)
            .unwrap();
        assert_eq!(
            ok,
            Verified {
                id: None,
                timestamp: None
            }
        );
        // Upper-case hex is the same tag.
        let upper = format!("sha256={}", GITHUB_SIG[7..].to_ascii_uppercase());
        v.verify(&[("x-hub-signature-256", upper.as_str())], GITHUB_BODY, 0)
            .unwrap();
    }

    /// A Buildium-style example computed independently:
    /// `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'buildium-example-secret-0001' -binary | base64`.
    #[test]
    fn buildium_style_example_verifies() {
        const SIG: &str = "SkUzxp5y+vpf27Zt5N1H473GDMn4DRV+j0X4dHTn5tM=";
        let body = br#"{"a":1}"#;
        assert_eq!(
            sign(
                &Format::buildium(),
                "buildium-example-secret-0001",
                Some("1700000000"),
                body
            ),
            SIG
        );
        let v = verifier(Format::buildium(), &["buildium-example-secret-0001"]);
        let headers = [
            ("buildium-webhook-signature", SIG),
            ("buildium-webhook-timestamp", "1700000000"),
        ];
        let ok = v.verify(&headers, body, 1_700_000_100).unwrap();
        assert_eq!(ok.timestamp, Some(1_700_000_000));
        let stale = v.verify(&headers, body, 1_700_000_301).unwrap_err();
        assert_eq!(stale.code(), "stale_timestamp");
        let moved = [
            ("buildium-webhook-signature", SIG),
            ("buildium-webhook-timestamp", "1700000001"),
        ];
        assert_eq!(
            v.verify(&moved, body, 1_700_000_000).unwrap_err().code(),
            "invalid_signature"
        );
        let no_ts = [("buildium-webhook-signature", SIG)];
        assert_eq!(
            v.verify(&no_ts, body, 1_700_000_000).unwrap_err(),
            SignatureError::Missing("buildium-webhook-timestamp".into())
        );
    }

    #[test]
    fn malformed_signatures_are_rejected_before_comparing() {
        let v = verifier(Format::github(), &[GITHUB_SECRET]);
        let hex = &GITHUB_SIG[7..];
        for sig in [
            "sha256=".to_owned(),
            hex.to_owned(),
            format!("sha1={hex}"),
            format!("sha256={}", &hex[..62]),
            format!("sha256={hex}00"),
            format!("sha256={}zz", &hex[..62]),
            format!("sha256={}", "é".repeat(32)),
            "x".repeat(10_000),
        ] {
            let err = v
                .verify(&[("x-hub-signature-256", sig.as_str())], GITHUB_BODY, 0)
                .unwrap_err();
            assert_eq!(err.code(), "invalid_signature", "{sig:?}");
        }
        let err = v.verify(&[("other", "x")], GITHUB_BODY, 0).unwrap_err();
        assert_eq!(err.code(), "missing_signature");
    }

    #[test]
    fn templates_are_validated() {
        assert!("{body}".parse::<SignedContent>().is_ok());
        assert!("v0:{timestamp}:{body}".parse::<SignedContent>().is_ok());
        for bad in [
            "",
            "{timestamp}",
            "{body}{body}",
            "{body",
            "{id}.{body}",
            "{timestamp}{timestamp}{body}",
        ] {
            assert!(bad.parse::<SignedContent>().is_err(), "{bad}");
        }
        let mut f = Format::buildium();
        f.timestamp_header = None;
        assert_eq!(f.validate().unwrap_err().key, "timestamp_header");
        let mut f = Format::github();
        f.timestamp_header = Some("x-ts".into());
        assert_eq!(f.validate().unwrap_err().key, "signed_content");
        let mut f = Format::github();
        f.signature_header = "X Hub".into();
        assert_eq!(f.validate().unwrap_err().key, "signature_header");
    }

    #[test]
    fn rotation_accepts_any_active_secret_and_expired_ones_stop() {
        let keys = vec![
            SigningKey::new(key_of("old-secret-0123456789"), Some(1_000)),
            SigningKey::new(key_of(GITHUB_SECRET), None),
        ];
        let v = Verifier::new(Format::github(), keys, 300).unwrap();
        let old = sign(
            &Format::github(),
            "old-secret-0123456789",
            None,
            GITHUB_BODY,
        );
        let headers = [("x-hub-signature-256", old.as_str())];
        v.verify(&headers, GITHUB_BODY, 1_000).unwrap();
        assert_eq!(
            v.verify(&headers, GITHUB_BODY, 1_001).unwrap_err().code(),
            "invalid_signature"
        );
        v.verify(&[("x-hub-signature-256", GITHUB_SIG)], GITHUB_BODY, 1_001)
            .unwrap();
        assert!(!format!("{v:?}").contains("old-secret"));
    }
}
