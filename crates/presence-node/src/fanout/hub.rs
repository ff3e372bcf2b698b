//! The per-room task: keeps the room's view, flushes diffs and counts to
//! the room's followers, answers joiners, pages and watch-list changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use presence_core::live::{Applied, Flush, LiveRoom};
use presence_core::page::PageBuilder;
use presence_core::{Millis, PageCursor, RoomCounts, RoomId, SessionId, UserId};
use serde_json::value::RawValue;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::socket::Sid;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::follow::{Followers, View};
use super::parts::{split, Part, ENVELOPE};
use super::{HubMsg, Inner, Reply};
use crate::acks::{
    CountsMsg, JoinAck, JoinSelf, Me, MembersAck, Opening, SnapshotPart, True, ViewMsg, WatchAck,
};
use crate::wire::{ErrorCode, Follow, ViewReq, WireError};

/// How long a joiner's snapshot waits for the event of its join before the
/// hub reads the room instead, in a room of at most [`CHEAP_READ`] sessions.
const JOIN_EVENT_WAIT: Duration = Duration::from_millis(50);

/// How long it waits in a bigger room. The event is on its way (the script
/// that made the join published it), and a lost one is caught anyway (a
/// dropped subscription resyncs, a lagging stream re-reads): reading a big
/// room for every joiner whose event is late would make each join cost the
/// room, and in a join storm, when events lag most, every join.
const JOIN_EVENT_WAIT_BIG: Duration = Duration::from_secs(2);

/// The largest room a late joiner may have read for it.
const CHEAP_READ: usize = 100;
/// How long a joiner's socket may stay "not connected yet" (see
/// `Pending::waits`) before it is taken for closed. That state lasts from
/// socketioxide sending `CONNECT` to its next statement, so only a thread
/// descheduled in between makes it visible at all.
const CONNECTING_WAIT: Duration = Duration::from_secs(1);

/// The gap between two counts messages of a room grows by this much per
/// session in it (beyond the debounce window): a room's node sends at most
/// 10,000 counts messages a second however big the room, so that a room of
/// 50,000 filling up does not send every member its counts four times a
/// second (200,000 messages a second).
const COUNTS_GAP_PER_SESSION: Duration = Duration::from_micros(100);

/// What waits for the next flush, in the order it came.
enum Pending {
    Join {
        socket: SocketRef,
        reply: Reply,
        /// The room version its snapshot must reach.
        seq: u64,
        since: Instant,
        follow: Follow,
    },
    Page(SocketRef, AckSender, Option<PageCursor>, usize),
    Watch(SocketRef, AckSender, BTreeSet<UserId>),
}

impl Pending {
    /// Whether it waits, the view being at `seq` (just read: `read`; right
    /// after a flush: `at_flush`) and `blocked` the sockets with something
    /// waiting before it. A joiner waits for its join; a resumed session's
    /// opening names no version (0) and goes at a flush, by which the
    /// resume's own change (its status back from stale) has reached the
    /// view; a page or watch list waits behind what its socket asked first.
    ///
    /// A joiner whose socket Socket.IO does not call connected yet waits
    /// too, for up to [`CONNECTING_WAIT`] (after that it is taken for
    /// closed, and dropped): socketioxide marks a socket connected only
    /// after sending the client its `CONNECT`, and under load the client's
    /// first events can be handled on another thread before that, while
    /// the socket refuses every `emit` (its snapshot's parts, its diffs).
    fn waits(&self, seq: u64, read: bool, at_flush: bool, blocked: &HashSet<Sid>) -> bool {
        match self {
            Pending::Join { socket, since, .. }
                if !socket.connected() && since.elapsed() < CONNECTING_WAIT =>
            {
                true
            }
            Pending::Join { seq: want, .. } => (!read && *want > seq) || (!at_flush && *want == 0),
            _ => blocked.contains(&self.sid()),
        }
    }

    fn sid(&self) -> Sid {
        match self {
            Pending::Join { socket, .. }
            | Pending::Page(socket, ..)
            | Pending::Watch(socket, ..) => socket.id,
        }
    }
}

