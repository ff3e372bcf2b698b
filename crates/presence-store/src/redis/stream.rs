//! The lifecycle stream on Redis: one Stream per shard (`P:lc:{<n>}`),
//! capped with `MAXLEN ~`, read through consumer groups.
//!
//! Appends come after the script that decided them (a script touches one
//! slot; a shard is another), one `XADD` per event. Reads never block a
//! connection (`XREADGROUP` without `BLOCK`): the connections are shared
//! with every other command, so a deliverer polls instead.

use std::sync::Arc;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::streams::{XCapKind, XCapTrim};
use fred::types::Value;
use presence_core::{LifecycleEvent, Millis};

use super::keys::Keys;
use super::route::Route;
use crate::error::StoreError;
use crate::lifecycle::{shard_for, EventLog, StreamEntry};

/// The field of an entry that holds the event's JSON.
const EVENT_FIELD: &str = "e";

/// The Redis [`EventLog`].
pub struct RedisLog {
    route: Route,
    keys: Keys,
    shards: u32,
    max_len: u64,
}

impl RedisLog {
    /// The stream of a store's connections.
    pub(super) fn new(route: Route, keys: Keys, shards: u32, max_len: u64) -> Arc<Self> {
        Arc::new(Self {
            route,
            keys,
            shards: shards.max(1),
            max_len: max_len.max(1),
        })
    }

    fn key(&self, shard: u32) -> String {
        self.keys.lifecycle(shard)
    }
}

/// Entries from an `XREADGROUP` or `XAUTOCLAIM` list: `[[id, [field,
/// value, ...]], ...]` (an entry deleted meanwhile comes without fields).
fn entries(shard: u32, list: Value) -> Vec<StreamEntry> {
    list.into_array()
        .into_iter()
        .filter_map(|item| {
            let mut parts = item.into_array().into_iter();
            let id = parts.next()?.as_string()?;
            let fields = parts.next().map(Value::into_array).unwrap_or_default();
            let mut event = None;
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if k.as_str().as_deref() == Some(EVENT_FIELD) {
                    event = v
                        .as_str()
                        .and_then(|text| serde_json::from_str::<LifecycleEvent>(&text).ok());
                }
            }
            Some(StreamEntry { shard, id, event })
        })
        .collect()
}

/// The entries of one stream in an `XREADGROUP` reply (RESP2: `[[key,
/// entries]]`; RESP3: `{key: entries}`).
fn read_reply(shard: u32, v: Value) -> Vec<StreamEntry> {
    match v {
        Value::Null => vec![],
        Value::Map(m) => m
            .inner()
            .into_values()
            .flat_map(|list| entries(shard, list))
            .collect(),
        other => other
            .into_array()
            .into_iter()
            .flat_map(|pair| {
                let list = pair.into_array().into_iter().nth(1).unwrap_or(Value::Null);
                entries(shard, list)
            })
            .collect(),
    }
}

fn busy_group(e: &fred::error::Error) -> bool {
    e.details().contains("BUSYGROUP")
}

impl RedisLog {
    /// Makes the group on `shard` at `from` unless it exists.
    async fn make_group(&self, group: &str, shard: u32, from: &str) -> Result<(), StoreError> {
        let key = &self.key(shard);
        self.route
            .on_key(key, |c| async move {
                match c
                    .xgroup_create::<Value, _, _, _>(key, group, from, true)
                    .await
                {
                    Err(e) if busy_group(&e) => Ok(Value::Null),
                    other => other,
                }
            })
            .await
            .map(|_| ())
    }

    /// The group went away with the stream (Redis restarted without its
    /// data, or someone deleted the key): made again from the start of
    /// what the stream holds now, which all came after the loss.
    async fn regroup(&self, group: &str, shard: u32) -> Result<(), StoreError> {
        tracing::warn!(
            group,
            shard,
            "the lifecycle stream lost its consumer group (Redis lost its data?); making it again"
        );
        self.make_group(group, shard, "0").await
    }
}

#[async_trait]
impl EventLog for RedisLog {
    fn shards(&self) -> u32 {
        self.shards
    }

    async fn append(&self, events: Vec<LifecycleEvent>) -> Result<(), StoreError> {
        let max_len = self.max_len as i64;
        let appends = events.iter().map(|e| {
            let key = self.key(shard_for(e.kind.subject(), self.shards));
            let json = serde_json::to_string(e).unwrap_or_default();
            async move {
                let (k, j) = (&key, &json);
                self.route
                    .on_key(k, |c| async move {
                        let cap = (XCapKind::MaxLen, XCapTrim::AlmostExact, max_len);
                        c.xadd::<Value, _, _, _, _>(
                            k,
                            false,
                            cap,
                            "*",
                            vec![(EVENT_FIELD, j.as_str())],
                        )
                        .await
                    })
                    .await
                    .map(|_| ())
            }
        });
        futures::future::join_all(appends)
            .await
            .into_iter()
            .collect()
    }

    async fn ensure_group(&self, group: &str) -> Result<(), StoreError> {
        for shard in 0..self.shards {
            self.make_group(group, shard, "$").await?;
        }
        Ok(())
    }

    async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        shard: u32,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let key = &self.key(shard);
        let read = self
            .route
            .on_key(key, |c| async move {
                c.xreadgroup::<Value, _, _, _, _>(
                    group,
                    consumer,
                    Some(count as u64),
                    None,
                    false,
                    key.as_str(),
                    ">",
                )
                .await
            })
            .await;
        match read {
            Ok(v) => Ok(read_reply(shard, v)),
            // The stream (and its group) went away: Redis restarted without
            // its data, or someone deleted it. Make the group again.
            Err(StoreError::Internal(e)) if e.contains("NOGROUP") => {
                self.regroup(group, shard).await?;
                Ok(vec![])
            }
            Err(e) => Err(e),
        }
    }

    async fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        shard: u32,
        min_idle_ms: Millis,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let key = &self.key(shard);
        let idle = min_idle_ms.max(0) as u64;
        let claimed = self
            .route
            .on_key(key, |c| async move {
                c.xautoclaim::<Value, _, _, _, _>(
                    key,
                    group,
                    consumer,
                    idle,
                    "0-0",
                    Some(count as u64),
                    false,
                )
                .await
            })
            .await;
        let v = match claimed {
            Ok(v) => v,
            Err(StoreError::Internal(e)) if e.contains("NOGROUP") => {
                self.regroup(group, shard).await?;
                return Ok(vec![]);
            }
            Err(e) => return Err(e),
        };
        // [next start, entries, deleted ids (Redis 7)]
        let list = v.into_array().into_iter().nth(1).unwrap_or(Value::Null);
        Ok(entries(shard, list))
    }

    async fn touch(
        &self,
        group: &str,
        consumer: &str,
        shard: u32,
        ids: &[String],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = &self.key(shard);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ids = &ids;
        self.route
            .on_key(key, |c| async move {
                c.xclaim::<Value, _, _, _, _>(
                    key,
                    group,
                    consumer,
                    0,
                    ids.clone(),
                    None,
                    None,
                    None,
                    false,
                    true,
                )
                .await
            })
            .await
            .map(|_| ())
    }

    async fn ack(&self, group: &str, shard: u32, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = &self.key(shard);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ids = &ids;
        self.route
            .on_key(key, |c| async move {
                c.xack::<Value, _, _, _>(key, group, ids.clone()).await
            })
            .await
            .map(|_| ())
    }
}
