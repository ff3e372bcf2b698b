//! Messages no larger than `PRESENCE_MAX_MESSAGE_BYTES`.
//!
//! A snapshot or diff whose entries do not fit in one message is split into
//! parts, each entry serialized once and kept whole. A WebSocket connection
//! keeps a write buffer as large as the largest frame it was ever sent
//! (tungstenite's frame codec reserves for the frame and never shrinks, and
//! engineioxide exposes no write-buffer setting): bounding every message is
//! what bounds each connection's memory, whatever the size of its rooms.

use std::fmt::Display;

use serde::Serialize;
use serde_json::value::RawValue;

/// Room for a message's fixed fields (event name, room id, seq, part
/// numbers, the Socket.IO envelope) next to its entries.
pub const ENVELOPE: usize = 2_048;

/// One message's share of users and sessions, as JSON objects.
pub struct Part {
    /// `{ userId: entry, ... }`.
    pub users: Box<RawValue>,
    /// `{ sessionId: entry, ... }`.
    pub sessions: Box<RawValue>,
}

impl Part {
    /// No users, no sessions.
    pub fn empty() -> Self {
        Part {
            users: empty(),
            sessions: empty(),
        }
    }
}

/// Splits users then sessions into parts: the first holds at most `first`
/// bytes of entries, the others at most `rest`. Always at least one part
/// (empty when there is nothing); an entry larger than a budget gets a part
/// of its own.
pub fn split<K1, V1, K2, V2>(
    users: impl IntoIterator<Item = (K1, V1)>,
    sessions: impl IntoIterator<Item = (K2, V2)>,
    first: usize,
    rest: usize,
) -> Vec<Part>
where
    K1: Display,
    V1: Serialize,
    K2: Display,
    V2: Serialize,
{
    let mut out = Splitter {
        parts: Vec::new(),
        users: String::new(),
        sessions: String::new(),
        budget: first,
        rest,
    };
    for (k, v) in users {
        out.push(entry(k, v), true);
    }
    for (k, v) in sessions {
        out.push(entry(k, v), false);
    }
    out.close();
    out.parts
}

/// `"key":value`.
fn entry(k: impl Display, v: impl Serialize) -> String {
    let key = serde_json::to_string(&k.to_string()).unwrap_or_default();
    let value = serde_json::to_string(&v).unwrap_or_else(|_| "null".into());
    format!("{key}:{value}")
}

struct Splitter {
    parts: Vec<Part>,
    users: String,
    sessions: String,
    budget: usize,
    rest: usize,
}

impl Splitter {
    fn push(&mut self, e: String, user: bool) {
        let used = self.users.len() + self.sessions.len();
        // A part takes at least one entry, except the first, which may stay
        // empty (a join ack with no room left).
        if (used > 0 || self.parts.is_empty()) && used + e.len() + 1 > self.budget {
            self.close();
            self.budget = self.rest;
        }
        let buf = if user {
            &mut self.users
        } else {
            &mut self.sessions
        };
        if !buf.is_empty() {
            buf.push(',');
        }
        buf.push_str(&e);
    }

    fn close(&mut self) {
        if !self.parts.is_empty() && self.users.is_empty() && self.sessions.is_empty() {
            return;
        }
        let obj = |s: &mut String| {
            let json = format!("{{{}}}", std::mem::take(s));
            RawValue::from_string(json).unwrap_or_else(|_| empty())
        };
        let users = obj(&mut self.users);
        let sessions = obj(&mut self.sessions);
        self.parts.push(Part { users, sessions });
    }
}

fn empty() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("valid JSON")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;

    fn merged(parts: &[Part]) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
        let mut u = BTreeMap::new();
        let mut s = BTreeMap::new();
        for p in parts {
            let pu: BTreeMap<String, Value> = serde_json::from_str(p.users.get()).unwrap();
            let ps: BTreeMap<String, Value> = serde_json::from_str(p.sessions.get()).unwrap();
            u.extend(pu);
            s.extend(ps);
        }
        (u, s)
    }

    #[test]
    fn parts_stay_within_budget_and_hold_every_entry_once() {
        let users: Vec<(String, Value)> = (0..300)
            .map(|i| {
                (
                    format!("u{i}"),
                    json!({ "userKey": format!("u{i}"), "pad": "x".repeat(i % 50) }),
                )
            })
            .collect();
        let sessions: Vec<(String, Option<Value>)> = (0..400)
            .map(|i| (format!("s{i}"), (i % 3 != 0).then(|| json!({ "n": i }))))
            .collect();
        let parts = split(users.clone(), sessions.clone(), 1_000, 4_000);
        assert!(parts.len() > 3);
        assert!(parts[0].users.get().len() + parts[0].sessions.get().len() <= 1_000 + 4);
        for p in &parts[1..] {
            assert!(p.users.get().len() + p.sessions.get().len() <= 4_000 + 4);
        }
        let (u, s) = merged(&parts);
        assert_eq!(u.len(), 300);
        assert_eq!(s.len(), 400);
        assert_eq!(s["s3"], Value::Null);
        assert_eq!(u["u7"], users[7].1);
    }

    #[test]
    fn small_sets_are_one_part_and_nothing_is_one_empty_part() {
        let parts = split([("u", 1)], [("s", 2)], 1_000, 1_000);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].users.get(), r#"{"u":1}"#);
        let none = Vec::<(String, i32)>::new;
        let parts = split(none(), none(), 10, 10);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].sessions.get(), "{}");
        // An entry over the budget goes alone; the first part may stay empty.
        let big = "y".repeat(100);
        let parts = split([("a", &big), ("b", &big)], none(), 10, 10);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].users.get(), "{}");
    }
}
