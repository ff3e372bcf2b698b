// The client against two nodes on one Redis behind nginx: resume across
// nodes, recovery after the nodes' subscriptions were killed, a token that
// expires and is renewed, a large room's counts, pages and watch list.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startRedis, startNode, startNginx, restartNode, redisCli, jwt, getJson, FAST } from "../../../tests/e2e/helpers.js";
import { client, closeAll, until } from "./support.mjs";

let redis, a, b, lb;
before(async () => {
  redis = await startRedis();
  // Short timings: sessions go stale and resume within a test.
  const flags = { ...FAST, "--redis-url": redis.url, "--key-prefix": "sdk", "--full-view-max-members": 6 };
  a = await startNode({ ...flags, "--node-id": "sdk-a" });
  b = await startNode({ ...flags, "--node-id": "sdk-b" });
  lb = await startNginx([a, b]);
});
after(async () => { await lb?.stop(); await a?.stop(); await b?.stop(); await redis?.stop(); });

test("through nginx: a session resumes on the other node when its node shuts down, without flapping", async () => {
  const obs = client(lb.url, { userId: "obs" });
  const ro = await obs.join("c-1");
  const ada = client(lb.url, { userId: "ada" });
  await ada.join("c-1");
  await until(ro, "change", () => ro.users.has("ada"));
  const seen = [];
  ro.on("leave", (id) => seen.push(["leave", id]));
  ro.on("join", (u) => seen.push(["join", u.userKey]));
  const id = ada.sessionId;
  const first = ada.nodeId;
  // The observer may have been on that node too: it resumes as well.
  const gone = first === "sdk-a" ? a : b;
  await gone.stop();
  await until(ada, "connection", () => ada.state === "resumed" && ada.nodeId !== first, 12000);
  assert.equal(ada.sessionId, id);
  assert.equal(ada.nodeId, first === "sdk-a" ? "sdk-b" : "sdk-a");
  await until(obs, "connection", () => obs.state !== "reconnecting", 12000);
  const room = ada.joined.get("c-1");
  await room.setState({ moved: true });
  await until(ro, "change", () => ro.sessions.get(id)?.state?.moved === true);
  assert.deepEqual(seen, [], "no leave, no join");
  await restartNode(gone);
  await closeAll();
});

test("through nginx: a view that missed events while the subscriptions were down is corrected", async () => {
  const obs = client(lb.url, { userId: "obs2" });
  const ro = await obs.join("c-2");
  const others = [];
  for (const u of ["p1", "p2"]) {
    const c = client(lb.url, { userId: u });
    others.push(await c.join("c-2"));
  }
  await until(ro, "change", () => ro.users.size === 3);
  const killed = Number(redisCli(redis.port, "CLIENT", "KILL", "TYPE", "pubsub").trim());
  assert.ok(killed >= 2, `killed ${killed} subscriptions`);
  await others[0].setState({ during: "gap" });
  await others[1].leave();
  await until(ro, "change", () => !ro.users.has("p2") && [...ro.sessions.values()].some((x) => x.state?.during === "gap"))
;
  const truth = await getJson(`${a.url}/api/rooms/c-2/presence`);
  assert.deepEqual([...ro.users.keys()].sort(), Object.keys(truth.body.users).sort());
  await closeAll();
});

test("a token that expires is renewed: the session resumes with a fresh one", async () => {
  const secret = "sdk-secret-0123456789abcdef-0123456789";
  const node = await startNode({ "--jwt-secret": secret });
  try {
    let made = 0;
    const token = () => {
      made += 1;
      // The first lives 2 s; later ones an hour.
      const exp = Math.floor(Date.now() / 1000) + (made === 1 ? 2 : 3600);
      return jwt({ sub: "tok", exp, rooms: ["*"] }, { secret });
    };
    const p = client(node.url, { token });
    const room = await p.join("c-3");
    const id = p.sessionId;
    const errors = [];
    p.on("error", (e) => errors.push(e.code));
    await until(p, "connection", () => p.state === "resumed", 12000);
    assert.ok(errors.includes("unauthorized"), JSON.stringify(errors));
    assert.equal(p.sessionId, id);
    assert.ok(made >= 2);
    assert.equal(room.me.user.userKey, "tok");
  } finally {
    await closeAll();
    await node.stop();
  }
});

test("a large room: counts, pages and a watch list", async () => {
  const members = [];
  for (let i = 0; i < 7; i++) {
    const c = client(i % 2 ? a.url : b.url, { userId: `m${i}` });
    members.push(c);
    await c.join("c-4");
  }
  const zed = client(lb.url, { userId: "zed" });
  const room = await zed.join("c-4");
  assert.equal(room.view, "count");
  assert.equal(room.counts.users.total, 8);
  assert.equal(room.users.size, 0, "a count follower holds no entries");
  assert.equal(room.me.user.userKey, "zed");
  const p1 = await room.members({ limit: 5 });
  const p2 = await room.members({ cursor: p1.nextCursor, limit: 5 });
  assert.deepEqual([...Object.keys(p1.users), ...Object.keys(p2.users)], ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "zed"]);
  assert.equal(p2.nextCursor, undefined);
  await room.watch(["m3"]);
  assert.equal(room.view, "watch");
  assert.deepEqual([...room.users.keys()], ["m3"]);
  members[3].setActivity("background");
  await until(room, "status", () => room.users.get("m3")?.status === "away");
  await members[5].close();
  await until(room, "counts", () => room.counts.users.total === 7);
  await closeAll();
});
