//! `deploy/config.example.toml` against the code: valid, documenting every key, and setting
//! every key it sets to its default, except the listed example values.

use time::OffsetDateTime;

use super::testing::{MINIMAL, env};
use super::{
    DEFAULT_ROLE_TEMPLATE, ReconcileSettings, Role, Settings, SignatureEncoding, SourceSettings,
};

const EXAMPLE: &str = include_str!("../../deploy/config.example.toml");

/// Keys the example sets to something other than a default, and why. Everything else it
/// sets must equal the default.
const EXAMPLE_VALUES: &[(&str, &str)] = &[
    (
        "sources.name",
        "a source has no default name; the example's is a placeholder",
    ),
    (
        "sources.secrets",
        "no default: ingest refuses a source without a secret; the example's is a placeholder",
    ),
    (
        "sources.properties.id",
        "required, no default: an example building",
    ),
    (
        "sources.properties.org_id",
        "required, no default: an example organisation",
    ),
    (
        "sources.properties.integration_id",
        "required, no default: an example integration",
    ),
];

/// Every key `Settings` knows, as dotted paths (`http.listen`, `sources.properties.id`).
fn key_paths(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let is_section = v.is_table()
                    || v.as_array()
                        .is_some_and(|a| a.iter().any(toml::Value::is_table));
                if !is_section {
                    out.push(path.clone());
                }
                key_paths(v, &path, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_table()) {
                key_paths(item, prefix, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_example_config_is_valid_and_documents_every_key() {
    let text = EXAMPLE;
    let settings = Settings::from_toml_str(
        text,
        env(&[
            ("LEASE_SYNC__OPENAPP__API_KEY", "k"),
            ("LEASE_SYNC__ADMIN__TOKENS", "[\"0123456789abcdef0123\"]"),
            (
                "LEASE_SYNC__SOURCES__0__SECRETS",
                "[\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]",
            ),
        ]),
    )
    .unwrap();
    settings.validate(Role::Serve).unwrap();

    // Every key, optional ones included, must appear in the example (set or commented out).
    let mut full = settings;
    full.openapp.api_key_file = Some("x".into());
    full.sources[0].secrets_file = Some("x".into());
    full.sources[0].secrets[0].not_after = Some(OffsetDateTime::UNIX_EPOCH);
    full.sources[0].signature_header = Some("x".into());
    full.sources[0].signature_prefix = Some("x".into());
    full.sources[0].encoding = Some(SignatureEncoding::Hex);
    full.sources[0].timestamp_header = Some("x".into());
    full.sources[0].signed_content = Some("x".into());
    full.sources[0].event_id = Some("x".into());
    full.sources[0].rate_limit_per_sec = Some(1);
    full.sources[0].rate_limit_burst = Some(1);
    full.admin.tokens_file = Some("x".into());
    full.sources[0].buildium = Some(crate::config::BuildiumSettings {
        client_secret: Some(crate::config::Secret::new("x")),
        client_secret_file: Some("x".into()),
        ..crate::config::BuildiumSettings::default()
    });
    full.sources[0].properties[0].grant_lead = Some(std::time::Duration::from_secs(1));
    full.sources[0].properties[0].revoke_grace = Some(std::time::Duration::from_secs(1));
    full.http.max_connections = Some(std::num::NonZeroUsize::MIN);
    full.admin.max_connections = Some(std::num::NonZeroUsize::MIN);
    let mut keys = Vec::new();
    key_paths(&toml::Value::try_from(&full).unwrap(), "", &mut keys);
    for key in keys {
        let leaf = key.rsplit('.').next().unwrap();
        let section = key.rsplit_once('.').map(|(s, _)| s);
        // Secrets are inline tables (`{ secret = "…", not_after = "…" }`), not sections.
        if section == Some("sources.secrets") {
            assert!(
                text.contains(&format!("{{ {leaf} = ")) || text.contains(&format!(", {leaf} = ")),
                "key `{key}` is not documented in deploy/config.example.toml"
            );
            continue;
        }
        if let Some(section) = section {
            assert!(
                text.contains(&format!("[{section}]")) || text.contains(&format!("[[{section}]]")),
                "section [{section}] missing from deploy/config.example.toml"
            );
        }
        assert!(
            text.contains(&format!("\n{leaf} = ")) || text.contains(&format!("\n# {leaf} = ")),
            "key `{key}` is not documented in deploy/config.example.toml"
        );
    }
}

#[test]
fn the_example_config_documents_the_reconcile_keys() {
    let text = EXAMPLE;
    let mut settings = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
    settings.reconcile = ReconcileSettings {
        every: Some("24h".into()),
        from: Some("/srv/leases.csv".into()),
        source: Some("acme".into()),
        ..ReconcileSettings::default()
    };
    settings.validate(Role::Serve).unwrap();
    let mut keys = Vec::new();
    key_paths(
        &toml::Value::try_from(&settings.reconcile).unwrap(),
        "reconcile",
        &mut keys,
    );
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(
        text.contains("\n[reconcile]\n"),
        "section [reconcile] missing"
    );
    for key in keys {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            text.contains(&format!("\n{leaf} = ")) || text.contains(&format!("\n# {leaf} = ")),
            "key `{key}` is not documented in deploy/config.example.toml"
        );
    }
}

/// The defaults, as the example would write them: the sections' `Default`s, a source's
/// `SourceSettings::named`, and for a property its defaulted keys: `role`, whose unset value
/// means [`DEFAULT_ROLE_TEMPLATE`], and `timezone`.
fn default_of(path: &str) -> toml::Value {
    let value = match path {
        "" => toml::Value::try_from(Settings::default()),
        "sources" => toml::Value::try_from(SourceSettings::named("")),
        "sources.properties" => Ok(toml::Value::Table(toml::Table::from_iter([
            (
                "role".to_owned(),
                toml::Value::String(DEFAULT_ROLE_TEMPLATE.to_owned()),
            ),
            (
                "timezone".to_owned(),
                toml::Value::String(crate::config::PropertySettings::DEFAULT_TIMEZONE.to_owned()),
            ),
        ]))),
        other => panic!("no defaults known for [[{other}]]"),
    };
    value.unwrap_or_else(|e| panic!("defaults of `{path}` do not serialize: {e}"))
}

/// Compares the keys `example` sets under `path` with `defaults`, collecting mismatches.
fn compare(
    example: &toml::Table,
    defaults: &toml::Value,
    path: &str,
    checked: &mut Vec<String>,
    wrong: &mut Vec<String>,
) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    for (key, value) in example {
        let key_path = at(key);
        match value {
            toml::Value::Table(section) => match defaults.get(key) {
                Some(section_defaults) => {
                    compare(section, section_defaults, &key_path, checked, wrong);
                }
                None => wrong.push(format!("[{key_path}] is not a section of the code")),
            },
            toml::Value::Array(entries)
                if !entries.is_empty() && entries.iter().all(toml::Value::is_table) =>
            {
                let entry_defaults = default_of(&key_path);
                for entry in entries.iter().filter_map(toml::Value::as_table) {
                    compare(entry, &entry_defaults, &key_path, checked, wrong);
                }
            }
            _ if EXAMPLE_VALUES.iter().any(|(k, _)| *k == key_path) => {}
            _ => {
                checked.push(key_path.clone());
                match defaults.get(key) {
                    Some(default) if default == value => {}
                    Some(default) => wrong.push(format!(
                        "{key_path} = {value} in the example, but the default is {default}"
                    )),
                    None => wrong.push(format!(
                        "{key_path} = {value} in the example, but it has no default (unset)"
                    )),
                }
            }
        }
    }
}

#[test]
fn the_example_config_sets_every_key_to_its_default_unless_listed() {
    let example: toml::Table = toml::from_str(EXAMPLE).unwrap();
    let (mut checked, mut wrong) = (Vec::new(), Vec::new());
    compare(&example, &default_of(""), "", &mut checked, &mut wrong);
    assert!(
        wrong.is_empty(),
        "deploy/config.example.toml disagrees with the defaults in the code (fix one, or list \
         an intentional example value in EXAMPLE_VALUES with a reason):\n{}",
        wrong.join("\n")
    );
    // The comparison saw the sections, list entries and keys it should have.
    for key in [
        "http.read_timeout_ms",
        "redis.url",
        "openapp.base_url",
        "worker.poll_interval_ms",
        "retry.max_attempts",
        "dead_letters.max_age_days",
        "admin.listen",
        "admin.tokens",
        "log.level",
        "reconcile.apply",
        "sources.tolerance_secs",
        "sources.max_clock_skew_secs",
        "sources.properties.role",
    ] {
        assert!(
            checked.iter().any(|k| k == key),
            "{key} unchecked: {checked:?}"
        );
    }
    // Every listed example value is still set in the example and still differs.
    for (key, reason) in EXAMPLE_VALUES {
        assert!(!reason.is_empty());
        assert!(
            !checked.iter().any(|k| k == key),
            "{key} is listed as an example value but was compared"
        );
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            EXAMPLE.contains(&format!("\n{leaf} = ")),
            "{key} is listed as an example value but the example does not set it"
        );
    }
}

#[test]
fn a_changed_default_would_be_caught() {
    let example: toml::Table =
        toml::from_str(&EXAMPLE.replace("read_timeout_ms = 5000", "read_timeout_ms = 5001"))
            .unwrap();
    let (mut checked, mut wrong) = (Vec::new(), Vec::new());
    compare(&example, &default_of(""), "", &mut checked, &mut wrong);
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(
        wrong[0].starts_with("http.read_timeout_ms = 5001"),
        "{wrong:?}"
    );
}
