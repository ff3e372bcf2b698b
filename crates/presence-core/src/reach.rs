//! Reachability: can a user be reached now for what a caller needs, on
//! which session first, and if not, how likely soon. Presence tells who is
//! here; this tells whether ringing them makes sense ("wait for readiness
//! instead of ringing").
//!
//! Derived like status, never stored: a pure function of the user's
//! sessions, each with its derived status, its activity, the readiness its
//! client declares and the capabilities it has. One session's answer:
//!
//! | the session | reachability | reason |
//! |---|---|---|
//! | lacks a needed capability | `no` | `missing_capability` |
//! | declares `unavailable` | `no` | `unavailable` |
//! | declares `busy` / `dnd` | `unlikely` | `busy` / `dnd` |
//! | available, `active` (foreground, in use) | `now` | `ready` |
//! | available, `idle` | `soon` | `idle` |
//! | available, `away` in the background | `soon` | `background` |
//! | available, `away` in front | `soon` | `away` |
//! | available, `stale` | `unlikely` | `stale` |
//!
//! The user's answer is their best session's, ranked by reachability, then
//! by reason in the order of [`ReachReason`], then by status, then the most
//! recently active, then by session id (so it does not depend on the order
//! the sessions are listed in). A user with no session is `no`, `offline`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::SessionId;
use crate::session::{Activity, SessionStatus};
use crate::time::Millis;
use crate::user::Confidence;

/// Whether a session may be interrupted, as its client declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// Can take a call or a prompt.
    #[default]
    Available,
    /// Already in a call (or the like): reachable, but not now.
    Busy,
    /// Asked not to be disturbed.
    Dnd,
    /// Cannot take one at all here (no microphone, a kiosk, ...).
    Unavailable,
}

impl Readiness {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Available => "available",
            Readiness::Busy => "busy",
            Readiness::Dnd => "dnd",
            Readiness::Unavailable => "unavailable",
        }
    }

    /// Whether this is the default, `available` (left out on the wire).
    pub fn is_available(&self) -> bool {
        *self == Readiness::Available
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "available" => Some(Readiness::Available),
            "busy" => Some(Readiness::Busy),
            "dnd" => Some(Readiness::Dnd),
            "unavailable" => Some(Readiness::Unavailable),
            _ => None,
        }
    }
}

/// The longest capability name, in bytes.
pub const MAX_CAPABILITY_LEN: usize = 32;

/// Why a list of capabilities was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// A name is empty, too long, or has a byte outside `[a-z0-9_.:-]`.
    #[error("{0:?} is not a capability: 1 to {MAX_CAPABILITY_LEN} bytes of a-z 0-9 _ . : -")]
    BadName(String),
    /// More names than the limit.
    #[error("at most {limit} capabilities")]
    TooMany {
        /// The limit.
        limit: usize,
    },
}

/// What a session can do: `audio`, `video`, `screen`, or names of the
/// application's own. A set: order and repeats do not matter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(BTreeSet<String>);

impl Capabilities {
    /// Validates `names` (each 1..=[`MAX_CAPABILITY_LEN`] bytes of
    /// `[a-z0-9_.:-]`), at most `limit` distinct ones.
    pub fn parse<I, S>(names: I, limit: usize) -> Result<Self, CapabilityError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for name in names {
            let name = name.as_ref();
            let ok = !name.is_empty()
                && name.len() <= MAX_CAPABILITY_LEN
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'_' | b'.' | b':' | b'-')
                });
            if !ok {
                return Err(CapabilityError::BadName(name.chars().take(40).collect()));
            }
            set.insert(name.to_owned());
            if set.len() > limit {
                return Err(CapabilityError::TooMany { limit });
            }
        }
        Ok(Capabilities(set))
    }

    /// Whether every capability of `need` is here.
    pub fn covers(&self, need: &Capabilities) -> bool {
        need.0.is_subset(&self.0)
    }

    /// The names, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Capabilities {
    /// The names joined with `,` (how a Redis session hash keeps them).
    pub fn joined(&self) -> String {
        self.iter().collect::<Vec<_>>().join(",")
    }

    /// The set a hash field holds (as [`Capabilities::joined`] wrote it):
    /// names that are not valid are dropped, never an error, since the store
    /// only ever wrote valid ones.
    pub fn from_joined(s: &str) -> Self {
        Capabilities(
            s.split(',')
                .filter(|n| Capabilities::parse([*n], 1).is_ok())
                .map(str::to_owned)
                .collect(),
        )
    }
}

