//! One handler per `presence:*` event, and the connection's close.

use presence_core::{Activity, RoomId};
use std::sync::Arc;

use presence_store::{Hello, Removal, SessionRef, Signal, StoreError, Takeover};
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef};

use super::conn::{Bound, Conn};
use super::{answer, SocketContext};
use crate::acks::{Done, HeartbeatAck, HelloAck, RoomLeft, SessionEnded, SignalMsg, True};
use crate::fanout::Reply;
use crate::wire::{self, ErrorCode, Follow, WireError};

/// The store says a newer connection owns this connection's session: stop
/// sending this socket the session's rooms. `used` is the epoch the refused
/// call carried; if this connection holds another one by now (it re-created
/// its session meanwhile), the refusal is about the past and changes nothing.
/// (A lost session, `no_session`, stays bound: the next heartbeat revives it.)
fn on_store_error(
    cx: &SocketContext,
    conn: &Arc<Conn>,
    socket: &SocketRef,
    used: u64,
    e: StoreError,
) -> WireError {
    if let StoreError::StaleEpoch { current } = e {
        if let Some(b) = conn.unbind_superseded(used, current) {
            tracing::debug!(epoch = used, error = %e, "a newer connection owns the session; unbinding");
            cx.bindings.unbind(&b.session.session_id, used);
            cx.node.session_unbound();
            for room in b.rooms.keys() {
                cx.fanout.leave(room, socket.clone());
            }
        }
    }
    e.into()
}

pub(super) async fn hello(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let subject = conn.grant.as_ref().map(|g| &g.user_id);
        let req = wire::hello(&v, &cx.limits, subject)?;
        conn.begin_hello()?;
        let claimed = cx
            .store
            .hello(Hello {
                session_id: req.session_id,
                user_id: req.user_id.clone(),
                handle: req.handle.clone(),
                meta: req.meta.clone(),
                activity: req.activity,
                node_id: cx.node.id.clone(),
                declare: req.declare.clone(),
            })
            .await;
        let mut claimed = match claimed {
            Ok(c) => c,
            Err(e) => {
                conn.end_hello(None);
                return Err(e.into());
            }
        };
        // A resumed session keeps only the rooms this connection's token
        // grants: it may have joined others under an earlier token.
        let me = SessionRef {
            session_id: claimed.session_id.clone(),
            epoch: claimed.epoch,
        };
        let dropped = match drop_ungranted(cx, conn, &me, &mut claimed.rooms).await {
            Ok(dropped) => dropped,
            Err(e) => {
                conn.end_hello(None);
                return Err(e.into());
            }
        };
        let bound = conn.end_hello(Some(Bound {
            session: me,
            user_id: req.user_id.clone(),
            handle: req.handle,
            meta: req.meta,
            rooms: claimed.rooms.iter().map(|r| (r.clone(), None)).collect(),
            revived_from: None,
            restore: false,
            declare: req.declare,
            activity: (req.activity, tokio::time::Instant::now()),
        }));
        if let Some(prev) = &claimed.superseded {
            let t = Takeover {
                session_id: claimed.session_id.clone(),
                epoch: prev.epoch,
                current: claimed.epoch,
            };
            if prev.node_id == cx.node.id {
                superseded(cx, &t);
            } else if let Err(e) = cx.store.notify_takeover(&prev.node_id, &t).await {
                // Its next write is refused all the same (the store fences it).
                tracing::warn!(node_id = %prev.node_id, error = %e, "cannot tell a node that its connection was superseded");
            }
        }
        if bound {
            cx.node.session_bound();
            cx.bindings
                .bind(&claimed.session_id, &req.user_id, claimed.epoch, conn, &socket);
            cx.coordinator
                .session_opened(&req.user_id, &claimed.session_id, claimed.resumed);
        }
        tracing::debug!(session_id = %claimed.session_id, user_id = %req.user_id, epoch = claimed.epoch, resumed = claimed.resumed, "hello");
        Ok::<_, WireError>((claimed, req.user_id, dropped))
    }
    .await;
    match r {
        Ok((claimed, user_id, dropped)) => {
            answer(
                ack,
                "presence:hello",
                Ok(HelloAck {
                    ok: True,
                    session_id: &claimed.session_id,
                    user_id: &user_id,
                    epoch: claimed.epoch,
                    resumed: claimed.resumed,
                    rooms: &claimed.rooms,
                    dropped_rooms: &dropped,
                    node_id: &cx.node.id,
                    config: &cx.timings,
                    limits: &cx.limits,
                }),
            );
            // A resumed session is still in its rooms: send their snapshots.
            // Queued under the connection's lock, while it still holds this
            // epoch: a takeover that unbinds it either comes first (no
            // snapshot, no room) or after (its leaves follow these joins).
            conn.with_bound(|b| {
                if b.session.epoch == claimed.epoch {
                    for room in &claimed.rooms {
                        let me = SessionRef {
                            session_id: claimed.session_id.clone(),
                            epoch: claimed.epoch,
                        };
                        let reply = Reply::Snapshot(me);
                        cx.fanout
                            .join(room, socket.clone(), reply, 0, Follow::default());
                    }
                }
            });
            false
        }
        Err(e) => answer::<Done>(ack, "presence:hello", Err(e)),
    }
}

