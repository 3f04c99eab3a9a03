//! Test configurations, typed. [`ConfigBuilder`] starts from lease-sync's own [`Settings`]
//! (every section at its default, no source) and sets what a suite needs in Rust; a suite's
//! preset is a few builder calls, and a test changes it with ordinary assignments
//! (`settings.http.read_timeout = Duration::from_millis(300)`). A key that does not exist
//! does not compile, where an edit of TOML text silently matched nothing.
//!
//! In-process tests hand the [`Settings`] to `Application::build` as they are. Only child
//! processes need a file: [`toml_with_secrets`] writes one, [`write_with_secrets`] stores it.
//!
//! Secrets: lease-sync's `Serialize` of [`Settings`] redacts every secret — it is what
//! `check-config` prints — and stays that way. A test's file needs them in clear, so
//! [`toml_with_secrets`] writes them itself from the typed values, and refuses to return a
//! file that still says `[redacted]` anywhere or that does not load back as the same
//! settings (a duration finer than its key's unit, say).

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lease_sync::config::{
    AdminToken, PropertySettings, RedisUrl, Secret, Settings, SourceSecret, SourceSettings,
    TokenScope,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use toml::{Table, Value};
use url::Url;

/// What lease-sync's serialization writes in place of a secret.
const REDACTED: &str = "[redacted]";

/// Builds the [`Settings`] of a test. Each method sets what its documentation lists and
/// nothing else; [`ConfigBuilder::edit`] reaches every other field.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ConfigBuilder {
    settings: Settings,
}

impl ConfigBuilder {
    /// Every section at lease-sync's defaults ([`Settings::default`]), no source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Timings for tests that kill, stop and restart processes within seconds: a worker's
    /// jobs are taken over after 2 s of silence (`worker.heartbeat_secs = 1`,
    /// `missed_heartbeats = 2`), so one OpenApp call may take 1 s (`openapp.timeout_ms = 1000`,
    /// `connect_timeout_ms = 500`); idle workers poll every 50 ms; shutdowns wait 5 s
    /// (`http.shutdown_grace_secs`, `worker.shutdown_timeout_secs`); retries start 100 ms
    /// apart (`retry.base_ms`); Redis connects within 500 ms and answers within 2 s. Also 4
    /// jobs at once per worker in batches of 20, and webhook bodies up to 4,096 bytes.
    pub fn quick(self) -> Self {
        self.edit(|s| {
            s.http.body_limit_bytes = count(4_096);
            s.http.shutdown_grace = Duration::from_secs(5);
            s.redis.connect_timeout = Duration::from_millis(500);
            s.redis.response_timeout = Duration::from_millis(2_000);
            s.openapp.timeout = Duration::from_millis(1_000);
            s.openapp.connect_timeout = Duration::from_millis(500);
            s.worker.concurrency = count(4);
            s.worker.poll_interval = Duration::from_millis(50);
            s.worker.heartbeat = Duration::from_secs(1);
            s.worker.missed_heartbeats = count(2);
            s.worker.batch_size = count(20);
            s.worker.shutdown_timeout = Duration::from_secs(5);
            s.retry.base = Duration::from_millis(100);
        })
    }

    /// The webhook listener on `127.0.0.1:port` (`http.listen`); port 0 takes a free one.
    pub fn listen(self, port: u16) -> Self {
        self.edit(|s| s.http.listen = loopback(port))
    }

    /// Redis at `url` (`redis.url`), every key under `namespace` (`redis.namespace`).
    ///
    /// # Panics
    /// When `url` is not a URL.
    pub fn redis(self, url: &str, namespace: &str) -> Self {
        let url = RedisUrl::parse(url).unwrap_or_else(|e| panic!("redis.url: {e}"));
        self.edit(|s| {
            s.redis.url = url;
            s.redis.namespace = namespace.to_owned();
        })
    }

    /// A sandbox OpenApp at `base_url` (`openapp.base_url`) taking `api_key`
    /// (`openapp.api_key`), over plain HTTP (`openapp.allow_insecure_http = true`).
    ///
    /// # Panics
    /// When `base_url` is not a URL.
    pub fn sandbox_openapp(self, base_url: &str, api_key: &str) -> Self {
        let base_url =
            Url::parse(base_url).unwrap_or_else(|e| panic!("openapp.base_url `{base_url}`: {e}"));
        self.edit(|s| {
            s.openapp.base_url = base_url;
            s.openapp.api_key = Some(Secret::new(api_key));
            s.openapp.allow_insecure_http = true;
        })
    }

