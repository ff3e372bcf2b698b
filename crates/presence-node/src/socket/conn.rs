//! What one connection holds: its state (one enum), its grant and its rate
//! limiters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::time::Instant;

use governor::DefaultDirectRateLimiter;
use presence_core::{JsonMap, RoomId, UserId};
use presence_store::{SessionRef, StoreError};

use crate::auth::Grant;
use crate::wire::{ErrorCode, WireError};

/// One connection.
pub(super) struct Conn {
    state: Mutex<ConnState>,
    /// Since when the connection has held no session (`None` while it has one).
    idle_since: Mutex<Option<Instant>>,
    /// A hello-timeout watch is running for it.
    watched: AtomicBool,
    /// What the handshake token grants (`None` when auth is off).
    pub grant: Option<Grant>,
    /// Events per second this socket may send; more get `rate_limited`.
    pub events: DefaultDirectRateLimiter,
    /// Ten times that: a socket past it is flooding, and is disconnected.
    pub flood: DefaultDirectRateLimiter,
    /// `presence:signal` is relayed, never stored; this keeps one socket from
    /// flooding a room with it.
    pub signals: DefaultDirectRateLimiter,
}

/// Where a connection is with its session.
enum ConnState {
    /// No session: a `presence:hello` is welcome.
    Unbound,
    /// A `presence:hello` is with the store.
    Greeting,
    /// Bound to a session.
    Bound(Bound),
    /// Bound, and the store lost the session: this connection re-creates it.
    /// While `in_flight`, other heartbeats wait for it. After a failed try
    /// it stays here until one succeeds: the claim may have been applied
    /// though its answer was lost (a failover), so a `stale_epoch` then
    /// means "claim again", not "another connection won".
    Reviving { bound: Bound, in_flight: bool },
    /// A newer connection took the session over (`current` is its epoch):
    /// writes answer `stale_epoch`; a new `presence:hello` is welcome.
    Superseded { current: u64 },
}

/// The session a connection is bound to.
#[derive(Debug, Clone)]
pub(super) struct Bound {
    pub session: SessionRef,
    pub user_id: UserId,
    pub handle: Option<String>,
    pub meta: Option<JsonMap>,
    /// The rooms, with the state this connection last set in each (`None`
    /// when it set none, or when the room came with a resumed session).
    pub rooms: BTreeMap<RoomId, Option<JsonMap>>,
    /// After the session was re-created: the epoch the client may still
    /// send until it has read the new one from a heartbeat ack.
    pub revived_from: Option<u64>,
    /// The re-created session still has to re-join its rooms.
    pub restore: bool,
    /// What this connection declared (readiness, capabilities), to
    /// re-create a lost session with.
    pub declare: presence_store::Declare,
    /// The activity the client last reported, and when it last reported
    /// `active`: a return to activity checks the intents waiting for the
    /// user (see `coordination`), a quiet heartbeat does not.
    pub activity: (presence_core::Activity, Instant),
}

impl ConnState {
    fn bound(&self) -> Result<&Bound, WireError> {
        match self {
            ConnState::Bound(b) | ConnState::Reviving { bound: b, .. } => Ok(b),
            ConnState::Superseded { current } => {
                Err(StoreError::StaleEpoch { current: *current }.into())
            }
            ConnState::Unbound | ConnState::Greeting => Err(no_session()),
        }
    }

    fn bound_mut(&mut self) -> Option<&mut Bound> {
        match self {
            ConnState::Bound(b) | ConnState::Reviving { bound: b, .. } => Some(b),
            _ => None,
        }
    }
}

pub(super) fn no_session() -> WireError {
    WireError::new(
        ErrorCode::NoSession,
        "no session on this connection: send presence:hello first",
    )
}

