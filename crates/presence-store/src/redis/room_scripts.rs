//! The room scripts (`room_put`, `room_del`, `room_read`, `room_due`,
//! `rooms_settle`): their typed arguments and replies, and the member entry
//! a room keeps (`<version>|<userId>|<member JSON>`).

use fred::types::Value;
use presence_core::view::Member;
use presence_core::{JsonMap, Millis, SessionId, SessionStatus, UserId};
use serde::Deserialize;

use super::conn::PubSub;
use super::keys::Keys;
use super::scripts::{integer, Decode, Lua, ScriptCall, Scripts};
use super::session_scripts::RoomPut;
use crate::error::StoreError;

/// Why a session is projected into a room: the `type` of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PutKind {
    /// Only a join may add a member.
    Join,
    /// Its state in the room changed.
    Update,
    /// Its status (or epoch) changed.
    Status,
}

impl PutKind {
    fn as_str(self) -> &'static str {
        match self {
            PutKind::Join => "join",
            PutKind::Update => "update",
            PutKind::Status => "status",
        }
    }
}

/// One member of a [`PutMembers`] call: a session's projection into the room.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemberUpdate<'a> {
    pub session: &'a str,
    pub user_id: &'a str,
    /// The session's version the projection carries.
    pub version: u64,
    pub kind: PutKind,
    pub put: &'a RoomPut,
}

/// `room_put.lua`: a room learns that sessions joined it or changed (one
/// on the live paths, many when the sweeper marks sessions stale).
pub(super) struct PutMembers<'a> {
    pub room: &'a str,
    pub members: &'a [MemberUpdate<'a>],
    pub pubsub: PubSub,
}

/// What `room_put.lua` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MembersPut {
    /// Per member, in call order, the room's seq after its event (0:
    /// nothing applied, or nothing visible changed).
    pub seqs: Vec<u64>,
    /// The room's entry in the rooms-by-deadline index must come down to this.
    pub list_at: Option<i64>,
    /// The room's expiry index was empty before: set that entry outright
    /// (see room_put.lua).
    pub fresh: bool,
    /// The room had no member before this call (room.occupied).
    pub occupied: bool,
    /// The users whose first session in the room this call added
    /// (member.joined).
    pub first_in: Vec<String>,
}

/// A room script's reply: its integers (the last of them a lifecycle
/// flag), then the user ids of its lifecycle (strings).
fn lifecycle_reply(script: &str, v: Value) -> Result<(Vec<i64>, bool, Vec<String>), StoreError> {
    let bad = |e: &dyn std::fmt::Display| StoreError::Internal(format!("{script}: {e}"));
    let mut ints = Vec::new();
    let mut users = Vec::new();
    for item in v.into_array() {
        match item {
            Value::Integer(i) if users.is_empty() => ints.push(i),
            other => users.push(other.convert::<String>().map_err(|e| bad(&e))?),
        }
    }
    let flag = ints.pop().ok_or_else(|| bad(&"empty reply"))?;
    Ok((ints, flag == 1, users))
}

impl Decode for MembersPut {
    fn decode(v: Value) -> Result<Self, StoreError> {
        let (ints, occupied, first_in) = lifecycle_reply("room_put.lua", v)?;
        match ints[..] {
            [list, fresh, ref seqs @ ..] => Ok(MembersPut {
                seqs: seqs.iter().map(|s| (*s).max(0) as u64).collect(),
                list_at: (list > 0).then_some(list),
                fresh: fresh == 1,
                occupied,
                first_in,
            }),
            _ => Err(StoreError::Internal(format!(
                "room_put.lua: bad reply {ints:?}"
            ))),
        }
    }
}

impl ScriptCall for PutMembers<'_> {
    type Reply = MembersPut;
    fn script(s: &Scripts) -> &Lua {
        &s.room_put
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        keys.room(self.room).all()
    }
    fn args(self, keys: &Keys) -> Vec<String> {
        let mut args = Vec::with_capacity(2 + 8 * self.members.len());
        args.push(keys.events_channel(self.room));
        args.push(self.pubsub.publish_command().to_owned());
        for m in self.members {
            args.extend([
                m.session.to_owned(),
                m.user_id.to_owned(),
                m.version.to_string(),
                m.kind.as_str().to_owned(),
                m.put.event.clone(),
                if m.put.visible { "1" } else { "0" }.to_owned(),
                m.put.member.clone(),
                m.put.check_at.to_string(),
            ]);
        }
        args
    }
}

/// One member of a [`RemoveMembers`] call.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemberRemoval<'a> {
    pub session: &'a str,
    /// Applied only over an older projection.
    pub version: u64,
    /// The `leave` or `expire` event, left open for its seq (see `event_json`
    /// in the prelude).
    pub event: &'a str,
}

/// `room_del.lua`: sessions left a room, or the sweeper removes members
/// their sessions no longer hold, or culls sessions.
pub(super) struct RemoveMembers<'a> {
    pub room: &'a str,
    pub members: &'a [MemberRemoval<'a>],
    pub pubsub: PubSub,
}

