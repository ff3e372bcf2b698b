// e2e: own-redis (runs once, in the memory pass)
// A node behind Redis Sentinel keeps serving when the master dies.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startNode, connect, closeAll, sleep, enter, getJson, freePort, waitPort, FAST } from "./helpers.js";

const procs = [];

function run(cmd, args) {
  const p = spawn(cmd, args, { stdio: "ignore" });
  p.unref();
  process.once("exit", () => p.kill("SIGKILL"));
  procs.push(p);
  return p;
}

function redisCmd(port, ...args) {
  return new Promise((resolve, reject) => {
    const p = spawn("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args]);
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.once("exit", (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`redis-cli exited ${code}`))));
  });
}

let master, masterPort, replicaPort, sentinels = [], node;

before(async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "presence-sentinel-"));
  masterPort = await freePort();
  replicaPort = await freePort();
  const base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
  master = run("redis-server", [...base, "--port", String(masterPort)]);
  await waitPort(masterPort);
  run("redis-server", [...base, "--port", String(replicaPort), "--replicaof", "127.0.0.1", String(masterPort)]);
  await waitPort(replicaPort);
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const conf = path.join(dir, `sentinel-${i}.conf`);
    writeFileSync(conf, [
      `port ${port}`, "bind 127.0.0.1", `dir ${dir}`,
      `sentinel monitor mymaster 127.0.0.1 ${masterPort} 2`,
      "sentinel down-after-milliseconds mymaster 1000",
      "sentinel failover-timeout mymaster 5000",
      "sentinel parallel-syncs mymaster 1",
    ].join("\n") + "\n");
    run("redis-sentinel", [conf]);
    await waitPort(port);
    sentinels.push(port);
  }
  // Wait until every sentinel knows the replica.
  const end = Date.now() + 15000;
  while (Date.now() < end) {
    const r = await redisCmd(sentinels[0], "SENTINEL", "REPLICAS", "mymaster").catch(() => "");
    if (r.includes(String(replicaPort))) break;
    await sleep(100);
  }
  const url = `redis-sentinel://127.0.0.1:${sentinels[0]}?node=127.0.0.1:${sentinels[1]}&node=127.0.0.1:${sentinels[2]}&sentinelServiceName=mymaster`;
  node = await startNode({ ...FAST, "--redis-url": url, "--redis-timeout-ms": 500 });
});

after(async () => {
  closeAll();
  await node?.stop();
  for (const p of procs) p.kill("SIGKILL");
});

test("SIGKILL of the master: the node keeps serving through the failover and no session is lost for good", async () => {
  const clients = [];
  for (let i = 0; i < 5; i++) {
    const s = await connect(node.url);
    const e = await enter(s, `user-${i}`, "r-sentinel");
    let epoch = e.epoch;
    const t = setInterval(() => {
      s.timeout(2000).emitWithAck("presence:heartbeat", { epoch, activity: "active" })
        .then((a) => { if (a.ok) epoch = a.epoch; }).catch(() => {});
    }, 200);
    t.unref(); // a failed test must not keep this file alive
    clients.push({ s, e, stop: () => clearInterval(t) });
  }
  try {
    await sleep(500); // let the replica catch up
    const pid = master.pid;
    master.kill("SIGKILL");
    // Wait for the promotion.
    const end = Date.now() + 20000;
    let promoted = "";
    while (Date.now() < end) {
      promoted = await redisCmd(sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster").catch(() => "");
      if (promoted.includes(String(replicaPort))) break;
      await sleep(200);
    }
    assert.ok(promoted.includes(String(replicaPort)), `the replica was promoted (${promoted})`);
    // Every session is there again, under its id, on the same node process.
    let room;
    const t0 = Date.now();
    while (Date.now() - t0 < 15000) {
      room = await getJson(`${node.url}/api/rooms/r-sentinel/presence`);
      if (room.status === 200 && clients.every((c) => room.body.sessions[c.e.sessionId])) break;
      await sleep(200);
    }
    for (const c of clients) assert.ok(room.body.sessions[c.e.sessionId], `session of ${c.e.hello.userId} is present`);
    // Ready again once its connections, the event subscription included,
    // have found the new master.
    let ready;
    for (let i = 0; i < 50; i++) {
      ready = await getJson(`${node.url}/readyz`);
      if (ready.status === 200) break;
      await sleep(200);
    }
    assert.equal(ready.status, 200, JSON.stringify(ready.body));
    assert.equal(node.proc.exitCode, null, "the node never restarted");
    assert.ok(pid > 0);
    // And it keeps serving new work.
    const n = await connect(node.url);
    const en = await enter(n, "newcomer", "r-sentinel");
    assert.ok(en.snapshot.users["user-0"]);
  } finally {
    for (const c of clients) c.stop();
  }
});
