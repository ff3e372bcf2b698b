//! Lifecycle events: what a backend hears of presence, cluster-wide and at
//! the user level (docs/events.md).
//!
//! A room's v1 events ([`crate::event`]) describe sessions, for the room's
//! observers. Lifecycle events are coarser: a user came online or went
//! offline, their derived status changed, a user's first session joined a
//! room or their last one left it, a room filled or emptied, an intent
//! resolved. A second tab, a resume or a rolling restart changes none of
//! those, so it produces none.
//!
//! Each is decided once, by the store operation that causes it (the stores
//! see the before and after of the user's or the room's membership inside
//! one atomic step), and appended to the lifecycle stream, which webhooks
//! and stream consumers read.

use serde::{Deserialize, Serialize};

use crate::ids::{RoomId, SessionId, UserId};
use crate::reach::Capabilities;
use crate::time::Millis;
use crate::user::UserStatus;

/// One lifecycle event: `{ id, type, at, ... }` on the stream and in
/// webhook bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// Unique per event, kept across redeliveries: receivers deduplicate by it.
    pub id: String,
    /// When the change happened (the store's clock, ms since the epoch).
    pub at: Millis,
    /// What happened.
    #[serde(flatten)]
    pub kind: Lifecycle,
}

/// What happened, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Lifecycle {
    /// The user's first session appeared.
    #[serde(rename = "user.online", rename_all = "camelCase")]
    UserOnline {
        /// The user.
        user_id: UserId,
        /// Their derived status now.
        status: UserStatus,
    },
    /// The user's last session ended.
    #[serde(rename = "user.offline", rename_all = "camelCase")]
    UserOffline {
        /// The user.
        user_id: UserId,
        /// The last activity any of their sessions reported.
        last_seen_at: Millis,
    },
    /// The user's derived status changed while online.
    #[serde(rename = "user.status", rename_all = "camelCase")]
    UserStatus {
        /// The user.
        user_id: UserId,
        /// Their derived status now.
        status: UserStatus,
        /// What it was.
        previous: UserStatus,
    },
    /// The user's first session joined the room.
    #[serde(rename = "member.joined", rename_all = "camelCase")]
    MemberJoined {
        /// The room.
        room_id: RoomId,
        /// The user.
        user_id: UserId,
    },
    /// The user's last session in the room left it (or was removed).
    #[serde(rename = "member.left", rename_all = "camelCase")]
    MemberLeft {
        /// The room.
        room_id: RoomId,
        /// The user.
        user_id: UserId,
    },
    /// The room's first member joined.
    #[serde(rename = "room.occupied", rename_all = "camelCase")]
    RoomOccupied {
        /// The room.
        room_id: RoomId,
    },
    /// The room's last member left.
    #[serde(rename = "room.vacated", rename_all = "camelCase")]
    RoomVacated {
        /// The room.
        room_id: RoomId,
    },
    /// An intent's callee became reachable now.
    #[serde(rename = "intent.ready", rename_all = "camelCase")]
    IntentReady {
        /// The intent.
        intent_id: String,
        /// The caller.
        from: UserId,
        /// The callee.
        user_id: UserId,
        /// What the caller needed.
        need: Capabilities,
        /// The callee's session to ring.
        session_id: SessionId,
    },
    /// An intent's TTL passed before its callee became reachable.
    #[serde(rename = "intent.expired", rename_all = "camelCase")]
    IntentExpired {
        /// The intent.
        intent_id: String,
        /// The caller.
        from: UserId,
        /// The callee.
        user_id: UserId,
        /// What the caller needed.
        need: Capabilities,
    },
}

/// Every event type, as `type` names it (the webhook filter's vocabulary).
pub const EVENT_TYPES: [&str; 9] = [
    "user.online",
    "user.offline",
    "user.status",
    "member.joined",
    "member.left",
    "room.occupied",
    "room.vacated",
    "intent.ready",
    "intent.expired",
];

impl Lifecycle {
    /// The event's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Lifecycle::UserOnline { .. } => "user.online",
            Lifecycle::UserOffline { .. } => "user.offline",
            Lifecycle::UserStatus { .. } => "user.status",
            Lifecycle::MemberJoined { .. } => "member.joined",
            Lifecycle::MemberLeft { .. } => "member.left",
            Lifecycle::RoomOccupied { .. } => "room.occupied",
            Lifecycle::RoomVacated { .. } => "room.vacated",
            Lifecycle::IntentReady { .. } => "intent.ready",
            Lifecycle::IntentExpired { .. } => "intent.expired",
        }
    }

    /// What the event is about, for picking its stream shard: a user's
    /// events (and their memberships, and the intents made to them) share
    /// one shard, a room's occupancy is the room's.
    pub fn subject(&self) -> &str {
        match self {
            Lifecycle::UserOnline { user_id, .. }
            | Lifecycle::UserOffline { user_id, .. }
            | Lifecycle::UserStatus { user_id, .. }
            | Lifecycle::MemberJoined { user_id, .. }
            | Lifecycle::MemberLeft { user_id, .. }
            | Lifecycle::IntentReady { user_id, .. }
            | Lifecycle::IntentExpired { user_id, .. } => user_id.as_str(),
            Lifecycle::RoomOccupied { room_id } | Lifecycle::RoomVacated { room_id } => {
                room_id.as_str()
            }
        }
    }

    /// The event of a resolved intent (`None` while pending, and for a
    /// cancelled one: its caller knows).
    pub fn of_intent(intent: &crate::intent::Intent) -> Option<Lifecycle> {
        use crate::intent::IntentOutcome;
        let (intent_id, from, user_id, need) = (
            intent.id.clone(),
            intent.from.clone(),
            intent.to.clone(),
            intent.need.clone(),
        );
        match intent.outcome.as_ref()? {
            IntentOutcome::Reachable { session_id } => Some(Lifecycle::IntentReady {
                intent_id,
                from,
                user_id,
                need,
                session_id: session_id.clone(),
            }),
            IntentOutcome::Expired => Some(Lifecycle::IntentExpired {
                intent_id,
                from,
                user_id,
                need,
            }),
            IntentOutcome::Cancelled => None,
        }
    }

    /// The event, stamped.
    pub fn at(self, id: String, at: Millis) -> LifecycleEvent {
        LifecycleEvent { id, at, kind: self }
    }
}

