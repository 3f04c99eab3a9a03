//! The load generator: distinct, pre-signed ~1 KB Standard Webhooks events sent over a
//! minimal HTTP/1.1 keep-alive client, either in an open loop at a fixed rate (latency
//! counted from each request's *intended* send time, so coordinated omission is corrected,
//! as wrk2 and `oha --latency-correction` do) or in a closed loop at the maximum rate.
//!
//! oha and wrk replay one request, which here would be one event id over and over: every
//! request after the first would take the cheap `duplicate` path. So every request is a
//! distinct event, signed before the clock starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use lease_sync::signature::standard_webhooks;

/// Longest wait for one answer; past it the request counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the generated events look like and how they are signed.
#[derive(Debug, Clone)]
pub struct EventSpec {
    /// `[[sources]]` name: the request path is `/webhooks/{source}`.
    pub source: String,
    /// The source's `whsec_…` secret.
    pub secret: String,
    /// `lease.property_id`, mapped under the source.
    pub property: String,
    /// Target body size in bytes; bodies are padded to exactly this size.
    pub body_bytes: usize,
}

/// Pre-signed requests, ready to write to a socket.
#[derive(Debug)]
pub struct Batch {
    /// Raw HTTP/1.1 requests (head and body).
    pub requests: Vec<Vec<u8>>,
    /// Body size of each request (all equal unless the padding could not reach the target).
    pub body_bytes: usize,
}

/// Signs `count` distinct `lease.signed` events, each for its own lease and resident, with
/// ids and users `{tag}-{i}`. The signature timestamp is now, so the batch must be sent
/// within the source's tolerance (300 s).
pub fn build_batch(
    spec: &EventSpec,
    addr: SocketAddr,
    tag: &str,
    count: usize,
) -> anyhow::Result<Batch> {
    let now = OffsetDateTime::now_utc();
    let occurred_at = now.format(&Rfc3339).context("cannot format the time")?;
    let timestamp = now.unix_timestamp();
    let mut requests = Vec::with_capacity(count);
    let mut body_bytes = 0;
    for i in 0..count {
        let event_id = format!("evt_{tag}_{i}");
        let body = event_body(spec, tag, i, &occurred_at);
        body_bytes = body.len();
        let signature = standard_webhooks::sign(&spec.secret, &event_id, timestamp, &body)
            .map_err(|e| anyhow::anyhow!("the bench secret cannot sign: {e}"))?;
        let mut request = format!(
            "POST /webhooks/{source} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n{id_h}: {event_id}\r\n{ts_h}: {timestamp}\r\n{sig_h}: {signature}\r\n\r\n",
            source = spec.source,
            len = body.len(),
            id_h = standard_webhooks::ID_HEADER,
            ts_h = standard_webhooks::TIMESTAMP_HEADER,
            sig_h = standard_webhooks::SIGNATURE_HEADER,
        )
        .into_bytes();
        request.extend_from_slice(&body);
        requests.push(request);
    }
    Ok(Batch {
        requests,
        body_bytes,
    })
}

/// One event body of exactly `spec.body_bytes` bytes (when the fields fit): a realistic
/// event plus a `metadata.note` the service ignores (unknown fields are ignored).
fn event_body(spec: &EventSpec, tag: &str, i: usize, occurred_at: &str) -> Vec<u8> {
    let make = |pad: usize| {
        serde_json::json!({
            "type": "lease.signed",
            "occurred_at": occurred_at,
            "lease": { "id": format!("L-{tag}-{i}"), "property_id": spec.property, "unit": "4B" },
            "residents": [ { "openapp_user_id": format!("u{tag}-{i}"), "external_id": format!("T-{i}") } ],
            "metadata": { "note": "x".repeat(pad) },
        })
        .to_string()
        .into_bytes()
    };
    let bare = make(0).len();
    make(spec.body_bytes.saturating_sub(bare))
}

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Open loop: request `i` is due at `t0 + i / rate`; latency counts from then.
    Fixed {
        /// Requests per second.
        rate: f64,
    },
    /// Closed loop: each connection sends its next request as soon as the last is answered.
    Max,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (nanoseconds), sorted in place.
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let n = samples.len();
            let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms(samples[idx])
        };
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: ms(*samples.last().unwrap_or(&0)),
            mean: sum as f64 / samples.len() as f64 / 1e6,
        }
    }
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// What one load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// `fixed` or `max`.
    pub mode: &'static str,
    /// Requests sent.
    pub requests: usize,
    /// Connections (the bound on requests in flight).
    pub connections: usize,
    /// Offered rate of a fixed-rate run.
    pub offered_rps: Option<f64>,
    /// Answers per second, from the first due time to the last answer.
    pub achieved_rps: f64,
    /// Seconds from the first due time to the last answer.
    pub duration_s: f64,
    /// 2xx answers.
    pub ok: u64,
    /// Answers with another status.
    pub non_2xx: u64,
    /// Requests that got no answer (connect, write or read failed).
    pub errors: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Idle keep-alive connections the server had closed, reopened before sending (not errors).
    pub reconnects: u64,
    /// Body size in bytes.
    pub body_bytes: usize,
    /// Fixed rate: from the intended send time to the answer (coordinated omission
    /// corrected; includes the generator's own timer lateness). Max rate: from the send.
    pub latency_ms: Percentiles,
    /// From the actual send to the answer (not corrected).
    pub service_ms: Percentiles,
    /// Fixed rate: from the intended send time to the send (the pacer thread's wake-up, and
    /// the wait for a free connection when all are busy), already included in `latency_ms`.
    pub timer_lateness_ms: Percentiles,
    /// The first error, for the log.
    pub first_error: Option<String>,
}

