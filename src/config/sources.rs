//! `[[sources]]`: the property-management systems allowed to post webhooks, and
//! `[[sources.properties]]`: the buildings each may send events for.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::buildium::BuildiumSettings;
use super::units::{Human, OptionalHuman, PositiveSecs, Secs};
use super::{ConfigError, EXPIRY_WARNING, HttpSettings, Role, Secret};
use crate::access::{Margins, PropertyZone};
use crate::event::is_valid_path_id;
use crate::signature::{self, SourceKeyError, SourceVerifier, hmac_sha256};

/// Default role template; `{integration_id}` is replaced by the property's integration id.
pub const DEFAULT_ROLE_TEMPLATE: &str = "virtual_access:integration:{integration_id}:resident";

/// What a source sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SourceKind {
    /// `lease-sync`: lease-sync's own event v1, signed with the source's `scheme`.
    #[default]
    #[serde(rename = "lease-sync")]
    LeaseSync,
    /// `buildium`: Buildium's webhooks (signed as Buildium signs; the signature keys are
    /// fixed), each a cue to read the lease again from Buildium's API (`[sources.buildium]`).
    #[serde(rename = "buildium")]
    Buildium,
}

/// Signature scheme a source signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SchemeKind {
    /// `standard-webhooks`: Standard Webhooks 1.0 (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`).
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
    /// `hmac-sha256`: HMAC-SHA256 with a configurable header, prefix, encoding and signed
    /// content (GitHub, Buildium and similar senders).
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

/// How an `hmac-sha256` signature is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// `hex`: hex digits (GitHub).
    Hex,
    /// `base64`: standard base64 (Buildium).
    Base64,
}

/// One webhook secret of a source: a plain string, or a table with the end of its validity
/// (`{ secret = "…", not_after = "2026-12-31T00:00:00Z" }`) for rotation without downtime.
#[derive(Clone, Serialize)]
pub struct SourceSecret {
    /// `secret`: the secret.
    pub secret: Secret,
    /// `not_after`: after this instant the secret no longer verifies (RFC 3339).
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_after: Option<OffsetDateTime>,
}

impl fmt::Debug for SourceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSecret")
            .field("secret", &self.secret)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl SourceSecret {
    /// A secret without an end of validity.
    pub fn plain(value: impl Into<String>) -> Self {
        Self {
            secret: Secret::new(value),
            not_after: None,
        }
    }
}

impl<'de> Deserialize<'de> for SourceSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            secret: Secret,
            #[serde(default, with = "time::serde::rfc3339::option")]
            not_after: Option<OffsetDateTime>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SourceSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a secret string or a table { secret = \"…\", not_after = \"<RFC 3339>\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SourceSecret::plain(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SourceSecret {
                    secret: table.secret,
                    not_after: table.not_after,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[[sources]]`: one property-management system.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// `name`: name in the webhook URL, `POST /webhooks/{name}`; `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    /// `kind`: what the source sends: `lease-sync` (the default) or `buildium`.
    #[serde(default)]
    pub kind: SourceKind,
    /// `scheme`: signature scheme.
    #[serde(default = "SourceSettings::default_scheme")]
    pub scheme: SchemeKind,
    /// `secrets`: secrets that may sign; any active one verifies (rotation). Each is a string
    /// or `{ secret = "…", not_after = "<RFC 3339>" }`.
    #[serde(default)]
    pub secrets: Vec<SourceSecret>,
    /// `secrets_file`: file with more secrets, one per line (blank lines and `#` comments
    /// ignored), relative to the configuration file. Read while loading, into `secrets`.
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// `tolerance_secs`: largest accepted difference, either way, between the signed
    /// timestamp and now.
    #[serde(
        rename = "tolerance_secs",
        with = "PositiveSecs",
        default = "SourceSettings::default_tolerance"
    )]
    pub tolerance: Duration,
    /// `max_clock_skew_secs`: largest amount by which an event's `occurred_at` may be ahead
    /// of this server's clock; later ones are refused (422 `invalid_event`), since an event's
    /// time is its version.
    #[serde(
        rename = "max_clock_skew_secs",
        with = "Secs",
        default = "SourceSettings::default_max_clock_skew"
    )]
    pub max_clock_skew: Duration,
    /// `signature_header` (`hmac-sha256`): header holding the signature
    /// (`x-hub-signature-256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// `signature_prefix` (`hmac-sha256`): text before the signature (`sha256=` for GitHub);
    /// default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_prefix: Option<String>,
    /// `encoding` (`hmac-sha256`): `hex` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// `timestamp_header` (`hmac-sha256`): header holding the signed Unix timestamp (seconds,
    /// or milliseconds); when set, `tolerance_secs` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// `signed_content` (`hmac-sha256`): what is signed, `{body}` (default) or e.g.
    /// `{timestamp}.{body}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_content: Option<String>,
    /// `event_id` (`hmac-sha256`): where the dedupe id comes from: `header:<name>`,
    /// `body:<field>` or `body-sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `rate_limit_per_sec`: overrides `http.rate_limit_per_sec` for this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<u32>,
    /// `rate_limit_burst`: overrides `http.rate_limit_burst` for this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
    /// `grant_lead`: how long before a Buildium tenant's move-in (or lease start) date
    /// access starts, e.g. `"15m"`; overridable per property.
    #[serde(default, with = "Human")]
    pub grant_lead: Duration,
    /// `revoke_grace`: how long after a Buildium tenant's move-out (or lease end) date
    /// access ends; overridable per property.
    #[serde(default, with = "Human")]
    pub revoke_grace: Duration,
    /// `[sources.buildium]`: Buildium's API, for `kind = "buildium"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildium: Option<BuildiumSettings>,
    /// `[[sources.properties]]`: buildings this source may send events for.
    #[serde(default)]
    pub properties: Vec<PropertySettings>,
}

