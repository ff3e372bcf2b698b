// The demo page in a real headless Chromium: avatars, badges, tab counting,
// idle/background detection and resume on reload.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
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
