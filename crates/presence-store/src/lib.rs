//! Where presence lives: the [`PresenceStore`] trait and its implementations.
//!
//! A store owns the authoritative state (sessions, room memberships, room
//! versions) and applies every mutation atomically, with epoch fencing: each
//! connection that claims a session gets a server-issued epoch, and writes
//! carrying any other epoch are rejected, so a late heartbeat or leave from an
//! old connection can never undo what a newer one did.
//!
//! Layout:
//! - [`api`]: the trait, its requests and answers.
//! - [`error`]: the one error type of the crate boundary.
//! - [`memory`]: the embedded in-memory store (single node, no Redis), and
//!   [`memory_log`], its lifecycle stream.
//! - [`lifecycle`]: the lifecycle stream's interface (appends, consumer
//!   groups), which webhooks and consumers read.
//! - [`redis`]: the Redis store (standalone, Cluster, Sentinel): a folder with
//!   its key layout, connections, typed script calls, projections and sweep.
//! - [`bus`]: presence events over Redis Pub/Sub, one room at a time, for
//!   nodes and backend services alike.
//! - `conformance` (feature `conformance`): the behaviour suite every store
//!   must pass, written once and run against each implementation.

pub mod api;
pub mod bus;
#[cfg(any(test, feature = "conformance"))]
#[macro_use]
pub mod conformance;
pub mod error;
pub mod lifecycle;
pub mod memory;
pub mod memory_log;
pub mod redis;

pub use api::{
    Claimed, Declare, Health, Hello, Holder, Joined, LastSeen, Lease, NodeInfo, NodeNotice, Online,
    Page, PresenceStore, Removal, RoomMembers, RoomPage, RoomStats, SessionRef, Signal, Superseded,
    SweepReport, Takeover, UserSession, EVENT_BUFFER, INTENT_KEEP_MS, TOMBSTONE_MS,
};
pub use bus::{BusMessage, EventBus, Subscribed};
pub use error::StoreError;
pub use lifecycle::{EventLog, StreamEntry};
pub use memory::MemoryStore;
pub use redis::{PubSub, RedisOptions, RedisStore};
