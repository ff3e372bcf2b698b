// The connection to presence-cluster: one session, kept alive and resumed.

import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";

import { BrowserActivity } from "./activity.js";
import { Emitter } from "./emitter.js";
import { PresenceError } from "./errors.js";
import { Room, type JoinOptions, type RoomHost, type RoomSignal } from "./room.js";
import type {
  Activity, DiffMessage, HelloAck, IntentReceived, JoinAck, Reach, Readiness, RoomCounts, Snapshot, Timings, ViewKind,
} from "./types.js";

/** Where the session id is kept between page loads (sessionStorage in a browser: one per tab). */
export interface SessionStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** How `createPresence` connects. */
export interface PresenceOptions {
  /** The node (or load balancer) URL. */
  url: string;
  /** The user; not needed with a token (the token's `sub` is the user). */
  userId?: string;
  /** A JWT, or a function that returns a fresh one (called on every (re)connect). */
  token?: string | (() => string | Promise<string>);
  /** Display name. */
  handle?: string;
  /** A small JSON object describing the client. */
  meta?: Record<string, unknown>;
  /** Readiness and capabilities to declare at hello. */
  readiness?: Readiness;
  capabilities?: string[];
  /** Where to keep the session id (default: sessionStorage in a browser, memory elsewhere). */
  storage?: SessionStore;
  /** The key it is kept under. */
  storageKey?: string;
  /** `"auto"` (a browser: input, focus, visibility) or the activity to start with. */
  activity?: "auto" | Activity;
  /** How long a request waits for its ack (ms). */
  timeoutMs?: number;
  /** Passed to socket.io-client. */
  socket?: Partial<ManagerOptions & SocketOptions>;
}

/** Where the connection is. */
export type ConnectionState = "connecting" | "connected" | "resumed" | "reconnecting" | "closed";

/** How an intent ended for its caller. */
export interface IntentOutcome {
  intentId: string;
  userId: string;
  /** True when the user became reachable now; then `sessionId` is the session to ring. */
  reachable: boolean;
  sessionId?: string;
}

/** The events of a presence connection. */
export interface PresenceEvents {
  connection: (state: ConnectionState) => void;
  error: (error: PresenceError) => void;
  intent: (intent: IntentReceived) => void;
  intentCancelled: (intent: IntentReceived) => void;
  /** The activity this client reports changed. */
  activity: (activity: Activity) => void;
}

class MemoryStore implements SessionStore {
  private m = new Map<string, string>();
  getItem(k: string) { return this.m.get(k) ?? null; }
  setItem(k: string, v: string) { this.m.set(k, v); }
  removeItem(k: string) { this.m.delete(k); }
}

function defaultStore(): SessionStore {
  try {
    if (typeof sessionStorage !== "undefined") return sessionStorage;
  } catch {
    // Storage denied (a sandboxed frame): keep it in memory.
  }
  return new MemoryStore();
}

/** Connects to presence-cluster and says hello. */
export function createPresence(options: PresenceOptions): Presence {
  return new Presence(options);
}

/** One session, its rooms, its activity and readiness. */
export class Presence extends Emitter<PresenceEvents> implements RoomHost {
  /** The session (once the first hello is answered). */
  sessionId: string | null = null;
  /** The user (from the hello ack). */
  userId: string | null = null;
  /** The epoch this connection writes with. */
  epoch: number | null = null;
  /** The node's lifecycle timings. */
  timings: Timings | null = null;
  /** Where the connection is. */
  state: ConnectionState = "connecting";
  /** Whether the last hello resumed an existing session (after a reload, too). */
  resumed = false;
  /** The node that answered the last hello. */
  nodeId: string | null = null;

  private readonly socket: Socket;
  private readonly store: SessionStore;
  private readonly key: string;
  private readonly rooms = new Map<string, Room>();
  private activityNow: Activity;
  private browser: BrowserActivity | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private helloCount = 0;
  private readonly declared: { readiness?: Readiness; capabilities?: string[] };
  private readonly waiting = new Map<string, (o: IntentOutcome) => void>();
  private readonly early = new Map<string, IntentOutcome>();
  private readonly firstHello: Promise<void>;
  private helloDone!: () => void;
  private helloFailed!: (e: PresenceError) => void;
  private closed = false;
  private renewToken = false;

