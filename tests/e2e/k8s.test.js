// e2e: own-redis (runs once, in the memory pass)
// deploy/k8s, checked offline: `kubectl kustomize` renders the base and the
// example overlay, every object validates (strictly: unknown fields are
// errors) against the Kubernetes 1.30 and the newest published schemas
// (kubernetes-validate, from PyPI), the objects agree with each other and
// with the node (ports, probe paths, settings, the image's user), and a
// node started with the ConfigMap's settings answers the probes.
//
// Not verified without a cluster: admission (Pod Security), scheduling,
// the kubelet running the probes and the preStop sleep, the HPA against a
// metrics server, and an ingress controller honouring the annotations.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { root, NODE_BIN, startNode } from "./helpers.js";

const KUBECTL = process.env.KUBECTL || "kubectl";
const PYTHON = process.env.PRESENCE_PYTHON || path.join(root, "target/pyenv/bin/python");
const VERSIONS = ["1.30.0", null]; // the oldest supported (preStop `sleep`), and the validator's newest
const BASE = "deploy/k8s/base";
const EXAMPLE = "deploy/k8s/examples/ingress-nginx";
const SHUTDOWN_BUDGET_S = 10; // docs/operations.md: a node exits within 10 s of SIGTERM

const run = (cmd, args, input) => execFileSync(cmd, args, { cwd: root, encoding: "utf8", input, maxBuffer: 1 << 24 });
const render = (dir) => run(KUBECTL, ["kustomize", dir]);
const parse = (yaml) => JSON.parse(run(PYTHON, ["-c",
  "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"], yaml));
/** kubernetes-validate --strict on `yaml`: { ok, out }. */
function validate(yaml, version) {
  const file = path.join(scratch, "objects.yaml");
  fs.writeFileSync(file, yaml);
  const args = ["-m", "kubernetes_validate", "--strict", "--quiet", ...(version ? ["-k", version] : []), file];
  const r = spawnSync(PYTHON, args, { encoding: "utf8" });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

let base, example, objects, byKind, scratch;
before(() => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), "k8s-"));
  const tools = spawnSync(KUBECTL, ["version", "--client"], { encoding: "utf8" });
  if (tools.status !== 0) throw new Error(`kubectl is needed (${KUBECTL}): ${tools.error ?? tools.stderr}`);
  const kv = spawnSync(PYTHON, ["-c", "import kubernetes_validate"], { encoding: "utf8" });
  if (kv.status !== 0) {
    throw new Error(`${PYTHON} needs kubernetes-validate (pip install -r tests/e2e/requirements.txt): ${kv.error ?? kv.stderr}`);
  }
  base = render(BASE);
  example = render(EXAMPLE);
  objects = parse(example);
  byKind = (kind) => objects.filter((o) => o.kind === kind);
});
after(() => scratch && fs.rmSync(scratch, { recursive: true, force: true }));

test("kustomize renders the base and the example; every object validates strictly against Kubernetes 1.30 and the newest schema", () => {
  assert.deepEqual(parse(base).map((o) => o.kind).sort(),
    ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]);
  assert.deepEqual(objects.map((o) => o.kind).sort(),
    ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "Namespace", "PodDisruptionBudget", "Secret", "Service"]);
  for (const yaml of [base, example]) {
    for (const v of VERSIONS) {
      const r = validate(yaml, v);
      assert.ok(r.ok, `Kubernetes ${v ?? "newest"}: ${r.out}`);
    }
  }
  // The validator is strict: a misspelt field fails it.
  const typo = validate(example.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"), null);
  assert.equal(typo.ok, false);
  assert.match(typo.out, /readOnlyRootFileSystem/);
});

