//! The file of active leases: loading it (a local file or an http(s) URL), telling CSV from
//! JSON, and validating every row before anything is compared or applied.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{SourceSettings, redacted_location};
use crate::event::{MAX_ID_LEN, is_valid_path_id};

/// Largest file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

/// Limit on fetching the file over HTTP, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Most row errors reported at once; the rest are counted.
const MAX_ROW_ERRORS: usize = 20;

/// The CSV header names (the last two columns may be absent).
const COLUMNS: [&str; 5] = [
    "lease_id",
    "property_id",
    "openapp_user_id",
    "starts_at",
    "ends_at",
];

/// One row of the file: one person on one active lease of the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    /// The source's lease id.
    pub lease_id: String,
    /// The source's building id; mapped under the source.
    pub property_id: String,
    /// The OpenApp user; `[A-Za-z0-9_-]{1,64}`.
    #[serde(rename = "openapp_user_id")]
    pub user_id: String,
    /// Access begins; `None` = already.
    #[serde(with = "time::serde::rfc3339::option")]
    pub starts_at: Option<OffsetDateTime>,
    /// Access ends; `None` = open-ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ends_at: Option<OffsetDateTime>,
    /// Where the row is: `line 3` (CSV, counting the header) or `entry [2]` (JSON).
    #[serde(skip)]
    pub at: String,
}

impl LeaseRow {
    /// Whether the row grants access at `now`: inside `[starts_at, ends_at)`.
    pub fn grants_access(&self, now: OffsetDateTime) -> bool {
        self.starts_at.is_none_or(|s| s <= now) && self.ends_at.is_none_or(|e| now < e)
    }
}

/// The file formats understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A header row `lease_id,property_id,openapp_user_id[,starts_at[,ends_at]]`, then rows.
    Csv,
    /// An array of objects with those keys.
    Json,
}

impl Format {
    /// The format of the file at `location` holding `bytes`: by the extension (`.csv`,
    /// `.json`, of the URL path for a URL), else JSON when the first non-space character is
    /// `[`, else CSV.
    pub fn detect(location: &str, bytes: &[u8]) -> Self {
        let path = match url::Url::parse(location) {
            Ok(url) if is_url(location) => url.path().to_owned(),
            _ => location.to_owned(),
        };
        let extension = std::path::Path::new(&path)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("csv") => Self::Csv,
            Some("json") => Self::Json,
            _ => {
                let first = strip_bom(bytes).iter().find(|b| !b.is_ascii_whitespace());
                if first == Some(&b'[') {
                    Self::Json
                } else {
                    Self::Csv
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Csv => "CSV",
            Self::Json => "JSON",
        }
    }
}

/// One invalid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// `line 3` or `entry [2]`.
    pub at: String,
    /// The field and what is wrong with it.
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Why the file cannot be used. Nothing is compared or applied when any of these occurs.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read or fetched.
    #[error("cannot read {location}: {cause}")]
    Read {
        /// The file or URL (credentials and query redacted).
        location: String,
        /// What went wrong.
        #[source]
        cause: ReadFailure,
    },
    /// Not CSV or JSON of the expected shape at all.
    #[error("{location} is not valid {format}: {cause}")]
    Syntax {
        /// The file or URL (redacted).
        location: String,
        /// `CSV` or `JSON`.
        format: &'static str,
        /// What is wrong, with the line or entry where known.
        #[source]
        cause: SyntaxError,
    },
    /// No rows at all: more likely a failed export than a source without a single active
    /// lease, and taken as the truth it would remove everyone lease-sync manages.
    #[error(
        "{location} lists no active leases; refusing to reconcile against an empty file (it would remove every resident lease-sync manages)"
    )]
    Empty {
        /// The file or URL (redacted).
        location: String,
    },
    /// Some rows are invalid.
    #[error(
        "{} invalid row(s) in {location}: {}{}",
        total,
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        if *total > errors.len() { "; …" } else { "" }
    )]
    InvalidRows {
        /// The file or URL (redacted).
        location: String,
        /// The first invalid rows, in file order.
        errors: Vec<RowError>,
        /// How many rows are invalid in all.
        total: usize,
    },
}

