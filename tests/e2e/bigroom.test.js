// e2e: own-redis (runs once, in the memory pass)
// A room of 2,000 sessions costs the node no more memory per session than
// rooms of 10: members follow counts, a few watch, and no connection keeps a
// buffer the size of the room.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { io } from "socket.io-client";
import { startNode, sleep } from "./helpers.js";

const N = 2000;
const WARM = 50;
const nodes = [];
const clients = [];
after(async () => {
  for (const c of clients) c.disconnect();
  for (const n of nodes) await n.stop();
});

const rss = (pid) => Number(fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]) * 1024;

/** Connects `count` clients (at most 100 connecting at once) that say hello and join `roomOf(i)`. */
async function fill(url, from, count, roomOf, view) {
  let next = from;
  const worker = async () => {
    while (next < from + count) {
      const i = next++;
      const s = io(url, { forceNew: true, reconnection: false, transports: ["websocket"] });
      clients.push(s);
      await new Promise((resolve, reject) => { s.once("connect", resolve); s.once("connect_error", reject); });
      const h = await s.timeout(20000).emitWithAck("presence:hello", { userId: `u${i}` });
      assert.equal(h.ok, true);
      const j = await s.timeout(20000).emitWithAck("presence:join", { roomId: roomOf(i), ...view(i) });
      assert.equal(j.ok, true, JSON.stringify(j).slice(0, 200));
    }
  };
  await Promise.all(Array.from({ length: 100 }, worker));
}

/** The node's RSS per session added after the warm-up. */
async function perSession(roomOf, view) {
  const node = await startNode({ "--heartbeat-timeout-ms": 110000, "--heartbeat-interval-ms": 30000, "--rate-limit-per-sec": 1000 });
  nodes.push(node);
  await fill(node.url, 0, WARM, roomOf, view);
  await sleep(500);
  const base = rss(node.proc.pid);
  await fill(node.url, WARM, N - WARM, roomOf, view);
  await sleep(1500); // the last flushes go out
  const total = rss(node.proc.pid);
  return { node, per: (total - base) / (N - WARM), total };
}

test("a room of 2,000 sessions costs at most 1.5x the memory per session of rooms of 10", { timeout: 240000 }, async () => {
  const t0 = Date.now();
  const small = await perSession((i) => `small-${Math.floor(i / 10)}`, () => ({}));
  // Members in count view; every 40th watches 20 others.
  const watchList = (i) => Array.from({ length: 20 }, (_, k) => `u${(i + k * 97) % N}`);
  const big = await perSession(() => "big", (i) => (i % 40 === 0 ? { view: { watch: watchList(i) } } : { view: "count" }));
  const stats = await fetch(`${big.node.url}/api/rooms/big/stats`).then((r) => r.json());
  assert.equal(stats.sessions, N);
  const ratio = big.per / small.per;
  console.log(`# rooms of 10: ${(small.per / 1024).toFixed(1)} KiB/session; room of ${N}: ${(big.per / 1024).toFixed(1)} KiB/session (${ratio.toFixed(2)}x); ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  assert.ok(ratio <= 1.5, `RSS per session ${ratio.toFixed(2)}x that of rooms of 10`);
});
