// What an adversarial review found, each point as an attacker would try it:
// a resume under a narrower token, binary attachments that never complete,
// join/leave races, squatted session ids, idle sockets, and the smaller ones
// (the auth scheme's case, tokens that never expire, invisible characters in
// handles, deep nesting, foreign origins, unknown events). Raw WebSocket
// (`ws`) where the official client cannot send the packet.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import WebSocket from "ws";
import {
  startNode, connect, closeAll, call, enter, sleep, waitFor, until, metric, redisCli, jwt, takeoverUnbindsAtOnce,
  STORE, FAST,
} from "./helpers.js";

const SECRET = "e2e-adversary-secret-0123456789abcdef";
const API_KEY = "e2e-adversary-api-key-0123";
const now = () => Math.floor(Date.now() / 1000);
const token = (sub, rooms, extra = {}) => jwt({ sub, exp: now() + 600, rooms, ...extra }, { secret: SECRET });

let open, authed;
before(async () => {
  // A high event rate: the races below send hundreds of events at once.
  open = await startNode({ ...FAST, "--rate-limit-per-sec": 100000, "--hello-timeout-ms": 800 });
  authed = await startNode({ ...FAST, "--jwt-secret": SECRET, "--api-key": API_KEY, "--allowed-origins": "https://app.example" });
});
after(async () => {
  closeAll();
  await open?.stop();
  await authed?.stop();
});
afterEach(() => closeAll());

/** Connects with a token; resolves with the socket or rejects with the connect_error. */
function dial(url, auth, opts = {}) {
  const s = io(url, { forceNew: true, reconnection: false, transports: ["websocket"], auth, ...opts });
  s.received = [];
  s.onAny((event, payload) => {
    s.received.push({ event, payload });
    for (const w of [...(s.waiters || [])]) w();
  });
  return new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => { s.close(); reject(e); });
  });
}

/** Resolves once `socket` disconnects, with the reason (rejects after `ms`). */
function disconnected(socket, ms) {
  return new Promise((resolve, reject) => {
    if (!socket.connected) return resolve("already");
    const t = setTimeout(() => reject(new Error(`still connected after ${ms} ms`)), ms);
    socket.once("disconnect", (reason) => { clearTimeout(t); resolve(reason); });
  });
}

/** A raw Socket.IO v5 connection over `ws`, connected to the namespace. */
async function raw(url, headers = {}) {
  const ws = new WebSocket(`${url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`, { headers });
  const frames = [];
  ws.on("message", (m, binary) => {
    const text = m.toString();
    if (!binary && text === "2") ws.send("3"); // engine.io ping
    frames.push(text);
  });
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject); ws.once("unexpected-response", (_, res) => reject(new Error(`HTTP ${res.statusCode}`))); });
  ws.send("40");
  await until(() => frames.some((f) => f.startsWith("40")), "the namespace CONNECT");
  return { ws, frames, closed: new Promise((r) => ws.once("close", r)) };
}

const signalsOf = (s, roomId) => s.received.filter((r) => r.event === "presence:signal" && r.payload.roomId === roomId);
const diffsOf = (s, roomId) => s.received.filter((r) => r.event === "presence:diff" && r.payload.roomId === roomId);

