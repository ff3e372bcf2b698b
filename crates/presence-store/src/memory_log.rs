//! The memory store's lifecycle stream: the shape of a Redis Stream with
//! consumer groups (ids, pending entries, claims of idle ones, a cap), kept
//! in memory, so that webhooks behave the same on one node without Redis.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use presence_core::{Clock, LifecycleEvent, Millis};

use crate::error::StoreError;
use crate::lifecycle::{shard_for, EventLog, StreamEntry};

/// The in-memory [`EventLog`].
pub struct MemoryLog {
    shards: Mutex<Vec<Shard>>,
    clock: Arc<dyn Clock>,
    max_len: usize,
}

#[derive(Default)]
struct Shard {
    /// The last id handed out (entry ids are `<n>-0`, increasing).
    last: u64,
    entries: VecDeque<(u64, LifecycleEvent)>,
    groups: HashMap<String, Group>,
}

struct Group {
    /// The last entry handed to any consumer.
    delivered: u64,
    /// Entries handed out and not acknowledged: id → (consumer, since).
    pending: BTreeMap<u64, (String, Millis)>,
}

impl MemoryLog {
    /// A stream of `shards` shards of about `max_len` entries each.
    pub fn new(clock: Arc<dyn Clock>, shards: u32, max_len: u64) -> Self {
        Self {
            shards: Mutex::new((0..shards.max(1)).map(|_| Shard::default()).collect()),
            clock,
            max_len: usize::try_from(max_len).unwrap_or(usize::MAX).max(1),
        }
    }

    /// Appends events now (what [`EventLog::append`] does, without a wait).
    ///
    /// With no consumer group yet nothing is kept (a group starts at the
    /// end of the stream, so no one could ever read it): a node without
    /// webhooks spends no memory on the stream.
    pub fn push(&self, events: Vec<LifecycleEvent>) {
        let mut shards = self.lock();
        let n = shards.len() as u32;
        for e in events {
            let s = &mut shards[shard_for(e.kind.subject(), n) as usize];
            s.last += 1;
            if s.groups.is_empty() {
                continue;
            }
            s.entries.push_back((s.last, e));
            while s.entries.len() > self.max_len {
                s.entries.pop_front();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Shard>> {
        self.shards.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn entry(shard: u32, id: u64, e: Option<&LifecycleEvent>) -> StreamEntry {
    StreamEntry {
        shard,
        id: format!("{id}-0"),
        event: e.cloned(),
    }
}

fn parse(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn no_group(group: &str) -> StoreError {
    StoreError::Internal(format!("no consumer group {group}"))
}

impl Shard {
    fn event(&self, id: u64) -> Option<&LifecycleEvent> {
        let first = self.entries.front()?.0;
        let i = usize::try_from(id.checked_sub(first)?).ok()?;
        self.entries.get(i).map(|(_, e)| e)
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    fn shards(&self) -> u32 {
        self.lock().len() as u32
    }

    async fn append(&self, events: Vec<LifecycleEvent>) -> Result<(), StoreError> {
        self.push(events);
        Ok(())
    }

    async fn ensure_group(&self, group: &str) -> Result<(), StoreError> {
        for s in self.lock().iter_mut() {
            let last = s.last;
            s.groups.entry(group.to_owned()).or_insert(Group {
                delivered: last,
                pending: BTreeMap::new(),
            });
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
        let now = self.clock.now_ms();
        let mut shards = self.lock();
        let s = shards
            .get_mut(shard as usize)
            .ok_or_else(|| StoreError::Internal(format!("no shard {shard}")))?;
        let g = s.groups.get(group).ok_or_else(|| no_group(group))?;
        let from = g.delivered;
        let picked: Vec<u64> = s
            .entries
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id > from)
            .take(count)
            .collect();
        let out = picked
            .iter()
            .map(|id| entry(shard, *id, s.event(*id)))
            .collect();
        let g = s.groups.get_mut(group).ok_or_else(|| no_group(group))?;
        for id in picked {
            g.delivered = id;
            g.pending.insert(id, (consumer.to_owned(), now));
        }
        Ok(out)
    }

    async fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        shard: u32,
        min_idle_ms: Millis,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let now = self.clock.now_ms();
        let mut shards = self.lock();
        let s = shards
            .get_mut(shard as usize)
            .ok_or_else(|| StoreError::Internal(format!("no shard {shard}")))?;
        let g = s.groups.get_mut(group).ok_or_else(|| no_group(group))?;
        let idle: Vec<u64> = g
            .pending
            .iter()
            .filter(|(_, (_, since))| now - since >= min_idle_ms)
            .map(|(id, _)| *id)
            .take(count)
            .collect();
        for id in &idle {
            g.pending.insert(*id, (consumer.to_owned(), now));
        }
        // An entry trimmed away while pending is dropped from the group, as
        // XAUTOCLAIM does.
        let (kept, gone): (Vec<u64>, Vec<u64>) =
            idle.into_iter().partition(|id| s.event(*id).is_some());
        let g = s.groups.get_mut(group).ok_or_else(|| no_group(group))?;
        for id in gone {
            g.pending.remove(&id);
        }
        Ok(kept
            .into_iter()
            .map(|id| entry(shard, id, s.event(id)))
            .collect())
    }

    async fn touch(
        &self,
        group: &str,
        consumer: &str,
        shard: u32,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut shards = self.lock();
        let Some(g) = shards
            .get_mut(shard as usize)
            .and_then(|s| s.groups.get_mut(group))
        else {
            return Err(no_group(group));
        };
        for id in ids.iter().filter_map(|i| parse(i)) {
            if let Some(p) = g.pending.get_mut(&id) {
                *p = (consumer.to_owned(), now);
            }
        }
        Ok(())
    }

    async fn ack(&self, group: &str, shard: u32, ids: &[String]) -> Result<(), StoreError> {
        let mut shards = self.lock();
        let Some(g) = shards
            .get_mut(shard as usize)
            .and_then(|s| s.groups.get_mut(group))
        else {
            return Err(no_group(group));
        };
        for id in ids.iter().filter_map(|i| parse(i)) {
            g.pending.remove(&id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{Lifecycle, ManualClock, RoomId};

    fn ev(n: u64) -> LifecycleEvent {
        Lifecycle::RoomOccupied {
            room_id: RoomId::new("r").unwrap(),
        }
        .at(format!("e{n}"), 0)
    }

    #[tokio::test]
    async fn keeps_nothing_without_a_group_and_at_most_the_cap_with_one() {
        let log = MemoryLog::new(Arc::new(ManualClock::new(0)), 1, 3);
        log.push((0..10).map(ev).collect());
        assert!(log.lock()[0].entries.is_empty(), "no group: nothing kept");
        log.ensure_group("g").await.unwrap();
        log.push((10..15).map(ev).collect());
        assert_eq!(log.lock()[0].entries.len(), 3, "capped");
        let got = log.read_new("g", "c", 0, 100).await.unwrap();
        let ids: Vec<String> = got
            .iter()
            .map(|e| e.event.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(
            ids,
            ["e12", "e13", "e14"],
            "what the cap kept, after the group began"
        );
    }
}
