//! The session scripts (`claim`, `join`, `heartbeat`, `state`, `leave`,
//! `disconnect`, `expire`): their typed arguments and replies.
//!
//! Each runs on the session's slot, is the truth about the session, and does
//! the epoch fencing; what it asks to change in rooms comes back as
//! [`RoomPut`]s and [`RoomDel`]s for the caller to project
//! (see [`room_scripts`](super::room_scripts)).

use fred::types::Value;
use presence_core::{Activity, Due, Millis, Pulse, SessionStatus, Timings};
use serde::{Deserialize, Serialize};

use super::keys::Keys;
use super::scripts::{json, list, Decode, Fenced, Lua, ScriptCall, Scripts};
use crate::api::{Declare, TOMBSTONE_MS};
use crate::error::StoreError;

/// The lifecycle timings as every session script reads them (ARGV[2], one
/// JSON object, built once per store; see lua/lib/prelude.lua). The
/// tombstone's lifetime is passed in too, so that Lua and the memory store
/// keep removed sessions' epochs equally long.
pub(super) fn timings_json(t: &Timings) -> String {
    #[derive(Serialize)]
    struct ForScripts {
        #[serde(rename = "hbt")]
        heartbeat_timeout: Millis,
        #[serde(rename = "idle")]
        idle_after: Millis,
        #[serde(rename = "away")]
        away_after: Millis,
        #[serde(rename = "bgt")]
        background_timeout: Millis,
        #[serde(rename = "grace")]
        reconnect_grace: Millis,
        #[serde(rename = "tomb")]
        tombstone: Millis,
    }
    serde_json::to_string(&ForScripts {
        heartbeat_timeout: t.heartbeat_timeout_ms,
        idle_after: t.idle_after_ms,
        away_after: t.away_after_ms,
        background_timeout: t.background_timeout_ms,
        reconnect_grace: t.reconnect_grace_ms,
        tombstone: TOMBSTONE_MS,
    })
    .expect("numbers serialize")
}

/// What every session script takes first: `KEYS[1]` the session, `ARGV[1]`
/// the time, `ARGV[2]` the timings.
#[derive(Debug, Clone, Copy)]
pub(super) struct On<'a> {
    /// The session id.
    pub session: &'a str,
    /// Now, by the store's clock.
    pub now: Millis,
    /// [`timings_json`].
    pub timings: &'a str,
}

impl On<'_> {
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.session(self.session)]
    }

    fn args<const N: usize>(&self, rest: [String; N]) -> Vec<String> {
        let mut args = Vec::with_capacity(2 + N);
        args.push(self.now.to_string());
        args.push(self.timings.to_owned());
        args.extend(rest);
        args
    }
}

/// A session script's [`ScriptCall`]: `KEYS[1]` the session, then `ARGV`
/// from [`On`] and the call's own arguments (built by the closure).
macro_rules! session_call {
    ($call:ident, $script:ident, $reply:ty, |$c:ident| $rest:expr) => {
        impl ScriptCall for $call<'_> {
            type Reply = $reply;
            fn script(s: &Scripts) -> &Lua {
                &s.$script
            }
            fn keys(&self, keys: &Keys) -> Vec<String> {
                self.on.keys(keys)
            }
            fn args(self, _: &Keys) -> Vec<String> {
                let $c = self;
                $c.on.args($rest)
            }
        }
    };
}

/// One projection of a session into a room (`room_put` in the prelude).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RoomPut {
    /// The room.
    pub room: String,
    /// The event observers get, left open for its seq (see `event_json` in
    /// the prelude).
    #[serde(rename = "ev")]
    pub event: String,
    /// The member as the room keeps it (JSON).
    #[serde(rename = "m")]
    pub member: String,
    /// Whether observers see a change (else the room updates its copy quietly).
    pub visible: bool,
    /// When the room's expiry index should check the member's session.
    #[serde(rename = "x")]
    pub check_at: i64,
}

/// One removal of a session from a room (`room_dels` in the prelude).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RoomDel {
    /// The room.
    pub room: String,
    /// The `leave` or `expire` event, left open for its seq (see `event_json`
    /// in the prelude).
    #[serde(rename = "ev")]
    pub event: String,
}

