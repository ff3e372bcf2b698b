// e2e: docker (runs once, in the Docker step of scripts/test.sh)
// The image deploy/Dockerfile builds (scripts/images.sh node): what it holds,
// the user it runs as, and one node on the embedded store in a container as
// locked down as the Kubernetes manifests ask (read-only root, no
// capabilities, no privilege escalation), answering /healthz, /readyz, the
// demo page and a client; `docker stop` drains it and it exits 0.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { freePort, connect, enter, closeAll, getJson, until } from "./helpers.js";
import { LABEL, docker, dockerMissing, inspect, requireImage } from "./docker.js";

const IMAGE = process.env.PRESENCE_IMAGE || "presence-node:local";
const missing = dockerMissing() || false;
let container, port;

before(async () => {
  if (missing) return;
  requireImage(IMAGE, "scripts/images.sh node");
  port = await freePort();
  container = docker(
    "run", "-d", "--label", LABEL, "--network", "host",
    "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
    "-e", `PRESENCE_BIND=127.0.0.1:${port}`, "-e", "PRESENCE_NODE_ID=image-test",
    IMAGE,
  );
  await until(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => null))?.ok,
    `the container's /healthz (logs: ${docker("logs", container)})`, 20000);
});
after(() => {
  closeAll();
  if (container) docker("rm", "-f", container);
});

test("the image runs as a non-root user and holds only the binary, what it links, the CA bundle and passwd", { skip: missing }, () => {
  const cfg = inspect(IMAGE).Config;
  assert.equal(cfg.User, "65532:65532");
  assert.deepEqual(cfg.Entrypoint, ["/usr/local/bin/presence-node"]);
  assert.ok(cfg.Env.includes("PRESENCE_LOG_FORMAT=json"), cfg.Env.join(" "));

  const made = docker("create", "--label", LABEL, IMAGE);
  let files;
  try {
    const tar = execFileSync("sh", ["-c", `docker export ${made} | tar -t`], { encoding: "utf8", maxBuffer: 1 << 24 });
    files = tar.split("\n").filter((f) => f && !f.endsWith("/"));
  } finally {
    docker("rm", made);
  }
  // What the engine adds to every container's filesystem.
  const engine = new Set([".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", "dev/console", "dev/pts", "dev/shm", "proc", "sys"]);
  const allowed = (f) => engine.has(f) || f === "usr/local/bin/presence-node" || f === "etc/passwd" || f === "etc/group"
    || f === "etc/ssl/certs/ca-certificates.crt" || /^(usr\/)?lib(64|x32)?\/.*\.so(\.[0-9]+)*$/.test(f);
  assert.deepEqual(files.filter((f) => !allowed(f)), [], "nothing but the binary, its libraries, the CA bundle and passwd");
  assert.ok(files.includes("usr/local/bin/presence-node"));
  assert.ok(files.some((f) => /libc\.so/.test(f)), "the C library the binary links");
});

test("a node in the container answers /healthz, /readyz, the demo page and a client", { skip: missing }, async () => {
  const base = `http://127.0.0.1:${port}`;
  assert.equal((await fetch(`${base}/healthz`)).status, 200);
  assert.equal((await fetch(`${base}/readyz`)).status, 200);
  const page = await fetch(`${base}/`);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<title>presence-cluster demo<\/title>/);
  const js = await fetch(`${base}/assets/socket.io.min.js`);
  assert.equal(js.status, 200);

  const a = await connect(base);
  const b = await connect(base);
  const ea = await enter(a, "alice", "lobby");
  const eb = await enter(b, "bob", "lobby");
  assert.equal(ea.hello.nodeId, "image-test");
  assert.ok(eb.snapshot.sessions[ea.sessionId], "bob's snapshot shows alice");
  const who = await getJson(`${base}/api/rooms/lobby/presence`);
  assert.equal(who.status, 200);
  assert.deepEqual(Object.keys(who.body.users).sort(), ["alice", "bob"]);
});

test("the process runs as 65532 with no capabilities", { skip: missing }, () => {
  const pid = inspect(container).State.Pid;
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  assert.match(status, /^Uid:\s+65532\s+65532\s+65532\s+65532$/m);
  assert.match(status, /^CapEff:\s+0+$/m);
  assert.match(status, /^NoNewPrivs:\s+1$/m);
});

test("docker stop drains the node: it tells its clients to reconnect and exits 0", { skip: missing }, async () => {
  const c = await connect(`http://127.0.0.1:${port}`);
  const notice = new Promise((r) => c.once("presence:reconnect", r));
  await enter(c, "carol", "lobby");
  docker("stop", "-t", "15", container);
  assert.equal((await notice).reason, "shutdown");
  const state = inspect(container).State;
  // 0, not 137: the drain ended it, not the SIGKILL after the grace.
  assert.equal(state.ExitCode, 0, `exit code (logs: ${docker("logs", container)})`);
  const logs = docker("logs", container);
  assert.match(logs, /"level":"INFO"/, "JSON logs");
});
