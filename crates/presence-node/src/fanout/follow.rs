//! Who follows a room on this node, and what each follows.
//!
//! Every follower is in the room's Socket.IO room (signals reach them all).
//! Full-view followers are also in `<room>#full`, where diffs go; count and
//! watch followers in `<room>#counts`, where counts go. `#` is not an id
//! character, so these names never meet a room's own. Watchers are indexed
//! by the users they watch, so that a flush finds the watchers of what
//! changed without looking at the others.

use std::collections::{BTreeSet, HashMap, HashSet};

use presence_core::{RoomId, UserId};
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

/// What a follower follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Every member and every diff.
    Full,
    /// Counts only.
    Count,
    /// Counts, and the entries of these users.
    Watch(BTreeSet<UserId>),
}

impl View {
    /// Its name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            View::Full => "full",
            View::Count => "count",
            View::Watch(_) => "watch",
        }
    }
}

/// The Socket.IO rooms of one presence room.
pub struct Channels {
    /// Every follower.
    pub all: String,
    /// Full-view followers.
    pub full: String,
    /// Count and watch followers.
    pub counts: String,
}

impl Channels {
    pub fn of(room: &RoomId) -> Self {
        Channels {
            all: room.as_str().to_owned(),
            full: format!("{room}#full"),
            counts: format!("{room}#counts"),
        }
    }
}

struct Follower {
    socket: SocketRef,
    view: View,
}

/// The sockets that got the room's opening, and their views.
pub struct Followers {
    channels: Channels,
    by_sid: HashMap<Sid, Follower>,
    watchers: HashMap<UserId, HashSet<Sid>>,
    full: usize,
    counts: usize,
}

impl Followers {
    pub fn new(room: &RoomId) -> Self {
        Followers {
            channels: Channels::of(room),
            by_sid: HashMap::new(),
            watchers: HashMap::new(),
            full: 0,
            counts: 0,
        }
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    pub fn is_empty(&self) -> bool {
        self.by_sid.is_empty()
    }

    pub fn contains(&self, sid: &Sid) -> bool {
        self.by_sid.contains_key(sid)
    }

    /// How many follow the full view.
    pub fn full(&self) -> usize {
        self.full
    }

    /// How many follow counts (count and watch views).
    pub fn counting(&self) -> usize {
        self.counts
    }

    /// Whether anyone watches anyone.
    pub fn watching(&self) -> bool {
        !self.watchers.is_empty()
    }

    /// Adds `socket` (or changes its view), moving it between Socket.IO rooms.
    pub fn put(&mut self, socket: SocketRef, view: View) {
        if let Some(old) = self.take(&socket.id) {
            if (old.view == View::Full) != (view == View::Full) {
                old.socket.leave(self.channel_of(&old.view).to_owned());
            }
        }
        socket.join(vec![
            self.channels.all.clone(),
            self.channel_of(&view).to_owned(),
        ]);
        match &view {
            View::Full => self.full += 1,
            View::Count => self.counts += 1,
            View::Watch(users) => {
                self.counts += 1;
                for u in users {
                    self.watchers
                        .entry(u.clone())
                        .or_default()
                        .insert(socket.id);
                }
            }
        }
        self.by_sid.insert(socket.id, Follower { socket, view });
    }

    /// Removes `sid` and takes its socket out of the room's Socket.IO rooms.
    pub fn remove(&mut self, sid: &Sid) {
        if let Some(f) = self.take(sid) {
            f.socket.leave(vec![
                self.channels.all.clone(),
                self.channels.full.clone(),
                self.channels.counts.clone(),
            ]);
        }
    }

    /// Takes `sid` out of the followers and out of its view's Socket.IO
    /// room, leaving it in the room's own (its signals go on): a follower
    /// that starts a new view between two flushes, until the next.
    pub fn detach(&mut self, sid: &Sid) {
        if let Some(f) = self.take(sid) {
            f.socket.leave(self.channel_of(&f.view).to_owned());
        }
    }

    /// Forgets sockets that closed without a leave reaching the hub.
    pub fn retain_connected(&mut self) {
        let gone: Vec<Sid> = self
            .by_sid
            .iter()
            .filter(|(_, f)| !f.socket.connected())
            .map(|(sid, _)| *sid)
            .collect();
        for sid in gone {
            self.take(&sid);
        }
    }

    /// The full-view followers' sockets, to move them to counts.
    pub fn full_sockets(&self) -> Vec<SocketRef> {
        self.by_sid
            .values()
            .filter(|f| f.view == View::Full)
            .map(|f| f.socket.clone())
            .collect()
    }

    /// The watchers of `user`.
    pub fn watchers_of(&self, user: &UserId) -> impl Iterator<Item = &Sid> {
        self.watchers.get(user).into_iter().flatten()
    }

    /// A follower's socket.
    pub fn socket(&self, sid: &Sid) -> Option<&SocketRef> {
        self.by_sid.get(sid).map(|f| &f.socket)
    }

    fn channel_of(&self, view: &View) -> &str {
        match view {
            View::Full => &self.channels.full,
            View::Count | View::Watch(_) => &self.channels.counts,
        }
    }

    fn take(&mut self, sid: &Sid) -> Option<Follower> {
        let f = self.by_sid.remove(sid)?;
        match &f.view {
            View::Full => self.full -= 1,
            View::Count => self.counts -= 1,
            View::Watch(users) => {
                self.counts -= 1;
                for u in users {
                    if let Some(set) = self.watchers.get_mut(u) {
                        set.remove(sid);
                        if set.is_empty() {
                            self.watchers.remove(u);
                        }
                    }
                }
            }
        }
        Some(f)
    }
}
