//! Projections: what a session script decided, carried into the other
//! slots — the session's rooms, its user's index, and the sharded indexes
//! (deadlines, rooms by deadline, who's online).
//!
//! The session's hash is the truth and its script runs first; each
//! projection carries the session's version, so a late or repeated one is
//! ignored where it lands.

use std::collections::{BTreeMap, BTreeSet};

use fred::prelude::*;
use fred::types::sorted_sets::Ordering;
use futures::StreamExt;

use presence_core::lifecycle::user_change;
use presence_core::{Lifecycle, Millis, RoomId, UserId, UserStatus};

use super::index_scripts::{
    PutUserSessions, RemoveUserSessions, SessionsLeft, UserEntry, UserSession, UserSessionAdded,
    UserSessionsPut, UserTurn,
};
use super::keys::{field, shard_of};
use super::room_scripts::{
    MemberRemoval, MemberUpdate, MembersPut, MembersRemoved, PutKind, PutMembers, RemoveMembers,
};
use super::session_scripts::{RoomDel, RoomPut};
use super::RedisStore;
use crate::error::StoreError;

/// Members per `room_put` / `room_del` call when many are projected at once
/// (a reaper's bulk): enough to spare the per-call cost, few enough that no
/// call holds Redis for more than about a millisecond.
const ROOM_CHUNK: usize = 32;
/// Entries per `user_del` call.
const USER_CHUNK: usize = 128;
/// Entries per ZADD / ZREM of an index shard.
const INDEX_CHUNK: usize = 128;
/// Projection calls in flight at once in a bulk.
const BULK_CONCURRENCY: usize = 16;
/// Users whose last session went checked at once for a racing hello (one
/// HLEN each, pipelined).
const RECHECK_CONCURRENCY: usize = 64;

/// Each call's outcome, at most `BULK_CONCURRENCY` running at once.
async fn bounded<F, T>(calls: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    futures::stream::iter(calls)
        .buffer_unordered(BULK_CONCURRENCY)
        .collect()
        .await
}

