//! `[redis]`: the queue's store.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use super::ConfigError;
use super::units::PositiveMillis;

/// `[redis] mode`: how lease-sync finds its Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One address, `url`.
    #[default]
    Standalone,
    /// The primary that Redis Sentinel names `master_name`, asked from `sentinels`, and
    /// asked again after a failover.
    Sentinel,
    /// A Redis Cluster reached through `nodes`; every key of a namespace lives in one hash
    /// slot, so on one primary and its replicas.
    Cluster,
}

/// `[redis]`: the queue's store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `mode`: `standalone` (the default: `url` is the Redis), `sentinel` (`sentinels` name
    /// the primary of `master_name`; `url` then gives only the primary's password, username
    /// and database) or `cluster` (`nodes` are a Redis Cluster's seed nodes; `url` gives only
    /// the password and username).
    pub mode: RedisMode,
    /// `nodes`: for `mode = "cluster"`, some of the cluster's nodes (`redis://host:7000`, …),
    /// from which the rest of the cluster is discovered. Redacted in output.
    #[serde(serialize_with = "serialize_redacted_urls")]
    pub nodes: Vec<String>,
    /// `sentinels`: for `mode = "sentinel"`, the Sentinel nodes (`redis://host:26379`, a
    /// password in the URL for a Sentinel that needs one). Redacted in output.
    #[serde(serialize_with = "serialize_redacted_urls")]
    pub sentinels: Vec<String>,
    /// `master_name`: for `mode = "sentinel"`, the name the sentinels monitor the primary
    /// under (`sentinel monitor <name> …`).
    pub master_name: String,
    /// `url`: `redis://[:password@]host:port[/db]`, `rediss://` for TLS, or `unix://`; a
    /// password in it is redacted in output.
    pub url: RedisUrl,
    /// `namespace`: every key lease-sync writes starts with it as a hash tag
    /// (`{namespace}:…`), so deployments and tests can share one Redis and a deployment's keys
    /// share one Redis Cluster slot. Non-empty, without spaces or braces.
    pub namespace: String,
    /// `connect_timeout_ms`: how long a (re)connect may take.
    #[serde(rename = "connect_timeout_ms", with = "PositiveMillis")]
    pub connect_timeout: Duration,
    /// `response_timeout_ms`: how long one Redis command may take. apalis-redis's own
    /// default (500 ms) turns a short Redis stall into a dead worker pool (apalis-redis#76),
    /// hence a longer one.
    #[serde(rename = "response_timeout_ms", with = "PositiveMillis")]
    pub response_timeout: Duration,
    /// `wait_replicas`: how many replicas must have an ingested event before ingest answers
    /// 202 (Redis `WAIT`). 0 (the default): the primary alone, so a failover may lose the
    /// events of the last moments; with 1 or more, an acknowledged event survives the loss
    /// of the primary.
    pub wait_replicas: u32,
    /// `wait_timeout_ms`: how long ingest waits for those replicas; when fewer confirm in
    /// time it answers 503 `queue_unavailable` with `Retry-After` (the sender's retry is then
    /// recognised as a duplicate and waits again). Below `response_timeout_ms`.
    #[serde(rename = "wait_timeout_ms", with = "PositiveMillis")]
    pub wait_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: String::new(),
            url: RedisUrl::parse("redis://127.0.0.1:6379")
                .unwrap_or_else(|e| unreachable!("the default Redis URL parses: {e}")),
            namespace: "lease-sync".into(),
            connect_timeout: Duration::from_millis(2_000),
            response_timeout: Duration::from_millis(5_000),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(1_000),
        }
    }
}

