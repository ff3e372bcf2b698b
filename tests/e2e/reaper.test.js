// e2e: own-redis (runs once, in the memory pass)
// The reaper: when a node dies, its sessions go everywhere within
// heartbeatTimeoutMs + reconnectGraceMs + pruneIntervalMs, removed by
// whichever node holds the leader lease.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startRedis, startNode, connect, closeAll, waitFor, sleep, enter, getJson, keepAlive, FAST } from "./helpers.js";

const BOUND = FAST["--heartbeat-timeout-ms"] + FAST["--reconnect-grace-ms"] + FAST["--prune-interval-ms"];

let redis, nodes;
before(async () => {
  redis = await startRedis();
  const flags = { ...FAST, "--redis-url": redis.url, "--key-prefix": "reaper", "--leader-lease-ms": 1000 };
  nodes = [];
  for (const id of ["r-1", "r-2", "r-3"]) nodes.push(await startNode({ ...flags, "--node-id": id }));
});
after(async () => {
  closeAll();
  for (const n of nodes || []) await n.stop();
  await redis?.stop();
});

/** `n` heartbeating clients on `node` in `room`, once `obs` has seen them all.
 * Returns their session ids and the functions that stop their heartbeats. */
async function crowd(node, prefix, n, room, obs) {
  const sids = [];
  const stops = [];
  for (let i = 0; i < n; i++) {
    const c = await connect(node.url);
    const e = await enter(c, `${prefix}-${i}`, room);
    sids.push(e.sessionId);
    stops.push(keepAlive(c, e.epoch));
  }
  await waitFor(obs, "presence:diff", () => {
    const seen = new Set(obs.received.filter((r) => r.event === "presence:diff").flatMap((r) => Object.keys(r.payload.sessions)));
    return sids.every((s) => seen.has(s));
  }, { timeoutMs: 10000 });
  return { sids, stops };
}

/** Resolves once every session of `sids` was removed in a diff `obs` got (from index `from`). */
function allGone(obs, sids, from) {
  const gone = new Set();
  return waitFor(obs, "presence:diff", (d) => {
    for (const [sid, v] of Object.entries(d.sessions)) if (v === null) gone.add(sid);
    return sids.every((s) => gone.has(s));
  }, { from, timeoutMs: 10000 });
}

test("SIGKILL of a node holding 100 sessions: observers elsewhere see them go within the bound, no phantom stays", async () => {
  const room = "r-crash";
  // The node that dies does not lead, so that this measures the sessions'
  // bound alone (the leader dying too only adds at most the lease, which is
  // shorter than the bound).
  let leader = null;
  for (let i = 0; i < 50 && !leader; i++) {
    leader = (await getJson(`${nodes[0].url}/api/cluster`)).body.leader?.nodeId;
    if (!leader) await sleep(100);
  }
  const ids = ["r-1", "r-2", "r-3"];
  const dying = nodes[ids.findIndex((id) => id !== leader)];
  const others = nodes.filter((n) => n !== dying);
  const obs = await connect(others[0].url);
  const eo = await enter(obs, "observer", room);
  const stopObs = keepAlive(obs, eo.epoch);
  const { sids, stops } = await crowd(dying, "crash", 100, room, obs);
  try {
    const from = obs.received.length;
    const killedAt = Date.now();
    dying.proc.kill("SIGKILL");
    // Every one of the 100 is removed (a null in some diff), and the clock stops there.
    await allGone(obs, sids, from);
    const took = Date.now() - killedAt;
    console.log(`100 sessions of a killed node gone everywhere after ${took} ms (bound ${BOUND} ms + the diff's debounce)`);
    // The store removes them by the bound; the observer sees it one debounce
    // window and a sweep's work later (100 sessions, a debug build on a
    // busy CI machine: allow a second for that, and print the figure).
    assert.ok(took <= BOUND + FAST["--emit-debounce-ms"] + 1000, `within the bound (${took} ms)`);
    const online = await getJson(`${others[1].url}/api/whos-online`);
    assert.deepEqual(Object.keys(online.body.users), ["observer"], "no phantom");
    const stats = await getJson(`${others[1].url}/api/rooms/${room}/stats`);
    assert.deepEqual([stats.body.sessions, stats.body.users], [1, 1]);
  } finally {
    stopObs();
    for (const s of stops) s();
  }
});

test("SIGKILL of the leader holding sessions: another node leads within the lease and reaps them within the bound", async () => {
  const room = "r-leader";
  const alive = nodes.filter((n) => n.proc.exitCode === null && n.proc.signalCode === null);
  const cluster = async (n) => (await getJson(`${n.url}/api/cluster`)).body.leader;
  let lead = null;
  for (let i = 0; i < 50 && !lead; i++) {
    lead = await cluster(alive[0]);
    if (!lead) await sleep(100);
  }
  const leader = nodes[["r-1", "r-2", "r-3"].indexOf(lead.nodeId)];
  assert.ok(alive.includes(leader), "the leader is a live node");
  const survivor = alive.find((n) => n !== leader);
  const obs = await connect(survivor.url);
  const eo = await enter(obs, "observer-2", room);
  const stopObs = keepAlive(obs, eo.epoch);
  const { sids, stops } = await crowd(leader, "lead", 20, room, obs);
  try {
    const from = obs.received.length;
    const killedAt = Date.now();
    leader.proc.kill("SIGKILL");
    let next = null;
    for (let i = 0; i < 100; i++) {
      next = await cluster(survivor);
      if (next && next.nodeId !== lead.nodeId) break;
      await sleep(20);
    }
    const tookOver = Date.now() - killedAt;
    assert.ok(next && next.nodeId !== lead.nodeId && next.term > lead.term, JSON.stringify(next));
    await allGone(obs, sids, from);
    const took = Date.now() - killedAt;
    console.log(`leader killed: a new one after ${tookOver} ms (lease 1000 ms), its 20 sessions gone after ${took} ms (bound ${BOUND} ms)`);
    // The new leader exists before the sessions are even due (lease < bound),
    // so they go within the same bound as any crashed node's.
    assert.ok(took <= BOUND + FAST["--emit-debounce-ms"] + 1000, `within the bound (${took} ms)`);
    const stats = await getJson(`${survivor.url}/api/rooms/${room}/stats`);
    assert.deepEqual([stats.body.sessions, stats.body.users], [1, 1]);
  } finally {
    stopObs();
    for (const s of stops) s();
  }
});
