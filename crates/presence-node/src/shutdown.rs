//! Graceful shutdown: once the signal came, stop sweeping and hand the
//! reaper lease over, tell every client to reconnect elsewhere, close their
//! transports, and end within the budget whatever the clients do.

use std::sync::Arc;
use std::time::Duration;

use presence_store::PresenceStore;
use socketioxide::SocketIo;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acks::ReconnectNotice;
use crate::error::StartError;
use crate::node::LocalNode;
use crate::reaper::LeaseSlot;

/// How long a shutdown may take, from the signal to the end of `serve`: the
/// operator contract promises an exit within 10 s.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(9);

/// Waits for the server to end, but once the shutdown signal came, for no
/// longer than the shutdown budget (a client that never closes its
/// connection does not hold the node up).
pub async fn finish(
    mut server: JoinHandle<std::io::Result<()>>,
    mut signalled: watch::Receiver<bool>,
) -> Result<(), StartError> {
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

fn joined(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), StartError> {
    match r {
        Ok(r) => r.map_err(StartError::Io),
        Err(e) => Err(StartError::Server(e.to_string())),
    }
}

/// What the drain works on.
pub struct Drain {
    /// This node (marked draining).
    pub node: Arc<LocalNode>,
    /// Where the lease is released.
    pub store: Arc<dyn PresenceStore>,
    /// Every client connection.
    pub io: SocketIo,
    /// The reaper task, aborted first.
    pub reaper: JoinHandle<()>,
    /// The lease this node holds, if any.
    pub lease: LeaseSlot,
}

impl Drain {
    /// The shutdown of a node, once `signalled`: stop sweeping and hand the
    /// reaper lease over (so another node leads at once instead of after the
    /// lease runs out), tell every client to reconnect, and close their
    /// transports. socket.io clients reconnect by themselves after a
    /// transport close; the load balancer sends them to another node, where
    /// their `presence:hello` with the same session id resumes the session.
    /// Sessions are not marked disconnected here: observers see no change at
    /// all when the clients come back within the heartbeat timeout, and a
    /// client that never comes back decays like any silent one.
    pub async fn run(self, mut signalled: watch::Receiver<bool>) {
        if signalled.wait_for(|s| *s).await.is_err() {
            self.reaper.abort();
            return;
        }
        self.node.start_draining();
        tracing::info!(
            sessions = self.node.local_sessions(),
            "shutting down: no new connections; asking clients to reconnect elsewhere"
        );
        self.reaper.abort();
        if let Some(l) = self.lease.take() {
            match tokio::time::timeout(
                Duration::from_secs(1),
                self.store.release_lease(&self.node.id, l.term),
            )
            .await
            {
                Ok(Ok(())) => tracing::info!(term = l.term, "released the reaper lease"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the reaper lease"),
                Err(_) => tracing::warn!("cannot release the reaper lease: timed out"),
            }
        }
        let notice = ReconnectNotice {
            reason: "shutdown",
            node_id: &self.node.id,
        };
        if let Err(e) = self.io.emit("presence:reconnect", &notice).await {
            tracing::debug!(error = %e, "cannot send every client the reconnect notice");
        }
        // Lets the notice reach the sockets before their transports close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tokio::time::timeout(Duration::from_secs(5), self.io.close())
            .await
            .is_err()
        {
            tracing::warn!("closing the connections took longer than 5 s");
        }
        // The times of the last beats this node answered itself, so that its
        // clients resume elsewhere from them.
        match tokio::time::timeout(Duration::from_secs(1), self.store.flush_beats()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the last heartbeat times"),
            Err(_) => tracing::warn!("cannot write the last heartbeat times: timed out"),
        }
    }
}
