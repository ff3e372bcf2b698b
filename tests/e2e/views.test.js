// Large rooms: what a client follows (full, count, watch), pages of members,
// and messages split to stay under PRESENCE_MAX_MESSAGE_BYTES.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { startNode, connect, closeAll, call, waitFor, sleep, getJson, RoomMirror, until } from "./helpers.js";

const LIMIT = 6; // full view up to 6 sessions
const WINDOW = 40;
let node;
before(async () => {
  node = await startNode({
    "--emit-debounce-ms": WINDOW,
    "--full-view-max-members": LIMIT,
    "--max-message-bytes": 16384,
  });
});
after(async () => { closeAll(); await node?.stop(); });
afterEach(() => closeAll());

async function hello(userId, extra = {}, url = node.url) {
  const s = await connect(url);
  const h = await call(s, "presence:hello", { userId, ...extra });
  assert.equal(h.ok, true, JSON.stringify(h));
  s.epoch = h.epoch;
  s.sessionId = h.sessionId;
  return s;
}

/** Page order: user id, then session id. */
const byMember = (a, b) => (a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]) ? -1 : 1);

const helloAt = (userId, url) => hello(userId, {}, url);

async function join(s, roomId, extra = {}) {
  const a = await call(s, "presence:join", { roomId, ...extra });
  assert.equal(a.ok, true, JSON.stringify(a));
  return a;
}

/** The snapshot of a join or watch ack, with its other parts reassembled. */
async function whole(s, ack) {
  const first = ack.snapshot;
  const out = { roomId: first.roomId, seq: first.seq, users: { ...first.users }, sessions: { ...first.sessions } };
  const parts = first.parts ?? 1;
  for (let i = 2; i <= parts; i++) {
    const p = await waitFor(s, "presence:snapshot", (m) => m.roomId === first.roomId && m.seq === first.seq && m.part === i);
    assert.equal(p.parts, parts);
    Object.assign(out.users, p.users);
    Object.assign(out.sessions, p.sessions);
  }
  return out;
}

/** Members with their timestamps left out (diffs do not carry heartbeats). */
const strip = (m) => Object.fromEntries(Object.entries(m).map(([k, v]) => {
  const { lastHeartbeatAt, lastSeenAt, ...rest } = v;
  return [k, rest];
}));

const received = (s, event, roomId) => s.received.filter((r) => r.event === event && r.payload.roomId === roomId).map((r) => r.payload);

