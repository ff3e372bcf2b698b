//! The edge of the wire: decoding and validating client payloads, and the
//! one place where errors become wire error codes.
//!
//! Every payload is checked here before anything else sees it (ids, sizes,
//! types); the rest of the node only handles typed, valid requests.

use std::collections::BTreeSet;

use presence_core::page::{PageCursor, DEFAULT_PAGE, JOIN_PAGE, MAX_JOIN_PAGE, MAX_PAGE};
use presence_core::{
    Activity, Capabilities, IdError, JsonMap, Limits, Millis, Readiness, RoomId, SessionId, UserId,
};
use presence_store::{Declare, StoreError};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// The wire error codes of docs/protocol.md ("Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed payload; the error names the field.
    BadRequest,
    /// A field (or the whole payload) is larger than allowed.
    PayloadTooLarge,
    /// Missing or invalid credentials.
    Unauthorized,
    /// Not allowed (e.g. a session id of another user).
    Forbidden,
    /// Not allowed to join this room.
    ForbiddenRoom,
    /// The session is not in that room.
    NotJoined,
    /// No session on this connection: send `presence:hello` first.
    NoSession,
    /// A newer connection owns the session.
    StaleEpoch,
    /// Too many requests.
    RateLimited,
    /// A count limit was reached (rooms per session).
    LimitExceeded,
    /// The store is unreachable; retry later.
    Unavailable,
    /// A bug.
    Internal,
    /// No such route, or no such session, user or member (the moderation API).
    NotFound,
    /// The server ended the session (the moderation API); a new session may start.
    Kicked,
}

impl ErrorCode {
    /// The wire name (`bad_request`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ForbiddenRoom => "forbidden_room",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::NoSession => "no_session",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Kicked => "kicked",
        }
    }
}

/// An error as sent to a client: `{ ok: false, error: { code, message, field? } }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// The code clients switch on.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// The offending field, for `bad_request` and `payload_too_large`.
    pub field: Option<&'static str>,
}

impl WireError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A `bad_request` about `field`.
    pub fn bad(field: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            code: ErrorCode::BadRequest,
            message: format!("{field}: {message}"),
            field: Some(field),
        }
    }

    /// A `payload_too_large` about `field`.
    pub fn too_large(field: &'static str, size: usize, limit: usize) -> Self {
        Self {
            code: ErrorCode::PayloadTooLarge,
            message: format!("{field}: {size} bytes; the limit is {limit}"),
            field: Some(field),
        }
    }

    /// The JSON body of the error ack (and of HTTP error responses), as a value.
    pub fn body(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// An error serializes as the error ack: `{ ok: false, error: { code, message, field? } }`.
impl Serialize for WireError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Ack<'a> {
            ok: bool,
            error: Detail<'a>,
        }
        #[derive(Serialize)]
        struct Detail<'a> {
            code: ErrorCode,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'static str>,
        }
        Ack {
            ok: false,
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field,
            },
        }
        .serialize(s)
    }
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NoSession => ErrorCode::NoSession,
            StoreError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
            StoreError::NotJoined(_) => ErrorCode::NotJoined,
            StoreError::Forbidden(_) => ErrorCode::Forbidden,
            StoreError::TooManyRooms { .. }
            | StoreError::TooManySessions { .. }
            | StoreError::TooManyIntents(_) => ErrorCode::LimitExceeded,
            StoreError::StateTooLarge { size, limit } => {
                return WireError::too_large("state", *size, *limit)
            }
            StoreError::Kicked => ErrorCode::Kicked,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Internal(_) => ErrorCode::Internal,
        };
        WireError::new(code, e.to_string())
    }
}

/// A decoded `presence:hello`.
#[derive(Debug, Clone, PartialEq)]
pub struct HelloReq {
    /// The user (from `userId`, or `handle` when no `userId` is given).
    pub user_id: UserId,
    /// Display name.
    pub handle: Option<String>,
    /// The session to resume.
    pub session_id: Option<SessionId>,
    /// Client description.
    pub meta: Option<JsonMap>,
    /// Initial activity (an extension: defaults to `active`).
    pub activity: Activity,
    /// Readiness and capabilities, when given.
    pub declare: Declare,
}