/// Why the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    /// A local file: missing, unreadable.
    #[error(transparent)]
    File(#[from] std::io::Error),
    /// A URL: no (complete) answer. Never names the URL.
    #[error("{}", .0.message)]
    Fetch(#[from] crate::outbound::TransportError),
    /// A URL that answered with a status other than success.
    #[error("the server answered {0}")]
    Status(::http::StatusCode),
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
}

/// Why the file is not CSV or JSON of the expected shape.
#[derive(Debug, thiserror::Error)]
pub enum SyntaxError {
    /// The CSV header row cannot be read.
    #[error("header row: {0}")]
    CsvHeader(#[source] csv::Error),
    /// The CSV header row lacks a required column.
    #[error(
        "the header row must name lease_id, property_id and openapp_user_id (and optionally starts_at, ends_at); `{0}` is missing"
    )]
    MissingColumn(&'static str),
    /// Not a JSON array.
    #[error(
        "{0} (expected an array of objects with lease_id, property_id, openapp_user_id, starts_at, ends_at)"
    )]
    Json(#[source] serde_json::Error),
}

/// Whether `location` is an http(s) URL rather than a path.
pub fn is_url(location: &str) -> bool {
    let lower = location.trim_start().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Reads the file at `location`: a local path, or an http(s) URL fetched with a GET
/// (bounded by [`FETCH_TIMEOUT`] and [`MAX_FILE_BYTES`]).
pub async fn load(location: &str) -> Result<Vec<u8>, InputError> {
    let read_error = |cause: ReadFailure| InputError::Read {
        location: redacted_location(location),
        cause,
    };
    if is_url(location) {
        return fetch(location.trim()).await.map_err(read_error);
    }
    let metadata = tokio::fs::metadata(location)
        .await
        .map_err(|e| read_error(e.into()))?;
    if metadata.len() > MAX_FILE_BYTES as u64 {
        return Err(read_error(ReadFailure::TooLarge));
    }
    tokio::fs::read(location)
        .await
        .map_err(|e| read_error(e.into()))
}

/// GETs `url`; the error never contains the URL (it may carry a token).
async fn fetch(url: &str) -> Result<Vec<u8>, ReadFailure> {
    use crate::outbound::{
        BodyLimit, ClientOptions, HttpClient, Redirects, Request, TransportError, TransportKind,
    };
    let client = HttpClient::new(ClientOptions {
        timeout: FETCH_TIMEOUT,
        connect_timeout: Duration::from_secs(10),
        redirects: Redirects::Limited(5),
        https_only: false,
    })
    .map_err(|e| TransportError {
        kind: TransportKind::Io,
        message: e.to_string(),
    })?;
    let url = url::Url::parse(url).map_err(|e| TransportError {
        kind: TransportKind::Io,
        message: format!("not a URL: {e}"),
    })?;
    let response = client
        .send(
            Request::new(::http::Method::GET, url),
            BodyLimit::Fail(MAX_FILE_BYTES),
        )
        .await
        .map_err(|e| match e.kind {
            TransportKind::Body => ReadFailure::TooLarge,
            _ => ReadFailure::Fetch(e),
        })?;
    if !response.status.is_success() {
        return Err(ReadFailure::Status(response.status));
    }
    Ok(response.body.to_vec())
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Parses and validates the rows of the file at `location` (for messages) holding `bytes`,
/// as active leases of `source`. Every row is checked; all problems (up to 20) are reported.
pub fn parse(
    location: &str,
    bytes: &[u8],
    source: &SourceSettings,
) -> Result<Vec<LeaseRow>, InputError> {
    let format = Format::detect(location, bytes);
    let location = redacted_location(location);
    let syntax = |cause: SyntaxError| InputError::Syntax {
        location: location.clone(),
        format: format.name(),
        cause,
    };
    let raw = match format {
        Format::Csv => csv_rows(strip_bom(bytes)).map_err(syntax)?,
        Format::Json => json_rows(strip_bom(bytes)).map_err(syntax)?,
    };
    let mut rows = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    let mut total = 0;
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    for fields in raw {
        let checked = fields.and_then(|f| validate(f, source)).and_then(|row| {
            let key = (row.lease_id.clone(), row.user_id.clone());
            match seen.get(&key) {
                Some(first) => Err(RowError {
                    at: row.at.clone(),
                    message: format!(
                        "lease `{}` of openapp_user_id `{}` is already listed at {first}",
                        row.lease_id, row.user_id
                    ),
                }),
                None => {
                    seen.insert(key, row.at.clone());
                    Ok(row)
                }
            }
        });
        match checked {
            Ok(row) => rows.push(row),
            Err(e) => {
                total += 1;
                if errors.len() < MAX_ROW_ERRORS {
                    errors.push(e);
                }
            }
        }
    }
    if total > 0 {
        return Err(InputError::InvalidRows {
            location,
            errors,
            total,
        });
    }
    if rows.is_empty() {
        return Err(InputError::Empty { location });
    }
    Ok(rows)
}

/// A row as read, before validation: where it is and its five fields (empty = absent).
struct RawRow {
    at: String,
    fields: [Option<String>; 5],
}

fn csv_rows(bytes: &[u8]) -> Result<Vec<Result<RawRow, RowError>>, SyntaxError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = reader.headers().map_err(SyntaxError::CsvHeader)?.clone();
    let index: Vec<Option<usize>> = COLUMNS
        .iter()
        .map(|name| headers.iter().position(|h| h.eq_ignore_ascii_case(name)))
        .collect();
    if let Some(missing) = COLUMNS[..3]
        .iter()
        .zip(&index)
        .find_map(|(name, i)| i.is_none().then_some(name))
    {
        return Err(SyntaxError::MissingColumn(missing));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let at = line_of(bytes, e.position());
                rows.push(Err(RowError {
                    at,
                    message: e.to_string(),
                }));
                continue;
            }
        };
        let at = line_of(bytes, record.position());
        let fields = std::array::from_fn(|c| {
            index[c]
                .and_then(|i| record.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        });
        rows.push(Ok(RawRow { at, fields }));
    }
    Ok(rows)
}

