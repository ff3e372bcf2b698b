//! The handlers of readiness and coordination: `presence:readiness`,
//! `presence:reachability`, `presence:intent`, `presence:intent_cancel`.
//!
//! Who may ask about whom: a user may ask about a user they share a room
//! with (a room the asking session is in, and one of the other user's
//! sessions is in), about themselves, and about the users their token's
//! `reach` claim names. Anyone else is `forbidden`, whether or not they are
//! online (the answer does not tell).

use std::sync::Arc;

use presence_core::UserId;
use presence_store::UserSession;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef};

use super::conn::{Bound, Conn};
use super::{answer, SocketContext};
use crate::acks::{Done, IntentAck, ReachAck, True};
use crate::wire::{self, ErrorCode, WireError};

pub(super) async fn readiness(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    _socket: SocketRef,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let d = wire::readiness(&v, &cx.limits)?;
        let b = conn.bound()?;
        let changed = cx.store.declare(&b.session, &d).await?;
        conn.with_bound(|bound| {
            if let Some(r) = d.readiness {
                bound.declare.readiness = Some(r);
            }
            if let Some(c) = &d.capabilities {
                bound.declare.capabilities = Some(c.clone());
            }
        });
        if changed {
            cx.coordinator.check_user_soon(&b.user_id);
        }
        Ok(Done { ok: True })
    }
    .await;
    answer(ack, "presence:readiness", r)
}

/// Whether the session `b` may ask about a user whose sessions are
/// `theirs` (see the module's doc).
fn may_see(conn: &Conn, b: &Bound, user: &UserId, theirs: &[UserSession]) -> bool {
    *user == b.user_id
        || conn
            .grant
            .as_ref()
            .is_some_and(|g| g.reach.allows_id(user.as_str()))
        || theirs
            .iter()
            .any(|s| s.rooms.iter().any(|r| b.rooms.contains_key(r)))
}

fn forbidden(user: &UserId) -> WireError {
    WireError::new(
        ErrorCode::Forbidden,
        format!(
            "you share no room with {user} and your token does not grant reaching them (reach)"
        ),
    )
}

pub(super) async fn reachability(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let req = wire::reachability(&v, &cx.limits)?;
        let b = conn.bound()?;
        let (reach, theirs) = cx.coordinator.reach(&req.user_id, &req.need).await?;
        if !may_see(conn, &b, &req.user_id, &theirs) {
            return Err(forbidden(&req.user_id));
        }
        Ok(ReachAck::new(req.user_id, req.need, reach))
    }
    .await;
    answer(ack, "presence:reachability", r)
}

pub(super) async fn intent(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let req = wire::intent(&v, &cx.limits)?;
        let b = conn.bound()?;
        if req.user_id == b.user_id {
            return Err(WireError::bad("userId", "is your own user"));
        }
        let theirs = cx.store.user_sessions(&req.user_id).await?;
        if !may_see(conn, &b, &req.user_id, &theirs) {
            return Err(forbidden(&req.user_id));
        }
        let intent =
            cx.coordinator
                .intent(b.user_id.clone(), Some(b.session.session_id.clone()), req);
        cx.coordinator.make(intent.clone()).await?;
        Ok(IntentAck::of(&intent))
    }
    .await;
    answer(ack, "presence:intent", r)
}

pub(super) async fn cancel(
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    v: Value,
    ack: AckSender,
) -> bool {
    let r = async {
        let id = wire::intent_id(&v)?;
        let b = conn.bound()?;
        if !cx.coordinator.cancel(&b.user_id, &id).await? {
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!("you have no waiting intent {id}"),
            ));
        }
        Ok(Done { ok: True })
    }
    .await;
    answer(ack, "presence:intent_cancel", r)
}
