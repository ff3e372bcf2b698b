// Security: JWT on the Socket.IO handshake (HS256 and RS256), the rooms a
// token grants, the HTTP API key, CORS, sessions per user, rate limits.
// Tokens are made here with Node's crypto, as an issuer would.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { io } from "socket.io-client";
import { startNode, connect, closeAll, call, enter, getJson, sleep, until, waitFor, jwt as sign, FAST } from "./helpers.js";

const SECRET = "e2e-secret-0123456789abcdef-0123456789";
const now = () => Math.floor(Date.now() / 1000);
/** A JWT with `claims`, HS256 with `secret` or RS256 with `key`. */
const jwt = (claims, { secret = SECRET, ...rest } = {}) => sign(claims, { secret, ...rest });
const API_KEY = "e2e-api-key-0123456789";
const { publicKey, privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
const PUBLIC_PEM = publicKey.export({ type: "spki", format: "pem" });

/** Connects with `auth`; resolves with the socket, or rejects with the connect_error. */
function dial(url, auth) {
  const s = io(url, { forceNew: true, reconnection: false, transports: ["websocket"], auth });
  return new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => { s.close(); reject(e); });
  });
}

let hs, rs;
before(async () => {
  hs = await startNode({ ...FAST, "--jwt-secret": SECRET, "--api-key": API_KEY, "--cors-origins": "https://app.example" });
  rs = await startNode({ ...FAST, "--jwt-public-key": PUBLIC_PEM });
});
after(async () => {
  closeAll();
  await hs?.stop();
  await rs?.stop();
});
afterEach(() => closeAll());

const alice = (extra = {}) => jwt({ sub: "alice", exp: now() + 600, rooms: ["lobby", "team-7:*"], ...extra });

test("a node with auth says so at start; one without warns", async () => {
  const open = await startNode(FAST);
  try {
    assert.match(open.output(), /token auth is off/);
    assert.match(open.output(), /HTTP API is open/);
    assert.doesNotMatch(hs.output(), /token auth is off|HTTP API is open/);
  } finally {
    await open.stop();
  }
});

test("a handshake without a valid token fails with a connect_error naming the reason", async () => {
  const cases = [
    [undefined, /no token/],
    [{ token: "" }, /no token/],
    [{ token: "abc" }, /malformed token/],
    [{ token: 42 }, /malformed token/],
    [{ token: jwt({ sub: "alice", exp: now() + 600 }, { secret: "another-secret-0123456789abcdef!!" }) }, /bad token signature/],
    [{ token: jwt({ sub: "alice", exp: now() - 60 }) }, /token expired/],
    [{ token: jwt({ exp: now() + 600 }) }, /sub is required/],
    [{ token: jwt({ sub: "alice" }) }, /exp is required/],
    [{ token: jwt({ sub: "alice", exp: now() + 600 }, { alg: "none" }) }, /malformed token/],
    [{ token: jwt({ sub: "alice", exp: now() + 600 }, { key: privateKey }) }, /malformed token.*algorithm/],
  ];
  for (const [auth, reason] of cases) {
    await assert.rejects(dial(hs.url, auth), (e) => {
      assert.match(e.message, reason, JSON.stringify(auth));
      assert.match(e.message, /^unauthorized: /);
      return true;
    });
  }
});

test("the token's subject is the user: another userId is forbidden, none is needed", async () => {
  const s = await dial(hs.url, { token: alice() });
  const bad = await call(s, "presence:hello", { userId: "mallory" });
  assert.equal(bad.ok, false);
  assert.equal(bad.error.code, "forbidden");
  const h = await call(s, "presence:hello", { handle: "Alice" });
  assert.equal(h.ok, true, JSON.stringify(h));
  assert.equal(h.userId, "alice");
  s.close();
  const s2 = await dial(hs.url, { token: alice() });
  const h2 = await call(s2, "presence:hello", { userId: "alice" });
  assert.equal(h2.userId, "alice");
  s2.close();
});

test("the rooms claim: exact names and prefix patterns; any other room is forbidden_room", async () => {
  const s = await dial(hs.url, { token: alice() });
  assert.equal((await call(s, "presence:hello", {})).ok, true);
  for (const room of ["lobby", "team-7:general", "team-7:"]) {
    const j = await call(s, "presence:join", { roomId: room });
    assert.equal(j.ok, true, `${room}: ${JSON.stringify(j)}`);
  }
  for (const room of ["lobby2", "team-70:x", "team-7", "secret"]) {
    const j = await call(s, "presence:join", { roomId: room });
    assert.equal(j.ok, false, room);
    assert.equal(j.error.code, "forbidden_room");
  }
  const stats = await getJson(`${hs.url}/api/rooms/secret/stats`, { headers: { authorization: `Bearer ${API_KEY}` } });
  assert.equal(stats.body.sessions, 0, "nothing was written for a refused join");
  s.close();
  // No rooms claim: no room.
  const none = await dial(hs.url, { token: jwt({ sub: "bob", exp: now() + 600 }) });
  await call(none, "presence:hello", {});
  assert.equal((await call(none, "presence:join", { roomId: "lobby" })).error.code, "forbidden_room");
  none.close();
});

