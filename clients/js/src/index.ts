// presence-cluster-client: a session that says hello, heartbeats, reports
// activity, resumes after reloads and reconnects, and live room views kept
// current from snapshots and diffs. See docs/client.md.

export { createPresence, Presence } from "./presence.js";
export type { ConnectionState, IntentOutcome, PresenceEvents, PresenceOptions, SessionStore } from "./presence.js";
export { Room } from "./room.js";
export type { JoinOptions, RoomEvents, RoomSignal } from "./room.js";
export { RoomState } from "./view.js";
export type { Applied, ViewChange } from "./view.js";
export { PresenceError } from "./errors.js";
export type * from "./types.js";