test("1. a resume keeps only the rooms the new token grants; the others are left, and nothing flows there", async () => {
  const bob = await dial(authed.url, { token: token("bob", ["secret-x"]) });
  assert.ok((await call(bob, "presence:hello", {})).ok);
  const bobJoin = await call(bob, "presence:join", { roomId: "secret-x" });
  assert.ok(bobJoin.ok, JSON.stringify(bobJoin));

  const wide = await dial(authed.url, { token: token("alice", ["public", "secret-x"]) });
  const hello = await call(wide, "presence:hello", {});
  for (const roomId of ["public", "secret-x"]) assert.ok((await call(wide, "presence:join", { roomId })).ok);
  await waitFor(bob, "presence:diff", (d) => d.roomId === "secret-x" && d.sessions[hello.sessionId]);
  wide.close();

  const narrow = await dial(authed.url, { token: token("alice", ["public"]) });
  const resumed = await call(narrow, "presence:hello", { sessionId: hello.sessionId });
  assert.equal(resumed.resumed, true, JSON.stringify(resumed));
  assert.deepEqual(resumed.rooms, ["public"]);
  assert.deepEqual(resumed.droppedRooms, ["secret-x"]);
  // Observers of the dropped room see the session leave it.
  await waitFor(bob, "presence:diff", (d) => d.roomId === "secret-x" && d.sessions[hello.sessionId] === null);
  await waitFor(narrow, "presence:snapshot", (s) => s.roomId === "public");
  // No write and no delivery in the dropped room.
  const state = await call(narrow, "presence:state", { roomId: "secret-x", epoch: resumed.epoch, patch: { typing: true } });
  assert.ok(["forbidden_room", "not_joined"].includes(state.error?.code), JSON.stringify(state));
  const signal = await call(narrow, "presence:signal", { roomId: "secret-x", data: { hi: 1 } });
  assert.ok(["forbidden_room", "not_joined"].includes(signal.error?.code), JSON.stringify(signal));
  assert.equal((await call(narrow, "presence:join", { roomId: "secret-x" })).error.code, "forbidden_room");
  assert.ok((await call(bob, "presence:signal", { roomId: "secret-x", data: { to: "anyone" } })).ok);
  await sleep(300);
  assert.equal(narrow.received.filter((r) => r.payload?.roomId === "secret-x").length, 0, JSON.stringify(narrow.received));
  assert.equal(signalsOf(bob, "secret-x").length, 0, "bob got no signal from the narrow connection");
  narrow.close();
  bob.close();
});

test("2. binary attachments are refused: the connection closes at once and is counted", async () => {
  const before = await metric(open.url, 'presence_connections_cut_total{reason="bad_packet"}');
  const c = await raw(open.url);
  // An event that announces one attachment, then attachments that never complete it.
  c.ws.send('451-["presence:hello",{"_placeholder":true,"num":0}]');
  for (let i = 0; i < 4 && c.ws.readyState === WebSocket.OPEN; i++) c.ws.send(Buffer.alloc(64 * 1024));
  const closed = await Promise.race([c.closed.then(() => true), sleep(3000).then(() => false)]);
  assert.ok(closed, "the node closes a connection that sends binary attachments");
  await until(async () => (await metric(open.url, 'presence_connections_cut_total{reason="bad_packet"}')) > before,
    "presence_connections_cut_total{reason=bad_packet} counts it");
  // The official client's binary data is refused the same way, and costs the others nothing.
  const observer = await connect(open.url);
  const eo = await enter(observer, "binary-observer", "r-binary");
  const sender = await connect(open.url);
  await enter(sender, "binary-sender", "r-binary");
  const gone = disconnected(sender, 3000);
  sender.emit("presence:state", { roomId: "r-binary", epoch: 1, patch: { blob: new Uint8Array([1, 2, 3]) } });
  assert.equal(await gone, "transport close");
  assert.ok(observer.connected);
  assert.ok((await call(observer, "presence:heartbeat", { epoch: eo.epoch })).ok);
});

test("3a. join and leave sent back to back, 300 times, leave no hub and no subscription behind", async () => {
  const sockets = [];
  for (let k = 0; k < 6; k++) {
    const s = await connect(open.url);
    assert.ok((await call(s, "presence:hello", { userId: `racer-${k}` })).ok);
    sockets.push(s);
  }
  const acks = [];
  for (let i = 0; i < 300; i++) {
    const s = sockets[i % sockets.length];
    const roomId = `race-${i}`;
    acks.push(call(s, "presence:join", { roomId }), call(s, "presence:leave", { roomId }));
  }
  const answers = await Promise.all(acks);
  assert.ok(answers.every((a) => a.ok), JSON.stringify(answers.find((a) => !a.ok)));
  for (const s of sockets) s.disconnect();
  await until(async () => (await metric(open.url, "presence_rooms_local")) === 0, "no room hub left on the node");
  if (STORE === "redis") {
    // (The node's own channel, `<prefix>:node:{id}`, stays for the node's life.)
    await until(() => {
      const channels = [redisCli(open.redis.port, "PUBSUB", "SHARDCHANNELS"), redisCli(open.redis.port, "PUBSUB", "CHANNELS")]
        .join("\n").split("\n").filter((c) => /:(events|signals):/.test(c));
      return channels.length === 0;
    }, "no room channel subscribed in Redis");
  }
});

