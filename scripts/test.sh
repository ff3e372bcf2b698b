#!/usr/bin/env bash
# Installs what the tests need, then runs every test of the project:
# formatting and lints, the Rust unit/property/conformance tests, and the
# end-to-end suite (the real presence-node binary driven by the official
# socket.io-client from npm).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: redis-server and redis-sentinel (the Redis-backed tests),
# openssl (certificates for the TLS tests), nginx (the load balancer of the
# three-node tests, run from deploy/nginx.conf),
# Node.js and npm (the JavaScript client and its tests), Chromium (the demo
# page test), Prometheus's promtool (checks and unit-tests deploy/prometheus),
# Docker's engine, debootstrap and docker-compose (the image and the compose
# file, built and run); python3's venv gives python-socketio for the interop
# test and kubernetes-validate for deploy/k8s. Installed from Debian's
# packages when missing. kubectl (its `kustomize`) comes with the machine's
# Google Cloud CLI; Debian's own kubectl is too old for kustomize bases.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> [${SECONDS}s] installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v kubectl >/dev/null 2>&1; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl \
    || echo "kubectl is not installed: tests/e2e/k8s.test.js will fail" >&2
fi

# A Docker engine for the testcontainers path of the Redis test harness and
# for the image and compose tests: started here if none runs (no default
# bridge, no iptables: the harness's containers use the host network and
# loopback addresses; compose makes a private network of its own and
# publishes nginx on loopback), stopped again before the load tool's smoke run.
started_dockerd=""
remove_test_containers() {
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ids=$(docker ps -aq --filter label=presence-testkit)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  fi
}
cleanup() {
  remove_test_containers
  if [ -n "$started_dockerd" ]; then
    echo "==> [${SECONDS}s] stopping dockerd"
    as_root kill "$started_dockerd" 2>/dev/null || true
    wait "$started_dockerd" 2>/dev/null || true
    started_dockerd=""
  fi
}
trap cleanup EXIT
if ! docker info >/dev/null 2>&1; then
  echo "==> [${SECONDS}s] starting dockerd"
  flags=(--bridge=none --iptables=false --ip-forward=false --ip6tables=false)
  if [ "$(id -u)" -eq 0 ]; then
    dockerd "${flags[@]}" >/tmp/presence-dockerd.log 2>&1 &
  else
    sudo dockerd "${flags[@]}" >/tmp/presence-dockerd.log 2>&1 &
  fi
  started_dockerd=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
fi
backend=local
rust_base=""
if docker info >/dev/null 2>&1 && ./scripts/images.sh redis; then
  backend=docker
  # The image's build base (debootstrap: mostly downloads), made while cargo compiles.
  mkdir -p target
  ./scripts/images.sh rust >target/images-rust.log 2>&1 &
  rust_base=$!
elif [ "${CI:-}" = "true" ]; then
  echo "CI needs a Docker engine for the testcontainers path; see /tmp/presence-dockerd.log" >&2
  exit 1
fi

echo "==> [${SECONDS}s] cargo fmt --check"
cargo fmt --all -- --check

echo "==> [${SECONDS}s] cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> [${SECONDS}s] cargo test (Redis servers: $backend$( [ "$backend" = docker ] && echo ', through testcontainers'))"
PRESENCE_TEST_BACKEND=$backend cargo test --workspace --locked

if [ "$backend" = docker ]; then
  echo "==> [${SECONDS}s] the Redis conformance suite again, on local redis-server processes"
  PRESENCE_TEST_BACKEND=local cargo test -p presence-store -p presence-testkit --locked
fi

node_image=""
if [ "$backend" = docker ]; then
  remove_test_containers # none of the harness's Redis servers outlives its test
  # deploy/Dockerfile's release build takes ~10 CPU-minutes; it runs beside
  # the end-to-end tests, which keep the cores about a third busy, with only
  # the CPU they leave (IMAGES_IDLE), and its suites run after them.
  echo "==> [${SECONDS}s] building the image (deploy/Dockerfile, on a debootstrap base) in the background"
  wait "$rust_base" || { cat target/images-rust.log >&2; exit 1; }
  cat target/images-rust.log
  ./scripts/images.sh nginx
  IMAGES_IDLE=1 ./scripts/images.sh node >target/images-node.log 2>&1 &
  node_image=$!
fi

echo "==> [${SECONDS}s] end-to-end tests (socket.io-client from npm)"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
cargo build -p presence-node --locked
cargo build -p presence-store --example lifecycle --locked
python3 -m venv target/pyenv >/dev/null
target/pyenv/bin/pip install -q --disable-pip-version-check -r clients/python/requirements.txt -r tests/e2e/requirements.txt
# Once on the embedded store, once with every node on a redis-server of its own.
(cd tests/e2e && PRESENCE_NODE_BIN="$PWD/../../target/debug/presence-node" \
  node --test --test-concurrency=1 $(grep -L '^// e2e: docker' ./*.test.js))
echo "==> [${SECONDS}s] end-to-end tests again, on Redis (the files that start Redis themselves ran above)"
(cd tests/e2e && E2E_STORE=redis PRESENCE_NODE_BIN="$PWD/../../target/debug/presence-node" \
  node --test --test-concurrency=1 $(grep -L -e '^// e2e: own-redis' -e '^// e2e: docker' ./*.test.js))
echo "==> [${SECONDS}s] the JavaScript client (clients/js): build, view logic, against real nodes, python-socketio interop"
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error \
  && PRESENCE_PYTHON="$PWD/../../target/pyenv/bin/python" PRESENCE_NODE_BIN="$PWD/../../target/debug/presence-node" npm test)
if [ -n "$node_image" ]; then
  echo "==> [${SECONDS}s] the image and docker-compose.yml, run (waiting for the image's build)"
  wait "$node_image" || { tail -40 target/images-node.log >&2; exit 1; }
  tail -3 target/images-node.log
  (cd tests/e2e && node --test --test-concurrency=1 $(grep -l '^// e2e: docker' ./*.test.js))
fi
# Docker is done.
cleanup

echo "==> [${SECONDS}s] load tool smoke run (presence-bench, a few sessions for a few seconds)"
BENCH_PROFILE=debug BENCH_OUT=target/bench-smoke ./scripts/bench.sh smoke
echo "==> [${SECONDS}s] every test passed"
