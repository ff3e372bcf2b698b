//! Heartbeats this node answers itself, and their times written in bulk.
//!
//! The rule is [`presence_core::vouch`]: after Redis answered a session's
//! heartbeat, the node knows when the session's status could next change by
//! itself, and a beat before then that keeps the activity changes nothing
//! anyone sees. Such a beat costs Redis nothing when it comes: the node
//! answers it, and every [`Vouching::every`] the times of all the beats
//! answered so are written by `beats.lua`, one call per master (on a Cluster,
//! of many slots) for up to [`FLUSH_BATCH`] sessions.
//!
//! What keeps it sound:
//! - **Fencing.** A vouch is for one epoch. A claim on this node, a
//!   disconnect, an end, a refused beat or a takeover notice from another
//!   node leaves a floor instead, which an older epoch's late answer cannot
//!   replace. `beats.lua` writes only for the epoch, status and activity
//!   vouched for; whatever it refuses, the node forgets.
//! - **Time.** A beat is answered here only if it comes [`Vouching::margin`]
//!   (two flush periods) before the status may change, and the flush period
//!   is at most a quarter of the slack between the heartbeat interval and
//!   its timeout: the reaper, on any node, never judges a session by times
//!   older than that. This node's own sweep flushes first.
//! - **Reach.** A flush that fails (Redis unreachable, a slot moved) ends
//!   the vouches of every session in it: their next beats go to Redis and
//!   say what Redis says. A node cut off from Redis so answers each session
//!   at most until that session's next flush, about one flush period (not
//!   every session at once on the first failure: under overload, when a
//!   call times out, that would turn every quiet beat into a script call at
//!   the worst moment). A node that dies loses at most one flush period of
//!   beats: its sessions go stale that much earlier, never later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use presence_core::{Activity, Clock, Due, Millis, Pulse, SessionStatus, Timings, Vouch};

use super::keys::Keys;
use super::route::Route;
use super::scripts::Scripts;
use super::session_scripts::Beats;
use crate::error::StoreError;

/// Sessions per `beats.lua` call: about a millisecond of Redis time.
const FLUSH_BATCH: usize = 128;
/// `beats.lua` calls in flight at once.
const FLUSH_CONCURRENCY: usize = 8;
/// The shortest flush period (timings of a few hundred ms, in tests).
const MIN_EVERY_MS: Millis = 10;

/// How this node vouches for its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vouching {
    /// How often the beats answered here are written; `None`: never vouch
    /// (every heartbeat runs `heartbeat.lua`).
    pub every: Option<Duration>,
    /// How long before the status may change a beat stops being answered here.
    pub margin: Millis,
}

impl Vouching {
    /// The flush period for `flush_ms` (0: off), shortened to a quarter of
    /// the slack between the heartbeat interval and its timeout and of the
    /// reconnect grace, so that the times Redis holds are never more than
    /// that behind; the margin is two periods.
    pub fn new(flush_ms: Millis, t: &Timings) -> Self {
        if flush_ms <= 0 {
            return Self {
                every: None,
                margin: 0,
            };
        }
        let slack = (t.heartbeat_timeout_ms - t.heartbeat_interval_ms).max(0);
        let ms = flush_ms
            .min(slack / 4)
            .min(t.reconnect_grace_ms / 4)
            .max(MIN_EVERY_MS);
        Self {
            every: Some(Duration::from_millis(ms as u64)),
            margin: 2 * ms,
        }
    }
}

/// This node's vouches, by session id.
pub(super) struct Vouches {
    table: Mutex<HashMap<String, Vouch>>,
    vouching: Vouching,
    timings: Timings,
    /// One flush at a time (the periodic one and a sweep's).
    flushing: tokio::sync::Mutex<()>,
}

impl Vouches {
    pub fn new(vouching: Vouching, timings: Timings) -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            vouching,
            timings,
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vouch>> {
        self.table.lock().expect("vouch table lock")
    }

    /// A heartbeat: true if this node answers it alone (see the module doc).
    pub fn beat(&self, sid: &str, epoch: u64, now: Millis, activity: Option<Activity>) -> bool {
        if self.vouching.every.is_none() {
            return false;
        }
        self.table()
            .get_mut(sid)
            .is_some_and(|v| v.beat(epoch, now, activity, &self.timings, self.vouching.margin))
    }

    /// Redis answered a heartbeat of `sid` at `epoch`: vouch for its next
    /// quiet beats, unless a newer epoch was seen meanwhile.
    pub fn held(
        &self,
        sid: &str,
        epoch: u64,
        status: SessionStatus,
        stored: Pulse,
        keep_until: Millis,
        now: Millis,
    ) {
        if self.vouching.every.is_none() {
            return;
        }
        let mut table = self.table();
        if table.get(sid).is_some_and(|v| !v.yields_to(epoch)) {
            return;
        }
        table.insert(
            sid.to_owned(),
            Vouch::held(epoch, status, stored, keep_until, now, &self.timings),
        );
    }

