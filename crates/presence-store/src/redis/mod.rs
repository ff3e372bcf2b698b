//! The Redis store: every session a TTL hash, every mutation one Lua script.
//!
//! Every script touches the keys of one hash slot, so the store runs unchanged
//! on Redis Cluster. An operation that spans slots runs the session's script
//! first (the session hash is the truth, and its script does the epoch
//! fencing), then the projections into rooms and the user index; projections
//! carry the session's version, so a late or repeated one is ignored.
//!
//! Layout:
//! - this file: [`RedisStore`] and its [`PresenceStore`] implementation;
//! - [`keys`]: every key and channel name, and the key layout table;
//! - [`conn`]: options, URLs, TLS, reconnects, what a Redis error means;
//! - `listen`: the event bus's subscriber connection(s), one per master
//!   on Redis Cluster;
//! - `route`: which connection a key's command goes to (on Redis Cluster, a
//!   pool per master, so that a failed master costs only its own slots);
//! - `scripts`: loading the scripts of `lua/` and running them through one
//!   typed boundary; `session_scripts`, `room_scripts`, `index_scripts`:
//!   each script's typed arguments and reply;
//! - `project`: carrying a session script's outcome into rooms, the user
//!   index and the sharded indexes;
//! - `reads`: a user's live sessions (who's online, bulk status,
//!   reachability);
//! - `intents`: intents kept per callee, counted per caller;
//! - `sweep`: the reaper's sweep and its repairs;
//! - `stream`: the lifecycle stream (Redis Streams, consumer groups);
//! - `vouches`: the heartbeats this node answers itself (it vouches for its
//!   own sessions) and their times written in bulk.

pub mod conn;
mod index_scripts;
mod intents;
pub mod keys;
pub(crate) mod listen;
mod project;
mod reads;
mod room_scripts;
pub(crate) mod route;
mod scripts;
mod session_scripts;
mod stream;
mod sweep;
#[cfg(test)]
mod tests;
mod vouches;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use fred::prelude::*;
use presence_core::page::PageCursor;
use presence_core::user::{derive_user, SessionSignal};
use presence_core::view::build_view;
use presence_core::{
    Activity, Clock, Intent, IntentNotice, IntentOutcome, JsonMap, Lifecycle, Limits, Millis,
    NodeId, PresenceEvent, RoomId, SessionId, SessionStatus, Timings, UserId, UserSummary,
};
use tokio::sync::{broadcast, watch};

pub use conn::{normalize_url, PubSub, RedisOptions};
pub use vouches::Vouching;

use self::index_scripts::{
    ReadNodes, RegisterNode, ReleaseLease, TakeLease, UserEntry, UserSession as UserSessionEntry,
};
use self::keys::{field, Keys, SHARDS};
use self::listen::Listener;
use self::project::first_error;
use self::room_scripts::{PutKind, ReadRoom};
use self::route::Route;
use self::scripts::{Fenced, Refusal, ScriptCall, Scripts};
use self::session_scripts::{
    timings_json, Claim, Disconnect, Heartbeat, Join, Leave, Left, On, SetDeclared, SetState,
};
use self::stream::RedisLog;
use self::vouches::{Flush, Vouches};
use crate::api::{
    first_epoch, new_session_id, Claimed, Declare, Health, Hello, Holder, Joined, LastSeen, Lease,
    NodeInfo, NodeNotice, Online, Page, PresenceStore, RoomMembers, RoomPage, RoomStats,
    SessionRef, Signal, Superseded, SweepReport, Takeover, UserSession,
};
use crate::bus::{EventBus, Subscribed};
use crate::error::StoreError;
use crate::lifecycle::{stamp, EventLog};

/// How often a state update is retried when the session changed under it.
const STATE_RETRIES: usize = 8;

