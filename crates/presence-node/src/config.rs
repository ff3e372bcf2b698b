//! The node's configuration: one typed struct, read once at start-up from
//! flags and environment variables (flags win), printed at start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use presence_core::{Limits, Millis, NodeId, Timings};

use crate::auth::Verifier;
use crate::error::ConfigError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Every setting of a presence node. Each is a flag and an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "presence-node",
    version,
    about = "A presence-cluster node: Socket.IO presence and an HTTP API."
)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the chosen address is logged).
    #[arg(long, env = "PRESENCE_BIND", default_value = "127.0.0.1:8787")]
    pub bind: SocketAddr,

    /// This node's id in events and /api/cluster [default: node-<random>].
    #[arg(long, env = "PRESENCE_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis to keep presence in: redis://, rediss:// (TLS), a comma-separated
    /// list of cluster seeds or redis-cluster://, redis-sentinel://. Unset: the
    /// embedded in-memory store (one node).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel (deployments can share one Redis).
    #[arg(long, env = "PRESENCE_KEY_PREFIX", default_value = "presence")]
    pub key_prefix: String,

    /// Connections to Redis (on Redis Cluster, to each master).
    #[arg(long, env = "PRESENCE_REDIS_POOL_SIZE", default_value_t = 4)]
    pub redis_pool_size: usize,

    /// How long one Redis command may take before the request fails with `unavailable`.
    #[arg(long, env = "PRESENCE_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,

    /// A PEM file of the CAs to trust for `rediss://` instead of the system's
    /// (a Redis with a certificate from a private CA).
    #[arg(long, env = "PRESENCE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Run the Lua scripts as one Redis function library (`FUNCTION LOAD`,
    /// `FCALL`) where Redis allows it (7 and later); `false` runs them with
    /// `EVALSHA` as on Redis 6 (each call then defines the helpers again).
    #[arg(long, env = "PRESENCE_REDIS_FUNCTIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub redis_functions: bool,

    /// How often a node writes the times of the heartbeats it answered
    /// itself (ms). A heartbeat that changes nothing observers see is
    /// answered by the session's node without a Redis round trip, and its
    /// time reaches Redis in bulk, one call per master; shortened to a
    /// quarter of the slack between the heartbeat interval and timeout.
    /// 0: every heartbeat runs its script in Redis.
    #[arg(long, env = "PRESENCE_REDIS_VOUCH_FLUSH_MS", default_value_t = 1_000)]
    pub redis_vouch_flush_ms: Millis,

    /// How often clients should heartbeat.
    #[arg(long, env = "PRESENCE_HEARTBEAT_INTERVAL_MS", default_value_t = 10_000)]
    pub heartbeat_interval_ms: Millis,
    /// Silence after which a session is stale.
    #[arg(long, env = "PRESENCE_HEARTBEAT_TIMEOUT_MS", default_value_t = 20_000)]
    pub heartbeat_timeout_ms: Millis,
    /// Inactivity after which a session is idle.
    #[arg(long, env = "PRESENCE_IDLE_AFTER_MS", default_value_t = 45_000)]
    pub idle_after_ms: Millis,
    /// Inactivity after which a session is away.
    #[arg(long, env = "PRESENCE_AWAY_AFTER_MS", default_value_t = 300_000)]
    pub away_after_ms: Millis,
    /// Silence after which a background session is stale.
    #[arg(
        long,
        env = "PRESENCE_BACKGROUND_TIMEOUT_MS",
        default_value_t = 120_000
    )]
    pub background_timeout_ms: Millis,
    /// How long a stale session can be resumed by a reconnect.
    #[arg(long, env = "PRESENCE_RECONNECT_GRACE_MS", default_value_t = 15_000)]
    pub reconnect_grace_ms: Millis,
    /// How often sessions past a deadline are re-derived (the reaper tick).
    #[arg(long, env = "PRESENCE_PRUNE_INTERVAL_MS", default_value_t = 1_000)]
    pub prune_interval_ms: Millis,
    /// Shortest gap between two diffs of one room.
    #[arg(long, env = "PRESENCE_EMIT_DEBOUNCE_MS", default_value_t = 250)]
    pub emit_debounce_ms: Millis,
    /// The reaper's leader lease: one node at a time sweeps; another takes
    /// over at most this long after it dies. Renewed every third of it.
    #[arg(long, env = "PRESENCE_LEADER_LEASE_MS", default_value_t = 5_000)]
    pub leader_lease_ms: Millis,
    /// How long a node's registration (`/api/cluster`) outlives its last
    /// refresh; nodes refresh every third of it.
    #[arg(long, env = "PRESENCE_NODE_TTL_MS", default_value_t = 15_000)]
    pub node_ttl_ms: Millis,

    /// Largest per-room state, in bytes of compact JSON.
    #[arg(long, env = "PRESENCE_MAX_STATE_BYTES", default_value_t = 4096)]
    pub max_state_bytes: usize,
    /// Largest session meta, in bytes of compact JSON.
    #[arg(long, env = "PRESENCE_MAX_META_BYTES", default_value_t = 1024)]
    pub max_meta_bytes: usize,
    /// Rooms one session may be in at once.
    #[arg(long, env = "PRESENCE_MAX_ROOMS_PER_SESSION", default_value_t = 32)]
    pub max_rooms_per_session: usize,
    /// Largest message sent to a client (bytes of its Socket.IO frame):
    /// bigger snapshots and diffs are sent in parts and pages stop short, so
    /// that no connection's write buffer grows past it.
    #[arg(long, env = "PRESENCE_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,
    /// Most sessions a room may have for its members to follow it whole
    /// (the `full` view: every member, every diff); above it they follow
    /// counts, and may page and watch.
    #[arg(long, env = "PRESENCE_FULL_VIEW_MAX_MEMBERS", default_value_t = 1_000)]
    pub full_view_max_members: usize,
    /// Users one watch list may name (`view: { watch }`, `presence:watch`):
    /// what a hub indexes and filters each flush for a watcher.
    #[arg(long, env = "PRESENCE_MAX_WATCH_USERS", default_value_t = 1_000)]
    pub max_watch_users: usize,
    /// Capabilities one session may declare (`capabilities`): what every
    /// view entry and reachability check carries per session.
    #[arg(long, env = "PRESENCE_MAX_CAPABILITIES", default_value_t = 16)]
    pub max_capabilities: usize,
    /// Intents one user may have waiting as the caller: keeps one user from
    /// flooding others with `presence:intent_received`.
    #[arg(long, env = "PRESENCE_MAX_INTENTS_PER_USER", default_value_t = 16)]
    pub max_intents_per_user: usize,
    /// Intents that may wait for one user: what each check of that user's
    /// intents reads (on hello, readiness, and a return to activity).
    #[arg(long, env = "PRESENCE_MAX_INTENTS_TO_USER", default_value_t = 64)]
    pub max_intents_to_user: usize,
    /// The longest an intent may wait (`ttlMs`), in ms.
    #[arg(long, env = "PRESENCE_MAX_INTENT_TTL_MS", default_value_t = 600_000)]
    pub max_intent_ttl_ms: i64,
    /// The largest intent `note`, in bytes.
    #[arg(long, env = "PRESENCE_MAX_INTENT_NOTE_BYTES", default_value_t = 256)]
    pub max_note_bytes: usize,
    /// Largest Socket.IO message; a larger one closes the connection.
    #[arg(long, env = "PRESENCE_MAX_PAYLOAD_BYTES", default_value_t = 65_536)]
    pub max_payload_bytes: u64,
    /// presence:signal messages relayed per second and socket; more are dropped.
    #[arg(long, env = "PRESENCE_SIGNAL_RATE_PER_SEC", default_value_t = 30)]
    pub signal_rate_per_sec: u32,
    /// Sessions one user may hold at once (tabs, devices); a hello for one
    /// more gets `limit_exceeded`.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS_PER_USER", default_value_t = 32)]
    pub max_sessions_per_user: usize,
    /// How long a connection may hold no session: one that has not sent
    /// `presence:hello` this long after connecting, or after its session
    /// ended, is closed (idle sockets cost memory and a file descriptor).
    #[arg(long, env = "PRESENCE_HELLO_TIMEOUT_MS", default_value_t = 10_000)]
    pub hello_timeout_ms: u64,
    /// Events per second one socket may send (all presence:* events, with a
    /// burst of as many); more get `rate_limited`, and a socket that keeps
    /// flooding at ten times the rate for a second is disconnected.
    #[arg(long, env = "PRESENCE_RATE_LIMIT_PER_SEC", default_value_t = 50)]
    pub rate_limit_per_sec: u32,

    /// Turns on token auth with HS256: the shared secret (at least 32 bytes)
    /// that signs the JWTs clients present at the handshake.
    #[arg(long, env = "PRESENCE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Turns on token auth with RS256: the issuer's RSA public key, as PEM
    /// text or the path of a PEM file.
    #[arg(long, env = "PRESENCE_JWT_PUBLIC_KEY", allow_hyphen_values = true)]
    pub jwt_public_key: Option<String>,
    /// The longest lifetime a token may have, in seconds: a token whose
    /// `exp` is further than this after its `iat` (or after now) is refused,
    /// so that no token outlives a revocation by more than this.
    #[arg(long, env = "PRESENCE_JWT_MAX_TTL_S", default_value_t = crate::auth::DEFAULT_MAX_TTL_SECS)]
    pub jwt_max_ttl_s: u64,
    /// Protects the HTTP API (`/api/*`, `/metrics`): requests must send
    /// `Authorization: Bearer <key>`. `/`, `/healthz` and `/readyz` stay open.
    #[arg(long, env = "PRESENCE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Origins (comma-separated, or `*`) whose browser pages may call the
    /// HTTP API and open Socket.IO polling connections. Unset: same origin only.
    #[arg(long, env = "PRESENCE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Origins (comma-separated) whose pages may open Socket.IO connections
    /// (WebSocket or polling): a request with another `Origin` is refused
    /// with 403, so a page elsewhere cannot ride a user's cookies or network
    /// position. Unset: any origin. Requests without `Origin` (not from a
    /// browser) are not affected.
    #[arg(long, env = "PRESENCE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// How long an offline user's last activity and last-online time are
    /// kept (`POST /api/users/status`, who's online `?include=recent`), in
    /// seconds: one small hash per user offline in that window.
    #[arg(long, env = "PRESENCE_LAST_SEEN_TTL_S", default_value_t = 30 * 24 * 3_600)]
    pub last_seen_ttl_s: u64,
    /// Shards of the lifecycle stream (docs/events.md): one Redis Stream
    /// each, on its own hash slot in a Cluster. Every consumer reads them
    /// all; change it only with the consumers.
    #[arg(long, env = "PRESENCE_EVENT_SHARDS", default_value_t = 4)]
    pub event_shards: u32,
    /// About how many events each shard of the lifecycle stream keeps
    /// (`XADD MAXLEN ~`): bounds the stream's Redis memory (150–250 bytes
    /// an event) and so how long a consumer may be away without missing
    /// any (docs/operations.md).
    #[arg(long, env = "PRESENCE_EVENT_STREAM_MAXLEN", default_value_t = 100_000)]
    pub event_stream_maxlen: u64,

    /// Where to POST lifecycle events (comma-separated URLs, http or https;
    /// each gets every event, through its own consumer group). Unset: no
    /// webhooks.
    #[arg(long, env = "PRESENCE_WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,
    /// The secret webhook bodies are signed with (`Presence-Signature`, HMAC-SHA256);
    /// at least 16 bytes, required with `PRESENCE_WEBHOOK_URL`.
    #[arg(long, env = "PRESENCE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// The event types to deliver (comma-separated: `member.joined`,
    /// families like `user.*`, or `*`). Unset: every type.
    #[arg(long, env = "PRESENCE_WEBHOOK_EVENTS", value_delimiter = ',')]
    pub webhook_events: Vec<String>,
    /// How long an event is retried (with exponential backoff) before it is
    /// dropped and counted, in seconds from when it happened.
    #[arg(long, env = "PRESENCE_WEBHOOK_MAX_AGE_S", default_value_t = 3_600)]
    pub webhook_max_age_s: u64,
    /// Most events in one webhook request.
    #[arg(long, env = "PRESENCE_WEBHOOK_BATCH_MAX", default_value_t = 100)]
    pub webhook_batch_max: usize,
    /// The longest an event waits for others to share its request, in ms.
    #[arg(long, env = "PRESENCE_WEBHOOK_BATCH_WAIT_MS", default_value_t = 1_000)]
    pub webhook_batch_wait_ms: u64,
    /// How long a webhook request may take before it counts as failed, in ms.
    #[arg(long, env = "PRESENCE_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// How long a batch may sit unacknowledged with a node that took it
    /// before another node claims it (the node died), in ms. A node still
    /// retrying a batch keeps it its own.
    #[arg(long, env = "PRESENCE_WEBHOOK_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub webhook_claim_idle_ms: u64,

    /// Log format.
    #[arg(long, env = "PRESENCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// The lifecycle timings, checked.
    pub fn timings(&self) -> Result<Timings, ConfigError> {
        let t = Timings {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            heartbeat_timeout_ms: self.heartbeat_timeout_ms,
            idle_after_ms: self.idle_after_ms,
            away_after_ms: self.away_after_ms,
            background_timeout_ms: self.background_timeout_ms,
            reconnect_grace_ms: self.reconnect_grace_ms,
            prune_interval_ms: self.prune_interval_ms,
            emit_debounce_ms: self.emit_debounce_ms,
        };
        t.validate().map_err(|e| ConfigError(e.0))?;
        Ok(t)
    }

    /// The limits on what clients send.
    pub fn limits(&self) -> Limits {
        Limits {
            max_state_bytes: self.max_state_bytes,
            max_meta_bytes: self.max_meta_bytes,
            max_rooms_per_session: self.max_rooms_per_session,
            max_sessions_per_user: self.max_sessions_per_user,
            max_message_bytes: self.max_message_bytes,
            full_view_max_members: self.full_view_max_members,
            max_watch_users: self.max_watch_users,
            max_capabilities: self.max_capabilities,
            max_intents_per_user: self.max_intents_per_user,
            max_intents_to_user: self.max_intents_to_user,
            max_intent_ttl_ms: self.max_intent_ttl_ms,
            max_note_bytes: self.max_note_bytes,
            last_seen_ttl_ms: (self.last_seen_ttl_s as Millis).saturating_mul(1_000),
            event_stream_max_len: self.event_stream_maxlen,
            event_shards: self.event_shards,
        }
    }

    /// The configured node id, or a fresh random one.
    pub fn node_id(&self) -> Result<NodeId, ConfigError> {
        match &self.node_id {
            Some(id) => NodeId::new(id).map_err(|e| ConfigError(format!("PRESENCE_NODE_ID: {e}"))),
            None => {
                let rnd = uuid::Uuid::new_v4().simple().to_string();
                Ok(NodeId::new(&format!("node-{}", &rnd[..12])).expect("valid id"))
            }
        }
    }

    /// Why the message limit cannot hold for every message, if it cannot:
    /// an entry is never split, so one member and its user with the largest
    /// states (and a join ack's own entries beside them) must fit in one.
    pub fn message_limit_warning(&self) -> Option<String> {
        let least = 4 * self.max_state_bytes + 8_192;
        (self.max_message_bytes < least).then(|| {
            format!(
                "PRESENCE_MAX_MESSAGE_BYTES ({}) is below 4 × PRESENCE_MAX_STATE_BYTES + 8192 \
                 ({least}): a member whose state is near the limit may be sent in a message of \
                 its own that is larger",
                self.max_message_bytes
            )
        })
    }

    /// The debounce as a `Duration`.
    pub fn emit_debounce(&self) -> Duration {
        Duration::from_millis(self.emit_debounce_ms.max(0) as u64)
    }

    /// The token verifier the keys ask for (`None`: token auth is off).
    pub fn verifier(&self) -> Result<Option<Verifier>, ConfigError> {
        Ok(
            Verifier::from_keys(self.jwt_secret.as_deref(), self.jwt_public_key.as_deref())?
                .map(|v| v.with_max_ttl(self.jwt_max_ttl_s)),
        )
    }

    /// Checks the lifecycle stream and webhook settings.
    fn validate_events(&self) -> Result<(), ConfigError> {
        if self.last_seen_ttl_s == 0 {
            return Err("PRESENCE_LAST_SEEN_TTL_S must be > 0".into());
        }
        if !(1..=64).contains(&self.event_shards) {
            return Err("PRESENCE_EVENT_SHARDS must be between 1 and 64".into());
        }
        if self.event_stream_maxlen < 1_000 {
            return Err("PRESENCE_EVENT_STREAM_MAXLEN must be at least 1000".into());
        }
        for url in &self.webhook_url {
            let ok = url.parse::<axum::http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(ConfigError(format!(
                    "PRESENCE_WEBHOOK_URL: {url:?} is not an http:// or https:// URL"
                )));
            }
        }
        if !self.webhook_url.is_empty() && self.webhook_secret.as_ref().is_none_or(|s| s.len() < 16)
        {
            return Err(
                "PRESENCE_WEBHOOK_SECRET (at least 16 bytes) is required with PRESENCE_WEBHOOK_URL: receivers verify every request by it".into(),
            );
        }
        if let Some(bad) = self
            .webhook_events
            .iter()
            .find(|e| !presence_core::lifecycle::valid_filter(e))
        {
            return Err(ConfigError(format!(
                "PRESENCE_WEBHOOK_EVENTS: {bad:?} is not an event type ({}), a family like user.*, or *",
                presence_core::lifecycle::EVENT_TYPES.join(", ")
            )));
        }
        if self.webhook_max_age_s == 0 {
            return Err("PRESENCE_WEBHOOK_MAX_AGE_S must be > 0".into());
        }
        if !(1..=1_000).contains(&self.webhook_batch_max) {
            return Err("PRESENCE_WEBHOOK_BATCH_MAX must be between 1 and 1000".into());
        }
        if self.webhook_timeout_ms == 0 || self.webhook_claim_idle_ms == 0 {
            return Err(
                "PRESENCE_WEBHOOK_TIMEOUT_MS and PRESENCE_WEBHOOK_CLAIM_IDLE_MS must be > 0".into(),
            );
        }
        Ok(())
    }

    /// Checks everything that can be checked before start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.timings()?;
        self.node_id()?;
        if self.max_rooms_per_session == 0 {
            return Err("PRESENCE_MAX_ROOMS_PER_SESSION must be > 0".into());
        }
        if self.max_message_bytes < 4_096 {
            return Err("PRESENCE_MAX_MESSAGE_BYTES must be at least 4096".into());
        }
        if self.max_payload_bytes < 1024 {
            return Err("PRESENCE_MAX_PAYLOAD_BYTES must be at least 1024".into());
        }
        if self.signal_rate_per_sec == 0 {
            return Err("PRESENCE_SIGNAL_RATE_PER_SEC must be > 0".into());
        }
        if self.rate_limit_per_sec == 0 {
            return Err("PRESENCE_RATE_LIMIT_PER_SEC must be > 0".into());
        }
        if self.hello_timeout_ms == 0 {
            return Err("PRESENCE_HELLO_TIMEOUT_MS must be > 0".into());
        }
        if self.max_sessions_per_user == 0 {
            return Err("PRESENCE_MAX_SESSIONS_PER_USER must be > 0".into());
        }
        if self.api_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err("PRESENCE_API_KEY must be at least 16 bytes".into());
        }
        for o in &self.allowed_origins {
            if axum::http::HeaderValue::from_str(o).is_err() || o == "*" {
                return Err(ConfigError(format!(
                    "PRESENCE_ALLOWED_ORIGINS: {o:?} is not an origin (scheme://host[:port])"
                )));
            }
        }
        for o in &self.cors_origins {
            if o != "*" && axum::http::HeaderValue::from_str(o).is_err() {
                return Err(ConfigError(format!(
                    "PRESENCE_CORS_ORIGINS: {o:?} is not a valid origin"
                )));
            }
        }
        self.verifier()?;
        self.validate_events()?;
        if presence_core::ids::validate_id(&self.key_prefix).is_err()
            || self.key_prefix.contains(['{', '}'])
        {
            return Err(
                "PRESENCE_KEY_PREFIX must be 1..=128 bytes of A-Z a-z 0-9 _ . : @ -".into(),
            );
        }
        if self.redis_ca_file.is_some()
            && !self
                .redis_url
                .as_deref()
                .is_some_and(|u| u.trim_start().starts_with("rediss"))
        {
            return Err("PRESENCE_REDIS_CA_FILE needs a TLS REDIS_URL (rediss://...)".into());
        }
        if self.redis_pool_size == 0 || self.redis_timeout_ms == 0 {
            return Err(
                "PRESENCE_REDIS_POOL_SIZE and PRESENCE_REDIS_TIMEOUT_MS must be > 0".into(),
            );
        }
        Ok(())
    }

    /// The configuration as it may be logged: passwords in REDIS_URL and
    /// the webhook URLs masked, secrets replaced.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if let Some(url) = &c.redis_url {
            c.redis_url = Some(redact_url(url));
        }
        for url in &mut c.webhook_url {
            *url = redact_url(url);
        }
        for secret in [&mut c.jwt_secret, &mut c.api_key, &mut c.webhook_secret] {
            if secret.is_some() {
                *secret = Some("***".into());
            }
        }
        c
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host` (and `?...Password=x` likewise).
fn redact_url(url: &str) -> String {
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split_once(':').map_or("", |(u, _)| u);
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    if let Some(i) = out.find("Password=") {
        let end = out[i..].find('&').map_or(out.len(), |e| i + e);
        out.replace_range(i + "Password=".len()..end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::parse_from(["presence-node"]);
        assert_eq!(c.bind.to_string(), "127.0.0.1:8787");
        assert_eq!(c.timings().unwrap(), Timings::default());
        assert_eq!(c.limits(), Limits::default());
        assert!(c.node_id().unwrap().as_str().starts_with("node-"));
        c.validate().unwrap();
    }

    #[test]
    fn a_message_limit_that_cannot_hold_for_every_entry_is_warned_of() {
        let at = |n: &str| Config::parse_from(["presence-node", "--max-message-bytes", n]);
        assert!(Config::parse_from(["presence-node"])
            .message_limit_warning()
            .is_none());
        assert!(at("4095")
            .validate()
            .unwrap_err()
            .0
            .contains("PRESENCE_MAX_MESSAGE_BYTES"));
        at("4096").validate().unwrap();
        assert!(at("16384")
            .message_limit_warning()
            .unwrap()
            .contains("24576"));
        assert!(at("24576").message_limit_warning().is_none());
    }

    #[test]
    fn secrets_are_masked_in_logs() {
        let c = Config::parse_from([
            "presence-node",
            "--redis-url",
            "redis://app:hunter2@10.0.0.1:6379/0",
        ]);
        let shown = format!("{:?}", c.redacted());
        assert!(!shown.contains("hunter2"), "{shown}");
        let keys = Config::parse_from([
            "presence-node",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef-secret",
            "--api-key",
            "api-key-0123456789",
            "--webhook-secret",
            "hook-secret-0123456789",
            "--webhook-url",
            "https://hooks:pa55word@example.com/presence",
        ]);
        let keys = format!("{:?}", keys.redacted());
        assert!(
            !keys.contains("-secret")
                && !keys.contains("api-key-")
                && !keys.contains("hook-secret")
                && !keys.contains("pa55word"),
            "{keys}"
        );
        assert!(shown.contains("redis://app:***@10.0.0.1:6379/0"));
        assert_eq!(
            redact_url("redis-sentinel://h:1?sentinelServiceName=m&sentinelPassword=pw&x=1"),
            "redis-sentinel://h:1?sentinelServiceName=m&sentinelPassword=***&x=1"
        );
    }

    #[test]
    fn flags_override_and_bad_values_are_named() {
        let c = Config::parse_from(["presence-node", "--heartbeat-timeout-ms", "5000"]);
        assert!(c.validate().unwrap_err().0.contains("heartbeatTimeoutMs"));
        let c = Config::parse_from(["presence-node", "--node-id", "bad id"]);
        assert!(c.validate().unwrap_err().0.contains("PRESENCE_NODE_ID"));
        assert!(Config::try_parse_from(["presence-node", "--bind", "nope"]).is_err());
        let c = Config::parse_from(["presence-node", "--redis-ca-file", "/ca.pem"]);
        assert!(c.validate().unwrap_err().0.contains("rediss://"));
        let c = Config::parse_from([
            "presence-node",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-ca-file",
            "/ca.pem",
        ]);
        assert!(c
            .validate()
            .unwrap_err()
            .0
            .contains("PRESENCE_REDIS_CA_FILE"));
        let c = Config::parse_from([
            "presence-node",
            "--redis-url",
            "rediss://127.0.0.1:6380",
            "--redis-ca-file",
            "/ca.pem",
        ]);
        c.validate().unwrap();
    }
}
