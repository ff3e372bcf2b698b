//! The Socket.IO side of a node.
//!
//! A connection binds to at most one session (`presence:hello`); every later
//! event acts on that session with the epoch the store issued to this
//! connection. Payloads are decoded by [`wire`](crate::wire) first, so a
//! malformed one gets a `bad_request` ack and touches nothing. Events sent
//! without an ack callback are processed the same way; their answer is
//! simply not sent.
//!
//! - this file: what the handlers share ([`SocketContext`]), the handshake
//!   check, routing into the connection's queue, the hello timeout, rate
//!   limits and answering;
//! - `queue`: a connection's events, handled one at a time in the order sent;
//! - `conn`: what one connection holds, its state as one enum;
//! - `bindings`: which connection holds which session (to unbind one that
//!   was taken over, and to deliver an intent's notices);
//! - `handlers`: one handler per `presence:*` event, and the close;
//! - `reach`: the handlers of readiness, reachability and intents.

mod bindings;
mod conn;
mod handlers;
mod queue;
mod reach;

pub use bindings::Bindings;
pub use handlers::{removed, superseded};

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{Quota, RateLimiter};
use presence_core::{Limits, Timings};
use presence_store::PresenceStore;
use serde::Serialize;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::socket::DisconnectReason;
use tokio::time::{Duration, Instant};

use self::conn::Conn;
use self::queue::{Pushed, Queue};
use crate::auth::{AuthError, Grant, Verifier};
use crate::fanout::Fanout;
use crate::node::LocalNode;
use crate::wire::{ErrorCode, WireError};

/// What the Socket.IO handlers need, and nothing more.
pub struct SocketContext {
    /// This node.
    pub node: Arc<LocalNode>,
    /// The authoritative state.
    pub store: Arc<dyn PresenceStore>,
    /// Per-room snapshots and diffs to local sockets.
    pub fanout: Fanout,
    /// Lifecycle timings (told to clients in the hello ack).
    pub timings: Timings,
    /// Limits on client input.
    pub limits: Limits,
    /// Verifies handshake tokens; `None` when token auth is off.
    pub verifier: Option<Verifier>,
    /// Events per second one socket may send (`PRESENCE_RATE_LIMIT_PER_SEC`).
    pub events_per_sec: NonZeroU32,
    /// Signals per second one socket may relay (`PRESENCE_SIGNAL_RATE_PER_SEC`).
    pub signals_per_sec: NonZeroU32,
    /// How long a connection may hold no session (`PRESENCE_HELLO_TIMEOUT_MS`).
    pub hello_timeout: Duration,
    /// The sessions bound to this node's connections.
    pub bindings: Arc<Bindings>,
    /// Reachability and intents.
    pub coordinator: Arc<crate::coordination::Coordinator>,
}

/// Checks the handshake token when auth is on (a Socket.IO connect
/// middleware: an error fails the connection with a `connect_error` whose
/// message names the reason) and keeps what it grants on the socket.
pub async fn authenticate(
    cx: &SocketContext,
    socket: &SocketRef,
    auth: Option<Value>,
) -> Result<(), AuthError> {
    let Some(verifier) = &cx.verifier else {
        return Ok(());
    };
    match verifier.verify(auth.as_ref()) {
        Ok(grant) => {
            socket.extensions.insert(grant);
            Ok(())
        }
        Err(e) => {
            tracing::debug!(reason = %e, "handshake refused");
            crate::metrics::request("connect", "unauthorized");
            Err(e)
        }
    }
}

/// One clock for every rate limiter. `RateLimiter::direct` makes a new
/// quanta clock each time, which calibrates itself with CPUID instructions:
/// three per connection took ~5% of the node's CPU in a 10k connect storm
/// (and CPUID is a hypervisor exit in a VM). Clones share the calibration.
static LIMITER_CLOCK: std::sync::LazyLock<governor::clock::DefaultClock> =
    std::sync::LazyLock::new(governor::clock::DefaultClock::default);

/// The events a connection may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Hello,
    Join,
    Heartbeat,
    State,
    Signal,
    Leave,
    Members,
    Watch,
    Readiness,
    Reachability,
    Intent,
    IntentCancel,
}

