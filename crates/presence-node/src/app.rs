//! A node's wiring: [`App`] assembles the parts from the configuration (the
//! store, this node, the fan-out, the Socket.IO layer and the handlers'
//! contexts) and runs them: the HTTP + Socket.IO service, the background
//! tasks (fan-out dispatcher, reaper, registry) and the graceful shutdown.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, Limits, SystemClock, Timings};
use presence_store::{
    MemoryStore, NodeNotice, PresenceStore, RedisOptions, RedisStore, StoreError,
};
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{ParserConfig, SocketIo};
use tokio::net::TcpListener;

use crate::auth::AuthError;
use crate::config::Config;
use crate::error::StartError;
use crate::fanout::Fanout;
use crate::http::ApiState;
use crate::node::{register_loop, LocalNode};
use crate::reaper::{LeaseSlot, Reaper};
use crate::shutdown::{finish, Drain};
use crate::socket::SocketContext;

/// A node, assembled from its configuration: its parts, before they run.
pub struct App {
    config: Config,
    timings: Timings,
    node: Arc<LocalNode>,
    store: Arc<dyn PresenceStore>,
    fanout: Fanout,
    io: SocketIo,
    layer: SocketIoLayer,
}

/// Serves a node on `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let addr = listener.local_addr()?;
    App::assemble(config, addr)
        .await?
        .run(listener, shutdown)
        .await
}

impl App {
    /// Checks the configuration, opens the store and builds the parts.
    pub async fn assemble(config: Config, addr: SocketAddr) -> Result<Self, StartError> {
        crate::metrics::install();
        let timings = config.timings()?;
        let limits = config.limits();
        let node_id = config.node_id()?;
        config.verifier()?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = open_store(&config, clock.clone(), timings, limits).await?;
        // The protocol has no binary payloads. socketioxide would otherwise
        // hold up to 10 MB of attachments per socket waiting for a packet to
        // complete, even before the connection is authenticated: a packet
        // that announces any attachment closes the connection (counted as
        // `bad_packet`), and nothing of it is buffered.
        let parser = ParserConfig::common()
            .max_incoming_binaries(0)
            .max_incoming_binary_buf_size(config.max_payload_bytes as usize)
            .packet_completion_timeout(Duration::from_secs(1));
        let (layer, io) = SocketIo::builder()
            .max_payload(config.max_payload_bytes)
            .ws_max_message_size(config.max_payload_bytes as usize)
            .with_parser(parser)
            .build_layer();
        let fanout = Fanout::new(
            io.clone(),
            node_id.clone(),
            store.clone(),
            clock.clone(),
            (
                config.emit_debounce(),
                // A live client heartbeats (and so re-creates its session) within this.
                Duration::from_millis(timings.heartbeat_timeout_ms.max(0) as u64),
            ),
            config.limits(),
        );
        Ok(App {
            node: Arc::new(LocalNode::new(node_id, addr, clock)),
            timings,
            store,
            fanout,
            io,
            layer,
            config,
        })
    }

    /// What the Socket.IO handlers get.
    fn socket_context(&self) -> Result<SocketContext, StartError> {
        let per_sec = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let bindings = Arc::new(crate::socket::Bindings::default());
        Ok(SocketContext {
            node: self.node.clone(),
            store: self.store.clone(),
            fanout: self.fanout.clone(),
            timings: self.timings,
            limits: self.config.limits(),
            verifier: self.config.verifier()?,
            events_per_sec: per_sec(self.config.rate_limit_per_sec),
            signals_per_sec: per_sec(self.config.signal_rate_per_sec),
            hello_timeout: Duration::from_millis(self.config.hello_timeout_ms),
            coordinator: Arc::new(crate::coordination::Coordinator {
                store: self.store.clone(),
                clock: self.node.clock.clone(),
                bindings: bindings.clone(),
            }),
            bindings,
        })
    }

    /// What the HTTP handlers get.
    fn api_state(&self, cx: &SocketContext) -> ApiState {
        ApiState {
            coordinator: cx.coordinator.clone(),
            limits: cx.limits,
            store: self.store.clone(),
            node: self.node.clone(),
            fanout: self.fanout.clone(),
            api_key: self.config.api_key.clone(),
        }
    }