impl SourceSettings {
    /// `scheme` when unset.
    pub const DEFAULT_SCHEME: SchemeKind = SchemeKind::StandardWebhooks;
    /// `tolerance_secs` when unset.
    pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
    /// `max_clock_skew_secs` when unset.
    pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

    fn default_scheme() -> SchemeKind {
        Self::DEFAULT_SCHEME
    }

    fn default_tolerance() -> Duration {
        Self::DEFAULT_TOLERANCE
    }

    fn default_max_clock_skew() -> Duration {
        Self::DEFAULT_MAX_CLOCK_SKEW
    }

    /// A source named `name` with every key at its default: Standard Webhooks, no secrets,
    /// no properties.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: SourceKind::LeaseSync,
            grant_lead: Duration::ZERO,
            revoke_grace: Duration::ZERO,
            buildium: None,
            scheme: Self::DEFAULT_SCHEME,
            secrets: Vec::new(),
            secrets_file: None,
            tolerance: Self::DEFAULT_TOLERANCE,
            max_clock_skew: Self::DEFAULT_MAX_CLOCK_SKEW,
            signature_header: None,
            signature_prefix: None,
            encoding: None,
            timestamp_header: None,
            signed_content: None,
            event_id: None,
            rate_limit_per_sec: None,
            rate_limit_burst: None,
            properties: Vec::new(),
        }
    }

    /// The source's verifier at `now`, built by [`signature::source_verifier`], with errors
    /// keyed `sources[index].…`.
    pub fn verifier(
        &self,
        index: usize,
        now: OffsetDateTime,
    ) -> Result<SourceVerifier, ConfigError> {
        signature::source_verifier(self, now).map_err(|e| in_source(index, e))
    }

    /// The wire format of an `hmac-sha256` source, built by [`signature::hmac_format`], with
    /// errors keyed `sources[index].…`.
    pub fn hmac_format(&self, index: usize) -> Result<hmac_sha256::Format, ConfigError> {
        signature::hmac_format(self).map_err(|e| in_source(index, e))
    }

    /// Checks entry `index` for `role` at `now`: its name, and, where ingest verifies its
    /// webhooks, its secrets, signature keys and rate limit (the effective one, falling back
    /// to `http`'s); then its properties.
    pub fn validate(
        &self,
        index: usize,
        role: Role,
        http: &HttpSettings,
        now: OffsetDateTime,
    ) -> Result<(), ConfigError> {
        let at = |field: &str| format!("sources[{index}].{field}");
        if !is_valid_path_id(&self.name) {
            return Err(ConfigError::invalid(
                at("name"),
                "must match [A-Za-z0-9_-]{1,64}",
            ));
        }
        if role.runs_ingest() {
            if self.secrets.is_empty() {
                return Err(ConfigError::invalid(
                    at("secrets"),
                    "at least one secret is needed; unsigned webhooks are never accepted",
                ));
            }
            self.verifier(index, now)?;
            let per_sec = self.rate_limit_per_sec.unwrap_or(http.rate_limit_per_sec);
            let burst = self.rate_limit_burst.unwrap_or(http.rate_limit_burst);
            if per_sec > 0 && burst == 0 {
                return Err(ConfigError::invalid(
                    at("rate_limit_burst"),
                    "must be greater than 0 while the rate limit is on",
                ));
            }
        }
        if self.kind == SourceKind::Buildium && role.runs_workers() {
            self.buildium
                .as_ref()
                .ok_or_else(|| {
                    ConfigError::invalid(
                        at("buildium"),
                        "a Buildium source needs [sources.buildium] (base_url, client_id, client_secret) to read leases",
                    )
                })?
                .validate(index)?;
        }
        if self.kind != SourceKind::Buildium && self.buildium.is_some() {
            return Err(ConfigError::invalid(
                at("buildium"),
                "applies only to kind = \"buildium\"",
            ));
        }
        let mut ids = HashSet::new();
        for (j, property) in self.properties.iter().enumerate() {
            property.validate(index, j, self.kind)?;
            if !ids.insert(property.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("sources[{index}].properties[{j}].id"),
                    format!("property `{}` is listed twice", property.id),
                ));
            }
        }
        Ok(())
    }

    /// Warnings about this source's secrets at `now`: expired ones, and ones expiring within
    /// [`EXPIRY_WARNING`]. Never contains a secret.
    pub fn secret_warnings(&self, index: usize, now: OffsetDateTime) -> Vec<String> {
        self.secrets
            .iter()
            .enumerate()
            .filter_map(|(j, entry)| {
                let end = entry.not_after?;
                let key = format!("sources[{index}].secrets[{j}] (source `{}`)", self.name);
                if end < now {
                    Some(format!(
                        "{key} expired at {}; it no longer verifies, remove it",
                        rfc3339(end)
                    ))
                } else if end - now <= EXPIRY_WARNING {
                    Some(format!(
                        "{key} expires at {} (in {}); make sure its replacement is configured",
                        rfc3339(end),
                        approximately(end - now)
                    ))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Checks every entry (see [`SourceSettings::validate`]) and that no name is used twice.
pub(super) fn validate_all(
    sources: &[SourceSettings],
    role: Role,
    http: &HttpSettings,
    now: OffsetDateTime,
) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, source) in sources.iter().enumerate() {
        source.validate(i, role, http, now)?;
        if !names.insert(source.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("sources[{i}].name"),
                format!("source `{}` is defined twice", source.name),
            ));
        }
    }
    Ok(())
}

