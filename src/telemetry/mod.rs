//! Telemetry: logs (`pretty` for people, `json` for log pipelines; written to stderr so that
//! commands printing results on stdout stay pipeable) and Prometheus [`metrics`].
//!
//! JSON lines are flat: the fields of every span around an event (`event.id`, `source`,
//! `lease.id`, `attempt`, …) sit next to the event's own fields, so a log search for
//! `event.id:"evt_…"` finds every line about that event without knowing span layouts.

pub mod metrics;

use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `[log] level`.
/// Calling it twice is harmless (the second call does nothing). Pretty lines are coloured
/// only when stderr is a terminal and `NO_COLOR` is unset or empty, so log files and
/// pipes get plain text.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    match settings.format {
        LogFormat::Json => {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(SpanFieldsLayer)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(std::io::stderr.with_max_level(tracing::Level::TRACE))
                        .fmt_fields(NoSpanText)
                        .event_format(FlatJson),
                )
                .try_init();
        }
        LogFormat::Pretty => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(colour(
                    std::io::stderr().is_terminal(),
                    std::env::var_os("NO_COLOR").as_deref(),
                ))
                .with_writer(std::io::stderr.with_max_level(tracing::Level::TRACE))
                .with_target(false)
                .try_init();
        }
    }
}

/// Whether log lines get ANSI colours: on a terminal, unless `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

/// One JSON object per line: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`, the
/// fields of the enclosing spans (outermost first, inner ones win) and the event's fields.
/// The spans' fields come from [`SpanFieldsLayer`], which must be installed beneath the
/// formatting layer; a span without them contributes only its name to `spans`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), Value::String(now));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            for span in scope.from_root() {
                names.push(span.name());
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    for (name, value) in fields {
                        line.insert((*name).to_owned(), value.clone());
                    }
                }
            }
            line.insert("spans".into(), Value::String(names.join(":")));
        }
        let mut fields = Vec::new();
        event.record(&mut FieldVisitor(&mut fields));
        for (name, value) in fields {
            line.insert(name.to_owned(), value);
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// A span's fields as JSON values, kept in the span's extensions by [`SpanFieldsLayer`].
#[derive(Debug, Default)]
struct SpanFields(Vec<(&'static str, Value)>);

/// Keeps each span's fields as values ([`SpanFields`]) for [`FlatJson`].
///
/// Why not the formatting layer's own `JsonFields`: it stores a span's fields as JSON text,
/// which `Span::record` parses and writes again and every event parsed once more. A worker
/// opens a span and records into it for every job; that text round trip was about 5 % of its
/// CPU in a drain's profile (BENCHMARKS.md). Values are only turned into text when a line is
/// written.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Vec::new();
        attrs.record(&mut FieldVisitor(&mut fields));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            values.record(&mut FieldVisitor(fields));
        }
    }
}

/// Span fields as text for the formatting layer: none, as [`FlatJson`] reads
/// [`SpanFields`] instead (this saves formatting each span's fields twice).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSpanText;

impl<'writer> FormatFields<'writer> for NoSpanText {
    fn format_fields<R: RecordFields>(&self, _writer: Writer<'writer>, _fields: R) -> fmt::Result {
        Ok(())
    }

    fn add_fields(
        &self,
        _current: &'writer mut FormattedFields<Self>,
        _fields: &Record<'_>,
    ) -> fmt::Result {
        Ok(())
    }
}

/// Records fields as JSON values, numbers and booleans as such; a field recorded again
/// replaces its earlier value.
struct FieldVisitor<'a>(&'a mut Vec<(&'static str, Value)>);

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => *old = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.into()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("a poisoned buffer"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_span_fields_recorded_later_and_inner_ones_win() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(SpanFieldsLayer).with(
            tracing_subscriber::fmt::layer()
                .with_writer(buffer.clone())
                .fmt_fields(NoSpanText)
                .event_format(FlatJson),
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "job",
                event.id = "evt-1",
                source = "s",
                attempt = tracing::field::Empty
            );
            let _outer = outer.enter();
            tracing::info!(n = 1_u64, "before");
            outer.record("attempt", 2_u64);
            outer.record("attempt", 3_u64);
            let inner = tracing::info_span!("call", source = "inner", ok = true);
            let _inner = inner.enter();
            tracing::warn!(source = "event", ratio = 0.5, text = ?"quoted\"", "after");
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "before");
        assert_eq!(lines[0]["event.id"], "evt-1");
        assert_eq!(lines[0]["n"], 1);
        assert!(
            lines[0].get("attempt").is_none(),
            "an empty field is absent: {text}"
        );
        assert_eq!(lines[0]["spans"], "job");
        assert_eq!(lines[0]["level"], "INFO");
        let after = &lines[1];
        assert_eq!(after["attempt"], 3, "the last value recorded: {text}");
        assert_eq!(
            after["source"], "event",
            "the event's own field wins: {text}"
        );
        assert_eq!(after["ok"], true);
        assert_eq!(after["ratio"], 0.5);
        assert_eq!(after["text"], "\"quoted\\\"\"");
        assert_eq!(after["spans"], "job:call");
        assert_eq!(after["level"], "WARN");
    }

    #[test]
    fn an_inner_span_field_wins_over_an_outer_one() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(SpanFieldsLayer).with(
            tracing_subscriber::fmt::layer()
                .with_writer(buffer.clone())
                .fmt_fields(NoSpanText)
                .event_format(FlatJson),
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("a", source = "outer");
            let _outer = outer.enter();
            let inner = tracing::info_span!("b", source = "inner");
            let _inner = inner.enter();
            tracing::info!("x");
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let line: Value = serde_json::from_str(text.trim()).expect("a JSON line");
        assert_eq!(line["source"], "inner", "{text}");
    }
}
