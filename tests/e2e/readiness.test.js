// e2e: own-redis (runs once, in the memory pass)
// Readiness, reachability and intents across two nodes on one Redis: a
// caller waits for a callee to be reachable now instead of ringing.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { startRedis, startNode, restartNode, connect, closeAll, call, waitFor, sleep, enter, getJson } from "./helpers.js";

let redis, a, b;
const flags = () => ({ "--redis-url": redis.url, "--emit-debounce-ms": 50, "--key-prefix": "ready" });
before(async () => {
  redis = await startRedis();
  a = await startNode({ ...flags(), "--node-id": "node-a" });
  b = await startNode({ ...flags(), "--node-id": "node-b" });
});
after(async () => { closeAll(); await a?.stop(); await b?.stop(); await redis?.stop(); });
afterEach(() => closeAll());

/** A caller on node A and a callee on node B who share `room`. */
async function pair(room, callee = "bob", extra = {}) {
  const ada = await connect(a.url);
  const ea = await enter(ada, `ada-${room}`, room);
  const bob = await connect(b.url);
  const eb = await enter(bob, callee, room, { capabilities: ["audio", "video"], ...extra });
  return { ada, ea, bob, eb };
}

const reachOf = (s, userId, need) => call(s, "presence:reachability", { userId, need });
const count = (s, event) => s.received.filter((r) => r.event === event).length;

test("readiness and capabilities are session facts that room views show", async () => {
  const { ada, eb, bob } = await pair("r-facts");
  const snap = await waitFor(ada, "presence:diff", (d) => d.sessions[eb.sessionId]);
  assert.deepEqual(snap.sessions[eb.sessionId].capabilities, ["audio", "video"]);
  assert.equal(snap.sessions[eb.sessionId].readiness, undefined, "available is left out");
  const from = ada.received.length;
  assert.deepEqual(await call(bob, "presence:readiness", { readiness: "busy" }), { ok: true });
  const d = await waitFor(ada, "presence:diff", (d) => d.sessions[eb.sessionId]?.readiness === "busy", { from });
  assert.equal(d.users.bob, undefined, "the user's entry does not change");
  const room = await getJson(`${a.url}/api/rooms/r-facts/presence`);
  assert.equal(room.body.sessions[eb.sessionId].readiness, "busy");
});

test("a callee whose tab goes hidden is soon; back in front, now, and the intent fires once", async () => {
  const { ada, bob, eb } = await pair("r-hidden");
  let r = await reachOf(ada, "bob", ["audio"]);
  assert.deepEqual([r.ok, r.reachability, r.reason, r.session, r.confidence], [true, "now", "ready", eb.sessionId, "high"]);
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "background" });
  r = await reachOf(ada, "bob", "audio");
  assert.deepEqual([r.reachability, r.reason], ["soon", "background"]);
  const made = await call(ada, "presence:intent", { userId: "bob", need: ["audio"], ttlMs: 10000, note: "Ada would like to call" });
  assert.equal(made.ok, true);
  const got = await waitFor(bob, "presence:intent_received", (m) => m.intentId === made.intentId);
  assert.deepEqual([got.from, got.need, got.note], ["ada-r-hidden", ["audio"], "Ada would like to call"]);
  await sleep(300);
  assert.equal(count(ada, "presence:reachable"), 0, "not while hidden");
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "active" });
  const ready = await waitFor(ada, "presence:reachable", (m) => m.intentId === made.intentId);
  assert.deepEqual([ready.userId, ready.sessionId, ready.need], ["bob", eb.sessionId, ["audio"]]);
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "background" });
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "active" });
  await sleep(400);
  assert.equal(count(ada, "presence:reachable"), 1, "once");
  assert.equal(count(ada, "presence:intent_expired"), 0);
});

test("an intent for a user reachable now already fires right after its ack", async () => {
  const { ada, eb } = await pair("r-now", "bob-now");
  const before = ada.received.length;
  const made = await call(ada, "presence:intent", { userId: "bob-now", need: ["video"], ttlMs: 10000 });
  const ready = await waitFor(ada, "presence:reachable", (m) => m.intentId === made.intentId);
  assert.equal(ready.sessionId, eb.sessionId);
  assert.ok(ada.received.length > before);
});

