#!/usr/bin/env bash
# Run a local three-broker Sluice cluster on 127.0.0.1.
#
#   scripts/cluster.sh start [--mode isr|quorum] [-- EXTRA SLUICE ARGS...]
#   scripts/cluster.sh stop            # SIGTERM every node, wait (bounded), then SIGKILL
#   scripts/cluster.sh status          # pid, liveness and ports of each node
#   scripts/cluster.sh kill N          # kill -9 node N (1..3)
#   scripts/cluster.sh restart N       # start node N again after a kill
#
# Node N listens for clients on 127.0.0.1:909(1+N) (9092, 9093, 9094), its controller on
# 127.0.0.1:1909N (19091-19093). Data in ./data/cluster/nodeN, logs in ./data/cluster/nodeN.log,
# pids in ./data/cluster/nodeN.pid. Binary: $SLUICE_BIN or target/debug/sluice (then release).
# Environment: CLUSTER_DIR (data root), SLUICE_SHARDS (default 1), CLUSTER_WAIT_S (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${CLUSTER_DIR:-./data/cluster}"
SHARDS="${SLUICE_SHARDS:-1}"
WAIT_S="${CLUSTER_WAIT_S:-20}"
VOTERS="1@127.0.0.1:19091,2@127.0.0.1:19092,3@127.0.0.1:19093"

bin() {
  if [ -n "${SLUICE_BIN:-}" ]; then echo "$SLUICE_BIN"; return; fi
  for b in target/debug/sluice target/release/sluice; do
    if [ -x "$b" ]; then echo "$b"; return; fi
  done
  echo "no sluice binary: run cargo build -p engine or set SLUICE_BIN" >&2
  exit 1
}

port() { echo $((9091 + $1)); }
pidfile() { echo "$DIR/node$1.pid"; }

alive() {
  local f; f="$(pidfile "$1")"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

wait_port() {
  local p="$1" deadline=$((SECONDS + WAIT_S))
  while [ $SECONDS -lt $deadline ]; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

start_node() {
  local n="$1"; shift
  if alive "$n"; then echo "node $n already running (pid $(cat "$(pidfile "$n")"))"; return; fi
  mkdir -p "$DIR/node$n"
  "$(bin)" --node-id "$n" --data-dir "$DIR/node$n" --listen "127.0.0.1:$(port "$n")" \
    --shards "$SHARDS" --controller-voters "$VOTERS" \
    --set "replication.mode=$MODE" "$@" >>"$DIR/node$n.log" 2>&1 &
  echo $! >"$(pidfile "$n")"
  echo "node $n: pid $!, kafka 127.0.0.1:$(port "$n"), controller 127.0.0.1:$((19090 + n))"
}

MODE=isr
cmd="${1:-}"; shift || true
case "$cmd" in
  start)
    while [ $# -gt 0 ]; do
      case "$1" in
        --mode) MODE="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
      esac
    done
    for n in 1 2 3; do start_node "$n" "$@"; done
    for n in 1 2 3; do
      if ! wait_port "$(port "$n")"; then echo "node $n did not open its port in ${WAIT_S}s (see $DIR/node$n.log)" >&2; exit 1; fi
    done
    echo "cluster up: bootstrap 127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
    ;;
  restart)
    n="${1:?node number}"; shift
    MODE="${CLUSTER_MODE:-isr}"
    start_node "$n" "$@"
    wait_port "$(port "$n")" || { echo "node $n did not come up" >&2; exit 1; }
    ;;
  stop)
    for n in 1 2 3; do
      if alive "$n"; then kill -TERM "$(cat "$(pidfile "$n")")"; fi
    done
    deadline=$((SECONDS + WAIT_S))
    for n in 1 2 3; do
      while alive "$n" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
      if alive "$n"; then echo "node $n still running: SIGKILL"; kill -KILL "$(cat "$(pidfile "$n")")" || true; fi
      rm -f "$(pidfile "$n")"
    done
    echo "cluster stopped"
    ;;
  status)
    for n in 1 2 3; do
      if alive "$n"; then
        echo "node $n: running (pid $(cat "$(pidfile "$n")")), kafka 127.0.0.1:$(port "$n"), controller 127.0.0.1:$((19090 + n))"
      else
        echo "node $n: stopped"
      fi
    done
    ;;
  kill)
    n="${1:?node number}"
    if alive "$n"; then kill -KILL "$(cat "$(pidfile "$n")")"; rm -f "$(pidfile "$n")"; echo "node $n killed"; else echo "node $n not running"; fi
    ;;
  *)
    sed -n '2,14p' "$0"; exit 2 ;;
esac
