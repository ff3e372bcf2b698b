//! The handlers of readiness and coordination: `presence:readiness`,
//! `presence:reachability`, `presence:intent`, `presence:intent_cancel`.
//!
//! Who may ask about whom: a user may ask about a user they share a room
//! with (a room the asking session is in, and one of the other user's
//! sessions is in), about themselves, and about the users their token's
//! `reach` claim names. Anyone else is `forbidden`, whether or not they are
//! online (the answer does not tell).

use std::sync::Arc;

use presence_core::{Capabilities, Reach, UserId};
use presence_store::UserSession;
use serde::Serialize;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef};

use super::conn::{Bound, Conn};
use super::{answer, SocketContext};
use crate::acks::{Done, True};
use crate::wire::{self, ErrorCode, WireError};

/// The ack of `presence:reachability` (and the body of the HTTP answer).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReachAck<'a> {
    /// Always true.
    pub ok: True,
    /// The user asked about.
    pub user_id: &'a UserId,
    /// The need asked about.
    pub need: &'a Capabilities,
    /// The answer (`reachability`, `confidence`, `session`, `reason`).
    #[serde(flatten)]
    pub reach: &'a Reach,
}

/// The ack of `presence:intent`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IntentAck<'a> {
    /// Always true.
    pub ok: True,
    /// The intent's id (for `presence:intent_cancel` and its outcome).
    pub intent_id: &'a str,
    /// When it expires if the user is not reachable before.
    pub expires_at: presence_core::Millis,
}

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
        Ok((req, reach))
    }
    .await;
    match r {
        Ok((req, reach)) => answer(
            ack,
            "presence:reachability",
            Ok(ReachAck {
                ok: True,
                user_id: &req.user_id,
                need: &req.need,
                reach: &reach,
            }),
        ),
        Err(e) => answer::<Done>(ack, "presence:reachability", Err(e)),
    }
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
        Ok(intent)
    }
    .await;
    match r {
        Ok(i) => answer(
            ack,
            "presence:intent",
            Ok(IntentAck {
                ok: True,
                intent_id: &i.id,
                expires_at: i.expires_at,
            }),
        ),
        Err(e) => answer::<Done>(ack, "presence:intent", Err(e)),
    }
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
