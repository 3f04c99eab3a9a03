//! Renders `deploy/grafana/lease-sync.json` as a static HTML page from a run's scrapes: the
//! same panels at the same grid positions, each query evaluated by [`crate::promql`], one SVG
//! chart per panel. Headless Chromium turns the page into `dashboard.png`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::promql::{self, Labels, Store};
use crate::scrape::Recorded;

/// Panels that must show data after a run that ingested and drained events.
pub const REQUIRED: &[&str] = &[
    "Webhooks by outcome",
    "Queue depth",
    "OpenApp latency",
    "Jobs by outcome",
];

/// Page width in CSS pixels (the screenshot's width).
pub const PAGE_WIDTH: u32 = 1600;

/// Height of one Grafana grid unit in pixels.
const ROW_PX: u32 = 30;

/// Grafana's classic palette.
const COLORS: &[&str] = &[
    "#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
    "#37872d", "#fade2a",
];

/// A phase of the run, shaded on the charts.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Short name.
    pub name: String,
    /// Start, seconds on the scraper's clock.
    pub start: f64,
    /// End.
    pub end: f64,
}

/// One evaluated series.
struct Series {
    legend: String,
    points: Vec<(f64, Option<f64>)>,
}

/// What the page shows, for the caller's checks.
#[derive(Debug, Default)]
pub struct Rendered {
    /// The HTML.
    pub html: String,
    /// Height of the page in pixels.
    pub height: u32,
    /// Panel titles with at least one non-zero value.
    pub with_data: Vec<String>,
    /// Panel titles with no value at all, or only zeros.
    pub without_data: Vec<String>,
}

/// Renders `dashboard_json` over `recorded`; `interval` is the scrape interval in seconds.
pub fn render(
    dashboard_json: &str,
    recorded: &Recorded,
    phases: &[Phase],
    interval: f64,
    caption: &str,
) -> anyhow::Result<Rendered> {
    if interval <= 0.0 {
        bail!("the dashboard needs a positive scrape interval");
    }
    let dashboard: Value = serde_json::from_str(dashboard_json).context("dashboard JSON")?;
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    let scrapes = &recorded.scrapes;
    let store = Store::new(scrapes, &recorded.fresh_since);
    let t_end = scrapes.iter().map(|s| s.t).fold(0.0, f64::max);
    let t_start = scrapes.iter().map(|s| s.t).fold(t_end, f64::min);
    let times: Vec<f64> = (0..)
        .map(|k| t_start + f64::from(k) * interval)
        .take_while(|t| *t <= t_end + 1e-9)
        .collect();
    let rate_interval = 4.0 * interval;

    let mut rendered = Rendered::default();
    let mut body = String::new();
    let mut bottom = 0;
    for panel in panels {
        let kind = panel["type"].as_str().unwrap_or_default();
        let title = panel["title"].as_str().unwrap_or_default();
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().unwrap_or(0) as u32,
            grid["y"].as_u64().unwrap_or(0) as u32,
            grid["w"].as_u64().unwrap_or(24) as u32,
            grid["h"].as_u64().unwrap_or(8) as u32,
        );
        bottom = bottom.max((y + h) * ROW_PX);
        let style = format!(
            "left:{}px;top:{}px;width:{}px;height:{}px",
            x * PAGE_WIDTH / 24 + 4,
            y * ROW_PX + 4,
            w * PAGE_WIDTH / 24 - 8,
            h * ROW_PX - 8
        );
        if kind == "row" {
            let _ = write!(
                body,
                "<div class=row style=\"{style}\">{}</div>",
                escape(title)
            );
            continue;
        }
        let unit = panel["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or("short");
        let mut series = Vec::new();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let query = target["expr"].as_str().unwrap_or_default();
            let expr = promql::parse(query, rate_interval)
                .with_context(|| format!("panel `{title}`: cannot evaluate `{query}`"))?;
            let legend = target["legendFormat"].as_str();
            let mut by_labels: BTreeMap<Labels, Vec<(f64, Option<f64>)>> = BTreeMap::new();
            for (i, &t) in times.iter().enumerate() {
                for (labels, value) in store.eval(&expr, t) {
                    let entry = by_labels
                        .entry(labels)
                        .or_insert_with(|| vec![(0.0, None); times.len()]);
                    entry[i] = (t, value.is_finite().then_some(value));
                }
            }
            for (labels, mut points) in by_labels {
                for (i, point) in points.iter_mut().enumerate() {
                    point.0 = times[i];
                }
                series.push(Series {
                    legend: legend_of(legend, &labels, title),
                    points,
                });
            }
        }
        let has_data = series
            .iter()
            .any(|s| s.points.iter().any(|(_, v)| v.is_some_and(|v| v != 0.0)));
        if has_data {
            rendered.with_data.push(title.to_owned());
        } else {
            rendered.without_data.push(title.to_owned());
        }
        let inner_w = w * PAGE_WIDTH / 24 - 8 - 16;
        let inner_h = h * ROW_PX - 8 - 30;
        let content = if kind == "stat" {
            stat(&series, unit, inner_w, inner_h, panel)
        } else {
            timeseries(&series, unit, inner_w, inner_h, phases, (t_start, t_end))
        };
        let _ = write!(
            body,
            "<div class=panel style=\"{style}\"><div class=title>{}</div>{content}</div>",
            escape(title)
        );
    }
    let phases_text: Vec<String> = phases
        .iter()
        .map(|p| {
            format!(
                "{} {:.0}–{:.0} s",
                escape(&p.name),
                p.start - t_start,
                p.end - t_start
            )
        })
        .collect();
    let height = bottom + 110;
    rendered.height = height;
    rendered.html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><meta name="bench-size" content="{PAGE_WIDTH}x{height}"><title>lease-sync dashboard (benchmark run)</title>
