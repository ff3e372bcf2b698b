//! The embedded store: all state in one process, behind one mutex.
//!
//! It is the default when no Redis is configured, and it is held to exactly
//! the semantics of the Redis store by the shared conformance suite. Every
//! operation takes the lock once, does O(rooms of the session) work (O(room)
//! for views) and publishes its events before releasing it, so the event
//! stream is in `seq` order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use presence_core::event::{EventMember, EventStatus};
use presence_core::lifecycle::user_change;
use presence_core::page::PageCursor;
use presence_core::session::Liveness;
use presence_core::user::{derive_user, SessionSignal};
use presence_core::view::{build_view, Member};
use presence_core::{
    Clock, EventKind, Intent, IntentNotice, IntentOutcome, JsonMap, Lifecycle, Limits, Millis,
    NodeId, PresenceEvent, RoomId, SessionFacts, SessionId, SessionStatus, Timings, UserId,
    UserStatus, UserSummary,
};
use tokio::sync::{broadcast, watch};

use crate::api::{
    first_epoch, new_session_id, too_many_from, too_many_to, Claimed, Declare, Health, Hello,
    Holder, Joined, LastSeen, Lease, NodeInfo, NodeNotice, Online, Page, PresenceStore,
    RoomMembers, RoomPage, RoomStats, SessionRef, Signal, Superseded, SweepReport, UserSession,
    EVENT_BUFFER, INTENT_KEEP_MS, TOMBSTONE_MS,
};
use crate::error::StoreError;
use crate::lifecycle::{new_event_id, EventLog};
use crate::memory_log::MemoryLog;

/// The in-memory [`PresenceStore`].
pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    timings: Timings,
    limits: Limits,
    events: broadcast::Sender<PresenceEvent>,
    /// Never changes: events are handed over in memory and cannot be lost.
    resyncs: watch::Sender<u64>,
    /// Never carries anything: there is no other node.
    signals: broadcast::Sender<Signal>,
    /// Notices to this (the only) node; the node handles its own takeovers
    /// without it, so this carries only what `notify_node` is given.
    notices: broadcast::Sender<NodeNotice>,
    /// The lifecycle stream.
    log: Arc<MemoryLog>,
    /// Intent notices, handed back to this (the only) node.
    intent_notices: broadcast::Sender<IntentNotice>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, SessionEntry>,
    rooms: HashMap<RoomId, Room>,
    /// All sessions of each user, ordered for paging who's online.
    users: BTreeMap<UserId, BTreeSet<SessionId>>,
    /// Sessions by the next instant their status may change.
    deadlines: BTreeSet<(Millis, SessionId)>,
    /// The last epoch of removed sessions and when they were removed, kept for
    /// [`TOMBSTONE_MS`] (and until the clock passed the epoch), so that a reused
    /// session id starts higher and a connection that had lost the session
    /// stays fenced.
    tombstones: HashMap<SessionId, Tombstone>,
    /// Registered nodes and when their registration lapses.
    nodes: BTreeMap<NodeId, (NodeInfo, Millis)>,
    /// The reaper lease, and the last term handed out.
    lease: Option<Lease>,
    term: u64,
    /// The highest term a sweep came with.
    swept_term: u64,
    /// Intents, kept until delivered or [`INTENT_KEEP_MS`] past their TTL.
    intents: Intents,
    /// Each online user's derived status as the lifecycle stream last told
    /// it, and the latest activity of their sessions (ended ones included).
    tracked: HashMap<UserId, (UserStatus, Millis)>,
    /// Offline users' last activity and last-online time, for
    /// `Limits::last_seen_ttl_ms`.
    last_seen: HashMap<UserId, LastSeen>,
    /// When the sweep last dropped lapsed last-seen entries.
    last_seen_pruned_at: Millis,
}

/// Intents by callee (as the Redis store keeps them), and each caller's by
/// callee and id: every operation reads one user's, never all of them.
#[derive(Default)]
struct Intents {
    to: HashMap<UserId, HashMap<String, Intent>>,
    from: HashMap<UserId, BTreeSet<(UserId, String)>>,
}

impl Intents {
    /// Drops `user`'s intents (as callee and as caller) past their keep window.
    fn prune(&mut self, user: &UserId, now: Millis) {
        let gone: Vec<Intent> = self
            .to(user)
            .chain(self.from(user))
            .filter(|i| now >= i.expires_at + INTENT_KEEP_MS)
            .cloned()
            .collect();
        for i in &gone {
            self.remove(i);
        }
    }

    fn insert(&mut self, intent: &Intent) {
        self.to
            .entry(intent.to.clone())
            .or_default()
            .insert(intent.id.clone(), intent.clone());
        self.from
            .entry(intent.from.clone())
            .or_default()
            .insert((intent.to.clone(), intent.id.clone()));
    }