/// A decoded `presence:reachability`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReachReq {
    /// Whom the caller would reach.
    pub user_id: UserId,
    /// What the callee's session must be able to do.
    pub need: Capabilities,
}

/// A decoded `presence:intent`.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentReq {
    /// Whom the caller waits for.
    pub user_id: UserId,
    /// What the callee's session must be able to do.
    pub need: Capabilities,
    /// How long to wait.
    pub ttl_ms: Millis,
    /// A short text for the callee.
    pub note: Option<String>,
}

/// A decoded `presence:join`.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinReq {
    /// The room.
    pub room_id: RoomId,
    /// Initial state in the room.
    pub state: Option<JsonMap>,
    /// What the client follows.
    pub follow: Follow,
}

/// What a joiner follows, and how many members its join ack lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    /// The view asked for.
    pub view: ViewReq,
    /// The size of the ack's first page (`pageLimit`).
    pub page: usize,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            view: ViewReq::Default,
            page: JOIN_PAGE,
        }
    }
}

/// What a joiner asks to follow (`view` of `presence:join`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ViewReq {
    /// No `view`: the whole room while it is small enough, else counts.
    #[default]
    Default,
    /// `"full"`: every member and every diff (counts when the room is too big).
    Full,
    /// `"count"`: counts only.
    Count,
    /// `{ "watch": [userIds] }`: counts and the listed users' entries.
    Watch(BTreeSet<UserId>),
}

/// A decoded `presence:members`.
#[derive(Debug, Clone, PartialEq)]
pub struct MembersReq {
    /// The room.
    pub room_id: RoomId,
    /// Where the page starts (after the member it names).
    pub after: Option<PageCursor>,
    /// How many members at most.
    pub limit: usize,
}

/// A decoded `presence:watch`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchReq {
    /// The room.
    pub room_id: RoomId,
    /// The users to watch from now on.
    pub users: BTreeSet<UserId>,
}

/// A decoded `presence:heartbeat`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatReq {
    /// The epoch the client holds.
    pub epoch: u64,
    /// Reported activity.
    pub activity: Option<Activity>,
}

/// A decoded `presence:state`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateReq {
    /// The room.
    pub room_id: RoomId,
    /// The epoch the client holds.
    pub epoch: u64,
    /// Shallow merge patch; `null` deletes a field.
    pub patch: JsonMap,
}

/// A decoded `presence:signal`.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalReq {
    /// The room.
    pub room_id: RoomId,
    /// Opaque data, relayed as is.
    pub data: Value,
}

/// A decoded `presence:leave`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaveReq {
    /// The room to leave; `None` ends the session.
    pub room_id: Option<RoomId>,
}

/// Characters that make a handle show differently from what it is: zero-width
/// ones (two handles that look the same) and bidirectional controls (text
/// shown in another order than it is written, e.g. to fake a file name).
fn hides_or_reorders(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// The reply to a payload nested deeper than the JSON parser follows.
pub fn too_deep() -> WireError {
    WireError::bad(
        "payload",
        "is nested too deeply (JSON deeper than 128 levels is refused)",
    )
}

/// The longest handle accepted, in bytes.
pub const MAX_HANDLE_LEN: usize = 128;

fn json_len(v: &impl Serialize) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

/// A payload that must be a JSON object.
struct Obj<'a>(&'a JsonMap);