test("3b. a socket that leaves right after joining gets none of the room's diffs or signals", async () => {
  for (let i = 0; i < 6; i++) {
    const roomId = `leaver-${i}`;
    const member = await connect(open.url);
    const m = await enter(member, `member-${i}`, roomId);
    const leaver = await connect(open.url);
    assert.ok((await call(leaver, "presence:hello", { userId: `leaver-${i}` })).ok);
    const [join, leave] = await Promise.all([
      call(leaver, "presence:join", { roomId }),
      call(leaver, "presence:leave", { roomId }),
    ]);
    assert.ok(join.ok && leave.ok, JSON.stringify({ join, leave }));
    const from = leaver.received.length;
    assert.ok((await call(member, "presence:state", { roomId, epoch: m.epoch, patch: { n: i } })).ok);
    assert.ok((await call(member, "presence:signal", { roomId, data: { n: i } })).ok);
    await sleep(250);
    const got = leaver.received.slice(from).filter((r) => r.payload?.roomId === roomId);
    assert.deepEqual(got, [], `round ${i}: the leaver still got ${JSON.stringify(got)}`);
    member.disconnect();
    leaver.disconnect();
  }
});

test("3c. after leave {} and a new hello, the new session gets nothing of a room the old one was joining", async () => {
  for (let i = 0; i < 5; i++) {
    const roomId = `old-room-${i}`;
    const member = await connect(open.url);
    const m = await enter(member, `old-room-member-${i}`, roomId);
    const s = await connect(open.url);
    assert.ok((await call(s, "presence:hello", { userId: `switcher-${i}` })).ok);
    // A join, the end of the session and a new hello, sent back to back.
    const [joined, ended, again] = await Promise.all([
      call(s, "presence:join", { roomId }),
      call(s, "presence:leave", {}),
      call(s, "presence:hello", { userId: `switcher-${i}` }),
    ]);
    assert.ok(joined.ok && ended.ok && again.ok, JSON.stringify({ joined, ended, again }));
    const from = s.received.length;
    assert.ok((await call(member, "presence:signal", { roomId, data: { x: i } })).ok);
    assert.ok((await call(member, "presence:state", { roomId, epoch: m.epoch, patch: { y: i } })).ok);
    await sleep(250);
    const got = s.received.slice(from).filter((r) => r.payload?.roomId === roomId);
    assert.deepEqual(got, [], `round ${i}: the new session got ${JSON.stringify(got)}`);
    member.disconnect();
    s.disconnect();
  }
});

test("4. a takeover unbinds the old connection at once (same node; across nodes: twonodes.test.js)", async () => {
  await takeoverUnbindsAtOnce(open.url, open.url, "same-node");
});

test("5. an ended session's id stays its user's: no one can squat it, its owner can use it again", async () => {
  const alice = await connect(open.url);
  const first = await call(alice, "presence:hello", { userId: "squat-alice" });
  assert.ok((await call(alice, "presence:leave", {})).ok);
  const mallory = await connect(open.url);
  const squat = await call(mallory, "presence:hello", { userId: "squat-mallory", sessionId: first.sessionId });
  assert.equal(squat.error?.code, "forbidden", JSON.stringify(squat));
  const again = await call(alice, "presence:hello", { userId: "squat-alice", sessionId: first.sessionId });
  assert.ok(again.ok, JSON.stringify(again));
  assert.equal(again.sessionId, first.sessionId);
  assert.ok(again.epoch > first.epoch);
});

test("7. a connection without a session is closed after the hello timeout", async () => {
  const silent = await connect(open.url);
  const errors = [];
  silent.on("presence:error", (e) => errors.push(e));
  const helloed = await connect(open.url);
  const h = await call(helloed, "presence:hello", { userId: "talker" });
  const ender = await connect(open.url);
  await call(ender, "presence:hello", { userId: "ender" });
  await sleep(400);
  assert.ok((await call(ender, "presence:leave", {})).ok);
  const cutBefore = await metric(open.url, 'presence_connections_cut_total{reason="hello_timeout"}');
  assert.equal(await disconnected(silent, 3000), "io server disconnect");
  assert.equal(errors[0]?.error?.code, "no_session", JSON.stringify(errors));
  // Its session ended, and it said no hello again: closed as well.
  assert.equal(await disconnected(ender, 3000), "io server disconnect");
  // A connection with a session stays, heartbeating or not, within its timeouts.
  assert.ok(helloed.connected);
  assert.ok((await call(helloed, "presence:heartbeat", { epoch: h.epoch })).ok);
  assert.ok((await metric(open.url, 'presence_connections_cut_total{reason="hello_timeout"}')) >= cutBefore + 1);
});

