//! The facts kept per session, and the derivation of its status from them.
//!
//! A session's status is never set: it is a function of its facts and the
//! current time. Stores record the last derived status only to know when it
//! changed (that is when observers must hear about it), and re-derive at the
//! [`next_deadline`](Pulse::next_deadline) this module computes.

use serde::{Deserialize, Serialize};

use crate::config::Timings;
use crate::ids::{NodeId, SessionId, UserId};
use crate::reach::Declared;
use crate::time::Millis;
use crate::JsonMap;

/// What the client reports about its human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    /// Someone is using it.
    #[default]
    Active,
    /// Open and visible, but no input for a while (the client's judgement).
    Idle,
    /// Hidden (a background tab, a minimised app): its timers may be throttled.
    Background,
}

impl Activity {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Active => "active",
            Activity::Idle => "idle",
            Activity::Background => "background",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Activity::Active),
            "idle" => Some(Activity::Idle),
            "background" => Some(Activity::Background),
            _ => None,
        }
    }
}

/// The derived status of a live session, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// Active heartbeat within `idleAfterMs`.
    Active,
    /// Connected, but no activity for `idleAfterMs`, or the client reports idle.
    Idle,
    /// No activity for `awayAfterMs`, or the client is in the background.
    Away,
    /// No heartbeat for the timeout, or transport closed without leave: kept
    /// for the reconnect grace window.
    Stale,
}

impl SessionStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Idle => "idle",
            SessionStatus::Away => "away",
            SessionStatus::Stale => "stale",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(SessionStatus::Active),
            "idle" => Some(SessionStatus::Idle),
            "away" => Some(SessionStatus::Away),
            "stale" => Some(SessionStatus::Stale),
            _ => None,
        }
    }
}

/// A session's status at one instant, including "it should be gone".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Still present with this status.
    Live(SessionStatus),
    /// Past its removal deadline: it must be removed and observers told.
    Expired,
}

/// Everything the lifecycle depends on, per session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionFacts {
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// Display name given at hello, if any.
    pub handle: Option<String>,
    /// The node whose connection owns it.
    pub node_id: NodeId,
    /// Fencing epoch of the owning connection (server-issued).
    pub epoch: u64,
    /// The activity last reported by the client.
    pub activity: Activity,
    /// Last heartbeat (or hello/resume) accepted.
    pub last_heartbeat_at: Millis,
    /// Last time the client reported `active`.
    pub last_active_at: Millis,
    /// When the session was first created.
    pub connected_at: Millis,
    /// When its transport closed without a leave; `None` while connected.
    pub disconnected_at: Option<Millis>,
    /// Small JSON object given at hello.
    pub meta: Option<JsonMap>,
    /// Readiness and capabilities, as its client last declared them.
    pub declared: Declared,
}

impl SessionFacts {
    /// The facts the status is derived from.
    pub fn pulse(&self) -> Pulse {
        Pulse {
            activity: self.activity,
            last_heartbeat_at: self.last_heartbeat_at,
            last_active_at: self.last_active_at,
            disconnected_at: self.disconnected_at,
        }
    }

    /// See [`Pulse::heartbeat_timeout`].
    pub fn heartbeat_timeout(&self, t: &Timings) -> Millis {
        self.pulse().heartbeat_timeout(t)
    }

    /// See [`Pulse::removal_deadline`].
    pub fn removal_deadline(&self, t: &Timings) -> Millis {
        self.pulse().removal_deadline(t)
    }

    /// See [`Pulse::liveness`].
    pub fn liveness(&self, now: Millis, t: &Timings) -> Liveness {
        self.pulse().liveness(now, t)
    }

    /// See [`Pulse::next_deadline`].
    pub fn next_deadline(&self, now: Millis, t: &Timings) -> Millis {
        self.pulse().next_deadline(now, t)
    }

    /// See [`Pulse::record_heartbeat`].
    pub fn record_heartbeat(&mut self, now: Millis, activity: Option<Activity>) {
        let mut p = self.pulse();
        p.record_heartbeat(now, activity);
        self.activity = p.activity;
        self.last_heartbeat_at = p.last_heartbeat_at;
        self.last_active_at = p.last_active_at;
    }
}

/// The part of a session's facts that its status is derived from: what its
/// client last reported and when. The one place of the lifecycle rules in
/// Rust (`lua/lib/prelude.lua` holds them for Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulse {
    /// The activity last reported by the client.
    pub activity: Activity,
    /// Last heartbeat (or hello/resume) accepted.
    pub last_heartbeat_at: Millis,
    /// Last time the client reported `active`.
    pub last_active_at: Millis,
    /// When its transport closed without a leave; `None` while connected.
    pub disconnected_at: Option<Millis>,
}

impl Pulse {
    /// A connected session whose client reported `active` at `at`.
    pub fn active_at(at: Millis) -> Self {
        Self {
            activity: Activity::Active,
            last_heartbeat_at: at,
            last_active_at: at,
            disconnected_at: None,
        }
    }