/// What a session's client declares about taking a call: its readiness and
/// its capabilities. A session fact like its handle: kept in the store,
/// fenced by epoch, carried by events and room views (left out when it is
/// the default: `available`, no capabilities).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Declared {
    /// Whether it may be interrupted.
    #[serde(default, skip_serializing_if = "Readiness::is_available")]
    pub readiness: Readiness,
    /// What it can do.
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
}

/// How reachable a user is for a need, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// A session is in use, in front, available and capable: ring it.
    Now,
    /// A live session is idle, away or in the background: likely to answer a
    /// notification.
    Soon,
    /// Only sessions that are busy, asked not to be disturbed, or stale.
    Unlikely,
    /// Offline, or no session can (or will) take it.
    No,
}

/// Why a user is as reachable as they are: their best session's reason.
/// The order is the ranking among sessions of equal reachability, the one
/// to ring first first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReachReason {
    /// Active, in front, available, capable.
    Ready,
    /// Available but idle.
    Idle,
    /// Available but in the background.
    Background,
    /// Available, in front, but nobody has used it for a long while.
    Away,
    /// Declares it is busy.
    Busy,
    /// Declares do-not-disturb.
    Dnd,
    /// Its heartbeats stopped: maybe gone, maybe reconnecting.
    Stale,
    /// Declares it cannot take it.
    Unavailable,
    /// Lacks a needed capability.
    MissingCapability,
    /// The user has no session.
    Offline,
}

/// One session as reachability sees it.
#[derive(Debug, Clone, Copy)]
pub struct ReachSignal<'a> {
    /// The session.
    pub session_id: &'a SessionId,
    /// Its derived status now.
    pub status: SessionStatus,
    /// The activity its client last reported.
    pub activity: Activity,
    /// The readiness its client declares.
    pub readiness: Readiness,
    /// What it can do.
    pub capabilities: &'a Capabilities,
    /// Its last reported activity.
    pub last_active_at: Millis,
}

/// The answer for a user and a need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reach {
    /// How reachable.
    pub reachability: Reachability,
    /// How much to trust it.
    pub confidence: Confidence,
    /// The session to ring first (none when `no`).
    pub session: Option<SessionId>,
    /// Why (the best session's reason).
    pub reason: ReachReason,
}

/// One session's reachability and reason for `need` (the table above).
pub fn session_reach(s: &ReachSignal<'_>, need: &Capabilities) -> (Reachability, ReachReason) {
    use ReachReason as R;
    if !s.capabilities.covers(need) {
        return (Reachability::No, R::MissingCapability);
    }
    match s.readiness {
        Readiness::Unavailable => (Reachability::No, R::Unavailable),
        Readiness::Busy => (Reachability::Unlikely, R::Busy),
        Readiness::Dnd => (Reachability::Unlikely, R::Dnd),
        Readiness::Available => match s.status {
            SessionStatus::Active => (Reachability::Now, R::Ready),
            SessionStatus::Idle => (Reachability::Soon, R::Idle),
            SessionStatus::Away if s.activity == Activity::Background => {
                (Reachability::Soon, R::Background)
            }
            SessionStatus::Away => (Reachability::Soon, R::Away),
            SessionStatus::Stale => (Reachability::Unlikely, R::Stale),
        },
    }
}

