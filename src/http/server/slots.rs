//! A listener's connection slots: who is admitted, who is idle, who goes first at the cap.
//!
//! A connection is *idle* while no request of it is with the service and everything the
//! service answered has been flushed to the socket: waiting for the first byte after accept,
//! between requests on a keep-alive connection, or part-way through a request head. Such a
//! connection owes nobody an answer, so closing it loses nothing but a socket the client
//! would have to reopen. At the cap, the connection idle the longest is reclaimed: an
//! attacker's idle sockets, opened before a real sender's, go before it, and holding the
//! listener takes as many new connections per moment as the cap, not one per timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::config::CONNECTION_SPARE;
use crate::telemetry::metrics as catalog;

/// What the accept loop does with a new connection.
pub(super) enum Admission {
    /// Serve it; `reclaimed` when an idle connection was told to make room for it.
    Admitted {
        /// The connection's state.
        connection: Arc<Connection>,
        /// Whether an idle connection was reclaimed for it.
        reclaimed: bool,
    },
    /// Answer 503 `overloaded` (the guard holds one of the few refusal slots).
    Refused(Refusal),
    /// Close at once: even the refusal slots are taken.
    Dropped,
}

/// The slots of one listener.
#[derive(Debug)]
pub(super) struct Slots {
    listener: &'static str,
    cap: usize,
    admitted: AtomicUsize,
    refusing: AtomicUsize,
    next_id: AtomicU64,
    idle: Mutex<IdleSet>,
}

#[derive(Debug, Default)]
struct IdleSet {
    next_seq: u64,
    /// Idle connections in the order they went idle; the first is reclaimed first.
    order: BTreeMap<u64, u64>,
    /// Every admitted connection: its key in `order` while idle, and its signal to go.
    conns: HashMap<u64, (Option<u64>, CancellationToken)>,
}

impl IdleSet {
    fn make_idle(&mut self, id: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        // A reclaimed connection is on its way out: it is not reclaimed (or counted) twice.
        if let Some((key, go)) = self.conns.get_mut(&id)
            && !go.is_cancelled()
        {
            if let Some(old) = key.replace(seq) {
                self.order.remove(&old);
            }
            self.order.insert(seq, id);
        }
    }

    fn make_busy(&mut self, id: u64) {
        if let Some(seq) = self.conns.get_mut(&id).and_then(|(key, _)| key.take()) {
            self.order.remove(&seq);
        }
    }
}

