//! Intents: "tell me when this user is reachable `now`" — a caller waits for
//! readiness instead of ringing. An intent is pending until it resolves,
//! once, as reachable (a session of the callee became reachable now for the
//! need), expired (its TTL passed) or cancelled (by its caller).
//!
//! Stores keep intents with their TTL; nodes resolve them (see
//! `presence-node`'s `intents` module) and deliver the outcome to the
//! caller's session wherever it is connected.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, UserId};
use crate::reach::Capabilities;
use crate::time::Millis;

/// How an intent ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IntentOutcome {
    /// The callee became reachable now on this session.
    #[serde(rename_all = "camelCase")]
    Reachable {
        /// The session to ring.
        session_id: SessionId,
    },
    /// The TTL passed first.
    Expired,
    /// Its caller withdrew it.
    Cancelled,
}

/// One intent, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// Its id (opaque, unique).
    pub id: String,
    /// The caller.
    pub from: UserId,
    /// The caller's session that waits for the outcome (`None` for an
    /// intent made over HTTP by a backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_session: Option<SessionId>,
    /// The callee.
    pub to: UserId,
    /// What the callee's session must be able to do.
    pub need: Capabilities,
    /// A short text for the callee ("Ada would like to call").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When it was made.
    pub created_at: Millis,
    /// When it expires if nothing resolves it first.
    pub expires_at: Millis,
    /// How it ended; `None` while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<IntentOutcome>,
}

impl Intent {
    /// Whether it still waits at `now`.
    pub fn is_pending(&self, now: Millis) -> bool {
        self.outcome.is_none() && now < self.expires_at
    }

    /// The intent resolved with `outcome` at `now`, or `None` when it may not
    /// resolve so: one already resolved stays as it is, and one whose TTL has
    /// passed can only expire.
    pub fn resolve(&self, outcome: IntentOutcome, now: Millis) -> Option<Intent> {
        if self.outcome.is_some() {
            return None;
        }
        if now >= self.expires_at && outcome != IntentOutcome::Expired {
            return None;
        }
        Some(Intent {
            outcome: Some(outcome),
            ..self.clone()
        })
    }
}

/// What nodes tell each other about an intent (every node hears it and
/// acts on the sessions it holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntentNotice {
    /// The intent, with its outcome when it has resolved.
    pub intent: Intent,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent() -> Intent {
        Intent {
            id: "i1".into(),
            from: UserId::new("ada").unwrap(),
            from_session: Some(SessionId::new("s-ada").unwrap()),
            to: UserId::new("bob").unwrap(),
            need: Capabilities::parse(["audio"], 4).unwrap(),
            note: None,
            created_at: 1_000,
            expires_at: 2_000,
            outcome: None,
        }
    }

    #[test]
    fn an_intent_resolves_once_and_after_its_ttl_only_as_expired() {
        let i = intent();
        let ready = IntentOutcome::Reachable {
            session_id: SessionId::new("s-bob").unwrap(),
        };
        assert!(i.is_pending(1_999) && !i.is_pending(2_000));
        let r = i.resolve(ready.clone(), 1_500).unwrap();
        assert_eq!(r.outcome, Some(ready.clone()));
        assert!(!r.is_pending(1_500));
        assert_eq!(r.resolve(IntentOutcome::Expired, 2_500), None);
        assert_eq!(r.resolve(IntentOutcome::Cancelled, 1_600), None);
        assert_eq!(i.resolve(ready, 2_000), None);
        assert_eq!(i.resolve(IntentOutcome::Cancelled, 2_000), None);
        let e = i.resolve(IntentOutcome::Expired, 2_000).unwrap();
        assert_eq!(e.outcome, Some(IntentOutcome::Expired));
    }

    #[test]
    fn the_stored_shape_is_stable() {
        let mut i = intent();
        i.outcome = Some(IntentOutcome::Reachable {
            session_id: SessionId::new("s-bob").unwrap(),
        });
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "i1", "from": "ada", "fromSession": "s-ada", "to": "bob",
                "need": ["audio"], "createdAt": 1000, "expiresAt": 2000,
                "outcome": { "kind": "reachable", "sessionId": "s-bob" }
            })
        );
        assert_eq!(serde_json::from_value::<Intent>(v).unwrap(), i);
    }
}
