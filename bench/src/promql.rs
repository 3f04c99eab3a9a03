//! Just enough PromQL to evaluate the queries of `deploy/grafana/lease-sync.json` over the
//! scrapes of a benchmark run: selectors with `=`, `!=`, `=~`, `!~` matchers (regexes limited
//! to `a|b|c` alternations), `rate` and `increase` over a range, `sum`/`max`/`min`/`count`
//! with `by (…)`, and `histogram_quantile`.
//!
//! Differences from Prometheus, so the page is an approximation: `$__rate_interval` is a
//! fixed window (4 scrape intervals); `rate`/`increase` take the reset-aware increase between
//! the first and last samples inside the window without extrapolating to its edges; an
//! instant selector looks back 1.5 s instead of 5 min, so a stopped process drops out at once;
//! `[1h]` over a run shorter than an hour covers the whole run. A counter (or histogram
//! series) is 0 when its instance was added to the scraper, before the process counted
//! anything, as with Prometheus's created-timestamp zero ingestion: a counter that first
//! appears with a value has a rate from the start.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

use crate::scrape::Scrape;

/// Label set of one series.
pub type Labels = BTreeMap<String, String>;

/// A parsed query.
#[derive(Debug, Clone)]
pub enum Expr {
    /// `name{matchers}`.
    Selector {
        /// Metric name.
        name: String,
        /// Label matchers.
        matchers: Vec<Matcher>,
    },
    /// `rate(sel[range])` or `increase(sel[range])`.
    Range {
        /// `rate` or `increase`.
        func: RangeFunc,
        /// The selector.
        selector: Box<Expr>,
        /// Window in seconds.
        window: f64,
    },
    /// `sum by (…) (expr)` and friends.
    Aggregate {
        /// Which aggregation.
        op: AggOp,
        /// Grouping labels (`by`).
        by: Vec<String>,
        /// Operand.
        inner: Box<Expr>,
    },
    /// `histogram_quantile(q, expr)`.
    Quantile {
        /// The quantile, 0..1.
        q: f64,
        /// Bucket rates by `le` (and grouping labels).
        inner: Box<Expr>,
    },
}

/// `rate` or `increase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFunc {
    /// Per-second increase.
    Rate,
    /// Increase over the window.
    Increase,
}

/// An aggregation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// Number of series.
    Count,
}

/// One label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    /// Value or alternation.
    pub value: String,
}

impl Matcher {
    fn matches(&self, labels: &Labels) -> bool {
        let actual = labels.get(&self.label).map_or("", String::as_str);
        let in_alternation = || self.value.split('|').any(|alt| alt == actual);
        match self.op.as_str() {
            "=" => actual == self.value,
            "!=" => actual != self.value,
            "=~" => in_alternation(),
            "!~" => !in_alternation(),
            _ => false,
        }
    }
}

