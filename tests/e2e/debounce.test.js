// Diffs are throttled per room: at most one per emitDebounceMs, the rest coalesced.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startNode, connect, closeAll, call, waitFor, sleep, enter, diffs, RoomMirror } from "./helpers.js";

const WINDOW = 400;
let node;
before(async () => { node = await startNode({ "--emit-debounce-ms": WINDOW }); });
after(async () => { closeAll(); await node?.stop(); });

test("a burst of changes reaches observers as at most two diffs with the final state", async () => {
  const obs = await connect(node.url);
  const eo = await enter(obs, "observer", "r-burst");
  const mirror = new RoomMirror(eo.snapshot);
  const a = await connect(node.url);
  const ea = await enter(a, "alice", "r-burst");
  await waitFor(obs, "presence:diff", (d) => d.users.alice);
  await sleep(WINDOW + 100); // a quiet window
  const from = obs.received.length;
  const t0 = Date.now();
  for (let i = 1; i <= 10; i++) {
    const r = await call(a, "presence:state", { roomId: "r-burst", epoch: ea.epoch, patch: { n: i } });
    assert.equal(r.ok, true);
  }
  await waitFor(obs, "presence:diff", (d) => d.sessions[ea.sessionId]?.state?.n === 10, { from });
  await sleep(WINDOW + 100);
  const burst = obs.received.slice(from).filter((r) => r.event === "presence:diff");
  assert.ok(burst.length >= 1 && burst.length <= 2, `coalesced into ${burst.length} diffs`);
  if (burst.length === 2) {
    assert.ok(burst[1].at - burst[0].at >= WINDOW - 50, `second diff waited for the window (${burst[1].at - burst[0].at} ms)`);
  }
  assert.ok(burst[0].at - t0 < WINDOW, "the first change after a quiet window goes out at once");
  for (const d of diffs(obs, "r-burst")) mirror.apply(d);
  assert.deepEqual(mirror.sessions[ea.sessionId].state, { n: 10 });
  assert.deepEqual(mirror.users.alice.state, { n: 10 });
});

test("a change undone within the window emits nothing", async () => {
  const obs = await connect(node.url);
  await enter(obs, "observer", "r-undo");
  const a = await connect(node.url);
  const ea = await enter(a, "alice", "r-undo");
  await waitFor(obs, "presence:diff", (d) => d.users.alice);
  await sleep(WINDOW + 100);
  // The first change goes out at once and opens a window...
  await call(a, "presence:state", { roomId: "r-undo", epoch: ea.epoch, patch: { mic: "on" } });
  await waitFor(obs, "presence:diff", (d) => d.users.alice?.state?.mic === "on");
  const from = obs.received.length;
  // ...in which a typing flicker is coalesced away.
  await call(a, "presence:state", { roomId: "r-undo", epoch: ea.epoch, patch: { typing: true } });
  await call(a, "presence:state", { roomId: "r-undo", epoch: ea.epoch, patch: { typing: null } });
  await sleep(WINDOW * 2);
  assert.deepEqual(obs.received.slice(from).filter((r) => r.event === "presence:diff"), [], "observers never saw the flicker");
});
