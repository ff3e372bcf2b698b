// e2e: own-redis (runs once, in the memory pass)
// Three nodes on one Redis behind nginx (deploy/nginx.conf): clients land on
// different nodes, see each other's changes exactly once, and converge when
// Pub/Sub loses messages.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startCluster, startNode, connect, closeAll, call, waitFor, sleep, enter, diffs,
  getJson, redisCli, RoomMirror,
} from "./helpers.js";

let redis, nodes, lb, cl;
before(async () => {
  cl = await startCluster(["node-1", "node-2", "node-3"], {
    "--emit-debounce-ms": 50, "--key-prefix": "cluster", "--redis-timeout-ms": 500, "--leader-lease-ms": 1000,
  });
  ({ redis, nodes, lb } = cl);
});
after(async () => cl?.stop());
afterEach(() => closeAll());

/** Connects through nginx until there is one client on each node (bounded). */
async function onEveryNode(opts = {}) {
  const byNode = new Map();
  for (let i = 0; i < 60 && byNode.size < nodes.length; i++) {
    const s = await connect(lb.url, opts);
    const hello = await call(s, "presence:hello", { userId: `u-${i}` });
    assert.equal(hello.ok, true, JSON.stringify(hello));
    if (byNode.has(hello.nodeId)) s.disconnect();
    else byNode.set(hello.nodeId, { s, hello });
  }
  assert.equal(byNode.size, nodes.length, "nginx spreads clients over every node");
  return [...byNode.values()];
}

/** How many diffs since `from` match `pred`. */
const count = (s, room, from, pred) => diffs({ received: s.received.slice(from) }, room).filter(pred).length;

test("/api/cluster through nginx lists the three nodes", async () => {
  const cl = await getJson(`${lb.url}/api/cluster`);
  assert.equal(cl.status, 200);
  assert.deepEqual(cl.body.nodes.map((n) => n.nodeId), ["node-1", "node-2", "node-3"]);
  assert.deepEqual(cl.body.nodes.map((n) => n.addr), nodes.map((n) => new URL(n.url).host));
});

test("through nginx: clients on three nodes see each join, state update and leave exactly once", async () => {
  const [x, y, z] = await onEveryNode();
  const room = "r-lb";
  for (const c of [y, z]) {
    const j = await call(c.s, "presence:join", { roomId: room });
    assert.equal(j.ok, true);
  }
  const observers = [y, z];
  const me = x.hello.userId;
  const sid = x.hello.sessionId;
  const step = async (act, pred) => {
    const from = observers.map((o) => o.s.received.length);
    await act();
    for (const [i, o] of observers.entries()) await waitFor(o.s, "presence:diff", pred, { from: from[i] });
    await sleep(300); // several debounce windows: a duplicate would have arrived
    for (const [i, o] of observers.entries()) {
      assert.equal(count(o.s, room, from[i], pred), 1, `${o.hello.nodeId} got it once`);
    }
  };
  await step(() => call(x.s, "presence:join", { roomId: room }), (d) => d.sessions[sid]?.status === "active");
  await step(() => call(x.s, "presence:state", { roomId: room, epoch: x.hello.epoch, patch: { typing: true } }),
    (d) => d.sessions[sid]?.state?.typing === true);
  await step(() => call(x.s, "presence:leave", { roomId: room }), (d) => d.users[me] === null);
});

test("through nginx: the polling transport sticks to one node and works", async () => {
  const polling = await onEveryNode({ transports: ["polling"], withCredentials: true });
  const room = "r-poll";
  const obs = await connect(nodes[0].url);
  const eo = await enter(obs, "watcher", room);
  assert.ok(eo.snapshot);
  for (const p of polling) {
    assert.equal(p.s.io.engine.transport.name, "polling");
    assert.equal((await call(p.s, "presence:join", { roomId: room })).ok, true);
    // Many requests of one Engine.IO session: each must reach its node.
    for (let i = 0; i < 5; i++) {
      const st = await call(p.s, "presence:state", { roomId: room, epoch: p.hello.epoch, patch: { i } });
      assert.equal(st.ok, true, JSON.stringify(st));
    }
    await waitFor(obs, "presence:diff", (d) => d.sessions[p.hello.sessionId]?.state?.i === 4);
  }
});

test("through nginx: presence:signal reaches the room on every node once", async () => {
  const [x, y, z] = await onEveryNode();
  for (const c of [x, y, z]) assert.equal((await call(c.s, "presence:join", { roomId: "r-sig" })).ok, true);
  assert.deepEqual(await call(x.s, "presence:signal", { roomId: "r-sig", data: "hi" }), { ok: true });
  for (const c of [y, z]) {
    const s = await waitFor(c.s, "presence:signal");
    assert.equal(s.sessionId, x.hello.sessionId);
    assert.equal(s.data, "hi");
  }
  await sleep(200);
  const got = (c) => c.s.received.filter((r) => r.event === "presence:signal").length;
  assert.deepEqual([got(x), got(y), got(z)], [0, 1, 1]);
});

