// The client against a real node (the embedded store): join, diffs, tabs,
// resume, reload, readiness and intents, typed errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { PresenceError } from "../dist/index.js";
import { readFileSync } from "node:fs";
import { startNode, FAST } from "../../../tests/e2e/helpers.js";
import { client as connectTo, closeAll, until } from "./support.mjs";

let node;
before(async () => { node = await startNode(FAST); });
after(async () => { await node?.stop(); });

/** A client of the node. */
const client = (opts) => connectTo(node.url, opts);

test("a joined room is a live view: users, sessions, counts, me; per-user join, status and leave", async () => {
  const ada = client({ userId: "ada", handle: "Ada" });
  const room = await ada.join("sdk-1", { state: { color: "red" } });
  assert.equal(room.view, "full");
  assert.deepEqual([...room.users.keys()], ["ada"]);
  assert.equal(room.me.user.handle, "Ada");
  assert.deepEqual(room.me.session.state, { color: "red" });
  const joins = [];
  const leaves = [];
  room.on("join", (u) => joins.push(u.userKey));
  room.on("leave", (id) => leaves.push(id));
  const bob1 = client({ userId: "bob" });
  const r1 = await bob1.join("sdk-1");
  await until(room, "change", () => room.users.has("bob"));
  const bob2 = client({ userId: "bob" });
  await bob2.join("sdk-1");
  await until(room, "change", () => room.users.get("bob")?.sessionCount === 2);
  assert.deepEqual(joins, ["bob"], "a second tab is not a join");
  assert.equal(room.counts.users.total, 2);
  assert.equal(room.counts.sessions.total, 3);
  const statuses = [];
  room.on("status", (u, from) => statuses.push([u.userKey, from, u.status]));
  bob1.setActivity("background");
  bob2.setActivity("background");
  await until(room, "status", () => room.users.get("bob")?.status === "away");
  assert.deepEqual(statuses.at(-1), ["bob", "active", "away"]);
  await r1.leave();
  await until(room, "change", () => room.users.get("bob")?.sessionCount === 1);
  assert.deepEqual(leaves, [], "not while a tab stays");
  await bob2.close();
  await until(room, "leave", () => !room.users.has("bob"));
  assert.deepEqual(leaves, ["bob"]);
  await closeAll();
});

test("state and signals reach the other members", async () => {
  const ada = client({ userId: "ada" });
  const bob = client({ userId: "bob" });
  const ra = await ada.join("sdk-2");
  const rb = await bob.join("sdk-2");
  await until(ra, "change", () => ra.users.has("bob"));
  const got = new Promise((resolve) => ra.on("signal", resolve));
  await rb.setState({ typing: true });
  await until(ra, "change", () => ra.sessions.get(bob.sessionId)?.state?.typing === true);
  await rb.signal({ wave: 1 });
  const s = await got;
  assert.deepEqual([s.userId, s.data], ["bob", { wave: 1 }]);
  await closeAll();
});

test("a dropped connection resumes its session: observers see no leave and no join", async () => {
  const obs = client({ userId: "obs" });
  const ro = await obs.join("sdk-3");
  const ada = client({ userId: "ada" });
  const ra = await ada.join("sdk-3");
  await until(ro, "change", () => ro.users.has("ada"));
  const seen = [];
  ro.on("join", (u) => seen.push(["join", u.userKey]));
  ro.on("leave", (id) => seen.push(["leave", id]));
  const states = [];
  ada.on("connection", (s) => states.push(s));
  const before = ada.sessionId;
  ada["socket"].io.engine.close();
  await until(ada, "connection", () => states.includes("resumed"));
  assert.equal(ada.sessionId, before);
  assert.deepEqual(states, ["reconnecting", "resumed"]);
  await ra.setState({ back: true });
  await until(ro, "change", () => ro.sessions.get(before)?.state?.back === true);
  assert.deepEqual(seen, []);
  await closeAll();
});

test("a reload with the same storage resumes the session, and rejoining gives the room back", async () => {
  const storage = new Map();
  const store = { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v), removeItem: (k) => storage.delete(k) };
  const first = client({ userId: "ada", storage: store });
  await first.join("sdk-4");
  const id = first.sessionId;
  first["socket"].disconnect();
  const again = client({ userId: "ada", storage: store });
  const room = await again.join("sdk-4");
  assert.equal(again.sessionId, id, "the same session");
  assert.equal(room.users.get("ada").sessionCount, 1);
  await closeAll();
});