test("a connection ends when its token expires", async () => {
  const s = await dial(hs.url, { token: jwt({ sub: "carol", exp: now() + 2, rooms: ["*"] }) });
  const errors = [];
  s.on("presence:error", (e) => errors.push(e));
  assert.equal((await call(s, "presence:hello", {})).ok, true);
  const reason = await new Promise((r) => s.once("disconnect", r));
  assert.equal(reason, "io server disconnect");
  assert.equal(errors[0]?.error?.code, "unauthorized");
});

test("RS256: tokens signed with the issuer's private key pass; an HS256 token made with the public key does not", async () => {
  const s = await dial(rs.url, { token: jwt({ sub: "dave", exp: now() + 600, rooms: ["lobby"] }, { key: privateKey }) });
  assert.equal((await call(s, "presence:hello", {})).userId, "dave");
  assert.equal((await call(s, "presence:join", { roomId: "lobby" })).ok, true);
  s.close();
  // The classic algorithm confusion: the public key used as an HMAC secret.
  const forged = jwt({ sub: "dave", exp: now() + 600 }, { secret: PUBLIC_PEM });
  await assert.rejects(dial(rs.url, { token: forged }), /malformed token.*algorithm/);
  const other = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
  await assert.rejects(dial(rs.url, { token: jwt({ sub: "dave", exp: now() + 600 }, { key: other }) }), /bad token signature/);
});

test("the reach claim lets a connection ask about users it shares no room with", async () => {
  const carol = await dial(hs.url, { token: jwt({ sub: "carol", exp: now() + 600, rooms: ["team-7:x"] }) });
  await call(carol, "presence:hello", { capabilities: ["audio"] });
  await call(carol, "presence:join", { roomId: "team-7:x" });
  const dan = await dial(hs.url, { token: jwt({ sub: "dan", exp: now() + 600, rooms: ["team-7:y"] }) });
  await call(dan, "presence:hello", {});
  await call(dan, "presence:join", { roomId: "team-7:y" });
  const r = await call(dan, "presence:reachability", { userId: "carol", need: ["audio"] });
  assert.equal(r.error?.code, "forbidden", "no shared room, no reach claim");
  const support = await dial(hs.url, { token: jwt({ sub: "support", exp: now() + 600, reach: ["car*"] }) });
  await call(support, "presence:hello", {});
  const ok = await call(support, "presence:reachability", { userId: "carol", need: ["audio"] });
  assert.deepEqual([ok.ok, ok.reachability], [true, "now"]);
  assert.equal((await call(support, "presence:reachability", { userId: "dan" })).error?.code, "forbidden");
  const received = new Promise((resolve) => carol.once("presence:intent_received", resolve));
  const intent = await call(support, "presence:intent", { userId: "carol", ttlMs: 1000 });
  assert.equal(intent.ok, true, JSON.stringify(intent));
  assert.equal((await received).from, "support");
  for (const s of [carol, dan, support]) s.close();
});

test("the HTTP API needs the key; health checks and the demo page do not", async () => {
  for (const path of ["/api/whos-online", "/api/rooms/lobby/presence", "/api/rooms/lobby/stats", "/api/cluster", "/metrics", "/api/users/alice/reachability"]) {
    for (const headers of [{}, { authorization: "Bearer wrong-key-0123456789" }, { authorization: API_KEY }]) {
      const res = await fetch(`${hs.url}${path}`, { headers });
      assert.equal(res.status, 401, `${path} ${JSON.stringify(headers)}`);
      assert.equal(res.headers.get("www-authenticate"), "Bearer");
      const body = await res.json();
      assert.equal(body.ok, false);
      assert.equal(body.error.code, "unauthorized");
    }
    const ok = await fetch(`${hs.url}${path}`, { headers: { authorization: `Bearer ${API_KEY}` } });
    assert.equal(ok.status, 200, path);
  }
  const post = await fetch(`${hs.url}/api/users/status`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ userIds: ["alice"] }),
  });
  assert.equal(post.status, 401);
  const intent = await fetch(`${hs.url}/api/intents`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ from: "x", userId: "alice", ttlMs: 1000 }),
  });
  assert.equal(intent.status, 401);
  // The moderation API: refused without the key, before anything is looked up.
  for (const path of ["/api/sessions/s-1", "/api/users/alice/sessions", "/api/rooms/lobby/members/alice"]) {
    const res = await fetch(`${hs.url}${path}`, { method: "DELETE" });
    assert.equal(res.status, 401, path);
    assert.equal((await res.json()).error.code, "unauthorized");
    const keyed = await fetch(`${hs.url}${path}`, { method: "DELETE", headers: { authorization: `Bearer ${API_KEY}` } });
    assert.equal(keyed.status, 404, path);
  }
  for (const path of ["/healthz", "/readyz", "/"]) {
    assert.equal((await fetch(`${hs.url}${path}`)).status, 200, path);
  }
});

