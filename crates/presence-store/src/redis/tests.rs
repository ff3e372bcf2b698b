//! The Redis store against real servers: the conformance suite on a
//! standalone server, a 3-master Cluster and TLS, and the tests that pin
//! what only Redis has (command counts, TTLs, script reloads, repairs).

use std::time::Duration;

use futures::future::join_all;
use presence_core::{Activity, Clock, Limits, RoomId, Timings, UserId};

use super::keys::SHARDS;
use super::{RedisOptions, RedisStore};
use crate::api::{Hello, Page, PresenceStore, SessionRef, SweepReport};
use crate::error::StoreError;

mod standalone {
    use std::sync::{Arc, OnceLock};

    use presence_testkit::RedisServer;

    use super::*;
    use crate::conformance::Env;

    fn server() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(|| RedisServer::start().expect("redis-server starts"))
    }

    async fn make(env: Env) -> Arc<dyn PresenceStore> {
        let mut opts = RedisOptions::new(&server().url());
        opts.prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let store = RedisStore::connect(opts, Arc::new(env.clock), env.timings, env.limits)
            .await
            .expect("connects");
        Arc::new(store)
    }

    conformance_suite!(make);

    /// The same contract with the scripts run by `EVALSHA`, as on Redis 6
    /// (or where an ACL denies `FUNCTION`).
    mod evalsha {
        use super::*;

        async fn make(env: Env) -> Arc<dyn PresenceStore> {
            let mut opts = RedisOptions::new(&server().url());
            opts.prefix = format!("e{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            opts.functions = false;
            let store = RedisStore::connect(opts, Arc::new(env.clock), env.timings, env.limits)
                .await
                .expect("connects");
            assert!(!store.scripts.uses_functions());
            Arc::new(store)
        }

        conformance_suite!(make);
    }

    /// A store on its own server (the command counts are the server's),
    /// and a connected session of user `uid`.
    async fn own_store(uid: &str) -> (RedisServer, RedisStore, SessionRef) {
        let (own, store, me, _) = own_store_clocked(uid).await;
        (own, store, me)
    }

    /// [`own_store`], with the clock the store reads.
    async fn own_store_clocked(
        uid: &str,
    ) -> (
        RedisServer,
        RedisStore,
        SessionRef,
        Arc<presence_core::ManualClock>,
    ) {
        own_store_with(uid, true).await
    }

    /// [`own_store_clocked`], with the scripts run as functions or not.
    async fn own_store_with(
        uid: &str,
        functions: bool,
    ) -> (
        RedisServer,
        RedisStore,
        SessionRef,
        Arc<presence_core::ManualClock>,
    ) {
        let own = RedisServer::start().unwrap();
        let clock = Arc::new(presence_core::ManualClock::new(crate::conformance::T0));
        let mut opts = RedisOptions::new(&own.url());
        opts.functions = functions;
        let store = RedisStore::connect(opts, clock.clone(), Timings::default(), Limits::default())
            .await
            .unwrap();
        assert_eq!(store.scripts.uses_functions(), functions);
        let me = hello(&store, uid).await;
        (own, store, me, clock)
    }

    /// Lets `ms` pass in steps of 5 s, `alive` heartbeating and the
    /// store sweeping at each step; returns the sweeps' sums.
    async fn live_through(
        store: &RedisStore,
        clock: &presence_core::ManualClock,
        alive: &[&SessionRef],
        ms: i64,
    ) -> SweepReport {
        let mut sum = SweepReport::default();
        for _ in 0..ms / 5_000 {
            clock.advance(5_000);
            for s in alive {
                store.heartbeat(s, Some(Activity::Active)).await.unwrap();
            }
            let r = store.sweep(1).await.unwrap();
            sum.expired += r.expired;
            sum.status_changes += r.status_changes;
            sum.orphans += r.orphans;
        }
        sum
    }

    fn zcard_all(port: u16, key: impl Fn(u32) -> String) -> u64 {
        (0..SHARDS)
            .map(|k| {
                presence_testkit::redis_cli(port, &["ZCARD", &key(k)])
                    .unwrap()
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    }

    #[tokio::test]
    async fn a_session_is_a_hash_with_a_ttl_that_heartbeats_push_back() {
        let (own, store, me, clock) = own_store_clocked("alice").await;
        let key = store.keys.session(me.session_id.as_str());
        let field = |f: &str| {
            presence_testkit::redis_cli(own.port(), &["HGET", &key, f])
                .unwrap()
                .trim()
                .to_owned()
        };
        let pttl = || -> i64 {
            presence_testkit::redis_cli(own.port(), &["PTTL", &key])
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let t0 = crate::conformance::T0;
        assert_eq!(field("userId"), "alice");
        assert_eq!(field("epoch"), me.epoch.to_string());
        assert_eq!(field("g"), format!("{}:active", me.epoch));
        assert_eq!(field("lastHeartbeatAt"), t0.to_string());
        // The key outlives the removal deadline (heartbeat timeout + grace)
        // by a minute, plus five minutes of slack; `ttl` says until when.
        let t = Timings::default();
        let removal = t.heartbeat_timeout_ms + t.reconnect_grace_ms;
        let set = |at: i64| at + removal + 60_000 + 300_000;
        let first = pttl();
        assert!(first > set(0) - 5_000 && first <= set(0), "{first}");
        assert_eq!(field("ttl"), set(t0).to_string());
        // Beats within the slack leave the TTL alone: the first goes to
        // Redis, the node answers the others itself and writes their times
        // (here at once after each)...
        for beat in 1..=30 {
            clock.advance(10_000);
            store.heartbeat(&me, Some(Activity::Active)).await.unwrap();
            store.flush_beats_at(clock.now_ms()).await.unwrap();
            assert_eq!(field("lastHeartbeatAt"), (t0 + beat * 10_000).to_string());
            assert_eq!(field("ttl"), set(t0).to_string(), "beat {beat}");
        }
        // ...and the one that would leave less than a minute past the new
        // deadline goes to Redis, which sets it again, the slack ahead.
        clock.advance(10_000);
        store.heartbeat(&me, Some(Activity::Active)).await.unwrap();
        let now = t0 + 310_000;
        assert_eq!(field("lastHeartbeatAt"), now.to_string());
        assert_eq!(field("ttl"), set(now).to_string());
        let pushed = pttl();
        assert!(pushed > set(0) - 5_000 && pushed <= set(0), "{pushed}");
    }

    #[tokio::test]
    async fn a_tombstone_lives_as_long_as_the_memory_stores() {
        let (own, store, me) = own_store("tomb").await;
        store.end(&me).await.unwrap();
        let key = store.keys.session(me.session_id.as_str());
        let cli = |args: &[&str]| {
            presence_testkit::redis_cli(own.port(), args)
                .unwrap()
                .trim()
                .to_owned()
        };
        assert_eq!(cli(&["HGET", &key, "dead"]), "1");
        let pttl: i64 = cli(&["PTTL", &key]).parse().unwrap();
        let tomb = crate::api::TOMBSTONE_MS;
        assert!(pttl > tomb - 5_000 && pttl <= tomb, "{pttl}");
    }

    /// What a restarted or failed-over Redis looks like to the scripts:
    /// `flush` empties the cache of scripts or functions, and each call
    /// loads its code again and runs.
    async fn code_comes_back_after(functions: bool, flush: &[&str], load: &str, least: u64) {
        let (own, store, me, _) = own_store_with("flush", functions).await;
        let room = RoomId::new("flush").unwrap();
        store.join(&me, &room, None).await.unwrap();
        presence_testkit::redis_cli(own.port(), flush).unwrap();
        presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();
        store.heartbeat(&me, Some(Activity::Idle)).await.unwrap();
        store
            .update_state(&me, &room, serde_json::from_str(r#"{"a":1}"#).unwrap())
            .await
            .unwrap();
        let view = store.room_view(&room).await.unwrap();
        assert_eq!(view.sessions.len(), 1);
        let c = calls(own.port());
        let loads = c.iter().find(|(n, _)| n == load).map(|x| x.1).unwrap_or(0);
        assert!(loads >= least, "{load} at least {least}: {c:?}");
    }

    #[tokio::test]
    async fn scripts_are_loaded_again_after_a_script_flush() {
        // Each script is loaded again on its own NOSCRIPT.
        code_comes_back_after(false, &["SCRIPT", "FLUSH"], "script|load", 3).await;
    }

    #[tokio::test]
    async fn the_library_is_loaded_again_after_a_function_flush() {
        // The first call that finds no function loads the whole library.
        code_comes_back_after(true, &["FUNCTION", "FLUSH"], "function|load", 1).await;
    }

    #[tokio::test]
    async fn a_member_whose_session_vanished_leaves_its_room() {
        let (own, store, alice, clock) = own_store_clocked("alice").await;
        let bob = hello(&store, "bob").await;
        let room = RoomId::new("orphans").unwrap();
        store.join(&alice, &room, None).await.unwrap();
        store.join(&bob, &room, None).await.unwrap();
        assert_eq!(zcard_all(own.port(), |k| store.keys.rooms_due(k)), 1);
        store.follow_room(&room).await.unwrap();
        let mut rx = store.events();
        // Alice's session hash is lost (its TTL ran out while no node
        // swept, say): the deadline index alone cannot tell her rooms.
        let key = store.keys.session(alice.session_id.as_str());
        presence_testkit::redis_cli(own.port(), &["DEL", &key]).unwrap();
        presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();
        // Past her entry in the room's expiry index (removal deadline
        // + 60 s = 95 s); bob stays alive all along.
        let sum = live_through(&store, &clock, &[&bob], 100_000).await;
        assert_eq!(sum.orphans, 1);
        assert_eq!(sum.expired, 0);
        let view = store.room_view(&room).await.unwrap();
        let left: Vec<_> = view.sessions.keys().cloned().collect();
        assert_eq!(left, vec![bob.session_id.clone()], "bob stays, alice goes");
        assert_eq!(store.room_stats(&room).await.unwrap().sessions, 1);
        let ev = loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("alice's expire event")
                .unwrap();
            if ev.session_id == alice.session_id {
                break ev;
            }
        };
        assert_eq!(ev.kind, presence_core::EventKind::Expire);
        assert_eq!(ev.epoch, alice.epoch);
        assert_eq!(ev.node_id.as_str(), "n");
        // Found through the indexes: no key was ever listed.
        let c = calls(own.port());
        assert!(!c.iter().any(|(n, _)| n == "keys" || n == "scan"), "{c:?}");
        // Bob's entry was filed again while he lived; once he is gone
        // and the room is empty, its index entries go too.
        store.end(&bob).await.unwrap();
        live_through(&store, &clock, &[], 100_000).await;
        assert_eq!(zcard_all(own.port(), |k| store.keys.rooms_due(k)), 0);
        let x = store.keys.room(room.as_str()).expiry;
        let exists = presence_testkit::redis_cli(own.port(), &["EXISTS", &x]).unwrap();
        assert_eq!(exists.trim(), "0");
    }

    /// A dead node's sessions (here 121 of them, two of one user, in three
    /// rooms) are marked stale and then removed a batch per call: a few
    /// dozen script calls in all, where one session at a time took five
    /// each. Every observer still gets one event per session and change,
    /// in seq order, and nothing of the dead is left in any index, while a
    /// session that heartbeats all along stays.
    #[tokio::test]
    async fn a_dead_nodes_sessions_are_culled_in_bulk() {
        let (own, store, alive, clock) = own_store_clocked("alive").await;
        let rooms: Vec<RoomId> = (0..3)
            .map(|i| RoomId::new(&format!("bulk-{i}")).unwrap())
            .collect();
        let mut dead = Vec::new();
        for i in 0..121 {
            let uid = if i == 120 {
                "user-0".to_owned()
            } else {
                format!("user-{i}")
            };
            let s = hello(&store, &uid).await;
            store.join(&s, &rooms[i % 3], None).await.unwrap();
            dead.push(s);
        }
        store.join(&alive, &rooms[0], None).await.unwrap();
        for r in &rooms {
            store.follow_room(r).await.unwrap();
        }
        let mut rx = store.events();
        presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();

        let sum = live_through(&store, &clock, &[&alive], 100_000).await;
        assert_eq!((sum.status_changes, sum.expired), (121, 121));

        let c = calls(own.port());
        let fcalls = c.iter().find(|(n, _)| n == "fcall").map_or(0, |(_, n)| *n);
        // Per phase 4 expire batches, 6 room calls (41 + 40 + 40 members in
        // calls of up to 32) and a user call; the rooms' own checks; 20
        // heartbeats of `alive`. One session at a time took 5 × 121 = 605.
        assert!(fcalls <= 20 + 40, "{fcalls} script calls: {c:?}");

        // One stale and one expire event per dead session, each room's seqs
        // one after another.
        let mut seen: std::collections::HashMap<RoomId, Vec<u64>> = Default::default();
        let mut kinds: std::collections::HashMap<presence_core::EventKind, usize> =
            Default::default();
        while kinds.values().sum::<usize>() < 242 {
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("every event of the cull")
                .unwrap();
            if ev.session_id == alive.session_id {
                continue;
            }
            *kinds.entry(ev.kind).or_default() += 1;
            seen.entry(ev.room_id.clone()).or_default().push(ev.seq);
        }
        assert_eq!(kinds.get(&presence_core::EventKind::Status), Some(&121));
        assert_eq!(kinds.get(&presence_core::EventKind::Expire), Some(&121));
        for (room, seqs) in &seen {
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "{room}: {seqs:?}"
            );
        }

        // Only `alive` is left: in its room, its user online, its entry in
        // the deadline index.
        let view = store.room_view(&rooms[0]).await.unwrap();
        let members: Vec<_> = view.sessions.keys().cloned().collect();
        assert_eq!(members, vec![alive.session_id.clone()]);
        for r in &rooms[1..] {
            assert_eq!(store.room_stats(r).await.unwrap().sessions, 0);
        }
        assert_eq!(online_users(&store).await, vec!["alive".to_owned()]);
        assert_eq!(zcard_all(own.port(), |k| store.keys.deadlines(k)), 1);
        for uid in ["user-0", "user-7", "user-119"] {
            let n =
                presence_testkit::redis_cli(own.port(), &["HLEN", &store.keys.user(uid)]).unwrap();
            assert_eq!(n.trim(), "0", "{uid}");
        }
    }

    /// A batch of `expire.lua` that meets a session a newer term has swept
    /// stops there: the sessions before it in the batch are swept, the one
    /// fenced and those after it are left exactly as they were, and the
    /// sweep ends; the newer term then sweeps them all.
    #[tokio::test]
    async fn a_batch_stops_at_the_first_session_a_newer_term_swept() {
        let (own, store, first, clock) = own_store_clocked("u-0").await;
        let mut all = vec![first];
        for i in 1..6 {
            all.push(hello(&store, &format!("u-{i}")).await);
        }
        // The order the sweep takes them in: by deadline-index shard, then
        // (all due at the same instant) by session id.
        let mut order: Vec<String> = all.iter().map(|s| s.session_id.to_string()).collect();
        order.sort_by_key(|sid| (super::super::keys::shard_of(sid), sid.clone()));
        // A sweeper with term 7 has been at the third (and only there).
        let field = |sid: &str, f: &str| {
            presence_testkit::redis_cli(own.port(), &["HGET", &store.keys.session(sid), f])
                .unwrap()
                .trim()
                .to_owned()
        };
        presence_testkit::redis_cli(
            own.port(),
            &["HSET", &store.keys.session(&order[2]), "ft", "7"],
        )
        .unwrap();
        clock.advance(Timings::default().heartbeat_timeout_ms);

        let old = store.sweep(6).await.unwrap();
        assert_eq!((old.fenced, old.status_changes), (1, 2), "{old:?}");
        for sid in &order[..2] {
            assert_eq!(
                (field(sid, "st").as_str(), field(sid, "ft").as_str()),
                ("stale", "6")
            );
        }
        for sid in &order[2..] {
            assert_eq!(field(sid, "st"), "active", "{sid} untouched");
        }
        assert_eq!(field(&order[2], "ft"), "7");
        assert!(order[3..].iter().all(|sid| field(sid, "ft").is_empty()));

        let new = store.sweep(7).await.unwrap();
        assert_eq!((new.fenced, new.status_changes), (0, 4), "{new:?}");
        assert!(order.iter().all(|sid| field(sid, "st") == "stale"));
    }

    /// A room written before the order index existed (or with an index cut
    /// short) is paged all the same: the index is built from the members once.
    #[tokio::test]
    async fn pages_of_a_room_without_its_order_index_rebuild_it() {
        let (own, store, alice, _clock) = own_store_clocked("alice").await;
        let room = RoomId::new("old-room").unwrap();
        store.join(&alice, &room, None).await.unwrap();
        let o = store.keys.room(room.as_str()).order;
        let card = |p| presence_testkit::redis_cli(p, &["ZCARD", &o]).unwrap();
        assert_eq!(card(own.port()).trim(), "1");
        presence_testkit::redis_cli(own.port(), &["DEL", &o]).unwrap();
        let p = store.room_page(&room, None, 10).await.unwrap();
        assert_eq!(p.page.sessions.len(), 1);
        assert_eq!(card(own.port()).trim(), "1");
        // Emptied, the room forgets its index with its other keys.
        store.leave(&alice, &room).await.unwrap();
        assert_eq!(card(own.port()).trim(), "0");
    }

    #[tokio::test]
    async fn a_removal_that_never_reached_the_room_is_repaired() {
        let (own, store, alice, clock) = own_store_clocked("alice").await;
        let room = RoomId::new("lost-leave").unwrap();
        store.join(&alice, &room, None).await.unwrap();
        // The session side of a leave ran, then its node died before
        // telling the room.
        let key = store.keys.session(alice.session_id.as_str());
        presence_testkit::redis_cli(own.port(), &["HDEL", &key, "r:lost-leave"]).unwrap();
        assert_eq!(store.room_stats(&room).await.unwrap().sessions, 1);
        let sum = live_through(&store, &clock, &[&alice], 100_000).await;
        assert_eq!(sum.orphans, 1);
        assert_eq!(store.room_stats(&room).await.unwrap().sessions, 0);
        // Alice herself is alive and online.
        assert_eq!(online_users(&store).await, vec!["alice".to_owned()]);
    }

    #[tokio::test]
    async fn a_room_batch_naming_a_session_twice_applies_it_in_order() {
        use super::super::room_scripts::ReadRoom;
        use super::super::room_scripts::{
            MemberRemoval, MemberUpdate, MembersPut, MembersRemoved, PutKind, PutMembers,
            RemoveMembers,
        };
        use super::super::session_scripts::RoomPut;

        let (_own, store, alice) = own_store("alice").await;
        let room = RoomId::new("twice").unwrap();
        store.join(&alice, &room, None).await.unwrap();
        let sid = alice.session_id.as_str();
        store.follow_room(&room).await.unwrap();
        let mut rx = store.events();
        let event = |kind: &str, st: &str| {
            format!(
                r#"{{"v":1,"type":"{kind}","roomId":"twice","userId":"alice","sessionId":"{sid}","nodeId":"n","epoch":1,"status":"{st}","ts":1"#
            )
        };
        let put = |st: &str| RoomPut {
            room: room.as_str().into(),
            event: event("status", st),
            member: format!(r#"{{"h":"","st":"{st}","hb":0,"la":0,"su":0,"e":1,"n":"n"}}"#),
            visible: true,
            check_at: 1,
        };
        let (idle, away) = (put("idle"), put("away"));
        // Two updates of one session, the second newer: both land, in order.
        let update = |version, put| MemberUpdate {
            session: sid,
            user_id: "alice",
            version,
            kind: PutKind::Status,
            put,
        };
        let MembersPut { seqs, .. } = store
            .run(PutMembers {
                room: room.as_str(),
                members: &[update(100, &idle), update(101, &away)],
                pubsub: store.bus.mode(),
            })
            .await
            .unwrap();
        assert_eq!(seqs[1], seqs[0] + 1);
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("an event")
                .unwrap()
        };
        let (first, second) = (next().await, next().await);
        // Each event is closed with its own seq, in order.
        assert_eq!((first.seq, second.seq), (seqs[0], seqs[1]));
        assert_eq!(second.status, presence_core::UserStatus::Away);
        // An older one after them in the same call changes nothing.
        let MembersPut { seqs, .. } = store
            .run(PutMembers {
                room: room.as_str(),
                members: &[update(102, &idle), update(101, &away)],
                pubsub: store.bus.mode(),
            })
            .await
            .unwrap();
        assert!(seqs[0] > 0 && seqs[1] == 0, "{seqs:?}");
        assert_eq!(next().await.seq, seqs[0]);
        let entries = store
            .run(ReadRoom {
                room: room.as_str(),
            })
            .await
            .unwrap();
        assert!(
            entries.members[0].1.starts_with("102|alice|"),
            "{entries:?}"
        );

        // Removed twice in one call: once.
        let ev = event("expire", "offline");
        let removal = |version| MemberRemoval {
            session: sid,
            version,
            event: &ev,
        };
        let MembersRemoved { seqs: removed, .. } = store
            .run(RemoveMembers {
                room: room.as_str(),
                members: &[removal(103), removal(104)],
                pubsub: store.bus.mode(),
            })
            .await
            .unwrap();
        assert!(removed[0].is_some() && removed[1].is_none(), "{removed:?}");
        assert_eq!(store.room_stats(&room).await.unwrap().sessions, 0);
        // (Published before the room forgot its seq with its last member.)
        let gone = next().await;
        assert_eq!(
            (gone.kind, Some(gone.seq)),
            (presence_core::EventKind::Expire, removed[0])
        );
        // The room keeps the newest version it left at: a join projection
        // older than that, still in flight, does not bring it back...
        let join = |version| MemberUpdate {
            kind: PutKind::Join,
            ..update(version, &idle)
        };
        let late = store
            .run(PutMembers {
                room: room.as_str(),
                members: &[join(104)],
                pubsub: store.bus.mode(),
            })
            .await
            .unwrap();
        assert_eq!(late.seqs, vec![0]);
        assert_eq!(store.room_stats(&room).await.unwrap().sessions, 0);
        // ...a newer join does, and counts its user once.
        store
            .run(PutMembers {
                room: room.as_str(),
                members: &[join(105), join(106)],
                pubsub: store.bus.mode(),
            })
            .await
            .unwrap();
        let stats = store.room_stats(&room).await.unwrap();
        assert_eq!((stats.sessions, stats.users), (1, 1));
    }

    #[tokio::test]
    async fn members_that_live_on_are_never_dropped() {
        let (_own, store, alice, clock) = own_store_clocked("alice").await;
        let rooms: Vec<RoomId> = (0..3)
            .map(|i| RoomId::new(&format!("long-{i}")).unwrap())
            .collect();
        for r in &rooms {
            store.join(&alice, r, None).await.unwrap();
        }
        // Ten minutes: each room checks her session several times.
        let sum = live_through(&store, &clock, &[&alice], 600_000).await;
        assert_eq!((sum.orphans, sum.expired), (0, 0));
        for r in &rooms {
            assert_eq!(store.room_stats(r).await.unwrap().sessions, 1);
        }
    }

    /// Who's online (the first ten users).
    async fn online_users(store: &RedisStore) -> Vec<String> {
        let online = store
            .whos_online(Page {
                limit: 10,
                after: None,
            })
            .await
            .unwrap();
        online.entries.users.keys().map(|u| u.to_string()).collect()
    }

    pub(super) async fn hello(store: &RedisStore, uid: &str) -> SessionRef {
        hello_as(store, uid, None).await
    }

    /// A hello of `uid` for `session` (`None`: a new one).
    async fn hello_as(store: &RedisStore, uid: &str, session: Option<&SessionRef>) -> SessionRef {
        let c = store
            .hello(Hello {
                declare: Default::default(),
                session_id: session.map(|s| s.session_id.clone()),
                user_id: UserId::new(uid).unwrap(),
                handle: None,
                meta: None,
                activity: Activity::Active,
                node_id: presence_core::NodeId::new("n").unwrap(),
            })
            .await
            .unwrap();
        SessionRef {
            session_id: c.session_id,
            epoch: c.epoch,
        }
    }

    /// The server's command counts since the last `CONFIG RESETSTAT`,
    /// sorted (commands run inside scripts count too).
    fn calls(port: u16) -> Vec<(String, u64)> {
        let stats = presence_testkit::redis_cli(port, &["INFO", "commandstats"]).unwrap();
        let mut calls: Vec<(String, u64)> = stats
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let n = rest
                    .split(',')
                    .next()?
                    .strip_prefix("calls=")?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), n))
            })
            .filter(|(name, _)| !matches!(name.as_str(), "config|resetstat" | "info"))
            .collect();
        calls.sort();
        calls
    }

    fn counts(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    /// 50 sessions in a room heartbeat once (each through Redis, so that
    /// their node vouches for them), then ten more times each, a second
    /// apart, and the node writes their times once; the commands the ten
    /// rounds and the write cost the server. Every session's recorded
    /// heartbeat time is its last beat's.
    async fn quiet_beat_calls(functions: bool) -> Vec<(String, u64)> {
        let (own, store, first, clock) = own_store_with("hb", functions).await;
        let room = RoomId::new("big").unwrap();
        let mut all = vec![first];
        for i in 1..50 {
            all.push(hello(&store, &format!("u{i}")).await);
        }
        for s in &all {
            store.join(s, &room, None).await.unwrap();
            store.heartbeat(s, Some(Activity::Active)).await.unwrap();
        }
        store.flush_beats_at(clock.now_ms()).await.unwrap();
        presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();
        for _ in 0..10 {
            clock.advance(1_000);
            for s in &all {
                store.heartbeat(s, Some(Activity::Active)).await.unwrap();
            }
        }
        let quiet = calls(own.port());
        assert_eq!(quiet, vec![], "the quiet beats cost Redis nothing");
        store.flush_beats_at(clock.now_ms()).await.unwrap();
        let flushed = calls(own.port());
        let recorded = all
            .iter()
            .map(|s| {
                let key = store.keys.session(s.session_id.as_str());
                presence_testkit::redis_cli(own.port(), &["HGET", &key, "lastHeartbeatAt"])
                    .unwrap()
                    .trim()
                    .to_owned()
            })
            .collect::<Vec<_>>();
        let last = (crate::conformance::T0 + 10_000).to_string();
        assert!(recorded.iter().all(|t| *t == last), "{recorded:?}");
        flushed
    }

    #[tokio::test]
    async fn quiet_heartbeats_reach_redis_as_one_function_call_per_flush() {
        // The 500 beats: nothing when they come; then one FCALL of
        // beats.lua for the 50 sessions, in it one read of the guard and one
        // write of the two times per session, nothing per room, no TTL.
        assert_eq!(
            quiet_beat_calls(true).await,
            counts(&[("fcall", 1), ("hget", 50), ("hset", 50)])
        );
    }

    #[tokio::test]
    async fn without_functions_quiet_heartbeats_reach_redis_as_one_evalsha_per_flush() {
        assert_eq!(
            quiet_beat_calls(false).await,
            counts(&[("evalsha", 1), ("hget", 50), ("hset", 50)])
        );
    }

    #[tokio::test]
    async fn a_node_vouches_for_no_beat_of_a_session_it_lost() {
        // A beat answered by the node, then a takeover by another node
        // (another store on the same Redis): the flush is refused and
        // changes nothing, and the old connection's next beat goes to Redis
        // and is refused there.
        let (own, store, me, clock) = own_store_clocked("alice").await;
        store.heartbeat(&me, Some(Activity::Active)).await.unwrap();
        clock.advance(1_000);
        store.heartbeat(&me, Some(Activity::Active)).await.unwrap();
        let other = RedisStore::connect(
            RedisOptions::new(&own.url()),
            clock.clone(),
            Timings::default(),
            Limits::default(),
        )
        .await
        .unwrap();
        let taken = hello_as(&other, "alice", Some(&me)).await;
        assert!(taken.epoch > me.epoch);
        let key = store.keys.session(me.session_id.as_str());
        let hb = || {
            presence_testkit::redis_cli(own.port(), &["HGET", &key, "lastHeartbeatAt"])
                .unwrap()
                .trim()
                .to_owned()
        };
        let before = hb();
        store.flush_beats_at(clock.now_ms()).await.unwrap();
        assert_eq!(hb(), before, "a refused flush writes nothing");
        clock.advance(1_000);
        assert!(matches!(
            store.heartbeat(&me, None).await,
            Err(StoreError::StaleEpoch { current }) if current == taken.epoch
        ));
    }

    #[tokio::test]
    async fn a_takeover_notice_ends_the_vouch_at_once() {
        let (_own, store, me, clock) = own_store_clocked("alice").await;
        store.heartbeat(&me, Some(Activity::Active)).await.unwrap();
        store.superseded_elsewhere(&crate::api::Takeover {
            session_id: me.session_id.clone(),
            epoch: me.epoch,
            current: me.epoch + 1,
        });
        clock.advance(1_000);
        // Not answered by the node: Redis says who owns the session (here,
        // still this connection: the notice was made up).
        store.heartbeat(&me, None).await.unwrap();
        assert!(!store
            .vouches
            .beat(me.session_id.as_str(), me.epoch, clock.now_ms(), None));
    }

    #[tokio::test]
    async fn a_burst_of_events_reaches_subscribers_whole() {
        let (_own, store, _) = own_store("burst").await;
        for r in 0..30 {
            store
                .follow_room(&RoomId::new(&format!("burst-{r}")).unwrap())
                .await
                .unwrap();
        }
        let mut rx = store.events();
        let mut sessions = Vec::new();
        for i in 0..10 {
            sessions.push(hello(&store, &format!("b{i}")).await);
        }
        let pairs: Vec<(&SessionRef, RoomId)> = sessions
            .iter()
            .flat_map(|s| (0..30).map(move |r| (s, RoomId::new(&format!("burst-{r}")).unwrap())))
            .collect();
        let joins = pairs.iter().map(|(s, room)| store.join(s, room, None));
        for r in join_all(joins).await {
            r.unwrap();
        }
        let mut got = 0;
        while got < 300 {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Ok(_)) => got += 1,
                other => panic!("after {got} events: {other:?}"),
            }
        }
        // And the stream still flows afterwards.
        store
            .leave(&sessions[0], &RoomId::new("burst-0").unwrap())
            .await
            .unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(ev, Ok(Ok(_))), "{ev:?}");
    }

    #[tokio::test]
    async fn a_lost_subscription_comes_back_and_asks_for_a_resync() {
        let (own, store, me) = own_store("resub").await;
        let room = RoomId::new("resub").unwrap();
        store.follow_room(&room).await.unwrap();
        let mut rx = store.events();
        let mut resyncs = store.resyncs();
        assert_eq!(*resyncs.borrow_and_update(), 0);
        // Only the subscriber's connection goes: the pool stays up.
        let killed =
            presence_testkit::redis_cli(own.port(), &["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
        assert_eq!(killed.trim(), "1", "one subscriber connection");
        tokio::time::timeout(Duration::from_secs(10), resyncs.changed())
            .await
            .expect("a resync is signalled")
            .unwrap();
        assert_eq!(*resyncs.borrow(), 1);
        store.ping().await.expect("ready again");
        // The new subscription delivers events.
        store.join(&me, &room, None).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event after the resubscription")
            .unwrap();
        assert_eq!(ev.room_id, room);
    }

    #[tokio::test]
    async fn a_join_and_its_snapshot_are_three_script_calls_whatever_the_room_size() {
        let (own, store, me) = own_store("joiner").await;
        let room = RoomId::new("big").unwrap();
        for i in 0..50 {
            let other = hello(&store, &format!("u{i}")).await;
            store.join(&other, &room, None).await.unwrap();
        }
        presence_testkit::redis_cli(own.port(), &["CONFIG", "RESETSTAT"]).unwrap();
        store.join(&me, &room, None).await.unwrap();
        let view = store.room_view(&room).await.unwrap();
        assert_eq!(view.sessions.len(), 51);
        assert_eq!(view.seq, 51);
        // join.lua (the session), room_put.lua (the room, with the
        // event), room_read.lua (the whole view): no read per member.
        let c = calls(own.port());
        assert_eq!(
            c.iter().find(|(n, _)| n == "fcall").map(|x| x.1),
            Some(3),
            "{c:?}"
        );
        assert_eq!(
            c.iter().find(|(n, _)| n == "hgetall").map(|x| x.1),
            Some(2),
            "{c:?}"
        );
    }
}

mod cluster {
    use std::sync::{Arc, OnceLock};

    use presence_testkit::RedisCluster;

    use super::*;
    use crate::conformance::Env;

    fn cluster() -> &'static RedisCluster {
        static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
        CLUSTER.get_or_init(|| RedisCluster::start(3).expect("a 3-master cluster starts"))
    }

    async fn make(env: Env) -> Arc<dyn PresenceStore> {
        let mut opts = RedisOptions::new(&cluster().url());
        opts.prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let store = RedisStore::connect(opts, Arc::new(env.clock), env.timings, env.limits)
            .await
            .expect("connects");
        Arc::new(store)
    }

    conformance_suite!(make);

    /// The times of quiet beats of sessions of every slot reach each
    /// master in calls of many slots (`allow-cross-slot-keys`), and the
    /// node goes on vouching for them (no call failed).
    #[tokio::test]
    async fn quiet_beats_of_many_slots_are_written_per_master() {
        let clock = Arc::new(presence_core::ManualClock::new(crate::conformance::T0));
        let mut opts = RedisOptions::new(&cluster().url());
        opts.prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let store = RedisStore::connect(opts, clock.clone(), Timings::default(), Limits::default())
            .await
            .unwrap();
        let mut all = Vec::new();
        for i in 0..200 {
            all.push(super::standalone::hello(&store, &format!("u{i}")).await);
        }
        for s in &all {
            store.heartbeat(s, Some(Activity::Active)).await.unwrap();
        }
        clock.advance(5_000);
        for s in &all {
            store.heartbeat(s, None).await.unwrap();
        }
        let due = store.vouches.due_count();
        assert_eq!(due, all.len(), "every second beat was answered by the node");
        let batches = store.route.by_master(
            all.iter().map(|s| s.session_id.as_str()).collect(),
            |s| s,
            128,
        );
        assert!(
            batches.len() <= 3 * 2,
            "{} calls for 200 sessions on 3 masters",
            batches.len()
        );
        store.flush_beats_at(clock.now_ms()).await.unwrap();
        let key = store.keys.session(all[0].session_id.as_str());
        let hb: Option<String> =
            store
                .route
                .on_key(&key, |c| {
                    let key = key.clone();
                    async move {
                        fred::interfaces::HashesInterface::hget(&c, key, "lastHeartbeatAt").await
                    }
                })
                .await
                .unwrap();
        assert_eq!(hb, Some((crate::conformance::T0 + 5_000).to_string()));
        clock.advance(5_000);
        for s in &all {
            assert!(store
                .vouches
                .beat(s.session_id.as_str(), s.epoch, clock.now_ms(), None));
        }
    }

    /// A cluster node that serves no slot yet is a clear error, not a hang
    /// or a panic.
    #[tokio::test]
    async fn a_cluster_without_slots_is_refused_with_a_reason() {
        let node =
            presence_testkit::RedisServer::start_with(&["--cluster-enabled", "yes"]).unwrap();
        let url = format!("redis-cluster://127.0.0.1:{}", node.port());
        let clock = Arc::new(presence_core::ManualClock::new(crate::conformance::T0));
        let r = RedisStore::connect(
            RedisOptions::new(&url),
            clock,
            Timings::default(),
            Limits::default(),
        )
        .await;
        let Err(e) = r else {
            panic!("connected to a cluster without slots")
        };
        assert!(e.to_string().contains("serves no slot"), "{e}");
    }
}

