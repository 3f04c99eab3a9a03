//! The Buildium reads of one source, shared by every refresh running in this process.
//!
//! Buildium allows 10 requests per second per account, and a webhook costs at least one read:
//! at 10 lease changes per second one read per refresh cannot keep up (the benchmark measured
//! 3 reads per change and a backlog of minutes). So refreshes do not read for themselves.
//! Each says what it needs ([`SourceReads::lease`], [`SourceReads::tenant_leases`]) and
//! waits; whichever refresh finds no read under way reads for all that are waiting:
//!
//! - two or more leases: one `GET /v1/leases?lastupdatedfrom=…` from shortly before the
//!   oldest of their webhooks ([`LIST_LOOKBACK`]), every status, the mapped buildings only —
//!   one request per 1,000 changed leases, and never more pages than leases it looks for
//!   ([`LIST_MAX_PAGES`]);
//! - each lease that list did not hold (deleted, or changed before the window): its own read;
//! - a tenant just added to a lease (`LeaseTenant.Created`) whom a lease read already lists as
//!   a current tenant needs no read of their own; any other tenant is read.
//!
//! A read answers only the refreshes that were waiting before it started, so every refresh
//! still sees what Buildium held after its webhook arrived — the guarantee a read of its own
//! gave. Answers are remembered for [`MEMORY`] only, to serve those waiting; nothing here
//! outlives the process or replaces a read.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::debug;

use crate::sources::buildium::client::{BuildiumClient, BuildiumError, LeaseQuery};
use crate::sources::buildium::lease::{LeaseMessage, TenantMessage};

/// How far before the oldest waiting webhook a list read starts. Buildium's clock and ours
/// differ, and Buildium posts a webhook a moment after the change: a lease changed earlier
/// than the window is not lost, it is read on its own.
pub const LIST_LOOKBACK: Duration = Duration::from_secs(15);

/// At most this many pages (1,000 leases each) per list read, and never more pages than the
/// leases it looks for: a list reaching far back (refreshes retried after a Buildium outage,
/// a replay) costs at most what reading each lease would, and the leases still missing are
/// read one by one.
pub const LIST_MAX_PAGES: u32 = 10;

/// How long answers are kept for the refreshes waiting on them.
pub const MEMORY: Duration = Duration::from_secs(30);

/// A successful read shows the base URL and key are right for this long: a lease answering
/// 404 within it is deleted without one more read to prove the API answers.
pub const API_PROOF: Duration = Duration::from_secs(60);

/// What one refresh waits for.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// A lease as Buildium holds it after `after`; `since` is when its webhook arrived (wall
    /// clock), if known.
    Lease {
        id: i64,
        since: Option<OffsetDateTime>,
        after: Instant,
    },
    /// A tenant's leases as Buildium holds them after `after`.
    Tenant {
        id: i64,
        added: bool,
        after: Instant,
    },
}

/// What a [`Want`] gets.
enum Answer {
    Lease(Option<Box<LeaseMessage>>),
    Tenant(Option<Vec<LeaseMessage>>),
}

/// One answer and when the read that gave it started.
struct Seen<T> {
    value: T,
    read_at: Instant,
}

#[derive(Default)]
struct Memory {
    /// Refreshes waiting, by ticket.
    waiting: HashMap<u64, Want>,
    next_ticket: u64,
    /// Leases read (`None`: deleted).
    leases: HashMap<i64, Seen<Option<LeaseMessage>>>,
    /// Tenants read (`None`: unknown to Buildium).
    tenants: HashMap<i64, Seen<Option<TenantMessage>>>,
    /// Tenants a lease read listed as current, with that lease.
    current_on: HashMap<i64, Seen<i64>>,
    /// When a read last succeeded.
    api_answered: Option<Instant>,
}

impl Memory {
    fn answer(&self, want: &Want) -> Option<Answer> {
        match *want {
            Want::Lease { id, after, .. } => self
                .leases
                .get(&id)
                .filter(|s| s.read_at >= after)
                .map(|s| Answer::Lease(s.value.clone().map(Box::new))),
            Want::Tenant { id, added, after } => {
                if let Some(seen) = self.tenants.get(&id).filter(|s| s.read_at >= after) {
                    return Some(Answer::Tenant(
                        seen.value.as_ref().map(|t| t.leases.clone()),
                    ));
                }
                if !added {
                    return None;
                }
                // Just added, and a lease read already lists them: that lease is all the
                // event says.
                let lease = self.current_on.get(&id)?;
                let read = self.leases.get(&lease.value)?.value.clone()?;
                Some(Answer::Tenant(Some(vec![read])))
            }
        }
    }

