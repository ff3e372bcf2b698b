// The wire shapes of docs/protocol.md, as the client sees them.

/** A session's derived status. */
export type SessionStatus = "active" | "idle" | "away" | "stale";
/** A user's derived status (`offline` when no session is left). */
export type UserStatus = SessionStatus | "offline";
/** What the client reports about its human. */
export type Activity = "active" | "idle" | "background";
/** Whether a session may be interrupted. */
export type Readiness = "available" | "busy" | "dnd" | "unavailable";
/** How much to trust a status. */
export type Confidence = "high" | "medium" | "low";
/** What a room follower gets: every member, counts only, or counts and some users. */
export type ViewKind = "full" | "count" | "watch";

/** One user of a room, derived from their sessions in it. */
export interface UserPresence {
  userKey: string;
  handle?: string;
  status: UserStatus;
  confidence: Confidence;
  sessionCount: number;
  lastSeenAt: number;
  lastHeartbeatAt: number;
  state?: Record<string, unknown>;
}

/** One session of a room. */
export interface SessionPresence {
  sessionId: string;
  userId: string;
  handle?: string;
  status: SessionStatus;
  lastHeartbeatAt: number;
  state?: Record<string, unknown>;
  readiness?: Readiness;
  capabilities?: string[];
}

/** A room's counts (`users.active`: how many are active now). */
export interface RoomCounts {
  users: { total: number; active: number; idle: number; away: number; stale: number };
  sessions: { total: number };
}

/** Entries keyed by id, as snapshots and pages carry them. */
export interface Entries {
  users: Record<string, UserPresence>;
  sessions: Record<string, SessionPresence>;
}

/** `presence:snapshot` (and the snapshot of a join ack). */
export interface Snapshot extends Entries {
  roomId: string;
  seq: number;
  generatedAt?: number;
  part?: number;
  parts?: number;
  view?: ViewKind;
  counts?: RoomCounts;
}

/** A patch per entry: `null` means gone, otherwise the fields that changed (a `null` field is removed). */
export interface DiffMessage {
  roomId: string;
  seq: number;
  users: Record<string, Partial<UserPresence> | null>;
  sessions: Record<string, Partial<SessionPresence> | null>;
  part?: number;
  parts?: number;
}

/** The lifecycle timings a node names in its hello ack. */
export interface Timings {
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  idleAfterMs: number;
  awayAfterMs: number;
  backgroundTimeoutMs: number;
  reconnectGraceMs: number;
  emitDebounceMs: number;
}

/** The ack of `presence:hello`. */
export interface HelloAck {
  ok: true;
  sessionId: string;
  userId: string;
  epoch: number;
  resumed: boolean;
  rooms: string[];
  droppedRooms: string[];
  nodeId: string;
  config: Timings;
  limits: Record<string, number>;
}

/** The ack of `presence:join`. */
export interface JoinAck {
  ok: true;
  roomId: string;
  view: ViewKind;
  viewReason?: string;
  seq: number;
  counts: RoomCounts;
  me: { user?: UserPresence; session?: SessionPresence };
  page: Entries & { nextCursor?: string };
  snapshot?: Snapshot;
}

/** A user's reachability for a need (`presence:reachability`). */
export interface Reach {
  userId: string;
  need: string[];
  reachability: "now" | "soon" | "unlikely" | "no";
  confidence: Confidence;
  /** The session to ring first (`null` when `no`). */
  session: string | null;
  reason: string;
}

/** `presence:intent_received`: someone waits to reach this user. */
export interface IntentReceived {
  intentId: string;
  from: string;
  need: string[];
  note?: string;
  expiresAt: number;
}
