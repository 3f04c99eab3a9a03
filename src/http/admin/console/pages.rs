//! The console's pages and the forms they post. Each GET renders a whole page; each POST
//! checks the session's CSRF token and scope, acts through the same services as the admin
//! API (audited the same way), and redirects to a page that says what happened.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tracing::info;

use super::layout::{Flash, Nav, ago, csrf_field, page, when};
use super::{Session, refused, unavailable};
use crate::dead_letters::{DeadLetterFilter, ReplayOutcome};
use crate::event::{EventType, is_valid_path_id};
use crate::history::HistoryEntry;
use crate::http::admin::AdminState;
use crate::http::admin::handlers::{replay_all, write_audit};
use crate::integrations::IntegrationError;
use crate::leases::LeaseError;
use crate::queue::now_ms;
use crate::retry::DeadReason;

/// Rows of a dead-letter page.
const PAGE_SIZE: usize = 50;

/// Entries of a resident's history shown.
const HISTORY_SHOWN: usize = 200;

/// A page answer.
fn render(
    title: &str,
    session: &Session,
    nav: Nav,
    flash: Option<&Flash>,
    body: &Markup,
) -> Response {
    Html(page(title, Some(session), nav, flash, body).into_string()).into_response()
}

/// What a redirect after a change tells the next page (`?done=…&n=…`): only these codes, so
/// no text from a request is ever echoed.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Done {
    done: Option<String>,
    n: Option<u64>,
}

impl Done {
    fn flash(&self) -> Option<Flash> {
        let n = self.n.unwrap_or(0);
        let text = match self.done.as_deref()? {
            "replayed" => {
                "Dead letter replayed: it is queued again with a fresh attempt budget.".to_owned()
            }
            "purged" => "Dead letter purged.".to_owned(),
            "bulk-replayed" => format!("{n} dead letter(s) replayed."),
            "bulk-purged" => format!("{n} dead letter(s) purged."),
            "not-dead" => {
                return Some(Flash::Error(
                    "That entry is no longer a dead letter (someone replayed or purged it)."
                        .to_owned(),
                ));
            }
            "paused" => format!("Integration paused; {n} convergence(s) held so far."),
            "resumed" => format!("Integration resumed; {n} held convergence(s) released."),
            "reset" => format!("Lease reset: {n} resident(s) queued for convergence."),
            _ => return None,
        };
        Some(Flash::Notice(text))
    }
}

/// `?done=code&n=count` after `path`.
fn done(path: &str, code: &str, n: u64) -> Response {
    let separator = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{separator}done={code}&n={n}")).into_response()
}

/// A form with nothing but the CSRF token.
#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A percent-encoded query value.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

// ---------------------------------------------------------------------------------------
// Overview

/// `GET /console`: is anything stuck, failing or paused.
pub(super) async fn overview(State(state): State<AdminState>, session: Session) -> Response {
    let now = now_ms();
    let (Ok(counts), Ok(conflicts), Ok(integrations), Ok(last_events)) = (
        state.queue.counts().await,
        state.queue.conflicts(None).await,
        state.integrations.list().await,
        state.queue.last_events().await,
    ) else {
        return unavailable(Some(&session));
    };
    let mut pulls = Vec::new();
    for source in state.integrations.sources() {
        match (
            state.queue.reconcile_pull_times(&source).await,
            state.queue.last_file_reconcile(&source).await,
        ) {
            // A source reconciled from a file has no whole pull of its own.
            (Ok((last, full)), Ok(file)) => pulls.push((source, last.or(file), full.or(file))),
            _ => return unavailable(Some(&session)),
        }
    }
    let paused: Vec<_> = integrations.iter().filter(|i| i.paused.is_some()).collect();
    let oldest = counts
        .oldest_ready_age_secs
        .map_or_else(|| "none waiting".to_owned(), |s| format!("{s:.1} s"));
    let body = html! {
        h2 { "Queue" }
        ul.cards aria-label="Queue" {
            li { span.n { (counts.ready) } "ready" }
            li { span.n { (counts.scheduled) } "scheduled (retries, lease windows)" }
            li { span.n { (counts.in_flight) } "in flight" }
            li { span.n { (counts.held) } "held (paused integrations)" }
            li { span.n { (oldest) } "oldest ready job" }
            li { span.n { a href="/console/dead-letters" { (counts.dead) } } "dead letters" }
            li { span.n { a href="/console/conflicts" { (conflicts.len()) } } "conflicts" }
            li { span.n { a href="/console/integrations" { (paused.len()) } } "paused integrations" }
        }
        @if !paused.is_empty() {
            h2 { "Paused integrations" }
            ul {
                @for status in &paused {
                    @if let Some(record) = &status.paused {
                        li { code { (status.integration_id) } " paused by " (record.by) " " (ago(record.at, now)) "; " (status.held_jobs) " held" }
                    }
                }
            }
        }
        h2 { "Sources" }
        table {
            caption.muted { "Last webhook accepted, and last scheduled pull or reconciliation from a file, per source" }
            thead { tr { th scope="col" { "Source" } th scope="col" { "Last webhook" } th scope="col" { "Last pull" } th scope="col" { "Last whole pull" } } }
            tbody {
                @for (source, last, full) in &pulls {
                    tr {
                        th scope="row" { (source) }
                        td { @match last_events.get(source) {
                            Some(at) => { (when(*at)) " (" (ago(*at, now)) ")" },
                            None => span.muted { "none recorded" },
                        } }
                        td { (pull_time(*last, now)) }
                        td { (pull_time(*full, now)) }
                    }
                }
            }
        }
        h2 { "Since the namespace was created" }
        table {
            tbody {
                tr { th scope="row" { "Convergences delivered" } td { (counts.done) } }
                tr { th scope="row" { "Retries" } td { (counts.retries) } }
                tr { th scope="row" { "Dead-lettered" } td { (counts.dead_lettered) } }
                tr { th scope="row" { "OpenApp 401/403" } td { (counts.auth_failures) } }
                tr { th scope="row" { "Stale events ignored" } td { (counts.stale_events) } }
            }
        }
    };
    render("Overview", &session, Nav::Overview, None, &body)
}