/// `claim.lua`: `presence:hello`, a new session or a resume.
pub(super) struct Claim<'a> {
    pub on: On<'a>,
    pub user_id: &'a str,
    /// `None` keeps the session's handle (or none).
    pub handle: Option<&'a str>,
    /// The session meta as JSON; `None` keeps it (or none).
    pub meta: Option<String>,
    pub activity: Activity,
    pub node_id: &'a str,
    /// The epoch of a brand-new session.
    pub first_epoch: u64,
    /// What the client declares (`None`s keep what the session has).
    pub declare: &'a Declare,
}

/// What `claim.lua` did.
#[derive(Debug, Deserialize)]
pub(super) struct Claimed {
    /// The epoch of the claiming connection.
    #[serde(rename = "e")]
    pub epoch: u64,
    /// The session's version after the claim.
    #[serde(rename = "v")]
    pub version: u64,
    #[serde(rename = "uid")]
    pub user_id: String,
    /// An existing session was taken over.
    pub resumed: bool,
    /// When to file the session in the deadline index (`None`: its entry is early enough).
    #[serde(rename = "ix")]
    pub deadline: Option<i64>,
    /// A resume tells every room of the session (quietly unless its status changed).
    #[serde(deserialize_with = "list")]
    pub puts: Vec<RoomPut>,
    /// A session past its removal deadline that the sweeper had not reached
    /// yet was buried first: remove it from its rooms and its user.
    #[serde(default)]
    pub buried: Option<Buried>,
    /// The connection the claim took the session from, if it was connected.
    #[serde(default)]
    pub superseded: Option<PreviousOwner>,
    /// The session's status after the claim.
    #[serde(rename = "st", default, deserialize_with = "status")]
    pub status: Option<SessionStatus>,
    /// Its last reported activity.
    #[serde(rename = "la", default)]
    pub last_active_at: Millis,
}

/// A status the scripts wrote (`None`: absent or unknown).
fn status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SessionStatus>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.as_deref().and_then(SessionStatus::parse))
}

/// The connection a claim took a session from.
#[derive(Debug, Deserialize)]
pub(super) struct PreviousOwner {
    #[serde(rename = "node")]
    pub node_id: String,
    pub epoch: u64,
}

/// The earlier life of a session id, buried by a claim.
#[derive(Debug, Deserialize)]
pub(super) struct Buried {
    #[serde(rename = "uid")]
    pub user_id: String,
    #[serde(rename = "v")]
    pub version: u64,
    #[serde(deserialize_with = "list")]
    pub dels: Vec<RoomDel>,
}

session_call!(Claim, claim, Fenced<Claimed>, |call| [
    call.on.session.to_owned(),
    call.user_id.to_owned(),
    call.handle.unwrap_or_default().to_owned(),
    call.meta.unwrap_or_default(),
    call.activity.as_str().to_owned(),
    call.node_id.to_owned(),
    call.first_epoch.to_string(),
    readiness_arg(call.declare),
    capabilities_arg(call.declare),
]);

/// A readiness as the scripts take it (`""`: keep).
fn readiness_arg(d: &Declare) -> String {
    d.readiness
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default()
}

/// Capabilities as the scripts take them: `=` and the names joined with `,`
/// (`""`: keep).
fn capabilities_arg(d: &Declare) -> String {
    d.capabilities
        .as_ref()
        .map(|c| format!("={}", c.joined()))
        .unwrap_or_default()
}

/// `declare.lua`: what a session declares about taking calls.
pub(super) struct SetDeclared<'a> {
    pub on: On<'a>,
    pub epoch: u64,
    pub declare: &'a Declare,
}

/// What `declare.lua` did.
#[derive(Debug, Deserialize)]
pub(super) struct DeclaredSet {
    /// Something changed.
    pub changed: bool,
    #[serde(rename = "v")]
    pub version: u64,
    #[serde(rename = "uid")]
    pub user_id: String,
    /// The projections into every room of the session, when it changed.
    #[serde(deserialize_with = "list")]
    pub puts: Vec<RoomPut>,
}

session_call!(SetDeclared, declare, Fenced<DeclaredSet>, |call| [
    call.epoch.to_string(),
    readiness_arg(call.declare),
    capabilities_arg(call.declare),
]);

/// `join.lua`: the session side of `presence:join`.
pub(super) struct Join<'a> {
    pub on: On<'a>,
    pub epoch: u64,
    pub room: &'a str,
    /// The initial state as JSON; `None` keeps the state of a session already in the room.
    pub state: Option<&'a str>,
    pub max_rooms: usize,
}

