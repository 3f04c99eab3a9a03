//! Refreshes: reading a lease (or a tenant and their leases) again from a Buildium source and
//! folding what Buildium says into resident state.
//!
//! Buildium's webhooks only say *that* something changed, so a worker reads the lease and
//! works out each tenant's access ([`crate::sources::buildium::lease`]), resolves each tenant
//! to an OpenApp user by email ([`crate::identity`]; who cannot be resolved becomes a
//! conflict), and folds one lease record per tenant into that user's state with the lease's
//! `LastUpdatedDateTime` as the version — so a late or repeated webhook cannot undo newer
//! state. Every resident whose state changed gets a convergence job, as after a native event.
//! A lease that answers 404 was deleted: the residents holding it lose what it gave them.
//!
//! Refreshes of one source read through [`reads::SourceReads`], which batches the reads of
//! every refresh waiting in this process (one list read for many changed leases).
//!
//! Failures are returned to the worker, which classifies them like OpenApp's (retry with
//! backoff, `Retry-After`, dead letter); a refresh is idempotent, so retrying all of it is
//! safe.

pub mod reads;

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{debug, info, warn};

use crate::config::{PropertySettings, Settings, SourceKind, SourceSettings};
use crate::event::{AccessWindow, EventType, Lease, LeaseEvent, Resident};
use crate::identity::{ConflictReason, ResolveError, Resolved, Resolver};
use crate::openapp::{CallError, OpenAppClient};
use crate::queue::conflicts::Conflict;
use crate::queue::rate_limit::RateLimit;
use crate::queue::{DeliveryJob, EnqueueLimits, EnqueueOutcome, JobQueue, QueueError, Target};
use crate::reconcile::LeaseRow;
use crate::resident::{LeaseRecord, LeaseState};
use crate::sources::buildium::client::{
    BuildiumClient, BuildiumClientOptions, BuildiumError, ClientBuildError, LeaseQuery,
    LeaseStatus as ClientLeaseStatus, ListProgress,
};
use crate::sources::buildium::lease::{
    AccessRules, LeaseError, LeaseFacts, LeaseMessage, TenantAccess, TenantFacts,
};
use crate::sources::buildium::webhook::Refresh;

/// The `trigger` of convergence jobs a refresh queues.
pub const REFRESH_TRIGGER: &str = "refresh";

/// Why a refresh did not complete. Each says whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Buildium failed or refused.
    #[error(transparent)]
    Buildium(#[from] BuildiumError),
    /// Resolving an email failed (OpenApp or the cache).
    #[error("resolving a tenant's OpenApp user: {0}")]
    Identity(#[from] ResolveError),
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The lease is not what Buildium documents; reading it again gives the same answer.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The job names a source that is not configured (or, for a refresh, not a Buildium
    /// source).
    #[error("source `{0}` is not configured for this job")]
    UnknownSource(String),
    /// The event's building is no longer mapped by its source.
    #[error("property `{property}` is not mapped by source `{source_name}`")]
    UnknownProperty {
        /// The source.
        source_name: String,
        /// The property id of the event.
        property: String,
    },
}

impl RefreshError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RefreshError::Buildium(e) => e.is_retryable(),
            RefreshError::Identity(ResolveError::OpenApp(e)) => e.is_retryable(),
            RefreshError::Identity(ResolveError::Cache(_)) | RefreshError::Queue(_) => true,
            RefreshError::Lease(_)
            | RefreshError::UnknownSource(_)
            | RefreshError::UnknownProperty { .. } => false,
        }
    }

    /// Whether a credential was refused (Buildium's or OpenApp's): counted apart.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            RefreshError::Buildium(e) => e.is_auth_failure(),
            RefreshError::Identity(ResolveError::OpenApp(e)) => {
                matches!(e.status(), Some(401 | 403))
            }
            _ => false,
        }
    }

    /// The wait the failing server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RefreshError::Buildium(e) => e.retry_after(),
            RefreshError::Identity(ResolveError::OpenApp(e)) => e
                .retry_after()
                .and_then(|v| crate::retry::parse_retry_after(v, std::time::SystemTime::now())),
            _ => None,
        }
    }

    /// The HTTP status of the failing answer, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            RefreshError::Buildium(e) => e.status(),
            RefreshError::Identity(ResolveError::OpenApp(e)) => e.status(),
            _ => None,
        }
    }

    /// A short name of the failure for the attempt log: `buildium`, `openapp`, `redis`,
    /// `invalid_lease`, `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            RefreshError::Buildium(_) => "buildium",
            RefreshError::Identity(ResolveError::OpenApp(_)) => "openapp",
            RefreshError::Identity(ResolveError::Cache(_)) | RefreshError::Queue(_) => "redis",
            RefreshError::Lease(_) => "invalid_lease",
            RefreshError::UnknownSource(_) | RefreshError::UnknownProperty { .. } => "config",
        }
    }
}

