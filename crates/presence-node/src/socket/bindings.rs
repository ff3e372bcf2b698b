//! The sessions bound to this node's connections, by session id: when a
//! newer connection takes a session over (here or on another node), the one
//! that held it is found and unbound at once, instead of receiving the
//! session's rooms until its next write is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use presence_core::SessionId;
use socketioxide::extract::SocketRef;

use super::conn::Conn;

/// Which connection of this node holds which session, at which epoch.
#[derive(Default)]
pub struct Bindings(Mutex<HashMap<SessionId, Binding>>);

struct Binding {
    epoch: u64,
    conn: Weak<Conn>,
    socket: SocketRef,
}

impl Bindings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Binding>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `conn` (on `socket`) holds `session` at `epoch` from now on.
    pub(super) fn bind(
        &self,
        session: &SessionId,
        epoch: u64,
        conn: &Arc<Conn>,
        socket: &SocketRef,
    ) {
        self.lock().insert(
            session.clone(),
            Binding {
                epoch,
                conn: Arc::downgrade(conn),
                socket: socket.clone(),
            },
        );
    }

    /// The connection holding `session` at `epoch` no longer does (a newer
    /// binding of the session stays).
    pub(super) fn unbind(&self, session: &SessionId, epoch: u64) {
        let mut map = self.lock();
        if map.get(session).is_some_and(|b| b.epoch == epoch) {
            map.remove(session);
        }
    }

    /// Removes and returns the connection holding `session` at `epoch`.
    pub(super) fn take(&self, session: &SessionId, epoch: u64) -> Option<(Arc<Conn>, SocketRef)> {
        let mut map = self.lock();
        if map.get(session).is_none_or(|b| b.epoch != epoch) {
            return None;
        }
        let b = map.remove(session)?;
        Some((b.conn.upgrade()?, b.socket))
    }
}
