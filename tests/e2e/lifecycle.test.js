// Time-driven transitions with short timings: idle, away, background, stale, expiry.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { startNode, connect, closeAll, call, waitFor, sleep, enter, diffs, FAST } from "./helpers.js";

let node;
before(async () => { node = await startNode(FAST); });
after(async () => { closeAll(); await node?.stop(); });
// Heartbeat timers are also stopped after each test, so that a test that
// fails half-way cannot leave one running (it would keep this file alive).
const timers = new Set();
afterEach(() => {
  for (const t of timers) clearInterval(t);
  timers.clear();
  closeAll();
});

function heartbeatEvery(socket, epoch, ms, activity) {
  const t = setInterval(() => socket.emit("presence:heartbeat", activity ? { epoch, activity } : { epoch }), ms);
  timers.add(t);
  t.unref();
  return () => clearInterval(t);
}

test("no reported activity: active -> idle -> away, and back to active at once", async () => {
  const obs = await connect(node.url);
  const eo = await enter(obs, "observer", "r-idle");
  const stopObs = heartbeatEvery(obs, eo.epoch, 100, "active");
  const a = await connect(node.url);
  const ea = await enter(a, "ivy", "r-idle");
  const stop = heartbeatEvery(a, ea.epoch, 100); // alive, but no activity reported
  try {
    const t0 = Date.now();
    await waitFor(obs, "presence:diff", (d) => d.users.ivy?.status === "idle", { timeoutMs: 5000 });
    const tIdle = Date.now() - t0;
    await waitFor(obs, "presence:diff", (d) => d.users.ivy?.status === "away", { timeoutMs: 5000 });
    assert.ok(tIdle >= 400, `idle after ~idleAfterMs (600), got ${tIdle}`);
    const from = obs.received.length;
    const hb = await call(a, "presence:heartbeat", { epoch: ea.epoch, activity: "active" });
    assert.equal(hb.ok, true);
    const back = await waitFor(obs, "presence:diff", (d) => d.users.ivy?.status === "active", { from });
    assert.equal(back.users.ivy.confidence, "high");
    // Statuses seen, in order, with no flapping.
    const seen = diffs(obs, "r-idle").map((d) => d.users.ivy?.status).filter(Boolean);
    assert.deepEqual(seen, ["active", "idle", "away", "active"]);
  } finally {
    stop();
    stopObs();
  }
});

test("client-reported idle is idle at once", async () => {
  const obs = await connect(node.url);
  await enter(obs, "observer", "r-idle2");
  const a = await connect(node.url);
  const ea = await enter(a, "jay", "r-idle2");
  await call(a, "presence:heartbeat", { epoch: ea.epoch, activity: "idle" });
  const d = await waitFor(obs, "presence:diff", (d) => d.users.jay?.status === "idle", { timeoutMs: 400 });
  assert.equal(d.users.jay.confidence, "medium");
});

test("a background tab is away and does not flap with throttled heartbeats", async () => {
  const obs = await connect(node.url);
  const eo = await enter(obs, "observer", "r-bg");
  const stopObs = heartbeatEvery(obs, eo.epoch, 100, "active");
  const a = await connect(node.url);
  const ea = await enter(a, "kim", "r-bg");
  await call(a, "presence:heartbeat", { epoch: ea.epoch, activity: "background" });
  // Throttled timers: one heartbeat every 2 s, longer than heartbeatTimeoutMs (1.2 s)
  // but shorter than backgroundTimeoutMs (4 s).
  const stop = heartbeatEvery(a, ea.epoch, 2000, "background");
  try {
    await waitFor(obs, "presence:diff", (d) => d.users.kim?.status === "away");
    await sleep(5000);
    const statuses = diffs(obs, "r-bg").map((d) => d.users.kim?.status).filter(Boolean);
    // Kim may appear already away (the join and the first background beat
    // in one window) or active then away; never stale, and no flapping.
    assert.ok(
      JSON.stringify(statuses) === '["away"]' || JSON.stringify(statuses) === '["active","away"]',
      `away, never stale: ${JSON.stringify(statuses)}`,
    );
  } finally {
    stop();
    stopObs();
  }
});

