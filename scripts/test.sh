#!/usr/bin/env bash
# Installs what the tests need, then runs every test of the project:
# formatting and lints, the Rust unit/property/conformance tests, and the
# end-to-end suite (the real presence-node binary driven by the official
# socket.io-client from npm).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: redis-server and redis-sentinel (the Redis-backed tests),
# Node.js and npm (the JavaScript client), Chromium (the demo page test).
# Installed from Debian's packages when missing.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --workspace --locked

echo "==> end-to-end tests (socket.io-client from npm)"
cargo build -p presence-node --locked
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
# Once on the embedded store, once with every node on a redis-server of its own.
(cd tests/e2e && PRESENCE_NODE_BIN="$PWD/../../target/debug/presence-node" node --test --test-concurrency=1)
echo "==> end-to-end tests again, on Redis"
(cd tests/e2e && E2E_STORE=redis PRESENCE_NODE_BIN="$PWD/../../target/debug/presence-node" node --test --test-concurrency=1)
