//! Minimal diffs between two views of a room.
//!
//! A diff maps each changed user/session to either `null` (gone) or a partial
//! object: the fields that changed, with their new values. A new entry comes
//! whole. Clients apply a diff with a shallow merge per entry:
//! `entry = { ...entry, ...patch }`, where a `null` field (`handle`, `state`)
//! removes it, and `state` is always replaced as a whole.
//!
//! Timestamps alone (`lastHeartbeatAt`, `lastSeenAt`) are not a change: a
//! heartbeat that changes nothing else must emit nothing. When an entry does
//! change, its fresh timestamps ride along in the same patch.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::{RoomId, SessionId, UserId};
use crate::reach::{Capabilities, Readiness};
use crate::session::SessionStatus;
use crate::time::Millis;
use crate::user::{Confidence, UserStatus};
use crate::view::{RoomView, SessionPresence, UserPresence};
use crate::JsonMap;

/// A view entry that can be diffed field by field.
pub trait Patchable: Sized {
    /// The partial form of the entry.
    type Patch;

    /// The patch that turns `old` into `new`, or `None` when they differ in
    /// timestamps only (or not at all).
    fn patch(old: &Self, new: &Self) -> Option<Self::Patch>;

    /// The whole entry, as a patch (for entries that are new).
    fn full(new: &Self) -> Self::Patch;

    /// The whole entry as a patch that replaces whatever entry it is applied
    /// to: [`Patchable::full`], with an absent optional field sent as `null`.
    fn whole(new: &Self) -> Self::Patch;

    /// Applies `patch` to `old` (or builds the entry when there is none).
    fn apply(old: Option<Self>, patch: Self::Patch) -> Result<Self, ApplyError>;
}

/// A diff that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a patch for a new entry lacks the field `{0}`")]
pub struct ApplyError(pub &'static str);

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Defines the patch type of an entry. `fields` must change the entry to count
/// as a change; `timestamps` ride along but do not count; `optional` fields
/// are `Option`s whose removal is sent as `null`.
macro_rules! patchable {
    (
        $(#[$doc:meta])*
        $entry:ident => $patch:ident {
            fields: [$($f:ident : $ft:ty = $fwire:literal),* $(,)?],
            timestamps: [$($t:ident = $twire:literal),* $(,)?],
            optional: [$($o:ident : $ot:ty),* $(,)?] $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $patch {
            $(
                #[allow(missing_docs)]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $f: Option<$ft>,
            )*
            $(
                #[allow(missing_docs)]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $t: Option<Millis>,
            )*
            $(
                #[allow(missing_docs)]
                #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "double_option")]
                pub $o: Option<Option<$ot>>,
            )*
        }

        impl Patchable for $entry {
            type Patch = $patch;

            fn patch(old: &Self, new: &Self) -> Option<$patch> {
                let significant = false $(|| old.$f != new.$f)* $(|| old.$o != new.$o)*;
                if !significant {
                    return None;
                }
                Some($patch {
                    $($f: (old.$f != new.$f).then(|| new.$f.clone()),)*
                    $($t: (old.$t != new.$t).then_some(new.$t),)*
                    $($o: (old.$o != new.$o).then(|| new.$o.clone()),)*
                })
            }

            fn full(new: &Self) -> $patch {
                $patch {
                    $($f: Some(new.$f.clone()),)*
                    $($t: Some(new.$t),)*
                    $($o: new.$o.clone().map(Some),)*
                }
            }

            fn whole(new: &Self) -> $patch {
                $patch {
                    $($f: Some(new.$f.clone()),)*
                    $($t: Some(new.$t),)*
                    $($o: Some(new.$o.clone()),)*
                }
            }

            fn apply(old: Option<Self>, p: $patch) -> Result<Self, ApplyError> {
                match old {
                    Some(mut e) => {
                        $(if let Some(v) = p.$f { e.$f = v; })*
                        $(if let Some(v) = p.$t { e.$t = v; })*
                        $(if let Some(v) = p.$o { e.$o = v; })*
                        Ok(e)
                    }
                    None => Ok(Self {
                        $($f: p.$f.ok_or(ApplyError($fwire))?,)*
                        $($t: p.$t.ok_or(ApplyError($twire))?,)*
                        $($o: p.$o.flatten(),)*
                    }),
                }
            }
        }
    };
}

patchable!(
    /// The changed fields of a [`UserPresence`].
    UserPresence => UserPatch {
        fields: [
            user_key: UserId = "userKey",
            status: UserStatus = "status",
            confidence: Confidence = "confidence",
            session_count: u32 = "sessionCount",
        ],
        timestamps: [last_seen_at = "lastSeenAt", last_heartbeat_at = "lastHeartbeatAt"],
        optional: [handle: String, state: JsonMap],
    }
);

patchable!(
    /// The changed fields of a [`SessionPresence`].
    SessionPresence => SessionPatch {
        fields: [
            session_id: SessionId = "sessionId",
            user_id: UserId = "userId",
            status: SessionStatus = "status",
        ],
        timestamps: [last_heartbeat_at = "lastHeartbeatAt"],
        optional: [
            handle: String,
            state: JsonMap,
            readiness: Readiness,
            capabilities: Capabilities,
        ],
    }
);

/// The change between two views of one room (`presence:diff`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomDiff {
    /// The room.
    pub room_id: RoomId,
    /// The room's version after the change.
    pub seq: u64,
    /// Changed users; `None` (`null`) means gone.
    pub users: BTreeMap<UserId, Option<UserPatch>>,
    /// Changed sessions; `None` (`null`) means gone.
    pub sessions: BTreeMap<SessionId, Option<SessionPatch>>,
}

impl RoomDiff {
    /// True when nothing observers care about changed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.sessions.is_empty()
    }
}

/// The patches that take the entries `old` to `new` (`None`: gone).
pub fn diff_entries<K: Ord + Clone, E: Patchable>(
    old: &BTreeMap<K, E>,
    new: &BTreeMap<K, E>,
) -> BTreeMap<K, Option<E::Patch>> {
    let mut out = BTreeMap::new();
    for (k, n) in new {
        match old.get(k) {
            None => {
                out.insert(k.clone(), Some(E::full(n)));
            }
            Some(o) => {
                if let Some(p) = E::patch(o, n) {
                    out.insert(k.clone(), Some(p));
                }
            }
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), None);
        }
    }
    out
}

