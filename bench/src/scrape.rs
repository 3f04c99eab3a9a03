//! Scrapes the `/metrics` of the running lease-sync instances once a second, as Prometheus
//! would, and at the edges of every phase of the run, and keeps every sample for the
//! dashboard page.
//!
//! Each instance is added before it has counted anything, and the time it was added is kept:
//! the dashboard takes its counters to be 0 then (as Prometheus does with created-timestamp
//! zero ingestion), so work finished before the instance's first scrape still shows in rates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

/// One sample of one series.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Metric name (for histograms: `…_bucket`, `…_sum`, `…_count`).
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
    /// A counter, or a histogram's `_bucket`, `_sum` or `_count` (per `# TYPE`): it only
    /// goes up, from 0 when its process started.
    pub counter: bool,
}

/// One scrape of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct Scrape {
    /// Seconds since the scraper started.
    pub t: f64,
    /// Which process (`ingest-1`, `work-0ms-1`, …).
    pub instance: String,
    /// How long the scrape took, in milliseconds.
    pub millis: f64,
    /// The samples; empty when the scrape failed.
    pub samples: Vec<Sample>,
}

/// The instances scraped now and every scrape so far.
#[derive(Debug, Default)]
struct Shared {
    targets: Vec<(String, String)>,
    scrapes: Vec<Scrape>,
    fresh_since: BTreeMap<String, f64>,
}

/// Everything a [`Scraper`] recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Every scrape, in time order.
    pub scrapes: Vec<Scrape>,
    /// Per instance, when it was added (seconds on the scraper's clock): its counters were 0
    /// then.
    pub fresh_since: BTreeMap<String, f64>,
}

/// A background scraper; targets change as processes come and go.
pub struct Scraper {
    shared: Arc<Mutex<Shared>>,
    started: Instant,
    client: reqwest::Client,
    task: Option<JoinHandle<()>>,
}

impl Scraper {
    /// Starts scraping every `every` (nothing until a target is set); a zero `every`
    /// scrapes nothing at all.
    pub fn start(every: Duration) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let started = Instant::now();
        let task =
            (!every.is_zero()).then(|| tokio::spawn(scrape_loop(shared.clone(), started, every)));
        Self {
            shared,
            started,
            client: client(),
            task,
        }
    }

    /// Scrapes `url` (a `/metrics` address) as `instance` from now on. The instance must not
    /// have counted anything yet (not started, or started and sent no work): its counters
    /// are taken to be 0 now.
    pub fn add(&self, instance: &str, url: &str) {
        if self.task.is_some() {
            let now = self.now();
            let mut shared = self.lock();
            shared.fresh_since.insert(instance.to_owned(), now);
            shared.targets.push((instance.to_owned(), url.to_owned()));
        }
    }

    /// Scrapes every instance once, now: at the edges of a phase, so that each phase has
    /// samples at its start and at its end however short it is.
    pub async fn scrape_now(&self) {
        let targets = self.lock().targets.clone();
        for (instance, url) in targets {
            let scrape = scrape_one(&self.client, &instance, &url, self.started).await;
            self.lock().scrapes.push(scrape);
        }
    }

    /// Stops scraping `instance`, after one last scrape so its final counters are kept.
    pub async fn remove(&self, instance: &str) {
        let target = self
            .lock()
            .targets
            .iter()
            .find(|(name, _)| name == instance)
            .cloned();
        if let Some((name, url)) = target {
            let scrape = scrape_one(&self.client, &name, &url, self.started).await;
            let mut shared = self.lock();
            shared.scrapes.push(scrape);
            shared.targets.retain(|(n, _)| *n != name);
        }
    }

    /// Seconds since the scraper started.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Stops and returns every scrape, in time order, and when each instance was added.
    pub fn finish(mut self) -> Recorded {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let mut shared = self.lock();
        let mut scrapes = std::mem::take(&mut shared.scrapes);
        scrapes.sort_by(|a, b| a.t.total_cmp(&b.t));
        Recorded {
            scrapes,
            fresh_since: std::mem::take(&mut shared.fresh_since),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

async fn scrape_loop(shared: Arc<Mutex<Shared>>, started: Instant, every: Duration) {
    let client = client();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let targets = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .targets
            .clone();
        for (instance, url) in targets {
            let scrape = scrape_one(&client, &instance, &url, started).await;
            shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .scrapes
                .push(scrape);
        }
    }
}

async fn scrape_one(
    client: &reqwest::Client,
    instance: &str,
    url: &str,
    started: Instant,
) -> Scrape {
    let t = started.elapsed().as_secs_f64();
    let begun = Instant::now();
    let text = match client.get(url).send().await {
        Ok(response) if response.status().is_success() => response.text().await.ok(),
        _ => None,
    };
    Scrape {
        t,
        instance: instance.to_owned(),
        millis: begun.elapsed().as_secs_f64() * 1e3,
        samples: text.as_deref().map(parse).unwrap_or_default(),
    }
}

/// Parses Prometheus text exposition: `name{label="value",…} value` lines, typed by the
/// `# TYPE` lines; other comments and anything unparsable are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            types.insert(name, kind);
        }
    }
    let is_counter = |name: &str| {
        if types.get(name) == Some(&"counter") {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(|base| types.get(base))
                .is_some_and(|kind| {
                    *kind == "histogram" || (*kind == "summary" && *suffix != "_bucket")
                })
        })
    };
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .map(|mut sample| {
            sample.counter = is_counter(&sample.name);
            sample
        })
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, close) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, &line[open + 1 + close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
        counter: false,
    })
}

/// Parses `a="x",b="y"}`; returns the labels and the index of the closing brace.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, usize)> {
    let bytes = s.as_bytes();
    let mut labels = BTreeMap::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'}' {
            return Some((labels, i));
        }
        let eq = s[i..].find('=')? + i;
        let key = s[i..eq].trim().to_owned();
        i = eq + 1;
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        let mut value = String::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                value.push(match bytes[i] {
                    b'n' => '\n',
                    other => other as char,
                });
            } else {
                value.push(bytes[i] as char);
            }
            i += 1;
        }
        i += 1;
        labels.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labelled_and_plain_lines() {
        let text = "# HELP x y\nlease_sync_queue_jobs{state=\"ready\"} 12\nplain 3.5\nh_bucket{le=\"+Inf\",outcome=\"accepted\"} 7\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "lease_sync_queue_jobs");
        assert_eq!(samples[0].labels["state"], "ready");
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].value, 3.5);
        assert_eq!(samples[2].labels["le"], "+Inf");
        assert_eq!(samples[2].labels["outcome"], "accepted");
    }

    #[test]
    fn type_lines_tell_counters_from_gauges() {
        let text = "# TYPE jobs_total counter\njobs_total{outcome=\"converged\"} 4\n\
                    # TYPE depth gauge\ndepth 2\n\
                    # TYPE latency_seconds histogram\nlatency_seconds_bucket{le=\"0.1\"} 1\n\
                    latency_seconds_sum 0.05\nlatency_seconds_count 1\nuntyped 1\n";
        let kinds: Vec<(String, bool)> = parse(text)
            .into_iter()
            .map(|s| (s.name, s.counter))
            .collect();
        assert_eq!(
            kinds,
            [
                ("jobs_total".to_owned(), true),
                ("depth".to_owned(), false),
                ("latency_seconds_bucket".to_owned(), true),
                ("latency_seconds_sum".to_owned(), true),
                ("latency_seconds_count".to_owned(), true),
                ("untyped".to_owned(), false),
            ]
        );
    }
}
