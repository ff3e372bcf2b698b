// The React bindings in headless Chromium: a page built here with esbuild
// (React, react-dom and this package's source) renders a room through
// usePresence and useSelf, and follows members who come and go.
// (The demo page, built on the browser bundle, is tested in
// tests/e2e/demo.test.js: two tabs, a hidden tab, idle, a reload that
// resumes, a closed tab going stale then gone.)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createRequire } from "node:module";
import { build } from "esbuild";
import { createPresence } from "../dist/index.js";
import { startNode, until, FAST } from "../../../tests/e2e/helpers.js";

const { chromium } = createRequire(new URL("../../../tests/e2e/package.json", import.meta.url))("playwright-core");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

const APP = `
import { createElement as h } from "react";
import { createRoot } from "react-dom/client";
import { createPresence } from "../src/index.ts";
import { PresenceProvider, usePresence, useSelf } from "../src/react.ts";

function Room({ id }) {
  const { users, counts } = usePresence(id);
  const me = useSelf();
  return h("div", null,
    h("p", { id: "self" }, me.userId + " " + me.connection),
    h("p", { id: "count" }, counts ? String(counts.users.total) : "-"),
    h("ul", { id: "users" }, users.map((u) => h("li", { key: u.userKey }, u.userKey + ":" + u.status))));
}
const url = new URLSearchParams(location.search).get("node");
const presence = createPresence({ url, userId: "react-user", socket: { transports: ["websocket"] } });
createRoot(document.getElementById("root")).render(h(PresenceProvider, { presence }, h(Room, { id: "react-room" })));
`;

let node, server, browser, page;
before(async () => {
  node = await startNode(FAST);
  const out = await build({
    stdin: { contents: APP, resolveDir: new URL(".", import.meta.url).pathname, loader: "js" },
    bundle: true, write: false, format: "iife", define: { "process.env.NODE_ENV": '"production"' }, logLevel: "warning",
  });
  const js = out.outputFiles[0].text;
  server = http.createServer((req, res) => {
    if (req.url.startsWith("/app.js")) return res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><div id="root"></div><script src="/app.js"></script>');
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => { await browser?.close(); server?.close(); await node?.stop(); });

test("usePresence renders a room's live view; useSelf the session", async () => {
  page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`http://127.0.0.1:${server.address().port}/?node=${encodeURIComponent(node.url)}`);
  const items = () => page.$$eval("#users li", (lis) => lis.map((l) => l.textContent));
  await until(async () => (await items()).includes("react-user:active"), "the user itself");
  assert.equal(await page.textContent("#self"), "react-user connected");
  const other = createPresence({ url: node.url, userId: "other", activity: "active", socket: { transports: ["websocket"], forceNew: true } });
  const room = await other.join("react-room");
  await until(async () => (await items()).includes("other:active"), "the other user");
  assert.equal(await page.textContent("#count"), "2");
  other.setActivity("background");
  await until(async () => (await items()).includes("other:away"), "the other user away");
  await room.leave();
  await other.close();
  await until(async () => !(await items()).some((i) => i.startsWith("other:")), "the other user gone");
  assert.deepEqual(errors, []);
  await page.close();
});