/// What `join.lua` did.
#[derive(Debug, Deserialize)]
pub(super) struct Joined {
    /// The session was in the room already.
    pub already: bool,
    /// Something observers see changed (a new member, or a new state).
    pub changed: bool,
    #[serde(rename = "v")]
    pub version: u64,
    #[serde(rename = "uid")]
    pub user_id: String,
    /// The projection into the room.
    pub put: RoomPut,
}

session_call!(Join, join, Fenced<Joined>, |call| [
    call.epoch.to_string(),
    call.room.to_owned(),
    if call.state.is_some() { "1" } else { "0" }.to_owned(),
    call.state.unwrap_or_default().to_owned(),
    call.max_rooms.to_string(),
]);

/// `heartbeat.lua`: the hot path.
pub(super) struct Heartbeat<'a> {
    pub on: On<'a>,
    pub epoch: u64,
    /// `None`: the client reported no activity (liveness only).
    pub activity: Option<Activity>,
}

/// What `heartbeat.lua` did: usually nothing anyone sees (`{"ok":true}`).
#[derive(Debug, Deserialize)]
pub(super) struct Beat {
    /// Always true; required, so that an unknown reply is not read as a quiet beat.
    #[serde(rename = "ok")]
    _ok: bool,
    /// The status changed: `puts` tells every room.
    #[serde(default)]
    pub changed: bool,
    #[serde(default, rename = "v")]
    pub version: u64,
    #[serde(default, rename = "uid")]
    pub user_id: String,
    #[serde(default, rename = "ix")]
    pub deadline: Option<i64>,
    #[serde(default, deserialize_with = "list")]
    pub puts: Vec<RoomPut>,
    /// The status recorded after the beat.
    #[serde(rename = "st")]
    pub status: SessionStatus,
    /// The activity recorded (`a`).
    #[serde(rename = "a")]
    pub activity: Activity,
    /// The heartbeat time recorded.
    #[serde(rename = "hb")]
    pub last_heartbeat_at: Millis,
    /// The activity time recorded.
    #[serde(rename = "la")]
    pub last_active_at: Millis,
    /// The last heartbeat time that needs no new TTL on the key.
    #[serde(rename = "ku")]
    pub keep_until: Millis,
}

impl Beat {
    /// What the session's status derives from, as the store now holds it
    /// (connected: a script that found it disconnected refused the beat).
    pub fn pulse(&self) -> Pulse {
        Pulse {
            activity: self.activity,
            last_heartbeat_at: self.last_heartbeat_at,
            last_active_at: self.last_active_at,
            disconnected_at: None,
        }
    }
}

session_call!(Heartbeat, heartbeat, Fenced<Beat>, |call| [
    call.epoch.to_string(),
    call.activity.map(Activity::as_str).unwrap_or("").to_owned(),
]);

/// `beats.lua`: the times of quiet heartbeats this node answered itself, of
/// many sessions (of one master on a Cluster).
pub(super) struct Beats<'a> {
    /// Each session's id and what to write.
    pub sessions: &'a [(String, Due)],
}

/// What `beats.lua` did, per session in the order of the call: written (or
/// the store held newer times), or refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BeatsWritten(pub Vec<bool>);

impl Decode for BeatsWritten {
    fn decode(v: Value) -> Result<Self, StoreError> {
        let text = v
            .as_str()
            .ok_or_else(|| StoreError::Internal("beats returned no text".into()))?;
        text.chars()
            .map(|c| match c {
                '1' => Ok(true),
                '0' => Ok(false),
                _ => Err(StoreError::Internal(format!("bad reply of beats: {text}"))),
            })
            .collect::<Result<_, _>>()
            .map(BeatsWritten)
    }
}

impl ScriptCall for Beats<'_> {
    type Reply = BeatsWritten;
    fn script(s: &Scripts) -> &Lua {
        &s.beats
    }
    fn keys(&self, _: &Keys) -> Vec<String> {
        Vec::new()
    }
    fn route_key(&self, keys: &Keys) -> Option<String> {
        self.sessions.first().map(|(sid, _)| keys.session(sid))
    }
    fn args(self, keys: &Keys) -> Vec<String> {
        let mut args = Vec::with_capacity(4 * self.sessions.len());
        for (sid, d) in self.sessions {
            args.push(keys.session(sid));
            // The guard as the scripts write it (`guard` in the prelude).
            args.push(format!("{}:{}", d.epoch, d.status.as_str()));
            args.push(d.pulse.last_heartbeat_at.to_string());
            args.push(if d.active_moved {
                d.pulse.last_active_at.to_string()
            } else {
                String::new()
            });
        }
        args
    }
}