test("the objects agree: selectors, ports, names, the drain and the image's user", () => {
  const [dep] = byKind("Deployment");
  const [svc] = byKind("Service");
  const [pdb] = byKind("PodDisruptionBudget");
  const [hpa] = byKind("HorizontalPodAutoscaler");
  const [ing] = byKind("Ingress");
  const [cm] = byKind("ConfigMap");
  const [secret] = byKind("Secret");
  const pod = dep.spec.template;
  const labels = pod.metadata.labels;
  const selects = (sel) => Object.entries(sel).every(([k, v]) => labels[k] === v);
  assert.ok(selects(dep.spec.selector.matchLabels), "the Deployment selects its pods");
  assert.ok(selects(svc.spec.selector), "the Service selects the pods");
  assert.ok(selects(pdb.spec.selector.matchLabels), "the PodDisruptionBudget selects the pods");
  assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: "apps/v1", kind: "Deployment", name: dep.metadata.name });
  assert.ok(hpa.spec.minReplicas >= 2 && pdb.spec.maxUnavailable === 1);

  const [c] = pod.spec.containers;
  const http = c.ports.find((p) => p.name === "http");
  assert.equal(String(http.containerPort), cm.data.PRESENCE_BIND.split(":").at(-1), "the container port is the one the node binds");
  assert.equal(cm.data.PRESENCE_BIND.split(":")[0], "0.0.0.0", "the node listens on the pod's address");
  assert.equal(svc.spec.ports[0].targetPort, "http");
  assert.equal(c.readinessProbe.httpGet.path, "/readyz");
  assert.equal(c.livenessProbe.httpGet.path, "/healthz");
  for (const p of [c.readinessProbe, c.livenessProbe, c.startupProbe]) assert.equal(p.httpGet.port, "http");

  // The ConfigMap and the Secret the container reads are the ones kustomize made (names with a hash).
  assert.deepEqual(c.envFrom.map((e) => e.configMapRef?.name ?? e.secretRef?.name).sort(),
    [cm.metadata.name, secret.metadata.name].sort());
  assert.equal(ing.spec.rules[0].http.paths[0].backend.service.name, svc.metadata.name);
  assert.equal(ing.spec.rules[0].http.paths[0].backend.service.port.name, svc.spec.ports[0].name);
  const ann = ing.metadata.annotations;
  assert.equal(ann["nginx.ingress.kubernetes.io/affinity"], "cookie", "long-polling clients stick to their pod");
  // Engine.IO pings every 25 s and waits 20 s: a proxy timeout below 45 s cuts idle WebSockets.
  assert.ok(Number(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 45);

  // The drain: the preStop pause, then SIGTERM and at most the node's shutdown budget.
  const pause = c.lifecycle.preStop.sleep.seconds;
  assert.ok(pause >= 1);
  assert.ok(pod.spec.terminationGracePeriodSeconds >= pause + SHUTDOWN_BUDGET_S,
    `terminationGracePeriodSeconds ${pod.spec.terminationGracePeriodSeconds} < ${pause} + ${SHUTDOWN_BUDGET_S}`);
  assert.equal(dep.spec.strategy.rollingUpdate.maxUnavailable, 0);

  // Non-root, as the image's USER.
  const user = fs.readFileSync(path.join(root, "deploy/Dockerfile"), "utf8").match(/^USER (\d+):(\d+)$/m);
  assert.ok(user, "deploy/Dockerfile sets a numeric USER");
  assert.equal(pod.spec.securityContext.runAsNonRoot, true);
  assert.equal(pod.spec.securityContext.seccompProfile.type, "RuntimeDefault");
  assert.equal(String(pod.spec.securityContext.runAsUser), user[1]);
  assert.equal(String(pod.spec.securityContext.runAsGroup), user[2]);
  assert.equal(c.securityContext.readOnlyRootFilesystem, true);
  assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(c.securityContext.capabilities.drop, ["ALL"]);
  assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory);
});

test("every setting in the ConfigMap and the Secret is one the node reads", () => {
  const help = run(NODE_BIN, ["--help"]);
  const known = new Set([...help.matchAll(/env: ([A-Z0-9_]+)/g)].map((m) => m[1]).concat(["RUST_LOG"]));
  assert.ok(known.has("REDIS_URL") && known.has("PRESENCE_BIND"));
  const [cm] = byKind("ConfigMap");
  const [secret] = byKind("Secret");
  const [dep] = byKind("Deployment");
  const keys = [...Object.keys(cm.data), ...Object.keys(secret.data),
    ...dep.spec.template.spec.containers[0].env.map((e) => e.name)];
  assert.deepEqual(keys.filter((k) => !known.has(k)), []);
  assert.ok(Object.keys(secret.data).includes("REDIS_URL"), "the Secret names the Redis to share");
});

test("a node with the ConfigMap's settings answers the Deployment's probes and the scrape path", async (t) => {
  const [cm] = byKind("ConfigMap");
  const [dep] = byKind("Deployment");
  const [c] = dep.spec.template.spec.containers;
  // The ConfigMap as the container sees it, bound to loopback instead of the pod's address.
  const node = await startNode({}, { env: { ...cm.data, PRESENCE_NODE_ID: "k8s-test" } });
  t.after(() => node.stop());
  for (const probe of [c.readinessProbe, c.livenessProbe, c.startupProbe]) {
    assert.equal((await fetch(`${node.url}${probe.httpGet.path}`)).status, 200, probe.httpGet.path);
  }
  const ann = dep.spec.template.metadata.annotations;
  const scrape = await fetch(`${node.url}${ann["prometheus.io/path"]}`);
  assert.equal(scrape.status, 200);
  assert.match(await scrape.text(), /^presence_store_up 1$/m);
  assert.match(node.output(), /^\{.*"level":"INFO"/m, "JSON logs, as PRESENCE_LOG_FORMAT asks");
});
