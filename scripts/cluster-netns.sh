#!/usr/bin/env bash
# A local three-broker Sluice cluster with each broker in its own network namespace, so that
# network partitions can be made with iptables (root needed). Companion of scripts/cluster.sh.
#
#   scripts/cluster-netns.sh start [--mode isr|quorum] [-- EXTRA SLUICE ARGS...]
#   scripts/cluster-netns.sh stop             # SIGTERM every node (bounded), SIGKILL, remove the namespaces
#   scripts/cluster-netns.sh status
#   scripts/cluster-netns.sh kill N           # kill -9 node N
#   scripts/cluster-netns.sh restart N
#   scripts/cluster-netns.sh partition N      # cut node N off from the other brokers (clients still reach it)
#   scripts/cluster-netns.sh heal N
#
# Node N lives in namespace slcN at 10.232.0.N (kafka :9092, controller :19091); the root
# namespace reaches them through the bridge slcbr (10.232.0.254). Data in ./data/cluster-netns/nodeN,
# logs nodeN.log, pids nodeN.pid. Binary: $SLUICE_BIN or target/debug/sluice (then release).
# Environment: CLUSTER_DIR, SLUICE_SHARDS (1), CLUSTER_WAIT_S (20), CLUSTER_MODE (restart: isr).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${CLUSTER_DIR:-./data/cluster-netns}"
SHARDS="${SLUICE_SHARDS:-1}"
WAIT_S="${CLUSTER_WAIT_S:-20}"
NET=10.232.0
VOTERS="1@$NET.1:19091,2@$NET.2:19091,3@$NET.3:19091"

bin() {
  if [ -n "${SLUICE_BIN:-}" ]; then echo "$SLUICE_BIN"; return; fi
  for b in target/debug/sluice target/release/sluice; do
    if [ -x "$b" ]; then realpath "$b"; return; fi
  done
  echo "no sluice binary: run cargo build -p engine or set SLUICE_BIN" >&2
  exit 1
}

pidfile() { echo "$DIR/node$1.pid"; }
alive() { local f; f="$(pidfile "$1")"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

net_up() {
  ip link show slcbr >/dev/null 2>&1 && return 0
  ip link add slcbr type bridge
  ip addr add "$NET.254/24" dev slcbr
  ip link set slcbr up
  for n in 1 2 3; do
    ip netns add "slc$n"
    ip link add "slc${n}h" type veth peer name "slc${n}n"
    ip link set "slc${n}n" netns "slc$n"
    ip link set "slc${n}h" master slcbr up
    ip -n "slc$n" addr add "$NET.$n/24" dev "slc${n}n"
    ip -n "slc$n" link set "slc${n}n" up
    ip -n "slc$n" link set lo up
  done
}

net_down() {
  for n in 1 2 3; do ip netns del "slc$n" 2>/dev/null || true; ip link del "slc${n}h" 2>/dev/null || true; done
  ip link del slcbr 2>/dev/null || true
}

wait_port() {
  local host="$1" deadline=$((SECONDS + WAIT_S))
  while [ $SECONDS -lt $deadline ]; do
    if (exec 3<>"/dev/tcp/$host/9092") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

start_node() {
  local n="$1"; shift
  if alive "$n"; then echo "node $n already running"; return; fi
  mkdir -p "$DIR/node$n"
  # `ip netns exec` execs sluice: $! is the broker's pid.
  ip netns exec "slc$n" "$(bin)" --node-id "$n" --data-dir "$DIR/node$n" --listen "$NET.$n:9092" \
    --shards "$SHARDS" --controller-voters "$VOTERS" \
    --set "replication.mode=$MODE" "$@" >>"$DIR/node$n.log" 2>&1 &
  echo $! >"$(pidfile "$n")"
  echo "node $n: pid $!, kafka $NET.$n:9092 (namespace slc$n)"
}

rules() { # rules -I|-D N
  for m in 1 2 3; do
    [ "$m" = "$2" ] && continue
    ip netns exec "slc$2" iptables -w "$1" INPUT -s "$NET.$m" -j DROP
    ip netns exec "slc$2" iptables -w "$1" OUTPUT -d "$NET.$m" -j DROP
  done
}

MODE="${CLUSTER_MODE:-isr}"
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
    mkdir -p "$DIR"; net_up
    for n in 1 2 3; do start_node "$n" "$@"; done
    for n in 1 2 3; do wait_port "$NET.$n" || { echo "node $n did not open its port (see $DIR/node$n.log)" >&2; exit 1; }; done
    echo "cluster up: bootstrap $NET.1:9092,$NET.2:9092,$NET.3:9092"
    ;;
  restart)
    n="${1:?node number}"; shift
    start_node "$n" "$@"; wait_port "$NET.$n" || { echo "node $n did not come up" >&2; exit 1; }
    ;;
  stop)
    for n in 1 2 3; do if alive "$n"; then kill -TERM "$(cat "$(pidfile "$n")")"; fi; done
    deadline=$((SECONDS + WAIT_S))
    for n in 1 2 3; do
      while alive "$n" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
      if alive "$n"; then echo "node $n still running: SIGKILL"; kill -KILL "$(cat "$(pidfile "$n")")" || true; fi
      rm -f "$(pidfile "$n")"
    done
    net_down
    echo "cluster stopped, namespaces removed"
    ;;
  status)
    for n in 1 2 3; do
      if alive "$n"; then echo "node $n: running (pid $(cat "$(pidfile "$n")")), kafka $NET.$n:9092"; else echo "node $n: stopped"; fi
    done
    ;;
  kill)
    n="${1:?node number}"
    if alive "$n"; then kill -KILL "$(cat "$(pidfile "$n")")"; rm -f "$(pidfile "$n")"; echo "node $n killed"; else echo "node $n not running"; fi
    ;;
  partition) n="${1:?node number}"; rules -I "$n"; echo "node $n cut off from the other brokers" ;;
  heal) n="${1:?node number}"; rules -D "$n"; echo "node $n healed" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
