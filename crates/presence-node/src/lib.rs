//! presence-node: the presence-cluster server.
//!
//! Data flows one way: transport ([`socket`], [`http`]) → validation
//! ([`wire`]) → store (`presence-store`) → events → [`fanout`] → sockets.
//!
//! Layout:
//! - [`config`]: every setting, as a flag and an environment variable.
//! - [`error`]: why a node cannot start.
//! - [`auth`]: handshake tokens (JWT), the rooms they grant, the HTTP API key.
//! - [`wire`]: payload decoding and validation; the one mapping from errors to wire codes.
//! - [`acks`]: what the node sends besides diffs (acks, relayed signals, notices), one type each.
//! - [`socket`]: the `presence:*` Socket.IO handlers and the connection state.
//! - [`fanout`]: per-room hubs that turn changes into snapshots and throttled diffs.
//! - [`coordination`]: reachability answers and intents ("tell me when they are reachable now").
//! - [`http`]: the HTTP API and the demo page.
//! - [`node`]: this node's identity and counters, and its registration.
//! - [`reaper`]: the leader lease and the sweeps of whoever holds it.
//! - [`shutdown`]: the graceful drain.
//! - [`moderation`]: ending sessions and removing members for backends.
//! - [`webhooks`]: lifecycle events POSTed to backends (signed, batched, retried).
//! - [`metrics`]: Prometheus counters and gauges (`GET /metrics`).
//! - [`app`]: the wiring: assembles the parts and runs them.
//!
//! Imports point one way: `app` uses everything; the handlers (`socket`,
//! `http`) get a context of what they need, never the `App`.

pub mod acks;
pub mod app;
pub mod auth;
pub mod config;
pub mod coordination;
pub mod error;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod moderation;
pub mod node;
pub mod reaper;
pub mod shutdown;
pub mod socket;
pub mod webhooks;
pub mod wire;
