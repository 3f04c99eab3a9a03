//! `[log]`: log output.

use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `pretty`: human-readable lines.
    Pretty,
    /// `json`: one JSON object per line.
    Json,
}

/// `[log]`: log output. A filter that does not parse falls back to `info` when logging
/// starts, so there is nothing to validate here.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `format`: `pretty` or `json`.
    pub format: LogFormat,
    /// `level`: filter in `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}