test("busy during a call, then available, fires the intent", async () => {
  const { ada, bob } = await pair("r-busy", "bob-busy", { readiness: "busy" });
  const r = await reachOf(ada, "bob-busy", ["audio"]);
  assert.deepEqual([r.reachability, r.reason], ["unlikely", "busy"]);
  const made = await call(ada, "presence:intent", { userId: "bob-busy", need: ["audio"], ttlMs: 10000 });
  await sleep(200);
  assert.equal(count(ada, "presence:reachable"), 0);
  await call(bob, "presence:readiness", { readiness: "available" });
  await waitFor(ada, "presence:reachable", (m) => m.intentId === made.intentId);
});

test("a callee with two devices has the capable foreground one ranked first", async () => {
  const ada = await connect(a.url);
  await enter(ada, "ada-dev", "r-dev");
  const phone = await connect(a.url);
  const ep = await enter(phone, "bob-dev", "r-dev", { capabilities: ["audio"] });
  const laptop = await connect(b.url);
  const el = await enter(laptop, "bob-dev", "r-dev", { capabilities: ["audio", "video"] });
  await call(phone, "presence:heartbeat", { epoch: ep.epoch, activity: "background" });
  let r = await reachOf(ada, "bob-dev", ["audio"]);
  assert.deepEqual([r.reachability, r.session], ["now", el.sessionId], "the laptop in front");
  r = await reachOf(ada, "bob-dev", ["video"]);
  assert.deepEqual([r.reachability, r.session], ["now", el.sessionId]);
  await call(laptop, "presence:heartbeat", { epoch: el.epoch, activity: "background" });
  await call(phone, "presence:heartbeat", { epoch: ep.epoch, activity: "active" });
  r = await reachOf(ada, "bob-dev", ["audio"]);
  assert.deepEqual([r.reachability, r.session], ["now", ep.sessionId], "now the phone");
  r = await reachOf(ada, "bob-dev", ["video"]);
  assert.deepEqual([r.reachability, r.reason, r.session], ["soon", "background", el.sessionId], "only the laptop has video");
  r = await reachOf(ada, "bob-dev", ["screen"]);
  assert.deepEqual([r.reachability, r.reason, r.session], ["no", "missing_capability", null]);
  const http = await getJson(`${b.url}/api/users/bob-dev/reachability?need=audio`);
  assert.deepEqual([http.status, http.body.reachability, http.body.session], [200, "now", ep.sessionId]);
});

test("an intent expires at its TTL", async () => {
  const { ada, bob, eb } = await pair("r-exp", "bob-exp");
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "background" });
  const made = await call(ada, "presence:intent", { userId: "bob-exp", need: ["audio"], ttlMs: 400 });
  const gone = await waitFor(ada, "presence:intent_expired", (m) => m.intentId === made.intentId);
  assert.equal(gone.userId, "bob-exp");
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "active" });
  await sleep(300);
  assert.equal(count(ada, "presence:reachable"), 0, "an expired intent never fires");
});

test("a caller cancels an intent; the callee hears of it", async () => {
  const { ada, bob, eb } = await pair("r-cancel", "bob-cancel");
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "background" });
  const made = await call(ada, "presence:intent", { userId: "bob-cancel", ttlMs: 10000 });
  assert.deepEqual(await call(ada, "presence:intent_cancel", { intentId: made.intentId }), { ok: true });
  await waitFor(bob, "presence:intent_cancelled", (m) => m.intentId === made.intentId);
  const again = await call(ada, "presence:intent_cancel", { intentId: made.intentId });
  assert.equal(again.error.code, "not_found");
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "active" });
  await sleep(300);
  assert.equal(count(ada, "presence:reachable"), 0);
});

test("a caller that ends its session withdraws its intents", async () => {
  const { ada, bob, eb } = await pair("r-end", "bob-end");
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "background" });
  const made = await call(ada, "presence:intent", { userId: "bob-end", ttlMs: 10000 });
  await waitFor(bob, "presence:intent_received", (m) => m.intentId === made.intentId);
  await call(ada, "presence:leave", {});
  await waitFor(bob, "presence:intent_cancelled", (m) => m.intentId === made.intentId);
});

