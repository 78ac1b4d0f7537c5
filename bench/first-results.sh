#!/usr/bin/env bash
# Reproduces the committed first results for a single-node Sluice broker:
#   results/baseline/baseline.json       machine limits (disk, loopback TCP, file->socket)
#   results/bench-<workload>-<rate>/     OMB-style workloads at several fixed rates and max rate
#   results/bench-compare-16p/           the 16-partition fixed-rate runs side by side
# Starts target/release/sluice on a free 127.0.0.1 port with a fresh data directory under
# $DATA_PARENT (default /tmp; the baseline measures that file system), and stops it by PID.
# Durations: DURATION (default 20 s) after WARMUP (5 s) per run.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
DATA_PARENT=${DATA_PARENT:-/tmp}
cargo build --release -p engine --bin sluice -p bench --bin sluice-bench
BENCH=target/release/sluice-bench
WORK=$(mktemp -d "$DATA_PARENT/sluice-results.XXXXXX")
BROKER_PID=""
cleanup() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

$BENCH baseline --data-dir "$WORK" --mib 256 --repeats 3 --out results/baseline/baseline.json

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/sluice --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log" >&2; exit 1; }
  sleep 0.1
done

run() { # workload rate
  $BENCH run --no-progress --bootstrap "127.0.0.1:$PORT" --broker-label "sluice single node" --consumer-mode assign \
    --baseline results/baseline/baseline.json --workload "bench/workloads/$1.toml" \
    --rate "$2" --warmup "$WARMUP" --duration "$DURATION" || echo "run $1 at $2 exited with $?" >&2
}
for rate in 1000 5000 20000; do run 1-topic-16-partitions-1kb "$rate"; done
run max-rate-1-topic-16-partitions-1kb 0
for rate in 1000 5000; do run 1-topic-100-partitions-1kb "$rate"; done
run max-rate-1-topic-100-partitions-1kb 0
$BENCH compare --out results/bench-compare-16p \
  results/bench-1-topic-16-partitions-1kb-{1000,5000,20000} results/bench-max-rate-1-topic-16-partitions-1kb-max
$BENCH compare --out results/bench-compare-100p \
  results/bench-1-topic-100-partitions-1kb-{1000,5000} results/bench-max-rate-1-topic-100-partitions-1kb-max
