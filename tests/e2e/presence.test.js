// The v1 contract over Socket.IO, driven by the official socket.io-client.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { startNode, connect, closeAll, call, waitFor, sleep, enter, diffs, RoomMirror } from "./helpers.js";

let node;
before(async () => { node = await startNode({ "--emit-debounce-ms": 50 }); });
after(async () => { closeAll(); await node?.stop(); });
afterEach(() => closeAll());

test("hello -> join -> snapshot with self", async () => {
  const a = await connect(node.url);
  const hello = await call(a, "presence:hello", { userId: "alice", handle: "Alice", meta: { ua: "test" } });
  assert.equal(hello.ok, true);
  assert.equal(hello.resumed, false);
  assert.equal(typeof hello.sessionId, "string");
  assert.ok(hello.epoch >= 1);
  assert.equal(hello.config.heartbeatIntervalMs, 10000);
  assert.equal(hello.config.reconnectGraceMs, 15000);
  const join = await call(a, "presence:join", { roomId: "r-snap", state: { color: "red" } });
  assert.equal(join.ok, true);
  assert.equal(join.roomId, "r-snap");
  assert.deepEqual(join.self, { sessionId: hello.sessionId, epoch: hello.epoch });
  const snap = join.snapshot;
  assert.equal(snap.roomId, "r-snap");
  assert.ok(snap.seq >= 1);
  assert.equal(snap.users.alice.status, "active");
  assert.equal(snap.users.alice.confidence, "high");
  assert.equal(snap.users.alice.sessionCount, 1);
  assert.equal(snap.users.alice.handle, "Alice");
  assert.deepEqual(snap.users.alice.state, { color: "red" });
  assert.equal(snap.sessions[hello.sessionId].userId, "alice");
  assert.deepEqual(snap.sessions[hello.sessionId].state, { color: "red" });
});

test("a second client's join and leave reach the first as diffs", async () => {
  const a = await connect(node.url);
  const ea = await enter(a, "alice", "r-diff");
  const mirror = new RoomMirror(ea.snapshot);
  const b = await connect(node.url);
  const eb = await enter(b, "bob", "r-diff");
  assert.ok(eb.snapshot.users.alice, "bob's snapshot shows alice");
  const joinDiff = await waitFor(a, "presence:diff", (d) => d.roomId === "r-diff" && d.users.bob);
  assert.equal(joinDiff.users.bob.status, "active");
  assert.equal(joinDiff.users.bob.sessionCount, 1);
  assert.equal(joinDiff.sessions[eb.sessionId].userId, "bob");
  assert.ok(joinDiff.seq > ea.snapshot.seq);
  mirror.apply(joinDiff);

  const left = await call(b, "presence:leave", { roomId: "r-diff" });
  assert.deepEqual(left, { ok: true, roomId: "r-diff" });
  const leaveDiff = await waitFor(a, "presence:diff", (d) => d.roomId === "r-diff" && d.users.bob === null);
  assert.equal(leaveDiff.sessions[eb.sessionId], null);
  mirror.apply(leaveDiff);
  await sleep(150);
  // Exactly once: one diff for the join, one for the leave, nothing else.
  const got = diffs(a, "r-diff");
  assert.equal(got.length, 2, JSON.stringify(got));
  assert.deepEqual(Object.keys(mirror.users), ["alice"]);
  // The mirror equals what the server says now.
  const res = await fetch(`${node.url}/api/rooms/r-diff/presence`).then((r) => r.json());
  assert.deepEqual(Object.keys(res.users), ["alice"]);
  assert.deepEqual(Object.keys(mirror.sessions), Object.keys(res.sessions));
});

test("two tabs of one user: sessionCount 2, then 1", async () => {
  const obs = await connect(node.url);
  await enter(obs, "observer", "r-tabs");
  const t1 = await connect(node.url);
  const e1 = await enter(t1, "carol", "r-tabs");
  const t2 = await connect(node.url);
  const e2 = await enter(t2, "carol", "r-tabs");
  assert.notEqual(e1.sessionId, e2.sessionId);
  assert.equal(e2.snapshot.users.carol.sessionCount, 2);
  await waitFor(obs, "presence:diff", (d) => d.users.carol?.sessionCount === 2);
  await waitFor(t1, "presence:diff", (d) => d.users.carol?.sessionCount === 2 && d.sessions[e2.sessionId]);
  t2.disconnect(); // a closed tab: stale for the grace window, the user stays active
  const d = await waitFor(obs, "presence:diff", (d) => d.sessions[e2.sessionId]?.status === "stale");
  assert.equal(d.users.carol?.status, undefined, "user status does not change: another tab is active");
  const stats = await fetch(`${node.url}/api/rooms/r-tabs/stats`).then((r) => r.json());
  assert.deepEqual(stats, { ok: true, roomId: "r-tabs", sessions: 3, users: 2 });
  await call(t1, "presence:leave", {}); // end t1's session
  await waitFor(obs, "presence:diff", (d) => d.sessions[e1.sessionId] === null && d.users.carol?.sessionCount === 1);
});

