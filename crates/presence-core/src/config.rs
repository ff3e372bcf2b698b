//! Lifecycle timings and limits, with the defaults of the wire contract.

use serde::Serialize;

use crate::time::Millis;

/// The lifecycle timings (all in milliseconds). Defaults follow docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// How often clients are asked to heartbeat.
    pub heartbeat_interval_ms: Millis,
    /// Silence after which a foreground session is `stale`.
    pub heartbeat_timeout_ms: Millis,
    /// Inactivity after which a session is `idle`.
    pub idle_after_ms: Millis,
    /// Inactivity after which a session is `away`.
    pub away_after_ms: Millis,
    /// Silence after which a `background` session is `stale` (browsers
    /// throttle timers in hidden tabs to about one a minute).
    pub background_timeout_ms: Millis,
    /// How long a stale session is kept so that a reconnect can resume it.
    pub reconnect_grace_ms: Millis,
    /// How often expired sessions are looked for.
    pub prune_interval_ms: Millis,
    /// The shortest gap between two diffs of one room to one client.
    pub emit_debounce_ms: Millis,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 10_000,
            heartbeat_timeout_ms: 20_000,
            idle_after_ms: 45_000,
            away_after_ms: 300_000,
            background_timeout_ms: 120_000,
            reconnect_grace_ms: 15_000,
            prune_interval_ms: 1_000,
            emit_debounce_ms: 250,
        }
    }
}

/// Why a set of timings cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimingsError(pub String);

impl Timings {
    /// Checks that the timings describe a lifecycle that can work: positive
    /// values, and a timeout longer than the heartbeat interval (otherwise
    /// every healthy session would flap to `stale` between two heartbeats).
    pub fn validate(&self) -> Result<(), TimingsError> {
        let positive = [
            ("heartbeatIntervalMs", self.heartbeat_interval_ms),
            ("heartbeatTimeoutMs", self.heartbeat_timeout_ms),
            ("idleAfterMs", self.idle_after_ms),
            ("awayAfterMs", self.away_after_ms),
            ("backgroundTimeoutMs", self.background_timeout_ms),
            ("pruneIntervalMs", self.prune_interval_ms),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(TimingsError(format!("{name} must be > 0 (got {v})")));
            }
        }
        if self.reconnect_grace_ms < 0 || self.emit_debounce_ms < 0 {
            return Err(TimingsError(
                "reconnectGraceMs and emitDebounceMs must be >= 0".into(),
            ));
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(TimingsError(format!(
                "heartbeatTimeoutMs ({}) must be greater than heartbeatIntervalMs ({})",
                self.heartbeat_timeout_ms, self.heartbeat_interval_ms
            )));
        }
        if self.background_timeout_ms < self.heartbeat_timeout_ms {
            return Err(TimingsError(format!(
                "backgroundTimeoutMs ({}) must be at least heartbeatTimeoutMs ({})",
                self.background_timeout_ms, self.heartbeat_timeout_ms
            )));
        }
        if self.away_after_ms < self.idle_after_ms {
            return Err(TimingsError(format!(
                "awayAfterMs ({}) must be at least idleAfterMs ({})",
                self.away_after_ms, self.idle_after_ms
            )));
        }
        Ok(())
    }
}

/// Size and count limits: on what clients send, and on what they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// The largest per-room `state`, as compact JSON bytes (after a patch is merged).
    pub max_state_bytes: usize,
    /// The largest session `meta`, as compact JSON bytes.
    pub max_meta_bytes: usize,
    /// How many rooms one session may be in at once.
    pub max_rooms_per_session: usize,
    /// How many sessions one user may hold at once.
    pub max_sessions_per_user: usize,
    /// The largest message a client is sent (its Socket.IO frame, in
    /// bytes): larger snapshots and diffs go out in parts, pages stop short.
    pub max_message_bytes: usize,
    /// The most sessions a room may have for its members to follow it
    /// whole (the `full` view); above it they follow counts.
    pub full_view_max_members: usize,
    /// How many users one watch list may name.
    pub max_watch_users: usize,
    /// How many capabilities one session may declare.
    pub max_capabilities: usize,
    /// How many intents one user may have waiting (as the caller).
    pub max_intents_per_user: usize,
    /// How many intents may wait for one user (as the callee): what every
    /// check of that user's intents reads.
    pub max_intents_to_user: usize,
    /// The longest an intent may wait (`ttlMs`).
    pub max_intent_ttl_ms: Millis,
    /// The largest intent `note`, in bytes.
    pub max_note_bytes: usize,
    /// How long an offline user's last activity and last-online time are
    /// kept (one small hash per user who was online in that window).
    pub last_seen_ttl_ms: Millis,
    /// About how many lifecycle events each shard of the stream keeps
    /// (`MAXLEN ~`): the Redis memory the stream may take, and how long a
    /// consumer may be away before it misses events.
    pub event_stream_max_len: u64,
    /// How many streams the lifecycle events are spread over (each on its
    /// own hash slot on Redis Cluster, so that no single key is hot).
    pub event_shards: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_state_bytes: 4096,
            max_meta_bytes: 1024,
            max_rooms_per_session: 32,
            max_sessions_per_user: 32,
            max_message_bytes: 65_536,
            full_view_max_members: 1_000,
            max_watch_users: 1_000,
            max_capabilities: 16,
            max_intents_per_user: 16,
            max_intents_to_user: 64,
            max_intent_ttl_ms: 600_000,
            max_note_bytes: 256,
            last_seen_ttl_ms: 30 * 24 * 3_600_000,
            event_stream_max_len: 100_000,
            event_shards: 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contract_and_valid() {
        let t = Timings::default();
        assert_eq!(t.heartbeat_interval_ms, 10_000);
        assert_eq!(t.reconnect_grace_ms, 15_000);
        assert_eq!(t.emit_debounce_ms, 250);
        t.validate().unwrap();
    }

    #[test]
    fn rejects_timeout_not_above_interval() {
        let t = Timings {
            heartbeat_timeout_ms: 10_000,
            ..Timings::default()
        };
        assert!(t.validate().unwrap_err().0.contains("heartbeatTimeoutMs"));
    }

    #[test]
    fn rejects_zero_and_misordered_values() {
        let zero = Timings {
            idle_after_ms: 0,
            ..Timings::default()
        };
        assert!(zero.validate().is_err());
        let away_first = Timings {
            away_after_ms: 1_000,
            ..Timings::default()
        };
        assert!(away_first.validate().is_err());
    }
}
