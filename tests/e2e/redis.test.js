// e2e: own-redis (runs once, in the memory pass)
// A node on Redis when Redis goes away and comes back empty.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startRedis, startNode, connect, closeAll, call, waitFor, sleep, enter, getJson, FAST } from "./helpers.js";

let redis, node;
before(async () => {
  redis = await startRedis();
  node = await startNode({ ...FAST, "--redis-url": redis.url, "--redis-timeout-ms": 500 });
});
after(async () => { closeAll(); await node?.stop(); await redis?.stop(); });

/** Heartbeats every `ms`, adopting the epoch each ack carries. */
function keepAlive(socket, start, ms) {
  let epoch = start;
  const acks = [];
  const t = setInterval(() => {
    socket.timeout(2000).emitWithAck("presence:heartbeat", { epoch, activity: "active" })
      .then((a) => { acks.push(a); if (a.ok) epoch = a.epoch; })
      .catch(() => {});
  }, ms);
  t.unref(); // a failed test must not keep this file alive
  return { acks, stop: () => clearInterval(t) };
}

test("Redis down: not ready, calls answer unavailable, the node stays up; back empty: sessions return by themselves", async () => {
  const a = await connect(node.url);
  const ea = await enter(a, "alice", "r-restart", { handle: "Alice" });
  const b = await connect(node.url);
  const eb = await enter(b, "bob", "r-restart");
  const ka = keepAlive(a, ea.epoch, 200);
  const kb = keepAlive(b, eb.epoch, 200);
  const seen = [a.received.length, b.received.length];
  try {
    await sleep(300);
    await redis.stop();
    // Not ready while Redis is away, but alive.
    let ready;
    for (let i = 0; i < 40; i++) {
      ready = await getJson(`${node.url}/readyz`);
      if (ready.status === 503) break;
      await sleep(100);
    }
    assert.equal(ready.status, 503);
    assert.equal(ready.body.error.code, "unavailable");
    assert.equal((await getJson(`${node.url}/healthz`)).status, 200);
    const refused = await call(a, "presence:state", { roomId: "r-restart", epoch: ea.epoch, patch: { x: 1 } });
    assert.equal(refused.ok, false);
    assert.equal(refused.error.code, "unavailable");
    assert.ok(a.connected && b.connected, "clients stay connected");

    await redis.restart(); // empty
    const t0 = Date.now();
    let room;
    for (let i = 0; i < 100; i++) {
      room = await getJson(`${node.url}/api/rooms/r-restart/presence`);
      if (room.status === 200 && room.body.sessions[ea.sessionId] && room.body.sessions[eb.sessionId]) break;
      await sleep(100);
    }
    const back = Date.now() - t0;
    assert.ok(room.body.sessions[ea.sessionId], "alice's session is back under its id");
    assert.ok(room.body.sessions[eb.sessionId], "bob's session is back under its id");
    assert.equal(room.body.users.alice.handle, "Alice");
    assert.ok(back < 5000, `back within a few heartbeats (${back} ms)`);
    // Back at the first heartbeat that reached Redis again (so within one
    // heartbeat interval of the node reconnecting), and the ack told the
    // client its new epoch.
    for (const [who, k] of [["alice", ka], ["bob", kb]]) {
      const down = k.acks.findIndex((x) => !x.ok);
      assert.ok(down >= 0, `${who}: heartbeats failed while Redis was away`);
      // The reviving heartbeat's ack may still be on its way.
      for (let i = 0; i < 50 && !k.acks.slice(down).some((x) => x.ok); i++) await sleep(100);
      const first = k.acks.slice(down).find((x) => x.ok);
      assert.equal(first?.revived, true, `${who}: ${JSON.stringify(k.acks.slice(down, down + 40))}`);
    }
    // Diffs flow again: a change by alice reaches bob.
    const from = b.received.length;
    const epoch = ka.acks.filter((x) => x.ok).at(-1).epoch;
    const st = await call(a, "presence:state", { roomId: "r-restart", epoch, patch: { back: true } });
    assert.equal(st.ok, true, JSON.stringify(st));
    // The node's event subscription may still be reconnecting: the change
    // reaches bob anyway, through the re-read that follows the resubscription.
    await waitFor(b, "presence:diff", (d) => d.users.alice?.state?.back === true, { from, timeoutMs: 5000 });
    // Ready once the pool and the event subscription are both back.
    for (let i = 0; i < 50; i++) {
      ready = await getJson(`${node.url}/readyz`);
      if (ready.status === 200) break;
      await sleep(100);
    }
    assert.equal(ready.status, 200, JSON.stringify(ready.body));
    // Neither observer was ever shown the other (or itself) leaving: the
    // sessions never left, Redis only forgot them for a moment.
    for (const [who, socket, from] of [["alice", a, seen[0]], ["bob", b, seen[1]]]) {
      const gone = socket.received.slice(from).filter((r) => r.event === "presence:diff" &&
        (r.payload.sessions[ea.sessionId] === null || r.payload.sessions[eb.sessionId] === null ||
          r.payload.users.alice === null || r.payload.users.bob === null));
      assert.deepEqual(gone.map((r) => r.payload), [], `${who} was shown a session leaving`);
    }
  } finally {
    ka.stop();
    kb.stop();
  }
});

test("rediss://: a node reaches a TLS Redis whose certificate comes from a private CA", async () => {
  const tls = await startRedis({ tls: true });
  const n = await startNode({ ...FAST, "--redis-url": tls.url, "--redis-ca-file": tls.caFile });
  try {
    assert.equal((await getJson(`${n.url}/readyz`)).status, 200);
    const a = await connect(n.url);
    const hello = await call(a, "presence:hello", { userId: "alice" });
    assert.equal(hello.ok, true);
    const join = await call(a, "presence:join", { roomId: "r-tls", state: { x: 1 } });
    assert.equal(join.snapshot.sessions[hello.sessionId].userId, "alice");
    const room = await getJson(`${n.url}/api/rooms/r-tls/presence`);
    assert.deepEqual(room.body.users.alice.state, { x: 1 });
    a.close();
  } finally {
    await n.stop();
    await tls.stop();
  }
});

test("rediss:// without the CA: the node refuses the certificate and says so", async () => {
  const tls = await startRedis({ tls: true });
  try {
    await assert.rejects(
      startNode({ ...FAST, "--redis-url": tls.url }),
      /TLS certificate is not trusted/,
    );
  } finally {
    await tls.stop();
  }
});

test("/readyz answers within 250 ms even while Redis hangs (SIGSTOP)", async () => {
  const stalled = await startRedis();
  const n = await startNode({ ...FAST, "--redis-url": stalled.url });
  try {
    assert.equal((await getJson(`${n.url}/readyz`)).status, 200);
    stalled.proc.kill("SIGSTOP");
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      const r = await getJson(`${n.url}/readyz`);
      const took = Date.now() - t0;
      assert.equal(r.status, 503);
      assert.equal(r.body.error.code, "unavailable");
      assert.ok(took < 250, `answered in ${took} ms`);
    }
    stalled.proc.kill("SIGCONT");
    let ready;
    for (let i = 0; i < 50; i++) {
      ready = await getJson(`${n.url}/readyz`);
      if (ready.status === 200) break;
      await sleep(100);
    }
    assert.equal(ready.status, 200);
  } finally {
    stalled.proc?.kill("SIGCONT");
    await n.stop();
    await stalled.stop();
  }
});
