// 10,000 random and malformed payloads over real sockets: the node never
// panics, answers every acked one with a well-formed ack, and the clients
// minding their own business stay connected with their presence unchanged.
// The generator is seeded (E2E_FUZZ_SEED), so a failure can be replayed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startNode, connect, closeAll, call, enter, getJson } from "./helpers.js";

const TOTAL = 10000;
const SOCKETS = 4;
const SEED = Number(process.env.E2E_FUZZ_SEED || Date.now() % 2 ** 31);
const CODES = new Set([
  "bad_request", "payload_too_large", "unauthorized", "forbidden", "forbidden_room", "not_joined", "no_session",
  "stale_epoch", "rate_limited", "limit_exceeded", "unavailable", "internal",
]);

/** mulberry32: a small seeded PRNG. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(SEED);
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const int = (n) => Math.floor(rand() * n);

const STRINGS = [
  "", " ", "calm", "lobby", "a".repeat(129), "a b", "é", "\u0000", "\u202e", "💥", "{", "null", "__proto__",
  "constructor", "presence:hello", "x".repeat(5000), "../../etc/passwd", "%s%s%n", "<script>", "\ud800",
];
const NUMBERS = [0, -1, 1, 1.5, 2 ** 53, -(2 ** 63), 1e308, Number.MAX_SAFE_INTEGER, 1795442633207];

/** A random JSON-ish value, nested up to `depth`. */
function value(depth = 3) {
  switch (int(depth > 0 ? 9 : 6)) {
    case 0: return null;
    case 1: return rand() < 0.5;
    case 2: return pick(NUMBERS);
    case 3: return pick(STRINGS);
    case 4: return "s".repeat(int(3000));
    case 5: return pick(STRINGS) + int(100);
    case 6: return Array.from({ length: int(5) }, () => value(depth - 1));
    case 7: return Buffer.from(Array.from({ length: int(64) }, () => int(256)));
    default: {
      const o = {};
      for (let i = 0; i < int(6); i++) {
        const key = pick(["roomId", "epoch", "patch", "state", "data", "userId", "sessionId", "handle", "meta", "activity", pick(STRINGS)]);
        // An own property even for "__proto__" (plain assignment would set the prototype).
        Object.defineProperty(o, key, { value: value(depth - 1), enumerable: true, writable: true, configurable: true });
      }
      return o;
    }
  }
}

/** Payloads shaped like the real ones, with one field wrong, or none at all. */
function payload(epoch) {
  // Now and then one over the node's message size limit: it closes that connection.
  if (rand() < 0.005) return [{ roomId: "calm", data: "y".repeat(20000) }];
  switch (int(8)) {
    case 0: return [];
    case 1: return [value()];
    case 2: return [value(), value()];
    case 3: return [{ roomId: pick(["calm", "lobby", pick(STRINGS)]), state: value(2) }];
    case 4: return [{ epoch: rand() < 0.5 ? epoch : value(0), activity: pick(["active", "idle", "background", value(0)]) }];
    case 5: return [{ roomId: pick(["calm", "lobby"]), epoch, patch: value(2) }];
    case 6: return [{ userId: pick(["fuzzer", "observer-0", value(0)]), sessionId: value(0), meta: value(2), handle: value(0) }];
    default: return [{ roomId: pick(["calm", "lobby"]), data: value(3) }];
  }
}

const HANDLED = new Set([
  "presence:hello", "presence:join", "presence:heartbeat", "presence:state", "presence:signal", "presence:leave",
]);
const EVENTS = [
  "presence:hello", "presence:join", "presence:heartbeat", "presence:state", "presence:signal", "presence:leave",
  "presence:snapshot", "presence:diff", "nope", "",
];

let node;
before(async () => {
  // Rate limits off, so that every payload reaches the handlers.
  node = await startNode({ "--rate-limit-per-sec": 1000000, "--signal-rate-per-sec": 1000000, "--max-payload-bytes": 16384 });
});
after(async () => {
  closeAll();
  await node?.stop();
});

test(`10,000 random and malformed payloads (seed ${SEED}) harm nobody`, { timeout: 180000 }, async () => {
  console.log(`fuzz seed ${SEED} (E2E_FUZZ_SEED=${SEED} replays it)`);
  const observers = [];
  for (let i = 0; i < 3; i++) {
    const s = await connect(node.url);
    const e = await enter(s, `observer-${i}`, "calm", {});
    await call(s, "presence:state", { roomId: "calm", epoch: e.epoch, patch: { color: `c${i}` } });
    let dropped = false;
    s.on("disconnect", () => { dropped = true; });
    observers.push({ s, e, dropped: () => dropped });
  }
  const mine = (view) => Object.fromEntries(observers.map((o) => {
    const { status, state } = view.sessions[o.e.sessionId];
    return [o.e.sessionId, { status, state }];
  }));
  const before = mine((await getJson(`${node.url}/api/rooms/calm/presence`)).body);

  let sent = 0;
  let acked = 0;
  let reconnects = 0;
  const badAcks = [];
  const fuzzer = async () => {
    let s = null;
    let epoch = 1;
    while (sent < TOTAL) {
      if (!s || !s.connected) {
        if (s) reconnects++;
        s?.close();
        s = io(node.url, { forceNew: true, reconnection: false, transports: [pick(["websocket", "polling"])] });
        await new Promise((r) => { s.once("connect", r); s.once("connect_error", r); });
        if (!s.connected) continue;
        if (rand() < 0.7) {
          const h = await call(s, "presence:hello", { userId: `fuzzer-${int(50)}` }).catch(() => null);
          if (h?.ok) epoch = h.epoch;
        }
      }
      const event = pick(EVENTS);
      const args = payload(epoch);
      sent++;
      // Events the node does not handle never get an ack: send those without one.
      if (rand() < 0.5 || !HANDLED.has(event)) {
        s.emit(event, ...args);
        continue;
      }
      try {
        const ack = await s.timeout(2000).emitWithAck(event, ...args);
        acked++;
        const wellFormed = ack && typeof ack === "object" && (ack.ok === true
          || (ack.ok === false && CODES.has(ack.error?.code) && typeof ack.error?.message === "string"));
        if (!wellFormed) badAcks.push({ event, args, ack });
      } catch {
        // No ack: an event the node does not handle, or the connection was closed
        // (a payload over the size limit closes that connection only).
      }
    }
    s?.close();
  };
  await Promise.all(Array.from({ length: SOCKETS }, fuzzer));
  console.log(`sent ${sent} payloads, ${acked} acked, ${reconnects} fuzz connections closed by the node and reopened`);

  assert.deepEqual(badAcks.slice(0, 5), [], "every ack is { ok: true } or an error with a known code and a message");
  assert.doesNotMatch(node.output(), /panicked/);
  assert.equal(node.proc.exitCode, null, "the node is up");
  assert.equal((await getJson(`${node.url}/healthz`)).status, 200);
  for (const o of observers) {
    assert.equal(o.dropped(), false, "observers stay connected");
    assert.equal((await call(o.s, "presence:heartbeat", { epoch: o.e.epoch })).ok, true);
  }
  const afterView = (await getJson(`${node.url}/api/rooms/calm/presence`)).body;
  assert.deepEqual(mine(afterView), before, "their presence is unchanged");
});