impl<'a> Obj<'a> {
    fn of(v: &'a Value) -> Result<Self, WireError> {
        v.as_object()
            .map(Obj)
            .ok_or_else(|| WireError::bad("payload", "must be a JSON object"))
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    fn id<T>(
        &self,
        field: &'static str,
        make: fn(&str) -> Result<T, IdError>,
    ) -> Result<Option<T>, WireError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => make(s).map(Some).map_err(|e| WireError::bad(field, e)),
            Some(_) => Err(WireError::bad(field, "must be a string")),
        }
    }

    fn required_id<T>(
        &self,
        field: &'static str,
        make: fn(&str) -> Result<T, IdError>,
    ) -> Result<T, WireError> {
        self.id(field, make)?
            .ok_or_else(|| WireError::bad(field, "is required"))
    }

    fn object(&self, field: &'static str, limit: usize) -> Result<Option<JsonMap>, WireError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(m)) => {
                let size = json_len(m);
                if size > limit {
                    return Err(WireError::too_large(field, size, limit));
                }
                Ok(Some(m.clone()))
            }
            Some(_) => Err(WireError::bad(field, "must be a JSON object")),
        }
    }

    /// `watch`: an array of at most `max` user ids (repeats count once).
    fn watch_list(
        v: &Value,
        field: &'static str,
        max: usize,
    ) -> Result<BTreeSet<UserId>, WireError> {
        let Value::Array(ids) = v else {
            return Err(WireError::bad(field, "must be an array of user ids"));
        };
        if ids.len() > max {
            return Err(WireError::bad(
                field,
                format_args!("names {} users; at most {max} may be watched", ids.len()),
            ));
        }
        ids.iter()
            .map(|id| match id {
                Value::String(s) => UserId::new(s).map_err(|e| WireError::bad(field, e)),
                _ => Err(WireError::bad(field, "must be an array of user ids")),
            })
            .collect()
    }

    fn view(&self, limits: &Limits) -> Result<ViewReq, WireError> {
        const WHAT: &str = r#"must be "full", "count" or { "watch": [userIds] }"#;
        match self.get("view") {
            None => Ok(ViewReq::Default),
            Some(Value::String(s)) if s == "full" => Ok(ViewReq::Full),
            Some(Value::String(s)) if s == "count" => Ok(ViewReq::Count),
            Some(Value::Object(o)) if o.len() == 1 && o.contains_key("watch") => {
                Ok(ViewReq::Watch(Self::watch_list(
                    &o["watch"],
                    "view.watch",
                    limits.max_watch_users,
                )?))
            }
            Some(_) => Err(WireError::bad("view", WHAT)),
        }
    }

    fn epoch(&self) -> Result<u64, WireError> {
        match self.get("epoch") {
            None => Err(WireError::bad("epoch", "is required")),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| WireError::bad("epoch", "must be a non-negative integer")),
        }
    }

    /// `readiness` and `capabilities`, each optional.
    fn declare(&self, limits: &Limits) -> Result<Declare, WireError> {
        let readiness = match self.get("readiness") {
            None => None,
            Some(Value::String(s)) => Some(Readiness::parse(s).ok_or_else(|| {
                WireError::bad(
                    "readiness",
                    "must be \"available\", \"busy\", \"dnd\" or \"unavailable\"",
                )
            })?),
            Some(_) => return Err(WireError::bad("readiness", "must be a string")),
        };
        let capabilities = match self.get("capabilities") {
            None => None,
            Some(v) => Some(Self::capabilities(v, "capabilities", limits)?),
        };
        Ok(Declare {
            readiness,
            capabilities,
        })
    }

    /// A list of capability names: an array of strings, or for `need` one
    /// string of names separated by commas.
    fn capabilities(
        v: &Value,
        field: &'static str,
        limits: &Limits,
    ) -> Result<Capabilities, WireError> {
        let names: Vec<&str> = match v {
            Value::Array(a) => a
                .iter()
                .map(|n| n.as_str())
                .collect::<Option<_>>()
                .ok_or_else(|| WireError::bad(field, "must be an array of strings"))?,
            Value::String(s) if field == "need" => s
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect(),
            _ => return Err(WireError::bad(field, "must be an array of strings")),
        };
        Capabilities::parse(names, limits.max_capabilities).map_err(|e| WireError::bad(field, e))
    }

    fn activity(&self) -> Result<Option<Activity>, WireError> {
        match self.get("activity") {
            None => Ok(None),
            Some(Value::String(s)) => Activity::parse(s).map(Some).ok_or_else(|| {
                WireError::bad("activity", "must be \"active\", \"idle\" or \"background\"")
            }),
            Some(_) => Err(WireError::bad("activity", "must be a string")),
        }
    }
}