/// What `room_del.lua` did: per member, in call order, the room's seq after
/// its removal; `None` when nothing was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MembersRemoved {
    /// Per member, the room's seq after its removal (`None`: not removed).
    pub seqs: Vec<Option<u64>>,
    /// This call removed the room's last member (room.vacated).
    pub vacated: bool,
    /// The users whose last session in the room this call removed
    /// (member.left).
    pub last_out: Vec<String>,
}

impl Decode for MembersRemoved {
    fn decode(v: Value) -> Result<Self, StoreError> {
        let (ints, vacated, last_out) = lifecycle_reply("room_del.lua", v)?;
        Ok(MembersRemoved {
            seqs: ints
                .into_iter()
                .map(|s| (s > 0).then_some(s as u64))
                .collect(),
            vacated,
            last_out,
        })
    }
}

impl ScriptCall for RemoveMembers<'_> {
    type Reply = MembersRemoved;
    fn script(s: &Scripts) -> &Lua {
        &s.room_del
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        keys.room(self.room).all()
    }
    fn args(self, keys: &Keys) -> Vec<String> {
        let mut args = Vec::with_capacity(2 + 3 * self.members.len());
        args.push(keys.events_channel(self.room));
        args.push(self.pubsub.publish_command().to_owned());
        for m in self.members {
            args.extend([
                m.session.to_owned(),
                m.version.to_string(),
                m.event.to_owned(),
            ]);
        }
        args
    }
}

/// `room_read.lua`: a room's seq and every member's entry, at once.
pub(super) struct ReadRoom<'a> {
    pub room: &'a str,
}

/// What `room_read.lua` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RoomEntries {
    pub seq: u64,
    /// sessionId and its entry (see [`MemberEntry`]).
    pub members: Vec<(String, String)>,
}

impl Decode for RoomEntries {
    fn decode(v: Value) -> Result<Self, StoreError> {
        let mut it = v.into_array().into_iter();
        let seq = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(RoomEntries {
            seq,
            members: pairs(it),
        })
    }
}

impl ScriptCall for ReadRoom<'_> {
    type Reply = RoomEntries;
    fn script(s: &Scripts) -> &Lua {
        &s.room_read
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let k = keys.room(self.room);
        vec![k.members, k.seq]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![]
    }
}

/// `room_page.lua`: one page of members after a cursor, with the other
/// members of the page's users (its reply reads as a [`RoomEntries`]).
pub(super) struct PageRoom<'a> {
    pub room: &'a str,
    /// `<userId> <sessionId>` of the member the page starts after.
    pub after: Option<String>,
    pub size: usize,
}

impl ScriptCall for PageRoom<'_> {
    type Reply = RoomEntries;
    fn script(s: &Scripts) -> &Lua {
        &s.room_page
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let k = keys.room(self.room);
        vec![k.members, k.seq, k.order]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![self.after.unwrap_or_default(), self.size.to_string()]
    }
}

/// `room_due.lua`: the members whose session the sweeper must check.
pub(super) struct DueMembers<'a> {
    pub room: &'a str,
    pub now: Millis,
    pub limit: i64,
}

/// sessionId and its entry (see [`MemberEntry`]), for each due member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Due(pub Vec<(String, String)>);

impl Decode for Due {
    fn decode(v: Value) -> Result<Self, StoreError> {
        Ok(Due(pairs(v.into_array().into_iter())))
    }
}

impl ScriptCall for DueMembers<'_> {
    type Reply = Due;
    fn script(s: &Scripts) -> &Lua {
        &s.room_due
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let k = keys.room(self.room);
        vec![k.members, k.expiry]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![self.now.to_string(), self.limit.to_string()]
    }
}

/// `rooms_settle.lua`: moves a room's entry in the rooms-by-deadline index
/// after the sweeper checked it, unless a writer moved it first.
pub(super) struct SettleRoom<'a> {
    pub shard: u32,
    pub room: &'a str,
    /// The entry's score when the sweeper read it.
    pub seen: i64,
    /// The room's earliest expiry entry now (`None`: the room has none).
    pub earliest: Option<i64>,
}

/// Whether `rooms_settle.lua` moved the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Settled(pub bool);

impl Decode for Settled {
    fn decode(v: Value) -> Result<Self, StoreError> {
        Ok(Settled(integer("rooms_settle.lua", v)? == 1))
    }
}

impl ScriptCall for SettleRoom<'_> {
    type Reply = Settled;
    fn script(s: &Scripts) -> &Lua {
        &s.rooms_settle
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.rooms_due(self.shard)]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![
            self.room.to_owned(),
            self.seen.to_string(),
            self.earliest.map(|e| e.to_string()).unwrap_or_default(),
        ]
    }
}

/// `[k1, v1, k2, v2, ...]` as pairs of strings (others are skipped).
fn pairs(mut it: impl Iterator<Item = Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Some(k), Some(v)) = (k.as_string(), v.as_string()) {
            out.push((k, v));
        }
    }
    out
}

