// Test helpers: start the real presence-node binary on a free loopback port,
// connect the official socket.io-client, and wait for acks and events.
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { io } from "socket.io-client";

/** The repository's root. */
export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const NODE_BIN = process.env.PRESENCE_NODE_BIN || path.join(root, "target/debug/presence-node");

/** Short lifecycle timings, so that idle/away/stale/expiry happen within a test. */
export const FAST = {
  "--heartbeat-interval-ms": 200,
  "--heartbeat-timeout-ms": 1200,
  "--idle-after-ms": 600,
  "--away-after-ms": 1500,
  "--background-timeout-ms": 4000,
  "--reconnect-grace-ms": 1000,
  "--prune-interval-ms": 50,
  "--emit-debounce-ms": 50,
};

/** The store the suite runs against: E2E_STORE=redis starts a redis-server per node. */
export const STORE = process.env.E2E_STORE || "memory";

/** A free loopback port. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts connections on 127.0.0.1:`port` (10 s at most). */
export async function waitPort(port) {
  const end = Date.now() + 10000;
  while (Date.now() < end) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, "127.0.0.1", () => { s.end(); r(true); });
      s.once("error", () => r(false));
    });
    if (ok) return;
    await sleep(20);
  }
  throw new Error(`nothing listens on ${port}`);
}

/** Starts a redis-server on a free loopback port (killed with `stop`, or when this process exits). */
export async function startRedis({ tls = false, persist = false } = {}) {
  const port = await freePort();
  const listen = ["--port", String(port)];
  // Persistence: an append-only file synced on every write, in a directory of
  // its own, so that a restart (even after SIGKILL) finds every write.
  let store = ["--save", "", "--appendonly", "no"];
  if (persist) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "presence-redis-"));
    process.once("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
    store = ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", dir];
  }
  let caFile = null;
  if (tls) {
    const dir = certificates();
    caFile = path.join(dir, "ca.crt");
    listen.splice(0, 2, "--port", "0", "--tls-port", String(port),
      "--tls-cert-file", path.join(dir, "server.crt"), "--tls-key-file", path.join(dir, "server.key"),
      "--tls-ca-cert-file", caFile, "--tls-auth-clients", "no");
  }
  const r = {
    url: `${tls ? "rediss" : "redis"}://127.0.0.1:${port}`,
    port,
    caFile,
    proc: null,
    async start() {
      const proc = spawn("redis-server", ["--bind", "127.0.0.1", ...listen, ...store], { stdio: "ignore" });
      proc.unref(); // never keeps a test file alive; killed when this process exits
      process.once("exit", () => proc.kill("SIGKILL"));
      r.proc = proc;
      await waitPort(port);
    },
    /** SIGKILL: the data is lost. */
    async stop() {
      const proc = r.proc;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      proc.ref(); // keep the event loop alive until it is gone
      const exited = new Promise((res) => proc.once("exit", res));
      proc.kill("SIGKILL");
      await exited;
    },
    /** Kills it and starts it again on the same port: empty, unless `persist`. */
    async restart() {
      await r.stop();
      await r.start();
    },
  };
  await r.start();
  return r;
}

/** A CA of its own and a certificate for 127.0.0.1 signed by it, made with openssl
 * in a new temporary directory (ca.crt, server.crt, server.key). */
