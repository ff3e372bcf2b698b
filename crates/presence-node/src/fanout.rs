//! Fan-out: turning store events into per-room diffs for this node's sockets.
//!
//! Each room with local sockets has a *hub*, a small task that keeps the
//! room's view ([`LiveRoom`]). A hub follows its room's events (on Redis:
//! subscribes to the room's channel) for as long as it lives, so a node
//! receives the events of exactly the rooms it has sockets in, and emits to
//! its own sockets only: each client gets each change once, however many
//! nodes run. Each event carries the room's version and the member it
//! changed, and the hub applies it to its view: the cost of a change is that
//! of the change, not of the room. The hub reads the room whole only when it
//! starts, when a version is missing (an event lost or lagged), and after the
//! store resubscribed; so a lost event delays a diff, it never corrupts one.
//! Diffs are throttled per room: at most one every `emitDebounceMs`; a change
//! after a quiet spell goes out at once, later ones in the window are
//! coalesced into one diff, computed from the entries that changed.
//!
//! Joiners are served by the hub too: their snapshot is the very view the
//! next diff is computed from, and they enter the Socket.IO room only after
//! their snapshot was queued, so every diff a client gets applies to what it
//! already has. A joiner's snapshot waits (briefly) for the event of its own
//! join, so that it shows the joiner; if that event is late, the room is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::live::{Applied, LiveRoom};
use presence_core::{Clock, NodeId, PresenceEvent, RoomId};
use presence_store::{PresenceStore, SessionRef, Signal};
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::socket::Sid;
use socketioxide::SocketIo;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::acks::{JoinAck, SignalMsg, True};
use crate::wire::WireError;

/// How a joiner gets its snapshot.
pub enum Reply {
    /// As the ack of its `presence:join`.
    JoinAck(AckSender, SessionRef),
    /// As a `presence:snapshot` event (a resumed session's rooms).
    Snapshot,
}

/// How long a joiner's snapshot waits for the event of its join before the
/// hub reads the room instead.
const JOIN_EVENT_WAIT: Duration = Duration::from_millis(50);

enum HubMsg {
    /// The room's next event.
    Event(PresenceEvent),
    /// Events may have been lost (the stream lagged): read the room.
    Reread,
    /// The store's subscription was re-established: events may be lost, and
    /// the store may have lost its data (Redis restarted empty).
    Resync,
    /// A socket to add, with the room version its snapshot must reach.
    Join(SocketRef, Reply, u64),
    Leave(SocketRef),
}

/// The per-room hubs of one node.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

struct Inner {
    io: SocketIo,
    node_id: NodeId,
    store: Arc<dyn PresenceStore>,
    /// The clock of snapshots' `generatedAt`.
    clock: Arc<dyn Clock>,
    debounce: Duration,
    /// How long after a resync a hub shows no one leaving (see [`Hub::hold_until`]).
    hold: Duration,
    hubs: Mutex<HashMap<RoomId, mpsc::UnboundedSender<HubMsg>>>,
}

