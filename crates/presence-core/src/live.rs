//! A room's view kept current from its events.
//!
//! Every event names the room's version (`seq`) and, unless it takes the
//! session out, carries the member as the room keeps it. So whoever follows
//! a room can apply each event to the view it holds: one session changes and
//! one user is derived again, whatever the size of the room. A room is read
//! whole only at the start, when a version is missing (a lost event) and
//! after a resubscription ([`LiveRoom::reset`]).
//!
//! The diff since the last flush ([`LiveRoom::take_diff`]) is computed from
//! the entries that changed, as they were at that flush: its cost is that of
//! the change, not of the room.

use std::collections::{BTreeMap, BTreeSet};

use crate::diff::{diff_entries, Patchable, RoomDiff, SessionPatch, UserPatch};
use crate::event::PresenceEvent;
use crate::ids::{RoomId, SessionId, UserId};
use crate::page::{PageCursor, RoomCounts};
use crate::time::Millis;
use crate::view::{derive_user_entry, Entries, Member, RoomView, SessionPresence, UserPresence};

/// What [`LiveRoom::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The view moved to the event's version.
    Applied,
    /// The view already has this version (or a later one): nothing to do.
    Stale,
    /// A version is missing, or the event lacks the member: read the room.
    Gap,
}

/// A room's members and view at one version, and what changed since the
/// last flush.
#[derive(Debug, Clone)]
pub struct LiveRoom {
    room_id: RoomId,
    seq: u64,
    members: BTreeMap<SessionId, Member>,
    by_user: BTreeMap<UserId, BTreeSet<SessionId>>,
    entries: Entries,
    /// Entries as last flushed, for the users changed since (`None`: absent).
    users_before: BTreeMap<UserId, Option<UserPresence>>,
    /// Entries as last flushed, for the sessions changed since.
    sessions_before: BTreeMap<SessionId, Option<SessionPresence>>,
    /// The whole view as last flushed, when the room was read again since.
    all_before: Option<Entries>,
    /// Every user and session whose entry may have changed since the last
    /// flush, even if it is back as it was (for [`LiveRoom::catch_up`]).
    touched: Touched,
    /// The view's users and sessions by status, kept with every change.
    counts: RoomCounts,
}

/// The keys changed since the last flush.
#[derive(Debug, Clone, Default)]
struct Touched {
    users: BTreeSet<UserId>,
    /// With the session's user.
    sessions: BTreeMap<SessionId, UserId>,
}

impl Touched {
    /// Every entry of `e`.
    fn all_of(&mut self, e: &Entries) {
        self.users.extend(e.users.keys().cloned());
        for (sid, s) in &e.sessions {
            self.sessions.insert(sid.clone(), s.user_id.clone());
        }
    }
}

/// What a flush sends: the diff, and the user of each session in it (a
/// removed session's patch is `null`, and watchers follow users).
#[derive(Debug, Clone, PartialEq)]
pub struct Flush {
    /// The diff since the last flush.
    pub diff: RoomDiff,
    /// The user of every session in `diff`.
    pub owners: BTreeMap<SessionId, UserId>,
}

impl LiveRoom {
    /// The room at `seq`, read whole: it counts as flushed.
    pub fn new(room_id: RoomId, seq: u64, members: impl IntoIterator<Item = Member>) -> Self {
        let mut room = Self {
            room_id,
            seq,
            members: BTreeMap::new(),
            by_user: BTreeMap::new(),
            entries: Entries::default(),
            users_before: BTreeMap::new(),
            sessions_before: BTreeMap::new(),
            all_before: None,
            touched: Touched::default(),
            counts: RoomCounts::default(),
        };
        room.fill(members);
        room.touched = Touched::default();
        room
    }

    /// Whether anything changed since the last flush (the view is not the
    /// one its followers hold).
    pub fn changed_since_flush(&self) -> bool {
        self.all_before.is_some()
            || !self.touched.users.is_empty()
            || !self.touched.sessions.is_empty()
    }

    /// The room's version the view is at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The sessions in the room now.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The view's entries now.
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// How many sessions the room has.
    pub fn sessions(&self) -> usize {
        self.members.len()
    }

