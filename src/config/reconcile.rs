//! `[reconcile]`: scheduled reconciliation of OpenApp against a file of active leases.

use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::{ConfigError, SourceSettings};

/// `[reconcile]`: scheduled reconciliation of OpenApp against a file of the active leases of
/// one source (see `lease-sync reconcile`). Disabled unless `every` is set.
///
/// `every` stays text until validation, which only the roles that run the schedule do: an
/// operator command never refuses a configuration over it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// `every`: how often to reconcile, in humantime (`24h`, `30m`); absent or empty
    /// disables it.
    pub every: Option<String>,
    /// `from`: the file of active leases: a local path (relative to the working directory)
    /// or an http(s) URL, CSV or JSON. Shown with any URL credentials and query redacted.
    #[serde(serialize_with = "serialize_location")]
    pub from: Option<String>,
    /// `source`: the `[[sources]]` entry whose truth the file is.
    pub source: Option<String>,
    /// `apply`: whether to enqueue the changes (`true`) or only log the plan (`false`).
    pub apply: bool,
    /// `prune_unmanaged`: whether to also remove building users lease-sync never added and
    /// has no state for.
    pub prune_unmanaged: bool,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            every: None,
            from: None,
            source: None,
            apply: true,
            prune_unmanaged: false,
        }
    }
}

impl ReconcileSettings {
    /// The period, when scheduled reconciliation is enabled and `every` is valid.
    pub fn period(&self) -> Option<Duration> {
        humantime::parse_duration(self.every_text()?)
            .ok()
            .filter(|d| !d.is_zero())
    }

    /// Whether `every` is set (validation makes sure it is then also valid).
    pub fn enabled(&self) -> bool {
        self.every_text().is_some()
    }

    /// `every`, trimmed, when not empty.
    fn every_text(&self) -> Option<&str> {
        self.every
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }

    /// Checks the schedule of a service process: when `every` is set, it must be a positive
    /// humantime duration, `source` must name one of `sources`, and `from` must be given
    /// unless that source is `kind = "buildium"` (read from its API).
    pub fn validate(&self, sources: &[SourceSettings]) -> Result<(), ConfigError> {
        if let Some(source) = self.source.as_deref()
            && !source.is_empty()
            && !sources.iter().any(|s| s.name == source)
        {
            return Err(ConfigError::invalid(
                "reconcile.source",
                format!("no [[sources]] entry is named `{source}`"),
            ));
        }
        let Some(every) = self.every_text() else {
            return Ok(());
        };
        match humantime::parse_duration(every) {
            Ok(d) if d.is_zero() => {
                return Err(ConfigError::invalid(
                    "reconcile.every",
                    "must be longer than 0",
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ConfigError::invalid(
                    "reconcile.every",
                    format!("not a duration such as \"24h\" or \"30m\": {e}"),
                ));
            }
        }
        let buildium = self.source.as_deref().is_some_and(|name| {
            sources
                .iter()
                .any(|s| s.name == name && s.kind == super::SourceKind::Buildium)
        });
        if !buildium && self.from.as_deref().is_none_or(|f| f.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "reconcile.from",
                "required when reconcile.every is set (unless the source is kind = \"buildium\", which is read from its API): a file path or an http(s) URL",
            ));
        }
        if let Some(from) = self.from.as_deref()
            && from.contains("://")
            && !matches!(
                url::Url::parse(from.trim())
                    .map(|u| u.scheme().to_owned())
                    .as_deref(),
                Ok("http" | "https")
            )
        {
            return Err(ConfigError::invalid(
                "reconcile.from",
                format!("`{}` is not an http(s) URL", redacted_location(from)),
            ));
        }
        if self.source.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::invalid(
                "reconcile.source",
                "required when reconcile.every is set: the [[sources]] entry the file describes",
            ));
        }
        Ok(())
    }
}

