// e2e: own-redis (runs once, in the memory pass)
// A Redis Cluster of three masters with a replica each loses a master
// (SIGKILL) under load: sessions whose keys live on the other masters keep
// heartbeating, the dead master's sessions recover once its replica is
// promoted, nobody is shown leaving, nothing is lost, /readyz keeps answering
// (ready, saying what is down) and the reaper lease stays where it was.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startNode, startRedisCluster, connect, closeAll, call, enter, getJson, sleep } from "./helpers.js";

const PREFIX = "fo";
const CLIENTS = 40;
const ROOMS = 4;
const HEARTBEAT_MS = 500;

let cluster;
const nodes = [];

before(async () => {
  cluster = await startRedisCluster(3, 1);
  for (const id of ["fo-1", "fo-2"]) {
    nodes.push(await startNode({
      "--redis-url": cluster.url, "--key-prefix": PREFIX, "--node-id": id,
      "--redis-timeout-ms": 1000, "--leader-lease-ms": 3000,
    }));
  }
});

after(async () => {
  closeAll();
  for (const n of nodes) await n.stop();
  await cluster?.stop();
});

test("a dead master costs only its own slots", async () => {
  // Clients on both nodes, each in a room, each an observer of its room.
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    const s = await connect(nodes[i % 2].url);
    const e = await enter(s, `u${i}`, `room-${i % ROOMS}`);
    clients.push({ s, sessionId: e.sessionId, epoch: e.epoch, master: cluster.masterOf(`${PREFIX}:s:{${e.sessionId}}`), beats: [] });
  }
  const leader = (await getJson(`${nodes[0].url}/api/cluster`)).body.leader;
  assert.ok(leader?.nodeId, "a reaper leads");
  // The victim holds sessions, but neither the lease nor the node registry.
  const spared = new Set([cluster.masterOf(`${PREFIX}:lease:{lease}`), cluster.masterOf(`${PREFIX}:nodes:{nodes}`)]);
  const victim = clients.map((c) => c.master).find((m) => !spared.has(m));
  assert.notEqual(victim, undefined, "a master with sessions and nothing else to kill");
  const onVictim = clients.filter((c) => c.master === victim);
  const elsewhere = clients.filter((c) => c.master !== victim);
  assert.ok(onVictim.length > 0 && elsewhere.length > 0);

  // Load: every client heartbeats, recording each ack.
  let running = true;
  const loops = clients.map(async (c) => {
    while (running) {
      const at = Date.now();
      const ack = await c.s.timeout(3000).emitWithAck("presence:heartbeat", { epoch: c.epoch })
        .catch((e) => ({ ok: false, error: { code: `no ack: ${e.message}` } }));
      if (ack.ok) c.epoch = ack.epoch;
      c.beats.push({ at, ok: ack.ok, code: ack.error?.code });
      await sleep(HEARTBEAT_MS);
    }
  });
  // /readyz of both nodes, polled throughout.
  const probes = [];
  const probing = (async () => {
    while (running) {
      for (const n of nodes) {
        const t0 = Date.now();
        const r = await fetch(`${n.url}/readyz`, { signal: AbortSignal.timeout(1000) })
          .then(async (res) => ({ status: res.status, body: await res.json() }))
          .catch((e) => ({ status: 0, body: String(e) }));
        probes.push({ ...r, ms: Date.now() - t0 });
      }
      await sleep(100);
    }
  })();

  await sleep(1500);
  const killedAt = Date.now();
  await cluster.kill(victim);
  // Until every session of the dead master has had a heartbeat answered
  // after a failed one (its replica was promoted), 30 s at most.
  const recovered = (c) => {
    const failed = c.beats.findIndex((b) => b.at >= killedAt && !b.ok);
    return failed >= 0 && c.beats.slice(failed).some((b) => b.ok);
  };
  const end = Date.now() + 30000;
  while (Date.now() < end && !onVictim.every(recovered)) await sleep(200);
  await sleep(1500);
  running = false;
  await Promise.all(loops);
  await probing;

  for (const c of elsewhere) {
    const failed = c.beats.filter((b) => !b.ok);
    assert.deepEqual(failed, [], `a session on a healthy master failed: ${JSON.stringify(failed)}`);
  }
  for (const c of onVictim) {
    assert.ok(recovered(c), `session ${c.sessionId} did not fail and recover: ${JSON.stringify(c.beats.slice(-20))}`);
    for (const b of c.beats.filter((x) => !x.ok)) assert.equal(b.code, "unavailable", JSON.stringify(b));
  }
  // /readyz always answered, ready, and said what was down meanwhile.
  const notReady = probes.filter((p) => p.status !== 200);
  assert.deepEqual(notReady, [], "a node went unready");
  assert.ok(probes.some((p) => p.body.degraded?.some((d) => d.includes("does not answer"))),
    `no probe said part of Redis was down: ${JSON.stringify(probes.slice(-3))}`);
  // The lease stayed with its holder, in the same term.
  const after = (await getJson(`${nodes[1].url}/api/cluster`)).body.leader;
  assert.deepEqual([after.nodeId, after.term], [leader.nodeId, leader.term]);
  // Nobody was shown leaving, and every session is still in its room.
  for (const c of clients) {
    const leaves = c.s.received.filter((r) => r.event === "presence:diff"
      && Object.values(r.payload.sessions ?? {}).some((p) => p === null));
    assert.deepEqual(leaves, [], "an observer saw a session leave");
  }
  for (let r = 0; r < ROOMS; r++) {
    const view = (await getJson(`${nodes[r % 2].url}/api/rooms/room-${r}/presence`)).body;
    const expected = clients.filter((_, i) => i % ROOMS === r).map((c) => c.sessionId).sort();
    assert.deepEqual(Object.keys(view.sessions).sort(), expected, `room-${r}`);
  }
  // What the run showed, for the record.
  const worst = Math.max(...probes.map((p) => p.ms));
  const outage = Math.max(...onVictim.map((c) => {
    const b = c.beats.filter((x) => x.at >= killedAt);
    const lastFail = b.filter((x) => !x.ok).pop();
    return lastFail ? lastFail.at - killedAt : 0;
  }));
  console.log(`failover: ${onVictim.length}/${CLIENTS} sessions on the dead master, last failure ${outage} ms after the kill; slowest /readyz ${worst} ms over ${probes.length} probes`);
});
