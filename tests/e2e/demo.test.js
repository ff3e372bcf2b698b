// The demo page in a real headless Chromium: avatars, badges, tab counting,
// idle/background detection and resume on reload.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { io } from "socket.io-client";
import { startNode, FAST } from "./helpers.js";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
let node, browser;

before(async () => {
  node = await startNode(FAST);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => { await browser?.close(); await node?.stop(); });

async function open(context, name, room) {
  const page = await context.newPage();
  await page.goto(`${node.url}/?name=${encodeURIComponent(name)}&room=${room}`);
  await page.waitForFunction(() => document.getElementById("my-session").textContent.length > 3);
  return page;
}

const badgeOf = (page, label) =>
  page.evaluate((label) => {
    for (const u of document.querySelectorAll("#users .user")) {
      if (u.querySelector("b").textContent.startsWith(label)) return u.querySelector(".badge").textContent;
    }
    return null;
  }, label);

async function until(fn, what, timeoutMs = 8000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

async function hide(page) {
  await page.evaluate(() => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
    document.dispatchEvent(new Event("visibilitychange"));
  });
}

test("two tabs count as two sessions of one user; a reload resumes the tab's session", async () => {
  const ctx = await browser.newContext();
  const tab1 = await open(ctx, "Ann Lee", "demo1");
  const tab2 = await open(ctx, "Ann Lee", "demo1");
  await until(async () => (await tab1.textContent("#my-tabs")) === "2", "sessionCount 2 on tab 1");
  assert.equal(await tab2.textContent("#my-tabs"), "2");
  const s1 = await tab1.textContent("#my-session");
  const s2 = await tab2.textContent("#my-session");
  assert.notEqual(s1, s2, "each tab has its own session");

  await tab2.reload();
  await tab2.waitForFunction(() => document.getElementById("my-session").textContent.length > 3);
  assert.equal(await tab2.textContent("#my-session"), s2, "sessionStorage keeps the tab's session id");
  await until(async () => (await tab2.textContent("#log")).includes("resumed"), "resumed in the log");
  await until(async () => (await tab1.textContent("#my-tabs")) === "2", "still two tabs after the reload");
  await ctx.close();
});

test("avatars with initials and colours; idle and background badges", async () => {
  const annCtx = await browser.newContext();
  const benCtx = await browser.newContext();
  const ann = await open(annCtx, "Ann Lee", "demo2");
  const ben = await open(benCtx, "Ben", "demo2");
  const avatars = await until(async () => {
    const a = await ben.$$eval("#users .avatar", (els) => els.map((e) => ({ text: e.firstChild.textContent, bg: e.style.background })));
    return a.length === 2 ? a : null;
  }, "two avatars");
  assert.deepEqual(avatars.map((a) => a.text).sort(), ["AL", "B"]);
  assert.ok(avatars.every((a) => /^(rgb|hsl)/.test(a.bg)), "each user has a colour");
  assert.notEqual(avatars[0].bg, avatars[1].bg, "assigned per user");

  // Input keeps Ann active; without it she turns idle (the demo reports idle after idleAfterMs).
  for (let i = 0; i < 5; i++) { await ann.mouse.move(10 + i, 10 + i); await new Promise((r) => setTimeout(r, 100)); }
  await until(async () => (await badgeOf(ben, "Ann Lee")) === "active", "Ann active");
  await until(async () => (await badgeOf(ben, "Ann Lee")) === "idle", "Ann idle without input");
  // A hidden tab reports background: away.
  await hide(ann);
  await until(async () => (await badgeOf(ben, "Ann Lee")) === "away", "Ann away when hidden");
  assert.equal(await ann.textContent("#my-activity"), "background");
  await annCtx.close();
  await until(async () => (await badgeOf(ben, "Ann Lee")) === "stale", "Ann stale after her tab closed");
  await until(async () => (await badgeOf(ben, "Ann Lee")) === null, "Ann gone after the grace window");
  await benCtx.close();
});

test("ids and handles from other users cannot pollute or inject into the page", async () => {
  const ctx = await browser.newContext();
  const page = await open(ctx, "Viewer", "demo3");
  // Users that arrive by diff while the page watches: names that plain objects
  // already have, and a handle that is markup.
  const others = [];
  for (const [userId, handle] of [["toString", "<img src=x onerror=window.__pwned=1>"], ["hasOwnProperty", "Has Own"], ["valueOf", "Value Of"]]) {
    const s = io(node.url, { forceNew: true, reconnection: false, transports: ["websocket"] });
    others.push(s);
    await new Promise((r) => s.once("connect", r));
    const hello = await s.timeout(5000).emitWithAck("presence:hello", { userId, handle });
    assert.ok(hello.ok, JSON.stringify(hello));
    assert.ok((await s.timeout(5000).emitWithAck("presence:join", { roomId: "demo3" })).ok);
  }
  const names = await until(async () => {
    const n = await page.$$eval("#users .user b", (els) => els.map((e) => e.textContent));
    return n.length === 4 ? n : null;
  }, "all four users shown");
  assert.ok(names.includes("<img src=x onerror=window.__pwned=1>"), JSON.stringify(names));
  assert.ok(names.includes("Has Own") && names.includes("Value Of"), JSON.stringify(names));
  assert.equal(await page.$$eval("#users img", (els) => els.length), 0, "a handle is text, never markup");
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.equal(await page.evaluate(() => ({}).handle), undefined, "Object.prototype untouched");
  for (const s of others) s.close();
  await ctx.close();
});

test("a stored session id that is not the user's starts a new session", async () => {
  // Someone else's session id ends up in this tab's storage (a shared link, a
  // copied profile, an attacker's squat): the page must not stay stuck.
  const mallory = io(node.url, { forceNew: true, reconnection: false, transports: ["websocket"] });
  await new Promise((r) => mallory.once("connect", r));
  const theirs = await mallory.timeout(5000).emitWithAck("presence:hello", { userId: "mallory" });
  const ctx = await browser.newContext();
  await ctx.addInitScript((sid) => sessionStorage.setItem("presence.sessionId", sid), theirs.sessionId);
  const page = await open(ctx, "Ann Lee", "demo4");
  const mine = await page.textContent("#my-session");
  assert.notEqual(mine, theirs.sessionId);
  await until(async () => (await page.textContent("#log")).includes("forbidden"), "the refusal in the log");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("presence.sessionId")), mine);
  mallory.close();
  await ctx.close();
});