/// What one refresh did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Leases read.
    pub leases: usize,
    /// Leases found deleted (404).
    pub deleted: usize,
    /// Tenant records folded (one per tenant and lease).
    pub folded: usize,
    /// Convergence jobs queued (residents whose state changed).
    pub jobs: usize,
    /// Tenants without an OpenApp user (conflicts recorded).
    pub conflicts: usize,
    /// Leases of buildings the source does not map (skipped).
    pub unmapped: usize,
}

/// What a full pull read: the rows a reconciliation plans against, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    /// One row per tenant a lease gives access to now or later, with their OpenApp user.
    pub rows: Vec<LeaseRow>,
    /// Leases read.
    pub leases: usize,
    /// Tenants without an OpenApp user (conflicts recorded): they get no row.
    pub conflicts: usize,
    /// Leases of buildings the source does not map.
    pub unmapped: usize,
    /// List entries that are not leases as Buildium documents them.
    pub invalid: usize,
    /// Leases read again, one by one, to confirm a planned removal (a lease the paged list
    /// missed while it shifted).
    pub confirmed: usize,
}

/// One Buildium source, ready to read.
struct BuildiumSource {
    settings: SourceSettings,
    client: BuildiumClient,
    /// The reads refreshes share.
    reads: reads::SourceReads,
    statuses: (Vec<String>, Vec<String>),
    /// Mapped buildings by Buildium `PropertyId`.
    properties: HashMap<i64, PropertySettings>,
}

