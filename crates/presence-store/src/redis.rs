//! The Redis store: every session a TTL hash, every mutation one Lua script.
//!
//! Key layout (`P` is the key prefix; `{...}` is the Redis Cluster hash tag):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:s:{<sessionId>}` | hash | the session: `userId`, `epoch`, `lastHeartbeatAt`, other facts in short fields (`la` last activity, `a` activity, `st` status, `d` disconnected at, `n` node, `h` handle, `m` meta, `v` version, `ix` filed deadline, `ft` highest reaper term that swept it, `sid`, `c` created at), rooms (`r:<roomId>` = state, `su:<roomId>` = when it changed); `dead` on a tombstone; a TTL past its removal deadline; a short-lived tombstone after it ends |
//! | `P:r:{<roomId>}:m` | hash | members: sessionId → `<version>\|<userId>\|<member JSON>` (status, handle, state, times: the room's view in one read) |
//! | `P:r:{<roomId>}:u` | hash | userId → sessions in the room (O(1) user count) |
//! | `P:r:{<roomId>}:seq` | string | the room's version |
//! | `P:r:{<roomId>}:g` | hash | sessionId → version it left at (late joins cannot resurrect it) |
//! | `P:r:{<roomId>}:x` | sorted set | the room's expiry index: sessionId → when to check that the session still holds the membership |
//! | `P:u:{<userId>}` | hash | the user's sessions: sessionId → version |
//! | `P:on:{<0..16>}` | sorted set | online users, sharded by user id, ordered for paging |
//! | `P:dl:{<0..16>}` | sorted set | sessions by a deadline no later than their next status change, sharded |
//! | `P:rx:{<0..16>}` | sorted set | rooms by a time no later than their earliest expiry entry, sharded by room id |
//! | `P:events:{<roomId>}` | channel | v1 events of the room (sharded Pub/Sub on Redis 7+) |
//! | `P:signals:{<roomId>}` | channel | `presence:signal` messages relayed between nodes |
//! | `P:lease:{lease}` | string | the reaper lease (JSON: nodeId, term, leaseUntil), with its TTL |
//! | `P:lease:{lease}:term` | string | the last term handed out |
//! | `P:nodes:{nodes}` | sorted set | registered nodes: nodeId → when the registration lapses (its TTL) |
//! | `P:nodes:{nodes}:info` | hash | nodeId → the node's registration (JSON) |
//!
//! Expiry is found through two indexes, never by scanning keys. The deadline
//! index drives every session's status changes and its removal (which takes
//! it out of each room its hash lists). The rooms' expiry indexes are the
//! backstop for what the session's hash can no longer tell: a member whose
//! session hash vanished (its TTL ran out while no node swept, say) or whose
//! removal never reached the room (its node died between the two writes).
//! Each entry comes due a while after the member's removal deadline; the
//! sweeper then checks the session and removes the member or files it again.
//!
//! Every script touches the keys of one hash slot, so the store runs unchanged
//! on Redis Cluster. An operation that spans slots runs the session's script
//! first (the session hash is the truth, and its script does the epoch
//! fencing), then the projections into rooms and the user index; projections
//! carry the session's version, so a late or repeated one is ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Builder as FredBuilder;
use futures::future::join_all;
use futures::StreamExt;
use presence_core::user::{derive_user, SessionSignal};
use presence_core::view::{build_view, Member};
use presence_core::{
    Activity, Clock, JsonMap, Limits, Millis, NodeId, PresenceEvent, RoomId, RoomView, SessionId,
    SessionStatus, Timings, UserId, UserSummary,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::api::{
    first_epoch, new_session_id, Claimed, Hello, Joined, Lease, NodeInfo, Online, Page,
    PresenceStore, RoomStats, SessionRef, Signal, SweepReport,
};
use crate::bus::{EventBus, PubSub, EVENT_BUFFER};
use crate::error::StoreError;

/// Shards of the online-users and deadline indexes: no single hot key.
const SHARDS: u32 = 16;
/// Sessions looked at per shard and sweep.
const SWEEP_BATCH: i64 = 512;
/// Sessions of one shard checked at once by a sweep.
const SWEEP_CONCURRENCY: usize = 32;
/// Rooms looked at per shard and sweep, and members per room.
const ROOM_BATCH: i64 = 128;
/// How often a state update is retried when the session changed under it.
const STATE_RETRIES: usize = 8;

macro_rules! script {
    ($name:literal) => {
        concat!(
            include_str!("../../../lua/lib/prelude.lua"),
            "\n",
            include_str!(concat!("../../../lua/", $name))
        )
    };
}

struct Scripts {
    claim: Script,
    join: Script,
    heartbeat: Script,
    state: Script,
    leave: Script,
    disconnect: Script,
    expire: Script,
    room_put: Script,
    room_del: Script,
    room_read: Script,
    user_put: Script,
    user_del: Script,
    room_due: Script,
    rooms_settle: Script,
    node_put: Script,
    nodes_read: Script,
    lease: Script,
    lease_release: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: Script::from_lua(script!("claim.lua")),
            join: Script::from_lua(script!("join.lua")),
            heartbeat: Script::from_lua(script!("heartbeat.lua")),
            state: Script::from_lua(script!("state.lua")),
            leave: Script::from_lua(script!("leave.lua")),
            disconnect: Script::from_lua(script!("disconnect.lua")),
            expire: Script::from_lua(script!("expire.lua")),
            room_put: Script::from_lua(include_str!("../../../lua/room_put.lua")),
            room_del: Script::from_lua(include_str!("../../../lua/room_del.lua")),
            room_read: Script::from_lua(include_str!("../../../lua/room_read.lua")),
            user_put: Script::from_lua(include_str!("../../../lua/user_put.lua")),
            user_del: Script::from_lua(include_str!("../../../lua/user_del.lua")),
            room_due: Script::from_lua(include_str!("../../../lua/room_due.lua")),
            rooms_settle: Script::from_lua(include_str!("../../../lua/rooms_settle.lua")),
            node_put: Script::from_lua(include_str!("../../../lua/node_put.lua")),
            nodes_read: Script::from_lua(include_str!("../../../lua/nodes_read.lua")),
            lease: Script::from_lua(include_str!("../../../lua/lease.lua")),
            lease_release: Script::from_lua(include_str!("../../../lua/lease_release.lua")),
        }
    }

    fn all(&self) -> [&Script; 18] {
        [
            &self.claim,
            &self.join,
            &self.heartbeat,
            &self.state,
            &self.leave,
            &self.disconnect,
            &self.expire,
            &self.room_put,
            &self.room_del,
            &self.room_read,
            &self.user_put,
            &self.user_del,
            &self.room_due,
            &self.rooms_settle,
            &self.node_put,
            &self.nodes_read,
            &self.lease,
            &self.lease_release,
        ]
    }
}

/// Key names under one prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

fn shard_of(s: &str) -> u32 {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SHARDS
}

impl Keys {
    fn session(&self, sid: &str) -> String {
        format!("{}:s:{{{sid}}}", self.prefix)
    }
    /// A room's members, users, seq, gone and expiry keys.
    fn room(&self, rid: &str) -> [String; 5] {
        let p = &self.prefix;
        [
            format!("{p}:r:{{{rid}}}:m"),
            format!("{p}:r:{{{rid}}}:u"),
            format!("{p}:r:{{{rid}}}:seq"),
            format!("{p}:r:{{{rid}}}:g"),
            format!("{p}:r:{{{rid}}}:x"),
        ]
    }
    fn lease(&self) -> [String; 2] {
        let p = &self.prefix;
        [
            format!("{p}:lease:{{lease}}"),
            format!("{p}:lease:{{lease}}:term"),
        ]
    }
    fn nodes(&self) -> String {
        format!("{}:nodes:{{nodes}}", self.prefix)
    }
    fn nodes_info(&self) -> String {
        format!("{}:nodes:{{nodes}}:info", self.prefix)
    }
    fn rooms_due(&self, shard: u32) -> String {
        format!("{}:rx:{{{shard}}}", self.prefix)
    }
    fn channel(&self, rid: &str) -> String {
        format!("{}:events:{{{rid}}}", self.prefix)
    }
    fn user(&self, uid: &str) -> String {
        format!("{}:u:{{{uid}}}", self.prefix)
    }
    fn online(&self, shard: u32) -> String {
        format!("{}:on:{{{shard}}}", self.prefix)
    }
    fn deadlines(&self, shard: u32) -> String {
        format!("{}:dl:{{{shard}}}", self.prefix)
    }
}

