// Webhook delivery: lifecycle events from two nodes on one Redis to a
// receiver on loopback. Reports events delivered per second and the lag
// from each change (`at`) to its receipt.
//
//   cargo build --release -p presence-node
//   cd tests/e2e && PRESENCE_NODE_BIN=../../target/release/presence-node \
//     node bench/webhooks.js --users 2000
//
// Starts its own redis-server, two nodes and the receiver. `--users` users
// (at most 20,000), `--concurrency` at a time (default 50), each connects to
// one of the nodes, says hello, joins one of 100 rooms and ends its session:
// user.online, member.joined, member.left, user.offline per user, and each
// room's occupied/vacated. The run ends when every event arrived (60 s at
// most after the last user). The receiver answers 200 at once.
import { startRedis, startNode, startReceiver, connect, call, closeAll, until } from "../helpers.js";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const users = Math.min(arg("users", 2000), 20000);
const concurrency = Math.max(1, Math.min(arg("concurrency", 50), 500));
const SECRET = "bench-webhook-secret-0123";

const hooks = await startReceiver(SECRET);
const redis = await startRedis();
const flags = {
  "--redis-url": redis.url, "--key-prefix": "bench-hooks",
  "--webhook-url": hooks.url, "--webhook-secret": SECRET,
  "--rate-limit-per-sec": 100000,
};
const nodes = [
  await startNode({ ...flags, "--node-id": "hook-a" }),
  await startNode({ ...flags, "--node-id": "hook-b" }),
];

let next = 0;
const t0 = Date.now();
try {
  const worker = async () => {
    while (next < users) {
      const i = next++;
      const s = await connect(nodes[i % 2].url);
      const h = await call(s, "presence:hello", { userId: `hu-${i}` });
      if (!h.ok) throw new Error(JSON.stringify(h));
      const j = await call(s, "presence:join", { roomId: `hr-${i % 100}` });
      if (!j.ok) throw new Error(JSON.stringify(j));
      const l = await call(s, "presence:leave", {});
      if (!l.ok) throw new Error(JSON.stringify(l));
      s.disconnect();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const produced = Date.now();
  // Per user 4 events; per room at least one occupied and one vacated.
  const least = users * 4 + Math.min(users, 100) * 2;
  await until(() => hooks.delivered().length >= least, `${least} events`, 60000);
  await new Promise((r) => setTimeout(r, 1500)); // late duplicates or extra room events
  const done = hooks.requests.at(-1).receivedAt;
  const events = hooks.delivered();
  const lags = hooks.requests
    .filter((q) => q.status === 200)
    .flatMap((q) => q.events.map((e) => q.receivedAt - e.at))
    .sort((x, y) => x - y);
  const pct = (p) => lags[Math.min(lags.length - 1, Math.floor((p / 100) * lags.length))];
  const perType = {};
  for (const e of events) perType[e.type] = (perType[e.type] || 0) + 1;
  console.log(JSON.stringify({
    users,
    concurrency,
    events: events.length,
    requests: hooks.requests.length,
    eventsPerRequest: +(lags.length / hooks.requests.length).toFixed(1),
    produceSeconds: (produced - t0) / 1000,
    eventsPerSecond: Math.round(events.length / ((done - t0) / 1000)),
    lagMs: { p50: pct(50), p90: pct(90), p99: pct(99), max: lags.at(-1) },
    duplicates: lags.length - events.length,
    perType,
  }, null, 1));
} finally {
  closeAll();
  for (const n of nodes) await n.stop();
  await hooks.stop();
  await redis.stop();
}
