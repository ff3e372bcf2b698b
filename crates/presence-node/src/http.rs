//! The HTTP API: health, who's online, room presence and stats, bulk user
//! status, reachability and intents, cluster membership, and the demo page.
//!
//! Every error is a JSON body `{ ok: false, error: { code, message } }` with
//! a 4xx/5xx status, never a bare text response.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use presence_core::{RoomId, SessionId, UserId};
use presence_store::{Page, StoreError};
use serde_json::{json, Value};
use tower_http::cors::{AllowOrigin, CorsLayer};

use std::sync::Arc;

use presence_store::PresenceStore;

use crate::acks::{IntentAck, Moderated, ReachAck, True};
use crate::fanout::Fanout;
use crate::node::LocalNode;
use crate::wire::{ErrorCode, WireError};

/// What the HTTP handlers need, and nothing more. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// Reachability and intents.
    pub coordinator: Arc<crate::coordination::Coordinator>,
    /// Limits on what requests carry (`need`, intents).
    pub limits: presence_core::Limits,
    /// The authoritative state.
    pub store: Arc<dyn PresenceStore>,
    /// This node.
    pub node: Arc<LocalNode>,
    /// The rooms with local sockets (their count, for metrics and the registry).
    pub fanout: Fanout,
    /// `PRESENCE_API_KEY`; `None` leaves the API open.
    pub api_key: Option<String>,
}

impl ApiState {
    fn node_info(&self) -> presence_store::NodeInfo {
        self.node.info(self.fanout.rooms())
    }
}

/// Most users in one `/api/users/status` request.
pub const MAX_STATUS_USERS: usize = 1000;
/// Default page of `/api/whos-online`.
pub const DEFAULT_PAGE: usize = 1000;
/// Largest page of `/api/whos-online`.
pub const MAX_PAGE: usize = 10_000;
/// How long `/readyz` waits for the store before answering 503.
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_millis(200);

/// Largest HTTP request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// An error response.
pub struct ApiError(StatusCode, WireError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1.body())).into_response()
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        let status = match e.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::ForbiddenRoom | ErrorCode::Kicked => {
                StatusCode::FORBIDDEN
            }
            ErrorCode::NotFound | ErrorCode::NoSession | ErrorCode::NotJoined => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::StaleEpoch => StatusCode::CONFLICT,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LimitExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        WireError::from(e).into()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Copies the request's URI and headers out of the connection's read buffer.
///
/// hyper hands them out as slices of that buffer (8–16 KiB per connection),
/// and socketioxide keeps each connection's request parts (axum's copy of the
/// URI among its extensions) for the connection's whole life: without the copy
/// every open WebSocket pins its whole HTTP read buffer, about 16 KiB of the
/// node's memory per session (docs/benchmarks.md, "Memory per idle
/// session"). Runs before the Socket.IO layer.
pub async fn detach_request_buffers(req: Request) -> Request {
    let (mut parts, body) = req.into_parts();
    let mut headers = axum::http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let name = axum::http::HeaderName::from_bytes(name.as_str().as_bytes());
        let value = axum::http::HeaderValue::from_bytes(value.as_bytes());
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    parts.headers = headers;
    if let Ok(uri) = parts.uri.to_string().parse::<axum::http::Uri>() {
        parts.uri = uri.clone();
        if parts
            .extensions
            .remove::<axum::extract::OriginalUri>()
            .is_some()
        {
            parts.extensions.insert(axum::extract::OriginalUri(uri));
        }
    }
    Request::from_parts(parts, body)
}