    fn remember_lease(&mut self, id: i64, lease: Option<LeaseMessage>, read_at: Instant) {
        if let Some(lease) = &lease {
            for tenant in &lease.current_tenants {
                self.current_on.insert(
                    tenant.id,
                    Seen {
                        value: lease.id,
                        read_at,
                    },
                );
            }
        }
        self.leases.insert(
            id,
            Seen {
                value: lease,
                read_at,
            },
        );
    }

    fn forget_older_than(&mut self, cutoff: Instant) {
        self.leases.retain(|_, s| s.read_at >= cutoff);
        self.tenants.retain(|_, s| s.read_at >= cutoff);
        self.current_on.retain(|_, s| s.read_at >= cutoff);
    }
}

/// Counts of what a process's reads did, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// List reads (`GET /v1/leases?lastupdatedfrom=…`), pages counted.
    pub list_pages: u64,
    /// Single lease reads.
    pub lease_reads: u64,
    /// Tenant reads.
    pub tenant_reads: u64,
    /// Refreshes answered.
    pub answered: u64,
}

/// The shared reads of one Buildium source. See the module documentation.
pub struct SourceReads {
    client: BuildiumClient,
    property_ids: Vec<i64>,
    memory: Mutex<Memory>,
    /// Held by the refresh reading for all.
    turn: tokio::sync::Mutex<()>,
    /// Woken whenever answers were added or a read ended.
    changed: Notify,
    stats: Mutex<ReadStats>,
}

impl std::fmt::Debug for SourceReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceReads")
            .field("property_ids", &self.property_ids)
            .finish_non_exhaustive()
    }
}

/// The turn to read for every waiting refresh. Dropping it releases the turn first, then wakes
/// the waiting refreshes: woken while it is still held, they would find it taken and wait for
/// a wake-up that never comes.
struct Turn<'a> {
    guard: Option<tokio::sync::MutexGuard<'a, ()>>,
    reads: &'a SourceReads,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.reads.changed.notify_waiters();
    }
}

/// Removes a refresh's want when it stops waiting, answered or not (or dropped).
struct Ticket<'a> {
    reads: &'a SourceReads,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.reads.memory().waiting.remove(&self.id);
    }
}

impl SourceReads {
    /// Reads through `client`, listing only the leases of `property_ids`.
    pub fn new(client: BuildiumClient, property_ids: Vec<i64>) -> Self {
        Self {
            client,
            property_ids,
            memory: Mutex::new(Memory::default()),
            turn: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            stats: Mutex::new(ReadStats::default()),
        }
    }

    /// Lease `id` as Buildium holds it now (`None`: deleted — checked to be no wrong base URL
    /// or key), read after this call began. `since`: when the webhook asking for it arrived.
    pub async fn lease(
        &self,
        id: i64,
        since: Option<OffsetDateTime>,
    ) -> Result<Option<LeaseMessage>, BuildiumError> {
        let want = Want::Lease {
            id,
            since,
            after: Instant::now(),
        };
        match self.serve(want).await? {
            Answer::Lease(lease) => Ok(lease.map(|l| *l)),
            Answer::Tenant(_) => unreachable!("a lease want gets a lease answer"),
        }
    }

    /// The leases of tenant `id` to fold (`None`: Buildium does not know the tenant). `added`:
    /// the tenant was just added to a lease, so a lease read listing them as current will do.
    pub async fn tenant_leases(
        &self,
        id: i64,
        added: bool,
    ) -> Result<Option<Vec<LeaseMessage>>, BuildiumError> {
        let want = Want::Tenant {
            id,
            added,
            after: Instant::now(),
        };
        match self.serve(want).await? {
            Answer::Tenant(leases) => Ok(leases),
            Answer::Lease(_) => unreachable!("a tenant want gets a tenant answer"),
        }
    }