test("subscriptions dropped while changes happen (CLIENT KILL TYPE pubsub): observers converge", async () => {
  const room = "r-kill";
  const obs = await connect(nodes[1].url);
  const eo = await enter(obs, "watcher", room);
  const mirror = new RoomMirror(eo.snapshot);
  const w = await connect(nodes[0].url);
  const ew = await enter(w, "writer", room);
  await waitFor(obs, "presence:diff", (d) => d.sessions[ew.sessionId]);
  for (let i = 1; i <= 5; i++) {
    // Each change is published while the subscribers are reconnecting, so
    // its event is lost to them: only the re-read after the resubscription
    // brings it to the observer.
    const killed = Number(redisCli(redis.port, "CLIENT", "KILL", "TYPE", "pubsub").trim());
    assert.ok(killed >= 1, "subscriber connections were dropped");
    const st = await call(w, "presence:state", { roomId: room, epoch: ew.epoch, patch: { i } });
    assert.equal(st.ok, true, JSON.stringify(st));
    await waitFor(obs, "presence:diff", (d) => d.sessions[ew.sessionId]?.state?.i === i, { timeoutMs: 10000 });
  }
  await sleep(200);
  for (const d of diffs(obs, room)) mirror.apply(d);
  const truth = await getJson(`${nodes[2].url}/api/rooms/${room}/presence`);
  for (const sid of [eo.sessionId, ew.sessionId]) {
    assert.deepEqual(mirror.sessions[sid].state, truth.body.sessions[sid].state);
    assert.equal(mirror.sessions[sid].status, truth.body.sessions[sid].status);
  }
  assert.deepEqual(Object.keys(mirror.sessions).sort(), Object.keys(truth.body.sessions).sort());
});

test("a leave while the subscriptions were down reaches observers at the resync, not after the hold", async () => {
  // The heartbeat timeout (the hold after a resubscription) is the default,
  // 30 s: a leave shown within a few seconds was not held.
  const room = "r-kill-leave";
  const obs = await connect(nodes[1].url);
  const eo = await enter(obs, "watcher", room);
  const mirror = new RoomMirror(eo.snapshot);
  const w = await connect(nodes[0].url);
  const ew = await enter(w, "writer", room);
  const q = await connect(nodes[2].url);
  await enter(q, "quitter", room);
  await waitFor(obs, "presence:diff", (d) => d.users.quitter);
  const from = obs.received.length;
  const killed = Number(redisCli(redis.port, "CLIENT", "KILL", "TYPE", "pubsub").trim());
  assert.ok(killed >= 1);
  assert.equal((await call(w, "presence:state", { roomId: room, epoch: ew.epoch, patch: { during: "gap" } })).ok, true);
  assert.equal((await call(q, "presence:leave", { roomId: room })).ok, true);
  await waitFor(obs, "presence:diff", (d) => d.users.quitter === null, { from, timeoutMs: 8000 });
  for (const d of diffs(obs, room)) mirror.apply(d);
  assert.deepEqual(Object.keys(mirror.users).sort(), ["watcher", "writer"]);
  assert.deepEqual(mirror.sessions[ew.sessionId].state, { during: "gap" });
});

test("after a Redis restart (data lost) subscriptions come back and changes cross nodes again", async () => {
  const room = "r-restart";
  const obs = await connect(nodes[2].url);
  const eo = await enter(obs, "watcher", room);
  const w = await connect(nodes[0].url);
  const ew = await enter(w, "writer", room);
  await waitFor(obs, "presence:diff", (d) => d.sessions[ew.sessionId]);
  // Both keep heartbeating, adopting the epoch each ack carries.
  const epochs = { [eo.sessionId]: eo.epoch, [ew.sessionId]: ew.epoch };
  const beat = setInterval(() => {
    for (const [s, sid] of [[obs, eo.sessionId], [w, ew.sessionId]]) {
      s.timeout(1000).emitWithAck("presence:heartbeat", { epoch: epochs[sid] })
        .then((a) => { if (a.ok) epochs[sid] = a.epoch; }).catch(() => {});
    }
  }, 200);
  beat.unref(); // a failed test must not keep this file alive
  try {
    await redis.restart();
    // Back under their ids once a heartbeat got through.
    const end = Date.now() + 15000;
    let room1;
    while (Date.now() < end) {
      room1 = await getJson(`${nodes[1].url}/api/rooms/${room}/presence`);
      if (room1.status === 200 && room1.body.sessions[eo.sessionId] && room1.body.sessions[ew.sessionId]) break;
      await sleep(100);
    }
    assert.ok(room1.body.sessions[ew.sessionId], JSON.stringify(room1.body));
    const from = obs.received.length;
    let st;
    for (let i = 0; i < 20; i++) {
      st = await call(w, "presence:state", { roomId: room, epoch: epochs[ew.sessionId], patch: { after: true } });
      if (st.ok) break;
      await sleep(100); // the epoch moved under us (revived): retry with the new one
    }
    assert.equal(st.ok, true, JSON.stringify(st));
    await waitFor(obs, "presence:diff", (d) => d.sessions[ew.sessionId]?.state?.after === true, { from, timeoutMs: 10000 });
  } finally {
    clearInterval(beat);
  }
});

