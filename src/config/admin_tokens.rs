//! `[admin] tokens`: the bearer tokens of the admin API, as configured.
//!
//! An entry is a string — a plain token, or `sha256:<hex>`, the SHA-256 of the token as
//! `lease-sync admin hash-token` prints it — or a table that also names the token, narrows
//! its scope or ends its life:
//!
//! ```toml
//! tokens = [
//!     "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
//!     { name = "oncall", token = "sha256:…", scope = "read", not_after = "2027-01-31T00:00:00Z" },
//! ]
//! ```
//!
//! Hashed entries keep the configuration free of usable secrets: the admin API only ever
//! compares SHA-256 digests, so it never needs the token itself. Plain entries still work
//! and are warned about ([`AdminSettings::warnings`]).
//!
//! No token value ever appears in an error, a warning, `Debug` or serialized output: a
//! mistyped entry may well be a real token.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AdminSettings, ConfigError, MIN_ADMIN_TOKEN_LEN, Secret};

/// Prefix of a hashed token: `sha256:` and the 64 hex characters of the token's SHA-256.
pub const SHA256_PREFIX: &str = "sha256:";

/// How long before a webhook secret or admin token expires `check-config` and startup warn.
pub const EXPIRY_WARNING: time::Duration = time::Duration::days(7);

/// Longest token name.
const MAX_NAME_LEN: usize = 64;

/// A SHA-256 digest.
pub type TokenDigest = [u8; 32];

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Everything: read, replay and purge.
    #[default]
    Admin,
    /// Only `GET` (and `HEAD`) requests: listings, entries, queue counts, the audit log.
    Read,
}

/// Where an entry came from; decides how messages name it and how it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A string in `tokens`.
    String,
    /// A table in `tokens`.
    Table,
    /// This line (1-based) of `tokens_file`.
    FileLine(usize),
}

/// One accepted admin token: an entry of `[admin] tokens` or a line of `tokens_file`.
#[derive(Debug, Clone)]
pub struct AdminToken {
    /// Names the caller in audit records and logs; unnamed tokens are named
    /// `token:<first 12 hex characters of the token's SHA-256>`.
    pub name: Option<String>,
    /// The token, plain or `sha256:<hex>`.
    pub token: Secret,
    /// What the token may do.
    pub scope: TokenScope,
    /// After this instant the token is refused with 401 `token_expired`.
    pub not_after: Option<OffsetDateTime>,
    origin: Origin,
}

/// Why a configured token value cannot be used. Never carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    /// A plain token below [`MIN_ADMIN_TOKEN_LEN`].
    #[error(
        "must be at least {MIN_ADMIN_TOKEN_LEN} characters, or `sha256:` and the 64 hex characters `lease-sync admin hash-token` prints"
    )]
    TooFewCharacters,
    /// `sha256:` followed by the wrong number of characters.
    #[error("`sha256:` must be followed by exactly 64 hex characters, not {0}")]
    HashLength(usize),
    /// `sha256:` followed by something that is not hex.
    #[error("`sha256:` must be followed by hex characters only (0-9, a-f)")]
    HashNotHex,
}

