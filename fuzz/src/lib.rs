//! Shared pieces of the fuzz targets: the input layout, the test verifiers and keys, and an
//! oracle, written independently of lease-sync's code, that says whether a request carries
//! a correct signature. A verifier that accepts a request the oracle rejects is a bypass.
//!
//! # Input layout (`signature_headers`, `verify_then_parse`)
//!
//! An input reads like an HTTP request, so seeds are readable and the fuzzer can mutate
//! header values freely:
//!
//! ```text
//! <control line>
//! <name>: <value>          one header per line, any number; the first of a name wins
//! :<setting>: <value>      settings of the fuzzed `custom` scheme (see `Settings`)
//!                          (an empty line)
//! <body bytes>             raw, to the end of the input
//! ```
//!
//! Each control-line byte, minus `'0'` (wrapping), picks an option; missing bytes are `'0'`:
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | scheme, mod 4: Standard Webhooks, GitHub style, Buildium style, custom |
//! | 1 | signer, mod 5: none (the headers as given), key A, key B, an expired key, an unknown key |
//! | 2 | timestamp, mod 3: as given, `NOW + offset` in seconds, the same in milliseconds |
//! | 3 | offset: the byte as `i8`, times 4 seconds (±512: both fresh and stale) |
//! | 4 | edit of the signature header value, mod 8 (see [`Edit`]) |
//! | 5 | where the edit applies |
//! | 6 | what the edit inserts |
//!
//! When a signer is chosen the harness writes the correct signature header (and the
//! timestamp header when the timestamp is generated) in front of the given headers, signing
//! with the schemes' own `sign` functions, then applies the edit.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use lease_sync::signature::hmac_sha256::{self, Encoding, Format, SignedContent};
use lease_sync::signature::standard_webhooks;
use lease_sync::signature::{
    EventIdSource, HeaderLookup as _, SignatureError, SigningKey, SourceVerifier, Verified,
};
use serde::de::IgnoredAny;
use sha2::{Digest as _, Sha256};

/// The server clock.
pub const NOW: i64 = 1_700_000_000;
/// Timestamp tolerance of every verifier.
pub const TOLERANCE: u64 = 300;

/// Standard Webhooks secrets: A (no end), B (ends after `NOW`), expired (ended before
/// `NOW`), unknown (not configured).
pub const SW_SECRETS: [&str; 4] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    "whsec_ZXhwaXJlZC1rZXktMDEyMzQ1Njc4OQ==",
    "whsec_dW5rbm93bi1rZXktMDEyMzQ1Njc4OQ==",
];

/// HMAC-SHA256 secrets, in the same roles as [`SW_SECRETS`].
pub const HMAC_SECRETS: [&str; 4] = [
    "fuzz-secret-a-0123456789",
    "fuzz-secret-b-0123456789",
    "fuzz-secret-expired-0123",
    "fuzz-secret-unknown-0123",
];

/// `not_after` of the configured keys (the unknown one is not configured).
const NOT_AFTER: [Option<i64>; 3] = [None, Some(NOW + 1_000), Some(NOW - 1)];

/// Which scheme a source uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks 1.0.
    StandardWebhooks,
    /// `x-hub-signature-256: sha256=<hex>` over the body.
    GitHub,
    /// `buildium-webhook-signature: <base64>` over `{timestamp}.{body}`.
    Buildium,
    /// `x-signature` with the prefix, encoding, template and timestamp header from the
    /// settings lines.
    Custom,
}

/// One edit of the signature header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Leave it.
    None,
    /// Flip one bit (of the low 7) of one ASCII character.
    FlipBit,
    /// Cut it at a position.
    Truncate,
    /// Insert a character.
    Insert,
    /// Remove a character.
    Remove,
    /// Swap the case of every ASCII letter.
    SwapCase,
    /// Surround with spaces and tabs.
    Pad,
    /// Append a space and a copy with one character changed (a second entry).
    AppendEntry,
}

