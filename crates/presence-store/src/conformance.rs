//! The behaviour every [`PresenceStore`] must have, written once.
//!
//! Each case is a plain `async fn` that takes a factory (an async closure
//! that builds a fresh, empty store from an [`Env`]), so the memory store and
//! the Redis store run the very same checks. [`conformance_suite!`](crate::conformance_suite)
//! turns the list of cases into one `#[tokio::test]` per case:
//!
//! ```ignore
//! async fn make(env: Env) -> Arc<dyn PresenceStore> { /* ... */ }
//! presence_store::conformance_suite!(make);
//! ```
//!
//! Time is a [`ManualClock`]: lifecycle cases move it and call `sweep`, with
//! no sleeps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use presence_core::{
    Activity, Capabilities, Confidence, EventKind, Intent, IntentOutcome, JsonMap, LifecycleEvent,
    Limits, ManualClock, NodeId, PresenceEvent, Readiness, RoomId, SessionId, SessionStatus,
    Timings, UserId, UserStatus,
};
use serde_json::json;
use tokio::sync::broadcast;

use crate::api::{Declare, Hello, Page, PresenceStore, SessionRef};
use crate::error::StoreError;

/// What a factory gets to build a store with.
#[derive(Debug, Clone)]
pub struct Env {
    /// The clock the store must read.
    pub clock: ManualClock,
    /// Lifecycle timings.
    pub timings: Timings,
    /// Limits.
    pub limits: Limits,
}

/// The start of time in every case (any realistic Unix time in ms).
pub const T0: i64 = 1_700_000_000_000;

fn env() -> Env {
    Env {
        clock: ManualClock::new(T0),
        timings: Timings::default(),
        limits: Limits {
            max_state_bytes: 64,
            max_meta_bytes: 64,
            max_rooms_per_session: 3,
            max_sessions_per_user: 3,
            max_intents_per_user: 3,
            max_intents_to_user: 4,
            ..Limits::default()
        },
    }
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
fn rid(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}
fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}
fn caps(names: &[&str]) -> Capabilities {
    Capabilities::parse(names, 16).unwrap()
}
fn obj(v: serde_json::Value) -> JsonMap {
    v.as_object().cloned().expect("an object")
}

fn hello(user: &str, session: Option<&str>) -> Hello {
    Hello {
        declare: Default::default(),
        session_id: session.map(sid),
        user_id: uid(user),
        handle: Some(format!("{user}!")),
        meta: None,
        activity: Activity::Active,
        node_id: NodeId::new("node-a").unwrap(),
    }
}

async fn claim(store: &dyn PresenceStore, user: &str, session: &str) -> SessionRef {
    let c = store.hello(hello(user, Some(session))).await.unwrap();
    SessionRef {
        session_id: c.session_id,
        epoch: c.epoch,
    }
}

/// Every lifecycle event group `group` has not read yet, acknowledged,
/// shard by shard.
async fn read_lifecycle(store: &dyn PresenceStore, group: &str) -> Vec<LifecycleEvent> {
    let log = store.lifecycle();
    let mut out = Vec::new();
    for shard in 0..log.shards() {
        let got = log.read_new(group, "c", shard, 1_000).await.unwrap();
        let ids: Vec<String> = got.iter().map(|e| e.id.clone()).collect();
        log.ack(group, shard, &ids).await.unwrap();
        out.extend(got.into_iter().filter_map(|e| e.event));
    }
    out
}

/// The new lifecycle events of group `t`, each as `"<type> <subject>"`
/// (with the status for user events), sorted: the stream orders a user's
/// events, not those of different shards.
async fn lifecycle(store: &dyn PresenceStore) -> Vec<String> {
    use presence_core::Lifecycle as L;
    let status = |s: &UserStatus| {
        serde_json::to_value(s)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut out: Vec<String> = read_lifecycle(store, "t")
        .await
        .into_iter()
        .map(|e| {
            let tail = match &e.kind {
                L::UserOnline { status: s, .. } => format!(" {}", status(s)),
                L::UserStatus {
                    status: s,
                    previous,
                    ..
                } => {
                    format!(" {}<{}", status(s), status(previous))
                }
                L::MemberJoined { user_id, .. } | L::MemberLeft { user_id, .. } => {
                    format!(" {user_id}")
                }
                _ => String::new(),
            };
            let subject = match &e.kind {
                L::MemberJoined { room_id, .. } | L::MemberLeft { room_id, .. } => room_id.as_str(),
                k => k.subject(),
            };
            format!("{} {subject}{tail}", e.kind.type_name())
        })
        .collect();
    out.sort();
    out
}

/// A fresh event receiver following `rooms`, after events already in
/// flight (published before the call, delivered after it by an asynchronous
/// bus) have passed.
async fn subscribe(
    store: &dyn PresenceStore,
    rooms: &[&str],
) -> broadcast::Receiver<PresenceEvent> {
    for r in rooms {
        store.follow_room(&rid(r)).await.unwrap();
    }
    let mut rx = store.events();
    drain(&mut rx).await;
    rx
}

/// Everything published until the bus has been quiet for a short while.
async fn drain(rx: &mut broadcast::Receiver<PresenceEvent>) -> Vec<PresenceEvent> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(60), rx.recv()).await {
            Ok(Ok(ev)) => out.push(ev),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => panic!("lagged by {n}"),
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return out,
        }
    }
}