  constructor(private readonly opts: PresenceOptions) {
    super();
    this.store = opts.storage ?? defaultStore();
    this.key = opts.storageKey ?? "presence-cluster.sessionId";
    this.declared = { readiness: opts.readiness, capabilities: opts.capabilities };
    this.firstHello = new Promise((resolve, reject) => {
      this.helloDone = resolve;
      this.helloFailed = reject;
    });
    this.firstHello.catch(() => {});
    const auto = (opts.activity ?? "auto") === "auto" && BrowserActivity.available();
    this.activityNow = opts.activity && opts.activity !== "auto" ? opts.activity : "active";
    if (auto) {
      this.browser = new BrowserActivity(60_000, (a) => this.activityChanged(a));
      this.activityNow = this.browser.activity;
    }
    const token = opts.token;
    this.socket = io(opts.url, {
      ...opts.socket,
      auth: token === undefined ? undefined : (cb: (d: object) => void) => {
        Promise.resolve(typeof token === "function" ? token() : token).then((t) => cb({ token: t }), () => cb({}));
      },
    });
    this.listen();
  }

  /** Resolves once the first hello is answered (rejects if it is refused). */
  ready(): Promise<void> {
    return this.firstHello;
  }

  /** Joins a room; resolves with its live view. */
  async join(roomId: string, options: JoinOptions = {}): Promise<Room> {
    await this.ready();
    const existing = this.rooms.get(roomId);
    const room = existing ?? new Room(roomId, this, options);
    this.rooms.set(roomId, room);
    try {
      const ack = await this.request<JoinAck>("presence:join", this.joinPayload(room));
      room.opened(ack);
      return room;
    } catch (e) {
      if (!existing) this.rooms.delete(roomId);
      throw e;
    }
  }

  /** The rooms joined. */
  get joined(): ReadonlyMap<string, Room> {
    return this.rooms;
  }

  /** What this client reports (outside a browser, or to override it). */
  setActivity(kind: Activity): void {
    this.browser?.stop();
    this.browser = null;
    this.activityChanged(kind);
  }

  /** The activity reported now. */
  get activity(): Activity {
    return this.activityNow;
  }

  /** Declares readiness and/or capabilities from now on. */
  async setReadiness(d: { readiness?: Readiness; capabilities?: string[] }): Promise<void> {
    await this.request("presence:readiness", d);
    if (d.readiness) this.declared.readiness = d.readiness;
    if (d.capabilities) this.declared.capabilities = d.capabilities;
  }

  /** Whether `userId` can be reached now for `need` (see docs/protocol.md). */
  async reachability(userId: string, need: string[] = []): Promise<Reach> {
    return this.request<Reach>("presence:reachability", { userId, need });
  }

  /** Waits until `userId` is reachable now for `need` (their sessions hear
   * of it), or until `ttlMs` passes. Resolves either way; `signal` cancels. */
  async intend(
    userId: string,
    need: string[] = [],
    opts: { ttlMs?: number; note?: string; signal?: AbortSignal } = {},
  ): Promise<IntentOutcome> {
    const ack = await this.request<{ intentId: string }>("presence:intent", {
      userId, need, ttlMs: opts.ttlMs ?? 60_000, ...(opts.note ? { note: opts.note } : {}),
    });
    const id = ack.intentId;
    return new Promise<IntentOutcome>((resolve, reject) => {
      const early = this.early.get(id);
      if (early) {
        this.early.delete(id);
        resolve(early);
        return;
      }
      this.waiting.set(id, resolve);
      opts.signal?.addEventListener("abort", () => {
        this.waiting.delete(id);
        this.request("presence:intent_cancel", { intentId: id }).catch(() => {});
        reject(new PresenceError("cancelled", "the intent was cancelled"));
      }, { once: true });
    });
  }

