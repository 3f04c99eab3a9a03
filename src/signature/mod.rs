//! Webhook signature schemes. Each verifies the raw request bytes before anything parses
//! them, compares in constant time after checking lengths, and fails closed.
//!
//! Pure code: headers come in as plain strings, so this module knows nothing of HTTP.

pub mod standard_webhooks;

/// Why a request's signature was not accepted. Each maps to one public error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header the scheme needs is absent or empty.
    #[error("missing {0} header")]
    Missing(&'static str),
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