/// `state.lua`: writes a state merged by the caller, if the session is
/// still at the version the merge was based on (else `Retry`).
pub(super) struct SetState<'a> {
    pub on: On<'a>,
    pub epoch: u64,
    pub room: &'a str,
    /// The session's version the merge read (`None`: no session hash).
    pub based_on: Option<String>,
    /// The merged state as JSON (`""`: none).
    pub merged: String,
}

/// What `state.lua` did.
#[derive(Debug, Deserialize)]
pub(super) struct StateSet {
    #[serde(rename = "v")]
    pub version: u64,
    #[serde(rename = "uid")]
    pub user_id: String,
    /// The projection into the room, when the state changed.
    #[serde(default)]
    pub put: Option<RoomPut>,
}

session_call!(SetState, state, Fenced<StateSet>, |call| [
    call.epoch.to_string(),
    call.room.to_owned(),
    call.based_on.unwrap_or_default(),
    call.merged,
]);

/// `leave.lua`: leaves one room, or (`room: None`) ends the session.
pub(super) struct Leave<'a> {
    pub on: On<'a>,
    /// `None`: the moderation API (no fence; an ended session's id is then
    /// refused as kicked).
    pub epoch: Option<u64>,
    pub room: Option<&'a str>,
}

/// What `leave.lua` did.
#[derive(Debug, Deserialize)]
pub(super) struct Left {
    #[serde(rename = "v")]
    pub version: u64,
    #[serde(rename = "uid")]
    pub user_id: String,
    /// The removals to project: the one room, or every room of an ended session.
    #[serde(deserialize_with = "list")]
    pub dels: Vec<RoomDel>,
    /// The session's last reported activity (when it ended).
    #[serde(rename = "la", default)]
    pub last_active_at: Millis,
    /// Its epoch when it left.
    #[serde(rename = "e", default)]
    pub epoch: u64,
    /// The node of its last connection.
    #[serde(rename = "n", default)]
    pub node_id: Option<String>,
    /// The session ended (else it left one room).
    #[serde(default)]
    pub ended: bool,
}

session_call!(Leave, leave, Fenced<Left>, |call| [
    call.epoch.map(|e| e.to_string()).unwrap_or_default(),
    call.room.unwrap_or_default().to_owned(),
]);

/// `disconnect.lua`: the transport closed without a leave.
pub(super) struct Disconnect<'a> {
    pub on: On<'a>,
    pub epoch: u64,
}

/// What `disconnect.lua` did.
#[derive(Debug, Deserialize)]
pub(super) struct Disconnected {
    pub changed: bool,
    #[serde(rename = "v")]
    pub version: u64,
    #[serde(rename = "uid")]
    pub user_id: String,
    #[serde(rename = "ix")]
    pub deadline: Option<i64>,
    #[serde(deserialize_with = "list")]
    pub puts: Vec<RoomPut>,
    /// The session's status now (stale, unless it was past that).
    #[serde(rename = "st", default, deserialize_with = "status")]
    pub status: Option<SessionStatus>,
    /// Its last reported activity.
    #[serde(rename = "la", default)]
    pub last_active_at: Millis,
}

session_call!(Disconnect, disconnect, Fenced<Disconnected>, |call| [call
    .epoch
    .to_string()]);

/// `expire.lua`: the sweeper's step for sessions found due in the deadline
/// index (many at once, on one slot on Redis Cluster), or for one found as
/// a member of `room` in the room's expiry index.
pub(super) struct Expire<'a> {
    pub sessions: &'a [&'a str],
    pub now: Millis,
    /// [`timings_json`].
    pub timings: &'a str,
    /// Only with one session.
    pub room: Option<&'a str>,
    /// The sweeper's lease term.
    pub term: u64,
}