/// A socket answered from the view between two flushes: it holds the view
/// as it was then, not as last flushed, so the next flush's diff is not
/// exact for it. It gets that flush's catch-up instead
/// ([`LiveRoom::catch_up`]), and the counts if they moved since its
/// answer; only then does it join the room's followers (and their
/// broadcasts).
struct Fresh {
    socket: SocketRef,
    view: View,
    /// The counts it was sent.
    counts: RoomCounts,
}

struct Hub {
    inner: Arc<Inner>,
    room: RoomId,
    /// The sockets that got the room's opening, and their views.
    followers: Followers,
    /// Answered since the last flush, joining the followers at the next.
    fresh: HashMap<Sid, Fresh>,
    pending: Vec<Pending>,
    /// The room's view; `None` until the first read.
    live: Option<LiveRoom>,
    /// The view has changes not yet sent.
    dirty: bool,
    /// The room must be read whole at the next flush.
    reread: bool,
    /// Until when, after a resync, the hub shows no one leaving. Redis may
    /// have come back empty: each session is re-created by its node as soon
    /// as its client heartbeats (within the heartbeat timeout), and observers
    /// must not see everyone leave and come back meanwhile. Whoever is still
    /// missing when it ends is removed then, in one diff.
    hold_until: Option<Instant>,
    /// A read during the hold kept someone the room no longer had: read
    /// again when the hold ends.
    holding: bool,
    /// The counts last sent to count and watch followers.
    sent_counts: Option<RoomCounts>,
    /// When the next counts message may go, and whether counts wait for it.
    counts_next: Instant,
    counts_due: bool,
}

pub(super) async fn run(inner: Arc<Inner>, room: RoomId, mut rx: mpsc::UnboundedReceiver<HubMsg>) {
    // Receive the room's events before reading its first view, so that no
    // change falls between the two.
    if let Err(e) = inner.store.follow_room(&room).await {
        tracing::warn!(room_id = %room, error = %e, "cannot follow room events");
        let err = WireError::from(e);
        loop {
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    HubMsg::Join(socket, reply, ..) => answer_error(socket, reply, &err),
                    HubMsg::Page(_, ack, ..) | HubMsg::Watch(_, ack, _) => {
                        let _ = ack.send(&err);
                    }
                    _ => {}
                }
            }
            if inner.retire(&room, &rx) {
                return;
            }
        }
    }
    let mut hub = Hub {
        inner: inner.clone(),
        followers: Followers::new(&room),
        fresh: HashMap::new(),
        room: room.clone(),
        pending: Vec::new(),
        live: None,
        dirty: false,
        reread: false,
        hold_until: None,
        holding: false,
        sent_counts: None,
        counts_next: Instant::now(),
        counts_due: false,
    };
    let mut next_flush = Instant::now();
    loop {
        let wake_at = if hub.dirty || hub.reread {
            Some(next_flush)
        } else if let Some(since) = hub.waiting_since() {
            // Joiners go at once when the view has their join, else when
            // their wait ends.
            Some(next_flush.max(since + hub.join_wait()))
        } else if !hub.pending.is_empty() {
            Some(next_flush)
        } else if hub.holding {
            hub.hold_until
        } else if hub.counts_due {
            Some(hub.counts_next)
        } else {
            None
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => {
                    hub.handle(msg).await;
                    // What came with it too, so that the joiners of one burst
                    // are answered together (they share their snapshot).
                    while let Ok(msg) = rx.try_recv() {
                        hub.handle(msg).await;
                    }
                    // A joiner whose join the view shows is answered now, not
                    // at the end of the window.
                    if hub.answerable() {
                        hub.serve(false, false).await;
                    }
                }
                None => return,
            },
            _ = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {
                hub.flush().await;
                next_flush = Instant::now() + inner.debounce;
            }
        }
        if hub.followers.is_empty()
            && hub.fresh.is_empty()
            && hub.pending.is_empty()
            && inner.retire(&room, &rx)
        {
            if let Err(e) = inner.store.unfollow_room(&room).await {
                tracing::debug!(room_id = %room, error = %e, "cannot unfollow room events");
            }
            return;
        }
    }
}

