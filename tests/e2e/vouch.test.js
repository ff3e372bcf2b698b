// e2e: own-redis (runs once, in the memory pass)
// Vouched heartbeats: a node answers its sessions' quiet heartbeats itself
// and writes their times to Redis in bulk (docs/architecture.md).
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startRedis, startNode, connect, closeAll, call, waitFor, sleep, enter, diffs, redisCli,
  monitor, isScriptCall, getJson, keepAlive,
} from "./helpers.js";

// A timeout ten intervals long, so that beats are answered by the node (a
// flush period of 250 ms: a quarter of the grace).
const FLAGS = {
  "--heartbeat-interval-ms": 200,
  "--heartbeat-timeout-ms": 2000,
  "--reconnect-grace-ms": 1000,
  "--prune-interval-ms": 50,
  "--emit-debounce-ms": 50,
  "--key-prefix": "vouch",
};

let redis, a, b;
before(async () => {
  redis = await startRedis();
  a = await startNode({ ...FLAGS, "--redis-url": redis.url, "--node-id": "node-a" });
  b = await startNode({ ...FLAGS, "--redis-url": redis.url, "--node-id": "node-b" });
});
after(async () => { closeAll(); await a?.stop(); await b?.stop(); await redis?.stop(); });
afterEach(() => closeAll());

const recorded = (sid) => Number(redisCli(redis.port, "HGET", `vouch:s:{${sid}}`, "lastHeartbeatAt").trim());

test("quiet heartbeats are answered by the node, their times reach Redis in bulk, and no one sees a change", async () => {
  const obs = await connect(b.url);
  const eobs = await enter(obs, "observer", "r-quiet");
  const stopObs = keepAlive(obs, eobs.epoch);
  const c = await connect(a.url);
  const ec = await enter(c, "carol", "r-quiet");
  await waitFor(obs, "presence:diff", (d) => d.users.carol?.status === "active");
  const from = obs.received.length;
  const mon = await monitor(redis.port);
  // Three heartbeat timeouts of beats, 200 ms apart.
  let beats = 0;
  const t0 = Date.now();
  try {
    while (Date.now() - t0 < 6000) {
      const ack = await call(c, "presence:heartbeat", { epoch: ec.epoch, activity: "active" });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      beats++;
      await sleep(200);
    }
  } finally {
    mon.stop();
    stopObs();
  }
  const sent = Date.now();
  // The session lived through them without a change anyone sees.
  const room = (await getJson(`${b.url}/api/rooms/r-quiet/presence`)).body;
  assert.equal(room.sessions[ec.sessionId].status, "active");
  const about = diffs({ received: obs.received.slice(from) }, "r-quiet").filter((d) => ec.sessionId in d.sessions || "carol" in d.users);
  assert.deepEqual(about, []);
  // Few of them reached Redis as a heartbeat script; their times did, in
  // bulk calls, each of which named this session.
  const full = mon.commands.filter((cmd) => isScriptCall(cmd, "heartbeat") && cmd.includes(`vouch:s:{${ec.sessionId}}`)).length;
  const bulk = mon.commands.filter((cmd) => isScriptCall(cmd, "beats") && cmd.includes(`vouch:s:{${ec.sessionId}}`)).length;
  assert.ok(beats >= 20, `${beats} beats`);
  assert.ok(full <= beats / 4, `${full} of ${beats} beats ran heartbeat.lua`);
  assert.ok(bulk >= 5, `${bulk} bulk writes named the session`);
  // Within a flush period of the last beat, Redis holds its time.
  await sleep(400);
  assert.ok(recorded(ec.sessionId) >= sent - 700, `recorded ${sent - recorded(ec.sessionId)} ms before the last beat`);
});

test("a session whose client stops heartbeating goes stale on time", async () => {
  const obs = await connect(b.url);
  const eobs = await enter(obs, "observer", "r-silent");
  const stopObs = keepAlive(obs, eobs.epoch);
  const c = await connect(a.url);
  const ec = await enter(c, "dora", "r-silent");
  for (let i = 0; i < 10; i++) {
    assert.ok((await call(c, "presence:heartbeat", { epoch: ec.epoch })).ok);
    await sleep(200);
  }
  const last = Date.now();
  const stale = await waitFor(obs, "presence:diff", (d) => d.sessions[ec.sessionId]?.status === "stale", { timeoutMs: 6000 });
  const after = Date.now() - last;
  stopObs();
  assert.ok(stale);
  // Not before the timeout after the last beat (less a flush period), and
  // not much after it (the sweeper runs every 50 ms).
  assert.ok(after >= 2000 - 300, `stale ${after} ms after the last beat`);
  assert.ok(after <= 2000 + 1000, `stale ${after} ms after the last beat`);
});

test("a takeover on node B ends node A's vouch: the old connection's beats answer stale_epoch", async () => {
  const old = await connect(a.url);
  const eo = await enter(old, "erin", "r-take");
  for (let i = 0; i < 5; i++) {
    assert.ok((await call(old, "presence:heartbeat", { epoch: eo.epoch })).ok);
    await sleep(100);
  }
  const nu = await connect(b.url);
  const hello = await call(nu, "presence:hello", { userId: "erin", sessionId: eo.sessionId });
  assert.equal(hello.resumed, true);
  await waitFor(old, "presence:error", (e) => e.error.code === "stale_epoch", { timeoutMs: 3000 });
  const before = recorded(eo.sessionId);
  for (let i = 0; i < 5; i++) {
    const hb = await call(old, "presence:heartbeat", { epoch: eo.epoch });
    assert.equal(hb.error?.code, "stale_epoch", JSON.stringify(hb));
    await sleep(100);
  }
  await sleep(400);
  assert.equal(recorded(eo.sessionId), before, "nothing of the old connection was written");
  assert.ok((await call(nu, "presence:heartbeat", { epoch: hello.epoch })).ok);
});
