//! The scenarios, and the run that drives them.
//!
//! A run has two phases. **Setup**: every session connects, says
//! `presence:hello` and joins its room (at most `connect_concurrency` at a
//! time); the connect, hello and join acks are measured. **Run**: for
//! `duration` (after `warmup`, which is driven but not recorded) each session
//! does what its scenario says; then the servers are sampled while every
//! session is still connected, and the sessions close.
//!
//! Every session heartbeats at the interval its hello ack names unless the
//! scenario drives heartbeats itself, so sessions never go stale in a long run.
//! Open-loop requests go out on their schedule whatever the answers do (a
//! slow server cannot slow the load down: no coordinated omission); each
//! latency counts from the moment its request was handed to its connection.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::MissedTickBehavior;

use crate::sio::{Client, Incoming, SioError, Target, Wire};
use crate::stats::Stats;

/// What the sessions do during the run phase.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// Connect + hello + join as fast as allowed (the setup phase is the
    /// measurement), then hold the sessions idle (keep-alive heartbeats only).
    Connect,
    /// Heartbeats: `Some(hz)` per session on a fixed schedule (open loop), or
    /// `None`: each session sends the next as soon as the last is answered.
    Heartbeat(Option<f64>),
    /// Every session in one room, each updating its state `hz` times a second.
    Bigroom(f64),
    /// Each session drops its connection and resumes on a new one `hz` times a
    /// second (round robin over the URLs).
    Churn(f64),
    /// Sessions join one room one at a time, `every` apart, through the first
    /// URL; an observer on the second URL times the diff that shows each.
    Propagation(Duration),
}

impl Scenario {
    /// The name used on the command line and in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Heartbeat(_) => "heartbeat",
            Scenario::Bigroom(_) => "bigroom",
            Scenario::Churn(_) => "churn",
            Scenario::Propagation(_) => "propagation",
        }
    }
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Nodes, used round robin.
    pub targets: Vec<Target>,
    /// Sessions to open.
    pub sessions: usize,
    /// Sessions per room (rooms are `<prefix>-r<k>`); `usize::MAX`: all in one.
    pub room_size: usize,
    /// Length of the measured phase.
    pub duration: Duration,
    /// Driven but not recorded, before the measured phase.
    pub warmup: Duration,
    /// Sessions being set up at once.
    pub connect_concurrency: usize,
    /// Deadline of each request.
    pub timeout: Duration,
    /// Loopback source addresses to spread connections over (127.0.0.1..=N):
    /// one address gives about 28k ephemeral ports towards one node.
    pub source_ips: u8,
    /// Prefix of user, session and room ids, so runs do not collide.
    pub prefix: String,
    /// HS256 secret to mint each user's token with (`sub`, `rooms: ["*"]`).
    pub jwt_secret: Option<String>,
    /// What the sessions follow in their rooms.
    pub view: View,
    /// The first sessions of each room that watch others instead, and how
    /// many users each watches.
    pub watchers: (usize, usize),
    /// The index of the first session (so that several tool processes can
    /// share one room without sharing user ids).
    pub offset: usize,
}

/// The `view` sessions join with (`--view`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// No `view`: the node's default (full up to its limit, then counts).
    #[default]
    Default,
    /// Every member and every diff.
    Full,
    /// Counts only.
    Count,
}

/// The shared state of a run: the plan, the two phases' stats, counters.
pub struct Run {
    /// The plan.
    pub plan: Plan,
    /// Setup phase: connect, hello, join.
    pub setup: Stats,
    /// Measured phase.
    pub run: Stats,
    /// Bytes and server events, every connection.
    pub wire: Arc<Wire>,
    /// Sessions that finished setup.
    pub reached: AtomicU64,
    /// Sessions whose setup failed.
    pub setup_failed: AtomicU64,
    /// True once warmup is over: only then does the run phase record.
    pub measuring: AtomicBool,
}