  /** Ends the session (observers see it leave at once) and closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.socket.connected && this.sessionId) {
      await this.request("presence:leave", {}).catch(() => {});
      this.store.removeItem(this.key);
    }
    this.stopHeartbeat();
    this.browser?.stop();
    this.socket.disconnect();
    this.setState("closed");
  }

  /** @internal Sends `event` and waits for its ack; a refusal is a PresenceError. */
  async request<T>(event: string, payload: unknown): Promise<T> {
    let ack: { ok: boolean; error?: { code: string; message: string; field?: string } };
    try {
      ack = await this.socket.timeout(this.opts.timeoutMs ?? 10_000).emitWithAck(event, payload);
    } catch {
      throw new PresenceError("timeout", `no answer to ${event}`);
    }
    if (!ack || ack.ok !== true) throw PresenceError.from(ack?.error);
    return ack as T;
  }

  /** @internal A room left. */
  forget(room: Room): void {
    this.rooms.delete(room.id);
  }

  private joinPayload(room: Room): Record<string, unknown> {
    return {
      roomId: room.id,
      ...(room.myState ? { state: room.myState } : {}),
      ...(room.options.view ? { view: room.options.view } : {}),
    };
  }

  private setState(s: ConnectionState): void {
    if (this.state === s) return;
    this.state = s;
    this.emit("connection", s);
  }

  private listen(): void {
    const s = this.socket;
    s.on("connect", () => void this.hello());
    s.on("disconnect", (reason: string) => {
      this.stopHeartbeat();
      if (this.closed) return;
      // The node closed the connection because the token expired: connect
      // again, with a fresh token from the token function.
      if (reason === "io server disconnect" && this.renewToken) {
        this.renewToken = false;
        this.setState("reconnecting");
        s.connect();
        return;
      }
      this.setState(s.active ? "reconnecting" : "closed");
    });
    s.on("connect_error", (e: Error) => {
      this.emit("error", new PresenceError(e.message.startsWith("unauthorized") ? "unauthorized" : "connect_error", e.message));
      if (!s.active && !this.closed) this.setState("closed");
    });
    s.on("presence:error", (m: { error?: { code: string; message: string } }) => {
      const e = PresenceError.from(m?.error);
      this.emit("error", e);
      // Taken over by another connection (a duplicated tab copies its session
      // id): this one starts a session of its own.
      if (e.code === "stale_epoch") {
        this.store.removeItem(this.key);
        this.reconnect();
      }
      // A backend ended the session (the moderation API): the node closes
      // the connection, and no new session starts by itself.
      if (e.code === "kicked") this.kicked();
      // The token expired: the node closes the connection; a token function
      // gives a fresh one.
      if (e.code === "unauthorized" && typeof this.opts.token === "function") this.renewToken = true;
    });
    s.on("presence:removed", (m: { roomId: string; reason?: string }) =>
      this.rooms.get(m.roomId)?.removedByServer(m.reason ?? "removed"));
    s.on("presence:snapshot", (m: Snapshot) => this.rooms.get(m.roomId)?.snapshot(m));
    s.on("presence:diff", (m: DiffMessage) => this.rooms.get(m.roomId)?.diff(m));
    s.on("presence:counts", (m: { roomId: string; counts: RoomCounts }) => this.rooms.get(m.roomId)?.countsChanged(m.counts));
    s.on("presence:view", (m: { roomId: string; view: ViewKind; counts: RoomCounts; reason?: string }) =>
      this.rooms.get(m.roomId)?.viewChanged(m.view, m.counts, m.reason));
    s.on("presence:signal", (m: RoomSignal & { roomId: string }) => this.rooms.get(m.roomId)?.signalled(m));
    s.on("presence:intent_received", (m: IntentReceived) => this.emit("intent", m));
    s.on("presence:intent_cancelled", (m: IntentReceived) => this.emit("intentCancelled", m));
    s.on("presence:reachable", (m: { intentId: string; userId: string; sessionId: string }) =>
      this.settle({ intentId: m.intentId, userId: m.userId, reachable: true, sessionId: m.sessionId }));
    s.on("presence:intent_expired", (m: { intentId: string; userId: string }) =>
      this.settle({ intentId: m.intentId, userId: m.userId, reachable: false }));
  }

