#!/usr/bin/env bash
# Reproduces the figures of docs/benchmarks.md, or runs a tiny smoke run of
# the load tool (what CI does).
#
#   scripts/bench.sh smoke          # a few sessions for a few seconds (CI)
#   scripts/bench.sh all            # every figure below, ~10 minutes
#   scripts/bench.sh ceiling|throughput|latency|roomsize|curve|memory|storm
#   scripts/bench.sh largerooms     # rooms of 10, 1,000, 10,000; 50,000 on three nodes
#   scripts/bench.sh hotpath        # Redis CPU per heartbeat: vouched or every beat, standalone or cluster
#   scripts/bench.sh joins          # join ack latency, 1,000 clients connecting 100 at a time
#
# Each figure gets a redis-server and a release presence-node of its own, on
# free loopback ports, started here and stopped at the end. JSON results go to
# target/bench/ (BENCH_OUT to change). Needs redis-server and redis-benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=$(realpath -m "${BENCH_OUT:-target/bench}")
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

# start_redis: a fresh redis-server on a free port; sets REDIS_PORT, REDIS_PID.
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --logfile "$OUT/redis.log" &
  REDIS_PID=$!
  pids+=("$REDIS_PID")
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
}

# start_stack [node env...]: a fresh redis-server and node ($NODE_BIN, else
# this build's); sets REDIS_PORT, NODE_URL, NODE_PID.
start_stack() {
  stop_stack
  start_redis
  local port
  port=$(free_port)
  env PRESENCE_BIND="127.0.0.1:$port" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    RUST_LOG=warn "$@" "${NODE_BIN:-$BIN/presence-node}" >"$OUT/node.log" 2>&1 &
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
  # The node's counters after the run (events by type, diffs, room reads).
  curl -s "$NODE_URL/metrics" | grep -E '^presence_(events|diffs|snapshots|room_reads)_total' >"$OUT/$name.metrics" || true
}

# The heartbeat script's own ceiling: redis-benchmark sends the exact call a
# node sends (FCALL; EVALSHA with PRESENCE_REDIS_FUNCTIONS=false or on Redis
# 6), taken from MONITOR while sessions heartbeat, on the same machine, 50
# connections, without and with pipelining.
ceiling() {
  start_stack PRESENCE_REDIS_VOUCH_FLUSH_MS=0
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
  case "$answer" in '{"ok":true,'*) ;; *) echo "the captured heartbeat answers $answer" >&2; exit 1 ;; esac
  : >"$OUT/ceiling.csv"
  for pipeline in 1 16; do
    redis-benchmark -p "$REDIS_PORT" -n 400000 -c 50 -P "$pipeline" --csv "${cmd[@]}" 2>/dev/null |
      tail -1 | awk -v p="$pipeline" -F'","' '{ printf "pipeline %s: %s calls/s\n", p, $2 }' | tee -a "$OUT/ceiling.csv"
  done
  kill "$keep" 2>/dev/null || true
  wait "$keep" 2>/dev/null || true
}

