//! Heartbeats this node answers itself, and their times written in bulk.
//!
//! The rule is [`presence_core::vouch`]: after Redis answered a session's
//! heartbeat, the node knows when the session's status could next change by
//! itself, and a beat before then that keeps the activity changes nothing
//! anyone sees. Such a beat costs Redis nothing when it comes: the node
//! answers it, and every [`Vouching::every`] the times of all the beats
//! answered so are written by `beats.lua`, one call per master (on a Cluster,
//! of many slots) for up to [`FLUSH_BATCH`] sessions. The table notes which
//! sessions have beats to write, so a flush visits those only.
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

use std::collections::{HashMap, HashSet};
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

/// Shards of the table: beats on different cores rarely wait for one lock,
/// and a flush or a purge holds each lock for a sixteenth of the table.
const SHARDS: usize = 16;

/// One shard: its sessions' vouches, and those with beats to write.
#[derive(Default)]
struct Shard {
    table: HashMap<String, Vouch>,
    /// Sessions with beats answered since the last flush took them: a flush
    /// visits these, not the whole table.
    dirty: HashSet<String>,
}

/// This node's vouches, by session id.
pub(super) struct Vouches {
    shards: Vec<Mutex<Shard>>,
    vouching: Vouching,
    timings: Timings,
    /// When idle entries were last dropped (a whole-table pass, so rare).
    purged_at: Mutex<Millis>,
    /// One flush at a time (the periodic one and a sweep's).
    flushing: tokio::sync::Mutex<()>,
}

impl Vouches {
    pub fn new(vouching: Vouching, timings: Timings) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            vouching,
            timings,
            purged_at: Mutex::new(0),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn shard(&self, sid: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = super::keys::shard_of(sid) as usize % SHARDS;
        self.shards[i].lock().expect("vouch shard lock")
    }

    /// A heartbeat: true if this node answers it alone (see the module doc).
    pub fn beat(&self, sid: &str, epoch: u64, now: Millis, activity: Option<Activity>) -> bool {
        if self.vouching.every.is_none() {
            return false;
        }
        let mut shard = self.shard(sid);
        let answered = shard
            .table
            .get_mut(sid)
            .is_some_and(|v| v.beat(epoch, now, activity, &self.timings, self.vouching.margin));
        if answered && !shard.dirty.contains(sid) {
            shard.dirty.insert(sid.to_owned());
        }
        answered
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
        let mut shard = self.shard(sid);
        if shard.table.get(sid).is_some_and(|v| !v.yields_to(epoch)) {
            return;
        }
        shard.table.insert(
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
        let mut shard = self.shard(sid);
        match shard.table.get(sid) {
            Some(v) if v.epoch() > epoch => {}
            _ => {
                shard.table.insert(sid.to_owned(), Vouch::floor(epoch, now));
            }
        }
    }

    /// What a flush must write: the sessions with beats answered since the
    /// last flush. About once per heartbeat timeout, entries nothing was
    /// heard of for longer than any timeout are dropped (their session goes
    /// stale, or another node has it).
    fn take_due(&self, now: Millis) -> Vec<(String, Due)> {
        let quiet_for = self
            .timings
            .heartbeat_timeout_ms
            .max(self.timings.background_timeout_ms);
        let purge = {
            let mut at = self.purged_at.lock().expect("purge time lock");
            let due = now.saturating_sub(*at) >= self.timings.heartbeat_timeout_ms;
            if due {
                *at = now;
            }
            due
        };
        let before = now.saturating_sub(quiet_for);
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().expect("vouch shard lock");
            if purge {
                shard.table.retain(|_, v| !v.idle_since(before));
            }
            let Shard { table, dirty } = &mut *shard;
            for sid in dirty.drain() {
                if let Some(d) = table.get(&sid).and_then(Vouch::due) {
                    out.push((sid, d));
                }
            }
        }
        out
    }

    /// How many sessions the next flush would write (taking nothing).
    #[cfg(test)]
    pub fn due_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().expect("vouch shard lock");
                s.dirty
                    .iter()
                    .filter(|sid| s.table.get(*sid).and_then(Vouch::due).is_some())
                    .count()
            })
            .sum()
    }

    /// What `beats.lua` answered for `batch`. (Beats answered since the
    /// flush took them made their sessions due again.)
    fn settle(&self, batch: &[(String, Due)], outcome: &[bool]) {
        for ((sid, due), ok) in batch.iter().zip(outcome) {
            let mut shard = self.shard(sid);
            let Some(v) = shard.table.get_mut(sid) else {
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
        for (sid, due) in batch {
            let mut shard = self.shard(sid);
            if let Some(v) = shard.table.get_mut(sid) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis answered a heartbeat of `sid` at `epoch` at `at` (active).
    fn held(v: &Vouches, sid: &str, epoch: u64, at: Millis) {
        let p = Pulse::active_at(at);
        v.held(sid, epoch, SessionStatus::Active, p, Millis::MAX, at);
    }

    fn vouches() -> Vouches {
        let t = Timings::default();
        Vouches::new(Vouching::new(1_000, &t), t)
    }

    #[test]
    fn a_flush_takes_the_sessions_with_beats_since_the_last_one_only() {
        let v = vouches();
        for i in 0..100 {
            held(&v, &format!("s{i}"), 1, 0);
        }
        for i in 0..10 {
            assert!(v.beat(&format!("s{i}"), 1, 1_000, None));
            assert!(v.beat(&format!("s{i}"), 1, 1_500, None));
        }
        let due = v.take_due(2_000);
        assert_eq!(due.len(), 10, "each session once");
        assert!(due.iter().all(|(_, d)| d.pulse.last_heartbeat_at == 1_500));
        assert_eq!(v.take_due(2_500).len(), 0);
        // Written, then beaten again while the write was on its way: due again.
        assert!(v.beat("s0", 1, 3_000, None));
        let due = v.take_due(3_100);
        assert!(v.beat("s0", 1, 3_200, None));
        v.settle(&due, &[true]);
        let again = v.take_due(3_300);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1.pulse.last_heartbeat_at, 3_200);
    }

    #[test]
    fn a_refused_or_failed_write_ends_the_vouch_and_a_floor_keeps_old_epochs_out() {
        let v = vouches();
        for sid in ["a", "b"] {
            held(&v, sid, 1, 0);
            assert!(v.beat(sid, 1, 1_000, None));
        }
        let mut due = v.take_due(1_100);
        due.sort_by(|x, y| x.0.cmp(&y.0));
        v.settle(&due[..1], &[false]);
        v.failed(&due[1..]);
        assert!(!v.beat("a", 1, 1_200, None));
        assert!(!v.beat("b", 1, 1_200, None));
        // A takeover at epoch 2: a late answer of epoch 1 does not vouch again.
        v.claimed("a", 2, 1_300);
        held(&v, "a", 1, 1_300);
        assert!(!v.beat("a", 1, 1_400, None));
        held(&v, "a", 2, 1_300);
        assert!(v.beat("a", 2, 1_400, None));
        // An end at epoch 2 keeps epoch 2 out too.
        v.ended("a", 2, 1_500);
        held(&v, "a", 2, 1_500);
        assert!(!v.beat("a", 2, 1_600, None));
    }

    #[test]
    fn entries_nothing_was_heard_of_are_dropped() {
        let v = vouches();
        held(&v, "old", 1, 0);
        let t = Timings::default();
        let later = t.background_timeout_ms + t.heartbeat_timeout_ms + 1;
        v.take_due(1);
        v.take_due(later);
        assert!(v.shard("old").table.is_empty());
    }
}
