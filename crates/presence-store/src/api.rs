//! The [`PresenceStore`] trait: every operation a node needs, each atomic.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use presence_core::page::{page_of, PageCursor};
use presence_core::view::{build_view, Entries, Member};
use presence_core::{
    Activity, Capabilities, Declared, Intent, IntentNotice, IntentOutcome, JsonMap, Millis, NodeId,
    PresenceEvent, ReachSignal, Readiness, RoomId, RoomView, SessionId, SessionStatus, UserId,
    UserSummary,
};
use tokio::sync::{broadcast, watch};

use crate::error::StoreError;
use crate::lifecycle::EventLog;

/// Events buffered between the store and its followers (the memory store's
/// channel, the Redis client's and the event bus's). A follower that falls
/// further behind gets `Lagged` and must re-read its rooms.
pub const EVENT_BUFFER: usize = 16_384;

/// How long a removed session's last epoch and version are remembered (the
/// memory store's tombstones, and the Redis tombstone hash's TTL: passed to
/// the scripts with the timings), so that a reused session id starts above
/// them and a connection that had lost the session stays fenced.
pub const TOMBSTONE_MS: Millis = 600_000;

/// How long a resolved intent is kept past its TTL for its outcome to be
/// delivered (its caller may be reconnecting, to another node).
pub const INTENT_KEEP_MS: Millis = 60_000;

/// The refusal of an intent whose caller has `limit` waiting.
pub fn too_many_from(limit: usize) -> StoreError {
    StoreError::TooManyIntents(format!(
        "a user may have at most {limit} intents waiting (PRESENCE_MAX_INTENTS_PER_USER); cancel one first"
    ))
}

/// The refusal of an intent for a callee that has `limit` waiting for them.
pub fn too_many_to(limit: usize) -> StoreError {
    StoreError::TooManyIntents(format!(
        "at most {limit} intents may wait for one user (PRESENCE_MAX_INTENTS_TO_USER)"
    ))
}

/// A claim of a session by a new connection (`presence:hello`).
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The session to resume, or `None` for a new one (the store picks the id).
    pub session_id: Option<SessionId>,
    /// The user; a resumed session must belong to the same user.
    pub user_id: UserId,
    /// Display name.
    pub handle: Option<String>,
    /// Small JSON object describing the client.
    pub meta: Option<JsonMap>,
    /// What the client reports at hello.
    pub activity: Activity,
    /// Readiness and capabilities, when the client declares them (a resumed
    /// session keeps what it had for what is not given).
    pub declare: Declare,
    /// The node whose connection claims it.
    pub node_id: NodeId,
}

/// What a connection declares about taking calls (`presence:hello`,
/// `presence:readiness`); `None` keeps what the session has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Declare {
    /// Whether it may be interrupted.
    pub readiness: Option<Readiness>,
    /// What it can do (replaces the whole set).
    pub capabilities: Option<Capabilities>,
}

impl Declare {
    /// `declared` with this applied.
    pub fn apply(&self, mut declared: Declared) -> Declared {
        if let Some(r) = self.readiness {
            declared.readiness = r;
        }
        if let Some(c) = &self.capabilities {
            declared.capabilities = c.clone();
        }
        declared
    }
}

/// One live session of a user, as reachability and its visibility rule read
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserSession {
    /// The session.
    pub session_id: SessionId,
    /// Its recorded (derived) status.
    pub status: SessionStatus,
    /// The activity its client last reported.
    pub activity: Activity,
    /// Its readiness and capabilities.
    pub declared: Declared,
    /// Its last reported activity.
    pub last_active_at: Millis,
    /// The rooms it is in.
    pub rooms: Vec<RoomId>,
}

impl UserSession {
    /// The session as [`presence_core::derive_reach`] reads it.
    pub fn signal(&self) -> ReachSignal<'_> {
        ReachSignal {
            session_id: &self.session_id,
            status: self.status,
            activity: self.activity,
            readiness: self.declared.readiness,
            capabilities: &self.declared.capabilities,
            last_active_at: self.last_active_at,
        }
    }
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The session id (given or generated).
    pub session_id: SessionId,
    /// The epoch the claiming connection must carry from now on.
    pub epoch: u64,
    /// True when an existing session was taken over (reconnect).
    pub resumed: bool,
    /// The rooms the session is in (non-empty only when resumed).
    pub rooms: Vec<RoomId>,
    /// The connection this claim took the session from, when one still held
    /// it (it had not disconnected): its node must unbind it at once.
    pub superseded: Option<Superseded>,
}

