//! The pure presence model of presence-cluster.
//!
//! Presence is a property of *sessions* (a tab, a device, an SDK client); a
//! user's presence is derived from their sessions and never stored as a flag.
//! This crate holds that model and nothing else: no tokio, no Redis, no
//! sockets, so every rule can be tested exhaustively and deterministically.
//!
//! Layout:
//! - [`ids`]: validated identifiers (`SessionId`, `UserId`, `RoomId`, `NodeId`).
//! - [`time`]: the injected [`Clock`](time::Clock) and a manual clock for tests.
//! - [`config`]: lifecycle [`Timings`](config::Timings) and [`Limits`](config::Limits) with their defaults.
//! - [`session`]: the facts kept per session and the derivation of its status.
//! - [`state`]: the shallow merge that applies a state patch.
//! - [`user`]: user status and confidence, derived from a set of sessions.
//! - [`view`]: what observers see of a room or of everyone online.
//! - [`diff`]: the minimal change between two views, and how to apply it.
//! - [`event`]: the v1 presence event published on every transition.
//! - [`live`]: a room's view kept current from its events, and its diffs.
//! - [`vouch`]: when a node may answer a heartbeat of its own session alone.
//! - [`lifecycle`]: the user-level events backends hear (online, offline,
//!   status, memberships, rooms filling and emptying, intents resolving).
//! - [`intent`]: a caller's wait for a user to become reachable now.
//! - [`reach`]: whether a user can be reached now for what a caller needs
//!   (readiness, capabilities), and on which session first.

pub mod config;
pub mod diff;
pub mod event;
pub mod ids;
pub mod intent;
pub mod lifecycle;
pub mod live;
pub mod page;
pub mod reach;
pub mod session;
pub mod state;
pub mod time;
pub mod user;
pub mod view;
pub mod vouch;

pub use config::{Limits, Timings};
pub use diff::{RoomDiff, SessionPatch, UserPatch};
pub use event::{EventKind, EventMember, PresenceEvent};
pub use ids::{IdError, NodeId, RoomId, SessionId, UserId};
pub use intent::{Intent, IntentNotice, IntentOutcome};
pub use lifecycle::{Lifecycle, LifecycleEvent};
pub use page::{Page, PageCursor, RoomCounts, StatusCounts};
pub use reach::{
    derive_reach, Capabilities, CapabilityError, Declared, Reach, ReachReason, ReachSignal,
    Reachability, Readiness,
};
pub use session::{Activity, Liveness, Pulse, SessionFacts, SessionStatus};
pub use time::{Clock, ManualClock, Millis, SystemClock};
pub use user::{Confidence, UserStatus, UserSummary};
pub use view::{RoomView, SessionPresence, UserPresence};
pub use vouch::{Due, Vouch};

/// A small JSON object (session `meta`, per-room `state`).
pub type JsonMap = serde_json::Map<String, serde_json::Value>;