<style>
body{{margin:0;background:#111217;color:#ccccdc;font:12px/1.3 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;width:{PAGE_WIDTH}px}}
header{{padding:10px 12px 4px;height:86px;box-sizing:border-box}}
header h1{{font-size:17px;margin:0 0 4px;color:#e8e8f0;font-weight:500}}
header p{{margin:0;color:#9fa1ad;font-size:11px}}
#grid{{position:relative;height:{bottom}px}}
.panel{{position:absolute;background:#181b1f;border:1px solid #26292f;border-radius:3px;box-sizing:border-box;padding:4px 8px}}
.row{{position:absolute;font-size:14px;font-weight:500;color:#e8e8f0;padding-top:6px}}
.title{{font-weight:500;color:#e8e8f0;height:18px;white-space:nowrap;overflow:hidden}}
.legend{{font-size:10.5px;color:#ccccdc;margin-top:1px;line-height:14px;max-height:42px;overflow:hidden}}
.legend span{{margin-right:12px;white-space:nowrap}}
.legend i{{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}}
.stat{{font-size:34px;font-weight:500;text-align:left;padding-top:4px}}
.nodata{{color:#6e7079;font-size:13px;padding-top:30px;text-align:center}}
svg text{{fill:#9fa1ad;font-size:10px}}
</style></head><body>
<header><h1>lease-sync — {title}</h1>
<p>{caption}</p>
<p>Panels and queries from deploy/grafana/lease-sync.json, evaluated over {n} scrapes of the instances' /metrics every {interval:.0} s. Approximations: $__rate_interval = {rate_interval:.0} s; rate/increase without extrapolation; counters are 0 when their process starts; 1.5 s instant lookback; [1h] = whole run. Shaded: {phases}.</p></header>
<div id=grid>{body}</div></body></html>"#,
        title = escape(dashboard["title"].as_str().unwrap_or("dashboard")),
        caption = escape(caption),
        n = scrapes.len(),
        phases = phases_text.join(" · "),
    );
    Ok(rendered)
}

/// Fails unless every panel in [`REQUIRED`] shows data.
pub fn check_required(rendered: &Rendered) -> anyhow::Result<()> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|title| !rendered.with_data.iter().any(|t| t == title))
        .collect();
    if !missing.is_empty() {
        bail!("dashboard panels without data: {}", missing.join(", "));
    }
    Ok(())
}

fn legend_of(format: Option<&str>, labels: &Labels, title: &str) -> String {
    match format {
        Some(format) => {
            let mut out = format.to_owned();
            for (k, v) in labels {
                out = out.replace(&format!("{{{{{k}}}}}"), v);
            }
            // Placeholders of labels the series lacks render empty, as in Grafana.
            while let (Some(a), Some(b)) = (out.find("{{"), out.find("}}")) {
                if b < a {
                    break;
                }
                out.replace_range(a..b + 2, "");
            }
            let out = out.trim().to_owned();
            if out.is_empty() {
                title.to_owned()
            } else {
                out
            }
        }
        None if labels.is_empty() => title.to_owned(),
        None => labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A value in the panel's unit.
fn format_value(value: f64, unit: &str) -> String {
    let short = |v: f64| {
        let a = v.abs();
        if a >= 1e6 {
            format!("{:.1}M", v / 1e6)
        } else if a >= 1e4 {
            format!("{:.0}k", v / 1e3)
        } else if a >= 1e3 {
            format!("{:.1}k", v / 1e3)
        } else if a >= 10.0 || v == 0.0 {
            format!("{v:.0}")
        } else if a >= 1.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    match unit {
        "s" => {
            if value == 0.0 {
                "0 s".into()
            } else if value.abs() < 1e-3 {
                format!("{:.0} µs", value * 1e6)
            } else if value.abs() < 1.0 {
                format!("{:.1} ms", value * 1e3)
            } else {
                format!("{value:.1} s")
            }
        }
        "reqps" => format!("{} req/s", short(value)),
        "ops" => format!("{} ops/s", short(value)),
        _ => short(value),
    }
}

fn stat(series: &[Series], unit: &str, w: u32, h: u32, panel: &Value) -> String {
    let reducer = panel["options"]["reduceOptions"]["calcs"][0]
        .as_str()
        .unwrap_or("lastNotNull");
    let Some(first) = series.first() else {
        return "<div class=nodata>No data</div>".into();
    };
    let values: Vec<f64> = first.points.iter().filter_map(|(_, v)| *v).collect();
    let value = match reducer {
        "max" => values.iter().copied().fold(f64::MIN, f64::max),
        "mean" => values.iter().sum::<f64>() / values.len().max(1) as f64,
        _ => values.last().copied().unwrap_or(f64::NAN),
    };
    let peak = values.iter().copied().fold(0.0, f64::max);
    let color = COLORS[0];
    let spark_h = h.saturating_sub(52).max(20);
    let mut svg = format!("<svg width=\"{w}\" height=\"{spark_h}\">");
    if peak > 0.0 && first.points.len() > 1 {
        let t0 = first.points[0].0;
        let t1 = first.points[first.points.len() - 1].0;
        let mut path = String::new();
        for (t, v) in &first.points {
            if let Some(v) = v {
                let x = (t - t0) / (t1 - t0).max(1e-9) * f64::from(w);
                let y = f64::from(spark_h) - v / peak * f64::from(spark_h - 2);
                let _ = write!(
                    path,
                    "{}{x:.1},{y:.1} ",
                    if path.is_empty() { "M" } else { "L" }
                );
            }
        }
        let _ = write!(
            svg,
            "<path d=\"{path}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" opacity=\"0.8\"/>"
        );
    }
    svg.push_str("</svg>");
    format!(
        "<div class=stat style=\"color:{color}\">{}</div><div style=\"font-size:10.5px;color:#9fa1ad\">{reducer}; peak during the run {}</div>{svg}",
        if value.is_finite() {
            format_value(value, unit)
        } else {
            "No data".into()
        },
        format_value(peak, unit)
    )
}

fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = range / ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    let residual = raw / magnitude;
    let nice = if residual > 5.0 {
        10.0
    } else if residual > 2.0 {
        5.0
    } else if residual > 1.0 {
        2.0
    } else {
        1.0
    };
    nice * magnitude
}

fn timeseries(
    series: &[Series],
    unit: &str,
    w: u32,
    h: u32,
    phases: &[Phase],
    (t0, t1): (f64, f64),
) -> String {
    let legend_h = if series.len() > 3 { 30 } else { 16 };
    let h = h.saturating_sub(legend_h);
    let (left, right, top, bottom) = (62.0, 8.0, 6.0, 16.0);
    let plot_w = f64::from(w) - left - right;
    let plot_h = f64::from(h) - top - bottom;
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|(_, v)| *v))
        .fold(0.0, f64::max);
    let y_max = if max > 0.0 { max * 1.1 } else { 1.0 };
    let span = (t1 - t0).max(1.0);
    let x = |t: f64| left + (t - t0) / span * plot_w;
    let y = |v: f64| top + plot_h - v / y_max * plot_h;
    let mut svg = format!("<svg width=\"{w}\" height=\"{h}\">");
    for (i, phase) in phases.iter().enumerate() {
        let (a, b) = (x(phase.start.max(t0)), x(phase.end.min(t1)));
        if b > a {
            let _ = write!(
                svg,
                "<rect x=\"{a:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{plot_h:.1}\" fill=\"{}\" opacity=\"0.07\"/>",
                b - a,
                if i % 2 == 0 { "#8ab8ff" } else { "#ffffff" }
            );
            if b - a > 40.0 {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" opacity=\"0.7\">{}</text>",
                    a + 2.0,
                    top + 9.0,
                    escape(&phase.name)
                );
            }
        }
    }
    let step = nice_step(y_max, 4.0);
    let mut v = 0.0;
    while v <= y_max {
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#2c3038\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 4.0,
            y(v) + 3.0,
            escape(&format_value(v, unit)),
            yy = y(v),
        );
        v += step;
    }
    let x_step = nice_step(span, 8.0).max(1.0);
    let mut t = 0.0;
    while t <= span {
        let secs = t.round() as u64;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}:{:02}</text>",
            x(t0 + t),
            f64::from(h) - 3.0,
            secs / 60,
            secs % 60
        );
        t += x_step;
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut path = String::new();
        let mut pen_down = false;
        for (t, v) in &s.points {
            match v {
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(*t),
                        y(*v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = write!(
                svg,
                "<path d=\"{path}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.4\"/>"
            );
        }
    }
    svg.push_str("</svg>");
    let legend: String = if series.is_empty() {
        "<span>No data</span>".into()
    } else {
        series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let peak = s
                    .points
                    .iter()
                    .filter_map(|(_, v)| *v)
                    .fold(f64::NAN, f64::max);
                format!(
                    "<span><i style=\"background:{}\"></i>{} <b>max {}</b></span>",
                    COLORS[i % COLORS.len()],
                    escape(&s.legend),
                    if peak.is_finite() {
                        escape(&format_value(peak, unit))
                    } else {
                        "–".into()
                    }
                )
            })
            .collect()
    };
    format!("{svg}<div class=legend>{legend}</div>")
}
