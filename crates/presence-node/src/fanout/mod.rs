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
//!
//! What each socket follows is its *view* ([`follow`]): the whole room
//! (while the room is small enough), its counts, or its counts and a watch
//! list. Pages of members (`presence:members`) and watch-list changes are
//! answered by the hub too, between diffs, so that they agree with the diffs
//! around them. No message exceeds the configured size ([`parts`]).
//!
//! - `follow`: views and the followers of a room.
//! - `hub`: the per-room task.
//! - `parts`: splitting what is sent into bounded messages.

mod follow;
mod hub;
mod parts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeSet;

use presence_core::{Clock, Limits, NodeId, PageCursor, PresenceEvent, RoomId, UserId};
use presence_store::{PresenceStore, SessionRef, Signal};
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::SocketIo;
use tokio::sync::{broadcast, mpsc};

use crate::acks::SignalMsg;
use crate::wire::Follow;

pub use follow::View;

/// How a joiner gets its snapshot.
pub enum Reply {
    /// As the ack of its `presence:join`.
    JoinAck(AckSender, SessionRef),
    /// As `presence:snapshot` events (a resumed session's rooms).
    Snapshot(SessionRef),
}

enum HubMsg {
    /// The room's next event.
    Event(PresenceEvent),
    /// Events may have been lost (the stream lagged): read the room.
    Reread,
    /// The store's subscription was re-established: events may be lost, and
    /// the store may have lost its data (Redis restarted empty).
    Resync,
    /// A socket to add, with the room version its snapshot must reach and
    /// the view it asked for.
    Join(SocketRef, Reply, u64, Follow),
    Leave(SocketRef),
    /// `presence:members`: a page after the cursor, of at most so many.
    Page(SocketRef, AckSender, Option<PageCursor>, usize),
    /// `presence:watch`: the socket's watch list from now on.
    Watch(SocketRef, AckSender, BTreeSet<UserId>),
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
    /// How long after a resync a hub shows no one leaving (see `Hub::hold_until`).
    hold: Duration,
    /// Message sizes, the full view's size limit.
    limits: Limits,
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
        (debounce, hold): (Duration, Duration),
        limits: Limits,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                io,
                node_id,
                store,
                clock,
                debounce,
                hold,
                limits,
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
                            crate::metrics::resync("lagged");
                            tracing::warn!(missed = n, "event stream lagged; re-reading every room");
                            this.wake_all();
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // A store that never resyncs may drop its sender: stop watching then.
                    Ok(()) = resyncs.changed() => {
                        crate::metrics::resync("resubscribed");
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
    /// of the room at version `seq` or later (the version its join made),
    /// in the view it asked for.
    pub fn join(&self, room: &RoomId, socket: SocketRef, reply: Reply, seq: u64, follow: Follow) {
        let mut hubs = self.inner.lock();
        let msg = HubMsg::Join(socket, reply, seq, follow);
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
        tokio::spawn(hub::run(self.inner.clone(), room.clone(), rx));
    }

    /// Answers `presence:members` for a socket in `room` (`not_joined` when
    /// it is not in it on this node).
    pub fn page(
        &self,
        room: &RoomId,
        socket: SocketRef,
        ack: AckSender,
        after: Option<PageCursor>,
        limit: usize,
    ) {
        self.to_member(room, HubMsg::Page(socket, ack, after, limit));
    }

    /// Answers `presence:watch`: the socket follows `users` in `room` from now on.
    pub fn watch(&self, room: &RoomId, socket: SocketRef, ack: AckSender, users: BTreeSet<UserId>) {
        self.to_member(room, HubMsg::Watch(socket, ack, users));
    }

    fn to_member(&self, room: &RoomId, msg: HubMsg) {
        let hubs = self.inner.lock();
        let msg = match hubs.get(room) {
            Some(tx) => match tx.send(msg) {
                Ok(()) => return,
                Err(mpsc::error::SendError(msg)) => msg,
            },
            None => msg,
        };
        if let HubMsg::Page(_, ack, ..) | HubMsg::Watch(_, ack, _) = msg {
            let _ = ack.send(&hub::not_joined(room));
        }
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
                    leave_channels(room, &socket);
                }
            }
            None => leave_channels(room, &socket),
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

/// Takes `socket` out of every Socket.IO room of `room`.
fn leave_channels(room: &RoomId, socket: &SocketRef) {
    let c = follow::Channels::of(room);
    socket.leave(vec![c.all, c.full, c.counts]);
}
