//! The Socket.IO side of a node: one handler per `presence:*` event.
//!
//! A connection binds to at most one session (`presence:hello`); every later
//! event acts on that session with the epoch the store issued to this
//! connection. Payloads are decoded by [`wire`](crate::wire) first, so a
//! malformed one gets a `bad_request` ack and touches nothing. Events sent
//! without an ack callback are processed the same way; their answer is
//! simply not sent.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use presence_core::{Activity, JsonMap, RoomId, UserId};
use presence_store::{Hello, SessionRef, Signal, StoreError};
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, SocketRef, TryData};

use crate::app::App;
use crate::auth::{AuthError, Grant};
use crate::fanout::Reply;
use crate::wire::{self, ErrorCode, WireError};

/// What one connection holds.
struct Conn {
    state: Mutex<ConnState>,
    /// What the handshake token grants (`None` when auth is off).
    grant: Option<Grant>,
    /// Events per second this socket may send; more get `rate_limited`.
    events: DefaultDirectRateLimiter,
    /// Ten times that: a socket past it is flooding, and is disconnected.
    flood: DefaultDirectRateLimiter,
    /// `presence:signal` is relayed, never stored; this keeps one socket from
    /// flooding a room with it.
    signals: DefaultDirectRateLimiter,
}

#[derive(Default)]
struct ConnState {
    bound: Option<Bound>,
    hello_in_flight: bool,
    /// A lost session is being re-created; other heartbeats wait for it.
    reviving: bool,
    /// A re-creation started and has not succeeded yet. Its claim may have
    /// been applied even though the answer was lost (a failover), so a
    /// `stale_epoch` then means "claim again", not "another connection won".
    revive_pending: bool,
}

#[derive(Clone)]
struct Bound {
    session: SessionRef,
    user_id: UserId,
    handle: Option<String>,
    meta: Option<JsonMap>,
    /// The rooms, with the state this connection last set in each (`None`
    /// when it set none, or when the room came with a resumed session).
    rooms: BTreeMap<RoomId, Option<JsonMap>>,
    /// After the session was re-created: the epoch the client may still
    /// send until it has read the new one from a heartbeat ack.
    revived_from: Option<u64>,
    /// The re-created session still has to re-join its rooms.
    restore: bool,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bound(&self) -> Result<Bound, WireError> {
        self.lock().bound.clone().ok_or_else(no_session)
    }

    /// The session this connection writes with, after checking the epoch the
    /// client sent, and whether it still has rooms to restore. It copies no
    /// rooms or states: this is the heartbeat path.
    fn session_at(&self, epoch: u64) -> Result<(SessionRef, bool), WireError> {
        let st = self.lock();
        let b = st.bound.as_ref().ok_or_else(no_session)?;
        if b.session.epoch != epoch && b.revived_from != Some(epoch) {
            return Err(WireError::new(
                ErrorCode::StaleEpoch,
                format!(
                    "this connection holds epoch {}, not {epoch}",
                    b.session.epoch
                ),
            ));
        }
        Ok((b.session.clone(), b.restore))
    }

    /// The bound session, after checking the epoch the client sent.
    fn bound_at(&self, epoch: u64) -> Result<Bound, WireError> {
        self.session_at(epoch)?;
        self.bound()
    }
}

fn no_session() -> WireError {
    WireError::new(
        ErrorCode::NoSession,
        "no session on this connection: send presence:hello first",
    )
}