test("state updates are diffs with the new state", async () => {
  const a = await connect(node.url);
  const ea = await enter(a, "alice", "r-state");
  const b = await connect(node.url);
  await enter(b, "bob", "r-state");
  const from = b.received.length;
  const r = await call(a, "presence:state", { roomId: "r-state", epoch: ea.epoch, patch: { typing: true, cursor: 3 } });
  assert.deepEqual(r, { ok: true });
  const d = await waitFor(b, "presence:diff", (d) => d.sessions[ea.sessionId]?.state, { from });
  assert.deepEqual(d.sessions[ea.sessionId].state, { typing: true, cursor: 3 });
  assert.deepEqual(d.users.alice.state, { typing: true, cursor: 3 });
  await call(a, "presence:state", { roomId: "r-state", epoch: ea.epoch, patch: { typing: null } });
  const d2 = await waitFor(b, "presence:diff", (d) => d.sessions[ea.sessionId]?.state && !("typing" in d.sessions[ea.sessionId].state), { from });
  assert.deepEqual(d2.sessions[ea.sessionId].state, { cursor: 3 });
});

test("a heartbeat that changes nothing emits nothing", async () => {
  const a = await connect(node.url);
  const ea = await enter(a, "alice", "r-quiet");
  const b = await connect(node.url);
  await enter(b, "bob", "r-quiet");
  await waitFor(a, "presence:diff", (d) => d.users.bob);
  await sleep(100);
  const before = a.received.length + b.received.length;
  for (let i = 0; i < 10; i++) {
    const hb = await call(a, "presence:heartbeat", { epoch: ea.epoch, activity: "active" });
    assert.deepEqual(hb, { ok: true, epoch: ea.epoch });
    await sleep(20);
  }
  await sleep(200);
  assert.equal(a.received.length + b.received.length, before, "no message caused by plain heartbeats");
  // A heartbeat that changes the status is a diff.
  await call(a, "presence:heartbeat", { epoch: ea.epoch, activity: "idle" });
  const d = await waitFor(b, "presence:diff", (d) => d.users.alice?.status === "idle");
  assert.equal(d.users.alice.confidence, "medium");
});

test("presence:signal is relayed to the room, not stored, not echoed", async () => {
  const a = await connect(node.url);
  const ea = await enter(a, "alice", "r-sig");
  const b = await connect(node.url);
  await enter(b, "bob", "r-sig");
  const r = await call(a, "presence:signal", { roomId: "r-sig", data: { x: 1, y: 2 } });
  assert.deepEqual(r, { ok: true });
  const s = await waitFor(b, "presence:signal");
  assert.deepEqual(s, { roomId: "r-sig", sessionId: ea.sessionId, userId: "alice", data: { x: 1, y: 2 } });
  await sleep(100);
  assert.equal(a.received.filter((x) => x.event === "presence:signal").length, 0);
  // Not in the room: not relayed.
  const nj = await call(a, "presence:signal", { roomId: "elsewhere", data: 1 });
  assert.equal(nj.error.code, "not_joined");
  // Throttled: a burst beyond the per-second budget is refused, not relayed
  // (last: it also spends the socket's event budget for a second).
  const acks = await Promise.all(Array.from({ length: 60 }, (_, i) => call(a, "presence:signal", { roomId: "r-sig", data: i })));
  assert.ok(acks.some((x) => x.ok === false && x.error.code === "rate_limited"));
});