test("8a. the HTTP auth scheme is case-insensitive", async () => {
  for (const scheme of ["Bearer", "bearer", "BEARER"]) {
    const res = await fetch(`${authed.url}/api/whos-online`, { headers: { authorization: `${scheme} ${API_KEY}` } });
    assert.equal(res.status, 200, scheme);
  }
});

test("8b. a token whose exp is absurdly far away is refused", async () => {
  for (const exp of [1e12, 2 ** 53 - 1, now() + 86400 * 30]) {
    await assert.rejects(dial(authed.url, { token: jwt({ sub: "alice", exp, rooms: ["*"] }, { secret: SECRET }) }),
      /PRESENCE_JWT_MAX_TTL_S/, `exp ${exp}`);
  }
  await assert.rejects(dial(authed.url, { token: jwt({ sub: "alice", iat: now() - 86400 * 2, exp: now() + 60, rooms: ["*"] }, { secret: SECRET }) }),
    /PRESENCE_JWT_MAX_TTL_S/);
  const fine = await dial(authed.url, { token: jwt({ sub: "alice", iat: now(), exp: now() + 3600, rooms: ["*"] }, { secret: SECRET }) });
  fine.close();
});

test("8c. handles with zero-width or bidi control characters, and ids JavaScript objects have, are bad requests", async () => {
  const s = await connect(open.url);
  for (const handle of ["ad\u200Bmin", "evil\u202Etxt.exe", "x\u2066y\u2069", "\uFEFFbom"]) {
    const r = await call(s, "presence:hello", { userId: "handles", handle });
    assert.equal(r.error?.code, "bad_request", JSON.stringify(r));
    assert.equal(r.error.field, "handle");
  }
  for (const userId of ["__proto__", "constructor", "prototype"]) {
    const r = await call(s, "presence:hello", { userId });
    assert.equal(r.error?.code, "bad_request", JSON.stringify(r));
    assert.equal(r.error.field, "userId");
  }
  const ok = await call(s, "presence:hello", { userId: "toString" });
  assert.ok(ok.ok, "toString is an ordinary id");
});

test("8d. a state nested deeper than allowed says so", async () => {
  const s = await connect(open.url);
  await call(s, "presence:hello", { userId: "deep" });
  let state = {};
  for (let i = 0; i < 200; i++) state = { a: state };
  const r = await call(s, "presence:join", { roomId: "deep", state });
  assert.equal(r.error?.code, "bad_request", JSON.stringify(r));
  assert.match(r.error.message, /nested/);
  assert.doesNotMatch(r.error.message, /must be a JSON object/);
});

test("8e. PRESENCE_ALLOWED_ORIGINS refuses other origins on WebSocket and polling", async () => {
  const token_ = token("origin-user", ["*"]);
  await assert.rejects(raw(authed.url, { origin: "https://evil.example" }), /HTTP 403/);
  const polling = await fetch(`${authed.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: "https://evil.example" } });
  assert.equal(polling.status, 403);
  const body = await polling.json();
  assert.equal(body.error.code, "forbidden");
  const allowed = await fetch(`${authed.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: "https://app.example" } });
  assert.equal(allowed.status, 200);
  // No Origin (not a browser): allowed.
  const s = await dial(authed.url, { token: token_ });
  s.close();
});

test("8f. unknown events count against the socket's rate limit", async () => {
  const limited = await startNode({ ...FAST, "--rate-limit-per-sec": 5 });
  try {
    const s = await connect(limited.url);
    const h = await call(s, "presence:hello", { userId: "unknowns" });
    await sleep(1100); // a full bucket
    const unknown = await Promise.all(Array.from({ length: 8 }, () => call(s, "no:such-event", {}).catch((e) => e)));
    assert.ok(unknown.some((a) => a?.error?.code === "rate_limited"), JSON.stringify(unknown));
    const hb = await call(s, "presence:heartbeat", { epoch: h.epoch });
    assert.equal(hb.error?.code, "rate_limited", "the unknown events spent the budget");
  } finally {
    closeAll();
    await limited.stop();
  }
});