/// A connection that lost its session to a newer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    /// The node holding that connection.
    pub node_id: NodeId,
    /// The epoch it held.
    pub epoch: u64,
}

/// A node's notice to another that one of its connections was superseded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Takeover {
    /// The session.
    pub session_id: SessionId,
    /// The epoch the superseded connection holds.
    pub epoch: u64,
    /// The epoch of the connection that holds it now.
    pub current: u64,
}

/// What one node tells another over the other's channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum NodeNotice {
    /// A connection of the node lost its session to a newer one.
    Takeover(Takeover),
    /// A backend ended a session, or took it out of a room (the moderation
    /// API).
    Removal(Removal),
}

/// A session a backend ended, or took out of a room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Removal {
    /// The session.
    pub session_id: SessionId,
    /// The epoch of the connection that held it.
    pub epoch: u64,
    /// The room it was taken out of; `None` when the session was ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
}

/// Who holds a session now (the moderation API finds a connection by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The session's user.
    pub user_id: UserId,
    /// Its current epoch: what a write on its behalf carries.
    pub epoch: u64,
    /// The node of the connection that claimed it last.
    pub node_id: NodeId,
    /// The rooms it is in.
    pub rooms: Vec<RoomId>,
}

/// What is kept of a user after their last session ended
/// (`Limits::last_seen_ttl_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastSeen {
    /// The last activity any of their sessions reported.
    pub last_seen_at: Millis,
    /// When their last session ended.
    pub last_online_at: Millis,
}

/// The identity a connection writes with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionRef {
    /// The session.
    pub session_id: SessionId,
    /// The epoch issued to this connection.
    pub epoch: u64,
}

/// The outcome of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The room's version after the join.
    pub seq: u64,
    /// True when the session was already in the room (the join changed at most its state).
    pub already: bool,
}

/// O(1) counts of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomStats {
    /// Sessions in the room.
    pub sessions: u64,
    /// Distinct users in the room.
    pub users: u64,
}

/// One page of a room's members (see [`presence_core::page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPage {
    /// The room's version the page was read at.
    pub seq: u64,
    /// When it was read (the store's clock).
    pub read_at: Millis,
    /// The members and their users.
    pub page: presence_core::Page,
}

impl RoomPage {
    /// The page of `limit` members after `after`, out of `members`: at
    /// least every member of the page's users, and the first member after
    /// the page if there is one (so that the page knows it is not the last).
    pub fn from_members(
        seq: u64,
        read_at: Millis,
        members: Vec<Member>,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Self {
        let e = build_view(members);
        RoomPage {
            seq,
            read_at,
            page: page_of(&e.users, &e.sessions, after, limit),
        }
    }
}

/// A page request for who's online, ordered by user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// At most this many users.
    pub limit: usize,
    /// Start after this user id.
    pub after: Option<UserId>,
}

/// One page of who's online.
#[derive(Debug, Clone, PartialEq)]
pub struct Online {
    /// When it was read.
    pub generated_at: Millis,
    /// Users (derived from all their sessions) and their sessions.
    pub entries: Entries,
    /// Where the next page starts, when there is one.
    pub next_cursor: Option<UserId>,
}

/// A `presence:signal` on its way to the room's sockets on other nodes.
/// Signals are relayed, never stored, and carry no seq: a lost one is lost.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    /// The room.
    pub room_id: RoomId,
    /// The sending session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// The node that relayed it to its own sockets already.
    pub node_id: NodeId,
    /// What the client sent.
    pub data: serde_json::Value,
}

/// One node of the cluster, as it registers itself (see `/api/cluster`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The node's id (`PRESENCE_NODE_ID`).
    pub node_id: NodeId,
    /// Where it listens.
    pub addr: String,
    /// When it started.
    pub started_at: Millis,
    /// When it last refreshed its registration.
    pub last_seen_at: Millis,
    /// Sessions bound to its connections.
    pub sessions: u64,
    /// Rooms it has sockets in.
    pub rooms: u64,
}