/// Decodes `presence:hello`. With token auth, `subject` is the token's
/// `sub`: the user is that one, and a `userId` naming anyone else is
/// `forbidden`. Without, the user is `userId`, or `handle` when only a
/// handle is given (then the handle must also be a valid id).
pub fn hello(v: &Value, limits: &Limits, subject: Option<&UserId>) -> Result<HelloReq, WireError> {
    let o = Obj::of(v)?;
    let handle = match o.get("handle") {
        None => None,
        Some(Value::String(h)) => {
            if h.is_empty() || h.len() > MAX_HANDLE_LEN {
                return Err(WireError::bad(
                    "handle",
                    format!("must be 1..={MAX_HANDLE_LEN} bytes"),
                ));
            }
            if h.chars().any(char::is_control) {
                return Err(WireError::bad(
                    "handle",
                    "must not contain control characters",
                ));
            }
            if h.chars().any(hides_or_reorders) {
                return Err(WireError::bad(
                    "handle",
                    "must not contain zero-width or bidirectional control characters",
                ));
            }
            Some(h.clone())
        }
        Some(_) => return Err(WireError::bad("handle", "must be a string")),
    };
    let user_id = match (subject, o.id("userId", UserId::new)?, &handle) {
        (Some(sub), Some(u), _) if *sub != u => {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "userId differs from the user your token was issued to (sub); leave it out",
            ))
        }
        (Some(sub), _, _) => sub.clone(),
        (None, Some(u), _) => u,
        (None, None, Some(h)) => UserId::new(h).map_err(|e| {
            WireError::bad(
                "handle",
                format!("used as the user id when userId is absent, so it {e}"),
            )
        })?,
        (None, None, None) => return Err(WireError::bad("userId", "userId or handle is required")),
    };
    Ok(HelloReq {
        user_id,
        handle,
        session_id: o.id("sessionId", SessionId::new)?,
        meta: o.object("meta", limits.max_meta_bytes)?,
        activity: o.activity()?.unwrap_or_default(),
        declare: o.declare(limits)?,
    })
}

/// Decodes `presence:readiness`: `readiness`, `capabilities` or both.
pub fn readiness(v: &Value, limits: &Limits) -> Result<Declare, WireError> {
    let d = Obj::of(v)?.declare(limits)?;
    if d.readiness.is_none() && d.capabilities.is_none() {
        return Err(WireError::bad(
            "readiness",
            "readiness or capabilities is required",
        ));
    }
    Ok(d)
}

/// The `need` of a reachability question or an intent (none: any session).
fn need(o: &Obj<'_>, limits: &Limits) -> Result<Capabilities, WireError> {
    match o.get("need") {
        None => Ok(Capabilities::default()),
        Some(v) => Obj::capabilities(v, "need", limits),
    }
}

/// Decodes `presence:reachability`.
pub fn reachability(v: &Value, limits: &Limits) -> Result<ReachReq, WireError> {
    let o = Obj::of(v)?;
    Ok(ReachReq {
        user_id: o.required_id("userId", UserId::new)?,
        need: need(&o, limits)?,
    })
}

/// The `need` query parameter of `GET /api/users/{userId}/reachability`
/// (names separated by commas).
pub fn need_param(s: Option<&str>, limits: &Limits) -> Result<Capabilities, WireError> {
    match s {
        None => Ok(Capabilities::default()),
        Some(s) => Obj::capabilities(&Value::String(s.to_owned()), "need", limits),
    }
}

