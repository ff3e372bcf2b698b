//! Where a command goes: one pool for a standalone or Sentinel-managed
//! Redis; on Redis Cluster, a pool per master, chosen by the key's hash slot.
//!
//! Why not fred's cluster client: one router task serves every master, and
//! when a connection breaks it re-syncs the whole cluster, processing no
//! command for any slot until it has connected to every master that
//! `CLUSTER SLOTS` lists. A SIGKILLed master stays listed until its replica
//! is promoted (seconds), so one dead master stalled every command on every
//! master. Here each master has its own single-server pool: a dead one
//! fails only the commands of its own slots, at once (not after the command
//! timeout), while the slot map is read again in the background until the
//! promoted replica owns them.
//!
//! The slot map is read at start, after a connection error or a `MOVED`
//! (coalesced, at most one read per [`REFRESH_GAP`]) and every
//! [`REFRESH_EVERY`]. Every script's keys share one slot, so a call goes
//! where its first key goes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Server, ServerConfig};
use tokio::sync::{watch, Notify};

use super::conn::{self, unavailable, RedisOptions};
use crate::error::StoreError;

/// The least time between two reads of the slot map.
const REFRESH_GAP: Duration = Duration::from_millis(200);
/// How often the slot map is read when nothing went wrong (resharding is
/// also found by the `MOVED` it causes).
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// How long a master may take to answer a readiness ping.
const PING_WITHIN: Duration = Duration::from_millis(100);
/// How long a new master's pool may take to connect within a refresh.
const CONNECT_WITHIN: Duration = Duration::from_millis(500);

/// The connections of a store or a bus.
#[derive(Clone)]
pub(crate) enum Route {
    /// Standalone or Sentinel: one pool (fred follows a Sentinel failover).
    Single(Pool),
    /// Redis Cluster: a pool per master.
    Cluster(Arc<Cluster>),
}

/// What a readiness ping found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reach {
    /// Masters that answered.
    pub up: usize,
    /// Masters that did not, with the number of slots each serves.
    pub down: Vec<(String, u32)>,
}

impl Route {
    /// Connects: on a cluster URL to every master, else one pool.
    pub async fn connect(opts: &RedisOptions) -> Result<Self, StoreError> {
        let config = conn::config(opts)?;
        if let ServerConfig::Clustered { hosts, .. } = &config.server {
            let seeds = hosts.clone();
            return Ok(Route::Cluster(Cluster::connect(config, seeds, opts).await?));
        }
        let pool = conn::builder_with(config, opts)
            .build_pool(opts.pool_size.max(1))
            .map_err(unavailable)?;
        pool.init().await.map_err(conn::connect_error)?;
        Ok(Route::Single(pool))
    }

    /// Runs `op` on a connection of the server that holds `key`. On a
    /// cluster a `MOVED` reply re-reads the slot map and runs `op` once more.
    pub async fn on_key<T, F, Fut>(&self, key: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        match self {
            Route::Single(pool) => op(pool.next().clone()).await.map_err(unavailable),
            Route::Cluster(c) => c.on_key(key, op).await,
        }
    }

