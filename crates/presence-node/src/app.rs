//! Wiring: the store, the fan-out, the background tasks, and the HTTP +
//! Socket.IO service, with graceful shutdown.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, Limits, Millis, NodeId, SystemClock, Timings};
use presence_store::{MemoryStore, NodeInfo, PresenceStore, RedisOptions, RedisStore, StoreError};
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::fanout::Fanout;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

/// The shared parts of a node.
pub struct AppInner {
    /// The configuration it started with.
    pub config: Config,
    /// Lifecycle timings (validated).
    pub timings: Timings,
    /// Limits on client input.
    pub limits: Limits,
    /// This node's id.
    pub node_id: NodeId,
    /// The authoritative state.
    pub store: Arc<dyn PresenceStore>,
    /// Per-room diffs to local sockets.
    pub fanout: Fanout,
    /// Time source for responses.
    pub clock: Arc<dyn Clock>,
    /// When this node started.
    pub started_at: Millis,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Verifies handshake tokens; `None` when auth is off.
    pub auth: Option<crate::auth::Verifier>,
    sessions: AtomicI64,
    draining: AtomicBool,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    /// Counts a connection that bound a session.
    pub fn session_bound(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that no longer holds a session.
    pub fn session_unbound(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sessions bound to connections of this node.
    pub fn local_sessions(&self) -> i64 {
        self.sessions.load(Ordering::Relaxed).max(0)
    }

    /// The node is shutting down: `/readyz` fails, and connections that close
    /// now leave their sessions as they are, for their clients to resume
    /// on another node.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// How long a shutdown may take, from the signal to the end of `serve`: the
/// operator contract promises an exit within 10 s.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(9);

/// Serves a node on `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    crate::metrics::install();
    let timings = config.timings()?;
    let limits = config.limits();
    let node_id = config.node_id()?;
    let auth = crate::auth::Verifier::from_config(&config)?;
    if auth.is_none() {
        tracing::warn!(
            "token auth is off (no PRESENCE_JWT_SECRET or PRESENCE_JWT_PUBLIC_KEY): any client may \
             speak for any user id and join any room"
        );
    }
    if config.api_key.is_none() {
        tracing::warn!("the HTTP API is open (no PRESENCE_API_KEY)");
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = open_store(&config, clock.clone(), timings, limits).await?;

    let (layer, io) = SocketIo::builder()
        .max_payload(config.max_payload_bytes)
        .ws_max_message_size(config.max_payload_bytes as usize)
        .build_layer();
    let fanout = Fanout::new(
        io.clone(),
        node_id.clone(),
        store.clone(),
        config.emit_debounce(),
    );
    let app = App(Arc::new(AppInner {
        timings,
        limits,
        node_id: node_id.clone(),
        store: store.clone(),
        fanout: fanout.clone(),
        clock: clock.clone(),
        started_at: clock.now_ms(),
        addr,
        auth,
        sessions: AtomicI64::new(0),
        draining: AtomicBool::new(false),
        config,
    }));

    {
        // The handlers are registered in the connect middleware, before
        // socketioxide sends the CONNECT packet: a client emits as soon as it
        // sees it, and an event that arrives before its handler exists would
        // be dropped (its ack never sent).
        let app = app.clone();
        let admit = move |s: SocketRef, TryData(auth): TryData<serde_json::Value>| {
            let app = app.clone();
            async move {
                crate::socket::authenticate(&app, &s, auth.ok()).await?;
                crate::socket::on_connect(s, app);
                Ok::<(), crate::auth::AuthError>(())
            }
        };
        let connected = |_: SocketRef| std::future::ready(());
        io.ns("/", connected.with(admit));
    }
    let dispatcher = fanout.spawn_dispatcher();
    let lease = Arc::new(std::sync::Mutex::new(None));
    let sweeper = tokio::spawn(reaper_loop(app.clone(), lease.clone()));
    let registry = tokio::spawn(register_loop(app.clone()));

    let mut router =
        crate::http::router(app.clone())
            .layer(layer)
            .layer(axum::middleware::map_request(
                crate::http::detach_request_buffers,
            ));
    if let Some(cors) = crate::http::cors(&app.config.cors_origins) {
        router = router.layer(cors);
    }
    tracing::info!(%addr, node_id = %node_id, store = store.kind(), "listening on http://{addr}");

    // The signal stops the listener at once (a client that reconnects is
    // refused here and lands on another node); the drain then runs next to
    // the server while it waits for open connections to end.
    let (signalled_tx, signalled) = tokio::sync::watch::channel(false);
    let graceful = async move {
        shutdown.await;
        let _ = signalled_tx.send(true);
    };
    let drain = tokio::spawn(drain(app.clone(), io, signalled.clone(), sweeper, lease));
    // Acks and diffs are small messages someone waits for: no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(graceful)
            .into_future(),
    );
    let result = finish(server, signalled).await;
    dispatcher.abort();
    registry.abort();
    // The drain has released the lease; this waits for it (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    match tokio::time::timeout(Duration::from_millis(500), store.deregister_node(&node_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove this node from the registry"),
        Err(_) => tracing::warn!("cannot remove this node from the registry: timed out"),
    }
    tracing::info!("stopped");
    result
}

/// Waits for the server to end, but once the shutdown signal came, for no
/// longer than the shutdown budget (a client that never closes its
/// connection does not hold the node up).
async fn finish(
    mut server: tokio::task::JoinHandle<std::io::Result<()>>,
    mut signalled: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    tokio::select! {
        r = &mut server => return joined(r),
        _ = signalled.wait_for(|s| *s) => {}
    }
    match tokio::time::timeout(SHUTDOWN_BUDGET - Duration::from_millis(1500), server).await {
        Ok(r) => joined(r),
        Err(_) => {
            tracing::warn!(
                "connections still open at the end of the shutdown budget; closing anyway"
            );
            Ok(())
        }
    }
}

fn joined(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), String> {
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the server task failed: {e}")),
    }
}

