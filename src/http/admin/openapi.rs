//! The OpenAPI 3 document of the admin API, generated from the handlers' `#[utoipa::path]`
//! annotations and served, without authentication, at `GET /admin/openapi.json`.
//!
//! The types the API answers with live in other modules and know nothing of utoipa, so they
//! are described here by mirror types ([`schemas`]); unit tests below compare each mirror's
//! properties with what the real type serializes, so the two cannot drift apart unnoticed.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

pub(super) use self::schemas::{
    AuditRecordDoc, ConflictDoc, DeadLetterDoc, DeadLetterFilterDoc, DeadReasonDoc, ErrorBody,
    EventTypeDoc, HistoryDoc, IntegrationStatusDoc, PageDoc, PauseChangeDoc, QueueCountsDoc,
    ResetReportDoc, ResidentDoc,
};
use super::{handlers, residents};

/// Name of the bearer security scheme in the document.
const BEARER: &str = "bearer";

/// The document, built once: it depends on nothing but the code.
static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(AdminApi::openapi);

/// The admin API as utoipa sees it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lease-sync admin API",
        description = "Dead letters, lease resets, resident histories, paused integrations and queue stats for operators. Every endpoint except this \
            document requires `Authorization: Bearer <token>` with one of the `[admin] tokens`; \
            a token with the `read` scope may only use `GET`. \
            Errors are `{\"error\": code, \"message\": sentence}`."
    ),
    paths(
        openapi_json,
        handlers::list_dead_letters,
        handlers::get_dead_letter,
        handlers::replay_dead_letter,
        handlers::replay_dead_letters,
        handlers::purge_dead_letter,
        handlers::queue_counts,
        handlers::recent_audit,
        handlers::reset_lease,
        handlers::list_conflicts,
        residents::get_resident,
        residents::resident_history,
        residents::list_integrations,
        residents::pause_integration,
        residents::resume_integration,
    ),
    components(schemas(ErrorBody, EventTypeDoc, DeadReasonDoc)),
    modifiers(&CommonResponses),
    tags(
        (name = "dead letters", description = "Deliveries that were given up: list, inspect, replay, purge."),
        (name = "leases", description = "lease-sync's record of one lease: reset it."),
        (name = "residents", description = "One resident's state and history; people without an OpenApp user (conflicts)."),
        (name = "integrations", description = "OpenApp integrations (buildings): list, pause, resume."),
        (name = "queue", description = "Queue depths and counters."),
        (name = "audit", description = "Who replayed, purged, reset, paused or resumed what."),
        (name = "meta", description = "This document."),
    )
)]
struct AdminApi;

/// Serves this document.
#[utoipa::path(
    get,
    path = "/admin/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document of the admin API.", content_type = "application/json"))
)]
pub(super) async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}

/// Registers the bearer scheme and adds the answers every authenticated endpoint can give
/// (401, 403 on those that change something, and 503 because each reads Redis) instead of
/// repeating them on every handler.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                BEARER,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "One of the `[admin] tokens` of the configuration. A token with \
                             the `read` scope may only use `GET`; one past its `not_after` is \
                             refused.",
                        ))
                        .build(),
                ),
            );
        for item in openapi.paths.paths.values_mut() {
            // Whether the method changes something, which a `read` token may not do.
            let operations = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (operation, mutates) in operations {
                let Some(operation) = operation else { continue };
                if operation.security.is_some() {
                    add_error(
                        operation,
                        "401",
                        "No or an unknown bearer token (`unauthorized`, with \
                         `WWW-Authenticate: Bearer`), or a token past its `not_after` \
                         (`token_expired`, with `WWW-Authenticate: Bearer \
                         error=\"invalid_token\"`).",
                    );
                    if mutates {
                        add_error(
                            operation,
                            "403",
                            "The token has the `read` scope, which may only use `GET` \
                             (`insufficient_scope`).",
                        );
                    }
                    add_error(
                        operation,
                        "503",
                        "Redis is unavailable (`queue_unavailable`); try again later.",
                    );
                }
            }
        }
    }
}