test("a node subscribes to a room's channel while it has sockets there, and only then", async () => {
  const channel = "cluster:events:{r-sub}";
  const subscribers = () => Number(redisCli(redis.port, "PUBSUB", "SHARDNUMSUB", channel).trim().split("\n")[1]);
  const until = async (want) => {
    for (let i = 0; i < 50 && subscribers() !== want; i++) await sleep(50);
    return subscribers();
  };
  assert.equal(await until(0), 0);
  const c1 = await connect(nodes[0].url);
  await enter(c1, "sub-1", "r-sub");
  const c2 = await connect(nodes[0].url);
  await enter(c2, "sub-2", "r-sub");
  assert.equal(await until(1), 1, "one subscription for the node's two sockets");
  const c3 = await connect(nodes[1].url);
  await enter(c3, "sub-3", "r-sub");
  assert.equal(await until(2), 2, "one per node");
  await call(c1, "presence:leave", { roomId: "r-sub" });
  await call(c3, "presence:leave", { roomId: "r-sub" });
  assert.equal(await until(1), 1, "node-2 has no socket there any more");
  c2.disconnect();
  assert.equal(await until(0), 0);
});

test("a node that dies drops out of /api/cluster within its TTL", async () => {
  const extra = await startNode({ "--redis-url": redis.url, "--key-prefix": "cluster", "--node-id": "node-4", "--node-ttl-ms": 900 });
  const ids = async () => (await getJson(`${nodes[0].url}/api/cluster`)).body.nodes.map((n) => n.nodeId);
  // Every node re-registers within a third of its TTL (after the Redis
  // restart above, the registry starts empty).
  let all = [];
  for (let i = 0; i < 80; i++) {
    all = await ids();
    if (all.length === 4) break;
    await sleep(100);
  }
  assert.deepEqual(all, ["node-1", "node-2", "node-3", "node-4"]);
  extra.proc.kill("SIGKILL");
  let now = [];
  for (let i = 0; i < 40; i++) {
    now = await ids();
    if (!now.includes("node-4")) break;
    await sleep(100);
  }
  assert.deepEqual(now, ["node-1", "node-2", "node-3"]);
});

test("one node leads the reaper; when it dies another takes over within the lease, with a higher term", async () => {
  const leader = async () => (await getJson(`${nodes[0].url}/api/cluster`)).body.leader;
  let first = await leader();
  for (let i = 0; i < 30 && !first; i++) { await sleep(100); first = await leader(); }
  assert.ok(first, "a leader");
  const idx = ["node-1", "node-2", "node-3"].indexOf(first.nodeId);
  assert.ok(idx >= 0, `the leader is one of the nodes (${first.nodeId})`);
  // Every node agrees.
  for (const n of nodes) assert.equal((await getJson(`${n.url}/api/cluster`)).body.leader?.nodeId, first.nodeId);
  nodes[idx].proc.kill("SIGKILL");
  const alive = nodes.filter((_, i) => i !== idx);
  const t0 = Date.now();
  let next = null;
  while (Date.now() - t0 < 5000) {
    next = (await getJson(`${alive[0].url}/api/cluster`)).body.leader;
    if (next && next.nodeId !== first.nodeId) break;
    await sleep(50);
  }
  assert.ok(next && next.nodeId !== first.nodeId, JSON.stringify(next));
  assert.ok(next.term > first.term);
  // A clean stop (SIGTERM) releases the lease: the next node takes it on
  // its next attempt (a third of the lease) instead of waiting for it to lapse.
  const j = ["node-1", "node-2", "node-3"].indexOf(next.nodeId);
  await nodes[j].stop();
  const other = alive.find((n) => n !== nodes[j]);
  let third = null;
  for (let i = 0; i < 100; i++) {
    third = (await getJson(`${other.url}/api/cluster`)).body.leader;
    if (third && third.nodeId !== next.nodeId) break;
    await sleep(50);
  }
  assert.ok(third && third.nodeId !== next.nodeId && third.term > next.term, JSON.stringify(third));
});