/// Parses `query`; `rate_interval` replaces `$__rate_interval` (seconds).
pub fn parse(query: &str, rate_interval: f64) -> anyhow::Result<Expr> {
    let mut parser = Parser {
        s: query.as_bytes(),
        i: 0,
        rate_interval,
    };
    let expr = parser.expr()?;
    parser.skip_ws();
    if parser.i != parser.s.len() {
        bail!("unexpected text at {} in `{query}`", parser.i);
    }
    Ok(expr)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    rate_interval: f64,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> anyhow::Result<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            bail!("expected `{}` at {}", c as char, self.i)
        }
    }

    fn ident(&mut self) -> anyhow::Result<String> {
        self.skip_ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'_' | b':'))
        {
            self.i += 1;
        }
        if start == self.i {
            bail!("expected a name at {}", self.i);
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn number(&mut self) -> anyhow::Result<f64> {
        self.skip_ws();
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_digit() || self.s[self.i] == b'.') {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])?
            .parse()
            .context("expected a number")
    }

    fn expr(&mut self) -> anyhow::Result<Expr> {
        let name = self.ident()?;
        let agg = match name.as_str() {
            "sum" => Some(AggOp::Sum),
            "max" => Some(AggOp::Max),
            "min" => Some(AggOp::Min),
            "count" => Some(AggOp::Count),
            _ => None,
        };
        if let Some(op) = agg {
            let mut by = Vec::new();
            if self.peek() == Some(b'b') {
                let word = self.ident()?;
                if word != "by" {
                    bail!("expected `by`, found `{word}`");
                }
                self.expect(b'(')?;
                loop {
                    by.push(self.ident()?);
                    if self.peek() == Some(b',') {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                self.expect(b')')?;
            }
            self.expect(b'(')?;
            let inner = self.expr()?;
            self.expect(b')')?;
            return Ok(Expr::Aggregate {
                op,
                by,
                inner: Box::new(inner),
            });
        }
        match name.as_str() {
            "rate" | "increase" => {
                self.expect(b'(')?;
                let metric = self.ident()?;
                let selector = self.selector_after(metric)?;
                self.expect(b'[')?;
                let window = self.duration()?;
                self.expect(b']')?;
                self.expect(b')')?;
                Ok(Expr::Range {
                    func: if name == "rate" {
                        RangeFunc::Rate
                    } else {
                        RangeFunc::Increase
                    },
                    selector: Box::new(selector),
                    window,
                })
            }
            "histogram_quantile" => {
                self.expect(b'(')?;
                let q = self.number()?;
                self.expect(b',')?;
                let inner = self.expr()?;
                self.expect(b')')?;
                Ok(Expr::Quantile {
                    q,
                    inner: Box::new(inner),
                })
            }
            _ => self.selector_after(name),
        }
    }

    fn selector_after(&mut self, name: String) -> anyhow::Result<Expr> {
        let mut matchers = Vec::new();
        if self.peek() == Some(b'{') {
            self.i += 1;
            while self.peek() != Some(b'}') {
                let label = self.ident()?;
                self.skip_ws();
                let mut op = String::new();
                while self.i < self.s.len() && matches!(self.s[self.i], b'=' | b'!' | b'~') {
                    op.push(self.s[self.i] as char);
                    self.i += 1;
                }
                self.expect(b'"')?;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != b'"' {
                    self.i += 1;
                }
                let value = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                matchers.push(Matcher { label, op, value });
                if self.peek() == Some(b',') {
                    self.i += 1;
                }
            }
            self.i += 1;
        }
        Ok(Expr::Selector { name, matchers })
    }

    fn duration(&mut self) -> anyhow::Result<f64> {
        self.skip_ws();
        if self.s[self.i..].starts_with(b"$__rate_interval") {
            self.i += "$__rate_interval".len();
            return Ok(self.rate_interval);
        }
        let n = self.number()?;
        let unit = self.ident()?;
        Ok(n * match unit.as_str() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => bail!("unknown duration unit `{other}`"),
        })
    }
}

/// One sample of one series, the instance folded into the labels.
struct Point {
    t: f64,
    value: f64,
}

/// The scrapes, indexed by series.
pub struct Store {
    /// (name, labels with `instance`) → samples in time order.
    series: BTreeMap<(String, Labels), Vec<Point>>,
}

/// How far back an instant selector looks.
const LOOKBACK: f64 = 1.5;

