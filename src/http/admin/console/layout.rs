//! The console's page frame and the small pieces every page uses: one stylesheet inline (no
//! external asset, allowed by its hash in the Content-Security-Policy), navigation, notices,
//! times, and the hidden CSRF field of every form. Everything is escaped by maud.

use std::sync::LazyLock;

use base64::Engine as _;
use maud::{DOCTYPE, Markup, html};
use sha2::{Digest as _, Sha256};

use super::Session;

/// The stylesheet, inline in every page.
pub(super) const STYLE: &str = r"
:root { color-scheme: light; font-family: system-ui, sans-serif; line-height: 1.4; }
body { margin: 0; background: #f6f7f9; color: #1b1f24; }
a { color: #0b57d0; }
a:focus, button:focus, input:focus, select:focus { outline: 3px solid #f0a30a; outline-offset: 2px; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 8px; top: 8px; background: #fff; padding: 4px 8px; z-index: 1; }
header { background: #1b2a41; color: #fff; padding: 8px 16px; display: flex; flex-wrap: wrap; align-items: center; gap: 16px; }
header .brand { font-weight: 700; }
header nav ul { list-style: none; display: flex; flex-wrap: wrap; gap: 12px; margin: 0; padding: 0; }
header nav a { color: #fff; text-decoration: none; padding: 4px 6px; border-radius: 4px; }
header nav a[aria-current=page] { background: #3d5a80; }
header .who { margin-left: auto; font-size: 0.9em; display: flex; gap: 8px; align-items: center; }
main { padding: 16px; max-width: 1200px; }
h1 { font-size: 1.4em; margin-top: 0; }
table { border-collapse: collapse; width: 100%; background: #fff; margin-bottom: 16px; }
th, td { border: 1px solid #d0d5dc; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 0.92em; }
th { background: #e9edf2; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 16px; padding: 0; list-style: none; }
.cards li { background: #fff; border: 1px solid #d0d5dc; border-radius: 6px; padding: 8px 12px; min-width: 150px; }
.cards .n { font-size: 1.6em; font-weight: 700; display: block; }
form.inline { display: inline; }
fieldset { border: 1px solid #d0d5dc; background: #fff; margin-bottom: 16px; }
label { margin-right: 4px; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: end; }
.row div { display: flex; flex-direction: column; }
button, .button { font: inherit; padding: 4px 12px; border-radius: 4px; border: 1px solid #1b2a41; background: #fff; cursor: pointer; }
button.danger { border-color: #b3261e; color: #b3261e; }
.notice { background: #e6f4ea; border: 1px solid #1e8e3e; padding: 8px 12px; margin-bottom: 16px; }
.error { background: #fce8e6; border: 1px solid #b3261e; padding: 8px 12px; margin-bottom: 16px; }
.muted { color: #5f6875; }
code { font-size: 0.95em; }
";

/// `'sha256-…'` of [`STYLE`], for the Content-Security-Policy.
pub(super) static STYLE_HASH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()))
    )
});

/// The pages of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    DeadLetters,
    Residents,
    Conflicts,
    Integrations,
    /// The sign-in page: no navigation.
    None,
}

const NAV: [(Nav, &str, &str); 5] = [
    (Nav::Overview, "/console", "Overview"),
    (Nav::DeadLetters, "/console/dead-letters", "Dead letters"),
    (Nav::Residents, "/console/residents", "Residents"),
    (Nav::Conflicts, "/console/conflicts", "Conflicts"),
    (Nav::Integrations, "/console/integrations", "Integrations"),
];

/// A whole page: `title`, the navigation with `current` marked, a notice or error if any,
/// then `body`.
pub(super) fn page(
    title: &str,
    session: Option<&Session>,
    current: Nav,
    flash: Option<&Flash>,
    body: &Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · lease-sync console" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "lease-sync" }
                    @if current != Nav::None {
                        nav aria-label="Main" {
                            ul {
                                @for (nav, href, label) in NAV {
                                    li {
                                        @if nav == current {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(session) = session {
                        div.who {
                            span { "Signed in as " strong { (session.actor) } " (" (session.scope_name()) ")" }
                            form.inline method="post" action="/console/logout" {
                                (csrf_field(session))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    @if let Some(flash) = flash {
                        @match flash {
                            Flash::Notice(text) => div.notice role="status" { (text) },
                            Flash::Error(text) => div.error role="alert" { (text) },
                        }
                    }
                    (body)
                }
            }
        }
    }
}

/// A message shown above a page's content.
#[derive(Debug, Clone)]
pub(super) enum Flash {
    /// Something was done.
    Notice(String),
    /// Something could not be done.
    Error(String),
}

/// The hidden CSRF field every form of a signed-in page carries.
pub(super) fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// `2026-12-03 21:04:09Z` for a time in ms since the epoch.
pub(super) fn when(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `3 min ago` / `in 2 h` relative to `now` (both ms), for a person scanning a table.
pub(super) fn ago(ms: i64, now: i64) -> String {
    let seconds = (now - ms) / 1000;
    let (n, future) = if seconds >= 0 {
        (seconds, false)
    } else {
        (-seconds, true)
    };
    let text = match n {
        0..60 => format!("{n} s"),
        60..3_600 => format!("{} min", n / 60),
        3_600..172_800 => format!("{} h", n / 3_600),
        _ => format!("{} days", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_for_people() {
        assert_eq!(when(1_795_342_500_000), "2026-11-22 10:15:00Z");
        assert_eq!(ago(0, 30_000), "30 s ago");
        assert_eq!(ago(0, 7_200_000), "2 h ago");
        assert_eq!(ago(10_000_000_000, 0), "in 115 days");
    }

    #[test]
    fn the_style_hash_is_a_csp_source() {
        assert!(STYLE_HASH.starts_with("'sha256-") && STYLE_HASH.ends_with("='"));
    }
}