impl AdminToken {
    /// A token with no name, the `admin` scope and no expiry, as a plain string entry is.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            name: None,
            token: Secret::new(token),
            scope: TokenScope::Admin,
            not_after: None,
            origin: Origin::String,
        }
    }

    /// Whether the entry is the `sha256:<hex>` form rather than the token itself.
    pub fn is_hashed(&self) -> bool {
        has_sha256_prefix(self.token.expose())
    }

    /// The SHA-256 of the token: decoded from a hashed entry, computed from a plain one.
    /// Fails for entries validation refuses.
    pub fn digest(&self) -> Result<TokenDigest, InvalidToken> {
        let value = self.token.expose();
        if !has_sha256_prefix(value) {
            if value.len() < MIN_ADMIN_TOKEN_LEN {
                return Err(InvalidToken::TooFewCharacters);
            }
            return Ok(Sha256::digest(value.as_bytes()).into());
        }
        let digits = &value[SHA256_PREFIX.len()..];
        if digits.len() != 64 {
            return Err(InvalidToken::HashLength(digits.chars().count()));
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(digits, &mut digest).map_err(|_| InvalidToken::HashNotHex)?;
        Ok(digest)
    }

    /// Whether the token is past its `not_after` at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.not_after.is_some_and(|not_after| now > not_after)
    }

    /// How messages name entry `index`: `admin.tokens[1]`, `admin.tokens[1] (oncall)` or
    /// `admin.tokens_file line 3`.
    fn label(&self, index: usize) -> String {
        let at = match self.origin {
            Origin::FileLine(line) => format!("admin.tokens_file line {line}"),
            Origin::String | Origin::Table => format!("admin.tokens[{index}]"),
        };
        match &self.name {
            Some(name) => format!("{at} ({name})"),
            None => at,
        }
    }

    /// A validation error about `field` of entry `index`, keyed like the loader's errors.
    fn invalid(&self, index: usize, field: &str, message: impl fmt::Display) -> ConfigError {
        match self.origin {
            Origin::FileLine(line) => {
                ConfigError::invalid("admin.tokens_file", format!("line {line}: {message}"))
            }
            Origin::Table => ConfigError::invalid(
                format!("admin.tokens[{index}].{field}"),
                message.to_string(),
            ),
            Origin::String => {
                ConfigError::invalid(format!("admin.tokens[{index}]"), message.to_string())
            }
        }
    }

    /// The token as shown in output: which form it is, never its value.
    fn redacted(&self) -> &'static str {
        if self.is_hashed() {
            "sha256:[redacted]"
        } else {
            "[redacted]"
        }
    }
}

/// `sha256:<64 lowercase hex>` of `token`: what `lease-sync admin hash-token` prints and
/// `[admin] tokens` accepts in place of the token.
pub fn hash_token(token: &str) -> String {
    format!(
        "{SHA256_PREFIX}{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

/// The prefix is matched in any case: a `SHA256:…` entry taken as a plain token would make
/// the hash itself the password.
fn has_sha256_prefix(value: &str) -> bool {
    value
        .get(..SHA256_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(SHA256_PREFIX))
}

/// Whether `name` matches `[A-Za-z0-9_.-]{1,64}`. No `:`, so a name never looks like the
/// `token:…` or `cli:…` identities of audit records.
fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The tokens of a `tokens_file`: one per line, blank lines and `#` comments skipped.
pub(super) fn token_lines(text: &str) -> impl Iterator<Item = AdminToken> + '_ {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(line, token)| AdminToken {
            origin: Origin::FileLine(line),
            ..AdminToken::new(token)
        })
}