/// Settings of the `custom` scheme and the parsers, from `:name: value` lines.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `:template:`, the signed-content template (default `{body}`, or `{timestamp}.{body}`
    /// with a timestamp header).
    pub template: Option<String>,
    /// `:prefix:`, the signature prefix (default none).
    pub prefix: Option<String>,
    /// `:encoding:`, `hex` or anything else for base64.
    pub encoding: Option<String>,
    /// `:timestamp-header:`, empty for none (default `x-timestamp` when the template signs
    /// a timestamp).
    pub timestamp_header: Option<String>,
    /// `:event-id:`, an event-id source (`header:…`, `body:…`, `body-sha256`).
    pub event_id: Option<String>,
}

/// A decoded fuzz input.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source's scheme.
    pub scheme: Scheme,
    /// 0 = none, else 1 + index into the secrets.
    pub signer: usize,
    /// Headers as the verifier sees them, first match wins.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The parser settings.
    pub settings: Settings,
    /// The edit applied to the signature header value.
    pub edit: Edit,
}

fn control(line: &[u8], i: usize) -> u8 {
    line.get(i).copied().unwrap_or(b'0').wrapping_sub(b'0')
}

impl Request {
    /// Decodes `data` (see the crate docs) and, when a signer is chosen, signs it.
    pub fn decode(data: &[u8]) -> Self {
        let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&data[..at], &data[at + 2..]),
            None => (data, &b""[..]),
        };
        let mut lines = head.split(|&b| b == b'\n');
        let ctl = lines.next().unwrap_or_default();
        let scheme = match control(ctl, 0) % 4 {
            0 => Scheme::StandardWebhooks,
            1 => Scheme::GitHub,
            2 => Scheme::Buildium,
            _ => Scheme::Custom,
        };
        let signer = usize::from(control(ctl, 1) % 5);
        let timestamp_mode = control(ctl, 2) % 3;
        let offset = i64::from(control(ctl, 3) as i8) * 4;
        let edit = match control(ctl, 4) % 8 {
            0 => Edit::None,
            1 => Edit::FlipBit,
            2 => Edit::Truncate,
            3 => Edit::Insert,
            4 => Edit::Remove,
            5 => Edit::SwapCase,
            6 => Edit::Pad,
            _ => Edit::AppendEntry,
        };
        let at = usize::from(control(ctl, 5));
        let insert = char::from(control(ctl, 6).wrapping_add(b'0'));

        let mut settings = Settings::default();
        let mut headers = Vec::new();
        for line in lines {
            let line = String::from_utf8_lossy(line);
            if let Some(setting) = line.strip_prefix(':') {
                let (name, value) = split_header(setting);
                let slot = match name {
                    "template" => &mut settings.template,
                    "prefix" => &mut settings.prefix,
                    "encoding" => &mut settings.encoding,
                    "timestamp-header" => &mut settings.timestamp_header,
                    "event-id" => &mut settings.event_id,
                    _ => continue,
                };
                *slot = Some(value.to_owned());
            } else {
                let (name, value) = split_header(&line);
                headers.push((name.to_owned(), value.to_owned()));
            }
        }

        let mut request = Request {
            scheme,
            signer,
            headers,
            body: body.to_vec(),
            settings,
            edit,
        };
        let names = request.header_names();
        if let Some(ts_header) = &names.timestamp
            && timestamp_mode > 0
        {
            let seconds = NOW + offset;
            let text = if timestamp_mode == 1 {
                seconds.to_string()
            } else {
                (seconds * 1000 + i64::from(control(ctl, 6)) % 1000).to_string()
            };
            request.headers.insert(0, (ts_header.clone(), text));
        }
        if signer > 0
            && let Some(mut signature) = request.sign(signer - 1)
        {
            apply_edit(&mut signature, edit, at, insert);
            request
                .headers
                .insert(0, (names.signature.clone(), signature));
        } else if let Some(value) = request
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(&names.signature))
            .map(|(_, v)| v)
        {
            apply_edit(value, edit, at, insert);
        }
        request
    }

    /// Header pairs for [`lease_sync::signature::HeaderLookup`].
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// The value the verifiers see for `name`: the first header of that name, ignoring
    /// ASCII case (the contract of `HeaderLookup`; checked against it in
    /// [`Request::verify_and_check`]).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_names(&self) -> HeaderNames {
        match self.scheme {
            Scheme::StandardWebhooks => HeaderNames {
                signature: standard_webhooks::SIGNATURE_HEADER.into(),
                timestamp: Some(standard_webhooks::TIMESTAMP_HEADER.into()),
            },
            Scheme::GitHub | Scheme::Buildium | Scheme::Custom => {
                match self.format() {
                    Some(f) => HeaderNames {
                        signature: f.signature_header,
                        timestamp: f.timestamp_header,
                    },
                    // An invalid custom format: nothing verifies; still fuzz its header.
                    None => HeaderNames {
                        signature: "x-signature".into(),
                        timestamp: Some("x-timestamp".into()),
                    },
                }
            }
        }
    }

    /// The hmac-sha256 format of this request's scheme; `None` for Standard Webhooks and
    /// for a custom template that does not parse.
    pub fn format(&self) -> Option<Format> {
        match self.scheme {
            Scheme::StandardWebhooks => None,
            Scheme::GitHub => Some(Format {
                signature_header: "x-hub-signature-256".into(),
                signature_prefix: "sha256=".into(),
                encoding: Encoding::Hex,
                timestamp_header: None,
                signed_content: "{body}".parse().ok()?,
                event_id: EventIdSource::Header("x-github-delivery".into()),
            }),
            Scheme::Buildium => Some(Format {
                signature_header: "buildium-webhook-signature".into(),
                signature_prefix: String::new(),
                encoding: Encoding::Base64,
                timestamp_header: Some("buildium-webhook-timestamp".into()),
                signed_content: "{timestamp}.{body}".parse().ok()?,
                event_id: EventIdSource::BodySha256,
            }),
            Scheme::Custom => {
                let s = &self.settings;
                let signed_content: SignedContent = self.template_text().parse().ok()?;
                let timestamp_header = match &s.timestamp_header {
                    Some(h) if h.is_empty() => None,
                    Some(h) => Some(h.clone()),
                    None => signed_content
                        .uses_timestamp()
                        .then(|| "x-timestamp".to_owned()),
                };
                Some(Format {
                    signature_header: "x-signature".into(),
                    signature_prefix: s.prefix.clone().unwrap_or_default(),
                    encoding: if s.encoding.as_deref() == Some("hex") {
                        Encoding::Hex
                    } else {
                        Encoding::Base64
                    },
                    timestamp_header,
                    signed_content,
                    event_id: s
                        .event_id
                        .as_deref()
                        .and_then(|e| e.parse().ok())
                        .unwrap_or(EventIdSource::BodySha256),
                })
            }
        }
    }

    /// The source's verifier: keys A, B and expired; `None` for an invalid custom format.
    pub fn verifier(&self) -> Option<SourceVerifier> {
        match self.scheme {
            Scheme::StandardWebhooks => {
                let keys = SW_SECRETS
                    .iter()
                    .zip(NOT_AFTER)
                    .map(|(s, end)| {
                        let key = standard_webhooks::decode_secret(s).expect("test secret");
                        SigningKey::new(key, end)
                    })
                    .collect();
                Some(SourceVerifier::StandardWebhooks(
                    standard_webhooks::Verifier::with_keys(keys, TOLERANCE),
                ))
            }
            _ => {
                let format = self.format()?;
                let valid = format.validate().is_ok();
                let keys = HMAC_SECRETS
                    .iter()
                    .zip(NOT_AFTER)
                    .map(|(s, end)| SigningKey::new(hmac_sha256::key_of(s), end))
                    .collect();
                let verifier = hmac_sha256::Verifier::new(format, keys, TOLERANCE);
                assert_eq!(
                    verifier.is_ok(),
                    valid,
                    "Verifier::new validates the format"
                );
                verifier.ok().map(SourceVerifier::HmacSha256)
            }
        }
    }

    /// The signature header value a sender holding secret `key` (an index into the
    /// secrets) writes for this request, from the scheme's own `sign` function, checked
    /// against the oracle. `None` when the request cannot be signed (invalid custom format,
    /// a Standard Webhooks timestamp that is not an integer).
    fn sign(&mut self, key: usize) -> Option<String> {
        match self.scheme {
            Scheme::StandardWebhooks => {
                if trimmed(self.header(standard_webhooks::ID_HEADER)).is_none() {
                    self.headers
                        .insert(0, (standard_webhooks::ID_HEADER.into(), "evt-fuzz".into()));
                }
                let id = trimmed(self.header(standard_webhooks::ID_HEADER))?.to_owned();
                let text = trimmed(self.header(standard_webhooks::TIMESTAMP_HEADER))?.to_owned();
                let timestamp: i64 = text.parse().ok()?;
                let signature =
                    standard_webhooks::sign(SW_SECRETS[key], &id, timestamp, &self.body)
                        .expect("test secret");
                if timestamp.to_string() == text {
                    let key_bytes = BASE64.decode(&SW_SECRETS[key][6..]).expect("test secret");
                    let tag = oracle_hmac(
                        &key_bytes,
                        &[id.as_bytes(), b".", text.as_bytes(), b".", &self.body],
                    );
                    assert_eq!(
                        signature,
                        format!("v1,{}", BASE64.encode(tag)),
                        "sign agrees with the oracle"
                    );
                }
                Some(signature)
            }
            _ => {
                let format = self.format()?;
                format.validate().ok()?;
                let timestamp = format
                    .timestamp_header
                    .as_deref()
                    .map(|h| trimmed(self.header(h)).unwrap_or_default().to_owned());
                let signature =
                    hmac_sha256::sign(&format, HMAC_SECRETS[key], timestamp.as_deref(), &self.body);
                let template = self.template_text();
                let content = expand_template(
                    &template,
                    timestamp.as_deref().unwrap_or_default(),
                    &self.body,
                );
                let tag = oracle_hmac(HMAC_SECRETS[key].as_bytes(), &[&content]);
                let encoded = match format.encoding {
                    Encoding::Hex => hex(&tag),
                    Encoding::Base64 => BASE64.encode(tag),
                };
                assert_eq!(
                    signature,
                    format!("{}{encoded}", format.signature_prefix),
                    "sign agrees with the oracle"
                );
                Some(signature)
            }
        }
    }

    /// The template text of this request's hmac scheme.
    fn template_text(&self) -> String {
        match self.scheme {
            Scheme::StandardWebhooks | Scheme::GitHub => "{body}".into(),
            Scheme::Buildium => "{timestamp}.{body}".into(),
            Scheme::Custom => self.settings.template.clone().unwrap_or_else(|| {
                if self
                    .settings
                    .timestamp_header
                    .as_deref()
                    .is_some_and(|h| !h.is_empty())
                {
                    "{timestamp}.{body}".into()
                } else {
                    "{body}".into()
                }
            }),
        }
    }

    /// Whether the request, as the verifier sees it, carries a correct signature of one of
    /// the active keys (A, B) over exactly what the scheme signs, by the oracle.
    pub fn correctly_signed(&self) -> bool {
        match self.scheme {
            Scheme::StandardWebhooks => {
                let (Some(id), Some(ts), Some(sig)) = (
                    trimmed(self.header(standard_webhooks::ID_HEADER)),
                    trimmed(self.header(standard_webhooks::TIMESTAMP_HEADER)),
                    trimmed(self.header(standard_webhooks::SIGNATURE_HEADER)),
                ) else {
                    return false;
                };
                SW_SECRETS[..2].iter().any(|secret| {
                    let key = BASE64.decode(&secret[6..]).expect("test secret");
                    let tag = oracle_hmac(
                        &key,
                        &[id.as_bytes(), b".", ts.as_bytes(), b".", &self.body],
                    );
                    let expected = format!("v1,{}", BASE64.encode(tag));
                    sig.split(' ').any(|entry| entry == expected)
                })
            }
            _ => {
                let Some(format) = self.format() else {
                    return false;
                };
                let Some(sig) = trimmed(self.header(&format.signature_header)) else {
                    return false;
                };
                let timestamp = match &format.timestamp_header {
                    None => "",
                    Some(h) => match trimmed(self.header(h)) {
                        Some(t) => t,
                        None => return false,
                    },
                };
                let prefix = &format.signature_prefix;
                let Some(rest) = sig
                    .get(..prefix.len())
                    .filter(|head| head.eq_ignore_ascii_case(prefix))
                    .map(|_| &sig[prefix.len()..])
                else {
                    return false;
                };
                let content = expand_template(&self.template_text(), timestamp, &self.body);
                HMAC_SECRETS[..2].iter().any(|secret| {
                    let tag = oracle_hmac(secret.as_bytes(), &[&content]);
                    match format.encoding {
                        Encoding::Hex => rest.to_ascii_lowercase() == hex(&tag),
                        Encoding::Base64 => {
                            let expected = BASE64.encode(tag);
                            rest == expected || rest == expected.trim_end_matches('=')
                        }
                    }
                })
            }
        }
    }

    /// The signed timestamp as the oracle reads it: at most 20 digits (Standard Webhooks) or
    /// 19 (hmac-sha256, where a number of at least 10^11 is milliseconds).
    fn oracle_timestamp(&self) -> Option<i64> {
        match self.scheme {
            Scheme::StandardWebhooks => {
                let t = trimmed(self.header(standard_webhooks::TIMESTAMP_HEADER))?;
                if t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                t.parse().ok()
            }
            _ => {
                let header = self.format()?.timestamp_header?;
                let t = trimmed(self.header(&header))?;
                if t.len() > 19 || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let value: i64 = t.parse().ok()?;
                Some(if value >= 100_000_000_000 {
                    value / 1000
                } else {
                    value
                })
            }
        }
    }

    /// Whether every header the scheme needs is present and not blank.
    fn has_required_headers(&self) -> bool {
        let names: Vec<String> = match self.scheme {
            Scheme::StandardWebhooks => vec![
                standard_webhooks::ID_HEADER.into(),
                standard_webhooks::TIMESTAMP_HEADER.into(),
                standard_webhooks::SIGNATURE_HEADER.into(),
            ],
            _ => match self.format() {
                Some(f) => std::iter::once(f.signature_header)
                    .chain(f.timestamp_header)
                    .collect(),
                None => return false,
            },
        };
        names.iter().all(|n| trimmed(self.header(n)).is_some())
    }

    /// Verifies the request with `verifier` and checks the result against the oracle.
    /// Panics on any disagreement that would mean a bypass, a leak or a wrong answer.
    pub fn verify_and_check(&self, verifier: &SourceVerifier) -> Result<Verified, SignatureError> {
        let pairs = self.header_pairs();
        for (name, _) in &pairs {
            assert_eq!(
                pairs.as_slice().header(name),
                self.header(name),
                "header lookup"
            );
        }
        let result = verifier.verify(pairs.as_slice(), &self.body, NOW);
        let correct = self.correctly_signed();
        trace(|| {
            format!(
                "{:?} signer {} {:?}: {result:?}",
                self.scheme, self.signer, self.edit
            )
        });
        let complete = self.has_required_headers();
        let timestamp = self.oracle_timestamp();
        let needs_timestamp = self.scheme == Scheme::StandardWebhooks
            || self.format().is_some_and(|f| f.timestamp_header.is_some());
        match &result {
            Ok(verified) => {
                assert!(
                    correct,
                    "BYPASS: accepted a request without a correct signature: {self:?}"
                );
                assert_eq!(verified.timestamp, timestamp, "verified timestamp");
                if let Some(t) = timestamp {
                    assert!(
                        NOW.abs_diff(t) <= TOLERANCE,
                        "accepted a stale timestamp {t}"
                    );
                }
                if self.scheme == Scheme::StandardWebhooks {
                    assert_eq!(
                        verified.id.as_deref(),
                        trimmed(self.header(standard_webhooks::ID_HEADER)),
                        "verified id"
                    );
                } else {
                    assert_eq!(verified.id, None);
                }
            }
            Err(SignatureError::Stale { .. }) => {
                assert!(
                    correct,
                    "only an authentic request may learn it is stale: {self:?}"
                );
            }
            Err(SignatureError::Missing(_)) => {
                assert!(!complete, "missing reported with all headers present");
            }
            Err(SignatureError::Invalid(_)) => {
                assert!(complete, "invalid reported with a header missing");
                // A correct signature by an active key, with every header well-formed, must
                // be accepted (or found stale).
                let well_formed = (!needs_timestamp || timestamp.is_some())
                    && (self.scheme != Scheme::StandardWebhooks
                        || trimmed(self.header(standard_webhooks::SIGNATURE_HEADER))
                            .is_some_and(sw_entries_well_formed));
                assert!(
                    !(correct && well_formed),
                    "a correctly signed request was rejected: {result:?} {self:?}"
                );
            }
        }
        if let Err(e) = &result {
            let message = e.to_string();
            for secret in SW_SECRETS.iter().chain(&HMAC_SECRETS) {
                assert!(!message.contains(secret), "an error names a secret");
            }
            assert!(matches!(
                e.code(),
                "invalid_signature" | "missing_signature" | "stale_timestamp"
            ));
        }
        result
    }
}