    /// What this process's reads did so far.
    pub fn stats(&self) -> ReadStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        // Nothing panics while holding it; a poisoned lock still holds consistent maps.
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, f: impl FnOnce(&mut ReadStats)) {
        f(&mut self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    async fn serve(&self, want: Want) -> Result<Answer, BuildiumError> {
        let _ticket = {
            let mut memory = self.memory();
            let id = memory.next_ticket;
            memory.next_ticket += 1;
            memory.waiting.insert(id, want);
            Ticket { reads: self, id }
        };
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if let Some(answer) = self.memory().answer(&want) {
                self.count(|s| s.answered += 1);
                return Ok(answer);
            }
            let Ok(guard) = self.turn.try_lock() else {
                changed.await;
                continue;
            };
            let turn = Turn {
                guard: Some(guard),
                reads: self,
            };
            let read = self.read_for_waiting().await;
            // Releases the turn, then wakes the waiting refreshes (also if this refresh is
            // dropped mid-read, so none waits for a read nobody makes).
            drop(turn);
            if let Some(answer) = self.memory().answer(&want) {
                self.count(|s| s.answered += 1);
                return Ok(answer);
            }
            // Our own want was not answered: the read failed (or it arrived too late to be
            // in this round, and the next round is ours).
            read?;
        }
    }

    /// One round: reads what every waiting refresh still lacks.
    async fn read_for_waiting(&self) -> Result<(), BuildiumError> {
        let (started, wants) = {
            let mut memory = self.memory();
            // Taken under the lock: every want seen here was registered before, so the reads
            // below (which start after) answer all of them.
            let started = Instant::now();
            if let Some(cutoff) = started.checked_sub(MEMORY) {
                memory.forget_older_than(cutoff);
            }
            let wants: Vec<Want> = memory
                .waiting
                .values()
                .filter(|w| memory.answer(w).is_none())
                .copied()
                .collect();
            (started, wants)
        };
        let mut leases: Vec<(i64, Option<OffsetDateTime>)> = Vec::new();
        for want in &wants {
            if let Want::Lease { id, since, .. } = *want
                && !leases.iter().any(|(l, _)| *l == id)
            {
                leases.push((id, since));
            }
        }
        let listable: Vec<OffsetDateTime> = leases.iter().filter_map(|(_, since)| *since).collect();
        let mut unread: HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        if listable.len() >= 2
            && let Some(oldest) = listable.iter().min()
        {
            let max_pages = LIST_MAX_PAGES.min(u32::try_from(listable.len()).unwrap_or(u32::MAX));
            self.list_changed(*oldest - LIST_LOOKBACK, max_pages, started, &mut unread)
                .await?;
        }
        for id in unread {
            self.read_lease(id, started).await?;
        }
        for want in &wants {
            let Want::Tenant { id, .. } = *want else {
                continue;
            };
            if self.memory().answer(want).is_some() {
                continue;
            }
            let tenant = self.client.get_tenant(id).await?;
            self.count(|s| s.tenant_reads += 1);
            let mut memory = self.memory();
            memory.api_answered = Some(started);
            if let Some(tenant) = &tenant {
                for lease in &tenant.leases {
                    memory.remember_lease(lease.id, Some(lease.clone()), started);
                }
            }
            memory.tenants.insert(
                id,
                Seen {
                    value: tenant,
                    read_at: started,
                },
            );
            drop(memory);
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// Lists the leases changed since `from`; those of `unread` it holds are read.
    async fn list_changed(
        &self,
        from: OffsetDateTime,
        max_pages: u32,
        started: Instant,
        unread: &mut HashSet<i64>,
    ) -> Result<(), BuildiumError> {
        let mut pages = self.client.list_leases(LeaseQuery {
            property_ids: self.property_ids.clone(),
            updated_from: Some(from),
            ..LeaseQuery::default()
        });
        let mut read = 0usize;
        while !unread.is_empty() {
            if pages.progress().pages >= max_pages {
                break;
            }
            let Some(page) = pages.next_page().await? else {
                break;
            };
            self.count(|s| s.list_pages += 1);
            let mut memory = self.memory();
            memory.api_answered = Some(started);
            for lease in page.leases {
                read += 1;
                unread.remove(&lease.id);
                memory.remember_lease(lease.id, Some(lease), started);
            }
            drop(memory);
            self.changed.notify_waiters();
        }
        debug!(
            leases = read,
            missing = unread.len(),
            "listed the leases changed since shortly before the oldest waiting webhook"
        );
        Ok(())
    }

    /// Reads lease `id` on its own; a 404 counts as deleted once the API is known to answer.
    async fn read_lease(&self, id: i64, started: Instant) -> Result<(), BuildiumError> {
        let lease = self.client.get_lease(id).await?;
        self.count(|s| s.lease_reads += 1);
        if lease.is_some() {
            self.memory().api_answered = Some(started);
        } else {
            // Buildium answers its own 404 for any unknown path, so a wrong base URL would
            // read as every lease deleted: before anyone loses a door, a read that must
            // succeed has to have succeeded lately.
            let proven = self
                .memory()
                .api_answered
                .is_some_and(|at| at.elapsed() <= API_PROOF);
            if !proven {
                self.client.verify_access().await?;
                self.memory().api_answered = Some(Instant::now());
            }
        }
        self.memory().remember_lease(id, lease, started);
        self.changed.notify_waiters();
        Ok(())
    }
}