test("a small room is followed whole, a big one as counts; full joins above the limit get counts and say so", async () => {
  const room = "v-switch";
  const first = await hello("alice");
  const a = await join(first, room);
  assert.equal(a.view, "full");
  assert.equal(a.viewReason, undefined);
  assert.deepEqual(Object.keys(a.snapshot.users), ["alice"]);
  assert.equal(a.counts.sessions.total, 1);
  assert.equal(a.counts.users.active, 1);
  assert.equal(a.me.session.sessionId, first.sessionId);
  assert.equal(a.me.user.userKey, "alice");
  assert.deepEqual(Object.keys(a.page.sessions), [first.sessionId]);
  assert.equal(a.page.nextCursor, undefined);

  const counter = await hello("counter");
  const c = await join(counter, room, { view: "count" });
  assert.equal(c.view, "count");
  assert.equal(c.snapshot, undefined, "a count view has no snapshot");
  assert.equal(c.counts.users.total, 2);
  assert.equal(c.me.user.userKey, "counter");

  // Fill the room up to the limit: the full follower gets diffs, the count
  // follower counts only.
  const others = [];
  for (let i = 0; i < LIMIT - 2; i++) {
    const s = await hello(`m${i}`);
    assert.equal((await join(s, room)).view, "full");
    others.push(s);
  }
  await waitFor(first, "presence:diff", (d) => d.users[`m${LIMIT - 3}`]);
  await waitFor(counter, "presence:counts", (m) => m.roomId === room && m.counts.sessions.total === LIMIT);
  assert.equal(received(counter, "presence:diff", room).length, 0, "a count follower gets no diffs");

  // One more than the limit: the full followers are moved to counts, with a message.
  const from = first.received.length;
  const big = await hello("big");
  const b = await join(big, room, { view: "full" });
  assert.equal(b.view, "count");
  assert.equal(b.viewReason, "room_too_large");
  assert.equal(b.counts.sessions.total, LIMIT + 1);
  const moved = await waitFor(first, "presence:view", (m) => m.roomId === room);
  assert.deepEqual({ view: moved.view, reason: moved.reason }, { view: "count", reason: "room_too_large" });
  assert.equal(moved.counts.sessions.total, LIMIT + 1);
  await waitFor(first, "presence:counts", (m) => m.roomId === room, { from });
  // No view: counts, as the room is above the limit.
  const late = await hello("late");
  const l = await join(late, room);
  assert.equal(l.view, "count");
  assert.equal(l.viewReason, undefined);
  // The first page: members in order, as many as fit in the ack (this node's messages are small).
  const firstPage = Object.values(l.page.sessions).map((s) => [s.userId, s.sessionId]).sort(byMember);
  assert.ok(firstPage.length >= 1 && firstPage.length <= 8);
  assert.equal(firstPage[0][0], "alice");
  if (firstPage.length < 8) assert.equal(l.page.nextCursor, firstPage.at(-1).join("~"));
  else assert.equal(l.page.nextCursor, undefined);
  await call(others[0], "presence:state", { roomId: room, epoch: others[0].epoch, patch: { x: 1 } });
  await waitFor(first, "presence:counts", (m) => m.roomId === room && m.counts.sessions.total === LIMIT + 2);
  await sleep(WINDOW * 4);
  const diffsAfter = first.received.slice(from).filter((r) => r.event === "presence:diff" && r.payload.roomId === room);
  assert.deepEqual(diffsAfter, [], "no diff after the move to counts");
  // Counts agree with the room's stats.
  const stats = (await getJson(`${node.url}/api/rooms/${room}/stats`)).body;
  const lastCounts = received(late, "presence:counts", room).at(-1)?.counts ?? l.counts;
  assert.equal(lastCounts.sessions.total, stats.sessions);
  assert.equal(lastCounts.users.total, stats.users);
});

test("a count follower's counts move with statuses, at most once per window", async (t) => {
  // A node with a wide window of its own: the burst below must fall in few windows
  // however slow the machine.
  const wnode = await startNode({ "--emit-debounce-ms": 400 });
  t.after(() => wnode.stop());
  const hello = (u) => helloAt(u, wnode.url);
  const room = "v-counts";
  const counter = await hello("counter");
  await join(counter, room, { view: "count" });
  const bob = await hello("bob");
  await join(bob, room);
  await waitFor(counter, "presence:counts", (m) => m.counts.users.active === 2);
  await call(bob, "presence:heartbeat", { epoch: bob.epoch, activity: "idle" });
  const m = await waitFor(counter, "presence:counts", (m) => m.counts.users.idle === 1);
  assert.equal(m.counts.users.active, 1);
  assert.equal(m.counts.sessions.idle, 1);
  // A burst of joins is one counts message per window, not one per join.
  const before = received(counter, "presence:counts", room).length;
  await Promise.all(Array.from({ length: 8 }, async (_, i) => join(await hello(`burst${i}`), room)));
  await waitFor(counter, "presence:counts", (m) => m.counts.sessions.total === 10);
  const msgs = received(counter, "presence:counts", room).slice(before);
  assert.ok(msgs.length < 8, `${msgs.length} counts messages for 8 joins`);
  for (let i = 1; i < msgs.length; i++) assert.ok(msgs[i].seq > msgs[i - 1].seq);
});

