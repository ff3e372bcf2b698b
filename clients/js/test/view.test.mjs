// The view logic alone: snapshots, diffs in seq order, parts, and the
// user-level events a change yields.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RoomState } from "../dist/index.js";

const user = (id, status = "active", n = 1) => ({ userKey: id, status, confidence: "high", sessionCount: n, lastSeenAt: 1, lastHeartbeatAt: 1 });
const session = (id, userId, status = "active") => ({ sessionId: id, userId, status, lastHeartbeatAt: 1 });

test("a snapshot then diffs; a null entry is gone and a null field removed", () => {
  const s = new RoomState();
  const r = s.reset({ seq: 3, users: { ada: user("ada") }, sessions: { s1: session("s1", "ada") } });
  assert.equal(r.applied, "applied");
  assert.deepEqual(r.change.joined.map((u) => u.userKey), ["ada"]);
  const d = s.apply({ roomId: "r", seq: 5, users: { bob: user("bob"), ada: { status: "idle" } }, sessions: { s2: session("s2", "bob"), s1: { state: { x: 1 } } } });
  assert.equal(d.applied, "applied");
  assert.deepEqual(d.change.joined.map((u) => u.userKey), ["bob"]);
  assert.deepEqual(d.change.status.map((x) => [x.user.userKey, x.from, x.user.status]), [["ada", "active", "idle"]]);
  assert.deepEqual(s.sessions.get("s1").state, { x: 1 });
  s.apply({ roomId: "r", seq: 6, users: { bob: null }, sessions: { s2: null, s1: { state: null } } });
  assert.equal(s.users.has("bob"), false);
  assert.equal("state" in s.sessions.get("s1"), false);
  assert.equal(s.seq, 6);
});

test("a diff older than the view is dropped", () => {
  const s = new RoomState();
  s.reset({ seq: 10, users: { ada: user("ada") }, sessions: {} });
  assert.equal(s.apply({ roomId: "r", seq: 9, users: { ada: null }, sessions: {} }).applied, "stale");
  assert.equal(s.users.has("ada"), true);
});

test("a user's second session is not a join, their last one out is a leave", () => {
  const s = new RoomState();
  s.reset({ seq: 1, users: { ada: user("ada") }, sessions: { s1: session("s1", "ada") } });
  const second = s.apply({ roomId: "r", seq: 2, users: { ada: { sessionCount: 2 } }, sessions: { s2: session("s2", "ada") } });
  assert.deepEqual([second.change.joined, second.change.left], [[], []]);
  const one = s.apply({ roomId: "r", seq: 3, users: { ada: { sessionCount: 1 } }, sessions: { s2: null } });
  assert.deepEqual(one.change.left, []);
  const last = s.apply({ roomId: "r", seq: 4, users: { ada: null }, sessions: { s1: null } });
  assert.deepEqual(last.change.left, ["ada"]);
});

test("a resync is one corrective change: a member who stayed neither leaves nor joins", () => {
  const s = new RoomState();
  s.reset({ seq: 4, users: { ada: user("ada"), bob: user("bob") }, sessions: { s1: session("s1", "ada"), s2: session("s2", "bob") } });
  const r = s.reset({ seq: 9, users: { ada: user("ada", "idle"), cy: user("cy") }, sessions: { s1: session("s1", "ada", "idle"), s3: session("s3", "cy") } });
  assert.deepEqual(r.change.joined.map((u) => u.userKey), ["cy"]);
  assert.deepEqual(r.change.left, ["bob"]);
  assert.deepEqual(r.change.status.map((x) => x.user.userKey), ["ada"]);
  assert.deepEqual(r.change.users.ada, { status: "idle" });
  assert.equal(r.change.users.bob, null);
});

test("a snapshot and a diff in parts apply when their last part is in", () => {
  const s = new RoomState();
  assert.equal(s.reset({ seq: 2, part: 1, parts: 2, users: { ada: user("ada") }, sessions: {} }).applied, "incomplete");
  assert.equal(s.users.size, 0, "the old view until the snapshot is whole");
  const r = s.reset({ seq: 2, part: 2, parts: 2, users: { bob: user("bob") }, sessions: {} });
  assert.equal(r.applied, "applied");
  assert.deepEqual([...s.users.keys()].sort(), ["ada", "bob"]);
  assert.equal(s.apply({ roomId: "r", seq: 3, part: 1, parts: 2, users: { cy: user("cy") }, sessions: {} }).applied, "incomplete");
  const d = s.apply({ roomId: "r", seq: 3, part: 2, parts: 2, users: { dee: user("dee") }, sessions: {} });
  assert.deepEqual(d.change.joined.map((u) => u.userKey).sort(), ["cy", "dee"]);
});
