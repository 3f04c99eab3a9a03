//! `[http]`: the webhook listener.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::ConfigError;
use super::units::{Count, OptionalCount, PositiveMillis, PositiveSecs, Secs};

/// Smallest `header_limit_bytes` accepted: below it, ordinary requests would be refused.
pub const MIN_HEADER_LIMIT_BYTES: usize = 1024;

/// `[http]`: the webhook listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// `listen`: address the webhook listener binds (`0.0.0.0:8080`).
    #[serde(deserialize_with = "deserialize_listen")]
    pub listen: SocketAddr,
    /// `body_limit_bytes`: largest accepted webhook body; larger ones get 413
    /// `body_too_large`.
    #[serde(with = "Count")]
    pub body_limit_bytes: NonZeroUsize,
    /// `dedupe_ttl_secs`: how long a delivered event id is remembered per source, so a
    /// re-delivery is answered 200 `duplicate` instead of queuing a second job. Three days
    /// covers the retry horizon of the senders we know (Stripe-like senders retry for 3 days).
    #[serde(rename = "dedupe_ttl_secs", with = "PositiveSecs")]
    pub dedupe_ttl: Duration,
    /// `enqueue_timeout_ms`: how long ingest waits for Redis to take an event before
    /// answering 503.
    #[serde(rename = "enqueue_timeout_ms", with = "PositiveMillis")]
    pub enqueue_timeout: Duration,
    /// `retry_after_secs`: how long a 503 `queue_unavailable` or `overloaded` asks the sender
    /// to wait (`Retry-After`).
    #[serde(rename = "retry_after_secs", with = "Secs")]
    pub retry_after: Duration,
    /// `shutdown_grace_secs`: how long shutdown waits for in-flight requests before giving up.
    #[serde(rename = "shutdown_grace_secs", with = "Secs")]
    pub shutdown_grace: Duration,
    /// `header_limit_bytes`: largest total size of a request's header block (names and
    /// values), at least [`MIN_HEADER_LIMIT_BYTES`]. Larger heads get 431 `headers_too_large`.
    pub header_limit_bytes: usize,
    /// `read_timeout_ms`: how long a client may take to send a request's headers, and then
    /// its body. A body still incomplete after this gets 408 `request_timeout`; a head still
    /// incomplete has its connection closed. Shorter than senders' own timeouts (10 s for
    /// GitHub and Buildium), so a slow sender hears why.
    #[serde(rename = "read_timeout_ms", with = "PositiveMillis")]
    pub read_timeout: Duration,
    /// `rate_limit_per_sec`: webhooks accepted per second from one source, per ingest
    /// process, once its burst is used; more get 429 `rate_limited` with `Retry-After`. `0`
    /// turns the limit off. Counted after signature verification, so forged requests cannot
    /// use up a sender's budget.
    pub rate_limit_per_sec: u32,
    /// `rate_limit_burst`: webhooks one source may send at once above the steady rate (a bulk
    /// import, a burst of retries after an outage). Must be above 0 while the limit is on.
    pub rate_limit_burst: u32,
    /// `max_connections`: connections the webhook listener holds at once. Unset: derived from
    /// the open-file limit ([`Settings::connection_caps`]). At the cap, the connection that
    /// has been idle longest (no request in progress) is closed to make room; when none is
    /// idle, a new connection gets 503 `overloaded` with `Retry-After`.
    ///
    /// [`Settings::connection_caps`]: super::Settings::connection_caps
    #[serde(with = "OptionalCount")]
    pub max_connections: Option<NonZeroUsize>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)),
            body_limit_bytes: const { NonZeroUsize::new(65_536).unwrap() },
            dedupe_ttl: Duration::from_secs(259_200),
            enqueue_timeout: Duration::from_millis(2_000),
            retry_after: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            header_limit_bytes: 16_384,
            read_timeout: Duration::from_millis(5_000),
            rate_limit_per_sec: 200,
            rate_limit_burst: 2_000,
            max_connections: None,
        }
    }
}

/// A listen address, `IP:port`; host names are not resolved.
pub(super) fn deserialize_listen<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|e| serde::de::Error::custom(format!("not a socket address: {e}")))
}

/// Where a client on this host reaches a listener bound to `listen`: a wildcard address
/// (`0.0.0.0`, `[::]`) is reached on loopback of the same family.
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

impl HttpSettings {
    /// Checks what the types do not: the header limit's floor. Called for roles that run
    /// the webhook listener.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.header_limit_bytes < MIN_HEADER_LIMIT_BYTES {
            return Err(ConfigError::invalid(
                "http.header_limit_bytes",
                format!("must be at least {MIN_HEADER_LIMIT_BYTES}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, assert_zero_refused, env};
    use super::super::{Role, Settings};
    use super::local_address;

    #[test]
    fn zero_sizes_and_timeouts_are_refused_by_key() {
        assert_zero_refused(&[
            "http.body_limit_bytes",
            "http.dedupe_ttl_secs",
            "http.enqueue_timeout_ms",
            "http.read_timeout_ms",
            "http.max_connections",
        ]);
    }

    #[test]
    fn the_header_limit_has_a_floor_and_listen_must_be_an_address() {
        let s = Settings::from_toml_str(
            MINIMAL,
            env(&[("LEASE_SYNC__HTTP__HEADER_LIMIT_BYTES", "1023")]),
        )
        .unwrap();
        let msg = s.validate(Role::Ingest).unwrap_err().to_string();
        assert!(msg.contains("http.header_limit_bytes"), "{msg}");
        let msg = Settings::from_toml_str(
            MINIMAL,
            env(&[("LEASE_SYNC__HTTP__LISTEN", "localhost:8080")]),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("`http.listen`: not a socket address"), "{msg}");
    }

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        for (listen, reached) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8081", "[::1]:8081"),
            ("10.0.0.5:9090", "10.0.0.5:9090"),
        ] {
            assert_eq!(local_address(listen.parse().unwrap()).to_string(), reached);
        }
    }
}