/// The user-level events of one change to a user's sessions: the derived
/// status before and after it (`Offline` when they had none). The one rule
/// both stores apply.
pub fn user_change(
    user: &UserId,
    before: UserStatus,
    after: UserStatus,
    last_seen_at: Millis,
) -> Option<Lifecycle> {
    let user_id = user.clone();
    match (before, after) {
        (b, a) if b == a => None,
        (UserStatus::Offline, status) => Some(Lifecycle::UserOnline { user_id, status }),
        (_, UserStatus::Offline) => Some(Lifecycle::UserOffline {
            user_id,
            last_seen_at,
        }),
        (previous, status) => Some(Lifecycle::UserStatus {
            user_id,
            status,
            previous,
        }),
    }
}

/// Whether an event passes a webhook filter: each entry is a type
/// (`member.joined`), a family (`member.*`) or `*`; an empty filter passes
/// everything.
pub fn filter_matches(filter: &[String], type_name: &str) -> bool {
    filter.is_empty()
        || filter.iter().any(|f| {
            f == "*"
                || f == type_name
                || f.strip_suffix(".*").is_some_and(|family| {
                    type_name
                        .strip_prefix(family)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
        })
}

/// Checks a webhook filter entry (`PRESENCE_WEBHOOK_EVENTS`).
pub fn valid_filter(entry: &str) -> bool {
    entry == "*"
        || EVENT_TYPES.contains(&entry)
        || entry.strip_suffix(".*").is_some_and(|family| {
            EVENT_TYPES
                .iter()
                .any(|t| t.split('.').next() == Some(family))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn the_json_shape_is_flat_with_type() {
        let e = Lifecycle::MemberJoined {
            room_id: RoomId::new("doc").unwrap(),
            user_id: uid("ada"),
        }
        .at("e1".into(), 5);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "e1", "at": 5, "type": "member.joined", "roomId": "doc", "userId": "ada"})
        );
        let back: LifecycleEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        let off = Lifecycle::UserOffline {
            user_id: uid("ada"),
            last_seen_at: 9,
        };
        assert_eq!(
            serde_json::to_value(off.at("e2".into(), 10)).unwrap()["lastSeenAt"],
            9
        );
    }

    #[test]
    fn type_names_match_the_serialized_tag() {
        let all = [
            Lifecycle::UserOnline {
                user_id: uid("u"),
                status: UserStatus::Active,
            },
            Lifecycle::UserOffline {
                user_id: uid("u"),
                last_seen_at: 0,
            },
            Lifecycle::UserStatus {
                user_id: uid("u"),
                status: UserStatus::Idle,
                previous: UserStatus::Active,
            },
            Lifecycle::MemberJoined {
                room_id: RoomId::new("r").unwrap(),
                user_id: uid("u"),
            },
            Lifecycle::MemberLeft {
                room_id: RoomId::new("r").unwrap(),
                user_id: uid("u"),
            },
            Lifecycle::RoomOccupied {
                room_id: RoomId::new("r").unwrap(),
            },
            Lifecycle::RoomVacated {
                room_id: RoomId::new("r").unwrap(),
            },
            Lifecycle::IntentReady {
                intent_id: "i".into(),
                from: uid("a"),
                user_id: uid("u"),
                need: Capabilities::default(),
                session_id: SessionId::new("s").unwrap(),
            },
            Lifecycle::IntentExpired {
                intent_id: "i".into(),
                from: uid("a"),
                user_id: uid("u"),
                need: Capabilities::default(),
            },
        ];
        for (e, name) in all.iter().zip(EVENT_TYPES) {
            assert_eq!(e.type_name(), name);
            assert_eq!(serde_json::to_value(e).unwrap()["type"], name);
        }
    }

    #[test]
    fn user_changes() {
        use UserStatus::*;
        let u = uid("ada");
        assert_eq!(user_change(&u, Active, Active, 0), None);
        assert_eq!(user_change(&u, Offline, Offline, 0), None);
        assert!(matches!(
            user_change(&u, Offline, Idle, 0),
            Some(Lifecycle::UserOnline { status: Idle, .. })
        ));
        assert!(matches!(
            user_change(&u, Stale, Offline, 7),
            Some(Lifecycle::UserOffline {
                last_seen_at: 7,
                ..
            })
        ));
        assert!(matches!(
            user_change(&u, Active, Stale, 0),
            Some(Lifecycle::UserStatus {
                status: Stale,
                previous: Active,
                ..
            })
        ));
    }

    #[test]
    fn filters() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(filter_matches(&[], "user.online"));
        assert!(filter_matches(&f(&["*"]), "room.vacated"));
        assert!(filter_matches(&f(&["member.*"]), "member.left"));
        assert!(!filter_matches(&f(&["member.*"]), "user.online"));
        assert!(!filter_matches(&f(&["user.*"]), "users.x"));
        assert!(filter_matches(
            &f(&["user.offline", "room.*"]),
            "user.offline"
        ));
        assert!(!filter_matches(&f(&["user.offline"]), "user.online"));
        assert!(valid_filter("intent.*"));
        assert!(valid_filter("user.status"));
        assert!(!valid_filter("user.deleted"));
        assert!(!valid_filter("nope.*"));
    }
}