fn pull_time(seconds: Option<i64>, now: i64) -> Markup {
    match seconds {
        Some(s) => html! { (when(s * 1000)) " (" (ago(s * 1000, now)) ")" },
        None => html! { span.muted { "never" } },
    }
}

// ---------------------------------------------------------------------------------------
// Dead letters

/// The filters of the dead-letter pages, as a form sends them (empty = any).
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    source: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    n: Option<u64>,
}

impl Filters {
    /// The filter, or why a field is wrong.
    fn parse(&self) -> Result<DeadLetterFilter, String> {
        let some = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_owned());
        Ok(DeadLetterFilter {
            source: some(&self.source),
            event_type: some(&self.event_type)
                .map(|t| t.parse::<EventType>().map_err(|e| e.to_string()))
                .transpose()?,
            reason: some(&self.reason)
                .map(|r| r.parse::<DeadReason>().map_err(|e| e.to_string()))
                .transpose()?,
            since: some(&self.since)
                .map(|s| {
                    humantime::parse_duration(&s)
                        .map_err(|e| format!("since: `{s}` is not a duration such as 24h ({e})"))
                })
                .transpose()?,
            older_than: None,
        })
    }

    /// The filter as a query string (`source=…&type=…`).
    fn query(&self) -> String {
        [
            ("source", &self.source),
            ("type", &self.event_type),
            ("reason", &self.reason),
            ("since", &self.since),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
    }

    fn hidden(&self) -> Markup {
        html! {
            input type="hidden" name="source" value=(self.source);
            input type="hidden" name="type" value=(self.event_type);
            input type="hidden" name="reason" value=(self.reason);
            input type="hidden" name="since" value=(self.since);
        }
    }
}

fn filter_form(filters: &Filters, sources: &[String]) -> Markup {
    let option = |value: &str, label: &str, selected: &str| {
        html! {
            @if value == selected {
                option value=(value) selected { (label) }
            } @else {
                option value=(value) { (label) }
            }
        }
    };
    html! {
        form method="get" action="/console/dead-letters" {
            fieldset {
                legend { "Filter" }
                div.row {
                    div {
                        label for="f-source" { "Source" }
                        select #f-source name="source" {
                            (option("", "any", &filters.source))
                            @for source in sources { (option(source, source, &filters.source)) }
                        }
                    }
                    div {
                        label for="f-type" { "Event type" }
                        select #f-type name="type" {
                            (option("", "any", &filters.event_type))
                            (option("lease.signed", "lease.signed", &filters.event_type))
                            (option("lease.ended", "lease.ended", &filters.event_type))
                        }
                    }
                    div {
                        label for="f-reason" { "Reason" }
                        select #f-reason name="reason" {
                            (option("", "any", &filters.reason))
                            (option("permanent", "permanent", &filters.reason))
                            (option("exhausted", "exhausted", &filters.reason))
                            (option("crash_loop", "crash_loop", &filters.reason))
                        }
                    }
                    div {
                        label for="f-since" { "Died within" }
                        input #f-since type="text" name="since" value=(filters.since) placeholder="e.g. 24h" size="8";
                    }
                    div { button type="submit" { "Apply filter" } }
                }
            }
        }
    }
}

