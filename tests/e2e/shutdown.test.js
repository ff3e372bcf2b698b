// e2e: own-redis (runs once, in the memory pass)
// Graceful shutdown and rolling restarts: three nodes on one Redis behind
// nginx (deploy/nginx.conf). A node that gets SIGTERM stops accepting, asks
// its clients to reconnect, hands the reaper lease over and exits within
// 10 s; its clients resume their sessions on another node, and observers
// (clients and Redis subscribers) see no leave and no flapping.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startCluster, restartNode, liveClient, closeAll, getJson, until, sleep,
  subscribeEvents, startReceiver,
} from "./helpers.js";

// Heartbeats every second; a session turns stale after 6 s without one, so
// a client that reconnects within a few seconds never looks stale.
const FLAGS = {
  "--heartbeat-interval-ms": 1000,
  "--heartbeat-timeout-ms": 6000,
  "--reconnect-grace-ms": 6000,
  "--idle-after-ms": 600000,
  "--away-after-ms": 900000,
  "--prune-interval-ms": 100,
  "--emit-debounce-ms": 100,
  "--leader-lease-ms": 3000,
  "--key-prefix": "drain",
};
const IDS = ["d-1", "d-2", "d-3"];

// Lifecycle events go to a webhook receiver: a rolling restart must show
// backends no member.left either. A batch a stopping node had in flight is
// taken over by another node after 2 s.
const SECRET = "e2e-webhook-secret-0123";
let redis, nodes, lb, cl, hooks;
before(async () => {
  hooks = await startReceiver(SECRET);
  cl = await startCluster(IDS, {
    ...FLAGS, "--webhook-url": hooks.url, "--webhook-secret": SECRET, "--webhook-claim-idle-ms": 2000,
  });
  ({ redis, nodes, lb } = cl);
});
after(async () => { await cl?.stop(); await hooks?.stop(); });
afterEach(() => closeAll());

/** /api/cluster, as the node at `url` (one that is not shutting down) sees it. */
const cluster = async (url = nodes[0].url) => (await getJson(`${url}/api/cluster`)).body;

/** Every session id a client's diffs removed (null), and every status they showed, per session. */
function seen(clients) {
  const removed = new Set();
  const statuses = new Map();
  for (const c of clients) {
    for (const r of c.socket.received) {
      if (r.event !== "presence:diff") continue;
      for (const [sid, v] of Object.entries(r.payload.sessions)) {
        if (v === null) removed.add(sid);
        else if (v.status) statuses.set(sid, [...(statuses.get(sid) || []), v.status]);
      }
    }
  }
  return { removed, statuses };
}

test("SIGTERM: the node hands the lease over, asks its clients to reconnect and exits within 10 s; they resume elsewhere and observers see nothing", async () => {
  const room = "r-drain";
  let before = await cluster();
  await until(async () => (before = await cluster()).leader, "a leader");
  const leader = nodes[IDS.indexOf(before.leader.nodeId)];
  const other = nodes.find((n) => n !== leader).url;
  const observer = liveClient(other, "observer", { rooms: [room] });
  await until(() => observer.hellos.length === 1, "the observer's hello");
  const sub = await subscribeEvents(redis.port, [`drain:events:{${room}}`]);

  // Clients through nginx until ten of them are on the leader (bounded).
  const onLeader = [];
  for (let i = 0; i < 90 && onLeader.length < 10; i++) {
    const c = liveClient(lb.url, `drain-${i}`, { rooms: [room] });
    await until(() => c.hellos.length === 1 && c.errors.length === 0, `client ${i}'s hello and join`);
    if (c.nodeId === leader.flags["--node-id"]) onLeader.push(c);
    else c.close();
  }
  assert.equal(onLeader.length, 10, "nginx sent ten clients to the leader");
  const sids = new Set(onLeader.map((c) => c.sessionId));
  await until(() => observer.socket.received.some((r) => r.event === "presence:diff"), "the observer to see them");
  const first = new Map(onLeader.map((c) => [c, c.hellos[0]]));
  before = await cluster(other);

  const exited = new Promise((r) => leader.proc.once("exit", (code, signal) => r({ code, signal })));
  const t0 = Date.now();
  leader.proc.kill("SIGTERM");
  // A node that stops the lease hands it over: another node leads long
  // before the lease the old one renewed last would have run out.
  let after;
  await until(async () => (after = await cluster(other)).leader && after.leader.nodeId !== before.leader.nodeId,
    "a new leader", 10000);
  const handedOver = Date.now();
  const { code, signal } = await exited;
  const took = Date.now() - t0;
  console.log(`SIGTERM to exit: ${took} ms; new leader after ${handedOver - t0} ms (the old lease ran until ${before.leader.leaseUntil - t0} ms)`);
  assert.equal(code, 0, `clean exit (signal ${signal})`);
  assert.ok(took < 10000, `exits within 10 s (${took} ms)`);
  assert.ok(after.leader.term > before.leader.term, "the new leader has a higher term");
  assert.ok(handedOver < before.leader.leaseUntil, "the lease was released, not left to lapse");

  // Every client was told, reconnected to another node and resumed its session.
  await until(() => onLeader.every((c) => c.hellos.length === 2), "every client to resume", 15000);
  for (const c of onLeader) {
    assert.deepEqual(c.notices, [{ reason: "shutdown", nodeId: leader.flags["--node-id"] }]);
    const [h1, h2] = c.hellos;
    assert.equal(h2.resumed, true);
    assert.equal(h2.sessionId, h1.sessionId);
    assert.equal(h2.epoch, first.get(c).epoch + 1);
    assert.notEqual(h2.nodeId, h1.nodeId);
    assert.deepEqual(h2.rooms, [room]);
  }
  await sleep(500); // a few debounce windows, for a late diff to show up
  const { removed, statuses } = seen([observer]);
  for (const sid of sids) {
    assert.ok(!removed.has(sid), "observers never see the session go");
    assert.ok((statuses.get(sid) || []).every((s) => s === "active"), `never stale: ${statuses.get(sid)}`);
  }
  const bad = sub.events.filter((e) => sids.has(e.sessionId) && e.type !== "join");
  assert.deepEqual(bad, [], "Redis subscribers see nothing but the joins");
  sub.stop();
  observer.close();
  await restartNode(leader);
});

