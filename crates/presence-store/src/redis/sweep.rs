//! The reaper's sweep and the repairs it makes.
//!
//! Expiry is found through two indexes, never by scanning keys. The deadline
//! index drives every session's status changes and its removal (which takes
//! it out of each room its hash lists). The rooms' expiry indexes are the
//! backstop for what the session's hash can no longer tell: a member whose
//! session hash vanished (its TTL ran out while no node swept, say) or whose
//! removal never reached the room (its node died between the two writes).
//! Each entry comes due a while after the member's removal deadline; the
//! sweeper then checks the session and removes the member or files it again.
//!
//! Every step carries the sweeper's lease term; a session swept by a higher
//! term refuses a lower one (`Fenced`), and the sweep stops at the first
//! refusal: its node is no longer the leader.

use fred::prelude::*;
use fred::types::sorted_sets::Ordering;
use futures::StreamExt;
use presence_core::Millis;
use serde_json::json;

use super::index_scripts::{UserEntry, UserSession};
use super::keys::SHARDS;
use super::room_scripts::{
    Due, DueMembers, MemberEntry, MemberRemoval, MemberUpdate, MembersRemoved, PutKind,
    RemoveMembers, SettleRoom,
};
use super::session_scripts::{Expire, Expiries, Expiry};
use super::RedisStore;
use crate::api::SweepReport;
use crate::error::StoreError;

/// Sessions looked at per shard and sweep.
const SWEEP_BATCH: i64 = 512;
/// Sessions per `expire.lua` call: a few hundred microseconds of Redis
/// time per call, and a dead node's sessions cost a call per batch.
const CULL_BATCH: usize = 32;
/// `expire.lua` calls of one sweep in flight at once.
const SWEEP_CONCURRENCY: usize = 8;
/// Rooms looked at per shard and sweep, and members per room.
const ROOM_BATCH: i64 = 128;

/// Whether a session still holds a room, as a sweep found it.
enum Held {
    /// Yes; the room checks again at this time.
    Until(i64),
    /// No: gone, removed, or the room never heard that it left.
    No,
    /// Not known: a sweeper with a higher term owns the session now.
    Fenced,
}