# start_cluster [masters]: a Redis Cluster of masters only, on free loopback
# ports (and their bus ports); sets CLUSTER_URL and CLUSTER_PIDS.
start_cluster() {
  local masters=${1:-3} ports=() port dir
  CLUSTER_PIDS=()
  for _ in $(seq "$masters"); do
    port=$(python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p + 10000 > 65535: continue
    b = socket.socket()
    try: b.bind(("127.0.0.1", p + 10000)); b.close(); print(p); break
    except OSError: b.close()')
    dir=$(mktemp -d)
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" \
      --cluster-enabled yes --cluster-node-timeout 2000 --logfile "$OUT/cluster-$port.log" &
    CLUSTER_PIDS+=("$!")
    pids+=("$!")
    ports+=("127.0.0.1:$port")
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${ports[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 100); do
    local ok=1
    for hp in "${ports[@]}"; do
      redis-cli -p "${hp#*:}" cluster info | grep -q cluster_state:ok || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  CLUSTER_URL="redis-cluster://$(IFS=,; echo "${ports[*]}")"
}

stop_cluster() {
  for p in "${CLUSTER_PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${CLUSTER_PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  CLUSTER_PIDS=()
}

# Redis CPU per heartbeat: Redis's own CPU time (user + system, read from
# /proc as INFO cpu reports it) over the measured phase, divided by the
# heartbeats answered in it ("µs CPU per run ack" on the server lines; on a
# cluster, the sum over its masters). 10,000 sessions, closed loop and 1 Hz,
# each run on a fresh Redis and node: the node vouching for its sessions (the
# default: quiet beats answered by the node, their times written in bulk),
# every beat through Redis (PRESENCE_REDIS_VOUCH_FLUSH_MS=0), and vouching
# with EVALSHA scripts (the Redis 6 path); one redis-server, then a cluster of
# three masters. HOTPATH_BEFORE=<path to another presence-node> adds that
# build (say, the previous release) to the same run; HOTPATH_LABELS="vouched
# every-beat" and HOTPATH_MODES="closed" keep some. Redis, the node and the
# tool share the machine's cores.
hotpath() {
  # label|node binary|node environment
  local variants=(
    "vouched|$BIN/presence-node|PRESENCE_REDIS_FUNCTIONS=true"
    "every-beat|$BIN/presence-node|PRESENCE_REDIS_VOUCH_FLUSH_MS=0"
    "evalsha|$BIN/presence-node|PRESENCE_REDIS_FUNCTIONS=false"
  )
  [ -n "${HOTPATH_BEFORE:-}" ] && variants=("before|$HOTPATH_BEFORE|PRESENCE_REDIS_FUNCTIONS=true" "${variants[@]}")
  local v label bin nodeenv mode
  for v in "${variants[@]}"; do
    IFS='|' read -r label bin nodeenv <<<"$v"
    [ -n "${HOTPATH_LABELS:-}" ] && [[ " $HOTPATH_LABELS " != *" $label "* ]] && continue
    for mode in ${HOTPATH_MODES:-closed 1hz}; do
      local args=(--closed)
      [ "$mode" = 1hz ] && args=(--rate 1)
      NODE_BIN=$bin start_stack "$nodeenv"
      bench "hotpath-$label-$mode" heartbeat "${args[@]}" -n 10000 -d 20 --warmup 3
      stop_stack
      start_cluster 3
      local port
      port=$(free_port)
      env PRESENCE_BIND="127.0.0.1:$port" REDIS_URL="$CLUSTER_URL" "$nodeenv" \
        RUST_LOG=warn "$bin" >"$OUT/node.log" 2>&1 &
      NODE_PID=$!
      pids+=("$NODE_PID")
      NODE_URL="http://127.0.0.1:$port"
      ready "$NODE_URL/readyz"
      local name="hotpath-$label-cluster-$mode" watch=()
      for p in "${CLUSTER_PIDS[@]}"; do watch+=(--pid "$p"); done
      echo "==> $name: presence-bench heartbeat ${args[*]} -n 10000 -d 20 --warmup 3 (3 masters)"
      "$BIN/presence-bench" heartbeat "${args[@]}" -n 10000 -d 20 --warmup 3 --url "$NODE_URL" \
        --pid "$NODE_PID" "${watch[@]}" --json "$OUT/$name.json" -q
      python3 - "$OUT/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
masters = r["servers"][1:]
total = sum(s["cpu_us_per_ack"] or 0 for s in masters)
print(f"Redis Cluster, {len(masters)} masters together: {total:.1f} µs CPU per heartbeat")
PY
      kill "$NODE_PID" 2>/dev/null || true
      wait "$NODE_PID" 2>/dev/null || true
      NODE_PID=""
      stop_cluster
    done
  done
  [ -n "${HOTPATH_LABELS:-}" ] || ceiling
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

# Join acks: 1,000 clients connecting 100 at a time (connect + hello + join,
# rooms of 10, the default 250 ms window), one node on Redis, three rounds;
# JOINS_BEFORE=<another presence-node> runs that build too, in the same run.
joins() {
  local variants=("after|$BIN/presence-node") v label bin round
  [ -n "${JOINS_BEFORE:-}" ] && variants=("before|$JOINS_BEFORE" "${variants[@]}")
  for v in "${variants[@]}"; do
    IFS='|' read -r label bin <<<"$v"
    for round in 1 2 3; do
      NODE_BIN=$bin start_stack
      bench "joins-$label-$round" connect -n 1000 --connect-concurrency 100 -d 2
    done
  done
  stop_stack
}

# Large rooms: the same 10,000 sessions heartbeating at 1 Hz in rooms of
# 10 (the default, full view), 1,000 and 10,000 (members in count view, 50
# of them watching 20 others each); then each change's bytes (state updates
# at 0.05 Hz per session), and one room of 50,000 on three nodes.
largerooms() {
  roomviews
  fiftyk
}

roomviews() {
  # Three rounds: a p99 of a few milliseconds moves by as much from one run
  # to the next on two shared cores; the figures are the median round.
  local rep
  for rep in 1 2 3; do
    start_stack
    bench lr-room10-$rep heartbeat --rate 1 -n 10000 --room-size 10 -d 30 --warmup 10
    start_stack
    bench lr-room1000-$rep heartbeat --rate 1 -n 10000 --room-size 1000 --view count --watchers 5 \
      -d 30 --warmup 10 --timeout-ms 30000
    start_stack
    bench lr-room10000-$rep heartbeat --rate 1 -n 10000 --room-size 10000 --view count \
      --watchers 50 -d 30 --warmup 10 --timeout-ms 30000
  done
  changes
}

# What a member's change costs on the wire: state updates at 0.05 Hz per
# session in rooms of 10 (full view: each goes to the room) and in one room
# of 10,000 (count view: only to whoever watches the member).
changes() {
  start_stack
  bench lr-changes10 bigroom --rate 0.05 -n 10000 --room-size 10 -d 30 --warmup 10
  start_stack
  bench lr-changes10000 bigroom --rate 0.05 -n 10000 --view count --watchers 50 -d 30 --warmup 10 \
    --timeout-ms 30000
}

# One room of 50,000 sessions across three nodes on one Redis, held 60 s:
# three tool processes (one process's open-file limit holds ~17,000
# connections), each over all three nodes, heartbeating every 10 s (the
# default interval; 1 Hz would be 50,000 requests/s on these two cores).
fiftyk() {
  stop_stack
  start_redis
  local urls=() npids=() port k
  for k in 1 2 3; do
    port=$(free_port)
    env PRESENCE_BIND="127.0.0.1:$port" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
      PRESENCE_NODE_ID="n$k" RUST_LOG=warn "$BIN/presence-node" >"$OUT/node$k.log" 2>&1 &
    npids+=("$!")
    pids+=("$!")
    urls+=(--url "http://127.0.0.1:$port")
    ready "http://127.0.0.1:$port/readyz"
  done
  echo "==> lr-50k: 3 x presence-bench heartbeat --rate 0.1 -n 16667 --room-size 50000 --view count --watchers 50 -d 60"
  local tools=()
  for k in 0 1 2; do
    local watchers=()
    [ "$k" = 0 ] && watchers=(--watchers 50)
    "$BIN/presence-bench" heartbeat --rate 0.1 -n 16667 --offset $((k * 16667)) --prefix lr50k \
      --room-size 50000 --view count "${watchers[@]}" -d 60 --warmup 20 --connect-concurrency 200 \
      --timeout-ms 60000 "${urls[@]}" --pid "${npids[0]}" --pid "${npids[1]}" --pid "${npids[2]}" \
      --pid "$REDIS_PID" --json "$OUT/lr-50k-$k.json" -q >"$OUT/lr-50k-$k.txt" 2>&1 &
    tools+=("$!")
  done
  local failed=0
  for t in "${tools[@]}"; do wait "$t" || failed=1; done
  cat "$OUT"/lr-50k-*.txt
  for u in "${urls[@]}"; do
    [ "$u" = --url ] && continue
    curl -s "$u/metrics" | grep -E '^presence_(events|diffs|snapshots|room_reads)_total'
  done >"$OUT/lr-50k.metrics" || true
  for p in "${npids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  return $failed
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
  largerooms) largerooms ;;
  roomviews) roomviews ;;
  changes) changes ;;
  fiftyk) fiftyk ;;
  memory) memory ;;
  storm) storm ;;
  hotpath) hotpath ;;
  joins) joins ;;
  curve) curve ;;
  all) ceiling; throughput; latency; roomsize; curve; memory; storm ;;
  *) echo "usage: $0 [smoke|all|ceiling|throughput|latency|roomsize|curve|memory|storm]" >&2; exit 2 ;;
esac
stop_stack