/// `GET /console/dead-letters`: filter, list, and start a bulk replay or purge.
pub(super) async fn dead_letters(
    State(state): State<AdminState>,
    session: Session,
    Query(filters): Query<Filters>,
) -> Response {
    let sources = state.integrations.sources();
    let filter = match filters.parse() {
        Ok(filter) => filter,
        Err(why) => {
            let body = filter_form(&filters, &sources);
            return render(
                "Dead letters",
                &session,
                Nav::DeadLetters,
                Some(&Flash::Error(why)),
                &body,
            );
        }
    };
    let offset = filters.offset.unwrap_or(0);
    let Ok(page) = state.dead_letters.list(&filter, offset, PAGE_SIZE).await else {
        return unavailable(Some(&session));
    };
    let query = filters.query();
    let flash = Done {
        done: filters.done.clone(),
        n: filters.n,
    }
    .flash();
    let now = now_ms();
    let body = html! {
        (filter_form(&filters, &sources))
        @if page.items.is_empty() {
            p { "No dead letters match." }
        } @else {
            @if session.may_change() {
                p {
                    a.button href={ "/console/dead-letters/confirm?action=replay&" (query) } { "Replay all matching…" }
                    " "
                    a.button href={ "/console/dead-letters/confirm?action=purge&" (query) } { "Purge all matching…" }
                }
            }
            table {
                caption.muted { "Newest first" }
                thead { tr {
                    th scope="col" { "Dead letter" } th scope="col" { "Died" } th scope="col" { "Reason" }
                    th scope="col" { "Source / event" } th scope="col" { "Action" } th scope="col" { "Resident" }
                    th scope="col" { "Attempts" } th scope="col" { "Last error" }
                } }
                tbody {
                    @for entry in &page.items {
                        tr {
                            td { a href={ "/console/dead-letters/" (entry.id) } { code { (entry.id) } } }
                            td { (when(entry.dead_at)) br; span.muted { (ago(entry.dead_at, now)) } }
                            td { (entry.reason.as_str()) }
                            td { (entry.source) br; code { (entry.event_id) } }
                            td { (entry.action) }
                            td { @if entry.user_id.is_empty() { span.muted { "-" } } @else {
                                a href={ "/console/residents/" (entry.integration_id) "/" (entry.user_id) } { (entry.user_id) }
                            } }
                            td { (entry.attempts) @if entry.replays > 0 { " (" (entry.replays) " replays)" } }
                            td { (entry.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            nav aria-label="Pages" {
                @if offset > 0 {
                    a href={ "/console/dead-letters?offset=" (offset.saturating_sub(PAGE_SIZE)) "&" (query) } { "← Newer" }
                    " "
                }
                @if let Some(next) = page.next_offset {
                    a href={ "/console/dead-letters?offset=" (next) "&" (query) } { "Older →" }
                }
            }
        }
    };
    render(
        "Dead letters",
        &session,
        Nav::DeadLetters,
        flash.as_ref(),
        &body,
    )
}

/// The query of the confirmation page: the action and the filter.
#[derive(Debug, Deserialize)]
pub(super) struct BulkQuery {
    #[serde(default)]
    action: String,
    #[serde(flatten)]
    filters: Filters,
}

/// `GET /console/dead-letters/confirm`: how many match, before anything is done.
pub(super) async fn confirm_bulk(
    State(state): State<AdminState>,
    session: Session,
    Query(query): Query<BulkQuery>,
) -> Response {
    let verb = match query.action.as_str() {
        "replay" => "Replay",
        "purge" => "Purge",
        _ => {
            return refused(
                Some(&session),
                "Unknown action: only replay and purge can be done in bulk.",
            );
        }
    };
    if !session.may_change() {
        return refused(
            Some(&session),
            "Your token has the read scope: it may look but not replay or purge.",
        );
    }
    let filter = match query.filters.parse() {
        Ok(filter) => filter,
        Err(why) => return refused(Some(&session), &why),
    };
    let Ok(ids) = state.dead_letters.matching_ids(&filter).await else {
        return unavailable(Some(&session));
    };
    let count = ids.len();
    let described = describe_filter(&query.filters);
    let body = html! {
        p { strong { (count) " dead letter(s)" } " match " (described) "." }
        @if count == 0 {
            p { a href={ "/console/dead-letters?" (query.filters.query()) } { "Back to the list" } }
        } @else {
            form method="post" action="/console/dead-letters/bulk" {
                (csrf_field(&session))
                input type="hidden" name="action" value=(query.action);
                (query.filters.hidden())
                p {
                    @if query.action == "purge" {
                        "Purged dead letters are deleted for good. "
                    } @else {
                        "Each is queued again with a fresh attempt budget. "
                    }
                    "Entries that stop matching before you confirm are left alone."
                }
                button type="submit" class=(if query.action == "purge" { "danger" } else { "" }) { (verb) " " (count) " dead letter(s)" }
                " "
                a href={ "/console/dead-letters?" (query.filters.query()) } { "Cancel" }
            }
        }
    };
    render(
        &format!("{verb} dead letters?"),
        &session,
        Nav::DeadLetters,
        None,
        &body,
    )
}

fn describe_filter(filters: &Filters) -> String {
    let mut parts = Vec::new();
    if !filters.source.is_empty() {
        parts.push(format!("source {}", filters.source));
    }
    if !filters.event_type.is_empty() {
        parts.push(format!("type {}", filters.event_type));
    }
    if !filters.reason.is_empty() {
        parts.push(format!("reason {}", filters.reason));
    }
    if !filters.since.is_empty() {
        parts.push(format!("died within {}", filters.since));
    }
    if parts.is_empty() {
        "(no filter: every dead letter)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The confirmed bulk form.
#[derive(Debug, Deserialize)]
pub(super) struct BulkForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(flatten)]
    filters: Filters,
}

/// `POST /console/dead-letters/bulk`: replays or purges what matches now; one audit record.
pub(super) async fn bulk(
    State(state): State<AdminState>,
    session: Session,
    axum::Form(form): axum::Form<BulkForm>,
) -> Response {
    if let Some(refusal) = session.refuse_change(&form.csrf, "replay or purge") {
        return refusal;
    }
    let filter = match form.filters.parse() {
        Ok(filter) => filter,
        Err(why) => return refused(Some(&session), &why),
    };
    let Ok(ids) = state.dead_letters.matching_ids(&filter).await else {
        return unavailable(Some(&session));
    };
    let actor = session.actor();
    let back = format!("/console/dead-letters?{}", form.filters.query());
    match form.action.as_str() {
        "replay" => {
            let run = replay_all(&state.dead_letters, &ids, &actor).await;
            if !run.replayed.is_empty() {
                info!(
                    actor = actor.as_str(),
                    replayed = run.replayed.len(),
                    "dead letters replayed in bulk from the console"
                );
                write_audit(
                    &state.dead_letters,
                    &actor,
                    "replay",
                    run.replayed.clone(),
                    Some(filter),
                )
                .await;
            }
            if run.failure.is_some() {
                return unavailable(Some(&session));
            }
            done(&back, "bulk-replayed", run.replayed.len() as u64)
        }
        "purge" => {
            let mut purged = Vec::new();
            for id in &ids {
                match state.dead_letters.purge(id, actor.as_str()).await {
                    Ok(true) => purged.push(id.clone()),
                    Ok(false) => {}
                    Err(_) => break,
                }
            }
            if !purged.is_empty() {
                info!(
                    actor = actor.as_str(),
                    purged = purged.len(),
                    "dead letters purged in bulk from the console"
                );
                write_audit(
                    &state.dead_letters,
                    &actor,
                    "purge",
                    purged.clone(),
                    Some(filter),
                )
                .await;
            }
            done(&back, "bulk-purged", purged.len() as u64)
        }
        _ => refused(
            Some(&session),
            "Unknown action: only replay and purge can be done in bulk.",
        ),
    }
}

/// `GET /console/dead-letters/{id}`: one dead letter, attempt by attempt.
pub(super) async fn dead_letter(
    State(state): State<AdminState>,
    session: Session,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    let entry = match state.dead_letters.get(&id).await {
        Ok(Some(entry)) => entry.masked(),
        Ok(None) => {
            let body = html! { p { "No dead letter has this id (it may have been replayed or purged). " a href="/console/dead-letters" { "Back to the list" } } };
            let mut response = render(
                "Dead letter not found",
                &session,
                Nav::DeadLetters,
                None,
                &body,
            );
            *response.status_mut() = axum::http::StatusCode::NOT_FOUND;
            return response;
        }
        Err(_) => return unavailable(Some(&session)),
    };
    let s = &entry.summary;
    let body = html! {
        table {
            tbody {
                tr { th scope="row" { "Id" } td { code { (s.id) } } }
                tr { th scope="row" { "Reason" } td { (s.reason.as_str()) } }
                tr { th scope="row" { "Died" } td { (when(s.dead_at)) } }
                tr { th scope="row" { "First seen" } td { (when(s.first_seen)) } }
                tr { th scope="row" { "Source, event" } td { (s.source) ", " code { (s.event_id) } } }
                tr { th scope="row" { "Job" } td { (s.kind) ": " (s.action) } }
                tr { th scope="row" { "Lease" } td { (s.lease_id) } }
                tr { th scope="row" { "Resident" } td {
                    @if s.user_id.is_empty() { "-" } @else {
                        a href={ "/console/residents/" (s.integration_id) "/" (s.user_id) } { (s.user_id) " in " (s.integration_id) }
                    }
                } }
                tr { th scope="row" { "Attempts" } td { (s.attempts) " (" (s.replays) " replays before)" } }
            }
        }
        @if session.may_change() {
            form.inline method="post" action={ "/console/dead-letters/" (s.id) "/replay" } {
                (csrf_field(&session))
                button type="submit" { "Replay" }
            }
            " "
            form.inline method="post" action={ "/console/dead-letters/" (s.id) "/purge" } {
                (csrf_field(&session))
                button.danger type="submit" { "Purge" }
            }
        }
        h2 { "Attempt timeline" }
        table {
            thead { tr {
                th scope="col" { "#" } th scope="col" { "Started" } th scope="col" { "Outcome" } th scope="col" { "Action" }
                th scope="col" { "Status" } th scope="col" { "Request id" } th scope="col" { "Next try in" } th scope="col" { "Message" }
            } }
            tbody {
                @for attempt in &entry.attempt_log {
                    tr {
                        td { (attempt.attempt.map(|n| n.to_string()).unwrap_or_default()) }
                        td { (attempt.started_at.or(attempt.at).map(when).unwrap_or_default()) }
                        td { (attempt.outcome) @if let Some(by) = &attempt.by { " by " (by) } }
                        td { (attempt.action.as_deref().unwrap_or("")) }
                        td { (attempt.status.map(|s| s.to_string()).unwrap_or_default()) " " (attempt.error_code.as_deref().unwrap_or("")) }
                        td { code { (attempt.request_id.as_deref().unwrap_or("")) } }
                        td { (attempt.delay_ms.map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string()).unwrap_or_default()) }
                        td { (attempt.message.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Event" }
        pre { code { (serde_json::to_string_pretty(&entry.event).unwrap_or_default()) } }
    };
    render(
        "Dead letter",
        &session,
        Nav::DeadLetters,
        done.flash().as_ref(),
        &body,
    )
}

/// `POST /console/dead-letters/{id}/replay`.
pub(super) async fn replay(
    State(state): State<AdminState>,
    session: Session,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Some(refusal) = session.refuse_change(&form.csrf, "replay") {
        return refusal;
    }
    let actor = session.actor();
    match state.dead_letters.replay(&id, actor.as_str()).await {
        Ok(ReplayOutcome::Replayed) => {
            info!(dead_letter.id = %id, actor = actor.as_str(), "dead letter replayed from the console");
            write_audit(&state.dead_letters, &actor, "replay", vec![id], None).await;
            done("/console/dead-letters", "replayed", 1)
        }
        Ok(ReplayOutcome::NotDead | ReplayOutcome::NotFound) => {
            done("/console/dead-letters", "not-dead", 0)
        }
        Err(_) => unavailable(Some(&session)),
    }
}

/// `POST /console/dead-letters/{id}/purge`.
pub(super) async fn purge(
    State(state): State<AdminState>,
    session: Session,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Some(refusal) = session.refuse_change(&form.csrf, "purge") {
        return refusal;
    }
    let actor = session.actor();
    match state.dead_letters.purge(&id, actor.as_str()).await {
        Ok(true) => {
            info!(dead_letter.id = %id, actor = actor.as_str(), "dead letter purged from the console");
            write_audit(&state.dead_letters, &actor, "purge", vec![id], None).await;
            done("/console/dead-letters", "purged", 1)
        }
        Ok(false) => done("/console/dead-letters", "not-dead", 0),
        Err(_) => unavailable(Some(&session)),
    }
}

// ---------------------------------------------------------------------------------------
// Residents

/// The resident search form.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    by: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    integration: String,
}

/// `GET /console/residents`: find someone by user id, email or lease id.
pub(super) async fn residents(
    State(state): State<AdminState>,
    session: Session,
    Query(search): Query<Search>,
) -> Response {
    let integrations: Vec<(String, String)> = state
        .integrations
        .configured()
        .map(|(i, o)| (i.to_owned(), o.to_owned()))
        .collect();
    let q = search.q.trim();
    let mut flash = None;
    let mut found: Vec<(String, String, String)> = Vec::new();
    if !q.is_empty() {
        match search.by.as_str() {
            "email" => match state.integrations.residents_by_email(q).await {
                Ok(pairs) => {
                    found.extend(pairs.into_iter().map(|(i, u)| (i, u, "email".to_owned())));
                }
                Err(_) => return unavailable(Some(&session)),
            },
            "lease" => {
                for source in state.integrations.sources() {
                    match state.leases.holders(&source, q, now_ms()).await {
                        Ok(holders) => {
                            found.extend(holders.into_iter().map(|h| {
                                (h.integration_id, h.user_id, format!("lease of {source}"))
                            }));
                        }
                        Err(LeaseError::Queue(_)) => return unavailable(Some(&session)),
                        Err(_) => {}
                    }
                }
            }
            _ => {
                if is_valid_path_id(q) {
                    for (integration, _) in &integrations {
                        if !search.integration.is_empty() && search.integration != *integration {
                            continue;
                        }
                        match state.queue.resident(integration, q).await {
                            Ok(Some(_)) => found.push((
                                integration.clone(),
                                q.to_owned(),
                                "user id".to_owned(),
                            )),
                            Ok(None) => {}
                            Err(_) => return unavailable(Some(&session)),
                        }
                    }
                } else {
                    flash = Some(Flash::Error(
                        "A user id is 1 to 64 letters, digits, - or _.".to_owned(),
                    ));
                }
            }
        }
        if found.is_empty() && flash.is_none() {
            flash = Some(Flash::Error("Nobody found.".to_owned()));
        }
    }
    let by = if search.by.is_empty() {
        "user"
    } else {
        search.by.as_str()
    };
    let body = html! {
        form method="get" action="/console/residents" {
            fieldset {
                legend { "Find a resident" }
                div.row {
                    div {
                        label for="r-by" { "By" }
                        select #r-by name="by" {
                            @for (value, label) in [("user", "OpenApp user id"), ("email", "email"), ("lease", "lease id")] {
                                @if value == by { option value=(value) selected { (label) } } @else { option value=(value) { (label) } }
                            }
                        }
                    }
                    div {
                        label for="r-q" { "User id, email or lease id" }
                        input #r-q type="search" name="q" value=(q) required;
                    }
                    div {
                        label for="r-integration" { "Integration (user id only)" }
                        select #r-integration name="integration" {
                            option value="" { "any" }
                            @for (integration, org) in &integrations {
                                @if *integration == search.integration {
                                    option value=(integration) selected { (integration) " (org " (org) ")" }
                                } @else {
                                    option value=(integration) { (integration) " (org " (org) ")" }
                                }
                            }
                        }
                    }
                    div { button type="submit" { "Find" } }
                }
            }
        }
        p.muted { "An email finds whom it was resolved to (the identity cache keeps each for 30 days); a lease id finds who holds a record of it." }
        @if !found.is_empty() {
            table {
                thead { tr { th scope="col" { "Resident" } th scope="col" { "Integration" } th scope="col" { "Found by" } } }
                tbody {
                    @for (integration, user, how) in &found {
                        tr {
                            td { a href={ "/console/residents/" (integration) "/" (user) } { (user) } }
                            td { (integration) }
                            td { (how) }
                        }
                    }
                }
            }
        }
    };
    render("Residents", &session, Nav::Residents, flash.as_ref(), &body)
}

/// Query of a resident's page.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ResidentQuery {
    #[serde(default)]
    show_emails: Option<String>,
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    n: Option<u64>,
}

/// `GET /console/residents/{integration_id}/{user_id}`: state, why, and history.
pub(super) async fn resident(
    State(state): State<AdminState>,
    session: Session,
    Path((integration_id, user_id)): Path<(String, String)>,
    Query(query): Query<ResidentQuery>,
) -> Response {
    if !state.integrations.is_configured(&integration_id) || !is_valid_path_id(&user_id) {
        let body =
            html! { p { "No such resident. " a href="/console/residents" { "Find another" } } };
        let mut response = render("Resident not found", &session, Nav::Residents, None, &body);
        *response.status_mut() = axum::http::StatusCode::NOT_FOUND;
        return response;
    }
    let show_emails = query.show_emails.as_deref() == Some("true");
    let (resident, history, paused, lock) = match (
        state.queue.resident(&integration_id, &user_id).await,
        state
            .queue
            .history(&integration_id, &user_id, HISTORY_SHOWN)
            .await,
        state.queue.paused().await,
        state.queue.resident_lock(&integration_id, &user_id).await,
    ) {
        (Ok(r), Ok(h), Ok(p), Ok(l)) => (r, h, p.contains_key(&integration_id), l),
        _ => return unavailable(Some(&session)),
    };
    let history: Vec<HistoryEntry> = if show_emails {
        history
    } else {
        history.into_iter().map(HistoryEntry::masked).collect()
    };
    let now = now_ms();
    let flash = Done {
        done: query.done.clone(),
        n: query.n,
    }
    .flash();
    let body = html! {
        @if paused {
            p.error { "Integration " code { (integration_id) } " is paused: this resident's convergences are held. " a href="/console/integrations" { "Integrations" } }
        }
        @match &resident {
            None => p { "lease-sync holds no state for this user in this integration (no event named them, or only their history is left)." },
            Some(state_now) => {
                table {
                    tbody {
                        tr { th scope="row" { "OpenApp should show" } td { strong { (match state_now.desired(now) {
                            crate::resident::Desired::Present => "present (a building user)",
                            crate::resident::Desired::Absent => "absent (removed)",
                            crate::resident::Desired::Untouched => "left alone",
                        }) } } }
                        tr { th scope="row" { "Why" } td { (state_now.explain(now)) } }
                        tr { th scope="row" { "Last applied" } td { @match &state_now.applied {
                            Some(a) => { (if a.present { "present" } else { "absent" }) " at " (when(a.at)) " (" (ago(a.at, now)) ")" },
                            None => "never",
                        } } }
                        tr { th scope="row" { "Managed by lease-sync" } td { (if state_now.managed { "yes (lease-sync added them)" } else { "no" }) } }
                        tr { th scope="row" { "Next convergence" } td { (state_now.next_check.filter(|t| *t > now).map(when).unwrap_or_else(|| "-".to_owned())) } }
                        tr { th scope="row" { "Converging now" } td { @match &lock {
                            Some(lock) => { "yes: a worker holds this resident's lock, which lapses in " (format!("{:.1}", lock.remaining_ms as f64 / 1000.0)) " s unless renewed (a dead worker's keeps others off until then)" },
                            None => "no",
                        } } }
                    }
                }
                h2 { "Leases" }
                table {
                    thead { tr {
                        th scope="col" { "Lease" } th scope="col" { "State" } th scope="col" { "Access from" } th scope="col" { "Access until" }
                        th scope="col" { "Source, event" } th scope="col" { "Grants access now" }
                        @if session.may_change() { th scope="col" { "Reset" } }
                    } }
                    tbody {
                        @for (lease_id, lease) in &state_now.leases {
                            tr {
                                td { (lease_id) }
                                td { (match lease.state { crate::resident::LeaseState::Active => "signed", crate::resident::LeaseState::Ended => "ended" }) }
                                td { (lease.starts_at.map(when).unwrap_or_else(|| "-".to_owned())) }
                                td { (lease.ends_at.map(when).unwrap_or_else(|| "open-ended".to_owned())) }
                                td { (lease.source) ", " code { (lease.event_id) } " (" (when(lease.occurred_at)) ")" }
                                td { (if lease.grants_access(now) { "yes" } else { "no" }) }
                                @if session.may_change() {
                                    td {
                                        form.inline method="post" action="/console/leases/reset" {
                                            (csrf_field(&session))
                                            input type="hidden" name="source" value=(lease.source);
                                            input type="hidden" name="lease_id" value=(lease_id);
                                            input type="hidden" name="integration_id" value=(integration_id);
                                            input type="hidden" name="user_id" value=(user_id);
                                            button.danger type="submit" aria-label={ "Reset lease " (lease_id) } { "Reset" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "History" }
        p.muted {
            "Newest first; the last " (HISTORY_SHOWN) " entries within [audit] max_age_days. "
            @if show_emails {
                a href={ "/console/residents/" (integration_id) "/" (user_id) } { "Mask emails" }
            } @else {
                a href={ "/console/residents/" (integration_id) "/" (user_id) "?show_emails=true" } { "Show emails in full" }
            }
        }
        @if history.is_empty() {
            p { "Nothing recorded." }
        } @else {
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Details" } } }
                tbody {
                    @for entry in &history {
                        tr {
                            td { (when(entry.at)) }
                            td { (entry.kind()) }
                            td { (entry.describe()) }
                        }
                    }
                }
            }
        }
    };
    render(
        &format!("Resident {user_id} in {integration_id}"),
        &session,
        Nav::Residents,
        flash.as_ref(),
        &body,
    )
}

/// The lease-reset form of a resident's page.
#[derive(Debug, Deserialize)]
pub(super) struct ResetForm {
    #[serde(default)]
    csrf: String,
    source: String,
    lease_id: String,
    integration_id: String,
    user_id: String,
}

/// `POST /console/leases/reset`: forget one lease's record and converge its residents again.
pub(super) async fn reset_lease(
    State(state): State<AdminState>,
    session: Session,
    axum::Form(form): axum::Form<ResetForm>,
) -> Response {
    if let Some(refusal) = session.refuse_change(&form.csrf, "reset a lease") {
        return refusal;
    }
    let back = if state.integrations.is_configured(&form.integration_id)
        && is_valid_path_id(&form.user_id)
    {
        format!(
            "/console/residents/{}/{}",
            form.integration_id, form.user_id
        )
    } else {
        "/console/residents".to_owned()
    };
    let actor = session.actor();
    match state
        .leases
        .reset(&form.source, &form.lease_id, actor.as_str())
        .await
    {
        Ok(report) => {
            info!(source = %form.source, lease.id = %form.lease_id, actor = actor.as_str(), "lease reset from the console");
            done(&back, "reset", report.residents.len() as u64)
        }
        Err(LeaseError::Queue(_)) => unavailable(Some(&session)),
        Err(e) => refused(Some(&session), &e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Conflicts and integrations

/// `GET /console/conflicts`: people a source names who have no OpenApp user.
pub(super) async fn conflicts(State(state): State<AdminState>, session: Session) -> Response {
    let Ok(conflicts) = state.queue.conflicts(None).await else {
        return unavailable(Some(&session));
    };
    let now = now_ms();
    let body = html! {
        p.muted { "Nobody here has a door until the source fixes their email or OpenApp gets a user with it; the lease's next event (or the next pull) resolves them again. Emails are masked." }
        @if conflicts.is_empty() {
            p { "No conflicts." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Source" } th scope="col" { "Person" } th scope="col" { "Why" } th scope="col" { "Email" }
                    th scope="col" { "Lease, building" } th scope="col" { "Integration" } th scope="col" { "Since" } th scope="col" { "Seen" }
                } }
                tbody {
                    @for c in conflicts.into_iter().map(crate::queue::conflicts::Conflict::masked) {
                        tr {
                            td { (c.source) }
                            td { code { (c.person) } @if let Some(name) = &c.name { " " (name) } }
                            td { (c.reason.as_str()) }
                            td { (c.email.as_deref().unwrap_or("-")) }
                            td { (c.lease_id) ", " (c.property_id) }
                            td { (c.integration_id) }
                            td { (when(c.first_seen)) " (" (ago(c.first_seen, now)) ")" }
                            td { (c.times) " time(s), last " (ago(c.last_seen, now)) }
                        }
                    }
                }
            }
        }
    };
    render("Conflicts", &session, Nav::Conflicts, None, &body)
}

/// `GET /console/integrations`: pause and resume.
pub(super) async fn integrations(
    State(state): State<AdminState>,
    session: Session,
    Query(done): Query<Done>,
) -> Response {
    let Ok(list) = state.integrations.list().await else {
        return unavailable(Some(&session));
    };
    let now = now_ms();
    let body = html! {
        p.muted { "A paused integration's convergences are held: no OpenApp call, no attempt spent, no dead letter. Webhooks are still accepted. Resuming releases them, and each converges to what the resident's state says then." }
        table {
            thead { tr {
                th scope="col" { "Integration" } th scope="col" { "Organisation" } th scope="col" { "Buildings" }
                th scope="col" { "State" } th scope="col" { "Held" }
                @if session.may_change() { th scope="col" { "Action" } }
            } }
            tbody {
                @for status in &list {
                    tr {
                        th scope="row" { code { (status.integration_id) } }
                        td { (status.org_id) }
                        td { (status.properties.join(", ")) }
                        td { @match &status.paused {
                            Some(record) => { strong { "paused" } " by " (record.by) " " (ago(record.at, now)) },
                            None => "active",
                        } }
                        td { (status.held_jobs) }
                        @if session.may_change() {
                            td {
                                @if status.paused.is_some() {
                                    form.inline method="post" action={ "/console/integrations/" (status.integration_id) "/resume" } {
                                        (csrf_field(&session))
                                        button type="submit" aria-label={ "Resume " (status.integration_id) } { "Resume" }
                                    }
                                } @else {
                                    form.inline method="post" action={ "/console/integrations/" (status.integration_id) "/pause" } {
                                        (csrf_field(&session))
                                        button.danger type="submit" aria-label={ "Pause " (status.integration_id) } { "Pause" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    render(
        "Integrations",
        &session,
        Nav::Integrations,
        done.flash().as_ref(),
        &body,
    )
}

/// `POST /console/integrations/{id}/pause`.
pub(super) async fn pause(
    State(state): State<AdminState>,
    session: Session,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    change_pause(state, session, id, form, true).await
}

/// `POST /console/integrations/{id}/resume`.
pub(super) async fn resume(
    State(state): State<AdminState>,
    session: Session,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    change_pause(state, session, id, form, false).await
}

async fn change_pause(
    state: AdminState,
    session: Session,
    id: String,
    form: CsrfForm,
    pause: bool,
) -> Response {
    if let Some(refusal) = session.refuse_change(&form.csrf, if pause { "pause" } else { "resume" })
    {
        return refusal;
    }
    let actor = session.actor();
    let result = if pause {
        state.integrations.pause(&id, actor.as_str()).await
    } else {
        state.integrations.resume(&id, actor.as_str()).await
    };
    match result {
        Ok(change) => {
            info!(integration_id = %id, actor = actor.as_str(), pause, "integration {} from the console", if pause { "paused" } else { "resumed" });
            if pause {
                done("/console/integrations", "paused", change.held_jobs)
            } else {
                done("/console/integrations", "resumed", change.released)
            }
        }
        Err(IntegrationError::NotFound(_)) => refused(
            Some(&session),
            "No configured building maps to that integration.",
        ),
        Err(IntegrationError::Queue(_)) => unavailable(Some(&session)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_round_trip_as_a_query() {
        let filters = Filters {
            source: "acme pms".into(),
            event_type: "lease.ended".into(),
            reason: "permanent".into(),
            since: "24h".into(),
            ..Filters::default()
        };
        let filter = filters.parse().unwrap();
        assert_eq!(filter.source.as_deref(), Some("acme pms"));
        assert_eq!(filter.since, Some(Duration::from_secs(86_400)));
        assert_eq!(
            filters.query(),
            "source=acme+pms&type=lease.ended&reason=permanent&since=24h"
        );
        let bad = Filters {
            since: "soon".into(),
            ..Filters::default()
        };
        assert!(bad.parse().unwrap_err().contains("since"));
        assert_eq!(Filters::default().query(), "");
    }

    #[test]
    fn only_known_codes_become_notices() {
        let done = Done {
            done: Some("bulk-replayed".into()),
            n: Some(3),
        };
        assert!(matches!(done.flash(), Some(Flash::Notice(t)) if t.contains('3')));
        let unknown = Done {
            done: Some("<script>".into()),
            n: None,
        };
        assert!(unknown.flash().is_none());
    }
}
