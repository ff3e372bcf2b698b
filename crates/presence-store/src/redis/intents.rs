//! Intents in Redis: each callee's in one hash, `<prefix>:it:{<userId>}`
//! (intent id -> intent JSON, with the TTL of the latest intent plus the
//! keep window), and each caller's count in a sorted set,
//! `<prefix>:ib:{<userId>}` (`<intentId> <calleeId>` by TTL). A check of a
//! user's intents is one `HGETALL` of at most `max_intents_to_user`
//! pending entries (plus those kept for delivery).
//!
//! The scripts (`intent_reserve`, `intent_put`, `intent_resolve`) keep each
//! rule atomic on its key: the caller's limit, the callee's limit, and
//! "resolves once".

use std::collections::BTreeMap;

use fred::prelude::*;
use fred::types::Value;
use presence_core::{Intent, IntentOutcome, Millis, UserId};

use super::keys::Keys;
use super::scripts::{integer, Decode, Lua, ScriptCall, Scripts};
use super::RedisStore;
use crate::api::{too_many_from, too_many_to, INTENT_KEEP_MS};
use crate::error::StoreError;

/// `intent_reserve.lua`: counts an intent against its caller's limit.
struct Reserve<'a> {
    caller: &'a str,
    member: &'a str,
    now: Millis,
    expires_at: Millis,
    limit: usize,
}

/// `intent_put.lua`: files an intent with its callee.
struct File<'a> {
    callee: &'a str,
    id: &'a str,
    json: String,
    now: Millis,
    limit: usize,
}

/// Whether a limited write was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Yes,
    Full,
}

impl Decode for Counted {
    fn decode(v: Value) -> Result<Self, StoreError> {
        match integer("intent_put.lua", v)? {
            1 => Ok(Counted::Yes),
            -1 => Ok(Counted::Full),
            n => Err(StoreError::Internal(format!(
                "an intent script answered {n}"
            ))),
        }
    }
}

impl ScriptCall for Reserve<'_> {
    type Reply = Counted;
    fn script(s: &Scripts) -> &Lua {
        &s.intent_reserve
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.intents_from(self.caller)]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![
            self.now.to_string(),
            self.member.to_owned(),
            self.expires_at.to_string(),
            INTENT_KEEP_MS.to_string(),
            self.limit.to_string(),
        ]
    }
}

impl ScriptCall for File<'_> {
    type Reply = Counted;
    fn script(s: &Scripts) -> &Lua {
        &s.intent_put
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.intents_to(self.callee)]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![
            self.now.to_string(),
            self.id.to_owned(),
            self.json,
            INTENT_KEEP_MS.to_string(),
            self.limit.to_string(),
        ]
    }
}

/// `intent_resolve.lua`: resolves a pending intent once.
struct Resolve<'a> {
    callee: &'a str,
    id: &'a str,
    now: Millis,
    outcome: &'a IntentOutcome,
}

/// The resolved intent, if this call resolved it.
struct Resolved(Option<Intent>);

impl Decode for Resolved {
    fn decode(v: Value) -> Result<Self, StoreError> {
        let text = v.as_str().unwrap_or_default();
        if text.is_empty() {
            return Ok(Resolved(None));
        }
        serde_json::from_str(&text)
            .map(|i| Resolved(Some(i)))
            .map_err(|e| StoreError::Internal(format!("bad reply of intent_resolve.lua: {e}")))
    }
}

impl ScriptCall for Resolve<'_> {
    type Reply = Resolved;
    fn script(s: &Scripts) -> &Lua {
        &s.intent_resolve
    }
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.intents_to(self.callee)]
    }
    fn args(self, _: &Keys) -> Vec<String> {
        vec![
            self.now.to_string(),
            self.id.to_owned(),
            serde_json::to_string(self.outcome).unwrap_or_default(),
            if *self.outcome == IntentOutcome::Expired {
                "1"
            } else {
                "0"
            }
            .to_owned(),
        ]
    }
}

/// The caller's entry for an intent.
fn member(intent: &Intent) -> String {
    format!("{} {}", intent.id, intent.to)
}

