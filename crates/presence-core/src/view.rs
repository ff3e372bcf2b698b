//! What observers see: users and sessions of a room (or of everyone online).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{RoomId, SessionId, UserId};
use crate::reach::{Capabilities, Declared, Readiness};
use crate::session::SessionStatus;
use crate::time::Millis;
use crate::user::{derive_user, Confidence, SessionSignal, UserStatus};
use crate::JsonMap;

/// One session as observers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionPresence {
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// Display name, if the client gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Derived status.
    pub status: SessionStatus,
    /// Its last heartbeat.
    pub last_heartbeat_at: Millis,
    /// Its state in this room (absent outside rooms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JsonMap>,
    /// Its declared readiness; absent means `available`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
    /// Its capabilities; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// One user as observers see them, derived from their sessions in scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPresence {
    /// The user id (named `userKey` on the wire, as clients key their maps by it).
    pub user_key: UserId,
    /// Display name from the user's primary session, if any gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Derived status.
    pub status: UserStatus,
    /// How much to trust the status.
    pub confidence: Confidence,
    /// Sessions in scope.
    pub session_count: u32,
    /// Last reported activity of any session.
    pub last_seen_at: Millis,
    /// Last heartbeat of any session.
    pub last_heartbeat_at: Millis,
    /// The state of the user's primary session in this room (see [`build_view`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JsonMap>,
}

/// A session's contribution to a view.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// Display name.
    pub handle: Option<String>,
    /// Recorded (derived) status.
    pub status: SessionStatus,
    /// Last heartbeat.
    pub last_heartbeat_at: Millis,
    /// Last reported activity.
    pub last_active_at: Millis,
    /// State in the room, if any.
    pub state: Option<JsonMap>,
    /// When that state last changed (join or patch).
    pub state_updated_at: Millis,
    /// Readiness and capabilities.
    pub declared: Declared,
}

/// Users and sessions, keyed for diffing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Entries {
    /// Users by id.
    pub users: BTreeMap<UserId, UserPresence>,
    /// Sessions by id.
    pub sessions: BTreeMap<SessionId, SessionPresence>,
}

/// A room's presence at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomView {
    /// The room.
    pub room_id: RoomId,
    /// The room's version: grows with every change observers can see.
    pub seq: u64,
    /// When the view was read.
    pub generated_at: Millis,
    /// Users in the room, derived from their sessions in the room.
    pub users: BTreeMap<UserId, UserPresence>,
    /// Sessions in the room.
    pub sessions: BTreeMap<SessionId, SessionPresence>,
}

impl RoomView {
    /// Builds a room's view from its members.
    pub fn build(
        room_id: RoomId,
        seq: u64,
        generated_at: Millis,
        members: impl IntoIterator<Item = Member>,
    ) -> Self {
        let Entries { users, sessions } = build_view(members);
        Self {
            room_id,
            seq,
            generated_at,
            users,
            sessions,
        }
    }

    /// This view, also showing the users and sessions of `previous` that it
    /// lacks, as `previous` showed them. What observers see while a store
    /// that lost its data is being refilled: no one is shown leaving who may
    /// be back a moment later. A user this view has keeps this view's entry.
    pub fn keeping(mut self, previous: &RoomView) -> RoomView {
        for (sid, s) in &previous.sessions {
            self.sessions
                .entry(sid.clone())
                .or_insert_with(|| s.clone());
        }
        for (uid, u) in &previous.users {
            self.users.entry(uid.clone()).or_insert_with(|| u.clone());
        }
        self
    }

    /// An empty view of `room_id`.
    pub fn empty(room_id: RoomId) -> Self {
        Self {
            room_id,
            seq: 0,
            generated_at: 0,
            users: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }
}

/// Groups members by user and derives each user.
///
/// A user's `state` and `handle` come from their *primary* session: the one
/// with the best status, then the most recently updated state, then the
/// smallest session id. Heartbeats change none of these, so the primary
/// session does not flip between tabs as they heartbeat.
pub fn build_view(members: impl IntoIterator<Item = Member>) -> Entries {
    let mut by_user: BTreeMap<UserId, Vec<Member>> = BTreeMap::new();
    for m in members {
        by_user.entry(m.user_id.clone()).or_default().push(m);
    }
    let mut out = Entries::default();
    for (user_id, members) in by_user {
        let user = derive_user_entry(&user_id, members.iter());
        out.users.insert(user_id, user);
        for m in members {
            out.sessions
                .insert(m.session_id.clone(), SessionPresence::from(m));
        }
    }
    out
}

/// One user's entry, derived from their sessions in scope (at least one;
/// see [`build_view`] for the primary session).
pub fn derive_user_entry<'a>(
    user_id: &UserId,
    members: impl Iterator<Item = &'a Member> + Clone,
) -> UserPresence {
    let summary = derive_user(members.clone().map(|m| SessionSignal {
        status: m.status,
        last_heartbeat_at: m.last_heartbeat_at,
        last_active_at: m.last_active_at,
    }));
    let primary = members
        .clone()
        .min_by(|a, b| {
            a.status
                .cmp(&b.status)
                .then(b.state_updated_at.cmp(&a.state_updated_at))
                .then(a.session_id.cmp(&b.session_id))
        })
        .expect("a user in scope has at least one session");
    let handle = primary
        .handle
        .clone()
        .or_else(|| members.clone().find_map(|m| m.handle.clone()));
    UserPresence {
        user_key: user_id.clone(),
        handle,
        status: summary.status,
        confidence: summary.confidence,
        session_count: summary.session_count,
        last_seen_at: summary.last_seen_at,
        last_heartbeat_at: summary.last_heartbeat_at,
        state: primary.state.clone(),
    }
}

