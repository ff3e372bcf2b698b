//! Every Redis key and channel name of the store, built in one place.
//!
//! `P` is the key prefix (`PRESENCE_KEY_PREFIX`); `{...}` is the Redis
//! Cluster hash tag, so every key of a session, of a room (and the room's
//! channels), of a user, of an index shard lives on one slot.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:s:{<sessionId>}` | hash | the session (fields in [`field`]): `userId`, `epoch`, `lastHeartbeatAt`, other facts in short fields (`rd` readiness, `cp` capabilities), rooms (`r:<roomId>` = state, `su:<roomId>` = when it changed); `g` = `<epoch>:<status>`, the guard that `beats.lua` checks; `dead` on a tombstone; a TTL of 1 to 6 minutes past its removal deadline (`ttl` = the instant it runs to, so a heartbeat sets it again only about every five minutes); a short-lived tombstone after it ends |
//! | `P:r:{<roomId>}:m` | hash | members: sessionId → `<version>\|<userId>\|<member JSON>` (status, handle, state, times: the room's view in one read) |
//! | `P:r:{<roomId>}:u` | hash | userId → sessions in the room (O(1) user count) |
//! | `P:r:{<roomId>}:seq` | string | the room's version |
//! | `P:r:{<roomId>}:g` | hash | sessionId → version it left at (late joins cannot resurrect it) |
//! | `P:r:{<roomId>}:x` | sorted set | the room's expiry index: sessionId → when to check that the session still holds the membership |
//! | `P:u:{<userId>}` | hash | the user's sessions: sessionId → version |
//! | `P:on:{<0..16>}` | sorted set | online users, sharded by user id, ordered for paging |
//! | `P:dl:{<0..16>}` | sorted set | sessions by a deadline no later than their next status change, sharded |
//! | `P:rx:{<0..16>}` | sorted set | rooms by a time no later than their earliest expiry entry, sharded by room id |
//! | `P:events:{<roomId>}` | channel | v1 events of the room (sharded Pub/Sub on Redis 7+) |
//! | `P:signals:{<roomId>}` | channel | `presence:signal` messages relayed between nodes |
//! | `P:node:{<nodeId>}` | channel | notices to one node (a connection of it was superseded) |
//! | `P:it:{<userId>}` | hash | the intents waiting for the user (and those resolved, until their outcome is delivered): intentId → intent JSON, with a TTL past the latest |
//! | `P:ib:{<userId>}` | sorted set | the intents the user made: `<intentId> <calleeId>` → when it expires (the caller's limit) |
//! | `P:intents` | channel | intent notices (made, resolved, cancelled), heard by every node |
//! | `P:seen:{<userId>}` | hash | an offline user's last seen: `la` (last activity of any session), `at` (when the last one ended); `PRESENCE_LAST_SEEN_TTL_S` |
//! | `P:ro:{<0..16>}` | sorted set | recently offline users → when they went offline (who's online `?include=recent`), trimmed to the last-seen TTL, sharded by user id |
//! | `P:lc:{lc<n>}` | stream | the lifecycle events (docs/events.md), `PRESENCE_EVENT_SHARDS` shards, each capped at about `PRESENCE_EVENT_STREAM_MAXLEN` entries; field `e` = the event JSON; consumer groups `webhook:<hash of the URL>` |
//! | `P:lease:{lease}` | string | the reaper lease (JSON: nodeId, term, leaseUntil), with its TTL |
//! | `P:lease:{lease}:term` | string | the last term handed out |
//! | `P:nodes:{nodes}` | sorted set | registered nodes: nodeId → when the registration lapses (its TTL) |
//! | `P:nodes:{nodes}:info` | hash | nodeId → the node's registration (JSON) |

/// Shards of the online-users, deadline and rooms-by-deadline indexes: no
/// single hot key.
pub const SHARDS: u32 = 16;

/// The shard of an id in the sharded indexes.
pub fn shard_of(s: &str) -> u32 {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SHARDS
}

/// The field names of a session hash that Rust reads (the scripts in `lua/`
/// write them; the short names stay inside the hash).
pub mod field {
    /// The session's user.
    pub const USER_ID: &str = "userId";
    /// Display name.
    pub const HANDLE: &str = "h";
    /// The status last derived and published.
    pub const STATUS: &str = "st";
    /// When the session last heartbeated.
    pub const LAST_HEARTBEAT_AT: &str = "lastHeartbeatAt";
    /// When the session last reported activity.
    pub const LAST_ACTIVE_AT: &str = "la";
    /// The session's version (bumped by every change a projection carries).
    pub const VERSION: &str = "v";
    /// Set on a tombstone.
    pub const DEAD: &str = "dead";
    /// The time the session is filed at in the deadline index.
    pub const INDEXED_AT: &str = "ix";
    /// The activity its client last reported.
    pub const ACTIVITY: &str = "a";
    /// The declared readiness (absent or empty: `available`).
    pub const READINESS: &str = "rd";
    /// The capabilities, joined with `,`.
    pub const CAPABILITIES: &str = "cp";

    /// The readiness and capabilities a session hash (or a member) holds.
    pub fn declared(
        readiness: Option<&str>,
        capabilities: Option<&str>,
    ) -> presence_core::Declared {
        presence_core::Declared {
            readiness: readiness
                .and_then(presence_core::Readiness::parse)
                .unwrap_or_default(),
            capabilities: capabilities
                .map(presence_core::Capabilities::from_joined)
                .unwrap_or_default(),
        }
    }

