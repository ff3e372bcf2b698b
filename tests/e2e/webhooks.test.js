// e2e: own-redis (runs once, in the memory pass)
// Webhooks that are never lost, and the moderation API, across two nodes on
// one Redis: a receiver that fails gets the batch again, a delivering node
// killed mid-batch loses nothing, the stream outlives a Redis restart when
// Redis persists, and a backend's removal reaches the connection on
// whichever node holds it.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { NODE_BIN } from "./helpers.js";
import {
  startRedis, startNode, startReceiver, connect, closeAll, call, waitFor, enter, getJson, until, sleep,
} from "./helpers.js";

const SECRET = "e2e-webhook-secret-0123";
afterEach(() => closeAll());
// Each test starts its own Redis and nodes; each start listens for this
// process's exit to kill them.
process.setMaxListeners(64);

/** A receiver, a Redis and nodes `ids` delivering to it (each test its own). */
async function setup(ids, { redis = null, flags = {}, alsoTo = [] } = {}) {
  const hooks = await startReceiver(SECRET);
  redis ||= await startRedis();
  const nodes = [];
  for (const id of ids) {
    nodes.push(await startNode({
      "--redis-url": redis.url,
      "--node-id": id,
      "--key-prefix": "hooks",
      "--emit-debounce-ms": 50,
      "--webhook-url": [hooks.url, ...alsoTo].join(","),
      "--webhook-secret": SECRET,
      "--webhook-batch-wait-ms": 100,
      ...flags,
    }));
  }
  return {
    hooks, redis, nodes,
    async stop() {
      closeAll();
      for (const n of nodes) await n.stop();
      await hooks.stop();
      await redis.stop();
    },
  };
}

/** `n` users join `room` on `url`; the events they cause, as "<type> <subject>". */
async function crowd(url, room, n, prefix) {
  const expected = [`room.occupied ${room}`];
  for (let i = 0; i < n; i++) {
    const s = await connect(url);
    await enter(s, `${prefix}-${i}`, room);
    expected.push(`user.online ${prefix}-${i}`, `member.joined ${prefix}-${i}`);
  }
  return expected;
}

const key = (e) => `${e.type} ${e.type.startsWith("room.") ? e.roomId : e.userId}`;

/** A metric summed over `nodes` (`name` with any labels matching `labels`). */
async function total(nodes, name, labels = "") {
  let sum = 0;
  for (const n of nodes) {
    const text = await (await fetch(`${n.url}/metrics`)).text();
    for (const line of text.split("\n")) {
      if (line.startsWith(name) && line.includes(labels) && !line.startsWith("#")) {
        const rest = line.slice(name.length);
        if (rest.startsWith(" ") || rest.startsWith("{")) sum += Number(line.split(" ").at(-1));
      }
    }
  }
  return sum;
}

test("a receiver that answers 500 and then 200 gets the same batch again", async () => {
  const env = await setup(["w-a", "w-b"]);
  try {
    let calls = 0;
    env.hooks.respond = () => (++calls === 1 ? 500 : 200);
    const expected = await crowd(env.nodes[0].url, "r500", 3, "u500");
    await until(() => expected.every((k) => env.hooks.delivered().some((e) => key(e) === k)), "every event", 15000);
    const [first, ...rest] = env.hooks.requests;
    assert.equal(first.status, 500);
    const again = rest.find((q) => q.status === 200 && first.events.every((e) => q.events.some((x) => x.id === e.id)));
    assert.ok(again, "the failed batch came again, same ids");
    assert.ok(again.events.every((e, i) => i >= first.events.length || e.id === first.events[i].id), "in the same order");
    assert.ok(env.hooks.requests.every((q) => q.verified));
    // Counted: the retry, the failed answer, what was delivered, how late.
    assert.ok(await total(env.nodes, "presence_webhook_retried_total") >= 1);
    assert.ok(await total(env.nodes, "presence_webhook_requests_total", 'result="status"') >= 1);
    assert.ok(await total(env.nodes, "presence_webhook_delivered_total") >= expected.length);
    assert.ok(await total(env.nodes, "presence_webhook_delivery_lag_seconds_count") >= expected.length);
  } finally {
    await env.stop();
  }
});

