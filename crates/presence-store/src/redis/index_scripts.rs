//! The scripts of the user index (`user_put`, `user_del`), the reaper lease
//! (`lease`, `lease_release`) and the node registry (`node_put`,
//! `nodes_read`): their typed arguments and replies.

use fred::types::Value;
use presence_core::{Millis, NodeId, SessionStatus, UserStatus};

use super::keys::Keys;
use super::scripts::{integer, json, Decode, Lua, ScriptCall, Scripts};
use crate::api::{Lease, NodeInfo};
use crate::error::StoreError;

/// One entry of a [`PutUserSessions`] call.
#[derive(Debug, Clone, Copy)]
pub(super) struct UserEntry<'a> {
    pub user_id: &'a str,
    pub session: &'a str,
    pub version: u64,
    pub status: SessionStatus,
    pub last_active_at: Millis,
    /// A hello: the session may be new to the user (else only an entry that
    /// is there is updated).
    pub add: bool,
}

/// `user_put.lua`: sessions belong to their users, with their status (the
/// users' keys on one slot on Redis Cluster).
pub(super) struct PutUserSessions<'a> {
    pub entries: &'a [UserEntry<'a>],
    /// Most sessions a user may hold.
    pub max_sessions: usize,
}

/// What `user_put.lua` did with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UserSessionAdded {
    /// Recorded.
    Recorded,
    /// A newer entry was there and stays (or a status change found none).
    Newer,
    /// The session is new to the user and the user holds as many as allowed:
    /// nothing written.
    Full,
}

/// A user's derived status around one entry of a user script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UserTurn {
    pub before: UserStatus,
    pub after: UserStatus,
}

/// Per entry of a [`PutUserSessions`], in call order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UserSessionsPut(pub Vec<(UserSessionAdded, UserTurn)>);

fn user_status(script: &str, v: Option<Value>) -> Result<UserStatus, StoreError> {
    let s: String = v
        .ok_or_else(|| StoreError::Internal(format!("{script}: short reply")))?
        .convert()
        .map_err(|e| StoreError::Internal(format!("{script}: {e}")))?;
    Ok(match s.as_str() {
        "active" => UserStatus::Active,
        "idle" => UserStatus::Idle,
        "away" => UserStatus::Away,
        "stale" => UserStatus::Stale,
        _ => UserStatus::Offline,
    })
}

fn int(script: &str, v: Option<Value>) -> Result<i64, StoreError> {
    v.ok_or_else(|| StoreError::Internal(format!("{script}: short reply")))?
        .convert()
        .map_err(|e| StoreError::Internal(format!("{script}: {e}")))
}

impl Decode for UserSessionsPut {
    fn decode(v: Value) -> Result<Self, StoreError> {
        const S: &str = "user_put.lua";
        v.into_array()
            .into_iter()
            .map(|entry| {
                let mut it = entry.into_array().into_iter();
                let added = match int(S, it.next())? {
                    1 => UserSessionAdded::Recorded,
                    0 => UserSessionAdded::Newer,
                    -1 => UserSessionAdded::Full,
                    n => return Err(StoreError::Internal(format!("{S} answered {n}"))),
                };
                let before = user_status(S, it.next())?;
                let after = user_status(S, it.next())?;
                Ok((added, UserTurn { before, after }))
            })
            .collect::<Result<_, _>>()
            .map(UserSessionsPut)
    }
}

impl ScriptCall for PutUserSessions<'_> {
    type Reply = UserSessionsPut;
    fn script(s: &Scripts) -> &Lua {
        &s.user_put
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        self.entries.iter().map(|e| keys.user(e.user_id)).collect()
    }
    fn args(self, _: &Keys) -> Vec<String> {
        let mut args = Vec::with_capacity(1 + 5 * self.entries.len());
        args.push(self.max_sessions.to_string());
        for e in self.entries {
            args.extend([
                e.session.to_owned(),
                e.version.to_string(),
                e.status.as_str().to_owned(),
                e.last_active_at.to_string(),
                if e.add { "add" } else { "set" }.to_owned(),
            ]);
        }
        args
    }
}

/// One entry of a [`RemoveUserSessions`] call.
#[derive(Debug, Clone, Copy)]
pub(super) struct UserSession<'a> {
    pub user_id: &'a str,
    pub session: &'a str,
    /// An entry newer than this stays (the id was claimed again since).
    pub version: u64,
    /// The session's last activity when it ended (0: unknown).
    pub last_active_at: Millis,
}

/// `user_del.lua`: sessions are no longer their users' (the users' keys on
/// one slot on Redis Cluster); an offline user's last seen is kept.
pub(super) struct RemoveUserSessions<'a> {
    pub entries: &'a [UserSession<'a>],
    pub now: Millis,
    /// How long last seen is kept.
    pub keep_ms: Millis,
}