/// Places a key of entry `index` in the whole configuration.
fn in_source(index: usize, error: SourceKeyError) -> ConfigError {
    ConfigError::invalid(format!("sources[{index}].{}", error.key), error.message)
}

/// `3 d 4 h`, `5 h 12 min`: precise enough for an expiry warning.
fn approximately(left: time::Duration) -> String {
    let minutes = left.whole_minutes().max(0);
    let (days, hours, minutes) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else {
        format!("{hours} h {minutes} min")
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// `[[sources.properties]]`: one building and where it lives in OpenApp.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PropertySettings {
    /// `id`: the property-management system's building id (`lease.property_id` in events).
    pub id: String,
    /// `org_id`: OpenApp organisation id, sent as `X-Org`.
    pub org_id: String,
    /// `integration_id`: OpenApp integration id, the `{id}` of
    /// `/integrations/{id}/building-users`.
    pub integration_id: String,
    /// `role`: role granted to residents; `{integration_id}` is substituted. Unset:
    /// [`DEFAULT_ROLE_TEMPLATE`].
    #[serde(default)]
    pub role: Option<String>,
    /// `timezone`: the building's IANA time zone (`America/New_York`), in which a Buildium
    /// date starts and ends at local midnight.
    #[serde(default = "PropertySettings::default_timezone")]
    pub timezone: String,
    /// `grant_lead`: overrides the source's `grant_lead` for this building.
    #[serde(
        default,
        with = "OptionalHuman",
        skip_serializing_if = "Option::is_none"
    )]
    pub grant_lead: Option<Duration>,
    /// `revoke_grace`: overrides the source's `revoke_grace` for this building.
    #[serde(
        default,
        with = "OptionalHuman",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoke_grace: Option<Duration>,
}

