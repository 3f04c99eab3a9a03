//! Native events that name residents by email: resolved to OpenApp users in the workers,
//! then folded like any event.
//!
//! Ingest must answer within the sender's timeout and never calls OpenApp, so an event with
//! `residents[].email` is queued whole as a [`ResolveJob`]. A worker resolves each email
//! ([`crate::identity`]: the cache, then `GET /users/search`, then `POST /users` with
//! `create_missing`) and folds the event for every resident it could resolve and every one
//! the sender named by id, in one atomic fold versioned by the event's `occurred_at` — the
//! same state and jobs as if the sender had given the ids. Who cannot be resolved gets no
//! access and a conflict (`no_openapp_user`, `ambiguous_email`); the lease's next event
//! resolves them again. Failures (OpenApp, Redis) retry, dead-letter and replay like every job.

use std::collections::HashMap;
use std::time::Duration;

use tracing::{debug, warn};

use crate::config::{PropertySettings, Settings, SourceSettings};
use crate::event::{EventType, LeaseEvent, Resident, ResidentByEmail};
use crate::history::{HistoryEntry, HistoryEvent};
use crate::identity::{ConflictReason, Resolved, Resolver, email_digest};
use crate::openapp::OpenAppClient;
use crate::queue::conflicts::Conflict;
use crate::queue::history::ResidentEntry;
use crate::queue::{
    DeliveryJob, EnqueueLimits, EnqueueOutcome, JobQueue, ResolveJob, Target, now_ms,
};
use crate::refresh::{RefreshError, Refreshed};

/// The conflict key of a person known by email: a digest, never the email itself.
pub fn email_person(email: &str) -> String {
    format!("email:{}", &email_digest(email)[..16])
}

/// Resolves and folds the events of every source. Cheap to share.
#[derive(Debug)]
pub struct EventResolver {
    sources: HashMap<String, SourceSettings>,
    resolver: Resolver,
    queue: JobQueue,
    limits: EnqueueLimits,
}

impl EventResolver {
    /// A resolver for the sources of `settings`, asking `openapp` and caching in `queue`'s
    /// Redis.
    pub fn new(settings: &Settings, queue: JobQueue, openapp: OpenAppClient) -> Self {
        Self {
            sources: settings
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            resolver: Resolver::new(openapp, queue.clone(), settings.identity.create_missing),
            queue,
            limits: EnqueueLimits {
                dedupe_ttl: settings.http.dedupe_ttl,
                // Ingest already refused events dated too far ahead.
                max_clock_skew: Duration::from_secs(300),
                timeout: Duration::from_secs(10),
            },
        }
    }

    /// Resolves the emails of `job`'s event and folds it. Idempotent: a retry resolves again
    /// (from the cache) and the fold happens once.
    pub async fn run(&self, job: &ResolveJob) -> Result<Refreshed, RefreshError> {
        let source = self
            .sources
            .get(&job.source)
            .ok_or_else(|| RefreshError::UnknownSource(job.source.clone()))?;
        let event = &job.event;
        let property = source
            .properties
            .iter()
            .find(|p| p.id == event.lease.property_id)
            .ok_or_else(|| RefreshError::UnknownProperty {
                source_name: source.name.clone(),
                property: event.lease.property_id.clone(),
            })?;
        let mut done = Refreshed::default();
        let mut residents = event.residents.clone();
        let mut matched: Vec<(String, &str)> = Vec::new();
        for person in &event.residents_by_email {
            let resolved = self
                .resolver
                .resolve(
                    &property.org_id,
                    Some(&person.email),
                    person.name.as_deref(),
                )
                .await?;
            let key = email_person(&person.email);
            match resolved {
                Resolved::User(user_id) => {
                    self.queue.resolve_conflict(&source.name, &key).await?;
                    matched.push((user_id.clone(), &person.email));
                    if !residents.iter().any(|r| r.openapp_user_id == user_id) {
                        residents.push(Resident {
                            openapp_user_id: user_id,
                            external_id: person.external_id.clone(),
                        });
                    }
                }
                Resolved::Conflict(reason) => {
                    done.conflicts += 1;
                    self.conflict(source, property, event, person, reason, &key)
                        .await?;
                }
            }
        }
        let entries: Vec<ResidentEntry<'_>> = matched
            .iter()
            .map(|(user_id, email)| ResidentEntry {
                integration_id: &property.integration_id,
                user_id,
                entry: HistoryEntry::new(
                    now_ms(),
                    HistoryEvent::IdentityResolved {
                        source: source.name.clone(),
                        email: (*email).to_owned(),
                    },
                ),
            })
            .collect();
        if let Err(e) = self.queue.append_history(&entries).await {
            warn!(error = %e, "emails were resolved but the residents' history could not be written");
        }
        let resolved = LeaseEvent {
            residents,
            residents_by_email: Vec::new(),
            ..event.clone()
        };
        let role = property.effective_role();
        let target = Target {
            org_id: &property.org_id,
            integration_id: &property.integration_id,
            role: &role,
        };
        let jobs: Vec<DeliveryJob> = resolved
            .residents
            .iter()
            .map(|r| {
                DeliveryJob::for_event(&resolved, &source.name, &r.openapp_user_id, target, None)
            })
            .collect();
        done.folded = jobs.len();
        let outcome = self
            .queue
            .enqueue_resolved(&source.name, &resolved, &jobs, self.limits)
            .await?;
        match outcome {
            EnqueueOutcome::Queued { jobs, .. } => done.jobs = jobs,
            EnqueueOutcome::Duplicate => {
                debug!("this event was folded by an earlier run of the job");
            }
            // An earlier run folded it with other residents (one was resolved meanwhile);
            // the lease's next event folds what changed since.
            EnqueueOutcome::Conflict => {
                warn!("an earlier run of this job folded the event with other residents");
            }
        }
        Ok(done)
    }

    async fn conflict(
        &self,
        source: &SourceSettings,
        property: &PropertySettings,
        event: &LeaseEvent,
        person: &ResidentByEmail,
        reason: ConflictReason,
        key: &str,
    ) -> Result<(), RefreshError> {
        // Someone whose lease ended and who has no user has no door to lose.
        if event.event_type == EventType::LeaseEnded {
            return Ok(());
        }
        warn!(
            lease.id = %event.lease.id,
            reason = reason.as_str(),
            "a resident known by email has no single OpenApp user: no access until resolved"
        );
        self.queue
            .record_conflict(&Conflict {
                source: source.name.clone(),
                person: key.to_owned(),
                reason,
                email: Some(person.email.clone()),
                name: person.name.clone(),
                lease_id: event.lease.id.clone(),
                property_id: property.id.clone(),
                integration_id: property.integration_id.clone(),
                first_seen: 0,
                last_seen: 0,
                times: 0,
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflict_key_of_an_email_does_not_reveal_it() {
        let key = email_person("ada@example.com");
        assert!(key.starts_with("email:") && !key.contains("ada"), "{key}");
        assert_eq!(key, email_person("ada@example.com"), "stable");
        assert_ne!(key, email_person("alan@example.com"));
        assert_eq!(key.len(), "email:".len() + 16);
    }
}