/// Leaves the rooms of a resumed session that this connection's grant does
/// not cover (observers see it leave them); returns them. Without token auth
/// every room is granted.
async fn drop_ungranted(
    cx: &SocketContext,
    conn: &Arc<Conn>,
    me: &SessionRef,
    rooms: &mut Vec<RoomId>,
) -> Result<Vec<RoomId>, StoreError> {
    let Some(grant) = &conn.grant else {
        return Ok(Vec::new());
    };
    let (kept, dropped): (Vec<RoomId>, Vec<RoomId>) =
        rooms.drain(..).partition(|r| grant.rooms.allows(r));
    *rooms = kept;
    for room in &dropped {
        match cx.store.leave(me, room).await {
            Ok(()) | Err(StoreError::NotJoined(_)) => {}
            Err(e) => return Err(e),
        }
        tracing::debug!(session_id = %me.session_id, room_id = %room, "left a room the new token does not grant");
    }
    Ok(dropped)
}

/// Refuses a write or a delivery into a room the connection's token does
/// not grant.
fn check_grant(conn: &Arc<Conn>, room: &RoomId) -> Result<(), WireError> {
    match &conn.grant {
        Some(g) if !g.rooms.allows(room) => Err(WireError::new(
            ErrorCode::ForbiddenRoom,
            format!("your token does not grant room {room}"),
        )),
        _ => Ok(()),
    }
}

pub(super) async fn join(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let req = wire::join(&v, &cx.limits)?;
        let b = conn.bound()?;
        check_grant(conn, &req.room_id)?;
        let joined = cx
            .store
            .join(&b.session, &req.room_id, req.state.clone())
            .await
            .map_err(|e| on_store_error(cx, conn, &socket, b.session.epoch, e))?;
        tracing::debug!(session_id = %b.session.session_id, room_id = %req.room_id, "join");
        Ok((req.room_id, req.state, b.session, joined.seq, req.follow))
    }
    .await;
    let (room, state, me, seq, follow) = match r {
        Ok(joined) => joined,
        Err(e) => return answer::<Done>(ack, "presence:join", Err(e)),
    };
    // The hub answers with the snapshot, then adds the socket to the room.
    // Queued under the connection's lock while it is still bound at this
    // epoch: a takeover either comes first (then no room for this socket:
    // `stale_epoch`) or after (and its leave follows this join).
    let mut reply = Some(Reply::JoinAck(ack, me.clone()));
    conn.with_bound(|bound| {
        if bound.session.epoch != me.epoch {
            return;
        }
        let known = bound.rooms.entry(room.clone()).or_default();
        if state.is_some() {
            *known = state;
        }
        if let Some(reply) = reply.take() {
            cx.fanout.join(&room, socket, reply, seq, follow);
        }
    });
    let Some(Reply::JoinAck(ack, _)) = reply else {
        crate::metrics::request("presence:join", "ok");
        return false;
    };
    // Unbound or taken over meanwhile: the join is no longer this connection's.
    let e = conn
        .bound()
        .err()
        .unwrap_or_else(|| StoreError::StaleEpoch { current: me.epoch }.into());
    answer::<Done>(ack, "presence:join", Err(e))
}

/// `presence:members`: a page of a room the socket is in, answered by the
/// room's hub between two diffs.
pub(super) fn members(
    cx: &SocketContext,
    conn: &Arc<Conn>,
    socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let event = "presence:members";
    match in_room(conn, wire::members(&v), |r| &r.room_id) {
        Ok(req) => {
            crate::metrics::request(event, "ok");
            cx.fanout
                .page(&req.room_id, socket, ack, req.after, req.limit);
            false
        }
        Err(e) => answer::<Done>(ack, event, Err(e)),
    }
}

