//! A node vouching for its own sessions: when a heartbeat may be answered by
//! the session's node alone, its time written to the store later, in bulk.
//!
//! A heartbeat that changes nothing anyone sees still proves liveness, and
//! the store must learn of it before the session's timeout; it need not
//! learn of it at once. The node that holds the connection knows, after a
//! heartbeat the store answered, the session's epoch, recorded status and
//! [`Pulse`], and so the next instant at which the status could change by
//! itself (where the reaper would look at it again). A later beat that
//! keeps the activity, derives the same status and comes before that
//! instant, less a margin for the flush and for clocks, changes nothing: the
//! node answers it and keeps its time for the next flush. A flush writes
//! only what it is sure of (the store checks the epoch, status and activity
//! it was vouched with); what it cannot write, the node forgets, and that
//! session's next beat goes to the store whole.
//!
//! Pure: the caller supplies the clock, the timings and the margin.

use crate::config::Timings;
use crate::session::{Activity, Liveness, Pulse, SessionStatus};
use crate::time::Millis;

/// What a node knows of one of its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouch {
    /// The epoch this is about. A vouch for an older epoch never replaces it.
    epoch: u64,
    /// `None`: nothing is vouched for (after a takeover, a disconnect or a
    /// refused flush); the entry only keeps older epochs out.
    held: Option<Held>,
    /// When the node last heard of the session (to forget idle entries).
    seen_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    /// The status the store has recorded.
    status: SessionStatus,
    /// The pulse as the store holds it.
    stored: Pulse,
    /// The pulse with the beats answered here since; `None`: nothing to write.
    pending: Option<Pulse>,
    /// The last heartbeat time the store may take without renewing the
    /// key's TTL (only the store's own script renews it).
    keep_until: Millis,
    /// Beats are answered here only before this instant: the first at which
    /// the status may change by itself after `stored` was written, or
    /// `keep_until`.
    until: Millis,
}

/// What a flush writes for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The epoch vouched for.
    pub epoch: u64,
    /// The status the store must still have recorded.
    pub status: SessionStatus,
    /// The pulse to write (its activity is the one the store must have).
    pub pulse: Pulse,
    /// Whether its activity time moved since the store's (else it is not written).
    pub active_moved: bool,
}

impl Vouch {
    /// After the store answered a heartbeat at `now`: it holds `stored`,
    /// records `status` for the session at `epoch`, and takes later
    /// heartbeat times without renewing the session's TTL up to `keep_until`.
    pub fn held(
        epoch: u64,
        status: SessionStatus,
        stored: Pulse,
        keep_until: Millis,
        now: Millis,
        t: &Timings,
    ) -> Self {
        Self {
            epoch,
            held: Some(Held {
                status,
                stored,
                pending: None,
                keep_until,
                until: stored
                    .next_deadline(stored.last_heartbeat_at, t)
                    .min(keep_until),
            }),
            seen_at: now,
        }
    }

    /// Nothing vouched for, and no vouch of an epoch below `epoch` accepted.
    pub fn floor(epoch: u64, now: Millis) -> Self {
        Self {
            epoch,
            held: None,
            seen_at: now,
        }
    }

    /// The epoch this entry is about.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a vouch for `epoch` may take this entry's place.
    pub fn yields_to(&self, epoch: u64) -> bool {
        epoch >= self.epoch
    }

    /// A heartbeat of the connection at `epoch` at `now`: true if it changes
    /// nothing observers see and the node may answer it alone (its time is
    /// kept for the next flush); false if it must go to the store.
    pub fn beat(
        &mut self,
        epoch: u64,
        now: Millis,
        activity: Option<Activity>,
        t: &Timings,
        margin: Millis,
    ) -> bool {
        let Some(h) = self.held.as_mut() else {
            return false;
        };
        if epoch != self.epoch
            || activity.is_some_and(|a| a != h.stored.activity)
            || now.saturating_add(margin) >= h.until
        {
            return false;
        }
        let mut p = h.pending.unwrap_or(h.stored);
        p.record_heartbeat(now, activity);
        if p.liveness(now, t) != Liveness::Live(h.status) {
            return false;
        }
        h.pending = Some(p);
        self.seen_at = now;
        true
    }

    /// What the next flush should write, if anything.
    pub fn due(&self) -> Option<Due> {
        let h = self.held.as_ref()?;
        let pulse = h.pending?;
        Some(Due {
            epoch: self.epoch,
            status: h.status,
            pulse,
            active_moved: pulse.last_active_at > h.stored.last_active_at,
        })
    }