impl Store {
    /// Indexes `scrapes` (in time order). `fresh_since` says, per instance, when its
    /// counters were 0: each counter series starts with a 0 sample then.
    pub fn new(scrapes: &[Scrape], fresh_since: &BTreeMap<String, f64>) -> Self {
        let mut series: BTreeMap<(String, Labels), Vec<Point>> = BTreeMap::new();
        for scrape in scrapes {
            for sample in &scrape.samples {
                let mut labels = sample.labels.clone();
                labels.insert("instance".into(), scrape.instance.clone());
                let points = series.entry((sample.name.clone(), labels)).or_default();
                if points.is_empty()
                    && sample.counter
                    && let Some(&since) = fresh_since.get(&scrape.instance)
                    && since < scrape.t
                {
                    points.push(Point {
                        t: since,
                        value: 0.0,
                    });
                }
                points.push(Point {
                    t: scrape.t,
                    value: sample.value,
                });
            }
        }
        Self { series }
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        matchers: &'a [Matcher],
    ) -> impl Iterator<Item = (&'a Labels, &'a [Point])> + 'a {
        self.series
            .iter()
            .filter(move |((n, labels), _)| n == name && matchers.iter().all(|m| m.matches(labels)))
            .map(|((_, labels), points)| (labels, points.as_slice()))
    }

    /// Evaluates `expr` at time `t`: one value per output label set.
    pub fn eval(&self, expr: &Expr, t: f64) -> Vec<(Labels, f64)> {
        match expr {
            Expr::Selector { name, matchers } => self
                .matching(name, matchers)
                .filter_map(|(labels, points)| {
                    let last = points.iter().rev().find(|p| p.t <= t)?;
                    (t - last.t <= LOOKBACK).then(|| (labels.clone(), last.value))
                })
                .collect(),
            Expr::Range {
                func,
                selector,
                window,
            } => {
                let Expr::Selector { name, matchers } = selector.as_ref() else {
                    return Vec::new();
                };
                self.matching(name, matchers)
                    .filter_map(|(labels, points)| {
                        let inside: Vec<&Point> = points
                            .iter()
                            .filter(|p| p.t <= t && p.t > t - window)
                            .collect();
                        if inside.len() < 2 {
                            return None;
                        }
                        let mut increase = 0.0;
                        for pair in inside.windows(2) {
                            let delta = pair[1].value - pair[0].value;
                            // A counter that went down was reset: it counted from 0 again.
                            increase += if delta >= 0.0 { delta } else { pair[1].value };
                        }
                        let span = inside[inside.len() - 1].t - inside[0].t;
                        let value = match func {
                            RangeFunc::Rate if span > 0.0 => increase / span,
                            RangeFunc::Rate => return None,
                            RangeFunc::Increase => increase,
                        };
                        let mut labels = labels.clone();
                        labels.remove("__name__");
                        Some((labels, value))
                    })
                    .collect()
            }
            Expr::Aggregate { op, by, inner } => {
                let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
                for (labels, value) in self.eval(inner, t) {
                    let key: Labels = labels.into_iter().filter(|(k, _)| by.contains(k)).collect();
                    groups.entry(key).or_default().push(value);
                }
                groups
                    .into_iter()
                    .map(|(labels, values)| {
                        let value = match op {
                            AggOp::Sum => values.iter().sum(),
                            AggOp::Max => values.iter().copied().fold(f64::MIN, f64::max),
                            AggOp::Min => values.iter().copied().fold(f64::MAX, f64::min),
                            AggOp::Count => values.len() as f64,
                        };
                        (labels, value)
                    })
                    .collect()
            }
            Expr::Quantile { q, inner } => {
                let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
                for (mut labels, value) in self.eval(inner, t) {
                    let Some(le) = labels.remove("le") else {
                        continue;
                    };
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap_or(f64::NAN)
                    };
                    groups.entry(labels).or_default().push((bound, value));
                }
                groups
                    .into_iter()
                    .filter_map(|(labels, mut buckets)| {
                        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                        quantile(*q, &buckets).map(|v| (labels, v))
                    })
                    .collect()
            }
        }
    }
}

