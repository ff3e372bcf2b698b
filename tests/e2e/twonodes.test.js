// e2e: own-redis (runs once, in the memory pass)
// Two nodes on one Redis: presence crosses nodes, and a session moves from
// one node to the other without observers seeing it leave.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { startRedis, startNode, connect, closeAll, call, waitFor, sleep, enter, diffs, takeoverUnbindsAtOnce } from "./helpers.js";

let redis, a, b;
before(async () => {
  redis = await startRedis();
  const flags = { "--redis-url": redis.url, "--emit-debounce-ms": 50, "--key-prefix": "twonodes" };
  a = await startNode({ ...flags, "--node-id": "node-a" });
  b = await startNode({ ...flags, "--node-id": "node-b" });
});
after(async () => { closeAll(); await a?.stop(); await b?.stop(); await redis?.stop(); });
afterEach(() => closeAll());

test("a join, a state change and a leave on node A reach an observer on node B", async () => {
  const obs = await connect(b.url);
  await enter(obs, "observer", "r-x");
  const c = await connect(a.url);
  const ec = await enter(c, "carol", "r-x");
  assert.ok(ec.snapshot.users.observer, "the snapshot on A shows B's client");
  await waitFor(obs, "presence:diff", (d) => d.users.carol?.status === "active");
  await call(c, "presence:state", { roomId: "r-x", epoch: ec.epoch, patch: { typing: true } });
  await waitFor(obs, "presence:diff", (d) => d.sessions[ec.sessionId]?.state?.typing === true);
  await call(c, "presence:leave", { roomId: "r-x" });
  await waitFor(obs, "presence:diff", (d) => d.users.carol === null);
  const room = await fetch(`${a.url}/api/rooms/r-x/presence`).then((r) => r.json());
  assert.deepEqual(Object.keys(room.users), ["observer"]);
});

test("a session taken over from node A by node B is resumed without flapping", async () => {
  const obs = await connect(b.url);
  await enter(obs, "observer", "r-move");
  const onA = await connect(a.url);
  const ea = await enter(onA, "dave", "r-move");
  await waitFor(obs, "presence:diff", (d) => d.users.dave);
  const from = obs.received.length;
  onA.disconnect();
  await waitFor(obs, "presence:diff", (d) => d.sessions[ea.sessionId]?.status === "stale", { from });
  const onB = await connect(b.url);
  const hello = await call(onB, "presence:hello", { userId: "dave", sessionId: ea.sessionId });
  assert.equal(hello.resumed, true);
  assert.equal(hello.epoch, ea.epoch + 1);
  assert.equal(hello.nodeId, "node-b");
  assert.deepEqual(hello.rooms, ["r-move"]);
  const snap = await waitFor(onB, "presence:snapshot", (s) => s.roomId === "r-move");
  assert.equal(snap.sessions[ea.sessionId].status, "active");
  await waitFor(obs, "presence:diff", (d) => d.sessions[ea.sessionId]?.status === "active", { from });
  await sleep(150);
  for (const d of diffs(obs, "r-move")) {
    assert.notEqual(d.users.dave, null, "dave never left");
    assert.notEqual(d.sessions[ea.sessionId], null);
  }
  const online = await fetch(`${a.url}/api/whos-online`).then((r) => r.json());
  assert.equal(online.users.dave.sessionCount, 1);
});

test("a takeover while the old connection is still open fences it", async () => {
  const old = await connect(a.url);
  const eo = await enter(old, "erin", "r-fence");
  const nu = await connect(b.url);
  const hello = await call(nu, "presence:hello", { userId: "erin", sessionId: eo.sessionId });
  assert.equal(hello.resumed, true);
  const hb = await call(old, "presence:heartbeat", { epoch: eo.epoch });
  assert.equal(hb.error.code, "stale_epoch");
  // The old connection's disconnect must not touch the session the new one owns.
  old.disconnect();
  await sleep(300);
  const room = await fetch(`${b.url}/api/rooms/r-fence/presence`).then((r) => r.json());
  assert.equal(room.sessions[eo.sessionId].status, "active");
  assert.equal((await call(nu, "presence:heartbeat", { epoch: hello.epoch })).ok, true);
});

