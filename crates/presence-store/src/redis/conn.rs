//! Connecting to Redis: options, URL forms, TLS, the reconnect policy, the
//! server's capabilities, and what a Redis error means for the caller.
//! Shared by the store and the event bus.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Builder as FredBuilder;

use crate::api::EVENT_BUFFER;
use crate::error::StoreError;

/// Connection settings of a [`RedisStore`](super::RedisStore) or an
/// [`EventBus`](crate::EventBus).
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The URL (`redis://`, `rediss://`, seeds, `redis-cluster://`, `redis-sentinel://`).
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Connections in the pool (on Redis Cluster, per master).
    pub pool_size: usize,
    /// How long a command may take before it fails with `unavailable`.
    pub command_timeout: Duration,
    /// A PEM file of the CAs to trust for `rediss://` instead of the system's
    /// (a private CA, as self-hosted Redis with TLS usually has).
    pub ca_file: Option<std::path::PathBuf>,
    /// Run the scripts as a function library (`FCALL`) where Redis allows it;
    /// `false` keeps `EVALSHA` (see [`scripts`](super::scripts)).
    pub functions: bool,
    /// How often the times of the heartbeats a node answers itself are
    /// written (ms; shortened to fit the timings); 0: every heartbeat runs
    /// `heartbeat.lua` (see [`vouches`](super::vouches)).
    pub vouch_flush_ms: presence_core::Millis,
}

impl RedisOptions {
    /// Defaults for `url`: prefix `presence`, 4 connections, 2 s timeout,
    /// functions where Redis has them.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: "presence".into(),
            pool_size: 4,
            command_timeout: Duration::from_secs(2),
            ca_file: None,
            functions: true,
            vouch_flush_ms: 1_000,
        }
    }
}

/// How events are published and subscribed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSub {
    /// `SPUBLISH`/`SSUBSCRIBE` (Redis 7 and later).
    Sharded,
    /// `PUBLISH`/`SUBSCRIBE`.
    Plain,
}

impl PubSub {
    /// Sharded on Redis 7 and later, which every supported Cluster is.
    pub(crate) fn for_server_version(version: &str) -> Self {
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        if major >= 7 {
            PubSub::Sharded
        } else {
            PubSub::Plain
        }
    }

    /// What the server behind `client` supports.
    pub(crate) async fn of_server(client: &Client) -> Result<Self, StoreError> {
        Ok(Self::for_server_version(&server_version(client).await?))
    }

    /// The command the scripts publish with.
    pub(crate) fn publish_command(self) -> &'static str {
        match self {
            PubSub::Sharded => "SPUBLISH",
            PubSub::Plain => "PUBLISH",
        }
    }
}

/// A Redis error as the store's callers see it: what a retry may fix
/// (`Unavailable`) or not (`Internal`).
pub(crate) fn unavailable(e: fred::error::Error) -> StoreError {
    use fred::error::ErrorKind as K;
    match e.kind() {
        K::IO | K::Timeout | K::Canceled | K::Cluster | K::Sentinel | K::Tls | K::Backpressure => {
            StoreError::Unavailable(e.to_string())
        }
        _ if e.details().contains("LOADING") || e.details().contains("CLUSTERDOWN") => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// An error of the first connection. An untrusted TLS certificate will not
/// fix itself by retrying: it is a configuration error, said plainly.
pub(crate) fn connect_error(e: fred::error::Error) -> StoreError {
    let details = e.details();
    if details.contains("InvalidCertificate") || details.contains("certificate") {
        return StoreError::Internal(format!(
            "the Redis server's TLS certificate is not trusted ({details}); \
             trust its CA with a CA file (PRESENCE_REDIS_CA_FILE for the node)"
        ));
    }
    unavailable(e)
}

/// Turns the documented URL forms into fred's: a comma-separated list of
/// seeds (`redis://h1:p1,h2:p2` or `redis-cluster://h1:p1,h2:p2`) becomes
/// `redis-cluster://h1:p1?node=h2:p2`.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    if !rest.contains(',') {
        return url.to_owned();
    }
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let mut seeds = hosts.split(',').map(str::trim).filter(|s| !s.is_empty());
    let first = seeds.next().unwrap_or("127.0.0.1:6379");
    let nodes: Vec<String> = seeds.map(|s| format!("node={s}")).collect();
    let scheme = match scheme {
        "rediss" | "rediss-cluster" => "rediss-cluster",
        _ => "redis-cluster",
    };
    if nodes.is_empty() {
        format!("{scheme}://{auth}{first}")
    } else {
        format!("{scheme}://{auth}{first}?{}", nodes.join("&"))
    }
}

