//! presence-node: the presence-cluster server.
//!
//! Data flows one way: transport ([`socket`], [`http`]) → validation
//! ([`wire`]) → store (`presence-store`) → events → [`fanout`] → sockets.
//!
//! Layout:
//! - [`config`]: every setting, as a flag and an environment variable.
//! - [`auth`]: handshake tokens (JWT), the rooms they grant, the HTTP API key.
//! - [`wire`]: payload decoding and validation; the one mapping from errors to wire codes.
//! - [`socket`]: the `presence:*` Socket.IO handlers.
//! - [`fanout`]: per-room hubs that turn changes into snapshots and throttled diffs.
//! - [`http`]: the HTTP API and the demo page.
//! - [`metrics`]: Prometheus counters and gauges (`GET /metrics`).
//! - [`app`]: wiring, background tasks and graceful shutdown.

pub mod app;
pub mod auth;
pub mod config;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod socket;
pub mod wire;