  /** The session was ended by a backend: closed for good, its id dropped. */
  private kicked(): void {
    if (this.closed) return;
    this.closed = true;
    this.store.removeItem(this.key);
    this.stopHeartbeat();
    this.browser?.stop();
    for (const room of [...this.rooms.values()]) room.removedByServer("kicked");
    this.socket.disconnect();
    this.setState("closed");
  }

  private settle(o: IntentOutcome): void {
    const w = this.waiting.get(o.intentId);
    if (w) {
      this.waiting.delete(o.intentId);
      w(o);
    } else {
      // Before its ack was read (or for an intent of an earlier page load).
      this.early.set(o.intentId, o);
      setTimeout(() => this.early.delete(o.intentId), 60_000);
    }
  }

  private reconnect(): void {
    if (this.closed) return;
    this.socket.disconnect();
    this.socket.connect();
  }

  private async hello(): Promise<void> {
    const stored = this.store.getItem(this.key);
    const hello: Record<string, unknown> = {
      activity: this.activityNow,
      ...(this.opts.userId ? { userId: this.opts.userId } : {}),
      ...(this.opts.handle ? { handle: this.opts.handle } : {}),
      ...(this.opts.meta ? { meta: this.opts.meta } : {}),
      ...(this.declared.readiness ? { readiness: this.declared.readiness } : {}),
      ...(this.declared.capabilities ? { capabilities: this.declared.capabilities } : {}),
      ...(stored ? { sessionId: stored } : {}),
    };
    let ack: HelloAck;
    try {
      ack = await this.request<HelloAck>("presence:hello", hello);
    } catch (e) {
      const err = e as PresenceError;
      if (err.code === "kicked") {
        // The stored session was ended by a backend while this client was
        // away: it is not taken up again.
        this.emit("error", err);
        this.kicked();
        if (this.helloCount === 0) this.helloFailed(err);
        return;
      }
      if (stored && ["forbidden", "stale_epoch", "bad_request"].includes(err.code)) {
        // The stored id is not this user's to resume: start a new session
        // (the refusal is still reported).
        this.emit("error", err);
        this.store.removeItem(this.key);
        return this.hello();
      }
      this.emit("error", err);
      if (this.helloCount === 0) this.helloFailed(err);
      return;
    }
    const again = this.helloCount++ > 0;
    this.sessionId = ack.sessionId;
    this.userId = ack.userId;
    this.epoch = ack.epoch;
    this.timings = ack.config;
    this.resumed = ack.resumed;
    this.nodeId = ack.nodeId;
    this.store.setItem(this.key, ack.sessionId);
    this.browser?.setIdleAfter(ack.config.idleAfterMs);
    this.startHeartbeat(ack.config.heartbeatIntervalMs);
    this.setState(again && ack.resumed ? "resumed" : "connected");
    if (!again) this.helloDone();
    // A resumed session is still in its rooms (their snapshots come as
    // presence:snapshot); rooms it is no longer in are joined again.
    for (const room of this.rooms.values()) {
      if (ack.resumed && ack.rooms.includes(room.id)) continue;
      this.request<JoinAck>("presence:join", this.joinPayload(room))
        .then((j) => room.opened(j))
        .catch((e) => this.emit("error", e as PresenceError));
    }
  }

  private activityChanged(a: Activity): void {
    if (a === this.activityNow) return;
    this.activityNow = a;
    this.emit("activity", a);
    this.beat();
  }

  private startHeartbeat(everyMs: number): void {
    this.stopHeartbeat();
    this.heartbeatTimer = setInterval(() => this.beat(), everyMs);
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  private beat(): void {
    if (this.epoch === null || !this.socket.connected) return;
    this.request<{ epoch: number }>("presence:heartbeat", { epoch: this.epoch, activity: this.activityNow })
      .then((a) => { this.epoch = a.epoch; })
      .catch((e: PresenceError) => {
        if (e.code === "no_session" || e.code === "stale_epoch") {
          if (e.code === "stale_epoch") this.store.removeItem(this.key);
          this.reconnect();
        }
      });
  }
}