/// The routes of a node (the Socket.IO layer is added by the caller). The
/// API and the metrics need the API key when one is configured; the demo
/// page and the health checks never do.
pub fn router(api: ApiState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/whos-online", get(whos_online))
        .route("/api/rooms/{room_id}/presence", get(room_presence))
        .route("/api/rooms/{room_id}/stats", get(room_stats))
        .route("/api/users/status", post(users_status))
        .route("/api/users/{user_id}/reachability", get(reachability))
        .route("/api/intents", post(make_intent))
        .route("/api/cluster", get(cluster))
        .route("/api/sessions/{session_id}", delete(end_session))
        .route("/api/users/{user_id}/sessions", delete(end_user_sessions))
        .route(
            "/api/rooms/{room_id}/members/{user_id}",
            delete(remove_member),
        )
        .route_layer(middleware::from_fn_with_state(api.clone(), require_api_key));
    Router::new()
        .route("/", get(demo_page))
        .route("/assets/socket.io.min.js", get(socket_io_client))
        .route("/assets/presence-client.js", get(presence_client))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

/// Lets a request through when no API key is configured or when it carries
/// `Authorization: Bearer <key>`; else `401` with a JSON body.
async fn require_api_key(State(api): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(key) = &api.api_key else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if crate::auth::api_key_matches(given, key) {
        return next.run(req).await;
    }
    crate::metrics::request("http", "unauthorized");
    let mut res = ApiError::from(WireError::new(
        ErrorCode::Unauthorized,
        "this API needs Authorization: Bearer <PRESENCE_API_KEY>",
    ))
    .into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    res
}

/// Refuses Socket.IO requests (WebSocket upgrades and polling) whose
/// `Origin` is not in `allowed` (`PRESENCE_ALLOWED_ORIGINS`); runs before the
/// Socket.IO layer. No list, or no `Origin` header (not a browser): let through.
pub async fn check_origin(
    State(allowed): State<Arc<[String]>>,
    req: Request,
    next: Next,
) -> Response {
    if allowed.is_empty() || !req.uri().path().starts_with("/socket.io") {
        return next.run(req).await;
    }
    match req.headers().get(header::ORIGIN).map(|o| o.to_str()) {
        None => next.run(req).await,
        Some(Ok(o)) if allowed.iter().any(|a| a == o) => next.run(req).await,
        Some(_) => {
            crate::metrics::request("connect", "forbidden_origin");
            ApiError(
                StatusCode::FORBIDDEN,
                WireError::new(
                    ErrorCode::Forbidden,
                    "this page's origin may not connect (PRESENCE_ALLOWED_ORIGINS)",
                ),
            )
            .into_response()
        }
    }
}

/// CORS for browser pages of other origins (`PRESENCE_CORS_ORIGINS`): none
/// when unset, so only same-origin pages can call the API with a browser.
/// Listed origins may send credentials (the load balancer's affinity cookie
/// for Socket.IO polling); `*` allows any origin without credentials.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<header::HeaderValue> = origins
        .iter()
        .filter_map(|o| header::HeaderValue::from_str(o).ok())
        .collect();
    Some(
        layer
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true),
    )
}

async fn demo_page() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

async fn socket_io_client() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../static/socket.io.min.js"),
    )
}

/// The browser bundle of `clients/js` (global `PresenceClient`, with
/// socket.io-client inside), built by `npm run build -- --serve` there; a test
/// of the client suite checks that this copy is the one its source builds.
async fn presence_client() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../static/presence-client.js"),
    )
}

async fn not_found() -> ApiError {
    WireError::new(ErrorCode::NotFound, "no such route").into()
}

async fn healthz() -> Json<Value> {
    Json(json!({ "ok": true }))
}

async fn readyz(State(api): State<ApiState>) -> Response {
    if api.node.draining() {
        return ApiError::from(WireError::new(
            ErrorCode::Unavailable,
            "this node is shutting down",
        ))
        .into_response();
    }
    // A load balancer probing readiness must get an answer quickly, whatever
    // Redis does (a stalled server would otherwise hold the probe for the
    // whole command timeout): no answer in time is "not ready".
    match tokio::time::timeout(READY_WITHIN, api.store.ping()).await {
        Ok(Ok(health)) if health.degraded.is_empty() => {
            Json(json!({ "ok": true, "store": api.store.kind() })).into_response()
        }
        // Part of Redis down (a Cluster master failing over) is still
        // ready: every node suffers it alike, and serves the rest.
        Ok(Ok(health)) => Json(json!({
            "ok": true,
            "store": api.store.kind(),
            "degraded": health.degraded,
        }))
        .into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => ApiError::from(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "the presence store did not answer within {} ms",
                READY_WITHIN.as_millis()
            ),
        ))
        .into_response(),
    }
}

async fn metrics(State(api): State<ApiState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(api.node.local_sessions(), api.fanout.rooms()),
    )
}

