//! How long the reaper takes to cull 100k sessions whose node died, and the
//! longest single Redis call it makes meanwhile (the time Redis is blocked
//! for every other client).
//!
//! `cargo bench -p presence-store --bench cull` (set `CULL_SESSIONS` for
//! another count). It starts a redis-server of its own, fills it through
//! the store (100 rooms of 1000 sessions), moves a manual clock past the
//! heartbeat timeout and then past the removal deadline, and sweeps until
//! nothing is left, printing the figures that docs/benchmarks.md quotes.
//! Redis measures the calls itself: SLOWLOG keeps every call above 1 ms
//! during the sweeps (recording every call would slow Redis down), and the
//! longest is read back from it (`CULL_SLOWLOG_US` sets the threshold: 0
//! records every call, commands inside scripts too, and slows Redis down);
//! INFO commandstats counts the script calls and each command's share of the
//! time, and INFO cpu gives the CPU time Redis spent on each phase. The bench
//! process and Redis share the machine's cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{CustomCommand, Value};
use futures::StreamExt;
use presence_core::{Activity, Limits, ManualClock, NodeId, RoomId, Timings, UserId};
use presence_store::{Hello, Page, PresenceStore, RedisOptions, RedisStore, SessionRef};
use presence_testkit::RedisServer;