impl RedisSettings {
    /// Checks the URL's scheme and the namespace. Every role uses Redis.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(
            self.url.0.scheme(),
            "redis" | "rediss" | "redis+unix" | "unix"
        ) {
            return Err(ConfigError::invalid(
                "redis.url",
                "scheme must be redis://, rediss:// or unix://",
            ));
        }
        if self.namespace.is_empty()
            || self
                .namespace
                .contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            // Braces would break the hash tag every key carries (`{namespace}:…`).
            return Err(ConfigError::invalid(
                "redis.namespace",
                "must be non-empty, without spaces or braces",
            ));
        }
        if self.mode == RedisMode::Sentinel {
            if self.sentinels.is_empty() {
                return Err(ConfigError::invalid(
                    "redis.sentinels",
                    "mode = \"sentinel\" needs the Sentinel nodes (redis://host:26379, …)",
                ));
            }
            for (i, sentinel) in self.sentinels.iter().enumerate() {
                let parsed = Url::parse(sentinel).ok();
                if !parsed.is_some_and(|u| matches!(u.scheme(), "redis" | "rediss")) {
                    // The value is not echoed: it may hold a password.
                    return Err(ConfigError::invalid(
                        format!("redis.sentinels[{i}]"),
                        "must be a redis:// or rediss:// URL",
                    ));
                }
            }
            if self.master_name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "redis.master_name",
                    "mode = \"sentinel\" needs the name the sentinels monitor the primary under",
                ));
            }
        }
        if self.mode == RedisMode::Cluster {
            if self.nodes.is_empty() {
                return Err(ConfigError::invalid(
                    "redis.nodes",
                    "mode = \"cluster\" needs some of the cluster's nodes (redis://host:7000, …)",
                ));
            }
            for (i, node) in self.nodes.iter().enumerate() {
                let parsed = Url::parse(node).ok();
                if !parsed.is_some_and(|u| matches!(u.scheme(), "redis" | "rediss")) {
                    // The value is not echoed: it may hold a password.
                    return Err(ConfigError::invalid(
                        format!("redis.nodes[{i}]"),
                        "must be a redis:// or rediss:// URL",
                    ));
                }
            }
        }
        if self.wait_replicas > 0 && self.wait_timeout >= self.response_timeout {
            return Err(ConfigError::invalid(
                "redis.wait_timeout_ms",
                "must be below redis.response_timeout_ms, or the WAIT command itself times out",
            ));
        }
        Ok(())
    }
}

/// Serializes Sentinel URLs with their passwords redacted.
fn serialize_redacted_urls<S: Serializer>(
    urls: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    let mut seq = serializer.serialize_seq(Some(urls.len()))?;
    for url in urls {
        match RedisUrl::parse(url) {
            Ok(parsed) => seq.serialize_element(&parsed.redacted())?,
            Err(_) => seq.serialize_element("[invalid URL]")?,
        }
    }
    seq.end()
}

/// A Redis URL whose password never appears in `Debug`, serialized output or errors.
#[derive(Clone)]
pub struct RedisUrl(Url);

impl RedisUrl {
    /// Parses `text`, as the `url` key is read; the error never quotes it, as it may hold a
    /// password.
    pub fn parse(text: &str) -> Result<Self, String> {
        Url::parse(text)
            .map(Self)
            .map_err(|e| format!("not a URL: {e}"))
    }

