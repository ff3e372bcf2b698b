// Joins that do not wait: a joiner is answered as soon as the node's view of
// the room has its join, not at the end of the room's debounce window, and
// what it receives afterwards still takes it exactly to the room, even when
// the members change (and change back) inside every window.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startNode, connect, closeAll, call, sleep, getJson, RoomMirror } from "./helpers.js";

// A wide window, so that "answered before the window's diff" is plain to see.
const WINDOW = 400;
const ROOM = "r-busy";
let node;
before(async () => { node = await startNode({ "--emit-debounce-ms": WINDOW }); });
after(async () => { closeAll(); await node?.stop(); });

async function hello(userId) {
  const s = await connect(node.url);
  const h = await call(s, "presence:hello", { userId });
  assert.equal(h.ok, true, JSON.stringify(h));
  s.epoch = h.epoch;
  s.sessionId = h.sessionId;
  return s;
}

async function join(s, extra = {}) {
  const a = await call(s, "presence:join", { roomId: ROOM, ...extra });
  assert.equal(a.ok, true, JSON.stringify(a));
  s.joinedAt = s.received.length;
  return a;
}

const state = (s, patch) => call(s, "presence:state", { roomId: ROOM, epoch: s.epoch, patch });

/** Entries without their timestamps (which alone are no change). */
const strip = (m) => Object.fromEntries(Object.entries(m).map(([k, v]) => {
  const { lastHeartbeatAt, lastSeenAt, ...rest } = v;
  return [k, rest];
}));

/** The room as the node serves it, and each joiner's mirror of it. */
async function checkMirrors(joiners) {
  const room = (await getJson(`${node.url}/api/rooms/${ROOM}/presence`)).body;
  const stats = (await getJson(`${node.url}/api/rooms/${ROOM}/stats`)).body;
  for (const s of joiners) {
    const mine = s.received.slice(s.joinedAt).filter((r) => r.payload?.roomId === ROOM);
    if (s.watching === undefined) {
      const counts = [s.ack.counts, ...mine.filter((r) => r.event === "presence:counts").map((r) => r.payload.counts)].pop();
      assert.equal(counts.sessions.total, stats.sessions, `${s.name}'s last counts`);
      assert.equal(counts.users.total, stats.users, `${s.name}'s last counts`);
      continue;
    }
    const mirror = new RoomMirror(s.ack.snapshot);
    for (const r of mine) if (r.event === "presence:diff") mirror.apply(r.payload);
    const want = (u) => s.watching === null || s.watching.includes(u);
    const users = Object.fromEntries(Object.entries(room.users).filter(([u]) => want(u)));
    const sessions = Object.fromEntries(Object.entries(room.sessions).filter(([, v]) => want(v.userId)));
    assert.deepEqual(strip(mirror.sessions), strip(sessions), `${s.name}'s sessions`);
    assert.deepEqual(strip(mirror.users), strip(users), `${s.name}'s users`);
  }
}

/** Joins `s` with `view`, checking it is answered before the window's diff
 * that carries its own join has reached the observer. */
async function joinNow(observer, s, name, view) {
  const from = observer.received.length;
  s.ack = await join(s, { view });
  s.name = name;
  s.watching = view === "full" ? null : view === "count" ? undefined : view.watch;
  const seen = observer.received.slice(from)
    .some((r) => r.event === "presence:diff" && r.payload.roomId === ROOM && r.payload.sessions[s.sessionId]);
  assert.equal(seen, false, `${name} was answered only after its join's diff went out`);
}

test("a joiner answered inside a window gets what that window undid", async () => {
  const observer = await hello("observer");
  await join(observer);
  const ann = await hello("ann");
  await join(ann, { state: { mood: "calm" } });
  await sleep(2 * WINDOW);
  const views = ["full", { watch: ["ann", "passer"] }, "count"];
  const joiners = [];
  for (const [i, view] of views.entries()) {
    // A change after a quiet window goes out at once; what follows waits
    // for the end of the window.
    const opener = await hello(`opener-${i}`);
    await join(opener);
    await sleep(20);
    const passer = await hello("passer");
    await join(passer);
    assert.equal((await state(ann, { mood: "upset" })).ok, true);
    // The joiner sees the passer and ann upset...
    const s = await hello(`joiner-${i}`);
    await joinNow(observer, s, `joiner-${i}`, view);
    if (s.watching !== undefined) {
      assert.ok(s.ack.snapshot.sessions[passer.sessionId], "the snapshot has the passer");
      assert.equal(s.ack.snapshot.users.ann.state.mood, "upset");
    }
    // ...then both are undone before the window ends: no diff tells of them.
    assert.equal((await call(passer, "presence:leave", { roomId: ROOM })).ok, true);
    assert.equal((await state(ann, { mood: "calm" })).ok, true);
    joiners.push(s);
    await sleep(2 * WINDOW);
  }
  await checkMirrors(joiners);
});

test("joiners are answered inside the window, and their diffs stay exact while the room churns", async () => {
  const observer = await hello("watcher");
  await join(observer);
  const churners = [];
  for (const u of ["bob", "cat", "dan"]) {
    const s = await hello(u);
    await join(s, { state: { n: 0 } });
    churners.push(s);
  }
  await sleep(2 * WINDOW);

  // The room changes several times inside every window: states move and
  // move back, members come and go.
  let stop = false;
  const churn = (async () => {
    for (let i = 1; !stop && i <= 400; i++) {
      const s = churners[i % churners.length];
      assert.equal((await state(s, { n: i % 2, tmp: "x" })).ok, true);
      await sleep(15);
      assert.equal((await state(s, { tmp: null })).ok, true);
      if (i % 5 === 0) {
        const passer = await hello(`passer-${i}`);
        await join(passer);
        await sleep(10);
        assert.equal((await call(passer, "presence:leave", { roomId: ROOM })).ok, true);
        passer.disconnect();
      }
      await sleep(25);
    }
  })();

  const joiners = [];
  const views = ["full", "full", { watch: ["bob", "dan", "k2"] }, "count", "full", { watch: ["cat"] }];
  for (const [i, view] of views.entries()) {
    await sleep(WINDOW / 3 + 37 * i);
    const s = await hello(`k${i}`);
    await joinNow(observer, s, `k${i}`, view);
    joiners.push(s);
  }
  stop = true;
  await churn;
  await sleep(3 * WINDOW);
  await checkMirrors(joiners);
});