/// Refreshes the leases of every Buildium source. Cheap to share.
pub struct Refresher {
    sources: HashMap<String, BuildiumSource>,
    queue: JobQueue,
    resolver: Resolver,
    limits: EnqueueLimits,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Refresher {
    /// A refresher for the Buildium sources of `settings` (`None` when there are none),
    /// reading through clients that share one request rate per source in `queue`'s Redis,
    /// and resolving emails with `openapp`.
    pub fn new(
        settings: &Settings,
        queue: JobQueue,
        openapp: OpenAppClient,
    ) -> Result<Option<Self>, ClientBuildError> {
        let mut sources = HashMap::new();
        for source in settings
            .sources
            .iter()
            .filter(|s| s.kind == SourceKind::Buildium)
        {
            let Some(api) = &source.buildium else {
                continue;
            };
            let Some(secret) = api.client_secret.clone() else {
                continue;
            };
            let options = BuildiumClientOptions {
                base_url: api.base_url.clone(),
                allow_insecure_http: api.allow_insecure_http,
                timeout: api.timeout,
                ..BuildiumClientOptions::new(api.client_id.clone(), secret)
            };
            // Every process limiting this account takes its slots under the same scope.
            let limiter = queue.rate_limiter(
                &format!("buildium:{}", source.name),
                RateLimit::per_second(api.rate_limit_per_sec),
            );
            let client = BuildiumClient::new(options)?.with_rate_limiter(limiter);
            let properties: HashMap<i64, PropertySettings> = source
                .properties
                .iter()
                .filter_map(|p| Some((p.id.parse::<i64>().ok()?, p.clone())))
                .collect();
            let reads =
                reads::SourceReads::new(client.clone(), properties.keys().copied().collect());
            sources.insert(
                source.name.clone(),
                BuildiumSource {
                    settings: source.clone(),
                    client,
                    reads,
                    statuses: (api.tenant_statuses.clone(), api.lease_statuses.clone()),
                    properties,
                },
            );
        }
        if sources.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            sources,
            resolver: Resolver::new(openapp, queue.clone(), settings.identity.create_missing),
            queue,
            limits: EnqueueLimits {
                dedupe_ttl: settings.http.dedupe_ttl,
                // Records carry Buildium's own update times; none is ahead of ours by design.
                max_clock_skew: Duration::from_secs(300),
                timeout: Duration::from_secs(10),
            },
        }))
    }

    /// Reads `refresh` from `source` and folds it. `cued_at`: when the webhook (or whatever
    /// queued it) asked for it, if known — reads of several refreshes are then batched.
    pub async fn refresh(
        &self,
        source: &str,
        refresh: Refresh,
        cued_at: Option<OffsetDateTime>,
    ) -> Result<Refreshed, RefreshError> {
        let buildium = self.source(source)?;
        let mut done = Refreshed::default();
        match refresh {
            Refresh::Lease { lease_id } => {
                self.refresh_lease(buildium, lease_id, cued_at, &mut done)
                    .await?;
            }
            Refresh::Tenant { tenant_id, added } => {
                match buildium.reads.tenant_leases(tenant_id, added).await? {
                    // The tenant's answer carries each lease in full: folded as read.
                    Some(leases) => {
                        for lease in &leases {
                            done.leases += 1;
                            self.fold_lease(buildium, lease, &mut done).await?;
                        }
                    }
                    None => debug!(
                        tenant.id = tenant_id,
                        "tenant not found at Buildium; nothing to refresh"
                    ),
                }
            }
        }
        Ok(done)
    }

    /// What the shared reads of `source` did in this process so far.
    pub fn read_stats(&self, source: &str) -> Option<reads::ReadStats> {
        self.sources.get(source).map(|s| s.reads.stats())
    }

    /// The configured Buildium source `name`.
    fn source(&self, name: &str) -> Result<&BuildiumSource, RefreshError> {
        self.sources
            .get(name)
            .ok_or_else(|| RefreshError::UnknownSource(name.to_owned()))
    }

    /// Whether `source` is a configured Buildium source.
    pub fn knows(&self, source: &str) -> bool {
        self.sources.contains_key(source)
    }

    /// Reads the Active and Future leases of every building `source` maps (paged; `progress`
    /// after each page) and turns them into rows: one per tenant a lease gives access to,
    /// with their OpenApp user (resolved by email; conflicts recorded). What reconciliation
    /// plans against instead of a file.
    pub async fn pull_rows(
        &self,
        source: &str,
        mut progress: impl FnMut(&ListProgress),
    ) -> Result<Pulled, RefreshError> {
        let buildium = self.source(source)?;
        let mut pages = buildium.client.list_leases(LeaseQuery {
            statuses: vec![ClientLeaseStatus::Active, ClientLeaseStatus::Future],
            property_ids: buildium.properties.keys().copied().collect(),
            ..LeaseQuery::default()
        });
        let mut pulled = Pulled::default();
        while let Some(page) = pages.next_page().await? {
            pulled.invalid += page.invalid.len();
            for lease in &page.leases {
                pulled.leases += 1;
                self.rows_of(buildium, lease, &mut pulled).await?;
            }
            progress(&pages.progress());
        }
        Ok(pulled)
    }

    /// Reads `lease_id` again and adds its rows to `pulled` (a removal planned for one of its
    /// tenants is confirmed, or the tenant is granted after all).
    pub async fn confirm_lease(
        &self,
        source: &str,
        lease_id: i64,
        pulled: &mut Pulled,
    ) -> Result<(), RefreshError> {
        let buildium = self.source(source)?;
        pulled.confirmed += 1;
        if let Some(lease) = buildium.client.get_lease(lease_id).await? {
            self.rows_of(buildium, &lease, pulled).await?;
        }
        Ok(())
    }

    /// Reads the leases of `source` updated since `since` — Past ones included, so endings
    /// are seen — and folds each, as a webhook's refresh would. The pull between full ones.
    pub async fn pull_changes(
        &self,
        source: &str,
        since: OffsetDateTime,
        mut progress: impl FnMut(&ListProgress),
    ) -> Result<Refreshed, RefreshError> {
        let buildium = self.source(source)?;
        let mut pages = buildium.client.list_leases(LeaseQuery {
            statuses: vec![
                ClientLeaseStatus::Active,
                ClientLeaseStatus::Future,
                ClientLeaseStatus::Past,
            ],
            property_ids: buildium.properties.keys().copied().collect(),
            updated_from: Some(since),
            ..LeaseQuery::default()
        });
        let mut done = Refreshed::default();
        while let Some(page) = pages.next_page().await? {
            for lease in &page.leases {
                done.leases += 1;
                self.fold_lease(buildium, lease, &mut done).await?;
            }
            progress(&pages.progress());
        }
        Ok(done)
    }

    /// Reads again the leases of `source`'s open conflicts (at most `limit`, those seen
    /// longest ago first), so a person whose OpenApp user now exists gets their door without
    /// waiting for the lease to change. Returns what was folded and how many leases were read.
    pub async fn refresh_conflicts(
        &self,
        source: &str,
        limit: usize,
    ) -> Result<Refreshed, RefreshError> {
        let buildium = self.source(source)?;
        let mut conflicts = self.queue.conflicts(Some(source)).await?;
        conflicts.sort_by_key(|c| c.last_seen);
        let mut leases: Vec<i64> = Vec::new();
        for id in conflicts
            .iter()
            .filter_map(|c| c.lease_id.parse::<i64>().ok())
        {
            if leases.len() == limit {
                break;
            }
            if !leases.contains(&id) {
                leases.push(id);
            }
        }
        let mut done = Refreshed::default();
        for lease_id in leases {
            self.refresh_lease(buildium, lease_id, None, &mut done)
                .await?;
        }
        Ok(done)
    }

    async fn rows_of(
        &self,
        source: &BuildiumSource,
        lease: &LeaseMessage,
        pulled: &mut Pulled,
    ) -> Result<(), RefreshError> {
        let Some(property) = source.properties.get(&lease.property_id) else {
            pulled.unmapped += 1;
            return Ok(());
        };
        let rules = AccessRules {
            tenant_statuses: source.statuses.0.clone(),
            lease_statuses: source.statuses.1.clone(),
            margins: property.margins(&source.settings),
        };
        let facts = lease.facts(&property.zone(), &rules)?;
        for tenant in &facts.tenants {
            let TenantAccess::Grants { starts_at, ends_at } = tenant.access else {
                continue;
            };
            let email = match &tenant.email {
                Some(email) => Some(email.clone()),
                None => source
                    .client
                    .get_tenant(tenant.tenant_id)
                    .await?
                    .and_then(|t| t.email)
                    .filter(|e| !e.trim().is_empty()),
            };
            let person = format!("tenant:{}", tenant.tenant_id);
            match self
                .resolver
                .resolve(&property.org_id, email.as_deref(), tenant.name.as_deref())
                .await?
            {
                Resolved::User(user_id) => {
                    self.queue
                        .person_resolved(&source.settings.name, &person, &user_id)
                        .await?;
                    let at = |ms: i64| {
                        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                    };
                    pulled.rows.push(LeaseRow {
                        lease_id: facts.lease_id.to_string(),
                        property_id: property.id.clone(),
                        user_id,
                        starts_at: starts_at.and_then(at),
                        ends_at: ends_at.and_then(at),
                        at: format!("lease {} tenant {}", facts.lease_id, tenant.tenant_id),
                    });
                }
                Resolved::Conflict(reason) => {
                    pulled.conflicts += 1;
                    self.conflict(source, property, &facts, tenant, email, reason, &person)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn refresh_lease(
        &self,
        source: &BuildiumSource,
        lease_id: i64,
        cued_at: Option<OffsetDateTime>,
        done: &mut Refreshed,
    ) -> Result<(), RefreshError> {
        match source.reads.lease(lease_id, cued_at).await? {
            Some(lease) => {
                done.leases += 1;
                self.fold_lease(source, &lease, done).await
            }
            None => {
                // `reads` made sure the API answers: a wrong base URL is no deletion.
                done.deleted += 1;
                self.fold_deleted(source, lease_id, done).await
            }
        }
    }

    async fn fold_lease(
        &self,
        source: &BuildiumSource,
        lease: &LeaseMessage,
        done: &mut Refreshed,
    ) -> Result<(), RefreshError> {
        let Some(property) = source.properties.get(&lease.property_id) else {
            debug!(
                lease.id = lease.id,
                property.id = lease.property_id,
                "lease of a building the source does not map; skipped"
            );
            done.unmapped += 1;
            return Ok(());
        };
        let rules = AccessRules {
            tenant_statuses: source.statuses.0.clone(),
            lease_statuses: source.statuses.1.clone(),
            margins: property.margins(&source.settings),
        };
        let facts = lease.facts(&property.zone(), &rules)?;
        let mut resolved_users = Vec::new();
        for tenant in &facts.tenants {
            let person = format!("tenant:{}", tenant.tenant_id);
            // A tenant who moved out is no longer among the lease's current tenants, so the
            // lease does not carry their email: the user they were resolved to before is who
            // loses the door, without reading their record from Buildium.
            let remembered = match (&tenant.email, tenant.access) {
                (None, TenantAccess::Ended { .. }) => {
                    self.queue
                        .person_user(&source.settings.name, &person)
                        .await?
                }
                _ => None,
            };
            let remembered_user = remembered.is_some();
            let (email, resolved) = match remembered {
                Some(user_id) => (None, Resolved::User(user_id)),
                None => {
                    let email = match &tenant.email {
                        Some(email) => Some(email.clone()),
                        // Not a current tenant: their email is on their own record.
                        None => source
                            .client
                            .get_tenant(tenant.tenant_id)
                            .await?
                            .and_then(|t| t.email)
                            .filter(|e| !e.trim().is_empty()),
                    };
                    let resolved = self
                        .resolver
                        .resolve(&property.org_id, email.as_deref(), tenant.name.as_deref())
                        .await?;
                    (email, resolved)
                }
            };
            match resolved {
                Resolved::Conflict(reason) => {
                    done.conflicts += 1;
                    self.conflict(source, property, &facts, tenant, email, reason, &person)
                        .await?;
                }
                Resolved::User(user_id) => {
                    if !remembered_user {
                        self.queue
                            .person_resolved(&source.settings.name, &person, &user_id)
                            .await?;
                        if let Some(email) = &email {
                            self.identity_history(source, property, &user_id, email)
                                .await;
                        }
                    }
                    done.folded += 1;
                    done.jobs += self
                        .fold_tenant(source, property, &facts, tenant, &user_id)
                        .await?;
                    resolved_users.push((tenant.tenant_id, user_id));
                }
            }
        }
        self.end_in_other_buildings(source, property, &facts, &resolved_users, done)
            .await
    }

    /// Records in the resident's history that a tenant's `email` was matched to `user_id`. A
    /// failure is logged: the resolution stands.
    async fn identity_history(
        &self,
        source: &BuildiumSource,
        property: &PropertySettings,
        user_id: &str,
        email: &str,
    ) {
        let entry = crate::queue::history::ResidentEntry {
            integration_id: &property.integration_id,
            user_id,
            entry: crate::history::HistoryEntry::new(
                crate::queue::now_ms(),
                crate::history::HistoryEvent::IdentityResolved {
                    source: source.settings.name.clone(),
                    email: email.to_owned(),
                },
            ),
        };
        if let Err(e) = self.queue.append_history(&[entry]).await {
            warn!(error = %e, "a tenant was resolved but the resident's history could not be written");
        }
    }

    /// A lease moved to a unit of another mapped building (its `PropertyId` changed): its
    /// tenants' records of it in the other buildings' integrations end, at the lease's new
    /// version, so the old building removes them while the new one adds them.
    async fn end_in_other_buildings(
        &self,
        source: &BuildiumSource,
        property: &PropertySettings,
        facts: &LeaseFacts,
        users: &[(i64, String)],
        done: &mut Refreshed,
    ) -> Result<(), RefreshError> {
        let mut others: Vec<&PropertySettings> = Vec::new();
        for p in source.properties.values() {
            if p.integration_id != property.integration_id
                && !others.iter().any(|o| o.integration_id == p.integration_id)
            {
                others.push(p);
            }
        }
        if others.is_empty() {
            return Ok(());
        }
        let integrations: Vec<&str> = others.iter().map(|p| p.integration_id.as_str()).collect();
        let lease_id = facts.lease_id.to_string();
        for (tenant_id, user_id) in users {
            let held = self
                .queue
                .lease_records_of(&integrations, user_id, &lease_id)
                .await?;
            for (other, record) in others.iter().zip(held) {
                let Some(record) = record.filter(|r| {
                    r.source == source.settings.name
                        && r.state == LeaseState::Active
                        && r.property_id != property.id
                }) else {
                    continue;
                };
                let building = source
                    .properties
                    .values()
                    .find(|p| p.id == record.property_id)
                    .unwrap_or(other);
                let event_id = format!(
                    "buildium:{lease_id}:{}:{tenant_id}:{user_id}:moved",
                    facts.version
                );
                let ended = LeaseRecord {
                    state: LeaseState::Ended,
                    starts_at: None,
                    ends_at: Some(facts.version),
                    occurred_at: facts.version,
                    rank: 1,
                    event_id: event_id.clone(),
                    source: source.settings.name.clone(),
                    property_id: record.property_id.clone(),
                };
                let event = synthetic_event(&event_id, &ended, &lease_id, user_id);
                info!(
                    lease.id = %lease_id,
                    "lease moved to another building: its record in the old building ends"
                );
                done.folded += 1;
                done.jobs += self.fold(source, building, &event, &ended, user_id).await?;
            }
        }
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one conflict record is made of all of these; a struct would only rename them"
    )]
    async fn conflict(
        &self,
        source: &BuildiumSource,
        property: &PropertySettings,
        facts: &LeaseFacts,
        tenant: &TenantFacts,
        email: Option<String>,
        reason: ConflictReason,
        person: &str,
    ) -> Result<(), RefreshError> {
        // A tenant who no longer gets access is no conflict worth an operator's time.
        if matches!(tenant.access, TenantAccess::Ended { .. }) {
            return Ok(());
        }
        warn!(
            lease.id = facts.lease_id,
            tenant.id = tenant.tenant_id,
            reason = reason.as_str(),
            "a Buildium tenant has no OpenApp user: no access until resolved"
        );
        self.queue
            .record_conflict(&Conflict {
                source: source.settings.name.clone(),
                person: person.to_owned(),
                reason,
                email,
                name: tenant.name.clone(),
                lease_id: facts.lease_id.to_string(),
                property_id: property.id.clone(),
                integration_id: property.integration_id.clone(),
                first_seen: 0,
                last_seen: 0,
                times: 0,
            })
            .await?;
        Ok(())
    }

    /// Folds `tenant`'s record of the lease into `user_id`'s state; 1 if a convergence was
    /// queued.
    async fn fold_tenant(
        &self,
        source: &BuildiumSource,
        property: &PropertySettings,
        facts: &LeaseFacts,
        tenant: &TenantFacts,
        user_id: &str,
    ) -> Result<usize, RefreshError> {
        let (state, rank, starts_at, ends_at) = match tenant.access {
            TenantAccess::Grants { starts_at, ends_at } => {
                (LeaseState::Active, 0, starts_at, ends_at)
            }
            TenantAccess::Ended { ends_at } => (LeaseState::Ended, 1, None, Some(ends_at)),
        };
        let lease_id = facts.lease_id.to_string();
        // Per user too: a tenant resolved to another user (their old one was deleted) is a
        // new fold, not a duplicate of the old one.
        let event_id = format!(
            "buildium:{}:{}:{}:{user_id}",
            facts.lease_id, facts.version, tenant.tenant_id
        );
        let record = LeaseRecord {
            state,
            starts_at,
            ends_at,
            occurred_at: facts.version,
            rank,
            event_id: event_id.clone(),
            source: source.settings.name.clone(),
            property_id: property.id.clone(),
        };
        let event = synthetic_event(&event_id, &record, &lease_id, user_id);
        self.fold(source, property, &event, &record, user_id).await
    }

    /// A deleted lease: every resident holding this source's record of it loses what it gave.
    async fn fold_deleted(
        &self,
        source: &BuildiumSource,
        lease_id: i64,
        done: &mut Refreshed,
    ) -> Result<(), RefreshError> {
        let now = crate::queue::now_ms();
        let lease = lease_id.to_string();
        let mut seen = Vec::new();
        for property in source.properties.values() {
            if seen.contains(&property.integration_id) {
                continue;
            }
            seen.push(property.integration_id.clone());
            for state in self
                .queue
                .residents_holding(&property.integration_id, &lease)
                .await?
            {
                let Some(held) = state
                    .leases
                    .get(&lease)
                    .filter(|r| r.source == source.settings.name)
                else {
                    continue;
                };
                let event_id = format!("buildium:{lease}:deleted:{now}:{}", state.user_id);
                let record = LeaseRecord {
                    state: LeaseState::Ended,
                    starts_at: None,
                    ends_at: Some(now),
                    occurred_at: now,
                    rank: 1,
                    event_id: event_id.clone(),
                    source: source.settings.name.clone(),
                    property_id: held.property_id.clone(),
                };
                let event = synthetic_event(&event_id, &record, &lease, &state.user_id);
                let building = source
                    .properties
                    .values()
                    .find(|p| p.id == held.property_id)
                    .unwrap_or(property);
                done.folded += 1;
                done.jobs += self
                    .fold(source, building, &event, &record, &state.user_id)
                    .await?;
            }
        }
        info!(
            lease.id = lease_id,
            "lease deleted at Buildium: its residents' records ended"
        );
        Ok(())
    }

    async fn fold(
        &self,
        source: &BuildiumSource,
        property: &PropertySettings,
        event: &LeaseEvent,
        record: &LeaseRecord,
        user_id: &str,
    ) -> Result<usize, RefreshError> {
        let role = property.effective_role();
        let job = DeliveryJob::for_event(
            event,
            &source.settings.name,
            user_id,
            Target {
                org_id: &property.org_id,
                integration_id: &property.integration_id,
                role: &role,
            },
            Some(REFRESH_TRIGGER),
        );
        let outcome = self
            .queue
            .enqueue_record(&source.settings.name, event, record, &job, self.limits)
            .await?;
        Ok(match outcome {
            EnqueueOutcome::Queued { jobs, .. } => jobs,
            EnqueueOutcome::Duplicate | EnqueueOutcome::Conflict => 0,
        })
    }
}

/// The event a folded record stands for: the convergence job and the dead letter show it.
fn synthetic_event(id: &str, record: &LeaseRecord, lease_id: &str, user_id: &str) -> LeaseEvent {
    let at = |ms: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    LeaseEvent {
        id: id.to_owned(),
        event_type: match record.state {
            LeaseState::Active => EventType::LeaseSigned,
            LeaseState::Ended => EventType::LeaseEnded,
        },
        occurred_at: at(record.occurred_at),
        lease: Lease {
            id: lease_id.to_owned(),
            property_id: record.property_id.clone(),
            unit: None,
        },
        residents: vec![Resident {
            openapp_user_id: user_id.to_owned(),
            external_id: None,
        }],
        residents_by_email: Vec::new(),
        access: (record.starts_at.is_some() || record.ends_at.is_some()).then(|| AccessWindow {
            starts_at: record.starts_at.map(at),
            ends_at: record.ends_at.map(at),
        }),
    }
}

impl From<CallError> for RefreshError {
    fn from(e: CallError) -> Self {
        RefreshError::Identity(ResolveError::OpenApp(e))
    }
}