    /// The room's users and sessions by status.
    pub fn counts(&self) -> RoomCounts {
        self.counts
    }

    /// A user's entry, if the user is in the room.
    pub fn user(&self, uid: &UserId) -> Option<&UserPresence> {
        self.entries.users.get(uid)
    }

    /// A session's entry, if it is in the room.
    pub fn session(&self, sid: &SessionId) -> Option<&SessionPresence> {
        self.entries.sessions.get(sid)
    }

    /// The sessions of `uid` in the room.
    pub fn sessions_of<'a>(
        &'a self,
        uid: &UserId,
    ) -> impl Iterator<Item = &'a SessionPresence> + 'a {
        self.by_user
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|sid| self.entries.sessions.get(sid))
    }

    /// The members after `after` in page order (user id, then session id),
    /// each with its user's entry.
    pub fn members_after(
        &self,
        after: Option<PageCursor>,
    ) -> impl Iterator<Item = (&UserPresence, &SessionPresence)> + '_ {
        let range = match &after {
            Some(c) => self.by_user.range(c.user_id.clone()..),
            None => self.by_user.range::<UserId, _>(..),
        };
        range.flat_map(move |(uid, sids)| {
            let after = after.clone();
            let user = self.entries.users.get(uid);
            sids.iter()
                .filter(move |sid| after.as_ref().is_none_or(|c| c.is_before(uid, sid)))
                .filter_map(move |sid| Some((user?, self.entries.sessions.get(sid)?)))
        })
    }

    /// The view now, as read at `generated_at`.
    pub fn view(&self, generated_at: Millis) -> RoomView {
        RoomView {
            room_id: self.room_id.clone(),
            seq: self.seq,
            generated_at,
            users: self.entries.users.clone(),
            sessions: self.entries.sessions.clone(),
        }
    }

    /// Applies the room's next event.
    pub fn apply(&mut self, ev: &PresenceEvent) -> Applied {
        if ev.seq <= self.seq {
            // A room that emptied is forgotten by the store and starts its
            // versions again: an old version into an empty room may be new.
            return if self.members.is_empty() {
                Applied::Gap
            } else {
                Applied::Stale
            };
        }
        if ev.seq != self.seq + 1 {
            return Applied::Gap;
        }
        if ev.removes() {
            self.remove(&ev.session_id);
        } else {
            match ev.member() {
                Some(m) => self.put(m),
                None => return Applied::Gap,
            }
        }
        self.seq = ev.seq;
        Applied::Applied
    }

    /// Replaces the members with a fresh read at `seq` (after a gap or a
    /// resubscription; `seq` may be lower when the store lost its data). The
    /// next diff compares the whole view with what was last flushed.
    pub fn reset(&mut self, seq: u64, members: impl IntoIterator<Item = Member>) {
        if self.all_before.is_none() {
            self.all_before = Some(self.flushed());
        }
        // Whatever was there before the read and is there after it.
        let mut touched = std::mem::take(&mut self.touched);
        touched.all_of(&self.entries);
        self.users_before.clear();
        self.sessions_before.clear();
        self.seq = seq;
        self.members.clear();
        self.by_user.clear();
        self.entries = Entries::default();
        self.counts = RoomCounts::default();
        self.fill(members);
        touched.all_of(&self.entries);
        self.touched = touched;
    }

    /// The diff from the view as last flushed to the view now; what it
    /// holds counts as flushed from now on.
    pub fn take_diff(&mut self) -> RoomDiff {
        self.take_flush().diff
    }

    /// [`LiveRoom::take_diff`], with the user of each session in the diff.
    pub fn take_flush(&mut self) -> Flush {
        let mut owners = BTreeMap::new();
        let mut owner = |sid: &SessionId, was: Option<&SessionPresence>| {
            if let Some(s) = self.entries.sessions.get(sid).or(was) {
                owners.insert(sid.clone(), s.user_id.clone());
            }
        };
        match &self.all_before {
            Some(before) => {
                let mut keys: BTreeSet<&SessionId> = before.sessions.keys().collect();
                keys.extend(self.entries.sessions.keys());
                for sid in keys {
                    owner(sid, before.sessions.get(sid));
                }
            }
            None => {
                for (sid, was) in &self.sessions_before {
                    owner(sid, was.as_ref());
                }
            }
        }
        let (users, sessions) = match self.all_before.take() {
            Some(before) => (
                diff_entries(&before.users, &self.entries.users),
                diff_entries(&before.sessions, &self.entries.sessions),
            ),
            None => (
                changes(std::mem::take(&mut self.users_before), &self.entries.users),
                changes(
                    std::mem::take(&mut self.sessions_before),
                    &self.entries.sessions,
                ),
            ),
        };
        self.users_before.clear();
        self.sessions_before.clear();
        self.touched = Touched::default();
        owners.retain(|sid, _| sessions.contains_key(sid));
        self.flush_of(users, sessions, owners)
    }

    /// What a client that took its view from this room since the last
    /// flush (not the view as flushed: the view as it was then) needs to hold
    /// the view now: every entry changed since the last flush, whole
    /// ([`Patchable::whole`]) or `null`. Unlike [`LiveRoom::take_flush`]'s
    /// minimal diff it does not depend on what the client holds of those
    /// entries, so it is exact for any view taken in between: a change made
    /// and undone after the last flush, which the minimal diff leaves out,
    /// is set back here. Call it before `take_flush`; it changes nothing.
    pub fn catch_up(&self) -> Flush {
        let mut owners = BTreeMap::new();
        let mut sessions = BTreeMap::new();
        for (sid, uid) in &self.touched.sessions {
            let now = self.entries.sessions.get(sid);
            owners.insert(sid.clone(), uid.clone());
            sessions.insert(sid.clone(), now.map(SessionPresence::whole));
        }
        let users = self
            .touched
            .users
            .iter()
            .map(|uid| {
                (
                    uid.clone(),
                    self.entries.users.get(uid).map(UserPresence::whole),
                )
            })
            .collect();
        self.flush_of(users, sessions, owners)
    }

    /// A flush of this room at its version.
    fn flush_of(
        &self,
        users: BTreeMap<UserId, Option<UserPatch>>,
        sessions: BTreeMap<SessionId, Option<SessionPatch>>,
        owners: BTreeMap<SessionId, UserId>,
    ) -> Flush {
        Flush {
            diff: RoomDiff {
                room_id: self.room_id.clone(),
                seq: self.seq,
                users,
                sessions,
            },
            owners,
        }
    }

    /// The view as last flushed (the view now with the changed entries put
    /// back as they were).
    fn flushed(&self) -> Entries {
        let mut e = self.entries.clone();
        restore(&mut e.users, &self.users_before);
        restore(&mut e.sessions, &self.sessions_before);
        e
    }

    fn fill(&mut self, members: impl IntoIterator<Item = Member>) {
        let mut users = BTreeSet::new();
        for m in members {
            users.insert(m.user_id.clone());
            self.by_user
                .entry(m.user_id.clone())
                .or_default()
                .insert(m.session_id.clone());
            self.put_session(SessionPresence::from(m.clone()));
            self.members.insert(m.session_id.clone(), m);
        }
        for u in users {
            self.derive(&u);
        }
    }

    fn put(&mut self, m: Member) {
        let (sid, uid) = (m.session_id.clone(), m.user_id.clone());
        self.note_session(&sid, &uid);
        self.note_user(&uid);
        if let Some(old) = self.members.get(&sid) {
            // A session never changes user; if a store said so, move it.
            if old.user_id != uid {
                let old_uid = old.user_id.clone();
                self.unlink(&old_uid, &sid);
            }
        }
        self.by_user
            .entry(uid.clone())
            .or_default()
            .insert(sid.clone());
        self.put_session(SessionPresence::from(m.clone()));
        self.members.insert(sid, m);
        self.derive(&uid);
    }

    fn remove(&mut self, sid: &SessionId) {
        let Some(old) = self.members.remove(sid) else {
            return;
        };
        self.note_session(sid, &old.user_id);
        if let Some(was) = self.entries.sessions.remove(sid) {
            self.counts.sessions.sub(was.status);
        }
        self.unlink(&old.user_id, sid);
    }

    /// Puts a session's entry, counting it by status.
    fn put_session(&mut self, s: SessionPresence) {
        self.counts.sessions.add(s.status);
        if let Some(was) = self.entries.sessions.insert(s.session_id.clone(), s) {
            self.counts.sessions.sub(was.status);
        }
    }

    /// Takes `sid` from `uid`'s sessions and derives the user again.
    fn unlink(&mut self, uid: &UserId, sid: &SessionId) {
        self.note_user(uid);
        if let Some(set) = self.by_user.get_mut(uid) {
            set.remove(sid);
            if set.is_empty() {
                self.by_user.remove(uid);
            }
        }
        self.derive(uid);
    }

    /// Derives `uid`'s entry from their sessions in the room.
    fn derive(&mut self, uid: &UserId) {
        let Some(sids) = self.by_user.get(uid) else {
            if let Some(was) = self.entries.users.remove(uid) {
                self.counts.users.sub_user(was.status);
            }
            return;
        };
        let members = sids.iter().filter_map(|s| self.members.get(s));
        let user = derive_user_entry(uid, members);
        self.counts.users.add_user(user.status);
        if let Some(was) = self.entries.users.insert(uid.clone(), user) {
            self.counts.users.sub_user(was.status);
        }
    }

    fn note_user(&mut self, uid: &UserId) {
        self.touched.users.insert(uid.clone());
        if self.all_before.is_none() && !self.users_before.contains_key(uid) {
            let was = self.entries.users.get(uid).cloned();
            self.users_before.insert(uid.clone(), was);
        }
    }

    fn note_session(&mut self, sid: &SessionId, uid: &UserId) {
        self.touched.sessions.insert(sid.clone(), uid.clone());
        if self.all_before.is_none() && !self.sessions_before.contains_key(sid) {
            let was = self.entries.sessions.get(sid).cloned();
            self.sessions_before.insert(sid.clone(), was);
        }
    }
}