    /// The full URL, password included, for connecting.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL with any password replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        let mut url = self.0.clone();
        if url.password().is_some() {
            // Only fails for URLs that cannot carry credentials, which this one does.
            let _ = url.set_password(Some("[redacted]"));
        }
        url.into()
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, env, error_of};
    use super::super::{Role, Settings};

    #[test]
    fn bad_urls_are_refused_without_showing_them() {
        let msg = Settings::from_toml_str(
            MINIMAL,
            env(&[("LEASE_SYNC__REDIS__URL", "redis://:hunter2@[::1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("redis.url") && msg.contains("not a URL") && !msg.contains("hunter2"),
            "{msg}"
        );
        let s = Settings::from_toml_str(
            MINIMAL,
            env(&[("LEASE_SYNC__REDIS__URL", "http://127.0.0.1:6379")]),
        )
        .unwrap();
        let msg = s.validate(Role::Operate).unwrap_err().to_string();
        assert!(msg.contains("redis.url") && msg.contains("scheme"), "{msg}");
        let s = Settings::from_toml_str(MINIMAL, env(&[("LEASE_SYNC__REDIS__NAMESPACE", "a b")]))
            .unwrap();
        let msg = s.validate(Role::Operate).unwrap_err().to_string();
        assert!(msg.contains("redis.namespace"), "{msg}");
    }

    #[test]
    fn replicas_are_not_waited_for_by_default_and_the_wait_fits_in_a_command() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        s.validate(Role::Ingest).unwrap();
        assert_eq!(s.redis.wait_replicas, 0);
        let waiting = format!("{MINIMAL}\n[redis]\nwait_replicas = 1\nwait_timeout_ms = 250\n");
        let s = Settings::from_toml_str(&waiting, env(&[])).unwrap();
        s.validate(Role::Ingest).unwrap();
        assert_eq!(s.redis.wait_timeout, std::time::Duration::from_millis(250));
        let msg = error_of(&format!(
            "{MINIMAL}\n[redis]\nwait_replicas = 1\nwait_timeout_ms = 5000\n"
        ));
        assert!(msg.contains("redis.wait_timeout_ms"), "{msg}");
        let msg =
            Settings::from_toml_str(MINIMAL, env(&[("LEASE_SYNC__REDIS__WAIT_TIMEOUT_MS", "0")]))
                .unwrap_err()
                .to_string();
        assert!(msg.contains("wait_timeout_ms"), "{msg}");
    }

    #[test]
    fn sentinel_mode_needs_its_sentinels_and_master_name_and_hides_passwords() {
        let good = format!(
            "{MINIMAL}\n[redis]\nmode = \"sentinel\"\nmaster_name = \"mymaster\"\nsentinels = [\"redis://:s3cret@10.0.0.5:26379\", \"redis://10.0.0.6:26379\"]\n"
        );
        let s = Settings::from_toml_str(&good, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert_eq!(s.redis.mode, super::RedisMode::Sentinel);
        let shown = s.to_redacted_toml();
        assert!(
            !shown.contains("s3cret") && shown.contains("10.0.0.6:26379"),
            "{shown}"
        );
        for (from, to, key) in [
            (
                "master_name = \"mymaster\"",
                "master_name = \" \"",
                "redis.master_name",
            ),
            (
                "sentinels = [\"redis://:s3cret@10.0.0.5:26379\", \"redis://10.0.0.6:26379\"]",
                "sentinels = []",
                "redis.sentinels",
            ),
            (
                "\"redis://10.0.0.6:26379\"",
                "\"10.0.0.6:26379\"",
                "redis.sentinels[1]",
            ),
        ] {
            let msg = error_of(&good.replace(from, to));
            assert!(msg.contains(key), "{to}: {msg}");
        }
    }

    #[test]
    fn cluster_mode_needs_its_nodes_and_hides_passwords() {
        let msg = error_of(&format!("{MINIMAL}\n[redis]\nmode = \"cluster\"\n"));
        assert!(msg.contains("redis.nodes"), "{msg}");
        let msg = error_of(&format!(
            "{MINIMAL}\n[redis]\nmode = \"cluster\"\nnodes = [\"10.0.0.5:7000\"]\n"
        ));
        assert!(msg.contains("redis.nodes[0]"), "{msg}");
        let good = format!(
            "{MINIMAL}\n[redis]\nmode = \"cluster\"\nnodes = [\"redis://:s3cret@10.0.0.5:7000\", \"redis://10.0.0.6:7000\"]\n"
        );
        let s = Settings::from_toml_str(&good, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert_eq!(s.redis.mode, super::RedisMode::Cluster);
        let shown = s.to_redacted_toml();
        assert!(
            !shown.contains("s3cret") && shown.contains("10.0.0.6:7000"),
            "{shown}"
        );
    }
}