/// Derives a user's reachability for `need` from their sessions.
pub fn derive_reach<'a, I>(sessions: I, need: &Capabilities) -> Reach
where
    I: IntoIterator<Item = ReachSignal<'a>>,
{
    let best = sessions
        .into_iter()
        .map(|s| {
            let (reachability, reason) = session_reach(&s, need);
            (
                (
                    reachability,
                    reason,
                    s.status,
                    std::cmp::Reverse(s.last_active_at),
                    s.session_id,
                ),
                s,
            )
        })
        .min_by(|a, b| a.0.cmp(&b.0));
    let Some(((reachability, reason, ..), s)) = best else {
        return Reach {
            reachability: Reachability::No,
            confidence: Confidence::Low,
            session: None,
            reason: ReachReason::Offline,
        };
    };
    let confidence = match (reachability, reason) {
        (Reachability::Now, _) => Confidence::High,
        (Reachability::Unlikely, ReachReason::Stale) => Confidence::Low,
        _ => Confidence::Medium,
    };
    Reach {
        reachability,
        confidence,
        session: (reachability != Reachability::No).then(|| s.session_id.clone()),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Activity::{Active as InUse, Background, Idle as Quiet};
    use ReachReason as R;
    use Reachability::*;
    use Readiness::*;
    use SessionStatus::{Active, Away, Idle, Stale};

    fn caps(names: &[&str]) -> Capabilities {
        Capabilities::parse(names, 16).unwrap()
    }

    #[test]
    fn one_session_for_every_status_readiness_and_capability() {
        let audio = caps(&["audio"]);
        let none = caps(&[]);
        let id = SessionId::new("s").unwrap();
        // (status, activity, readiness, capable) -> (reachability, reason)
        let table = [
            (Active, InUse, Available, true, Now, R::Ready),
            (Idle, Quiet, Available, true, Soon, R::Idle),
            (Away, Background, Available, true, Soon, R::Background),
            (Away, InUse, Available, true, Soon, R::Away),
            (Stale, InUse, Available, true, Unlikely, R::Stale),
            (Active, InUse, Busy, true, Unlikely, R::Busy),
            (Idle, Quiet, Busy, true, Unlikely, R::Busy),
            (Away, Background, Busy, true, Unlikely, R::Busy),
            (Stale, InUse, Busy, true, Unlikely, R::Busy),
            (Active, InUse, Dnd, true, Unlikely, R::Dnd),
            (Idle, Quiet, Dnd, true, Unlikely, R::Dnd),
            (Away, Background, Dnd, true, Unlikely, R::Dnd),
            (Stale, InUse, Dnd, true, Unlikely, R::Dnd),
            (Active, InUse, Unavailable, true, No, R::Unavailable),
            (Idle, Quiet, Unavailable, true, No, R::Unavailable),
            (Away, Background, Unavailable, true, No, R::Unavailable),
            (Stale, InUse, Unavailable, true, No, R::Unavailable),
        ];
        let mut rows = 0;
        for (status, activity, readiness, capable, reach, reason) in table {
            for capable in [capable, false] {
                let s = ReachSignal {
                    session_id: &id,
                    status,
                    activity,
                    readiness,
                    capabilities: if capable { &audio } else { &none },
                    last_active_at: 0,
                };
                let want = if capable {
                    (reach, reason)
                } else {
                    (No, R::MissingCapability)
                };
                assert_eq!(
                    session_reach(&s, &audio),
                    want,
                    "{status:?} {activity:?} {readiness:?} capable={capable}"
                );
                // Needing nothing, every session is capable.
                assert_eq!(session_reach(&s, &none), (reach, reason));
                rows += 1;
            }
        }
        assert_eq!(rows, 4 * 4 * 2 + 2, "every status x readiness x capability");
    }

    #[test]
    fn the_capable_foreground_device_is_ranked_first() {
        let (phone, laptop) = (
            SessionId::new("phone").unwrap(),
            SessionId::new("laptop").unwrap(),
        );
        let av = caps(&["audio", "video"]);
        let a = caps(&["audio"]);
        let sig = |id, status, activity, c| ReachSignal {
            session_id: id,
            status,
            activity,
            readiness: Available,
            capabilities: c,
            last_active_at: 10,
        };
        // The phone is in front but has no camera; the laptop is idle with one.
        let both = [
            sig(&phone, Active, InUse, &a),
            sig(&laptop, Idle, Quiet, &av),
        ];
        let r = derive_reach(both, &caps(&["audio", "video"]));
        assert_eq!((r.reachability, r.reason), (Soon, R::Idle));
        assert_eq!(r.session, Some(laptop.clone()));
        // For audio alone the phone rings now.
        let r = derive_reach(both, &caps(&["audio"]));
        assert_eq!((r.reachability, r.confidence), (Now, Confidence::High));
        assert_eq!(r.session, Some(phone));
        // Nobody: offline, nothing to ring.
        let r = derive_reach([], &a);
        assert_eq!(
            (r.reachability, r.reason, r.session),
            (No, R::Offline, None)
        );
        assert_eq!(r.confidence, Confidence::Low);
    }

    #[test]
    fn capabilities_are_validated_and_limited() {
        assert_eq!(
            caps(&["video", "audio", "audio"])
                .iter()
                .collect::<Vec<_>>(),
            ["audio", "video"]
        );
        assert!(matches!(
            Capabilities::parse(["Audio"], 4),
            Err(CapabilityError::BadName(_))
        ));
        assert!(Capabilities::parse([""], 4).is_err());
        assert!(Capabilities::parse(["x".repeat(33)], 4).is_err());
        assert!(Capabilities::parse(["app:whiteboard-v2"], 4).is_ok());
        assert_eq!(
            Capabilities::parse(["a", "b", "c"], 2),
            Err(CapabilityError::TooMany { limit: 2 })
        );
    }

    fn any_session(
    ) -> impl Strategy<Value = (SessionStatus, Activity, Readiness, Vec<&'static str>, i64)> {
        (
            prop_oneof![Just(Active), Just(Idle), Just(Away), Just(Stale)],
            prop_oneof![Just(InUse), Just(Quiet), Just(Background)],
            prop_oneof![Just(Available), Just(Busy), Just(Dnd), Just(Unavailable)],
            prop::sample::subsequence(vec!["audio", "video", "screen"], 0..=3),
            0i64..1_000,
        )
    }

    type Raw = (SessionStatus, Activity, Readiness, Vec<&'static str>, i64);

    /// Derives over `raw` (session ids by position) for `need`.
    fn reach(raw: &[Raw], need: &[&str]) -> Reach {
        let ids: Vec<SessionId> = (0..raw.len())
            .map(|i| SessionId::new(&format!("s{i}")).unwrap())
            .collect();
        let c: Vec<Capabilities> = raw.iter().map(|r| caps(&r.3)).collect();
        derive_reach(
            raw.iter().enumerate().map(|(i, r)| ReachSignal {
                session_id: &ids[i],
                status: r.0,
                activity: r.1,
                readiness: r.2,
                capabilities: &c[i],
                last_active_at: r.4,
            }),
            &caps(need),
        )
    }

    proptest! {
        #[test]
        fn the_answer_does_not_depend_on_session_order(
            (v, shuffled) in prop::collection::vec(any_session(), 0..8)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
            need in prop::sample::subsequence(vec!["audio", "video"], 0..=2),
        ) {
            // Ids follow the sessions, not their positions.
            let ids: Vec<SessionId> = (0..v.len()).map(|i| SessionId::new(&format!("s{i}")).unwrap()).collect();
            let c: Vec<Capabilities> = v.iter().map(|r| caps(&r.3)).collect();
            let signals: Vec<ReachSignal<'_>> = v.iter().enumerate().map(|(i, r)| ReachSignal {
                session_id: &ids[i], status: r.0, activity: r.1, readiness: r.2,
                capabilities: &c[i], last_active_at: r.4,
            }).collect();
            let mut reordered = signals.clone();
            // The same sessions in the order `shuffled` lists their facts.
            let mut used = vec![false; v.len()];
            for (k, r) in shuffled.iter().enumerate() {
                let i = (0..v.len()).find(|&i| !used[i] && v[i] == *r).unwrap();
                used[i] = true;
                reordered[k] = signals[i];
            }
            let need = caps(&need);
            prop_assert_eq!(derive_reach(signals, &need), derive_reach(reordered, &need));
        }

        #[test]
        fn another_session_never_makes_a_user_less_reachable(
            v in prop::collection::vec(any_session(), 0..8),
            extra in any_session(),
            need in prop::sample::subsequence(vec!["audio", "video"], 0..=2),
        ) {
            let before = reach(&v, &need);
            let mut more = v.clone();
            more.push(extra);
            prop_assert!(reach(&more, &need).reachability <= before.reachability);
        }

        #[test]
        fn needing_less_never_makes_a_user_less_reachable(
            v in prop::collection::vec(any_session(), 0..8),
            need in prop::sample::subsequence(vec!["audio", "video", "screen"], 0..=3),
            keep in prop::sample::subsequence(vec![0usize, 1, 2], 0..=3),
        ) {
            let less: Vec<&str> = keep.iter().filter_map(|&i| need.get(i).copied()).collect();
            prop_assert!(reach(&v, &less).reachability <= reach(&v, &need).reachability);
        }

        #[test]
        fn becoming_available_never_makes_a_user_less_reachable(
            v in prop::collection::vec(any_session(), 1..8),
            which in any::<prop::sample::Index>(),
            need in prop::sample::subsequence(vec!["audio", "video"], 0..=2),
        ) {
            let mut freed = v.clone();
            freed[which.index(v.len())].2 = Available;
            prop_assert!(reach(&freed, &need).reachability <= reach(&v, &need).reachability);
        }

        #[test]
        fn now_means_a_capable_available_session_in_use(
            v in prop::collection::vec(any_session(), 0..8),
            need in prop::sample::subsequence(vec!["audio", "video"], 0..=2),
        ) {
            let r = reach(&v, &need);
            let ready = v.iter().any(|s| {
                s.0 == Active && s.2 == Available && need.iter().all(|n| s.3.contains(n))
            });
            prop_assert_eq!(r.reachability == Now, ready);
            prop_assert_eq!(r.session.is_some(), r.reachability != No);
            prop_assert_eq!(r.reason == R::Offline, v.is_empty());
        }
    }
}
