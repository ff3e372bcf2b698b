//! The sessions bound to this node's connections, by session id (and by
//! user): when a newer connection takes a session over (here or on another
//! node), the one that held it is found and unbound at once, instead of
//! receiving the session's rooms until its next write is refused; and an
//! intent's notice reaches the sockets of its caller's session or of its
//! callee that this node holds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use presence_core::{SessionId, UserId};
use socketioxide::extract::SocketRef;

use super::conn::Conn;

/// Which connection of this node holds which session, at which epoch.
#[derive(Default)]
pub struct Bindings(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, Binding>,
    users: HashMap<UserId, HashSet<SessionId>>,
}

struct Binding {
    epoch: u64,
    user: UserId,
    conn: Weak<Conn>,
    socket: SocketRef,
}

impl Inner {
    fn remove(&mut self, session: &SessionId) -> Option<Binding> {
        let b = self.sessions.remove(session)?;
        if let Some(set) = self.users.get_mut(&b.user) {
            set.remove(session);
            if set.is_empty() {
                self.users.remove(&b.user);
            }
        }
        Some(b)
    }
}

impl Bindings {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `conn` (on `socket`) holds `session` of `user` at `epoch` from now on.
    pub(super) fn bind(
        &self,
        session: &SessionId,
        user: &UserId,
        epoch: u64,
        conn: &Arc<Conn>,
        socket: &SocketRef,
    ) {
        let mut inner = self.lock();
        inner.remove(session);
        inner.sessions.insert(
            session.clone(),
            Binding {
                epoch,
                user: user.clone(),
                conn: Arc::downgrade(conn),
                socket: socket.clone(),
            },
        );
        inner
            .users
            .entry(user.clone())
            .or_default()
            .insert(session.clone());
    }

    /// The connection holding `session` at `epoch` no longer does (a newer
    /// binding of the session stays).
    pub(super) fn unbind(&self, session: &SessionId, epoch: u64) {
        let mut inner = self.lock();
        if inner
            .sessions
            .get(session)
            .is_some_and(|b| b.epoch == epoch)
        {
            inner.remove(session);
        }
    }

    /// Removes and returns the connection holding `session` at `epoch`.
    pub(super) fn take(&self, session: &SessionId, epoch: u64) -> Option<(Arc<Conn>, SocketRef)> {
        let mut inner = self.lock();
        if inner.sessions.get(session).is_none_or(|b| b.epoch != epoch) {
            return None;
        }
        let b = inner.remove(session)?;
        Some((b.conn.upgrade()?, b.socket))
    }

    /// The connection holding `session` here, at whatever epoch.
    pub(super) fn holder(&self, session: &SessionId) -> Option<(Arc<Conn>, SocketRef, u64)> {
        let inner = self.lock();
        let b = inner.sessions.get(session)?;
        Some((b.conn.upgrade()?, b.socket.clone(), b.epoch))
    }

    /// The socket holding `session` here, if one does.
    pub fn socket_of(&self, session: &SessionId) -> Option<SocketRef> {
        self.lock().sessions.get(session).map(|b| b.socket.clone())
    }

    /// The sockets holding sessions of `user` here.
    pub fn sockets_of_user(&self, user: &UserId) -> Vec<SocketRef> {
        let inner = self.lock();
        inner
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|s| inner.sessions.get(s))
            .map(|b| b.socket.clone())
            .collect()
    }
}