test("a large room shows counts and a pageable member list, and the viewer's own tabs", async () => {
  // Default timings: the members here do not heartbeat.
  const big = await startNode({ "--emit-debounce-ms": 50, "--full-view-max-members": 3 });
  const members = [];
  try {
    for (let i = 0; i < 24; i++) {
      const s = io(big.url, { forceNew: true, reconnection: false, transports: ["websocket"] });
      members.push(s);
      await new Promise((r) => s.once("connect", r));
      const h = await s.timeout(5000).emitWithAck("presence:hello", { userId: `m${String(i).padStart(2, "0")}` });
      const j = await s.timeout(5000).emitWithAck("presence:join", { roomId: "bigdemo" });
      assert.ok(h.ok && j.ok);
      s.on("presence:diff", () => {});
    }
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(`${big.url}/?name=zed&room=bigdemo`);
    await until(async () => /^25 users: /.test(await page.textContent("#counts")), "counts of 25 users");
    assert.equal(await page.isVisible("#pager"), true);
    const names = () => page.$$eval("#users .user b", (bs) => bs.map((b) => b.textContent));
    const first = await names();
    assert.equal(first.length, 20, first.join());
    assert.equal(first[0], "m00");
    await page.click("#next-page");
    await until(async () => (await page.textContent("#page-info")) === "page 2", "page 2");
    const second = await names();
    assert.deepEqual(second, ["m20", "m21", "m22", "m23", "zed (you)"]);
    assert.equal(await page.isDisabled("#next-page"), true);
    // The viewer's own tabs stay live in count view.
    await until(async () => (await page.textContent("#my-tabs")) === "1", "one tab");
    const tab2 = await ctx.newPage();
    await tab2.goto(`${big.url}/?name=zed&room=bigdemo`);
    await until(async () => (await page.textContent("#my-tabs")) === "2", "two tabs on the first");
    // Counts follow a member leaving.
    await until(async () => /^25 users: .*· 26 sessions/.test(await page.textContent("#counts")), "26 sessions");
    await members[0].timeout(5000).emitWithAck("presence:leave", {});
    await until(async () => /^24 users: .*· 25 sessions/.test(await page.textContent("#counts")), "a member left");
    await ctx.close();
  } finally {
    for (const s of members) s.disconnect();
    await big.stop();
  }
});

test("each member's readiness shows; a call waits for readiness, then says ring now", async () => {
  const adaCtx = await browser.newContext();
  const bobCtx = await browser.newContext();
  const ada = await open(adaCtx, "Ada", "demo6");
  const bob = await open(bobCtx, "Bob", "demo6");
  await until(async () => (await ada.$$eval("#users .user", (us) => us.length)) === 2, "two users on Ada's page");
  await bob.selectOption("#my-readiness", "busy");
  const bobCard = () => ada.evaluate(() => {
    for (const u of document.querySelectorAll("#users .user")) {
      if (u.querySelector("b").textContent.startsWith("Bob")) {
        return { readiness: u.querySelector(".readiness").textContent, status: u.querySelector(".call-status")?.textContent };
      }
    }
    return null;
  });
  await until(async () => (await bobCard())?.readiness === "readiness: busy", "Bob busy on Ada's page");
  assert.match(await ada.textContent("#sessions"), /busy \(audio, video\)/);
  await ada.click("#users .call");
  await until(async () => (await bobCard())?.status.startsWith("waiting (unlikely: busy)"), "Ada waits");
  await until(async () => (await bob.textContent("#inbox")).startsWith("Ada would like to call"), "Bob sees the intent");
  await bob.selectOption("#my-readiness", "available");
  // Bob's tab turned idle meanwhile (no input): ready once he uses it again.
  await until(async () => {
    await bob.mouse.move(20 + Math.random() * 50, 20);
    return (await bobCard())?.status === "ready — ring now";
  }, "ready — ring now");
  await adaCtx.close();
  await bobCtx.close();
});