/// The whole suite again over TLS (`rediss://`, a private CA).
mod tls {
    use std::sync::{Arc, OnceLock};

    use presence_testkit::RedisServer;

    use super::*;
    use crate::conformance::Env;

    fn server() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(|| RedisServer::start_tls().expect("a TLS redis-server starts"))
    }

    fn options() -> RedisOptions {
        let mut opts = RedisOptions::new(&server().tls_url().unwrap());
        opts.ca_file = server().ca_file();
        opts.prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        opts
    }

    async fn make(env: Env) -> Arc<dyn PresenceStore> {
        let store = RedisStore::connect(options(), Arc::new(env.clock), env.timings, env.limits)
            .await
            .expect("connects over TLS");
        Arc::new(store)
    }

    conformance_suite!(make);

    async fn connect(opts: RedisOptions) -> Result<RedisStore, StoreError> {
        let clock = Arc::new(presence_core::ManualClock::new(crate::conformance::T0));
        RedisStore::connect(opts, clock, Timings::default(), Limits::default()).await
    }

    /// Without the CA the server's certificate is not trusted: no silent
    /// fallback to plain TCP or to no verification.
    #[tokio::test]
    async fn an_untrusted_certificate_is_refused() {
        let mut opts = options();
        opts.ca_file = None;
        opts.command_timeout = Duration::from_millis(500);
        let r = connect(opts).await;
        let Err(e) = r else { panic!("connected") };
        // Said at once, not retried as if Redis were away.
        assert!(matches!(e, StoreError::Internal(_)), "{e:?}");
        assert!(e.to_string().contains("certificate"), "{e}");
    }

    #[tokio::test]
    async fn a_ca_file_needs_a_tls_url() {
        let mut opts = RedisOptions::new(&server().url());
        opts.ca_file = server().ca_file();
        let r = connect(opts).await;
        let Err(e) = r else { panic!("connected") };
        assert!(e.to_string().contains("rediss://"), "{e}");
    }
}