impl RedisStore {
    pub(super) async fn file_intent(&self, intent: &Intent) -> Result<(), StoreError> {
        let mut stored = intent.clone();
        stored.outcome = None;
        let json =
            serde_json::to_string(&stored).map_err(|e| StoreError::Internal(e.to_string()))?;
        let entry = member(intent);
        let now = self.clock.now_ms();
        let reserved = self
            .run(Reserve {
                caller: intent.from.as_str(),
                member: &entry,
                now,
                expires_at: intent.expires_at,
                limit: self.limits.max_intents_per_user,
            })
            .await?;
        if reserved == Counted::Full {
            return Err(too_many_from(self.limits.max_intents_per_user));
        }
        let filed = self
            .run(File {
                callee: intent.to.as_str(),
                id: &intent.id,
                json,
                now,
                limit: self.limits.max_intents_to_user,
            })
            .await;
        if filed != Ok(Counted::Yes) {
            // Not filed: it does not count against its caller either.
            self.unreserve(intent).await?;
        }
        match filed? {
            Counted::Yes => Ok(()),
            Counted::Full => Err(too_many_to(self.limits.max_intents_to_user)),
        }
    }

    async fn unreserve(&self, intent: &Intent) -> Result<(), StoreError> {
        let key = &self.keys.intents_from(intent.from.as_str());
        let entry = &member(intent);
        let _: i64 = self
            .route
            .on_key(key, |c| async move { c.zrem(key, entry.as_str()).await })
            .await?;
        Ok(())
    }

    /// Every intent kept for `callee`, pending or resolved.
    async fn intents_kept_for(&self, callee: &str) -> Result<Vec<Intent>, StoreError> {
        let key = &self.keys.intents_to(callee);
        let raw: BTreeMap<String, String> = self
            .route
            .on_key(key, |c| async move { c.hgetall(key).await })
            .await?;
        Ok(raw
            .values()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    pub(super) async fn pending_intents_to(
        &self,
        user: &UserId,
    ) -> Result<Vec<Intent>, StoreError> {
        let now = self.clock.now_ms();
        let mut all = self.intents_kept_for(user.as_str()).await?;
        all.retain(|i| i.is_pending(now));
        Ok(all)
    }

    pub(super) async fn kept_intents_from(&self, user: &UserId) -> Result<Vec<Intent>, StoreError> {
        let now = self.clock.now_ms();
        let key = &self.keys.intents_from(user.as_str());
        let from = (now - INTENT_KEEP_MS) as f64;
        let entries: Vec<String> = self
            .route
            .on_key(key, |c| async move {
                c.zrangebyscore(key, from, f64::INFINITY, false, None).await
            })
            .await?;
        // Grouped by callee: one read of each callee's hash.
        let mut by_callee: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in &entries {
            if let Some((id, callee)) = e.split_once(' ') {
                by_callee.entry(callee).or_default().push(id);
            }
        }
        let mut out = Vec::new();
        for (callee, ids) in by_callee {
            out.extend(
                self.intents_kept_for(callee)
                    .await?
                    .into_iter()
                    .filter(|i| ids.contains(&i.id.as_str()) && i.from == *user),
            );
        }
        Ok(out)
    }

    pub(super) async fn resolve(
        &self,
        intent: &Intent,
        outcome: &IntentOutcome,
    ) -> Result<Option<Intent>, StoreError> {
        let resolved = self
            .run(Resolve {
                callee: intent.to.as_str(),
                id: &intent.id,
                now: self.clock.now_ms(),
                outcome,
            })
            .await?
            .0;
        // The script let one resolution win: its event is appended once.
        if let Some(k) = resolved
            .as_ref()
            .and_then(presence_core::Lifecycle::of_intent)
        {
            self.record(vec![k]).await;
        }
        Ok(resolved)
    }

    pub(super) async fn take(&self, intent: &Intent) -> Result<bool, StoreError> {
        let key = &self.keys.intents_to(intent.to.as_str());
        let id = intent.id.as_str();
        let removed: i64 = self
            .route
            .on_key(key, |c| async move { c.hdel(key, id).await })
            .await?;
        self.unreserve(intent).await?;
        Ok(removed == 1)
    }
}