    /// The silence after which this session is stale: background sessions get
    /// the longer `backgroundTimeoutMs` so that throttled timers do not flap.
    pub fn heartbeat_timeout(&self, t: &Timings) -> Millis {
        if self.activity == Activity::Background {
            t.background_timeout_ms
        } else {
            t.heartbeat_timeout_ms
        }
    }

    /// When the session must be removed if nothing else happens.
    pub fn removal_deadline(&self, t: &Timings) -> Millis {
        let silent = self
            .last_heartbeat_at
            .saturating_add(self.heartbeat_timeout(t))
            .saturating_add(t.reconnect_grace_ms);
        match self.disconnected_at {
            Some(d) => silent.min(d.saturating_add(t.reconnect_grace_ms)),
            None => silent,
        }
    }

    /// The status at `now`, following docs/protocol.md "Model":
    /// removal after timeout + grace (or grace after a disconnect), stale after
    /// the timeout or a disconnect, away when in the background or inactive for
    /// `awayAfterMs`, idle when the client says so or inactive for
    /// `idleAfterMs`, active otherwise.
    pub fn liveness(&self, now: Millis, t: &Timings) -> Liveness {
        if now >= self.removal_deadline(t) {
            return Liveness::Expired;
        }
        if self.disconnected_at.is_some()
            || now
                >= self
                    .last_heartbeat_at
                    .saturating_add(self.heartbeat_timeout(t))
        {
            return Liveness::Live(SessionStatus::Stale);
        }
        if self.activity == Activity::Background {
            return Liveness::Live(SessionStatus::Away);
        }
        let inactive = now.saturating_sub(self.last_active_at);
        if inactive >= t.away_after_ms {
            return Liveness::Live(SessionStatus::Away);
        }
        if self.activity == Activity::Idle || inactive >= t.idle_after_ms {
            return Liveness::Live(SessionStatus::Idle);
        }
        Liveness::Live(SessionStatus::Active)
    }

    /// The earliest instant after `now` at which [`liveness`](Self::liveness)
    /// may change if no event arrives. Status is constant between these
    /// instants, so a store only needs to look at a session again then.
    pub fn next_deadline(&self, now: Millis, t: &Timings) -> Millis {
        let removal = self.removal_deadline(t);
        if now >= removal {
            return now;
        }
        let hb_timeout = self
            .last_heartbeat_at
            .saturating_add(self.heartbeat_timeout(t));
        let candidates = [
            self.last_active_at.saturating_add(t.idle_after_ms),
            self.last_active_at.saturating_add(t.away_after_ms),
            hb_timeout,
            removal,
        ];
        candidates
            .into_iter()
            .filter(|&c| c > now)
            .min()
            .unwrap_or(removal)
    }