    /// Runs `op` on every key at once, each on its own server; the results
    /// in the order of `keys` (the shards of an index).
    pub async fn on_each<T, F, Fut>(
        &self,
        keys: impl IntoIterator<Item = String>,
        op: F,
    ) -> Vec<Result<T, StoreError>>
    where
        F: Fn(Client, String) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        let op = &op;
        futures::future::join_all(
            keys.into_iter()
                .map(|key| async move { self.on_key(&key, |c| op(c, key.clone())).await }),
        )
        .await
    }

    /// [`Route::on_key`] for an operation that consumes `input` (a script's
    /// keys and arguments): a single server gets it moved into its one
    /// attempt; only a cluster, where a `MOVED` takes a second attempt,
    /// copies it. `key_of` names the key in `input` that routes it.
    pub async fn on_key_with<I, T, K, F, Fut>(
        &self,
        input: I,
        key_of: K,
        op: F,
    ) -> Result<T, StoreError>
    where
        I: Clone,
        K: Fn(&I) -> &str,
        F: Fn(Client, I) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        match self {
            Route::Single(pool) => op(pool.next().clone(), input).await.map_err(unavailable),
            Route::Cluster(c) => {
                c.on_key(key_of(&input), |client| op(client, input.clone()))
                    .await
            }
        }
    }

    /// Splits `items` into groups that one script call may take together
    /// (a script's keys must share a slot on a cluster): on one server,
    /// chunks of at most `max` in their order; on a cluster, the items
    /// whose keys (`key_of`) share a slot, in chunks of at most `max`.
    pub fn batches<T>(
        &self,
        items: Vec<T>,
        key_of: impl Fn(&T) -> &str,
        max: usize,
    ) -> Vec<Vec<T>> {
        match self {
            Route::Single(_) => chunk_by(items, |_| 0, max),
            Route::Cluster(_) => chunk_by(items, |item| slot_of(key_of(item)), max),
        }
    }

    /// Like [`Route::batches`] for a script that may take keys of many
    /// slots (registered with `allow-cross-slot-keys`): on a cluster, the
    /// items whose keys one master serves by the slot map as last read (a
    /// call that meets a key moved since fails whole; its caller gives up
    /// on it).
    pub fn by_master<T>(
        &self,
        items: Vec<T>,
        key_of: impl Fn(&T) -> &str,
        max: usize,
    ) -> Vec<Vec<T>> {
        match self {
            Route::Single(_) => chunk_by(items, |_| 0, max),
            Route::Cluster(c) => {
                let topo = c.topology();
                chunk_by(
                    items,
                    |item| topo.routing.get_server(slot_of(key_of(item))).cloned(),
                    max,
                )
            }
        }
    }

    /// A connection for a command that names no key (`INFO`).
    pub fn any(&self) -> Client {
        match self {
            Route::Single(pool) => pool.next().clone(),
            Route::Cluster(c) => c.any(),
        }
    }

    /// A connection to every master (to load the scripts on each).
    pub fn masters(&self) -> Vec<Client> {
        match self {
            Route::Single(pool) => vec![pool.next().clone()],
            Route::Cluster(c) => c
                .topology()
                .pools
                .values()
                .map(|p| p.next().clone())
                .collect(),
        }
    }

    /// Pings Redis: on a cluster every master, each within [`PING_WITHIN`]
    /// (so that one stalled master cannot hold a readiness probe). Fails
    /// when nothing answers.
    pub async fn reach(&self) -> Result<Reach, StoreError> {
        match self {
            Route::Single(pool) => {
                let _: String = pool.next().ping(None).await.map_err(unavailable)?;
                Ok(Reach {
                    up: 1,
                    down: vec![],
                })
            }
            Route::Cluster(c) => {
                let reach = c.reach().await;
                if reach.up == 0 {
                    return Err(StoreError::Unavailable(
                        "no Redis Cluster master answers".into(),
                    ));
                }
                Ok(reach)
            }
        }
    }
}

/// True if `client` answers a ping in time.
/// The hash slot of `key` (its `{tag}`'s, when it has one).
fn slot_of(key: &str) -> u16 {
    ClusterRouting::hash_key(key.as_bytes())
}

/// `items` in groups of one `group_of`, each cut into chunks of at most
/// `max`, in the order the groups first appear.
fn chunk_by<T, G: std::hash::Hash + Eq>(
    items: Vec<T>,
    group_of: impl Fn(&T) -> G,
    max: usize,
) -> Vec<Vec<T>> {
    let max = max.max(1);
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut open: HashMap<G, usize> = HashMap::new();
    for item in items {
        let g = group_of(&item);
        match open.get(&g) {
            Some(&i) if groups[i].len() < max => groups[i].push(item),
            _ => {
                open.insert(g, groups.len());
                groups.push(vec![item]);
            }
        }
    }
    groups
}

async fn ping(client: &Client) -> bool {
    if !client.is_connected() {
        return false;
    }
    matches!(
        tokio::time::timeout(PING_WITHIN, client.ping::<String>(None)).await,
        Ok(Ok(_))
    )
}

/// The masters of a Redis Cluster, each with its pool.
pub(crate) struct Cluster {
    /// The URL's settings (TLS, credentials); each pool replaces the server.
    config: Config,
    opts: RedisOptions,
    seeds: Vec<Server>,
    /// The slot map and the pools of its masters, replaced whole.
    current: RwLock<Arc<Topology>>,
    /// Every pool made so far, by server: a master that comes back (or a
    /// slot that moves back) reuses its pool.
    pools: std::sync::Mutex<HashMap<Server, Pool>>,
    /// Wakes the refresher.
    wake: Notify,
    /// Bumped whenever a slot changes master (subscriptions follow it).
    changes: watch::Sender<u64>,
    /// Serialises reads of the slot map; holds when the last one ended.
    refreshing: tokio::sync::Mutex<Instant>,
}

/// One reading of the slot map.
struct Topology {
    routing: ClusterRouting,
    pools: HashMap<Server, Pool>,
}

