//! What large rooms are shown as: counts by status, and pages of members.
//!
//! A room's members are its sessions. Pages list them in one stable order,
//! by user id then session id (byte order), each with its user's entry; a
//! page's cursor names the last member it holds, so the next page starts
//! right after it whatever joined or left meanwhile.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, UserId};
use crate::session::SessionStatus;
use crate::user::UserStatus;
use crate::view::{SessionPresence, UserPresence};

/// The members a page holds when the client names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// The members the first page of a join ack holds when the client names
/// no `pageLimit`: a few screens of a member list, not enough to make every
/// member's connection keep a large write buffer.
pub const JOIN_PAGE: usize = 20;

/// The most members the first page of a join ack may hold.
pub const MAX_JOIN_PAGE: usize = 100;

/// The most members one page may hold.
pub const MAX_PAGE: usize = 1_000;

/// How many users or sessions are in each status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusCounts {
    /// All of them.
    pub total: u32,
    /// Active.
    pub active: u32,
    /// Idle.
    pub idle: u32,
    /// Away.
    pub away: u32,
    /// Stale (heartbeat missed, inside the grace window).
    pub stale: u32,
}

impl StatusCounts {
    fn slot(&mut self, status: SessionStatus) -> &mut u32 {
        match status {
            SessionStatus::Active => &mut self.active,
            SessionStatus::Idle => &mut self.idle,
            SessionStatus::Away => &mut self.away,
            SessionStatus::Stale => &mut self.stale,
        }
    }

    /// Counts one more in `status`.
    pub fn add(&mut self, status: SessionStatus) {
        self.total += 1;
        *self.slot(status) += 1;
    }

    /// Counts one less in `status`.
    pub fn sub(&mut self, status: SessionStatus) {
        self.total = self.total.saturating_sub(1);
        let n = self.slot(status);
        *n = n.saturating_sub(1);
    }

    /// Counts one more user in `status` (a user in a room is never offline).
    pub fn add_user(&mut self, status: UserStatus) {
        match user_slot(status) {
            Some(s) => self.add(s),
            None => self.total += 1,
        }
    }

    /// Counts one less user in `status`.
    pub fn sub_user(&mut self, status: UserStatus) {
        match user_slot(status) {
            Some(s) => self.sub(s),
            None => self.total = self.total.saturating_sub(1),
        }
    }
}

fn user_slot(status: UserStatus) -> Option<SessionStatus> {
    match status {
        UserStatus::Active => Some(SessionStatus::Active),
        UserStatus::Idle => Some(SessionStatus::Idle),
        UserStatus::Away => Some(SessionStatus::Away),
        UserStatus::Stale => Some(SessionStatus::Stale),
        UserStatus::Offline => None,
    }
}

/// A room's users and sessions by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoomCounts {
    /// Users (each derived from their sessions in the room).
    pub users: StatusCounts,
    /// Sessions.
    pub sessions: StatusCounts,
}

impl RoomCounts {
    /// Counts the entries of a whole view.
    pub fn of<'a>(
        users: impl IntoIterator<Item = &'a UserPresence>,
        sessions: impl IntoIterator<Item = &'a SessionPresence>,
    ) -> Self {
        let mut c = RoomCounts::default();
        users.into_iter().for_each(|u| c.users.add_user(u.status));
        sessions.into_iter().for_each(|s| c.sessions.add(s.status));
        c
    }
}

/// Where a page ends: its last member. On the wire `<userId>~<sessionId>`
/// (`~` is not an id character, so the two never blur).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageCursor {
    /// The user of the last member.
    pub user_id: UserId,
    /// The last member.
    pub session_id: SessionId,
}

impl PageCursor {
    /// True when `(user, session)` comes after this cursor in page order.
    pub fn is_before(&self, user: &UserId, session: &SessionId) -> bool {
        (&self.user_id, &self.session_id) < (user, session)
    }
}

impl fmt::Display for PageCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}", self.user_id, self.session_id)
    }
}

/// A cursor that is not one this service gave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCursor;

impl fmt::Display for BadCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a cursor this service gave out (expected the nextCursor of a page)")
    }
}

impl FromStr for PageCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (u, sid) = s.split_once('~').ok_or(BadCursor)?;
        Ok(PageCursor {
            user_id: UserId::new(u).map_err(|_| BadCursor)?,
            session_id: SessionId::new(sid).map_err(|_| BadCursor)?,
        })
    }
}

