// React bindings: a provider that holds one presence connection, and hooks
// that render a room's live view and this session.

import { createContext, createElement, useContext, useEffect, useState, type ReactNode } from "react";

import type { Presence } from "./presence.js";
import type { JoinOptions, Room } from "./room.js";
import type { RoomCounts, SessionPresence, UserPresence, ViewKind } from "./types.js";

const Ctx = createContext<Presence | null>(null);

/** Makes `presence` available to the hooks below it. */
export function PresenceProvider(props: { presence: Presence; children?: ReactNode }) {
  return createElement(Ctx.Provider, { value: props.presence }, props.children);
}

/** The provider's presence connection. */
export function usePresenceClient(): Presence {
  const p = useContext(Ctx);
  if (!p) throw new Error("usePresence needs a <PresenceProvider>");
  return p;
}

/** A room's view as a hook renders it. */
export interface RoomSnapshot {
  room: Room | null;
  users: UserPresence[];
  sessions: SessionPresence[];
  counts: RoomCounts | null;
  view: ViewKind | null;
  error: Error | null;
}

function read(room: Room | null, error: Error | null): RoomSnapshot {
  return {
    room,
    users: room ? [...room.users.values()] : [],
    sessions: room ? [...room.sessions.values()] : [],
    counts: room ? room.counts : null,
    view: room ? room.view : null,
    error,
  };
}

/** Joins `roomId` while the component is mounted and renders its live view. */
export function usePresence(roomId: string, options: JoinOptions = {}): RoomSnapshot {
  const presence = usePresenceClient();
  const [snap, setSnap] = useState<RoomSnapshot>(() => read(null, null));
  const key = JSON.stringify(options);
  useEffect(() => {
    let room: Room | null = null;
    let gone = false;
    const offs: Array<() => void> = [];
    presence.join(roomId, options).then(
      (r) => {
        if (gone) {
          r.leave().catch(() => {});
          return;
        }
        room = r;
        const update = () => setSnap(read(r, null));
        offs.push(r.on("change", update), r.on("counts", update), r.on("view", update));
        update();
      },
      (e: Error) => !gone && setSnap(read(null, e)),
    );
    return () => {
      gone = true;
      for (const off of offs) off();
      room?.leave().catch(() => {});
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [presence, roomId, key]);
  return snap;
}

/** This session: its id, user and connection state. */
export function useSelf(): { sessionId: string | null; userId: string | null; connection: Presence["state"] } {
  const presence = usePresenceClient();
  const [, bump] = useState(0);
  useEffect(() => presence.on("connection", () => bump((n) => n + 1)), [presence]);
  useEffect(() => {
    presence.ready().then(() => bump((n) => n + 1), () => {});
  }, [presence]);
  return { sessionId: presence.sessionId, userId: presence.userId, connection: presence.state };
}
