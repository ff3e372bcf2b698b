//! The v1 presence event: one JSON message per transition, published for
//! nodes and backend subscribers alike.

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RoomId, SessionId, UserId};
use crate::time::Millis;
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