    /// Runs the node until `shutdown` completes, then drains it.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let cx = Arc::new(self.socket_context()?);
        if cx.verifier.is_none() {
            tracing::warn!(
                "token auth is off (no PRESENCE_JWT_SECRET or PRESENCE_JWT_PUBLIC_KEY): any \
                 client may speak for any user id and join any room"
            );
        }
        if self.config.api_key.is_none() {
            tracing::warn!("the HTTP API is open (no PRESENCE_API_KEY)");
        }
        if let Some(w) = self.config.message_limit_warning() {
            tracing::warn!("{w}");
        }
        {
            // The handlers are registered in the connect middleware, before
            // socketioxide sends the CONNECT packet: a client emits as soon as
            // it sees it, and an event that arrives before its handler exists
            // would be dropped (its ack never sent).
            let cx = cx.clone();
            let admit = move |s: SocketRef, TryData(auth): TryData<serde_json::Value>| {
                let cx = cx.clone();
                async move {
                    crate::socket::authenticate(&cx, &s, auth.ok()).await?;
                    crate::socket::on_connect(s, cx);
                    Ok::<(), AuthError>(())
                }
            };
            let connected = |_: SocketRef| std::future::ready(());
            self.io.ns("/", connected.with(admit));
        }
        let takeovers = {
            // Another node took over a session one of this node's connections
            // holds: unbind that connection now. A backend ended one, or took
            // it out of a room: carry that out on the connection.
            let mut rx = self
                .store
                .listen_notices(&self.node.id)
                .await
                .map_err(StartError::Redis)?;
            let cx = cx.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(NodeNotice::Takeover(t)) => crate::socket::superseded(&cx, &t),
                        Ok(NodeNotice::Removal(r)) => crate::socket::removed(&cx, &r),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            // Those connections are fenced all the same: their next write is refused.
                            tracing::warn!(missed = n, "takeover notices lagged");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        };
        // Every node's intent notices, for the sockets this one holds (after
        // the node's channels are followed, above).
        let intents = cx.coordinator.spawn_listener();
        let webhooks = crate::webhooks::Webhooks::from_config(&self.config)
            .map(|w| w.spawn(self.store.clone(), self.node.clock.clone(), &self.node.id))
            .unwrap_or_default();
        let dispatcher = self.fanout.spawn_dispatcher();
        let lease = LeaseSlot::default();
        let reaper = tokio::spawn(
            Reaper {
                store: self.store.clone(),
                node_id: self.node.id.clone(),
                every: Duration::from_millis(self.timings.prune_interval_ms.max(1) as u64),
                lease_ms: self.config.leader_lease_ms,
                slot: lease.clone(),
            }
            .run(),
        );
        let registry = tokio::spawn(register_loop(
            self.node.clone(),
            self.store.clone(),
            self.fanout.clone(),
            self.config.node_ttl_ms,
        ));

        let origins: Arc<[String]> = self.config.allowed_origins.clone().into();
        let mut router = crate::http::router(self.api_state(&cx))
            .layer(self.layer)
            .layer(axum::middleware::from_fn_with_state(
                origins,
                crate::http::check_origin,
            ))
            .layer(axum::middleware::map_request(
                crate::http::detach_request_buffers,
            ));
        if let Some(cors) = crate::http::cors(&self.config.cors_origins) {
            router = router.layer(cors);
        }
        let addr = self.node.addr;
        tracing::info!(%addr, node_id = %self.node.id, store = self.store.kind(), "listening on http://{addr}");

        // The signal stops the listener at once (a client that reconnects is
        // refused here and lands on another node); the drain then runs next to
        // the server while it waits for open connections to end.
        let (signalled_tx, signalled) = tokio::sync::watch::channel(false);
        let graceful = async move {
            shutdown.await;
            let _ = signalled_tx.send(true);
        };
        let drain = Drain {
            node: self.node.clone(),
            store: self.store.clone(),
            io: self.io,
            reaper,
            lease,
        };
        let drain = tokio::spawn(drain.run(signalled.clone()));
        // Acks and diffs are small messages someone waits for: no Nagle delay.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(graceful)
                .into_future(),
        );
        let result = finish(server, signalled).await;
        dispatcher.abort();
        registry.abort();
        takeovers.abort();
        intents.abort();
        // A batch in flight stays pending in its consumer group: another
        // node takes it over (PRESENCE_WEBHOOK_CLAIM_IDLE_MS).
        for w in webhooks {
            w.abort();
        }
        // The drain has released the lease; this waits for it (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        match tokio::time::timeout(
            Duration::from_millis(500),
            self.store.deregister_node(&self.node.id),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove this node from the registry"),
            Err(_) => tracing::warn!("cannot remove this node from the registry: timed out"),
        }
        tracing::info!("stopped");
        result
    }
}

/// The embedded store, or Redis when `REDIS_URL` is set. Redis that is not
/// reachable yet (the node started first) is retried for a while.
async fn open_store(
    config: &Config,
    clock: Arc<dyn Clock>,
    timings: Timings,
    limits: Limits,
) -> Result<Arc<dyn PresenceStore>, StartError> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(MemoryStore::new(clock, timings, limits)));
    };
    let opts = RedisOptions {
        url: url.clone(),
        prefix: config.key_prefix.clone(),
        pool_size: config.redis_pool_size,
        command_timeout: Duration::from_millis(config.redis_timeout_ms),
        ca_file: config.redis_ca_file.clone(),
        functions: config.redis_functions,
        vouch_flush_ms: config.redis_vouch_flush_ms,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match RedisStore::connect(opts.clone(), clock.clone(), timings, limits).await {
            Ok(store) => return Ok(Arc::new(store)),
            Err(e @ StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot reach Redis yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(StartError::Redis(e)),
        }
    }
}
