//! A backend consuming the lifecycle stream (docs/events.md) straight from
//! Redis, with a consumer group of its own: prints every event as one JSON
//! line and acknowledges it after. A consumer that was down resumes where
//! its group stopped; entries another consumer of the group took and never
//! acknowledged (it crashed) are claimed after a minute.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p presence-store --example lifecycle
//! ```
//!
//! Settings (environment): `PRESENCE_KEY_PREFIX` and `PRESENCE_EVENT_SHARDS`
//! as the nodes have them (default `presence`, 4); `GROUP` (default
//! `lifecycle-example`), `CONSUMER` (default the host name and pid);
//! `COUNT`: stop after that many events; `FROM=start`: a new group starts at
//! the oldest entry kept instead of at the end.
//!
//! Each shard is read on its own connection with `XREADGROUP ... BLOCK`: the
//! shards live on different hash slots (on Redis Cluster, different
//! masters), and a blocking read holds its connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fred::prelude::*;
use fred::types::streams::XReadResponse;
use presence_core::LifecycleEvent;
use presence_store::redis::keys::Keys;

/// A stream entry as read: its id and its fields.
type Entry = (String, Vec<(String, String)>);

/// Entries a consumer of the group took and left unacknowledged this long
/// are taken over.
const CLAIM_IDLE_MS: u64 = 60_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let url = env("REDIS_URL", "redis://127.0.0.1:6379");
    let keys = Keys::new(&env("PRESENCE_KEY_PREFIX", "presence"));
    let shards: u32 = env("PRESENCE_EVENT_SHARDS", "4").parse()?;
    let group = env("GROUP", "lifecycle-example");
    let consumer = env("CONSUMER", &format!("example-{}", std::process::id()));
    let limit: u64 = env("COUNT", "0").parse()?;
    let from = if env("FROM", "end") == "start" {
        "0"
    } else {
        "$"
    };

    let config = Config::from_url(&url)?;
    let seen = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for shard in 0..shards {
        // A connection per shard: each read blocks its own.
        let client = Builder::from_config(config.clone()).build()?;
        client.init().await?;
        let key = keys.lifecycle(shard);
        // The group, at the end of the stream (MKSTREAM: the stream may not
        // exist yet); it is there already after the first run.
        let made: Result<(), Error> = client.xgroup_create(&key, &group, from, true).await;
        if let Err(e) = made {
            if !e.details().contains("BUSYGROUP") {
                return Err(e.into());
            }
        }
        let (group, consumer, seen) = (group.clone(), consumer.clone(), seen.clone());
        readers.push(tokio::spawn(async move {
            read_shard(client, key, group, consumer, seen, limit).await
        }));
    }
    eprintln!("reading {shards} shard(s) of the lifecycle stream on {url} as {consumer}");
    for r in readers {
        r.await??;
    }
    Ok(())
}

/// Reads one shard until `limit` events were printed (0: forever).
async fn read_shard(
    client: Client,
    key: String,
    group: String,
    consumer: String,
    seen: Arc<AtomicU64>,
    limit: u64,
) -> Result<(), Error> {
    // First what a consumer that died left behind, then what is new.
    let (_, left): (String, Vec<Entry>) = client
        .xautoclaim(
            &key,
            &group,
            &consumer,
            CLAIM_IDLE_MS,
            "0-0",
            Some(100),
            false,
        )
        .await
        .map(|(next, entries, _deleted): (String, _, Vec<String>)| (next, entries))?;
    handle(&client, &key, &group, left, &seen, limit).await?;
    while limit == 0 || seen.load(Ordering::SeqCst) < limit {
        let read: Option<XReadResponse<String, String, String, String>> = client
            .xreadgroup_map(&group, &consumer, Some(100), Some(1_000), false, &key, ">")
            .await
            .ok();
        let entries = read
            .into_iter()
            .flat_map(|r| r.into_values())
            .flatten()
            .map(|(id, fields)| (id, fields.into_iter().collect()))
            .collect();
        handle(&client, &key, &group, entries, &seen, limit).await?;
    }
    Ok(())
}

/// Prints each entry's event and acknowledges it.
async fn handle(
    client: &Client,
    key: &str,
    group: &str,
    entries: Vec<Entry>,
    seen: &AtomicU64,
    limit: u64,
) -> Result<(), Error> {
    for (id, fields) in entries {
        let event = fields
            .iter()
            .find(|(f, _)| f == "e")
            .and_then(|(_, json)| serde_json::from_str::<LifecycleEvent>(json).ok());
        if let Some(event) = event {
            if limit == 0 || seen.fetch_add(1, Ordering::SeqCst) < limit {
                // What a real consumer does with it goes here; it must be
                // idempotent by `event.id` (an entry may come twice).
                println!("{}", serde_json::to_string(&event).unwrap_or_default());
            }
        }
        let _: u64 = client.xack(key, group, &id).await?;
    }
    Ok(())
}
