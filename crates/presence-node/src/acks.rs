//! What the node sends clients besides diffs: the acks of `presence:*`
//! events, the relayed `presence:signal`, the shutdown notice. One type
//! each, so that a field is named and shaped in one place (error acks are
//! [`WireError`](crate::wire::WireError)s).

use presence_core::{Limits, NodeId, RoomId, SessionId, Timings, UserId};
use presence_store::{SessionRef, Signal};
use serde::{Serialize, Serializer};

/// `ok: true` of every successful ack.
#[derive(Debug, Clone, Copy, Default)]
pub struct True;

impl Serialize for True {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

/// A plain success: `{ ok: true }` (`presence:state`, `presence:signal`).
#[derive(Debug, Serialize)]
pub struct Done {
    /// Always true.
    pub ok: True,
}

/// The ack of `presence:hello`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAck<'a> {
    /// Always true.
    pub ok: True,
    /// The session (given or new).
    pub session_id: &'a SessionId,
    /// Its user.
    pub user_id: &'a UserId,
    /// The epoch this connection writes with.
    pub epoch: u64,
    /// An existing session was taken over.
    pub resumed: bool,
    /// The rooms a resumed session is in (their snapshots follow).
    pub rooms: &'a [RoomId],
    /// The rooms a resumed session was in that this connection's token does
    /// not grant: the session left them.
    pub dropped_rooms: &'a [RoomId],
    /// The node that answered.
    pub node_id: &'a NodeId,
    /// The lifecycle timings clients pace themselves by.
    pub config: &'a Timings,
    /// The limits on what clients send.
    pub limits: &'a Limits,
}

/// The ack of `presence:heartbeat`.
#[derive(Debug, Serialize)]
pub struct HeartbeatAck {
    /// Always true.
    pub ok: True,
    /// The epoch to send from now on (new after a re-creation).
    pub epoch: u64,
    /// The store had lost the session and this heartbeat re-created it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub revived: bool,
}

/// The ack of `presence:leave` with a room.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomLeft<'a> {
    /// Always true.
    pub ok: True,
    /// The room left.
    pub room_id: &'a RoomId,
}

/// The ack of `presence:leave` without a room: the session ended.
#[derive(Debug, Serialize)]
pub struct SessionEnded<'a> {
    /// Always true.
    pub ok: True,
    /// The rooms it left.
    pub rooms: &'a [RoomId],
}

/// The ack of `presence:join`. It carries the room's snapshot as already
/// serialized (once for every joiner of a flush): a `json!` would turn it
/// back into a `Value` tree for every joiner, parsing megabytes in a big room.
#[derive(Serialize)]
pub struct JoinAck<'a> {
    /// Always true.
    pub ok: True,
    /// The room.
    #[serde(rename = "roomId")]
    pub room_id: &'a RoomId,
    /// The joiner's own session.
    #[serde(rename = "self")]
    pub me: JoinSelf<'a>,
    /// The room's view, the base of the diffs that follow.
    pub snapshot: &'a serde_json::value::RawValue,
}

/// The joiner's own session, in its [`JoinAck`].
#[derive(Debug, Serialize)]
pub struct JoinSelf<'a> {
    /// Its session.
    #[serde(rename = "sessionId")]
    pub session_id: &'a SessionId,
    /// Its epoch.
    pub epoch: u64,
}

impl<'a> From<&'a SessionRef> for JoinSelf<'a> {
    fn from(s: &'a SessionRef) -> Self {
        JoinSelf {
            session_id: &s.session_id,
            epoch: s.epoch,
        }
    }
}

/// A `presence:signal` as the room's other sockets get it, on every node.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalMsg<'a> {
    /// The room.
    pub room_id: &'a RoomId,
    /// The sending session.
    pub session_id: &'a SessionId,
    /// Its user.
    pub user_id: &'a UserId,
    /// What it sent, as is.
    pub data: &'a serde_json::Value,
}

impl<'a> From<&'a Signal> for SignalMsg<'a> {
    fn from(s: &'a Signal) -> Self {
        SignalMsg {
            room_id: &s.room_id,
            session_id: &s.session_id,
            user_id: &s.user_id,
            data: &s.data,
        }
    }
}

/// `presence:reconnect`: this node is going away; reconnect (to another
/// node) and resume.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconnectNotice<'a> {
    /// Why (`shutdown`).
    pub reason: &'static str,
    /// The node that is going away.
    pub node_id: &'a NodeId,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn acks_have_the_documented_shapes() {
        let v = |x: &dyn erased::Ser| x.json();
        assert_eq!(v(&Done { ok: True }), json!({ "ok": true }));
        assert_eq!(
            v(&HeartbeatAck {
                ok: True,
                epoch: 3,
                revived: false
            }),
            json!({ "ok": true, "epoch": 3 })
        );
        assert_eq!(
            v(&HeartbeatAck {
                ok: True,
                epoch: 3,
                revived: true
            }),
            json!({ "ok": true, "epoch": 3, "revived": true })
        );
        let room = RoomId::new("r").unwrap();
        assert_eq!(
            v(&RoomLeft {
                ok: True,
                room_id: &room
            }),
            json!({ "ok": true, "roomId": "r" })
        );
        let signal = Signal {
            room_id: room.clone(),
            session_id: SessionId::new("s").unwrap(),
            user_id: UserId::new("u").unwrap(),
            node_id: NodeId::new("n").unwrap(),
            data: json!({ "x": 1 }),
        };
        assert_eq!(
            v(&SignalMsg::from(&signal)),
            json!({ "roomId": "r", "sessionId": "s", "userId": "u", "data": { "x": 1 } })
        );
    }

    /// Serializes any of the ack types in one closure.
    mod erased {
        pub trait Ser {
            fn json(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap()
            }
        }
    }
}