/// The shutdown of a node, once the signal came: stop sweeping and hand the
/// reaper lease over (so another node leads at once instead of after the
/// lease runs out), tell every client to reconnect, and close their
/// transports. socket.io clients reconnect by themselves after a transport
/// close; the load balancer sends them to another node, where their
/// `presence:hello` with the same session id resumes the session. Sessions
/// are not marked disconnected here: observers see no change at all when
/// the clients come back within the heartbeat timeout, and a client that
/// never comes back decays like any silent one.
async fn drain(
    app: App,
    io: SocketIo,
    mut signalled: tokio::sync::watch::Receiver<bool>,
    sweeper: tokio::task::JoinHandle<()>,
    lease: HeldLease,
) {
    if signalled.wait_for(|s| *s).await.is_err() {
        sweeper.abort();
        return;
    }
    app.draining.store(true, Ordering::Relaxed);
    tracing::info!(
        sessions = app.local_sessions(),
        "shutting down: no new connections; asking clients to reconnect elsewhere"
    );
    sweeper.abort();
    let held = lease.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(l) = held {
        match tokio::time::timeout(
            Duration::from_secs(1),
            app.store.release_lease(&app.node_id, l.term),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(term = l.term, "released the reaper lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the reaper lease"),
            Err(_) => tracing::warn!("cannot release the reaper lease: timed out"),
        }
    }
    let notice = serde_json::json!({ "reason": "shutdown", "nodeId": app.node_id });
    if let Err(e) = io.emit("presence:reconnect", &notice).await {
        tracing::debug!(error = %e, "cannot send every client the reconnect notice");
    }
    // Lets the notice reach the sockets before their transports close.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if tokio::time::timeout(Duration::from_secs(5), io.close())
        .await
        .is_err()
    {
        tracing::warn!("closing the connections took longer than 5 s");
    }
}

impl App {
    /// This node as the registry shows it, now.
    pub fn node_info(&self) -> NodeInfo {
        NodeInfo {
            node_id: self.node_id.clone(),
            addr: self.addr.to_string(),
            started_at: self.started_at,
            last_seen_at: self.clock.now_ms(),
            sessions: self.local_sessions() as u64,
            rooms: self.fanout.rooms() as u64,
        }
    }
}

