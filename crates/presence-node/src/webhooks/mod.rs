//! Webhooks: lifecycle events POSTed to backends, signed, batched, retried,
//! never lost with a node (docs/events.md).
//!
//! Every node delivers. Each endpoint reads the lifecycle stream through a
//! consumer group of its own (`webhook:<hash of the URL>`), so endpoints do
//! not share progress, and the nodes are its consumers, so each batch goes
//! out from one node; a batch a node took and never acknowledged is taken
//! over by another once it has been idle for `PRESENCE_WEBHOOK_CLAIM_IDLE_MS`.
//!
//! - [`sign`]: the `Presence-Signature` header;
//! - `deliver`: one endpoint's loop over one shard (batch, POST, retry, ack).

mod deliver;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, NodeId};
use presence_store::PresenceStore;
use ring::digest;
use tokio::task::JoinHandle;

use crate::config::Config;
use deliver::Delivery;
pub use sign::Signer;

/// One receiver.
pub(crate) struct Endpoint {
    url: String,
    /// Its consumer group.
    group: String,
}

impl Endpoint {
    fn new(url: &str) -> Self {
        let hash = digest::digest(&digest::SHA256, url.as_bytes());
        Self {
            url: url.to_owned(),
            group: format!("webhook:{}", &hex::encode(hash.as_ref())[..16]),
        }
    }
}

/// What every delivery of this node works with.
pub(crate) struct Settings {
    signer: Signer,
    /// The event types to deliver (empty: all).
    events: Vec<String>,
    max_age: Duration,
    batch_max: usize,
    batch_wait: Duration,
    timeout: Duration,
    claim_idle: Duration,
}

/// The configured webhooks.
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
    settings: Arc<Settings>,
}

impl Webhooks {
    /// The webhooks `config` asks for (`None`: no `PRESENCE_WEBHOOK_URL`).
    /// The config was validated: a URL comes with a secret.
    pub fn from_config(config: &Config) -> Option<Self> {
        if config.webhook_url.is_empty() {
            return None;
        }
        let secret = config.webhook_secret.as_deref().unwrap_or_default();
        Some(Self {
            endpoints: config
                .webhook_url
                .iter()
                .map(|u| Arc::new(Endpoint::new(u)))
                .collect(),
            settings: Arc::new(Settings {
                signer: Signer::new(secret.as_bytes()),
                events: config.webhook_events.clone(),
                max_age: Duration::from_secs(config.webhook_max_age_s),
                batch_max: config.webhook_batch_max,
                batch_wait: Duration::from_millis(config.webhook_batch_wait_ms),
                timeout: Duration::from_millis(config.webhook_timeout_ms),
                claim_idle: Duration::from_millis(config.webhook_claim_idle_ms),
            }),
        })
    }

    /// Starts delivering: a task per endpoint and shard, once each
    /// endpoint's consumer group exists (made at the stream's end when it
    /// does not: events from before the first start are not sent).
    pub fn spawn(
        &self,
        store: Arc<dyn PresenceStore>,
        clock: Arc<dyn Clock>,
        node: &NodeId,
    ) -> Vec<JoinHandle<()>> {
        let http = reqwest::Client::builder()
            .timeout(self.settings.timeout)
            .user_agent(concat!("presence-cluster/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is built in");
        let log = store.lifecycle();
        let mut tasks = Vec::new();
        for endpoint in &self.endpoints {
            let (log, endpoint) = (log.clone(), endpoint.clone());
            let (settings, http, clock) = (self.settings.clone(), http.clone(), clock.clone());
            let consumer = node.to_string();
            tasks.push(tokio::spawn(async move {
                while let Err(e) = log.ensure_group(&endpoint.group).await {
                    tracing::warn!(url = %endpoint.url, error = %e, "webhook: cannot make the consumer group; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                tracing::info!(url = %endpoint.url, group = %endpoint.group, shards = log.shards(), "webhook: delivering");
                let loops = (0..log.shards()).map(|shard| {
                    Delivery {
                        log: log.clone(),
                        clock: clock.clone(),
                        endpoint: endpoint.clone(),
                        settings: settings.clone(),
                        http: http.clone(),
                        consumer: consumer.clone(),
                        shard,
                    }
                    .run()
                });
                futures::future::join_all(loops).await;
            }));
        }
        tasks
    }
}
