//! Configurations shared by the configuration's unit tests.

use super::{Role, Settings};

/// The smallest configuration every role accepts.
pub(super) const MINIMAL: &str = r#"
        [admin]
        tokens = ["0123456789abcdef0123"]
        [openapp]
        api_key = "k"
        [[sources]]
        name = "acme"
        secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
        [[sources.properties]]
        id = "P-17"
        org_id = "org1"
        integration_id = "int1"
    "#;

/// [`MINIMAL`] with a GitHub-style `hmac-sha256` source.
pub(super) const HMAC_SOURCE: &str = r#"
        [admin]
        tokens = ["0123456789abcdef0123"]
        [openapp]
        api_key = "k"
        [[sources]]
        name = "github"
        scheme = "hmac-sha256"
        signature_header = "X-Hub-Signature-256"
        signature_prefix = "sha256="
        encoding = "hex"
        event_id = "header:x-github-delivery"
        secrets = ["It's a Secret to Everybody"]
        [[sources.properties]]
        id = "P-17"
        org_id = "org1"
        integration_id = "int1"
    "#;

/// Environment variables as [`Settings::from_toml_str`] takes them.
pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The message of the error `text` fails `serve` validation with; panics if it parses
/// badly or validates.
pub(super) fn error_of(text: &str) -> String {
    let s = Settings::from_toml_str(text, env(&[])).unwrap();
    s.validate(Role::Serve).unwrap_err().to_string()
}

/// Asserts that setting each of `keys` (`section.key`) to 0 through the environment is
/// refused while loading, naming the key.
pub(super) fn assert_zero_refused(keys: &[&str]) {
    for key in keys {
        let var = format!("LEASE_SYNC__{}", key.to_uppercase().replace('.', "__"));
        let msg = Settings::from_toml_str(MINIMAL, env(&[(&var, "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.ends_with(&format!("`{key}`: must be greater than 0")),
            "{msg}"
        );
    }
}
