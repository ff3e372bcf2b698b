// The HTTP API against a real node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startNode, connect, closeAll, call, enter, getJson, STORE } from "./helpers.js";

let node;
before(async () => { node = await startNode({ "--emit-debounce-ms": 0 }); });
after(async () => { closeAll(); await node?.stop(); });

test("health and readiness", async () => {
  assert.deepEqual(await getJson(`${node.url}/healthz`), { status: 200, body: { ok: true } });
  assert.deepEqual(await getJson(`${node.url}/readyz`), { status: 200, body: { ok: true, store: STORE } });
});

test("who's online, room presence, stats and bulk status", async () => {
  const a1 = await connect(node.url);
  const e1 = await enter(a1, "alice", "room-1");
  const a2 = await connect(node.url);
  await enter(a2, "alice", "room-1");
  const b = await connect(node.url);
  const hb = await call(b, "presence:hello", { userId: "bob" }); // online, in no room

  const online = await getJson(`${node.url}/api/whos-online`);
  assert.equal(online.status, 200);
  assert.equal(online.body.ok, true);
  assert.equal(online.body.users.alice.sessionCount, 2);
  assert.equal(online.body.users.bob.status, "active");
  assert.ok(online.body.sessions[hb.sessionId]);
  assert.equal(typeof online.body.generatedAt, "number");

  const page = await getJson(`${node.url}/api/whos-online?limit=1`);
  assert.deepEqual(Object.keys(page.body.users), ["alice"]);
  assert.equal(page.body.nextCursor, "alice");
  const page2 = await getJson(`${node.url}/api/whos-online?limit=1&cursor=alice`);
  assert.deepEqual(Object.keys(page2.body.users), ["bob"]);
  assert.equal(page2.body.nextCursor, undefined);

  const room = await getJson(`${node.url}/api/rooms/room-1/presence`);
  assert.equal(room.body.roomId, "room-1");
  assert.deepEqual(Object.keys(room.body.users), ["alice"]);
  assert.equal(Object.keys(room.body.sessions).length, 2);
  assert.ok(room.body.sessions[e1.sessionId]);

  assert.deepEqual((await getJson(`${node.url}/api/rooms/room-1/stats`)).body, { ok: true, roomId: "room-1", sessions: 2, users: 1 });
  assert.deepEqual((await getJson(`${node.url}/api/rooms/empty/stats`)).body, { ok: true, roomId: "empty", sessions: 0, users: 0 });

  const st = await getJson(`${node.url}/api/users/status`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userIds: ["alice", "bob", "nobody"] }),
  });
  assert.equal(st.status, 200);
  assert.equal(st.body.users.alice.status, "active");
  assert.equal(st.body.users.alice.sessionCount, 2);
  assert.equal(st.body.users.bob.status, "active");
  assert.deepEqual(st.body.users.nobody, { status: "offline", confidence: "low", sessionCount: 0, lastSeenAt: 0, lastHeartbeatAt: 0 });

  const cl = await getJson(`${node.url}/api/cluster`);
  assert.equal(cl.body.nodes.length, 1);
  assert.equal(cl.body.nodes[0].sessions, 3);
  assert.equal(cl.body.nodes[0].addr, new URL(node.url).host);
  assert.equal(cl.body.store, STORE);
  // The one node holds the reaper lease.
  assert.equal(cl.body.leader.nodeId, cl.body.nodes[0].nodeId);
  assert.ok(cl.body.leader.term >= 1);
  assert.ok(cl.body.leader.leaseUntil > Date.now() - 1000);
  closeAll();
});

test("bad input is a 4xx with a JSON error body", async () => {
  const post = (body, headers = { "content-type": "application/json" }) =>
    getJson(`${node.url}/api/users/status`, { method: "POST", headers, body });
  const cases = [
    [await getJson(`${node.url}/api/rooms/bad%20room/presence`), 400, "roomId"],
    [await getJson(`${node.url}/api/rooms/${"x".repeat(200)}/stats`), 400, "roomId"],
    [await getJson(`${node.url}/api/whos-online?limit=0`), 400, "limit"],
    [await getJson(`${node.url}/api/whos-online?limit=abc`), 400, "limit"],
    [await getJson(`${node.url}/api/whos-online?cursor=a%20b`), 400, "cursor"],
    [await post("{not json"), 400, "body"],
    [await post(JSON.stringify({ userIds: "alice" })), 400, "userIds"],
    [await post(JSON.stringify({ userIds: [1] })), 400, "userIds"],
    [await post(JSON.stringify({ userIds: Array.from({ length: 1001 }, (_, i) => `u${i}`) })), 400, "userIds"],
    [await post(JSON.stringify({ userIds: ["x".repeat(300000)] })), 413, "body"],
  ];
  for (const [res, status, field] of cases) {
    assert.equal(res.status, status, JSON.stringify(res.body).slice(0, 200));
    assert.equal(res.body.ok, false);
    assert.equal(res.body.error.field, field);
    assert.equal(typeof res.body.error.message, "string");
  }
  const nf = await getJson(`${node.url}/api/nope`);
  assert.equal(nf.status, 404);
  assert.equal(nf.body.error.code, "not_found");
});

test("the demo page and its socket.io client are served", async () => {
  const page = await fetch(`${node.url}/`);
  assert.equal(page.status, 200);
  const html = await page.text();
  assert.match(html, /presence-cluster/);
  assert.match(html, /sessionStorage/);
  const js = await fetch(`${node.url}/assets/socket.io.min.js`);
  assert.equal(js.status, 200);
  assert.match(await js.text(), /Socket\.IO v4/);
});

test("Prometheus metrics count requests by result", async () => {
  const a = await connect(node.url);
  await enter(a, "metric-user", "room-metrics");
  await call(a, "presence:heartbeat", { epoch: 1 }); // stale_epoch: not this connection's epoch
  const res = await fetch(`${node.url}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /text\/plain/);
  const text = await res.text();
  assert.match(text, /presence_requests_total\{event="presence:hello",result="ok"\} \d+/);
  assert.match(text, /presence_requests_total\{event="presence:heartbeat",result="stale_epoch"\} 1/);
  assert.match(text, /presence_sessions_local \d+/);
  assert.match(text, /presence_rooms_local [1-9]/);
  assert.match(text, /presence_events_total\{type="join"\} \d+/);
  closeAll();
});