impl AdminSettings {
    /// Checks the tokens of an enabled admin API: at least one; each a plain token of at
    /// least [`MIN_ADMIN_TOKEN_LEN`] characters or a well-formed `sha256:` hash; names valid
    /// and unique; no token configured twice (its identity and scope would be ambiguous).
    pub(super) fn validate_tokens(&self) -> Result<(), ConfigError> {
        if self.tokens.is_empty() {
            return Err(ConfigError::invalid(
                "admin.tokens",
                "the admin API needs at least one token (tokens, tokens_file or LEASE_SYNC__ADMIN__TOKENS), or set admin.enabled = false",
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut digests: HashMap<TokenDigest, usize> = HashMap::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let digest = token.digest().map_err(|e| token.invalid(i, "token", e))?;
            if let Some(name) = &token.name {
                if !is_valid_name(name) {
                    return Err(token.invalid(i, "name", "must match [A-Za-z0-9_.-]{1,64}"));
                }
                if let Some(&other) = names.get(name.as_str()) {
                    return Err(token.invalid(
                        i,
                        "name",
                        format!("`{name}` already names admin.tokens[{other}]"),
                    ));
                }
                names.insert(name.as_str(), i);
            }
            if let Some(&other) = digests.get(&digest) {
                return Err(token.invalid(
                    i,
                    "token",
                    format!(
                        "is the same token as {}, hashed or not; list each token once",
                        self.tokens[other].label(other)
                    ),
                ));
            }
            digests.insert(digest, i);
        }
        Ok(())
    }

    /// Fails closed when the admin API is enabled and every token has expired at `now`: such
    /// a process could never be administered. Separate from [`Settings::validate`] because
    /// that takes no clock.
    ///
    /// [`Settings::validate`]: super::Settings::validate
    pub fn validate_expiry(&self, now: OffsetDateTime) -> Result<(), ConfigError> {
        if self.enabled
            && !self.tokens.is_empty()
            && self.tokens.iter().all(|t| t.is_expired_at(now))
        {
            return Err(ConfigError::invalid(
                "admin.tokens",
                "every token has expired (not_after is past); add a current one, e.g. from `lease-sync admin hash-token --generate`",
            ));
        }
        Ok(())
    }

    /// Human-readable warnings about the tokens of an enabled admin API at `now`: one per
    /// token stored in plain text, one per token expiring within [`EXPIRY_WARNING`], one per
    /// token already expired. They name tokens by position and name, never by value.
    pub fn warnings(&self, now: OffsetDateTime) -> Vec<String> {
        if !self.enabled {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let label = token.label(i);
            if !token.is_hashed() {
                warnings.push(format!(
                    "{label} is stored in plain text; store the `sha256:…` printed by `lease-sync admin hash-token` instead"
                ));
            }
            let Some(not_after) = token.not_after else {
                continue;
            };
            let at = not_after
                .format(&Rfc3339)
                .unwrap_or_else(|_| not_after.to_string());
            if token.is_expired_at(now) {
                warnings.push(format!(
                    "{label} expired at {at} and is refused (401 token_expired); remove it"
                ));
            } else if not_after - now <= EXPIRY_WARNING {
                // Whole minutes: seconds would only be noise in a warning.
                let left = Duration::try_from(not_after - now).unwrap_or_default();
                let left = Duration::from_secs(left.as_secs() / 60 * 60);
                warnings.push(format!(
                    "{label} expires at {at} (in {}); issue its replacement before then",
                    humantime::format_duration(left)
                ));
            }
        }
        warnings
    }
}

/// Deserializes `[admin] tokens`. Written out rather than derived so that no error message
/// quotes a value: serde's own "invalid type: string \"…\"" would print a token written as
/// `tokens = "…"`.
pub(super) fn deserialize_tokens<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<AdminToken>, D::Error> {
    struct TokensVisitor;

    impl<'de> Visitor<'de> for TokensVisitor {
        type Value = Vec<AdminToken>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of tokens: tokens = [\"sha256:…\"]")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut tokens = Vec::new();
            while let Some(token) = seq.next_element::<AdminToken>()? {
                tokens.push(token);
            }
            Ok(tokens)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom(
                "must be a list, even of one token: tokens = [\"sha256:…\"] (the value is not shown: it may be a token)",
            ))
        }

        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(
                "must be a list: tokens = [{ name = \"…\", token = \"sha256:…\" }]",
            ))
        }
    }

    deserializer.deserialize_any(TokensVisitor)
}

/// What an entry must be.
const TOKEN_ENTRY: &str =
    "a token string (plain or `sha256:…`) or a table { name, token, scope, not_after }";

/// Message for an entry of the wrong type; the value is not quoted.
const NOT_A_TOKEN: &str = "expected a token string (plain or `sha256:…`) or a table { name, token, scope, not_after } (the value is not shown: it may be a token)";

impl<'de> Deserialize<'de> for AdminToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = AdminToken;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(TOKEN_ENTRY)
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(AdminToken::new(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let table = TokenTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(AdminToken {
                    name: table.name,
                    token: table.token.0,
                    scope: table.scope,
                    not_after: table.not_after.map(|n| n.0),
                    origin: Origin::Table,
                })
            }

            // The defaults of these would quote the value.
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Err(E::custom(NOT_A_TOKEN))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Err(E::custom(NOT_A_TOKEN))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Err(E::custom(NOT_A_TOKEN))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Err(E::custom(NOT_A_TOKEN))
            }
        }

        deserializer.deserialize_any(EntryVisitor)
    }
}

