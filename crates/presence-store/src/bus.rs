//! The event bus: presence events from Redis Pub/Sub, one room at a time.
//!
//! Every change of a room is published once, by the script that made it, on
//! the room's channel `<prefix>:events:{<roomId>}`: with `SPUBLISH` (sharded
//! Pub/Sub, which Redis Cluster needs so that a message stays on the shard
//! that owns the room) when the server is Redis 7 or later, else `PUBLISH`.
//!
//! `presence:signal` messages, which are relayed and never stored, travel on
//! a second channel of the room, `<prefix>:signals:{<roomId>}` (same slot),
//! so that backend subscribers of the events channel see events only.
//!
//! A node's own bus also listens to the node's channel
//! `<prefix>:node:{<nodeId>}`, on which other nodes tell it that one of its
//! connections lost its session to a newer one ([`EventBus::follow_node`]),
//! and the one channel of intent notices, `<prefix>:intents`, which every
//! node hears (an intent is made or resolved at human pace; each node acts
//! on the sessions it holds).
//!
//! An [`EventBus`] owns one subscriber connection and subscribes to exactly
//! the rooms someone follows ([`EventBus::follow`] counts followers per room
//! and unsubscribes after the last one goes). A node follows the rooms it has
//! sockets in, so a change reaches each node with sockets in the room once,
//! and each node emits it to its own sockets only.
//!
//! Pub/Sub loses what is published while a subscription is down (Redis
//! restarted or failed over, the connection dropped). After every reconnect
//! the bus subscribes again to every followed room, and only then bumps
//! [`EventBus::resyncs`]: whoever mirrors rooms re-reads them then, and sees
//! every change made before, while the new subscription carries every one
//! after. Backend services get the same through [`EventBus::stream`].

use std::collections::HashMap;

use fred::interfaces::PubsubInterface;
use futures::Stream;
use presence_core::{IntentNotice, NodeId, PresenceEvent, RoomId};
use tokio::sync::{broadcast, watch, Mutex};

pub use crate::redis::conn::PubSub;

use crate::api::{NodeNotice, Signal, EVENT_BUFFER};
use crate::error::StoreError;
use crate::redis::conn::RedisOptions;
use crate::redis::keys::Keys;
pub use crate::redis::listen::Subscribed;

use crate::redis::listen::Listener;
use crate::redis::route::Route;

/// What a [`EventBus::stream`] yields.
// Nearly every message is an event: boxing it would cost an allocation each
// to save space only in the rare `Gap`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum BusMessage {
    /// One change of a followed room.
    Event(PresenceEvent),
    /// Events may have been lost (the subscription was re-established, or
    /// this stream fell behind): re-read the rooms you care about.
    Gap,
}

/// One subscriber connection and the rooms it follows.
pub struct EventBus {
    /// The subscriber connection(s): one per master on Cluster.
    listener: std::sync::Arc<Listener>,
    keys: Keys,
    mode: PubSub,
    /// Followers per room; held while (un)subscribing, so that the commands
    /// of one room are never reordered.
    rooms: Mutex<HashMap<RoomId, usize>>,
    events: broadcast::Sender<PresenceEvent>,
    signals: broadcast::Sender<Signal>,
    /// The node whose channel this bus listens to (a node's own bus), if any.
    node: Mutex<Option<NodeId>>,
    notices: broadcast::Sender<NodeNotice>,
    intents: broadcast::Sender<IntentNotice>,
    resyncs: watch::Sender<u64>,
    /// Publishes signals (a subscriber connection cannot).
    publisher: Route,
}

impl EventBus {
    /// Connects a bus of its own, for a backend service that follows rooms.
    /// `opts.prefix` must be the nodes' `PRESENCE_KEY_PREFIX`.
    pub async fn connect(opts: &RedisOptions) -> Result<std::sync::Arc<Self>, StoreError> {
        let publisher = Route::connect(opts).await?;
        let listener = Listener::connect(opts, &publisher).await?;
        let mode = PubSub::of_server(&publisher.any()).await?;
        Ok(Self::start(listener, publisher, &opts.prefix, mode))
    }

