//! `presence-bench`: the load tool of presence-cluster.
//!
//! It opens many Socket.IO sessions against one or more nodes (a whole
//! cluster, or nodes behind a load balancer), drives one of the scenarios and
//! reports what it measured: throughput and latency of each kind of ack,
//! errors by code, sessions reached, and the RSS and CPU of server processes
//! given by PID.
//!
//! Layout:
//! - [`sio`]: a minimal Socket.IO v5 client over WebSocket (tokio-tungstenite);
//! - [`stats`]: latency histograms per ack kind and error counts;
//! - [`server`]: RSS and CPU of the watched server processes;
//! - [`scenario`]: what each session does in each scenario, and the run that
//!   sets sessions up, measures and tears them down;
//! - [`report`]: the summary table and the `--json` file.

pub mod report;
pub mod scenario;
pub mod server;
pub mod sio;
pub mod stats;
