//! Operator actions on one OpenApp integration (a building): pause and resume.
//!
//! While an integration is paused, the convergences of its residents are held: no OpenApp
//! call, no attempt spent, no dead letter. Webhooks are still accepted and folded, retries
//! still come due; all of it waits in the integration's held list. Resuming releases the
//! held jobs, and each converges the resident to what their state says *then*, so nothing
//! that arrived during the pause is lost or applied twice. An OpenApp call already under way
//! when the pause lands finishes normally.
//!
//! Both actions are audited (`GET /admin/audit`) and appear in the history of every resident
//! of the integration.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Settings;
use crate::dead_letters::{AuditRecord, DeadLetters};
use crate::history::{HistoryEntry, HistoryEvent};
use crate::queue::pause::{PauseRecord, Released};
use crate::queue::{JobQueue, QueueError, now_ms};

/// Why an integration cannot be paused or resumed.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    /// No `[[sources.properties]]` entry maps to this integration.
    #[error("no configured building maps to integration `{0}`")]
    NotFound(String),
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// One configured integration and whether it is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntegrationStatus {
    /// OpenApp integration id.
    pub integration_id: String,
    /// OpenApp organisation it belongs to.
    pub org_id: String,
    /// The buildings mapped to it, as `<source>/<property id>`.
    pub properties: Vec<String>,
    /// Who paused it and when, while it is paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseRecord>,
    /// Convergences held while it is paused.
    pub held_jobs: u64,
}

/// What a pause or resume did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PauseChange {
    /// The integration.
    pub integration_id: String,
    /// Whether it is paused now.
    pub paused: bool,
    /// Whether this call changed that (false: it already was).
    pub changed: bool,
    /// On resume: held convergences released to the ready list.
    pub released: u64,
    /// Convergences still held (on pause: those already waiting; on resume: 0 unless it was
    /// paused again meanwhile).
    pub held_jobs: u64,
}

/// Pauses, resumes and lists the configured integrations. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Integrations {
    queue: JobQueue,
    dead_letters: DeadLetters,
    /// Integration id → (org id, `<source>/<property>` names).
    configured: BTreeMap<String, (String, Vec<String>)>,
}

impl Integrations {
    /// The integrations `settings` maps buildings to, over `queue`.
    pub fn new(settings: &Settings, queue: JobQueue) -> Self {
        let mut configured: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for source in &settings.sources {
            for property in &source.properties {
                configured
                    .entry(property.integration_id.clone())
                    .or_insert_with(|| (property.org_id.clone(), Vec::new()))
                    .1
                    .push(format!("{}/{}", source.name, property.id));
            }
        }
        Self {
            dead_letters: DeadLetters::new(&queue),
            queue,
            configured,
        }
    }

    /// The configured integrations' ids with their organisations.
    pub fn configured(&self) -> impl Iterator<Item = (&str, &str)> {
        self.configured
            .iter()
            .map(|(id, (org, _))| (id.as_str(), org.as_str()))
    }