/// The reaper's lease: one node at a time sweeps, and each new holder gets
/// a higher term.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The node holding it.
    pub node_id: NodeId,
    /// Grows with every new holder (a renewal keeps it).
    pub term: u64,
    /// When it lapses unless renewed (the store's clock).
    pub lease_until: Millis,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Sessions whose status changed (idle, away, stale...).
    pub status_changes: u64,
    /// Sessions removed after their deadline.
    pub expired: u64,
    /// Room members removed because their session no longer held them
    /// (its record was lost, or its removal never reached the room).
    pub orphans: u64,
    /// Sessions left alone because a sweeper with a higher term got there first.
    pub fenced: u64,
    /// Index shards, sessions or rooms left for the next sweep because the
    /// part of Redis that holds them did not answer (a Cluster failover).
    pub skipped: u64,
}

/// A room's members as one read found them.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomMembers {
    /// The room's version.
    pub seq: u64,
    /// When they were read (the store's clock).
    pub read_at: Millis,
    /// Every session in the room, as the room keeps it.
    pub members: Vec<Member>,
}

/// What [`PresenceStore::ping`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The parts that do not answer while the rest does (a Redis Cluster
    /// master failing over: the sessions, rooms and users of its slots
    /// wait for the promotion, the others are served). Empty when whole.
    pub degraded: Vec<String>,
}

