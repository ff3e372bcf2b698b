//! This node: who it is, what it holds right now, and its registration in
//! the cluster's node registry (`/api/cluster`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, Millis, NodeId};
use presence_store::{NodeInfo, PresenceStore};

use crate::fanout::Fanout;

/// This node's identity and live counters. Shared by the handlers, the
/// registry loop and the shutdown.
pub struct LocalNode {
    /// `PRESENCE_NODE_ID` (or a random one).
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// When it started.
    pub started_at: Millis,
    /// The time source of responses.
    pub clock: Arc<dyn Clock>,
    sessions: AtomicI64,
    draining: AtomicBool,
}

impl LocalNode {
    /// A node that starts now.
    pub fn new(id: NodeId, addr: SocketAddr, clock: Arc<dyn Clock>) -> Self {
        Self {
            id,
            addr,
            started_at: clock.now_ms(),
            clock,
            sessions: AtomicI64::new(0),
            draining: AtomicBool::new(false),
        }
    }

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

    /// Marks the node as shutting down (see [`draining`](Self::draining)).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// This node as the registry shows it, now, with `rooms` rooms that have
    /// local sockets.
    pub fn info(&self, rooms: usize) -> NodeInfo {
        NodeInfo {
            node_id: self.id.clone(),
            addr: self.addr.to_string(),
            started_at: self.started_at,
            last_seen_at: self.clock.now_ms(),
            sessions: self.local_sessions() as u64,
            rooms: rooms as u64,
        }
    }
}

/// Keeps this node registered (`/api/cluster`), refreshing every third of
/// its TTL, so that a node that dies drops out within the TTL.
pub async fn register_loop(
    node: Arc<LocalNode>,
    store: Arc<dyn PresenceStore>,
    fanout: Fanout,
    ttl_ms: Millis,
) {
    let ttl = ttl_ms.max(300);
    let mut tick = tokio::time::interval(Duration::from_millis((ttl / 3) as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.register_node(&node.info(fanout.rooms()), ttl).await {
            Ok(()) => crate::metrics::store_up(true),
            Err(e) => {
                crate::metrics::store_up(false);
                tracing::warn!(error = %e, "cannot refresh this node's registration");
            }
        }
    }
}