test("rolling restart of all three nodes under 300 live clients: no session lost, no leave seen", async () => {
  const rooms = ["r-roll-0", "r-roll-1", "r-roll-2"];
  const sub = await subscribeEvents(redis.port, rooms.map((r) => `drain:events:{${r}}`));
  const observers = rooms.map((r, i) => liveClient(lb.url, `watcher-${i}`, { rooms: [r] }));
  const clients = [];
  for (let i = 0; i < 300; i++) {
    clients.push(liveClient(lb.url, `roll-${i}`, { rooms: [rooms[i % 3]] }));
    if (i % 50 === 49) await until(() => clients.every((c) => c.hellos.length === 1), "hellos", 20000);
  }
  const all = [...observers, ...clients];
  await until(() => all.every((c) => c.hellos.length === 1), "every client's hello", 20000);
  assert.deepEqual(all.flatMap((c) => c.errors), []);
  const sessions = new Map(all.map((c) => [c, c.sessionId]));
  // Sessions of ours that who's-online lists (the previous test's clients may still be there, stale).
  const online = async () => {
    const listed = (await getJson(`${lb.url}/api/whos-online?limit=1000`)).body.sessions;
    return all.filter((c) => listed[c.sessionId]).length;
  };
  assert.equal(await online(), 303);

  for (const [i, node] of nodes.entries()) {
    const moved = all.filter((c) => c.nodeId === IDS[i]);
    const hellos = new Map(moved.map((c) => [c, c.hellos.length]));
    await node.stop();
    await until(() => moved.every((c) => c.hellos.length > hellos.get(c)), `the clients of ${IDS[i]} to resume`, 30000)
      .catch((e) => {
        const left = moved.filter((c) => c.hellos.length <= hellos.get(c));
        const sample = left.slice(0, 3).map((c) => ({
          connected: c.socket.connected, errors: c.errors, attempts: c.socket.io.backoff.attempts,
        }));
        throw new Error(`${e.message}: ${left.length} of ${moved.length} left, e.g. ${JSON.stringify(sample)}; nginx: ${lb.errors().slice(-500)}`);
      });
    await restartNode(node);
    console.log(`${IDS[i]}: ${moved.length} clients moved to the other nodes and resumed`);
  }
  await sleep(500);

  assert.deepEqual(all.flatMap((c) => c.errors), []);
  for (const c of all) {
    assert.equal(c.sessionId, sessions.get(c), "same session");
    for (const h of c.hellos.slice(1)) assert.equal(h.resumed, true, `${c.userId} resumed`);
  }
  assert.ok(clients.every((c) => c.hellos.length >= 2), "every client was moved at least once");
  const lost = sub.events.filter((e) => e.type === "leave" || e.type === "expire");
  assert.deepEqual(lost, [], "no leave or expire event");
  const flaps = sub.events.filter((e) => e.type === "status");
  assert.deepEqual(flaps, [], "no session ever looked stale");
  const { removed } = seen(observers);
  assert.deepEqual([...removed], [], "observers never saw a session go");
  assert.equal(await online(), 303, "every session is still online");
  for (const r of rooms) {
    const stats = (await getJson(`${lb.url}/api/rooms/${r}/stats`)).body;
    assert.equal(stats.sessions, 101, `${r} keeps its sessions`);
  }
  // Backends saw every user come online and join once, and nobody leave.
  const ours = new Set(all.map((c) => c.userId));
  const mine = () => hooks.delivered().filter((e) => ours.has(e.userId) || rooms.includes(e.roomId));
  await until(() => mine().filter((e) => e.type === "member.joined").length === 303, "every member.joined delivered", 15000);
  const gone = mine().filter((e) => ["member.left", "user.offline", "room.vacated"].includes(e.type));
  assert.deepEqual(gone, [], "no member.left, user.offline or room.vacated");
  assert.equal(mine().filter((e) => e.type === "user.online").length, 303, "each user online once");
  assert.ok(hooks.requests.every((q) => q.verified));
});