test("the caller's node restarts and the intent still fires on its resumed session", async () => {
  const { ada, ea, bob, eb } = await pair("r-restart", "bob-restart");
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "background" });
  const made = await call(ada, "presence:intent", { userId: "bob-restart", need: ["audio"], ttlMs: 15000 });
  ada.disconnect();
  await a.stop();
  // Ready while the caller's node is down: delivered when its session is back.
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "active" });
  await sleep(200);
  const back = await connect(b.url);
  const hello = await call(back, "presence:hello", { userId: "ada-r-restart", sessionId: ea.sessionId });
  assert.equal(hello.resumed, true);
  const ready = await waitFor(back, "presence:reachable", (m) => m.intentId === made.intentId);
  assert.equal(ready.sessionId, eb.sessionId);
  await restartNode(a);
});

test("the callee's node restarts and the intent fires when the callee is back", async () => {
  const { ada, bob, eb } = await pair("r-restart2", "bob-restart2");
  await call(bob, "presence:heartbeat", { epoch: eb.epoch, activity: "background" });
  const made = await call(ada, "presence:intent", { userId: "bob-restart2", need: ["audio"], ttlMs: 15000 });
  bob.disconnect();
  await b.stop();
  await restartNode(b);
  const again = await connect(b.url);
  const hello = await call(again, "presence:hello", { userId: "bob-restart2", sessionId: eb.sessionId, activity: "active" });
  assert.equal(hello.resumed, true);
  await waitFor(ada, "presence:reachable", (m) => m.intentId === made.intentId);
});

test("a user who shares no room with the asker is refused", async () => {
  const ada = await connect(a.url);
  await enter(ada, "ada-alone", "r-alone-1");
  const eve = await connect(b.url);
  await enter(eve, "eve", "r-alone-2", { capabilities: ["audio"] });
  for (const [event, payload] of [["presence:reachability", { userId: "eve", need: ["audio"] }], ["presence:intent", { userId: "eve", ttlMs: 1000 }]]) {
    const r = await call(ada, event, payload);
    assert.equal(r.ok, false);
    assert.equal(r.error.code, "forbidden", event);
  }
  const ghost = await call(ada, "presence:reachability", { userId: "nobody-at-all" });
  assert.equal(ghost.error.code, "forbidden", "an offline stranger is refused the same way");
  assert.equal(count(eve, "presence:intent_received"), 0);
});

test("bad input is a bad_request naming the field", async () => {
  const s = await connect(a.url);
  const h = await call(s, "presence:hello", { userId: "x", readiness: "sleepy" });
  assert.deepEqual([h.error.code, h.error.field], ["bad_request", "readiness"]);
  const h2 = await call(s, "presence:hello", { userId: "x", capabilities: ["Audio!"] });
  assert.deepEqual([h2.error.code, h2.error.field], ["bad_request", "capabilities"]);
  await enter(s, "x", "r-bad");
  const cases = [
    ["presence:readiness", {}, "readiness"],
    ["presence:readiness", { capabilities: "audio" }, "capabilities"],
    ["presence:reachability", { need: ["audio"] }, "userId"],
    ["presence:reachability", { userId: "x", need: [1] }, "need"],
    ["presence:intent", { userId: "y" }, "ttlMs"],
    ["presence:intent", { userId: "y", ttlMs: 10_000_000 }, "ttlMs"],
    ["presence:intent", { userId: "y", ttlMs: 1000, note: 5 }, "note"],
    ["presence:intent", { userId: "x", ttlMs: 1000 }, "userId"],
    ["presence:intent_cancel", {}, "intentId"],
  ];
  for (const [event, payload, field] of cases) {
    const r = await call(s, event, payload);
    assert.deepEqual([r.ok, r.error?.code, r.error?.field], [false, "bad_request", field], `${event} ${JSON.stringify(payload)}`);
  }
  const http = await getJson(`${a.url}/api/users/x/reachability?need=Bad!`);
  assert.deepEqual([http.status, http.body.error.field], [400, "need"]);
  const post = await getJson(`${a.url}/api/intents`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ userId: "x", ttlMs: 1000 }) });
  assert.deepEqual([post.status, post.body.error.field], [400, "from"]);
});

test("an intent made over HTTP reaches the callee's sessions", async () => {
  const bob = await connect(b.url);
  await enter(bob, "bob-http", "r-http");
  const post = await getJson(`${a.url}/api/intents`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ from: "support", userId: "bob-http", need: "audio", ttlMs: 5000, note: "Support would like to call" }),
  });
  assert.equal(post.status, 200, JSON.stringify(post.body));
  const got = await waitFor(bob, "presence:intent_received", (m) => m.intentId === post.body.intentId);
  assert.deepEqual([got.from, got.note], ["support", "Support would like to call"]);
});