test("a joiner gets every signal sent after its join's ack, even at once", async () => {
  const a = await connect(node.url);
  await call(a, "presence:hello", { userId: "alice" });
  // Each round a new member joins and alice signals the moment its ack is in.
  for (let i = 0; i < 20; i++) {
    const room = `r-sig-now-${i}`;
    assert.equal((await call(a, "presence:join", { roomId: room })).ok, true);
    const b = await connect(node.url);
    await call(b, "presence:hello", { userId: `bob-${i}` });
    const got = waitFor(b, "presence:signal", (s) => s.roomId === room);
    assert.equal((await call(b, "presence:join", { roomId: room })).ok, true);
    assert.deepEqual(await call(a, "presence:signal", { roomId: room, data: i }), { ok: true });
    assert.equal((await got).data, i);
    b.disconnect();
    assert.equal((await call(a, "presence:leave", { roomId: room })).ok, true);
    await sleep(60); // under the signal budget
  }
});

test("resume after a disconnect: same session, epoch + 1, no leave/join flapping", async () => {
  const obs = await connect(node.url);
  await enter(obs, "observer", "r-resume");
  const a1 = await connect(node.url);
  const ea = await enter(a1, "dave", "r-resume");
  await waitFor(obs, "presence:diff", (d) => d.users.dave);
  const from = obs.received.length;
  a1.disconnect();
  await waitFor(obs, "presence:diff", (d) => d.sessions[ea.sessionId]?.status === "stale", { from });
  const a2 = await connect(node.url);
  const hello = await call(a2, "presence:hello", { userId: "dave", sessionId: ea.sessionId });
  assert.equal(hello.ok, true);
  assert.equal(hello.resumed, true);
  assert.equal(hello.sessionId, ea.sessionId);
  assert.equal(hello.epoch, ea.epoch + 1);
  assert.deepEqual(hello.rooms, ["r-resume"]);
  const snap = await waitFor(a2, "presence:snapshot", (s) => s.roomId === "r-resume");
  assert.equal(snap.sessions[ea.sessionId].status, "active");
  assert.ok(snap.users.observer);
  await waitFor(obs, "presence:diff", (d) => d.sessions[ea.sessionId]?.status === "active", { from });
  await sleep(150);
  const seen = diffs(obs, "r-resume").slice(0);
  for (const d of seen) {
    assert.notEqual(d.users.dave, null, "dave never left");
    assert.notEqual(d.sessions[ea.sessionId], null, "the session never left");
  }
  // The resumed connection works, and diffs reach it.
  const hb = await call(a2, "presence:heartbeat", { epoch: hello.epoch });
  assert.equal(hb.ok, true);
  await call(obs, "presence:leave", { roomId: "r-resume" });
  await waitFor(a2, "presence:diff", (d) => d.users.observer === null);
});