test("CORS: listed origins only; none by default", async () => {
  const preflight = (url, origin) => fetch(`${url}/api/whos-online`, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": "GET", "access-control-request-headers": "authorization" },
  });
  const ok = await preflight(hs.url, "https://app.example");
  assert.equal(ok.headers.get("access-control-allow-origin"), "https://app.example");
  assert.equal(ok.headers.get("access-control-allow-credentials"), "true");
  const other = await preflight(hs.url, "https://evil.example");
  assert.equal(other.headers.get("access-control-allow-origin"), null);
  const plain = await preflight(rs.url, "https://app.example");
  assert.equal(plain.headers.get("access-control-allow-origin"), null);
});

test("sessions per user are limited", async () => {
  const n = await startNode({ ...FAST, "--max-sessions-per-user": 2 });
  try {
    for (let i = 0; i < 2; i++) await enter(await connect(n.url), "erin", "r");
    const third = await connect(n.url);
    const h = await call(third, "presence:hello", { userId: "erin" });
    assert.equal(h.ok, false);
    assert.equal(h.error.code, "limit_exceeded");
    const st = await getJson(`${n.url}/api/rooms/r/stats`);
    assert.deepEqual([st.body.sessions, st.body.users], [2, 1]);
    assert.equal((await call(await connect(n.url), "presence:hello", { userId: "frank" })).ok, true, "other users are not affected");
  } finally {
    await n.stop();
  }
});

test("a socket over the event rate gets rate_limited; one that floods is cut off, and nobody else notices", async () => {
  const n = await startNode({ "--rate-limit-per-sec": 10 });
  try {
    const obs = await connect(n.url);
    const eo = await enter(obs, "observer", "r");
    const calm = await connect(n.url);
    const ec = await enter(calm, "calm", "r");
    const busy = await connect(n.url);
    const eb = await enter(busy, "busy", "r");
    const acks = await Promise.all(Array.from({ length: 30 }, () => call(busy, "presence:heartbeat", { epoch: eb.epoch })));
    const limited = acks.filter((a) => a.error?.code === "rate_limited").length;
    assert.ok(limited >= 15 && acks.filter((a) => a.ok).length >= 5, `some pass, the rest are limited (${limited} of 30)`);
    // Ten times the rate, at once: disconnected.
    const flood = await connect(n.url);
    const ef = await enter(flood, "flood", "r");
    await sleep(1100); // a full bucket again
    const gone = new Promise((r) => flood.once("disconnect", r));
    for (let i = 0; i < 300; i++) flood.emit("presence:heartbeat", { epoch: ef.epoch });
    // The node closes it: the client sees the disconnect packet, or the
    // transport closing first when the packet is stuck behind the flood.
    assert.ok(["io server disconnect", "transport close"].includes(await gone));
    assert.equal(flood.connected, false);
    // The others are still connected and their presence did not change.
    assert.equal((await call(calm, "presence:heartbeat", { epoch: ec.epoch })).ok, true);
    assert.equal((await call(obs, "presence:heartbeat", { epoch: eo.epoch })).ok, true);
    // The client may see its transport close before the node has handled
    // the disconnect: wait for the flooder's session to change (bounded).
    let view;
    await until(async () => {
      view = (await getJson(`${n.url}/api/rooms/r/presence`)).body;
      return view.users.flood?.status !== "active";
    }, "the node to handle the flooder's disconnect", 5000).catch(() => {});
    for (const u of ["observer", "calm", "busy"]) assert.equal(view.users[u].status, "active", u);
    assert.equal(view.users.flood.status, "stale", "the flooder's session is kept for the grace window, as any disconnect");
  } finally {
    await n.stop();
  }
});
