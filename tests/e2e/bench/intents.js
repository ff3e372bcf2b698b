// Intent latency: a callee becomes reachable now -> the caller gets
// presence:reachable. Same node, and across two nodes on one Redis.
//
//   cargo build --release -p presence-node
//   cd tests/e2e && PRESENCE_NODE_BIN=../../target/release/presence-node \
//     node bench/intents.js --count 200
//
// Starts its own redis-server and two nodes on loopback ports. Each round
// the callee's tab goes to the background (soon), the caller makes an
// intent, then the callee's tab comes back to the front (a heartbeat with
// `activity: "active"`); one sample is the time from sending that heartbeat
// to the caller receiving presence:reachable. Rounds alternate between a
// caller on the callee's node and one on the other node. Bounded: `--count`
// rounds (at most 2000), 5 s per round.
import { startRedis, startNode, connect, call, waitFor, enter, closeAll } from "../helpers.js";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const count = Math.min(arg("count", 200), 2000);

const redis = await startRedis();
const flags = {
  "--redis-url": redis.url, "--key-prefix": "bench-intents",
  "--heartbeat-timeout-ms": 600000, "--idle-after-ms": 600000, "--away-after-ms": 1200000,
  "--background-timeout-ms": 1200000,
  // The callee sends two heartbeats a round, faster than a client would:
  // above the default per-socket rate limit.
  "--rate-limit-per-sec": 100000,
};
const a = await startNode({ ...flags, "--node-id": "bench-a" });
const b = await startNode({ ...flags, "--node-id": "bench-b" });
const room = "bench-room";
const callee = await connect(b.url);
const ec = await enter(callee, "callee", room, { capabilities: ["audio"] });
const near = await connect(b.url);
await enter(near, "caller-near", room);
const far = await connect(a.url);
await enter(far, "caller-far", room);

const samples = { same: [], across: [] };
try {
  for (let i = 0; i < count; i++) {
    const [caller, kind] = i % 2 === 0 ? [near, "same"] : [far, "across"];
    await call(callee, "presence:heartbeat", { epoch: ec.epoch, activity: "background" });
    const made = await call(caller, "presence:intent", { userId: "callee", need: ["audio"], ttlMs: 5000 });
    if (!made.ok) throw new Error(JSON.stringify(made));
    const from = caller.received.length;
    const t0 = performance.now();
    callee.emit("presence:heartbeat", { epoch: ec.epoch, activity: "active" });
    await waitFor(caller, "presence:reachable", (m) => m.intentId === made.intentId, { from }).catch((e) => {
      throw new Error(`round ${i}: ${e.message}; received ${JSON.stringify(caller.received.slice(-5))}`);
    });
    samples[kind].push(performance.now() - t0);
  }
} finally {
  closeAll();
  await a.stop();
  await b.stop();
  await redis.stop();
}

const pct = (xs, p) => xs[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
for (const [kind, xs] of Object.entries(samples)) {
  xs.sort((x, y) => x - y);
  console.log(JSON.stringify({
    caller: kind === "same" ? "on the callee's node" : "on the other node",
    samples: xs.length,
    p50_ms: +pct(xs, 50).toFixed(2),
    p99_ms: +pct(xs, 99).toFixed(2),
    max_ms: +xs[xs.length - 1].toFixed(2),
  }));
}