    /// The store wrote `due` (or holds newer times): it becomes the stored
    /// pulse, and beats answered since stay pending.
    pub fn written(&mut self, due: &Due, t: &Timings) {
        if due.epoch != self.epoch {
            return;
        }
        let Some(h) = self.held.as_mut() else { return };
        if h.status != due.status || h.stored.activity != due.pulse.activity {
            return;
        }
        if due.pulse.last_heartbeat_at > h.stored.last_heartbeat_at {
            h.stored.last_heartbeat_at = due.pulse.last_heartbeat_at;
        }
        if due.pulse.last_active_at > h.stored.last_active_at {
            h.stored.last_active_at = due.pulse.last_active_at;
        }
        if h.pending == Some(due.pulse) {
            h.pending = None;
        }
        h.until = h
            .stored
            .next_deadline(h.stored.last_heartbeat_at, t)
            .min(h.keep_until);
    }

    /// The store refused what was vouched for: vouch for nothing more at
    /// this epoch (the next beat goes to the store whole).
    pub fn drop_held(&mut self) {
        self.held = None;
    }

    /// Whether nothing was heard of the session since `before`.
    pub fn idle_since(&self, before: Millis) -> bool {
        self.seen_at < before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timings {
        Timings::default()
    }

    const MARGIN: Millis = 2_000;

    fn fresh() -> Vouch {
        Vouch::held(
            3,
            SessionStatus::Active,
            Pulse::active_at(0),
            Millis::MAX,
            0,
            &t(),
        )
    }

    #[test]
    fn a_beat_that_changes_nothing_is_answered_here_and_becomes_due() {
        let mut v = fresh();
        assert!(v.beat(3, 10_000, Some(Activity::Active), &t(), MARGIN));
        assert!(v.beat(3, 11_000, None, &t(), MARGIN));
        let due = v.due().unwrap();
        assert_eq!(due.pulse.last_heartbeat_at, 11_000);
        assert_eq!(due.pulse.last_active_at, 10_000);
        assert!(due.active_moved);
        assert_eq!((due.epoch, due.status), (3, SessionStatus::Active));
    }

    #[test]
    fn another_epoch_a_new_activity_or_nothing_held_goes_to_the_store() {
        let mut v = fresh();
        assert!(!v.beat(2, 1_000, None, &t(), MARGIN), "an older epoch");
        assert!(!v.beat(4, 1_000, None, &t(), MARGIN), "a higher epoch");
        assert!(
            !v.beat(3, 1_000, Some(Activity::Idle), &t(), MARGIN),
            "a new activity"
        );
        assert_eq!(v.due(), None, "none of them is kept");
        let mut f = Vouch::floor(3, 0);
        assert!(!f.beat(3, 1_000, None, &t(), MARGIN));
        v.drop_held();
        assert!(!v.beat(3, 1_000, None, &t(), MARGIN));
    }

    #[test]
    fn nothing_is_answered_near_the_instant_the_status_may_change() {
        // Stored at 0: stale at 20 s unless the store learns of a later beat.
        let mut v = fresh();
        let timeout = t().heartbeat_timeout_ms;
        assert!(v.beat(3, timeout - MARGIN - 1, None, &t(), MARGIN));
        assert!(!v.beat(3, timeout - MARGIN, None, &t(), MARGIN));
        // Once the flush is written, the deadline moves with it.
        let due = v.due().unwrap();
        v.written(&due, &t());
        assert_eq!(v.due(), None);
        assert!(v.beat(3, timeout - MARGIN, None, &t(), MARGIN));
    }

    #[test]
    fn a_beat_after_the_idle_instant_goes_to_the_store() {
        // A client that reports nothing turns idle 45 s after its last activity.
        let mut v = fresh();
        let mut now = 0;
        while now + 10_000 + MARGIN < t().idle_after_ms {
            now += 10_000;
            assert!(v.beat(3, now, None, &t(), MARGIN), "at {now}");
            let due = v.due().unwrap();
            v.written(&due, &t());
        }
        assert!(!v.beat(3, now + 10_000, None, &t(), MARGIN));
    }

    #[test]
    fn nothing_is_answered_once_the_key_needs_a_new_ttl() {
        let mut v = Vouch::held(
            3,
            SessionStatus::Active,
            Pulse::active_at(0),
            12_000,
            0,
            &t(),
        );
        assert!(v.beat(3, 9_000, None, &t(), MARGIN));
        let due = v.due().unwrap();
        v.written(&due, &t());
        assert!(
            !v.beat(3, 10_000, None, &t(), MARGIN),
            "the store renews the TTL"
        );
    }

    #[test]
    fn a_write_confirmed_late_keeps_the_beats_answered_since() {
        let mut v = fresh();
        assert!(v.beat(3, 1_000, None, &t(), MARGIN));
        let first = v.due().unwrap();
        assert!(v.beat(3, 2_000, None, &t(), MARGIN));
        v.written(&first, &t());
        assert_eq!(v.due().unwrap().pulse.last_heartbeat_at, 2_000);
    }

    #[test]
    fn a_floor_keeps_older_epochs_out() {
        let f = Vouch::floor(5, 0);
        assert!(!f.yields_to(4));
        assert!(f.yields_to(5));
        assert!(f.idle_since(1));
        assert!(!f.idle_since(0));
    }
}
