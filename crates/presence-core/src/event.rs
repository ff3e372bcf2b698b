//! The v1 presence event: one JSON message per transition, published for
//! nodes and backend subscribers alike.

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::reach::Declared;
use crate::session::SessionStatus;
use crate::time::Millis;
use crate::user::UserStatus;
use crate::view::Member;
use crate::JsonMap;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A session joined the room.
    Join,
    /// A session left the room (explicitly).
    Leave,
    /// A session's state in the room changed.
    Update,
    /// A session's derived status changed.
    Status,
    /// A session was removed after its deadline (crash, lost network).
    Expire,
}

/// A session's status as carried by events: the four live statuses, or
/// `offline` for `leave` and `expire`.
pub type EventStatus = crate::user::UserStatus;

impl EventKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Update => "update",
            EventKind::Status => "status",
            EventKind::Expire => "expire",
        }
    }
}

/// One transition in one room (`{ "v": 1, "type", "roomId", "seq", ... }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEvent {
    /// Schema version, always 1.
    pub v: u8,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The room.
    pub room_id: RoomId,
    /// The room's version after this event.
    pub seq: u64,
    /// The user of the session.
    pub user_id: UserId,
    /// The session.
    pub session_id: SessionId,
    /// The node that owns the session's connection.
    pub node_id: NodeId,
    /// The session's epoch.
    pub epoch: u64,
    /// The session's status after the event.
    pub status: EventStatus,
    /// The session's state in the room after the event, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JsonMap>,
    /// When it happened.
    pub ts: Millis,
    /// The session as the room keeps it after the event (absent on `leave`
    /// and `expire`): with the fields above, all a room's view needs, so
    /// that whoever follows the room applies events without reading it.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub member: Option<EventMember>,
}

/// The rest of a member as the room keeps it, carried by `join`, `update`
/// and `status` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMember {
    /// Display name, if the session has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Its last heartbeat, as of this change.
    pub last_heartbeat_at: Millis,
    /// Its last reported activity, as of this change.
    pub last_active_at: Millis,
    /// When its state in the room last changed.
    pub state_updated_at: Millis,
    /// Its readiness and capabilities (left out when the default).
    #[serde(default, flatten)]
    pub declared: Declared,
}

impl PresenceEvent {
    /// The member the room holds after this event, or `None` when the event
    /// takes the session out of the room (or does not carry the member).
    pub fn member(&self) -> Option<Member> {
        let m = self.member.as_ref()?;
        let status = match self.status {
            UserStatus::Active => SessionStatus::Active,
            UserStatus::Idle => SessionStatus::Idle,
            UserStatus::Away => SessionStatus::Away,
            UserStatus::Stale => SessionStatus::Stale,
            UserStatus::Offline => return None,
        };
        if matches!(self.kind, EventKind::Leave | EventKind::Expire) {
            return None;
        }
        Some(Member {
            session_id: self.session_id.clone(),
            user_id: self.user_id.clone(),
            handle: m.handle.clone(),
            status,
            last_heartbeat_at: m.last_heartbeat_at,
            last_active_at: m.last_active_at,
            state: self.state.clone(),
            state_updated_at: m.state_updated_at,
            declared: m.declared.clone(),
        })
    }

    /// True when the event takes the session out of the room.
    pub fn removes(&self) -> bool {
        matches!(self.kind, EventKind::Leave | EventKind::Expire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_shape_matches_the_contract() {
        let e = PresenceEvent {
            v: 1,
            kind: EventKind::Expire,
            room_id: RoomId::new("r").unwrap(),
            seq: 9,
            user_id: UserId::new("u").unwrap(),
            session_id: SessionId::new("s").unwrap(),
            node_id: NodeId::new("n").unwrap(),
            epoch: 3,
            status: EventStatus::Offline,
            state: None,
            ts: 5,
            member: None,
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(
            j,
            json!({ "v": 1, "type": "expire", "roomId": "r", "seq": 9, "userId": "u",
                    "sessionId": "s", "nodeId": "n", "epoch": 3, "status": "offline", "ts": 5 })
        );
        assert_eq!(serde_json::from_value::<PresenceEvent>(j).unwrap(), e);
        for k in [
            EventKind::Join,
            EventKind::Leave,
            EventKind::Update,
            EventKind::Status,
            EventKind::Expire,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
    }
}
