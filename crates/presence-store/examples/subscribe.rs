//! A backend service following presence events: prints every event of the
//! rooms given on the command line, one JSON object per line.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p presence-store --example subscribe -- lobby doc-42
//! ```
//!
//! `PRESENCE_KEY_PREFIX` must match the nodes' (default `presence`). Events
//! published while the subscription is down are lost: the stream then yields
//! a `Gap`, and a service that keeps state re-reads the rooms it follows
//! (`GET /api/rooms/{roomId}/presence` on any node).

use futures::StreamExt;
use presence_core::RoomId;
use presence_store::{BusMessage, EventBus, RedisOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut opts = RedisOptions::new(&url);
    if let Ok(prefix) = std::env::var("PRESENCE_KEY_PREFIX") {
        opts.prefix = prefix;
    }
    let rooms: Vec<RoomId> = std::env::args()
        .skip(1)
        .map(|r| RoomId::new(&r).map_err(|e| format!("room {r:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if rooms.is_empty() {
        return Err("usage: subscribe <roomId>...".into());
    }
    let bus = EventBus::connect(&opts).await?;
    // Take the stream before following, so that no event falls in between.
    let mut stream = Box::pin(bus.stream());
    for room in &rooms {
        bus.follow(room).await?;
    }
    eprintln!("following {} room(s) on {url}", rooms.len());
    while let Some(msg) = stream.next().await {
        match msg {
            BusMessage::Event(ev) => println!("{}", serde_json::to_string(&ev)?),
            BusMessage::Gap => eprintln!("gap: events may have been lost; re-read the rooms"),
        }
    }
    Ok(())
}
