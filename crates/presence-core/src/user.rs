//! User status and confidence, derived from a set of sessions.

use serde::{Deserialize, Serialize};

use crate::session::SessionStatus;
use crate::time::Millis;

/// A user's derived status, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    /// At least one session is active.
    Active,
    /// None active, at least one idle.
    Idle,
    /// None active or idle, at least one away.
    Away,
    /// Only stale sessions left: maybe gone, maybe reconnecting.
    Stale,
    /// No session at all.
    Offline,
}

impl From<SessionStatus> for UserStatus {
    fn from(s: SessionStatus) -> Self {
        match s {
            SessionStatus::Active => UserStatus::Active,
            SessionStatus::Idle => UserStatus::Idle,
            SessionStatus::Away => UserStatus::Away,
            SessionStatus::Stale => UserStatus::Stale,
        }
    }
}

/// How much a user's status can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Active, and every session has a fresh heartbeat.
    High,
    /// Idle or away, or some of the sessions are stale.
    Medium,
    /// Only stale sessions (or none).
    Low,
}

/// One session as user derivation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSignal {
    /// The session's derived status.
    pub status: SessionStatus,
    /// Its last heartbeat.
    pub last_heartbeat_at: Millis,
    /// Its last reported activity.
    pub last_active_at: Millis,
}

/// The derived presence of one user over some set of their sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSummary {
    /// Derived status.
    pub status: UserStatus,
    /// How much to trust it.
    pub confidence: Confidence,
    /// How many sessions it was derived from.
    pub session_count: u32,
    /// The last time any session reported activity (0 when unknown).
    pub last_seen_at: Millis,
    /// The last heartbeat of any session (0 when unknown).
    pub last_heartbeat_at: Millis,
    /// For an offline user, when their last session ended, as long as it
    /// is kept (`PRESENCE_LAST_SEEN_TTL_S`); 0 otherwise (left out of JSON).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_online_at: Millis,
}

fn is_zero(n: &Millis) -> bool {
    *n == 0
}

impl UserSummary {
    /// The summary of a user with no sessions.
    pub const OFFLINE: UserSummary = UserSummary {
        status: UserStatus::Offline,
        confidence: Confidence::Low,
        session_count: 0,
        last_seen_at: 0,
        last_heartbeat_at: 0,
        last_online_at: 0,
    };
}

/// Derives a user's status from their sessions. The result does not depend on
/// the order of `sessions` (it only takes minima, maxima and counts).
pub fn derive_user<I>(sessions: I) -> UserSummary
where
    I: IntoIterator<Item = SessionSignal>,
{
    let mut best: Option<SessionStatus> = None;
    let mut count = 0u32;
    let mut stale = 0u32;
    let mut last_seen_at = 0;
    let mut last_heartbeat_at = 0;
    for s in sessions {
        count += 1;
        if s.status == SessionStatus::Stale {
            stale += 1;
        }
        best = Some(best.map_or(s.status, |b| b.min(s.status)));
        last_seen_at = last_seen_at.max(s.last_active_at);
        last_heartbeat_at = last_heartbeat_at.max(s.last_heartbeat_at);
    }
    let Some(best) = best else {
        return UserSummary::OFFLINE;
    };
    let confidence = if stale == count {
        Confidence::Low
    } else if best == SessionStatus::Active && stale == 0 {
        Confidence::High
    } else {
        Confidence::Medium
    };
    UserSummary {
        status: best.into(),
        confidence,
        session_count: count,
        last_seen_at,
        last_heartbeat_at,
        last_online_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use SessionStatus::*;

    fn sig(status: SessionStatus, hb: Millis) -> SessionSignal {
        SessionSignal {
            status,
            last_heartbeat_at: hb,
            last_active_at: hb / 2,
        }
    }

    #[test]
    fn rules_of_the_contract() {
        let u = |v: Vec<SessionStatus>| derive_user(v.into_iter().map(|s| sig(s, 10)));
        assert_eq!(u(vec![]).status, UserStatus::Offline);
        assert_eq!(u(vec![Idle, Active, Stale]).status, UserStatus::Active);
        assert_eq!(u(vec![Away, Idle]).status, UserStatus::Idle);
        assert_eq!(u(vec![Stale, Away]).status, UserStatus::Away);
        assert_eq!(u(vec![Stale, Stale]).status, UserStatus::Stale);

        assert_eq!(u(vec![Active, Active]).confidence, Confidence::High);
        assert_eq!(u(vec![Active, Stale]).confidence, Confidence::Medium);
        assert_eq!(u(vec![Idle]).confidence, Confidence::Medium);
        assert_eq!(u(vec![Away]).confidence, Confidence::Medium);
        assert_eq!(u(vec![Stale]).confidence, Confidence::Low);
        assert_eq!(u(vec![Stale, Stale]).session_count, 2);
    }

    fn any_status() -> impl Strategy<Value = SessionStatus> {
        prop_oneof![Just(Active), Just(Idle), Just(Away), Just(Stale)]
    }

    proptest! {
        #[test]
        fn derivation_does_not_depend_on_session_order(
            v in prop::collection::vec((any_status(), 0i64..1_000_000), 0..12),
            seed in any::<u64>(),
        ) {
            let sigs: Vec<_> = v.iter().map(|&(s, hb)| sig(s, hb)).collect();
            let mut shuffled = sigs.clone();
            // A deterministic shuffle driven by the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut reversed = sigs.clone();
            reversed.reverse();
            prop_assert_eq!(derive_user(sigs.clone()), derive_user(shuffled));
            prop_assert_eq!(derive_user(sigs), derive_user(reversed));
        }

        #[test]
        fn status_is_the_best_session_status(v in prop::collection::vec(any_status(), 1..12)) {
            let u = derive_user(v.iter().map(|&s| sig(s, 1)));
            prop_assert_eq!(u.status, UserStatus::from(*v.iter().min().unwrap()));
            prop_assert_eq!(u.session_count as usize, v.len());
        }
    }
}