test("SIGKILL of the delivering node in the middle of a batch loses nothing", async () => {
  const env = await setup(["k-a", "k-b"], { flags: { "--webhook-claim-idle-ms": 1500 } });
  try {
    env.hooks.respond = () => null; // hold every request: batches in flight
    const expected = [
      ...(await crowd(env.nodes[0].url, "rkill", 6, "ka")),
      ...(await crowd(env.nodes[1].url, "rkill2", 6, "kb")),
    ];
    await until(() => env.hooks.held.length > 0, "a batch in flight", 10000);
    const victim = env.nodes.find((n) => n.flags["--node-id"] === env.hooks.requests[0].node);
    assert.ok(victim, `a node sent it: ${env.hooks.requests[0].node}`);
    victim.proc.kill("SIGKILL");
    await new Promise((r) => (victim.proc.exitCode !== null || victim.proc.signalCode !== null ? r() : victim.proc.once("exit", r)));
    // From now on the receiver takes everything; what the survivor had in
    // flight is refused once (it retries), what the victim had is claimed.
    env.hooks.respond = () => 200;
    env.hooks.release(503);
    const missing = () => expected.filter((k) => !env.hooks.delivered().some((e) => key(e) === k));
    await until(() => missing().length === 0, "every event delivered", 20000)
      .catch((e) => { throw new Error(`${e.message}: missing ${JSON.stringify(missing())}`); });
    const survivor = env.nodes.find((n) => n !== victim).flags["--node-id"];
    const late = env.hooks.requests.filter((q) => q.status === 200 && q.node === survivor);
    const victimIds = new Set(env.hooks.requests.filter((q) => q.node === victim.flags["--node-id"]).flatMap((q) => q.events.map((e) => e.id)));
    assert.ok(late.some((q) => q.events.some((e) => victimIds.has(e.id))), "the survivor delivered the victim's batch");
  } finally {
    await env.stop();
  }
});

test("the stream and its pending batches survive a Redis restart when Redis persists", async () => {
  const redis = await startRedis({ persist: true });
  const env = await setup(["p-a"], { redis });
  try {
    env.hooks.respond = () => 500; // nothing lands: the batch stays pending
    const expected = await crowd(env.nodes[0].url, "rpersist", 3, "pu");
    await until(() => env.hooks.requests.length > 0, "a first attempt", 10000);
    await redis.restart(); // SIGKILL; the append-only file has every write
    env.hooks.respond = () => 200;
    await until(() => expected.every((k) => env.hooks.delivered().some((e) => key(e) === k)), "the kept events", 30000);
    // And what happens after the restart.
    const more = await crowd(env.nodes[0].url, "rpersist2", 1, "pv");
    await until(() => more.every((k) => env.hooks.delivered().some((e) => key(e) === k)), "new events", 15000);
  } finally {
    await env.stop();
  }
});

test("without persistence a Redis restart loses the stream; delivery goes on with new events", async () => {
  const env = await setup(["np-a"]);
  try {
    await crowd(env.nodes[0].url, "rlost", 1, "la");
    await until(() => env.hooks.delivered().some((e) => e.userId === "la-0"), "the first events", 10000);
    await env.redis.restart(); // empty: the stream and its consumer group are gone
    await until(async () => (await getJson(`${env.nodes[0].url}/readyz`)).status === 200, "the node to see Redis again", 15000);
    const after = await crowd(env.nodes[0].url, "rlost2", 1, "lb");
    await until(() => after.every((k) => env.hooks.delivered().some((e) => key(e) === k)), "events after the restart", 20000);
  } finally {
    await env.stop();
  }
});

test("moderation across two nodes: the call on one node reaches the connection on the other within a second", async () => {
  const env = await setup(["m-a", "m-b"]);
  const [a, b] = env.nodes;
  try {
    const obs = await connect(a.url);
    await enter(obs, "x-obs", "x-room");
    const target = await connect(b.url);
    const t = await enter(target, "x-target", "x-room");
    await waitFor(obs, "presence:diff", (d) => d.users?.["x-target"], { timeoutMs: 3000 });
    // Out of the room, asked of node A, carried out on node B.
    let t0 = Date.now();
    const removed = await getJson(`${a.url}/api/rooms/x-room/members/x-target`, { method: "DELETE" });
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    await waitFor(target, "presence:removed", (m) => m.roomId === "x-room", { timeoutMs: 1000 });
    await waitFor(obs, "presence:diff", (d) => d.users?.["x-target"] === null, { timeoutMs: 1000 });
    assert.ok(Date.now() - t0 < 1000);
    assert.ok((await call(target, "presence:join", { roomId: "x-room" })).ok, "a new join brings it back");
    await waitFor(obs, "presence:diff", (d) => d.users?.["x-target"], { timeoutMs: 3000, from: obs.received.length });
    // Ended, asked of node A, closed on node B.
    const closed = new Promise((r) => target.once("disconnect", r));
    t0 = Date.now();
    const ended = await getJson(`${a.url}/api/sessions/${t.sessionId}`, { method: "DELETE" });
    assert.equal(ended.status, 200);
    const e = await waitFor(target, "presence:error", (m) => m.error?.code === "kicked", { timeoutMs: 1000 });
    assert.equal(e.error.code, "kicked");
    assert.equal(await closed, "io server disconnect");
    assert.ok(Date.now() - t0 < 1000, "within a second");
    await waitFor(obs, "presence:diff", (d) => d.users?.["x-target"] === null, { timeoutMs: 1000, from: obs.received.length - 1 });
    // Every session of a user, on both nodes.
    const one = await connect(a.url);
    await enter(one, "x-many", "x-room");
    const two = await connect(b.url);
    await enter(two, "x-many", "x-room");
    const all = await getJson(`${b.url}/api/users/x-many/sessions`, { method: "DELETE" });
    assert.equal(all.body.sessions.length, 2);
    await Promise.all([one, two].map((s) => waitFor(s, "presence:error", (m) => m.error?.code === "kicked", { timeoutMs: 1000 })));
    await until(() => env.hooks.delivered().some((ev) => ev.type === "user.offline" && ev.userId === "x-many"), "x-many offline by webhook");
    assert.equal((await getJson(`${a.url}/api/users/x-many/sessions`, { method: "DELETE" })).status, 404);
    await sleep(10);
  } finally {
    await env.stop();
  }
});