/// Releases request indices `0..n` at `t0 + i / rate` from a thread of its own, each with its
/// due time; the channel closes after the last.
fn pacer(
    n: usize,
    t0: Instant,
    rate: f64,
) -> tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for i in 0..n {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Sends every request of `batch` to `addr` over `connections` keep-alive connections.
pub async fn run(
    addr: SocketAddr,
    batch: &Batch,
    pace: Pace,
    connections: usize,
) -> anyhow::Result<LoadReport> {
    let requests = Arc::new(batch.requests.clone());
    let n = requests.len();
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut conn = Conn::new(addr);
        conn.connect()
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        conns.push(conn);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now() + Duration::from_millis(10);
    // At a fixed rate a pacer thread releases each request at its due time. tokio's timer
    // wheel has a 1 ms resolution (a sleep woke 0.9 ms late at the median, 2 ms at p99),
    // which the coordinated-omission correction would charge to the service; a thread's
    // `nanosleep` wakes within tens of microseconds.
    let paced = match pace {
        Pace::Fixed { rate } => Some(Arc::new(tokio::sync::Mutex::new(pacer(n, t0, rate)))),
        Pace::Max => None,
    };
    let mut tasks = Vec::with_capacity(connections);
    for mut conn in conns {
        let requests = requests.clone();
        let next = next.clone();
        let paced = paced.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let (i, intended) = match &paced {
                    Some(due) => match due.lock().await.recv().await {
                        Some(released) => released,
                        None => break,
                    },
                    None => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests.len() {
                            break;
                        }
                        (i, Instant::now())
                    }
                };
                let sent = Instant::now();
                if paced.is_some() {
                    tally
                        .lateness
                        .push(nanos(sent.saturating_duration_since(intended)));
                }
                let result =
                    match tokio::time::timeout(REQUEST_TIMEOUT, conn.send(&requests[i])).await {
                        Ok(result) => result,
                        Err(_) => {
                            conn.stream = None;
                            Err(ExchangeError::Failed(format!(
                                "no answer within {REQUEST_TIMEOUT:?}"
                            )))
                        }
                    };
                let done = Instant::now();
                tally
                    .latency
                    .push(nanos(done.saturating_duration_since(intended)));
                tally.service.push(nanos(done - sent));
                tally.last_done = Some(tally.last_done.map_or(done, |d: Instant| d.max(done)));
                match result {
                    Ok(status) => *tally.statuses.entry(status).or_default() += 1,
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            tally.reconnects = conn.reconnects;
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        all.merge(task.await.context("a load task panicked")?);
    }
    let start = match pace {
        Pace::Fixed { .. } => t0,
        Pace::Max => t0.min(Instant::now()),
    };
    let duration = all
        .last_done
        .map_or(Duration::ZERO, |d| d.saturating_duration_since(start));
    let ok: u64 = all
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, c)| c)
        .sum();
    let answered: u64 = all.statuses.values().sum();
    Ok(LoadReport {
        mode: match pace {
            Pace::Fixed { .. } => "fixed",
            Pace::Max => "max",
        },
        requests: n,
        connections,
        offered_rps: match pace {
            Pace::Fixed { rate } => Some(rate),
            Pace::Max => None,
        },
        achieved_rps: if duration.is_zero() {
            0.0
        } else {
            (answered + all.errors) as f64 / duration.as_secs_f64()
        },
        duration_s: duration.as_secs_f64(),
        ok,
        non_2xx: answered - ok,
        errors: all.errors,
        statuses: all.statuses,
        reconnects: all.reconnects,
        body_bytes: batch.body_bytes,
        latency_ms: Percentiles::of(&mut all.latency),
        service_ms: Percentiles::of(&mut all.service),
        timer_lateness_ms: Percentiles::of(&mut all.lateness),
        first_error: all.first_error,
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What one connection's task saw.
#[derive(Default)]
struct Tally {
    latency: Vec<u64>,
    service: Vec<u64>,
    lateness: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    reconnects: u64,
    last_done: Option<Instant>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latency.extend(other.latency);
        self.service.extend(other.service);
        self.lateness.extend(other.lateness);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.errors += other.errors;
        self.reconnects += other.reconnects;
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Why an exchange failed.
#[derive(Debug)]
enum ExchangeError {
    /// The connection was closed before any byte of an answer: the server dropped an idle
    /// keep-alive connection, so the request was never processed and may be sent again.
    ClosedBeforeAnswer,
    /// Anything else: counted as an error.
    Failed(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClosedBeforeAnswer => f.write_str("connection closed before the answer"),
            Self::Failed(message) => f.write_str(message),
        }
    }
}

/// One keep-alive HTTP/1.1 connection that understands just enough of an answer: the
/// status line and `content-length` (what the service sends).
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    reconnects: u64,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
            reconnects: 0,
        }
    }

    async fn connect(&mut self) -> std::io::Result<()> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Sends `request` and returns the answer's status. A connection the server closed while
    /// idle is reopened once and the request sent again.
    async fn send(&mut self, request: &[u8]) -> Result<u16, ExchangeError> {
        for _ in 0..2 {
            let fresh = self.stream.is_none();
            if fresh {
                self.connect()
                    .await
                    .map_err(|e| ExchangeError::Failed(format!("connect: {e}")))?;
            }
            match self.exchange(request).await {
                Ok(status) => return Ok(status),
                Err(ExchangeError::ClosedBeforeAnswer) if !fresh => {
                    self.stream = None;
                    self.reconnects += 1;
                }
                Err(e) => {
                    self.stream = None;
                    return Err(e);
                }
            }
        }
        Err(ExchangeError::Failed(
            "connection closed twice before the answer".into(),
        ))
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<u16, ExchangeError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(ExchangeError::Failed("not connected".into()));
        };
        if let Err(e) = stream.write_all(request).await {
            return Err(match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    ExchangeError::ClosedBeforeAnswer
                }
                _ => ExchangeError::Failed(format!("write: {e}")),
            });
        }
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let read = match stream.read(&mut chunk).await {
                Ok(read) => read,
                Err(e)
                    if self.buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Err(ExchangeError::ClosedBeforeAnswer);
                }
                Err(e) => return Err(ExchangeError::Failed(format!("read: {e}"))),
            };
            if read == 0 {
                return Err(if self.buf.is_empty() {
                    ExchangeError::ClosedBeforeAnswer
                } else {
                    ExchangeError::Failed("connection closed mid-answer".into())
                });
            }
            self.buf.extend_from_slice(&chunk[..read]);
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(ExchangeError::Failed("answer head too large".into()));
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| ExchangeError::Failed("answer head is not UTF-8".into()))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| ExchangeError::Failed("no status in the answer".into()))?;
        let mut content_length = None;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                close = true;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(ExchangeError::Failed(
                    "chunked answers are not supported by the bench client".into(),
                ));
            }
        }
        let total = head_end + content_length.unwrap_or(0);
        while self.buf.len() < total {
            let read = stream
                .read(&mut chunk)
                .await
                .map_err(|e| ExchangeError::Failed(format!("read: {e}")))?;
            if read == 0 {
                return Err(ExchangeError::Failed("connection closed mid-body".into()));
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.p50, 500.0);
        assert_eq!(p.p99, 990.0);
        assert_eq!(p.p999, 999.0);
        assert_eq!(p.max, 1000.0);
    }

    #[test]
    fn bodies_are_padded_to_the_target_size_and_distinct() {
        let spec = EventSpec {
            source: "bench".into(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            property: "P-1".into(),
            body_bytes: 1024,
        };
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let batch = build_batch(&spec, addr, "t", 3).unwrap();
        assert_eq!(batch.body_bytes, 1024);
        assert_ne!(batch.requests[0], batch.requests[1]);
        let text = String::from_utf8(batch.requests[2].clone()).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 1024);
        let event: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["residents"][0]["openapp_user_id"], "ut-2");
    }
}
