//! Reads that span sessions: a user's live sessions, for who's online and
//! bulk user status (a room's view is one script call, see room_read.lua).

use std::collections::BTreeMap;

use fred::prelude::*;
use futures::future::join_all;
use presence_core::view::Member;
use presence_core::{Activity, RoomId, SessionId, SessionStatus, UserId};

use super::keys::field;
use super::RedisStore;
use crate::api::UserSession;
use crate::error::StoreError;

impl RedisStore {
    /// The live sessions of a user (entries whose session is gone are skipped).
    pub(super) async fn user_members(&self, uid: &str) -> Result<Vec<Member>, StoreError> {
        self.user_hashes(uid, member_of).await
    }

    /// The live sessions of a user, with what reachability reads.
    pub(super) async fn user_session_list(
        &self,
        uid: &str,
    ) -> Result<Vec<UserSession>, StoreError> {
        self.user_hashes(uid, user_session_of).await
    }

    /// A user's live sessions, each read from its hash by `read`.
    async fn user_hashes<T>(
        &self,
        uid: &str,
        read: fn(&str, &BTreeMap<String, String>) -> Option<T>,
    ) -> Result<Vec<T>, StoreError> {
        let key = &self.keys.user(uid);
        let sids: BTreeMap<String, String> = self
            .route
            .on_key(key, |c| async move { c.hgetall(key).await })
            .await?;
        let ids: Vec<String> = sids.into_keys().collect();
        let facts = self.sessions(&ids).await?;
        Ok(ids
            .iter()
            .zip(facts)
            .filter_map(|(sid, f)| f.and_then(|f| read(sid, &f)))
            .collect())
    }

    /// The hashes of live sessions, read at once (`None`: gone or a tombstone).
    pub(super) async fn sessions(
        &self,
        ids: &[String],
    ) -> Result<Vec<Option<BTreeMap<String, String>>>, StoreError> {
        let reads = ids.iter().map(|sid| {
            let key = self.keys.session(sid);
            async move {
                let k = &key;
                let m: BTreeMap<String, String> = self
                    .route
                    .on_key(k, |c| async move { c.hgetall(k).await })
                    .await?;
                let live = !m.is_empty() && m.get(field::DEAD).map(String::as_str) != Some("1");
                Ok::<_, StoreError>(live.then_some(m))
            }
        });
        join_all(reads).await.into_iter().collect()
    }
}

/// A member from the session's own hash (who's online: no room, no state).
fn member_of(sid: &str, f: &BTreeMap<String, String>) -> Option<Member> {
    let time = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Some(Member {
        session_id: SessionId::new(sid).ok()?,
        user_id: UserId::new(f.get(field::USER_ID)?).ok()?,
        handle: f.get(field::HANDLE).filter(|h| !h.is_empty()).cloned(),
        status: SessionStatus::parse(f.get(field::STATUS)?)?,
        last_heartbeat_at: time(field::LAST_HEARTBEAT_AT),
        last_active_at: time(field::LAST_ACTIVE_AT),
        state: None,
        state_updated_at: 0,
        declared: declared_of(f),
    })
}

/// The readiness and capabilities in a session hash.
fn declared_of(f: &BTreeMap<String, String>) -> presence_core::Declared {
    field::declared(
        f.get(field::READINESS).map(String::as_str),
        f.get(field::CAPABILITIES).map(String::as_str),
    )
}

/// A user's session from its hash, with its rooms.
fn user_session_of(sid: &str, f: &BTreeMap<String, String>) -> Option<UserSession> {
    let time = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Some(UserSession {
        session_id: SessionId::new(sid).ok()?,
        status: SessionStatus::parse(f.get(field::STATUS)?)?,
        activity: f
            .get(field::ACTIVITY)
            .and_then(|a| Activity::parse(a))
            .unwrap_or_default(),
        declared: declared_of(f),
        last_active_at: time(field::LAST_ACTIVE_AT),
        rooms: f
            .keys()
            .filter_map(|k| k.strip_prefix("r:"))
            .filter_map(|r| RoomId::new(r).ok())
            .collect(),
    })
}