fn kinds(evs: &[PresenceEvent]) -> Vec<(EventKind, String)> {
    evs.iter()
        .map(|e| {
            (
                e.kind,
                serde_json::to_value(e.status)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect()
}

macro_rules! cases {
    ($($(#[$doc:meta])* async fn $name:ident($store:ident, $env:ident) $body:block)*) => {
        $(
            $(#[$doc])*
            pub async fn $name<F, Fut>(make: F)
            where
                F: FnOnce(Env) -> Fut,
                Fut: Future<Output = Arc<dyn PresenceStore>>,
            {
                let $env = env();
                let $store = make($env.clone()).await;
                #[allow(unused_variables)]
                let $store: &dyn PresenceStore = &*$store;
                $body
            }
        )*

        /// Generates one `#[tokio::test]` per conformance case, each calling `$make(env)`.
        #[macro_export]
        macro_rules! conformance_suite {
            ($make:path) => {
                $(
                    #[tokio::test]
                    async fn $name() {
                        $crate::conformance::$name($make).await;
                    }
                )*
            };
        }
    };
}

cases! {
    /// A hello without a session id creates one, online at once, with a server epoch.
    async fn hello_creates_an_online_session(store, env) {
        let c = store.hello(hello("alice", None)).await.unwrap();
        assert!(!c.resumed);
        assert!(c.epoch >= 1);
        assert!(c.rooms.is_empty());
        let online = store.whos_online(Page { limit: 10, after: None }).await.unwrap();
        assert_eq!(online.entries.users["alice"].status, UserStatus::Active);
        assert_eq!(online.entries.users["alice"].confidence, Confidence::High);
        assert_eq!(online.entries.sessions[c.session_id.as_str()].status, SessionStatus::Active);
        let st = store.users_status(&[uid("alice"), uid("nobody")]).await.unwrap();
        assert_eq!(st["alice"].status, UserStatus::Active);
        assert_eq!(st["alice"].session_count, 1);
        assert_eq!(st["nobody"].status, UserStatus::Offline);
    }

    /// Joining returns the room's seq, and the view shows the member and its state.
    async fn join_shows_the_member_and_its_state(store, env) {
        let s = claim(store, "alice", "s1").await;
        let j = store.join(&s, &rid("doc"), Some(obj(json!({ "color": "red" })))).await.unwrap();
        assert!(!j.already);
        assert!(j.seq >= 1);
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.seq, j.seq);
        assert_eq!(v.sessions["s1"].state, Some(obj(json!({ "color": "red" }))));
        assert_eq!(v.users["alice"].state, Some(obj(json!({ "color": "red" }))));
        assert_eq!(v.users["alice"].handle.as_deref(), Some("alice!"));
        // Joining again is not a second membership; a new state replaces the old one.
        let again = store.join(&s, &rid("doc"), Some(obj(json!({ "color": "blue" })))).await.unwrap();
        assert!(again.already);
        assert_eq!(again.seq, j.seq + 1);
        let stats = store.room_stats(&rid("doc")).await.unwrap();
        assert_eq!((stats.sessions, stats.users), (1, 1));
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.sessions["s1"].state, Some(obj(json!({ "color": "blue" }))));
    }

    /// Two tabs of one user are two sessions and one user with sessionCount 2.
    async fn tabs_of_one_user_count_as_sessions(store, env) {
        let a = claim(store, "alice", "tab1").await;
        let b = claim(store, "alice", "tab2").await;
        let c = claim(store, "bob", "bob1").await;
        for s in [&a, &b, &c] {
            store.join(s, &rid("doc"), None).await.unwrap();
        }
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.users["alice"].session_count, 2);
        assert_eq!(v.users["bob"].session_count, 1);
        assert_eq!(v.sessions.len(), 3);
        let stats = store.room_stats(&rid("doc")).await.unwrap();
        assert_eq!((stats.sessions, stats.users), (3, 2));
        let st = store.users_status(&[uid("alice")]).await.unwrap();
        assert_eq!(st["alice"].session_count, 2);
        // One tab leaving leaves the user in the room.
        store.leave(&a, &rid("doc")).await.unwrap();
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.users["alice"].session_count, 1);
        assert_eq!(store.room_stats(&rid("doc")).await.unwrap().users, 2);
    }

    /// Every visible change bumps the room's seq and publishes one event carrying it.
    async fn every_visible_change_publishes_one_event_with_the_seq(store, env) {
        let mut rx = subscribe(store, &["doc"]).await;
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        store.update_state(&s, &rid("doc"), obj(json!({ "typing": true }))).await.unwrap();
        store.heartbeat(&s, Some(Activity::Idle)).await.unwrap();
        store.leave(&s, &rid("doc")).await.unwrap();
        let evs = drain(&mut rx).await;
        assert_eq!(
            kinds(&evs),
            vec![
                (EventKind::Join, "active".into()),
                (EventKind::Update, "active".into()),
                (EventKind::Status, "idle".into()),
                (EventKind::Leave, "offline".into()),
            ]
        );
        let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let e = &evs[1];
        assert_eq!((e.v, e.user_id.as_str(), e.session_id.as_str(), e.node_id.as_str()), (1, "alice", "s1", "node-a"));
        assert_eq!(e.epoch, s.epoch);
        assert_eq!(e.state, Some(obj(json!({ "typing": true }))));
        assert_eq!(e.ts, T0);
    }

    /// Events carry the member as the room keeps it: a follower that
    /// applies them to its first read holds exactly what a fresh read shows.
    async fn a_rooms_events_rebuild_its_view(store, env) {
        let mut rx = subscribe(store, &["doc"]).await;
        let first = store.room_members(&rid("doc")).await.unwrap();
        let mut live = presence_core::live::LiveRoom::new(rid("doc"), first.seq, first.members);
        let a = claim(store, "alice", "s1").await;
        let b = claim(store, "bob", "s2").await;
        let mut named = hello("alice", Some("s3"));
        named.handle = Some("Alice".into());
        let c = store.hello(named).await.unwrap();
        let c = SessionRef { session_id: c.session_id, epoch: c.epoch };
        store.join(&a, &rid("doc"), Some(obj(json!({ "x": 1 })))).await.unwrap();
        store.join(&b, &rid("doc"), None).await.unwrap();
        store.join(&c, &rid("doc"), None).await.unwrap();
        env.clock.advance(1_000);
        store.update_state(&a, &rid("doc"), obj(json!({ "y": 2 }))).await.unwrap();
        store.heartbeat(&b, Some(Activity::Idle)).await.unwrap();
        store.heartbeat(&c, Some(Activity::Background)).await.unwrap();
        store.leave(&a, &rid("doc")).await.unwrap();
        for ev in drain(&mut rx).await {
            assert!(ev.removes() || ev.member.is_some(), "{ev:?}");
            assert_eq!(live.apply(&ev), presence_core::live::Applied::Applied, "{ev:?}");
        }
        let now = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(live.view(now.generated_at), now);
        assert_eq!(now.users["alice"].handle.as_deref(), Some("Alice"));
    }

    /// Pages list a room's members once each, by user then session, each
    /// with its user's whole entry; a member that leaves or joins behind
    /// the cursor does not shift the pages after it.
    async fn pages_walk_a_room_in_a_stable_order(store, env) {
        let _ = &env;
        let mut want = Vec::new();
        for (u, s) in [("bob", "b2"), ("alice", "a1"), ("bob", "b1"), ("carol", "c1"), ("alice", "a2"), ("dave", "d1")] {
            let r = claim(store, u, s).await;
            store.join(&r, &rid("doc"), None).await.unwrap();
            want.push((u.to_owned(), s.to_owned()));
        }
        want.sort();
        let whole = store.room_view(&rid("doc")).await.unwrap();
        let mut got = Vec::new();
        let mut after: Option<presence_core::PageCursor> = None;
        let mut pages = 0;
        loop {
            let p = store.room_page(&rid("doc"), after.as_ref(), 2).await.unwrap();
            assert_eq!(p.seq, whole.seq);
            assert!(p.page.sessions.len() <= 2);
            let mut keys: Vec<_> = p.page.sessions.values().map(|s| (s.user_id.to_string(), s.session_id.to_string())).collect();
            keys.sort();
            for s in p.page.sessions.values() {
                assert_eq!(p.page.users.get(&s.user_id), whole.users.get(&s.user_id));
                assert_eq!(Some(s), whole.sessions.get(&s.session_id));
            }
            assert_eq!(p.page.users.len(), keys.iter().map(|k| &k.0).collect::<std::collections::BTreeSet<_>>().len());
            got.extend(keys);
            pages += 1;
            match p.page.next_cursor {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        assert_eq!(got, want);
        assert_eq!(pages, 3);
        // A cursor past everyone reads an empty last page; an unknown room too.
        let end: presence_core::PageCursor = "zzz~z".parse().unwrap();
        let p = store.room_page(&rid("doc"), Some(&end), 2).await.unwrap();
        assert!(p.page.sessions.is_empty() && p.page.next_cursor.is_none());
        let p = store.room_page(&rid("nowhere"), None, 2).await.unwrap();
        assert_eq!((p.seq, p.page.sessions.len()), (0, 0));
        // Leaving and joining behind a cursor: the next page is unchanged.
        let c: presence_core::PageCursor = "bob~b1".parse().unwrap();
        let before = store.room_page(&rid("doc"), Some(&c), 10).await.unwrap().page;
        let e = claim(store, "aaron", "e1").await;
        store.join(&e, &rid("doc"), None).await.unwrap();
        let after_join = store.room_page(&rid("doc"), Some(&c), 10).await.unwrap().page;
        assert_eq!(after_join.sessions, before.sessions);
        // One more member than the page holds: the page says so.
        let p = store.room_page(&rid("doc"), None, 6).await.unwrap();
        assert_eq!(p.page.sessions.len(), 6);
        assert_eq!(p.page.next_cursor.map(|c| c.to_string()), Some("carol~c1".to_owned()));
    }

    /// A heartbeat that changes no status publishes nothing and bumps no seq.
    async fn a_plain_heartbeat_publishes_nothing(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        let seq = store.room_view(&rid("doc")).await.unwrap().seq;
        let mut rx = subscribe(store, &["doc"]).await;
        for _ in 0..5 {
            env.clock.advance(env.timings.heartbeat_interval_ms);
            store.heartbeat(&s, Some(Activity::Active)).await.unwrap();
            store.sweep(1).await.unwrap();
            store.heartbeat(&s, None).await.unwrap();
        }
        assert!(drain(&mut rx).await.is_empty());
        let last = T0 + 5 * env.timings.heartbeat_interval_ms;
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.seq, seq);
        // A room's copy of a member moves with what observers see, not with
        // every heartbeat; who's-online has the live times.
        assert_eq!(v.sessions["s1"].last_heartbeat_at, T0);
        let online = store.whos_online(Page { limit: 10, after: None }).await.unwrap();
        assert_eq!(online.entries.sessions["s1"].last_heartbeat_at, last);
        // The next visible change brings the room's copy up to date.
        store.update_state(&s, &rid("doc"), obj(json!({ "typing": true }))).await.unwrap();
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.sessions["s1"].last_heartbeat_at, last);
        assert_eq!(v.users["alice"].last_seen_at, last);
    }

    /// State patches merge shallowly, `null` deletes a field, and a no-op patch publishes nothing.
    async fn state_patches_merge_shallowly(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), Some(obj(json!({ "a": 1, "b": { "x": 1 } })))).await.unwrap();
        store.update_state(&s, &rid("doc"), obj(json!({ "b": { "y": 2 }, "c": 3 }))).await.unwrap();
        store.update_state(&s, &rid("doc"), obj(json!({ "a": null }))).await.unwrap();
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.sessions["s1"].state, Some(obj(json!({ "b": { "y": 2 }, "c": 3 }))));
        let seq = v.seq;
        store.update_state(&s, &rid("doc"), obj(json!({ "c": 3 }))).await.unwrap();
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().seq, seq);
        // Deleting every field leaves no state at all.
        store.update_state(&s, &rid("doc"), obj(json!({ "b": null, "c": null }))).await.unwrap();
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().sessions["s1"].state, None);
    }

    /// Limits: state size (on join and after a merge) and rooms per session; nothing changes.
    async fn limits_are_enforced_without_side_effects(store, env) {
        let s = claim(store, "alice", "s1").await;
        let big = obj(json!({ "x": "y".repeat(100) }));
        assert!(matches!(store.join(&s, &rid("r0"), Some(big.clone())).await, Err(StoreError::StateTooLarge { limit: 64, .. })));
        assert_eq!(store.room_stats(&rid("r0")).await.unwrap().sessions, 0);
        store.join(&s, &rid("r0"), Some(obj(json!({ "a": "small" })))).await.unwrap();
        assert!(matches!(store.update_state(&s, &rid("r0"), big).await, Err(StoreError::StateTooLarge { .. })));
        assert_eq!(store.room_view(&rid("r0")).await.unwrap().sessions["s1"].state, Some(obj(json!({ "a": "small" }))));
        store.join(&s, &rid("r1"), None).await.unwrap();
        store.join(&s, &rid("r2"), None).await.unwrap();
        assert_eq!(store.join(&s, &rid("r3"), None).await, Err(StoreError::TooManyRooms { limit: 3 }));
        assert_eq!(store.room_stats(&rid("r3")).await.unwrap().sessions, 0);
    }

    /// A user holds at most `max_sessions_per_user` sessions: one more is
    /// refused and leaves no trace; resuming one of them is not a new one,
    /// and ending one makes room.
    async fn sessions_per_user_are_limited(store, env) {
        let a = claim(store, "alice", "s1").await;
        claim(store, "alice", "s2").await;
        claim(store, "alice", "s3").await;
        claim(store, "bob", "b1").await;
        assert_eq!(store.hello(hello("alice", Some("s4"))).await, Err(StoreError::TooManySessions { limit: 3 }));
        assert_eq!(store.hello(hello("alice", None)).await, Err(StoreError::TooManySessions { limit: 3 }));
        let online = store.whos_online(Page { limit: 10, after: None }).await.unwrap();
        let mut sids: Vec<String> = online.entries.sessions.keys().map(|s| s.to_string()).collect();
        sids.sort();
        assert_eq!(sids, vec!["b1", "s1", "s2", "s3"]);
        assert_eq!(store.users_status(&[uid("alice")]).await.unwrap()["alice"].session_count, 3);
        let again = store.hello(hello("alice", Some("s1"))).await.unwrap();
        assert!(again.resumed);
        store.end(&SessionRef { session_id: sid("s1"), epoch: again.epoch }).await.unwrap();
        assert!(a.epoch < again.epoch);
        assert!(!store.hello(hello("alice", Some("s4"))).await.unwrap().resumed);
    }

    /// State and leave need membership; unknown sessions are `NoSession`.
    async fn not_joined_and_no_session(store, env) {
        let s = claim(store, "alice", "s1").await;
        assert_eq!(store.update_state(&s, &rid("doc"), JsonMap::new()).await, Err(StoreError::NotJoined(rid("doc"))));
        assert_eq!(store.leave(&s, &rid("doc")).await, Err(StoreError::NotJoined(rid("doc"))));
        let ghost = SessionRef { session_id: sid("ghost"), epoch: 1 };
        assert_eq!(store.heartbeat(&ghost, None).await, Err(StoreError::NoSession));
        assert_eq!(store.join(&ghost, &rid("doc"), None).await, Err(StoreError::NoSession));
    }

    /// Ending a session leaves every room at once and removes it.
    async fn end_leaves_everything_at_once(store, env) {
        let mut rx = subscribe(store, &["a", "b"]).await;
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("a"), None).await.unwrap();
        store.join(&s, &rid("b"), None).await.unwrap();
        let mut left = store.end(&s).await.unwrap();
        left.sort();
        assert_eq!(left, vec![rid("a"), rid("b")]);
        let evs = drain(&mut rx).await;
        assert_eq!(evs.iter().filter(|e| e.kind == EventKind::Leave).count(), 2);
        assert!(store.room_view(&rid("a")).await.unwrap().sessions.is_empty());
        assert!(store.whos_online(Page { limit: 10, after: None }).await.unwrap().entries.users.is_empty());
        assert_eq!(store.heartbeat(&s, None).await, Err(StoreError::NoSession));
    }

    /// Resuming after a disconnect keeps the rooms, bumps the epoch by one, and
    /// observers see stale then active, never a leave or a join.
    async fn resume_after_disconnect_does_not_flap(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), Some(obj(json!({ "k": 1 })))).await.unwrap();
        let mut rx = subscribe(store, &["doc"]).await;
        store.disconnect(&s).await.unwrap();
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().sessions["s1"].status, SessionStatus::Stale);
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().users["alice"].confidence, Confidence::Low);
        env.clock.advance(env.timings.reconnect_grace_ms - 1);
        store.sweep(1).await.unwrap();
        let c = store.hello(hello("alice", Some("s1"))).await.unwrap();
        assert!(c.resumed);
        assert_eq!(c.epoch, s.epoch + 1);
        assert_eq!(c.rooms, vec![rid("doc")]);
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.sessions["s1"].status, SessionStatus::Active);
        assert_eq!(v.sessions["s1"].state, Some(obj(json!({ "k": 1 }))));
        assert_eq!(
            kinds(&drain(&mut rx).await),
            vec![(EventKind::Status, "stale".into()), (EventKind::Status, "active".into())]
        );
    }

    /// After a newer connection claims the session, every write of the old one
    /// is rejected and changes nothing, its disconnect included.
    async fn old_connection_is_fenced(store, env) {
        let old = claim(store, "alice", "s1").await;
        store.join(&old, &rid("doc"), None).await.unwrap();
        let new = claim(store, "alice", "s1").await;
        assert!(new.epoch > old.epoch);
        let seq = store.room_view(&rid("doc")).await.unwrap().seq;
        let stale = |r: Result<_, StoreError>| matches!(r, Err(StoreError::StaleEpoch { current }) if current == new.epoch);
        assert!(stale(store.heartbeat(&old, Some(Activity::Idle)).await.map(|_| ())));
        assert!(stale(store.update_state(&old, &rid("doc"), obj(json!({ "x": 1 }))).await));
        assert!(stale(store.join(&old, &rid("other"), None).await.map(|_| ())));
        assert!(stale(store.leave(&old, &rid("doc")).await));
        assert!(stale(store.end(&old).await.map(|_| ())));
        assert!(stale(store.disconnect(&old).await));
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.seq, seq);
        assert_eq!(v.sessions["s1"].status, SessionStatus::Active);
        assert_eq!(v.sessions["s1"].state, None);
        assert_eq!(store.room_stats(&rid("other")).await.unwrap().sessions, 0);
        store.heartbeat(&new, None).await.unwrap();
    }

    /// A session id reused right after its session ended starts above its old epoch.
    async fn a_reused_session_id_never_reuses_an_epoch(store, env) {
        let first = claim(store, "alice", "s1").await;
        store.end(&first).await.unwrap();
        assert_eq!(store.heartbeat(&first, None).await, Err(StoreError::NoSession), "its owner may claim it again");
        let second = claim(store, "alice", "s1").await;
        assert!(second.epoch > first.epoch);
        assert!(matches!(store.heartbeat(&first, None).await, Err(StoreError::StaleEpoch { .. })));
        store.heartbeat(&second, None).await.unwrap();
    }

    /// A connection that lost its session to a newer one cannot bring it back
    /// after the newer one ended it.
    async fn a_superseded_connection_stays_fenced_after_the_session_ends(store, env) {
        let old = claim(store, "alice", "s1").await;
        let new = claim(store, "alice", "s1").await;
        store.end(&new).await.unwrap();
        assert!(matches!(store.heartbeat(&old, None).await, Err(StoreError::StaleEpoch { .. })));
        assert_eq!(store.heartbeat(&new, None).await, Err(StoreError::NoSession));
    }

    /// 1,000 rounds in which a new connection claims a session while the old
    /// connection sends a heartbeat, a state change and a leave at the same
    /// time: a write of the old connection either happened before the claim
    /// (and the new owner sees it) or is refused and changes nothing.
    async fn racing_writes_of_an_old_connection_never_apply_after_a_takeover(store, env) {
        let mut applied = [0u32; 3];
        for i in 0..1000u32 {
            let sid_s = format!("race-{i}");
            let room = rid(&format!("race-room-{}", i % 7));
            let old = claim(store, "racer", &sid_s).await;
            store.join(&old, &room, Some(obj(json!({ "v": 0 })))).await.unwrap();
            let patch = obj(json!({ "v": i + 1 }));
            let takeover = store.hello(hello("racer", Some(&sid_s)));
            let hb = store.heartbeat(&old, Some(Activity::Idle));
            let st = store.update_state(&old, &room, patch);
            let lv = store.leave(&old, &room);
            // Vary who is sent first.
            let (claimed, hb, st, lv) = match i % 4 {
                0 => tokio::join!(takeover, hb, st, lv),
                1 => { let (lv, st, hb, c) = tokio::join!(lv, st, hb, takeover); (c, hb, st, lv) }
                2 => { let (st, c, lv, hb) = tokio::join!(st, takeover, lv, hb); (c, hb, st, lv) }
                _ => { let (hb, lv, c, st) = tokio::join!(hb, lv, takeover, st); (c, hb, st, lv) }
            };
            let claimed = claimed.unwrap();
            assert!(claimed.resumed && claimed.epoch > old.epoch);
            for (n, r) in applied.iter_mut().zip([hb.is_ok(), st.is_ok(), lv.is_ok()]) {
                *n += u32::from(r);
            }
            for r in [&hb, &st, &lv] {
                assert!(matches!(r, Ok(()) | Err(StoreError::StaleEpoch { .. }) | Err(StoreError::NotJoined(_))), "round {i}: {r:?}");
            }
            let in_room_by_truth = claimed.rooms.contains(&room);
            assert_eq!(in_room_by_truth, lv.is_err(), "round {i}: a leave applies iff it came before the claim");
            let view = store.room_view(&room).await.unwrap();
            let member = view.sessions.get(sid_s.as_str());
            assert_eq!(member.is_some(), in_room_by_truth, "round {i}: the room agrees with the session");
            if let Some(m) = member {
                let expected = if st.is_ok() { json!({ "v": i + 1 }) } else { json!({ "v": 0 }) };
                assert_eq!(m.state, Some(obj(expected)), "round {i}: state {st:?}");
                assert_eq!(m.status, SessionStatus::Active, "round {i}: the new owner's hello wins");
            }
            // And nothing the old connection sends now applies.
            assert!(matches!(store.heartbeat(&old, None).await, Err(StoreError::StaleEpoch { .. })));
            let new = SessionRef { session_id: claimed.session_id, epoch: claimed.epoch };
            store.end(&new).await.unwrap();
        }
        eprintln!("old connection's writes applied before the takeover, of 1000: heartbeat {}, state {}, leave {}", applied[0], applied[1], applied[2]);
    }

    /// A client cannot raise its own epoch.
    async fn forged_higher_epoch_is_rejected(store, env) {
        let s = claim(store, "alice", "s1").await;
        let forged = SessionRef { session_id: s.session_id.clone(), epoch: s.epoch + 1 };
        assert!(matches!(store.heartbeat(&forged, None).await, Err(StoreError::StaleEpoch { .. })));
        assert!(matches!(store.join(&forged, &rid("doc"), None).await, Err(StoreError::StaleEpoch { .. })));
        store.heartbeat(&s, None).await.unwrap();
    }

    /// Another user cannot take over a session id, and the owner is unharmed.
    async fn another_user_cannot_claim_a_session(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        assert!(matches!(store.hello(hello("mallory", Some("s1"))).await, Err(StoreError::Forbidden(_))));
        store.heartbeat(&s, None).await.unwrap();
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.sessions["s1"].user_id.as_str(), "alice");
    }

    /// Session ids are visible in snapshots: once its owner ended it, the id
    /// stays the owner's (for the tombstone's life), so no one can squat it
    /// and lock the owner out; the owner may use it again.
    async fn an_ended_sessions_id_stays_its_users(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.end(&s).await.unwrap();
        assert!(matches!(store.hello(hello("mallory", Some("s1"))).await, Err(StoreError::Forbidden(_))));
        assert!(store.whos_online(Page { limit: 10, after: None }).await.unwrap().entries.users.is_empty(), "nothing written for mallory");
        let again = claim(store, "alice", "s1").await;
        assert!(again.epoch > s.epoch);
        store.heartbeat(&again, None).await.unwrap();
    }

    /// No heartbeat: active, stale after the timeout, removed after the grace window.
    async fn silent_sessions_go_stale_then_expire(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        let mut rx = subscribe(store, &["doc"]).await;
        let t = env.timings;
        env.clock.advance(t.heartbeat_timeout_ms - 1);
        store.sweep(1).await.unwrap();
        assert!(drain(&mut rx).await.is_empty());
        env.clock.advance(1);
        let r = store.sweep(1).await.unwrap();
        assert_eq!((r.status_changes, r.expired), (1, 0));
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().users["alice"].status, UserStatus::Stale);
        assert_eq!(store.users_status(&[uid("alice")]).await.unwrap()["alice"].confidence, Confidence::Low);
        env.clock.advance(t.reconnect_grace_ms);
        let r = store.sweep(1).await.unwrap();
        assert_eq!(r.expired, 1);
        assert_eq!(
            kinds(&drain(&mut rx).await),
            vec![(EventKind::Status, "stale".into()), (EventKind::Expire, "offline".into())]
        );
        assert!(store.room_view(&rid("doc")).await.unwrap().sessions.is_empty());
        assert_eq!(store.room_stats(&rid("doc")).await.unwrap().sessions, 0);
        assert_eq!(store.users_status(&[uid("alice")]).await.unwrap()["alice"].status, UserStatus::Offline);
        assert_eq!(store.heartbeat(&s, None).await, Err(StoreError::NoSession));
    }

    /// After a disconnect, the session is removed when the grace window ends.
    async fn disconnected_sessions_expire_after_the_grace_window(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        env.clock.advance(1_000);
        store.disconnect(&s).await.unwrap();
        env.clock.advance(env.timings.reconnect_grace_ms - 1);
        store.sweep(1).await.unwrap();
        assert_eq!(store.room_stats(&rid("doc")).await.unwrap().sessions, 1);
        env.clock.advance(1);
        assert_eq!(store.sweep(1).await.unwrap().expired, 1);
        assert_eq!(store.room_stats(&rid("doc")).await.unwrap().sessions, 0);
        // Too late to resume: a hello with the same id is a new session.
        let c = store.hello(hello("alice", Some("s1"))).await.unwrap();
        assert!(!c.resumed);
        assert!(c.rooms.is_empty());
        assert!(c.epoch > s.epoch, "a reused id starts above its old epochs");
    }

    /// A session past its deadline is not resumable even before a sweep removed it.
    async fn an_expired_session_is_not_resumed_before_the_sweep(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        let mut rx = subscribe(store, &["doc"]).await;
        env.clock.advance(env.timings.heartbeat_timeout_ms + env.timings.reconnect_grace_ms);
        let c = store.hello(hello("alice", Some("s1"))).await.unwrap();
        assert!(!c.resumed);
        assert!(c.rooms.is_empty());
        assert_eq!(store.room_stats(&rid("doc")).await.unwrap().sessions, 0);
        assert!(drain(&mut rx).await.iter().any(|e| e.kind == EventKind::Expire));
    }

    /// Without activity a heartbeating session turns idle, then away.
    async fn inactivity_turns_idle_then_away(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        let t = env.timings;
        let mut rx = subscribe(store, &["doc"]).await;
        let mut now = 0;
        while now <= t.away_after_ms {
            env.clock.advance(t.heartbeat_interval_ms / 2);
            now += t.heartbeat_interval_ms / 2;
            // The client reports idle once, then only heartbeats.
            let activity = (now == t.heartbeat_interval_ms / 2).then_some(Activity::Idle);
            store.heartbeat(&s, activity).await.unwrap();
            store.sweep(1).await.unwrap();
        }
        assert_eq!(
            kinds(&drain(&mut rx).await),
            vec![(EventKind::Status, "idle".into()), (EventKind::Status, "away".into())]
        );
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.users["alice"].status, UserStatus::Away);
        assert_eq!(v.users["alice"].confidence, Confidence::Medium);
        // Activity brings it back at once.
        store.heartbeat(&s, Some(Activity::Active)).await.unwrap();
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().users["alice"].status, UserStatus::Active);
    }

    /// Even with no explicit idle report, `idleAfterMs` without activity is idle.
    async fn idle_after_inactivity_without_a_report(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        store.heartbeat(&s, Some(Activity::Idle)).await.unwrap();
        store.heartbeat(&s, Some(Activity::Active)).await.unwrap();
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().sessions["s1"].status, SessionStatus::Active);
        // Heartbeats that report nothing prove liveness, not activity.
        let mut rx = subscribe(store, &["doc"]).await;
        let step = env.timings.heartbeat_interval_ms;
        let mut waited = 0;
        while waited + step < env.timings.idle_after_ms {
            env.clock.advance(step);
            waited += step;
            store.heartbeat(&s, None).await.unwrap();
            store.sweep(1).await.unwrap();
        }
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().sessions["s1"].status, SessionStatus::Active);
        env.clock.advance(env.timings.idle_after_ms - waited);
        store.heartbeat(&s, None).await.unwrap();
        store.sweep(1).await.unwrap();
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().sessions["s1"].status, SessionStatus::Idle);
        assert_eq!(kinds(&drain(&mut rx).await), vec![(EventKind::Status, "idle".into())]);
    }

    /// A background session is away, and survives throttled heartbeats up to
    /// `backgroundTimeoutMs` without turning stale.
    async fn background_sessions_are_away_and_do_not_flap(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        let mut rx = subscribe(store, &["doc"]).await;
        store.heartbeat(&s, Some(Activity::Background)).await.unwrap();
        for _ in 0..5 {
            env.clock.advance(60_000);
            store.sweep(1).await.unwrap();
            store.heartbeat(&s, Some(Activity::Background)).await.unwrap();
        }
        assert_eq!(kinds(&drain(&mut rx).await), vec![(EventKind::Status, "away".into())]);
        env.clock.advance(env.timings.background_timeout_ms);
        store.sweep(1).await.unwrap();
        assert_eq!(store.room_view(&rid("doc")).await.unwrap().sessions["s1"].status, SessionStatus::Stale);
    }

    /// Who's online pages by user id and covers sessions outside any room.
    async fn whos_online_pages_by_user(store, env) {
        for u in ["a", "b", "c", "d", "e"] {
            claim(store, u, &format!("{u}-1")).await;
        }
        claim(store, "c", "c-2").await;
        let p1 = store.whos_online(Page { limit: 2, after: None }).await.unwrap();
        assert_eq!(p1.entries.users.keys().map(|u| u.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(p1.next_cursor, Some(uid("b")));
        let p2 = store.whos_online(Page { limit: 2, after: p1.next_cursor }).await.unwrap();
        assert_eq!(p2.entries.users["c"].session_count, 2);
        assert_eq!(p2.entries.sessions.len(), 3);
        let p3 = store.whos_online(Page { limit: 2, after: p2.next_cursor }).await.unwrap();
        assert_eq!(p3.entries.users.len(), 1);
        assert_eq!(p3.next_cursor, None);
    }

    /// Room scope: a user's status in a room comes from their sessions in that room only.
    async fn room_scope_uses_only_sessions_in_the_room(store, env) {
        let a = claim(store, "alice", "a1").await;
        let b = claim(store, "alice", "a2").await;
        store.join(&a, &rid("doc"), None).await.unwrap();
        store.heartbeat(&a, Some(Activity::Idle)).await.unwrap();
        store.heartbeat(&b, Some(Activity::Active)).await.unwrap();
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert_eq!(v.users["alice"].status, UserStatus::Idle);
        assert_eq!(v.users["alice"].session_count, 1);
        let st = store.users_status(&[uid("alice")]).await.unwrap();
        assert_eq!(st["alice"].status, UserStatus::Active);
        assert_eq!(st["alice"].session_count, 2);
    }

    /// Nodes register with a TTL: listed by id while refreshed, gone once it
    /// lapses or they deregister.
    async fn nodes_register_with_a_ttl(store, env) {
        let node = |id: &str, sessions: u64| crate::api::NodeInfo {
            node_id: presence_core::NodeId::new(id).unwrap(),
            addr: format!("127.0.0.1:{}", 9000 + sessions),
            started_at: T0,
            last_seen_at: presence_core::Clock::now_ms(&env.clock),
            sessions,
            rooms: 0,
        };
        store.register_node(&node("n-b", 2), 10_000).await.unwrap();
        store.register_node(&node("n-a", 1), 10_000).await.unwrap();
        let ids = |ns: Vec<crate::api::NodeInfo>| ns.into_iter().map(|n| n.node_id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(store.nodes().await.unwrap()), vec!["n-a", "n-b"]);
        assert_eq!(store.nodes().await.unwrap()[1], node("n-b", 2));
        // n-a refreshes, n-b does not.
        env.clock.advance(6_000);
        store.register_node(&node("n-a", 5), 10_000).await.unwrap();
        env.clock.advance(6_000);
        let live = store.nodes().await.unwrap();
        assert_eq!(ids(live.clone()), vec!["n-a"]);
        assert_eq!(live[0].sessions, 5);
        store.deregister_node(&presence_core::NodeId::new("n-a").unwrap()).await.unwrap();
        assert!(store.nodes().await.unwrap().is_empty());
    }

    /// One holder of the reaper lease at a time; renewals keep the term, a
    /// new holder gets a higher one; a release by a stale term does nothing.
    async fn the_reaper_lease_has_one_holder_at_a_time(store, env) {
        let a = presence_core::NodeId::new("node-a").unwrap();
        let b = presence_core::NodeId::new("node-b").unwrap();
        assert_eq!(store.current_lease().await.unwrap(), None);
        let la = store.acquire_lease(&a, 300).await.unwrap();
        assert_eq!(la.node_id, a);
        assert!(la.term >= 1);
        // b sees a's lease and does not get it.
        assert_eq!(store.acquire_lease(&b, 300).await.unwrap(), la);
        // a renews: same term, later.
        env.clock.advance(100);
        let again = store.acquire_lease(&a, 300).await.unwrap();
        assert_eq!((again.node_id.clone(), again.term), (a.clone(), la.term));
        assert!(again.lease_until > la.lease_until);
        assert_eq!(store.current_lease().await.unwrap(), Some(again.clone()));
        // a stops renewing: once the lease ran out (on the store's clock and
        // in real time, for Redis's TTL) b takes it with a higher term.
        env.clock.advance(400);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let lb = store.acquire_lease(&b, 300).await.unwrap();
        assert_eq!(lb.node_id, b);
        assert!(lb.term > la.term);
        // a's release, with its old term, leaves b's lease alone; b's own frees it.
        store.release_lease(&a, la.term).await.unwrap();
        assert_eq!(store.current_lease().await.unwrap(), Some(lb.clone()));
        store.release_lease(&b, lb.term).await.unwrap();
        assert_eq!(store.current_lease().await.unwrap(), None);
        let next = store.acquire_lease(&a, 300).await.unwrap();
        assert!(next.term > lb.term);
    }

    /// A sweep with an older term changes nothing that a newer one swept:
    /// a leader paused past its lease cannot act after its successor.
    async fn a_sweep_with_an_older_term_is_fenced(store, env) {
        let s = claim(store, "alice", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        let t = env.timings;
        env.clock.advance(t.heartbeat_timeout_ms);
        let r = store.sweep(7).await.unwrap();
        assert_eq!((r.status_changes, r.fenced), (1, 0), "term 7 marks it stale");
        env.clock.advance(t.reconnect_grace_ms);
        let old = store.sweep(6).await.unwrap();
        assert_eq!(old.expired, 0, "term 6 comes after term 7: fenced");
        assert!(old.fenced >= 1);
        assert_eq!(store.room_stats(&rid("doc")).await.unwrap().sessions, 1);
        let new = store.sweep(7).await.unwrap();
        assert_eq!(new.expired, 1);
        assert_eq!(store.room_stats(&rid("doc")).await.unwrap().sessions, 0);
    }

    /// Readiness and capabilities are session facts: declared at hello and
    /// later, fenced by epoch, carried by events and room views, kept by a
    /// resume that does not repeat them, and read per user for reachability.
    async fn readiness_is_a_fenced_session_fact_in_views_and_events(store, env) {
        let mut rx = subscribe(store, &["call"]).await;
        let first = store.room_members(&rid("call")).await.unwrap();
        let mut live = presence_core::live::LiveRoom::new(rid("call"), first.seq, first.members);
        let mut h = hello("bob", Some("b1"));
        h.declare = Declare { readiness: None, capabilities: Some(caps(&["audio", "video"])) };
        let c = store.hello(h).await.unwrap();
        let b = SessionRef { session_id: c.session_id, epoch: c.epoch };
        store.join(&b, &rid("call"), None).await.unwrap();
        let busy = Declare { readiness: Some(Readiness::Busy), capabilities: None };
        assert!(store.declare(&b, &busy).await.unwrap());
        assert!(!store.declare(&b, &busy).await.unwrap(), "the same again changes nothing");
        let evs = drain(&mut rx).await;
        assert_eq!(evs.len(), 2, "a join and one update: {evs:?}");
        assert_eq!(evs[1].kind, EventKind::Update);
        for ev in &evs {
            assert_eq!(live.apply(ev), presence_core::live::Applied::Applied, "{ev:?}");
        }
        let view = store.room_view(&rid("call")).await.unwrap();
        assert_eq!(live.view(view.generated_at), view);
        let entry = &view.sessions["b1"];
        assert_eq!(entry.readiness, Some(Readiness::Busy));
        assert_eq!(entry.capabilities, Some(caps(&["audio", "video"])));
        // A resume that declares nothing keeps what the session declared.
        store.disconnect(&b).await.unwrap();
        let c = store.hello(hello("bob", Some("b1"))).await.unwrap();
        let b2 = SessionRef { session_id: c.session_id, epoch: c.epoch };
        let mine = store.user_sessions(&uid("bob")).await.unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].declared.readiness, Readiness::Busy);
        assert_eq!(mine[0].declared.capabilities, caps(&["audio", "video"]));
        assert_eq!(mine[0].rooms, vec![rid("call")]);
        // The old connection is fenced.
        let back = Declare { readiness: Some(Readiness::Available), capabilities: None };
        assert!(matches!(store.declare(&b, &back).await, Err(StoreError::StaleEpoch { .. })));
        assert!(store.declare(&b2, &back).await.unwrap());
        let view = store.room_view(&rid("call")).await.unwrap();
        assert_eq!(view.sessions["b1"].readiness, None, "available is the default, left out");
    }

    /// An intent waits for its callee, resolves once, counts against both
    /// users' limits while it waits, and is taken once.
    async fn intents_resolve_once_and_are_limited(store, env) {
        let make = |n: usize, from: &str, to: &str| Intent {
            id: format!("i{n}-{from}-{to}"),
            from: uid(from),
            from_session: Some(sid("s-caller")),
            to: uid(to),
            need: caps(&["audio"]),
            note: Some("Ada would like to call".into()),
            created_at: T0,
            expires_at: T0 + 10_000,
            outcome: None,
        };
        let first = make(0, "ada", "bob");
        store.put_intent(&first).await.unwrap();
        assert_eq!(store.intents_to(&uid("bob")).await.unwrap(), vec![first.clone()]);
        assert_eq!(store.intents_from(&uid("ada")).await.unwrap(), vec![first.clone()]);
        let per_user = env.limits.max_intents_per_user;
        for n in 1..per_user {
            store.put_intent(&make(n, "ada", &format!("u{n}"))).await.unwrap();
        }
        let refused = store.put_intent(&make(99, "ada", "carol")).await;
        assert!(matches!(refused, Err(StoreError::TooManyIntents(_))), "{refused:?}");
        assert!(store.intents_to(&uid("carol")).await.unwrap().is_empty(), "nothing written");
        let ready = IntentOutcome::Reachable { session_id: sid("s-bob") };
        let won = store.resolve_intent(&first, ready.clone()).await.unwrap().unwrap();
        assert_eq!(won.outcome, Some(ready.clone()));
        assert_eq!(store.resolve_intent(&first, ready).await.unwrap(), None, "once");
        assert_eq!(store.resolve_intent(&first, IntentOutcome::Expired).await.unwrap(), None);
        assert!(store.intents_to(&uid("bob")).await.unwrap().is_empty(), "no longer waiting");
        let kept = store.intents_from(&uid("ada")).await.unwrap();
        assert!(kept.contains(&won), "kept until delivered: {kept:?}");
        assert!(store.take_intent(&won).await.unwrap());
        assert!(!store.take_intent(&won).await.unwrap(), "taken once");
        // Past its TTL an intent only expires.
        let late = make(1, "ada", "u1");
        env.clock.advance(10_000);
        let ready = IntentOutcome::Reachable { session_id: sid("s-u1") };
        assert_eq!(store.resolve_intent(&late, ready).await.unwrap(), None);
        let expired = store.resolve_intent(&late, IntentOutcome::Expired).await.unwrap().unwrap();
        assert_eq!(expired.outcome, Some(IntentOutcome::Expired));
        // Expired intents no longer count: the caller may make new ones.
        store.put_intent(&Intent { expires_at: T0 + 20_000, ..make(100, "ada", "carol") }).await.unwrap();
        // A callee has a limit of their own.
        let to_limit = env.limits.max_intents_to_user;
        for n in 0..to_limit {
            let from = format!("f{n}");
            store.put_intent(&Intent { expires_at: T0 + 20_000, ..make(n, &from, "dave") }).await.unwrap();
        }
        let refused = store.put_intent(&Intent { expires_at: T0 + 20_000, ..make(0, "erin", "dave") }).await;
        assert!(matches!(refused, Err(StoreError::TooManyIntents(_))), "{refused:?}");
        assert!(store.intents_from(&uid("erin")).await.unwrap().is_empty(), "not counted for its caller");
    }

    /// Lifecycle events are decided once, at the user level: a second tab,
    /// its leave, a resume and a disconnect inside the grace window are not
    /// joins or leaves; the last session out is.
    async fn lifecycle_events_are_decided_once_at_the_user_level(store, env) {
        let log = store.lifecycle();
        log.ensure_group("t").await.unwrap();
        let s1 = claim(store, "ada", "s1").await;
        assert_eq!(lifecycle(store).await, ["user.online ada active"]);
        store.join(&s1, &rid("doc"), None).await.unwrap();
        assert_eq!(lifecycle(store).await, ["member.joined doc ada", "room.occupied doc"]);
        // A second tab of the same user: nothing at the user level.
        let s2 = claim(store, "ada", "s2").await;
        store.join(&s2, &rid("doc"), None).await.unwrap();
        store.leave(&s2, &rid("doc")).await.unwrap();
        store.end(&s2).await.unwrap();
        assert!(lifecycle(store).await.is_empty());
        // The user's derived status changes.
        env.clock.advance(1_000);
        store.heartbeat(&s1, Some(Activity::Idle)).await.unwrap();
        assert_eq!(lifecycle(store).await, ["user.status ada idle<active"]);
        store.disconnect(&s1).await.unwrap();
        assert_eq!(lifecycle(store).await, ["user.status ada stale<idle"]);
        // A resume inside the grace window: back, no leave, no join.
        let s1 = claim(store, "ada", "s1").await;
        assert_eq!(lifecycle(store).await, ["user.status ada active<stale"]);
        let b1 = claim(store, "bob", "b1").await;
        store.join(&b1, &rid("doc"), None).await.unwrap();
        assert_eq!(lifecycle(store).await, ["member.joined doc bob", "user.online bob active"]);
        // The last session out.
        env.clock.advance(1_000);
        let ended_at = T0 + 2_000;
        store.end(&s1).await.unwrap();
        let got = lifecycle(store).await;
        assert_eq!(got, ["member.left doc ada", "user.offline ada"]);
        let st = store.users_status(&[uid("ada")]).await.unwrap();
        assert_eq!(st["ada"].status, UserStatus::Offline);
        assert_eq!(st["ada"].last_online_at, ended_at, "when the last session ended");
        assert_eq!(st["ada"].last_seen_at, T0 + 1_000, "the last activity reported");
        // Bob's session is culled: stale, then gone, with the room.
        env.clock.advance(env.timings.heartbeat_timeout_ms + 1);
        store.sweep(1).await.unwrap();
        env.clock.advance(env.timings.reconnect_grace_ms + 1);
        store.sweep(1).await.unwrap();
        assert_eq!(
            lifecycle(store).await,
            ["member.left doc bob", "room.vacated doc", "user.offline bob", "user.status bob stale<active"]
        );
        let recent = store.recently_offline(10).await.unwrap();
        let names: Vec<&str> = recent.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["bob", "ada"], "newest first");
        assert_eq!(recent[1].1.last_online_at, ended_at);
        // Back online: no longer recently offline, and no last seen shown.
        claim(store, "ada", "s3").await;
        let recent = store.recently_offline(10).await.unwrap();
        assert_eq!(recent.len(), 1);
        let st = store.users_status(&[uid("ada")]).await.unwrap();
        assert_eq!(st["ada"].last_online_at, 0);
        // Kept for the last-seen TTL only.
        env.clock.advance(env.limits.last_seen_ttl_ms);
        assert!(store.recently_offline(10).await.unwrap().is_empty());
        let st = store.users_status(&[uid("bob")]).await.unwrap();
        assert_eq!(st["bob"].last_online_at, 0, "forgotten after the TTL");
    }

    /// A resolved intent is one lifecycle event (a cancelled one none).
    async fn resolved_intents_are_lifecycle_events(store, env) {
        store.lifecycle().ensure_group("t").await.unwrap();
        let make = |id: &str| Intent {
            id: id.into(),
            from: uid("ada"),
            from_session: None,
            to: uid("bob"),
            need: caps(&["audio"]),
            note: None,
            created_at: T0,
            expires_at: T0 + 10_000,
            outcome: None,
        };
        for id in ["i1", "i2", "i3"] {
            store.put_intent(&make(id)).await.unwrap();
        }
        let ready = IntentOutcome::Reachable { session_id: sid("b1") };
        store.resolve_intent(&make("i1"), ready.clone()).await.unwrap().unwrap();
        assert!(store.resolve_intent(&make("i1"), ready).await.unwrap().is_none());
        store.resolve_intent(&make("i2"), IntentOutcome::Cancelled).await.unwrap().unwrap();
        env.clock.advance(10_000);
        store.resolve_intent(&make("i3"), IntentOutcome::Expired).await.unwrap().unwrap();
        let got = read_lifecycle(store, "t").await;
        let kinds: Vec<String> = got.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        assert_eq!(got.len(), 2, "{kinds:?}");
        assert!(matches!(&got[0].kind, presence_core::Lifecycle::IntentReady { intent_id, session_id, .. }
            if intent_id == "i1" && session_id.as_str() == "b1"), "{kinds:?}");
        assert!(matches!(&got[1].kind, presence_core::Lifecycle::IntentExpired { intent_id, .. }
            if intent_id == "i3"), "{kinds:?}");
    }

    /// A consumer group hands an entry to one consumer; one that never
    /// acknowledges loses it to a claim, and an acknowledged entry is done.
    async fn the_lifecycle_stream_is_read_through_consumer_groups(store, env) {
        let log = store.lifecycle();
        log.ensure_group("g").await.unwrap();
        let s = claim(store, "ada", "s1").await;
        store.join(&s, &rid("doc"), None).await.unwrap();
        let mut taken = Vec::new();
        for shard in 0..log.shards() {
            taken.extend(log.read_new("g", "c1", shard, 100).await.unwrap());
            assert!(log.read_new("g", "c2", shard, 100).await.unwrap().is_empty(), "handed out once");
        }
        assert_eq!(taken.len(), 3, "{taken:?}");
        assert!(taken.iter().all(|e| e.event.is_some()));
        let mut ids: Vec<&str> = taken.iter().map(|e| e.event.as_ref().unwrap().id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "unique ids");
        // c1 never acknowledges: c2 claims them (idle for at least 0 ms).
        let mut claimed = Vec::new();
        for shard in 0..log.shards() {
            claimed.extend(log.claim_idle("g", "c2", shard, 0, 100).await.unwrap());
        }
        assert_eq!(claimed.len(), 3);
        for e in &claimed {
            log.ack("g", e.shard, std::slice::from_ref(&e.id)).await.unwrap();
        }
        for shard in 0..log.shards() {
            assert!(log.claim_idle("g", "c3", shard, 0, 100).await.unwrap().is_empty(), "done");
        }
        // Another group reads on its own, from when it was made.
        log.ensure_group("h").await.unwrap();
        store.leave(&s, &rid("doc")).await.unwrap();
        let mut fresh = Vec::new();
        for shard in 0..log.shards() {
            fresh.extend(log.read_new("h", "c1", shard, 100).await.unwrap());
        }
        let kinds: Vec<&str> = fresh.iter().map(|e| e.event.as_ref().unwrap().kind.type_name()).collect();
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        assert!(kinds.contains(&"member.left") && kinds.contains(&"room.vacated"));
        let _ = env;
    }

    /// The moderation API removes a session from a room, or ends it,
    /// whatever its connection's state; an ended session's id is refused.
    async fn moderation_removes_and_ends_sessions(store, env) {
        let s1 = claim(store, "ada", "s1").await;
        let s2 = claim(store, "ada", "s2").await;
        store.join(&s1, &rid("doc"), None).await.unwrap();
        store.join(&s2, &rid("doc"), None).await.unwrap();
        store.join(&s2, &rid("chat"), None).await.unwrap();
        assert_eq!(store.remove(&sid("nope"), None).await.unwrap(), None);
        assert_eq!(store.remove(&s1.session_id, Some(&rid("chat"))).await.unwrap(), None, "not in it");
        let h = store.remove(&s2.session_id, Some(&rid("doc"))).await.unwrap().unwrap();
        assert_eq!((h.user_id.as_str(), h.epoch, h.node_id.as_str()), ("ada", s2.epoch, "node-a"));
        assert_eq!(h.rooms, vec![rid("doc")]);
        let v = store.room_view(&rid("doc")).await.unwrap();
        assert!(v.sessions.contains_key("s1") && !v.sessions.contains_key("s2"));
        // Still a live session, in its other room; a new join is needed to come back.
        store.heartbeat(&s2, None).await.unwrap();
        assert!(store.room_view(&rid("chat")).await.unwrap().sessions.contains_key("s2"));
        // A disconnected session is ended all the same.
        store.disconnect(&s2).await.unwrap();
        let h = store.remove(&s2.session_id, None).await.unwrap().unwrap();
        assert_eq!(h.rooms, vec![rid("chat")]);
        assert!(store.room_view(&rid("chat")).await.unwrap().sessions.is_empty());
        let again = store.hello(hello("ada", Some("s2"))).await;
        assert!(matches!(again, Err(StoreError::Kicked)), "{again:?}");
        // The connection that held it is fenced; a new session starts.
        assert!(store.heartbeat(&s2, None).await.is_err());
        let fresh = store.hello(hello("ada", None)).await.unwrap();
        assert!(!fresh.resumed);
        store.remove(&s1.session_id, None).await.unwrap().unwrap();
        assert!(matches!(store.heartbeat(&s1, None).await, Err(StoreError::NoSession)));
        assert_eq!(store.remove(&s1.session_id, None).await.unwrap(), None, "once");
        let _ = env;
    }
}