/// `presence:watch`: the users a socket watches in a room, from now on.
pub(super) fn watch(
    cx: &SocketContext,
    conn: &Arc<Conn>,
    socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let event = "presence:watch";
    match in_room(conn, wire::watch(&v, &cx.limits), |r| &r.room_id) {
        Ok(req) => {
            crate::metrics::request(event, "ok");
            cx.fanout.watch(&req.room_id, socket, ack, req.users);
            false
        }
        Err(e) => answer::<Done>(ack, event, Err(e)),
    }
}

/// A decoded request about a room, from a connection that holds a session
/// and whose token grants the room (whether it is in the room, the hub knows).
fn in_room<R>(
    conn: &Arc<Conn>,
    req: Result<R, WireError>,
    room: impl Fn(&R) -> &RoomId,
) -> Result<R, WireError> {
    let req = req?;
    conn.bound()?;
    check_grant(conn, room(&req))?;
    Ok(req)
}

/// Re-creates a lost session with the same id, user and rooms (with the
/// states this connection set). Returns the new epoch.
async fn revive(
    cx: &SocketContext,
    conn: &Arc<Conn>,
    socket: &SocketRef,
    b: Bound,
    activity: Option<Activity>,
) -> Result<u64, StoreError> {
    conn.begin_revival()?;
    let old = b.session.clone();
    let user = b.user_id.clone();
    let r = revive_now(cx, conn, b, activity).await;
    conn.end_revival(r.is_ok());
    if matches!(r, Err(StoreError::Kicked)) {
        // Lost because a backend ended it: not to be re-created.
        cx.bindings.unbind(&old.session_id, old.epoch);
        close_kicked(cx, conn, socket.clone());
    }
    if let Ok(epoch) = r {
        // The re-created session is held at its new epoch. (Its claim names
        // this very connection as the one it took over: nothing to unbind.)
        cx.bindings.unbind(&old.session_id, old.epoch);
        cx.bindings
            .bind(&old.session_id, &user, epoch, conn, socket);
    }
    r
}

async fn revive_now(
    cx: &SocketContext,
    conn: &Arc<Conn>,
    b: Bound,
    activity: Option<Activity>,
) -> Result<u64, StoreError> {
    let claimed = cx
        .store
        .hello(Hello {
            session_id: Some(b.session.session_id.clone()),
            user_id: b.user_id.clone(),
            handle: b.handle.clone(),
            meta: b.meta.clone(),
            activity: activity.unwrap_or(Activity::Active),
            node_id: cx.node.id.clone(),
            declare: b.declare.clone(),
        })
        .await?;
    let b = conn
        .with_bound(|bound| {
            bound.revived_from = Some(b.session.epoch);
            bound.session.epoch = claimed.epoch;
            bound.restore = true;
            bound.clone()
        })
        .ok_or(StoreError::NoSession)?;
    restore_rooms(cx, conn, &b).await?;
    tracing::info!(session_id = %b.session.session_id, epoch = b.session.epoch, rooms = b.rooms.len(), "session re-created after the store lost it");
    Ok(b.session.epoch)
}

/// Re-joins the rooms of a re-created session (with the states this
/// connection set). Until it succeeds, every heartbeat tries again.
async fn restore_rooms(cx: &SocketContext, conn: &Arc<Conn>, b: &Bound) -> Result<(), StoreError> {
    for (room, state) in &b.rooms {
        cx.store.join(&b.session, room, state.clone()).await?;
    }
    conn.with_bound(|bound| {
        if bound.session.epoch == b.session.epoch {
            bound.restore = false;
        }
    });
    Ok(())
}

pub(super) async fn heartbeat(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let req = wire::heartbeat(&v)?;
        let (me, restore) = conn.session_at(req.epoch)?;
        let revived = match cx.store.heartbeat(&me, req.activity).await {
            Ok(()) if !restore => {
                back_to_activity(cx, conn, req.activity);
                return Ok(HeartbeatAck {
                    ok: True,
                    epoch: me.epoch,
                    revived: false,
                });
            }
            Ok(()) => {
                let b = conn.bound()?;
                restore_rooms(cx, conn, &b).await.map(|()| b.session.epoch)
            }
            // The store lost the session while this connection is alive (Redis
            // restarted empty, or it was culled while the client was silent),
            // or a re-creation's answer was lost: (re-)create it.
            Err(StoreError::NoSession) => {
                revive(cx, conn, &socket, conn.bound()?, req.activity).await
            }
            Err(StoreError::StaleEpoch { .. }) if conn.revival_unconfirmed() => {
                revive(cx, conn, &socket, conn.bound()?, req.activity).await
            }
            Err(e) => Err(e),
        };
        let epoch = revived.map_err(|e| on_store_error(cx, conn, &socket, me.epoch, e))?;
        Ok(HeartbeatAck {
            ok: True,
            epoch,
            revived: true,
        })
    }
    .await;
    answer(ack, "presence:heartbeat", r)
}