/// Decodes `presence:intent` (and the body of `POST /api/intents`, whose
/// callee is `to` or `userId`).
pub fn intent(v: &Value, limits: &Limits) -> Result<IntentReq, WireError> {
    let o = Obj::of(v)?;
    let ttl_ms = match o.get("ttlMs") {
        None => return Err(WireError::bad("ttlMs", "is required")),
        Some(v) => v
            .as_i64()
            .filter(|t| (1..=limits.max_intent_ttl_ms).contains(t))
            .ok_or_else(|| {
                WireError::bad(
                    "ttlMs",
                    format!(
                        "must be an integer from 1 to {} (PRESENCE_MAX_INTENT_TTL_MS)",
                        limits.max_intent_ttl_ms
                    ),
                )
            })?,
    };
    let note = match o.get("note") {
        None => None,
        Some(Value::String(s)) if s.len() > limits.max_note_bytes => {
            return Err(WireError::too_large("note", s.len(), limits.max_note_bytes))
        }
        Some(Value::String(s)) if s.chars().any(|c| c.is_control() || hides_or_reorders(c)) => {
            return Err(WireError::bad(
                "note",
                "must not contain control, zero-width or bidirectional control characters",
            ))
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(WireError::bad("note", "must be a string")),
    };
    Ok(IntentReq {
        user_id: o.required_id("userId", UserId::new)?,
        need: need(&o, limits)?,
        ttl_ms,
        note,
    })
}

/// Decodes `presence:intent_cancel`: the id of the caller's intent.
pub fn intent_id(v: &Value) -> Result<String, WireError> {
    match Obj::of(v)?.get("intentId") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(s.clone()),
        Some(Value::String(_)) => Err(WireError::bad("intentId", "must be 1..=64 bytes")),
        Some(_) => Err(WireError::bad("intentId", "must be a string")),
        None => Err(WireError::bad("intentId", "is required")),
    }
}

/// Decodes `presence:join`.
pub fn join(v: &Value, limits: &Limits) -> Result<JoinReq, WireError> {
    let o = Obj::of(v)?;
    Ok(JoinReq {
        room_id: o.required_id("roomId", RoomId::new)?,
        state: o.object("state", limits.max_state_bytes)?,
        follow: Follow {
            view: o.view(limits)?,
            page: match o.get("pageLimit") {
                None => JOIN_PAGE,
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=MAX_JOIN_PAGE as u64).contains(n))
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        WireError::bad(
                            "pageLimit",
                            format_args!("must be an integer in 1..={MAX_JOIN_PAGE}"),
                        )
                    })?,
            },
        },
    })
}

/// Decodes `presence:members`.
pub fn members(v: &Value) -> Result<MembersReq, WireError> {
    let o = Obj::of(v)?;
    let after = match o.get("cursor") {
        None => None,
        Some(Value::String(s)) => Some(
            s.parse::<PageCursor>()
                .map_err(|e| WireError::bad("cursor", e))?,
        ),
        Some(_) => return Err(WireError::bad("cursor", "must be a string")),
    };
    Ok(MembersReq {
        room_id: o.required_id("roomId", RoomId::new)?,
        after,
        limit: page_limit(o.get("limit"))?,
    })
}

/// A page's `limit`: 1..=1000, 100 when absent.
pub fn page_limit(v: Option<&Value>) -> Result<usize, WireError> {
    let Some(v) = v else {
        return Ok(DEFAULT_PAGE);
    };
    v.as_u64()
        .filter(|n| (1..=MAX_PAGE as u64).contains(n))
        .map(|n| n as usize)
        .ok_or_else(|| {
            WireError::bad(
                "limit",
                format_args!("must be an integer in 1..={MAX_PAGE}"),
            )
        })
}

/// Decodes `presence:watch`.
pub fn watch(v: &Value, limits: &Limits) -> Result<WatchReq, WireError> {
    let o = Obj::of(v)?;
    let users = match o.get("watch") {
        Some(w) => Obj::watch_list(w, "watch", limits.max_watch_users)?,
        None => return Err(WireError::bad("watch", "is required")),
    };
    Ok(WatchReq {
        room_id: o.required_id("roomId", RoomId::new)?,
        users,
    })
}

/// Decodes `presence:heartbeat`.
pub fn heartbeat(v: &Value) -> Result<HeartbeatReq, WireError> {
    let o = Obj::of(v)?;
    Ok(HeartbeatReq {
        epoch: o.epoch()?,
        activity: o.activity()?,
    })
}

/// Decodes `presence:state`.
pub fn state(v: &Value, limits: &Limits) -> Result<StateReq, WireError> {
    let o = Obj::of(v)?;
    let room_id = o.required_id("roomId", RoomId::new)?;
    let epoch = o.epoch()?;
    let patch = o
        .object("patch", limits.max_state_bytes)?
        .ok_or_else(|| WireError::bad("patch", "is required"))?;
    Ok(StateReq {
        room_id,
        epoch,
        patch,
    })
}