impl Hub {
    async fn handle(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Event(ev) => match self.live.as_mut().map(|l| l.apply(&ev)) {
                Some(Applied::Applied) => self.dirty = true,
                Some(Applied::Stale) => {}
                Some(Applied::Gap) => self.reread = true,
                // Not read yet: the first read will have it.
                None => {}
            },
            HubMsg::Reread => self.reread = true,
            HubMsg::Resync => {
                self.reread = true;
                self.hold_until = Some(Instant::now() + self.inner.hold);
            }
            HubMsg::Join(socket, reply, seq, follow) => self.pending.push(Pending::Join {
                socket,
                reply,
                seq,
                since: Instant::now(),
                follow,
            }),
            HubMsg::Page(socket, ack, after, limit) => {
                self.pending.push(Pending::Page(socket, ack, after, limit))
            }
            HubMsg::Watch(socket, ack, users) => {
                self.pending.push(Pending::Watch(socket, ack, users))
            }
            HubMsg::Leave(socket) => {
                if self.pending.iter().any(|p| p.sid() == socket.id) {
                    // Answer what it asked before it goes.
                    self.reread |= self.waiting_since().is_some();
                    self.flush().await;
                }
                self.followers.remove(&socket.id);
                self.fresh.remove(&socket.id);
                super::leave_channels(&self.room, &socket);
            }
        }
    }

    /// Whether the view can answer something waiting now: a joiner whose
    /// join it shows, or a page or watch list whose socket waits for nothing
    /// it asked before. (Not while the view must be read again.)
    fn answerable(&self) -> bool {
        let Some(live) = &self.live else {
            return false;
        };
        if self.reread {
            return false;
        }
        let seq = live.seq();
        let mut blocked = HashSet::new();
        for p in &self.pending {
            if p.waits(seq, false, false, &blocked) {
                blocked.insert(p.sid());
            } else {
                return true;
            }
        }
        false
    }

    /// Whether `sid` got the room's opening (a follower, or fresh).
    fn follows(&self, sid: &Sid) -> bool {
        self.followers.contains(sid) || self.fresh.contains_key(sid)
    }

    /// Starts `socket` on `view`: a follower at once when the view is as
    /// last flushed, else fresh until the next flush (a follower that starts
    /// a new view then, a watch list, too). A fresh socket that changes its
    /// view stays fresh.
    fn enter(&mut self, socket: SocketRef, view: View) {
        let Some(live) = &self.live else {
            return;
        };
        if let Some(f) = self.fresh.get_mut(&socket.id) {
            f.view = view;
            f.counts = live.counts();
        } else if live.changed_since_flush() {
            // Signals reach it from now on; diffs and counts from the flush.
            self.followers.detach(&socket.id);
            socket.join(self.followers.channels().all.clone());
            self.fresh.insert(
                socket.id,
                Fresh {
                    socket,
                    view,
                    counts: live.counts(),
                },
            );
        } else {
            self.followers.put(socket, view);
        }
    }

    /// How long a joiner waits for its join's event before the room is read.
    fn join_wait(&self) -> Duration {
        match &self.live {
            Some(live) if live.sessions() > CHEAP_READ => JOIN_EVENT_WAIT_BIG,
            _ => JOIN_EVENT_WAIT,
        }
    }

    /// When the earliest joiner whose join the view does not show yet came.
    fn waiting_since(&self) -> Option<Instant> {
        let seq = self.live.as_ref()?.seq();
        self.pending
            .iter()
            .filter_map(|p| match p {
                Pending::Join {
                    seq: want, since, ..
                } if *want > seq => Some(*since),
                _ => None,
            })
            .min()
    }

    /// Reads the room whole into the view (keeping, during a hold, whoever
    /// the read lacks). False when the store could not be read: the
    /// joiners waiting were told.
    async fn read(&mut self) -> bool {
        crate::metrics::room_read();
        let read = match self.inner.store.room_members(&self.room).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(room_id = %self.room, error = %e, "cannot read room");
                let err = WireError::from(e);
                for p in self.pending.drain(..) {
                    match p {
                        Pending::Join { socket, reply, .. } => answer_error(socket, reply, &err),
                        Pending::Page(_, ack, ..) | Pending::Watch(_, ack, _) => {
                            let _ = ack.send(&err);
                        }
                    }
                }
                return false;
            }
        };
        let mut members = read.members;
        match (&self.live, self.hold_until) {
            (Some(live), Some(until)) if Instant::now() < until => {
                let have: HashSet<_> = members.iter().map(|m| m.session_id.clone()).collect();
                let mut kept: Vec<_> = live
                    .members()
                    .filter(|m| !have.contains(&m.session_id))
                    .cloned()
                    .collect();
                // Whom the room saw go (an explicit leave, a removal while
                // the subscription was down) is not held: Redis kept its
                // data, and observers see the leave now.
                if !kept.is_empty() {
                    let ids: Vec<_> = kept.iter().map(|m| m.session_id.clone()).collect();
                    match self.inner.store.left_room(&self.room, &ids).await {
                        Ok(left) => {
                            let mut left = left.into_iter();
                            kept.retain(|_| !left.next().unwrap_or(false));
                        }
                        Err(e) => {
                            tracing::debug!(room_id = %self.room, error = %e, "cannot read who left; holding them")
                        }
                    }
                }
                self.holding = !kept.is_empty();
                members.extend(kept);
            }
            _ => {
                self.hold_until = None;
                self.holding = false;
            }
        }
        match &mut self.live {
            Some(live) => live.reset(read.seq, members),
            None => self.live = Some(LiveRoom::new(self.room.clone(), read.seq, members)),
        }
        self.reread = false;
        true
    }

    async fn flush(&mut self) {
        // A socket that closed without a leave reaching the hub is not kept:
        // the hub (and the node's subscription to the room) must not outlive
        // its last live socket.
        self.followers.retain_connected();
        let hold_over = self.holding && self.hold_until.is_none_or(|u| Instant::now() >= u);
        let late = self
            .waiting_since()
            .is_some_and(|since| since.elapsed() >= self.join_wait());
        let read = self.live.is_none() || self.reread || hold_over || late;
        if read && !self.read().await {
            return;
        }
        let catch_up = match (&self.live, self.fresh.is_empty()) {
            (Some(live), false) => Some(live.catch_up()),
            _ => None,
        };
        let Some(flush) = self.live.as_mut().map(LiveRoom::take_flush) else {
            return;
        };
        let Some(out) = Out::of(&self.inner, &self.room, self.live.as_ref()) else {
            return;
        };
        let live = out.live;
        // A room that grew past the full view's limit: its full-view
        // followers follow counts from now on, before a diff could flood them.
        if live.sessions() > self.inner.limits.full_view_max_members && self.followers.full() > 0 {
            out.to_count(&mut self.followers).await;
        }
        if !flush.diff.is_empty() {
            crate::metrics::diff_sent();
            out.diff(&self.followers, &flush).await;
        }
        if let Some(catch_up) = catch_up {
            // A watcher's part of the catch-up is found by its users, not
            // by going through everything touched once per watcher.
            let mut by_owner: HashMap<&UserId, Vec<&SessionId>> = HashMap::new();
            for (sid, uid) in &catch_up.owners {
                by_owner.entry(uid).or_default().push(sid);
            }
            let mut full = None;
            for f in std::mem::take(&mut self.fresh).into_values() {
                if !f.socket.connected() {
                    continue;
                }
                out.catch_up(&f, &catch_up, &by_owner, &mut full);
                self.followers.put(f.socket, f.view);
            }
            if live.sessions() > self.inner.limits.full_view_max_members
                && self.followers.full() > 0
            {
                out.to_count(&mut self.followers).await;
            }
        }
        self.dirty = false;
        let counts = live.counts();
        self.counts_due = self.followers.counting() > 0 && self.sent_counts != Some(counts);
        if self.counts_due && Instant::now() >= self.counts_next {
            out.counts(&self.followers).await;
            self.sent_counts = Some(counts);
            self.counts_due = false;
            let gap = COUNTS_GAP_PER_SESSION * live.sessions() as u32;
            self.counts_next = Instant::now() + self.inner.debounce.max(gap);
        }
        self.serve(read, true).await;
    }

    /// Answers what waits: joiners whose join the view shows (the others
    /// wait for its event; a read came after every join queued, and a room
    /// that emptied may start its versions again, so it serves them all),
    /// then pages and watch lists, each after what its socket asked before.
    /// Between flushes (`at_flush` false) a resumed session's opening waits
    /// for the next flush (see [`Pending::waits`]).
    async fn serve(&mut self, read: bool, at_flush: bool) {
        let Some(seq) = self.live.as_ref().map(LiveRoom::seq) else {
            return;
        };
        let mut blocked: HashSet<Sid> = HashSet::new();
        let mut ready = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            if p.waits(seq, read, at_flush, &blocked) {
                blocked.insert(p.sid());
                self.pending.push(p);
            } else {
                ready.push(p);
            }
        }
        if ready.is_empty() {
            return;
        }
        let Some(out) = Out::of(&self.inner, &self.room, self.live.as_ref()) else {
            return;
        };
        let mut shared = Shared::default();
        // Who got an opening or a new view (`out` borrows the view).
        let mut entered: HashMap<Sid, (SocketRef, View)> = HashMap::new();
        for p in ready {
            match p {
                Pending::Join {
                    socket,
                    reply,
                    follow,
                    ..
                } => {
                    if !socket.connected() {
                        continue;
                    }
                    // Signals reach the joiner from before its ack: a member
                    // that signals once it sees the ack may run on another
                    // thread before this task gets to `enter`.
                    let all = &self.followers.channels().all;
                    let was_in = self.follows(&socket.id);
                    socket.join(all.clone());
                    if let Some(view) = out.open(&socket, reply, follow, &mut shared) {
                        crate::metrics::snapshot_sent();
                        entered.insert(socket.id, (socket, view));
                    } else if !was_in {
                        socket.leave(all.clone());
                    }
                }
                Pending::Page(socket, ack, after, limit) => {
                    if !self.follows(&socket.id) && !entered.contains_key(&socket.id) {
                        let _ = ack.send(&not_joined(&self.room));
                        continue;
                    }
                    out.page(ack, after, limit);
                }
                Pending::Watch(socket, ack, users) => {
                    if !self.follows(&socket.id) && !entered.contains_key(&socket.id) {
                        let _ = ack.send(&not_joined(&self.room));
                        continue;
                    }
                    out.watch(&socket, ack, &users);
                    entered.insert(socket.id, (socket, View::Watch(users)));
                }
            }
        }
        for (socket, view) in entered.into_values() {
            self.enter(socket, view);
        }
    }
}

