#!/usr/bin/env bash
# Reproduces the figures of docs/benchmarks.md, or runs a tiny smoke run of
# the load tool (what CI does).
#
#   scripts/bench.sh smoke          # a few sessions for a few seconds (CI)
#   scripts/bench.sh all            # every figure below, ~10 minutes
#   scripts/bench.sh ceiling|throughput|latency|roomsize|curve|memory|storm
#
# Each figure gets a redis-server and a release presence-node of its own, on
# free loopback ports, started here and stopped at the end. JSON results go to
# target/bench/ (BENCH_OUT to change). Needs redis-server and redis-benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${BENCH_OUT:-target/bench}
PROFILE=${BENCH_PROFILE:-release}
mkdir -p "$OUT"
BIN=target/$PROFILE
if [ "$PROFILE" = release ]; then
  cargo build --release -q --locked -p presence-node -p presence-bench
else
  cargo build -q --locked -p presence-node -p presence-bench
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until GET $1 answers 2xx (10 s at most).
ready() {
  python3 - "$1" <<'EOF'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("not ready: " + sys.argv[1])
EOF
}

pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# start_stack [node env...]: a fresh redis-server and node; sets REDIS_PORT,
# NODE_URL, NODE_PID.
start_stack() {
  stop_stack
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --logfile "$OUT/redis.log" &
  REDIS_PID=$!
  pids+=("$REDIS_PID")
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  local port
  port=$(free_port)
  env PRESENCE_BIND="127.0.0.1:$port" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    RUST_LOG=warn "$@" "$BIN/presence-node" >"$OUT/node.log" 2>&1 &
  NODE_PID=$!
  pids+=("$NODE_PID")
  NODE_URL="http://127.0.0.1:$port"
  ready "$NODE_URL/readyz"
}

stop_stack() {
  if [ -n "${NODE_PID:-}" ]; then kill "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; fi
  if [ -n "${REDIS_PID:-}" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  NODE_PID="" REDIS_PID=""
}

bench() {
  local name=$1
  shift
  echo "==> $name: presence-bench $*"
  local redis=()
  [ -n "${REDIS_PID:-}" ] && redis=(--pid "$REDIS_PID")
  "$BIN/presence-bench" "$@" --url "$NODE_URL" --pid "$NODE_PID" "${redis[@]}" --json "$OUT/$name.json" -q
}

# The heartbeat script's own ceiling: redis-benchmark sends the exact
# EVALSHA a node sends (taken from MONITOR while sessions heartbeat), on the
# same machine, 50 connections, without and with pipelining.
ceiling() {
  start_stack
  "$BIN/presence-bench" heartbeat --url "$NODE_URL" -n 20 --rate 1 -d 30 -q >/dev/null &
  local keep=$!
  sleep 4
  timeout 3 redis-cli -p "$REDIS_PORT" MONITOR >"$OUT/monitor.txt" || true
  local line
  line=$(grep -m1 '"active"$' "$OUT/monitor.txt")
  mapfile -t cmd < <(python3 -c 'import sys, shlex; print("\n".join(shlex.split(sys.argv[1].split("] ", 1)[1])))' "$line")
  echo "==> ceiling: redis-benchmark ${cmd[0]} ${cmd[1]} 1 <session key> ..."
  local answer
  answer=$(redis-cli -p "$REDIS_PORT" "${cmd[@]}")
  [ "$answer" = '{"ok":true}' ] || { echo "the captured heartbeat answers $answer" >&2; exit 1; }
  : >"$OUT/ceiling.csv"
  for pipeline in 1 16; do
    redis-benchmark -p "$REDIS_PORT" -n 400000 -c 50 -P "$pipeline" --csv "${cmd[@]}" 2>/dev/null |
      tail -1 | awk -v p="$pipeline" -F'","' '{ printf "pipeline %s: %s EVALSHA/s\n", p, $2 }' | tee -a "$OUT/ceiling.csv"
  done
  kill "$keep" 2>/dev/null || true
  wait "$keep" 2>/dev/null || true
}

throughput() {
  start_stack
  bench heartbeat-closed heartbeat --closed -n 10000 -d 20 --warmup 3
}

latency() {
  start_stack
  bench heartbeat-1hz heartbeat --rate 1 -n 10000 --room-size 10 -d 30 --warmup 5
}

roomsize() {
  start_stack
  bench heartbeat-room10 heartbeat --rate 1 -n 10000 --room-size 10 -d 30 --warmup 5
  # Rooms of ROOM_SIZE (default 2,000; docs/benchmarks.md says why not
  # 10,000 on this machine). Each join is a diff to every member already
  # there and a snapshot of all of them, so the joins go gently.
  local size=${ROOM_SIZE:-2000}
  start_stack
  bench heartbeat-room$size heartbeat --rate 1 -n 10000 --room-size "$size" -d 30 --warmup 5 \
    --connect-concurrency 100 --timeout-ms 30000
}

# Heartbeat latency against load: the same 1 Hz schedule at growing session
# counts, to show where the machine's CPU runs out.
curve() {
  for n in 1000 3000 6000 10000; do
    start_stack
    bench curve-$n heartbeat --rate 1 -n "$n" -d 20 --warmup 3
  done
}

memory() {
  # As many idle sessions as the open-file limit lets one node hold (each
  # connection is a descriptor in the node and in the tool).
  local limit n
  limit=$(ulimit -n)
  n=${BENCH_IDLE_SESSIONS:-$((limit > 50100 ? 50000 : limit - 1000))}
  start_stack
  bench idle-$n connect -n "$n" --connect-concurrency 1000 -d 30
}

storm() {
  start_stack
  bench storm-10k connect -n 10000 --connect-concurrency 10000 -d 2
}

smoke() {
  # The node's defaults, the memory store: a few sessions, a few seconds.
  stop_stack
  local port
  port=$(free_port)
  env PRESENCE_BIND="127.0.0.1:$port" RUST_LOG=warn "$BIN/presence-node" >"$OUT/node.log" 2>&1 &
  NODE_PID=$!
  pids+=("$NODE_PID")
  NODE_URL="http://127.0.0.1:$port"
  ready "$NODE_URL/readyz"
  bench smoke-heartbeat heartbeat -n 20 --rate 5 -d 2 --strict
  bench smoke-connect connect -n 50 -d 1 --strict
  bench smoke-bigroom bigroom -n 10 --rate 2 -d 2 --strict
  bench smoke-churn churn -n 5 --rate 1 -d 2 --strict
  bench smoke-propagation propagation -n 3 --every-ms 200 -d 5 --strict
  python3 - "$OUT" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1] + "/smoke-heartbeat.json"))
hb = r["run"]["acks"]["heartbeat"]
assert r["sessions_reached"] == 20, r["sessions_reached"]
assert hb["count"] >= 100 and hb["p99_ms"] > 0, hb
assert r["servers"][0]["rss_after_bytes"] > 0, r["servers"]
print("smoke: %d heartbeats, p99 %.2f ms" % (hb["count"], hb["p99_ms"]))
EOF
}

case "${1:-all}" in
  smoke) smoke ;;
  ceiling) ceiling ;;
  throughput) throughput ;;
  latency) latency ;;
  roomsize) roomsize ;;
  memory) memory ;;
  storm) storm ;;
  curve) curve ;;
  all) ceiling; throughput; latency; roomsize; curve; memory; storm ;;
  *) echo "usage: $0 [smoke|all|ceiling|throughput|latency|roomsize|curve|memory|storm]" >&2; exit 2 ;;
esac
stop_stack