/// One change a session script asks to project into a room.
#[derive(Debug, Deserialize)]
struct RoomEv {
    room: String,
    ev: String,
    /// The member as the room keeps it (puts only).
    #[serde(default)]
    m: String,
    #[serde(default)]
    visible: Option<bool>,
    /// When the room should check the member's session (puts only).
    #[serde(default)]
    x: Option<i64>,
}

/// Lua's cjson encodes an empty table as `{}`: accept it as an empty list.
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RoomEv>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L {
        List(Vec<RoomEv>),
        Empty(#[allow(dead_code)] serde_json::Map<String, serde_json::Value>),
    }
    Ok(match L::deserialize(d)? {
        L::List(v) => v,
        L::Empty(_) => Vec::new(),
    })
}

#[derive(Debug, Deserialize)]
struct ExpiredSession {
    uid: String,
    v: u64,
    #[serde(default, deserialize_with = "list")]
    dels: Vec<RoomEv>,
}

/// The JSON reply of the session scripts.
#[derive(Debug, Default, Deserialize)]
struct Reply {
    #[serde(default)]
    err: Option<String>,
    #[serde(default)]
    current: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    gone: bool,
    #[serde(default)]
    e: u64,
    #[serde(default)]
    v: u64,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    resumed: bool,
    #[serde(default)]
    changed: bool,
    #[serde(default)]
    already: bool,
    #[serde(default)]
    ix: Option<i64>,
    #[serde(default)]
    next: Option<i64>,
    #[serde(default)]
    put: Option<RoomEv>,
    #[serde(default, deserialize_with = "list")]
    puts: Vec<RoomEv>,
    #[serde(default, deserialize_with = "list")]
    dels: Vec<RoomEv>,
    #[serde(default)]
    expired: Option<serde_json::Value>,
    /// expire.lua, asked about a room: the session still holds it.
    #[serde(default)]
    inroom: bool,
    /// expire.lua: when a room should check this session again.
    #[serde(default)]
    x: Option<i64>,
    /// expire.lua: a sweeper with a higher term touched the session.
    #[serde(default)]
    fenced: bool,
}

/// Whether a session still holds a room, as a sweep found it.
enum Held {
    /// Yes; the room checks again at this time.
    Until(i64),
    /// No: gone, removed, or the room never heard that it left.
    No,
    /// Not known: a sweeper with a higher term owns the session now.
    Fenced,
}

pub(crate) fn unavailable(e: fred::error::Error) -> StoreError {
    use fred::error::ErrorKind as K;
    match e.kind() {
        K::IO | K::Timeout | K::Canceled | K::Cluster | K::Sentinel | K::Tls | K::Backpressure => {
            StoreError::Unavailable(e.to_string())
        }
        _ if e.details().contains("LOADING") || e.details().contains("CLUSTERDOWN") => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// An error of the first connection. An untrusted TLS certificate will not
/// fix itself by retrying: it is a configuration error, said plainly.
pub(crate) fn connect_error(e: fred::error::Error) -> StoreError {
    let details = e.details();
    if details.contains("InvalidCertificate") || details.contains("certificate") {
        return StoreError::Internal(format!(
            "the Redis server's TLS certificate is not trusted ({details}); \
             trust its CA with a CA file (PRESENCE_REDIS_CA_FILE for the node)"
        ));
    }
    unavailable(e)
}

/// Turns the documented URL forms into fred's: a comma-separated list of
/// seeds (`redis://h1:p1,h2:p2` or `redis-cluster://h1:p1,h2:p2`) becomes
/// `redis-cluster://h1:p1?node=h2:p2`.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    if !rest.contains(',') {
        return url.to_owned();
    }
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let mut seeds = hosts.split(',').map(str::trim).filter(|s| !s.is_empty());
    let first = seeds.next().unwrap_or("127.0.0.1:6379");
    let nodes: Vec<String> = seeds.map(|s| format!("node={s}")).collect();
    let scheme = match scheme {
        "rediss" | "rediss-cluster" => "rediss-cluster",
        _ => "redis-cluster",
    };
    if nodes.is_empty() {
        format!("{scheme}://{auth}{first}")
    } else {
        format!("{scheme}://{auth}{first}?{}", nodes.join("&"))
    }
}

/// A TLS connector that trusts the CAs of a PEM file (and no others).
fn tls_trusting(path: &std::path::Path) -> Result<fred::types::config::TlsConnector, StoreError> {
    use fred::rustls::pki_types::{pem::PemObject, CertificateDer};
    use fred::rustls::{ClientConfig, RootCertStore};
    let bad = |e: String| StoreError::Internal(format!("CA file {}: {e}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(ClientConfig::builder_with_provider(
        Arc::new(fred::rustls::crypto::ring::default_provider()),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth()
    .into())
}

/// The Redis-backed [`PresenceStore`].
pub struct RedisStore {
    pool: Pool,
    scripts: Scripts,
    keys: Keys,
    clock: Arc<dyn Clock>,
    timings_json: String,
    limits: Limits,
    /// Pub/Sub: the rooms this node follows.
    bus: Arc<EventBus>,
}

/// Connection settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The URL (`redis://`, `rediss://`, seeds, `redis-cluster://`, `redis-sentinel://`).
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long a command may take before it fails with `unavailable`.
    pub command_timeout: Duration,
    /// A PEM file of the CAs to trust for `rediss://` instead of the system's
    /// (a private CA, as self-hosted Redis with TLS usually has).
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisOptions {
    /// Defaults for `url`: prefix `presence`, 4 connections, 2 s timeout.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: "presence".into(),
            pool_size: 4,
            command_timeout: Duration::from_secs(2),
            ca_file: None,
        }
    }
}

/// A client builder for `opts`: URL, TLS, timeouts and the reconnect policy.
pub(crate) fn builder(opts: &RedisOptions) -> Result<FredBuilder, StoreError> {
    let mut config = Config::from_url(&normalize_url(&opts.url))
        .map_err(|e| StoreError::Internal(format!("REDIS_URL: {e}")))?;
    if let Some(path) = &opts.ca_file {
        if !config.uses_tls() {
            return Err(StoreError::Internal(
                "a CA file is set but REDIS_URL is not a TLS URL (rediss://)".into(),
            ));
        }
        config.tls = Some(tls_trusting(path)?.into());
    }
    let mut builder = FredBuilder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = opts.command_timeout;
            c.internal_command_timeout = opts.command_timeout;
            c.max_command_attempts = 2;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = opts.command_timeout;
            // fred's default (32) drops events of a burst of joins.
            p.broadcast_channel_capacity = EVENT_BUFFER;
        })
        // Without a policy a client stays dead after Redis restarts.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// The server's `redis_version` (on Cluster, of the node that answered).
pub(crate) async fn server_version(client: &Client) -> Result<String, StoreError> {
    let info: String = client
        .info(Some(fred::types::InfoKind::Server))
        .await
        .map_err(unavailable)?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .to_owned())
}

