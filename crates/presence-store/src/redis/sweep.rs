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

use super::keys::SHARDS;
use super::room_scripts::{Due, DueMembers, MemberEntry, PutKind, RemoveMember, SettleRoom};
use super::session_scripts::{Expire, Expiry};
use super::RedisStore;
use crate::api::SweepReport;
use crate::error::StoreError;

/// Sessions looked at per shard and sweep.
const SWEEP_BATCH: i64 = 512;
/// Sessions of one shard checked at once by a sweep.
const SWEEP_CONCURRENCY: usize = 32;
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
        let due = answered(due, &mut report)?;
        // Sessions are independent: check a batch of them at once, so that a
        // crashed node's many sessions all go close to their deadline rather
        // than one round trip after another. A fenced reply means a sweeper
        // with a newer term has been here: this one is no longer the leader
        // and stops (its calls still in flight are fenced as well).
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut next = due.iter().flatten();
        loop {
            while pending.len() < SWEEP_CONCURRENCY && report.fenced == 0 {
                let Some(sid) = next.next() else { break };
                pending.push(self.expire_alone(sid, now, term));
            }
            let Some(r) = pending.next().await else { break };
            let Some(r) = reachable(r, &mut report)? else {
                continue;
            };
            report.expired += r.expired;
            report.status_changes += r.status_changes;
            report.fenced += r.fenced;
        }
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

    /// Re-derives one session found due (in the deadline index, or as a
    /// member of `room` in its expiry index) and applies what follows:
    /// status changes, removal, the next entry in the deadline index.
    /// Says whether the session still holds `room`, and until when the
    /// room need not check again.
    async fn expire_one(
        &self,
        sid: &str,
        room: Option<&str>,
        now: Millis,
        term: u64,
        report: &mut SweepReport,
    ) -> Result<Held, StoreError> {
        let expiry = self
            .run(Expire {
                on: self.on(sid, now),
                room,
                term,
            })
            .await?;
        match expiry {
            Expiry::Fenced => {
                report.fenced += 1;
                Ok(Held::Fenced)
            }
            Expiry::Gone => {
                self.unfile_deadline(sid).await?;
                Ok(Held::No)
            }
            Expiry::Expired {
                version,
                user_id,
                dels,
            } => {
                self.remove_from_rooms(sid, version, &dels).await?;
                self.remove_from_user(&user_id, sid, version).await?;
                self.unfile_deadline(sid).await?;
                report.expired += 1;
                Ok(Held::No)
            }
            Expiry::Alive {
                changed,
                version,
                user_id,
                next,
                puts,
                in_room,
                check_at,
            } => {
                if changed {
                    self.put_rooms(sid, &user_id, version, PutKind::Status, &puts)
                        .await?;
                    report.status_changes += 1;
                }
                self.file_deadline(sid, Some(next)).await?;
                Ok(if in_room {
                    Held::Until(check_at)
                } else {
                    Held::No
                })
            }
        }
    }

    /// [`expire_one`](Self::expire_one) for a session found in the deadline
    /// index, with a report of its own (sweeps run several at once).
    async fn expire_alone(
        &self,
        sid: &str,
        now: Millis,
        term: u64,
    ) -> Result<SweepReport, StoreError> {
        let mut r = SweepReport::default();
        self.expire_one(sid, None, now, term, &mut r).await?;
        Ok(r)
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
            match self.expire_one(sid, Some(room), now, term, report).await? {
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
        let event = json!({
            "v": 1, "type": "expire", "roomId": room, "seq": "%SEQ%", "userId": member.user_id,
            "sessionId": sid, "nodeId": node_id, "epoch": epoch, "status": "offline", "ts": now,
        })
        .to_string()
        .replace("\"%SEQ%\"", "%SEQ%");
        let removed = self
            .run(RemoveMember {
                room,
                session: sid,
                version: member.version + 1,
                event: &event,
                pubsub: self.bus.mode(),
            })
            .await?;
        Ok(removed.seq.is_some())
    }
}