/// Decodes `presence:signal`; `data` may be any JSON up to the state limit.
pub fn signal(v: &Value, limits: &Limits) -> Result<SignalReq, WireError> {
    let o = Obj::of(v)?;
    let room_id = o.required_id("roomId", RoomId::new)?;
    let data = o.0.get("data").cloned().unwrap_or(Value::Null);
    let size = json_len(&data);
    if size > limits.max_state_bytes {
        return Err(WireError::too_large("data", size, limits.max_state_bytes));
    }
    Ok(SignalReq { room_id, data })
}

/// Decodes `presence:leave`; no payload at all (or `{}`) means "end the session".
pub fn leave(v: &Value) -> Result<LeaveReq, WireError> {
    if v.is_null() {
        return Ok(LeaveReq { room_id: None });
    }
    let o = Obj::of(v)?;
    Ok(LeaveReq {
        room_id: o.id("roomId", RoomId::new)?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn l() -> Limits {
        Limits::default()
    }

    #[test]
    fn readiness_need_and_intents_decode_or_name_the_field() {
        let h = hello(&json!({ "userId": "a", "readiness": "dnd", "capabilities": ["video", "audio", "audio"] }), &l(), None).unwrap();
        assert_eq!(h.declare.readiness, Some(Readiness::Dnd));
        assert_eq!(h.declare.capabilities.unwrap().joined(), "audio,video");
        assert_eq!(
            hello(&json!({ "userId": "a" }), &l(), None)
                .unwrap()
                .declare,
            Declare::default()
        );
        let r = readiness(&json!({ "capabilities": [] }), &l()).unwrap();
        assert_eq!(
            (r.readiness, r.capabilities.map(|c| c.len())),
            (None, Some(0))
        );
        let q = reachability(&json!({ "userId": "b", "need": "audio, video" }), &l()).unwrap();
        assert_eq!(q.need.joined(), "audio,video");
        let i = intent(&json!({ "userId": "b", "ttlMs": 5000, "note": "hi" }), &l()).unwrap();
        assert_eq!(
            (i.ttl_ms, i.note.as_deref(), i.need.len()),
            (5000, Some("hi"), 0)
        );
        let many: Vec<String> = (0..=l().max_capabilities)
            .map(|n| format!("c{n}"))
            .collect();
        for (v, field) in [
            (
                readiness(&json!({ "readiness": "away" }), &l()).err(),
                "readiness",
            ),
            (readiness(&json!({}), &l()).err(), "readiness"),
            (
                readiness(&json!({ "capabilities": many }), &l()).err(),
                "capabilities",
            ),
            (
                readiness(&json!({ "capabilities": ["a b"] }), &l()).err(),
                "capabilities",
            ),
            (
                reachability(&json!({ "userId": "b", "need": 3 }), &l()).err(),
                "need",
            ),
            (
                intent(&json!({ "userId": "b", "ttlMs": 0 }), &l()).err(),
                "ttlMs",
            ),
            (
                intent(
                    &json!({ "userId": "b", "ttlMs": 1, "note": "a\u{202e}b" }),
                    &l(),
                )
                .err(),
                "note",
            ),
            (intent(&json!({ "ttlMs": 1 }), &l()).err(), "userId"),
        ] {
            assert_eq!(v.expect("refused").field, Some(field));
        }
        let long = "x".repeat(l().max_note_bytes + 1);
        let e = intent(&json!({ "userId": "b", "ttlMs": 1, "note": long }), &l()).unwrap_err();
        assert_eq!(
            (e.code, e.field),
            (ErrorCode::PayloadTooLarge, Some("note"))
        );
    }

    #[test]
    fn with_a_token_the_user_is_its_subject() {
        let sub = UserId::new("alice").unwrap();
        let h = hello(&json!({}), &l(), Some(&sub)).unwrap();
        assert_eq!(h.user_id, sub);
        let h = hello(
            &json!({ "userId": "alice", "handle": "Al" }),
            &l(),
            Some(&sub),
        )
        .unwrap();
        assert_eq!(h.user_id, sub);
        let h = hello(&json!({ "handle": "Mallory" }), &l(), Some(&sub)).unwrap();
        assert_eq!(
            h.user_id, sub,
            "a handle never becomes the user id under auth"
        );
        let e = hello(&json!({ "userId": "bob" }), &l(), Some(&sub)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
    }

    #[test]
    fn hello_takes_user_or_handle() {
        let h = hello(
            &json!({ "userId": "u1", "handle": "Ann Lee", "meta": { "ua": "x" } }),
            &l(),
            None,
        )
        .unwrap();
        assert_eq!(h.user_id.as_str(), "u1");
        assert_eq!(h.handle.as_deref(), Some("Ann Lee"));
        let h = hello(&json!({ "handle": "ann" }), &l(), None).unwrap();
        assert_eq!(h.user_id.as_str(), "ann");
        let e = hello(&json!({ "handle": "Ann Lee" }), &l(), None).unwrap_err();
        assert_eq!((e.code, e.field), (ErrorCode::BadRequest, Some("handle")));
        let e = hello(&json!({}), &l(), None).unwrap_err();
        assert_eq!(e.field, Some("userId"));
    }

    #[test]
    fn views_pages_and_watch_lists_decode_or_name_the_field() {
        let room = |v: Value| join(&v, &l()).map(|r| r.follow);
        assert_eq!(room(json!({ "roomId": "r" })).unwrap(), Follow::default());
        assert_eq!(
            room(json!({ "roomId": "r", "view": "count" }))
                .unwrap()
                .view,
            ViewReq::Count
        );
        assert_eq!(
            room(json!({ "roomId": "r", "view": "full", "pageLimit": 100 }))
                .unwrap()
                .page,
            100
        );
        let w = room(json!({ "roomId": "r", "view": { "watch": ["b", "a", "b"] } })).unwrap();
        let ids: Vec<_> = match w.view {
            ViewReq::Watch(u) => u.into_iter().map(|u| u.to_string()).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ids, ["a", "b"], "sorted, repeats once");
        let many: Vec<String> = (0..=l().max_watch_users).map(|i| format!("u{i}")).collect();
        for (v, field) in [
            (json!({ "roomId": "r", "view": "all" }), "view"),
            (
                json!({ "roomId": "r", "view": { "watch": ["a"], "x": 1 } }),
                "view",
            ),
            (
                json!({ "roomId": "r", "view": { "watch": "a" } }),
                "view.watch",
            ),
            (
                json!({ "roomId": "r", "view": { "watch": [1] } }),
                "view.watch",
            ),
            (
                json!({ "roomId": "r", "view": { "watch": many } }),
                "view.watch",
            ),
            (json!({ "roomId": "r", "pageLimit": 0 }), "pageLimit"),
            (json!({ "roomId": "r", "pageLimit": 101 }), "pageLimit"),
        ] {
            assert_eq!(room(v.clone()).unwrap_err().field, Some(field), "{v}");
        }
        let m = members(&json!({ "roomId": "r", "cursor": "u~s", "limit": 1000 })).unwrap();
        assert_eq!(
            (m.after.unwrap().to_string(), m.limit),
            ("u~s".to_owned(), 1000)
        );
        assert_eq!(members(&json!({ "roomId": "r" })).unwrap().limit, 100);
        for (v, field) in [
            (json!({ "roomId": "r", "cursor": "garbage" }), "cursor"),
            (json!({ "roomId": "r", "cursor": 3 }), "cursor"),
            (json!({ "roomId": "r", "limit": 0 }), "limit"),
            (json!({ "roomId": "r", "limit": 1001 }), "limit"),
            (json!({ "roomId": "r", "limit": 1.5 }), "limit"),
            (json!({ "limit": 5 }), "roomId"),
        ] {
            assert_eq!(members(&v).unwrap_err().field, Some(field), "{v}");
        }
        assert_eq!(
            watch(&json!({ "roomId": "r", "watch": [] }), &l())
                .unwrap()
                .users
                .len(),
            0
        );
        assert_eq!(
            watch(&json!({ "roomId": "r" }), &l()).unwrap_err().field,
            Some("watch")
        );
    }

    #[test]
    fn every_field_is_type_checked() {
        let cases = [
            (hello(&json!({ "userId": 5 }), &l(), None), "userId"),
            (hello(&json!({ "userId": "a b" }), &l(), None), "userId"),
            (
                hello(&json!({ "userId": "u", "sessionId": "" }), &l(), None),
                "sessionId",
            ),
            (
                hello(&json!({ "userId": "u", "meta": [1] }), &l(), None),
                "meta",
            ),
            (
                hello(&json!({ "userId": "u", "activity": "asleep" }), &l(), None),
                "activity",
            ),
            (
                hello(&json!({ "userId": "u", "handle": "a\u{0007}" }), &l(), None),
                "handle",
            ),
            (
                hello(
                    &json!({ "userId": "u", "handle": "ad\u{200B}min" }),
                    &l(),
                    None,
                ),
                "handle",
            ),
            (
                hello(
                    &json!({ "userId": "u", "handle": "evil\u{202E}txt.exe" }),
                    &l(),
                    None,
                ),
                "handle",
            ),
            (
                hello(
                    &json!({ "userId": "u", "handle": "x\u{2066}y" }),
                    &l(),
                    None,
                ),
                "handle",
            ),
            (join(&json!({}), &l()).map(|_| h()), "roomId"),
            (
                join(&json!({ "roomId": "r", "state": "x" }), &l()).map(|_| h()),
                "state",
            ),
            (heartbeat(&json!({})).map(|_| h()), "epoch"),
            (heartbeat(&json!({ "epoch": -1 })).map(|_| h()), "epoch"),
            (heartbeat(&json!({ "epoch": "1" })).map(|_| h()), "epoch"),
            (
                state(&json!({ "roomId": "r", "epoch": 1 }), &l()).map(|_| h()),
                "patch",
            ),
            (signal(&json!({ "roomId": 1 }), &l()).map(|_| h()), "roomId"),
            (leave(&json!({ "roomId": "x/y" })).map(|_| h()), "roomId"),
        ];
        for (r, field) in cases {
            let e = r.unwrap_err();
            assert_eq!(
                (e.code, e.field),
                (ErrorCode::BadRequest, Some(field)),
                "{e:?}"
            );
        }
    }

    fn h() -> HelloReq {
        hello(&json!({ "userId": "u" }), &Limits::default(), None).unwrap()
    }

    #[test]
    fn non_objects_are_bad_requests() {
        for v in [
            json!("str"),
            json!(1),
            json!([1, 2]),
            json!(true),
            Value::Null,
        ] {
            assert_eq!(hello(&v, &l(), None).unwrap_err().field, Some("payload"));
            assert_eq!(join(&v, &l()).unwrap_err().field, Some("payload"));
            assert_eq!(heartbeat(&v).unwrap_err().field, Some("payload"));
        }
        // Leave alone accepts no payload: it ends the session.
        assert_eq!(leave(&Value::Null).unwrap().room_id, None);
    }

    #[test]
    fn sizes_are_limited() {
        let big = json!({ "x": "y".repeat(5000) });
        let e = join(&json!({ "roomId": "r", "state": big }), &l()).unwrap_err();
        assert_eq!(
            (e.code, e.field),
            (ErrorCode::PayloadTooLarge, Some("state"))
        );
        let e = hello(
            &json!({ "userId": "u", "meta": { "x": "y".repeat(2000) } }),
            &l(),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field),
            (ErrorCode::PayloadTooLarge, Some("meta"))
        );
        let e = signal(&json!({ "roomId": "r", "data": "y".repeat(5000) }), &l()).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn error_body_shape() {
        let b = WireError::bad("roomId", "is required").body();
        assert_eq!(
            b,
            json!({ "ok": false, "error": { "code": "bad_request", "message": "roomId: is required", "field": "roomId" } })
        );
        let b = WireError::from(StoreError::StaleEpoch { current: 3 }).body();
        assert_eq!(b["error"]["code"], "stale_epoch");
        // as_str and the serde name agree.
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::PayloadTooLarge,
            ErrorCode::ForbiddenRoom,
            ErrorCode::LimitExceeded,
            ErrorCode::NotFound,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }
}
