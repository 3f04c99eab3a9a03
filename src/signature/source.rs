//! Verifiers of configured sources: the one place where a `[[sources]]` entry's secrets are
//! decoded for its scheme and its `hmac-sha256` wire format is assembled. Ingest builds its
//! verifiers here, and configuration checks call the same code rather than a copy of it.

use time::OffsetDateTime;

use super::{SigningKey, SourceVerifier, hmac_sha256, standard_webhooks};
use crate::config::{SchemeKind, SignatureEncoding, SourceKind, SourceSettings};

/// Shortest `hmac-sha256` secret accepted, in bytes.
pub const MIN_HMAC_SECRET_LEN: usize = 16;

/// A key of a `[[sources]]` entry that cannot be used. Never quotes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SourceKeyError {
    /// The key, relative to the entry: `secrets[0]`, `signature_header`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl SourceKeyError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The verifier of `source` at `now`: its secrets decoded for its scheme, the `hmac-sha256`
/// format checked; a `kind = "buildium"` source verifies as Buildium signs (base64
/// HMAC-SHA256 over `{buildium-webhook-timestamp}.{body}`, the secret's UTF-8 bytes as key),
/// and may not set the signature keys. Only the signature keys of `source` are read. Fails closed: a source whose
/// every secret is past its `not_after` at `now` is refused, as is a key that belongs to the
/// other scheme.
pub fn source_verifier(
    source: &SourceSettings,
    now: OffsetDateTime,
) -> Result<SourceVerifier, SourceKeyError> {
    let buildium = source.kind == SourceKind::Buildium;
    if buildium {
        if source.scheme != SchemeKind::StandardWebhooks {
            return Err(SourceKeyError::new(
                "scheme",
                "does not apply to kind = \"buildium\": it signs as Buildium signs",
            ));
        }
        if let Some(key) = hmac_only_key_set(source) {
            return Err(SourceKeyError::new(
                key,
                "does not apply to kind = \"buildium\": it signs as Buildium signs",
            ));
        }
    }
    let scheme = if buildium {
        SchemeKind::HmacSha256
    } else {
        source.scheme
    };
    let mut keys = Vec::with_capacity(source.secrets.len());
    for (j, entry) in source.secrets.iter().enumerate() {
        let key = || format!("secrets[{j}]");
        let bytes = match scheme {
            SchemeKind::StandardWebhooks => standard_webhooks::decode_secret(entry.secret.expose())
                .map_err(|e| SourceKeyError::new(key(), e.to_string()))?,
            SchemeKind::HmacSha256 => {
                let bytes = hmac_sha256::key_of(entry.secret.expose());
                if bytes.len() < MIN_HMAC_SECRET_LEN {
                    return Err(SourceKeyError::new(
                        key(),
                        format!("must be at least {MIN_HMAC_SECRET_LEN} bytes"),
                    ));
                }
                bytes
            }
        };
        keys.push(SigningKey::new(
            bytes,
            entry.not_after.map(OffsetDateTime::unix_timestamp),
        ));
    }
    let now = now.unix_timestamp();
    if !keys.is_empty() && keys.iter().all(|k| !k.is_active_at(now)) {
        return Err(SourceKeyError::new(
            "secrets",
            "every secret is past its not_after; add a current secret",
        ));
    }
    let tolerance_secs = source.tolerance.as_secs();
    if buildium {
        return hmac_sha256::Verifier::new(hmac_sha256::Format::buildium(), keys, tolerance_secs)
            .map(SourceVerifier::HmacSha256)
            .map_err(|e| SourceKeyError::new(e.key, e.message));
    }
    match source.scheme {
        SchemeKind::StandardWebhooks => {
            if let Some(key) = hmac_only_key_set(source) {
                return Err(SourceKeyError::new(
                    key,
                    "applies only to scheme = \"hmac-sha256\"",
                ));
            }
            Ok(SourceVerifier::StandardWebhooks(
                standard_webhooks::Verifier::with_keys(keys, tolerance_secs),
            ))
        }
        SchemeKind::HmacSha256 => {
            hmac_sha256::Verifier::new(hmac_format(source)?, keys, tolerance_secs)
                .map(SourceVerifier::HmacSha256)
                .map_err(|e| SourceKeyError::new(e.key, e.message))
        }
    }
}