/// Prometheus's `histogram_quantile` over cumulative `(upper bound, count)` buckets: linear
/// interpolation inside the bucket holding the rank; `None` when nothing was observed.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !buckets.last()?.0.is_infinite() {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below) / in_bucket);
        }
        lower = upper;
        below = count;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::{Sample, Scrape};

    /// (metric, labels, value).
    type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

    fn scrape(t: f64, instance: &str, samples: &[Row<'_>]) -> Scrape {
        Scrape {
            t,
            instance: instance.into(),
            millis: 0.0,
            samples: samples
                .iter()
                .map(|(name, labels, value)| Sample {
                    name: (*name).into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                    value: *value,
                    counter: name.ends_with("_total") || name.ends_with("_bucket"),
                })
                .collect(),
        }
    }

    fn no_starts() -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    #[test]
    fn rate_sums_over_instances_and_filters() {
        let m = "lease_sync_webhooks_received_total";
        let ok: &[(&str, &str)] = &[("outcome", "accepted")];
        let bad: &[(&str, &str)] = &[("outcome", "invalid_signature")];
        let scrapes = vec![
            scrape(0.0, "a", &[(m, ok, 0.0), (m, bad, 0.0)]),
            scrape(0.0, "b", &[(m, ok, 100.0)]),
            scrape(2.0, "a", &[(m, ok, 20.0), (m, bad, 4.0)]),
            scrape(2.0, "b", &[(m, ok, 140.0)]),
        ];
        let store = Store::new(&scrapes, &no_starts());
        let expr = parse(
            "sum(rate(lease_sync_webhooks_received_total{outcome!~\"accepted|duplicate\"}[$__rate_interval]))",
            4.0,
        )
        .unwrap();
        assert_eq!(store.eval(&expr, 2.0)[0].1, 2.0);
        let expr = parse(
            "sum by (outcome) (rate(lease_sync_webhooks_received_total[$__rate_interval]))",
            4.0,
        )
        .unwrap();
        let out = store.eval(&expr, 2.0);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0["outcome"], "accepted");
        assert_eq!(out[0].1, 30.0);
    }

    #[test]
    fn counter_resets_count_from_zero() {
        let m = "c";
        let scrapes = vec![
            scrape(0.0, "a", &[(m, &[], 10.0)]),
            scrape(1.0, "a", &[(m, &[], 2.0)]),
            scrape(2.0, "a", &[(m, &[], 5.0)]),
        ];
        let store = Store::new(&scrapes, &no_starts());
        let expr = parse("sum(increase(c[1h]))", 4.0).unwrap();
        assert_eq!(store.eval(&expr, 2.0)[0].1, 5.0);
    }

    #[test]
    fn counters_start_at_zero_when_their_instance_was_added() {
        // The worker drained everything before its first scrape: without the 0 at the
        // moment it was added, the two identical samples would give a rate of 0.
        let jobs = "lease_sync_jobs_total";
        let bucket = "lease_sync_openapp_request_duration_seconds_bucket";
        let depth = "lease_sync_queue_jobs";
        let converged: &[(&str, &str)] = &[("outcome", "converged")];
        let le: &[(&str, &str)] = &[("le", "0.01")];
        let inf: &[(&str, &str)] = &[("le", "+Inf")];
        let ready: &[(&str, &str)] = &[("state", "ready")];
        let rows: &[Row<'_>] = &[
            (jobs, converged, 40.0),
            (bucket, le, 40.0),
            (bucket, inf, 40.0),
            (depth, ready, 0.0),
        ];
        let scrapes = vec![scrape(10.5, "w", rows), scrape(11.5, "w", rows)];
        let starts = BTreeMap::from([("w".to_owned(), 10.0)]);
        let rate = parse(
            "sum by (outcome) (rate(lease_sync_jobs_total[$__rate_interval]))",
            4.0,
        )
        .unwrap();
        let latency = parse(
            "histogram_quantile(0.5, sum by (le) (rate(lease_sync_openapp_request_duration_seconds_bucket[$__rate_interval])))",
            4.0,
        )
        .unwrap();

        let without = Store::new(&scrapes, &no_starts());
        assert_eq!(without.eval(&rate, 12.0)[0].1, 0.0);
        assert!(without.eval(&latency, 12.0).is_empty());

        let with = Store::new(&scrapes, &starts);
        assert_eq!(with.eval(&rate, 12.0)[0].1, 40.0 / 1.5);
        assert!((with.eval(&latency, 12.0)[0].1 - 0.005).abs() < 1e-12);
        // Gauges get no invented sample.
        let gauge = parse("max by (state) (lease_sync_queue_jobs)", 4.0).unwrap();
        assert!(with.eval(&gauge, 10.2).is_empty());
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let buckets = [
            (0.001, 50.0),
            (0.005, 90.0),
            (0.01, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile(0.5, &buckets).unwrap() - 0.001).abs() < 1e-12);
        assert!((quantile(0.7, &buckets).unwrap() - 0.003).abs() < 1e-12);
        assert!((quantile(0.99, &buckets).unwrap() - 0.0095).abs() < 1e-12);
        assert_eq!(quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn parses_every_query_form_of_the_dashboard() {
        for q in [
            "histogram_quantile(0.99, sum by (le, operation) (rate(lease_sync_openapp_request_duration_seconds_bucket[$__rate_interval])))",
            "max by (state) (lease_sync_queue_jobs)",
            "max(lease_sync_queue_jobs{state=\"dead\"})",
            "count by (version) (lease_sync_build_info)",
            "sum by (kind) (increase(lease_sync_reconcile_drift_total[1h]))",
        ] {
            parse(q, 4.0).unwrap();
        }
    }
}
