//! Standard Webhooks 1.0 (also what Svix sends).
//!
//! Headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`, a
//! space-separated list of `v1,<base64 HMAC-SHA256>` entries over
//! `{webhook-id}.{webhook-timestamp}.{raw body}`. Secrets are `whsec_` + base64 of the key.
//! Entries of other versions (`v1a,` for ed25519) are skipped, not errors, so a sender can
//! add signatures we do not check yet.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{NO_MATCH, SignatureError, SigningKey, any_key_matches, check_freshness, hmac_sha256};

/// Header carrying the message id.
pub const ID_HEADER: &str = "webhook-id";
/// Header carrying the Unix timestamp in seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header carrying the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// Prefix of a Standard Webhooks symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Length in bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// Most `webhook-signature` entries read (of any version, well-formed or not): far more than
/// a sender rotating keys sends (one per active secret); a longer list is refused. The
/// messages in [`parse_signatures`] quote this number.
pub const MAX_SIGNATURES: usize = 32;

/// Longest `webhook-signature` value read, in bytes: room for [`MAX_SIGNATURES`] entries of
/// any current version (an ed25519 `v1a` entry is 92 bytes). The messages in
/// [`parse_signatures`] quote this number.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 4096;

/// Why a configured secret cannot be used. Never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The part after `whsec_` is not base64.
    #[error("secret is not base64 after the `whsec_` prefix")]
    NotBase64,
    /// The key is empty or too short to be a real secret.
    #[error("secret key is {0} bytes; at least 16 are required")]
    TooShort(usize),
}

/// Decodes a secret into HMAC key bytes: `whsec_` + base64 is decoded; a value without the
/// prefix is taken as base64 too, as the reference libraries do.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = BASE64
        .decode(encoded.trim())
        .map_err(|_| SecretError::NotBase64)?;
    if key.len() < 16 {
        return Err(SecretError::TooShort(key.len()));
    }
    Ok(key)
}

/// The three signed headers of one request, as sent (absent = `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedHeaders<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
}

/// What a successful verification vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed message id, used as the event id.
    pub id: String,
    /// The signed timestamp.
    pub timestamp: i64,
}

/// Verifies requests of one source against its active secrets.
pub struct Verifier {
    keys: Vec<SigningKey>,
    tolerance_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl Verifier {
    /// A verifier accepting a signature by any of `secrets`, none of which expires.
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = &'a str>,
        tolerance_secs: u64,
    ) -> Result<Self, SecretError> {
        let keys = secrets
            .into_iter()
            .map(|s| decode_secret(s).map(|k| SigningKey::new(k, None)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::with_keys(keys, tolerance_secs))
    }

    /// A verifier over already decoded keys (see [`decode_secret`]), each with its expiry.
    pub fn with_keys(keys: Vec<SigningKey>, tolerance_secs: u64) -> Self {
        Self {
            keys,
            tolerance_secs,
        }
    }

    /// The configured keys, active or not.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// Verifies `body` as received at Unix time `now`. The signature is checked before the
    /// timestamp's age, so only authentic requests learn that they are stale.
    pub fn verify(
        &self,
        headers: SignedHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, SignatureError> {
        let missing = |name: &str| SignatureError::Missing(name.to_owned());
        let id = non_empty(headers.id).ok_or_else(|| missing(ID_HEADER))?;
        let timestamp_text =
            non_empty(headers.timestamp).ok_or_else(|| missing(TIMESTAMP_HEADER))?;
        let signature_header =
            non_empty(headers.signature).ok_or_else(|| missing(SIGNATURE_HEADER))?;

        if timestamp_text.len() > 20 || !timestamp_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignatureError::Invalid(
                "webhook-timestamp must be an integer number of seconds",
            ));
        }
        let timestamp: i64 = timestamp_text.parse().map_err(|_| {
            SignatureError::Invalid("webhook-timestamp must be an integer number of seconds")
        })?;

        let candidates = parse_signatures(signature_header)?;
        let content: [&[u8]; 5] = [id.as_bytes(), b".", timestamp_text.as_bytes(), b".", body];
        if !any_key_matches(&self.keys, &candidates, &content, now) {
            return Err(SignatureError::Invalid(NO_MATCH));
        }
        check_freshness(timestamp, now, self.tolerance_secs)?;
        Ok(Verified {
            id: id.to_owned(),
            timestamp,
        })
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// Decodes the well-formed `v1,` entries and skips every other entry, as the Standard
/// Webhooks reference libraries do: an entry without a comma, of another version, not base64
/// or of the wrong length is never compared with anything. Skipping wrong-length tags, rather
/// than comparing a prefix, is what closes the `v1,` bypass of CVE-2024-21491. The header's
/// length and number of entries are capped ([`MAX_SIGNATURE_HEADER_BYTES`],
/// [`MAX_SIGNATURES`]) so that one request cannot ask for unbounded work.
fn parse_signatures(header: &str) -> Result<Vec<[u8; TAG_LEN]>, SignatureError> {
    if header.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(SignatureError::Invalid(
            "webhook-signature is longer than 4096 bytes",
        ));
    }
    let mut out = Vec::new();
    for (n, entry) in header.split(' ').filter(|e| !e.is_empty()).enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(SignatureError::Invalid(
                "webhook-signature holds more than 32 entries",
            ));
        }
        let Some(("v1", encoded)) = entry.split_once(',') else {
            continue;
        };
        if let Some(tag) = BASE64
            .decode(encoded)
            .ok()
            .and_then(|decoded| <[u8; TAG_LEN]>::try_from(decoded).ok())
        {
            out.push(tag);
        }
    }
    if out.is_empty() {
        return Err(SignatureError::Invalid(
            "webhook-signature holds no well-formed v1 signature",
        ));
    }
    Ok(out)
}

