// e2e: docker (runs once, in the Docker step of scripts/test.sh)
// docker-compose.yml as it is, really up: Redis, three nodes and nginx from
// images built on the machine (scripts/images.sh), on the network Compose
// makes for the project, nginx published on a loopback port. Clients join
// and see diffs through nginx; `docker stop` drains one node, its clients
// resume their sessions on the others and observers see no leave; then
// everything is torn down.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { root, freePort, liveClient, closeAll, getJson, until, sleep } from "./helpers.js";
import { docker, dockerMissing, requireImage } from "./docker.js";

const IMAGES = {
  PRESENCE_IMAGE: ["presence-node:local", "scripts/images.sh node"],
  REDIS_IMAGE: ["presence-redis:local", "scripts/images.sh redis"],
  NGINX_IMAGE: ["presence-nginx:local", "scripts/images.sh nginx"],
};

/** Compose v2 (`docker compose`) or Debian's docker-compose (v1), whichever is here. */
function composeCommand() {
  if (spawnSync("docker", ["compose", "version"], { stdio: "ignore" }).status === 0) return ["docker", "compose"];
  if (spawnSync("docker-compose", ["version"], { stdio: "ignore" }).status === 0) return ["docker-compose"];
  return null;
}
const missing = dockerMissing() || (composeCommand() ? false : "neither `docker compose` nor docker-compose is installed");

const project = `presence-e2e-${process.pid}`;
let url, env;
function compose(...args) {
  const [cmd, ...pre] = composeCommand();
  const r = spawnSync(cmd, [...pre, "-p", project, "-f", path.join(root, "docker-compose.yml"), ...args],
    { cwd: root, env, encoding: "utf8", timeout: 180000 });
  if (r.status !== 0) throw new Error(`compose ${args.join(" ")}: ${r.error ?? ""}${r.stderr}`);
  return r.stdout.trim();
}

before(async () => {
  if (missing) return;
  for (const [image, how] of Object.values(IMAGES)) requireImage(image, how);
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  env = { ...process.env, PRESENCE_HTTP_PORT: String(port) };
  for (const [name, [image]] of Object.entries(IMAGES)) env[name] = env[name] || image;
  compose("up", "-d", "--no-build");
  // Ready through nginx, and every node registered in Redis.
  await until(async () => {
    const r = await getJson(`${url}/api/cluster`).catch(() => null);
    return r?.status === 200 && r.body.nodes.length === 3;
  }, `three nodes behind nginx (${compose("ps")}\n${compose("logs", "--tail", "20")})`, 60000);
});
after(() => {
  closeAll();
  if (!missing && env) compose("down", "--volumes", "--remove-orphans", "--timeout", "15");
});

/** Clients of users u0.. through nginx until each node holds at least four (bounded). */
async function spread(room) {
  const clients = [];
  const on = (id) => clients.filter((c) => c.nodeId === id).length;
  for (let i = 0; i < 60 && !["node1", "node2", "node3"].every((id) => on(id) >= 4); i++) {
    const c = liveClient(url, `u${i}`, { rooms: [room], heartbeatMs: 1000 });
    clients.push(c);
    await until(() => c.hellos.length > 0 && c.errors.length === 0, `u${i}'s hello and join (${JSON.stringify(c.errors)})`);
  }
  for (const id of ["node1", "node2", "node3"]) assert.ok(on(id) >= 4, `nginx sent clients to ${id}`);
  return clients;
}

/** Every session any of `clients` saw removed from `room` since `from` (per client). */
function removedSessions(clients, room, from) {
  const removed = new Set();
  for (const c of clients) {
    for (const r of c.socket.received.slice(from.get(c) ?? 0)) {
      if (r.event !== "presence:diff" || r.payload.roomId !== room) continue;
      for (const [sid, v] of Object.entries(r.payload.sessions)) if (v === null) removed.add(sid);
    }
  }
  return removed;
}

test("compose: Redis, three nodes and nginx up; a join through nginx reaches members on every node", { skip: missing }, async () => {
  const room = "compose-lobby";
  const clients = await spread(room);
  const from = new Map(clients.map((c) => [c, c.socket.received.length]));
  const late = liveClient(url, "late-user", { rooms: [room] });
  await until(() => late.hellos.length > 0, "the late client's join");
  for (const c of clients) {
    await until(() => c.socket.received.slice(from.get(c)).some((r) => r.event === "presence:diff"
      && r.payload.roomId === room && r.payload.sessions[late.sessionId]?.status === "active"),
    `${c.userId} (on ${c.nodeId}) sees the late join in a diff`);
  }
  const who = await getJson(`${url}/api/rooms/${room}/presence`);
  assert.equal(Object.keys(who.body.users).length, clients.length + 1);
});

test("compose: docker stop drains a node; its clients resume on the others and no one sees a leave", { skip: missing }, async () => {
  const room = "compose-drain";
  const clients = await spread(room);
  const moving = clients.filter((c) => c.nodeId === "node2");
  const staying = clients.filter((c) => c.nodeId !== "node2");
  const before = new Map(moving.map((c) => [c, { sessionId: c.sessionId, hellos: c.hellos.length }]));
  const from = new Map(clients.map((c) => [c, c.socket.received.length]));

  console.log(`# compose drain: ${moving.length} of ${clients.length} clients on node2`);
  const node2 = compose("ps", "-q", "node2");
  docker("stop", "-t", "15", node2);
  assert.equal(JSON.parse(docker("inspect", node2))[0].State.ExitCode, 0, "node2 drained and exited 0");

  for (const c of moving) {
    await until(() => c.hellos.length > before.get(c).hellos, `${c.userId} says hello again after the drain`, 20000);
    const hello = c.hellos.at(-1);
    assert.equal(hello.resumed, true, `${c.userId} resumed (${JSON.stringify(hello)})`);
    assert.equal(hello.sessionId, before.get(c).sessionId);
    assert.notEqual(hello.nodeId, "node2");
    assert.ok(c.notices.some((n) => n.reason === "shutdown"), `${c.userId} was told to reconnect`);
  }
  await sleep(1500); // a few heartbeats and debounce windows: a late leave would show
  assert.deepEqual([...removedSessions(clients, room, from)], [], "no session left the room");
  for (const c of [...moving, ...staying]) assert.deepEqual(c.errors, [], c.userId);
  const who = await getJson(`${url}/api/rooms/${room}/presence`);
  assert.equal(Object.keys(who.body.users).length, clients.length, "every user still in the room");
});