test("error codes: bad_request, payload_too_large, no_session, not_joined, stale_epoch, limit_exceeded", async () => {
  const a = await connect(node.url);
  // no_session before hello
  for (const [ev, payload] of [["presence:join", { roomId: "r" }], ["presence:heartbeat", { epoch: 1 }], ["presence:state", { roomId: "r", epoch: 1, patch: {} }], ["presence:leave", {}]]) {
    const r = await call(a, ev, payload);
    assert.equal(r.ok, false);
    assert.equal(r.error.code, "no_session", ev);
    assert.equal(typeof r.error.message, "string");
  }
  // bad_request names the field
  const cases = [
    ["presence:hello", {}, "userId"],
    ["presence:hello", { userId: "has space" }, "userId"],
    ["presence:hello", { userId: "x".repeat(129) }, "userId"],
    ["presence:hello", { userId: "u", sessionId: 42 }, "sessionId"],
    ["presence:hello", { userId: "u", meta: "nope" }, "meta"],
    ["presence:hello", "not an object", "payload"],
    ["presence:hello", [1, 2, 3], "payload"],
    ["presence:hello", 17, "payload"],
  ];
  for (const [ev, payload, field] of cases) {
    const r = await call(a, ev, payload);
    assert.equal(r.error.code, "bad_request", JSON.stringify(payload));
    assert.equal(r.error.field, field, JSON.stringify(payload));
  }
  // payload_too_large
  const big = await call(a, "presence:hello", { userId: "u", meta: { blob: "x".repeat(2000) } });
  assert.equal(big.error.code, "payload_too_large");
  assert.equal(big.error.field, "meta");

  const hello = await call(a, "presence:hello", { userId: "erin" });
  assert.equal(hello.ok, true);
  const again = await call(a, "presence:hello", { userId: "erin" });
  assert.equal(again.error.code, "bad_request");
  assert.equal((await call(a, "presence:join", {})).error.field, "roomId");
  assert.equal((await call(a, "presence:join", { roomId: "r", state: [] })).error.field, "state");
  const tooBig = await call(a, "presence:join", { roomId: "r", state: { blob: "x".repeat(5000) } });
  assert.equal(tooBig.error.code, "payload_too_large");
  assert.equal((await call(a, "presence:heartbeat", {})).error.field, "epoch");
  assert.equal((await call(a, "presence:heartbeat", { epoch: hello.epoch, activity: "sleeping" })).error.field, "activity");
  // not_joined
  assert.equal((await call(a, "presence:state", { roomId: "r-none", epoch: hello.epoch, patch: { a: 1 } })).error.code, "not_joined");
  assert.equal((await call(a, "presence:leave", { roomId: "r-none" })).error.code, "not_joined");
  // state that grows past the limit through patches
  assert.equal((await call(a, "presence:join", { roomId: "r-err" })).ok, true);
  let grown;
  for (let i = 0; i < 3; i++) grown = await call(a, "presence:state", { roomId: "r-err", epoch: hello.epoch, patch: { ["k" + i]: "x".repeat(1800) } });
  assert.equal(grown.error.code, "payload_too_large");
  // stale_epoch: a wrong epoch on this connection...
  const wrong = await call(a, "presence:heartbeat", { epoch: hello.epoch + 1 });
  assert.equal(wrong.error.code, "stale_epoch");
  // ...and a newer connection of the same session wins.
  const b = await connect(node.url);
  const takeover = await call(b, "presence:hello", { userId: "erin", sessionId: hello.sessionId });
  assert.equal(takeover.resumed, true);
  assert.equal(takeover.epoch, hello.epoch + 1);
  const fenced = await call(a, "presence:heartbeat", { epoch: hello.epoch });
  assert.equal(fenced.error.code, "stale_epoch");
  assert.equal((await call(b, "presence:heartbeat", { epoch: takeover.epoch })).ok, true);
  // forbidden: another user's session id
  const m = await connect(node.url);
  const steal = await call(m, "presence:hello", { userId: "mallory", sessionId: hello.sessionId });
  assert.equal(steal.error.code, "forbidden");
  // limit_exceeded: rooms per session
  const c = await connect(node.url);
  await call(c, "presence:hello", { userId: "many" });
  let last;
  for (let i = 0; i < 33; i++) last = await call(c, "presence:join", { roomId: `room-${i}` });
  assert.equal(last.error.code, "limit_exceeded");
});

test("garbage and events without ack callbacks harm nobody", async () => {
  const obs = await connect(node.url);
  const eo = await enter(obs, "observer", "r-garbage");
  const g = await connect(node.url);
  await enter(g, "gary", "r-garbage");
  await waitFor(obs, "presence:diff", (d) => d.users.gary);
  const from = obs.received.length;
  // No ack callbacks, bad payloads, unknown events. (Binary data closes the
  // connection: adversary.test.js.)
  g.emit("presence:hello", { userId: "x" });
  g.emit("presence:join");
  g.emit("presence:heartbeat", null);
  g.emit("presence:state", { roomId: "r-garbage", epoch: "x", patch: 5 });
  g.emit("presence:signal", "nope");
  g.emit("presence:leave", 12);
  g.emit("presence:unknown", { a: 1 });
  // No payload at all (only the ack callback).
  for (const ev of ["presence:hello", "presence:join", "presence:heartbeat", "presence:state", "presence:signal"]) {
    const r = await g.timeout(5000).emitWithAck(ev);
    assert.equal(r.ok, false, ev);
    assert.equal(r.error.code, "bad_request", ev);
  }
  await sleep(200);
  assert.ok(g.connected);
  assert.ok(obs.connected);
  // The observer saw nothing change, and still works.
  const later = obs.received.slice(from).filter((r) => r.event === "presence:diff");
  assert.deepEqual(later, []);
  const hb = await call(obs, "presence:heartbeat", { epoch: eo.epoch });
  assert.equal(hb.ok, true);
  const view = await fetch(`${node.url}/api/rooms/r-garbage/presence`).then((r) => r.json());
  assert.deepEqual(Object.keys(view.users).sort(), ["gary", "observer"]);
  // A leave with no payload at all ends the session.
  const bye = await g.timeout(5000).emitWithAck("presence:leave");
  assert.deepEqual(bye, { ok: true, rooms: ["r-garbage"] });
  await waitFor(obs, "presence:diff", (d) => d.users.gary === null, { from });
});