/// Keeps this node registered (`/api/cluster`), refreshing every third of
/// its TTL, so that a node that dies drops out within the TTL.
async fn register_loop(app: App) {
    let ttl = app.config.node_ttl_ms.max(300);
    let mut tick = tokio::time::interval(Duration::from_millis((ttl / 3) as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.store.register_node(&app.node_info(), ttl).await {
            tracing::warn!(error = %e, "cannot refresh this node's registration");
        }
    }
}

/// The embedded store, or Redis when `REDIS_URL` is set. Redis that is not
/// reachable yet (the node started first) is retried for a while.
async fn open_store(
    config: &Config,
    clock: Arc<dyn Clock>,
    timings: Timings,
    limits: Limits,
) -> Result<Arc<dyn PresenceStore>, String> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(MemoryStore::new(clock, timings, limits)));
    };
    let opts = RedisOptions {
        url: url.clone(),
        prefix: config.key_prefix.clone(),
        pool_size: config.redis_pool_size,
        command_timeout: Duration::from_millis(config.redis_timeout_ms),
        ca_file: config.redis_ca_file.clone(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match RedisStore::connect(opts.clone(), clock.clone(), timings, limits).await {
            Ok(store) => return Ok(Arc::new(store)),
            Err(e @ StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot reach Redis yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("cannot use Redis: {e}")),
        }
    }
}

/// The reaper: the node holding the leader lease sweeps every
/// `pruneIntervalMs` (re-derives the sessions past a deadline, removes the
/// expired ones); the others only try to take the lease. The lease is kept
/// by a task of its own, renewed every third of its length, so that a long
/// sweep never lets it lapse; it is trusted locally only until a margin
/// before it runs out, measured from before the renewal was sent, so a node
/// that was paused or cut off stops sweeping before another can start.
/// Every step is also a compare-and-set in its script, and every sweep
/// carries the lease's term, so even two sweepers at once could not remove
/// a live session or apply a cull twice.
async fn reaper_loop(app: App, held: HeldLease) {
    let lease_ms = app.config.leader_lease_ms.max(300);
    let keeper = tokio::spawn(keep_lease(app.clone(), held.clone(), lease_ms));
    let every = Duration::from_millis(app.timings.prune_interval_ms.max(1) as u64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let _keeper = AbortOnDrop(keeper);
    loop {
        tick.tick().await;
        let valid = *held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Held { term, until }) = valid else {
            continue;
        };
        if tokio::time::Instant::now() >= until {
            continue;
        }
        match app.store.sweep(term).await {
            Ok(r) if r.fenced > 0 => {
                // A sweeper with a newer term got there first: this node
                // was paused or cut off past its lease. It stops sweeping
                // until it wins the lease again.
                crate::metrics::sweep(&r);
                tracing::warn!(
                    term,
                    fenced = r.fenced,
                    "a newer reaper fenced this node's sweep; no longer leading"
                );
                let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
                if h.is_some_and(|l| l.term == term) {
                    *h = None;
                }
            }
            Ok(r) if r.expired > 0 || r.status_changes > 0 || r.orphans > 0 => {
                crate::metrics::sweep(&r);
                if r.orphans > 0 {
                    tracing::warn!(
                        orphans = r.orphans,
                        "removed room members whose session no longer held them"
                    );
                }
                tracing::debug!(
                    expired = r.expired,
                    status_changes = r.status_changes,
                    "sweep"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}

/// Aborts a task when dropped (the reaper loop is aborted at shutdown, and
/// its lease keeper with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reaper lease as this node holds it: what the sweeps carry and what
/// the shutdown releases.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The lease's term.
    term: u64,
    /// Until when this node may sweep (a margin before the lease lapses).
    until: tokio::time::Instant,
}

/// `None` while another node leads (or this one was fenced).
type HeldLease = Arc<std::sync::Mutex<Option<Held>>>;

/// Takes or renews the lease every third of its length, into `held`.
async fn keep_lease(app: App, held: HeldLease, lease_ms: i64) {
    let trust = Duration::from_millis((lease_ms - lease_ms / 5) as u64);
    let mut tick = tokio::time::interval(Duration::from_millis((lease_ms / 3) as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = tokio::time::Instant::now();
        match app.store.acquire_lease(&app.node_id, lease_ms).await {
            Ok(l) => {
                let mine = l.node_id == app.node_id;
                let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
                let was = h.is_some();
                *h = mine.then_some(Held {
                    term: l.term,
                    until: sent + trust,
                });
                drop(h);
                if mine && !was {
                    tracing::info!(term = l.term, "this node leads the reaper");
                } else if !mine && was {
                    tracing::warn!(leader = %l.node_id, term = l.term, "lost the reaper lease");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the reaper lease"),
        }
    }
}