/// The shards that answered. A shard whose master does not answer (a
/// Redis Cluster failover) waits for the next sweep; only when none
/// answers does the sweep fail.
fn answered<T>(
    reads: Vec<Result<T, StoreError>>,
    report: &mut SweepReport,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::with_capacity(reads.len());
    let mut first_error = None;
    for r in reads {
        match r {
            Ok(v) => out.push(v),
            Err(e) => {
                report.skipped += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// A step's outcome, or `None` when its part of Redis did not answer (left
/// for the next sweep and counted); other errors end the sweep.
fn reachable<T>(
    r: Result<T, StoreError>,
    report: &mut SweepReport,
) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::Unavailable(_)) => {
            report.skipped += 1;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl RedisStore {
    /// One sweep (see [`PresenceStore::sweep`](crate::PresenceStore::sweep)).
    pub(super) async fn sweep_at(&self, now: Millis, term: u64) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        // The shards of each index are read at once: an idle sweep costs two
        // round trips, not one per shard.
        let due = self
            .route
            .on_each(
                (0..SHARDS).map(|s| self.keys.deadlines(s)),
                |c, key| async move {
                    c.zrangebyscore::<Vec<String>, _, _, _>(
                        key,
                        "-inf",
                        now as f64,
                        false,
                        Some((0, SWEEP_BATCH)),
                    )
                    .await
                },
            )
            .await;
        let due: Vec<String> = answered(due, &mut report)?.into_iter().flatten().collect();
        self.cull(&due, now, term, &mut report).await?;
        if report.fenced > 0 {
            return Ok(report);
        }
        let due = self
            .route
            .on_each(
                (0..SHARDS).map(|s| self.keys.rooms_due(s)),
                |c, key| async move {
                    c.zrangebyscore::<Vec<(String, f64)>, _, _, _>(
                        key,
                        "-inf",
                        now as f64,
                        true,
                        Some((0, ROOM_BATCH)),
                    )
                    .await
                },
            )
            .await
            .into_iter()
            .zip(0..SHARDS)
            .map(|(rooms, shard)| rooms.map(|r| (shard, r)))
            .collect();
        for (shard, rooms) in answered(due, &mut report)? {
            for (room, seen) in rooms {
                let swept = self
                    .sweep_room(shard, &room, seen as i64, now, term, &mut report)
                    .await;
                reachable(swept, &mut report)?;
                if report.fenced > 0 {
                    return Ok(report);
                }
            }
        }
        Ok(report)
    }

    /// Re-derives the sessions found due in the deadline index and applies
    /// what follows, in bulk: `expire.lua` takes a batch of sessions per
    /// call (grouped by slot on a cluster), several batches at once; then
    /// the status changes and removals go to the rooms a call per room, the
    /// removed sessions out of their users a call per group of users, and
    /// the deadline index is told a call per shard. A dead node's sessions
    /// thus cost a few calls per hundred, not several each.
    ///
    /// A fenced batch (a sweeper with a newer term has been at one of its
    /// sessions; `expire.lua` stops there and answers for the sessions up
    /// to it only) means this node is no longer the leader: no batch starts
    /// after it, and what it and the batches before it changed is still
    /// carried into the rooms, the users and the index.
    async fn cull(
        &self,
        due: &[String],
        now: Millis,
        term: u64,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let keyed = due
            .iter()
            .map(|sid| (self.keys.session(sid), sid.as_str()))
            .collect();
        let batches = self.route.batches(keyed, |(key, _)| key, CULL_BATCH);
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut next = batches.into_iter();
        let mut found: Vec<(&str, Expiry)> = Vec::new();
        loop {
            while pending.len() < SWEEP_CONCURRENCY && report.fenced == 0 {
                let Some(batch) = next.next() else { break };
                pending.push(async move {
                    let sessions: Vec<&str> = batch.iter().map(|(_, sid)| *sid).collect();
                    let r = self
                        .run(Expire {
                            sessions: &sessions,
                            now,
                            timings: &self.timings,
                            room: None,
                            term,
                        })
                        .await;
                    r.map(|Expiries(e)| sessions.into_iter().zip(e).collect::<Vec<_>>())
                });
            }
            let Some(r) = pending.next().await else { break };
            let Some(outcomes) = reachable(r, report)? else {
                continue;
            };
            for (sid, e) in outcomes {
                if matches!(e, Expiry::Fenced) {
                    report.fenced += 1;
                } else {
                    found.push((sid, e));
                }
            }
        }
        self.apply_expiries(&found, report).await
    }

    /// Carries what `expire.lua` found for many sessions into the rooms, the
    /// users and the deadline index (see [`cull`](Self::cull)). Rooms go
    /// first and the index last, as for a single session.
    async fn apply_expiries(
        &self,
        found: &[(&str, Expiry)],
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let (mut puts, mut dels, mut users) = (Vec::new(), Vec::new(), Vec::new());
        let mut statuses = Vec::new();
        let (mut file, mut unfile) = (Vec::new(), Vec::new());
        for (sid, e) in found {
            let sid = *sid;
            match e {
                Expiry::Fenced => {}
                Expiry::Gone => unfile.push(sid),
                Expiry::Expired {
                    version,
                    user_id,
                    dels: rooms,
                    last_active_at,
                } => {
                    dels.extend(rooms.iter().map(|d| {
                        (
                            d.room.as_str(),
                            MemberRemoval {
                                session: sid,
                                version: *version,
                                event: &d.event,
                            },
                        )
                    }));
                    users.push(UserSession {
                        user_id,
                        session: sid,
                        version: *version,
                        last_active_at: *last_active_at,
                    });
                    unfile.push(sid);
                    report.expired += 1;
                }
                Expiry::Alive {
                    changed,
                    version,
                    user_id,
                    next,
                    puts: rooms,
                    status,
                    last_active_at,
                    ..
                } => {
                    if let (true, Some(status)) = (*changed, status) {
                        statuses.push(UserEntry {
                            user_id,
                            session: sid,
                            version: *version,
                            status: *status,
                            last_active_at: *last_active_at,
                            add: false,
                        });
                    }
                    if *changed {
                        puts.extend(rooms.iter().map(|put| MemberUpdate {
                            session: sid,
                            user_id,
                            version: *version,
                            kind: PutKind::Status,
                            put,
                        }));
                        report.status_changes += 1;
                    }
                    file.push((sid, *next));
                }
            }
        }
        let mut outcomes = self.put_many(&puts).await;
        outcomes.extend(self.remove_many(&dels).await);
        outcomes.extend(self.set_user_statuses(&statuses).await);
        outcomes.extend(self.remove_from_users(&users).await);
        outcomes.extend(self.file_deadlines(&file).await);
        outcomes.extend(self.unfile_deadlines(&unfile).await);
        for r in outcomes {
            reachable(r, report)?;
        }
        Ok(())
    }

    /// Re-derives one session found as a member of `room` in the room's
    /// expiry index and applies what follows (see [`cull`](Self::cull) for
    /// the sessions of the deadline index). Says whether the session still
    /// holds `room`, and until when the room need not check again.
    async fn expire_one(
        &self,
        sid: &str,
        room: &str,
        now: Millis,
        term: u64,
        report: &mut SweepReport,
    ) -> Result<Held, StoreError> {
        let Expiries(mut found) = self
            .run(Expire {
                sessions: &[sid],
                now,
                timings: &self.timings,
                room: Some(room),
                term,
            })
            .await?;
        let Some(expiry) = found.pop() else {
            return Err(StoreError::Internal("expire.lua: no outcome".into()));
        };
        let held = match &expiry {
            Expiry::Fenced => {
                report.fenced += 1;
                return Ok(Held::Fenced);
            }
            Expiry::Alive {
                in_room: true,
                check_at,
                ..
            } => Held::Until(*check_at),
            _ => Held::No,
        };
        let mut applied = SweepReport::default();
        self.apply_expiries(&[(sid, expiry)], &mut applied).await?;
        if applied.skipped > 0 {
            // Not all of it landed: the room checks this member again later.
            return Err(StoreError::Unavailable("a projection did not land".into()));
        }
        report.expired += applied.expired;
        report.status_changes += applied.status_changes;
        Ok(held)
    }

    /// Checks the due members of one room (see room_due.lua) and moves the
    /// room's entry in the rooms-by-deadline index (see rooms_settle.lua).
    async fn sweep_room(
        &self,
        shard: u32,
        room: &str,
        seen: i64,
        now: Millis,
        term: u64,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let Due(due) = self
            .run(DueMembers {
                room,
                now,
                limit: ROOM_BATCH,
            })
            .await?;
        for (sid, entry) in &due {
            match self.expire_one(sid, room, now, term, report).await? {
                Held::Until(at) => self.refile_member(room, sid, at).await?,
                Held::No => {
                    if self.drop_member(room, sid, entry, now).await? {
                        report.orphans += 1;
                    }
                }
                // A newer sweeper owns it: leave the room to that one.
                Held::Fenced => return Ok(()),
            }
        }
        // Move the room's entry to its earliest member, then look again: a
        // member filed meanwhile lowers it back (rooms_settle.lua says why).
        let earliest = self.earliest_in_room(room).await?;
        self.run(SettleRoom {
            shard,
            room,
            seen,
            earliest,
        })
        .await?;
        if let Some(again) = self.earliest_in_room(room).await? {
            if earliest.is_none_or(|e| again < e) {
                self.list_room(room, again, false).await?;
            }
        }
        Ok(())
    }

    /// The earliest entry of a room's expiry index.
    async fn earliest_in_room(&self, room: &str) -> Result<Option<i64>, StoreError> {
        let key = &self.keys.room(room).expiry;
        let first: Vec<(String, f64)> = self
            .route
            .on_key(key, |c| async move {
                c.zrange(key, 0, 0, None, false, None, true).await
            })
            .await?;
        Ok(first.first().map(|(_, score)| *score as i64))
    }

    /// Files a live member again in its room's expiry index (only later, and
    /// only while it is a member).
    async fn refile_member(&self, room: &str, sid: &str, at: i64) -> Result<(), StoreError> {
        self.zadd_one(
            self.keys.room(room).expiry,
            Some(SetOptions::XX),
            Some(Ordering::GreaterThan),
            at,
            sid,
        )
        .await
    }

    /// Removes a member its session no longer holds, unless the room has
    /// heard from the session since `entry` was read (room_del.lua applies a
    /// removal only over an older projection). Observers get an `expire`.
    async fn drop_member(
        &self,
        room: &str,
        sid: &str,
        entry: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let Some(member) = MemberEntry::parse(entry) else {
            return Err(StoreError::Internal(format!(
                "unreadable member of room {room}: {entry}"
            )));
        };
        let (epoch, node_id) = member
            .projection()
            .map(|p| (p.epoch, p.node_id))
            .unwrap_or_default();
        // Left open for room_del.lua to close with the room's seq.
        let mut event = json!({
            "v": 1, "type": "expire", "roomId": room, "userId": member.user_id,
            "sessionId": sid, "nodeId": node_id, "epoch": epoch, "status": "offline", "ts": now,
        })
        .to_string();
        event.pop();
        let member = [MemberRemoval {
            session: sid,
            version: member.version + 1,
            event: &event,
        }];
        let removed: MembersRemoved = self
            .run(RemoveMembers {
                room,
                members: &member,
                pubsub: self.bus.mode(),
            })
            .await?;
        self.record_room_removals(room, &removed).await;
        Ok(removed.seqs.first().is_some_and(Option::is_some))
    }
}