    /// `sid` was claimed at `epoch` (here, or on another node): vouch for no
    /// older epoch of it, and for this one only once Redis answers one of
    /// its heartbeats.
    pub fn claimed(&self, sid: &str, epoch: u64, now: Millis) {
        self.floor(sid, epoch, now);
    }

    /// The connection at `epoch` ended, disconnected, or was refused: vouch
    /// for nothing of `sid` at that epoch or below.
    pub fn ended(&self, sid: &str, epoch: u64, now: Millis) {
        self.floor(sid, epoch.saturating_add(1), now);
    }

    fn floor(&self, sid: &str, epoch: u64, now: Millis) {
        if self.vouching.every.is_none() {
            return;
        }
        let mut table = self.table();
        match table.get(sid) {
            Some(v) if v.epoch() > epoch => {}
            _ => {
                table.insert(sid.to_owned(), Vouch::floor(epoch, now));
            }
        }
    }

    /// What a flush must write; entries nothing was heard of for longer than
    /// any timeout are dropped (their session goes stale, or another node
    /// has it).
    fn take_due(&self, now: Millis) -> Vec<(String, Due)> {
        let quiet_for = self
            .timings
            .heartbeat_timeout_ms
            .max(self.timings.background_timeout_ms);
        let before = now.saturating_sub(quiet_for);
        let mut table = self.table();
        table.retain(|_, v| !v.idle_since(before));
        table
            .iter()
            .filter_map(|(sid, v)| Some((sid.clone(), v.due()?)))
            .collect()
    }

    /// How many sessions a flush at `now` would write.
    #[cfg(test)]
    pub fn take_due_for_test(&self, now: Millis) -> usize {
        self.take_due(now).len()
    }

    /// What `beats.lua` answered for `batch`.
    fn settle(&self, batch: &[(String, Due)], outcome: &[bool]) {
        let mut table = self.table();
        for ((sid, due), ok) in batch.iter().zip(outcome) {
            let Some(v) = table.get_mut(sid) else {
                continue;
            };
            if *ok {
                v.written(due, &self.timings);
            } else if v.epoch() == due.epoch {
                v.drop_held();
            }
        }
    }

    /// A batch could not be written (Redis unreachable, a slot moved):
    /// vouch for none of its sessions.
    fn failed(&self, batch: &[(String, Due)]) {
        let mut table = self.table();
        for (sid, due) in batch {
            if let Some(v) = table.get_mut(sid) {
                if v.epoch() == due.epoch {
                    v.drop_held();
                }
            }
        }
    }
}

/// What a flush runs with (the store's parts, shared with the flush task).
#[derive(Clone)]
pub(super) struct Flush {
    pub route: Route,
    pub scripts: Arc<Scripts>,
    pub keys: Keys,
}

impl Flush {
    /// Writes the times of every beat answered here since the last flush.
    pub async fn run(&self, vouches: &Vouches, now: Millis) -> Result<(), StoreError> {
        let _one = vouches.flushing.lock().await;
        let due = vouches.take_due(now);
        if due.is_empty() {
            return Ok(());
        }
        // A session's key is hash-tagged with its id: the id's slot is the key's.
        let batches = self
            .route
            .by_master(due, |(sid, _)| sid.as_str(), FLUSH_BATCH);
        let mut calls = Vec::new();
        for batch in batches {
            calls.push(async move {
                let r = self
                    .scripts
                    .run(&self.route, &self.keys, Beats { sessions: &batch })
                    .await;
                (batch, r)
            });
        }
        let results: Vec<_> = futures::stream::iter(calls)
            .buffer_unordered(FLUSH_CONCURRENCY)
            .collect()
            .await;
        let mut first_error = None;
        for (batch, r) in results {
            match r {
                Ok(w) if w.0.len() == batch.len() => vouches.settle(&batch, &w.0),
                Ok(w) => {
                    vouches.failed(&batch);
                    first_error.get_or_insert(StoreError::Internal(format!(
                        "beats answered {} of {} sessions",
                        w.0.len(),
                        batch.len()
                    )));
                }
                Err(e) => {
                    vouches.failed(&batch);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Flushes every `every` while the store lives.
    pub fn spawn(self, vouches: Weak<Vouches>, clock: Arc<dyn Clock>, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(v) = vouches.upgrade() else { break };
                if let Err(e) = self.run(&v, clock.now_ms()).await {
                    tracing::debug!(error = %e, "heartbeat times not written; their sessions' next beats go to Redis");
                }
            }
        });
    }
}