/// What the joiners of one flush share, made once for all of them.
#[derive(Default)]
struct Shared {
    /// First pages, by size.
    pages: HashMap<usize, Box<RawValue>>,
    full: Option<Vec<Part>>,
}

/// The messages of one flush, from the view as it is now.
struct Out<'a> {
    io: &'a socketioxide::SocketIo,
    room: &'a RoomId,
    live: &'a LiveRoom,
    limits: &'a presence_core::Limits,
    now: Millis,
}

impl<'a> Out<'a> {
    /// What a flush sends, from the view as it is now.
    fn of(inner: &'a Inner, room: &'a RoomId, live: Option<&'a LiveRoom>) -> Option<Self> {
        Some(Out {
            io: &inner.io,
            room,
            live: live?,
            limits: &inner.limits,
            now: inner.clock.now_ms(),
        })
    }

    /// Room left in one message for entries.
    fn budget(&self) -> usize {
        self.limits.max_message_bytes.saturating_sub(ENVELOPE)
    }

    /// Room kept in a join ack for the joiner's own entries.
    fn me_reserve(&self) -> usize {
        2 * self.limits.max_state_bytes + 4_096
    }

    /// Sends the opening of `socket` in `asked` (ack or `presence:snapshot`
    /// parts); the view it follows, or `None` if it could not be sent.
    fn open(
        &self,
        socket: &SocketRef,
        reply: Reply,
        asked: Follow,
        shared: &mut Shared,
    ) -> Option<View> {
        let too_big = self.live.sessions() > self.limits.full_view_max_members;
        let (view, reason) = match asked.view {
            ViewReq::Default if too_big => (View::Count, None),
            ViewReq::Default => (View::Full, None),
            ViewReq::Full if too_big => (View::Count, Some("room_too_large")),
            ViewReq::Full => (View::Full, None),
            ViewReq::Count => (View::Count, None),
            ViewReq::Watch(users) => (View::Watch(users), None),
        };
        // The first page: half of what the ack may hold, the same for all.
        let page_budget = self.budget().saturating_sub(self.me_reserve()) / 2;
        let page = shared.pages.entry(asked.page).or_insert_with(|| {
            let p =
                PageBuilder::new(asked.page, Some(page_budget)).fill(self.live.members_after(None));
            raw(&p)
        });
        let page = &**page;
        let first = self
            .budget()
            .saturating_sub(self.me_reserve() + page.get().len());
        let own;
        let parts: Option<&[Part]> = match &view {
            View::Full => Some(
                shared
                    .full
                    .get_or_insert_with(|| {
                        let e = self.live.entries();
                        split(&e.users, &e.sessions, first, self.budget())
                    })
                    .as_slice(),
            ),
            View::Watch(users) => {
                own = self.watched(users, first);
                Some(own.as_slice())
            }
            View::Count => None,
        };
        let session = match &reply {
            Reply::JoinAck(_, me) | Reply::Snapshot(me) => self.live.session(&me.session_id),
        };
        let opening = || Opening {
            view: view.name(),
            view_reason: reason,
            seq: self.live.seq(),
            generated_at: self.now,
            counts: self.live.counts(),
            me: Me {
                user: session.and_then(|s| self.live.user(&s.user_id)),
                session,
            },
            page,
        };
        let n = parts.map_or(0, <[Part]>::len);
        let part = |i: usize, p| self.snapshot_part(p, i, n);
        let empty = Part::empty();
        let sent = match reply {
            Reply::JoinAck(ack, me) => ack.send(&JoinAck {
                ok: True,
                room_id: self.room,
                me: JoinSelf::from(&me),
                opening: opening(),
                snapshot: parts.and_then(|p| p.first()).map(|p| part(0, p)),
            }),
            Reply::Snapshot(_) => {
                let first = parts.and_then(|p| p.first()).unwrap_or(&empty);
                socket.emit(
                    "presence:snapshot",
                    &SnapshotPart {
                        opening: Some(opening()),
                        ..part(0, first)
                    },
                )
            }
        };
        if sent.is_err() {
            return None;
        }
        self.rest(socket, parts.unwrap_or_default());
        Some(view)
    }