impl Serialize for PageCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One page of a room's members and the entries of their users.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The users of the page's sessions (whole entries, as in a snapshot).
    pub users: BTreeMap<UserId, UserPresence>,
    /// The page's sessions.
    pub sessions: BTreeMap<SessionId, SessionPresence>,
    /// Where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<PageCursor>,
}

/// Fills a page from members in page order, up to `limit` sessions and,
/// when given, `budget` bytes of JSON (at least one member, so that paging
/// always moves on; a page's fixed fields are the caller's to reserve).
pub struct PageBuilder {
    page: Page,
    limit: usize,
    budget: Option<usize>,
    used: usize,
    last: Option<PageCursor>,
}

impl PageBuilder {
    /// An empty page of at most `limit` sessions and `budget` bytes.
    pub fn new(limit: usize, budget: Option<usize>) -> Self {
        Self {
            page: Page::default(),
            limit,
            budget,
            used: 0,
            last: None,
        }
    }

    /// Adds the next member; false (and nothing added) when the page is
    /// full: then it has a next cursor.
    pub fn push(&mut self, user: &UserPresence, session: &SessionPresence) -> bool {
        let full = self.page.sessions.len() >= self.limit
            || self.budget.is_some_and(|b| {
                let more = entry_len(&session.session_id, session)
                    + if self.page.users.contains_key(&session.user_id) {
                        0
                    } else {
                        entry_len(&user.user_key, user)
                    };
                !self.page.sessions.is_empty() && self.used + more > b
            });
        if full {
            self.page.next_cursor = self.last.clone();
            return false;
        }
        if !self.page.users.contains_key(&user.user_key) {
            self.used += entry_len(&user.user_key, user);
            self.page.users.insert(user.user_key.clone(), user.clone());
        }
        self.used += entry_len(&session.session_id, session);
        self.page
            .sessions
            .insert(session.session_id.clone(), session.clone());
        self.last = Some(PageCursor {
            user_id: session.user_id.clone(),
            session_id: session.session_id.clone(),
        });
        true
    }

    /// Adds members in page order until the page is full.
    pub fn fill<'a>(
        mut self,
        members: impl IntoIterator<Item = (&'a UserPresence, &'a SessionPresence)>,
    ) -> Page {
        for (u, s) in members {
            if !self.push(u, s) {
                break;
            }
        }
        self.page
    }
}

/// The JSON size of one `"key":value,` map entry.
fn entry_len(key: &impl fmt::Display, value: &impl Serialize) -> usize {
    key.to_string().len() + 4 + serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// A page of a whole view's members after `after`: the store's pages,
/// read from the members of the page's users.
pub fn page_of(
    users: &BTreeMap<UserId, UserPresence>,
    sessions: &BTreeMap<SessionId, SessionPresence>,
    after: Option<&PageCursor>,
    limit: usize,
) -> Page {
    let mut ordered: Vec<&SessionPresence> = sessions
        .values()
        .filter(|s| after.is_none_or(|c| c.is_before(&s.user_id, &s.session_id)))
        .collect();
    ordered.sort_by(|a, b| (&a.user_id, &a.session_id).cmp(&(&b.user_id, &b.session_id)));
    PageBuilder::new(limit, None).fill(
        ordered
            .into_iter()
            .filter_map(|s| users.get(&s.user_id).map(|u| (u, s))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = PageCursor {
            user_id: UserId::new("alice").unwrap(),
            session_id: SessionId::new("s-1.x").unwrap(),
        };
        assert_eq!(c.to_string(), "alice~s-1.x");
        assert_eq!("alice~s-1.x".parse::<PageCursor>(), Ok(c));
        for bad in ["", "alice", "~s", "a~", "a~b~c", "not a cursor", "a~b!"] {
            assert_eq!(bad.parse::<PageCursor>(), Err(BadCursor), "{bad:?}");
        }
    }

    #[test]
    fn cursor_order_is_user_then_session() {
        let c: PageCursor = "b~s5".parse().unwrap();
        let u = |x: &str| UserId::new(x).unwrap();
        let sid = |x: &str| SessionId::new(x).unwrap();
        assert!(!c.is_before(&u("a"), &sid("s9")));
        assert!(!c.is_before(&u("b"), &sid("s5")));
        assert!(c.is_before(&u("b"), &sid("s6")));
        assert!(c.is_before(&u("ba"), &sid("s0")));
    }
}