/// The table form of an entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenTable {
    #[serde(default)]
    name: Option<String>,
    token: TokenText,
    #[serde(default)]
    scope: TokenScope,
    #[serde(default)]
    not_after: Option<NotAfter>,
}

/// The `token` of a table: a string, refused without quoting anything else.
struct TokenText(Secret);

impl<'de> Deserialize<'de> for TokenText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        const NOT_TEXT: &str =
            "expected the token as a string, plain or `sha256:…` (the value is not shown)";

        impl Visitor<'_> for TextVisitor {
            type Value = TokenText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the token as a string, plain or `sha256:…`")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(TokenText(Secret::new(value)))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Err(E::custom(NOT_TEXT))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Err(E::custom(NOT_TEXT))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Err(E::custom(NOT_TEXT))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Err(E::custom(NOT_TEXT))
            }
        }

        deserializer.deserialize_any(TextVisitor)
    }
}

/// `not_after`: an RFC 3339 date-time with an offset, quoted or as a TOML date-time (which is
/// what an environment override such as `…__NOT_AFTER=2027-01-31T00:00:00Z` becomes).
struct NotAfter(OffsetDateTime);

impl<'de> Deserialize<'de> for NotAfter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match toml::Value::deserialize(deserializer)? {
            toml::Value::String(text) => text,
            toml::Value::Datetime(datetime) => datetime.to_string(),
            _ => {
                return Err(de::Error::custom(
                    "expected an RFC 3339 date-time such as \"2027-01-31T00:00:00Z\"",
                ));
            }
        };
        OffsetDateTime::parse(&text, &Rfc3339).map(NotAfter).map_err(|e| {
            de::Error::custom(format!(
                "`{text}` is not an RFC 3339 date-time with an offset, such as \"2027-01-31T00:00:00Z\" ({e})"
            ))
        })
    }
}