impl From<Member> for SessionPresence {
    fn from(m: Member) -> Self {
        SessionPresence {
            session_id: m.session_id,
            user_id: m.user_id,
            handle: m.handle,
            status: m.status,
            last_heartbeat_at: m.last_heartbeat_at,
            state: m.state,
            readiness: (!m.declared.readiness.is_available()).then_some(m.declared.readiness),
            capabilities: (!m.declared.capabilities.is_empty()).then_some(m.declared.capabilities),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeping_shows_who_is_missing_as_before_and_nothing_else_changes() {
        let before = RoomView::build(
            RoomId::new("r").unwrap(),
            9,
            100,
            [
                member("s1", "u1", SessionStatus::Active, 1),
                member("s2", "u2", SessionStatus::Idle, 1),
            ],
        );
        let refilling = RoomView::build(
            RoomId::new("r").unwrap(),
            1,
            200,
            [member("s1", "u1", SessionStatus::Active, 2)],
        );
        let held = refilling.clone().keeping(&before);
        assert_eq!(held.seq, 1);
        assert_eq!(held.sessions["s1"], refilling.sessions["s1"]);
        assert_eq!(held.sessions["s2"], before.sessions["s2"]);
        assert_eq!(held.users["u2"], before.users["u2"]);
        assert_eq!(held.users["u1"], refilling.users["u1"]);
        let d = crate::diff::diff(&before, &held);
        assert!(
            d.sessions.values().all(Option::is_some),
            "no one shown leaving: {d:?}"
        );
        assert!(d.users.values().all(Option::is_some), "{d:?}");
    }

    fn member(s: &str, u: &str, status: SessionStatus, state_at: Millis) -> Member {
        Member {
            session_id: SessionId::new(s).unwrap(),
            user_id: UserId::new(u).unwrap(),
            handle: Some(format!("{u}-{s}")),
            status,
            last_heartbeat_at: 100,
            last_active_at: 50,
            state: Some(json!({ "from": s }).as_object().unwrap().clone()),
            state_updated_at: state_at,
            declared: Declared::default(),
        }
    }

    #[test]
    fn groups_sessions_by_user_and_picks_the_primary_state() {
        let v = RoomView::build(
            RoomId::new("r").unwrap(),
            7,
            1_000,
            vec![
                member("a1", "alice", SessionStatus::Idle, 900),
                member("a2", "alice", SessionStatus::Active, 10),
                member("a3", "alice", SessionStatus::Active, 20),
                member("b1", "bob", SessionStatus::Stale, 0),
            ],
        );
        assert_eq!(v.sessions.len(), 4);
        let alice = &v.users["alice"];
        assert_eq!(alice.session_count, 3);
        assert_eq!(alice.status, UserStatus::Active);
        // Best status first, then the most recent state.
        assert_eq!(alice.state.as_ref().unwrap()["from"], "a3");
        assert_eq!(alice.handle.as_deref(), Some("alice-a3"));
        assert_eq!(v.users["bob"].confidence, Confidence::Low);
    }

    #[test]
    fn wire_shape_is_camel_case_without_absent_fields() {
        let mut m = member("s", "u", SessionStatus::Active, 0);
        m.state = None;
        m.handle = None;
        let v = RoomView::build(RoomId::new("r").unwrap(), 1, 2, vec![m]);
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(
            j,
            json!({
                "roomId": "r", "seq": 1, "generatedAt": 2,
                "users": { "u": { "userKey": "u", "status": "active", "confidence": "high",
                                   "sessionCount": 1, "lastSeenAt": 50, "lastHeartbeatAt": 100 } },
                "sessions": { "s": { "sessionId": "s", "userId": "u", "status": "active", "lastHeartbeatAt": 100 } }
            })
        );
    }
}