/// Whether a `webhook-signature` value is within the verifier's caps, so that it reads every
/// entry: at most `MAX_SIGNATURES` entries and `MAX_SIGNATURE_HEADER_BYTES` bytes. Malformed
/// entries are skipped, as the reference libraries do, so they never stop a valid one.
fn sw_entries_well_formed(header: &str) -> bool {
    header.len() <= standard_webhooks::MAX_SIGNATURE_HEADER_BYTES
        && header.split(' ').filter(|e| !e.is_empty()).count() <= standard_webhooks::MAX_SIGNATURES
}

/// Prints `message` to stderr when `FUZZ_TRACE` is set, to see what seeds reach, e.g.
/// `FUZZ_TRACE=1 fuzz/target/x86_64-unknown-linux-gnu/release/verify_then_parse -runs=0 fuzz/corpus/verify_then_parse`.
pub fn trace(message: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some()) {
        eprintln!("{}", message());
    }
}

struct HeaderNames {
    signature: String,
    timestamp: Option<String>,
}

/// `name: value`; one space after the colon is dropped, the rest of the value is kept.
fn split_header(line: &str) -> (&str, &str) {
    match line.split_once(':') {
        Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    }
}

fn trimmed(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn apply_edit(value: &mut String, edit: Edit, at: usize, insert: char) {
    let mut chars: Vec<char> = value.chars().collect();
    let pos = |len: usize| if len == 0 { 0 } else { at % len };
    match edit {
        Edit::None => return,
        Edit::FlipBit => {
            let len = chars.len();
            if let Some(c) = chars.get_mut(pos(len)).filter(|c| c.is_ascii()) {
                *c = char::from(*c as u8 ^ (1 << (at % 7)));
            }
        }
        Edit::Truncate => chars.truncate(pos(chars.len())),
        Edit::Insert => chars.insert(pos(chars.len() + 1), insert),
        Edit::Remove => {
            if !chars.is_empty() {
                chars.remove(pos(chars.len()));
            }
        }
        Edit::SwapCase => {
            for c in &mut chars {
                *c = if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                };
            }
        }
        Edit::Pad => {
            chars.insert(0, ' ');
            chars.push('\t');
        }
        Edit::AppendEntry => {
            let mut copy = chars.clone();
            if let Some(c) = copy.get_mut(pos(chars.len())) {
                *c = insert;
            }
            chars.push(' ');
            chars.extend(copy);
        }
    }
    *value = chars.into_iter().collect();
}