/// After an accepted heartbeat: a client that reports `active` after
/// another activity, or after long enough for its session to have turned
/// idle, may have made its user reachable now (the intents waiting for them
/// are checked); a quiet heartbeat checks nothing.
fn back_to_activity(cx: &Arc<SocketContext>, conn: &Arc<Conn>, reported: Option<Activity>) {
    let Some(now_reported) = reported else {
        return;
    };
    let idle_after = std::time::Duration::from_millis(cx.timings.idle_after_ms.max(0) as u64);
    let back = conn.with_bound(|b| {
        let (before, active_at) = b.activity;
        let now = tokio::time::Instant::now();
        let back = now_reported == Activity::Active
            && (before != Activity::Active || now.duration_since(active_at) >= idle_after);
        b.activity = match now_reported {
            Activity::Active => (Activity::Active, now),
            other => (other, active_at),
        };
        back.then(|| b.user_id.clone())
    });
    if let Some(Some(user)) = back {
        cx.coordinator.check_user_soon(&user);
    }
}

pub(super) async fn state(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let req = wire::state(&v, &cx.limits)?;
        let b = conn.bound_at(req.epoch)?;
        check_grant(conn, &req.room_id)?;
        cx.store
            .update_state(&b.session, &req.room_id, req.patch.clone())
            .await
            .map_err(|e| on_store_error(cx, conn, &socket, b.session.epoch, e))?;
        // What this connection set is kept, to restore a lost session with.
        conn.with_bound(|bound| {
            if let Some(known) = bound.rooms.get_mut(&req.room_id) {
                *known = presence_core::state::merge(known.take(), req.patch);
            }
        });
        Ok(Done { ok: True })
    }
    .await;
    answer(ack, "presence:state", r)
}

pub(super) async fn signal(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let req = wire::signal(&v, &cx.limits)?;
        let b = conn.bound()?;
        check_grant(conn, &req.room_id)?;
        if !b.rooms.contains_key(&req.room_id) {
            return Err(WireError::new(
                ErrorCode::NotJoined,
                format!("session is not in room {}", req.room_id),
            ));
        }
        if conn.signals.check().is_err() {
            return Err(WireError::new(
                ErrorCode::RateLimited,
                "too many signals; slow down",
            ));
        }
        let signal = Signal {
            room_id: req.room_id,
            session_id: b.session.session_id,
            user_id: b.user_id,
            node_id: cx.node.id.clone(),
            data: req.data,
        };
        if let Err(e) = socket
            .to(signal.room_id.as_str().to_owned())
            .emit("presence:signal", &SignalMsg::from(&signal))
            .await
        {
            tracing::debug!(error = %e, "signal relay failed");
        }
        // The room's sockets on other nodes get it through Redis.
        cx.store.publish_signal(&signal).await?;
        Ok(Done { ok: True })
    }
    .await;
    answer(ack, "presence:signal", r)
}

pub(super) async fn leave(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let req = match wire::leave(&v) {
        Ok(req) => req,
        Err(e) => return answer::<Done>(ack, "presence:leave", Err(e)),
    };
    match req.room_id {
        Some(room) => {
            let r = async {
                let b = conn.bound()?;
                cx.store
                    .leave(&b.session, &room)
                    .await
                    .map_err(|e| on_store_error(cx, conn, &socket, b.session.epoch, e))?;
                conn.with_bound(|bound| bound.rooms.remove(&room));
                cx.fanout.leave(&room, socket.clone());
                Ok(())
            }
            .await;
            let r = r.map(|()| RoomLeft {
                ok: True,
                room_id: &room,
            });
            answer(ack, "presence:leave", r)
        }
        None => {
            let r = async {
                let b = conn.bound()?;
                let left = cx
                    .store
                    .end(&b.session)
                    .await
                    .map_err(|e| on_store_error(cx, conn, &socket, b.session.epoch, e))?;
                if conn.unbind().is_some() {
                    cx.bindings.unbind(&b.session.session_id, b.session.epoch);
                    cx.node.session_unbound();
                }
                for room in b.rooms.keys() {
                    cx.fanout.leave(room, socket.clone());
                }
                cx.coordinator
                    .session_ended(&b.user_id, &b.session.session_id);
                tracing::debug!(session_id = %b.session.session_id, "session ended");
                Ok(left)
            }
            .await;
            match r {
                Ok(left) => answer(
                    ack,
                    "presence:leave",
                    Ok(SessionEnded {
                        ok: True,
                        rooms: &left,
                    }),
                ),
                Err(e) => answer::<Done>(ack, "presence:leave", Err(e)),
            }
        }
    }
}