    /// The field holding the session's state in `room` (present while it is a member).
    pub fn room_state(room: &str) -> String {
        format!("r:{room}")
    }
}

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of one room, in the order the room scripts take them.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    /// sessionId → `<version>|<userId>|<member JSON>`.
    pub members: String,
    /// userId → sessions in the room.
    pub users: String,
    /// The room's version.
    pub seq: String,
    /// sessionId → the version it left at.
    pub gone: String,
    /// The room's expiry index.
    pub expiry: String,
    /// The room's members in page order: a sorted set of `<userId> <sessionId>`
    /// (all scores 0, read by lex range; a space sorts before every id character).
    pub order: String,
}

impl RoomKeys {
    /// `KEYS[1..6]` of room_put.lua and room_del.lua.
    pub fn all(&self) -> Vec<String> {
        vec![
            self.members.clone(),
            self.users.clone(),
            self.seq.clone(),
            self.gone.clone(),
            self.expiry.clone(),
            self.order.clone(),
        ]
    }
}

/// The keys of the reaper lease.
#[derive(Debug, Clone)]
pub struct LeaseKeys {
    /// The lease (JSON), with its TTL.
    pub lease: String,
    /// The last term handed out.
    pub term: String,
}

impl Keys {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// A session's hash.
    pub fn session(&self, sid: &str) -> String {
        format!("{}:s:{{{sid}}}", self.prefix)
    }

    /// A room's keys.
    pub fn room(&self, rid: &str) -> RoomKeys {
        let p = &self.prefix;
        RoomKeys {
            members: format!("{p}:r:{{{rid}}}:m"),
            users: format!("{p}:r:{{{rid}}}:u"),
            seq: format!("{p}:r:{{{rid}}}:seq"),
            gone: format!("{p}:r:{{{rid}}}:g"),
            expiry: format!("{p}:r:{{{rid}}}:x"),
            order: format!("{p}:r:{{{rid}}}:o"),
        }
    }

    /// The reaper lease's keys.
    pub fn lease(&self) -> LeaseKeys {
        let p = &self.prefix;
        LeaseKeys {
            lease: format!("{p}:lease:{{lease}}"),
            term: format!("{p}:lease:{{lease}}:term"),
        }
    }

    /// The node registry (nodeId → when its registration lapses).
    pub fn nodes(&self) -> String {
        format!("{}:nodes:{{nodes}}", self.prefix)
    }

    /// The node registry's registrations (nodeId → JSON).
    pub fn nodes_info(&self) -> String {
        format!("{}:nodes:{{nodes}}:info", self.prefix)
    }

    /// A shard of the rooms-by-deadline index.
    pub fn rooms_due(&self, shard: u32) -> String {
        format!("{}:rx:{{{shard}}}", self.prefix)
    }

    /// A user's sessions.
    pub fn user(&self, uid: &str) -> String {
        format!("{}:u:{{{uid}}}", self.prefix)
    }

    /// An offline user's last seen (same slot as the user's sessions).
    pub fn last_seen(&self, uid: &str) -> String {
        format!("{}:seen:{{{uid}}}", self.prefix)
    }

    /// A shard of the recently-offline index.
    pub fn recent(&self, shard: u32) -> String {
        format!("{}:ro:{{{shard}}}", self.prefix)
    }

    /// A shard of the lifecycle stream.
    pub fn lifecycle(&self, shard: u32) -> String {
        format!("{}:lc:{{lc{shard}}}", self.prefix)
    }

    /// The intents waiting for a user (and those resolved, until delivered).
    pub fn intents_to(&self, uid: &str) -> String {
        format!("{}:it:{{{uid}}}", self.prefix)
    }

    /// The intents a user made, as `<intentId> <calleeId>` by TTL.
    pub fn intents_from(&self, uid: &str) -> String {
        format!("{}:ib:{{{uid}}}", self.prefix)
    }

    /// The channel every node hears intent notices on.
    pub fn intents_channel(&self) -> String {
        format!("{}:intents", self.prefix)
    }

    /// A shard of the online-users index.
    pub fn online(&self, shard: u32) -> String {
        format!("{}:on:{{{shard}}}", self.prefix)
    }

    /// A shard of the session deadline index.
    pub fn deadlines(&self, shard: u32) -> String {
        format!("{}:dl:{{{shard}}}", self.prefix)
    }

    /// The channel of a room's events (same slot as the room's keys).
    pub fn events_channel(&self, rid: &str) -> String {
        format!("{}:events:{{{rid}}}", self.prefix)
    }

    /// The channel of a room's relayed signals (same slot as its events).
    pub fn signals_channel(&self, rid: &str) -> String {
        format!("{}:signals:{{{rid}}}", self.prefix)
    }

    /// What every signals channel starts with (tells signals from events).
    pub fn signals_prefix(&self) -> String {
        format!("{}:signals:", self.prefix)
    }

    /// A node's own channel (notices to that node only).
    pub fn node_channel(&self, node_id: &str) -> String {
        format!("{}:node:{{{node_id}}}", self.prefix)
    }

    /// What every node channel starts with.
    pub fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("alice"), shard_of("alice"));
        let used: BTreeSet<u32> = (0..200).map(|i| shard_of(&format!("user-{i}"))).collect();
        assert_eq!(used.len(), SHARDS as usize);
    }

    #[test]
    fn a_room_and_its_channels_share_a_hash_tag() {
        let k = Keys::new("p");
        let r = k.room("doc");
        for key in r.all() {
            assert!(key.starts_with("p:r:{doc}:"), "{key}");
        }
        assert_eq!(k.events_channel("doc"), "p:events:{doc}");
        assert!(k.signals_channel("doc").starts_with(&k.signals_prefix()));
        assert!(k.signals_channel("doc").ends_with("{doc}"));
    }
}