/// A session that has said hello and joined its room.
struct Session {
    i: usize,
    client: Client,
    uid: String,
    sid: String,
    epoch: u64,
    room: String,
    interval: Duration,
}

/// When the run phase starts and ends; `None` until setup is over.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Start of the run phase (warmup included).
    pub start: Instant,
    /// End of the run phase.
    pub end: Instant,
}

impl Run {
    /// A run of `plan`, nothing started yet.
    pub fn new(plan: Plan) -> Arc<Run> {
        Arc::new(Run {
            plan,
            setup: Stats::default(),
            run: Stats::default(),
            wire: Arc::new(Wire::default()),
            reached: AtomicU64::new(0),
            setup_failed: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
        })
    }

    fn target(&self, k: usize) -> Target {
        let n = self.plan.targets.len();
        let mut t = self.plan.targets[k % n].clone();
        if self.plan.source_ips > 1 && t.addr.ip().is_loopback() && t.addr.is_ipv4() {
            let host = 1 + ((k / n) % self.plan.source_ips as usize) as u8;
            t.local_ip = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)));
        }
        t
    }

    fn room_of(&self, i: usize) -> String {
        format!("{}-r{}", self.plan.prefix, i / self.plan.room_size.max(1))
    }

    fn token(&self, uid: &str) -> Option<String> {
        let secret = self.plan.jwt_secret.as_ref()?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 86_400;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({ "sub": uid, "rooms": ["*"], "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .ok()
    }

    fn stats(&self, setup: bool) -> Option<&Stats> {
        if setup {
            Some(&self.setup)
        } else if self.measuring.load(Ordering::Relaxed) {
            Some(&self.run)
        } else {
            None
        }
    }

    /// A request whose latency counts from `due`; records into the setup
    /// stats, or the run stats once measuring. `Some(ack)` when it succeeded.
    async fn call(
        &self,
        setup: bool,
        client: &Client,
        kind: &'static str,
        event: &str,
        payload: &Value,
        due: Instant,
    ) -> Option<Value> {
        let r = client.call(event, payload, self.plan.timeout).await;
        let v = self.accepted(setup, r)?;
        if let Some(s) = self.stats(setup) {
            s.ok(kind, due.elapsed());
        }
        Some(v)
    }

    /// The ack if it says `ok: true`; otherwise counts the error (the
    /// protocol's code, or the client's own) and gives `None`.
    fn accepted(&self, setup: bool, r: Result<Value, SioError>) -> Option<Value> {
        let code = match &r {
            Ok(v) if v.get("ok") == Some(&Value::Bool(true)) => return r.ok(),
            Ok(v) => v
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("bad_answer"),
            Err(e) => e.code(),
        };
        if let Some(s) = self.stats(setup) {
            s.error(code);
        }
        None
    }

    async fn connect(
        &self,
        setup: bool,
        k: usize,
        uid: &str,
        events: Option<mpsc::UnboundedSender<Incoming>>,
    ) -> Option<Client> {
        let t0 = Instant::now();
        let token = self.token(uid);
        let r = Client::connect(
            &self.target(k),
            token.as_deref(),
            events,
            self.wire.clone(),
            self.plan.timeout,
        )
        .await;
        let stats = self.stats(setup);
        match r {
            Ok(c) => {
                if let Some(s) = stats {
                    s.ok("connect", t0.elapsed());
                }
                Some(c)
            }
            Err(e) => {
                if let Some(s) = stats {
                    s.error(e.code());
                }
                if let SioError::BadUrl(_) | SioError::Refused(_) = e {
                    eprintln!("session {k}: {e}");
                }
                None
            }
        }
    }

    /// Connects as `uid` (to the `k`-th URL) and says hello: session `i`,
    /// not yet in `room`. Server events go to `events` if set.
    async fn greet(
        &self,
        setup: bool,
        i: usize,
        k: usize,
        uid: String,
        room: String,
        events: Option<mpsc::UnboundedSender<Incoming>>,
    ) -> Option<Session> {
        let client = self.connect(setup, k, &uid, events).await?;
        let hello = json!({ "userId": uid, "handle": format!("bench {i}") });
        let ack = self
            .call(
                setup,
                &client,
                "hello",
                "presence:hello",
                &hello,
                Instant::now(),
            )
            .await?;
        Some(Session {
            i,
            client,
            uid,
            sid: ack["sessionId"].as_str().unwrap_or_default().to_owned(),
            epoch: ack["epoch"].as_u64().unwrap_or(0),
            room,
            interval: Duration::from_millis(
                ack.pointer("/config/heartbeatIntervalMs")
                    .and_then(Value::as_u64)
                    .unwrap_or(10_000),
            ),
        })
    }

    /// What session `i` follows: a watch list for the first `watchers` of
    /// its room (users spread over the room), else the plan's view.
    fn view_of(&self, i: usize) -> Option<Value> {
        let size = self.room_len();
        let (watchers, watched) = self.plan.watchers;
        let first = i - i % size;
        if i % size < watchers {
            let end = self.plan.offset + self.plan.sessions;
            let span = size.min(end.saturating_sub(first)).max(1);
            let users: Vec<String> = (0..watched)
                .map(|k| format!("{}-u{}", self.plan.prefix, first + (i + 1 + k * 97) % span))
                .collect();
            return Some(json!({ "watch": users }));
        }
        match self.plan.view {
            View::Default => None,
            View::Full => Some(json!("full")),
            View::Count => Some(json!("count")),
        }
    }

    fn room_len(&self) -> usize {
        self.plan
            .room_size
            .min(self.plan.offset + self.plan.sessions)
            .max(1)
    }

    /// `s` joins its room; the ack is timed from `due`.
    async fn join(&self, setup: bool, s: &Session, due: Instant) -> Option<Value> {
        let mut join = json!({ "roomId": s.room });
        if let Some(v) = self.view_of(s.i) {
            join["view"] = v;
        }
        self.call(setup, &s.client, "join", "presence:join", &join, due)
            .await
    }

    /// Connect, hello, join: a session ready for the run phase.
    async fn open(&self, i: usize) -> Option<Session> {
        let i = i + self.plan.offset;
        let uid = format!("{}-u{i}", self.plan.prefix);
        let s = self.greet(true, i, i, uid, self.room_of(i), None).await?;
        self.join(true, &s, Instant::now()).await?;
        Some(s)
    }
}

/// Drives `plan`'s sessions. `on_setup_done` is called once every session is
/// set up (or failed), `on_measure` when warmup ends, `on_end` at the end of
/// the run phase while every session is still connected (the servers are
/// sampled there). Returns the setup phase's wall time.
pub async fn drive(
    run: Arc<Run>,
    on_setup_done: impl FnOnce(),
    on_measure: impl FnOnce(),
    on_end: impl FnOnce(),
) -> Duration {
    if let Scenario::Propagation(every) = run.plan.scenario {
        return propagation(run, every, on_setup_done, on_measure, on_end).await;
    }
    let n = run.plan.sessions;
    let gate = Arc::new(Semaphore::new(run.plan.connect_concurrency.max(1)));
    let (window_tx, window_rx) = watch::channel::<Option<Window>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    // Each session's run phase is over (its last request answered or timed out).
    let (ran_tx, mut ran_rx) = mpsc::unbounded_channel::<()>();
    run.setup.start();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let run = run.clone();
        let gate = gate.clone();
        let mut window_rx = window_rx.clone();
        let mut stop_rx = stop_rx.clone();
        let ready_tx = ready_tx.clone();
        let ran_tx = ran_tx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let s = run.open(i).await;
            drop(permit);
            match &s {
                Some(_) => run.reached.fetch_add(1, Ordering::Relaxed),
                None => run.setup_failed.fetch_add(1, Ordering::Relaxed),
            };
            let _ = ready_tx.send(());
            let Some(mut s) = s else { return };
            // Sessions set up early keep heartbeating while the others are
            // set up (not recorded): a long setup must not turn them stale.
            let w = tokio::select! {
                w = window_rx.wait_for(Option::is_some) => match w {
                    Ok(w) => w.expect("set"),
                    Err(_) => return,
                },
                _ = heartbeat_until(&run, &mut s, far_future()) => return,
            };
            session(&run, &mut s, w).await;
            let _ = ran_tx.send(());
            // Stay connected until the servers have been sampled.
            let _ = stop_rx.wait_for(|s| *s).await;
            s.client.close();
        }));
    }
    drop(ready_tx);
    drop(ran_tx);
    let mut done = 0;
    while done < n && ready_rx.recv().await.is_some() {
        done += 1;
    }
    let setup = t0.elapsed();
    on_setup_done();

    let start = Instant::now();
    let end = start + run.plan.warmup + run.plan.duration;
    let _ = window_tx.send(Some(Window { start, end }));
    tokio::time::sleep_until((start + run.plan.warmup).into()).await;
    run.measuring.store(true, Ordering::Relaxed);
    run.run.start();
    on_measure();
    tokio::time::sleep_until(end.into()).await;
    // Requests still in flight get their deadline to come back; sessions
    // that are done wait (connected, silent) only for that, not for the
    // deadline itself: silent long enough, they would turn stale and the
    // servers would be sampled sending that.
    let grace = Instant::now() + run.plan.timeout;
    let reached = run.reached.load(Ordering::Relaxed);
    let mut ran = 0;
    while ran < reached {
        match tokio::time::timeout_at(grace.into(), ran_rx.recv()).await {
            Ok(Some(())) => ran += 1,
            _ => break,
        }
    }
    run.measuring.store(false, Ordering::Relaxed);
    on_end();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    setup
}

