// Interop: a python-socketio client (clients/python) and this client share a
// room; each sees the other's session and state through diffs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createPresence } from "../dist/index.js";
import { startNode, FAST } from "../../../tests/e2e/helpers.js";

const PYTHON = process.env.PRESENCE_PYTHON || "python3";
let node;
before(async () => { node = await startNode(FAST); });
after(async () => { await node?.stop(); });

test("a python-socketio client joins a room and receives diffs", async () => {
  const js = createPresence({ url: node.url, userId: "js-user", activity: "active", socket: { transports: ["websocket"], forceNew: true } });
  const room = await js.join("interop");
  const py = spawn(PYTHON, ["test_interop.py", node.url], { cwd: new URL("../../python/", import.meta.url), stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  py.stdout.on("data", (c) => { out += c; });
  py.stderr.on("data", (c) => { out += c; });
  const exited = new Promise((resolve) => py.once("exit", resolve));
  const timer = setTimeout(() => py.kill("SIGKILL"), 20000);
  try {
    // The Python session shows in this client's view, with its state.
    await new Promise((resolve, reject) => {
      const check = () => [...room.sessions.values()].some((s) => s.userId === "py-user" && s.state?.lang === "python");
      if (check()) return resolve();
      const off = room.on("change", () => { if (check()) { off(); resolve(); } });
      py.once("exit", () => reject(new Error(`python exited early: ${out}`)));
    });
    await room.setState({ from: "js" });
    const code = await exited;
    assert.equal(code, 0, out);
    assert.match(out, /SAW \['js-user', 'py-user'\]/);
  } finally {
    clearTimeout(timer);
    py.kill();
    await js.close();
  }
});
