// The Docker engine, for the suites that run the project's images
// (image.test.js, compose.test.js). scripts/images.sh builds the images;
// without an engine those suites are skipped, as the Redis test harness
// falls back to local processes.
import { execFileSync, spawnSync } from "node:child_process";

/** Every container the suites start carries this label (scripts/test.sh removes leftovers). */
export const LABEL = "presence-testkit";

/** Why the Docker suites cannot run here, or null when they can. */
export function dockerMissing() {
  const info = spawnSync("docker", ["info", "--format", "{{.ServerVersion}}"], { encoding: "utf8", timeout: 20000 });
  if (info.error || info.status !== 0) return "no Docker engine answers (`docker info` failed)";
  return null;
}

/** Runs `docker ...args`, returning its stdout; throws with its stderr. */
export function docker(...args) {
  return execFileSync("docker", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 120000 }).trim();
}

/** Fails with what to run when a local image is missing (the engine runs, so the image must be there). */
export function requireImage(image, how) {
  const r = spawnSync("docker", ["image", "inspect", image], { stdio: "ignore" });
  if (r.status !== 0) throw new Error(`the image ${image} is missing: run ${how}`);
}

/** `docker inspect` of one object, parsed. */
export const inspect = (id) => JSON.parse(docker("inspect", id))[0];
