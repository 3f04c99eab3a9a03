//! `deploy/config.example.toml` against the code: valid, and documenting every key.

use time::OffsetDateTime;

use super::testing::{MINIMAL, env};
use super::{ReconcileSettings, Role, Settings, SignatureEncoding};

const EXAMPLE: &str = include_str!("../../deploy/config.example.toml");

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
    let mut full = settings.clone();
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