    fn get_mut(&mut self, intent: &Intent) -> Option<&mut Intent> {
        self.to.get_mut(&intent.to)?.get_mut(&intent.id)
    }

    fn remove(&mut self, intent: &Intent) -> bool {
        let removed = self
            .to
            .get_mut(&intent.to)
            .and_then(|m| m.remove(&intent.id))
            .is_some();
        if self.to.get(&intent.to).is_some_and(HashMap::is_empty) {
            self.to.remove(&intent.to);
        }
        if let Some(set) = self.from.get_mut(&intent.from) {
            set.remove(&(intent.to.clone(), intent.id.clone()));
            if set.is_empty() {
                self.from.remove(&intent.from);
            }
        }
        removed
    }

    /// The intents waiting for `user`, and those resolved but kept.
    fn to(&self, user: &UserId) -> impl Iterator<Item = &Intent> {
        self.to.get(user).into_iter().flat_map(HashMap::values)
    }

    /// The intents `user` made that are kept.
    fn from<'a>(&'a self, user: &UserId) -> impl Iterator<Item = &'a Intent> + 'a {
        self.from
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|(to, id)| self.to.get(to)?.get(id))
    }
}

/// What is left of a removed session.
struct Tombstone {
    /// Its last epoch: a reused id starts above it.
    epoch: u64,
    /// When it was removed.
    at: Millis,
    /// Its user: only that user may use the id again.
    user_id: UserId,
    /// Ended by the moderation API: the id is refused while this lives.
    kicked: bool,
}

struct SessionEntry {
    facts: SessionFacts,
    /// The status last derived and published.
    status: SessionStatus,
    deadline: Millis,
    rooms: BTreeMap<RoomId, Membership>,
}

struct Membership {
    state: Option<JsonMap>,
    state_updated_at: Millis,
    /// The session's heartbeat and activity times as the room last saw them:
    /// a room's view is refreshed by what observers see (join, state, status,
    /// resume), not by every heartbeat (the Redis store keeps the same copy in
    /// the room, so that a view is one read).
    seen: (Millis, Millis),
}

impl Membership {
    fn refresh(&mut self, facts: &SessionFacts) {
        self.seen = (facts.last_heartbeat_at, facts.last_active_at);
    }
}

#[derive(Default)]
struct Room {
    seq: u64,
    sessions: BTreeSet<SessionId>,
    /// The members in page order.
    order: BTreeSet<(UserId, SessionId)>,
    /// Sessions per user, so that the user count is O(1).
    users: HashMap<UserId, u32>,
}

fn json_len(m: &JsonMap) -> usize {
    serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX)
}