    /// Starts a bus on connected subscriber connections.
    pub(crate) fn start(
        listener: std::sync::Arc<Listener>,
        publisher: Route,
        prefix: &str,
        mode: PubSub,
    ) -> std::sync::Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (signals, _) = broadcast::channel(EVENT_BUFFER);
        let bus = std::sync::Arc::new(Self {
            listener,
            keys: Keys::new(prefix),
            mode,
            rooms: Mutex::new(HashMap::new()),
            events,
            signals,
            node: Mutex::new(None),
            notices: broadcast::Sender::new(1024),
            intents: broadcast::Sender::new(1024),
            resyncs: watch::Sender::new(0),
            publisher,
        });
        bus.spawn_reader();
        bus.spawn_resubscriber();
        bus
    }

    /// How this bus publishes and subscribes.
    pub fn mode(&self) -> PubSub {
        self.mode
    }

    /// The channel of a room's events.
    pub fn channel(&self, room: &str) -> String {
        self.keys.events_channel(room)
    }

    /// The channel of a room's relayed signals.
    pub fn signal_channel(&self, room: &str) -> String {
        self.keys.signals_channel(room)
    }

    /// Relays a signal to the other nodes that follow its room.
    pub async fn publish_signal(&self, signal: &Signal) -> Result<(), StoreError> {
        self.publish(self.signal_channel(signal.room_id.as_str()), signal)
            .await
    }

    /// Tells `node` something about its connections (a takeover, a removal).
    pub async fn publish_notice(&self, node: &NodeId, n: &NodeNotice) -> Result<(), StoreError> {
        self.publish(self.keys.node_channel(node.as_str()), n).await
    }

    /// Tells every node about an intent.
    pub async fn publish_intent(&self, notice: &IntentNotice) -> Result<(), StoreError> {
        self.publish(self.keys.intents_channel(), notice).await
    }

    /// Intent notices, once a node's channels are followed.
    pub fn intent_notices(&self) -> broadcast::Receiver<IntentNotice> {
        self.intents.subscribe()
    }

    /// Publishes `msg` as JSON on `channel` (sharded on Redis 7+).
    async fn publish(
        &self,
        channel: String,
        msg: &impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let msg = &serde_json::to_string(msg).map_err(|e| StoreError::Internal(e.to_string()))?;
        let (channel, mode) = (&channel, self.mode);
        let _: u64 = self
            .publisher
            .on_key(channel, |c| async move {
                match mode {
                    PubSub::Sharded => c.spublish(channel, msg.as_str()).await,
                    PubSub::Plain => c.publish(channel, msg.as_str()).await,
                }
            })
            .await?;
        Ok(())
    }

    /// Listens to `node`'s own channel (again after every reconnect), for
    /// the takeovers other nodes send it.
    pub async fn follow_node(
        &self,
        node: &NodeId,
    ) -> Result<broadcast::Receiver<NodeNotice>, StoreError> {
        let rx = self.notices.subscribe();
        let mut followed = self.node.lock().await;
        self.subscribe_to(vec![self.keys.node_channel(node.as_str())])
            .await?;
        self.subscribe_to(vec![self.keys.intents_channel()]).await?;
        *followed = Some(node.clone());
        Ok(rx)
    }

    /// Signals of the followed rooms, from now on.
    pub fn signals(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    /// Starts receiving `room`'s events (once per room, however many follow it).
    pub async fn follow(&self, room: &RoomId) -> Result<(), StoreError> {
        let mut rooms = self.rooms.lock().await;
        let n = rooms.entry(room.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            if let Err(e) = self.subscribe(room.as_str()).await {
                rooms.remove(room);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops following `room`; unsubscribes when no one follows it any more.
    pub async fn unfollow(&self, room: &RoomId) -> Result<(), StoreError> {
        let mut rooms = self.rooms.lock().await;
        let Some(n) = rooms.get_mut(room) else {
            return Ok(());
        };
        *n -= 1;
        if *n > 0 {
            return Ok(());
        }
        rooms.remove(room);
        let channels = vec![
            self.channel(room.as_str()),
            self.signal_channel(room.as_str()),
        ];
        // A failed unsubscribe leaves an idle subscription; the next
        // reconnect drops it.
        self.listener.unsubscribe(channels, self.mode).await
    }

    /// The rooms followed now.
    pub async fn followed(&self) -> usize {
        self.rooms.lock().await.len()
    }

    /// Every event of the followed rooms, from now on.
    pub fn events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.events.subscribe()
    }

    /// Changes after each resubscription (see the module doc).
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.resyncs.subscribe()
    }

    /// True while the subscriber connection (of every master) is up.
    pub fn is_connected(&self) -> bool {
        self.listener.subscribed() == Subscribed::Yes
    }

    /// Whether the subscriber connections are up, settling after a Redis
    /// Cluster failover, or down.
    pub fn subscribed(&self) -> Subscribed {
        self.listener.subscribed()
    }

    /// The followed rooms' events and the gaps between them, as a stream
    /// (for backend services; see `examples/subscribe.rs`).
    pub fn stream(&self) -> impl Stream<Item = BusMessage> + Send + 'static {
        let events = self.events.subscribe();
        let mut resyncs = self.resyncs.subscribe();
        resyncs.mark_unchanged();
        futures::stream::unfold((events, resyncs), |(mut events, mut resyncs)| async move {
            let msg = tokio::select! {
                biased;
                Ok(()) = resyncs.changed() => BusMessage::Gap,
                ev = events.recv() => match ev {
                    Ok(ev) => BusMessage::Event(ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => BusMessage::Gap,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((msg, (events, resyncs)))
        })
    }

    /// Subscribes to a room's two channels (one slot: one call on Cluster).
    async fn subscribe(&self, room: &str) -> Result<(), StoreError> {
        self.subscribe_to(vec![self.channel(room), self.signal_channel(room)])
            .await
    }

    /// Subscribes to channels of one slot.
    async fn subscribe_to(&self, channels: Vec<String>) -> Result<(), StoreError> {
        self.listener.subscribe(channels, self.mode).await
    }

    /// Decodes every message into the events channel.
    fn spawn_reader(self: &std::sync::Arc<Self>) {
        let mut rx = self.listener.messages();
        let tx = self.events.clone();
        let signals = self.signals.clone();
        let notices = self.notices.clone();
        let intents = self.intents.clone();
        let intents_channel = self.keys.intents_channel();
        let signal_prefix = self.keys.signals_prefix();
        let node_prefix = self.keys.node_prefix();
        tokio::spawn(async move {
            loop {
                let msg = match rx.recv().await {
                    Ok(msg) => msg,
                    // A burst outran this loop: some events are gone, but the
                    // stream goes on (followers re-read on their next event).
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "presence events lagged behind Redis");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(text) = msg.value.as_string() else {
                    continue;
                };
                if *msg.channel == *intents_channel {
                    forward(&text, &intents, "intent notice");
                } else if msg.channel.starts_with(&node_prefix) {
                    forward(&text, &notices, "node notice");
                } else if msg.channel.starts_with(&signal_prefix) {
                    forward(&text, &signals, "signal");
                } else {
                    forward(&text, &tx, "presence event");
                }
            }
        });
    }

    /// Subscribes again to every followed room after each reconnect, then
    /// signals the resync.
    fn spawn_resubscriber(self: &std::sync::Arc<Self>) {
        let mut reconnects = self.listener.reconnects();
        let bus = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                let Some(bus) = bus.upgrade() else { return };
                let rooms = bus.rooms.lock().await;
                let mut failed = 0usize;
                // One channel per call: on Cluster a call must stay on one slot.
                for room in rooms.keys() {
                    if let Err(e) = bus.subscribe(room.as_str()).await {
                        failed += 1;
                        tracing::warn!(room_id = %room, error = %e, "cannot resubscribe");
                    }
                }
                drop(rooms);
                let node = bus.node.lock().await.clone();
                if let Some(node) = node {
                    let channel = bus.keys.node_channel(node.as_str());
                    if let Err(e) = bus.subscribe_to(vec![channel]).await {
                        failed += 1;
                        tracing::warn!(node_id = %node, error = %e, "cannot resubscribe to the node channel");
                    }
                    let channel = bus.keys.intents_channel();
                    if let Err(e) = bus.subscribe_to(vec![channel]).await {
                        failed += 1;
                        tracing::warn!(error = %e, "cannot resubscribe to the intents channel");
                    }
                }
                if failed == 0 {
                    tracing::info!("resubscribed to presence events after a reconnect");
                }
                // Even after a partial failure: the rooms that are back can
                // be re-read, and the failed ones come back on the next
                // reconnect (a failed subscribe means the connection is down).
                bus.resyncs.send_modify(|n| *n += 1);
            }
        });
    }
}

