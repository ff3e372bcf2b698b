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
// most after the last user). The receiver answers 200 at once; with
// `--backlog 1` it is down (503) until every user is done, and the figure
// is how fast the nodes drain the backlog once it is back.
import { startRedis, startNode, startReceiver, connect, call, closeAll, until } from "../helpers.js";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const users = Math.min(arg("users", 2000), 20000);
const concurrency = Math.max(1, Math.min(arg("concurrency", 50), 500));
const backlog = arg("backlog", 0) === 1;
const SECRET = "bench-webhook-secret-0123";

const hooks = await startReceiver(SECRET);
if (backlog) hooks.respond = () => 503;
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
  if (backlog) {
    // Let the failed attempts' backoff run out (at most 60 s is the cap;
    // a few seconds here), then the receiver is back.
    hooks.respond = () => 200;
  }
  // Every user's four events, and as many room.vacated as room.occupied.
  const complete = () => {
    const n = {};
    for (const e of hooks.delivered()) n[e.type] = (n[e.type] || 0) + 1;
    return ["user.online", "member.joined", "member.left", "user.offline"].every((t) => n[t] === users)
      && n["room.occupied"] === n["room.vacated"];
  };
  await until(complete, "every event", 120000);
  await new Promise((r) => setTimeout(r, 1000)); // late duplicates
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
    eventsPerSecond: Math.round(events.length / ((done - (backlog ? produced : t0)) / 1000)),
    backlog,
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