impl Slots {
    /// Slots for `cap` connections of `listener` (the metric label).
    pub(super) fn new(listener: &'static str, cap: usize) -> Arc<Self> {
        metrics::gauge!(catalog::HTTP_CONNECTION_LIMIT, "listener" => listener).set(cap as f64);
        Arc::new(Self {
            listener,
            cap,
            admitted: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            idle: Mutex::new(IdleSet::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, IdleSet> {
        // The set stays consistent whatever panicked while holding it: each change is one step.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides about a connection just accepted. Past the cap, the oldest idle connection is
    /// told to close and the new one admitted in its place; the count may then exceed the cap
    /// by up to [`CONNECTION_SPARE`] until the reclaimed ones have closed, which the default
    /// caps leave file descriptors for. With nothing idle, the connection is refused.
    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let open = self.admitted.load(Ordering::Acquire);
        let reclaimed = if open < self.cap {
            false
        } else if open < self.cap + CONNECTION_SPARE && self.reclaim_oldest_idle() {
            metrics::counter!(catalog::HTTP_CONNECTIONS_RECLAIMED, "listener" => self.listener)
                .increment(1);
            true
        } else {
            metrics::counter!(catalog::HTTP_CONNECTIONS_REFUSED, "listener" => self.listener)
                .increment(1);
            if self.refusing.fetch_add(1, Ordering::AcqRel) < CONNECTION_SPARE {
                return Admission::Refused(Refusal {
                    slots: self.clone(),
                });
            }
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return Admission::Dropped;
        };
        self.admitted.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!(catalog::HTTP_CONNECTIONS, "listener" => self.listener).increment(1.0);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let go = CancellationToken::new();
        let mut idle = self.lock();
        idle.conns.insert(id, (None, go.clone()));
        idle.make_idle(id);
        drop(idle);
        Admission::Admitted {
            connection: Arc::new(Connection {
                id,
                slots: self.clone(),
                state: AtomicU32::new(IDLE),
                go,
            }),
            reclaimed,
        }
    }

    /// Tells the connection idle the longest to close; `false` when none is idle.
    fn reclaim_oldest_idle(&self) -> bool {
        let mut idle = self.lock();
        let Some((_, id)) = idle.order.pop_first() else {
            return false;
        };
        if let Some((key, go)) = idle.conns.get_mut(&id) {
            *key = None;
            go.cancel();
        }
        true
    }

    /// Connections admitted and not yet closed.
    #[cfg(test)]
    pub(super) fn open(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }
}

/// Holds one of a listener's few refusal slots while a connection is answered 503.
#[derive(Debug)]
pub(super) struct Refusal {
    slots: Arc<Slots>,
}

impl Drop for Refusal {
    fn drop(&mut self) {
        self.slots.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// No request with the service, nothing of its answers unflushed.
const IDLE: u32 = 0;
/// Set once the last answer has been produced and until it has been flushed.
const UNFLUSHED: u32 = 1 << 31;

/// One admitted connection's state, shared by its task, its service and its socket wrapper.
/// Dropped with the last of them, when the socket has been closed: that frees the slot.
#[derive(Debug)]
pub(super) struct Connection {
    id: u64,
    slots: Arc<Slots>,
    /// Requests with the service (low bits) and [`UNFLUSHED`]. Changed under the slots'
    /// lock, together with the idle set, so the two always agree; read without it.
    state: AtomicU32,
    go: CancellationToken,
}

impl Connection {
    /// Cancelled when the connection was reclaimed to make room.
    pub(super) fn reclaimed(&self) -> &CancellationToken {
        &self.go
    }

    /// Whether the connection is idle (see the module documentation).
    pub(super) fn is_idle(&self) -> bool {
        self.state.load(Ordering::Acquire) == IDLE
    }

    /// The service was handed a request.
    pub(super) fn request_started(&self) {
        let mut idle = self.slots.lock();
        self.state.fetch_add(1, Ordering::AcqRel);
        idle.make_busy(self.id);
    }

    /// The service's answer to a request has been produced in full (or dropped).
    pub(super) fn response_finished(&self) {
        let _idle = self.slots.lock();
        let before = self.state.load(Ordering::Acquire);
        let busy = (before & !UNFLUSHED).saturating_sub(1);
        let after = if busy == 0 { UNFLUSHED } else { busy };
        self.state.store(after, Ordering::Release);
    }

    /// Bytes that are not the service's are about to be written (see the `io` module): the
    /// connection is not idle until they have been flushed.
    pub(super) fn writing_own_answer(&self) {
        let mut idle = self.slots.lock();
        self.state.fetch_or(UNFLUSHED, Ordering::AcqRel);
        idle.make_busy(self.id);
    }

    /// Everything written so far has reached the socket.
    pub(super) fn flushed(&self) {
        if self.state.load(Ordering::Acquire) != UNFLUSHED {
            return;
        }
        let mut idle = self.slots.lock();
        if self
            .state
            .compare_exchange(UNFLUSHED, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            idle.make_idle(self.id);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut idle = self.slots.lock();
        if let Some((Some(seq), _)) = idle.conns.remove(&self.id) {
            idle.order.remove(&seq);
        }
        drop(idle);
        self.slots.admitted.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(catalog::HTTP_CONNECTIONS, "listener" => self.slots.listener)
            .decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(slots: &Arc<Slots>) -> (Arc<Connection>, bool) {
        match slots.admit() {
            Admission::Admitted {
                connection,
                reclaimed,
            } => (connection, reclaimed),
            _ => panic!("refused"),
        }
    }

    #[test]
    fn at_the_cap_the_connection_idle_longest_makes_room() {
        let slots = Slots::new("test", 3);
        let (a, _) = admitted(&slots);
        let (b, _) = admitted(&slots);
        let (c, reclaimed) = admitted(&slots);
        assert!(!reclaimed);
        // `a` is serving; `b` went idle after answering, so after `c`.
        a.request_started();
        b.request_started();
        b.response_finished();
        assert!(!b.is_idle(), "not idle before its answer is flushed");
        b.flushed();
        assert!(b.is_idle());

        let (d, reclaimed) = admitted(&slots);
        assert!(reclaimed);
        assert!(c.reclaimed().is_cancelled(), "c has been idle the longest");
        assert!(!b.reclaimed().is_cancelled() && !a.reclaimed().is_cancelled());
        let (_e, _) = admitted(&slots);
        assert!(b.reclaimed().is_cancelled());
        // Only `a` (serving) and the new `d` and `e`, both idle: `d` goes next, `a` never.
        let (_f, _) = admitted(&slots);
        assert!(d.reclaimed().is_cancelled());
        assert!(!a.reclaimed().is_cancelled());
        assert_eq!(slots.open(), 6, "reclaimed ones count until they close");
        drop((b, c));
        assert_eq!(slots.open(), 4);
    }

    #[test]
    fn with_nothing_idle_connections_are_refused_and_then_dropped() {
        let slots = Slots::new("test", 1);
        let (a, _) = admitted(&slots);
        a.request_started();
        let refusals: Vec<_> = (0..CONNECTION_SPARE)
            .map(|_| match slots.admit() {
                Admission::Refused(refusal) => refusal,
                _ => panic!("not refused"),
            })
            .collect();
        assert!(matches!(slots.admit(), Admission::Dropped));
        drop(refusals);
        assert!(matches!(slots.admit(), Admission::Refused(_)));
        // Once its answer is flushed, `a` is idle and can be reclaimed.
        a.response_finished();
        a.flushed();
        assert!(matches!(
            slots.admit(),
            Admission::Admitted {
                reclaimed: true,
                ..
            }
        ));
        assert!(a.reclaimed().is_cancelled());
    }

    #[test]
    fn a_reclaimed_connection_that_finishes_a_request_is_not_reclaimed_again() {
        let slots = Slots::new("test", 1);
        let (a, _) = admitted(&slots);
        // `a` is reclaimed just as a request of it reaches the service.
        let (b, reclaimed) = admitted(&slots);
        assert!(reclaimed && a.reclaimed().is_cancelled());
        a.request_started();
        b.request_started();
        a.response_finished();
        a.flushed();
        assert!(a.is_idle());
        // `a` is closing: nothing is idle to make room with.
        assert!(matches!(slots.admit(), Admission::Refused(_)));
    }

    #[test]
    fn a_connection_writing_its_own_answer_is_not_idle_until_flushed() {
        let slots = Slots::new("test", 1);
        let (a, _) = admitted(&slots);
        a.writing_own_answer();
        assert!(!a.is_idle());
        assert!(matches!(slots.admit(), Admission::Refused(_)));
        a.flushed();
        assert!(a.is_idle());
    }

    #[test]
    fn a_pipelined_request_keeps_the_connection_busy_until_its_answer_is_flushed() {
        let slots = Slots::new("test", 1);
        let (a, _) = admitted(&slots);
        // A second request starts before the first answer is flushed.
        a.request_started();
        a.response_finished();
        a.request_started();
        a.flushed();
        assert!(!a.is_idle(), "the second request is still with the service");
        a.response_finished();
        a.flushed();
        assert!(a.is_idle());
    }
}