/// HMAC-SHA256, independently of lease-sync.
pub fn oracle_hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signed content of `template` (which must have parsed), written independently:
/// `{body}` and `{timestamp}` are replaced, everything else is literal.
pub fn expand_template(template: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("{body}") {
            out.extend_from_slice(body);
            rest = after;
        } else if let Some(after) = rest.strip_prefix("{timestamp}") {
            out.extend_from_slice(timestamp.as_bytes());
            rest = after;
        } else {
            let c = rest.chars().next().expect("not empty");
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Whether `template` is a valid signed-content template, decided independently of
/// `SignedContent::from_str`: every `{` opens a placeholder closed by the next `}`, which
/// is `{body}` (exactly once) or `{timestamp}` (at most once).
pub fn template_is_valid(template: &str) -> bool {
    let (mut bodies, mut timestamps) = (0, 0);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return false;
        };
        match &rest[open + 1..open + close] {
            "body" => bodies += 1,
            "timestamp" => timestamps += 1,
            _ => return false,
        }
        rest = &rest[open + close + 1..];
    }
    bodies == 1 && timestamps <= 1
}

/// Checks `EventIdSource` parsing of `text` and, when it parses, extraction from the
/// request's headers and body.
pub fn check_event_id_source(text: &str, request: &Request) {
    let Ok(source) = text.parse::<EventIdSource>() else {
        return;
    };
    match &source {
        EventIdSource::Header(name) => {
            let given = text.strip_prefix("header:").expect("header source").trim();
            assert_eq!(name, &given.to_ascii_lowercase());
            assert!(!name.is_empty());
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_')
            );
        }
        EventIdSource::BodyField(path) => {
            assert_eq!(Some(path.join(".").as_str()), text.strip_prefix("body:"));
            assert!(path.iter().all(|p| !p.is_empty()));
        }
        EventIdSource::BodySha256 => assert_eq!(text, "body-sha256"),
    }
    let pairs = request.header_pairs();
    match (source.extract(pairs.as_slice(), &request.body), &source) {
        (Ok(id), EventIdSource::Header(name)) => {
            assert_eq!(Some(id.as_str()), trimmed(request.header(name)));
        }
        (Ok(id), EventIdSource::BodyField(_)) => assert!(!id.trim().is_empty()),
        (Ok(id), EventIdSource::BodySha256) => {
            assert_eq!(
                id,
                format!("sha256:{}", hex(&Sha256::digest(&request.body)))
            );
        }
        (Err(_), EventIdSource::BodySha256) => panic!("body-sha256 always has an id"),
        (Err(_), EventIdSource::Header(name)) => {
            assert_eq!(trimmed(request.header(name)), None);
        }
        (Err(_), EventIdSource::BodyField(_)) => {}
    }
}

