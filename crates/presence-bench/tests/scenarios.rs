//! Every scenario of the load tool against real nodes (in this process, on
//! loopback ports of their own): the memory store, and two nodes sharing a
//! real redis-server for the cross-node scenarios. Small counts and a few
//! seconds each: these check that the tool measures what it says, not speed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use presence_bench::scenario::{drive, Plan, Run, Scenario};
use presence_bench::sio::Target;
use presence_node::config::Config;
use tokio::sync::oneshot;

const SECRET: &str = "bench-test-secret-bench-test-secret!";

/// A node serving on a free loopback port until dropped.
struct Node {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn node(extra: &[&str]) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut args = vec![
        "presence-node",
        "--heartbeat-interval-ms",
        "500",
        "--emit-debounce-ms",
        "0",
    ];
    // The tool is under test, not the node's limits: a closed loop on an
    // idle machine sends a socket's heartbeats well past 1,000 a second.
    if !extra.contains(&"--rate-limit-per-sec") {
        args.extend(["--rate-limit-per-sec", "1000000"]);
    }
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).unwrap();
    config.validate().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        presence_node::app::serve(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Node {
        url: format!("http://{addr}"),
        _stop: stop,
    }
}

fn plan(scenario: Scenario, urls: &[&str], sessions: usize) -> Plan {
    let room_size = match scenario {
        Scenario::Bigroom(_) | Scenario::Propagation(_) => usize::MAX,
        _ => 5,
    };
    Plan {
        scenario,
        targets: urls.iter().map(|u| Target::parse(u).unwrap()).collect(),
        sessions,
        room_size,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(200),
        connect_concurrency: 8,
        timeout: Duration::from_secs(5),
        source_ips: 1,
        prefix: format!("t{}", std::process::id()),
        jwt_secret: None,
        view: Default::default(),
        watchers: (0, 0),
        offset: 0,
    }
}

async fn go(plan: Plan) -> Arc<Run> {
    let run = Run::new(plan);
    let setup = drive(run.clone(), || {}, || {}, || {}).await;
    assert!(setup > Duration::ZERO);
    run
}

fn errors(run: &Run) -> String {
    let s = run.setup.summary(1.0);
    let r = run.run.summary(1.0);
    format!("setup {:?}, run {:?}", s.errors, r.errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_open_and_closed_loop() {
    let n = node(&[]).await;
    let run = go(plan(Scenario::Heartbeat(Some(20.0)), &[&n.url], 20)).await;
    assert_eq!(run.reached.load(Ordering::Relaxed), 20, "{}", errors(&run));
    let setup = run.setup.summary(1.0);
    for kind in ["connect", "hello", "join"] {
        assert_eq!(setup.acks[kind].count, 20, "{kind}");
    }
    let r = run.run.summary(2.0);
    assert!(r.errors.is_empty(), "{}", errors(&run));
    // 20 sessions × 20/s × 2 s, on a schedule: about 800, warmup excluded.
    let hb = r.acks["heartbeat"].count;
    assert!((700..=900).contains(&hb), "{hb} heartbeats");
    assert!(r.acks["heartbeat"].p50_ms > 0.0);

    let run = go(plan(Scenario::Heartbeat(None), &[&n.url], 4)).await;
    let r = run.run.summary(2.0);
    assert!(r.errors.is_empty(), "{}", errors(&run));
    assert!(r.acks["heartbeat"].count > 100, "closed loop: {:?}", r.acks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_code() {
    // A rate limit below the schedule: the node's own error code is counted.
    let n = node(&["--rate-limit-per-sec", "5"]).await;
    let run = go(plan(Scenario::Heartbeat(Some(20.0)), &[&n.url], 3)).await;
    let r = run.run.summary(2.0);
    assert!(
        r.errors.get("rate_limited").copied().unwrap_or(0) > 10,
        "{}",
        errors(&run)
    );
    assert!(r.acks.get("heartbeat").is_some_and(|a| a.count > 0));

    // Nothing listening: every session fails to connect.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let run = go(plan(
        Scenario::Connect,
        &[&format!("http://127.0.0.1:{port}")],
        3,
    ))
    .await;
    assert_eq!(run.reached.load(Ordering::Relaxed), 0);
    assert_eq!(run.setup.summary(1.0).errors["connect_failed"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_minted_when_the_node_wants_them() {
    let n = node(&["--jwt-secret", SECRET]).await;
    let mut p = plan(Scenario::Connect, &[&n.url], 5);
    p.duration = Duration::from_millis(300);
    let run = go(p.clone()).await;
    assert_eq!(run.setup.summary(1.0).errors["connect_refused"], 5);
    p.jwt_secret = Some(SECRET.into());
    let run = go(p).await;
    assert_eq!(run.reached.load(Ordering::Relaxed), 5, "{}", errors(&run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigroom_puts_everyone_in_one_room() {
    let n = node(&[]).await;
    let run = go(plan(Scenario::Bigroom(2.0), &[&n.url], 12)).await;
    assert_eq!(run.reached.load(Ordering::Relaxed), 12, "{}", errors(&run));
    let r = run.run.summary(2.0);
    assert!(r.errors.is_empty(), "{}", errors(&run));
    assert!(r.acks["state"].count >= 40, "{:?}", r.acks);
    // Each state change reaches the 11 others as diffs.
    let events = run.wire.events_in.load(Ordering::Relaxed);
    assert!(events >= 11 * 40, "{events} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_propagation_across_two_nodes_on_redis() {
    let redis = presence_testkit::RedisServer::start().unwrap();
    let url = redis.url();
    let a = node(&["--redis-url", &url, "--node-id", "a"]).await;
    let b = node(&["--redis-url", &url, "--node-id", "b"]).await;

    let run = go(plan(Scenario::Churn(2.0), &[&a.url, &b.url], 6)).await;
    assert_eq!(run.reached.load(Ordering::Relaxed), 6, "{}", errors(&run));
    let r = run.run.summary(2.0);
    assert!(r.errors.is_empty(), "{}", errors(&run));
    assert!(r.acks["resume"].count >= 12, "{:?}", r.acks);

    let mut p = plan(
        Scenario::Propagation(Duration::from_millis(100)),
        &[&a.url, &b.url],
        8,
    );
    p.duration = Duration::from_secs(10);
    let run = go(p).await;
    let r = run.run.summary(1.0);
    assert!(r.errors.is_empty(), "{}", errors(&run));
    assert_eq!(r.acks["propagation"].count, 8);
    assert_eq!(run.reached.load(Ordering::Relaxed), 8);
}