/// `location` without URL credentials or query (which often carry tokens), for output.
pub fn redacted_location(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(mut parsed) if !parsed.cannot_be_a_base() => {
            // Only fails for URLs that cannot carry credentials, which then carry none.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            if parsed.query().is_some() {
                parsed.set_query(Some("[redacted]"));
            }
            parsed.set_fragment(None);
            parsed.to_string()
        }
        _ => location.to_owned(),
    }
}

fn serialize_location<S: Serializer>(
    value: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(location) => serializer.serialize_some(&redacted_location(location)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, env};
    use super::super::{Role, Settings};
    use super::*;

    #[test]
    fn reconciliation_is_off_by_default() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        assert!(!s.reconcile.enabled());
        assert_eq!(s.reconcile.period(), None);
        assert!(s.reconcile.apply, "apply defaults to true");
        assert!(
            !s.reconcile.prune_unmanaged,
            "prune_unmanaged defaults to false"
        );
        let s =
            Settings::from_toml_str(&format!("{MINIMAL}\n[reconcile]\nevery = \"\"\n"), env(&[]))
                .unwrap();
        s.validate(Role::Serve).unwrap();
        assert!(!s.reconcile.enabled(), "an empty `every` disables it");
    }

    #[test]
    fn reconcile_settings_are_validated_by_key() {
        let with = |section: &str| {
            let s =
                Settings::from_toml_str(&format!("{MINIMAL}\n[reconcile]\n{section}\n"), env(&[]))
                    .unwrap();
            s.validate(Role::Serve).map(|()| s)
        };
        let good = with("every = \"24h\"\nfrom = \"/srv/leases.csv\"\nsource = \"acme\"").unwrap();
        assert_eq!(good.reconcile.period(), Some(Duration::from_secs(86_400)));
        for (section, key) in [
            (
                "every = \"daily\"\nfrom = \"a.csv\"\nsource = \"acme\"",
                "reconcile.every",
            ),
            (
                "every = \"0s\"\nfrom = \"a.csv\"\nsource = \"acme\"",
                "reconcile.every",
            ),
            ("every = \"1h\"\nsource = \"acme\"", "reconcile.from"),
            (
                "every = \"1h\"\nfrom = \"  \"\nsource = \"acme\"",
                "reconcile.from",
            ),
            (
                "every = \"1h\"\nfrom = \"ftp://h/a.csv\"\nsource = \"acme\"",
                "reconcile.from",
            ),
            ("every = \"1h\"\nfrom = \"a.csv\"", "reconcile.source"),
            (
                "every = \"1h\"\nfrom = \"a.csv\"\nsource = \"other\"",
                "reconcile.source",
            ),
            ("source = \"other\"", "reconcile.source"),
        ] {
            let msg = with(section).unwrap_err().to_string();
            assert!(msg.contains(key), "{section}: {msg}");
        }
        // Operator commands do not run the schedule and do not care.
        let s = Settings::from_toml_str(
            &format!("{MINIMAL}\n[reconcile]\nevery = \"soon\"\n"),
            env(&[]),
        )
        .unwrap();
        s.validate(Role::Operate).unwrap();
    }

    #[test]
    fn reconcile_urls_are_shown_without_credentials() {
        let text = format!(
            "{MINIMAL}\n[reconcile]\nevery = \"1h\"\nsource = \"acme\"\nfrom = \"https://bob:hunter2@files.example/leases.csv?sig=s3cr3t\"\n"
        );
        let s = Settings::from_toml_str(&text, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        let out = s.to_redacted_toml();
        assert!(
            !out.contains("hunter2") && !out.contains("s3cr3t") && !out.contains("bob"),
            "{out}"
        );
        assert!(
            out.contains("https://files.example/leases.csv?[redacted]"),
            "{out}"
        );
        assert_eq!(redacted_location("/srv/leases.csv"), "/srv/leases.csv");
        assert_eq!(redacted_location("leases.json"), "leases.json");
    }
}