impl RedisStore {
    /// Connects, loads the scripts on every master and starts the event bus.
    pub async fn connect(
        opts: RedisOptions,
        clock: Arc<dyn Clock>,
        timings: Timings,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let builder = builder(&opts)?;
        let pool = builder
            .build_pool(opts.pool_size.max(1))
            .map_err(unavailable)?;
        pool.init().await.map_err(connect_error)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        let version = server_version(pool.next()).await?;
        let bus = EventBus::start(
            subscriber,
            pool.next().clone(),
            opts.prefix.clone(),
            PubSub::for_server_version(&version),
        );
        let scripts = Scripts::new();
        for s in scripts.all() {
            s.load(pool.next()).await.map_err(unavailable)?;
        }
        let keys = Keys {
            prefix: opts.prefix,
        };
        let store = Self {
            pool,
            scripts,
            keys,
            clock,
            timings_json: json!({
                "hbt": timings.heartbeat_timeout_ms,
                "idle": timings.idle_after_ms,
                "away": timings.away_after_ms,
                "bgt": timings.background_timeout_ms,
                "grace": timings.reconnect_grace_ms,
            })
            .to_string(),
            limits,
            bus,
        };
        Ok(store)
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<fred::types::Value, StoreError> {
        script
            .evalsha_with_reload::<fred::types::Value, _, _>(self.pool.next(), keys, args)
            .await
            .map_err(unavailable)
    }

    /// Runs a session script and turns its error replies into [`StoreError`]s.
    async fn session_script(
        &self,
        script: &Script,
        sid: &str,
        args: Vec<String>,
    ) -> Result<Reply, StoreError> {
        let v = self
            .eval(script, vec![self.keys.session(sid)], args)
            .await?;
        let text = v
            .as_str()
            .ok_or_else(|| StoreError::Internal("a session script returned no text".into()))?;
        let r: Reply = serde_json::from_str(&text)
            .map_err(|e| StoreError::Internal(format!("bad script reply {text}: {e}")))?;
        match r.err.as_deref() {
            None => Ok(r),
            Some("no_session") => Err(StoreError::NoSession),
            Some("stale_epoch") => Err(StoreError::StaleEpoch {
                current: r.current.unwrap_or(0),
            }),
            Some("forbidden") => Err(StoreError::Forbidden(
                "this sessionId belongs to another user".into(),
            )),
            Some("too_many_rooms") => Err(StoreError::TooManyRooms {
                limit: r.limit.unwrap_or(self.limits.max_rooms_per_session),
            }),
            // The caller knows the room, or retries.
            Some("not_joined") | Some("retry") => Ok(r),
            Some(other) => Err(StoreError::Internal(format!("script error {other}"))),
        }
    }

    fn base_args(&self, now: Millis) -> Vec<String> {
        vec![now.to_string(), self.timings_json.clone()]
    }

    async fn room_put(
        &self,
        sid: &str,
        uid: &str,
        v: u64,
        kind: &str,
        p: &RoomEv,
    ) -> Result<u64, StoreError> {
        let keys = self.keys.room(&p.room).to_vec();
        let visible = if p.visible.unwrap_or(true) { "1" } else { "0" };
        let args = vec![
            sid.to_owned(),
            uid.to_owned(),
            v.to_string(),
            kind.to_owned(),
            p.ev.clone(),
            self.keys.channel(&p.room),
            visible.to_owned(),
            p.m.clone(),
            // Missing only from a script of an older build: check soon.
            p.x.unwrap_or(0).to_string(),
            self.bus.mode().publish_command().to_owned(),
        ];
        let reply = self.eval(&self.scripts.room_put, keys, args).await?;
        let reply: Vec<i64> = reply.convert().map_err(unavailable)?;
        let (seq, list, fresh) = match reply[..] {
            [seq, list, fresh] => (seq, list, fresh == 1),
            _ => return Err(StoreError::Internal("room_put.lua: bad reply".into())),
        };
        if list > 0 {
            self.list_room(&p.room, list, fresh).await?;
        }
        Ok(seq.max(0) as u64)
    }

    /// Files a room in the rooms-by-deadline index at `at`, after a write
    /// filed one of its members there (see room_put.lua and rooms_settle.lua).
    async fn list_room(&self, room: &str, at: i64, outright: bool) -> Result<(), StoreError> {
        let ordering = (!outright).then_some(fred::types::sorted_sets::Ordering::LessThan);
        self.zadd_one(
            self.keys.rooms_due(shard_of(room)),
            None,
            ordering,
            at,
            room,
        )
        .await?;
        Ok(())
    }

    async fn room_puts(
        &self,
        sid: &str,
        uid: &str,
        v: u64,
        kind: &str,
        puts: &[RoomEv],
    ) -> Result<(), StoreError> {
        for r in join_all(puts.iter().map(|p| self.room_put(sid, uid, v, kind, p))).await {
            r?;
        }
        Ok(())
    }

    async fn room_dels(&self, sid: &str, v: u64, dels: &[RoomEv]) -> Result<(), StoreError> {
        let calls = dels.iter().map(|d| {
            let keys = self.keys.room(&d.room).to_vec();
            let args = vec![
                sid.to_owned(),
                v.to_string(),
                d.ev.clone(),
                self.keys.channel(&d.room),
                self.bus.mode().publish_command().to_owned(),
            ];
            self.eval(&self.scripts.room_del, keys, args)
        });
        for r in join_all(calls).await {
            r?;
        }
        Ok(())
    }

    /// Records the session in its user's index; refused (`TooManySessions`)
    /// when it is new to the user and the user is at the limit.
    async fn user_put(&self, uid: &str, sid: &str, v: u64) -> Result<(), StoreError> {
        let r = self
            .eval(
                &self.scripts.user_put,
                vec![self.keys.user(uid)],
                vec![
                    sid.to_owned(),
                    v.to_string(),
                    self.limits.max_sessions_per_user.to_string(),
                ],
            )
            .await?;
        if r.as_i64() == Some(-1) {
            return Err(StoreError::TooManySessions {
                limit: self.limits.max_sessions_per_user,
            });
        }
        self.zadd_one(self.keys.online(shard_of(uid)), None, None, 0, uid)
            .await?;
        Ok(())
    }

    async fn user_del(&self, uid: &str, sid: &str, v: u64) -> Result<(), StoreError> {
        let left = self
            .eval(
                &self.scripts.user_del,
                vec![self.keys.user(uid)],
                vec![sid.to_owned(), v.to_string()],
            )
            .await?;
        if left.as_u64() == Some(0) {
            let shard = self.keys.online(shard_of(uid));
            let _: () = self.pool.zrem(&shard, uid).await.map_err(unavailable)?;
            // A hello of the same user may have raced the removal: put it back.
            let n: u64 = self
                .pool
                .hlen(self.keys.user(uid))
                .await
                .map_err(unavailable)?;
            if n > 0 {
                let _: () = self
                    .pool
                    .zadd(&shard, None, None, false, false, (0.0, uid))
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    async fn index(&self, sid: &str, at: Option<i64>) -> Result<(), StoreError> {
        if let Some(at) = at {
            self.zadd_one(self.keys.deadlines(shard_of(sid)), None, None, at, sid)
                .await?;
        }
        Ok(())
    }

    /// ZADD of one member, as every index here files one entry at a time.
    async fn zadd_one(
        &self,
        key: String,
        options: Option<SetOptions>,
        ordering: Option<fred::types::sorted_sets::Ordering>,
        score: i64,
        member: &str,
    ) -> Result<(), StoreError> {
        let _: () = self
            .pool
            .zadd(key, options, ordering, false, false, (score as f64, member))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The live facts of sessions, read in one pipelined batch.
    async fn sessions(
        &self,
        ids: &[String],
    ) -> Result<Vec<Option<BTreeMap<String, String>>>, StoreError> {
        let reads = ids.iter().map(|sid| {
            let key = self.keys.session(sid);
            async move {
                let m: BTreeMap<String, String> =
                    self.pool.hgetall(key).await.map_err(unavailable)?;
                Ok::<_, StoreError>(
                    (!m.is_empty() && m.get("dead").map(String::as_str) != Some("1")).then_some(m),
                )
            }
        });
        join_all(reads).await.into_iter().collect()
    }

    fn check_state_len(&self, size: usize) -> Result<(), StoreError> {
        if size > self.limits.max_state_bytes {
            return Err(StoreError::StateTooLarge {
                size,
                limit: self.limits.max_state_bytes,
            });
        }
        Ok(())
    }

    /// The live sessions of a user (entries whose session is gone are skipped).
    async fn user_members(&self, uid: &str) -> Result<Vec<Member>, StoreError> {
        let sids: BTreeMap<String, String> = self
            .pool
            .hgetall(self.keys.user(uid))
            .await
            .map_err(unavailable)?;
        let ids: Vec<String> = sids.into_keys().collect();
        let facts = self.sessions(&ids).await?;
        Ok(ids
            .iter()
            .zip(facts)
            .filter_map(|(sid, f)| f.and_then(|f| member_of(sid, &f)))
            .collect())
    }

    /// Re-derives one session found due (in the deadline index, or as a
    /// member of `room` in its expiry index) and applies what follows:
    /// status changes, removal, the next entry in the deadline index.
    /// Says whether the session still holds `room`, and until when the
    /// room need not check again.
    async fn expire_one(
        &self,
        sid: &str,
        room: Option<&str>,
        now: Millis,
        term: u64,
        report: &mut SweepReport,
    ) -> Result<Held, StoreError> {
        let mut args = self.base_args(now);
        args.push(room.unwrap_or_default().to_owned());
        args.push(term.to_string());
        let r = self.session_script(&self.scripts.expire, sid, args).await?;
        if r.fenced {
            report.fenced += 1;
            return Ok(Held::Fenced);
        }
        let shard = self.keys.deadlines(shard_of(sid));
        if r.gone {
            let _: () = self.pool.zrem(&shard, sid).await.map_err(unavailable)?;
            return Ok(Held::No);
        }
        if r.expired.as_ref().and_then(|e| e.as_bool()) == Some(true) {
            self.room_dels(sid, r.v, &r.dels).await?;
            self.user_del(&r.uid, sid, r.v).await?;
            let _: () = self.pool.zrem(&shard, sid).await.map_err(unavailable)?;
            report.expired += 1;
            return Ok(Held::No);
        }
        if r.changed {
            self.room_puts(sid, &r.uid, r.v, "status", &r.puts).await?;
            report.status_changes += 1;
        }
        self.index(sid, r.next).await?;
        Ok(match (r.inroom, r.x) {
            (true, Some(at)) => Held::Until(at),
            _ => Held::No,
        })
    }

    /// [`expire_one`](Self::expire_one) for a session found in the deadline
    /// index, with a report of its own (sweeps run several at once).
    async fn expire_alone(
        &self,
        sid: &str,
        now: Millis,
        term: u64,
    ) -> Result<SweepReport, StoreError> {
        let mut r = SweepReport::default();
        self.expire_one(sid, None, now, term, &mut r).await?;
        Ok(r)
    }

    /// Checks the due members of one room (see room_due.lua) and moves the
    /// room's entry in the rooms-by-deadline index (see rooms_settle.lua).
    async fn sweep_room(
        &self,
        shard: u32,
        room: &str,
        seen: &str,
        now: Millis,
        term: u64,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let keys = self.keys.room(room);
        let due: Vec<String> = self
            .eval(
                &self.scripts.room_due,
                vec![keys[0].clone(), keys[4].clone()],
                vec![now.to_string(), ROOM_BATCH.to_string()],
            )
            .await?
            .convert()
            .map_err(unavailable)?;
        for pair in due.chunks_exact(2) {
            let (sid, entry) = (&pair[0], &pair[1]);
            match self.expire_one(sid, Some(room), now, term, report).await? {
                Held::Until(at) => self.refile_member(room, sid, at).await?,
                Held::No => {
                    if self.drop_member(room, sid, entry, now).await? {
                        report.orphans += 1;
                    }
                }
                // A newer sweeper owns it: leave the room to that one.
                Held::Fenced => return Ok(()),
            }
        }
        // Move the room's entry to its earliest member, then look again: a
        // member filed meanwhile lowers it back (rooms_settle.lua says why).
        let earliest = self.earliest_in_room(&keys[4]).await?;
        self.eval(
            &self.scripts.rooms_settle,
            vec![self.keys.rooms_due(shard)],
            vec![
                room.to_owned(),
                seen.to_owned(),
                earliest.map(|e| e.to_string()).unwrap_or_default(),
            ],
        )
        .await?;
        if let Some(again) = self.earliest_in_room(&keys[4]).await? {
            if earliest.is_none_or(|e| again < e) {
                self.list_room(room, again, false).await?;
            }
        }
        Ok(())
    }

    async fn earliest_in_room(&self, expiry: &str) -> Result<Option<i64>, StoreError> {
        let first: Vec<(String, f64)> = self
            .pool
            .zrange(expiry, 0, 0, None, false, None, true)
            .await
            .map_err(unavailable)?;
        Ok(first.first().map(|(_, score)| *score as i64))
    }

    /// Files a live member again in its room's expiry index (only later, and
    /// only while it is a member).
    async fn refile_member(&self, room: &str, sid: &str, at: i64) -> Result<(), StoreError> {
        self.zadd_one(
            self.keys.room(room)[4].clone(),
            Some(SetOptions::XX),
            Some(fred::types::sorted_sets::Ordering::GreaterThan),
            at,
            sid,
        )
        .await?;
        Ok(())
    }

    /// Removes a member its session no longer holds, unless the room has
    /// heard from the session since `entry` was read (room_del.lua applies a
    /// removal only over an older projection). Observers get an `expire`.
    async fn drop_member(
        &self,
        room: &str,
        sid: &str,
        entry: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut parts = entry.splitn(3, '|');
        let (Some(version), Some(uid), Some(json)) = (
            parts.next().and_then(|v| v.parse::<u64>().ok()),
            parts.next(),
            parts.next(),
        ) else {
            return Err(StoreError::Internal(format!(
                "unreadable member of room {room}: {entry}"
            )));
        };
        #[derive(Deserialize)]
        struct Owner {
            #[serde(default)]
            e: u64,
            #[serde(default)]
            n: String,
        }
        let owner: Owner = serde_json::from_str(json).unwrap_or(Owner {
            e: 0,
            n: String::new(),
        });
        let ev = json!({
            "v": 1, "type": "expire", "roomId": room, "seq": "%SEQ%", "userId": uid,
            "sessionId": sid, "nodeId": owner.n, "epoch": owner.e, "status": "offline", "ts": now,
        })
        .to_string()
        .replace("\"%SEQ%\"", "%SEQ%");
        let seq = self
            .eval(
                &self.scripts.room_del,
                self.keys.room(room).to_vec(),
                vec![
                    sid.to_owned(),
                    (version + 1).to_string(),
                    ev,
                    self.keys.channel(room),
                    self.bus.mode().publish_command().to_owned(),
                ],
            )
            .await?;
        Ok(seq.as_u64().unwrap_or(0) > 0)
    }
}

/// What a room keeps of a member (see `member_json` in lua/lib/prelude.lua).
#[derive(Deserialize)]
struct Projection {
    #[serde(default)]
    h: String,
    st: String,
    #[serde(default)]
    hb: i64,
    #[serde(default)]
    la: i64,
    #[serde(default)]
    su: i64,
    #[serde(default)]
    s: Option<JsonMap>,
}

/// A member from its entry in a room's members hash: `<version>|<userId>|<JSON>`.
fn projected_member(sid: &str, entry: &str) -> Option<Member> {
    let mut parts = entry.splitn(3, '|');
    let (_version, uid, json) = (parts.next()?, parts.next()?, parts.next()?);
    let p: Projection = serde_json::from_str(json).ok()?;
    Some(Member {
        session_id: SessionId::new(sid).ok()?,
        user_id: UserId::new(uid).ok()?,
        handle: (!p.h.is_empty()).then_some(p.h),
        status: SessionStatus::parse(&p.st)?,
        last_heartbeat_at: p.hb,
        last_active_at: p.la,
        state: p.s,
        state_updated_at: p.su,
    })
}

/// A member from the session's own hash (who's-online: no room, no state).
fn member_of(sid: &str, f: &BTreeMap<String, String>) -> Option<Member> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Some(Member {
        session_id: SessionId::new(sid).ok()?,
        user_id: UserId::new(f.get("userId")?).ok()?,
        handle: f.get("h").filter(|h| !h.is_empty()).cloned(),
        status: SessionStatus::parse(f.get("st")?)?,
        last_heartbeat_at: num("lastHeartbeatAt"),
        last_active_at: num("la"),
        state: None,
        state_updated_at: 0,
    })
}

#[async_trait]
impl PresenceStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn hello(&self, req: Hello) -> Result<Claimed, StoreError> {
        let now = self.now();
        let sid = req.session_id.unwrap_or_else(new_session_id);
        let mut args = self.base_args(now);
        args.extend([
            sid.to_string(),
            req.user_id.to_string(),
            req.handle.unwrap_or_default(),
            req.meta
                .map(|m| serde_json::Value::Object(m).to_string())
                .unwrap_or_default(),
            req.activity.as_str().to_owned(),
            req.node_id.to_string(),
            first_epoch(now).to_string(),
        ]);
        let r = self
            .session_script(&self.scripts.claim, sid.as_str(), args)
            .await?;
        if let Some(exp) = r.expired.clone() {
            if let Ok(exp) = serde_json::from_value::<ExpiredSession>(exp) {
                self.room_dels(sid.as_str(), exp.v, &exp.dels).await?;
                self.user_del(&exp.uid, sid.as_str(), exp.v).await?;
            }
        }
        if let Err(e) = self.user_put(&r.uid, sid.as_str(), r.v).await {
            if matches!(e, StoreError::TooManySessions { .. }) {
                // Undo the claim: the new session never shows anywhere.
                let me = SessionRef {
                    session_id: sid.clone(),
                    epoch: r.e,
                };
                if let Err(undo) = self.end(&me).await {
                    tracing::warn!(session_id = %sid, error = %undo, "cannot undo a refused session");
                }
            }
            return Err(e);
        }
        self.room_puts(sid.as_str(), &r.uid, r.v, "status", &r.puts)
            .await?;
        self.index(sid.as_str(), r.ix).await?;
        let rooms = if r.resumed {
            r.puts
                .iter()
                .filter_map(|p| RoomId::new(&p.room).ok())
                .collect()
        } else {
            vec![]
        };
        Ok(Claimed {
            session_id: sid,
            epoch: r.e,
            resumed: r.resumed,
            rooms,
        })
    }

    async fn join(
        &self,
        s: &SessionRef,
        room: &RoomId,
        state: Option<JsonMap>,
    ) -> Result<Joined, StoreError> {
        let state_json = state
            .as_ref()
            .map(|m| serde_json::Value::Object(m.clone()).to_string());
        if let Some(j) = &state_json {
            self.check_state_len(j.len())?;
        }
        let mut args = self.base_args(self.now());
        args.extend([
            s.epoch.to_string(),
            room.to_string(),
            if state_json.is_some() { "1" } else { "0" }.to_owned(),
            state_json.unwrap_or_default(),
            self.limits.max_rooms_per_session.to_string(),
        ]);
        let r = self
            .session_script(&self.scripts.join, s.session_id.as_str(), args)
            .await?;
        let kind = if r.already && r.changed {
            "update"
        } else {
            "join"
        };
        let put = r
            .put
            .as_ref()
            .ok_or_else(|| StoreError::Internal("join.lua returned no projection".into()))?;
        let mut seq = self
            .room_put(s.session_id.as_str(), &r.uid, r.v, kind, put)
            .await?;
        if seq == 0 {
            let [_, _, seq_key, _, _] = self.keys.room(room.as_str());
            let cur: Option<u64> = self.pool.get(seq_key).await.map_err(unavailable)?;
            seq = cur.unwrap_or(0);
        }
        Ok(Joined {
            seq,
            already: r.already,
        })
    }

    async fn heartbeat(
        &self,
        s: &SessionRef,
        activity: Option<Activity>,
    ) -> Result<(), StoreError> {
        let mut args = self.base_args(self.now());
        args.extend([
            s.epoch.to_string(),
            activity.map(Activity::as_str).unwrap_or("").to_owned(),
        ]);
        let r = self
            .session_script(&self.scripts.heartbeat, s.session_id.as_str(), args)
            .await?;
        if r.changed {
            self.room_puts(s.session_id.as_str(), &r.uid, r.v, "status", &r.puts)
                .await?;
        }
        self.index(s.session_id.as_str(), r.ix).await
    }

    async fn update_state(
        &self,
        s: &SessionRef,
        room: &RoomId,
        patch: JsonMap,
    ) -> Result<(), StoreError> {
        let key = self.keys.session(s.session_id.as_str());
        let field = format!("r:{room}");
        for _ in 0..STATE_RETRIES {
            let (v, cur): (Option<String>, Option<String>) = self
                .pool
                .hmget(&key, vec!["v", field.as_str()])
                .await
                .map_err(unavailable)?;
            let mut next: JsonMap = match cur.as_deref() {
                Some(raw) if !raw.is_empty() => serde_json::from_str(raw).unwrap_or_default(),
                _ => JsonMap::new(),
            };
            for (k, val) in &patch {
                if val.is_null() {
                    next.remove(k);
                } else {
                    next.insert(k.clone(), val.clone());
                }
            }
            let merged = if next.is_empty() {
                String::new()
            } else {
                serde_json::Value::Object(next).to_string()
            };
            // Refused only if the caller may write at all (else the script says why not).
            if cur.is_some() {
                self.check_state_len(merged.len())?;
            }
            let mut args = self.base_args(self.now());
            args.extend([
                s.epoch.to_string(),
                room.to_string(),
                v.unwrap_or_default(),
                merged,
            ]);
            let r = self
                .session_script(&self.scripts.state, s.session_id.as_str(), args)
                .await?;
            match r.err.as_deref() {
                Some("retry") => continue,
                Some(_) => return Err(StoreError::NotJoined(room.clone())),
                None => {}
            }
            if let Some(put) = r.put.as_ref().filter(|_| r.changed) {
                self.room_put(s.session_id.as_str(), &r.uid, r.v, "update", put)
                    .await?;
            }
            return Ok(());
        }
        Err(StoreError::Unavailable(
            "state update kept conflicting; retry".into(),
        ))
    }

    async fn leave(&self, s: &SessionRef, room: &RoomId) -> Result<(), StoreError> {
        let mut args = self.base_args(self.now());
        args.extend([s.epoch.to_string(), room.to_string()]);
        let r = self
            .session_script(&self.scripts.leave, s.session_id.as_str(), args)
            .await?;
        if r.err.is_some() {
            return Err(StoreError::NotJoined(room.clone()));
        }
        self.room_dels(s.session_id.as_str(), r.v, &r.dels).await
    }

    async fn end(&self, s: &SessionRef) -> Result<Vec<RoomId>, StoreError> {
        let mut args = self.base_args(self.now());
        args.extend([s.epoch.to_string(), String::new()]);
        let r = self
            .session_script(&self.scripts.leave, s.session_id.as_str(), args)
            .await?;
        self.room_dels(s.session_id.as_str(), r.v, &r.dels).await?;
        self.user_del(&r.uid, s.session_id.as_str(), r.v).await?;
        let _: () = self
            .pool
            .zrem(
                self.keys.deadlines(shard_of(s.session_id.as_str())),
                s.session_id.as_str(),
            )
            .await
            .map_err(unavailable)?;
        Ok(r.dels
            .iter()
            .filter_map(|d| RoomId::new(&d.room).ok())
            .collect())
    }

    async fn disconnect(&self, s: &SessionRef) -> Result<(), StoreError> {
        let mut args = self.base_args(self.now());
        args.push(s.epoch.to_string());
        let r = self
            .session_script(&self.scripts.disconnect, s.session_id.as_str(), args)
            .await?;
        if r.changed {
            self.room_puts(s.session_id.as_str(), &r.uid, r.v, "status", &r.puts)
                .await?;
        }
        self.index(s.session_id.as_str(), r.ix).await
    }

    async fn sweep(&self, term: u64) -> Result<SweepReport, StoreError> {
        let now = self.now();
        let mut report = SweepReport::default();
        // The shards of each index are read at once: an idle sweep costs two
        // round trips, not one per shard.
        let due = futures::future::try_join_all((0..SHARDS).map(|shard| {
            self.pool.zrangebyscore::<Vec<String>, _, _, _>(
                self.keys.deadlines(shard),
                "-inf",
                now as f64,
                false,
                Some((0, SWEEP_BATCH)),
            )
        }))
        .await
        .map_err(unavailable)?;
        // Sessions are independent: check a batch of them at once, so that a
        // crashed node's many sessions all go close to their deadline rather
        // than one round trip after another. A fenced reply means a sweeper
        // with a newer term has been here: this one is no longer the leader
        // and stops (its calls still in flight are fenced as well).
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut next = due.iter().flatten();
        loop {
            while pending.len() < SWEEP_CONCURRENCY && report.fenced == 0 {
                let Some(sid) = next.next() else { break };
                pending.push(self.expire_alone(sid, now, term));
            }
            let Some(r) = pending.next().await else { break };
            let r = r?;
            report.expired += r.expired;
            report.status_changes += r.status_changes;
            report.fenced += r.fenced;
        }
        if report.fenced > 0 {
            return Ok(report);
        }
        let due = futures::future::try_join_all((0..SHARDS).map(|shard| {
            self.pool.zrangebyscore::<Vec<(String, f64)>, _, _, _>(
                self.keys.rooms_due(shard),
                "-inf",
                now as f64,
                true,
                Some((0, ROOM_BATCH)),
            )
        }))
        .await
        .map_err(unavailable)?;
        for (shard, rooms) in due.into_iter().enumerate() {
            for (room, seen) in rooms {
                let seen = (seen as i64).to_string();
                self.sweep_room(shard as u32, &room, &seen, now, term, &mut report)
                    .await?;
                if report.fenced > 0 {
                    return Ok(report);
                }
            }
        }
        Ok(report)
    }

    async fn room_view(&self, room: &RoomId) -> Result<RoomView, StoreError> {
        let now = self.now();
        let [m, _, seq, _, _] = self.keys.room(room.as_str());
        let raw = self
            .eval(&self.scripts.room_read, vec![m, seq], vec![])
            .await?;
        let items: Vec<fred::types::Value> = raw.into_array();
        let mut it = items.into_iter();
        let seq = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let mut members = Vec::new();
        while let (Some(sid), Some(val)) = (it.next(), it.next()) {
            let (Some(sid), Some(val)) = (sid.as_string(), val.as_string()) else {
                continue;
            };
            match projected_member(&sid, &val) {
                Some(m) => members.push(m),
                None => {
                    tracing::warn!(room_id = %room, session_id = %sid, "unreadable member projection")
                }
            }
        }
        Ok(RoomView::build(room.clone(), seq, now, members))
    }

    async fn room_stats(&self, room: &RoomId) -> Result<RoomStats, StoreError> {
        let [m, u, _, _, _] = self.keys.room(room.as_str());
        let (sessions, users): (u64, u64) =
            tokio::try_join!(async { self.pool.hlen::<u64, _>(m).await }, async {
                self.pool.hlen::<u64, _>(u).await
            })
            .map_err(unavailable)?;
        Ok(RoomStats { sessions, users })
    }

    async fn whos_online(&self, page: Page) -> Result<Online, StoreError> {
        let now = self.now();
        let min = match &page.after {
            Some(u) => format!("({u}"),
            None => "-".to_owned(),
        };
        let want = page.limit as i64 + 1;
        let reads = (0..SHARDS).map(|k| {
            let key = self.keys.online(k);
            let min = min.clone();
            async move {
                self.pool
                    .zrangebylex::<Vec<String>, _, _, _>(key, min, "+", Some((0, want)))
                    .await
            }
        });
        let mut users = BTreeSet::new();
        for r in join_all(reads).await {
            users.extend(r.map_err(unavailable)?);
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
            out.insert(uid.clone(), derive_user(signals));
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.pool.ping(None).await.map_err(unavailable)?;
        // Without its subscription a node would serve calls but send no diffs.
        if !self.bus.is_connected() {
            return Err(StoreError::Unavailable(
                "the subscription to presence events is reconnecting".into(),
            ));
        }
        Ok(())
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

    fn signals(&self) -> broadcast::Receiver<Signal> {
        self.bus.signals()
    }

    async fn acquire_lease(&self, node: &NodeId, lease_ms: Millis) -> Result<Lease, StoreError> {
        let v = self
            .eval(
                &self.scripts.lease,
                self.keys.lease().to_vec(),
                vec![
                    node.to_string(),
                    self.now().to_string(),
                    lease_ms.max(1).to_string(),
                ],
            )
            .await?;
        let text = v
            .as_str()
            .ok_or_else(|| StoreError::Internal("lease.lua returned no text".into()))?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Internal(format!("bad lease {text}: {e}")))
    }

    async fn release_lease(&self, node: &NodeId, term: u64) -> Result<(), StoreError> {
        self.eval(
            &self.scripts.lease_release,
            self.keys.lease().to_vec(),
            vec![node.to_string(), term.to_string()],
        )
        .await?;
        Ok(())
    }

    async fn current_lease(&self) -> Result<Option<Lease>, StoreError> {
        let [key, _] = self.keys.lease();
        let text: Option<String> = self.pool.get(key).await.map_err(unavailable)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn register_node(&self, node: &NodeInfo, ttl_ms: Millis) -> Result<(), StoreError> {
        let json = serde_json::to_string(node).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.eval(
            &self.scripts.node_put,
            vec![self.keys.nodes(), self.keys.nodes_info()],
            vec![
                node.node_id.to_string(),
                json,
                self.now().to_string(),
                ttl_ms.max(1).to_string(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn deregister_node(&self, node_id: &NodeId) -> Result<(), StoreError> {
        let _: () = self
            .pool
            .zrem(self.keys.nodes(), node_id.as_str())
            .await
            .map_err(unavailable)?;
        let _: () = self
            .pool
            .hdel(self.keys.nodes_info(), node_id.as_str())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let raw: Vec<String> = self
            .eval(
                &self.scripts.nodes_read,
                vec![self.keys.nodes(), self.keys.nodes_info()],
                vec![self.now().to_string()],
            )
            .await?
            .convert()
            .map_err(unavailable)?;
        Ok(raw
            .iter()
            .filter_map(|j| serde_json::from_str::<NodeInfo>(j).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_become_cluster_urls() {
        assert_eq!(
            normalize_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            normalize_url("redis://a:1,b:2,c:3"),
            "redis-cluster://a:1?node=b:2&node=c:3"
        );
        assert_eq!(
            normalize_url("redis-cluster://u:p@a:1,b:2"),
            "redis-cluster://u:p@a:1?node=b:2"
        );
        assert_eq!(
            normalize_url("rediss://a:1,b:2"),
            "rediss-cluster://a:1?node=b:2"
        );
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("alice"), shard_of("alice"));
        let used: BTreeSet<u32> = (0..200).map(|i| shard_of(&format!("user-{i}"))).collect();
        assert_eq!(used.len(), SHARDS as usize);
    }

    mod standalone {
        use std::sync::{Arc, OnceLock};

        use presence_testkit::RedisServer;

        use super::*;
        use crate::conformance::Env;

        fn server() -> &'static RedisServer {
            static SERVER: OnceLock<RedisServer> = OnceLock::new();
            SERVER.get_or_init(|| RedisServer::start().expect("redis-server starts"))
        }

        async fn make(env: Env) -> Arc<dyn PresenceStore> {
            let mut opts = RedisOptions::new(&server().url());
            opts.prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let store = RedisStore::connect(opts, Arc::new(env.clock), env.timings, env.limits)
                .await
                .expect("connects");
            Arc::new(store)
        }

        conformance_suite!(make);

        /// A store on its own server (the command counts are the server's),
        /// and a connected session of user `uid`.
        async fn own_store(uid: &str) -> (RedisServer, RedisStore, SessionRef) {
            let (own, store, me, _) = own_store_clocked(uid).await;
            (own, store, me)
        }

        /// [`own_store`], with the clock the store reads.
        async fn own_store_clocked(
            uid: &str,
        ) -> (
            RedisServer,
            RedisStore,
            SessionRef,
            Arc<presence_core::ManualClock>,
        ) {
            let own = RedisServer::start().unwrap();
            let clock = Arc::new(presence_core::ManualClock::new(crate::conformance::T0));
            let store = RedisStore::connect(
                RedisOptions::new(&own.url()),
                clock.clone(),
                Timings::default(),
                Limits::default(),
            )
            .await
            .unwrap();
            let me = hello(&store, uid).await;
            (own, store, me, clock)
        }

        /// Lets `ms` pass in steps of 5 s, `alive` heartbeating and the
        /// store sweeping at each step; returns the sweeps' sums.
        async fn live_through(
            store: &RedisStore,
            clock: &presence_core::ManualClock,
            alive: &[&SessionRef],
            ms: i64,
        ) -> SweepReport {
            let mut sum = SweepReport::default();
            for _ in 0..ms / 5_000 {
                clock.advance(5_000);
                for s in alive {
                    store.heartbeat(s, Some(Activity::Active)).await.unwrap();
                }
                let r = store.sweep(1).await.unwrap();
                sum.expired += r.expired;
                sum.status_changes += r.status_changes;
                sum.orphans += r.orphans;
            }
            sum
        }

        fn zcard_all(port: u16, key: impl Fn(u32) -> String) -> u64 {
            (0..SHARDS)
                .map(|k| {
                    presence_testkit::redis_cli(port, &["ZCARD", &key(k)])
                        .unwrap()
                        .trim()
                        .parse::<u64>()
                        .unwrap()
                })
                .sum()
        }

        #[tokio::test]
        async fn a_session_is_a_hash_with_a_ttl_that_heartbeats_push_back() {
            let (own, store, me, clock) = own_store_clocked("alice").await;
            let key = store.keys.session(me.session_id.as_str());
            let field = |f: &str| {
                presence_testkit::redis_cli(own.port(), &["HGET", &key, f])
                    .unwrap()
                    .trim()
                    .to_owned()
            };
            let pttl = || -> i64 {
                presence_testkit::redis_cli(own.port(), &["PTTL", &key])
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            assert_eq!(field("userId"), "alice");
            assert_eq!(field("epoch"), me.epoch.to_string());
            assert_eq!(field("lastHeartbeatAt"), crate::conformance::T0.to_string());
            // Removal deadline (heartbeat timeout + grace) plus a minute.
            let t = Timings::default();
            let full = t.heartbeat_timeout_ms + t.reconnect_grace_ms + 60_000;
            let first = pttl();
            assert!(first > full - 5_000 && first <= full, "{first}");
            clock.advance(10_000);
            store.heartbeat(&me, Some(Activity::Active)).await.unwrap();
            assert_eq!(
                field("lastHeartbeatAt"),
                (crate::conformance::T0 + 10_000).to_string()
            );
            let pushed = pttl();
            assert!(pushed > full - 5_000 && pushed <= full, "{pushed}");
        }

        #[tokio::test]
        async fn scripts_are_loaded_again_after_a_script_flush() {
            let (own, store, me) = own_store("flush").await;
            let room = RoomId::new("flush").unwrap();
            store.join(&me, &room, None).await.unwrap();
            // What a restarted or failed-over Redis looks like to the scripts.
            presence_testkit::redis_cli(own.port(), &["SCRIPT", "FLUSH"]).unwrap();
            presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();
            store.heartbeat(&me, Some(Activity::Idle)).await.unwrap();
            store
                .update_state(&me, &room, serde_json::from_str(r#"{"a":1}"#).unwrap())
                .await
                .unwrap();
            let view = store.room_view(&room).await.unwrap();
            assert_eq!(view.sessions.len(), 1);
            let c = calls(own.port());
            let loads = c
                .iter()
                .find(|(n, _)| n == "script|load")
                .map(|x| x.1)
                .unwrap_or(0);
            assert!(
                loads >= 3,
                "each script is loaded again on its NOSCRIPT: {c:?}"
            );
        }

        #[tokio::test]
        async fn a_member_whose_session_vanished_leaves_its_room() {
            let (own, store, alice, clock) = own_store_clocked("alice").await;
            let bob = hello(&store, "bob").await;
            let room = RoomId::new("orphans").unwrap();
            store.join(&alice, &room, None).await.unwrap();
            store.join(&bob, &room, None).await.unwrap();
            assert_eq!(zcard_all(own.port(), |k| store.keys.rooms_due(k)), 1);
            store.follow_room(&room).await.unwrap();
            let mut rx = store.events();
            // Alice's session hash is lost (its TTL ran out while no node
            // swept, say): the deadline index alone cannot tell her rooms.
            let key = store.keys.session(alice.session_id.as_str());
            presence_testkit::redis_cli(own.port(), &["DEL", &key]).unwrap();
            presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();
            // Past her entry in the room's expiry index (removal deadline
            // + 60 s = 95 s); bob stays alive all along.
            let sum = live_through(&store, &clock, &[&bob], 100_000).await;
            assert_eq!(sum.orphans, 1);
            assert_eq!(sum.expired, 0);
            let view = store.room_view(&room).await.unwrap();
            let left: Vec<_> = view.sessions.keys().cloned().collect();
            assert_eq!(left, vec![bob.session_id.clone()], "bob stays, alice goes");
            assert_eq!(store.room_stats(&room).await.unwrap().sessions, 1);
            let ev = loop {
                let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .expect("alice's expire event")
                    .unwrap();
                if ev.session_id == alice.session_id {
                    break ev;
                }
            };
            assert_eq!(ev.kind, presence_core::EventKind::Expire);
            assert_eq!(ev.epoch, alice.epoch);
            assert_eq!(ev.node_id.as_str(), "n");
            // Found through the indexes: no key was ever listed.
            let c = calls(own.port());
            assert!(!c.iter().any(|(n, _)| n == "keys" || n == "scan"), "{c:?}");
            // Bob's entry was filed again while he lived; once he is gone
            // and the room is empty, its index entries go too.
            store.end(&bob).await.unwrap();
            live_through(&store, &clock, &[], 100_000).await;
            assert_eq!(zcard_all(own.port(), |k| store.keys.rooms_due(k)), 0);
            let x = &store.keys.room(room.as_str())[4];
            let exists = presence_testkit::redis_cli(own.port(), &["EXISTS", x]).unwrap();
            assert_eq!(exists.trim(), "0");
        }

        #[tokio::test]
        async fn a_removal_that_never_reached_the_room_is_repaired() {
            let (own, store, alice, clock) = own_store_clocked("alice").await;
            let room = RoomId::new("lost-leave").unwrap();
            store.join(&alice, &room, None).await.unwrap();
            // The session side of a leave ran, then its node died before
            // telling the room.
            let key = store.keys.session(alice.session_id.as_str());
            presence_testkit::redis_cli(own.port(), &["HDEL", &key, "r:lost-leave"]).unwrap();
            assert_eq!(store.room_stats(&room).await.unwrap().sessions, 1);
            let sum = live_through(&store, &clock, &[&alice], 100_000).await;
            assert_eq!(sum.orphans, 1);
            assert_eq!(store.room_stats(&room).await.unwrap().sessions, 0);
            // Alice herself is alive and online.
            let online = store
                .whos_online(Page {
                    limit: 10,
                    after: None,
                })
                .await
                .unwrap();
            assert_eq!(online.entries.users.len(), 1);
        }

        #[tokio::test]
        async fn members_that_live_on_are_never_dropped() {
            let (_own, store, alice, clock) = own_store_clocked("alice").await;
            let rooms: Vec<RoomId> = (0..3)
                .map(|i| RoomId::new(&format!("long-{i}")).unwrap())
                .collect();
            for r in &rooms {
                store.join(&alice, r, None).await.unwrap();
            }
            // Ten minutes: each room checks her session several times.
            let sum = live_through(&store, &clock, &[&alice], 600_000).await;
            assert_eq!((sum.orphans, sum.expired), (0, 0));
            for r in &rooms {
                assert_eq!(store.room_stats(r).await.unwrap().sessions, 1);
            }
        }

        async fn hello(store: &RedisStore, uid: &str) -> SessionRef {
            let c = store
                .hello(Hello {
                    session_id: None,
                    user_id: UserId::new(uid).unwrap(),
                    handle: None,
                    meta: None,
                    activity: Activity::Active,
                    node_id: presence_core::NodeId::new("n").unwrap(),
                })
                .await
                .unwrap();
            SessionRef {
                session_id: c.session_id,
                epoch: c.epoch,
            }
        }

        /// The server's command counts since the last `CONFIG RESETSTAT`,
        /// sorted (commands run inside scripts count too).
        fn calls(port: u16) -> Vec<(String, u64)> {
            let stats = presence_testkit::redis_cli(port, &["INFO", "commandstats"]).unwrap();
            let mut calls: Vec<(String, u64)> = stats
                .lines()
                .filter_map(|l| {
                    let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                    let n = rest
                        .split(',')
                        .next()?
                        .strip_prefix("calls=")?
                        .parse()
                        .ok()?;
                    Some((name.to_owned(), n))
                })
                .filter(|(name, _)| !matches!(name.as_str(), "config|resetstat" | "info"))
                .collect();
            calls.sort();
            calls
        }

        fn counts(list: &[(&str, u64)]) -> Vec<(String, u64)> {
            list.iter().map(|(c, n)| (c.to_string(), *n)).collect()
        }

        #[tokio::test]
        async fn a_heartbeat_is_one_evalsha() {
            let (own, store, me) = own_store("hb").await;
            store
                .join(&me, &RoomId::new("big").unwrap(), None)
                .await
                .unwrap();
            presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();
            for _ in 0..100 {
                store.heartbeat(&me, Some(Activity::Active)).await.unwrap();
            }
            // One EVALSHA each; inside it one read of the few fields that
            // decide the status (not the whole hash: its rooms and states),
            // two writes of the session hash, and nothing per room.
            assert_eq!(
                calls(own.port()),
                counts(&[
                    ("evalsha", 100),
                    ("hmget", 100),
                    ("hset", 100),
                    ("pexpire", 100)
                ])
            );
        }

        #[tokio::test]
        async fn a_burst_of_events_reaches_subscribers_whole() {
            let (_own, store, _) = own_store("burst").await;
            for r in 0..30 {
                store
                    .follow_room(&RoomId::new(&format!("burst-{r}")).unwrap())
                    .await
                    .unwrap();
            }
            let mut rx = store.events();
            let mut sessions = Vec::new();
            for i in 0..10 {
                sessions.push(hello(&store, &format!("b{i}")).await);
            }
            let pairs: Vec<(&SessionRef, RoomId)> = sessions
                .iter()
                .flat_map(|s| {
                    (0..30).map(move |r| (s, RoomId::new(&format!("burst-{r}")).unwrap()))
                })
                .collect();
            let joins = pairs.iter().map(|(s, room)| store.join(s, room, None));
            for r in join_all(joins).await {
                r.unwrap();
            }
            let mut got = 0;
            while got < 300 {
                match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                    Ok(Ok(_)) => got += 1,
                    other => panic!("after {got} events: {other:?}"),
                }
            }
            // And the stream still flows afterwards.
            store
                .leave(&sessions[0], &RoomId::new("burst-0").unwrap())
                .await
                .unwrap();
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
            assert!(matches!(ev, Ok(Ok(_))), "{ev:?}");
        }

        #[tokio::test]
        async fn a_lost_subscription_comes_back_and_asks_for_a_resync() {
            let (own, store, me) = own_store("resub").await;
            let room = RoomId::new("resub").unwrap();
            store.follow_room(&room).await.unwrap();
            let mut rx = store.events();
            let mut resyncs = store.resyncs();
            assert_eq!(*resyncs.borrow_and_update(), 0);
            // Only the subscriber's connection goes: the pool stays up.
            let killed =
                presence_testkit::redis_cli(own.port(), &["CLIENT", "KILL", "TYPE", "pubsub"])
                    .unwrap();
            assert_eq!(killed.trim(), "1", "one subscriber connection");
            tokio::time::timeout(Duration::from_secs(10), resyncs.changed())
                .await
                .expect("a resync is signalled")
                .unwrap();
            assert_eq!(*resyncs.borrow(), 1);
            store.ping().await.expect("ready again");
            // The new subscription delivers events.
            store.join(&me, &room, None).await.unwrap();
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("an event after the resubscription")
                .unwrap();
            assert_eq!(ev.room_id, room);
        }

        #[tokio::test]
        async fn a_join_and_its_snapshot_are_three_evalsha_whatever_the_room_size() {
            let (own, store, me) = own_store("joiner").await;
            let room = RoomId::new("big").unwrap();
            for i in 0..50 {
                let other = hello(&store, &format!("u{i}")).await;
                store.join(&other, &room, None).await.unwrap();
            }
            presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();
            store.join(&me, &room, None).await.unwrap();
            let view = store.room_view(&room).await.unwrap();
            assert_eq!(view.sessions.len(), 51);
            assert_eq!(view.seq, 51);
            // join.lua (the session), room_put.lua (the room, with the
            // event), room_read.lua (the whole view): no read per member.
            let c = calls(own.port());
            assert_eq!(
                c.iter().find(|(n, _)| n == "evalsha").map(|x| x.1),
                Some(3),
                "{c:?}"
            );
            assert_eq!(
                c.iter().find(|(n, _)| n == "hgetall").map(|x| x.1),
                Some(2),
                "{c:?}"
            );
        }
    }

    mod cluster {
        use std::sync::{Arc, OnceLock};

        use presence_testkit::RedisCluster;

        use super::*;
        use crate::conformance::Env;

        fn cluster() -> &'static RedisCluster {
            static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
            CLUSTER.get_or_init(|| RedisCluster::start(3).expect("a 3-master cluster starts"))
        }

        async fn make(env: Env) -> Arc<dyn PresenceStore> {
            let mut opts = RedisOptions::new(&cluster().url());
            opts.prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let store = RedisStore::connect(opts, Arc::new(env.clock), env.timings, env.limits)
                .await
                .expect("connects");
            Arc::new(store)
        }

        conformance_suite!(make);
    }

    /// The whole suite again over TLS (`rediss://`, a private CA).
    mod tls {
        use std::sync::{Arc, OnceLock};

        use presence_testkit::RedisServer;

        use super::*;
        use crate::conformance::Env;

        fn server() -> &'static RedisServer {
            static SERVER: OnceLock<RedisServer> = OnceLock::new();
            SERVER.get_or_init(|| RedisServer::start_tls().expect("a TLS redis-server starts"))
        }

        fn options() -> RedisOptions {
            let mut opts = RedisOptions::new(&server().tls_url().unwrap());
            opts.ca_file = server().ca_file();
            opts.prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            opts
        }

        async fn make(env: Env) -> Arc<dyn PresenceStore> {
            let store =
                RedisStore::connect(options(), Arc::new(env.clock), env.timings, env.limits)
                    .await
                    .expect("connects over TLS");
            Arc::new(store)
        }

        conformance_suite!(make);

        async fn connect(opts: RedisOptions) -> Result<RedisStore, StoreError> {
            let clock = Arc::new(presence_core::ManualClock::new(crate::conformance::T0));
            RedisStore::connect(opts, clock, Timings::default(), Limits::default()).await
        }

        /// Without the CA the server's certificate is not trusted: no silent
        /// fallback to plain TCP or to no verification.
        #[tokio::test]
        async fn an_untrusted_certificate_is_refused() {
            let mut opts = options();
            opts.ca_file = None;
            opts.command_timeout = Duration::from_millis(500);
            let r = connect(opts).await;
            let Err(e) = r else { panic!("connected") };
            // Said at once, not retried as if Redis were away.
            assert!(matches!(e, StoreError::Internal(_)), "{e:?}");
            assert!(e.to_string().contains("certificate"), "{e}");
        }

        #[tokio::test]
        async fn a_ca_file_needs_a_tls_url() {
            let mut opts = RedisOptions::new(&server().url());
            opts.ca_file = server().ca_file();
            let r = connect(opts).await;
            let Err(e) = r else { panic!("connected") };
            assert!(e.to_string().contains("rediss://"), "{e}");
        }
    }
}