impl Event {
    const ALL: [Event; 12] = [
        Event::Hello,
        Event::Join,
        Event::Heartbeat,
        Event::State,
        Event::Signal,
        Event::Leave,
        Event::Members,
        Event::Watch,
        Event::Readiness,
        Event::Reachability,
        Event::Intent,
        Event::IntentCancel,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::Hello => "presence:hello",
            Event::Join => "presence:join",
            Event::Heartbeat => "presence:heartbeat",
            Event::State => "presence:state",
            Event::Signal => "presence:signal",
            Event::Leave => "presence:leave",
            Event::Members => "presence:members",
            Event::Watch => "presence:watch",
            Event::Readiness => "presence:readiness",
            Event::Reachability => "presence:reachability",
            Event::Intent => "presence:intent",
            Event::IntentCancel => "presence:intent_cancel",
        }
    }
}

/// A connection's event (or its close), queued in the order it arrived.
enum Op {
    Event {
        event: Event,
        socket: SocketRef,
        payload: Result<Value, WireError>,
        ack: AckSender,
        queued_at: Instant,
    },
    Closed(SocketRef, DisconnectReason),
}

/// Registers the presence handlers on a new connection.
///
/// The handlers only queue the event (see [`queue`]): a connection's events
/// are handled one at a time, in the order it sent them, by a task that runs
/// while events wait.
pub fn on_connect(socket: SocketRef, cx: Arc<SocketContext>) {
    crate::metrics::connection_opened();
    let flood = cx
        .events_per_sec
        .saturating_mul(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
    let grant = socket.extensions.get::<Grant>();
    if let Some(g) = &grant {
        expire_with_token(&socket, g, cx.node.clock.now_ms());
    }
    let limiter =
        |per_sec| RateLimiter::direct_with_clock(Quota::per_second(per_sec), LIMITER_CLOCK.clone());
    let conn = Arc::new(Conn::new(
        grant,
        limiter(cx.events_per_sec),
        limiter(flood),
        limiter(cx.signals_per_sec),
    ));
    // A burst within the rate fits; past it the rate limit answers first.
    let capacity = (cx.events_per_sec.get() as usize).clamp(64, 4096);
    let queue = Arc::new(Queue::new(capacity));
    watch_hello(&cx, &conn, &socket);

    for event in Event::ALL {
        let (cx, conn, queue) = (cx.clone(), conn.clone(), queue.clone());
        socket.on(
            event.name(),
            move |s: SocketRef, TryData(v): TryData<Value>, ack: AckSender| {
                let mut start = false;
                if let Some(ack) = admitted(&conn, &s, event.name(), ack) {
                    let op = Box::new(Op::Event {
                        event,
                        socket: s,
                        payload: payload(v),
                        ack,
                        queued_at: Instant::now(),
                    });
                    match queue.push(op, false) {
                        Pushed::StartDrain => start = true,
                        Pushed::Queued => {}
                        Pushed::Full(op) => {
                            if let Op::Event { ack, .. } = *op {
                                answer::<()>(ack, event.name(), Err(too_many()));
                            }
                        }
                    }
                }
                drain_if(start, &cx, &conn, &queue)
            },
        );
    }
    {
        // Unknown events do nothing, but they count against the rate like any
        // other: a client cannot flood the node with them for free.
        let conn = conn.clone();
        socket.on_fallback(move |s: SocketRef, ack: AckSender| {
            if let Some(ack) = admitted(&conn, &s, "unknown", ack) {
                answer::<()>(
                    ack,
                    "unknown",
                    Err(WireError::bad(
                        "event",
                        "no such event; see docs/protocol.md",
                    )),
                );
            }
            std::future::ready(())
        });
    }
    socket.on_disconnect(move |s: SocketRef, reason: DisconnectReason| {
        // After every event queued before it.
        let start = matches!(
            queue.push(Box::new(Op::Closed(s, reason)), true),
            Pushed::StartDrain
        );
        drain_if(start, &cx, &conn, &queue)
    });
}

/// The future a handler returns to socketioxide, which runs it as a task:
/// the drain when this event started one, else nothing (no task of ours is
/// spawned per event).
fn drain_if(
    start: bool,
    cx: &Arc<SocketContext>,
    conn: &Arc<Conn>,
    queue: &Arc<Queue<Box<Op>>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let parts = start.then(|| (cx.clone(), conn.clone(), queue.clone()));
    async move {
        if let Some((cx, conn, queue)) = parts {
            drain(cx, conn, queue).await;
        }
    }
}

/// Handles a connection's queued events one at a time, until none is left.
async fn drain(cx: Arc<SocketContext>, conn: Arc<Conn>, queue: Arc<Queue<Box<Op>>>) {
    while let Some(op) = queue.pop() {
        match *op {
            Op::Closed(s, reason) => {
                if reason == DisconnectReason::PacketParsingError {
                    crate::metrics::connection_cut("bad_packet");
                }
                Box::pin(handlers::disconnect(&cx, &conn, s)).await;
            }
            Op::Event {
                event,
                socket,
                payload,
                ack,
                queued_at,
            } => {
                // An event that waited while the store failed is answered
                // `unavailable` at once, in order, rather than each waiting
                // out the store's timeout in turn (heartbeats would pile up
                // behind a Redis outage, and their answers come after the
                // client stopped waiting); one sent after the failure tries
                // the store again.
                // A heartbeat of a socket that has closed proves nothing (its
                // close follows in the queue and marks the session stale): no
                // store call for it, so a flood cut off does not delay its close.
                if event == Event::Heartbeat && !socket.connected() {
                    continue;
                }
                if queue.failed_since(queued_at) {
                    answer::<()>(
                        ack,
                        event.name(),
                        Err(WireError::new(
                            ErrorCode::Unavailable,
                            "presence store unavailable; retry",
                        )),
                    );
                    continue;
                }
                let payload = match payload {
                    Ok(v) => v,
                    Err(e) => {
                        answer::<()>(ack, event.name(), Err(e));
                        continue;
                    }
                };
                let watch_from = socket.clone();
                // Boxed: the drain then holds only the handler it runs.
                let unavailable = match event {
                    Event::Hello => {
                        Box::pin(handlers::hello(&cx, &conn, socket, payload, ack)).await
                    }
                    Event::Join => Box::pin(handlers::join(&cx, &conn, socket, payload, ack)).await,
                    Event::Heartbeat => {
                        Box::pin(handlers::heartbeat(&cx, &conn, socket, payload, ack)).await
                    }
                    Event::State => {
                        Box::pin(handlers::state(&cx, &conn, socket, payload, ack)).await
                    }
                    Event::Signal => {
                        Box::pin(handlers::signal(&cx, &conn, socket, payload, ack)).await
                    }
                    Event::Leave => {
                        Box::pin(handlers::leave(&cx, &conn, socket, payload, ack)).await
                    }
                    Event::Members => handlers::members(&cx, &conn, socket, payload, ack),
                    Event::Watch => handlers::watch(&cx, &conn, socket, payload, ack),
                    Event::Readiness => {
                        Box::pin(reach::readiness(&cx, &conn, socket, payload, ack)).await
                    }
                    Event::Reachability => {
                        Box::pin(reach::reachability(&cx, &conn, payload, ack)).await
                    }
                    Event::Intent => Box::pin(reach::intent(&cx, &conn, payload, ack)).await,
                    Event::IntentCancel => Box::pin(reach::cancel(&cx, &conn, payload, ack)).await,
                };
                if unavailable {
                    queue.store_failed();
                }
                // Its session ended (or was never there): it must say hello in time.
                if conn.no_session_since().is_some() {
                    watch_hello(&cx, &conn, &watch_from);
                }
            }
        }
    }
}

/// Closes the connection once it has held no session for the hello timeout:
/// one that never said hello, or whose session ended or was taken over and
/// that did not say hello again. Idle sockets cost memory and a file
/// descriptor. One watch per connection at a time, and only while it has no
/// session.
fn watch_hello(cx: &Arc<SocketContext>, conn: &Arc<Conn>, socket: &SocketRef) {
    if !conn.start_watch() {
        return;
    }
    let (cx, conn, socket) = (cx.clone(), conn.clone(), socket.clone());
    tokio::spawn(async move {
        loop {
            let Some(since) = conn.no_session_since() else {
                if conn.end_watch() {
                    continue;
                }
                return;
            };
            let due = since + cx.hello_timeout;
            if Instant::now() < due {
                tokio::time::sleep_until(due).await;
                continue;
            }
            if socket.connected() {
                cut_for_no_hello(&cx, &socket);
            }
            return;
        }
    });
}

/// Closes a connection that holds no session past the hello timeout.
fn cut_for_no_hello(cx: &SocketContext, socket: &SocketRef) {
    tracing::debug!(socket = %socket.id, "no presence:hello in time; closing");
    crate::metrics::connection_cut("hello_timeout");
    let e = WireError::new(
        ErrorCode::NoSession,
        format!(
            "no presence:hello within {} ms; closing the connection",
            cx.hello_timeout.as_millis()
        ),
    );
    socket.emit("presence:error", &e).ok();
    socket.clone().disconnect().ok();
}

fn too_many() -> WireError {
    WireError::new(
        ErrorCode::RateLimited,
        "too many events from this connection; slow down",
    )
}

/// Counts one event against the socket's rate. Past the rate the event gets
/// `rate_limited` (and does nothing); a socket that keeps sending at ten
/// times the rate is disconnected, so a flood costs the node little and
/// other clients nothing.
fn admitted(
    conn: &Conn,
    socket: &SocketRef,
    event: &'static str,
    ack: AckSender,
) -> Option<AckSender> {
    if conn.flood.check().is_err() {
        tracing::warn!(socket = %socket.id, event, "disconnecting a socket that floods");
        crate::metrics::request(event, "flood_disconnect");
        socket.clone().disconnect().ok();
        return None;
    }
    if conn.events.check().is_err() {
        answer::<()>(ack, event, Err(too_many()));
        return None;
    }
    Some(ack)
}

/// Closes the connection when its token expires: the client reconnects with
/// a fresh token (socket.io calls an `auth` function again on reconnect) and
/// resumes its session.
fn expire_with_token(socket: &SocketRef, g: &Grant, now: presence_core::Millis) {
    let left = u64::try_from(g.expires_at.saturating_sub(now)).unwrap_or(0);
    let s = socket.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(left)).await;
        if s.connected() {
            let e = WireError::new(
                ErrorCode::Unauthorized,
                "token expired; reconnect with a new one",
            );
            s.emit("presence:error", &e).ok();
            s.disconnect().ok();
        }
    });
}