/// Decodes a message and hands it to `to`'s receivers (none listening: dropped).
fn forward<T: serde::de::DeserializeOwned>(text: &str, to: &broadcast::Sender<T>, what: &str) {
    match serde_json::from_str::<T>(text) {
        Ok(m) => {
            let _ = to.send(m);
        }
        Err(e) => tracing::warn!(error = %e, "undecodable {what}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use futures::StreamExt;
    use presence_core::{Activity, Limits, ManualClock, NodeId, Timings, UserId};
    use presence_testkit::{redis_cli, RedisServer};

    use super::*;
    use crate::api::{Hello, PresenceStore, SessionRef};
    use crate::RedisStore;

    fn server() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(|| RedisServer::start().expect("redis-server starts"))
    }

    /// A store under a prefix of its own, a bus of its own, and a session.
    async fn setup() -> (RedisStore, Arc<EventBus>, SessionRef) {
        setup_on(server()).await
    }

    async fn setup_on(server: &RedisServer) -> (RedisStore, Arc<EventBus>, SessionRef) {
        let mut opts = RedisOptions::new(&server.url());
        opts.prefix = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let store = RedisStore::connect(
            opts.clone(),
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Timings::default(),
            Limits::default(),
        )
        .await
        .unwrap();
        let bus = EventBus::connect(&opts).await.unwrap();
        let c = store
            .hello(Hello {
                declare: Default::default(),
                session_id: None,
                user_id: UserId::new("alice").unwrap(),
                handle: None,
                meta: None,
                activity: Activity::Active,
                node_id: NodeId::new("n").unwrap(),
            })
            .await
            .unwrap();
        let me = SessionRef {
            session_id: c.session_id,
            epoch: c.epoch,
        };
        (store, bus, me)
    }

    fn subscribers(bus: &EventBus, room: &str) -> u64 {
        subscribers_on(server(), bus, room)
    }

    fn subscribers_on(server: &RedisServer, bus: &EventBus, room: &str) -> u64 {
        let sub = match bus.mode() {
            PubSub::Sharded => "SHARDNUMSUB",
            PubSub::Plain => "NUMSUB",
        };
        let out = redis_cli(server.port(), &["PUBSUB", sub, &bus.channel(room)]).unwrap();
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    async fn next(s: &mut (impl Stream<Item = BusMessage> + Unpin)) -> BusMessage {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("a message within 5 s")
            .expect("the stream goes on")
    }

    #[tokio::test]
    async fn a_room_is_subscribed_while_someone_follows_it() {
        let (store, bus, me) = setup().await;
        let version = redis_cli(server().port(), &["INFO", "server"]).unwrap();
        if version.contains("redis_version:7") || version.contains("redis_version:8") {
            assert_eq!(bus.mode(), PubSub::Sharded);
        }
        let doc = RoomId::new("doc").unwrap();
        let other = RoomId::new("other").unwrap();
        assert_eq!(subscribers(&bus, "doc"), 0);
        bus.follow(&doc).await.unwrap();
        bus.follow(&doc).await.unwrap();
        assert_eq!(
            subscribers(&bus, "doc"),
            1,
            "one subscription for two followers"
        );
        let mut s = Box::pin(bus.stream());
        store.join(&me, &other, None).await.unwrap();
        store.join(&me, &doc, None).await.unwrap();
        match next(&mut s).await {
            BusMessage::Event(ev) => assert_eq!(ev.room_id, doc, "only followed rooms"),
            other => panic!("{other:?}"),
        }
        bus.unfollow(&doc).await.unwrap();
        assert_eq!(subscribers(&bus, "doc"), 1, "one follower left");
        bus.unfollow(&doc).await.unwrap();
        assert_eq!(subscribers(&bus, "doc"), 0);
        assert_eq!(bus.followed().await, 0);
    }

    #[tokio::test]
    async fn a_dropped_subscription_comes_back_with_a_gap() {
        let own = RedisServer::start().unwrap();
        let (store, bus, me) = setup_on(&own).await;
        let doc = RoomId::new("doc").unwrap();
        bus.follow(&doc).await.unwrap();
        let mut s = Box::pin(bus.stream());
        // Every subscriber connection of the server goes (the store's too).
        redis_cli(own.port(), &["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
        assert_eq!(next(&mut s).await, BusMessage::Gap);
        assert_eq!(subscribers_on(&own, &bus, "doc"), 1, "subscribed again");
        store.join(&me, &doc, None).await.unwrap();
        match next(&mut s).await {
            BusMessage::Event(ev) => assert_eq!(ev.room_id, doc),
            other => panic!("{other:?}"),
        }
    }
}