/// The Redis-backed [`PresenceStore`].
pub struct RedisStore {
    route: Route,
    scripts: Arc<Scripts>,
    keys: Keys,
    clock: Arc<dyn Clock>,
    /// The timings as every session script takes them.
    timings: String,
    limits: Limits,
    /// Pub/Sub: the rooms this node follows.
    bus: Arc<EventBus>,
    /// The sessions this node vouches for, and how their beats are written.
    vouches: Arc<Vouches>,
    flush: Flush,
    /// The lifecycle stream.
    log: Arc<RedisLog>,
}

impl RedisStore {
    /// Connects, loads the scripts on every master and starts the event bus.
    pub async fn connect(
        opts: RedisOptions,
        clock: Arc<dyn Clock>,
        timings: Timings,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let route = Route::connect(&opts).await?;
        let listener = Listener::connect(&opts, &route).await?;
        let mode = PubSub::of_server(&route.any()).await?;
        let bus = EventBus::start(listener, route.clone(), &opts.prefix, mode);
        let scripts = Arc::new(Scripts::new());
        scripts.load(&route, opts.functions).await?;
        let keys = Keys::new(&opts.prefix);
        let vouching = Vouching::new(opts.vouch_flush_ms, &timings);
        let vouches = Arc::new(Vouches::new(vouching, timings));
        let flush = Flush {
            route: route.clone(),
            scripts: scripts.clone(),
            keys: keys.clone(),
        };
        if let Some(every) = vouching.every {
            flush
                .clone()
                .spawn(Arc::downgrade(&vouches), clock.clone(), every);
        }
        let log = RedisLog::new(
            route.clone(),
            keys.clone(),
            limits.event_shards,
            limits.event_stream_max_len,
        );
        Ok(Self {
            log,
            route,
            scripts,
            keys,
            clock,
            timings: timings_json(&timings),
            limits,
            bus,
            vouches,
            flush,
        })
    }