const ROOM_SIZE: usize = 1000;

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("CULL_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let clock = ManualClock::new(1_700_000_000_000);
    let timings = Timings::default();
    let mut opts = RedisOptions::new(&url);
    opts.pool_size = 8;
    opts.command_timeout = Duration::from_secs(30);
    let store = Arc::new(
        RedisStore::connect(opts, Arc::new(clock.clone()), timings, Limits::default())
            .await
            .expect("connect"),
    );
    let admin = Builder::from_config(Config::from_url(&url).expect("url"))
        .build()
        .expect("client");
    admin.init().await.expect("connect admin");

    let t = Instant::now();
    let node = NodeId::new("bench-node").expect("node id");
    futures::stream::iter(0..n)
        .map(|i| {
            let (store, node) = (store.clone(), node.clone());
            async move {
                let s = store
                    .hello(Hello {
                        declare: Default::default(),
                        session_id: None,
                        user_id: UserId::new(&format!("user-{i}")).expect("user id"),
                        handle: None,
                        meta: None,
                        activity: Activity::Active,
                        node_id: node,
                    })
                    .await
                    .expect("hello");
                let room = RoomId::new(&format!("room-{}", i / ROOM_SIZE)).expect("room id");
                let me = SessionRef {
                    session_id: s.session_id,
                    epoch: s.epoch,
                };
                store.join(&me, &room, None).await.expect("join");
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    println!(
        "filled {n} sessions in {} rooms in {:.1?}",
        n.div_ceil(ROOM_SIZE),
        t.elapsed()
    );

    let slow_us = std::env::var("CULL_SLOWLOG_US").unwrap_or_else(|_| "1000".into());
    let slow = |args: Vec<&'static str>| {
        let admin = admin.clone();
        async move {
            let _: Value = admin
                .custom(CustomCommand::new_static("SLOWLOG", None, false), args)
                .await
                .expect("slowlog");
        }
    };
    let _: Value = admin
        .custom(
            CustomCommand::new_static("CONFIG", None, false),
            vec![
                "SET",
                "slowlog-log-slower-than",
                &slow_us,
                "slowlog-max-len",
                "100000",
            ],
        )
        .await
        .expect("config");

    for (phase, to) in [
        ("marked stale", timings.heartbeat_timeout_ms + 1),
        (
            "removed",
            timings.heartbeat_timeout_ms + timings.reconnect_grace_ms + 1,
        ),
    ] {
        clock.set(1_700_000_000_000 + to);
        slow(vec!["RESET"]).await;
        let _: Value = admin
            .custom(
                CustomCommand::new_static("CONFIG", None, false),
                vec!["RESETSTAT"],
            )
            .await
            .expect("resetstat");
        let cpu = redis_cpu(&admin).await;
        let t = Instant::now();
        let (mut sweeps, mut changed, mut expired) = (0, 0, 0);
        loop {
            let r = store.sweep(1).await.expect("sweep");
            sweeps += 1;
            changed += r.status_changes;
            expired += r.expired;
            if r.status_changes == 0 && r.expired == 0 {
                break;
            }
        }
        let took = t.elapsed();
        let cpu = redis_cpu(&admin).await - cpu;
        let (calls, longest, cmd, by) = longest_call(&admin).await;
        let scripts = script_calls(&admin).await;
        let inner = command_costs(&admin, n).await;
        println!(
            "{phase}: {changed} status changes, {expired} removed, in {sweeps} sweeps, {took:.2?} \
             ({:.0} sessions/s); Redis CPU {cpu:.2} s ({:.1} µs a session); {scripts}; {calls} \
             calls above 1 ms ({by}), the longest {longest} µs ({cmd})",
            n as f64 / took.as_secs_f64(),
            cpu * 1e6 / n as f64
        );
        println!("  {phase}, by command (calls and Redis µs per session): {inner}");
    }
    let left = store
        .whos_online(Page {
            limit: 10,
            after: None,
        })
        .await
        .expect("read");
    println!("left online: {} sessions", left.entries.sessions.len());
    drop(server);
}

/// What SLOWLOG kept of the sweep: the number of calls, the longest one's
/// duration and command, and the calls per command (the bench's own SLOWLOG
/// and CONFIG calls left out).
async fn longest_call(admin: &Client) -> (usize, i64, String, String) {
    let v: Value = admin
        .custom(
            CustomCommand::new_static("SLOWLOG", None, false),
            vec!["GET", "-1"],
        )
        .await
        .expect("slowlog get");
    let mut best = (0i64, String::new());
    let mut calls = 0;
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    let mut time: std::collections::BTreeMap<String, i64> = Default::default();
    for e in v.into_array() {
        let f = e.into_array();
        let us = f.get(2).and_then(|d| d.as_i64()).unwrap_or(0);
        let cmd = f
            .get(3)
            .and_then(|a| a.clone().into_array().into_iter().next())
            .and_then(|x| x.as_string())
            .unwrap_or_default()
            .to_uppercase();
        // A function call is named by its function (`<library>_<script>`).
        let cmd = match f.get(3).map(|a| a.clone().into_array()) {
            Some(args) if cmd == "FCALL" => args
                .get(1)
                .and_then(|x| x.as_string())
                .and_then(|name| name.splitn(3, '_').nth(2).map(|s| format!("FCALL {s}")))
                .unwrap_or(cmd),
            _ => cmd,
        };
        if cmd == "SLOWLOG" || cmd == "CONFIG" {
            continue;
        }
        calls += 1;
        *by.entry(cmd.clone()).or_default() += 1;
        *time.entry(cmd.clone()).or_default() += us;
        if us > best.0 {
            best = (us, cmd);
        }
    }
    let mut by: Vec<_> = by.into_iter().collect();
    by.sort_by_key(|e| std::cmp::Reverse(e.1));
    let by = by
        .iter()
        .map(|(c, n)| format!("{c} {n} calls {} µs", time[c]))
        .collect::<Vec<_>>()
        .join(", ");
    (calls, best.0, best.1, by)
}

/// The CPU time Redis has used so far (user + sys, `INFO cpu`), in seconds.
async fn redis_cpu(admin: &Client) -> f64 {
    info(admin, "cpu")
        .await
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "used_cpu_user" | "used_cpu_sys").then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The script calls since the last CONFIG RESETSTAT, from INFO commandstats:
/// how many, and their mean duration.
async fn script_calls(admin: &Client) -> String {
    let info = info(admin, "commandstats").await;
    // FCALL where Redis runs the scripts as functions, else EVALSHA.
    let Some(line) = info
        .lines()
        .find(|l| l.starts_with("cmdstat_fcall:") || l.starts_with("cmdstat_evalsha:"))
    else {
        return "no script calls".into();
    };
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name))
            .unwrap_or("?")
            .to_owned()
    };
    format!(
        "{} script calls, {} µs each on average",
        field("calls="),
        field("usec_per_call=")
    )
}

/// Where the time went, from INFO commandstats: each command's calls and
/// time per culled session, the costliest first (a script's own line counts
/// the commands it made, which have their lines too).
async fn command_costs(admin: &Client, sessions: usize) -> String {
    let info = info(admin, "commandstats").await;
    let mut rows: Vec<(String, f64, f64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            let per = sessions as f64;
            Some((
                name.to_uppercase(),
                field("calls=")? / per,
                field("usec=")? / per,
            ))
        })
        .filter(|(name, _, _)| !matches!(name.as_str(), "INFO" | "CONFIG" | "SLOWLOG"))
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows.iter()
        .map(|(name, calls, us)| format!("{name} {calls:.2}/{us:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One section of INFO.
async fn info(admin: &Client, section: &'static str) -> String {
    admin
        .custom(
            CustomCommand::new_static("INFO", None, false),
            vec![section],
        )
        .await
        .expect("info")
}