/// The first error of `results`, if any.
pub(super) fn first_error(results: Vec<Result<(), StoreError>>) -> Result<(), StoreError> {
    results.into_iter().collect()
}

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
        let member = [MemberUpdate {
            session,
            user_id,
            version,
            kind,
            put,
        }];
        let r = self.put_members(&put.room, &member).await?;
        Ok(r.seqs.first().copied().unwrap_or(0))
    }

    /// Projects `members` into `room` in one call, and lowers the room's
    /// entry in the rooms-by-deadline index when it asks.
    async fn put_members(
        &self,
        room: &str,
        members: &[MemberUpdate<'_>],
    ) -> Result<MembersPut, StoreError> {
        let r = self
            .run(PutMembers {
                room,
                members,
                pubsub: self.bus.mode(),
            })
            .await?;
        if let Ok(room_id) = RoomId::new(room) {
            let mut kinds = Vec::new();
            if r.occupied {
                kinds.push(Lifecycle::RoomOccupied {
                    room_id: room_id.clone(),
                });
            }
            kinds.extend(r.first_in.iter().filter_map(|u| {
                Some(Lifecycle::MemberJoined {
                    room_id: room_id.clone(),
                    user_id: UserId::new(u).ok()?,
                })
            }));
            self.record(kinds).await;
        }
        if let Some(at) = r.list_at {
            self.list_room(room, at, r.fresh).await?;
        }
        Ok(r)
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
        let updates: Vec<_> = puts
            .iter()
            .map(|put| MemberUpdate {
                session,
                user_id,
                version,
                kind,
                put,
            })
            .collect();
        first_error(self.put_many(&updates).await)
    }

    /// Projects many sessions into their rooms: a call per room (and per
    /// [`ROOM_CHUNK`] members), the rooms at once. The outcome of each call.
    pub(super) async fn put_many(
        &self,
        updates: &[MemberUpdate<'_>],
    ) -> Vec<Result<(), StoreError>> {
        let mut by_room: BTreeMap<&str, Vec<MemberUpdate<'_>>> = BTreeMap::new();
        for u in updates {
            by_room.entry(u.put.room.as_str()).or_default().push(*u);
        }
        let mut calls = Vec::new();
        for (room, members) in &by_room {
            for chunk in members.chunks(ROOM_CHUNK) {
                calls.push(async move { self.put_members(room, chunk).await.map(|_| ()) });
            }
        }
        bounded(calls).await
    }

    /// Removes a session from each room of `dels`, at once.
    pub(super) async fn remove_from_rooms(
        &self,
        session: &str,
        version: u64,
        dels: &[RoomDel],
    ) -> Result<(), StoreError> {
        let removals: Vec<_> = dels
            .iter()
            .map(|d| {
                (
                    d.room.as_str(),
                    MemberRemoval {
                        session,
                        version,
                        event: &d.event,
                    },
                )
            })
            .collect();
        first_error(self.remove_many(&removals).await)
    }

    /// Removes many members from their rooms: a call per room (and per
    /// [`ROOM_CHUNK`] members), the rooms at once. The outcome of each call.
    pub(super) async fn remove_many(
        &self,
        removals: &[(&str, MemberRemoval<'_>)],
    ) -> Vec<Result<(), StoreError>> {
        let mut by_room: BTreeMap<&str, Vec<MemberRemoval<'_>>> = BTreeMap::new();
        for (room, m) in removals {
            by_room.entry(room).or_default().push(*m);
        }
        let mut calls = Vec::new();
        for (room, members) in &by_room {
            for chunk in members.chunks(ROOM_CHUNK) {
                calls.push(async move {
                    let removed = self
                        .run(RemoveMembers {
                            room,
                            members: chunk,
                            pubsub: self.bus.mode(),
                        })
                        .await?;
                    self.record_room_removals(room, &removed).await;
                    Ok(())
                });
            }
        }
        bounded(calls).await
    }

    /// Appends what a `room_del` call decided: member.left for each user
    /// whose last session went, then room.vacated.
    pub(super) async fn record_room_removals(&self, room: &str, removed: &MembersRemoved) {
        let Ok(room_id) = RoomId::new(room) else {
            return;
        };
        let mut kinds: Vec<Lifecycle> = removed
            .last_out
            .iter()
            .filter_map(|u| {
                Some(Lifecycle::MemberLeft {
                    room_id: room_id.clone(),
                    user_id: UserId::new(u).ok()?,
                })
            })
            .collect();
        if removed.vacated {
            kinds.push(Lifecycle::RoomVacated { room_id });
        }
        self.record(kinds).await;
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

    /// Records the session in its user's index (with its status) and the
    /// user as online; refused (`TooManySessions`) when the session is new
    /// to the user and the user is at the limit.
    pub(super) async fn add_to_user(&self, entry: UserEntry<'_>) -> Result<(), StoreError> {
        let user_id = entry.user_id;
        let UserSessionsPut(put) = self
            .run(PutUserSessions {
                entries: &[entry],
                max_sessions: self.limits.max_sessions_per_user,
            })
            .await?;
        let Some((added, turn)) = put.first().copied() else {
            return Err(StoreError::Internal("user_put.lua: no outcome".into()));
        };
        if added == UserSessionAdded::Full {
            return Err(StoreError::TooManySessions {
                limit: self.limits.max_sessions_per_user,
            });
        }
        if turn.before == UserStatus::Offline && turn.after != UserStatus::Offline {
            // Back online: no longer among the recently offline.
            let recent = self.keys.recent(shard_of(user_id));
            self.zrem_many(&recent, &[user_id.to_owned()]).await?;
        }
        self.record_users(&[(user_id, turn, 0)]).await;
        self.zadd_one(self.keys.online(shard_of(user_id)), None, None, 0, user_id)
            .await
    }

    /// Carries sessions' status changes into their users' indexes (a call
    /// per group of users' keys), and what they changed at the user level
    /// into the lifecycle stream.
    pub(super) async fn set_user_statuses(
        &self,
        entries: &[UserEntry<'_>],
    ) -> Vec<Result<(), StoreError>> {
        let keyed = entries
            .iter()
            .map(|e| (self.keys.user(e.user_id), *e))
            .collect();
        let batches = self.route.batches(keyed, |(key, _)| key, USER_CHUNK);
        let mut calls = Vec::new();
        for batch in batches {
            let entries: Vec<UserEntry<'_>> = batch.into_iter().map(|(_, e)| e).collect();
            calls.push(async move {
                let UserSessionsPut(put) = self
                    .run(PutUserSessions {
                        entries: &entries,
                        max_sessions: self.limits.max_sessions_per_user,
                    })
                    .await?;
                let turns: Vec<_> = entries
                    .iter()
                    .zip(put)
                    .map(|(e, (_, turn))| (e.user_id, turn, 0))
                    .collect();
                self.record_users(&turns).await;
                Ok(())
            });
        }
        bounded(calls).await
    }

    /// Appends the user-level events of `turns` (user, status before and
    /// after, last activity).
    async fn record_users(&self, turns: &[(&str, UserTurn, Millis)]) {
        let kinds = turns
            .iter()
            .filter_map(|(user, turn, seen)| {
                let user = UserId::new(user).ok()?;
                user_change(&user, turn.before, turn.after, *seen)
            })
            .collect();
        self.record(kinds).await;
    }

    /// Takes the session out of its user's index, and the user out of
    /// who's online when it was the last one.
    pub(super) async fn remove_from_user(&self, entry: UserSession<'_>) -> Result<(), StoreError> {
        first_error(self.remove_from_users(&[entry]).await)
    }

    /// [`remove_from_user`](Self::remove_from_user) for many sessions: a
    /// call per group of users' keys (one slot on a cluster), then the
    /// users left without a session out of who's online and into the
    /// recently offline, a call per shard. The outcome of each call.
    pub(super) async fn remove_from_users(
        &self,
        entries: &[UserSession<'_>],
    ) -> Vec<Result<(), StoreError>> {
        let now = self.now();
        let keyed = entries
            .iter()
            .map(|e| (self.keys.user(e.user_id), *e))
            .collect();
        let batches = self.route.batches(keyed, |(key, _)| key, USER_CHUNK);
        let mut calls = Vec::new();
        for batch in batches {
            let entries: Vec<UserSession<'_>> = batch.into_iter().map(|(_, e)| e).collect();
            calls.push(async move {
                let SessionsLeft(left) = self
                    .run(RemoveUserSessions {
                        entries: &entries,
                        now,
                        keep_ms: self.limits.last_seen_ttl_ms,
                    })
                    .await?;
                let mut emptied = Vec::new();
                let mut turns = Vec::new();
                for (e, l) in entries.iter().zip(left) {
                    if l.left == 0 {
                        emptied.push(e.user_id);
                    }
                    turns.push((e.user_id, l.turn, l.last_seen_at));
                }
                self.record_users(&turns).await;
                Ok::<_, StoreError>(emptied)
            });
        }
        let removed = bounded(calls).await;
        let mut outcomes = Vec::new();
        let mut emptied = BTreeSet::new();
        for r in removed {
            match r {
                Ok(users) => emptied.extend(users),
                Err(e) => outcomes.push(Err(e)),
            }
        }
        let emptied: Vec<&str> = emptied.into_iter().collect();
        let by_shard = by_shard(&emptied, |u| shard_of(u));
        let mut calls = Vec::new();
        for (shard, users) in &by_shard {
            for users in users.chunks(INDEX_CHUNK) {
                calls.push(self.unlist_users(*shard, users, now));
            }
        }
        outcomes.extend(bounded(calls).await);
        outcomes
    }

    /// Takes `users` (who have no session left) out of who's online shard
    /// `shard` and into the recently offline, and puts back any whose hello
    /// raced the removal.
    async fn unlist_users(
        &self,
        shard: u32,
        users: &[&str],
        now: Millis,
    ) -> Result<(), StoreError> {
        self.list_recent(shard, users, now).await?;
        let key = &self.keys.online(shard);
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        self.zrem_many(key, &users).await?;
        let mut checks = Vec::with_capacity(users.len());
        for user_id in &users {
            checks.push(async move {
                let user = &self.keys.user(user_id);
                let n: u64 = self
                    .route
                    .on_key(user, |c| async move { c.hlen(user).await })
                    .await?;
                Ok::<_, StoreError>((user_id, n))
            });
        }
        let counts: Vec<_> = futures::stream::iter(checks)
            .buffer_unordered(RECHECK_CONCURRENCY)
            .collect()
            .await;
        for r in counts {
            let (user_id, n) = r?;
            if n > 0 {
                self.zadd_one(key.clone(), None, None, 0, user_id).await?;
            }
        }
        Ok(())
    }

    /// Files `users` as gone offline at `now` in the recently-offline shard
    /// `shard`, and drops those offline for longer than last seen is kept.
    async fn list_recent(&self, shard: u32, users: &[&str], now: Millis) -> Result<(), StoreError> {
        let key = &self.keys.recent(shard);
        let entries: Vec<(f64, String)> =
            users.iter().map(|u| (now as f64, u.to_string())).collect();
        let entries = &entries;
        let oldest = (now - self.limits.last_seen_ttl_ms) as f64;
        self.route
            .on_key(key, |c| async move {
                let pipe = c.pipeline();
                let _: () = pipe
                    .zadd(key, None, None, false, false, entries.clone())
                    .await?;
                let _: () = pipe.zremrangebyscore(key, "-inf", oldest).await?;
                pipe.all::<()>().await
            })
            .await
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
        first_error(self.file_deadlines(&[(session, at)]).await)
    }

    /// [`file_deadline`](Self::file_deadline) for many sessions: a ZADD per
    /// shard (and per [`INDEX_CHUNK`] entries). The outcome of each call.
    pub(super) async fn file_deadlines(
        &self,
        entries: &[(&str, i64)],
    ) -> Vec<Result<(), StoreError>> {
        let by_shard = by_shard(entries, |(sid, _)| shard_of(sid));
        let mut calls = Vec::new();
        for (shard, entries) in &by_shard {
            for chunk in entries.chunks(INDEX_CHUNK) {
                calls.push(async move {
                    let key = &self.keys.deadlines(*shard);
                    let values: Vec<(f64, String)> = chunk
                        .iter()
                        .map(|(sid, at)| (*at as f64, sid.to_string()))
                        .collect();
                    let filed = self
                        .route
                        .on_key(key, |c| {
                            let values = values.clone();
                            async move {
                                c.zadd::<(), _, _>(key, None, None, false, false, values)
                                    .await
                            }
                        })
                        .await;
                    if filed.is_err() {
                        for (sid, _) in chunk {
                            self.forget_deadline(sid).await;
                        }
                    }
                    filed
                });
            }
        }
        bounded(calls).await
    }

    /// Takes back the session's note that it is filed in the deadline index
    /// (`ix`), after the index could not be told: its next write asks
    /// again. Best effort: the shard's master may be failing over too.
    async fn forget_deadline(&self, session: &str) {
        let key = &self.keys.session(session);
        let _ = self
            .route
            .on_key(key, |c| async move {
                c.hdel::<(), _, _>(key, field::INDEXED_AT).await
            })
            .await;
    }

    /// Takes the session out of the deadline index (it ended).
    pub(super) async fn unfile_deadline(&self, session: &str) -> Result<(), StoreError> {
        first_error(self.unfile_deadlines(&[session]).await)
    }

    /// [`unfile_deadline`](Self::unfile_deadline) for many sessions: a ZREM
    /// per shard (and per [`INDEX_CHUNK`] entries). The outcome of each call.
    pub(super) async fn unfile_deadlines(&self, sessions: &[&str]) -> Vec<Result<(), StoreError>> {
        let by_shard = by_shard(sessions, |sid| shard_of(sid));
        let mut calls = Vec::new();
        for (shard, sessions) in &by_shard {
            for chunk in sessions.chunks(INDEX_CHUNK) {
                calls.push(async move {
                    let key = &self.keys.deadlines(*shard);
                    let members: Vec<String> = chunk.iter().map(|s| s.to_string()).collect();
                    self.zrem_many(key, &members).await
                });
            }
        }
        bounded(calls).await
    }

    /// ZREM of `members` from the sorted set `key`.
    async fn zrem_many(&self, key: &str, members: &[String]) -> Result<(), StoreError> {
        self.route
            .on_key(key, |c| async move {
                c.zrem::<(), _, _>(key, members.to_vec()).await
            })
            .await
    }

    /// ZADD of one member.
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

/// `items` by the index shard `shard` puts each in.
fn by_shard<T: Copy>(items: &[T], shard: impl Fn(&T) -> u32) -> BTreeMap<u32, Vec<T>> {
    let mut out: BTreeMap<u32, Vec<T>> = BTreeMap::new();
    for item in items {
        out.entry(shard(item)).or_default().push(*item);
    }
    out
}
