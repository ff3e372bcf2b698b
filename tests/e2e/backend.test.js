// What backends get: lifecycle events by webhook (signed, once per id),
// last seen, and the moderation API; on the pass's store (memory, or a
// redis-server of the node's own), one node.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  FAST, startNode, startReceiver, connect, closeAll, call, waitFor, enter, getJson, until, sleep, keepAlive,
} from "./helpers.js";

const SECRET = "e2e-webhook-secret-0123";
let node, hooks;

before(async () => {
  hooks = await startReceiver(SECRET);
  node = await startNode({
    ...FAST,
    "--webhook-url": hooks.url,
    "--webhook-secret": SECRET,
    "--webhook-batch-wait-ms": 100,
  });
});
after(async () => { closeAll(); await node?.stop(); await hooks?.stop(); });
afterEach(() => closeAll());

const del = (path) => getJson(`${node.url}${path}`, { method: "DELETE" });
const delivered = (pred) => hooks.delivered().filter(pred);
const ofType = (type, extra = () => true) => delivered((e) => e.type === type && extra(e));

test("every lifecycle event kind arrives by webhook, signed, once per id", async () => {
  const ada = await connect(node.url);
  const a = await enter(ada, "wh-ada", "wh-room");
  const stopA = keepAlive(ada, a.epoch);
  const bob = await connect(node.url);
  const b = await enter(bob, "wh-bob", "wh-room", { capabilities: ["audio"] });
  let stopB = keepAlive(bob, b.epoch);
  // A second tab of ada: no member.joined, no user.online.
  const ada2 = await connect(node.url);
  await enter(ada2, "wh-ada", "wh-room");
  assert.ok((await call(ada2, "presence:leave", {})).ok);
  // An intent for bob, who is reachable now: intent.ready at once.
  const ready = await getJson(`${node.url}/api/intents`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ from: "wh-ada", userId: "wh-bob", need: ["audio"], ttlMs: 30000 }),
  });
  assert.equal(ready.status, 200, JSON.stringify(ready.body));
  // One for a capability bob lacks: it expires.
  const late = await getJson(`${node.url}/api/intents`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ from: "wh-ada", userId: "wh-bob", need: ["video"], ttlMs: 300 }),
  });
  assert.equal(late.status, 200, JSON.stringify(late.body));
  // Bob goes idle: user.status.
  stopB();
  const idle = await call(bob, "presence:heartbeat", { epoch: b.epoch, activity: "idle" });
  assert.ok(idle.ok, JSON.stringify(idle));
  stopB = keepAlive(bob, b.epoch);
  await until(() => ofType("user.status", (e) => e.userId === "wh-bob").length > 0, "bob's user.status");
  // Ada leaves the room, then ends her session; bob ends his: the room empties.
  assert.ok((await call(ada, "presence:leave", { roomId: "wh-room" })).ok);
  stopA();
  assert.ok((await call(ada, "presence:leave", {})).ok);
  stopB();
  assert.ok((await call(bob, "presence:leave", {})).ok);
  await until(() => ofType("room.vacated", (e) => e.roomId === "wh-room").length === 1
    && ofType("intent.expired", (e) => e.userId === "wh-bob").length === 1
    && ofType("user.offline", (e) => e.userId === "wh-bob").length === 1, "the room to empty");
  const mine = delivered((e) => [e.userId, e.roomId, e.from].some((v) => v?.startsWith?.("wh-")));
  const types = new Set(mine.map((e) => e.type));
  for (const t of ["user.online", "user.offline", "user.status", "member.joined", "member.left",
    "room.occupied", "room.vacated", "intent.ready", "intent.expired"]) {
    assert.ok(types.has(t), `${t} in ${[...types]}`);
  }
  // Each once: a second tab and its leave were no join and no leave.
  assert.equal(ofType("user.online", (e) => e.userId === "wh-ada").length, 1);
  assert.equal(ofType("member.joined", (e) => e.userId === "wh-ada").length, 1);
  assert.equal(ofType("member.left", (e) => e.userId === "wh-ada").length, 1);
  assert.equal(ofType("room.occupied", (e) => e.roomId === "wh-room").length, 1);
  const online = ofType("user.online", (e) => e.userId === "wh-bob")[0];
  assert.equal(online.status, "active");
  const st = ofType("user.status", (e) => e.userId === "wh-bob")[0];
  assert.deepEqual([st.previous, st.status], ["active", "idle"]);
  const off = ofType("user.offline", (e) => e.userId === "wh-ada")[0];
  assert.ok(off.lastSeenAt > 0 && off.lastSeenAt <= off.at, JSON.stringify(off));
  const r = ofType("intent.ready", (e) => e.intentId === ready.body.intentId)[0];
  assert.deepEqual([r.from, r.userId, r.need, r.sessionId], ["wh-ada", "wh-bob", ["audio"], b.sessionId]);
  const x = ofType("intent.expired", (e) => e.intentId === late.body.intentId)[0];
  assert.deepEqual(x.need, ["video"]);
  // Every event: { id, type, at }, in signed requests of { events }.
  for (const e of mine) assert.ok(typeof e.id === "string" && e.id.length >= 16 && e.at > 0, JSON.stringify(e));
  assert.ok(hooks.requests.length > 0 && hooks.requests.every((q) => q.verified), "every request signed");
  assert.ok(hooks.requests.every((q) => Math.abs(q.signedAt - Date.now() / 1000) < 60), "signed now");
  assert.ok(hooks.requests.every((q) => q.events.length <= 100));
  // The order of one user's events is kept within a shard here: online before offline.
  const seq = mine.filter((e) => e.userId === "wh-ada" && e.type.startsWith("user.")).map((e) => e.type);
  assert.equal(seq[0], "user.online");
  assert.equal(seq.at(-1), "user.offline");
});