/// Whether `body` is UTF-8 and exactly one JSON value (whitespace around it allowed), by
/// serde_json's grammar; what `parse_event` must report as `InvalidJson` otherwise.
pub fn is_one_json_text(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|text| serde_json::from_str::<IgnoredAny>(text).is_ok())
}

/// Checks what `parse_event` guarantees of an event it accepted with `event_id`, and that
/// the event survives the JSON round trip the queue puts it through.
pub fn check_event(event: &lease_sync::event::LeaseEvent, event_id: &str, body: &[u8]) {
    use lease_sync::event::{MAX_ID_LEN, MAX_RESIDENTS, is_valid_path_id, parse_event};
    assert_eq!(event.id, event_id);
    assert!((1..=MAX_RESIDENTS).contains(&event.residents.len()));
    let mut seen = std::collections::HashSet::new();
    for r in &event.residents {
        assert!(is_valid_path_id(&r.openapp_user_id), "{r:?}");
        assert!(seen.insert(&r.openapp_user_id), "duplicate resident {r:?}");
        if let Some(ext) = &r.external_id {
            assert!(ext.len() <= MAX_ID_LEN && !ext.chars().any(char::is_control));
        }
    }
    for text in [&event.lease.id, &event.lease.property_id] {
        assert!(!text.trim().is_empty());
        assert!(text.len() <= MAX_ID_LEN && !text.chars().any(char::is_control));
    }
    if let Some(unit) = &event.lease.unit {
        assert!(unit.len() <= MAX_ID_LEN && !unit.chars().any(char::is_control));
    }
    if let Some(access) = &event.access
        && let (Some(s), Some(e)) = (access.starts_at, access.ends_at)
    {
        assert!(s <= e, "access ends before it starts");
    }
    assert!(is_one_json_text(body), "accepted a body that is not JSON");
    // The body's own id, when given, is the signed one.
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(serde_json::Value::String(id)) = map.get("id")
    {
        assert_eq!(id, event_id);
    }

    // The queue stores the event as JSON; it must come back the same, and parse again.
    let stored = serde_json::to_vec(event).expect("an accepted event serializes");
    let back: lease_sync::event::LeaseEvent =
        serde_json::from_slice(&stored).expect("a stored event deserializes");
    assert_eq!(&back, event);
    assert_eq!(parse_event(&stored, event_id).as_ref(), Ok(event));
    let record = lease_sync::resident::LeaseRecord::from_event(event, "fuzz");
    assert_eq!(record.event_id, event.id);
}