/// `line N` of the record read from `position`, counted from the bytes: csv's own line
/// count skips blank lines.
fn line_of(bytes: &[u8], position: Option<&csv::Position>) -> String {
    position.map_or_else(
        || "a row".to_owned(),
        |p| {
            let mut start = usize::try_from(p.byte())
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            // A record's position is where reading began, before the blank lines it skipped.
            while bytes.get(start).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
                start += 1;
            }
            let newlines = bytes[..start].iter().filter(|b| **b == b'\n').count();
            format!("line {}", newlines + 1)
        },
    )
}

fn json_rows(bytes: &[u8]) -> Result<Vec<Result<RawRow, RowError>>, SyntaxError> {
    let values: Vec<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(SyntaxError::Json)?;
    Ok(values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let at = format!("entry [{i}]");
            let Some(object) = value.as_object() else {
                return Err(RowError {
                    at,
                    message: "must be an object".into(),
                });
            };
            let mut fields: [Option<String>; 5] = Default::default();
            for (c, name) in COLUMNS.iter().enumerate() {
                fields[c] = match object.get(*name) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => {
                        Some(s.trim().to_owned()).filter(|s| !s.is_empty())
                    }
                    Some(_) => {
                        return Err(RowError {
                            at,
                            message: format!("{name}: must be a string"),
                        });
                    }
                };
            }
            Ok(RawRow { at, fields })
        })
        .collect())
}

