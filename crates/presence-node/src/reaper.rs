//! The reaper: the node holding the leader lease sweeps every
//! `pruneIntervalMs` (re-derives the sessions past a deadline, removes the
//! expired ones); the others only try to take the lease.
//!
//! The lease is kept by a task of its own, renewed every third of its
//! length, so that a long sweep never lets it lapse; it is trusted locally
//! only until a margin before it runs out, measured from before the renewal
//! was sent, so a node that was paused or cut off stops sweeping before
//! another can start. Every step is also a compare-and-set in its script,
//! and every sweep carries the lease's term, so even two sweepers at once
//! could not remove a live session or apply a cull twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::{Millis, NodeId};
use presence_store::PresenceStore;

/// The reaper lease as this node holds it: what the sweeps carry and what
/// the shutdown releases.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// The lease's term.
    pub term: u64,
    /// Until when this node may sweep (a margin before the lease lapses).
    pub until: tokio::time::Instant,
}

/// The lease this node holds: `None` while another node leads (or this one
/// was fenced).
#[derive(Debug, Clone, Default)]
pub struct LeaseSlot(Arc<Mutex<Option<Held>>>);

impl LeaseSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease as held now.
    pub fn get(&self) -> Option<Held> {
        *self.lock()
    }

    /// Gives the lease up locally (the shutdown then releases it in the store).
    pub fn take(&self) -> Option<Held> {
        self.lock().take()
    }
}

/// What the reaper needs.
pub struct Reaper {
    /// The store it sweeps.
    pub store: Arc<dyn PresenceStore>,
    /// This node.
    pub node_id: NodeId,
    /// How often it sweeps.
    pub every: Duration,
    /// The lease's length.
    pub lease_ms: Millis,
    /// Where the held lease is kept.
    pub slot: LeaseSlot,
}

impl Reaper {
    /// Sweeps while this node holds the lease; runs until aborted (and aborts
    /// its lease keeper with it).
    pub async fn run(self) {
        let me = Arc::new(self);
        let _keeper = AbortOnDrop(tokio::spawn(me.clone().keep_lease()));
        let mut tick = tokio::time::interval(me.every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(Held { term, until }) = me.slot.get() else {
                continue;
            };
            if tokio::time::Instant::now() >= until {
                continue;
            }
            me.sweep(term).await;
        }
    }

    async fn sweep(&self, term: u64) {
        let started = std::time::Instant::now();
        let swept = self.store.sweep(term).await;
        crate::metrics::sweep_duration(started.elapsed().as_secs_f64());
        match swept {
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
                let mut h = self.slot.lock();
                if h.is_some_and(|l| l.term == term) {
                    *h = None;
                }
            }
            Ok(r) if r.expired > 0 || r.status_changes > 0 || r.orphans > 0 || r.skipped > 0 => {
                crate::metrics::sweep(&r);
                if r.skipped > 0 {
                    tracing::warn!(
                        skipped = r.skipped,
                        "part of Redis did not answer: the sweep left it for the next one"
                    );
                }
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
            Err(e) => {
                crate::metrics::sweep_failed();
                tracing::warn!(error = %e, "sweep failed")
            }
        }
    }

    /// Takes or renews the lease every third of its length, into the slot.
    async fn keep_lease(self: Arc<Self>) {
        let lease_ms = self.lease_ms.max(300);
        let trust = Duration::from_millis((lease_ms - lease_ms / 5) as u64);
        let mut tick = tokio::time::interval(Duration::from_millis((lease_ms / 3) as u64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let sent = tokio::time::Instant::now();
            match self.store.acquire_lease(&self.node_id, lease_ms).await {
                Ok(l) => {
                    let mine = l.node_id == self.node_id;
                    let mut h = self.slot.lock();
                    let was = h.is_some();
                    *h = mine.then_some(Held {
                        term: l.term,
                        until: sent + trust,
                    });
                    drop(h);
                    crate::metrics::leader(mine);
                    if mine && !was {
                        tracing::info!(term = l.term, "this node leads the reaper");
                    } else if !mine && was {
                        tracing::warn!(leader = %l.node_id, term = l.term, "lost the reaper lease");
                    }
                }
                Err(e) => {
                    // Trusted until its time runs out (see `Held::until`).
                    let held = self
                        .slot
                        .get()
                        .is_some_and(|h| tokio::time::Instant::now() < h.until);
                    crate::metrics::leader(held);
                    tracing::warn!(error = %e, "cannot renew the reaper lease")
                }
            }
        }
    }
}

/// Aborts a task when dropped (the reaper is aborted at shutdown, and its
/// lease keeper with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