    /// Applies an accepted heartbeat at `now`. Only a heartbeat that reports
    /// `active` counts as activity; one that reports nothing proves liveness
    /// only, so a client that stops reporting activity turns idle after
    /// `idleAfterMs` even while it keeps heartbeating. The caller re-derives the
    /// status and compares it with the recorded one.
    pub fn record_heartbeat(&mut self, now: Millis, activity: Option<Activity>) {
        self.last_heartbeat_at = now.max(self.last_heartbeat_at);
        if let Some(a) = activity {
            self.activity = a;
        }
        if activity == Some(Activity::Active) {
            self.last_active_at = now.max(self.last_active_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(at: Millis) -> SessionFacts {
        SessionFacts {
            session_id: SessionId::new("s1").unwrap(),
            user_id: UserId::new("u1").unwrap(),
            handle: None,
            node_id: NodeId::new("n1").unwrap(),
            epoch: 1,
            activity: Activity::Active,
            last_heartbeat_at: at,
            last_active_at: at,
            connected_at: at,
            disconnected_at: None,
            meta: None,
            declared: Default::default(),
        }
    }

    fn status(f: &SessionFacts, now: Millis) -> Liveness {
        f.liveness(now, &Timings::default())
    }

    use Liveness::*;
    use SessionStatus::*;

    #[test]
    fn active_then_stale_then_removed_without_heartbeats() {
        let f = facts(0);
        assert_eq!(status(&f, 0), Live(Active));
        assert_eq!(status(&f, 19_999), Live(Active));
        assert_eq!(status(&f, 20_000), Live(Stale));
        assert_eq!(status(&f, 34_999), Live(Stale));
        assert_eq!(status(&f, 35_000), Expired);
    }

    #[test]
    fn idle_then_away_with_heartbeats_but_no_activity() {
        let mut f = facts(0);
        let t = Timings::default();
        let mut now = 0;
        let mut seen = vec![];
        while now <= 310_000 {
            f.record_heartbeat(now, Some(Activity::Idle));
            if let Live(s) = f.liveness(now, &t) {
                if seen.last() != Some(&s) {
                    seen.push(s);
                }
            }
            now += 10_000;
        }
        // The client reports idle at once, so the session is idle at once; away after 300 s.
        assert_eq!(seen, vec![Idle, Away]);
        assert_eq!(f.liveness(300_000, &t), Live(Away));
    }

    #[test]
    fn idle_after_inactivity_even_if_client_says_nothing() {
        let mut f = facts(0);
        f.record_heartbeat(10_000, Some(Activity::Active));
        f.record_heartbeat(40_000, None);
        assert_eq!(status(&f, 54_999), Live(Active));
        f.record_heartbeat(55_000, None);
        // Heartbeats without an activity report prove liveness, not activity.
        assert_eq!(status(&f, 55_000), Live(Idle));
        f.record_heartbeat(56_000, Some(Activity::Active));
        assert_eq!(status(&f, 56_000), Live(Active));
        let mut g = facts(0);
        g.record_heartbeat(1, Some(Activity::Idle));
        assert_eq!(status(&g, 1), Live(Idle));
    }

    #[test]
    fn background_is_away_and_gets_the_longer_timeout() {
        let mut f = facts(0);
        f.record_heartbeat(0, Some(Activity::Background));
        assert_eq!(status(&f, 1), Live(Away));
        // Throttled timers: one heartbeat a minute keeps it away, never stale.
        for minute in 1..10 {
            f.record_heartbeat(minute * 60_000, None);
            assert_eq!(status(&f, minute * 60_000 + 59_999), Live(Away));
        }
        let last = 9 * 60_000;
        assert_eq!(status(&f, last + 120_000), Live(Stale));
        assert_eq!(status(&f, last + 135_000), Expired);
    }

    #[test]
    fn disconnect_is_stale_for_the_grace_window() {
        let mut f = facts(0);
        f.disconnected_at = Some(5_000);
        assert_eq!(status(&f, 5_000), Live(Stale));
        assert_eq!(status(&f, 19_999), Live(Stale));
        assert_eq!(status(&f, 20_000), Expired);
    }

    #[test]
    fn next_deadline_is_where_status_changes() {
        let t = Timings::default();
        let f = facts(0);
        let mut now = 0;
        let mut prev = f.liveness(now, &t);
        let mut steps = 0;
        while prev != Expired {
            let next = f.next_deadline(now, &t);
            assert!(next > now);
            // Constant strictly before the deadline.
            assert_eq!(f.liveness(next - 1, &t), prev);
            prev = f.liveness(next, &t);
            now = next;
            steps += 1;
            assert!(steps < 10);
        }
        assert_eq!(now, 35_000);
    }

    fn rank(l: Liveness) -> u8 {
        match l {
            Live(Active) => 0,
            Live(Idle) => 1,
            Live(Away) => 2,
            Live(Stale) => 3,
            Expired => 4,
        }
    }

    fn arb_facts() -> impl Strategy<Value = SessionFacts> {
        (
            prop_oneof![
                Just(Activity::Active),
                Just(Activity::Idle),
                Just(Activity::Background)
            ],
            0i64..400_000,
            0i64..400_000,
            prop::option::of(0i64..400_000),
        )
            .prop_map(|(activity, hb, active_back, disc)| {
                let mut f = facts(0);
                f.activity = activity;
                f.last_heartbeat_at = hb;
                f.last_active_at = hb - active_back.min(hb);
                f.disconnected_at = disc.map(|d| hb + d);
                f
            })
    }

    use proptest::prelude::*;

    proptest! {
        /// Without events, a session only ever decays: active, idle, away, stale, expired.
        #[test]
        fn without_events_status_only_decays(f in arb_facts(), t1 in 0i64..1_000_000, dt in 0i64..1_000_000) {
            let t = Timings::default();
            prop_assert!(rank(f.liveness(t1, &t)) <= rank(f.liveness(t1 + dt, &t)));
        }

        /// Status is constant from `now` until `next_deadline`, so re-deriving
        /// only at deadlines misses no transition.
        #[test]
        fn status_is_constant_until_the_next_deadline(f in arb_facts(), now in 0i64..1_000_000, frac in 0.0f64..1.0) {
            let t = Timings::default();
            let at_now = f.liveness(now, &t);
            let next = f.next_deadline(now, &t);
            if at_now == Expired {
                prop_assert_eq!(next, now);
            } else {
                prop_assert!(next > now);
                let mid = now + ((next - now - 1) as f64 * frac) as i64;
                prop_assert_eq!(f.liveness(mid, &t), at_now);
                prop_assert_eq!(f.liveness(next - 1, &t), at_now);
            }
        }

        /// An `active` heartbeat always brings a connected session back to active.
        #[test]
        fn an_active_heartbeat_revives(mut f in arb_facts(), later in 0i64..1_000_000) {
            f.disconnected_at = None;
            let now = f.last_heartbeat_at + later;
            f.record_heartbeat(now, Some(Activity::Active));
            prop_assert_eq!(f.liveness(now, &Timings::default()), Live(Active));
        }
    }
}