test("a takeover on node B unbinds the old connection on node A at once", async () => {
  await takeoverUnbindsAtOnce(a.url, b.url, "cross-node");
});

test("presence:signal crosses nodes, once, and never echoes", async () => {
  const onB = await connect(b.url);
  await enter(onB, "bob", "r-sig");
  const alsoA = await connect(a.url);
  await enter(alsoA, "carl", "r-sig");
  const onA = await connect(a.url);
  const ea = await enter(onA, "alice", "r-sig");
  const r = await call(onA, "presence:signal", { roomId: "r-sig", data: { cursor: [1, 2] } });
  assert.deepEqual(r, { ok: true });
  const want = { roomId: "r-sig", sessionId: ea.sessionId, userId: "alice", data: { cursor: [1, 2] } };
  assert.deepEqual(await waitFor(onB, "presence:signal"), want, "to the other node");
  assert.deepEqual(await waitFor(alsoA, "presence:signal"), want, "and on its own node");
  await sleep(200);
  const count = (s) => s.received.filter((x) => x.event === "presence:signal").length;
  assert.deepEqual([count(onB), count(alsoA), count(onA)], [1, 1, 0]);
});

test("both nodes register: /api/cluster on either lists both", async () => {
  for (const n of [a, b]) {
    const cl = await fetch(`${n.url}/api/cluster`).then((r) => r.json());
    assert.deepEqual(cl.nodes.map((x) => x.nodeId), ["node-a", "node-b"]);
    assert.deepEqual(cl.nodes.map((x) => x.addr), [new URL(a.url).host, new URL(b.url).host]);
    for (const x of cl.nodes) assert.ok(x.startedAt > 0 && x.lastSeenAt >= x.startedAt);
  }
});

test("count and watch followers on node B follow members on node A", async () => {
  const counter = await connect(b.url);
  await call(counter, "presence:hello", { userId: "counter" });
  const c = await call(counter, "presence:join", { roomId: "r-views", view: "count" });
  assert.equal(c.view, "count");
  const watcher = await connect(b.url);
  await call(watcher, "presence:hello", { userId: "watcher" });
  const w = await call(watcher, "presence:join", { roomId: "r-views", view: { watch: ["erin"] } });
  assert.equal(w.view, "watch");
  assert.deepEqual(w.snapshot.users, {});
  const e = await connect(a.url);
  const ee = await enter(e, "erin", "r-views");
  const f = await connect(a.url);
  const ef = await enter(f, "frank", "r-views");
  await waitFor(counter, "presence:counts", (m) => m.counts.users.total === 4);
  await waitFor(watcher, "presence:diff", (d) => d.users.erin?.status === "active");
  await call(f, "presence:state", { roomId: "r-views", epoch: ef.epoch, patch: { t: 1 } });
  await call(e, "presence:state", { roomId: "r-views", epoch: ee.epoch, patch: { t: 2 } });
  await waitFor(watcher, "presence:diff", (d) => d.sessions[ee.sessionId]?.state?.t === 2);
  const all = diffs(watcher, "r-views");
  assert.ok(all.every((d) => !d.users.frank && !d.sessions[ef.sessionId]), JSON.stringify(all));
  assert.equal(diffs(counter, "r-views").length, 0);
  // Pages on node B list node A's members.
  const p = await call(watcher, "presence:members", { roomId: "r-views", limit: 10 });
  assert.deepEqual(Object.keys(p.users).sort(), ["counter", "erin", "frank", "watcher"]);
  const h = await fetch(`${a.url}/api/rooms/r-views/presence?limit=2`).then((r) => r.json());
  assert.deepEqual(Object.keys(h.users).sort(), ["counter", "erin"]);
  assert.equal(h.nextCursor.split("~")[0], "erin");
});