test("last seen: an offline user's last activity and last-online time, in status and who's online", async () => {
  const s = await connect(node.url);
  const h = await enter(s, "ls-carol", "ls-room");
  await sleep(30);
  const before = Date.now();
  assert.ok((await call(s, "presence:leave", {})).ok);
  const st = await getJson(`${node.url}/api/users/status`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ userIds: ["ls-carol", "ls-never"] }),
  });
  assert.equal(st.status, 200);
  const carol = st.body.users["ls-carol"];
  assert.equal(carol.status, "offline");
  assert.ok(carol.lastSeenAt > 0 && carol.lastSeenAt <= before, JSON.stringify(carol));
  assert.ok(Math.abs(carol.lastOnlineAt - before) < 2000, JSON.stringify(carol));
  assert.equal(st.body.users["ls-never"].lastSeenAt, 0);
  assert.equal(st.body.users["ls-never"].lastOnlineAt, undefined, "nothing kept for a user never seen");
  const plain = await getJson(`${node.url}/api/whos-online`);
  assert.equal(plain.body.recent, undefined, "only on request");
  const w = await getJson(`${node.url}/api/whos-online?include=recent`);
  assert.equal(w.status, 200);
  const r = w.body.recent.find((u) => u.userId === "ls-carol");
  assert.deepEqual(r, { userId: "ls-carol", status: "offline", lastSeenAt: carol.lastSeenAt, lastOnlineAt: carol.lastOnlineAt });
  assert.ok(!w.body.users["ls-carol"]);
  // Back online: no longer among the recent.
  const again = await connect(node.url);
  await enter(again, "ls-carol", "ls-room");
  const w2 = await getJson(`${node.url}/api/whos-online?include=recent`);
  assert.ok(!w2.body.recent.some((u) => u.userId === "ls-carol"));
  assert.ok(w2.body.users["ls-carol"]);
  const bad = await getJson(`${node.url}/api/whos-online?include=everything`);
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.field, "include");
  void h;
});