impl Cluster {
    async fn connect(
        config: Config,
        seeds: Vec<Server>,
        opts: &RedisOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let cluster = Arc::new(Self {
            config,
            opts: opts.clone(),
            seeds,
            current: RwLock::new(Arc::new(Topology {
                routing: ClusterRouting::new(),
                pools: HashMap::new(),
            })),
            pools: std::sync::Mutex::new(HashMap::new()),
            wake: Notify::new(),
            changes: watch::Sender::new(0),
            refreshing: tokio::sync::Mutex::new(Instant::now()),
        });
        let routing = cluster.read_slots().await?;
        if routing.len() == 0 {
            return Err(StoreError::Internal(
                "the Redis Cluster serves no slot (CLUSTER SLOTS is empty): create the cluster first"
                    .into(),
            ));
        }
        // At start every master must answer (as a standalone store's must).
        for server in routing.unique_primary_nodes() {
            let pool = cluster.pool_for(&server, false)?;
            pool.init().await.map_err(conn::connect_error)?;
        }
        cluster.install(routing);
        cluster.check_coverage_setting().await;
        Self::spawn_refresher(Arc::downgrade(&cluster));
        Ok(cluster)
    }

    /// Warns when Redis itself would refuse every slot while one master
    /// fails over (`cluster-require-full-coverage yes`, its default). A
    /// server that forbids `CONFIG` (managed services) is not asked twice.
    async fn check_coverage_setting(&self) {
        let client = self.any();
        let reply: Result<Vec<String>, _> =
            client.config_get("cluster-require-full-coverage").await;
        if let Ok(pair) = reply {
            if pair.get(1).map(String::as_str) == Some("yes") {
                tracing::warn!(
                    "Redis Cluster has cluster-require-full-coverage yes: while a failed master's \
                     replica is promoted every master refuses every command (CLUSTERDOWN); \
                     set it to no so that only the failed master's slots wait (docs/operations.md)"
                );
            }
        }
    }

    fn topology(&self) -> Arc<Topology> {
        self.current.read().expect("slot map lock").clone()
    }

    async fn on_key<T, F, Fut>(&self, key: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        let slot = slot_of(key);
        let mut moved = false;
        loop {
            let client = self.client_for(slot)?;
            match op(client).await {
                Ok(v) => return Ok(v),
                Err(e) if !moved && (e.is_moved() || e.details().starts_with("ASK")) => {
                    moved = true;
                    self.refresh(Some(Instant::now())).await;
                }
                Err(e) => {
                    if is_connection_error(&e) {
                        self.wake.notify_one();
                    }
                    return Err(unavailable(e));
                }
            }
        }
    }

    /// A connected client of the master of `slot`, or `unavailable` at once.
    fn client_for(&self, slot: u16) -> Result<Client, StoreError> {
        let topo = self.topology();
        let server = topo.routing.get_server(slot).ok_or_else(|| {
            StoreError::Unavailable(format!("no Redis Cluster master serves slot {slot}"))
        })?;
        let client = topo.pools.get(server).map(|p| p.next_connected().clone());
        match client {
            Some(c) if c.is_connected() => Ok(c),
            _ => {
                self.wake.notify_one();
                Err(StoreError::Unavailable(format!(
                    "the Redis Cluster master of slot {slot} ({server}) is unreachable"
                )))
            }
        }
    }

    fn any(&self) -> Client {
        let topo = self.topology();
        let pools: Vec<&Pool> = topo.pools.values().collect();
        pools
            .iter()
            .map(|p| p.next_connected())
            .find(|c| c.is_connected())
            .or_else(|| pools.first().map(|p| p.next()))
            .cloned()
            .expect("a cluster has a master")
    }

    async fn reach(&self) -> Reach {
        let topo = self.topology();
        let mut slots: HashMap<&Server, u32> = HashMap::new();
        for r in topo.routing.slots() {
            *slots.entry(&r.primary).or_default() += u32::from(r.end - r.start) + 1;
        }
        let pings = topo
            .pools
            .iter()
            .map(|(server, pool)| async move { (server, ping(pool.next_connected()).await) });
        let mut reach = Reach::default();
        for (server, ok) in futures::future::join_all(pings).await {
            if ok {
                reach.up += 1;
            } else {
                reach
                    .down
                    .push((server.to_string(), slots.get(server).copied().unwrap_or(0)));
            }
        }
        if !reach.down.is_empty() {
            self.wake.notify_one();
        }
        reach.down.sort();
        reach
    }

    /// The pool of `server`. A new one starts connecting if `connect` is
    /// set (fred's reconnect policy keeps it connected from then on), else
    /// the caller connects it.
    fn pool_for(&self, server: &Server, connect: bool) -> Result<Pool, StoreError> {
        let mut pools = self.pools.lock().expect("pools lock");
        if let Some(p) = pools.get(server) {
            return Ok(p.clone());
        }
        let pool = self
            .builder_for(server)
            .build_pool(self.opts.pool_size.max(1))
            .map_err(unavailable)?;
        if connect {
            pool.connect_pool();
        }
        pools.insert(server.clone(), pool.clone());
        Ok(pool)
    }