/// Checks the handshake token when auth is on (a Socket.IO connect
/// middleware: an error fails the connection with a `connect_error` whose
/// message names the reason) and keeps what it grants on the socket.
pub async fn authenticate(
    app: &App,
    socket: &SocketRef,
    auth: Option<Value>,
) -> Result<(), AuthError> {
    let Some(verifier) = &app.auth else {
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
pub fn on_connect(socket: SocketRef, app: App) {
    crate::metrics::connection_opened();
    let per_sec = NonZeroU32::new(app.config.signal_rate_per_sec).unwrap_or(NonZeroU32::MIN);
    let events = NonZeroU32::new(app.config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
    let flood = events.saturating_mul(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
    let grant = socket.extensions.get::<Grant>();
    if let Some(g) = &grant {
        expire_with_token(&socket, g, app.clock.now_ms());
    }
    let conn = Arc::new(Conn {
        state: Mutex::new(ConnState::default()),
        grant,
        events: RateLimiter::direct_with_clock(Quota::per_second(events), LIMITER_CLOCK.clone()),
        flood: RateLimiter::direct_with_clock(Quota::per_second(flood), LIMITER_CLOCK.clone()),
        signals: RateLimiter::direct_with_clock(Quota::per_second(per_sec), LIMITER_CLOCK.clone()),
    });

    macro_rules! route {
        ($event:literal, $handler:ident) => {{
            let (app, conn) = (app.clone(), conn.clone());
            socket.on(
                $event,
                move |s: SocketRef, TryData(v): TryData<Value>, ack: AckSender| {
                    let (app, conn) = (app.clone(), conn.clone());
                    async move {
                        if let Some(ack) = admitted(&conn, &s, $event, ack) {
                            $handler(&app, &conn, s, payload(v), ack).await
                        }
                    }
                },
            );
        }};
    }
    route!("presence:hello", hello);
    route!("presence:join", join);
    route!("presence:heartbeat", heartbeat);
    route!("presence:state", state);
    route!("presence:signal", signal);
    route!("presence:leave", leave);

    socket.on_disconnect(move |s: SocketRef| {
        let (app, conn) = (app.clone(), conn.clone());
        async move { disconnect(&app, &conn, s).await }
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
        answer(
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
            let body = WireError::new(
                ErrorCode::Unauthorized,
                "token expired; reconnect with a new one",
            )
            .body();
            s.emit("presence:error", &body).ok();
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

fn answer(ack: AckSender, event: &'static str, r: Result<Value, WireError>) {
    let body = match r {
        Ok(v) => {
            crate::metrics::request(event, "ok");
            v
        }
        Err(e) => {
            tracing::debug!(event, code = ?e.code, message = %e.message, "request refused");
            crate::metrics::request(event, e.code.as_str());
            e.body()
        }
    };
    // Fails only when the socket is gone; nothing to do then.
    let _ = ack.send(&body);
}

/// The store says a newer connection owns this connection's session: stop
/// sending this socket the session's rooms. `used` is the epoch the refused
/// call carried; if this connection holds another one by now (it re-created
/// its session meanwhile), the refusal is about the past and changes nothing.
/// (A lost session, `no_session`, stays bound: the next heartbeat revives it.)
fn on_store_error(
    app: &App,
    conn: &Conn,
    socket: &SocketRef,
    used: u64,
    e: StoreError,
) -> WireError {
    if matches!(e, StoreError::StaleEpoch { .. }) {
        let bound = {
            let mut st = conn.lock();
            let current = st.bound.as_ref().map(|b| b.session.epoch);
            if current == Some(used) && !st.reviving && !st.revive_pending {
                tracing::debug!(epoch = used, error = %e, "a newer connection owns the session; unbinding");
                st.bound.take()
            } else {
                None
            }
        };
        if let Some(b) = bound {
            app.session_unbound();
            for room in b.rooms.keys() {
                socket.leave(room.as_str().to_owned());
                app.fanout.leave(room, socket.id);
            }
        }
    }
    e.into()
}

async fn hello(app: &App, conn: &Conn, socket: SocketRef, v: Value, ack: AckSender) {
    let r = async {
        let subject = conn.grant.as_ref().map(|g| &g.user_id);
        let req = wire::hello(&v, &app.limits, subject)?;
        {
            let mut st = conn.lock();
            if st.bound.is_some() || st.hello_in_flight {
                return Err(WireError::bad(
                    "payload",
                    "this connection already has a session; leave it first or open a new connection",
                ));
            }
            st.hello_in_flight = true;
        }
        let claimed = app
            .store
            .hello(Hello {
                session_id: req.session_id,
                user_id: req.user_id.clone(),
                handle: req.handle.clone(),
                meta: req.meta.clone(),
                activity: req.activity,
                node_id: app.node_id.clone(),
            })
            .await;
        let mut st = conn.lock();
        st.hello_in_flight = false;
        let claimed = claimed?;
        st.bound = Some(Bound {
            session: SessionRef {
                session_id: claimed.session_id.clone(),
                epoch: claimed.epoch,
            },
            user_id: req.user_id.clone(),
            handle: req.handle,
            meta: req.meta,
            rooms: claimed.rooms.iter().map(|r| (r.clone(), None)).collect(),
            revived_from: None,
            restore: false,
        });
        drop(st);
        app.session_bound();
        tracing::debug!(session_id = %claimed.session_id, user_id = %req.user_id, epoch = claimed.epoch, resumed = claimed.resumed, "hello");
        Ok(claimed)
    }
    .await;
    match r {
        Ok(claimed) => {
            answer(
                ack,
                "presence:hello",
                Ok(json!({
                    "ok": true,
                    "sessionId": claimed.session_id,
                    "userId": conn.bound().map(|b| b.user_id).ok(),
                    "epoch": claimed.epoch,
                    "resumed": claimed.resumed,
                    "rooms": claimed.rooms,
                    "nodeId": app.node_id,
                    "config": app.timings,
                    "limits": app.limits,
                })),
            );
            // A resumed session is still in its rooms: send their snapshots.
            for room in &claimed.rooms {
                app.fanout.join(room, socket.clone(), Reply::Snapshot);
            }
        }
        Err(e) => answer(ack, "presence:hello", Err(e)),
    }
}

async fn join(app: &App, conn: &Conn, socket: SocketRef, v: Value, ack: AckSender) {
    let r = async {
        let req = wire::join(&v, &app.limits)?;
        let b = conn.bound()?;
        if conn
            .grant
            .as_ref()
            .is_some_and(|g| !g.rooms.allows(&req.room_id))
        {
            return Err(WireError::new(
                ErrorCode::ForbiddenRoom,
                format!("your token does not let you join {}", req.room_id),
            ));
        }
        app.store
            .join(&b.session, &req.room_id, req.state.clone())
            .await
            .map_err(|e| on_store_error(app, conn, &socket, b.session.epoch, e))?;
        if let Some(bound) = conn.lock().bound.as_mut() {
            let known = bound.rooms.entry(req.room_id.clone()).or_default();
            if req.state.is_some() {
                *known = req.state;
            }
        }
        tracing::debug!(session_id = %b.session.session_id, room_id = %req.room_id, "join");
        Ok((req.room_id, b.session))
    }
    .await;
    match r {
        // The hub answers with the snapshot, then adds the socket to the room.
        Ok((room, me)) => {
            crate::metrics::request("presence:join", "ok");
            app.fanout.join(&room, socket, Reply::JoinAck(ack, me))
        }
        Err(e) => answer(ack, "presence:join", Err(e)),
    }
}

/// Re-creates a lost session with the same id, user and rooms (with the
/// states this connection set). Returns the new epoch.
async fn revive(
    app: &App,
    conn: &Conn,
    b: Bound,
    activity: Option<Activity>,
) -> Result<u64, StoreError> {
    {
        let mut st = conn.lock();
        if st.reviving {
            return Err(StoreError::Unavailable(
                "the session is being restored; retry".into(),
            ));
        }
        st.reviving = true;
        st.revive_pending = true;
    }
    let r = revive_now(app, conn, b, activity).await;
    let mut st = conn.lock();
    st.reviving = false;
    if r.is_ok() {
        st.revive_pending = false;
    }
    r
}

async fn revive_now(
    app: &App,
    conn: &Conn,
    b: Bound,
    activity: Option<Activity>,
) -> Result<u64, StoreError> {
    let claimed = app
        .store
        .hello(Hello {
            session_id: Some(b.session.session_id.clone()),
            user_id: b.user_id.clone(),
            handle: b.handle.clone(),
            meta: b.meta.clone(),
            activity: activity.unwrap_or(Activity::Active),
            node_id: app.node_id.clone(),
        })
        .await?;
    let b = {
        let mut st = conn.lock();
        let Some(bound) = st.bound.as_mut() else {
            return Err(StoreError::NoSession);
        };
        bound.revived_from = Some(b.session.epoch);
        bound.session.epoch = claimed.epoch;
        bound.restore = true;
        bound.clone()
    };
    restore_rooms(app, conn, &b).await?;
    tracing::info!(session_id = %b.session.session_id, epoch = b.session.epoch, rooms = b.rooms.len(), "session re-created after the store lost it");
    Ok(b.session.epoch)
}

/// Re-joins the rooms of a re-created session (with the states this
/// connection set). Until it succeeds, every heartbeat tries again.
async fn restore_rooms(app: &App, conn: &Conn, b: &Bound) -> Result<(), StoreError> {
    for (room, state) in &b.rooms {
        app.store.join(&b.session, room, state.clone()).await?;
    }
    if let Some(bound) = conn.lock().bound.as_mut() {
        if bound.session.epoch == b.session.epoch {
            bound.restore = false;
        }
    }
    Ok(())
}

async fn heartbeat(app: &App, conn: &Conn, socket: SocketRef, v: Value, ack: AckSender) {
    let r = async {
        let req = wire::heartbeat(&v)?;
        let (me, restore) = conn.session_at(req.epoch)?;
        let revived = match app.store.heartbeat(&me, req.activity).await {
            Ok(()) if !restore => return Ok(json!({ "ok": true, "epoch": me.epoch })),
            Ok(()) => {
                let b = conn.bound()?;
                restore_rooms(app, conn, &b).await.map(|()| b.session.epoch)
            }
            // The store lost the session while this connection is alive (Redis
            // restarted empty, or it was culled while the client was silent),
            // or a re-creation's answer was lost: (re-)create it.
            Err(StoreError::NoSession) => revive(app, conn, conn.bound()?, req.activity).await,
            Err(StoreError::StaleEpoch { .. }) if conn.lock().revive_pending => {
                revive(app, conn, conn.bound()?, req.activity).await
            }
            Err(e) => Err(e),
        };
        let epoch = revived.map_err(|e| on_store_error(app, conn, &socket, me.epoch, e))?;
        Ok(json!({ "ok": true, "epoch": epoch, "revived": true }))
    }
    .await;
    answer(ack, "presence:heartbeat", r);
}

async fn state(app: &App, conn: &Conn, socket: SocketRef, v: Value, ack: AckSender) {
    let r = async {
        let req = wire::state(&v, &app.limits)?;
        let b = conn.bound_at(req.epoch)?;
        app.store
            .update_state(&b.session, &req.room_id, req.patch.clone())
            .await
            .map_err(|e| on_store_error(app, conn, &socket, b.session.epoch, e))?;
        if let Some(Some(known)) = conn
            .lock()
            .bound
            .as_mut()
            .map(|b| b.rooms.get_mut(&req.room_id))
        {
            let mut merged = known.take().unwrap_or_default();
            for (k, v) in req.patch {
                if v.is_null() {
                    merged.remove(&k);
                } else {
                    merged.insert(k, v);
                }
            }
            *known = (!merged.is_empty()).then_some(merged);
        }
        Ok(json!({ "ok": true }))
    }
    .await;
    answer(ack, "presence:state", r);
}

async fn signal(app: &App, conn: &Conn, socket: SocketRef, v: Value, ack: AckSender) {
    let r = async {
        let req = wire::signal(&v, &app.limits)?;
        let b = conn.bound()?;
        if !b.rooms.contains_key(&req.room_id) {
            return Err(WireError::new(
                ErrorCode::NotJoined,
                format!("session is not in room {}", req.room_id),
            ));
        }
        if conn.signals.check().is_err() {
            return Err(WireError::new(
                ErrorCode::RateLimited,
                "too many signals; slow down",
            ));
        }
        let msg = json!({
            "roomId": req.room_id,
            "sessionId": b.session.session_id,
            "userId": b.user_id,
            "data": req.data,
        });
        if let Err(e) = socket
            .to(req.room_id.as_str().to_owned())
            .emit("presence:signal", &msg)
            .await
        {
            tracing::debug!(error = %e, "signal relay failed");
        }
        // The room's sockets on other nodes get it through Redis.
        let relayed = Signal {
            room_id: req.room_id.clone(),
            session_id: b.session.session_id.clone(),
            user_id: b.user_id.clone(),
            node_id: app.node_id.clone(),
            data: msg["data"].clone(),
        };
        app.store.publish_signal(&relayed).await?;
        Ok(json!({ "ok": true }))
    }
    .await;
    answer(ack, "presence:signal", r);
}

async fn leave(app: &App, conn: &Conn, socket: SocketRef, v: Value, ack: AckSender) {
    let r = async {
        let req = wire::leave(&v)?;
        let b = conn.bound()?;
        match req.room_id {
            Some(room) => {
                app.store
                    .leave(&b.session, &room)
                    .await
                    .map_err(|e| on_store_error(app, conn, &socket, b.session.epoch, e))?;
                if let Some(bound) = conn.lock().bound.as_mut() {
                    bound.rooms.remove(&room);
                }
                socket.leave(room.as_str().to_owned());
                app.fanout.leave(&room, socket.id);
                Ok(json!({ "ok": true, "roomId": room }))
            }
            None => {
                let left = app
                    .store
                    .end(&b.session)
                    .await
                    .map_err(|e| on_store_error(app, conn, &socket, b.session.epoch, e))?;
                if conn.lock().bound.take().is_some() {
                    app.session_unbound();
                }
                for room in b.rooms.keys() {
                    socket.leave(room.as_str().to_owned());
                    app.fanout.leave(room, socket.id);
                }
                tracing::debug!(session_id = %b.session.session_id, "session ended");
                Ok(json!({ "ok": true, "rooms": left }))
            }
        }
    }
    .await;
    answer(ack, "presence:leave", r);
}

async fn disconnect(app: &App, conn: &Conn, socket: SocketRef) {
    crate::metrics::connection_closed();
    let bound = conn.lock().bound.take();
    let Some(b) = bound else { return };
    app.session_unbound();
    for room in b.rooms.keys() {
        app.fanout.leave(room, socket.id);
    }
    if app.draining() {
        // This node closed the connection to shut down and asked the client
        // to reconnect elsewhere: the session stays as it is (no stale
        // flicker for observers) and resumes there, or decays if it never
        // comes back.
        tracing::debug!(session_id = %b.session.session_id, "closed for shutdown; left for the client to resume");
        return;
    }
    // Not a leave: the session turns stale and can be resumed within the
    // grace window. Refused (and harmless) if a newer connection owns it.
    match app.store.disconnect(&b.session).await {
        Ok(()) => {
            tracing::debug!(session_id = %b.session.session_id, epoch = b.session.epoch, "disconnected; kept for the grace window")
        }
        Err(e) => {
            tracing::debug!(session_id = %b.session.session_id, error = %e, "disconnect not applied")
        }
    }
}
