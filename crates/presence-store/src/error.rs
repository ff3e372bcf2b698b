//! The error type of the store boundary. The node maps each variant to one
//! wire error code, in one place.

use presence_core::RoomId;

/// Why a store operation was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The session does not exist (never claimed, ended, or expired).
    #[error("no such session: send presence:hello first")]
    NoSession,
    /// The write carries an epoch that is not the session's current one: a
    /// newer connection owns the session (or the epoch was forged).
    #[error("a newer connection owns this session (current epoch {current})")]
    StaleEpoch {
        /// The session's current epoch.
        current: u64,
    },
    /// The session is not in that room.
    #[error("session is not in room {0}")]
    NotJoined(RoomId),
    /// The session id belongs to another user.
    #[error("{0}")]
    Forbidden(String),
    /// The session is already in as many rooms as allowed.
    #[error("a session may be in at most {limit} rooms")]
    TooManyRooms {
        /// The configured limit.
        limit: usize,
    },
    /// The user already holds as many sessions as allowed.
    #[error("a user may hold at most {limit} sessions at once; end one (presence:leave) first")]
    TooManySessions {
        /// The configured limit.
        limit: usize,
    },
    /// The caller has as many intents waiting as allowed, or as many wait
    /// for the callee.
    #[error("{0}")]
    TooManyIntents(String),
    /// The room state would be larger than allowed.
    #[error("state would be {size} bytes; the limit is {limit}")]
    StateTooLarge {
        /// Its size as compact JSON.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The session was ended by the server (the moderation API): its id is
    /// refused for as long as its tombstone lives; a new session may start.
    #[error("this session was ended by the server (kicked); start a new session")]
    Kicked,
    /// The backing service cannot be reached; the caller may retry.
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected answer.
    #[error("internal store error: {0}")]
    Internal(String),
}
