//! The moderation API's operations: end a session, end all of a user's,
//! take a user out of a room. Each is carried out in the store first (for
//! every node at once: observers see a leave), then the node that holds the
//! connection is told (over its channel) to close it or take it out of the
//! room, which it does as soon as the notice arrives.

use presence_core::{RoomId, SessionId, UserId};
use presence_store::{NodeNotice, PresenceStore, Removal, StoreError};

/// What one removal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The user whose sessions these were.
    pub user_id: UserId,
    /// The sessions removed (ended, or taken out of the room).
    pub sessions: Vec<SessionId>,
}

/// Ends `session`; `None` when there is no such live session.
pub async fn end_session(
    store: &dyn PresenceStore,
    session: &SessionId,
) -> Result<Option<Outcome>, StoreError> {
    Ok(remove(store, session, None).await?.map(|user_id| Outcome {
        user_id,
        sessions: vec![session.clone()],
    }))
}

/// Ends every session of `user`; `None` when they have none.
pub async fn end_user(
    store: &dyn PresenceStore,
    user: &UserId,
) -> Result<Option<Outcome>, StoreError> {
    let mut sessions = Vec::new();
    for s in store.user_sessions(user).await? {
        if remove(store, &s.session_id, None).await?.is_some() {
            sessions.push(s.session_id);
        }
    }
    Ok((!sessions.is_empty()).then(|| Outcome {
        user_id: user.clone(),
        sessions,
    }))
}

/// Takes every session of `user` out of `room`; `None` when none is in it.
pub async fn remove_member(
    store: &dyn PresenceStore,
    room: &RoomId,
    user: &UserId,
) -> Result<Option<Outcome>, StoreError> {
    let mut sessions = Vec::new();
    for s in store.user_sessions(user).await? {
        if !s.rooms.contains(room) {
            continue;
        }
        if remove(store, &s.session_id, Some(room)).await?.is_some() {
            sessions.push(s.session_id);
        }
    }
    Ok((!sessions.is_empty()).then(|| Outcome {
        user_id: user.clone(),
        sessions,
    }))
}

/// Removes in the store, then tells the holding node. A notice that cannot
/// be sent leaves the connection to find out at its next write (the store
/// refuses it); the removal stands.
async fn remove(
    store: &dyn PresenceStore,
    session: &SessionId,
    room: Option<&RoomId>,
) -> Result<Option<UserId>, StoreError> {
    let Some(holder) = store.remove(session, room).await? else {
        return Ok(None);
    };
    let notice = NodeNotice::Removal(Removal {
        session_id: session.clone(),
        epoch: holder.epoch,
        room_id: room.cloned(),
    });
    if let Err(e) = store.notify_node(&holder.node_id, &notice).await {
        tracing::warn!(node_id = %holder.node_id, session_id = %session, error = %e, "cannot tell the node holding a removed session");
    }
    Ok(Some(holder.user_id))
}