fn room_id(raw: &str) -> Result<RoomId, ApiError> {
    RoomId::new(raw).map_err(|e| WireError::bad("roomId", e).into())
}

async fn whos_online(
    State(api): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(WireError::bad(
                    "limit",
                    format!("must be an integer in 1..={MAX_PAGE}"),
                )
                .into())
            }
        },
    };
    let after = match q.get("cursor") {
        None => None,
        Some(c) => Some(UserId::new(c).map_err(|e| WireError::bad("cursor", e))?),
    };
    let recent = match q.get("include").map(String::as_str) {
        None | Some("") => false,
        Some("recent") => true,
        Some(_) => return Err(WireError::bad("include", "must be \"recent\"").into()),
    };
    let page = api.store.whos_online(Page { limit, after }).await?;
    let mut body = json!({
        "ok": true,
        "generatedAt": page.generated_at,
        "users": page.entries.users,
        "sessions": page.entries.sessions,
    });
    if let Some(c) = page.next_cursor {
        body["nextCursor"] = json!(c);
    }
    if recent {
        // The users whose last session ended most recently, newest first
        // (at most `limit`, within PRESENCE_LAST_SEEN_TTL_S).
        let gone = api.store.recently_offline(limit).await?;
        body["recent"] = gone
            .into_iter()
            .map(|(user, seen)| {
                json!({
                    "userId": user,
                    "status": "offline",
                    "lastSeenAt": seen.last_seen_at,
                    "lastOnlineAt": seen.last_online_at,
                })
            })
            .collect();
    }
    Ok(Json(body))
}

/// The whole room, or with `cursor` or `limit` one page of it (members
/// by user id then session id; `limit` 1..=1000, 100 when absent).
async fn room_presence(
    State(api): State<ApiState>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let room = room_id(&raw)?;
    if q.contains_key("cursor") || q.contains_key("limit") {
        use presence_core::page::{DEFAULT_PAGE, MAX_PAGE};
        let limit = match q.get("limit") {
            None => DEFAULT_PAGE,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    WireError::bad("limit", format!("must be an integer in 1..={MAX_PAGE}"))
                })?,
        };
        let after = match q.get("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                c.parse::<presence_core::PageCursor>()
                    .map_err(|e| WireError::bad("cursor", e))?,
            ),
        };
        let p = api.store.room_page(&room, after.as_ref(), limit).await?;
        let mut body = json!({
            "ok": true,
            "roomId": room,
            "seq": p.seq,
            "generatedAt": p.read_at,
            "users": p.page.users,
            "sessions": p.page.sessions,
        });
        if let Some(c) = p.page.next_cursor {
            body["nextCursor"] = json!(c.to_string());
        }
        return Ok(Json(body));
    }
    let v = api.store.room_view(&room).await?;
    Ok(Json(json!({
        "ok": true,
        "roomId": v.room_id,
        "seq": v.seq,
        "generatedAt": v.generated_at,
        "users": v.users,
        "sessions": v.sessions,
    })))
}

async fn room_stats(State(api): State<ApiState>, Path(raw): Path<String>) -> ApiResult {
    let room = room_id(&raw)?;
    let s = api.store.room_stats(&room).await?;
    Ok(Json(
        json!({ "ok": true, "roomId": room, "sessions": s.sessions, "users": s.users }),
    ))
}

/// A request's JSON body, or a `400`/`413` naming `body`.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, WireError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            WireError::too_large("body", MAX_BODY_BYTES + 1, MAX_BODY_BYTES)
        } else {
            WireError::bad("body", e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| WireError::bad("body", format!("invalid JSON: {e}")))
}