    /// The admin API on (`admin.enabled`), on `127.0.0.1:port` (`admin.listen`; port 0
    /// takes a free one), accepting `tokens` (`admin.tokens`: plain or `sha256:…`, unnamed,
    /// scope `admin`, no expiry).
    pub fn admin<T: Into<String>>(self, port: u16, tokens: impl IntoIterator<Item = T>) -> Self {
        let tokens: Vec<AdminToken> = tokens.into_iter().map(AdminToken::new).collect();
        self.edit(|s| {
            s.admin.enabled = true;
            s.admin.listen = loopback(port);
            s.admin.tokens = tokens;
        })
    }

    /// No admin API (`admin.enabled = false`).
    pub fn admin_disabled(self) -> Self {
        self.edit(|s| s.admin.enabled = false)
    }

    /// Adds `source` after the sources already there (`[[sources]]`).
    pub fn source(self, source: SourceSettings) -> Self {
        self.edit(|s| s.sources.push(source))
    }

    /// Any other change, on the settings as built so far.
    pub fn edit(mut self, edit: impl FnOnce(&mut Settings)) -> Self {
        edit(&mut self.settings);
        self
    }

    /// The settings built.
    pub fn build(self) -> Settings {
        self.settings
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `n` as the count type of keys that refuse 0 (`worker.concurrency`, `retry.max_attempts`…).
///
/// # Panics
/// When `n` is 0.
pub fn count(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or_else(|| panic!("a count of 0 is refused by lease-sync"))
}

/// A Standard Webhooks source named `name`, verified by any of `secrets` (each without an
/// end of validity), for `properties`; every other key of the source at its default.
pub fn standard_webhooks_source(
    name: &str,
    secrets: &[&str],
    properties: impl IntoIterator<Item = PropertySettings>,
) -> SourceSettings {
    let mut source = SourceSettings::named(name);
    source.secrets = secrets.iter().map(|s| SourceSecret::plain(*s)).collect();
    source.properties = properties.into_iter().collect();
    source
}

/// `settings` as a lease-sync configuration file, **secrets in clear** (webhook secrets,
/// admin tokens, the OpenApp key, a Redis password, reconciliation URL credentials): for the
/// files of test processes only, never for output.
///
/// # Errors
/// When the text written still redacts something, or does not load back (through
/// `Settings::from_toml_str`, without validation) as the same settings: a field lease-sync's
/// serialization leaves out or rounds (durations are written in their keys' units, so
/// `Duration::from_millis(1_500)` cannot be a `heartbeat_secs`).
pub fn toml_with_secrets(settings: &Settings) -> anyhow::Result<String> {
    let text = render(settings)?;
    if let Some(line) = text.lines().find(|l| l.contains(REDACTED)) {
        bail!(
            "a secret of these settings is not written in clear (`{line}`): toml_with_secrets must write it too"
        );
    }
    let again = Settings::from_toml_str(&text, Vec::new())
        .with_context(|| format!("the TOML written for these settings does not load:\n{text}"))?;
    same("TOML", &text, &render(&again)?)?;
    same("settings", &comparable(settings), &comparable(&again))?;
    Ok(text)
}

/// Writes [`toml_with_secrets`]`(settings)` to `path`.
///
/// # Errors
/// As [`toml_with_secrets`], or when the file cannot be written.
pub fn write_with_secrets(settings: &Settings, path: &Path) -> anyhow::Result<()> {
    let text = toml_with_secrets(settings)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// lease-sync's serialization, with every secret it redacts put back in clear.
fn render(settings: &Settings) -> anyhow::Result<String> {
    let mut doc = match Value::try_from(settings).context("cannot serialize the settings")? {
        Value::Table(doc) => doc,
        other => bail!(
            "the settings serialize as {}, not a table",
            other.type_str()
        ),
    };
    section(&mut doc, "redis")?.insert("url".into(), text(settings.redis.url.expose()));
    if let Some(key) = &settings.openapp.api_key {
        section(&mut doc, "openapp")?.insert("api_key".into(), text(key.expose()));
    }
    if let Some(from) = &settings.reconcile.from {
        section(&mut doc, "reconcile")?.insert("from".into(), text(from));
    }
    let tokens = settings.admin.tokens.iter().map(token).collect();
    section(&mut doc, "admin")?.insert("tokens".into(), Value::Array(tokens));
    if !settings.sources.is_empty() {
        let written = doc
            .get_mut("sources")
            .and_then(Value::as_array_mut)
            .context("the settings serialize without their sources")?;
        for (source, table) in settings.sources.iter().zip(written) {
            let table = table
                .as_table_mut()
                .context("a source serializes as something else than a table")?;
            let secrets = source.secrets.iter().map(secret).collect();
            table.insert("secrets".into(), Value::Array(secrets));
            if let Some(client_secret) = source
                .buildium
                .as_ref()
                .and_then(|b| b.client_secret.as_ref())
            {
                table
                    .get_mut("buildium")
                    .and_then(Value::as_table_mut)
                    .context("a Buildium source serializes without [sources.buildium]")?
                    .insert("client_secret".into(), text(client_secret.expose()));
            }
        }
    }
    toml::to_string_pretty(&doc).context("cannot write the settings as TOML")
}

/// The table `name` of `doc`.
fn section<'a>(doc: &'a mut Table, name: &str) -> anyhow::Result<&'a mut Table> {
    doc.get_mut(name)
        .and_then(Value::as_table_mut)
        .with_context(|| format!("the settings serialize without a [{name}] table"))
}

fn text(value: &str) -> Value {
    Value::String(value.to_owned())
}

fn rfc3339(at: OffsetDateTime) -> Value {
    text(
        &at.format(&Rfc3339)
            .unwrap_or_else(|e| panic!("{at} as RFC 3339: {e}")),
    )
}

/// An `[admin] tokens` entry: the plain string when that says everything, else the table.
fn token(token: &AdminToken) -> Value {
    let value = text(token.token.expose());
    if token.name.is_none() && token.scope == TokenScope::Admin && token.not_after.is_none() {
        return value;
    }
    let mut table = Table::new();
    if let Some(name) = &token.name {
        table.insert("name".into(), text(name));
    }
    table.insert("token".into(), value);
    let scope = match token.scope {
        TokenScope::Admin => "admin",
        TokenScope::Read => "read",
    };
    table.insert("scope".into(), text(scope));
    if let Some(at) = token.not_after {
        table.insert("not_after".into(), rfc3339(at));
    }
    Value::Table(table)
}

/// A `secrets` entry of a source: the plain string, or the table with its `not_after`.
fn secret(secret: &SourceSecret) -> Value {
    let value = text(secret.secret.expose());
    match secret.not_after {
        None => value,
        Some(at) => Value::Table(Table::from_iter([
            ("secret".to_owned(), value),
            ("not_after".to_owned(), rfc3339(at)),
        ])),
    }
}

/// Everything `settings` holds, as far as `Debug` shows it, but the admin tokens: `Debug`
/// tells a token read from a table from one built in Rust, and the TOML comparison covers
/// them (secrets are `[redacted]` here, and covered there too).
fn comparable(settings: &Settings) -> String {
    let mut settings = settings.clone();
    settings.admin.tokens.clear();
    format!("{settings:#?}")
}

/// Fails, naming the first line that differs, unless `written` and `read_back` are equal.
fn same(what: &str, written: &str, read_back: &str) -> anyhow::Result<()> {
    if written == read_back {
        return Ok(());
    }
    let (line, (a, b)) = written
        .lines()
        .chain(std::iter::repeat(""))
        .zip(read_back.lines().chain(std::iter::repeat("")))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .unwrap_or((0, ("", "")));
    bail!(
        "the {what} written and read back differ at line {}: `{}` became `{}`",
        line + 1,
        a.trim(),
        b.trim()
    )
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const PLAIN_TOKEN: &str = "plain-admin-token-0123456789";
    const NAMED_TOKEN: &str = "named-admin-token-0123456789";
    const API_KEY: &str = "openapp-key-0123456789";

    /// Settings with every kind of secret lease-sync redacts.
    fn with_every_secret() -> Settings {
        let mut source = standard_webhooks_source(
            "acme",
            &[WEBHOOK_SECRET],
            [PropertySettings::new("P-1", "org1", "int1")],
        );
        source.secrets.push(SourceSecret {
            not_after: Some(datetime!(2030-01-01 0:00 UTC)),
            ..SourceSecret::plain(OLD_SECRET)
        });
        let mut named = AdminToken::new(NAMED_TOKEN);
        named.name = Some("oncall".into());
        named.scope = TokenScope::Read;
        named.not_after = Some(datetime!(2031-02-03 4:05 UTC));
        ConfigBuilder::new()
            .quick()
            .listen(0)
            .redis("redis://:hunter2@127.0.0.1:6390/0", "ns")
            .sandbox_openapp("http://127.0.0.1:9/api/v1", API_KEY)
            .admin(0, [PLAIN_TOKEN])
            .source(source)
            .edit(|s| {
                s.admin.tokens.push(named);
                s.reconcile.every = Some("1h".into());
                s.reconcile.source = Some("acme".into());
                s.reconcile.from = Some("https://bob:s3cr3t@files.example/l.csv?sig=q".into());
            })
            .build()
    }

    #[test]
    fn secrets_are_written_in_clear_and_read_back_the_same() {
        let settings = with_every_secret();
        let text = toml_with_secrets(&settings).unwrap_or_else(|e| panic!("{e:#}"));
        let again = Settings::from_toml_str(&text, Vec::new()).expect("loads");
        again
            .validate(lease_sync::config::Role::Serve)
            .expect("valid");
        assert_eq!(
            again.redis.url.expose(),
            "redis://:hunter2@127.0.0.1:6390/0"
        );
        assert_eq!(again.openapp.api_key.expect("key").expose(), API_KEY);
        let secrets: Vec<_> = again.sources[0]
            .secrets
            .iter()
            .map(|s| (s.secret.expose().to_owned(), s.not_after))
            .collect();
        assert_eq!(
            secrets,
            [
                (WEBHOOK_SECRET.to_owned(), None),
                (OLD_SECRET.to_owned(), Some(datetime!(2030-01-01 0:00 UTC)))
            ]
        );
        let named = &again.admin.tokens[1];
        assert_eq!(
            (
                named.token.expose(),
                named.name.as_deref(),
                named.scope,
                named.not_after
            ),
            (
                NAMED_TOKEN,
                Some("oncall"),
                TokenScope::Read,
                Some(datetime!(2031-02-03 4:05 UTC))
            )
        );
        assert_eq!(again.admin.tokens[0].token.expose(), PLAIN_TOKEN);
        assert!(text.contains("s3cr3t"), "{text}");
        assert_eq!(again.worker.heartbeat, Duration::from_secs(1));
    }

    #[test]
    fn lease_syncs_own_output_still_redacts_every_secret() {
        let out = with_every_secret().to_redacted_toml();
        for secret in [
            "hunter2",
            API_KEY,
            WEBHOOK_SECRET,
            OLD_SECRET,
            PLAIN_TOKEN,
            NAMED_TOKEN,
            "s3cr3t",
        ] {
            assert!(!out.contains(secret), "{secret} in:\n{out}");
        }
    }

    #[test]
    fn what_a_file_cannot_hold_is_refused() {
        let mut settings = with_every_secret();
        settings.worker.heartbeat = Duration::from_millis(1_500);
        let error = format!("{:#}", toml_with_secrets(&settings).unwrap_err());
        assert!(error.contains("heartbeat"), "{error}");
    }

    #[test]
    fn the_builder_starts_from_the_defaults() {
        let built = ConfigBuilder::new().build();
        assert_eq!(
            toml_with_secrets(&built).expect("written"),
            toml_with_secrets(&Settings::default()).expect("written")
        );
        assert_eq!(built.worker.concurrency, count(16));
        assert!(built.sources.is_empty() && built.admin.enabled);
        let quick = ConfigBuilder::new().quick().admin_disabled().build();
        assert_eq!(quick.worker.orphan_window(), Duration::from_secs(2));
        assert!(!quick.admin.enabled);
    }
}
