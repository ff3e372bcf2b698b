//! Wiring: the store, the fan-out, the background tasks, and the HTTP +
//! Socket.IO service, with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, Limits, Millis, NodeId, SystemClock, Timings};
use presence_store::{
    Lease, MemoryStore, NodeInfo, PresenceStore, RedisOptions, RedisStore, StoreError,
};
use socketioxide::extract::SocketRef;
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
    sessions: AtomicI64,
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
}

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
        sessions: AtomicI64::new(0),
        config,
    }));

    {
        let app = app.clone();
        io.ns("/", move |s: SocketRef| {
            crate::socket::on_connect(s, app.clone());
            std::future::ready(())
        });
    }
    let dispatcher = fanout.spawn_dispatcher();
    let lease = Arc::new(std::sync::Mutex::new(None));
    let sweeper = tokio::spawn(reaper_loop(app.clone(), lease.clone()));
    let registry = tokio::spawn(register_loop(app.clone()));

    let router = crate::http::router(app.clone()).layer(layer);
    tracing::info!(%addr, node_id = %node_id, store = store.kind(), "listening on http://{addr}");

    let io_for_close = io.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down: closing connections");
        // Connections closed here resume elsewhere (or here, after a restart)
        // within the reconnect grace window.
        let _ = tokio::time::timeout(Duration::from_secs(5), io_for_close.close()).await;
    };
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(graceful)
        .await
        .map_err(|e| e.to_string());
    dispatcher.abort();
    sweeper.abort();
    registry.abort();
    let held = lease.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(l) = held {
        match store.release_lease(&node_id, l.term).await {
            Ok(()) => tracing::info!(term = l.term, "released the reaper lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the reaper lease"),
        }
    }
    if let Err(e) = store.deregister_node(&node_id).await {
        tracing::warn!(error = %e, "cannot remove this node from the registry");
    }
    result
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
/// expired ones); the others only try to take the lease. The lease is
/// renewed every third of its length and trusted locally only until a
/// margin before it lapses, measured from before the renewal was sent, so a
/// node that was paused or cut off stops sweeping before another can start.
/// Every step is also a compare-and-set in its script, so even two sweepers
/// at once could not remove a live session.
async fn reaper_loop(app: App, lease: Arc<std::sync::Mutex<Option<Lease>>>) {
    let every = Duration::from_millis(app.timings.prune_interval_ms.max(1) as u64);
    let lease_ms = app.config.leader_lease_ms.max(300);
    let renew_every = Duration::from_millis((lease_ms / 3) as u64);
    let trust = Duration::from_millis((lease_ms - lease_ms / 5) as u64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut valid_until: Option<tokio::time::Instant> = None;
    let mut renew_at = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        if now >= renew_at {
            renew_at = now + renew_every;
            match app.store.acquire_lease(&app.node_id, lease_ms).await {
                Ok(l) => {
                    let mine = l.node_id == app.node_id;
                    let was = valid_until.is_some();
                    valid_until = mine.then_some(now + trust);
                    if mine && !was {
                        tracing::info!(term = l.term, "this node leads the reaper");
                    } else if !mine && was {
                        tracing::warn!(leader = %l.node_id, term = l.term, "lost the reaper lease");
                    }
                    *lease.lock().unwrap_or_else(|e| e.into_inner()) = mine.then_some(l);
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the reaper lease"),
            }
        }
        if valid_until.is_none_or(|v| tokio::time::Instant::now() >= v) {
            continue;
        }
        let Some(term) = lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|l| l.term)
        else {
            continue;
        };
        match app.store.sweep(term).await {
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
