//! The subscriber connections of an event bus: one for a standalone or
//! Sentinel-managed Redis; on Redis Cluster, one per master, so that a
//! failed master silences only the channels of its own slots (a single
//! cluster subscriber of fred's stalls every channel while it re-syncs; see
//! [`route`](super::route)).
//!
//! Whatever the connections, the bus sees one stream of messages and one of
//! reconnects. On Cluster a reconnect is also sent when a slot changes
//! master: the bus then subscribes every followed room again, each on the
//! master that serves it now, and re-reads them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::cluster::ClusterRouting;
use fred::types::config::Server;
use fred::types::Message;
use tokio::sync::broadcast;

use super::conn::{self, unavailable, PubSub, RedisOptions};
use super::route::{Cluster, Route};
use crate::api::EVENT_BUFFER;
use crate::error::StoreError;

/// How long a new master's subscriber may take to connect before a
/// subscription to it fails (and is made again on its first connection).
const CONNECT_WITHIN: Duration = Duration::from_millis(500);

/// How long after a slot changed master a subscriber still connecting counts
/// as settling rather than down.
const SETTLE: Duration = Duration::from_secs(2);

/// The subscriber connections of one bus.
pub(crate) struct Listener {
    kind: Kind,
    /// The messages of every master's subscriber (on Cluster).
    messages: broadcast::Sender<Message>,
    reconnects: broadcast::Sender<()>,
    /// Until when subscribers made for masters new in the slot map may
    /// still be connecting.
    settling_until: Mutex<Option<Instant>>,
}

/// Whether the subscriptions are up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// Every subscriber connection is up.
    Yes,
    /// A slot changed master a moment ago and its subscriber is connecting.
    Settling,
    /// A subscriber connection is down.
    No,
}

enum Kind {
    Single(SubscriberClient),
    Cluster {
        cluster: Arc<Cluster>,
        /// Every subscriber made so far, by master.
        clients: Mutex<HashMap<Server, SubscriberClient>>,
    },
}

impl Listener {
    /// Connects the subscriber(s) for the servers behind `route`.
    pub async fn connect(opts: &RedisOptions, route: &Route) -> Result<Arc<Self>, StoreError> {
        let (messages, _) = broadcast::channel(EVENT_BUFFER);
        let (reconnects, _) = broadcast::channel(16);
        let kind = match route {
            Route::Single(_) => {
                let client = conn::builder(opts)?
                    .build_subscriber_client()
                    .map_err(unavailable)?;
                Kind::Single(client)
            }
            Route::Cluster(cluster) => Kind::Cluster {
                cluster: cluster.clone(),
                clients: Mutex::new(HashMap::new()),
            },
        };
        let listener = Arc::new(Self {
            kind,
            messages,
            reconnects,
            settling_until: Mutex::new(None),
        });
        // Connected first, then followed: the first connection is no reconnect.
        match &listener.kind {
            Kind::Single(client) => {
                client.init().await.map_err(conn::connect_error)?;
                listener.forward_reconnects(client);
            }
            Kind::Cluster { cluster, .. } => {
                for server in cluster.servers() {
                    let client = listener.make(&server)?;
                    client.init().await.map_err(conn::connect_error)?;
                    listener.adopt(&server, &client);
                }
                Self::follow_topology(Arc::downgrade(&listener), cluster);
            }
        }
        Ok(listener)
    }

    /// Every message of every subscriber connection.
    pub fn messages(&self) -> broadcast::Receiver<Message> {
        match &self.kind {
            // One connection: its own stream, with no hop in between.
            Kind::Single(client) => client.message_rx(),
            Kind::Cluster { .. } => self.messages.subscribe(),
        }
    }

    /// A message after each (re)connection of a subscriber, and after a
    /// slot changed master: subscriptions may be gone.
    pub fn reconnects(&self) -> broadcast::Receiver<()> {
        self.reconnects.subscribe()
    }

    /// Whether the subscriber of every master is connected.
    pub fn subscribed(&self) -> Subscribed {
        let up = match &self.kind {
            Kind::Single(client) => client.is_connected(),
            Kind::Cluster { cluster, clients } => {
                let clients = clients.lock().expect("subscribers lock");
                // A master new in the slot map may not have one yet.
                cluster
                    .servers()
                    .iter()
                    .all(|s| clients.get(s).is_none_or(|c| c.is_connected()))
            }
        };
        let settling = self
            .settling_until
            .lock()
            .expect("settling lock")
            .is_some_and(|until| Instant::now() < until);
        match (up, settling) {
            (true, _) => Subscribed::Yes,
            (false, true) => Subscribed::Settling,
            (false, false) => Subscribed::No,
        }
    }