test("the Rust stream consumer example reads the lifecycle stream with a consumer group of its own", async () => {
  const env = await setup(["ex-a"]);
  try {
    const bin = path.join(path.dirname(NODE_BIN), "examples", "lifecycle");
    const proc = spawn(bin, [], {
      env: { ...process.env, REDIS_URL: env.redis.url, PRESENCE_KEY_PREFIX: "hooks", COUNT: "3", GROUP: "e2e-example" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "", err = "";
    proc.stdout.on("data", (c) => { out += c; });
    proc.stderr.on("data", (c) => { err += c; });
    const exited = new Promise((r) => proc.once("exit", r));
    await until(() => err.includes("reading 4 shard(s)"), `the example to start: ${err}`, 10000);
    await crowd(env.nodes[0].url, "rexample", 1, "exu");
    const code = await Promise.race([exited, sleep(10000).then(() => { proc.kill("SIGKILL"); return "timeout"; })]);
    assert.equal(code, 0, `exit: ${code}; ${err}`);
    const events = out.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(events.map(key).sort(), ["member.joined exu-0", "room.occupied rexample", "user.online exu-0"]);
    // The webhook's group got them too: groups do not share progress.
    await until(() => env.hooks.delivered().filter((e) => e.userId === "exu-0" || e.roomId === "rexample").length === 3, "the webhook's copy");
  } finally {
    await env.stop();
  }
});

test("two URLs each get every event, through groups of their own; the type filter keeps only its types", async () => {
  const other = await startReceiver(SECRET);
  const env = await setup(["f-a", "f-b"], {
    flags: { "--webhook-events": "member.*,room.occupied" },
    alsoTo: [other.url],
  });
  try {
    const expected = (await crowd(env.nodes[1].url, "rtwo", 3, "tw")).filter((k) => !k.startsWith("user."));
    for (const r of [env.hooks, other]) {
      await until(() => expected.every((k) => r.delivered().some((e) => key(e) === k)), "every member event at each URL", 15000);
    }
    const s = await connect(env.nodes[0].url);
    await enter(s, "tw-x", "rtwo");
    assert.ok((await call(s, "presence:leave", {})).ok);
    await until(() => other.delivered().some((e) => e.type === "member.left" && e.userId === "tw-x"), "member.left");
    await sleep(300);
    for (const r of [env.hooks, other]) {
      const types = new Set(r.delivered().map((e) => e.type));
      assert.deepEqual([...types].sort(), ["member.joined", "member.left", "room.occupied"], "only the filtered types");
      assert.ok(r.requests.every((q) => q.verified));
    }
  } finally {
    await env.stop();
    await other.stop();
  }
});

test("a receiver that does not answer in time gets the batch again; events past the max age are dropped and counted", async () => {
  const env = await setup(["t-a"], { flags: { "--webhook-timeout-ms": 400, "--webhook-max-age-s": 3 } });
  try {
    let calls = 0;
    env.hooks.respond = () => (++calls === 1 ? null : 200); // the first request hangs
    const expected = await crowd(env.nodes[0].url, "rslow", 2, "ts");
    await until(() => expected.every((k) => env.hooks.delivered().some((e) => key(e) === k)), "every event", 15000);
    const [first, ...rest] = env.hooks.requests;
    assert.equal(first.status, null, "never answered");
    assert.ok(rest.some((q) => q.status === 200 && first.events.every((e) => q.events.some((x) => x.id === e.id))), "sent again");
    assert.ok(await total(env.nodes, "presence_webhook_requests_total", 'result="timeout"') >= 1);
    // A receiver that keeps failing: after PRESENCE_WEBHOOK_MAX_AGE_S the events are dropped.
    env.hooks.respond = () => 503;
    const doomed = await crowd(env.nodes[0].url, "rdrop", 1, "td");
    await until(async () => (await total(env.nodes, "presence_webhook_dropped_total")) >= doomed.length, "the drop", 20000);
    env.hooks.respond = () => 200;
    const later = await crowd(env.nodes[0].url, "rdrop2", 1, "te");
    await until(() => later.every((k) => env.hooks.delivered().some((e) => key(e) === k)), "delivery to go on", 15000);
    assert.ok(!env.hooks.delivered().some((e) => e.userId === "td-0" || e.roomId === "rdrop"), "dropped ones never came");
    env.hooks.release(200);
  } finally {
    await env.stop();
  }
});