/// Signs like a Standard Webhooks sender: returns the `webhook-signature` value `v1,<base64>`.
/// Used by `send-test-event` and the tests.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SecretError> {
    let key = decode_secret(secret)?;
    let timestamp = timestamp.to_string();
    let tag = hmac_sha256(
        &key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    Ok(format!("v1,{}", BASE64.encode(tag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Public vector shared by Svix and Standard Webhooks (svix-webhooks rust/src/webhooks.rs).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn verifier() -> Verifier {
        Verifier::new([SECRET], 300).unwrap()
    }

    fn headers<'a>(ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(ID),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn public_vector_signs_and_verifies() {
        assert_eq!(sign(SECRET, ID, TS, BODY).unwrap(), SIG);
        let ok = verifier()
            .verify(headers("1649367553", SIG), BODY, TS)
            .unwrap();
        assert_eq!(ok.id, ID);
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let header = format!("v1,Ym9ndXNib2d1c2JvZ3VzYm9ndXNib2d1c2JvZ3VzMTI= v1a,xyz {SIG}");
        verifier()
            .verify(headers("1649367553", &header), BODY, TS)
            .unwrap();
    }

    #[test]
    fn any_active_secret_may_sign() {
        let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let v = Verifier::new([other, SECRET], 300).unwrap();
        v.verify(headers("1649367553", SIG), BODY, TS).unwrap();
    }

    #[test]
    fn tampering_is_rejected() {
        let mut body = BODY.to_vec();
        body[3] ^= 1;
        assert_eq!(
            verifier()
                .verify(headers("1649367553", SIG), &body, TS)
                .unwrap_err()
                .code(),
            "invalid_signature"
        );
        assert_eq!(
            verifier()
                .verify(headers("1649367554", SIG), BODY, TS)
                .unwrap_err()
                .code(),
            "invalid_signature"
        );
        let wrong = Verifier::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], 300).unwrap();
        assert_eq!(
            wrong
                .verify(headers("1649367553", SIG), BODY, TS)
                .unwrap_err()
                .code(),
            "invalid_signature"
        );
    }

    #[test]
    fn wrong_length_and_malformed_signatures_are_rejected() {
        for sig in [
            "v1,",
            "v1",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3",
            "v1,!!!",
            "v2,abc",
            "v1a,abc",
            "   ",
        ] {
            let err = verifier()
                .verify(headers("1649367553", sig), BODY, TS)
                .unwrap_err();
            assert!(
                matches!(err.code(), "invalid_signature" | "missing_signature"),
                "{sig:?} → {err:?}"
            );
        }
    }

    #[test]
    fn stale_and_future_timestamps_are_rejected_after_the_signature_check() {
        let err = verifier()
            .verify(headers("1649367553", SIG), BODY, TS + 301)
            .unwrap_err();
        assert_eq!(err.code(), "stale_timestamp");
        let err = verifier()
            .verify(headers("1649367553", SIG), BODY, TS - 301)
            .unwrap_err();
        assert_eq!(err.code(), "stale_timestamp");
        verifier()
            .verify(headers("1649367553", SIG), BODY, TS + 300)
            .unwrap();
        // A forged request learns nothing about the clock.
        let forged = verifier().verify(
            headers(
                "1649367553",
                "v1,Ym9ndXNib2d1c2JvZ3VzYm9ndXNib2d1c2JvZ3VzMTI=",
            ),
            BODY,
            TS + 9999,
        );
        assert_eq!(forged.unwrap_err().code(), "invalid_signature");
    }

    #[test]
    fn missing_headers_are_named() {
        let v = verifier();
        let mut h = headers("1649367553", SIG);
        h.id = None;
        assert_eq!(
            v.verify(h, BODY, TS).unwrap_err(),
            SignatureError::Missing(ID_HEADER.into())
        );
        let mut h = headers("1649367553", SIG);
        h.timestamp = Some("");
        assert_eq!(
            v.verify(h, BODY, TS).unwrap_err(),
            SignatureError::Missing(TIMESTAMP_HEADER.into())
        );
        let mut h = headers("1649367553", SIG);
        h.signature = None;
        assert_eq!(
            v.verify(h, BODY, TS).unwrap_err().code(),
            "missing_signature"
        );
        for ts in ["-5", "1e9", "99999999999999999999999", "12a"] {
            assert_eq!(
                v.verify(headers(ts, SIG), BODY, TS).unwrap_err().code(),
                "invalid_signature",
                "{ts}"
            );
        }
    }

    #[test]
    fn secrets_must_decode() {
        assert_eq!(
            decode_secret("whsec_!!!").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            decode_secret("whsec_YWJj").unwrap_err(),
            SecretError::TooShort(3)
        );
        assert!(format!("{:?}", verifier()).contains("redacted"));
    }

    #[test]
    fn malformed_entries_are_skipped_and_any_valid_v1_entry_verifies() {
        for header in [
            format!("garbage {SIG}"),
            format!("v1,!!! {SIG}"),
            format!("v1,dGVzdA== {SIG}"),
            format!("{SIG} v1"),
            format!("v1a,abc v2,xyz , {SIG}"),
            format!("{} {SIG}", "junk ".repeat(MAX_SIGNATURES - 1)),
        ] {
            verifier()
                .verify(headers("1649367553", &header), BODY, TS)
                .unwrap_or_else(|e| panic!("{header:?} → {e:?}"));
        }
    }

    #[test]
    fn entry_count_and_header_length_are_capped() {
        let too_many = format!("{}{SIG}", "junk ".repeat(MAX_SIGNATURES));
        let err = verifier()
            .verify(headers("1649367553", &too_many), BODY, TS)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "webhook-signature holds more than 32 entries"
        );
        let too_long = format!("{} {SIG}", "j".repeat(MAX_SIGNATURE_HEADER_BYTES));
        let err = verifier()
            .verify(headers("1649367553", &too_long), BODY, TS)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "webhook-signature is longer than 4096 bytes"
        );
        // The length cap leaves room for every entry the count cap allows, even ed25519 ones
        // (92 bytes and a separator).
        const { assert!(MAX_SIGNATURES * 93 <= MAX_SIGNATURE_HEADER_BYTES) };
    }
}