test("a watch list shows the listed users only, and presence:watch changes it", async () => {
  const room = "v-watch";
  const bob = await hello("bob");
  await join(bob, room);
  const carol = await hello("carol");
  await join(carol, room);
  const w = await hello("watcher");
  const a = await join(w, room, { view: { watch: ["bob", "nobody"] } });
  assert.equal(a.view, "watch");
  const snap = await whole(w, a);
  assert.deepEqual(Object.keys(snap.users), ["bob"]);
  assert.deepEqual(Object.keys(snap.sessions), [bob.sessionId]);
  assert.equal(a.counts.users.total, 3);
  // Bob's change reaches the watcher; carol's does not (only the counts move).
  await call(carol, "presence:state", { roomId: room, epoch: carol.epoch, patch: { c: 1 } });
  await call(bob, "presence:state", { roomId: room, epoch: bob.epoch, patch: { b: 1 } });
  const d = await waitFor(w, "presence:diff", (d) => d.roomId === room && d.sessions[bob.sessionId]?.state?.b === 1);
  assert.equal(d.sessions[carol.sessionId], undefined);
  // A watched user who joins later comes whole; an unwatched one only as counts.
  const from = w.received.length;
  const nobody = await hello("nobody");
  await join(nobody, room);
  const dave = await hello("dave");
  await join(dave, room);
  await waitFor(w, "presence:diff", (d) => d.users.nobody?.userKey === "nobody", { from });
  await waitFor(w, "presence:counts", (m) => m.counts.users.total === 5, { from });
  // Now watch carol instead.
  const ch = await call(w, "presence:watch", { roomId: room, watch: ["carol"] });
  assert.equal(ch.ok, true, JSON.stringify(ch));
  assert.equal(ch.view, "watch");
  const now = await whole(w, ch);
  assert.deepEqual(Object.keys(now.users), ["carol"]);
  assert.equal(now.sessions[carol.sessionId].state.c, 1);
  const mark = w.received.length;
  await call(bob, "presence:state", { roomId: room, epoch: bob.epoch, patch: { b: 2 } });
  await call(carol, "presence:leave", { roomId: room });
  const gone = await waitFor(w, "presence:diff", (d) => d.users.carol === null, { from: mark });
  assert.equal(gone.sessions[carol.sessionId], null);
  await sleep(WINDOW * 3);
  for (const r of w.received.slice(mark)) {
    if (r.event === "presence:diff") assert.equal(r.payload.users.bob, undefined, "bob is no longer watched");
  }
  // Diffs went to full followers all along.
  await waitFor(bob, "presence:diff", (d) => d.users.carol === null);
});

test("bad views, cursors, limits and watch lists are bad requests naming the field", async () => {
  const room = "v-bad";
  const s = await hello("alice");
  const bad = async (event, payload, field) => {
    const r = await call(s, event, payload);
    assert.equal(r.ok, false, `${event} ${JSON.stringify(payload)}`);
    assert.equal(r.error.code, "bad_request", JSON.stringify(r));
    assert.equal(r.error.field, field, JSON.stringify(r));
    return r;
  };
  await bad("presence:join", { roomId: room, view: "everything" }, "view");
  await bad("presence:join", { roomId: room, view: { watch: "bob" } }, "view.watch");
  await bad("presence:join", { roomId: room, view: { watch: ["ok", "not an id!"] } }, "view.watch");
  const many = Array.from({ length: 1001 }, (_, i) => `u${i}`);
  const tooMany = await bad("presence:join", { roomId: room, view: { watch: many } }, "view.watch");
  assert.match(tooMany.error.message, /1000/);
  assert.equal((await getJson(`${node.url}/api/rooms/${room}/stats`)).body.sessions, 0, "a refused join joins nothing");
  // Not joined yet.
  const nj = await call(s, "presence:members", { roomId: room });
  assert.equal(nj.error.code, "not_joined");
  await join(s, room);
  await bad("presence:members", { roomId: room, cursor: "garbage" }, "cursor");
  await bad("presence:members", { roomId: room, cursor: 5 }, "cursor");
  await bad("presence:members", { roomId: room, limit: 0 }, "limit");
  await bad("presence:members", { roomId: room, limit: 1001 }, "limit");
  await bad("presence:members", { roomId: room, limit: "ten" }, "limit");
  await bad("presence:watch", { roomId: room, watch: many }, "watch");
  await bad("presence:watch", { roomId: room }, "watch");
  const nw = await call(s, "presence:watch", { roomId: "v-elsewhere", watch: ["x"] });
  assert.equal(nw.error.code, "not_joined");
  for (const q of ["cursor=garbage", "limit=0", "limit=1001", "limit=x"]) {
    const r = await getJson(`${node.url}/api/rooms/${room}/presence?${q}`);
    assert.equal(r.status, 400, q);
    assert.equal(r.body.error.code, "bad_request");
    assert.equal(r.body.error.field, q.split("=")[0]);
  }
  // The connection still works.
  assert.equal((await call(s, "presence:heartbeat", { epoch: s.epoch })).ok, true);
});