/// What `user_del.lua` found for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UserLeft {
    /// Sessions the user has left.
    pub left: u64,
    pub turn: UserTurn,
    /// The user's last activity, as kept.
    pub last_seen_at: Millis,
}

/// Per entry, in call order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SessionsLeft(pub Vec<UserLeft>);

impl Decode for SessionsLeft {
    fn decode(v: Value) -> Result<Self, StoreError> {
        const S: &str = "user_del.lua";
        v.into_array()
            .into_iter()
            .map(|entry| {
                let mut it = entry.into_array().into_iter();
                let left = int(S, it.next())?.max(0) as u64;
                let before = user_status(S, it.next())?;
                let after = user_status(S, it.next())?;
                let last_seen_at = int(S, it.next())?;
                Ok(UserLeft {
                    left,
                    turn: UserTurn { before, after },
                    last_seen_at,
                })
            })
            .collect::<Result<_, _>>()
            .map(SessionsLeft)
    }
}

impl ScriptCall for RemoveUserSessions<'_> {
    type Reply = SessionsLeft;
    fn script(s: &Scripts) -> &Lua {
        &s.user_del
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        self.entries
            .iter()
            .flat_map(|e| [keys.user(e.user_id), keys.last_seen(e.user_id)])
            .collect()
    }
    fn args(self, _: &Keys) -> Vec<String> {
        let mut args = vec![self.now.to_string(), self.keep_ms.max(1).to_string()];
        args.extend(self.entries.iter().flat_map(|e| {
            [
                e.session.to_owned(),
                e.version.to_string(),
                e.last_active_at.to_string(),
            ]
        }));
        args
    }
}

/// `lease.lua`: takes or renews the reaper lease.
pub(super) struct TakeLease<'a> {
    pub node_id: &'a NodeId,
    pub now: Millis,
    pub lease_ms: Millis,
}

impl Decode for Lease {
    fn decode(v: Value) -> Result<Self, StoreError> {
        json("lease.lua", v)
    }
}

impl ScriptCall for TakeLease<'_> {
    type Reply = Lease;
    fn script(s: &Scripts) -> &Lua {
        &s.lease
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let k = keys.lease();
        vec![k.lease, k.term]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![
            self.node_id.to_string(),
            self.now.to_string(),
            self.lease_ms.max(1).to_string(),
        ]
    }
}

/// `lease_release.lua`: a holder gives the lease up.
pub(super) struct ReleaseLease<'a> {
    pub node_id: &'a NodeId,
    pub term: u64,
}

/// Whether the lease was released (it was held by that node with that term).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Released(pub bool);

impl Decode for Released {
    fn decode(v: Value) -> Result<Self, StoreError> {
        Ok(Released(integer("lease_release.lua", v)? == 1))
    }
}

impl ScriptCall for ReleaseLease<'_> {
    type Reply = Released;
    fn script(s: &Scripts) -> &Lua {
        &s.lease_release
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let k = keys.lease();
        vec![k.lease, k.term]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![self.node_id.to_string(), self.term.to_string()]
    }
}

/// `node_put.lua`: a node registers itself or refreshes its registration.
pub(super) struct RegisterNode<'a> {
    pub node: &'a NodeInfo,
    pub now: Millis,
    pub ttl_ms: Millis,
}

/// Live registrations after the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NodesLive(pub u64);

impl Decode for NodesLive {
    fn decode(v: Value) -> Result<Self, StoreError> {
        Ok(NodesLive(integer("node_put.lua", v)?.max(0) as u64))
    }
}

impl ScriptCall for RegisterNode<'_> {
    type Reply = NodesLive;
    fn script(s: &Scripts) -> &Lua {
        &s.node_put
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.nodes(), keys.nodes_info()]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![
            self.node.node_id.to_string(),
            serde_json::to_string(self.node).expect("a registration serializes"),
            self.now.to_string(),
            self.ttl_ms.max(1).to_string(),
        ]
    }
}

/// `nodes_read.lua`: the live registrations.
pub(super) struct ReadNodes {
    pub now: Millis,
}

/// The registrations that have not lapsed, by node id (unreadable ones skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Registrations(pub Vec<NodeInfo>);

impl Decode for Registrations {
    fn decode(v: Value) -> Result<Self, StoreError> {
        let raw: Vec<String> = v
            .convert()
            .map_err(|e| StoreError::Internal(format!("nodes_read.lua: {e}")))?;
        Ok(Registrations(
            raw.iter()
                .filter_map(|j| serde_json::from_str::<NodeInfo>(j).ok())
                .collect(),
        ))
    }
}

impl ScriptCall for ReadNodes {
    type Reply = Registrations;
    fn script(s: &Scripts) -> &Lua {
        &s.nodes_read
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.nodes(), keys.nodes_info()]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![self.now.to_string()]
    }
}
