// Operating a node: JSON logs, configuration errors, graceful shutdown.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { startNode, connect, closeAll, call, enter, NODE_BIN } from "./helpers.js";

test("--help lists every setting with its environment variable", () => {
  const out = spawnSync(NODE_BIN, ["--help"], { encoding: "utf8" });
  assert.equal(out.status, 0);
  for (const env of ["PRESENCE_BIND", "PRESENCE_NODE_ID", "PRESENCE_HEARTBEAT_INTERVAL_MS", "PRESENCE_HEARTBEAT_TIMEOUT_MS",
    "PRESENCE_IDLE_AFTER_MS", "PRESENCE_AWAY_AFTER_MS", "PRESENCE_BACKGROUND_TIMEOUT_MS", "PRESENCE_RECONNECT_GRACE_MS",
    "PRESENCE_PRUNE_INTERVAL_MS", "PRESENCE_EMIT_DEBOUNCE_MS", "PRESENCE_MAX_STATE_BYTES", "PRESENCE_MAX_META_BYTES",
    "PRESENCE_MAX_ROOMS_PER_SESSION", "PRESENCE_MAX_PAYLOAD_BYTES", "PRESENCE_SIGNAL_RATE_PER_SEC", "PRESENCE_LOG_FORMAT"]) {
    assert.match(out.stdout, new RegExp(env), env);
  }
});

test("an invalid configuration is refused with a message naming the setting", () => {
  const bad = spawnSync(NODE_BIN, ["--heartbeat-timeout-ms", "5"], { encoding: "utf8" });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /heartbeatTimeoutMs/);
  const env = spawnSync(NODE_BIN, [], { encoding: "utf8", env: { ...process.env, PRESENCE_NODE_ID: "not valid!" } });
  assert.equal(env.status, 2);
  assert.match(env.stderr, /PRESENCE_NODE_ID/);
});

test("settings come from environment variables too, and logs can be JSON", async () => {
  const node = await startNode({ "--log-format": "json", "--node-id": "node-json" }, {});
  try {
    const line = node.output().split("\n").find((l) => l.includes("listening"));
    const rec = JSON.parse(line);
    assert.equal(rec.level, "INFO");
    assert.equal(rec.fields.node_id, "node-json");
    const cluster = await fetch(`${node.url}/api/cluster`).then((r) => r.json());
    assert.equal(cluster.nodes[0].nodeId, "node-json");
  } finally {
    await node.stop();
  }
});

test("SIGTERM closes client connections and exits promptly", async () => {
  const node = await startNode({});
  const a = await connect(node.url);
  await enter(a, "alice", "r-shutdown");
  const disconnected = new Promise((resolve) => a.once("disconnect", resolve));
  const exited = new Promise((resolve) => node.proc.once("exit", (code, signal) => resolve({ code, signal })));
  const t0 = Date.now();
  node.proc.kill("SIGTERM");
  const reason = await disconnected;
  const { code } = await exited;
  assert.equal(code, 0);
  assert.ok(Date.now() - t0 < 10000, "exits within 10 s");
  // Not "io server disconnect": socket.io clients reconnect on their own after
  // a transport close, and resume their session on the next node.
  assert.equal(reason, "transport close");
  closeAll();
  await node.stop();
});