impl Conn {
    pub fn new(
        grant: Option<Grant>,
        events: DefaultDirectRateLimiter,
        flood: DefaultDirectRateLimiter,
        signals: DefaultDirectRateLimiter,
    ) -> Self {
        Self {
            state: Mutex::new(ConnState::Unbound),
            idle_since: Mutex::new(Some(Instant::now())),
            watched: AtomicBool::new(false),
            grant,
            events,
            flood,
            signals,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records whether the connection holds a session now (called with the
    /// state locked, after each change of it).
    fn note(&self, st: &ConnState) {
        let mut since = self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        match st {
            ConnState::Bound(_) | ConnState::Reviving { .. } => *since = None,
            _ => {
                since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Since when the connection has held no session; `None` while it has one.
    pub fn no_session_since(&self) -> Option<Instant> {
        let _st = self.lock();
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a hello-timeout watch as running; false if one already is.
    pub fn start_watch(&self) -> bool {
        !self.watched.swap(true, Ordering::AcqRel)
    }

    /// The watch ends (it saw a session); true if it must go on after all
    /// (the session ended again meanwhile and no other watch started).
    pub fn end_watch(&self) -> bool {
        self.watched.store(false, Ordering::Release);
        self.no_session_since().is_some() && self.start_watch()
    }

    /// The bound session, with its rooms.
    pub fn bound(&self) -> Result<Bound, WireError> {
        self.lock().bound().cloned()
    }

    /// The session this connection writes with, after checking the epoch the
    /// client sent, and whether it still has rooms to restore. It copies no
    /// rooms or states: this is the heartbeat path.
    pub fn session_at(&self, epoch: u64) -> Result<(SessionRef, bool), WireError> {
        let st = self.lock();
        let b = st.bound()?;
        if b.session.epoch != epoch && b.revived_from != Some(epoch) {
            return Err(WireError::new(
                ErrorCode::StaleEpoch,
                format!(
                    "this connection holds epoch {}, not {epoch}",
                    b.session.epoch
                ),
            ));
        }
        Ok((b.session.clone(), b.restore))
    }

    /// The bound session, after checking the epoch the client sent.
    pub fn bound_at(&self, epoch: u64) -> Result<Bound, WireError> {
        self.session_at(epoch)?;
        self.bound()
    }

    /// Changes the bound session, if there is one.
    pub fn with_bound<R>(&self, f: impl FnOnce(&mut Bound) -> R) -> Option<R> {
        self.lock().bound_mut().map(f)
    }

    /// A `presence:hello` starts; refused while the connection has a
    /// session or another hello is under way.
    pub fn begin_hello(&self) -> Result<(), WireError> {
        let mut st = self.lock();
        if !matches!(*st, ConnState::Unbound | ConnState::Superseded { .. }) {
            return Err(WireError::bad(
                "payload",
                "this connection already has a session; leave it first or open a new connection",
            ));
        }
        *st = ConnState::Greeting;
        Ok(())
    }

    /// The hello ended: bound to `session`, or (`None`) refused. Returns
    /// whether the connection is now bound (not if it closed meanwhile).
    pub fn end_hello(&self, session: Option<Bound>) -> bool {
        let mut st = self.lock();
        if !matches!(*st, ConnState::Greeting) {
            return false;
        }
        let bound = match session {
            Some(b) => {
                *st = ConnState::Bound(b);
                true
            }
            None => {
                *st = ConnState::Unbound;
                false
            }
        };
        self.note(&st);
        bound
    }

    /// Unbinds the connection (its session ended, or it closed); returns
    /// what it was bound to.
    pub fn unbind(&self) -> Option<Bound> {
        let mut st = self.lock();
        let was = std::mem::replace(&mut *st, ConnState::Unbound);
        self.note(&st);
        match was {
            ConnState::Bound(b) | ConnState::Reviving { bound: b, .. } => Some(b),
            _ => None,
        }
    }

    /// The store refused a write of this connection with `stale_epoch`: a
    /// newer connection (at `current`) owns the session. Unbinds it if it
    /// still writes with `epoch` and is not re-creating its session (whose
    /// refusals are about the past).
    pub fn unbind_superseded(&self, epoch: u64, current: u64) -> Option<Bound> {
        let mut st = self.lock();
        match &*st {
            ConnState::Bound(b) if b.session.epoch == epoch => {}
            _ => return None,
        }
        let was = std::mem::replace(&mut *st, ConnState::Superseded { current });
        self.note(&st);
        match was {
            ConnState::Bound(b) => Some(b),
            _ => None,
        }
    }

    /// A newer connection (at `current`) took over the session this
    /// connection holds at `epoch`: unbinds it.
    pub fn supersede(&self, epoch: u64, current: u64) -> Option<Bound> {
        let mut st = self.lock();
        match st.bound() {
            Ok(b) if b.session.epoch == epoch => {}
            _ => return None,
        }
        let was = std::mem::replace(&mut *st, ConnState::Superseded { current });
        self.note(&st);
        match was {
            ConnState::Bound(b) | ConnState::Reviving { bound: b, .. } => Some(b),
            _ => None,
        }
    }

    /// A re-creation of the lost session starts; refused while another is
    /// in flight.
    pub fn begin_revival(&self) -> Result<(), StoreError> {
        let mut st = self.lock();
        let bound = match std::mem::replace(&mut *st, ConnState::Unbound) {
            ConnState::Bound(b)
            | ConnState::Reviving {
                bound: b,
                in_flight: false,
            } => b,
            other @ ConnState::Reviving {
                in_flight: true, ..
            } => {
                *st = other;
                return Err(StoreError::Unavailable(
                    "the session is being restored; retry".into(),
                ));
            }
            other => {
                *st = other;
                return Err(StoreError::NoSession);
            }
        };
        *st = ConnState::Reviving {
            bound,
            in_flight: true,
        };
        Ok(())
    }

    /// The re-creation ended: bound again when it `succeeded`, else still
    /// reviving (the next heartbeat tries again).
    pub fn end_revival(&self, succeeded: bool) {
        let mut st = self.lock();
        *st = match std::mem::replace(&mut *st, ConnState::Unbound) {
            ConnState::Reviving { bound, .. } if succeeded => ConnState::Bound(bound),
            ConnState::Reviving { bound, .. } => ConnState::Reviving {
                bound,
                in_flight: false,
            },
            // Unbound meanwhile (the session ended, the connection closed):
            // whatever it is now stays.
            other => other,
        };
    }

    /// A re-creation started and has not succeeded yet.
    pub fn revival_unconfirmed(&self) -> bool {
        matches!(*self.lock(), ConnState::Reviving { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::{Quota, RateLimiter};
    use presence_core::SessionId;

    use super::*;

    fn conn() -> Conn {
        let limiter = || RateLimiter::direct(Quota::per_second(NonZeroU32::MIN));
        Conn::new(None, limiter(), limiter(), limiter())
    }

    fn bound(epoch: u64) -> Bound {
        Bound {
            session: SessionRef {
                session_id: SessionId::new("s1").unwrap(),
                epoch,
            },
            user_id: UserId::new("alice").unwrap(),
            handle: None,
            meta: None,
            rooms: BTreeMap::new(),
            revived_from: None,
            restore: false,
            declare: Default::default(),
            activity: (presence_core::Activity::Active, Instant::now()),
        }
    }

    #[test]
    fn one_hello_at_a_time_and_none_while_bound() {
        let c = conn();
        assert_eq!(c.bound().unwrap_err().code, ErrorCode::NoSession);
        c.begin_hello().unwrap();
        assert_eq!(c.begin_hello().unwrap_err().code, ErrorCode::BadRequest);
        assert!(c.end_hello(Some(bound(5))));
        assert_eq!(c.begin_hello().unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(c.session_at(5).unwrap().0.epoch, 5);
        assert_eq!(c.session_at(4).unwrap_err().code, ErrorCode::StaleEpoch);
        // A refused hello leaves the connection free for another.
        let c = conn();
        c.begin_hello().unwrap();
        assert!(!c.end_hello(None));
        c.begin_hello().unwrap();
    }

    #[test]
    fn a_hello_that_ends_after_the_connection_closed_binds_nothing() {
        let c = conn();
        c.begin_hello().unwrap();
        assert!(c.unbind().is_none());
        assert!(!c.end_hello(Some(bound(5))));
        assert!(c.bound().is_err());
    }

    #[test]
    fn a_superseded_connection_is_unbound_only_at_its_epoch() {
        let c = conn();
        c.begin_hello().unwrap();
        c.end_hello(Some(bound(5)));
        assert!(c.unbind_superseded(4, 6).is_none());
        assert!(c.unbind_superseded(5, 6).is_some());
        // Its writes answer stale_epoch from now on; a new hello is welcome.
        assert_eq!(c.bound().unwrap_err().code, ErrorCode::StaleEpoch);
        assert_eq!(c.session_at(5).unwrap_err().code, ErrorCode::StaleEpoch);
        assert!(c.no_session_since().is_some());
        c.begin_hello().unwrap();
    }

    #[test]
    fn a_revival_runs_once_and_an_unconfirmed_one_is_never_taken_for_a_takeover() {
        let c = conn();
        assert_eq!(c.begin_revival(), Err(StoreError::NoSession));
        c.begin_hello().unwrap();
        c.end_hello(Some(bound(5)));
        assert!(!c.revival_unconfirmed());
        c.begin_revival().unwrap();
        assert!(matches!(c.begin_revival(), Err(StoreError::Unavailable(_))));
        // Still bound while it runs: other events go on.
        assert!(c.bound().is_ok());
        c.end_revival(false);
        assert!(c.revival_unconfirmed());
        // A stale_epoch now may be its own lost claim: no unbinding.
        assert!(c.unbind_superseded(5, 6).is_none());
        c.begin_revival().unwrap();
        c.with_bound(|b| b.session.epoch = 9);
        c.end_revival(true);
        assert!(!c.revival_unconfirmed());
        assert_eq!(c.session_at(9).unwrap().0.epoch, 9);
    }

    #[test]
    fn a_takeover_unbinds_the_connection_that_held_that_epoch() {
        let c = conn();
        c.begin_hello().unwrap();
        c.end_hello(Some(bound(5)));
        assert!(c.supersede(4, 6).is_none(), "not the epoch it holds");
        assert!(c.bound().is_ok());
        assert!(c.supersede(5, 6).is_some());
        assert_eq!(c.bound().unwrap_err().code, ErrorCode::StaleEpoch);
        assert!(c.unbind().is_none(), "nothing left to unbind on close");
    }

    #[test]
    fn a_revival_that_ends_after_the_session_ended_leaves_it_ended() {
        let c = conn();
        c.begin_hello().unwrap();
        c.end_hello(Some(bound(5)));
        c.begin_revival().unwrap();
        assert!(c.unbind().is_some());
        c.end_revival(true);
        assert!(c.bound().is_err());
        c.begin_hello().unwrap();
    }
}