/// `GET /api/users/{userId}/reachability?need=audio,video`: the API key
/// sees every user.
async fn reachability(
    State(api): State<ApiState>,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ReachAck>, ApiError> {
    let user = UserId::new(&user).map_err(|e| WireError::bad("userId", e))?;
    let need = crate::wire::need_param(q.get("need").map(String::as_str), &api.limits)?;
    let (reach, _) = api.coordinator.reach(&user, &need).await?;
    Ok(Json(ReachAck::new(user, need, reach)))
}

/// `POST /api/intents` `{ from, userId, need, ttlMs, note? }`: an intent made
/// by a backend on behalf of `from`. The callee's sessions hear of it like
/// any other; its outcome reaches the backend as the lifecycle event
/// `intent.ready` or `intent.expired`.
async fn make_intent(
    State(api): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IntentAck>, ApiError> {
    let v = json_body(body)?;
    let req = crate::wire::intent(&v, &api.limits)?;
    let from = match v.get("from") {
        Some(Value::String(s)) => UserId::new(s).map_err(|e| WireError::bad("from", e))?,
        Some(_) => return Err(WireError::bad("from", "must be a user id").into()),
        None => return Err(WireError::bad("from", "is required").into()),
    };
    let intent = api.coordinator.intent(from, None, req);
    api.coordinator.make(intent.clone()).await?;
    Ok(Json(IntentAck::of(&intent)))
}

async fn users_status(
    State(api): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let v = json_body(body)?;
    let ids = v
        .get("userIds")
        .and_then(Value::as_array)
        .ok_or_else(|| WireError::bad("userIds", "must be an array of user ids"))?;
    if ids.len() > MAX_STATUS_USERS {
        return Err(WireError::bad(
            "userIds",
            format!("at most {MAX_STATUS_USERS} ids per request"),
        )
        .into());
    }
    let ids = ids
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| WireError::bad("userIds", "every entry must be a string"))
                .and_then(|s| {
                    UserId::new(s).map_err(|e| WireError::bad("userIds", format!("{s:?} {e}")))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let statuses = api.store.users_status(&ids).await?;
    Ok(Json(
        json!({ "ok": true, "generatedAt": api.node.clock.now_ms(), "users": statuses }),
    ))
}

fn missing(what: String) -> ApiError {
    WireError::new(ErrorCode::NotFound, what).into()
}

/// `DELETE /api/sessions/{sessionId}`: ends the session; its connection
/// gets `presence:error { code: "kicked" }` and is closed.
async fn end_session(
    State(api): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<Json<Moderated>, ApiError> {
    let session = SessionId::new(&raw).map_err(|e| WireError::bad("sessionId", e))?;
    let done = crate::moderation::end_session(&*api.store, &session)
        .await?
        .ok_or_else(|| missing(format!("no live session {raw:?}")))?;
    Ok(Json(Moderated {
        ok: True,
        user_id: done.user_id,
        sessions: done.sessions,
        room_id: None,
    }))
}

/// `DELETE /api/users/{userId}/sessions`: ends every session of the user.
async fn end_user_sessions(
    State(api): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<Json<Moderated>, ApiError> {
    let user = UserId::new(&raw).map_err(|e| WireError::bad("userId", e))?;
    let done = crate::moderation::end_user(&*api.store, &user)
        .await?
        .ok_or_else(|| missing(format!("user {raw:?} has no live session")))?;
    Ok(Json(Moderated {
        ok: True,
        user_id: done.user_id,
        sessions: done.sessions,
        room_id: None,
    }))
}

/// `DELETE /api/rooms/{roomId}/members/{userId}`: takes every session of the
/// user out of the room; a new join is needed to come back.
async fn remove_member(
    State(api): State<ApiState>,
    Path((room, user)): Path<(String, String)>,
) -> Result<Json<Moderated>, ApiError> {
    let room_id = room_id(&room)?;
    let user_id = UserId::new(&user).map_err(|e| WireError::bad("userId", e))?;
    let done = crate::moderation::remove_member(&*api.store, &room_id, &user_id)
        .await?
        .ok_or_else(|| missing(format!("user {user:?} is not in room {room:?}")))?;
    Ok(Json(Moderated {
        ok: True,
        user_id: done.user_id,
        sessions: done.sessions,
        room_id: Some(room_id),
    }))
}

async fn cluster(State(api): State<ApiState>) -> ApiResult {
    let mut nodes = api.store.nodes().await?;
    // This node answers, so it is live: show it as of now even before its
    // first registration lands (or while a refresh is failing).
    nodes.retain(|n| n.node_id != api.node.id);
    nodes.push(api.node_info());
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    // The node holding the reaper lease (null for the moment between one
    // holder's lease running out and the next one taking it).
    let leader = api.store.current_lease().await?;
    Ok(Json(json!({
        "ok": true,
        "store": api.store.kind(),
        "nodes": nodes,
        "leader": leader,
    })))
}