impl Serialize for AdminToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.origin != Origin::Table {
            return serializer.serialize_str(self.redacted());
        }
        let mut map = serializer.serialize_map(None)?;
        if let Some(name) = &self.name {
            map.serialize_entry("name", name)?;
        }
        map.serialize_entry("token", self.redacted())?;
        map.serialize_entry("scope", &self.scope)?;
        if let Some(not_after) = self.not_after {
            let at = not_after
                .format(&Rfc3339)
                .map_err(serde::ser::Error::custom)?;
            map.serialize_entry("not_after", &at)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::super::{Role, Settings};
    use super::*;

    /// A token no message may contain.
    const PLAIN: &str = "plain-token-0123456789-SECRET";
    const NOW: OffsetDateTime = datetime!(2027-01-20 12:00 UTC);

    /// The minimal config of the parent module's tests with `admin` as its `[admin]` body.
    fn config(admin: &str) -> String {
        format!(
            r#"
            [admin]
            {admin}
            [openapp]
            api_key = "k"
            [[sources]]
            name = "acme"
            secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
            [[sources.properties]]
            id = "P-17"
            org_id = "org1"
            integration_id = "int1"
            "#
        )
    }

    fn parse(admin: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml_str(&config(admin), Vec::new())
    }

    fn valid(admin: &str) -> AdminSettings {
        let settings = parse(admin).unwrap_or_else(|e| panic!("{admin}: {e}"));
        settings
            .validate(Role::Serve)
            .unwrap_or_else(|e| panic!("{admin}: {e}"));
        settings.admin
    }

    /// The error loading or validating `admin`; asserts it names `key` and quotes no token.
    fn refused(admin: &str, key: &str) -> String {
        let message = match parse(admin) {
            Err(e) => e.to_string(),
            Ok(settings) => match settings.validate(Role::Serve) {
                Err(e) => e.to_string(),
                Ok(()) => panic!("accepted: {admin}"),
            },
        };
        assert!(message.contains(key), "`{key}` not in: {message}");
        for secret in [PLAIN, "SECRET", "9f86d081884c7d65"] {
            assert!(!message.contains(secret), "{secret} leaked: {message}");
        }
        message
    }

    fn hashed(token: &str) -> String {
        hash_token(token)
    }

    #[test]
    fn hash_token_is_the_lowercase_sha256_of_the_utf8_bytes() {
        // SHA-256("test"), a published vector.
        assert_eq!(
            hash_token("test"),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(hash_token("ü").len(), "sha256:".len() + 64);
    }

    #[test]
    fn strings_and_tables_parse() {
        let admin = valid(&format!(
            r#"tokens = [
                "{PLAIN}",
                "{}",
                {{ name = "oncall", token = "{}", scope = "read", not_after = "2027-01-31T00:00:00Z" }},
                {{ name = "ci.bot_2-x", token = "another-plain-token-42" }},
                {{ token = "yet-another-plain-token", not_after = 2027-02-01T10:00:00+01:00 }},
            ]"#,
            hashed("hashed-token-0123456789"),
            hashed("oncall-token-0123456789")
                .to_uppercase()
                .replace("SHA256:", "sha256:"),
        ));
        let t = &admin.tokens;
        assert_eq!(t.len(), 5);
        assert_eq!(
            (
                t[0].name.as_deref(),
                t[0].scope,
                t[0].not_after,
                t[0].is_hashed()
            ),
            (None, TokenScope::Admin, None, false)
        );
        assert!(t[1].is_hashed());
        assert_eq!(t[2].name.as_deref(), Some("oncall"));
        assert_eq!(t[2].scope, TokenScope::Read);
        assert_eq!(t[2].not_after, Some(datetime!(2027-01-31 00:00 UTC)));
        assert_eq!(t[3].scope, TokenScope::Admin, "the default scope");
        assert_eq!(t[4].not_after, Some(datetime!(2027-02-01 09:00 UTC)));
        assert!(!format!("{admin:?}").contains(PLAIN), "Debug hides tokens");
    }

    #[test]
    fn a_hashed_entry_has_the_digest_of_its_token_in_any_case() {
        let token = "hashed-token-0123456789";
        let plain = AdminToken::new(token).digest();
        assert!(plain.is_ok());
        assert_eq!(AdminToken::new(hashed(token)).digest(), plain);
        assert_eq!(
            AdminToken::new(hashed(token).to_uppercase()).digest(),
            plain
        );
        assert_ne!(
            AdminToken::new(hashed("other-token-0123456789")).digest(),
            plain
        );
    }

    #[test]
    fn bad_values_are_refused_by_key_without_quoting_them() {
        let hash = hashed(PLAIN);
        for (admin, key) in [
            (r#"tokens = ["SECRET-short"]"#.to_owned(), "admin.tokens[0]"),
            (
                format!(r#"tokens = ["{PLAIN}", "{}"]"#, &hash[..hash.len() - 1]),
                "admin.tokens[1]",
            ),
            (format!(r#"tokens = ["{hash}0"]"#), "admin.tokens[0]"),
            (
                format!(r#"tokens = ["sha256:g{}"]"#, &hash[8..]),
                "admin.tokens[0]",
            ),
            (r#"tokens = ["sha256:"]"#.to_owned(), "admin.tokens[0]"),
            (
                format!(r#"tokens = ["{PLAIN}", {{ token = "SECRET-short" }}]"#),
                "admin.tokens[1].token",
            ),
            (
                format!(r#"tokens = [{{ name = "on call", token = "{PLAIN}" }}]"#),
                "admin.tokens[0].name",
            ),
            (
                format!(r#"tokens = [{{ name = "", token = "{PLAIN}" }}]"#),
                "admin.tokens[0].name",
            ),
            (
                format!(
                    r#"tokens = [{{ name = "{}", token = "{PLAIN}" }}]"#,
                    "n".repeat(65)
                ),
                "admin.tokens[0].name",
            ),
            (
                format!(
                    r#"tokens = [{{ name = "a", token = "{PLAIN}" }}, {{ name = "a", token = "{hash}x" }}]"#
                ),
                "admin.tokens[1]",
            ),
            (
                format!(
                    r#"tokens = [{{ name = "a", token = "{PLAIN}" }}, {{ name = "a", token = "another-plain-token-42" }}]"#
                ),
                "admin.tokens[1].name",
            ),
            (
                format!(r#"tokens = ["{PLAIN}", {{ name = "b", token = "{hash}" }}]"#),
                "admin.tokens[1].token",
            ),
            (
                format!(r#"tokens = [{{ token = "{PLAIN}", tokn = "x" }}]"#),
                "admin.tokens[0]",
            ),
            (
                format!(r#"tokens = [{{ token = "{PLAIN}", scope = "write" }}]"#),
                "admin.tokens[0].scope",
            ),
            (
                format!(r#"tokens = [{{ token = "{PLAIN}", not_after = "tomorrow" }}]"#),
                "admin.tokens[0].not_after",
            ),
            (
                format!(r#"tokens = [{{ token = "{PLAIN}", not_after = 2027-01-31T00:00:00 }}]"#),
                "admin.tokens[0].not_after",
            ),
            (r#"tokens = [{ name = "a" }]"#.to_owned(), "admin.tokens[0]"),
            (format!(r#"tokens = "{PLAIN}""#), "admin.tokens"),
            (
                r"tokens = [{ token = 12345 }]".to_owned(),
                "admin.tokens[0].token",
            ),
            (
                "tokens = [1234567890123456789]".to_owned(),
                "admin.tokens[0]",
            ),
            ("tokens = []".to_owned(), "admin.tokens"),
        ] {
            let message = refused(&admin, key);
            assert!(!message.contains("1234567890"), "{message}");
        }
        let message = refused(
            &format!(r#"tokens = [{{ token = "{PLAIN}", tokn = "x" }}]"#),
            "tokn",
        );
        assert!(
            message.contains("not_after"),
            "lists the known keys: {message}"
        );
    }

    #[test]
    fn tokens_file_lines_are_named_by_line() {
        let mut admin = valid(&format!(r#"tokens = ["{PLAIN}"]"#));
        admin.tokens.extend(token_lines(&format!(
            "# ops\n\n  {}  \nSECRET-short\n",
            hashed("file-token-0123456789")
        )));
        assert_eq!(admin.tokens.len(), 3);
        assert!(admin.tokens[1].is_hashed(), "lines are trimmed");
        let message = admin.validate_tokens().unwrap_err().to_string();
        assert!(
            message.contains("admin.tokens_file") && message.contains("line 4"),
            "{message}"
        );
        assert!(!message.contains("SECRET"), "{message}");
        let warnings = admin.warnings(NOW);
        assert!(
            warnings[1].starts_with("admin.tokens_file line 4 is stored in plain text"),
            "{warnings:?}"
        );
    }

    #[test]
    fn warnings_name_plain_expiring_and_expired_tokens_but_never_their_value() {
        let admin = valid(&format!(
            r#"tokens = [
                "{}",
                {{ name = "oncall", token = "{PLAIN}" }},
                {{ name = "soon", token = "{}", not_after = "2027-01-23T12:30:00Z" }},
                {{ name = "old", token = "{}", not_after = "2027-01-20T11:59:59Z" }},
                {{ name = "later", token = "{}", not_after = "2027-01-27T12:00:01Z" }},
                {{ name = "edge", token = "{}", not_after = "2027-01-27T12:00:00Z" }},
            ]"#,
            hashed("hashed-token-0123456789"),
            hashed("soon-token-0123456789"),
            hashed("old-token-0123456789"),
            hashed("later-token-0123456789"),
            hashed("edge-token-0123456789"),
        ));
        let warnings = admin.warnings(NOW);
        assert_eq!(
            warnings,
            [
                "admin.tokens[1] (oncall) is stored in plain text; store the `sha256:…` printed by `lease-sync admin hash-token` instead",
                "admin.tokens[2] (soon) expires at 2027-01-23T12:30:00Z (in 3days 30m); issue its replacement before then",
                "admin.tokens[3] (old) expired at 2027-01-20T11:59:59Z and is refused (401 token_expired); remove it",
                "admin.tokens[5] (edge) expires at 2027-01-27T12:00:00Z (in 7days); issue its replacement before then",
            ]
        );
        for warning in &warnings {
            assert!(!warning.contains(PLAIN) && !warning.contains("SECRET"));
        }
        let mut disabled = admin;
        disabled.enabled = false;
        assert!(
            disabled.warnings(NOW).is_empty(),
            "unused tokens are not warned about"
        );
    }

    #[test]
    fn expiry_is_inclusive_and_fails_closed_only_when_every_token_expired() {
        let admin = valid(&format!(
            r#"tokens = [
                {{ name = "a", token = "{PLAIN}", not_after = "2027-01-20T12:00:00Z" }},
                {{ name = "b", token = "{}", not_after = "2027-01-10T00:00:00Z" }},
            ]"#,
            hashed("b-token-0123456789")
        ));
        assert!(
            !admin.tokens[0].is_expired_at(NOW),
            "valid through not_after"
        );
        assert!(admin.tokens[0].is_expired_at(NOW + time::Duration::SECOND));
        assert!(admin.validate_expiry(NOW).is_ok(), "one token still works");
        let message = admin
            .validate_expiry(NOW + time::Duration::SECOND)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("admin.tokens") && message.contains("every token has expired"),
            "{message}"
        );
        let mut disabled = admin;
        disabled.enabled = false;
        assert!(disabled.validate_expiry(NOW + time::Duration::DAY).is_ok());
        // A token without not_after never expires.
        let forever = valid(&format!(r#"tokens = ["{PLAIN}"]"#));
        assert!(
            forever
                .validate_expiry(datetime!(9999-01-01 0:00 UTC))
                .is_ok()
        );
    }

    #[test]
    fn output_shows_the_form_of_each_token_but_no_value() {
        let settings = parse(&format!(
            r#"tokens = ["{PLAIN}", "{}", {{ name = "oncall", token = "{PLAIN}x", scope = "read", not_after = "2027-01-31T00:00:00Z" }}]"#,
            hashed(PLAIN)
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let out = settings.to_redacted_toml();
        assert!(!out.contains(PLAIN) && !out.contains("9f86"), "{out}");
        let value: toml::Value = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let tokens = &value["admin"]["tokens"];
        assert_eq!(tokens[0].as_str(), Some("[redacted]"));
        assert_eq!(tokens[1].as_str(), Some("sha256:[redacted]"));
        assert_eq!(tokens[2]["name"].as_str(), Some("oncall"));
        assert_eq!(tokens[2]["token"].as_str(), Some("[redacted]"));
        assert_eq!(tokens[2]["scope"].as_str(), Some("read"));
        assert_eq!(
            tokens[2]["not_after"].as_str(),
            Some("2027-01-31T00:00:00Z")
        );
    }

    #[test]
    fn the_example_config_documents_every_key_of_a_token_table() {
        let text = include_str!("../../deploy/config.example.toml");
        let mut token = AdminToken::new(hashed(PLAIN));
        token.origin = Origin::Table;
        token.name = Some("oncall".into());
        token.not_after = Some(NOW);
        let value = toml::Value::try_from(&token).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<&String> = value
            .as_table()
            .map(|t| t.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys.len(), 4, "{keys:?}");
        for key in keys {
            assert!(
                text.contains(&format!("\n# {key} = ")),
                "token key `{key}` is not documented in deploy/config.example.toml"
            );
        }
    }

    #[test]
    fn environment_overrides_take_both_forms() {
        let settings = Settings::from_toml_str(
            &config(""),
            vec![(
                "LEASE_SYNC__ADMIN__TOKENS".to_owned(),
                format!(
                    r#"["{PLAIN}", {{ name = "ops", token = "{}" }}]"#,
                    hashed("x")
                ),
            )],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        settings
            .validate(Role::Serve)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.admin.tokens[1].name.as_deref(), Some("ops"));
    }
}
