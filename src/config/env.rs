//! The environment layer: `LEASE_SYNC__SECTION__KEY=value` overrides, applied to the parsed
//! TOML document before it is deserialized, so that they are checked exactly like keys of
//! the file (unknown ones are refused by name).

use super::ConfigError;

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LEASE_SYNC__";

/// Applies every `LEASE_SYNC__…` variable of `env` to `doc`; others are ignored.
pub(super) fn apply_overrides(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // Sorted so that `SOURCES__0__…` is applied before `SOURCES__1__…` and appends work.
    overrides.sort();
    for (var, value) in overrides {
        apply_override(doc, &var, &value)?;
    }
    Ok(())
}

/// Applies `LEASE_SYNC__A__B__0__C=value` to the document. Segments are lower-cased; a
/// numeric segment indexes an array (the next index appends). The value is read as a TOML
/// value when it is one (`5000`, `true`, `["a", "b"]`) and as a string otherwise; quote it
/// (`'"12345"'`) to force a string.
fn apply_override(doc: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(env_err(
            "empty key segment (use a double underscore between levels only)".into(),
        ));
    }
    let value = parse_value(raw);
    let mut slot: &mut toml::Value = doc
        .entry(path[0].clone())
        .or_insert_with(|| empty_container_for(path.get(1)));
    for (depth, segment) in path.iter().enumerate().skip(1) {
        let next = path.get(depth + 1);
        slot = match slot {
            toml::Value::Table(table) => table
                .entry(segment.clone())
                .or_insert_with(|| empty_container_for(next)),
            toml::Value::Array(array) => {
                let index: usize = segment.parse().map_err(|_| {
                    env_err(format!("`{segment}` indexes a list and must be a number"))
                })?;
                let len = array.len();
                if index == len {
                    array.push(empty_container_for(next));
                }
                array.get_mut(index).ok_or_else(|| {
                    env_err(format!("index {index} skips entries (the list has {len})"))
                })?
            }
            _ => {
                return Err(env_err(format!(
                    "`{}` is not a section",
                    path[..depth].join(".")
                )));
            }
        };
    }
    *slot = value;
    Ok(())
}

fn empty_container_for(next_segment: Option<&String>) -> toml::Value {
    match next_segment {
        Some(s) if s.parse::<usize>().is_ok() => toml::Value::Array(Vec::new()),
        _ => toml::Value::Table(toml::Table::new()),
    }
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{MINIMAL, env};
    use super::super::{ConfigError, Settings};

    #[test]
    fn env_overrides_nested_and_indexed_keys() {
        let s = Settings::from_toml_str(
            MINIMAL,
            env(&[
                ("LEASE_SYNC__HTTP__BODY_LIMIT_BYTES", "1024"),
                ("LEASE_SYNC__OPENAPP__API_KEY", "from-env"),
                ("LEASE_SYNC__SOURCES__0__TOLERANCE_SECS", "60"),
                ("LEASE_SYNC__SOURCES__0__PROPERTIES__0__ORG_ID", "\"12345\""),
                ("OTHER__HTTP__LISTEN", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.body_limit_bytes.get(), 1024);
        assert_eq!(s.openapp.api_key.unwrap().expose(), "from-env");
        assert_eq!(s.sources[0].tolerance, Duration::from_secs(60));
        assert_eq!(s.sources[0].properties[0].org_id, "12345");
    }

    #[test]
    fn env_can_append_a_list_entry_and_set_its_secrets() {
        let s = Settings::from_toml_str(
            MINIMAL,
            env(&[
                ("LEASE_SYNC__SOURCES__1__NAME", "second"),
                (
                    "LEASE_SYNC__SOURCES__1__SECRETS",
                    "[\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]",
                ),
                ("LEASE_SYNC__HTTP__LISTEN", "127.0.0.1:0"),
            ]),
        )
        .unwrap();
        assert_eq!(s.sources.len(), 2);
        assert_eq!(s.sources[1].name, "second");
        assert_eq!(s.sources[1].secrets.len(), 1);
        assert_eq!(s.http.listen.port(), 0);
    }

    #[test]
    fn env_typo_is_rejected_by_name() {
        let msg = Settings::from_toml_str(MINIMAL, env(&[("LEASE_SYNC__HTTP__LISEN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("lisen"), "{msg}");
    }

    #[test]
    fn env_index_gap_is_rejected() {
        let err = Settings::from_toml_str(MINIMAL, env(&[("LEASE_SYNC__SOURCES__5__NAME", "x")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
    }
}