/// A TLS connector that trusts the CAs of a PEM file (and no others).
fn tls_trusting(path: &std::path::Path) -> Result<fred::types::config::TlsConnector, StoreError> {
    use fred::rustls::pki_types::{pem::PemObject, CertificateDer};
    use fred::rustls::{ClientConfig, RootCertStore};
    let bad = |e: String| StoreError::Internal(format!("CA file {}: {e}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(ClientConfig::builder_with_provider(
        Arc::new(fred::rustls::crypto::ring::default_provider()),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth()
    .into())
}

/// A client builder for `opts`: URL, TLS, timeouts and the reconnect policy.
pub(crate) fn builder(opts: &RedisOptions) -> Result<FredBuilder, StoreError> {
    Ok(builder_with(config(opts)?, opts))
}

/// The server(s), credentials and TLS settings of `opts`.
pub(crate) fn config(opts: &RedisOptions) -> Result<Config, StoreError> {
    let mut config = Config::from_url(&normalize_url(&opts.url))
        .map_err(|e| StoreError::Internal(format!("REDIS_URL: {e}")))?;
    if let Some(path) = &opts.ca_file {
        if !config.uses_tls() {
            return Err(StoreError::Internal(
                "a CA file is set but REDIS_URL is not a TLS URL (rediss://)".into(),
            ));
        }
        config.tls = Some(tls_trusting(path)?.into());
    }
    Ok(config)
}

/// A client builder for `config` with the timeouts and the reconnect policy
/// of `opts`.
pub(crate) fn builder_with(config: Config, opts: &RedisOptions) -> FredBuilder {
    let mut builder = FredBuilder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = opts.command_timeout;
            c.internal_command_timeout = opts.command_timeout;
            c.max_command_attempts = 2;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = opts.command_timeout;
            // fred's default (32) drops events of a burst of joins.
            p.broadcast_channel_capacity = EVENT_BUFFER;
        })
        // Without a policy a client stays dead after Redis restarts.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    builder
}

/// The server's `redis_version` (on Cluster, of the node that answered).
pub(crate) async fn server_version(client: &Client) -> Result<String, StoreError> {
    let info: String = client
        .info(Some(fred::types::InfoKind::Server))
        .await
        .map_err(unavailable)?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_become_cluster_urls() {
        assert_eq!(
            normalize_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            normalize_url("redis://a:1,b:2,c:3"),
            "redis-cluster://a:1?node=b:2&node=c:3"
        );
        assert_eq!(
            normalize_url("redis-cluster://u:p@a:1,b:2"),
            "redis-cluster://u:p@a:1?node=b:2"
        );
        assert_eq!(
            normalize_url("rediss://a:1,b:2"),
            "rediss-cluster://a:1?node=b:2"
        );
    }

    #[test]
    fn sharded_from_redis_7() {
        assert_eq!(PubSub::for_server_version("7.0.15"), PubSub::Sharded);
        assert_eq!(PubSub::for_server_version("8.2.1"), PubSub::Sharded);
        assert_eq!(PubSub::for_server_version("6.2.14"), PubSub::Plain);
        assert_eq!(PubSub::for_server_version("garbage"), PubSub::Plain);
    }
}