impl Fanout {
    /// Hubs that emit through `io` and read rooms from `store`, on node
    /// `node_id`; after a resync they show no one leaving for `hold`.
    pub fn new(
        io: SocketIo,
        node_id: NodeId,
        store: Arc<dyn PresenceStore>,
        clock: Arc<dyn Clock>,
        debounce: Duration,
        hold: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                io,
                node_id,
                store,
                clock,
                debounce,
                hold,
                hubs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Follows the store's events and wakes the hubs of the rooms they touch.
    /// When events may have been lost (a lagging receiver, a store that
    /// resubscribed after Redis came back) every hub wakes and re-reads its room.
    pub fn spawn_dispatcher(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let mut rx = self.inner.store.events();
        let mut resyncs = self.inner.store.resyncs();
        let mut signals = self.inner.store.signals();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // Another node's signal to a room this node has sockets
                    // in (this node's own went out when it was sent).
                    Ok(s) = signals.recv() => {
                        if s.node_id != this.inner.node_id {
                            this.relay_signal(s).await;
                        }
                    }
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            crate::metrics::event(ev.kind.as_str());
                            let room = ev.room_id.clone();
                            this.send_existing(&room, HubMsg::Event(ev))
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "event stream lagged; re-reading every room");
                            this.wake_all();
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // A store that never resyncs may drop its sender: stop watching then.
                    Ok(()) = resyncs.changed() => {
                        tracing::info!("events may have been lost; re-reading every room");
                        this.wake_all_with(|| HubMsg::Resync);
                    }
                }
            }
        })
    }

    async fn relay_signal(&self, s: Signal) {
        if let Err(e) = self
            .inner
            .io
            .to(s.room_id.as_str().to_owned())
            .emit("presence:signal", &SignalMsg::from(&s))
            .await
        {
            tracing::debug!(error = %e, "signal relay failed");
        }
    }

    fn wake_all(&self) {
        self.wake_all_with(|| HubMsg::Reread);
    }

    fn wake_all_with(&self, msg: impl Fn() -> HubMsg) {
        for tx in self.inner.lock().values() {
            let _ = tx.send(msg());
        }
    }

    /// Adds `socket` to `room` after sending it a snapshot (see [`Reply`])
    /// of the room at version `seq` or later (the version its join made).
    pub fn join(&self, room: &RoomId, socket: SocketRef, reply: Reply, seq: u64) {
        let mut hubs = self.inner.lock();
        let msg = HubMsg::Join(socket, reply, seq);
        let msg = match hubs.get(room) {
            Some(tx) => match tx.send(msg) {
                Ok(()) => return,
                Err(mpsc::error::SendError(msg)) => msg,
            },
            None => msg,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(msg);
        hubs.insert(room.clone(), tx);
        tokio::spawn(run_hub(self.inner.clone(), room.clone(), rx));
    }

    /// Takes a socket out of a room: out of its hub, and out of the
    /// Socket.IO room (no more diffs or signals of it). The hub does both, after
    /// answering a join of the socket still queued there: the join's snapshot
    /// is what adds a socket to the Socket.IO room, so a leave handled
    /// anywhere else could be undone by a join answered after it.
    pub fn leave(&self, room: &RoomId, socket: SocketRef) {
        let hubs = self.inner.lock();
        match hubs.get(room) {
            Some(tx) => {
                if let Err(mpsc::error::SendError(HubMsg::Leave(socket))) =
                    tx.send(HubMsg::Leave(socket))
                {
                    socket.leave(room.as_str().to_owned());
                }
            }
            None => socket.leave(room.as_str().to_owned()),
        }
    }

    /// How many rooms have local sockets.
    pub fn rooms(&self) -> usize {
        self.inner.lock().len()
    }

    fn send_existing(&self, room: &RoomId, msg: HubMsg) {
        if let Some(tx) = self.inner.lock().get(room) {
            let _ = tx.send(msg);
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, mpsc::UnboundedSender<HubMsg>>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the hub of `room` if nothing is queued for it. Senders only
    /// send while holding the lock, so nothing can arrive after this check.
    fn retire(&self, room: &RoomId, rx: &mpsc::UnboundedReceiver<HubMsg>) -> bool {
        let mut hubs = self.lock();
        if !rx.is_empty() {
            return false;
        }
        hubs.remove(room);
        true
    }
}

struct Hub {
    inner: Arc<Inner>,
    room: RoomId,
    /// The sockets that got the room's snapshot and are in its Socket.IO room.
    members: HashMap<Sid, SocketRef>,
    /// Joiners waiting for a snapshot at the version named with them, since when.
    pending: Vec<(SocketRef, Reply, u64, Instant)>,
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
}

async fn run_hub(inner: Arc<Inner>, room: RoomId, mut rx: mpsc::UnboundedReceiver<HubMsg>) {
    // Receive the room's events before reading its first view, so that no
    // change falls between the two.
    if let Err(e) = inner.store.follow_room(&room).await {
        tracing::warn!(room_id = %room, error = %e, "cannot follow room events");
        let err = WireError::from(e);
        loop {
            while let Ok(msg) = rx.try_recv() {
                if let HubMsg::Join(socket, reply, _) = msg {
                    answer_error(socket, reply, &err);
                }
            }
            if inner.retire(&room, &rx) {
                return;
            }
        }
    }
    let mut hub = Hub {
        inner: inner.clone(),
        room: room.clone(),
        members: HashMap::new(),
        pending: Vec::new(),
        live: None,
        dirty: false,
        reread: false,
        hold_until: None,
        holding: false,
    };
    let mut next_flush = Instant::now();
    loop {
        let wake_at = if hub.dirty || hub.reread {
            Some(next_flush)
        } else if let Some(since) = hub.waiting_since() {
            // Joiners go at once when the view has their join, else when
            // their wait ends.
            Some(next_flush.max(since + JOIN_EVENT_WAIT))
        } else if !hub.pending.is_empty() {
            Some(next_flush)
        } else if hub.holding {
            hub.hold_until
        } else {
            None
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => hub.handle(msg).await,
                None => return,
            },
            _ = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {
                hub.flush().await;
                next_flush = Instant::now() + inner.debounce;
            }
        }
        if hub.members.is_empty() && hub.pending.is_empty() && inner.retire(&room, &rx) {
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
            HubMsg::Join(socket, reply, seq) => {
                self.pending.push((socket, reply, seq, Instant::now()))
            }
            HubMsg::Leave(socket) => {
                if self.pending.iter().any(|(s, ..)| s.id == socket.id) {
                    // Answer its join before it goes.
                    self.reread |= self.waiting_since().is_some();
                    self.flush().await;
                }
                self.members.remove(&socket.id);
                socket.leave(self.room.as_str().to_owned());
            }
        }
    }

    /// When the earliest joiner whose join the view does not show yet came.
    fn waiting_since(&self) -> Option<Instant> {
        let seq = self.live.as_ref()?.seq();
        self.pending
            .iter()
            .filter(|(.., want, _)| *want > seq)
            .map(|(.., since)| *since)
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
                for (socket, reply, ..) in self.pending.drain(..) {
                    answer_error(socket, reply, &err);
                }
                return false;
            }
        };
        let mut members = read.members;
        match (&self.live, self.hold_until) {
            (Some(live), Some(until)) if Instant::now() < until => {
                let have: std::collections::HashSet<_> =
                    members.iter().map(|m| m.session_id.clone()).collect();
                let kept: Vec<_> = live
                    .members()
                    .filter(|m| !have.contains(&m.session_id))
                    .cloned()
                    .collect();
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
        self.members.retain(|_, s| s.connected());
        let hold_over = self.holding && self.hold_until.is_none_or(|u| Instant::now() >= u);
        let late = self
            .waiting_since()
            .is_some_and(|since| since.elapsed() >= JOIN_EVENT_WAIT);
        let read = self.live.is_none() || self.reread || hold_over || late;
        if read && !self.read().await {
            return;
        }
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let d = live.take_diff();
        if !d.is_empty() {
            crate::metrics::diff_sent();
            if let Err(e) = self
                .inner
                .io
                .to(self.room.as_str().to_owned())
                .emit("presence:diff", &d)
                .await
            {
                tracing::debug!(room_id = %self.room, error = %e, "diff broadcast failed");
            }
        }
        self.dirty = false;
        // Joiners whose join the view shows; the others wait for its event.
        // A read came after every join queued (and a room that emptied may
        // start its versions again): it serves them all.
        let seq = live.seq();
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .pending
            .drain(..)
            .partition(|(.., want, _)| read || *want <= seq);
        self.pending = waiting;
        if ready.is_empty() {
            return;
        }
        // Serialized once for every joiner of this flush (in a big room the
        // snapshot is most of the work).
        let view = live.view(self.inner.clock.now_ms());
        let Ok(snapshot) = serde_json::value::to_raw_value(&view) else {
            return;
        };
        for (socket, reply, ..) in ready {
            if !socket.connected() {
                continue;
            }
            let sent = match reply {
                Reply::JoinAck(ack, me) => ack.send(&JoinAck {
                    ok: True,
                    room_id: &self.room,
                    me: (&me).into(),
                    snapshot: &snapshot,
                }),
                Reply::Snapshot => socket.emit("presence:snapshot", &snapshot),
            };
            if sent.is_ok() {
                crate::metrics::snapshot_sent();
                socket.join(self.room.as_str().to_owned());
                self.members.insert(socket.id, socket);
            }
        }
    }
}

/// Tells a joiner that its snapshot could not be read.
fn answer_error(socket: SocketRef, reply: Reply, err: &WireError) {
    match reply {
        Reply::JoinAck(ack, _) => {
            let _ = ack.send(err);
        }
        Reply::Snapshot => {
            let _ = socket.emit("presence:error", err);
        }
    }
}