fn validate(raw: RawRow, source: &SourceSettings) -> Result<LeaseRow, RowError> {
    let RawRow { at, fields } = raw;
    let fail = |message: String| RowError {
        at: at.clone(),
        message,
    };
    let [lease_id, property_id, user_id, starts_at, ends_at] = fields;
    let required = |value: Option<String>, name: &str| {
        value.ok_or_else(|| fail(format!("{name}: is required")))
    };
    let lease_id = required(lease_id, "lease_id")?;
    let property_id = required(property_id, "property_id")?;
    let user_id = required(user_id, "openapp_user_id")?;
    for (name, value) in [("lease_id", &lease_id), ("property_id", &property_id)] {
        if value.len() > MAX_ID_LEN {
            return Err(fail(format!("{name}: must be at most {MAX_ID_LEN} bytes")));
        }
        if value.chars().any(char::is_control) {
            return Err(fail(format!("{name}: must not contain control characters")));
        }
    }
    if !is_valid_path_id(&user_id) {
        return Err(fail(
            "openapp_user_id: must match [A-Za-z0-9_-]{1,64}".into(),
        ));
    }
    if !source.properties.iter().any(|p| p.id == property_id) {
        return Err(fail(format!(
            "property_id: `{property_id}` is not mapped under source `{}`",
            source.name
        )));
    }
    let time = |value: Option<String>, name: &str| {
        value
            .map(|v| {
                OffsetDateTime::parse(&v, &Rfc3339).map_err(|_| {
                    fail(format!(
                        "{name}: must be an RFC 3339 timestamp such as 2026-11-22T10:15:00Z"
                    ))
                })
            })
            .transpose()
    };
    let starts_at = time(starts_at, "starts_at")?;
    let ends_at = time(ends_at, "ends_at")?;
    if let (Some(s), Some(e)) = (starts_at, ends_at)
        && e < s
    {
        return Err(fail("ends_at: must not be before starts_at".into()));
    }
    Ok(LeaseRow {
        lease_id,
        property_id,
        user_id,
        starts_at,
        ends_at,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PropertySettings;

    fn source() -> SourceSettings {
        SourceSettings {
            name: "acme".into(),
            properties: vec![PropertySettings::new("P-17", "org", "int")],
            ..SourceSettings::named("acme")
        }
    }

    fn invalid(location: &str, text: &str) -> (Vec<RowError>, usize) {
        match parse(location, text.as_bytes(), &source()) {
            Err(InputError::InvalidRows { errors, total, .. }) => (errors, total),
            other => panic!("expected invalid rows, got {other:?}"),
        }
    }

    #[test]
    fn formats_are_told_by_extension_then_by_content() {
        assert_eq!(Format::detect("a.CSV", b"[x"), Format::Csv);
        assert_eq!(Format::detect("a.json", b"lease_id"), Format::Json);
        assert_eq!(
            Format::detect("https://h/x/leases.json?sig=1", b""),
            Format::Json
        );
        assert_eq!(Format::detect("-", b"\xEF\xBB\xBF \n [ {}]"), Format::Json);
        assert_eq!(
            Format::detect("leases", b"lease_id,property_id"),
            Format::Csv
        );
    }

    #[test]
    fn csv_rows_parse_with_optional_windows_and_any_column_order() {
        let text = "\u{feff}openapp_user_id, lease_id ,property_id,ends_at,starts_at,unit\n\
                    u-1,L-1,P-17,,,4B\n\
                    \n\
                    u-2,L-2,P-17,2027-01-01T00:00:00Z,2026-01-01T00:00:00+01:00\n";
        let rows = parse("x.csv", text.as_bytes(), &source()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].user_id.as_str(), rows[0].lease_id.as_str()),
            ("u-1", "L-1")
        );
        assert_eq!((rows[0].starts_at, rows[0].ends_at), (None, None));
        assert_eq!(rows[0].at, "line 2");
        assert_eq!(rows[1].at, "line 4");
        assert!(rows[1].starts_at.is_some() && rows[1].ends_at.is_some());

        // The last two columns may be left out altogether.
        let rows = parse(
            "x.csv",
            b"lease_id,property_id,openapp_user_id\nL,P-17,u\n",
            &source(),
        )
        .unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn json_rows_parse() {
        let text = r#"[{"lease_id":"L-1","property_id":"P-17","openapp_user_id":"u-1","starts_at":null,"extra":1},
                       {"lease_id":"L-2","property_id":"P-17","openapp_user_id":"u-2","ends_at":"2030-01-01T00:00:00Z"}]"#;
        let rows = parse("leases", text.as_bytes(), &source()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].at, "entry [1]");
        assert!(rows[1].ends_at.is_some());
    }

    #[test]
    fn every_bad_row_is_named_by_line_or_entry() {
        let text = "lease_id,property_id,openapp_user_id,starts_at,ends_at\n\
                    L-1,P-17,u-1,,\n\
                    L-2,P-17,../admin,,\n\
                    L-3,P-99,u-3,,\n\
                    L-4,P-17,u-4,tomorrow,\n\
                    L-5,P-17,u-5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z\n\
                    ,P-17,u-6,,\n\
                    L-1,P-17,u-1,,\n";
        let (errors, total) = invalid("x.csv", text);
        assert_eq!(total, 6);
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(got[0].starts_with("line 3: openapp_user_id"), "{got:?}");
        assert!(
            got[1].starts_with("line 4: property_id: `P-99` is not mapped under source `acme`"),
            "{got:?}"
        );
        assert!(
            got[2].starts_with("line 5: starts_at: must be an RFC 3339"),
            "{got:?}"
        );
        assert!(got[3].starts_with("line 6: ends_at"), "{got:?}");
        assert!(
            got[4].starts_with("line 7: lease_id: is required"),
            "{got:?}"
        );
        assert!(
            got[5].contains("line 8") && got[5].contains("already listed at line 2"),
            "{got:?}"
        );

        let (errors, _) = invalid(
            "x.json",
            r#"[{"lease_id":"L","property_id":"P-17","openapp_user_id":"u"}, 7,
                {"lease_id":"L","property_id":"P-17","openapp_user_id":5}]"#,
        );
        assert_eq!(errors[0].to_string(), "entry [1]: must be an object");
        assert_eq!(
            errors[1].to_string(),
            "entry [2]: openapp_user_id: must be a string"
        );
    }

    #[test]
    fn an_empty_file_is_refused() {
        for (location, text) in [("x.csv", HEADER_ONLY), ("x.json", "[]"), ("x.csv", "")] {
            let err = parse(location, text.as_bytes(), &source()).unwrap_err();
            assert!(
                matches!(err, InputError::Empty { .. } | InputError::Syntax { .. }),
                "{location}: {err}"
            );
        }
        assert!(matches!(
            parse("x.csv", HEADER_ONLY.as_bytes(), &source()),
            Err(InputError::Empty { .. })
        ));
    }

    const HEADER_ONLY: &str = "lease_id,property_id,openapp_user_id\n";

    #[test]
    fn files_of_the_wrong_shape_are_syntax_errors() {
        for (location, text) in [
            ("x.csv", "user,lease\nu,L\n"),
            ("x.json", "{\"lease_id\": \"L\"}"),
            ("x.json", "[{"),
        ] {
            let err = parse(location, text.as_bytes(), &source()).unwrap_err();
            assert!(
                matches!(err, InputError::Syntax { .. }),
                "{location}: {err}"
            );
        }
    }

    #[test]
    fn windows_are_half_open() {
        let at = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
        let row = LeaseRow {
            lease_id: "L".into(),
            property_id: "P".into(),
            user_id: "u".into(),
            starts_at: Some(at("2026-01-01T00:00:00Z")),
            ends_at: Some(at("2026-02-01T00:00:00Z")),
            at: "line 2".into(),
        };
        assert!(!row.grants_access(at("2025-12-31T23:59:59Z")));
        assert!(row.grants_access(at("2026-01-01T00:00:00Z")));
        assert!(!row.grants_access(at("2026-02-01T00:00:00Z")));
    }

    #[test]
    fn urls_in_errors_are_redacted() {
        let err = parse("https://u:pw@h/x.json?token=abc", b"[1]", &source()).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("pw") && !text.contains("abc"), "{text}");
    }
}