    /// Subscribes to channels of one slot.
    pub async fn subscribe(&self, channels: Vec<String>, mode: PubSub) -> Result<(), StoreError> {
        let client = self.serving(&channels).await?;
        match mode {
            PubSub::Sharded => client.ssubscribe(channels).await,
            PubSub::Plain => client.subscribe(channels).await,
        }
        .map_err(unavailable)
    }

    /// Unsubscribes from channels of one slot.
    pub async fn unsubscribe(&self, channels: Vec<String>, mode: PubSub) -> Result<(), StoreError> {
        let client = self.serving(&channels).await?;
        match mode {
            PubSub::Sharded => client.sunsubscribe(channels).await,
            PubSub::Plain => client.unsubscribe(channels).await,
        }
        .map_err(unavailable)
    }

    /// The connected subscriber of the master that serves `channels`' slot;
    /// `unavailable` at once while it is down (not after the timeout).
    async fn serving(&self, channels: &[String]) -> Result<SubscriberClient, StoreError> {
        let (cluster, first) = match &self.kind {
            Kind::Single(client) => return Ok(client.clone()),
            Kind::Cluster { cluster, .. } => (cluster, channels.first()),
        };
        let slot = ClusterRouting::hash_key(first.map(String::as_bytes).unwrap_or_default());
        let server = cluster.server_of(slot).ok_or_else(|| {
            StoreError::Unavailable(format!("no Redis Cluster master serves slot {slot}"))
        })?;
        let (client, new) = self.client_of(&server)?;
        if new {
            let _ = tokio::time::timeout(CONNECT_WITHIN, client.wait_for_connect()).await;
        }
        if !client.is_connected() {
            return Err(StoreError::Unavailable(format!(
                "the subscription to the Redis Cluster master {server} is down"
            )));
        }
        Ok(client)
    }

    /// The subscriber of `server`, and whether it is new: a new one is
    /// made, followed and starts connecting (its first connection counts as
    /// a reconnect: subscriptions that failed meanwhile are made again then;
    /// fred's reconnect policy keeps it connected from then on).
    fn client_of(&self, server: &Server) -> Result<(SubscriberClient, bool), StoreError> {
        let Kind::Cluster { clients, .. } = &self.kind else {
            unreachable!("only a cluster has a subscriber per master")
        };
        // Held while one is made: two callers never make two.
        let mut clients = clients.lock().expect("subscribers lock");
        if let Some(c) = clients.get(server) {
            return Ok((c.clone(), false));
        }
        let client = self.make(server)?;
        self.forward(&client);
        client.connect();
        clients.insert(server.clone(), client.clone());
        Ok((client, true))
    }

    /// A new subscriber of one master, not connected.
    fn make(&self, server: &Server) -> Result<SubscriberClient, StoreError> {
        let Kind::Cluster { cluster, .. } = &self.kind else {
            unreachable!("only a cluster has a subscriber per master")
        };
        cluster
            .builder_for(server)
            .build_subscriber_client()
            .map_err(unavailable)
    }

    /// Follows `client` and keeps it as `server`'s subscriber.
    fn adopt(&self, server: &Server, client: &SubscriberClient) {
        let Kind::Cluster { clients, .. } = &self.kind else {
            unreachable!("only a cluster has a subscriber per master")
        };
        self.forward(client);
        clients
            .lock()
            .expect("subscribers lock")
            .insert(server.clone(), client.clone());
    }

    /// Passes the messages and reconnects of one master's subscriber on to
    /// the bus.
    fn forward(&self, client: &SubscriberClient) {
        self.forward_reconnects(client);
        let mut rx = client.message_rx();
        let messages = self.messages.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(m) => {
                        let _ = messages.send(m);
                    }
                    // A burst outran this loop: some events are gone, but the
                    // stream goes on (followers re-read on their next event).
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "presence events lagged behind Redis");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Passes `client`'s reconnects on to the bus.
    fn forward_reconnects(&self, client: &SubscriberClient) {
        let mut rx = client.reconnect_rx();
        let reconnects = self.reconnects.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_ok() {
                let _ = reconnects.send(());
            }
        });
    }

    /// Whenever a slot changes master: connects to the new masters, then
    /// sends a reconnect (the bus subscribes each room where it now lives).
    fn follow_topology(listener: Weak<Self>, cluster: &Cluster) {
        let mut changes = cluster.changes();
        changes.mark_unchanged();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(l) = listener.upgrade() else { return };
                *l.settling_until.lock().expect("settling lock") = Some(Instant::now() + SETTLE);
                if let Kind::Cluster { cluster, .. } = &l.kind {
                    for server in cluster.servers() {
                        let _ = l.client_of(&server);
                    }
                }
                let _ = l.reconnects.send(());
            }
        });
    }
}