/// Adds a JSON error answer to `operation`, unless it already describes `status`.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    let response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build();
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert(response.into());
}

/// Mirrors of the answer types, for the document only: never constructed.
mod schemas {
    #![expect(
        dead_code,
        reason = "the mirror types exist for their schemas; no value of them is ever built"
    )]

    use serde::Serialize;
    use utoipa::ToSchema;

    /// Every error answer.
    #[derive(Serialize, ToSchema)]
    #[schema(as = Error)]
    pub(crate) struct ErrorBody {
        /// Stable code to branch on (`unauthorized`, `invalid_query`, `not_found`, …).
        error: String,
        /// What went wrong, for a person.
        message: String,
    }

    /// An event type.
    #[derive(Serialize, ToSchema)]
    #[schema(as = EventType)]
    pub(crate) enum EventTypeDoc {
        /// Residents get access.
        #[serde(rename = "lease.signed")]
        LeaseSigned,
        /// Residents lose access.
        #[serde(rename = "lease.ended")]
        LeaseEnded,
    }

    /// Why a delivery was given up.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    #[schema(as = DeadReason)]
    pub(crate) enum DeadReasonDoc {
        /// OpenApp refused the request in a way retrying cannot fix.
        Permanent,
        /// Every attempt failed transiently and the budget is used up.
        Exhausted,
        /// The worker itself died during each attempt.
        CrashLoop,
    }

    /// Which dead letters an operation applies to; absent fields match everything.
    #[derive(Serialize, ToSchema)]
    #[schema(as = DeadLetterFilter)]
    pub(crate) struct DeadLetterFilterDoc {
        /// Only this source.
        source: Option<String>,
        /// Only this event type.
        #[serde(rename = "type")]
        event_type: Option<EventTypeDoc>,
        /// Only this reason.
        reason: Option<DeadReasonDoc>,
        /// Only entries given up within this long before now (`24h`).
        #[schema(example = "24h")]
        since: Option<String>,
        /// Only entries given up at least this long ago (`30d`).
        #[schema(example = "30d")]
        older_than: Option<String>,
    }

    /// One dead letter in a listing.
    #[derive(Serialize, ToSchema)]
    #[schema(as = DeadLetterSummary)]
    pub(crate) struct DeadLetterSummaryDoc {
        /// The delivery id, which the other endpoints take.
        id: String,
        /// Why it was given up.
        reason: DeadReasonDoc,
        /// When (ms since the epoch).
        dead_at: i64,
        /// When the event was first received (ms since the epoch).
        first_seen: i64,
        /// The source that sent the event.
        source: String,
        /// The event id.
        event_id: String,
        /// `converge` (make OpenApp show a resident's state), `refresh` (read a lease again
        /// from its source) or `resolve` (resolve the residents an event names by email, then
        /// fold it).
        kind: String,
        /// The event type, for a convergence or a resolve.
        event_type: Option<EventTypeDoc>,
        /// `add` or `remove` for a convergence, `refresh` or `resolve` for those jobs.
        action: String,
        /// The lease (empty for a refresh of a tenant).
        lease_id: String,
        /// The resident (OpenApp user id); empty for a refresh or a resolve.
        user_id: String,
        /// The OpenApp integration; empty for a refresh or a resolve.
        integration_id: String,
        /// Attempts made since the last replay.
        attempts: u32,
        /// Times replayed before.
        replays: u32,
        /// The last attempt's failure on one line (`400: Injected fault`).
        last_error: Option<String>,
    }

    /// One page of a listing.
    #[derive(Serialize, ToSchema)]
    #[schema(as = Page)]
    pub(crate) struct PageDoc {
        /// Matching entries, newest first.
        items: Vec<DeadLetterSummaryDoc>,
        /// `offset` of the next page; null on the last page.
        next_offset: Option<u64>,
    }

    /// The delivery job.
    #[derive(Serialize, ToSchema)]
    #[schema(as = DeliveryJob)]
    pub(crate) struct DeliveryJobDoc {
        /// Payload version.
        v: u32,
        /// The delivery id.
        delivery_id: String,
        /// The event id.
        event_id: String,
        /// The source.
        source: String,
        /// The event type.
        event_type: EventTypeDoc,
        /// When it happened at the source (RFC 3339).
        occurred_at: String,
        /// The lease.
        lease_id: String,
        /// The source's building id.
        property_id: String,
        /// The OpenApp user.
        user_id: String,
        /// OpenApp organisation.
        org_id: String,
        /// OpenApp integration.
        integration_id: String,
        /// Role granted on add.
        role: String,
        /// What queued the job when not an event: `schedule` or `reconcile`.
        trigger: Option<String>,
    }

    /// One attempt, or a replay marker between rounds of attempts.
    #[derive(Serialize, ToSchema)]
    #[schema(as = AttemptRecord)]
    pub(crate) struct AttemptRecordDoc {
        /// 1-based attempt number (absent on replay markers).
        attempt: Option<u32>,
        /// `started`, `delivered`, `retry`, `dead`, `crashed` or `replayed`.
        outcome: String,
        /// What the attempt did: `add`, `remove` or `none`.
        action: Option<String>,
        /// When the call started (ms since the epoch).
        started_at: Option<i64>,
        /// When it ended (ms since the epoch).
        finished_at: Option<i64>,
        /// HTTP status OpenApp answered.
        status: Option<u16>,
        /// Error class: `transport`, `timeout`, `http`, …
        error: Option<String>,
        /// OpenApp's `error_code`.
        error_code: Option<String>,
        /// OpenApp's message, or what went wrong.
        message: Option<String>,
        /// OpenApp's request id.
        request_id: Option<String>,
        /// `Retry-After` as OpenApp sent it.
        retry_after: Option<String>,
        /// Wait chosen before the next attempt (ms).
        delay_ms: Option<u64>,
        /// Upper bound of the jitter window (ms).
        backoff_cap_ms: Option<u64>,
        /// The task that ran the attempt.
        task: Option<String>,
        /// On replay markers: who replayed.
        by: Option<String>,
        /// On replay markers: when (ms since the epoch).
        at: Option<i64>,
    }

    /// Everything about one dead letter.
    #[derive(Serialize, ToSchema)]
    #[schema(as = DeadLetter)]
    pub(crate) struct DeadLetterDoc {
        /// The summary fields, at the top level.
        #[serde(flatten)]
        summary: DeadLetterSummaryDoc,
        /// The job: a convergence, a refresh (`{v, delivery_id, event_id, source, refresh:
        /// {kind: lease|tenant, lease_id|tenant_id}, trigger}`) or a resolve (`{v, delivery_id,
        /// event_id, source, event}`; emails masked unless `show_emails=true`).
        job: DeliveryJobDoc,
        /// The event as received (validated).
        #[schema(value_type = Object)]
        event: serde_json::Value,
        /// Every attempt, oldest first, with replay markers between rounds.
        attempt_log: Vec<AttemptRecordDoc>,
    }

    /// An audit record of a replay, a purge or a lease reset.
    #[derive(Serialize, ToSchema)]
    #[schema(as = AuditRecord)]
    pub(crate) struct AuditRecordDoc {
        /// When (ms since the epoch).
        at: i64,
        /// Who: the token's name or `token:<first 12 hex of sha256(token)>`, or
        /// `cli:<user>@<host>`.
        actor: String,
        /// `replay`, `purge` or `lease_reset`.
        action: String,
        /// The entries acted on: delivery ids, or `<integration_id>/<user_id>` of each
        /// resident a lease reset converged again.
        ids: Vec<String>,
        /// The filter of a bulk replay.
        filter: Option<DeadLetterFilterDoc>,
        /// The lease a reset forgot.
        lease: Option<AuditedLeaseDoc>,
    }

    /// The lease of an audited reset.
    #[derive(Serialize, ToSchema)]
    #[schema(as = AuditedLease)]
    pub(crate) struct AuditedLeaseDoc {
        /// The source whose record was forgotten.
        source: String,
        /// The lease id.
        lease_id: String,
    }

    /// A person a source names who has no OpenApp user yet.
    #[derive(Serialize, ToSchema)]
    #[schema(as = Conflict)]
    pub(crate) struct ConflictDoc {
        /// The source that named them.
        source: String,
        /// Who they are at the source: `tenant:<id>`, or `email:<digest>`.
        person: String,
        /// `no_email`, `no_openapp_user` or `ambiguous_email`.
        reason: String,
        /// Their email (masked unless `show_emails=true`).
        email: Option<String>,
        /// Their name (initials unless `show_emails=true`).
        name: Option<String>,
        /// The lease that would have given them access.
        lease_id: String,
        /// Its building at the source.
        property_id: String,
        /// The OpenApp integration of that building.
        integration_id: String,
        /// When first recorded (ms since the epoch).
        first_seen: i64,
        /// When last seen unresolved (ms).
        last_seen: i64,
        /// How many times it was seen.
        times: u64,
    }

    /// What a lease reset did.
    #[derive(Serialize, ToSchema)]
    #[schema(as = ResetReport)]
    pub(crate) struct ResetReportDoc {
        /// The source.
        source: String,
        /// The lease.
        lease_id: String,
        /// The residents whose record was forgotten and who were queued for convergence.
        residents: Vec<HolderDoc>,
        /// Convergence jobs queued.
        jobs: usize,
    }

    /// A resident who held a record of the lease.
    #[derive(Serialize, ToSchema)]
    #[schema(as = LeaseHolder)]
    pub(crate) struct HolderDoc {
        /// OpenApp integration (the building).
        integration_id: String,
        /// OpenApp user.
        user_id: String,
        /// The record forgotten.
        record: LeaseRecordDoc,
        /// What OpenApp should have shown with the record: `present`, `absent` or `untouched`.
        desired_now: String,
        /// What it should show without it (from the resident's other leases).
        desired_after_reset: String,
    }

    /// lease-sync's record of one lease for one resident: the newest event's effect.
    #[derive(Serialize, ToSchema)]
    #[schema(as = LeaseRecord)]
    pub(crate) struct LeaseRecordDoc {
        /// `active` (signed) or `ended`.
        state: String,
        /// Access begins (ms since the epoch); absent = already.
        starts_at: Option<i64>,
        /// Access ends (ms since the epoch); absent = open-ended.
        ends_at: Option<i64>,
        /// `occurred_at` of the event recorded (ms): its version.
        occurred_at: i64,
        /// 0 for `lease.signed`, 1 for `lease.ended`.
        rank: u8,
        /// The event recorded.
        event_id: String,
        /// Its source.
        source: String,
        /// The source's building id.
        property_id: String,
    }

    /// Queue depths and lifetime counters.
    #[derive(Serialize, ToSchema)]
    #[schema(as = QueueCounts)]
    pub(crate) struct QueueCountsDoc {
        /// Jobs waiting to be fetched.
        ready: u64,
        /// Retries waiting for their time.
        scheduled: u64,
        /// Jobs fetched by a worker and not yet acknowledged.
        in_flight: u64,
        /// Dead letters currently stored.
        dead: u64,
        /// Seconds the oldest ready job has waited, if any is ready.
        oldest_ready_age_secs: Option<f64>,
        /// Deliveries completed.
        done: u64,
        /// Retries scheduled.
        retries: u64,
        /// Deliveries moved to the dead letters.
        dead_lettered: u64,
        /// Calls OpenApp refused with 401 or 403.
        auth_failures: u64,
        /// Dead letters removed by the size or age cap.
        dead_letters_trimmed: u64,
        /// Duplicate runs of superseded tasks that were skipped.
        stale_tasks: u64,
        /// Events (per resident) older than what their lease already recorded: ignored.
        stale_events: u64,
        /// Jobs put off because another worker was converging the same resident.
        deferred: u64,
        /// Convergences held because their integration is paused.
        held: u64,
        /// Integrations paused now.
        paused_integrations: u64,
        /// The namespace's Redis layout: `4`, or `2` or `3` while a rolling upgrade from an
        /// earlier release is not finished (`lease-sync queue migrate --to 4`); 0 before any
        /// write.
        redis_layout: u32,
    }

    /// What lease-sync knows about one resident now.
    #[derive(Serialize, ToSchema)]
    #[schema(as = Resident)]
    pub(crate) struct ResidentDoc {
        /// The state: `{integration_id, user_id, version, leases: {<lease id>: LeaseRecord},
        /// applied: {present, version, at} | null, managed, next_check}`.
        #[schema(value_type = Object)]
        state: serde_json::Value,
        /// What OpenApp should show now: `present`, `absent` or `untouched`.
        desired: String,
        /// Why, for a person.
        reason: String,
        /// When that may next change (ms since the epoch), if it may.
        next_transition: Option<i64>,
        /// Whether the resident's integration is paused (their convergences are held).
        integration_paused: bool,
        /// `{lock_remaining_ms}` while a worker holds the resident's lock (converging them
        /// now; a lock whose worker died keeps other workers off until it lapses), else null.
        #[schema(value_type = Option<Object>)]
        converging: Option<serde_json::Value>,
    }

    /// One resident's history, newest first.
    #[derive(Serialize, ToSchema)]
    #[schema(as = History)]
    pub(crate) struct HistoryDoc {
        /// The integration.
        integration_id: String,
        /// The user.
        user_id: String,
        /// The entries, newest first. Each has `at` (ms since the epoch) and `kind`:
        /// `folded` {source, event_id, lease_id, event_type, outcome (changed, stale,
        /// overrode_future), delivery_id?, starts_at?, ends_at?}; `lease_reset` {source,
        /// lease_id, outcome, delivery_id?, by}; `identity_resolved` {source, email};
        /// `attempt` {delivery_id, attempt, desired (present, absent, untouched), reason?,
        /// method? (POST, DELETE), status?, request_id?, latency_ms?, outcome (delivered,
        /// retry, dead, superseded, stale), retry_at?, dead_reason?, error?, error_code?,
        /// message?}; `dead_lettered` {delivery_id, reason, attempts}; `held` {delivery_id};
        /// `replayed` and `purged` {delivery_id, by}; `paused` {by}; `resumed` {by, released}.
        #[schema(value_type = Vec<Object>)]
        entries: Vec<serde_json::Value>,
    }

    /// Who paused an integration, and when.
    #[derive(Serialize, ToSchema)]
    #[schema(as = PauseRecord)]
    pub(crate) struct PauseRecordDoc {
        /// Who: the token's name, `token:<fingerprint>` or `cli:<user>@<host>`.
        by: String,
        /// When (ms since the epoch).
        at: i64,
    }

    /// One integration and whether it is paused.
    #[derive(Serialize, ToSchema)]
    #[schema(as = IntegrationStatus)]
    pub(crate) struct IntegrationStatusDoc {
        /// The OpenApp integration id.
        integration_id: String,
        /// Its OpenApp organisation (empty when no longer configured).
        org_id: String,
        /// The buildings mapped to it, as `<source>/<property id>`.
        properties: Vec<String>,
        /// Who paused it and when; absent while it is not paused.
        paused: Option<PauseRecordDoc>,
        /// Convergences held while it is paused.
        held_jobs: u64,
    }

    /// What a pause or resume did.
    #[derive(Serialize, ToSchema)]
    #[schema(as = PauseChange)]
    pub(crate) struct PauseChangeDoc {
        /// The integration.
        integration_id: String,
        /// Whether it is paused now.
        paused: bool,
        /// Whether this call changed that (false: it already was so).
        changed: bool,
        /// On resume: held convergences released to the ready list.
        released: u64,
        /// Convergences still held.
        held_jobs: u64,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use serde::Serialize;
    use serde_json::Value;
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::{Components, RefOr};

    use super::*;
    use crate::dead_letters::{AuditRecord, DeadLetter, DeadLetterFilter, DeadLetterSummary};
    use crate::event::EventType;
    use crate::queue::ledger::AttemptRecord;
    use crate::queue::{DeliveryJob, QueueCounts};
    use crate::retry::DeadReason;

    fn components() -> &'static Components {
        match &DOCUMENT.components {
            Some(c) => c,
            None => panic!("the document has no components"),
        }
    }

    /// Property names of the component `name`, following `$ref`s and `allOf` (flatten).
    fn documented(name: &str) -> BTreeSet<String> {
        fn walk(schema: &RefOr<Schema>, out: &mut BTreeSet<String>) {
            match schema {
                RefOr::Ref(r) => {
                    let name = r.ref_location.rsplit('/').next().unwrap_or_default();
                    out.extend(documented(name));
                }
                RefOr::T(Schema::Object(o)) => out.extend(o.properties.keys().cloned()),
                RefOr::T(Schema::AllOf(all)) => all.items.iter().for_each(|s| walk(s, out)),
                RefOr::T(_) => panic!("a mirror is neither an object nor an allOf"),
            }
        }
        let schema = components()
            .schemas
            .get(name)
            .unwrap_or_else(|| panic!("no component schema `{name}`"));
        let mut out = BTreeSet::new();
        walk(schema, &mut out);
        out
    }

    /// Top-level keys `value` serializes to.
    fn serialized(value: &impl Serialize) -> BTreeSet<String> {
        match serde_json::to_value(value) {
            Ok(Value::Object(map)) => map.keys().cloned().collect(),
            other => panic!("not an object: {other:?}"),
        }
    }

    fn filter() -> DeadLetterFilter {
        DeadLetterFilter {
            source: Some("acme".into()),
            event_type: Some(EventType::LeaseSigned),
            reason: Some(DeadReason::Permanent),
            since: Some(Duration::from_secs(60)),
            older_than: Some(Duration::from_secs(1)),
        }
    }

    fn summary() -> DeadLetterSummary {
        DeadLetterSummary {
            id: "d".into(),
            reason: DeadReason::Permanent,
            dead_at: 2,
            first_seen: 1,
            source: "acme".into(),
            event_id: "e".into(),
            kind: "converge".into(),
            event_type: Some(EventType::LeaseSigned),
            action: "add".into(),
            lease_id: "l".into(),
            user_id: "u".into(),
            integration_id: "i".into(),
            attempts: 1,
            replays: 0,
            last_error: Some("400: no".into()),
        }
    }

    fn job() -> DeliveryJob {
        DeliveryJob {
            v: 1,
            delivery_id: "d".into(),
            event_id: "e".into(),
            source: "acme".into(),
            event_type: EventType::LeaseSigned,
            occurred_at: time::macros::datetime!(2026-11-22 10:15 UTC),
            lease_id: "l".into(),
            property_id: "p".into(),
            user_id: "u".into(),
            org_id: "o".into(),
            integration_id: "i".into(),
            role: "r".into(),
            trigger: Some("schedule".into()),
        }
    }

    fn attempt() -> AttemptRecord {
        let text = Some(String::from("x"));
        AttemptRecord {
            attempt: Some(1),
            outcome: "dead".into(),
            action: text.clone(),
            started_at: Some(1),
            finished_at: Some(2),
            status: Some(400),
            error: text.clone(),
            error_code: text.clone(),
            message: text.clone(),
            request_id: text.clone(),
            retry_after: text.clone(),
            delay_ms: Some(1),
            backoff_cap_ms: Some(1),
            task: text.clone(),
            by: text,
            at: Some(3),
        }
    }

    fn conflict() -> crate::queue::conflicts::Conflict {
        crate::queue::conflicts::Conflict {
            source: "s".into(),
            person: "tenant:1".into(),
            reason: crate::identity::ConflictReason::NoEmail,
            email: Some("a@b.c".into()),
            name: Some("A".into()),
            lease_id: "L".into(),
            property_id: "P".into(),
            integration_id: "I".into(),
            first_seen: 1,
            last_seen: 2,
            times: 1,
        }
    }

    fn reset_report() -> crate::leases::ResetReport {
        let record = crate::resident::LeaseRecord {
            state: crate::resident::LeaseState::Active,
            starts_at: Some(1),
            ends_at: Some(2),
            occurred_at: 3,
            rank: 0,
            event_id: "e".into(),
            source: "s".into(),
            property_id: "p".into(),
        };
        crate::leases::ResetReport {
            source: "s".into(),
            lease_id: "L".into(),
            residents: vec![crate::leases::Holder {
                integration_id: "i".into(),
                user_id: "u".into(),
                record,
                desired_now: crate::resident::Desired::Present,
                desired_after_reset: crate::resident::Desired::Absent,
            }],
            jobs: 1,
        }
    }

    fn integration_status() -> crate::integrations::IntegrationStatus {
        crate::integrations::IntegrationStatus {
            integration_id: "i".into(),
            org_id: "o".into(),
            properties: vec!["acme/P-1".into()],
            paused: Some(crate::queue::pause::PauseRecord {
                by: "cli:ops".into(),
                at: 1,
            }),
            held_jobs: 2,
        }
    }

    #[test]
    fn every_mirror_documents_exactly_what_its_type_serializes() {
        let counts = QueueCounts {
            oldest_ready_age_secs: Some(1.5),
            ..QueueCounts::default()
        };
        let audit = AuditRecord {
            at: 1,
            actor: "token:abc".into(),
            action: "replay".into(),
            ids: vec!["d".into()],
            filter: Some(filter()),
            lease: Some(crate::dead_letters::AuditedLease {
                source: "acme".into(),
                lease_id: "L-1".into(),
            }),
        };
        let dead_letter = DeadLetter {
            summary: summary(),
            job: crate::queue::Job::Converge(job()),
            event: serde_json::json!({"type": "lease.signed"}),
            attempt_log: vec![attempt()],
        };
        let page = crate::dead_letters::Page {
            items: vec![summary()],
            next_offset: Some(1),
        };
        for (name, keys) in [
            ("DeadLetterFilter", serialized(&filter())),
            ("DeadLetterSummary", serialized(&summary())),
            ("DeliveryJob", serialized(&job())),
            ("AttemptRecord", serialized(&attempt())),
            ("DeadLetter", serialized(&dead_letter)),
            ("Page", serialized(&page)),
            ("AuditRecord", serialized(&audit)),
            ("QueueCounts", serialized(&counts)),
            ("ResetReport", serialized(&reset_report())),
            ("Conflict", serialized(&conflict())),
            ("IntegrationStatus", serialized(&integration_status())),
            (
                "PauseRecord",
                serialized(integration_status().paused.as_ref().unwrap()),
            ),
            (
                "PauseChange",
                serialized(&crate::integrations::PauseChange {
                    integration_id: "i".into(),
                    paused: true,
                    changed: true,
                    released: 0,
                    held_jobs: 2,
                }),
            ),
            ("LeaseHolder", serialized(&reset_report().residents[0])),
            (
                "LeaseRecord",
                serialized(&reset_report().residents[0].record),
            ),
        ] {
            assert_eq!(
                documented(name),
                keys,
                "schema `{name}` drifted from its type"
            );
        }
    }

    #[test]
    fn every_endpoint_but_the_document_requires_the_bearer_token() {
        let document = serde_json::to_value(&*DOCUMENT).unwrap_or_default();
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3."))
        );
        assert_eq!(
            document["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        let paths = document["paths"].as_object().cloned().unwrap_or_default();
        assert_eq!(paths.len(), 14, "{:?}", paths.keys());
        for (path, item) in &paths {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let secured = operation.get("security").is_some();
                assert_eq!(secured, path != "/admin/openapi.json", "{method} {path}");
                if secured {
                    assert!(operation["responses"]["401"].is_object(), "{method} {path}");
                    assert!(operation["responses"]["503"].is_object(), "{method} {path}");
                    // Only what a `read` token may not do can be forbidden to it.
                    assert_eq!(
                        operation["responses"]["403"].is_object(),
                        method != "get",
                        "{method} {path}"
                    );
                }
            }
        }
    }
}
