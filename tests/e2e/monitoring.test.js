// e2e: own-redis (runs once, in the memory pass)
// The alert rules and the dashboard in deploy/: promtool checks and
// unit-tests the rules, and every metric they and the dashboard query is one
// a live node exports at /metrics.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { root, startNode, startReceiver, connect, call, enter, until, closeAll } from "./helpers.js";

const rules = path.join(root, "deploy/prometheus/alerts.yml");
const dashboard = path.join(root, "deploy/grafana/presence.json");
const SECRET = "e2e-webhook-secret-0123";
let node, hooks;
after(async () => { closeAll(); await node?.stop(); await hooks?.stop(); });

test("promtool checks the alert rules and passes their unit tests", () => {
  const checked = execFileSync("promtool", ["check", "rules", rules], { encoding: "utf8" });
  assert.match(checked, /SUCCESS: \d+ rules found/);
  const tested = execFileSync("promtool", ["test", "rules", "alerts.test.yml"], {
    cwd: path.dirname(rules), encoding: "utf8",
  });
  assert.match(tested, /SUCCESS/);
});

/** Metric names a PromQL expression reads (a summary's _sum/_count included). */
function metricsIn(expr) {
  return [...expr.matchAll(/\bpresence_[a-z_]+/g)].map((m) => m[0]);
}

test("every metric the alerts and the dashboard query is exported by a live node", async () => {
  hooks = await startReceiver(SECRET);
  node = await startNode({ "--webhook-url": hooks.url, "--webhook-secret": SECRET, "--webhook-batch-wait-ms": 100 });
  // Some traffic: requests, events, a webhook delivery, sweeps.
  const s = await connect(node.url);
  const h = await enter(s, "mon-ada", "mon-room");
  assert.ok((await call(s, "presence:heartbeat", { epoch: h.epoch })).ok);
  await until(() => hooks.delivered().some((e) => e.userId === "mon-ada"), "a webhook delivery");
  await until(async () => (await (await fetch(`${node.url}/metrics`)).text()).includes("presence_sweep_duration_seconds"), "a sweep");
  const text = await (await fetch(`${node.url}/metrics`)).text();
  const exported = new Set();
  for (const line of text.split("\n")) {
    const m = /^# TYPE (\S+) (\S+)/.exec(line);
    if (!m) continue;
    exported.add(m[1]);
    if (m[2] === "summary" || m[2] === "histogram") {
      for (const suffix of ["_sum", "_count", "_bucket"]) exported.add(m[1] + suffix);
    }
  }
  const wanted = new Map();
  for (const m of fs.readFileSync(rules, "utf8").matchAll(/expr: (.*)/g)) {
    for (const name of metricsIn(m[1])) wanted.set(name, "deploy/prometheus/alerts.yml");
  }
  const dash = JSON.parse(fs.readFileSync(dashboard, "utf8"));
  assert.ok(dash.panels.length > 10);
  for (const p of dash.panels) {
    assert.ok(p.targets.length > 0, p.title);
    for (const t of p.targets) for (const name of metricsIn(t.expr)) wanted.set(name, `dashboard "${p.title}"`);
  }
  assert.ok(wanted.size >= 20, [...wanted.keys()].join(" "));
  const missing = [...wanted].filter(([name]) => !exported.has(name)).map(([n, where]) => `${n} (${where})`);
  assert.deepEqual(missing, [], `not exported: ${missing.join(", ")}`);
});
