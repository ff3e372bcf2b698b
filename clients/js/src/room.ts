// One joined room: a live view that keeps itself current from the node's
// snapshots and diffs, and what a member does in it.

import { Emitter } from "./emitter.js";
import { RoomState, type ViewChange } from "./view.js";
import type {
  DiffMessage, Entries, JoinAck, RoomCounts, SessionPresence, Snapshot, UserPresence, UserStatus, ViewKind,
} from "./types.js";

/** A signal relayed to the room (`presence:signal`). */
export interface RoomSignal {
  sessionId: string;
  userId: string;
  data: unknown;
}

/** The events of a room. `join`, `leave` and `status` are per user: a
 * user's second tab is not a join, their last one leaving is a leave. */
export interface RoomEvents {
  change: (room: Room, change: ViewChange) => void;
  join: (user: UserPresence) => void;
  leave: (userId: string) => void;
  status: (user: UserPresence, from: UserStatus) => void;
  counts: (counts: RoomCounts) => void;
  signal: (signal: RoomSignal) => void;
  view: (view: ViewKind, reason?: string) => void;
  /** A backend took this session out of the room (the moderation API): the
   * room is left; joining again brings it back. */
  removed: (reason: string) => void;
}

/** What a room needs of its presence connection. */
export interface RoomHost {
  request<T>(event: string, payload: unknown): Promise<T>;
  readonly epoch: number | null;
  readonly sessionId: string | null;
  readonly userId: string | null;
  forget(room: Room): void;
}

/** Join options: the session's `state` in the room and the `view` it follows. */
export interface JoinOptions {
  state?: Record<string, unknown>;
  view?: "full" | "count" | { watch: string[] };
}

function countsOf(users: Iterable<UserPresence>, sessions: number): RoomCounts {
  const c: RoomCounts = { users: { total: 0, active: 0, idle: 0, away: 0, stale: 0 }, sessions: { total: sessions } };
  for (const u of users) {
    c.users.total += 1;
    if (u.status !== "offline") c.users[u.status] += 1;
  }
  return c;
}

/** A joined room. */
export class Room extends Emitter<RoomEvents> {
  /** The view followed: every member (`full`), counts (`count`), or counts and some users (`watch`). */
  view: ViewKind = "full";
  private readonly state = new RoomState();
  private serverCounts: RoomCounts | null = null;
  /** What this session set in the room, to join again with after a lost session. */
  myState: Record<string, unknown> | undefined;
  private left = false;
  /** This user and session as the join ack had them (for views that do not hold them). */
  private joinedAs: { user?: UserPresence; session?: SessionPresence } = {};

  constructor(readonly id: string, private readonly host: RoomHost, readonly options: JoinOptions) {
    super();
    this.myState = options.state;
  }

  /** Users in view, by id (every member in `full`, the watched ones in `watch`). */
  get users(): ReadonlyMap<string, UserPresence> {
    return this.state.users;
  }

  /** Sessions in view, by id. */
  get sessions(): ReadonlyMap<string, SessionPresence> {
    return this.state.sessions;
  }

  /** The room's version the view is at. */
  get seq(): number {
    return this.state.seq;
  }

  /** The room's counts (computed from the view when it is `full`). */
  get counts(): RoomCounts {
    if (this.view === "full") return countsOf(this.state.users.values(), this.state.sessions.size);
    return this.serverCounts ?? countsOf([], 0);
  }

  /** This user and this session as the room sees them. */
  get me(): { user?: UserPresence; session?: SessionPresence } {
    const uid = this.host.userId;
    const sid = this.host.sessionId;
    return {
      user: (uid ? this.state.users.get(uid) : undefined) ?? this.joinedAs.user,
      session: (sid ? this.state.sessions.get(sid) : undefined) ?? this.joinedAs.session,
    };
  }

  /** Merges `patch` into this session's state in the room (a `null` field removes it). */
  async setState(patch: Record<string, unknown>): Promise<void> {
    await this.host.request("presence:state", { roomId: this.id, epoch: this.host.epoch, patch });
    const next: Record<string, unknown> = { ...(this.myState ?? {}) };
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) delete next[k];
      else next[k] = v;
    }
    this.myState = next;
  }

  /** Relays `data` to the room's other sessions (never stored). */
  async signal(data: unknown): Promise<void> {
    await this.host.request("presence:signal", { roomId: this.id, data });
  }

  /** A page of the room's members (any view), in a stable order. */
  async members(opts: { cursor?: string; limit?: number } = {}): Promise<Entries & { seq: number; nextCursor?: string }> {
    return this.host.request("presence:members", { roomId: this.id, ...opts });
  }

  /** Follows counts and these users' entries from now on. */
  async watch(userIds: string[]): Promise<void> {
    const a = await this.host.request<{ seq: number; counts: RoomCounts; snapshot: Snapshot }>(
      "presence:watch", { roomId: this.id, watch: userIds });
    this.view = "watch";
    this.serverCounts = a.counts;
    this.replace({ ...a.snapshot, seq: a.seq });
  }

  /** Leaves the room (the session stays). */
  async leave(): Promise<void> {
    this.left = true;
    this.host.forget(this);
    await this.host.request("presence:leave", { roomId: this.id });
  }

  /** Whether `leave` was called, or a backend removed the session. */
  get hasLeft(): boolean {
    return this.left;
  }

  /** @internal A backend took the session out of the room. */
  removedByServer(reason: string): void {
    this.left = true;
    this.host.forget(this);
    this.emit("removed", reason);
  }

  // What the connection feeds the room.

  /** @internal A join ack. */
  opened(ack: JoinAck): void {
    this.view = ack.view;
    this.serverCounts = ack.counts;
    this.joinedAs = ack.me;
    // A `count` follower holds no entries (pages come from `members`).
    const entries: Entries = ack.snapshot ?? { users: {}, sessions: {} };
    this.replace({ ...entries, seq: ack.snapshot?.seq ?? ack.seq, part: ack.snapshot?.part, parts: ack.snapshot?.parts });
  }

  /** @internal `presence:snapshot`: a resumed room, or a later part of one. */
  snapshot(s: Snapshot): void {
    if ((s.part ?? 1) === 1 && s.view) {
      this.view = s.view;
      if (s.counts) this.serverCounts = s.counts;
    }
    this.replace(s);
  }

  /** @internal `presence:diff`. */
  diff(d: DiffMessage): void {
    const r = this.state.apply(d);
    if (r.change) this.announce(r.change);
  }

  /** @internal `presence:counts`. */
  countsChanged(c: RoomCounts): void {
    this.serverCounts = c;
    this.emit("counts", c);
  }

  /** @internal `presence:view`: the room grew past the full view's limit. */
  viewChanged(view: ViewKind, counts: RoomCounts, reason?: string): void {
    this.view = view;
    this.serverCounts = counts;
    this.emit("view", view, reason);
  }

  /** @internal `presence:signal`. */
  signalled(s: RoomSignal): void {
    this.emit("signal", s);
  }

  private replace(s: Entries & { seq: number; part?: number; parts?: number }): void {
    const r = this.state.reset(s);
    if (r.change) this.announce(r.change);
  }

  private announce(c: ViewChange): void {
    if (RoomState.isEmpty(c)) return;
    this.emit("change", this, c);
    for (const u of c.joined) this.emit("join", u);
    for (const id of c.left) this.emit("leave", id);
    for (const s of c.status) this.emit("status", s.user, s.from);
    if (this.view === "full") this.emit("counts", this.counts);
  }
}
