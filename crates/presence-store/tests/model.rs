//! Random operation sequences against the memory store, checking the
//! invariants observers rely on after every step.

use std::collections::HashMap;
use std::sync::Arc;

use presence_core::{
    Activity, Limits, ManualClock, NodeId, PresenceEvent, RoomId, SessionId, Timings, UserId,
};
use presence_store::{Hello, MemoryStore, Page, PresenceStore, SessionRef, StoreError};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Op {
    Hello {
        user: u8,
        session: u8,
    },
    Join {
        session: u8,
        room: u8,
        stale: bool,
    },
    Leave {
        session: u8,
        room: u8,
    },
    Heartbeat {
        session: u8,
        activity: Option<Activity>,
        stale: bool,
    },
    State {
        session: u8,
        room: u8,
        value: Option<u8>,
    },
    End {
        session: u8,
    },
    Disconnect {
        session: u8,
    },
    Advance {
        ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let activity = prop::option::of(prop_oneof![
        Just(Activity::Active),
        Just(Activity::Idle),
        Just(Activity::Background)
    ]);
    prop_oneof![
        (0u8..3, 0u8..5).prop_map(|(user, session)| Op::Hello { user, session }),
        (0u8..5, 0u8..3, any::<bool>()).prop_map(|(session, room, stale)| Op::Join {
            session,
            room,
            stale
        }),
        (0u8..5, 0u8..3).prop_map(|(session, room)| Op::Leave { session, room }),
        (0u8..5, activity, any::<bool>()).prop_map(|(session, activity, stale)| Op::Heartbeat {
            session,
            activity,
            stale
        }),
        (0u8..5, 0u8..3, prop::option::of(0u8..3)).prop_map(|(session, room, value)| Op::State {
            session,
            room,
            value
        }),
        (0u8..5).prop_map(|session| Op::End { session }),
        (0u8..5).prop_map(|session| Op::Disconnect { session }),
        (0i64..40_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn sid(n: u8) -> SessionId {
    SessionId::new(&format!("s{n}")).unwrap()
}
fn rid(n: u8) -> RoomId {
    RoomId::new(&format!("r{n}")).unwrap()
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(1_700_000_000_000);
    let store = MemoryStore::new(
        Arc::new(clock.clone()),
        Timings::default(),
        Limits::default(),
    );
    let mut events = store.events();
    // The epoch each session's current connection holds, and an older one.
    let mut epochs: HashMap<u8, (u64, Option<u64>)> = HashMap::new();
    let mut last_seq: HashMap<RoomId, u64> = HashMap::new();

    for op in ops {
        let r = |s: u8, stale: bool, epochs: &HashMap<u8, (u64, Option<u64>)>| {
            let (cur, old) = epochs.get(&s).copied().unwrap_or((1, None));
            SessionRef {
                session_id: sid(s),
                epoch: if stale { old.unwrap_or(cur + 1) } else { cur },
            }
        };
        let before: Vec<u64> = {
            let mut v = vec![];
            for room in 0..3 {
                v.push(store.room_view(&rid(room)).await.unwrap().seq);
            }
            v
        };
        let outcome: Result<(), StoreError> = match op.clone() {
            Op::Hello { user, session } => {
                let res = store
                    .hello(Hello {
                        declare: Default::default(),
                        session_id: Some(sid(session)),
                        user_id: UserId::new(&format!("u{user}")).unwrap(),
                        handle: None,
                        meta: None,
                        activity: Activity::Active,
                        node_id: NodeId::new("n").unwrap(),
                    })
                    .await;
                if let Ok(c) = &res {
                    let prev = epochs.get(&session).map(|e| e.0);
                    if let Some(p) = prev {
                        prop_assert!(c.epoch > p, "epochs only grow");
                    }
                    epochs.insert(session, (c.epoch, prev));
                }
                res.map(|_| ())
            }
            Op::Join {
                session,
                room,
                stale,
            } => store
                .join(&r(session, stale, &epochs), &rid(room), None)
                .await
                .map(|_| ()),
            Op::Leave { session, room } => {
                store.leave(&r(session, false, &epochs), &rid(room)).await
            }
            Op::Heartbeat {
                session,
                activity,
                stale,
            } => store.heartbeat(&r(session, stale, &epochs), activity).await,
            Op::State {
                session,
                room,
                value,
            } => {
                let patch = json!({ "v": value }).as_object().unwrap().clone();
                store
                    .update_state(&r(session, false, &epochs), &rid(room), patch)
                    .await
            }
            Op::End { session } => store.end(&r(session, false, &epochs)).await.map(|_| ()),
            Op::Disconnect { session } => store.disconnect(&r(session, false, &epochs)).await,
            Op::Advance { ms } => {
                clock.advance(ms);
                store.sweep(1).await.map(|_| ())
            }
        };

        // A refused write changes nothing observers can see.
        if let Err(e) = &outcome {
            prop_assert!(
                !matches!(e, StoreError::Internal(_) | StoreError::Unavailable(_)),
                "{e:?}"
            );
            if !matches!(op, Op::Hello { .. }) {
                for room in 0..3 {
                    prop_assert_eq!(
                        store.room_view(&rid(room)).await.unwrap().seq,
                        before[room as usize],
                        "{:?} -> {:?}",
                        op,
                        e
                    );
                }
            }
        }

        // Events: per room, seq grows by exactly one (a room that emptied starts again at 1).
        let mut seen: Vec<PresenceEvent> = vec![];
        while let Ok(ev) = events.try_recv() {
            seen.push(ev);
        }
        for ev in &seen {
            let prev = last_seq.get(&ev.room_id).copied().unwrap_or(0);
            prop_assert!(
                ev.seq == prev + 1 || ev.seq == 1,
                "room {} seq {} after {}",
                ev.room_id,
                ev.seq,
                prev
            );
            last_seq.insert(ev.room_id.clone(), ev.seq);
        }

        // Views, stats and who's online agree.
        let online = store
            .whos_online(Page {
                limit: 100,
                after: None,
            })
            .await
            .unwrap();
        for room in 0..3 {
            let v = store.room_view(&rid(room)).await.unwrap();
            let stats = store.room_stats(&rid(room)).await.unwrap();
            prop_assert_eq!(stats.sessions as usize, v.sessions.len());
            prop_assert_eq!(stats.users as usize, v.users.len());
            let counted: u32 = v.users.values().map(|u| u.session_count).sum();
            prop_assert_eq!(counted as usize, v.sessions.len());
            if !v.sessions.is_empty() {
                prop_assert_eq!(
                    Some(&v.seq),
                    last_seq.get(&rid(room)),
                    "the view is at the last published seq"
                );
            }
            for (id, s) in &v.sessions {
                prop_assert!(
                    online.entries.sessions.contains_key(id),
                    "{id} in a room but not online"
                );
                prop_assert_eq!(online.entries.sessions[id].status, s.status);
                prop_assert!(v.users.contains_key(&s.user_id));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn invariants_hold_under_any_sequence(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
