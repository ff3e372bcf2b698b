// What the client's test files share: clients with fast reconnects that a
// test closes at its end, and waiting on a client's or a room's events.
import { createPresence } from "../dist/index.js";

const open = [];

/** A client of `url` (fast reconnects, websocket only); `closeAll` ends it. */
export function client(url, opts = {}) {
  const p = createPresence({
    url, activity: "active",
    socket: { transports: ["websocket"], forceNew: true, reconnectionDelay: 50, reconnectionDelayMax: 200 },
    ...opts,
  });
  open.push(p);
  return p;
}

/** Ends every client made since the last call. */
export async function closeAll() {
  for (const c of open.splice(0)) await c.close().catch(() => {});
}

/** Resolves when `pred()` holds (checked now and after each `event` of `emitter`), or rejects after `ms`. */
export function until(emitter, event, pred, ms = 8000) {
  return new Promise((resolve, reject) => {
    if (pred()) return resolve();
    const timer = setTimeout(() => { off(); reject(new Error(`timed out waiting on ${event}`)); }, ms);
    const off = emitter.on(event, () => { if (pred()) { clearTimeout(timer); off(); resolve(); } });
  });
}