/// A Redis Cluster with replicas whose master is SIGKILLed under load: the
/// failure costs only that master's slots.
mod failover {
    use std::sync::Arc;
    use std::time::Instant;

    use presence_core::NodeId;
    use presence_testkit::RedisCluster;

    use super::super::keys::Keys;
    use super::*;

    /// Sessions heartbeating, spread over every master.
    const SESSIONS: usize = 60;
    /// Rooms they are in.
    const ROOMS: usize = 6;
    /// A heartbeat of every session per round.
    const ROUND: Duration = Duration::from_millis(150);
    /// The longest the promotion may take before the test gives up.
    const PROMOTION_WITHIN: Duration = Duration::from_secs(30);

    fn room(i: usize) -> RoomId {
        RoomId::new(&format!("room-{}", i % ROOMS)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_master_costs_only_its_own_slots() {
        let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start_with_replicas(3, 1))
            .await
            .unwrap()
            .expect("a cluster of 3 masters with a replica each starts");
        let prefix = "fo";
        let mut opts = RedisOptions::new(&cluster.url());
        opts.prefix = prefix.into();
        opts.command_timeout = Duration::from_millis(1_500);
        let store = RedisStore::connect(
            opts,
            Arc::new(presence_core::SystemClock),
            Timings::default(),
            Limits::default(),
        )
        .await
        .expect("connects");
        let keys = Keys::new(prefix);
        let mut sessions = Vec::new();
        for i in 0..SESSIONS {
            let c = store
                .hello(Hello {
                    declare: Default::default(),
                    session_id: None,
                    user_id: UserId::new(&format!("u{i}")).unwrap(),
                    handle: None,
                    meta: None,
                    activity: Activity::Active,
                    node_id: NodeId::new("n1").unwrap(),
                })
                .await
                .unwrap();
            let s = SessionRef {
                session_id: c.session_id,
                epoch: c.epoch,
            };
            store.join(&s, &room(i), None).await.unwrap();
            sessions.push(s);
        }
        let owners: Vec<usize> = sessions
            .iter()
            .map(|s| {
                cluster
                    .master_of(&keys.session(s.session_id.as_str()))
                    .unwrap()
            })
            .collect();
        let node = NodeId::new("n1").unwrap();
        let lease = store.acquire_lease(&node, 3_000).await.unwrap();
        assert_eq!(lease.node_id, node);
        let room_owners: Vec<usize> = (0..ROOMS)
            .map(|r| {
                cluster
                    .master_of(&keys.room(room(r).as_str()).members)
                    .unwrap()
            })
            .collect();
        // The victim holds sessions but not the lease; a writer, on another
        // master and in a room of another master, keeps changing its state.
        let lease_master = cluster.master_of(&keys.lease().lease).unwrap();
        let (victim, writer) = owners
            .iter()
            .filter(|&&m| m != lease_master)
            .find_map(|&v| {
                let w = (0..SESSIONS).find(|&i| owners[i] != v && room_owners[i % ROOMS] != v)?;
                Some((v, w))
            })
            .expect("a master to kill that leaves a writer elsewhere");
        let on_victim = owners.iter().filter(|&&m| m == victim).count();
        assert!(
            on_victim > 0 && on_victim < SESSIONS,
            "{on_victim} on the victim"
        );
        for r in 0..ROOMS {
            store.follow_room(&room(r)).await.unwrap();
        }
        let mut events = store.events();
        // Events of the writer's room seen while the victim's sessions failed.
        let mut seen_in_outage = 0;
        // A room on a healthy master that is first followed during the outage.
        let late = (0..)
            .map(|n| RoomId::new(&format!("late-{n}")).unwrap())
            .find(|r| cluster.master_of(&keys.room(r.as_str()).members).unwrap() != victim)
            .unwrap();
        let mut late_followed = false;

        cluster.nodes()[victim].kill();
        let killed = Instant::now();
        let mut failures = [0usize; SESSIONS];
        let mut recovered = [false; SESSIONS];
        let mut degraded = Vec::new();
        while killed.elapsed() < PROMOTION_WITHIN {
            let mut patch = presence_core::JsonMap::new();
            patch.insert("at".into(), killed.elapsed().as_millis().to_string().into());
            store
                .update_state(&sessions[writer], &room(writer), patch)
                .await
                .expect("a session on a healthy master writes");
            let beats = join_all(sessions.iter().map(|s| store.heartbeat(s, None))).await;
            for (i, r) in beats.into_iter().enumerate() {
                match r {
                    Ok(()) if failures[i] > 0 => recovered[i] = true,
                    Ok(()) => {}
                    Err(e) => {
                        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                        failures[i] += 1;
                    }
                }
            }
            // The lease lives on a master that stays up: it is renewed.
            let renewed = store.acquire_lease(&node, 3_000).await.expect("renewed");
            assert_eq!(
                (renewed.node_id.clone(), renewed.term),
                (node.clone(), lease.term)
            );
            if let Ok(h) = store.ping().await {
                degraded.extend(h.degraded);
            }
            let victims_back = (0..SESSIONS)
                .filter(|&i| owners[i] == victim)
                .all(|i| recovered[i]);
            let victims_failing =
                (0..SESSIONS).any(|i| owners[i] == victim && !recovered[i] && failures[i] > 0);
            if victims_failing && !late_followed {
                // Subscribing goes on too (to the healthy master's subscriber).
                store
                    .follow_room(&late)
                    .await
                    .expect("follows a healthy room");
                late_followed = true;
            }
            while let Ok(ev) = events.try_recv() {
                if victims_failing && ev.room_id == room(writer) {
                    seen_in_outage += 1;
                }
            }
            if victims_back {
                break;
            }
            tokio::time::sleep(ROUND).await;
        }
        for i in 0..SESSIONS {
            if owners[i] == victim {
                assert!(
                    failures[i] > 0,
                    "session {i} on the dead master never failed"
                );
                assert!(
                    recovered[i],
                    "session {i} did not recover after the promotion"
                );
            } else {
                assert_eq!(failures[i], 0, "session {i} on a healthy master failed");
            }
        }
        // Events of rooms on healthy masters kept coming meanwhile.
        assert!(
            seen_in_outage > 0,
            "no event of a healthy room during the outage"
        );
        assert!(late_followed, "the outage ended before a room was followed");
        assert!(
            degraded.iter().any(|d| d.contains("does not answer")),
            "the store never said part of it was down: {degraded:?}"
        );
        // Nothing lost: every session is still in its room.
        for r in 0..ROOMS {
            let view = store.room_view(&room(r)).await.unwrap();
            assert_eq!(view.sessions.len(), SESSIONS / ROOMS, "room {r}: {view:?}");
        }
        // Whole again once the events subscription is back on every master.
        let whole = Instant::now();
        loop {
            match store.ping().await {
                Ok(h) if h.degraded.is_empty() => break,
                r if whole.elapsed() > PROMOTION_WITHIN => panic!("still not whole: {r:?}"),
                _ => tokio::time::sleep(ROUND).await,
            }
        }
    }
}