test("readiness, reachability and intend: resolves when the user is reachable now", async () => {
  const ada = client({ userId: "ada" });
  const bob = client({ userId: "bob", capabilities: ["audio"], readiness: "busy" });
  await ada.join("sdk-5");
  const rb = await bob.join("sdk-5");
  await until(rb, "change", () => rb.users.has("ada"));
  const r = await ada.reachability("bob", ["audio"]);
  assert.deepEqual([r.reachability, r.reason], ["unlikely", "busy"]);
  const heard = new Promise((resolve) => bob.on("intent", resolve));
  const waiting = ada.intend("bob", ["audio"], { ttlMs: 5000, note: "call?" });
  assert.equal((await heard).note, "call?");
  await bob.setReadiness({ readiness: "available" });
  const o = await waiting;
  assert.deepEqual([o.reachable, o.sessionId], [true, bob.sessionId]);
  const expired = await ada.intend("bob", ["video"], { ttlMs: 200 });
  assert.equal(expired.reachable, false, "bob has no video: the intent expires");
  await closeAll();
});

test("refusals are typed PresenceErrors naming the field", async () => {
  const ada = client({ userId: "ada" });
  await ada.ready();
  await assert.rejects(ada.join("no spaces allowed"), (e) => e instanceof PresenceError && e.code === "bad_request" && e.field === "roomId");
  await assert.rejects(ada.reachability("nobody-shares-a-room"), (e) => e.code === "forbidden");
  const bad = client({ userId: "not an id" });
  await assert.rejects(bad.ready(), (e) => e.code === "bad_request" && e.field === "userId");
  await closeAll();
});

test("a session lost while away (past the grace window) comes back in its rooms, with its state", async () => {
  const obs = client({ userId: "obs" });
  const ro = await obs.join("sdk-6");
  const ada = client({ userId: "ada", socket: { transports: ["websocket"], forceNew: true, reconnectionDelay: 2500, reconnectionDelayMax: 2500 } });
  const ra = await ada.join("sdk-6", { state: { seat: 3 } });
  await ra.setState({ mood: "ok" });
  await until(ro, "change", () => ro.users.has("ada"));
  const states = [];
  ada.on("connection", (st) => states.push(st));
  ada["socket"].io.engine.close();
  await until(ro, "leave", () => !ro.users.has("ada"), 6000);
  await until(ada, "connection", () => ada.state === "connected", 6000);
  assert.deepEqual(states, ["reconnecting", "connected"], "not resumed: the session was gone");
  await until(ro, "change", () => ro.users.has("ada"), 6000);
  const back = ro.sessions.get(ada.sessionId);
  assert.deepEqual(back.state, { seat: 3, mood: "ok" });
  await until(ra, "change", () => ra.users.has("obs") && ra.me.session?.sessionId === ada.sessionId);
  await closeAll();
});

test("a backend's removal: the room emits removed and is left; a kick closes the client for good", async () => {
  const ada = client({ userId: "mod-ada" });
  const bob = client({ userId: "mod-bob" });
  const ra = await ada.join("sdk-mod");
  const rb = await bob.join("sdk-mod");
  await until(ra, "change", () => ra.users.has("mod-bob"));
  const removed = new Promise((resolve) => rb.on("removed", resolve));
  const del = (path) => fetch(`${node.url}${path}`, { method: "DELETE" });
  assert.equal((await del("/api/rooms/sdk-mod/members/mod-bob")).status, 200);
  assert.equal(await removed, "removed");
  assert.ok(rb.hasLeft);
  await until(ra, "leave", () => !ra.users.has("mod-bob"));
  // A new join brings it back.
  const again = await bob.join("sdk-mod");
  await until(ra, "change", () => ra.users.has("mod-bob"));
  // Kicked: an error, closed, and no new session starts by itself.
  const errors = [];
  bob.on("error", (e) => errors.push(e));
  const closed = until(bob, "connection", () => bob.state === "closed");
  assert.equal((await del(`/api/sessions/${bob.sessionId}`)).status, 200);
  await closed;
  assert.ok(errors.some((e) => e instanceof PresenceError && e.code === "kicked"), JSON.stringify(errors));
  assert.ok(again.hasLeft);
  await until(ra, "leave", () => !ra.users.has("mod-bob"));
  await new Promise((r) => setTimeout(r, 300));
  const st = await (await fetch(`${node.url}/api/users/status`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ userIds: ["mod-bob"] }),
  })).json();
  assert.equal(st.users["mod-bob"].status, "offline", "no session started again");
  await closeAll();
});

test("the node serves the browser bundle this source builds", async () => {
  const served = await fetch(`${node.url}/assets/presence-client.js`);
  assert.equal(served.status, 200);
  assert.match(served.headers.get("content-type"), /javascript/);
  const built = readFileSync(new URL("../dist/presence-client.js", import.meta.url), "utf8");
  assert.ok((await served.text()) === built, "crates/presence-node/static/presence-client.js is stale: run `npm run build -- --serve` in clients/js");
});