    /// The names of the sources that map a building to an integration, sorted.
    pub fn sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self
            .configured
            .values()
            .flat_map(|(_, properties)| properties.iter())
            .filter_map(|p| p.split_once('/').map(|(source, _)| source.to_owned()))
            .collect();
        sources.sort();
        sources.dedup();
        sources
    }

    /// The residents `email` was resolved to (from the identity cache), as (integration,
    /// user) pairs of every configured integration in the organisation that knows it.
    pub async fn residents_by_email(
        &self,
        email: &str,
    ) -> Result<Vec<(String, String)>, QueueError> {
        let Some(email) = crate::event::normalize_email(email) else {
            return Ok(Vec::new());
        };
        let digest = crate::identity::email_digest(&email);
        let mut found = Vec::new();
        let mut orgs: Vec<&str> = self
            .configured
            .values()
            .map(|(org, _)| org.as_str())
            .collect();
        orgs.sort_unstable();
        orgs.dedup();
        for org in orgs {
            if let Some(user) = self.queue.cached_identity(org, &digest).await? {
                for (integration, (integration_org, _)) in &self.configured {
                    if integration_org == org {
                        found.push((integration.clone(), user.clone()));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Whether `integration_id` is configured.
    pub fn is_configured(&self, integration_id: &str) -> bool {
        self.configured.contains_key(integration_id)
    }

    /// Every configured integration, and any paused one no longer configured, by id.
    pub async fn list(&self) -> Result<Vec<IntegrationStatus>, QueueError> {
        let mut paused = self.queue.paused().await?;
        let mut ids: Vec<&str> = self.configured.keys().map(String::as_str).collect();
        let orphans: Vec<String> = paused
            .keys()
            .filter(|id| !self.configured.contains_key(*id))
            .cloned()
            .collect();
        ids.extend(orphans.iter().map(String::as_str));
        let held = self.queue.held_counts(&ids).await?;
        Ok(ids
            .iter()
            .zip(held)
            .map(|(id, held_jobs)| {
                let (org_id, properties) = self
                    .configured
                    .get(*id)
                    .cloned()
                    .unwrap_or_else(|| (String::new(), Vec::new()));
                IntegrationStatus {
                    integration_id: (*id).to_owned(),
                    org_id,
                    properties,
                    paused: paused.remove(*id),
                    held_jobs,
                }
            })
            .collect())
    }

    /// One integration's status.
    pub async fn status(
        &self,
        integration_id: &str,
    ) -> Result<IntegrationStatus, IntegrationError> {
        self.list()
            .await?
            .into_iter()
            .find(|s| s.integration_id == integration_id)
            .ok_or_else(|| IntegrationError::NotFound(integration_id.to_owned()))
    }

    /// Pauses `integration_id` as `actor`; audited when it changes anything.
    pub async fn pause(
        &self,
        integration_id: &str,
        actor: &str,
    ) -> Result<PauseChange, IntegrationError> {
        self.known(integration_id)?;
        let changed = self.queue.pause(integration_id, actor).await?;
        if changed {
            self.record(
                integration_id,
                actor,
                "pause",
                HistoryEvent::Paused {
                    by: actor.to_owned(),
                },
            )
            .await;
        }
        let held_jobs = self.held(integration_id).await?;
        Ok(PauseChange {
            integration_id: integration_id.to_owned(),
            paused: true,
            changed,
            released: 0,
            held_jobs,
        })
    }

    /// Resumes `integration_id` as `actor` and releases its held jobs; audited when it was
    /// paused or had held jobs. Also for an integration no longer configured that is still
    /// paused, so nothing stays held for ever.
    pub async fn resume(
        &self,
        integration_id: &str,
        actor: &str,
    ) -> Result<PauseChange, IntegrationError> {
        if !self.is_configured(integration_id)
            && !self.queue.paused().await?.contains_key(integration_id)
        {
            return Err(IntegrationError::NotFound(integration_id.to_owned()));
        }
        let (changed, released) = self.queue.resume(integration_id).await?;
        let (released, paused) = match released {
            Released::Moved(n) => (n, false),
            Released::PausedAgain(n) => (n, true),
        };
        if changed || released > 0 {
            self.record(
                integration_id,
                actor,
                "resume",
                HistoryEvent::Resumed {
                    by: actor.to_owned(),
                    released,
                },
            )
            .await;
        }
        let held_jobs = self.held(integration_id).await?;
        Ok(PauseChange {
            integration_id: integration_id.to_owned(),
            paused,
            changed,
            released,
            held_jobs,
        })
    }

    /// Releases the held jobs of every configured integration that is not paused (the
    /// workers' housekeeping: a resume that failed half-way leaves nothing stuck); how many.
    pub async fn release_unpaused(&self) -> Result<u64, QueueError> {
        let paused = self.queue.paused().await?;
        let ids: Vec<&str> = self
            .configured
            .keys()
            .map(String::as_str)
            .filter(|id| !paused.contains_key(*id))
            .collect();
        let held = self.queue.held_counts(&ids).await?;
        let mut total = 0;
        for (id, n) in ids.iter().zip(held) {
            if n > 0
                && let Released::Moved(moved) = self.queue.release_held(id).await?
            {
                total += moved;
            }
        }
        Ok(total)
    }

    fn known(&self, integration_id: &str) -> Result<(), IntegrationError> {
        if self.is_configured(integration_id) {
            Ok(())
        } else {
            Err(IntegrationError::NotFound(integration_id.to_owned()))
        }
    }

    async fn held(&self, integration_id: &str) -> Result<u64, QueueError> {
        Ok(self
            .queue
            .held_counts(&[integration_id])
            .await?
            .first()
            .copied()
            .unwrap_or(0))
    }

    /// The audit record and the integration's history entry. A failure is logged, not
    /// returned: the pause or resume already happened.
    async fn record(&self, integration_id: &str, actor: &str, action: &str, event: HistoryEvent) {
        let now = now_ms();
        let record = AuditRecord {
            at: now,
            actor: actor.to_owned(),
            action: action.to_owned(),
            ids: vec![integration_id.to_owned()],
            filter: None,
            lease: None,
        };
        if let Err(e) = self.dead_letters.audit(&record).await {
            tracing::error!(error = %e, actor, action, integration_id, "the {action} was done but its audit record could not be written");
        }
        let entry = HistoryEntry::new(now, event);
        if let Err(e) = self
            .queue
            .append_integration_history(integration_id, &entry)
            .await
        {
            tracing::error!(error = %e, action, integration_id, "the {action} was done but the integration's history could not be written");
        }
    }
}