/// The event's payload, `Null` when the client sent none. (An event with no
/// argument is what fails to decode into a JSON value; every event but
/// `presence:leave` then answers `bad_request`.) A payload nested deeper than
/// the JSON parser follows is refused as such, not as a missing payload.
fn payload(v: Result<Value, socketioxide::ParserError>) -> Result<Value, WireError> {
    match v {
        Ok(Value::Array(a)) if a.is_empty() => Ok(Value::Null),
        Ok(v) => Ok(v),
        Err(e) if e.to_string().contains("recursion limit") => Err(crate::wire::too_deep()),
        Err(e) => {
            tracing::trace!(error = %e, "no payload");
            Ok(Value::Null)
        }
    }
}

/// Sends the ack of `event` (its typed success, or the error), and counts
/// it. Returns whether the store was unavailable.
fn answer<T: Serialize>(ack: AckSender, event: &'static str, r: Result<T, WireError>) -> bool {
    // Sending fails only when the socket is gone; nothing to do then.
    match r {
        Ok(v) => {
            crate::metrics::request(event, "ok");
            let _ = ack.send(&v);
            false
        }
        Err(e) => {
            tracing::debug!(event, code = ?e.code, message = %e.message, "request refused");
            crate::metrics::request(event, e.code.as_str());
            let _ = ack.send(&e);
            e.code == ErrorCode::Unavailable
        }
    }
}