pub(super) async fn disconnect(cx: &Arc<SocketContext>, conn: &Arc<Conn>, socket: SocketRef) {
    crate::metrics::connection_closed();
    let Some(b) = conn.unbind() else { return };
    cx.bindings.unbind(&b.session.session_id, b.session.epoch);
    cx.node.session_unbound();
    for room in b.rooms.keys() {
        cx.fanout.leave(room, socket.clone());
    }
    if cx.node.draining() {
        // This node closed the connection to shut down and asked the client
        // to reconnect elsewhere: the session stays as it is (no stale
        // flicker for observers) and resumes there, or decays if it never
        // comes back.
        tracing::debug!(session_id = %b.session.session_id, "closed for shutdown; left for the client to resume");
        return;
    }
    // Not a leave: the session turns stale and can be resumed within the
    // grace window. Refused (and harmless) if a newer connection owns it.
    match cx.store.disconnect(&b.session).await {
        Ok(()) => {
            tracing::debug!(session_id = %b.session.session_id, epoch = b.session.epoch, "disconnected; kept for the grace window")
        }
        Err(e) => {
            tracing::debug!(session_id = %b.session.session_id, error = %e, "disconnect not applied")
        }
    }
}

/// A newer connection took over a session that a connection of this node
/// holds (`t.epoch`): unbind that connection now, take it out of the
/// session's rooms (no more diffs or signals), and tell its client. Its
/// writes answer `stale_epoch` from now on.
pub fn superseded(cx: &Arc<SocketContext>, t: &Takeover) {
    cx.store.superseded_elsewhere(t);
    let Some((conn, socket)) = cx.bindings.take(&t.session_id, t.epoch) else {
        return;
    };
    let Some(b) = conn.supersede(t.epoch, t.current) else {
        return;
    };
    tracing::debug!(session_id = %t.session_id, epoch = t.epoch, current = t.current, "superseded by a newer connection; unbinding");
    crate::metrics::request("takeover", "superseded");
    cx.node.session_unbound();
    for room in b.rooms.keys() {
        cx.fanout.leave(room, socket.clone());
    }
    let e = WireError::from(StoreError::StaleEpoch { current: t.current });
    socket.emit("presence:error", &e).ok();
    // It holds no session now: it must say hello again in time.
    super::watch_hello(cx, &conn, &socket);
}

/// Closes a connection whose session the moderation API ended: it is told
/// `kicked` first.
fn close_kicked(cx: &SocketContext, conn: &Arc<Conn>, socket: SocketRef) {
    let Some(b) = conn.unbind() else { return };
    tracing::info!(session_id = %b.session.session_id, user_id = %b.user_id, "session ended by the moderation API; closing its connection");
    crate::metrics::request("moderation", "kicked");
    cx.node.session_unbound();
    for room in b.rooms.keys() {
        cx.fanout.leave(room, socket.clone());
    }
    cx.coordinator
        .session_ended(&b.user_id, &b.session.session_id);
    socket
        .emit("presence:error", &WireError::from(StoreError::Kicked))
        .ok();
    socket.disconnect().ok();
}

/// A backend ended a session that a connection of this node holds, or took
/// it out of a room (the moderation API; the store has done it already).
/// Ended: the connection is told `kicked` and closed. Out of a room: the
/// socket leaves the room (no more diffs or signals) and is told
/// `presence:removed`; a new join brings it back.
pub fn removed(cx: &Arc<SocketContext>, r: &Removal) {
    let Some((conn, socket, epoch)) = cx.bindings.holder(&r.session_id) else {
        return;
    };
    match &r.room_id {
        None => {
            cx.bindings.unbind(&r.session_id, epoch);
            close_kicked(cx, &conn, socket);
        }
        Some(room) => {
            let held = conn.with_bound(|b| b.rooms.remove(room).is_some());
            if held != Some(true) {
                return;
            }
            tracing::info!(session_id = %r.session_id, room_id = %room, "removed from a room by the moderation API");
            crate::metrics::request("moderation", "removed");
            cx.fanout.leave(room, socket.clone());
            socket
                .emit("presence:removed", &crate::acks::Removed::new(room))
                .ok();
        }
    }
}
