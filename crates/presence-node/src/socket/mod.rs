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
//!   check, routing, rate limits and answering;
//! - `conn`: what one connection holds, its state as one enum;
//! - `handlers`: one handler per `presence:*` event, and the close.

mod conn;
mod handlers;

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{Quota, RateLimiter};
use presence_core::{Limits, Timings};
use presence_store::PresenceStore;
use serde::Serialize;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef, TryData};

use self::conn::Conn;
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

/// Registers the presence handlers on a new connection.
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

    macro_rules! route {
        ($event:literal, $handler:path) => {{
            let (cx, conn) = (cx.clone(), conn.clone());
            socket.on(
                $event,
                move |s: SocketRef, TryData(v): TryData<Value>, ack: AckSender| {
                    let (cx, conn) = (cx.clone(), conn.clone());
                    async move {
                        if let Some(ack) = admitted(&conn, &s, $event, ack) {
                            $handler(&cx, &conn, s, payload(v), ack).await
                        }
                    }
                },
            );
        }};
    }
    route!("presence:hello", handlers::hello);
    route!("presence:join", handlers::join);
    route!("presence:heartbeat", handlers::heartbeat);
    route!("presence:state", handlers::state);
    route!("presence:signal", handlers::signal);
    route!("presence:leave", handlers::leave);

    socket.on_disconnect(move |s: SocketRef| {
        let (cx, conn) = (cx.clone(), conn.clone());
        async move { handlers::disconnect(&cx, &conn, s).await }
    });
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
        answer::<()>(
            ack,
            event,
            Err(WireError::new(
                ErrorCode::RateLimited,
                "too many events from this connection; slow down",
            )),
        );
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
/// `presence:leave` then answers `bad_request`.)
fn payload(v: Result<Value, socketioxide::ParserError>) -> Value {
    match v {
        Ok(Value::Array(a)) if a.is_empty() => Value::Null,
        Ok(v) => v,
        Err(e) => {
            tracing::trace!(error = %e, "no payload");
            Value::Null
        }
    }
}

/// Sends the ack of `event` (its typed success, or the error), and counts it.
fn answer<T: Serialize>(ack: AckSender, event: &'static str, r: Result<T, WireError>) {
    // Fails only when the socket is gone; nothing to do then.
    let _ = match r {
        Ok(v) => {
            crate::metrics::request(event, "ok");
            ack.send(&v)
        }
        Err(e) => {
            tracing::debug!(event, code = ?e.code, message = %e.message, "request refused");
            crate::metrics::request(event, e.code.as_str());
            ack.send(&e)
        }
    };
}