    /// Makes `routing` the slot map, with the pools of its masters.
    fn install(&self, routing: ClusterRouting) {
        let mut pools = HashMap::new();
        for server in routing.unique_primary_nodes() {
            if let Ok(p) = self.pool_for(&server, true) {
                pools.insert(server, p);
            }
        }
        let owners = |r: &ClusterRouting| -> Vec<(u16, u16, Server)> {
            r.slots()
                .iter()
                .map(|s| (s.start, s.end, s.primary.clone()))
                .collect()
        };
        let mut current = self.current.write().expect("slot map lock");
        let moved = owners(&current.routing) != owners(&routing);
        *current = Arc::new(Topology { routing, pools });
        drop(current);
        if moved {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// The master that serves `slot`, as last read.
    pub fn server_of(&self, slot: u16) -> Option<Server> {
        self.topology().routing.get_server(slot).cloned()
    }

    /// The masters, as last read.
    pub fn servers(&self) -> Vec<Server> {
        self.topology().routing.unique_primary_nodes()
    }

    /// Changes whenever a slot changes master.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A client builder for one master, with the URL's settings.
    pub fn builder_for(&self, server: &Server) -> fred::types::Builder {
        let mut config = self.config.clone();
        config.server = ServerConfig::Centralized {
            server: server.clone(),
        };
        conn::builder_with(config, &self.opts)
    }

    /// Reads `CLUSTER SLOTS` from the first master (known, then seed) that
    /// answers.
    async fn read_slots(&self) -> Result<ClusterRouting, StoreError> {
        let known: Vec<Client> = self
            .topology()
            .pools
            .values()
            .map(|p| p.next_connected().clone())
            .filter(|c| c.is_connected())
            .collect();
        let mut last = None;
        for client in known {
            match slots_of(&client).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        for seed in &self.seeds {
            let client = self.builder_for(seed).build().map_err(unavailable)?;
            let read = async {
                client.init().await.map_err(conn::connect_error)?;
                slots_of(&client).await
            };
            let r = tokio::time::timeout(self.opts.command_timeout, read).await;
            let _ = client.quit().await;
            match r {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(StoreError::Unavailable(format!(
                        "the Redis Cluster seed {seed} did not answer"
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("no Redis Cluster seed".into())))
    }

    /// Reads the slot map again and connects to masters that are new in it:
    /// unless one was read within [`REFRESH_GAP`] or, for a `MOVED` seen at
    /// `seen`, one was read since.
    async fn refresh(&self, seen: Option<Instant>) {
        let mut last = self.refreshing.lock().await;
        let fresh = match seen {
            Some(seen) => *last >= seen,
            None => last.elapsed() < REFRESH_GAP,
        };
        if fresh {
            return;
        }
        // A node that lost its view of the cluster (an empty map) does not
        // replace a good one.
        let read = self.read_slots().await.ok().filter(|r| r.len() > 0);
        if let Some(routing) = read {
            for server in routing.unique_primary_nodes() {
                // A master new in the map gets a moment to connect
                // before commands go to it.
                if let Ok(pool) = self.pool_for(&server, true) {
                    if !pool.is_connected() {
                        let _ = tokio::time::timeout(CONNECT_WITHIN, pool.wait_for_connect()).await;
                    }
                }
            }
            self.install(routing);
        }
        *last = Instant::now();
    }

    /// Refreshes when woken (an error) and every [`REFRESH_EVERY`], while
    /// the cluster is in use.
    fn spawn_refresher(cluster: Weak<Self>) {
        tokio::spawn(async move {
            loop {
                let Some(c) = cluster.upgrade() else { return };
                let woken = async { c.wake.notified().await };
                let _ = tokio::time::timeout(REFRESH_EVERY, woken).await;
                c.refresh(None).await;
                drop(c);
                tokio::time::sleep(REFRESH_GAP).await;
            }
        });
    }
}

/// `CLUSTER SLOTS` of the node behind `client`.
async fn slots_of(client: &Client) -> Result<ClusterRouting, StoreError> {
    let value: fred::types::Value = client.cluster_slots().await.map_err(unavailable)?;
    let host = client
        .active_connections()
        .first()
        .map(|s| s.host.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    ClusterRouting::from_cluster_slots(value, host.as_str())
        .map_err(|e| StoreError::Internal(format!("CLUSTER SLOTS: {e}")))
}

/// An error after which the connection may be gone.
fn is_connection_error(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind as K;
    matches!(e.kind(), K::IO | K::Timeout | K::Canceled | K::Cluster)
}
