// A room's view as a client holds it: a snapshot, then diffs applied in seq
// order. Pure: no socket, no timers, so that every rule is unit-tested.

import type { DiffMessage, Entries, SessionPresence, Snapshot, UserPresence, UserStatus } from "./types.js";

/** What one applied message changed, at the user and session level. */
export interface ViewChange {
  /** The entries that changed: a patch (the fields that changed, or the whole new entry) or `null` for gone. */
  users: Record<string, Partial<UserPresence> | null>;
  sessions: Record<string, Partial<SessionPresence> | null>;
  /** Users who came in (their first session) and who left (their last), and whose status changed. */
  joined: UserPresence[];
  left: string[];
  status: Array<{ user: UserPresence; from: UserStatus }>;
}

/** Whether a message was applied, or why not. */
export type Applied = "applied" | "stale" | "incomplete";

type Entry = Record<string, unknown>;

function clone<T>(o: T): T {
  return JSON.parse(JSON.stringify(o)) as T;
}

/** Applies one patch to a map (null: gone; a null field: removed). */
function patch<T>(map: Map<string, T>, key: string, p: Partial<T> | null): void {
  if (p === null) {
    map.delete(key);
    return;
  }
  const e = { ...((map.get(key) as Entry | undefined) ?? {}) } as Entry;
  for (const [f, v] of Object.entries(p as Entry)) {
    if (v === null) delete e[f];
    else e[f] = v;
  }
  map.set(key, e as T);
}

/** The patches that take `before` to `after` (whole entries for new ones). */
function delta<T>(before: Map<string, T>, after: Map<string, T>): Record<string, Partial<T> | null> {
  const out: Record<string, Partial<T> | null> = {};
  for (const [k, v] of after) {
    const old = before.get(k) as Entry | undefined;
    if (!old) {
      out[k] = v as Partial<T>;
      continue;
    }
    const p: Entry = {};
    const now = v as Entry;
    for (const f of new Set([...Object.keys(old), ...Object.keys(now)])) {
      if (JSON.stringify(old[f]) !== JSON.stringify(now[f])) p[f] = f in now ? now[f] : null;
    }
    if (Object.keys(p).length) out[k] = p as Partial<T>;
  }
  for (const k of before.keys()) if (!after.has(k)) out[k] = null;
  return out;
}

/** A room's users and sessions at a `seq`. */
export class RoomState {
  users = new Map<string, UserPresence>();
  sessions = new Map<string, SessionPresence>();
  seq = 0;
  /** A snapshot in parts being assembled, and the view it will replace. */
  private pending: { seq: number; parts: number; got: number; users: Map<string, UserPresence>; sessions: Map<string, SessionPresence> } | null = null;
  private diffParts: { before: { users: Map<string, UserPresence>; sessions: Map<string, SessionPresence> }; seq: number } | null = null;

  /** Replaces the view with a snapshot (or its first part). Returns the change
   * against what was held: a member that stayed is not a leave and a join. */
  reset(snap: Snapshot | (Entries & { seq: number; part?: number; parts?: number })): { applied: Applied; change?: ViewChange } {
    const parts = snap.parts ?? 1;
    const part = snap.part ?? 1;
    if (part === 1) {
      this.pending = { seq: snap.seq, parts, got: 0, users: new Map(), sessions: new Map() };
    }
    const p = this.pending;
    if (!p || p.seq !== snap.seq) return { applied: "stale" };
    for (const [k, v] of Object.entries(snap.users ?? {})) p.users.set(k, clone(v));
    for (const [k, v] of Object.entries(snap.sessions ?? {})) p.sessions.set(k, clone(v));
    p.got += 1;
    if (p.got < p.parts) return { applied: "incomplete" };
    this.pending = null;
    const before = { users: this.users, sessions: this.sessions };
    this.users = p.users;
    this.sessions = p.sessions;
    this.seq = p.seq;
    return { applied: "applied", change: this.change(before) };
  }

  /** Applies a diff (or one of its parts) in seq order: one older than the
   * view is dropped. The change comes with the last part. */
  apply(d: DiffMessage): { applied: Applied; change?: ViewChange } {
    if (d.seq < this.seq) return { applied: "stale" };
    const part = d.part ?? 1;
    const parts = d.parts ?? 1;
    if (part === 1 || !this.diffParts) {
      this.diffParts = { before: { users: new Map(this.users), sessions: new Map(this.sessions) }, seq: d.seq };
    }
    for (const [k, p] of Object.entries(d.users ?? {})) patch(this.users, k, p);
    for (const [k, p] of Object.entries(d.sessions ?? {})) patch(this.sessions, k, p);
    this.seq = d.seq;
    if (part < parts) return { applied: "incomplete" };
    const before = this.diffParts.before;
    this.diffParts = null;
    return { applied: "applied", change: this.change(before) };
  }

  private change(before: { users: Map<string, UserPresence>; sessions: Map<string, SessionPresence> }): ViewChange {
    const change: ViewChange = {
      users: delta(before.users, this.users),
      sessions: delta(before.sessions, this.sessions),
      joined: [],
      left: [],
      status: [],
    };
    for (const [k, u] of this.users) {
      const old = before.users.get(k);
      if (!old) change.joined.push(u);
      else if (old.status !== u.status) change.status.push({ user: u, from: old.status });
    }
    for (const k of before.users.keys()) if (!this.users.has(k)) change.left.push(k);
    return change;
  }

  /** Whether a change changed anything. */
  static isEmpty(c: ViewChange): boolean {
    return !Object.keys(c.users).length && !Object.keys(c.sessions).length;
  }
}
