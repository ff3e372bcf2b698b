// Propagation latency: a join on node A -> the diff at an observer on node B.
//
//   cargo build --release -p presence-node
//   cd tests/e2e && PRESENCE_NODE_BIN=../../target/release/presence-node \
//     node bench/propagation.js --debounce 0 --every 1000 --count 100
//
// Starts its own redis-server and two nodes on loopback ports. Each round a
// new client connects to A, says hello, and joins the room; the time from
// sending the join to the observer on B receiving the diff that shows the
// newcomer is one sample. `--every` spaces the joins: 1000 ms is a quiet
// room (each change goes out at once), 50 ms a busy one (changes inside one
// debounce window wait for its end and go out together). Bounded: `--count` rounds (at most 5000),
// 5 s per round. The room grows to `--count` members.
import { startRedis, startNode, connect, call, waitFor, enter, closeAll, sleep } from "../helpers.js";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const debounce = arg("debounce", 250);
const every = arg("every", 300);
const count = Math.min(arg("count", 200), 5000);

const redis = await startRedis();
// Long timings: no session turns idle or stale during the run, so the only
// changes in the room are the measured joins.
const flags = {
  "--redis-url": redis.url, "--emit-debounce-ms": debounce, "--key-prefix": "bench",
  "--heartbeat-timeout-ms": 600000, "--idle-after-ms": 600000, "--away-after-ms": 1200000,
  "--background-timeout-ms": 1200000,
};
const a = await startNode({ ...flags, "--node-id": "bench-a" });
const b = await startNode({ ...flags, "--node-id": "bench-b" });
const room = "bench-room";
const obs = await connect(b.url);
await enter(obs, "observer", room);

const samples = [];
const clients = [];
try {
  for (let i = 0; i < count; i++) {
    const c = await connect(a.url);
    clients.push(c);
    const user = `user-${i}`;
    const hello = await call(c, "presence:hello", { userId: user });
    const from = obs.received.length;
    const t0 = performance.now();
    const seen = waitFor(obs, "presence:diff", (d) => d.users[user], { from, timeoutMs: 5000 });
    const join = await call(c, "presence:join", { roomId: room });
    if (!hello.ok || !join.ok) throw new Error(JSON.stringify({ hello, join }));
    await seen;
    samples.push(performance.now() - t0);
    await sleep(every);
  }
} finally {
  closeAll();
  await a.stop();
  await b.stop();
  await redis.stop();
}
samples.sort((x, y) => x - y);
const q = (p) => samples[Math.min(samples.length - 1, Math.floor(p * samples.length))].toFixed(1);
console.log(JSON.stringify({ debounceMs: debounce, everyMs: every, count: samples.length, p50: q(0.5), p99: q(0.99), max: samples.at(-1).toFixed(1) }));