impl MemoryStore {
    /// A store that reads time from `clock` and applies `timings` and `limits`.
    pub fn new(clock: Arc<dyn Clock>, timings: Timings, limits: Limits) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            inner: Mutex::new(Inner::default()),
            resyncs: watch::Sender::new(0),
            signals: broadcast::Sender::new(1),
            notices: broadcast::Sender::new(64),
            intent_notices: broadcast::Sender::new(1024),
            log: Arc::new(MemoryLog::new(
                clock.clone(),
                limits.event_shards,
                limits.event_stream_max_len,
            )),
            clock,
            timings,
            limits,
            events,
        }
    }

    /// Appends one lifecycle event (under the store's lock, so that the
    /// stream has a user's events in the order of their changes).
    fn emit(&self, kind: Lifecycle, now: Millis) {
        self.log.push(vec![kind.at(new_event_id(), now)]);
    }

    /// Re-derives `user`'s status over their sessions after a change and
    /// appends what it changed at the user level (online, offline, status);
    /// keeps their last seen when they went offline.
    fn settle_user(&self, inner: &mut Inner, user: &UserId, now: Millis) {
        let mut best: Option<SessionStatus> = None;
        let mut active_at = 0;
        for e in inner
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|sid| inner.sessions.get(sid))
        {
            best = Some(best.map_or(e.status, |b| b.min(e.status)));
            active_at = active_at.max(e.facts.last_active_at);
        }
        let after = best.map_or(UserStatus::Offline, UserStatus::from);
        let (before, seen) = inner
            .tracked
            .get(user)
            .copied()
            .unwrap_or((UserStatus::Offline, 0));
        let seen = seen.max(active_at);
        if after == UserStatus::Offline {
            inner.tracked.remove(user);
            if before != UserStatus::Offline {
                inner.last_seen.insert(
                    user.clone(),
                    LastSeen {
                        last_seen_at: seen,
                        last_online_at: now,
                    },
                );
            }
        } else {
            inner.tracked.insert(user.clone(), (after, seen));
            inner.last_seen.remove(user);
        }
        if let Some(k) = user_change(user, before, after, seen) {
            self.emit(k, now);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change
        // that matters more than stopping service, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumps the room's seq and publishes one event about `session` in `room`.
    fn publish(
        &self,
        inner: &mut Inner,
        kind: EventKind,
        session: &SessionId,
        room: &RoomId,
        now: Millis,
    ) {
        let Some(r) = inner.rooms.get_mut(room) else {
            return;
        };
        r.seq += 1;
        let seq = r.seq;
        let Some(e) = inner.sessions.get_mut(session) else {
            return;
        };
        let gone = matches!(kind, EventKind::Leave | EventKind::Expire);
        // What observers see of a member that stays is what the room keeps.
        if let Some(m) = e.rooms.get_mut(room).filter(|_| !gone) {
            m.refresh(&e.facts);
        }
        let status = if gone {
            EventStatus::Offline
        } else {
            e.status.into()
        };
        let state = e.rooms.get(room).and_then(|m| m.state.clone());
        // The member as the room keeps it, as the Redis store's events carry it.
        let member = (!gone).then(|| {
            let m = Self::member(e, Some(room));
            EventMember {
                handle: m.handle,
                last_heartbeat_at: m.last_heartbeat_at,
                last_active_at: m.last_active_at,
                state_updated_at: m.state_updated_at,
                declared: m.declared,
            }
        });
        let facts = &e.facts;
        let ev = PresenceEvent {
            v: 1,
            kind,
            room_id: room.clone(),
            seq,
            user_id: facts.user_id.clone(),
            session_id: session.clone(),
            node_id: facts.node_id.clone(),
            epoch: facts.epoch,
            status,
            state,
            ts: now,
            member,
        };
        // No receiver is not an error: nobody is listening yet.
        let _ = self.events.send(ev);
    }

    /// Finds the session and checks the epoch.
    fn owned<'a>(inner: &'a mut Inner, s: &SessionRef) -> Result<&'a mut SessionEntry, StoreError> {
        let Some(e) = inner.sessions.get_mut(&s.session_id) else {
            // Removed: its last owner may claim it again; an older connection
            // had lost it before that.
            return Err(match inner.tombstones.get(&s.session_id) {
                Some(t) if s.epoch < t.epoch => StoreError::StaleEpoch { current: t.epoch },
                _ => StoreError::NoSession,
            });
        };
        if e.facts.epoch != s.epoch || e.facts.disconnected_at.is_some() {
            return Err(StoreError::StaleEpoch {
                current: e.facts.epoch,
            });
        }
        Ok(e)
    }

    /// Re-derives `session` at `now`; publishes a status change in each of its
    /// rooms, or removes it (publishing `kind`) when it is past its deadline.
    /// Returns (status changed, removed).
    fn rederive(&self, inner: &mut Inner, session: &SessionId, now: Millis) -> (bool, bool) {
        let Some(e) = inner.sessions.get_mut(session) else {
            return (false, false);
        };
        inner.deadlines.remove(&(e.deadline, session.clone()));
        match e.facts.liveness(now, &self.timings) {
            Liveness::Expired => {
                self.remove_session(inner, session, EventKind::Expire, now);
                (false, true)
            }
            Liveness::Live(status) => {
                e.deadline = e.facts.next_deadline(now, &self.timings);
                inner.deadlines.insert((e.deadline, session.clone()));
                if status == e.status {
                    return (false, false);
                }
                e.status = status;
                let rooms: Vec<RoomId> = e.rooms.keys().cloned().collect();
                let user = e.facts.user_id.clone();
                for room in rooms {
                    self.publish(inner, EventKind::Status, session, &room, now);
                }
                self.settle_user(inner, &user, now);
                (true, false)
            }
        }
    }

    /// Removes a session from a room, publishing `kind` first.
    fn leave_room(
        &self,
        inner: &mut Inner,
        session: &SessionId,
        room: &RoomId,
        kind: EventKind,
        now: Millis,
    ) {
        self.publish(inner, kind, session, room, now);
        let Some(e) = inner.sessions.get_mut(session) else {
            return;
        };
        e.rooms.remove(room);
        let user = e.facts.user_id.clone();
        if let Some(r) = inner.rooms.get_mut(room) {
            r.sessions.remove(session);
            r.order.remove(&(user.clone(), session.clone()));
            if let Some(n) = r.users.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    r.users.remove(&user);
                    self.emit(
                        Lifecycle::MemberLeft {
                            room_id: room.clone(),
                            user_id: user.clone(),
                        },
                        now,
                    );
                }
            }
            if r.sessions.is_empty() {
                inner.rooms.remove(room);
                self.emit(
                    Lifecycle::RoomVacated {
                        room_id: room.clone(),
                    },
                    now,
                );
            }
        }
    }

    fn remove_session(&self, inner: &mut Inner, session: &SessionId, kind: EventKind, now: Millis) {
        let rooms: Vec<RoomId> = match inner.sessions.get(session) {
            Some(e) => e.rooms.keys().cloned().collect(),
            None => return,
        };
        for room in &rooms {
            self.leave_room(inner, session, room, kind, now);
        }
        if let Some(e) = inner.sessions.remove(session) {
            if let Some(t) = inner.tracked.get_mut(&e.facts.user_id) {
                t.1 = t.1.max(e.facts.last_active_at);
            }
            inner.tombstones.insert(
                session.clone(),
                Tombstone {
                    epoch: e.facts.epoch,
                    at: now,
                    user_id: e.facts.user_id.clone(),
                    kicked: false,
                },
            );
            inner.deadlines.remove(&(e.deadline, session.clone()));
            if let Some(set) = inner.users.get_mut(&e.facts.user_id) {
                set.remove(session);
                if set.is_empty() {
                    inner.users.remove(&e.facts.user_id);
                }
            }
            self.settle_user(inner, &e.facts.user_id, now);
        }
    }

    fn member(e: &SessionEntry, room: Option<&RoomId>) -> Member {
        let m = room.and_then(|r| e.rooms.get(r));
        let (hb, la) = m.map_or((e.facts.last_heartbeat_at, e.facts.last_active_at), |m| {
            m.seen
        });
        Member {
            session_id: e.facts.session_id.clone(),
            user_id: e.facts.user_id.clone(),
            handle: e.facts.handle.clone(),
            status: e.status,
            last_heartbeat_at: hb,
            last_active_at: la,
            state: m.and_then(|m| m.state.clone()),
            state_updated_at: m.map_or(0, |m| m.state_updated_at),
            declared: e.facts.declared.clone(),
        }
    }

    fn check_state(&self, state: &JsonMap) -> Result<(), StoreError> {
        let size = json_len(state);
        if size > self.limits.max_state_bytes {
            return Err(StoreError::StateTooLarge {
                size,
                limit: self.limits.max_state_bytes,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl PresenceStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn hello(&self, req: Hello) -> Result<Claimed, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(id) = &req.session_id {
            // A session id stays its user's, alive or ended (for the
            // tombstone's life): no one else may claim it.
            let owner = match (inner.sessions.get(id), inner.tombstones.get(id)) {
                (Some(e), _) => Some(&e.facts.user_id),
                (None, Some(t)) => Some(&t.user_id),
                (None, None) => None,
            };
            if owner.is_some_and(|u| *u != req.user_id) {
                return Err(StoreError::Forbidden(
                    "this sessionId belongs to another user".into(),
                ));
            }
            if !inner.sessions.contains_key(id)
                && inner.tombstones.get(id).is_some_and(|t| t.kicked)
            {
                return Err(StoreError::Kicked);
            }
            // A session past its deadline but not yet swept is gone, not resumable.
            if let Some(e) = inner.sessions.get(id) {
                if e.facts.liveness(now, &self.timings) == Liveness::Expired {
                    self.remove_session(inner, id, EventKind::Expire, now);
                }
            }
            if let Some(e) = inner.sessions.get_mut(id) {
                if e.facts.user_id != req.user_id {
                    return Err(StoreError::Forbidden(
                        "this sessionId belongs to another user".into(),
                    ));
                }
                // The connection that held it, unless it had disconnected.
                let superseded = e.facts.disconnected_at.is_none().then(|| Superseded {
                    node_id: e.facts.node_id.clone(),
                    epoch: e.facts.epoch,
                });
                e.facts.epoch += 1;
                e.facts.node_id = req.node_id;
                e.facts.disconnected_at = None;
                if req.handle.is_some() {
                    e.facts.handle = req.handle;
                }
                if req.meta.is_some() {
                    e.facts.meta = req.meta;
                }
                let declared = req.declare.apply(e.facts.declared.clone());
                let redeclared = declared != e.facts.declared;
                e.facts.declared = declared;
                e.facts.record_heartbeat(now, Some(req.activity));
                for m in e.rooms.values_mut() {
                    m.refresh(&e.facts);
                }
                let claimed = Claimed {
                    session_id: id.clone(),
                    epoch: e.facts.epoch,
                    resumed: true,
                    rooms: e.rooms.keys().cloned().collect(),
                    superseded,
                };
                let user = e.facts.user_id.clone();
                let (changed, _) = self.rederive(inner, id, now);
                if !changed {
                    // A resume of a session the user still had changes
                    // nothing at the user level; this keeps it exact anyway.
                    self.settle_user(inner, &user, now);
                }
                // Observers hear of a new readiness with the resume (a status
                // change has told them already).
                if redeclared && !changed {
                    for room in &claimed.rooms {
                        self.publish(inner, EventKind::Status, id, room, now);
                    }
                }
                return Ok(claimed);
            }
        }
        // A new session: the user's other live sessions count against the limit.
        let held = inner.users.get(&req.user_id).map_or(0, |sids| {
            sids.iter()
                .filter(|sid| {
                    inner
                        .sessions
                        .get(*sid)
                        .is_some_and(|e| e.facts.liveness(now, &self.timings) != Liveness::Expired)
                })
                .count()
        });
        if held >= self.limits.max_sessions_per_user {
            return Err(StoreError::TooManySessions {
                limit: self.limits.max_sessions_per_user,
            });
        }
        let session_id = req.session_id.unwrap_or_else(new_session_id);
        let mut facts = SessionFacts {
            session_id: session_id.clone(),
            user_id: req.user_id.clone(),
            handle: req.handle,
            node_id: req.node_id,
            epoch: first_epoch(now)
                .max(inner.tombstones.get(&session_id).map_or(0, |t| t.epoch + 1)),
            activity: req.activity,
            last_heartbeat_at: now,
            last_active_at: now,
            connected_at: now,
            disconnected_at: None,
            meta: req.meta,
            declared: req.declare.apply(Default::default()),
        };
        facts.record_heartbeat(now, Some(req.activity));
        let status = match facts.liveness(now, &self.timings) {
            Liveness::Live(s) => s,
            Liveness::Expired => SessionStatus::Stale,
        };
        let deadline = facts.next_deadline(now, &self.timings);
        let epoch = facts.epoch;
        inner.deadlines.insert((deadline, session_id.clone()));
        inner
            .users
            .entry(req.user_id)
            .or_default()
            .insert(session_id.clone());
        let user = facts.user_id.clone();
        inner.sessions.insert(
            session_id.clone(),
            SessionEntry {
                facts,
                status,
                deadline,
                rooms: BTreeMap::new(),
            },
        );
        self.settle_user(inner, &user, now);
        Ok(Claimed {
            session_id,
            epoch,
            resumed: false,
            rooms: vec![],
            superseded: None,
        })
    }

    async fn join(
        &self,
        s: &SessionRef,
        room: &RoomId,
        state: Option<JsonMap>,
    ) -> Result<Joined, StoreError> {
        if let Some(st) = &state {
            self.check_state(st)?;
        }
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, s)?;
        if let Some(m) = e.rooms.get_mut(room) {
            m.refresh(&e.facts);
            if let Some(st) = state {
                if m.state.as_ref() != Some(&st) {
                    m.state = Some(st);
                    m.state_updated_at = now;
                    self.publish(inner, EventKind::Update, &s.session_id, room, now);
                }
            }
            let seq = inner.rooms.get(room).map_or(0, |r| r.seq);
            return Ok(Joined { seq, already: true });
        }
        if e.rooms.len() >= self.limits.max_rooms_per_session {
            return Err(StoreError::TooManyRooms {
                limit: self.limits.max_rooms_per_session,
            });
        }
        e.rooms.insert(
            room.clone(),
            Membership {
                state,
                state_updated_at: now,
                seen: (e.facts.last_heartbeat_at, e.facts.last_active_at),
            },
        );
        let user = e.facts.user_id.clone();
        let r = inner.rooms.entry(room.clone()).or_default();
        let occupied = r.sessions.is_empty();
        r.sessions.insert(s.session_id.clone());
        r.order.insert((user.clone(), s.session_id.clone()));
        let n = r.users.entry(user.clone()).or_default();
        *n += 1;
        let first = *n == 1;
        self.publish(inner, EventKind::Join, &s.session_id, room, now);
        if occupied {
            self.emit(
                Lifecycle::RoomOccupied {
                    room_id: room.clone(),
                },
                now,
            );
        }
        if first {
            self.emit(
                Lifecycle::MemberJoined {
                    room_id: room.clone(),
                    user_id: user,
                },
                now,
            );
        }
        let seq = inner.rooms.get(room).map_or(0, |r| r.seq);
        Ok(Joined {
            seq,
            already: false,
        })
    }

    async fn heartbeat(
        &self,
        s: &SessionRef,
        activity: Option<presence_core::Activity>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, s)?;
        e.facts.record_heartbeat(now, activity);
        self.rederive(inner, &s.session_id, now);
        Ok(())
    }

    async fn update_state(
        &self,
        s: &SessionRef,
        room: &RoomId,
        patch: JsonMap,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, s)?;
        let m = e
            .rooms
            .get_mut(room)
            .ok_or_else(|| StoreError::NotJoined(room.clone()))?;
        let next = presence_core::state::merge(m.state.clone(), patch);
        let size = next.as_ref().map_or(0, json_len);
        if size > self.limits.max_state_bytes {
            return Err(StoreError::StateTooLarge {
                size,
                limit: self.limits.max_state_bytes,
            });
        }
        if next != m.state {
            m.state = next;
            m.state_updated_at = now;
            self.publish(inner, EventKind::Update, &s.session_id, room, now);
        }
        Ok(())
    }

    async fn leave(&self, s: &SessionRef, room: &RoomId) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, s)?;
        if !e.rooms.contains_key(room) {
            return Err(StoreError::NotJoined(room.clone()));
        }
        self.leave_room(inner, &s.session_id, room, EventKind::Leave, now);
        Ok(())
    }

    async fn end(&self, s: &SessionRef) -> Result<Vec<RoomId>, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, s)?;
        let rooms: Vec<RoomId> = e.rooms.keys().cloned().collect();
        self.remove_session(inner, &s.session_id, EventKind::Leave, now);
        Ok(rooms)
    }

    async fn disconnect(&self, s: &SessionRef) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, s)?;
        e.facts.disconnected_at = Some(now);
        self.rederive(inner, &s.session_id, now);
        Ok(())
    }

    async fn sweep(&self, term: u64) -> Result<SweepReport, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut report = SweepReport::default();
        if term < inner.swept_term {
            report.fenced = inner
                .deadlines
                .iter()
                .take_while(|(d, _)| *d <= now)
                .count() as u64;
            return Ok(report);
        }
        inner.swept_term = term;
        let past = first_epoch(now);
        inner
            .tombstones
            .retain(|_, t| t.epoch >= past || now - t.at < TOMBSTONE_MS);
        // Last seen lapses with its TTL (looked at once a minute: it is
        // a scan of every offline user kept).
        if now - inner.last_seen_pruned_at >= 60_000 {
            inner.last_seen_pruned_at = now;
            let ttl = self.limits.last_seen_ttl_ms;
            inner.last_seen.retain(|_, l| now - l.last_online_at < ttl);
        }
        while let Some((deadline, session)) = inner.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            let (changed, removed) = self.rederive(inner, &session, now);
            report.status_changes += u64::from(changed);
            report.expired += u64::from(removed);
        }
        Ok(report)
    }

    async fn room_members(&self, room: &RoomId) -> Result<RoomMembers, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        let Some(r) = inner.rooms.get(room) else {
            return Ok(RoomMembers {
                seq: 0,
                read_at: now,
                members: vec![],
            });
        };
        let members = r
            .sessions
            .iter()
            .filter_map(|id| inner.sessions.get(id))
            .map(|e| Self::member(e, Some(room)))
            .collect();
        Ok(RoomMembers {
            seq: r.seq,
            read_at: now,
            members,
        })
    }

    async fn room_page(
        &self,
        room: &RoomId,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<RoomPage, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let now = self.clock.now_ms();
        let inner = self.lock();
        let Some(r) = inner.rooms.get(room) else {
            return Ok(RoomPage::from_members(0, now, vec![], after, limit));
        };
        let start = match after {
            Some(c) => Excluded((c.user_id.clone(), c.session_id.clone())),
            None => Unbounded,
        };
        // The first limit + 1 members, then every member of their users.
        let mut users: Vec<&UserId> = Vec::new();
        for (u, _) in r.order.range((start, Unbounded)).take(limit + 1) {
            if users.last() != Some(&u) {
                users.push(u);
            }
        }
        let mut members = Vec::new();
        for u in users {
            let sids = inner.users.get(u).into_iter().flatten();
            for e in sids.filter_map(|sid| inner.sessions.get(sid)) {
                if e.rooms.contains_key(room) {
                    members.push(Self::member(e, Some(room)));
                }
            }
        }
        Ok(RoomPage::from_members(r.seq, now, members, after, limit))
    }

    async fn room_stats(&self, room: &RoomId) -> Result<RoomStats, StoreError> {
        let inner = self.lock();
        Ok(inner
            .rooms
            .get(room)
            .map_or_else(RoomStats::default, |r| RoomStats {
                sessions: r.sessions.len() as u64,
                users: r.users.len() as u64,
            }))
    }

    async fn whos_online(&self, page: Page) -> Result<Online, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let now = self.clock.now_ms();
        let inner = self.lock();
        let start = match &page.after {
            Some(u) => Excluded(u.clone()),
            None => Unbounded,
        };
        let mut users = inner.users.range((start, Unbounded));
        let mut members = Vec::new();
        let mut last = None;
        for (user, sessions) in users.by_ref().take(page.limit) {
            members.extend(
                sessions
                    .iter()
                    .filter_map(|id| inner.sessions.get(id))
                    .map(|e| Self::member(e, None)),
            );
            last = Some(user.clone());
        }
        let next_cursor = if users.next().is_some() { last } else { None };
        Ok(Online {
            generated_at: now,
            entries: build_view(members),
            next_cursor,
        })
    }

    async fn users_status(
        &self,
        users: &[UserId],
    ) -> Result<BTreeMap<UserId, UserSummary>, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        Ok(users
            .iter()
            .map(|u| {
                let sessions = inner.users.get(u);
                let summary = derive_user(
                    sessions
                        .into_iter()
                        .flatten()
                        .filter_map(|id| inner.sessions.get(id))
                        .map(|e| SessionSignal {
                            status: e.status,
                            last_heartbeat_at: e.facts.last_heartbeat_at,
                            last_active_at: e.facts.last_active_at,
                        }),
                );
                let summary = match inner.last_seen.get(u) {
                    Some(l)
                        if summary.session_count == 0
                            && now - l.last_online_at < self.limits.last_seen_ttl_ms =>
                    {
                        UserSummary {
                            last_seen_at: l.last_seen_at,
                            last_online_at: l.last_online_at,
                            ..summary
                        }
                    }
                    _ => summary,
                };
                (u.clone(), summary)
            })
            .collect())
    }

    async fn ping(&self) -> Result<Health, StoreError> {
        Ok(Health::default())
    }

    async fn declare(&self, s: &SessionRef, d: &Declare) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, s)?;
        let declared = d.apply(e.facts.declared.clone());
        if declared == e.facts.declared {
            return Ok(false);
        }
        e.facts.declared = declared;
        let rooms: Vec<RoomId> = e.rooms.keys().cloned().collect();
        for room in &rooms {
            self.publish(inner, EventKind::Update, &s.session_id, room, now);
        }
        Ok(true)
    }

    async fn user_sessions(&self, user: &UserId) -> Result<Vec<UserSession>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| inner.sessions.get(id))
            .map(|e| UserSession {
                session_id: e.facts.session_id.clone(),
                status: e.status,
                activity: e.facts.activity,
                declared: e.facts.declared.clone(),
                last_active_at: e.facts.last_active_at,
                rooms: e.rooms.keys().cloned().collect(),
            })
            .collect())
    }

    async fn put_intent(&self, intent: &Intent) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let intents = &mut inner.intents;
        intents.prune(&intent.from, now);
        intents.prune(&intent.to, now);
        let from = intents
            .from(&intent.from)
            .filter(|i| now < i.expires_at)
            .count();
        if from >= self.limits.max_intents_per_user {
            return Err(too_many_from(self.limits.max_intents_per_user));
        }
        let to = intents.to(&intent.to).filter(|i| i.is_pending(now)).count();
        if to >= self.limits.max_intents_to_user {
            return Err(too_many_to(self.limits.max_intents_to_user));
        }
        intents.insert(intent);
        Ok(())
    }

    async fn intents_to(&self, user: &UserId) -> Result<Vec<Intent>, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        Ok(inner
            .intents
            .to(user)
            .filter(|i| i.is_pending(now))
            .cloned()
            .collect())
    }

    async fn intents_from(&self, user: &UserId) -> Result<Vec<Intent>, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        Ok(inner
            .intents
            .from(user)
            .filter(|i| now < i.expires_at + INTENT_KEEP_MS)
            .cloned()
            .collect())
    }

    async fn resolve_intent(
        &self,
        intent: &Intent,
        outcome: IntentOutcome,
    ) -> Result<Option<Intent>, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let Some(stored) = inner.intents.get_mut(intent) else {
            return Ok(None);
        };
        let Some(resolved) = stored.resolve(outcome, now) else {
            return Ok(None);
        };
        *stored = resolved.clone();
        if let Some(k) = Lifecycle::of_intent(&resolved) {
            self.emit(k, now);
        }
        Ok(Some(resolved))
    }

    async fn take_intent(&self, intent: &Intent) -> Result<bool, StoreError> {
        Ok(self.lock().intents.remove(intent))
    }

    async fn publish_intent(&self, notice: &IntentNotice) -> Result<(), StoreError> {
        let _ = self.intent_notices.send(notice.clone());
        Ok(())
    }

    fn intent_notices(&self) -> broadcast::Receiver<IntentNotice> {
        self.intent_notices.subscribe()
    }

    fn events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.events.subscribe()
    }

    fn resyncs(&self) -> watch::Receiver<u64> {
        self.resyncs.subscribe()
    }

    async fn follow_room(&self, _room: &RoomId) -> Result<(), StoreError> {
        Ok(())
    }

    async fn publish_signal(&self, _signal: &Signal) -> Result<(), StoreError> {
        Ok(())
    }

    fn signals(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    async fn notify_node(&self, _node: &NodeId, notice: &NodeNotice) -> Result<(), StoreError> {
        let _ = self.notices.send(notice.clone());
        Ok(())
    }

    async fn listen_notices(
        &self,
        _node: &NodeId,
    ) -> Result<broadcast::Receiver<NodeNotice>, StoreError> {
        Ok(self.notices.subscribe())
    }

    async fn recently_offline(&self, limit: usize) -> Result<Vec<(UserId, LastSeen)>, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let ttl = self.limits.last_seen_ttl_ms;
        inner.last_seen.retain(|_, l| now - l.last_online_at < ttl);
        let mut all: Vec<(UserId, LastSeen)> = inner
            .last_seen
            .iter()
            .map(|(u, l)| (u.clone(), *l))
            .collect();
        all.sort_by(|a, b| {
            b.1.last_online_at
                .cmp(&a.1.last_online_at)
                .then_with(|| a.0.cmp(&b.0))
        });
        all.truncate(limit);
        Ok(all)
    }

    async fn remove(
        &self,
        session: &SessionId,
        room: Option<&RoomId>,
    ) -> Result<Option<Holder>, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(e) = inner
            .sessions
            .get(session)
            .filter(|e| e.facts.liveness(now, &self.timings) != Liveness::Expired)
        else {
            return Ok(None);
        };
        let mut holder = Holder {
            user_id: e.facts.user_id.clone(),
            epoch: e.facts.epoch,
            node_id: e.facts.node_id.clone(),
            rooms: e.rooms.keys().cloned().collect(),
        };
        match room {
            Some(room) => {
                if !e.rooms.contains_key(room) {
                    return Ok(None);
                }
                holder.rooms = vec![room.clone()];
                self.leave_room(inner, session, room, EventKind::Leave, now);
            }
            None => {
                self.remove_session(inner, session, EventKind::Leave, now);
                if let Some(t) = inner.tombstones.get_mut(session) {
                    t.kicked = true;
                }
            }
        }
        Ok(Some(holder))
    }

    async fn session_holder(&self, session: &SessionId) -> Result<Option<Holder>, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        Ok(inner
            .sessions
            .get(session)
            .filter(|e| e.facts.liveness(now, &self.timings) != Liveness::Expired)
            .map(|e| Holder {
                user_id: e.facts.user_id.clone(),
                epoch: e.facts.epoch,
                node_id: e.facts.node_id.clone(),
                rooms: e.rooms.keys().cloned().collect(),
            }))
    }

    fn lifecycle(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    async fn acquire_lease(&self, node: &NodeId, lease_ms: Millis) -> Result<Lease, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        match &mut inner.lease {
            Some(l) if l.lease_until > now && l.node_id != *node => Ok(l.clone()),
            Some(l) if l.lease_until > now => {
                l.lease_until = now + lease_ms;
                Ok(l.clone())
            }
            _ => {
                inner.term += 1;
                let l = Lease {
                    node_id: node.clone(),
                    term: inner.term,
                    lease_until: now + lease_ms,
                };
                inner.lease = Some(l.clone());
                Ok(l)
            }
        }
    }

    async fn release_lease(&self, node: &NodeId, term: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .lease
            .as_ref()
            .is_some_and(|l| l.node_id == *node && l.term == term)
        {
            inner.lease = None;
        }
        Ok(())
    }

    async fn current_lease(&self) -> Result<Option<Lease>, StoreError> {
        let now = self.clock.now_ms();
        Ok(self.lock().lease.clone().filter(|l| l.lease_until > now))
    }

    async fn register_node(&self, node: &NodeInfo, ttl_ms: Millis) -> Result<(), StoreError> {
        let until = self.clock.now_ms() + ttl_ms;
        self.lock()
            .nodes
            .insert(node.node_id.clone(), (node.clone(), until));
        Ok(())
    }

    async fn deregister_node(&self, node_id: &NodeId) -> Result<(), StoreError> {
        self.lock().nodes.remove(node_id);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        inner.nodes.retain(|_, (_, until)| *until > now);
        Ok(inner.nodes.values().map(|(n, _)| n.clone()).collect())
    }

    async fn unfollow_room(&self, _room: &RoomId) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod conformance_tests {
    use std::sync::Arc;

    use crate::conformance::Env;
    use crate::{MemoryStore, PresenceStore};

    async fn make(env: Env) -> Arc<dyn PresenceStore> {
        Arc::new(MemoryStore::new(
            Arc::new(env.clock),
            env.timings,
            env.limits,
        ))
    }

    conformance_suite!(make);
}
