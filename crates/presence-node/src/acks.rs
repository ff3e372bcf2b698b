//! What the node sends clients besides diffs: the acks of `presence:*`
//! events, the relayed `presence:signal`, the shutdown notice. One type
//! each, so that a field is named and shaped in one place (error acks are
//! [`WireError`](crate::wire::WireError)s).

use presence_core::{
    Capabilities, Intent, Limits, Millis, NodeId, Page, Reach, RoomCounts, RoomId, SessionId,
    SessionPresence, Timings, UserId, UserPresence,
};
use presence_store::{SessionRef, Signal};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

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

/// The ack of `presence:reachability`, and the answer of
/// `GET /api/users/{userId}/reachability`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReachAck {
    /// Always true.
    pub ok: True,
    /// The user asked about.
    pub user_id: UserId,
    /// The need asked about.
    pub need: Capabilities,
    /// The answer (`reachability`, `confidence`, `session`, `reason`).
    #[serde(flatten)]
    pub reach: Reach,
}

impl ReachAck {
    /// The answer for `user_id` and `need`.
    pub fn new(user_id: UserId, need: Capabilities, reach: Reach) -> Self {
        ReachAck {
            ok: True,
            user_id,
            need,
            reach,
        }
    }
}

/// The ack of `presence:intent`, and the answer of `POST /api/intents`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IntentAck {
    /// Always true.
    pub ok: True,
    /// The intent's id (for `presence:intent_cancel` and its outcome).
    pub intent_id: String,
    /// When it expires if the user is not reachable before.
    pub expires_at: Millis,
}

impl IntentAck {
    /// The ack of a made intent.
    pub fn of(intent: &Intent) -> Self {
        IntentAck {
            ok: True,
            intent_id: intent.id.clone(),
            expires_at: intent.expires_at,
        }
    }
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

/// The ack of `presence:join`. What it carries beside the counts and the
/// joiner's own entries is already serialized (once for every joiner of a
/// flush): a `json!` would turn it back into a `Value` tree for every
/// joiner, parsing megabytes in a big room.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinAck<'a> {
    /// Always true.
    pub ok: True,
    /// The room.
    pub room_id: &'a RoomId,
    /// The joiner's own session.
    #[serde(rename = "self")]
    pub me: JoinSelf<'a>,
    /// What the room holds and the client follows.
    #[serde(flatten)]
    pub opening: Opening<'a>,
    /// The first part of the snapshot (`full` and `watch` views): the base
    /// of the diffs that follow; its other parts follow as `presence:snapshot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotPart<'a>>,
}

/// What a joiner (or a resumed session, per room) is told besides the
/// snapshot: the view it follows, the counts, its own entries, the first page.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Opening<'a> {
    /// `full`, `count` or `watch`.
    pub view: &'static str,
    /// Why the view is not the one asked for (`room_too_large`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view_reason: Option<&'static str>,
    /// The room's version all of this is at.
    pub seq: u64,
    /// When it was read.
    pub generated_at: Millis,
    /// Users and sessions by status.
    pub counts: RoomCounts,
    /// The client's own user and session as the room shows them.
    pub me: Me<'a>,
    /// The first page of members (`{ users, sessions, nextCursor? }`).
    pub page: &'a RawValue,
}

/// The client's own entries.
#[derive(Serialize)]
pub struct Me<'a> {
    /// Its user.
    pub user: Option<&'a UserPresence>,
    /// Its session.
    pub session: Option<&'a SessionPresence>,
}

/// One part of a snapshot or a diff: the object of `presence:snapshot` (and
/// the `snapshot` of a join ack) or of `presence:diff`. `part`/`parts` only
/// when there are several.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPart<'a> {
    /// The room.
    pub room_id: &'a RoomId,
    /// The room's version (a diff's: the version it brings the client to).
    pub seq: u64,
    /// When a snapshot was read (diffs have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<Millis>,
    /// This part's users (a diff's: `null` for gone).
    pub users: &'a RawValue,
    /// This part's sessions.
    pub sessions: &'a RawValue,
    /// Which part (from 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<usize>,
    /// How many parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<usize>,
    /// On the first `presence:snapshot` of a resumed session's room: the view
    /// and counts, as a join ack has them.
    #[serde(flatten)]
    pub opening: Option<Opening<'a>>,
}

/// `presence:counts`: a count or watch view's counts changed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountsMsg<'a> {
    /// The room.
    pub room_id: &'a RoomId,
    /// The room's version.
    pub seq: u64,
    /// Users and sessions by status.
    pub counts: RoomCounts,
}

/// `presence:view`: the client now follows another view.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewMsg<'a> {
    /// The room.
    pub room_id: &'a RoomId,
    /// The view from now on (`count`).
    pub view: &'static str,
    /// Why (`room_too_large`).
    pub reason: &'static str,
    /// The room's version.
    pub seq: u64,
    /// Users and sessions by status.
    pub counts: RoomCounts,
}

/// The ack of `presence:members`: one page.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersAck<'a> {
    /// Always true.
    pub ok: True,
    /// The room.
    pub room_id: &'a RoomId,
    /// The room's version the page was read at.
    pub seq: u64,
    /// When it was read.
    pub generated_at: Millis,
    /// The page's users and sessions, and `nextCursor`.
    #[serde(flatten)]
    pub page: &'a Page,
}

/// The ack of `presence:watch`: the watched users' entries follow the same
/// way as a join's snapshot.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchAck<'a> {
    /// Always true.
    pub ok: True,
    /// The room.
    pub room_id: &'a RoomId,
    /// `watch`.
    pub view: &'static str,
    /// How many users are watched.
    pub watching: usize,
    /// The room's version.
    pub seq: u64,
    /// Users and sessions by status.
    pub counts: RoomCounts,
    /// The first part of the watched users' entries.
    pub snapshot: SnapshotPart<'a>,
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

/// `presence:removed`: a backend took this session out of a room (the
/// moderation API). The socket is no longer in it; a new join brings it
/// back.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed<'a> {
    /// The room.
    pub room_id: &'a RoomId,
    /// Why: `removed`.
    pub reason: &'static str,
}

impl<'a> Removed<'a> {
    /// The notice for `room`.
    pub fn new(room_id: &'a RoomId) -> Self {
        Self {
            room_id,
            reason: "removed",
        }
    }
}

/// The answer of the moderation API's `DELETE` routes: what was removed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Moderated {
    /// Always true.
    pub ok: True,
    /// The user whose sessions these were.
    pub user_id: UserId,
    /// The sessions ended, or taken out of the room.
    pub sessions: Vec<SessionId>,
    /// The room they were taken out of (`DELETE /api/rooms/{roomId}/members/{userId}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
}
