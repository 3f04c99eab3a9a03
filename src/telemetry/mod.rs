//! Telemetry: logs (`pretty` for people, `json` for log pipelines; written to stderr so that
//! commands printing results on stdout stay pipeable) and Prometheus [`metrics`].
//!
//! Log lines are handed to a thread of their own ([`LogGuard`]), so that a log pipe that stops
//! reading (a stuck collector, a full disk under the container runtime) cannot stall ingest or
//! the workers, as a blocking `write` to stderr would: past [`LOG_LINES_BUFFERED`] lines
//! waiting, new lines are dropped and counted ([`metrics::LOG_LINES_DROPPED`]) instead. The
//! thread writes whatever has queued up in one `write`.
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

/// Most log lines waiting for the log thread; past this, new lines are dropped and counted
/// rather than making the thread that logs wait. About 33 MB of a worker's lines (≈ 330 bytes
/// each), and 10 s of a worker draining 10,000 jobs a second.
pub const LOG_LINES_BUFFERED: usize = 100_000;

/// Keeps the log thread running; dropping it writes out the lines still queued and stops the
/// thread. Hold it for as long as the process logs (`main`'s whole run).
#[must_use = "dropping the guard stops the log thread: lines logged afterwards are lost"]
#[derive(Debug)]
pub struct LogGuard {
    _worker: tracing_appender::non_blocking::WorkerGuard,
}

/// Lines the log thread dropped so far because [`LOG_LINES_BUFFERED`] were waiting; read at
/// scrape time into [`metrics::LOG_LINES_DROPPED`].
static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped so far because the log thread fell [`LOG_LINES_BUFFERED`] lines behind
/// (0 before [`init`]).
pub fn log_lines_dropped() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Installs the global subscriber, writing through a log thread (see the module
/// documentation) into `out`. `RUST_LOG`, when set, wins over `[log] level`.
/// Calling it twice is harmless (the second call installs nothing; its guard stops its unused
/// thread). Pretty lines are coloured only when stderr is a terminal and `NO_COLOR` is unset
/// or empty, so log files and pipes get plain text.
pub fn init(settings: &LogSettings) -> LogGuard {
    init_into(settings, std::io::stderr())
}

fn init_into<W: std::io::Write + Send + 'static>(settings: &LogSettings, out: W) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = log_writer(out, LOG_LINES_BUFFERED);
    let dropped = writer.error_counter();
    let installed = match settings.format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(SpanFieldsLayer)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer.with_max_level(tracing::Level::TRACE))
                    .fmt_fields(NoSpanText)
                    .event_format(FlatJson),
            )
            .try_init()
            .is_ok(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .with_writer(writer.with_max_level(tracing::Level::TRACE))
            .with_target(false)
            .try_init()
            .is_ok(),
    };
    if installed {
        let _ = DROPPED.set(dropped);
    }
    LogGuard { _worker: guard }
}

/// The log thread writing into `out`: at most `limit` lines wait for it, further ones are
/// dropped and counted (`error_counter`). A buffer gathers what the thread writes between two
/// waits into one `write`; the thread flushes it whenever no line is waiting, so a line is out
/// as soon as the thread gets to it.
fn log_writer<W: std::io::Write + Send + 'static>(
    out: W,
    limit: usize,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(limit)
        .thread_name("lease-sync-log")
        .finish(std::io::BufWriter::new(out))
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

    /// A sink whose first write says so (`entered`) and then waits until `open` is sent; it
    /// writes into `into`.
    struct Stuck {
        entered: std::sync::mpsc::Sender<()>,
        open: std::sync::mpsc::Receiver<()>,
        opened: bool,
        into: Buffer,
    }

    impl std::io::Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if !self.opened {
                let _ = self.entered.send(());
                self.open.recv().map_err(std::io::Error::other)?;
                self.opened = true;
            }
            self.into.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_log_pipe_drops_and_counts_lines_instead_of_blocking_the_logger() {
        use std::io::Write as _;
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let (entered, stuck_in_write) = channel();
        let (open, opened) = channel();
        let into = Buffer::default();
        let sink = Stuck {
            entered,
            open: opened,
            opened: false,
            into: into.clone(),
        };
        let (mut writer, guard) = log_writer(sink, 10);
        let counter = writer.error_counter();
        // One line gets the log thread stuck in its write.
        writer.write_all(b"first\n").expect("queued");
        stuck_in_write
            .recv_timeout(Duration::from_secs(30))
            .expect("the log thread writes the first line");
        // Logging 50 more must return although nothing is being written: in a thread, so a
        // logger that blocked fails the test instead of hanging it.
        let (done, finished) = channel();
        let mut logger = writer.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                let _ = logger.write_all(format!("line {i}\n").as_bytes());
            }
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("logging returned while the pipe was stuck");
        assert_eq!(counter.dropped_lines(), 40, "10 wait, the rest are dropped");
        open.send(()).expect("the log thread is waiting");
        let text = wait_for_lines(&into, 11);
        drop(writer);
        drop(guard);
        let mut expected = vec!["first".to_owned()];
        expected.extend((0..10).map(|i| format!("line {i}")));
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            expected,
            "the oldest lines are kept, in order"
        );
    }

    /// What `into` holds once it has `lines` lines (polled, at most 30 s).
    fn wait_for_lines(into: &Buffer, lines: usize) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = String::from_utf8(into.0.lock().expect("buffer").clone()).expect("utf-8");
            if text.lines().count() >= lines || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn every_line_is_written_whole_and_in_order() {
        use std::io::Write as _;
        let into = Buffer::default();
        let (mut writer, _guard) = log_writer(into.clone(), LOG_LINES_BUFFERED);
        for i in 0..1_000 {
            writer
                .write_all(format!("line {i}\n").as_bytes())
                .expect("queued");
        }
        let text = wait_for_lines(&into, 1_000);
        assert_eq!(writer.error_counter().dropped_lines(), 0);
        let expected: Vec<String> = (0..1_000).map(|i| format!("line {i}")).collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
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
