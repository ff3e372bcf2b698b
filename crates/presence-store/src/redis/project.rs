//! Projections: what a session script decided, carried into the other
//! slots — the session's rooms, its user's index, and the sharded indexes
//! (deadlines, rooms by deadline, who's online).
//!
//! The session's hash is the truth and its script runs first; each
//! projection carries the session's version, so a late or repeated one is
//! ignored where it lands.

use fred::prelude::*;
use fred::types::sorted_sets::Ordering;
use futures::future::join_all;

use super::index_scripts::{AddUserSession, RemoveUserSession, SessionsLeft, UserSessionAdded};
use super::keys::{field, shard_of};
use super::room_scripts::{PutKind, PutMember, RemoveMember};
use super::session_scripts::{RoomDel, RoomPut};
use super::RedisStore;
use crate::error::StoreError;

impl RedisStore {
    /// Projects a session into one room; returns the room's seq after it
    /// (0 when nothing observers see changed).
    pub(super) async fn put_room(
        &self,
        session: &str,
        user_id: &str,
        version: u64,
        kind: PutKind,
        put: &RoomPut,
    ) -> Result<u64, StoreError> {
        let call = PutMember {
            session,
            user_id,
            version,
            kind,
            put,
            pubsub: self.bus.mode(),
        };
        let r = self.run(call).await?;
        if let Some(at) = r.list_at {
            self.list_room(&put.room, at, r.fresh).await?;
        }
        Ok(r.seq)
    }

    /// [`put_room`](Self::put_room) for each of `puts`, at once (each room is its own slot).
    pub(super) async fn put_rooms(
        &self,
        session: &str,
        user_id: &str,
        version: u64,
        kind: PutKind,
        puts: &[RoomPut],
    ) -> Result<(), StoreError> {
        let calls = puts
            .iter()
            .map(|p| self.put_room(session, user_id, version, kind, p));
        for r in join_all(calls).await {
            r?;
        }
        Ok(())
    }

    /// Removes a session from each room of `dels`, at once.
    pub(super) async fn remove_from_rooms(
        &self,
        session: &str,
        version: u64,
        dels: &[RoomDel],
    ) -> Result<(), StoreError> {
        let calls = dels.iter().map(|d| {
            self.run(RemoveMember {
                room: &d.room,
                session,
                version,
                event: &d.event,
                pubsub: self.bus.mode(),
            })
        });
        for r in join_all(calls).await {
            r?;
        }
        Ok(())
    }

    /// Files a room in the rooms-by-deadline index at `at`, after a write
    /// filed one of its members there (see room_put.lua and rooms_settle.lua):
    /// lowers its entry, or sets it outright when the room's expiry index was
    /// empty before.
    pub(super) async fn list_room(
        &self,
        room: &str,
        at: i64,
        outright: bool,
    ) -> Result<(), StoreError> {
        let ordering = (!outright).then_some(Ordering::LessThan);
        self.zadd_one(
            self.keys.rooms_due(shard_of(room)),
            None,
            ordering,
            at,
            room,
        )
        .await
    }

    /// Records the session in its user's index and the user as online;
    /// refused (`TooManySessions`) when the session is new to the user and
    /// the user is at the limit.
    pub(super) async fn add_to_user(
        &self,
        user_id: &str,
        session: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        let added = self
            .run(AddUserSession {
                user_id,
                session,
                version,
                max_sessions: self.limits.max_sessions_per_user,
            })
            .await?;
        if added == UserSessionAdded::Full {
            return Err(StoreError::TooManySessions {
                limit: self.limits.max_sessions_per_user,
            });
        }
        self.zadd_one(self.keys.online(shard_of(user_id)), None, None, 0, user_id)
            .await
    }

    /// Takes the session out of its user's index, and the user out of
    /// who's online when it was the last one.
    pub(super) async fn remove_from_user(
        &self,
        user_id: &str,
        session: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        let SessionsLeft(left) = self
            .run(RemoveUserSession {
                user_id,
                session,
                version,
            })
            .await?;
        if left == 0 {
            let shard = self.keys.online(shard_of(user_id));
            let _: () = self
                .route
                .on_key(&shard, |c| {
                    let shard = &shard;
                    async move { c.zrem(shard, user_id).await }
                })
                .await?;
            // A hello of the same user may have raced the removal: put it back.
            let user = &self.keys.user(user_id);
            let n: u64 = self
                .route
                .on_key(user, |c| async move { c.hlen(user).await })
                .await?;
            if n > 0 {
                self.zadd_one(shard, None, None, 0, user_id).await?;
            }
        }
        Ok(())
    }

    /// Files the session in the deadline index at `at`, when its script asked.
    ///
    /// The script has already noted `at` in the session's hash (`ix`). If
    /// the index cannot be told (its shard's master is failing over), the
    /// note is taken back, so that the session's next write asks again
    /// rather than trusting an entry that was never made.
    pub(super) async fn file_deadline(
        &self,
        session: &str,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        let Some(at) = at else { return Ok(()) };
        let filed = self
            .zadd_one(
                self.keys.deadlines(shard_of(session)),
                None,
                None,
                at,
                session,
            )
            .await;
        if filed.is_err() {
            let key = &self.keys.session(session);
            let _ = self
                .route
                .on_key(key, |c| async move {
                    c.hdel::<(), _, _>(key, field::INDEXED_AT).await
                })
                .await;
        }
        filed
    }

    /// Takes the session out of the deadline index (it ended).
    pub(super) async fn unfile_deadline(&self, session: &str) -> Result<(), StoreError> {
        let key = &self.keys.deadlines(shard_of(session));
        self.route
            .on_key(key, |c| async move { c.zrem(key, session).await })
            .await
    }

    /// ZADD of one member, as every index here files one entry at a time.
    pub(super) async fn zadd_one(
        &self,
        key: String,
        options: Option<SetOptions>,
        ordering: Option<Ordering>,
        score: i64,
        member: &str,
    ) -> Result<(), StoreError> {
        let k = &key;
        self.route
            .on_key(k, |c| {
                let options = options.clone();
                let ordering = ordering.clone();
                async move {
                    c.zadd(k, options, ordering, false, false, (score as f64, member))
                        .await
                }
            })
            .await
    }
}