/// The run phase of one session.
async fn session(run: &Run, s: &mut Session, w: Window) {
    let n = run.plan.sessions.max(1) as f64;
    // Each session's schedule is offset by its index, spreading the load
    // evenly over a period instead of firing every session at once.
    let offset = |period: Duration| period.mul_f64(((s.i - run.plan.offset) as f64 / n).min(1.0));
    match run.plan.scenario {
        Scenario::Heartbeat(None) => {
            while Instant::now() < w.end {
                if !beat(run, s, Instant::now()).await && s.client.is_closed() {
                    return;
                }
            }
        }
        Scenario::Heartbeat(Some(hz)) => {
            let period = Duration::from_secs_f64(1.0 / hz);
            open_loop(run, s, w, period, offset(period), Req::Heartbeat).await;
        }
        Scenario::Bigroom(hz) => {
            let period = Duration::from_secs_f64(1.0 / hz);
            open_loop(run, s, w, period, offset(period), Req::State).await;
        }
        Scenario::Churn(hz) => {
            let period = Duration::from_secs_f64(1.0 / hz);
            let mut next = w.start + offset(period);
            let mut k = s.i;
            loop {
                let until = next.min(w.end);
                heartbeat_until(run, s, until).await;
                if Instant::now() >= w.end {
                    return;
                }
                k += 1;
                resume(run, s, k, next).await;
                next += period;
            }
        }
        Scenario::Connect => heartbeat_until(run, s, w.end).await,
        Scenario::Propagation(_) => unreachable!("propagation has its own driver"),
    }
}