test("a silent connection goes stale, then is removed, and its next heartbeat brings it back", async () => {
  const obs = await connect(node.url);
  const eo = await enter(obs, "observer", "r-silent");
  const stopObs = heartbeatEvery(obs, eo.epoch, 100, "active");
  const a = await connect(node.url);
  const ea = await enter(a, "leo", "r-silent"); // never heartbeats
  try {
    const t0 = Date.now();
    const stale = await waitFor(obs, "presence:diff", (d) => d.sessions[ea.sessionId]?.status === "stale", { timeoutMs: 5000 });
    assert.equal(stale.users.leo.status, "stale");
    assert.equal(stale.users.leo.confidence, "low");
    await waitFor(obs, "presence:diff", (d) => d.users.leo === null && d.sessions[ea.sessionId] === null, { timeoutMs: 5000 });
    const gone = Date.now() - t0;
    assert.ok(gone >= 1500, `removed after timeout + grace (2.2 s), got ${gone}`);
    const online = await fetch(`${node.url}/api/whos-online`).then((r) => r.json());
    assert.equal(online.users.leo, undefined);
    const metrics = await fetch(`${node.url}/metrics`).then((r) => r.text());
    assert.match(metrics, /presence_expired_sessions_total [1-9]/);
    // The connection was open all along: its next heartbeat brings the session back.
    const from = obs.received.length;
    const h = await call(a, "presence:heartbeat", { epoch: ea.epoch });
    assert.equal(h.ok, true);
    assert.equal(h.revived, true);
    assert.ok(h.epoch > ea.epoch);
    await waitFor(obs, "presence:diff", (d) => d.users.leo?.status === "active" && d.sessions[ea.sessionId], { from });
  } finally {
    stopObs();
  }
});

test("a closed connection is stale for the grace window, then removed", async () => {
  const obs = await connect(node.url);
  const eo = await enter(obs, "observer", "r-gone");
  const stopObs = heartbeatEvery(obs, eo.epoch, 100, "active");
  const a = await connect(node.url);
  const ea = await enter(a, "max", "r-gone");
  try {
    await waitFor(obs, "presence:diff", (d) => d.users.max);
    const t0 = Date.now();
    a.disconnect();
    await waitFor(obs, "presence:diff", (d) => d.sessions[ea.sessionId]?.status === "stale");
    await waitFor(obs, "presence:diff", (d) => d.users.max === null, { timeoutMs: 5000 });
    const gone = Date.now() - t0;
    assert.ok(gone >= 800 && gone < 4000, `removed ~reconnectGraceMs (1 s) after the disconnect, got ${gone}`);
    // Too late: the same session id now starts a new session.
    const b = await connect(node.url);
    const h = await call(b, "presence:hello", { userId: "max", sessionId: ea.sessionId });
    assert.equal(h.resumed, false);
    assert.ok(h.epoch > ea.epoch);
  } finally {
    stopObs();
  }
});

test("the HTTP long-polling transport works too", async () => {
  const obs = await connect(node.url);
  await enter(obs, "observer", "r-poll");
  const p = await connect(node.url, { transports: ["polling"] });
  const ep = await enter(p, "polly", "r-poll");
  assert.ok(ep.snapshot.users.observer);
  await waitFor(obs, "presence:diff", (d) => d.users.polly);
  const st = await call(p, "presence:state", { roomId: "r-poll", epoch: ep.epoch, patch: { via: "polling" } });
  assert.equal(st.ok, true);
  await waitFor(obs, "presence:diff", (d) => d.users.polly?.state?.via === "polling");
  await call(p, "presence:leave", {});
  await waitFor(obs, "presence:diff", (d) => d.users.polly === null);
});