test("DELETE /api/sessions/{id}: the connection is told kicked and closed; observers see a leave; the id is not taken up again", async () => {
  const obs = await connect(node.url);
  await enter(obs, "mod-obs", "mod-room");
  const bad = await connect(node.url);
  const hb = await enter(bad, "mod-troll", "mod-room");
  await waitFor(obs, "presence:diff", (d) => d.roomId === "mod-room" && d.users?.["mod-troll"], { timeoutMs: 3000 });
  const closed = new Promise((r) => bad.once("disconnect", r));
  const t0 = Date.now();
  const r = await del(`/api/sessions/${hb.sessionId}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body, { ok: true, userId: "mod-troll", sessions: [hb.sessionId] });
  const err = await waitFor(bad, "presence:error", (e) => e.error?.code === "kicked", { timeoutMs: 1000 });
  assert.match(err.error.message, /ended by the server/);
  assert.equal(await closed, "io server disconnect");
  assert.ok(Date.now() - t0 < 1000, "within a second");
  await waitFor(obs, "presence:diff", (d) => d.roomId === "mod-room" && d.users?.["mod-troll"] === null, { timeoutMs: 1000 });
  const v = await getJson(`${node.url}/api/rooms/mod-room/presence`);
  assert.ok(!v.body.users["mod-troll"], "gone from the room");
  // The same session id again: refused, a new session is allowed.
  const back = await connect(node.url);
  const resumed = await call(back, "presence:hello", { userId: "mod-troll", sessionId: hb.sessionId });
  assert.equal(resumed.ok, false);
  assert.equal(resumed.error.code, "kicked");
  const fresh = await call(back, "presence:hello", { userId: "mod-troll" });
  assert.ok(fresh.ok && fresh.sessionId !== hb.sessionId);
  // Twice: 404 JSON.
  const again = await del(`/api/sessions/${hb.sessionId}`);
  assert.equal(again.status, 404);
  assert.equal(again.body.error.code, "not_found");
  const none = await del("/api/sessions/no-such-session");
  assert.equal(none.status, 404);
  const badId = await del(`/api/sessions/${"x".repeat(200)}`);
  assert.equal(badId.status, 400);
  assert.equal(badId.body.error.field, "sessionId");
});

test("DELETE /api/users/{id}/sessions ends every session of the user, connected or not", async () => {
  const one = await connect(node.url);
  const h1 = await enter(one, "mod-many", "mod-room2");
  const two = await connect(node.url);
  const h2 = await enter(two, "mod-many", "mod-room2");
  two.disconnect(); // kept for the grace window: ended all the same
  const r = await del("/api/users/mod-many/sessions");
  assert.equal(r.status, 200);
  assert.deepEqual(r.body.sessions.sort(), [h1.sessionId, h2.sessionId].sort());
  await waitFor(one, "presence:error", (e) => e.error?.code === "kicked", { timeoutMs: 1000 });
  const st = await getJson(`${node.url}/api/users/status`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ userIds: ["mod-many"] }),
  });
  assert.equal(st.body.users["mod-many"].status, "offline");
  const none = await del("/api/users/mod-many/sessions");
  assert.equal(none.status, 404);
  assert.equal(none.body.error.code, "not_found");
  const bad = await del("/api/users/%20/sessions");
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.field, "userId");
});

test("DELETE /api/rooms/{room}/members/{user}: out of the room until a new join; the session stays", async () => {
  const obs = await connect(node.url);
  await enter(obs, "rm-obs", "rm-room");
  const s = await connect(node.url);
  const h = await enter(s, "rm-user", "rm-room");
  const hs = keepAlive(s, h.epoch);
  await waitFor(obs, "presence:diff", (d) => d.roomId === "rm-room" && d.users?.["rm-user"], { timeoutMs: 2000 });
  assert.ok((await call(s, "presence:join", { roomId: "rm-other" })).ok);
  const r = await del("/api/rooms/rm-room/members/rm-user");
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body, { ok: true, userId: "rm-user", sessions: [h.sessionId], roomId: "rm-room" });
  const n = await waitFor(s, "presence:removed", (m) => m.roomId === "rm-room", { timeoutMs: 1000 });
  assert.equal(n.reason, "removed");
  await waitFor(obs, "presence:diff", (d) => d.roomId === "rm-room" && d.users?.["rm-user"] === null, { timeoutMs: 1000 });
  const v = await getJson(`${node.url}/api/rooms/rm-room/presence`);
  assert.ok(!v.body.users["rm-user"]);
  // Writes to the room are refused; the session and its other room stay.
  const st = await call(s, "presence:state", { roomId: "rm-room", epoch: h.epoch, patch: { x: 1 } });
  assert.equal(st.error?.code, "not_joined");
  hs();
  assert.ok((await call(s, "presence:heartbeat", { epoch: h.epoch })).ok);
  const other = await getJson(`${node.url}/api/rooms/rm-other/presence`);
  assert.ok(other.body.users["rm-user"]);
  // No diffs of the room reach it any more.
  const seen = s.received.length;
  const extra = await connect(node.url);
  await enter(extra, "rm-extra", "rm-room");
  await sleep(300);
  await waitFor(obs, "presence:diff", (d) => d.roomId === "rm-room" && d.users?.["rm-extra"], { timeoutMs: 2000 });
  assert.ok(!s.received.slice(seen).some((r) => r.payload?.roomId === "rm-room"), "no more of the room");
  // A new join brings it back.
  assert.ok((await call(s, "presence:join", { roomId: "rm-room" })).ok);
  const none = await del("/api/rooms/rm-room/members/rm-nobody");
  assert.equal(none.status, 404);
  assert.equal(none.body.error.code, "not_found");
  const bad = await del("/api/rooms/bad%20room/members/rm-user");
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.field, "roomId");
});

test("webhook settings are checked at start", async () => {
  await assert.rejects(startNode({ "--webhook-url": "http://127.0.0.1:9/h" }), /PRESENCE_WEBHOOK_SECRET/);
  await assert.rejects(startNode({ "--webhook-url": "ftp://x", "--webhook-secret": SECRET }), /PRESENCE_WEBHOOK_URL/);
  await assert.rejects(
    startNode({ "--webhook-url": hooks.url, "--webhook-secret": SECRET, "--webhook-events": "user.deleted" }),
    /PRESENCE_WEBHOOK_EVENTS/,
  );
});