/// A deadline no run reaches: keep-alive heartbeats until told to stop.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 86_400)
}

/// One heartbeat of `s`, timed from `due`, adopting the epoch its ack names.
/// Whether it was accepted.
async fn beat(run: &Run, s: &mut Session, due: Instant) -> bool {
    let hb = json!({ "epoch": s.epoch, "activity": "active" });
    let ack = run
        .call(
            false,
            &s.client,
            "heartbeat",
            "presence:heartbeat",
            &hb,
            due,
        )
        .await;
    if let Some(ack) = &ack {
        adopt(s, ack);
    }
    ack.is_some()
}

/// Takes the epoch an ack names (a heartbeat that revived the session).
fn adopt(s: &mut Session, ack: &Value) {
    if let Some(e) = ack.get("epoch").and_then(Value::as_u64) {
        s.epoch = e;
    }
}

/// What an open loop sends on its schedule.
#[derive(Clone, Copy, PartialEq)]
enum Req {
    Heartbeat,
    /// A state patch of the session's room (keep-alive heartbeats besides).
    State,
}

/// Open loop: one request every `period` from `w.start + offset`, whatever
/// the answers do (a tick that came late is caught up at once).
async fn open_loop(
    run: &Run,
    s: &mut Session,
    w: Window,
    period: Duration,
    offset: Duration,
    req: Req,
) {
    let mut tick = tokio::time::interval_at((w.start + offset).into(), period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // The keep-alive beats go on from the setup's (whose last beat may be a
    // whole interval old): the first within a second of the window's start.
    let mut keep = tokio::time::interval_at(
        (w.start + Duration::from_millis((s.i % 97) as u64 * 10)).into(),
        s.interval,
    );
    let mut inflight = FuturesUnordered::new();
    let client = &s.client;
    let room = s.room.as_str();
    let mut epoch = s.epoch;
    let mut k = 0u64;
    loop {
        let live = Instant::now() < w.end;
        if !live && inflight.is_empty() || client.is_closed() {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if live => {
                k += 1;
                let (kind, event, payload) = match req {
                    Req::Heartbeat => (
                        "heartbeat",
                        "presence:heartbeat",
                        json!({ "epoch": epoch, "activity": "active" }),
                    ),
                    Req::State => (
                        "state",
                        "presence:state",
                        json!({ "roomId": room, "epoch": epoch, "patch": { "n": k } }),
                    ),
                };
                inflight.push(send(run, client, kind, event, payload, Instant::now()));
            }
            _ = keep.tick(), if live && req != Req::Heartbeat => {
                let payload = json!({ "epoch": epoch, "activity": "active" });
                inflight.push(send(run, client, "heartbeat", "presence:heartbeat", payload, Instant::now()));
            }
            r = inflight.next(), if !inflight.is_empty() => {
                if let Some(Some(ack)) = r {
                    if let Some(e) = ack.get("epoch").and_then(Value::as_u64) {
                        epoch = e;
                    }
                }
            }
            _ = tokio::time::sleep_until(w.end.into()), if live => {}
        }
    }
    s.epoch = epoch;
}

/// One request of an open loop (one future type for every kind).
async fn send(
    run: &Run,
    client: &Client,
    kind: &'static str,
    event: &'static str,
    payload: Value,
    due: Instant,
) -> Option<Value> {
    run.call(false, client, kind, event, &payload, due).await
}

/// Keep-alive heartbeats at the session's interval until `until`.
async fn heartbeat_until(run: &Run, s: &mut Session, until: Instant) {
    // Spread over the interval by index so that sessions do not beat together.
    let phase = s.interval.mul_f64((s.i % 97) as f64 / 97.0);
    let mut next = Instant::now() + phase.min(s.interval);
    loop {
        if next >= until {
            tokio::time::sleep_until(until.into()).await;
            return;
        }
        tokio::time::sleep_until(next.into()).await;
        beat(run, s, next).await;
        next += s.interval;
    }
}

/// Drops the connection and resumes the session on a new one (the `k`-th
/// URL): measured as `resume`, connect + hello, from `due`. The ack must say
/// `resumed` and still list the session's room.
async fn resume(run: &Run, s: &mut Session, k: usize, due: Instant) {
    s.client.close();
    let Some(client) = run.connect(false, k, &s.uid, None).await else {
        return;
    };
    s.client = client;
    let hello = json!({ "userId": s.uid, "sessionId": s.sid });
    let r = s
        .client
        .call("presence:hello", &hello, run.plan.timeout)
        .await;
    let Some(ack) = run.accepted(false, r) else {
        return;
    };
    let stats = run.stats(false);
    let in_room = ack["rooms"]
        .as_array()
        .is_some_and(|r| r.iter().any(|x| x.as_str() == Some(s.room.as_str())));
    if let Some(st) = stats {
        if ack["resumed"] != Value::Bool(true) {
            st.error("not_resumed");
        } else if !in_room {
            st.error("room_lost");
        } else {
            st.ok("resume", due.elapsed());
        }
    }
    adopt(s, &ack);
}

/// The propagation scenario: an observer joins the room through the second
/// URL (the first if there is one), then sessions join it one at a time
/// through the first, `every` apart; each is timed from its join until the
/// observer's diff that shows its session. Joined sessions keep heartbeating.
async fn propagation(
    run: Arc<Run>,
    every: Duration,
    on_setup_done: impl FnOnce(),
    on_measure: impl FnOnce(),
    on_end: impl FnOnce(),
) -> Duration {
    let t0 = Instant::now();
    let room = run.room_of(0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let n_urls = run.plan.targets.len();
    let observer_uid = format!("{}-observer", run.plan.prefix);
    let observer = run
        .greet(true, 0, 1 % n_urls, observer_uid, room.clone(), Some(tx))
        .await;
    let mut ok = false;
    if let Some(o) = &observer {
        ok = run.join(true, o, Instant::now()).await.is_some();
    }
    let setup = t0.elapsed();
    on_setup_done();
    if !ok {
        on_end();
        return setup;
    }
    run.measuring.store(true, Ordering::Relaxed);
    run.run.start();
    on_measure();
    let (stop_tx, stop_rx) = watch::channel(false);
    let end = Instant::now() + run.plan.duration;
    let mut keepers = Vec::new();
    for i in 0..run.plan.sessions {
        let due = Instant::now() + every;
        if Instant::now() >= end {
            break;
        }
        let uid = format!("{}-u{i}", run.plan.prefix);
        let Some(mut s) = run.greet(false, i, 0, uid, room.clone(), None).await else {
            tokio::time::sleep_until(due.into()).await;
            continue;
        };
        let joined = Instant::now();
        if run.join(false, &s, joined).await.is_some() {
            run.reached.fetch_add(1, Ordering::Relaxed);
            let sid = s.sid.as_str();
            let seen = tokio::time::timeout(run.plan.timeout, async {
                while let Some(m) = rx.recv().await {
                    match m {
                        Incoming::Event(name, v) if name == "presence:diff" => {
                            let shown = v
                                .get("sessions")
                                .and_then(|x| x.get(sid))
                                .is_some_and(|x| !x.is_null());
                            if shown {
                                return true;
                            }
                        }
                        Incoming::Closed => return false,
                        _ => {}
                    }
                }
                false
            })
            .await;
            match seen {
                Ok(true) => run.run.ok("propagation", joined.elapsed()),
                Ok(false) => run.run.error("observer_closed"),
                Err(_) => run.run.error("diff_timeout"),
            }
        }
        let run2 = run.clone();
        let mut stop = stop_rx.clone();
        keepers.push(tokio::spawn(async move {
            tokio::select! {
                _ = heartbeat_until(&run2, &mut s, far_future()) => {}
                _ = stop.wait_for(|x| *x) => {}
            }
            s.client.close();
        }));
        tokio::time::sleep_until(due.into()).await;
    }
    run.measuring.store(false, Ordering::Relaxed);
    on_end();
    let _ = stop_tx.send(true);
    for k in keepers {
        let _ = tokio::time::timeout(Duration::from_secs(5), k).await;
    }
    drop(observer);
    setup
}
