// Builds dist/: ESM and CommonJS of the package and of its React bindings
// (socket.io-client and react stay dependencies), a browser bundle with
// socket.io-client inside (global `PresenceClient`), and the type
// declarations. The node serves the bundle as /assets/presence-client.js.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { copyFileSync, rmSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
const common = { bundle: true, target: "es2020", sourcemap: true, external: ["socket.io-client", "react"], logLevel: "warning" };
for (const entry of ["index", "react"]) {
  await build({ ...common, entryPoints: [`src/${entry}.ts`], format: "esm", outfile: `dist/${entry}.js` });
  await build({ ...common, entryPoints: [`src/${entry}.ts`], format: "cjs", outfile: `dist/${entry}.cjs`, platform: "node" });
}
await build({
  entryPoints: ["src/index.ts"], bundle: true, minify: true, format: "iife", globalName: "PresenceClient",
  target: "es2020", outfile: "dist/presence-client.js", logLevel: "warning", legalComments: "none",
});
execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "."], { stdio: "inherit" });
const bundle = readFileSync("dist/presence-client.js");
console.log(`dist/presence-client.js: ${statSync("dist/presence-client.js").size} bytes, ${gzipSync(bundle).length} gzipped`);
if (process.argv.includes("--serve")) {
  // The copy the node embeds (crates/presence-node/static).
  copyFileSync("dist/presence-client.js", "../../crates/presence-node/static/presence-client.js");
}
