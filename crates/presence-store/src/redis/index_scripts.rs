//! The scripts of the user index (`user_put`, `user_del`), the reaper lease
//! (`lease`, `lease_release`) and the node registry (`node_put`,
//! `nodes_read`): their typed arguments and replies.

use fred::types::Value;
use presence_core::{Millis, NodeId};

use super::keys::Keys;
use super::scripts::{integer, json, Decode, Lua, ScriptCall, Scripts};
use crate::api::{Lease, NodeInfo};
use crate::error::StoreError;

/// `user_put.lua`: a session belongs to its user.
pub(super) struct AddUserSession<'a> {
    pub user_id: &'a str,
    pub session: &'a str,
    pub version: u64,
    /// Most sessions the user may hold.
    pub max_sessions: usize,
}

/// What `user_put.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UserSessionAdded {
    /// Recorded.
    Recorded,
    /// A newer entry was there and stays.
    Newer,
    /// The session is new to the user and the user holds as many as allowed:
    /// nothing written.
    Full,
}

impl Decode for UserSessionAdded {
    fn decode(v: Value) -> Result<Self, StoreError> {
        match integer("user_put.lua", v)? {
            1 => Ok(UserSessionAdded::Recorded),
            0 => Ok(UserSessionAdded::Newer),
            -1 => Ok(UserSessionAdded::Full),
            n => Err(StoreError::Internal(format!("user_put.lua answered {n}"))),
        }
    }
}

impl ScriptCall for AddUserSession<'_> {
    type Reply = UserSessionAdded;
    fn script(s: &Scripts) -> &Lua {
        &s.user_put
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.user(self.user_id)]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![
            self.session.to_owned(),
            self.version.to_string(),
            self.max_sessions.to_string(),
        ]
    }
}

/// One entry of a [`RemoveUserSessions`] call.
#[derive(Debug, Clone, Copy)]
pub(super) struct UserSession<'a> {
    pub user_id: &'a str,
    pub session: &'a str,
    /// An entry newer than this stays (the id was claimed again since).
    pub version: u64,
}

/// `user_del.lua`: sessions are no longer their users' (the users' keys on
/// one slot on Redis Cluster).
pub(super) struct RemoveUserSessions<'a> {
    pub entries: &'a [UserSession<'a>],
}

/// Per entry, in call order, how many sessions its user has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SessionsLeft(pub Vec<u64>);

impl Decode for SessionsLeft {
    fn decode(v: Value) -> Result<Self, StoreError> {
        let left: Vec<i64> = v
            .convert()
            .map_err(|e| StoreError::Internal(format!("user_del.lua: {e}")))?;
        Ok(SessionsLeft(
            left.into_iter().map(|n| n.max(0) as u64).collect(),
        ))
    }
}

impl ScriptCall for RemoveUserSessions<'_> {
    type Reply = SessionsLeft;
    fn script(s: &Scripts) -> &Lua {
        &s.user_del
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        self.entries.iter().map(|e| keys.user(e.user_id)).collect()
    }
    fn args(self, _: &Keys) -> Vec<String> {
        self.entries
            .iter()
            .flat_map(|e| [e.session.to_owned(), e.version.to_string()])
            .collect()
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