/// The patches of the entries in `before` (as they were) against `now`.
fn changes<K: Ord + Clone, E: Patchable + Clone>(
    before: BTreeMap<K, Option<E>>,
    now: &BTreeMap<K, E>,
) -> BTreeMap<K, Option<E::Patch>> {
    let mut out = BTreeMap::new();
    for (k, was) in before {
        let patch = match (was, now.get(&k)) {
            (None, None) => continue,
            (Some(_), None) => None,
            (None, Some(n)) => Some(E::full(n)),
            (Some(o), Some(n)) => match E::patch(&o, n) {
                Some(p) => Some(p),
                None => continue,
            },
        };
        out.insert(k, patch);
    }
    out
}

/// Puts the entries of `before` back into `map` as they were.
fn restore<K: Ord + Clone, E: Clone>(map: &mut BTreeMap<K, E>, before: &BTreeMap<K, Option<E>>) {
    for (k, was) in before {
        match was {
            Some(e) => {
                map.insert(k.clone(), e.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::event::{EventKind, EventMember};
    use crate::ids::NodeId;
    use crate::session::SessionStatus;
    use crate::user::UserStatus;

    fn member(s: u8, u: u8, status: SessionStatus, t: Millis, state: Option<u8>) -> Member {
        Member {
            session_id: SessionId::new(&format!("s{s}")).unwrap(),
            user_id: UserId::new(&format!("u{u}")).unwrap(),
            handle: (s % 2 == 0).then(|| format!("h{s}")),
            status,
            last_heartbeat_at: t,
            last_active_at: t / 2,
            state: state.map(|n| json!({ "n": n }).as_object().unwrap().clone()),
            state_updated_at: t,
            // Some members declare a readiness and capabilities, and a status
            // change may change them: events carry them like the handle.
            declared: crate::Declared {
                readiness: if (s as Millis + t) % 3 == 0 {
                    crate::Readiness::Busy
                } else {
                    crate::Readiness::Available
                },
                capabilities: crate::Capabilities::parse((s % 2 == 1).then_some("audio"), 4)
                    .unwrap(),
            },
        }
    }

    /// The event a store publishes for `m` at `seq` (`None`: it left).
    fn event(seq: u64, sid: &SessionId, uid: &UserId, m: Option<&Member>) -> PresenceEvent {
        let status = m.map_or(UserStatus::Offline, |m| match m.status {
            SessionStatus::Active => UserStatus::Active,
            SessionStatus::Idle => UserStatus::Idle,
            SessionStatus::Away => UserStatus::Away,
            SessionStatus::Stale => UserStatus::Stale,
        });
        PresenceEvent {
            v: 1,
            kind: if m.is_some() {
                EventKind::Update
            } else {
                EventKind::Leave
            },
            room_id: RoomId::new("r").unwrap(),
            seq,
            user_id: uid.clone(),
            session_id: sid.clone(),
            node_id: NodeId::new("n").unwrap(),
            epoch: 1,
            status,
            state: m.and_then(|m| m.state.clone()),
            ts: seq as Millis,
            member: m.map(|m| EventMember {
                handle: m.handle.clone(),
                last_heartbeat_at: m.last_heartbeat_at,
                last_active_at: m.last_active_at,
                state_updated_at: m.state_updated_at,
                declared: m.declared.clone(),
            }),
        }
    }

    fn status() -> impl Strategy<Value = SessionStatus> {
        prop_oneof![
            Just(SessionStatus::Active),
            Just(SessionStatus::Idle),
            Just(SessionStatus::Away),
            Just(SessionStatus::Stale),
        ]
    }

    /// One step: put session `s` (of user `s % 4`), remove it, read the
    /// room again, a client joins (takes the view as it is now), or flush.
    #[derive(Debug, Clone)]
    enum Step {
        Put(u8, SessionStatus, Millis, Option<u8>),
        Remove(u8),
        Reset,
        Join,
        Flush,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            5 => (0..12u8, status(), 1..1_000i64, proptest::option::of(0..3u8))
                .prop_map(|(s, st, t, state)| Step::Put(s, st, t, state)),
            2 => (0..12u8).prop_map(Step::Remove),
            1 => Just(Step::Reset),
            1 => Just(Step::Join),
            2 => Just(Step::Flush),
        ]
    }

    proptest! {
        /// Applying events keeps the view equal to one built from the
        /// members, and a client that applies every diff to the first
        /// snapshot holds that view at each flush (timestamps aside); so
        /// does a client that took the view between two flushes and applies
        /// the catch-up at the next, then every diff.
        #[test]
        fn events_and_diffs_keep_every_view_exact(steps in proptest::collection::vec(step(), 1..60)) {
            let room = RoomId::new("r").unwrap();
            let mut truth: BTreeMap<SessionId, Member> = BTreeMap::new();
            let mut seq = 0;
            let mut live = LiveRoom::new(room.clone(), 0, []);
            let mut client = live.view(0);
            // Clients that joined since the last flush, and those that caught up.
            let mut joined: Vec<RoomView> = Vec::new();
            let mut caught_up: Vec<RoomView> = Vec::new();
            for st in steps {
                match st {
                    Step::Put(s, status, t, state) => {
                        let m = member(s, s % 4, status, t, state);
                        seq += 1;
                        let ev = event(seq, &m.session_id, &m.user_id, Some(&m));
                        truth.insert(m.session_id.clone(), m);
                        prop_assert_eq!(live.apply(&ev), Applied::Applied);
                    }
                    Step::Remove(s) => {
                        let sid = SessionId::new(&format!("s{s}")).unwrap();
                        let Some(m) = truth.remove(&sid) else { continue };
                        seq += 1;
                        prop_assert_eq!(live.apply(&event(seq, &sid, &m.user_id, None)), Applied::Applied);
                    }
                    Step::Reset => live.reset(seq, truth.values().cloned()),
                    Step::Join => joined.push(live.view(0)),
                    Step::Flush => {
                        let catch_up = live.catch_up();
                        for sid in catch_up.diff.sessions.keys() {
                            let n: u8 = sid.as_str()[1..].parse().unwrap();
                            let owner = catch_up.owners.get(sid).map(|u| u.as_str().to_owned());
                            prop_assert_eq!(owner, Some(format!("u{}", n % 4)));
                        }
                        let flush = live.take_flush();
                        for c in &mut caught_up {
                            crate::diff::apply(c, flush.diff.clone()).unwrap();
                        }
                        for mut c in joined.drain(..) {
                            crate::diff::apply(&mut c, catch_up.diff.clone()).unwrap();
                            caught_up.push(c);
                        }
                        for sid in flush.diff.sessions.keys() {
                            let n: u8 = sid.as_str()[1..].parse().unwrap();
                            let owner = flush.owners.get(sid).map(|u| u.as_str().to_owned());
                            prop_assert_eq!(owner, Some(format!("u{}", n % 4)));
                        }
                        crate::diff::apply(&mut client, flush.diff).unwrap();
                        // Equal but for timestamps, which alone are no change.
                        let built = RoomView::build(room.clone(), seq, 0, truth.values().cloned());
                        let left = crate::diff::diff(&client, &built);
                        prop_assert!(left.is_empty(), "the client is off by {:?}", left);
                        prop_assert_eq!(client.seq, seq);
                        for c in &caught_up {
                            let left = crate::diff::diff(c, &built);
                            prop_assert!(left.is_empty(), "a late joiner is off by {:?}", left);
                            prop_assert_eq!(c.seq, seq);
                        }
                    }
                }
                let built = RoomView::build(room.clone(), seq, 0, truth.values().cloned());
                prop_assert_eq!(live.view(0), built.clone());
                prop_assert_eq!(live.counts(), RoomCounts::of(built.users.values(), built.sessions.values()));
                // Pages of 3 cover every member once, in order, with whole user entries.
                let (mut after, mut seen) = (None, Vec::new());
                loop {
                    let page = crate::page::PageBuilder::new(3, None).fill(live.members_after(after.clone()));
                    let mut keys: Vec<_> = page.sessions.values().map(|s| (s.user_id.clone(), s.session_id.clone())).collect();
                    keys.sort();
                    seen.extend(keys);
                    for (uid, u) in &page.users {
                        prop_assert_eq!(Some(u), built.users.get(uid));
                    }
                    match page.next_cursor {
                        Some(c) => after = Some(c),
                        None => break,
                    }
                }
                let mut all: Vec<_> = built.sessions.values().map(|s| (s.user_id.clone(), s.session_id.clone())).collect();
                all.sort();
                prop_assert_eq!(seen, all);
            }
        }
    }

    #[test]
    fn old_events_are_ignored_and_gaps_reported() {
        let m = member(1, 1, SessionStatus::Active, 5, None);
        let mut live = LiveRoom::new(RoomId::new("r").unwrap(), 4, [m.clone()]);
        let ev = |seq| event(seq, &m.session_id, &m.user_id, Some(&m));
        assert_eq!(live.apply(&ev(4)), Applied::Stale);
        assert_eq!(live.apply(&ev(6)), Applied::Gap);
        assert_eq!(live.apply(&ev(5)), Applied::Applied);
        let mut bare = ev(6);
        bare.member = None;
        assert_eq!(
            live.apply(&bare),
            Applied::Gap,
            "an event without the member"
        );
        assert_eq!(live.seq(), 5);
        // The room empties, is forgotten, and starts again at 1.
        let left = event(6, &m.session_id, &m.user_id, None);
        assert_eq!(live.apply(&left), Applied::Applied);
        assert_eq!(
            live.apply(&ev(1)),
            Applied::Gap,
            "an emptied room's versions restart"
        );
    }

    #[test]
    fn events_carry_the_member_on_the_wire() {
        let m = member(2, 1, SessionStatus::Idle, 40, Some(1));
        let ev = event(3, &m.session_id, &m.user_id, Some(&m));
        let j = serde_json::to_value(&ev).unwrap();
        assert_eq!(j["handle"], "h2");
        assert_eq!(j["lastHeartbeatAt"], 40);
        assert_eq!(j["lastActiveAt"], 20);
        assert_eq!(j["stateUpdatedAt"], 40);
        let back: PresenceEvent = serde_json::from_value(j).unwrap();
        assert_eq!(back.member(), Some(m));
        let left = event(
            4,
            &SessionId::new("s2").unwrap(),
            &UserId::new("u1").unwrap(),
            None,
        );
        let back: PresenceEvent =
            serde_json::from_value(serde_json::to_value(&left).unwrap()).unwrap();
        assert_eq!(back.member, None);
    }
}