/// What `expire.lua` found.
#[derive(Debug, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(super) enum Expiry {
    /// No session (or only its tombstone): nothing left to watch.
    Gone,
    /// A sweeper with a higher term has been here: this one changed nothing.
    Fenced,
    /// Past its removal deadline: buried; remove it from its rooms and user.
    Expired {
        #[serde(rename = "v")]
        version: u64,
        #[serde(rename = "uid")]
        user_id: String,
        #[serde(deserialize_with = "list")]
        dels: Vec<RoomDel>,
        /// Its last reported activity.
        #[serde(rename = "la", default)]
        last_active_at: Millis,
    },
    /// Alive; its status may have changed.
    Alive {
        changed: bool,
        #[serde(rename = "v")]
        version: u64,
        #[serde(rename = "uid")]
        user_id: String,
        /// When to look at the session again (its entry in the deadline index).
        next: i64,
        #[serde(deserialize_with = "list")]
        puts: Vec<RoomPut>,
        /// The session still holds the room the call named.
        #[serde(rename = "inroom")]
        in_room: bool,
        /// When that room should check the session again.
        #[serde(rename = "x")]
        check_at: i64,
        /// Its status now.
        #[serde(rename = "st", default, deserialize_with = "status")]
        status: Option<SessionStatus>,
        /// Its last reported activity.
        #[serde(rename = "la", default)]
        last_active_at: Millis,
    },
}

/// What `expire.lua` found: an [`Expiry`] per session, in call order, up to
/// the first `Fenced` (the sessions after it are left untouched).
#[derive(Debug, Deserialize)]
pub(super) struct Expiries(#[serde(deserialize_with = "list")] pub Vec<Expiry>);

impl Decode for Expiries {
    fn decode(v: Value) -> Result<Self, StoreError> {
        json("expire.lua", v)
    }
}

impl ScriptCall for Expire<'_> {
    type Reply = Expiries;
    fn script(s: &Scripts) -> &Lua {
        &s.expire
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        self.sessions.iter().map(|sid| keys.session(sid)).collect()
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![
            self.now.to_string(),
            self.timings.to_owned(),
            self.room.unwrap_or_default().to_owned(),
            self.term.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode<T: Decode>(text: &str) -> T {
        T::decode(Value::from(text)).unwrap()
    }

    #[test]
    fn the_timings_carry_the_tombstone_lifetime() {
        let t: serde_json::Value =
            serde_json::from_str(&timings_json(&Timings::default())).unwrap();
        assert_eq!(t["tomb"], TOMBSTONE_MS);
        assert_eq!(t["hbt"], Timings::default().heartbeat_timeout_ms);
    }

    #[test]
    fn the_quiet_heartbeat_reply_is_a_beat_with_nothing_to_project() {
        let b = decode::<Fenced<Beat>>(
            r#"{"ok":true,"st":"idle","a":"idle","hb":1700000000123,"la":1700000000000,"ku":1700000300000}"#,
        )
        .unwrap();
        assert!(!b.changed && b.puts.is_empty() && b.deadline.is_none());
        assert_eq!(b.status, SessionStatus::Idle);
        assert_eq!(b.keep_until, 1_700_000_300_000);
        assert_eq!(
            b.pulse(),
            Pulse {
                activity: Activity::Idle,
                last_heartbeat_at: 1_700_000_000_123,
                last_active_at: 1_700_000_000_000,
                disconnected_at: None,
            }
        );
        // Without what the node vouches with, a reply is not a beat.
        assert!(Fenced::<Beat>::decode(Value::from(r#"{"ok":true}"#)).is_err());
    }

    #[test]
    fn the_beats_reply_is_one_flag_per_session() {
        assert_eq!(
            decode::<BeatsWritten>("1101"),
            BeatsWritten(vec![true, true, false, true])
        );
        assert!(BeatsWritten::decode(Value::from("1x")).is_err());
    }

    #[test]
    fn expiry_outcomes_are_variants_in_call_order() {
        let Expiries(all) = decode::<Expiries>(
            r#"[{"outcome":"gone"},{"outcome":"fenced"},
                {"outcome":"expired","v":3,"uid":"u","dels":[{"room":"r","ev":"{}"}]},
                {"outcome":"alive","changed":false,"v":3,"uid":"u","next":5,"puts":{},"inroom":true,"x":9}]"#,
        );
        let [g, f, e, a] = &all[..] else {
            panic!("four outcomes: {all:?}")
        };
        assert!(matches!(g, Expiry::Gone));
        assert!(matches!(f, Expiry::Fenced));
        assert!(matches!(e, Expiry::Expired { version: 3, dels, .. } if dels.len() == 1));
        assert!(matches!(
            a,
            Expiry::Alive {
                in_room: true,
                check_at: 9,
                next: 5,
                ..
            }
        ));
    }
}
