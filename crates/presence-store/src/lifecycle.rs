//! The lifecycle stream: where the stores append the
//! [`LifecycleEvent`]s their operations decide, and where webhook
//! deliverers and other consumers read them through consumer groups.
//!
//! The stream is sharded (`Limits::event_shards` streams; a user's events,
//! their memberships and the intents made to them share a shard, a room's
//! occupancy is the room's) and capped at about `Limits::event_stream_max_len`
//! entries per shard. On Redis each shard is a Stream (`P:lc:{<n>}`, see
//! `redis/keys.rs`), read with `XREADGROUP`; entries a consumer took and
//! never acknowledged stay pending in the group, and another consumer claims
//! them once they have been idle long enough. The memory store keeps the same
//! shape in memory.

use async_trait::async_trait;
use presence_core::{LifecycleEvent, Millis};

use crate::error::StoreError;

/// One entry of a shard, as a consumer group hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// The shard it is in.
    pub shard: u32,
    /// Its id in the shard (`<ms>-<n>`), what acknowledging names.
    pub id: String,
    /// The event; `None` when the entry cannot be read as one (written by
    /// something else): a consumer acknowledges it and moves on.
    pub event: Option<LifecycleEvent>,
}

/// The lifecycle stream of a store.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// How many shards there are (`0..shards`).
    fn shards(&self) -> u32;

    /// Appends events, each to its shard.
    async fn append(&self, events: Vec<LifecycleEvent>) -> Result<(), StoreError>;

    /// Creates the consumer group on every shard if it is missing; a new
    /// group starts at the end of the stream (it gets what is appended from
    /// now on).
    async fn ensure_group(&self, group: &str) -> Result<(), StoreError>;

    /// Up to `count` entries of `shard` that no consumer of the group got
    /// yet, now pending on `consumer`.
    async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        shard: u32,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError>;

    /// Up to `count` entries of `shard` pending on any consumer of the group
    /// and idle for at least `min_idle_ms` (their consumer died, or stopped
    /// before acknowledging), now pending on `consumer`.
    async fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        shard: u32,
        min_idle_ms: Millis,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError>;

    /// Keeps entries pending on `consumer` with their idle time reset: a
    /// consumer still retrying them says so, so that nobody claims them.
    async fn touch(
        &self,
        group: &str,
        consumer: &str,
        shard: u32,
        ids: &[String],
    ) -> Result<(), StoreError>;

    /// Acknowledges entries: they are done for the group.
    async fn ack(&self, group: &str, shard: u32, ids: &[String]) -> Result<(), StoreError>;
}

/// The shard of an event about `subject` among `shards`.
pub fn shard_for(subject: &str, shards: u32) -> u32 {
    // FNV-1a: stable across processes and versions, unlike std's hasher, so
    // that every node (and every consumer) agrees.
    let mut h: u32 = 0x811c_9dc5;
    for b in subject.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % shards.max(1)
}

/// A new event id: unique, and kept by the event through every redelivery.
pub fn new_event_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Stamps what one operation decided with ids and its time.
pub fn stamp(kinds: Vec<presence_core::Lifecycle>, at: Millis) -> Vec<LifecycleEvent> {
    kinds
        .into_iter()
        .map(|k| k.at(new_event_id(), at))
        .collect()
}