    /// Part `i` (from 0) of `n` of a snapshot.
    fn snapshot_part<'p>(&self, p: &'p Part, i: usize, n: usize) -> SnapshotPart<'p>
    where
        'a: 'p,
    {
        SnapshotPart {
            room_id: self.room,
            seq: self.live.seq(),
            generated_at: Some(self.now),
            users: &p.users,
            sessions: &p.sessions,
            part: (n > 1).then_some(i + 1),
            parts: (n > 1).then_some(n),
            opening: None,
        }
    }

    /// The parts of a snapshot after the first (which went in an ack), as
    /// `presence:snapshot`.
    fn rest(&self, socket: &SocketRef, parts: &[Part]) {
        for (i, p) in parts.iter().enumerate().skip(1) {
            let _ = socket.emit("presence:snapshot", &self.snapshot_part(p, i, parts.len()));
        }
    }

    /// The entries of `users` that are in the room, in parts.
    fn watched(&self, users: &BTreeSet<UserId>, first: usize) -> Vec<Part> {
        let entries: Vec<_> = users
            .iter()
            .filter_map(|u| Some((u, self.live.user(u)?)))
            .collect();
        let sessions = users
            .iter()
            .flat_map(|u| self.live.sessions_of(u))
            .map(|s| (&s.session_id, s));
        split(entries, sessions, first, self.budget())
    }

    /// `presence:members`: one page, within one message.
    fn page(&self, ack: AckSender, after: Option<PageCursor>, limit: usize) {
        let page =
            PageBuilder::new(limit, Some(self.budget())).fill(self.live.members_after(after));
        let _ = ack.send(&MembersAck {
            ok: True,
            room_id: self.room,
            seq: self.live.seq(),
            generated_at: self.now,
            page: &page,
        });
    }

    /// `presence:watch`: the watched users' entries, as a snapshot.
    fn watch(&self, socket: &SocketRef, ack: AckSender, users: &BTreeSet<UserId>) {
        let parts = self.watched(users, self.budget().saturating_sub(512));
        let n = parts.len();
        let part = |i: usize, p| self.snapshot_part(p, i, n);
        let sent = ack.send(&WatchAck {
            ok: True,
            room_id: self.room,
            view: "watch",
            watching: users.len(),
            seq: self.live.seq(),
            counts: self.live.counts(),
            snapshot: part(0, &parts[0]),
        });
        if sent.is_ok() {
            self.rest(socket, &parts);
        }
    }

    /// Moves every full-view follower to counts, telling them why.
    async fn to_count(&self, followers: &mut Followers) {
        let msg = ViewMsg {
            room_id: self.room,
            view: "count",
            reason: "room_too_large",
            seq: self.live.seq(),
            counts: self.live.counts(),
        };
        self.broadcast(&followers.channels().full, "presence:view", &msg)
            .await;
        for socket in followers.full_sockets() {
            followers.put(socket, View::Count);
        }
    }

    /// The diff to full-view followers (in parts if need be), and to each
    /// watcher the part of it about the users it watches.
    async fn diff(&self, followers: &Followers, flush: &Flush) {
        let d = &flush.diff;
        if followers.full() > 0 {
            let parts = split(&d.users, &d.sessions, self.budget(), self.budget());
            let n = parts.len();
            for (i, p) in parts.iter().enumerate() {
                let msg = diff_part(self.room, d.seq, p, i, n);
                self.broadcast(&followers.channels().full, "presence:diff", &msg)
                    .await;
            }
        }
        if !followers.watching() {
            return;
        }
        // Per watcher, the changed entries of the users it watches: the
        // work is bounded by what changed and who watches it.
        type Picked<'d> = (
            BTreeMap<&'d UserId, &'d Option<presence_core::UserPatch>>,
            BTreeMap<&'d presence_core::SessionId, &'d Option<presence_core::SessionPatch>>,
        );
        let mut per: HashMap<Sid, Picked<'_>> = HashMap::new();
        for (uid, patch) in &d.users {
            for sid in followers.watchers_of(uid) {
                per.entry(*sid).or_default().0.insert(uid, patch);
            }
        }
        for (sid_key, patch) in &d.sessions {
            let Some(uid) = flush.owners.get(sid_key) else {
                continue;
            };
            for sid in followers.watchers_of(uid) {
                per.entry(*sid).or_default().1.insert(sid_key, patch);
            }
        }
        for (sid, (users, sessions)) in per {
            let Some(socket) = followers.socket(&sid) else {
                continue;
            };
            let parts = split(users, sessions, self.budget(), self.budget());
            let n = parts.len();
            for (i, p) in parts.iter().enumerate() {
                let _ = socket.emit("presence:diff", &diff_part(self.room, d.seq, p, i, n));
            }
        }
    }

    /// What a fresh socket needs at the flush that makes it a follower:
    /// the catch-up (the whole of its view's entries changed since the last
    /// flush), and the counts if they are not those it was sent.
    ///
    /// A full view's catch-up is the same for every fresh socket of the
    /// flush: it is split and serialized once, into `full`, and each gets
    /// those messages.
    fn catch_up(
        &self,
        f: &Fresh,
        catch_up: &Flush,
        by_owner: &HashMap<&UserId, Vec<&SessionId>>,
        full: &mut Option<Vec<Box<RawValue>>>,
    ) {
        let d = &catch_up.diff;
        let own;
        let msgs: &[Box<RawValue>] = match &f.view {
            View::Full if d.users.is_empty() && d.sessions.is_empty() => &[],
            View::Full => full.get_or_insert_with(|| self.diff_msgs(d.seq, &d.users, &d.sessions)),
            View::Watch(watched) => {
                let users: BTreeMap<_, _> = watched
                    .iter()
                    .filter_map(|u| d.users.get_key_value(u))
                    .collect();
                let sessions: BTreeMap<_, _> = watched
                    .iter()
                    .flat_map(|u| by_owner.get(u).into_iter().flatten())
                    .filter_map(|sid| d.sessions.get_key_value(*sid))
                    .collect();
                if users.is_empty() && sessions.is_empty() {
                    &[]
                } else {
                    own = self.diff_msgs(d.seq, users, sessions);
                    &own
                }
            }
            View::Count => &[],
        };
        for m in msgs {
            let _ = f.socket.emit("presence:diff", m);
        }
        if f.view != View::Full && f.counts != self.live.counts() {
            let _ = f.socket.emit(
                "presence:counts",
                &CountsMsg {
                    room_id: self.room,
                    seq: self.live.seq(),
                    counts: self.live.counts(),
                },
            );
        }
    }

    /// A diff of `users` and `sessions` at `seq` as the `presence:diff`
    /// messages that carry it (parts under the message limit), serialized.
    fn diff_msgs<K1, V1, K2, V2>(
        &self,
        seq: u64,
        users: impl IntoIterator<Item = (K1, V1)>,
        sessions: impl IntoIterator<Item = (K2, V2)>,
    ) -> Vec<Box<RawValue>>
    where
        K1: std::fmt::Display,
        V1: serde::Serialize,
        K2: std::fmt::Display,
        V2: serde::Serialize,
    {
        let parts = split(users, sessions, self.budget(), self.budget());
        let n = parts.len();
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| raw(&diff_part(self.room, seq, p, i, n)))
            .collect()
    }

    /// The counts to count and watch followers.
    async fn counts(&self, followers: &Followers) {
        let msg = CountsMsg {
            room_id: self.room,
            seq: self.live.seq(),
            counts: self.live.counts(),
        };
        self.broadcast(&followers.channels().counts, "presence:counts", &msg)
            .await;
    }

    async fn broadcast(&self, channel: &str, event: &'static str, msg: &impl serde::Serialize) {
        if let Err(e) = self.io.to(channel.to_owned()).emit(event, msg).await {
            tracing::debug!(room_id = %self.room, error = %e, event, "broadcast failed");
        }
    }
}

fn diff_part<'a>(room: &'a RoomId, seq: u64, p: &'a Part, i: usize, n: usize) -> SnapshotPart<'a> {
    SnapshotPart {
        room_id: room,
        seq,
        generated_at: None,
        users: &p.users,
        sessions: &p.sessions,
        part: (n > 1).then_some(i + 1),
        parts: (n > 1).then_some(n),
        opening: None,
    }
}

fn raw(v: &impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(v)
        .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("valid JSON"))
}

/// The answer to a page or watch request of a socket not in the room.
pub(super) fn not_joined(room: &RoomId) -> WireError {
    WireError::new(
        ErrorCode::NotJoined,
        format!("this connection has not joined room {room}"),
    )
}

/// Tells a joiner that its snapshot could not be read.
fn answer_error(socket: SocketRef, reply: Reply, err: &WireError) {
    match reply {
        Reply::JoinAck(ack, _) => {
            let _ = ack.send(err);
        }
        Reply::Snapshot(_) => {
            let _ = socket.emit("presence:error", err);
        }
    }
}