function certificates() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "presence-tls-"));
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const run = (args) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  run(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=presence e2e CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  run(["req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
  fs.writeFileSync(path.join(dir, "server.ext"),
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
  run(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "server.crt", "-days", "2", "-extfile", "server.ext"]);
  process.once("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Starts a node with `flags` on 127.0.0.1:0 and resolves once it listens.
 * With E2E_STORE=redis and no --redis-url given, the node gets a redis-server of its own. */
export async function startNode(flags = {}, opts = {}) {
  if (STORE === "redis" && !flags["--redis-url"]) {
    const redis = await startRedis();
    const node = await spawnNode({ ...flags, "--redis-url": redis.url }, opts);
    const stop = node.stop;
    node.redis = redis;
    node.stop = async () => { await stop(); await redis.stop(); };
    return node;
  }
  return spawnNode(flags, opts);
}

function spawnNode(flags, { timeoutMs = 20000, env = {} } = {}) {
  const args = [];
  for (const [k, v] of Object.entries({ "--bind": "127.0.0.1:0", ...flags })) args.push(k, String(v));
  const proc = spawn(NODE_BIN, args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn,presence_node::app=info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`presence-node did not start in ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    const onData = (chunk) => {
      output += chunk;
      const m = output.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve({
          url: m[1],
          proc,
          output: () => output,
          flags,
          async stop() {
            if (proc.exitCode !== null || proc.signalCode !== null) return;
            const exited = new Promise((r) => proc.once("exit", r));
            proc.kill("SIGTERM");
            const t = setTimeout(() => proc.kill("SIGKILL"), 10000);
            await exited;
            clearTimeout(t);
          },
        });
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`presence-node exited with ${code}:\n${output}`));
    });
  });
}

const sockets = new Set();

/** A connected client (websocket transport unless told otherwise). */
export async function connect(url, opts = {}) {
  const s = io(url, { forceNew: true, reconnection: false, transports: ["websocket"], ...opts });
  sockets.add(s);
  record(s);
  await new Promise((resolve, reject) => {
    s.once("connect", resolve);
    s.once("connect_error", reject);
  });
  return s;
}

/** Closes every client opened by `connect`. */
export function closeAll() {
  for (const s of sockets) s.disconnect();
  sockets.clear();
}

/** Emits and resolves with the ack. */
export function call(socket, event, ...args) {
  return socket.timeout(5000).emitWithAck(event, ...args);
}

/** Keeps every presence event a socket receives, in order. */
function record(s) {
  s.received = [];
  s.onAny((event, payload) => {
    s.received.push({ event, payload, at: Date.now() });
    for (const w of [...(s.waiters || [])]) w();
  });
}

/** Resolves with the first received event (from index `from`) matching `pred`. */
export function waitFor(socket, event, pred = () => true, { timeoutMs = 5000, from = 0 } = {}) {
  return new Promise((resolve, reject) => {
    socket.waiters ||= [];
    const check = () => {
      const hit = socket.received.slice(from).find((r) => r.event === event && pred(r.payload));
      if (hit) {
        socket.waiters = socket.waiters.filter((w) => w !== check);
        clearTimeout(timer);
        resolve(hit.payload);
      }
    };
    const timer = setTimeout(() => {
      socket.waiters = socket.waiters.filter((w) => w !== check);
      const got = socket.received.slice(from).filter((r) => r.event === event).map((r) => r.payload);
      reject(new Error(`no ${event} matching ${pred} within ${timeoutMs} ms; got ${JSON.stringify(got)}`));
    }, timeoutMs);
    socket.waiters.push(check);
    check();
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A client's view of a room: snapshot + diffs applied as documented. */
export class RoomMirror {
  constructor(snapshot) {
    this.users = structuredClone(snapshot.users);
    this.sessions = structuredClone(snapshot.sessions);
    this.seq = snapshot.seq;
  }
  apply(diff) {
    for (const [map, patches] of [[this.users, diff.users], [this.sessions, diff.sessions]]) {
      for (const [k, p] of Object.entries(patches)) {
        if (p === null) { delete map[k]; continue; }
        const e = (map[k] ||= {});
        for (const [f, v] of Object.entries(p)) {
          if (v === null) delete e[f]; else e[f] = v;
        }
      }
    }
    this.seq = diff.seq;
  }
}

/** Diffs a socket received for `roomId`, in order. */
export function diffs(socket, roomId) {
  return socket.received.filter((r) => r.event === "presence:diff" && r.payload.roomId === roomId).map((r) => r.payload);
}

/** hello + join; returns { sessionId, epoch, snapshot }. */
export async function enter(socket, userId, roomId, extra = {}) {
  const hello = await call(socket, "presence:hello", { userId, ...extra });
  if (!hello.ok) throw new Error(JSON.stringify(hello));
  const join = await call(socket, "presence:join", { roomId });
  if (!join.ok) throw new Error(JSON.stringify(join));
  return { sessionId: hello.sessionId, epoch: hello.epoch, snapshot: join.snapshot, hello, join };
}

export async function getJson(url, init) {
  const res = await fetch(url, init);
  return { status: res.status, body: await res.json() };
}

/** Starts nginx (the Debian package) with deploy/nginx.conf, its upstream
 * rewritten to `nodes` and its listener to a free loopback port. */
export async function startNginx(nodes) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "presence-nginx-"));
  process.once("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  let conf = fs.readFileSync(path.join(root, "deploy/nginx.conf"), "utf8");
  const lines = conf.split("\n");
  const marked = (l) => /^\s*server .*# node$/.test(l);
  const first = lines.findIndex(marked);
  // Each node gets the first marked line, with its address (and the same parameters).
  const servers = nodes.map((n) => lines[first].replace(/server \S+?(;| )/, `server ${new URL(n.url).host}$1`)).join("\n");
  conf = [...lines.slice(0, first), servers, ...lines.slice(first).filter((l) => !marked(l))]
    .join("\n")
    .replace(/^\s*listen .*# listen$/m, `        listen 127.0.0.1:${port};`)
    .replace("http {", "http {\n    access_log off;");
  // Workers run as this user (as root nginx would switch to nobody).
  const user = os.userInfo().username;
  conf = `user ${user};\npid ${dir}/nginx.pid;\nerror_log stderr warn;\n${conf}`;
  fs.writeFileSync(path.join(dir, "nginx.conf"), conf);
  const bin = fs.existsSync("/usr/sbin/nginx") ? "/usr/sbin/nginx" : "nginx";
  const proc = spawn(bin, ["-p", dir, "-c", path.join(dir, "nginx.conf"), "-g", "daemon off;"], { stdio: ["ignore", "ignore", "pipe"] });
  let errors = "";
  proc.stderr.on("data", (c) => { errors += c; });
  process.once("exit", () => proc.kill("SIGKILL"));
  try {
    await waitPort(port);
  } catch (e) {
    proc.kill("SIGKILL");
    throw new Error(`nginx did not start: ${errors}`);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    /** What nginx wrote to its error log. */
    errors: () => errors,
    async stop() {
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGQUIT");
      const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Runs a redis-cli command against `port` and returns its output. */
export function redisCli(port, ...args) {
  return execFileSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { encoding: "utf8" });
}

/** Starts `node` (from `startNode`, already stopped) again on its address, with its flags. */
export async function restartNode(node) {
  const again = await spawnNode({ ...node.flags, "--bind": new URL(node.url).host });
  Object.assign(node, { proc: again.proc, output: again.output, stop: again.stop });
  return node;
}

/** A client as an app would write it: it reconnects by itself, says hello with its
 * session id on every connect (so that the session resumes), and heartbeats with the
 * epoch of its last hello. `hellos` keeps every hello ack; `notices` every
 * `presence:reconnect` it got. */
export function liveClient(url, userId, { rooms = [], heartbeatMs = 1000, ...opts } = {}) {
  const s = io(url, {
    forceNew: true, transports: ["websocket"], reconnectionDelay: 300, reconnectionDelayMax: 1500, ...opts,
  });
  sockets.add(s);
  record(s);
  const c = { socket: s, userId, sessionId: undefined, epoch: undefined, nodeId: undefined, hellos: [], notices: [], errors: [] };
  s.on("presence:reconnect", (n) => c.notices.push(n));
  s.on("connect", async () => {
    try {
      // An app retries a hello that got no answer, while it stays connected.
      let hello = null;
      for (let i = 0; i < 3 && !hello && s.connected; i++) {
        hello = await s.timeout(10000).emitWithAck("presence:hello", { userId, sessionId: c.sessionId })
          .catch((e) => { c.errors.push(`hello: ${e}`); return null; });
      }
      if (!hello) return;
      if (!hello.ok) { c.errors.push(hello); return; }
      Object.assign(c, { sessionId: hello.sessionId, epoch: hello.epoch, nodeId: hello.nodeId });
      // A resumed session is still in its rooms; a new one joins them.
      if (!hello.resumed) {
        for (const roomId of rooms) {
          const j = await call(s, "presence:join", { roomId });
          if (!j.ok) c.errors.push(j);
        }
      }
      c.hellos.push(hello);
    } catch (e) {
      c.errors.push(String(e));
    }
  });
  const t = setInterval(() => {
    if (!s.connected || c.epoch === undefined) return;
    s.timeout(2000).emitWithAck("presence:heartbeat", { epoch: c.epoch, activity: "active" })
      .then((a) => { if (a.ok) c.epoch = a.epoch; }).catch(() => {});
  }, heartbeatMs);
  t.unref(); // a failed test must not keep its file alive
  c.close = () => { clearInterval(t); s.disconnect(); };
  return c;
}

/** Resolves once `pred()` holds (checked every 50 ms), or rejects after `timeoutMs`. */
export async function until(pred, what, timeoutMs = 10000) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await pred()) return;
    await sleep(50);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** Runs a long-lived redis-cli (SSUBSCRIBE, MONITOR) against `port`, calling `onLine`
 * with each line it prints; killed with the returned `stop`, or when this process exits. */
function redisCliLines(port, args, onLine) {
  const proc = spawn("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { stdio: ["ignore", "pipe", "ignore"] });
  proc.unref();
  process.once("exit", () => proc.kill("SIGKILL"));
  let buf = "";
  proc.stdout.on("data", (chunk) => {
    buf += chunk;
    const lines = buf.split("\n");
    buf = lines.pop();
    for (const l of lines) onLine(l);
  });
  return () => proc.kill("SIGKILL");
}

/** Subscribes with redis-cli to `channels` (SSUBSCRIBE: sharded, Redis 7) and keeps
 * every message as parsed JSON in `events`. */
export async function subscribeEvents(port, channels) {
  const sub = { events: [], subscribed: 0 };
  sub.stop = redisCliLines(port, ["SSUBSCRIBE", ...channels], (l) => {
    if (l === "ssubscribe") sub.subscribed++;
    if (l.startsWith("{")) sub.events.push(JSON.parse(l));
  });
  await until(() => sub.subscribed === channels.length, "redis-cli to subscribe", 5000);
  return sub;
}

/** Heartbeats every `everyMs`, adopting the epoch each ack carries (a re-created
 * session gets a new one). Returns a function that stops it. */
export function keepAlive(socket, epoch, everyMs = 200) {
  const t = setInterval(() => {
    socket.timeout(1000).emitWithAck("presence:heartbeat", { epoch, activity: "active" })
      .then((a) => { if (a.ok) epoch = a.epoch; }).catch(() => {});
  }, everyMs);
  t.unref(); // a failed test must not keep its file alive
  return () => clearInterval(t);
}

/** A TCP proxy on a free loopback port in front of 127.0.0.1:`targetPort`, that the
 * test controls: `hold()` stops moving bytes both ways (what was sent waits, as in a
 * network partition that delays packets; new connections wait too) and `heal()`
 * delivers everything late, in order, and goes on; `delay(ms)` adds latency each way. */
export async function startProxy(targetPort) {
  const port = await freePort();
  const pipes = new Set();
  let held = false;
  let latency = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const [from, to] of [[client, upstream], [upstream, client]]) {
      // Chunks wait in order until they are due and the link is not held.
      const pipe = { queue: [], timer: null, pump: null };
      pipe.pump = () => {
        clearTimeout(pipe.timer);
        pipe.timer = null;
        while (!held && pipe.queue.length) {
          const [due, d] = pipe.queue[0];
          const wait = due - Date.now();
          if (wait > 0) { pipe.timer = setTimeout(pipe.pump, wait); return; }
          pipe.queue.shift();
          if (d === null) to.end(); else to.write(d);
        }
      };
      pipes.add(pipe);
      const push = (d) => { pipe.queue.push([Date.now() + latency, d]); if (!pipe.timer) pipe.pump(); };
      from.on("data", push);
      from.on("end", () => push(null));
      from.on("error", () => to.destroy());
      from.on("close", () => pipes.delete(pipe));
    }
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  server.unref();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    hold() { held = true; },
    heal() { held = false; for (const p of pipes) p.pump(); },
    delay(ms) { latency = ms; },
    close() { server.close(); for (const p of pipes) { p.queue = []; clearTimeout(p.timer); } },
  };
}

/** Runs redis-cli MONITOR against `port`, keeping each command as its list of arguments. */
export async function monitor(port) {
  const m = { commands: [], ready: false };
  m.stop = redisCliLines(port, ["MONITOR"], (l) => {
    if (l.trim() === "OK") m.ready = true;
    const args = [...l.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1]);
    if (args.length) m.commands.push(args);
  });
  await until(() => m.ready, "MONITOR to start", 5000);
  return m;
}

/**
 * Whether a command MONITOR saw is a call of one of the node's scripts, and
 * of `name` (a file of lua/ without `.lua`) when given: `FCALL
 * presence_<version>_<name>` where Redis runs them as a function library,
 * `EVALSHA <sha1>` otherwise (the SHA-1 of the script as loaded: after
 * lua/lib/prelude.lua for the session scripts).
 */
export function isScriptCall(command, name) {
  const [verb, target] = [String(command[0]).toUpperCase(), command[1]];
  if (verb === "FCALL") return name === undefined || new RegExp(`^presence_[0-9a-f]{12}_${name}$`).test(target);
  if (verb !== "EVALSHA") return false;
  if (name === undefined) return true;
  const read = (f) => fs.readFileSync(new URL(`../../lua/${f}`, import.meta.url), "utf8");
  const text = read(`${name}.lua`);
  const forms = [text, `${read("lib/prelude.lua")}\n${text}`];
  return forms.some((t) => crypto.createHash("sha1").update(t).digest("hex") === target);
}

/** A counter from a node's /metrics (0 when absent). */
export async function metric(url, name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

/** Three nodes (ids `ids`) on one new redis-server with `flags`, behind nginx. */
export async function startCluster(ids, flags) {
  const redis = await startRedis();
  const nodes = [];
  for (const id of ids) nodes.push(await startNode({ ...flags, "--redis-url": redis.url, "--node-id": id }));
  const lb = await startNginx(nodes);
  return {
    redis, nodes, lb,
    async stop() {
      closeAll();
      await lb.stop();
      for (const n of nodes) await n.stop();
      await redis.stop();
    },
  };
}

/** A JWT with `claims`, as an issuer makes it: HS256 with `secret`, or RS256
 * with the private `key` (`alg: "none"` makes an unsigned one). */
export function jwt(claims, { secret, key = null, alg = key ? "RS256" : "HS256" } = {}) {
  const b64 = (x) => Buffer.from(typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");
  const data = `${b64({ alg, typ: "JWT" })}.${b64(claims)}`;
  const sig = alg === "RS256"
    ? crypto.sign("RSA-SHA256", Buffer.from(data), key)
    : alg === "none" ? Buffer.alloc(0) : crypto.createHmac("sha256", secret).update(data).digest();
  return `${data}.${sig.toString("base64url")}`;
}

/** A takeover on `newUrl` of a session held by a connection on `oldUrl`: the
 * old connection is unbound at once, wherever it is (it gets no more of the
 * session's rooms, and hears that it was superseded), not at its next write. */
export async function takeoverUnbindsAtOnce(oldUrl, newUrl, tag) {
  const roomId = `takeover-${tag}`;
  const member = await connect(oldUrl);
  const m = await enter(member, `member-${tag}`, roomId);
  const old = await connect(oldUrl);
  const eo = await enter(old, `owner-${tag}`, roomId);
  const nu = await connect(newUrl);
  const taken = await call(nu, "presence:hello", { userId: `owner-${tag}`, sessionId: eo.sessionId });
  assert.equal(taken.resumed, true, JSON.stringify(taken));
  const notice = await waitFor(old, "presence:error", (e) => e.error.code === "stale_epoch", { timeoutMs: 3000 });
  assert.match(notice.error.message, /newer connection/);
  assert.ok((await call(nu, "presence:leave", { roomId })).ok);
  const from = old.received.length;
  assert.ok((await call(member, "presence:signal", { roomId, data: { n: 1 } })).ok);
  assert.ok((await call(member, "presence:state", { roomId, epoch: m.epoch, patch: { n: 2 } })).ok);
  await sleep(300);
  assert.deepEqual(old.received.slice(from).filter((r) => r.payload?.roomId === roomId), [],
    "the superseded connection gets nothing of the room");
  const refused = await call(old, "presence:signal", { roomId, data: { n: 3 } });
  assert.equal(refused.error?.code, "stale_epoch", JSON.stringify(refused));
  assert.equal((await call(old, "presence:heartbeat", { epoch: eo.epoch })).error?.code, "stale_epoch");
}

/** A free loopback port whose Redis Cluster bus port (+10000) is free too. */
async function freeClusterPort() {
  for (let i = 0; i < 50; i++) {
    const port = await freePort();
    if (port + 10000 > 65535) continue;
    const busFree = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.once("error", () => resolve(false));
      srv.listen(port + 10000, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (busFree) return port;
  }
  throw new Error("no free port pair for a cluster node");
}

/** A Redis Cluster of `masters` masters with `replicas` replicas each, made with
 * `redis-cli --cluster create`; resolves once every node says cluster_state:ok
 * and every replica is in sync. `cluster-require-full-coverage no`, as
 * docs/operations.md advises. */
export async function startRedisCluster(masters = 3, replicas = 1) {
  const servers = [];
  for (let i = 0; i < masters * (1 + replicas); i++) {
    const port = await freeClusterPort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "presence-cluster-"));
    const proc = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no",
      "--dir", dir, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
      "--cluster-require-full-coverage", "no"], { stdio: "ignore" });
    proc.unref();
    process.once("exit", () => { proc.kill("SIGKILL"); fs.rmSync(dir, { recursive: true, force: true }); });
    servers.push({ port, proc });
    await waitPort(port);
  }
  execFileSync("redis-cli", ["--cluster", "create", ...servers.map((s) => `127.0.0.1:${s.port}`),
    "--cluster-replicas", String(replicas), "--cluster-yes"], { stdio: "pipe" });
  const alive = (s) => s.proc.exitCode === null && s.proc.signalCode === null;
  const cli = (s, ...args) => redisCli(s.port, ...args);
  await until(() => servers.every((s) => cli(s, "CLUSTER", "INFO").includes("cluster_state:ok")
    && /role:master|master_link_status:up/.test(cli(s, "INFO", "replication"))), "the cluster is ready", 30000);
  return {
    url: `redis-cluster://${servers.map((s) => `127.0.0.1:${s.port}`).join(",")}`,
    servers,
    /** The index in `servers` of the master that serves `key`'s slot now. */
    masterOf(key) {
      const s = servers.find(alive);
      const slot = Number(cli(s, "CLUSTER", "KEYSLOT", key).trim());
      for (const line of cli(s, "CLUSTER", "NODES").split("\n")) {
        const f = line.trim().split(/\s+/);
        if (f.length < 9 || !f[2].includes("master") || f[2].includes("fail")) continue;
        const serves = f.slice(8).some((r) => {
          const [a, b = a] = r.split("-").map(Number);
          return a <= slot && slot <= b;
        });
        if (serves) return servers.findIndex((x) => x.port === Number(f[1].split("@")[0].split(":").pop()));
      }
      throw new Error(`no master serves slot ${slot}`);
    },
    /** SIGKILL of one server: its data is gone (its replica has it). */
    async kill(i) {
      const { proc } = servers[i];
      if (!alive(servers[i])) return;
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGKILL");
      await exited;
    },
    async stop() {
      for (let i = 0; i < servers.length; i++) await this.kill(i);
    },
  };
}

/** A webhook receiver on loopback. Keeps every request (`node`: its
 * Presence-Node header, `events`, `verified`: whether its Presence-Signature
 * is the HMAC-SHA256 of "<t>.<body>" under `secret`, `status`: what it was
 * answered), and answers what `respond(request)` resolves to: a status, or
 * `null` to hold the request open until `release(status)`. */
export async function startReceiver(secret) {
  const r = {
    requests: [],
    held: [],
    respond: () => 200,
    /** Answers every held request with `status`. */
    release(status) {
      for (const { res, q } of r.held.splice(0)) { q.status = status; res.writeHead(status); res.end(); }
    },
    /** The events of requests answered 2xx, once per id. */
    delivered() {
      const byId = new Map();
      for (const q of r.requests) {
        if (q.status >= 200 && q.status < 300) for (const e of q.events) byId.set(e.id, e);
      }
      return [...byId.values()];
    },
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(req.headers["presence-signature"] || "");
      const expected = m && crypto.createHmac("sha256", secret).update(`${m[1]}.${body}`).digest("hex");
      const q = {
        node: req.headers["presence-node"],
        path: req.url,
        verified: !!m && crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(m[2])),
        signedAt: m ? Number(m[1]) : 0,
        events: JSON.parse(body).events,
        receivedAt: Date.now(),
        status: null,
      };
      r.requests.push(q);
      const status = await r.respond(q);
      if (status === null) {
        r.held.push({ res, q });
        return;
      }
      q.status = status;
      res.writeHead(status, { "content-type": "application/json" });
      res.end("{}");
    });
  });
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  r.url = `http://127.0.0.1:${server.address().port}/hooks`;
  r.stop = () => new Promise((res) => { r.release(503); server.closeAllConnections(); server.close(res); });
  return r;
}