/// The first key set on `source` that only `hmac-sha256` reads.
fn hmac_only_key_set(source: &SourceSettings) -> Option<&'static str> {
    [
        ("signature_header", source.signature_header.is_some()),
        ("signature_prefix", source.signature_prefix.is_some()),
        ("encoding", source.encoding.is_some()),
        ("timestamp_header", source.timestamp_header.is_some()),
        ("signed_content", source.signed_content.is_some()),
        ("event_id", source.event_id.is_some()),
    ]
    .into_iter()
    .find_map(|(key, set)| set.then_some(key))
}

/// The wire format of an `hmac-sha256` source, from its keys; `signature_header` and
/// `event_id` are required. Whether the pieces fit together is [`hmac_sha256::Format::validate`].
pub fn hmac_format(source: &SourceSettings) -> Result<hmac_sha256::Format, SourceKeyError> {
    let signature_header = source.signature_header.as_deref().ok_or_else(|| {
        SourceKeyError::new(
            "signature_header",
            "required for scheme = \"hmac-sha256\" (e.g. \"x-hub-signature-256\")",
        )
    })?;
    let event_id = source.event_id.as_deref().ok_or_else(|| {
        SourceKeyError::new(
            "event_id",
            "required for scheme = \"hmac-sha256\": \"header:<name>\", \"body:<field>\" or \"body-sha256\"",
        )
    })?;
    Ok(hmac_sha256::Format {
        signature_header: signature_header.trim().to_ascii_lowercase(),
        signature_prefix: source.signature_prefix.clone().unwrap_or_default(),
        encoding: match source.encoding.unwrap_or(SignatureEncoding::Hex) {
            SignatureEncoding::Hex => hmac_sha256::Encoding::Hex,
            SignatureEncoding::Base64 => hmac_sha256::Encoding::Base64,
        },
        timestamp_header: source
            .timestamp_header
            .as_deref()
            .map(|h| h.trim().to_ascii_lowercase()),
        signed_content: source
            .signed_content
            .as_deref()
            .unwrap_or("{body}")
            .parse()
            .map_err(|e: String| SourceKeyError::new("signed_content", e))?,
        event_id: event_id
            .parse()
            .map_err(|e: String| SourceKeyError::new("event_id", e))?,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::config::SourceSecret;

    fn standard(not_after: Option<OffsetDateTime>) -> SourceSettings {
        SourceSettings {
            secrets: vec![SourceSecret {
                not_after,
                ..SourceSecret::plain("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            }],
            ..SourceSettings::named("acme")
        }
    }

    #[test]
    fn expiry_is_judged_at_the_given_instant() {
        let source = standard(Some(datetime!(2030-01-01 0:00 UTC)));
        let verifier = source_verifier(&source, datetime!(2030-01-01 0:00 UTC)).unwrap();
        assert_eq!(
            verifier
                .key_status(datetime!(2030-01-01 0:00 UTC).unix_timestamp())
                .active,
            1
        );
        let err = source_verifier(&source, datetime!(2030-01-01 0:00:01 UTC)).unwrap_err();
        assert_eq!(err.key, "secrets");
        assert!(source_verifier(&standard(None), datetime!(2999-01-01 0:00 UTC)).is_ok());
    }

    #[test]
    fn keys_are_named_relative_to_the_entry() {
        let mut source = standard(None);
        source.encoding = Some(SignatureEncoding::Base64);
        let err = source_verifier(&source, OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(err.key, "encoding");
        source.scheme = SchemeKind::HmacSha256;
        let err = source_verifier(&source, OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(err.key, "signature_header");
    }

    #[test]
    fn a_buildium_source_signs_as_buildium_and_takes_no_signature_keys() {
        let mut source = SourceSettings {
            kind: SourceKind::Buildium,
            secrets: vec![SourceSecret::plain("buildium-example-secret-0001")],
            ..SourceSettings::named("buildium")
        };
        let verifier = source_verifier(&source, OffsetDateTime::UNIX_EPOCH).unwrap();
        assert!(matches!(
            &verifier,
            SourceVerifier::HmacSha256(v) if v.format() == &hmac_sha256::Format::buildium()
        ));
        source.signature_header = Some("x-sig".into());
        let err = source_verifier(&source, OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(err.key, "signature_header");
        source.signature_header = None;
        source.scheme = SchemeKind::HmacSha256;
        let err = source_verifier(&source, OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(err.key, "scheme");
    }
}