fn apply_map<K: Ord, E: Patchable>(
    map: &mut BTreeMap<K, E>,
    patches: BTreeMap<K, Option<E::Patch>>,
) -> Result<(), ApplyError> {
    for (k, p) in patches {
        match p {
            None => {
                map.remove(&k);
            }
            Some(p) => {
                let old = map.remove(&k);
                map.insert(k, E::apply(old, p)?);
            }
        }
    }
    Ok(())
}

/// The minimal diff that takes observers from `old` to `new`.
pub fn diff(old: &RoomView, new: &RoomView) -> RoomDiff {
    RoomDiff {
        room_id: new.room_id.clone(),
        seq: new.seq,
        users: diff_entries(&old.users, &new.users),
        sessions: diff_entries(&old.sessions, &new.sessions),
    }
}

/// Applies `d` to `view`, as a client does.
pub fn apply(view: &mut RoomView, d: RoomDiff) -> Result<(), ApplyError> {
    apply_map(&mut view.users, d.users)?;
    apply_map(&mut view.sessions, d.sessions)?;
    view.seq = view.seq.max(d.seq);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn user(
        id: &str,
        status: UserStatus,
        count: u32,
        hb: Millis,
        state: Option<i64>,
    ) -> UserPresence {
        UserPresence {
            user_key: UserId::new(id).unwrap(),
            handle: (count % 2 == 0).then(|| format!("H{id}")),
            status,
            confidence: if status == UserStatus::Active {
                Confidence::High
            } else {
                Confidence::Medium
            },
            session_count: count,
            last_seen_at: hb / 2,
            last_heartbeat_at: hb,
            state: state.map(|v| json!({ "v": v }).as_object().unwrap().clone()),
        }
    }

    fn session(id: &str, status: SessionStatus, hb: Millis, state: Option<i64>) -> SessionPresence {
        SessionPresence {
            session_id: SessionId::new(id).unwrap(),
            user_id: UserId::new("u").unwrap(),
            handle: None,
            status,
            last_heartbeat_at: hb,
            state: state.map(|v| json!({ "v": v }).as_object().unwrap().clone()),
            readiness: None,
            capabilities: None,
        }
    }

    fn view(seq: u64, users: Vec<UserPresence>, sessions: Vec<SessionPresence>) -> RoomView {
        RoomView {
            room_id: RoomId::new("r").unwrap(),
            seq,
            generated_at: 0,
            users: users.into_iter().map(|u| (u.user_key.clone(), u)).collect(),
            sessions: sessions
                .into_iter()
                .map(|s| (s.session_id.clone(), s))
                .collect(),
        }
    }

    #[test]
    fn heartbeat_only_changes_give_an_empty_diff() {
        let a = view(
            1,
            vec![user("u", UserStatus::Active, 1, 10, None)],
            vec![session("s", SessionStatus::Active, 10, None)],
        );
        let b = view(
            1,
            vec![user("u", UserStatus::Active, 1, 99, None)],
            vec![session("s", SessionStatus::Active, 99, None)],
        );
        assert!(diff(&a, &b).is_empty());
    }

    #[test]
    fn a_change_carries_only_changed_fields_and_fresh_timestamps() {
        let a = view(
            1,
            vec![user("u", UserStatus::Active, 1, 10, Some(1))],
            vec![],
        );
        let b = view(2, vec![user("u", UserStatus::Idle, 1, 20, Some(1))], vec![]);
        let d = diff(&a, &b);
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({ "roomId": "r", "seq": 2, "sessions": {},
                    "users": { "u": { "status": "idle", "confidence": "medium",
                                       "lastSeenAt": 10, "lastHeartbeatAt": 20 } } })
        );
    }

    #[test]
    fn gone_is_null_and_removed_state_is_null() {
        let a = view(
            1,
            vec![user("u", UserStatus::Active, 1, 10, Some(1))],
            vec![session("s", SessionStatus::Idle, 1, Some(3))],
        );
        let b = view(3, vec![user("u", UserStatus::Active, 1, 10, None)], vec![]);
        let j = serde_json::to_value(diff(&a, &b)).unwrap();
        assert_eq!(j["sessions"]["s"], serde_json::Value::Null);
        assert_eq!(j["users"]["u"], json!({ "state": null }));
        // And it round-trips through JSON.
        let back: RoomDiff = serde_json::from_value(j).unwrap();
        let mut applied = a.clone();
        apply(&mut applied, back).unwrap();
        assert_eq!(applied, b);
    }

    #[test]
    fn a_partial_patch_cannot_create_an_entry() {
        let mut v = view(0, vec![], vec![]);
        let d: RoomDiff = serde_json::from_value(json!({
            "roomId": "r", "seq": 1, "users": { "u": { "status": "idle" } }, "sessions": {}
        }))
        .unwrap();
        assert!(apply(&mut v, d).is_err());
    }

    fn arb_status() -> impl Strategy<Value = UserStatus> {
        prop_oneof![
            Just(UserStatus::Active),
            Just(UserStatus::Idle),
            Just(UserStatus::Away),
            Just(UserStatus::Stale)
        ]
    }

    fn arb_session_status() -> impl Strategy<Value = SessionStatus> {
        prop_oneof![
            Just(SessionStatus::Active),
            Just(SessionStatus::Idle),
            Just(SessionStatus::Away),
            Just(SessionStatus::Stale)
        ]
    }

    fn arb_view() -> impl Strategy<Value = RoomView> {
        let users = prop::collection::btree_map(
            0u8..6,
            (arb_status(), 1u32..4, 0i64..3, prop::option::of(0i64..3)),
            0..6,
        );
        let sessions = prop::collection::btree_map(
            0u8..8,
            (arb_session_status(), 0i64..3, prop::option::of(0i64..3)),
            0..8,
        );
        (users, sessions, 0u64..100).prop_map(|(u, s, seq)| {
            view(
                seq,
                u.into_iter()
                    .map(|(k, (st, c, hb, state))| user(&format!("u{k}"), st, c, hb, state))
                    .collect(),
                s.into_iter()
                    .map(|(k, (st, hb, state))| session(&format!("s{k}"), st, hb, state))
                    .collect(),
            )
        })
    }

    /// `new`, except that entries whose only change is a timestamp keep the old
    /// timestamps: exactly what a client holds after applying the diff.
    fn as_seen_by_clients(old: &RoomView, new: &RoomView) -> RoomView {
        let mut out = new.clone();
        for (k, u) in out.users.iter_mut() {
            if let Some(o) = old.users.get(k) {
                if UserPresence::patch(o, u).is_none() {
                    *u = o.clone();
                }
            }
        }
        for (k, s) in out.sessions.iter_mut() {
            if let Some(o) = old.sessions.get(k) {
                if SessionPresence::patch(o, s).is_none() {
                    *s = o.clone();
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn applying_the_diff_to_the_old_view_gives_the_new_view(old in arb_view(), new in arb_view()) {
            let d = diff(&old, &new);
            // Through JSON, as a client receives it.
            let wire: RoomDiff = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
            let mut applied = old.clone();
            apply(&mut applied, wire).unwrap();
            applied.seq = new.seq;
            applied.generated_at = new.generated_at;
            prop_assert_eq!(applied, as_seen_by_clients(&old, &new));
        }

        #[test]
        fn equal_views_give_an_empty_diff(v in arb_view()) {
            prop_assert!(diff(&v, &v).is_empty());
        }

        #[test]
        fn diff_is_minimal(old in arb_view(), new in arb_view()) {
            let d = diff(&old, &new);
            for (k, p) in &d.users {
                match (old.users.get(k), new.users.get(k), p) {
                    (Some(o), Some(n), Some(p)) => {
                        prop_assert!(UserPresence::patch(o, n).is_some());
                        prop_assert_eq!(p.status.is_some(), o.status != n.status);
                        prop_assert_eq!(p.state.is_some(), o.state != n.state);
                    }
                    (None, Some(_), Some(_)) | (Some(_), None, None) => {}
                    other => prop_assert!(false, "unexpected entry {:?}", other),
                }
            }
            for (k, p) in &d.sessions {
                match (old.sessions.get(k), new.sessions.get(k), p) {
                    (Some(o), Some(n), Some(p)) => {
                        prop_assert!(SessionPresence::patch(o, n).is_some());
                        prop_assert_eq!(p.status.is_some(), o.status != n.status);
                    }
                    (None, Some(_), Some(_)) | (Some(_), None, None) => {}
                    other => prop_assert!(false, "unexpected entry {:?}", other),
                }
            }
        }
    }
}