    /// Writes the times of the heartbeats this node answered itself.
    pub(crate) async fn flush_beats_at(&self, now: Millis) -> Result<(), StoreError> {
        self.flush.run(&self.vouches, now).await
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// What a session script of `session` takes first, at `now`.
    fn on<'a>(&'a self, session: &'a str, now: Millis) -> On<'a> {
        On {
            session,
            now,
            timings: &self.timings,
        }
    }

    /// Runs one script call.
    /// Appends lifecycle events a script decided. A failed append is tried
    /// twice more (an event appended twice keeps its id: receivers
    /// deduplicate); then it is lost, and said so.
    pub(super) async fn record(&self, kinds: Vec<Lifecycle>) {
        if kinds.is_empty() {
            return;
        }
        let events = stamp(kinds, self.now());
        for attempt in 1..=3u64 {
            match self.log.append(events.clone()).await {
                Ok(()) => return,
                Err(e) if attempt < 3 => {
                    tracing::debug!(error = %e, attempt, "lifecycle append failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, events = events.len(), "lifecycle events lost: the stream did not take them");
                }
            }
        }
    }

    /// An offline user's last seen, if kept (`None` for a user who has a
    /// session: their user hash and last seen share a slot, one call).
    async fn offline_seen(&self, uid: &str) -> Result<Option<LastSeen>, StoreError> {
        let (user, seen) = (&self.keys.user(uid), &self.keys.last_seen(uid));
        let (n, la, at): (u64, Option<i64>, Option<i64>) = self
            .route
            .on_key(seen, |c| async move {
                let pipe = c.pipeline();
                let _: () = pipe.hlen(user).await?;
                let _: () = pipe.hmget(seen, vec!["la", "at"]).await?;
                let (n, (la, at)): (u64, (Option<i64>, Option<i64>)) = pipe.all().await?;
                Ok((n, la, at))
            })
            .await?;
        // The key's TTL runs on Redis's clock; the store's decides.
        let kept_since = self.now() - self.limits.last_seen_ttl_ms;
        Ok(match (n, at) {
            (0, Some(at)) if at > kept_since => Some(LastSeen {
                last_seen_at: la.unwrap_or(0),
                last_online_at: at,
            }),
            _ => None,
        })
    }

    /// Carries what `leave.lua` did into the rooms and, for an ended
    /// session, its user and the deadline index; the rooms it left.
    async fn carry_left(&self, sid: &str, left: &Left) -> Result<Vec<RoomId>, StoreError> {
        self.remove_from_rooms(sid, left.version, &left.dels)
            .await?;
        if left.ended {
            self.remove_from_user(UserSessionEntry {
                user_id: &left.user_id,
                session: sid,
                version: left.version,
                last_active_at: left.last_active_at,
            })
            .await?;
            self.unfile_deadline(sid).await?;
        }
        Ok(left
            .dels
            .iter()
            .filter_map(|d| RoomId::new(&d.room).ok())
            .collect())
    }

    async fn run<C: ScriptCall>(&self, call: C) -> Result<C::Reply, StoreError> {
        self.scripts.run(&self.route, &self.keys, call).await
    }

    /// Runs a session script; a refusal becomes its [`StoreError`] (`room`
    /// names the room of a `NotJoined`).
    async fn run_fenced<T, C>(&self, call: C, room: Option<&RoomId>) -> Result<T, StoreError>
    where
        C: ScriptCall<Reply = Fenced<T>>,
    {
        self.run(call).await?.map_err(|r| refused(r, room))
    }
}

/// The error a session script's refusal stands for.
fn refused(r: Refusal, room: Option<&RoomId>) -> StoreError {
    match r {
        Refusal::NoSession => StoreError::NoSession,
        Refusal::StaleEpoch { current } => StoreError::StaleEpoch { current },
        Refusal::Forbidden => {
            StoreError::Forbidden("this sessionId belongs to another user".into())
        }
        Refusal::TooManyRooms { limit } => StoreError::TooManyRooms { limit },
        Refusal::NotJoined => match room {
            Some(room) => StoreError::NotJoined(room.clone()),
            None => StoreError::Internal("not_joined from a call without a room".into()),
        },
        Refusal::Retry => StoreError::Unavailable("state update kept conflicting; retry".into()),
        Refusal::Kicked => StoreError::Kicked,
    }
}

#[async_trait]
impl PresenceStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn hello(&self, req: Hello) -> Result<Claimed, StoreError> {
        let now = self.now();
        let sid = req.session_id.unwrap_or_else(new_session_id);
        let call = Claim {
            on: self.on(sid.as_str(), now),
            user_id: req.user_id.as_str(),
            handle: req.handle.as_deref(),
            meta: req.meta.map(|m| serde_json::Value::Object(m).to_string()),
            activity: req.activity,
            node_id: req.node_id.as_str(),
            first_epoch: first_epoch(now),
            declare: &req.declare,
        };
        let c = self.run_fenced(call, None).await?;
        // Whatever this node vouched for the session before is over.
        self.vouches.claimed(sid.as_str(), c.epoch, now);
        if let Some(old) = &c.buried {
            self.remove_from_rooms(sid.as_str(), old.version, &old.dels)
                .await?;
            self.remove_from_user(UserSessionEntry {
                user_id: &old.user_id,
                session: sid.as_str(),
                version: old.version,
                last_active_at: 0,
            })
            .await?;
        }
        let entry = UserEntry {
            user_id: &c.user_id,
            session: sid.as_str(),
            version: c.version,
            status: c.status.unwrap_or(SessionStatus::Active),
            last_active_at: c.last_active_at,
            add: true,
        };
        if let Err(e) = self.add_to_user(entry).await {
            if matches!(e, StoreError::TooManySessions { .. }) {
                // Undo the claim: the new session never shows anywhere.
                let me = SessionRef {
                    session_id: sid.clone(),
                    epoch: c.epoch,
                };
                if let Err(undo) = self.end(&me).await {
                    tracing::warn!(session_id = %sid, error = %undo, "cannot undo a refused session");
                }
            }
            return Err(e);
        }
        self.put_rooms(
            sid.as_str(),
            &c.user_id,
            c.version,
            PutKind::Status,
            &c.puts,
        )
        .await?;
        self.file_deadline(sid.as_str(), c.deadline).await?;
        let rooms = if c.resumed {
            c.puts
                .iter()
                .filter_map(|p| RoomId::new(&p.room).ok())
                .collect()
        } else {
            vec![]
        };
        let superseded = c.superseded.and_then(|p| {
            Some(Superseded {
                node_id: NodeId::new(&p.node_id).ok()?,
                epoch: p.epoch,
            })
        });
        Ok(Claimed {
            session_id: sid,
            epoch: c.epoch,
            resumed: c.resumed,
            rooms,
            superseded,
        })
    }

    async fn join(
        &self,
        s: &SessionRef,
        room: &RoomId,
        state: Option<JsonMap>,
    ) -> Result<Joined, StoreError> {
        let state = state.map(|m| serde_json::Value::Object(m).to_string());
        if let Some(j) = &state {
            self.check_state_len(j.len())?;
        }
        let sid = s.session_id.as_str();
        let call = Join {
            on: self.on(sid, self.now()),
            epoch: s.epoch,
            room: room.as_str(),
            state: state.as_deref(),
            max_rooms: self.limits.max_rooms_per_session,
        };
        let j = self.run_fenced(call, Some(room)).await?;
        let kind = if j.already && j.changed {
            PutKind::Update
        } else {
            PutKind::Join
        };
        let mut seq = self
            .put_room(sid, &j.user_id, j.version, kind, &j.put)
            .await?;
        if seq == 0 {
            let key = &self.keys.room(room.as_str()).seq;
            let cur: Option<u64> = self
                .route
                .on_key(key, |c| async move { c.get(key).await })
                .await?;
            seq = cur.unwrap_or(0);
        }
        Ok(Joined {
            seq,
            already: j.already,
        })
    }

    async fn heartbeat(
        &self,
        s: &SessionRef,
        activity: Option<Activity>,
    ) -> Result<(), StoreError> {
        let sid = s.session_id.as_str();
        let now = self.now();
        if self.vouches.beat(sid, s.epoch, now, activity) {
            return Ok(());
        }
        let call = Heartbeat {
            on: self.on(sid, now),
            epoch: s.epoch,
            activity,
        };
        let b = match self.run_fenced(call, None).await {
            Ok(b) => b,
            Err(e) => {
                if !matches!(e, StoreError::Unavailable(_)) {
                    self.vouches.ended(sid, s.epoch, now);
                }
                return Err(e);
            }
        };
        if b.changed {
            self.put_rooms(sid, &b.user_id, b.version, PutKind::Status, &b.puts)
                .await?;
            let entry = UserEntry {
                user_id: &b.user_id,
                session: sid,
                version: b.version,
                status: b.status,
                last_active_at: b.last_active_at,
                add: false,
            };
            first_error(self.set_user_statuses(&[entry]).await)?;
        }
        self.file_deadline(sid, b.deadline).await?;
        self.vouches
            .held(sid, s.epoch, b.status, b.pulse(), b.keep_until, now);
        Ok(())
    }

    async fn update_state(
        &self,
        s: &SessionRef,
        room: &RoomId,
        patch: JsonMap,
    ) -> Result<(), StoreError> {
        let sid = s.session_id.as_str();
        let key = self.keys.session(sid);
        let state_field = field::room_state(room.as_str());
        for _ in 0..STATE_RETRIES {
            let (key, state_field) = (&key, &state_field);
            let (version, cur): (Option<String>, Option<String>) = self
                .route
                .on_key(key, |c| async move {
                    c.hmget(key, vec![field::VERSION, state_field.as_str()])
                        .await
                })
                .await?;
            let known = match cur.as_deref() {
                Some(raw) if !raw.is_empty() => serde_json::from_str(raw).ok(),
                _ => None,
            };
            let merged = presence_core::state::merge(known, patch.clone())
                .map(|m| serde_json::Value::Object(m).to_string())
                .unwrap_or_default();
            // Refused only if the caller may write at all (else the script says why not).
            if cur.is_some() {
                self.check_state_len(merged.len())?;
            }
            let call = SetState {
                on: self.on(sid, self.now()),
                epoch: s.epoch,
                room: room.as_str(),
                based_on: version,
                merged,
            };
            let set = match self.run(call).await? {
                Err(Refusal::Retry) => continue,
                other => other.map_err(|r| refused(r, Some(room)))?,
            };
            if let Some(put) = &set.put {
                self.put_room(sid, &set.user_id, set.version, PutKind::Update, put)
                    .await?;
            }
            return Ok(());
        }
        Err(refused(Refusal::Retry, Some(room)))
    }

    async fn leave(&self, s: &SessionRef, room: &RoomId) -> Result<(), StoreError> {
        let sid = s.session_id.as_str();
        let call = Leave {
            on: self.on(sid, self.now()),
            epoch: Some(s.epoch),
            room: Some(room.as_str()),
        };
        let left = self.run_fenced(call, Some(room)).await?;
        self.remove_from_rooms(sid, left.version, &left.dels).await
    }

    async fn end(&self, s: &SessionRef) -> Result<Vec<RoomId>, StoreError> {
        let sid = s.session_id.as_str();
        self.vouches.ended(sid, s.epoch, self.now());
        let call = Leave {
            on: self.on(sid, self.now()),
            epoch: Some(s.epoch),
            room: None,
        };
        let left = self.run_fenced(call, None).await?;
        self.carry_left(sid, &left).await
    }

    async fn disconnect(&self, s: &SessionRef) -> Result<(), StoreError> {
        let sid = s.session_id.as_str();
        self.vouches.ended(sid, s.epoch, self.now());
        let call = Disconnect {
            on: self.on(sid, self.now()),
            epoch: s.epoch,
        };
        let d = self.run_fenced(call, None).await?;
        if d.changed {
            self.put_rooms(sid, &d.user_id, d.version, PutKind::Status, &d.puts)
                .await?;
            let entry = UserEntry {
                user_id: &d.user_id,
                session: sid,
                version: d.version,
                status: d.status.unwrap_or(SessionStatus::Stale),
                last_active_at: d.last_active_at,
                add: false,
            };
            first_error(self.set_user_statuses(&[entry]).await)?;
        }
        self.file_deadline(sid, d.deadline).await
    }

    async fn sweep(&self, term: u64) -> Result<SweepReport, StoreError> {
        let now = self.now();
        // This node's own sessions are judged by their latest beats.
        if let Err(e) = self.flush_beats_at(now).await {
            tracing::debug!(error = %e, "heartbeat times not written before the sweep");
        }
        self.sweep_at(now, term).await
    }

    async fn flush_beats(&self) -> Result<(), StoreError> {
        self.flush_beats_at(self.now()).await
    }

    fn superseded_elsewhere(&self, t: &Takeover) {
        self.vouches
            .claimed(t.session_id.as_str(), t.current, self.now());
    }

    async fn room_members(&self, room: &RoomId) -> Result<RoomMembers, StoreError> {
        let now = self.now();
        let entries = self
            .run(ReadRoom {
                room: room.as_str(),
            })
            .await?;
        let mut members = Vec::with_capacity(entries.members.len());
        for (sid, raw) in &entries.members {
            match room_scripts::MemberEntry::parse(raw).and_then(|e| e.member(sid)) {
                Some(m) => members.push(m),
                None => {
                    tracing::warn!(room_id = %room, session_id = %sid, "unreadable member projection")
                }
            }
        }
        Ok(RoomMembers {
            seq: entries.seq,
            read_at: now,
            members,
        })
    }

    async fn left_room(
        &self,
        room: &RoomId,
        sessions: &[SessionId],
    ) -> Result<Vec<bool>, StoreError> {
        if sessions.is_empty() {
            return Ok(vec![]);
        }
        let key = &self.keys.room(room.as_str()).gone;
        let ids: Vec<&str> = sessions.iter().map(SessionId::as_str).collect();
        let ids = &ids;
        let left: Vec<Option<String>> = self
            .route
            .on_key(key, |c| async move { c.hmget(key, ids.clone()).await })
            .await?;
        Ok(left.into_iter().map(|v| v.is_some()).collect())
    }

    async fn room_page(
        &self,
        room: &RoomId,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<RoomPage, StoreError> {
        let now = self.now();
        let entries = self
            .run(room_scripts::PageRoom {
                room: room.as_str(),
                after: after.map(|c| format!("{} {}", c.user_id, c.session_id)),
                size: limit,
            })
            .await?;
        let members = entries
            .members
            .iter()
            .filter_map(|(sid, raw)| room_scripts::MemberEntry::parse(raw)?.member(sid))
            .collect();
        Ok(RoomPage::from_members(
            entries.seq,
            now,
            members,
            after,
            limit,
        ))
    }

    async fn room_stats(&self, room: &RoomId) -> Result<RoomStats, StoreError> {
        let k = self.keys.room(room.as_str());
        let (members, users) = (&k.members, &k.users);
        // A room's keys share a slot: one master answers both.
        let (sessions, users): (u64, u64) = self
            .route
            .on_key(members, |c| async move {
                tokio::try_join!(c.hlen::<u64, _>(members), c.hlen::<u64, _>(users))
            })
            .await?;
        Ok(RoomStats { sessions, users })
    }

    async fn whos_online(&self, page: Page) -> Result<Online, StoreError> {
        let now = self.now();
        let min = match &page.after {
            Some(u) => format!("({u}"),
            None => "-".to_owned(),
        };
        let want = page.limit as i64 + 1;
        let min = min.as_str();
        let reads = self
            .route
            .on_each(
                (0..SHARDS).map(|k| self.keys.online(k)),
                |c, key| async move {
                    c.zrangebylex::<Vec<String>, _, _, _>(key, min, "+", Some((0, want)))
                        .await
                },
            )
            .await;
        let mut users = BTreeSet::new();
        for r in reads {
            users.extend(r?);
        }
        let users: Vec<String> = users.into_iter().take(page.limit + 1).collect();
        let more = users.len() > page.limit;
        let users = &users[..users.len().min(page.limit)];
        let mut members = Vec::new();
        for uid in users {
            members.extend(self.user_members(uid).await?);
        }
        Ok(Online {
            generated_at: now,
            entries: build_view(members),
            next_cursor: if more {
                users.last().and_then(|u| UserId::new(u).ok())
            } else {
                None
            },
        })
    }

    async fn users_status(
        &self,
        users: &[UserId],
    ) -> Result<BTreeMap<UserId, UserSummary>, StoreError> {
        let mut out = BTreeMap::new();
        for uid in users {
            let signals =
                self.user_members(uid.as_str())
                    .await?
                    .into_iter()
                    .map(|m| SessionSignal {
                        status: m.status,
                        last_heartbeat_at: m.last_heartbeat_at,
                        last_active_at: m.last_active_at,
                    });
            let mut summary = derive_user(signals);
            if summary.session_count == 0 {
                if let Some(seen) = self.offline_seen(uid.as_str()).await? {
                    summary.last_seen_at = seen.last_seen_at;
                    summary.last_online_at = seen.last_online_at;
                }
            }
            out.insert(uid.clone(), summary);
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<Health, StoreError> {
        let reach = self.route.reach().await?;
        let mut degraded: Vec<String> = reach
            .down
            .iter()
            .map(|(server, slots)| {
                format!("the Redis master {server} ({slots} slots) does not answer")
            })
            .collect();
        // Without its subscription a node would serve calls but send no
        // diffs: unready, unless part of Redis is down as well or has just
        // failed over, which every node suffers alike (and then taking them
        // all out helps no one).
        match self.bus.subscribed() {
            Subscribed::Yes => {}
            Subscribed::Settling => degraded
                .push("the subscriptions are moving to a promoted Redis Cluster master".into()),
            Subscribed::No => {
                let why = "the subscription to presence events is reconnecting";
                if degraded.is_empty() {
                    return Err(StoreError::Unavailable(why.into()));
                }
                degraded.push(why.into());
            }
        }
        Ok(Health { degraded })
    }

    fn events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.bus.events()
    }

    fn resyncs(&self) -> watch::Receiver<u64> {
        self.bus.resyncs()
    }

    async fn follow_room(&self, room: &RoomId) -> Result<(), StoreError> {
        self.bus.follow(room).await
    }

    async fn unfollow_room(&self, room: &RoomId) -> Result<(), StoreError> {
        self.bus.unfollow(room).await
    }

    async fn publish_signal(&self, signal: &Signal) -> Result<(), StoreError> {
        self.bus.publish_signal(signal).await
    }

    async fn declare(&self, s: &SessionRef, d: &Declare) -> Result<bool, StoreError> {
        let sid = s.session_id.as_str();
        let call = SetDeclared {
            on: self.on(sid, self.now()),
            epoch: s.epoch,
            declare: d,
        };
        let set = self.run_fenced(call, None).await?;
        if set.changed {
            self.put_rooms(sid, &set.user_id, set.version, PutKind::Update, &set.puts)
                .await?;
        }
        Ok(set.changed)
    }

    async fn user_sessions(&self, user: &UserId) -> Result<Vec<UserSession>, StoreError> {
        self.user_session_list(user.as_str()).await
    }

    async fn put_intent(&self, intent: &Intent) -> Result<(), StoreError> {
        self.file_intent(intent).await
    }

    async fn intents_to(&self, user: &UserId) -> Result<Vec<Intent>, StoreError> {
        self.pending_intents_to(user).await
    }

    async fn intents_from(&self, user: &UserId) -> Result<Vec<Intent>, StoreError> {
        self.kept_intents_from(user).await
    }

    async fn resolve_intent(
        &self,
        intent: &Intent,
        outcome: IntentOutcome,
    ) -> Result<Option<Intent>, StoreError> {
        self.resolve(intent, &outcome).await
    }

    async fn take_intent(&self, intent: &Intent) -> Result<bool, StoreError> {
        self.take(intent).await
    }

    async fn publish_intent(&self, notice: &IntentNotice) -> Result<(), StoreError> {
        self.bus.publish_intent(notice).await
    }

    fn intent_notices(&self) -> broadcast::Receiver<IntentNotice> {
        self.bus.intent_notices()
    }

    fn signals(&self) -> broadcast::Receiver<Signal> {
        self.bus.signals()
    }

    async fn notify_node(&self, node: &NodeId, notice: &NodeNotice) -> Result<(), StoreError> {
        self.bus.publish_notice(node, notice).await
    }

    async fn listen_notices(
        &self,
        node: &NodeId,
    ) -> Result<broadcast::Receiver<NodeNotice>, StoreError> {
        self.bus.follow_node(node).await
    }

    async fn recently_offline(&self, limit: usize) -> Result<Vec<(UserId, LastSeen)>, StoreError> {
        let oldest = format!("({}", self.now() - self.limits.last_seen_ttl_ms);
        let oldest = oldest.as_str();
        let want = limit as i64;
        let reads = self
            .route
            .on_each(
                (0..SHARDS).map(|k| self.keys.recent(k)),
                |c, key| async move {
                    c.zrevrangebyscore::<Vec<(String, f64)>, _, _, _>(
                        key,
                        "+inf",
                        oldest,
                        true,
                        Some((0, want)),
                    )
                    .await
                },
            )
            .await;
        let mut all = Vec::new();
        for r in reads {
            all.extend(r?);
        }
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut out = Vec::new();
        for (uid, _) in all {
            if out.len() >= limit {
                break;
            }
            if let Some(seen) = self.offline_seen(&uid).await? {
                if let Ok(u) = UserId::new(&uid) {
                    out.push((u, seen));
                }
            }
        }
        Ok(out)
    }

    async fn remove(
        &self,
        session: &SessionId,
        room: Option<&RoomId>,
    ) -> Result<Option<Holder>, StoreError> {
        let sid = session.as_str();
        let call = Leave {
            on: self.on(sid, self.now()),
            epoch: None,
            room: room.map(RoomId::as_str),
        };
        let left = match self.run(call).await? {
            Ok(left) => left,
            Err(Refusal::NoSession | Refusal::NotJoined) => return Ok(None),
            Err(r) => return Err(refused(r, room)),
        };
        if left.ended {
            self.vouches.ended(sid, left.epoch, self.now());
        }
        let rooms = self.carry_left(sid, &left).await?;
        let node_id = left.node_id.as_deref().and_then(|n| NodeId::new(n).ok());
        let (Ok(user_id), Some(node_id)) = (UserId::new(&left.user_id), node_id) else {
            return Err(StoreError::Internal("leave.lua: no user or node".into()));
        };
        Ok(Some(Holder {
            user_id,
            epoch: left.epoch,
            node_id,
            rooms,
        }))
    }

    async fn session_holder(&self, session: &SessionId) -> Result<Option<Holder>, StoreError> {
        let mut read = self.sessions(&[session.as_str().to_owned()]).await?;
        let Some(f) = read.pop().flatten() else {
            return Ok(None);
        };
        let holder = (|| {
            Some(Holder {
                user_id: UserId::new(f.get(field::USER_ID)?).ok()?,
                epoch: f.get("epoch")?.parse().ok()?,
                node_id: NodeId::new(f.get("n")?).ok()?,
                rooms: f
                    .keys()
                    .filter_map(|k| k.strip_prefix("r:"))
                    .filter_map(|r| RoomId::new(r).ok())
                    .collect(),
            })
        })();
        Ok(holder)
    }

    fn lifecycle(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    async fn acquire_lease(&self, node: &NodeId, lease_ms: Millis) -> Result<Lease, StoreError> {
        self.run(TakeLease {
            node_id: node,
            now: self.now(),
            lease_ms,
        })
        .await
    }

    async fn release_lease(&self, node: &NodeId, term: u64) -> Result<(), StoreError> {
        self.run(ReleaseLease {
            node_id: node,
            term,
        })
        .await?;
        Ok(())
    }

    async fn current_lease(&self) -> Result<Option<Lease>, StoreError> {
        let key = &self.keys.lease().lease;
        let text: Option<String> = self
            .route
            .on_key(key, |c| async move { c.get(key).await })
            .await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn register_node(&self, node: &NodeInfo, ttl_ms: Millis) -> Result<(), StoreError> {
        self.run(RegisterNode {
            node,
            now: self.now(),
            ttl_ms,
        })
        .await?;
        Ok(())
    }

    async fn deregister_node(&self, node_id: &NodeId) -> Result<(), StoreError> {
        let (nodes, info) = (&self.keys.nodes(), &self.keys.nodes_info());
        // Both keys share the `{nodes}` slot.
        self.route
            .on_key(nodes, |c| async move {
                let _: () = c.zrem(nodes, node_id.as_str()).await?;
                c.hdel(info, node_id.as_str()).await
            })
            .await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        Ok(self.run(ReadNodes { now: self.now() }).await?.0)
    }
}

impl RedisStore {
    /// Refuses a state larger than the limit.
    fn check_state_len(&self, size: usize) -> Result<(), StoreError> {
        if size > self.limits.max_state_bytes {
            return Err(StoreError::StateTooLarge {
                size,
                limit: self.limits.max_state_bytes,
            });
        }
        Ok(())
    }
}