impl PropertySettings {
    /// Property `id` living in OpenApp organisation `org_id` and integration
    /// `integration_id`, granting the default role ([`DEFAULT_ROLE_TEMPLATE`]).
    pub fn new(
        id: impl Into<String>,
        org_id: impl Into<String>,
        integration_id: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            org_id: org_id.into(),
            integration_id: integration_id.into(),
            role: None,
            timezone: Self::DEFAULT_TIMEZONE.to_owned(),
            grant_lead: None,
            revoke_grace: None,
        }
    }

    /// `timezone` when unset.
    pub const DEFAULT_TIMEZONE: &str = "UTC";

    fn default_timezone() -> String {
        Self::DEFAULT_TIMEZONE.to_owned()
    }

    /// The building's time zone; UTC if `timezone` does not name one (validation refuses
    /// that at startup).
    pub fn zone(&self) -> PropertyZone {
        PropertyZone::new(&self.timezone).unwrap_or_else(|_| PropertyZone::utc())
    }

    /// The lead and grace of this building: its own, else `source`'s.
    pub fn margins(&self, source: &SourceSettings) -> Margins {
        Margins {
            grant_lead: self.grant_lead.unwrap_or(source.grant_lead),
            revoke_grace: self.revoke_grace.unwrap_or(source.revoke_grace),
        }
    }

    /// The role to grant, with the template filled in.
    pub fn effective_role(&self) -> String {
        self.role
            .as_deref()
            .unwrap_or(DEFAULT_ROLE_TEMPLATE)
            .replace("{integration_id}", &self.integration_id)
    }

    /// Checks property `index` of source `source` (of `kind`): a non-empty id (Buildium's
    /// are numbers), OpenApp ids usable in a URL path, a non-empty role, a known time zone.
    pub fn validate(
        &self,
        source: usize,
        index: usize,
        kind: SourceKind,
    ) -> Result<(), ConfigError> {
        let at = |field: &str| format!("sources[{source}].properties[{index}].{field}");
        if self.id.is_empty() {
            return Err(ConfigError::invalid(at("id"), "must not be empty"));
        }
        if kind == SourceKind::Buildium && self.id.parse::<u32>().is_err() {
            return Err(ConfigError::invalid(
                at("id"),
                "must be a Buildium PropertyId (a number)",
            ));
        }
        if let Err(e) = PropertyZone::new(&self.timezone) {
            return Err(ConfigError::invalid(at("timezone"), e.to_string()));
        }
        if !is_valid_path_id(&self.org_id) {
            return Err(ConfigError::invalid(
                at("org_id"),
                "must match [A-Za-z0-9_-]{1,64}",
            ));
        }
        if !is_valid_path_id(&self.integration_id) {
            return Err(ConfigError::invalid(
                at("integration_id"),
                "must match [A-Za-z0-9_-]{1,64}",
            ));
        }
        if self.effective_role().trim().is_empty() {
            return Err(ConfigError::invalid(at("role"), "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{HMAC_SOURCE, MINIMAL, env, error_of};
    use super::super::{Role, Settings};
    use super::*;

    #[test]
    fn source_without_secret_is_refused_for_ingest() {
        let text = MINIMAL.replace("secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]", "");
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        let msg = s.validate(Role::Ingest).unwrap_err().to_string();
        assert!(msg.contains("sources[0].secrets"), "{msg}");
        // Workers never verify signatures, so they do not need the secrets.
        s.validate(Role::Work).unwrap();
    }

    #[test]
    fn bad_ids_and_secrets_are_refused() {
        let bad_integration =
            MINIMAL.replace("integration_id = \"int1\"", "integration_id = \"a/b\"");
        let s = Settings::from_toml_str(&bad_integration, env(&[])).unwrap();
        assert!(
            s.validate(Role::Serve)
                .unwrap_err()
                .to_string()
                .contains("integration_id")
        );

        let bad_secret = MINIMAL.replace("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_!!!");
        let s = Settings::from_toml_str(&bad_secret, env(&[])).unwrap();
        let msg = s.validate(Role::Serve).unwrap_err().to_string();
        assert!(
            msg.contains("sources[0].secrets[0]") && !msg.contains("!!!"),
            "{msg}"
        );
    }

    #[test]
    fn names_and_property_ids_are_unique_and_tolerance_positive() {
        let twice = format!(
            "{MINIMAL}\n[[sources]]\nname = \"acme\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n"
        );
        let msg = error_of(&twice);
        assert!(
            msg.contains("sources[1].name") && msg.contains("defined twice"),
            "{msg}"
        );
        let listed_twice = format!(
            "{MINIMAL}\n[[sources.properties]]\nid = \"P-17\"\norg_id = \"o\"\nintegration_id = \"i\"\n"
        );
        let msg = error_of(&listed_twice);
        assert!(msg.contains("sources[0].properties[1].id"), "{msg}");
        let msg = Settings::from_toml_str(
            MINIMAL,
            env(&[("LEASE_SYNC__SOURCES__0__TOLERANCE_SECS", "0")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("sources[0].tolerance_secs") && msg.contains("greater than 0"),
            "{msg}"
        );
    }

    #[test]
    fn hmac_sources_are_validated_by_key() {
        let s = Settings::from_toml_str(HMAC_SOURCE, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        let v = s.sources[0].verifier(0, OffsetDateTime::now_utc()).unwrap();
        assert!(matches!(v, SourceVerifier::HmacSha256(_)));

        let msg = error_of(&HMAC_SOURCE.replace("signature_header = \"X-Hub-Signature-256\"", ""));
        assert!(msg.contains("sources[0].signature_header"), "{msg}");
        let msg = error_of(&HMAC_SOURCE.replace("event_id = \"header:x-github-delivery\"", ""));
        assert!(msg.contains("sources[0].event_id"), "{msg}");
        let msg = error_of(&HMAC_SOURCE.replace("header:x-github-delivery", "query:x"));
        assert!(msg.contains("sources[0].event_id"), "{msg}");
        let msg = error_of(&HMAC_SOURCE.replace(
            "encoding = \"hex\"",
            "encoding = \"hex\"\n        signed_content = \"{timestamp}.{body}\"",
        ));
        assert!(msg.contains("sources[0].timestamp_header"), "{msg}");
        let msg = error_of(&HMAC_SOURCE.replace("It's a Secret to Everybody", "short"));
        assert!(
            msg.contains("sources[0].secrets[0]") && !msg.contains("short"),
            "{msg}"
        );
        // Keys of one scheme are refused on the other.
        let msg = error_of(&MINIMAL.replace(
            "name = \"acme\"",
            "name = \"acme\"\n        signature_header = \"x-sig\"",
        ));
        assert!(
            msg.contains("sources[0].signature_header") && msg.contains("hmac-sha256"),
            "{msg}"
        );
        // Unknown schemes never start.
        let err = Settings::from_toml_str(
            &MINIMAL.replace(
                "name = \"acme\"",
                "name = \"acme\"\n        scheme = \"none\"",
            ),
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sources[0].scheme"), "{err}");
    }

    #[test]
    fn secrets_rotate_with_not_after_and_a_source_with_only_expired_ones_is_refused() {
        let rotating = MINIMAL.replace(
            "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
            "secrets = [{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", not_after = \"2020-01-01T00:00:00Z\" }, \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]",
        );
        let s = Settings::from_toml_str(&rotating, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert_eq!(s.sources[0].secrets[0].not_after.unwrap().year(), 2020);
        let now = OffsetDateTime::now_utc();
        let status = s.sources[0]
            .verifier(0, now)
            .unwrap()
            .key_status(now.unix_timestamp());
        assert_eq!((status.active, status.total), (1, 2));
        let redacted = s.to_redacted_toml();
        assert!(
            !redacted.contains("C2FVsBQ") && redacted.contains("2020-01-01"),
            "{redacted}"
        );

        let expired_only = MINIMAL.replace(
            "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
            "secrets = [{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", not_after = \"2020-01-01T00:00:00Z\" }]",
        );
        let msg = error_of(&expired_only);
        assert!(
            msg.contains("sources[0].secrets") && msg.contains("not_after"),
            "{msg}"
        );
        // The clock is an argument: before its end, the same secret is fine.
        Settings::from_toml_str(&expired_only, env(&[]))
            .unwrap()
            .validate_at(Role::Serve, time::macros::datetime!(2019-12-31 0:00 UTC))
            .unwrap();

        for bad in [
            "{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", not_after = \"tomorrow\" }",
            "{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", expires = \"2030-01-01T00:00:00Z\" }",
            "{ not_after = \"2030-01-01T00:00:00Z\" }",
        ] {
            let text = MINIMAL.replace(
                "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
                &format!("secrets = [{bad}]"),
            );
            let err = Settings::from_toml_str(&text, env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("sources[0].secrets[0]") && !err.contains("C2FVsBQ"),
                "{err}"
            );
        }
    }

    #[test]
    fn expiring_and_expired_secrets_are_warned_about_without_showing_them() {
        let now = OffsetDateTime::now_utc();
        let at = |d: time::Duration| rfc3339(now + d);
        let text = MINIMAL.replace(
            "secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
            &format!(
                "secrets = [{{ secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\", not_after = \"{}\" }}, {{ secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", not_after = \"{}\" }}, {{ secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", not_after = \"{}\" }}]",
                at(time::Duration::days(3)),
                at(time::Duration::days(-1)),
                at(time::Duration::days(30)),
            ),
        );
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        let warnings: Vec<String> = s
            .warnings(now)
            .into_iter()
            .filter(|w| w.starts_with("sources"))
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("(in 3 d 0 h)"), "{warnings:?}");
        assert!(warnings[0].contains("sources[0].secrets[0]") && warnings[0].contains("expires"));
        assert!(warnings[1].contains("sources[0].secrets[1]") && warnings[1].contains("expired"));
        assert!(warnings.iter().all(|w| !w.contains("whsec_")));
    }
}
