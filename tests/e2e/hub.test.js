// A room's hub applies the room's events to the view it holds: it reads the
// room whole once, not again for every change, and its diffs still take
// every observer exactly to the room's state.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startNode, connect, closeAll, call, waitFor, sleep, enter, diffs, getJson, metric, monitor, isScriptCall, RoomMirror, STORE } from "./helpers.js";

const WINDOW = 20;
let node;
before(async () => { node = await startNode({ "--emit-debounce-ms": WINDOW }); });
after(async () => { closeAll(); await node?.stop(); });

test("changes reach observers as diffs without reading the room again", async () => {
  const obs = await connect(node.url);
  const eo = await enter(obs, "observer", "r-live");
  const mirror = new RoomMirror(eo.snapshot);
  const members = [];
  for (const user of ["alice", "bob", "carol"]) {
    const s = await connect(node.url);
    members.push({ s, e: await enter(s, user, "r-live", { handle: `${user}!` }) });
  }
  await waitFor(obs, "presence:diff", (d) => d.users.carol);
  const before = await metric(node.url, "presence_room_reads_total");
  assert.ok(before >= 1, "the hub read the room when it started");
  // On Redis, count the room reads Redis itself serves meanwhile.
  const mon = STORE === "redis" ? await monitor(node.redis.port) : null;
  // Each change in a window of its own: a hub that read the room per change
  // would read it 30 times.
  for (let i = 1; i <= 30; i++) {
    const { s, e } = members[i % members.length];
    assert.equal((await call(s, "presence:state", { roomId: "r-live", epoch: e.epoch, patch: { n: i } })).ok, true);
    await sleep(WINDOW * 2);
  }
  const last = members[30 % members.length];
  await waitFor(obs, "presence:diff", (d) => d.sessions[last.e.sessionId]?.state?.n === 30);
  // One leaves, one leaves the room entirely: removals are events too.
  assert.equal((await call(members[0].s, "presence:leave", { roomId: "r-live" })).ok, true);
  await waitFor(obs, "presence:diff", (d) => d.sessions[members[0].e.sessionId] === null);
  const after = await metric(node.url, "presence_room_reads_total");
  assert.ok(after - before <= 1, `the room was read ${after - before} times for 31 changes`);
  if (mon) {
    mon.stop();
    const reads = mon.commands.filter((c) => isScriptCall(c, "room_read")).length;
    assert.ok(reads <= 1, `Redis ran room_read ${reads} times for 31 changes`);
  }
  for (const d of diffs(obs, "r-live")) mirror.apply(d);
  const room = (await getJson(`${node.url}/api/rooms/r-live/presence`)).body;
  const strip = (m) => Object.fromEntries(Object.entries(m).map(([k, v]) => {
    const { lastHeartbeatAt, lastSeenAt, ...rest } = v;
    return [k, rest];
  }));
  assert.deepEqual(strip(mirror.sessions), strip(room.sessions));
  assert.deepEqual(strip(mirror.users), strip(room.users));
  assert.equal(mirror.seq, room.seq);
});