/// A member as a room keeps it: `<version>|<userId>|<member JSON>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MemberEntry<'a> {
    /// The session's version at its last projection into the room.
    pub version: u64,
    pub user_id: &'a str,
    json: &'a str,
}

/// The member JSON of an entry (`member_json` in lua/lib/prelude.lua).
#[derive(Debug, Deserialize)]
pub(super) struct Projection {
    #[serde(default, rename = "h")]
    pub handle: String,
    #[serde(rename = "st")]
    pub status: String,
    #[serde(default, rename = "hb")]
    pub last_heartbeat_at: i64,
    #[serde(default, rename = "la")]
    pub last_active_at: i64,
    #[serde(default, rename = "su")]
    pub state_updated_at: i64,
    #[serde(default, rename = "s")]
    pub state: Option<JsonMap>,
    /// The epoch of the connection that owned the session.
    #[serde(default, rename = "e")]
    pub epoch: u64,
    /// That connection's node.
    #[serde(default, rename = "n")]
    pub node_id: String,
    /// The declared readiness (absent: `available`).
    #[serde(default, rename = "rd")]
    pub readiness: Option<String>,
    /// The capabilities, joined with `,` (absent: none).
    #[serde(default, rename = "cp")]
    pub capabilities: Option<String>,
}

impl<'a> MemberEntry<'a> {
    /// Splits an entry; `None` when it is not one.
    pub fn parse(entry: &'a str) -> Option<Self> {
        let mut parts = entry.splitn(3, '|');
        Some(MemberEntry {
            version: parts.next()?.parse().ok()?,
            user_id: parts.next()?,
            json: parts.next()?,
        })
    }

    /// The member JSON, decoded.
    pub fn projection(&self) -> Option<Projection> {
        serde_json::from_str(self.json).ok()
    }

    /// The member as a room's view shows it.
    pub fn member(&self, sid: &str) -> Option<Member> {
        let p = self.projection()?;
        Some(Member {
            session_id: SessionId::new(sid).ok()?,
            user_id: UserId::new(self.user_id).ok()?,
            handle: (!p.handle.is_empty()).then_some(p.handle),
            status: SessionStatus::parse(&p.status)?,
            last_heartbeat_at: p.last_heartbeat_at,
            last_active_at: p.last_active_at,
            state: p.state,
            state_updated_at: p.state_updated_at,
            declared: super::keys::field::declared(
                p.readiness.as_deref(),
                p.capabilities.as_deref(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_entry_reads_back_as_the_member() {
        let raw =
            r#"7|alice|{"h":"Al","st":"idle","hb":5,"la":4,"su":3,"e":9,"n":"n1","s":{"x":1}}"#;
        let entry = MemberEntry::parse(raw).unwrap();
        assert_eq!((entry.version, entry.user_id), (7, "alice"));
        let p = entry.projection().unwrap();
        assert_eq!((p.epoch, p.node_id.as_str()), (9, "n1"));
        let m = entry.member("s1").unwrap();
        assert_eq!(m.handle.as_deref(), Some("Al"));
        assert_eq!(m.status, SessionStatus::Idle);
        assert_eq!((m.last_heartbeat_at, m.last_active_at), (5, 4));
        assert_eq!(m.state_updated_at, 3);
        assert_eq!(m.state.unwrap()["x"], 1);
        assert!(MemberEntry::parse("x|alice|{}").is_none());
        assert!(MemberEntry::parse("7|alice").is_none());
    }

    #[test]
    fn room_put_replies_are_read_by_position() {
        let r =
            MembersPut::decode(Value::Array(vec![0.into(), 0.into(), 4.into(), 0.into()])).unwrap();
        assert_eq!(
            r,
            MembersPut {
                seqs: vec![4],
                list_at: None,
                fresh: false,
                occupied: false,
                first_in: vec![],
            }
        );
        let r = MembersPut::decode(Value::Array(vec![
            99.into(),
            1.into(),
            0.into(),
            7.into(),
            1.into(),
            "ada".into(),
        ]))
        .unwrap();
        assert_eq!(
            r,
            MembersPut {
                seqs: vec![0, 7],
                list_at: Some(99),
                fresh: true,
                occupied: true,
                first_in: vec!["ada".into()],
            }
        );
        assert!(MembersPut::decode(Value::Array(vec![1.into()])).is_err());
    }

    #[test]
    fn room_del_replies_are_a_seq_or_nothing_per_member_then_the_lifecycle() {
        let r = MembersRemoved::decode(Value::Array(vec![5.into(), 0.into(), 0.into()])).unwrap();
        assert_eq!(
            r,
            MembersRemoved {
                seqs: vec![Some(5), None],
                vacated: false,
                last_out: vec![]
            }
        );
        // A user id that looks like a number is still a user id (a string).
        let r =
            MembersRemoved::decode(Value::Array(vec![5.into(), 1.into(), "42".into()])).unwrap();
        assert!(r.vacated);
        assert_eq!(r.last_out, vec!["42".to_string()]);
    }
}