test("paging through a room while it changes converges exactly on the room", async (t) => {
  // A node of its own: this room stays under the full view's limit.
  const pnode = await startNode({ "--emit-debounce-ms": WINDOW });
  t.after(() => pnode.stop());
  const room = "v-pages";
  const members = [];
  const hello = (u) => helloAt(u, pnode.url);
  for (let i = 0; i < 5; i++) {
    const s = await hello(`p${String(i).padStart(2, "0")}`);
    await join(s, room);
    members.push(s);
  }
  // A client that builds its view from pages (not the snapshot) while
  // following diffs: it keeps the entries up to its cursor.
  const obs = await hello("p99-observer");
  const ack = await join(obs, room);
  const view = { users: {}, sessions: {}, cursor: null, done: false };
  const covered = (uid, sid) => view.done || (view.cursor !== null &&
    (uid < view.cursor.u || (uid === view.cursor.u && (sid === undefined || sid <= view.cursor.s))));
  const takePage = (p) => {
    Object.assign(view.users, structuredClone(p.users));
    Object.assign(view.sessions, structuredClone(p.sessions));
    if (p.nextCursor) {
      const [u, s] = p.nextCursor.split("~");
      view.cursor = { u, s };
    } else view.done = true;
  };
  const applyDiff = (d) => {
    for (const [k, p] of Object.entries(d.users)) {
      if (p === null) delete view.users[k];
      else if (view.users[k]) Object.assign(view.users[k], p);
      else if (covered(k)) view.users[k] = { ...p };
    }
    for (const [k, p] of Object.entries(d.sessions)) {
      if (p === null) delete view.sessions[k];
      else if (view.sessions[k]) Object.assign(view.sessions[k], p);
      else if (p.userId && covered(p.userId, k)) view.sessions[k] = { ...p };
    }
    for (const map of [view.users, view.sessions]) {
      for (const e of Object.values(map)) for (const [f, v] of Object.entries(e)) if (v === null) delete e[f];
    }
  };
  // Diffs in arrival order; a page applies after the diffs up to its seq.
  let seen = 0;
  const pump = (upTo = Infinity) => {
    for (; seen < obs.received.length; seen++) {
      const r = obs.received[seen];
      if (r.event !== "presence:diff" || r.payload.roomId !== room) continue;
      if (r.payload.seq > upTo) break;
      applyDiff(r.payload);
    }
  };
  // The ack's first page (limit 100 holds all 6): page again from the start with a small limit.
  assert.equal(Object.keys(ack.page.sessions).length, 6);
  const churn = (async () => {
    for (let i = 0; i < 20; i++) {
      const s = await hello(`p${String(10 + i).padStart(2, "0")}`);
      await join(s, room);
      members.push(s);
      if (i % 3 === 0) {
        const gone = members.splice(i % members.length, 1)[0];
        await call(gone, "presence:leave", { roomId: room });
      }
      if (i % 4 === 0) {
        const m = members[members.length - 1];
        await call(m, "presence:state", { roomId: room, epoch: m.epoch, patch: { i } });
      }
      await sleep(15);
    }
  })();
  let pages = 0;
  let cursor;
  do {
    const p = await call(obs, "presence:members", { roomId: room, limit: 2, ...(cursor ? { cursor } : {}) });
    assert.equal(p.ok, true, JSON.stringify(p));
    assert.ok(Object.keys(p.sessions).length <= 2);
    pump(p.seq); // the diffs the page already reflects
    takePage(p);
    cursor = p.nextCursor;
    pages++;
    await sleep(25);
  } while (cursor && pages < 200);
  await churn;
  await sleep(WINDOW * 5);
  pump();
  const whole = (await getJson(`${pnode.url}/api/rooms/${room}/presence`)).body;
  assert.ok(pages > 3, `${pages} pages`);
  assert.deepEqual(strip(view.sessions), strip(whole.sessions));
  assert.deepEqual(strip(view.users), strip(whole.users));

  // HTTP pages walk the same order and cover the room once.
  const walked = [];
  let next = "";
  let seq;
  do {
    const r = await getJson(`${pnode.url}/api/rooms/${room}/presence?limit=4${next ? `&cursor=${encodeURIComponent(next)}` : ""}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(Object.keys(r.body.sessions).length <= 4);
    seq ??= r.body.seq;
    // Keyed by session id on the wire; in page order by user, then session.
    const inPage = Object.values(r.body.sessions).map((s) => [s.userId, s.sessionId]).sort(byMember);
    if (walked.length) assert.equal(byMember(walked.at(-1), inPage[0]), -1, "pages follow each other in order");
    walked.push(...inPage);
    for (const s of Object.values(r.body.sessions)) assert.deepEqual(r.body.users[s.userId], whole.users[s.userId]);
    next = r.body.nextCursor;
  } while (next);
  const want = Object.values(whole.sessions).map((s) => [s.userId, s.sessionId]).sort(byMember);
  assert.deepEqual(walked, want);
});

test("a snapshot and a diff larger than a message arrive in parts that reassemble exactly", async () => {
  const room = "v-parts";
  const pad = "x".repeat(3000);
  const members = [];
  for (let i = 0; i < LIMIT - 1; i++) {
    const s = await hello(`big${i}`, { handle: `Member ${i}` });
    await join(s, room, { state: { pad, i } });
    members.push(s);
  }
  const obs = await hello("observer");
  const ack = await join(obs, room, { view: "full" });
  assert.equal(ack.view, "full");
  assert.ok(ack.snapshot.parts > 1, `one part for ${JSON.stringify(ack).length} bytes`);
  const snap = await whole(obs, ack);
  const room0 = (await getJson(`${node.url}/api/rooms/${room}/presence`)).body;
  assert.deepEqual(strip(snap.sessions), strip(room0.sessions));
  assert.deepEqual(strip(snap.users), strip(room0.users));
  // Every message this client got stays under the limit.
  for (const r of obs.received) assert.ok(JSON.stringify(r.payload).length < 16384, `${r.event} of ${JSON.stringify(r.payload).length} bytes`);
  assert.ok(JSON.stringify(ack).length < 16384);
  // Everyone changes state in one window: one diff, in parts.
  const mirror = new RoomMirror(snap);
  const from = obs.received.length;
  await Promise.all(members.map((s, i) => call(s, "presence:state", { roomId: room, epoch: s.epoch, patch: { pad: pad.toUpperCase(), i } })));
  // (The observer may first get the catch-up of the window it joined in.)
  const upper = (e) => e?.state?.pad === pad.toUpperCase();
  await until(async () => {
    const ds = obs.received.slice(from).filter((r) => r.event === "presence:diff").map((r) => r.payload);
    const changed = new Set(ds.flatMap((d) => Object.entries(d.sessions).filter(([, e]) => upper(e)).map(([sid]) => sid)));
    return changed.size >= LIMIT - 1;
  }, "every member's change");
  const ds = obs.received.slice(from).filter((r) => r.event === "presence:diff").map((r) => r.payload);
  assert.ok(ds.some((d) => d.parts > 1), "the diff came in parts");
  for (const d of ds) {
    assert.ok(JSON.stringify(d).length < 16384);
    mirror.apply(d);
  }
  const room1 = (await getJson(`${node.url}/api/rooms/${room}/presence`)).body;
  assert.deepEqual(strip(mirror.sessions), strip(room1.sessions));
  assert.equal(mirror.seq, room1.seq);
});

test("a resumed session's rooms come back with their view and counts", async () => {
  const room = "v-resume";
  const a = await hello("alice");
  await join(a, room);
  const b = await hello("bob");
  await join(b, room);
  a.disconnect();
  const again = await connect(node.url);
  const h = await call(again, "presence:hello", { userId: "alice", sessionId: a.sessionId });
  assert.equal(h.resumed, true);
  const snap = await waitFor(again, "presence:snapshot", (m) => m.roomId === room);
  assert.equal(snap.view, "full");
  assert.equal(snap.counts.users.total, 2);
  assert.equal(snap.me.session.sessionId, a.sessionId);
  assert.deepEqual(Object.keys(snap.users).sort(), ["alice", "bob"]);
});