/// The authoritative presence state.
///
/// Every method is one atomic step; every change observers can see bumps the
/// room's `seq` and publishes one [`PresenceEvent`]. Writes carry a
/// [`SessionRef`], and are rejected with [`StoreError::StaleEpoch`] unless
/// its epoch is the session's current one.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// A short name for logs and `/readyz` (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Claims a session for a new connection: creates it, or resumes it
    /// (same id, same user, not yet removed) with a higher epoch.
    async fn hello(&self, req: Hello) -> Result<Claimed, StoreError>;

    /// Adds the session to a room with an optional initial state. Joining a
    /// room twice is allowed: the state, if given, replaces the old one.
    async fn join(
        &self,
        s: &SessionRef,
        room: &RoomId,
        state: Option<JsonMap>,
    ) -> Result<Joined, StoreError>;

    /// Records a heartbeat; publishes only if the status changed.
    async fn heartbeat(&self, s: &SessionRef, activity: Option<Activity>)
        -> Result<(), StoreError>;

    /// Shallow-merges `patch` into the session's state in `room` (`null` deletes a field).
    async fn update_state(
        &self,
        s: &SessionRef,
        room: &RoomId,
        patch: JsonMap,
    ) -> Result<(), StoreError>;

    /// Removes the session from one room.
    async fn leave(&self, s: &SessionRef, room: &RoomId) -> Result<(), StoreError>;

    /// Ends the session: leaves every room and removes it. Returns the rooms it left.
    async fn end(&self, s: &SessionRef) -> Result<Vec<RoomId>, StoreError>;

    /// The connection closed without a leave: the session turns stale and is
    /// kept for the reconnect grace window. Ignored for an old epoch.
    async fn disconnect(&self, s: &SessionRef) -> Result<(), StoreError>;

    /// Re-derives the sessions whose deadline has passed: publishes status
    /// changes and removes the expired ones. `term` is the sweeper's lease
    /// term: once a sweep with a higher term has touched a session (in
    /// Redis; the memory store has one sweeper and compares with the highest
    /// term it saw), a sweep with a lower one changes nothing of it, so a
    /// leader that was paused past its lease cannot act after its successor.
    async fn sweep(&self, term: u64) -> Result<SweepReport, StoreError>;

    /// The room's members now, at the room's version (one read: what a
    /// follower of the room starts from, or re-reads after a gap).
    async fn room_members(&self, room: &RoomId) -> Result<RoomMembers, StoreError>;

    /// The room's presence now.
    async fn room_view(&self, room: &RoomId) -> Result<RoomView, StoreError> {
        let m = self.room_members(room).await?;
        Ok(RoomView::build(room.clone(), m.seq, m.read_at, m.members))
    }

    /// A page of the room's members: the first `limit` after `after` in
    /// page order (user id, then session id). O(limit) in the room.
    async fn room_page(
        &self,
        room: &RoomId,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<RoomPage, StoreError>;

    /// The room's counts, in O(1).
    async fn room_stats(&self, room: &RoomId) -> Result<RoomStats, StoreError>;

    /// Which of `sessions` the room records as gone from it (they left, or
    /// were removed). After a resubscription a hub keeps members a read
    /// lacks, in case Redis lost its data; one the room saw leave is not
    /// kept. A store that never loses events (the memory store) records
    /// nothing.
    async fn left_room(
        &self,
        _room: &RoomId,
        sessions: &[SessionId],
    ) -> Result<Vec<bool>, StoreError> {
        Ok(vec![false; sessions.len()])
    }

    /// Everyone online, one page at a time, users derived from all their sessions.
    async fn whos_online(&self, page: Page) -> Result<Online, StoreError>;

    /// Bulk "is this user online", over all of each user's sessions. An
    /// offline user's `last_seen_at` and `last_online_at` are their
    /// [`LastSeen`], if kept.
    async fn users_status(
        &self,
        users: &[UserId],
    ) -> Result<BTreeMap<UserId, UserSummary>, StoreError>;

    /// The users whose last session ended most recently (within
    /// `Limits::last_seen_ttl_ms`, and not online since), newest first, at
    /// most `limit`.
    async fn recently_offline(&self, limit: usize) -> Result<Vec<(UserId, LastSeen)>, StoreError>;

    /// The moderation API: ends `session` (`room` = `None`), or takes it out
    /// of `room`, whatever its connection's state; observers see a leave.
    /// An ended session's id is refused ([`StoreError::Kicked`]) for as long
    /// as its tombstone lives. `None` when there is no such live session,
    /// or it is not in the room. The holder's epoch and node are as they
    /// were at the removal (for the notice to its node).
    async fn remove(
        &self,
        session: &SessionId,
        room: Option<&RoomId>,
    ) -> Result<Option<Holder>, StoreError>;

    /// Who holds a live session now, if it exists.
    async fn session_holder(&self, session: &SessionId) -> Result<Option<Holder>, StoreError>;

    /// The lifecycle stream the store appends to (see [`crate::lifecycle`]).
    fn lifecycle(&self) -> Arc<dyn EventLog>;

    /// Succeeds when the store can serve requests, if perhaps not all of
    /// them ([`Health::degraded`]); fails when it can serve none.
    async fn ping(&self) -> Result<Health, StoreError>;

    /// Sets what the session declares about taking calls; every room it is
    /// in hears of a change (an `update` event). Returns whether anything
    /// changed.
    async fn declare(&self, s: &SessionRef, d: &Declare) -> Result<bool, StoreError>;

    /// The live sessions of a user.
    async fn user_sessions(&self, user: &UserId) -> Result<Vec<UserSession>, StoreError>;

    /// Records a new pending intent. Refused with
    /// [`StoreError::TooManyIntents`] when its caller already has
    /// `max_intents_per_user` waiting, or `max_intents_to_user` wait for
    /// its callee.
    async fn put_intent(&self, intent: &Intent) -> Result<(), StoreError>;

    /// The intents waiting for `user` (pending, not expired).
    async fn intents_to(&self, user: &UserId) -> Result<Vec<Intent>, StoreError>;

    /// The intents `user` made that are still kept: pending ones, and
    /// resolved ones whose outcome has not been delivered yet.
    async fn intents_from(&self, user: &UserId) -> Result<Vec<Intent>, StoreError>;

    /// Resolves a pending intent, atomically, once: the resolved intent, or
    /// `None` when it was resolved before, is gone, or may not resolve so
    /// (see [`Intent::resolve`]).
    async fn resolve_intent(
        &self,
        intent: &Intent,
        outcome: IntentOutcome,
    ) -> Result<Option<Intent>, StoreError>;

    /// Removes an intent; true when this call removed it (whoever delivers
    /// an outcome takes the intent first, so that it is delivered once).
    async fn take_intent(&self, intent: &Intent) -> Result<bool, StoreError>;

    /// Tells every node about an intent (it was made, or it resolved).
    async fn publish_intent(&self, notice: &IntentNotice) -> Result<(), StoreError>;

    /// Intent notices from every node, this one's included.
    fn intent_notices(&self) -> broadcast::Receiver<IntentNotice>;

    /// Every event published from now on. A receiver that falls behind gets
    /// `Lagged` and must re-read the rooms it cares about.
    fn events(&self) -> broadcast::Receiver<PresenceEvent>;

    /// Changes each time events may have been lost on the way in (the
    /// store's subscription was re-established after Redis went away).
    /// Whoever mirrors rooms re-reads them then: the new subscription is live
    /// before the change is signalled, so the re-read sees every change that
    /// came before it and the event stream carries every one after it.
    fn resyncs(&self) -> watch::Receiver<u64>;

    /// Starts delivering `room`'s events to [`events`](Self::events). A node
    /// follows the rooms it has sockets in; calls are counted, so each
    /// [`unfollow_room`](Self::unfollow_room) undoes one of them. Stores that
    /// deliver every event anyway (the memory store) ignore it.
    async fn follow_room(&self, room: &RoomId) -> Result<(), StoreError>;

    /// Undoes one [`follow_room`](Self::follow_room).
    async fn unfollow_room(&self, room: &RoomId) -> Result<(), StoreError>;

    /// Relays a signal to the room's sockets on the other nodes (those that
    /// follow the room). Single-node stores have no one to relay to.
    async fn publish_signal(&self, signal: &Signal) -> Result<(), StoreError>;

    /// Signals relayed by other nodes to the rooms this node follows.
    fn signals(&self) -> broadcast::Receiver<Signal>;

    /// This node heard that a newer connection elsewhere took over one of
    /// its sessions: a store that answers heartbeats without a round trip
    /// stops doing so for the older epochs (the Redis store's vouches).
    fn superseded_elsewhere(&self, _takeover: &Takeover) {}

    /// Writes now what a store answered without a round trip and keeps for
    /// a later write (the Redis store: the times of heartbeats this node
    /// answered itself); a draining node calls it last.
    async fn flush_beats(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Tells node `node` something about its connections (on Redis: over
    /// the node's channel).
    async fn notify_node(&self, node: &NodeId, notice: &NodeNotice) -> Result<(), StoreError>;

    /// Tells node `node` that one of its connections lost its session to a
    /// newer one.
    async fn notify_takeover(&self, node: &NodeId, takeover: &Takeover) -> Result<(), StoreError> {
        self.notify_node(node, &NodeNotice::Takeover(takeover.clone()))
            .await
    }

    /// Starts receiving the notices other nodes (and backends, through
    /// them) send to `node` (this node).
    async fn listen_notices(
        &self,
        node: &NodeId,
    ) -> Result<broadcast::Receiver<NodeNotice>, StoreError>;

    /// Takes the reaper lease for `node` if no one holds it (with a new
    /// term), or renews it if `node` holds it; returns the lease as it is
    /// now, whoever holds it.
    async fn acquire_lease(&self, node: &NodeId, lease_ms: Millis) -> Result<Lease, StoreError>;

    /// Gives the lease up, if `node` still holds it with `term`.
    async fn release_lease(&self, node: &NodeId, term: u64) -> Result<(), StoreError>;

    /// The lease as it is now, if someone holds it.
    async fn current_lease(&self) -> Result<Option<Lease>, StoreError>;

    /// Registers or refreshes a node; the registration lapses after `ttl_ms`
    /// unless refreshed, so a crashed node drops out by itself.
    async fn register_node(&self, node: &NodeInfo, ttl_ms: Millis) -> Result<(), StoreError>;

    /// Removes a node's registration (on shutdown).
    async fn deregister_node(&self, node_id: &NodeId) -> Result<(), StoreError>;

    /// The registered nodes, by id.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
}

/// Session ids generated by stores: 32 lowercase hex characters (a random UUID).
pub fn new_session_id() -> SessionId {
    let id = uuid::Uuid::new_v4().simple().to_string();
    SessionId::new(&id).expect("a uuid is a valid id")
}

/// The epoch of a brand-new session: the current time in ms, so that a
/// session id used again later starts above every epoch of its earlier life
/// (each resume adds only one).
pub fn first_epoch(now: Millis) -> u64 {
    u64::try_from(now).unwrap_or(0).max(1)
}
