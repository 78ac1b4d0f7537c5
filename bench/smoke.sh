#!/usr/bin/env bash
# Smoke run of sluice-bench against a local single-node Sluice broker (a few seconds of load):
# starts target/release/sluice on a free 127.0.0.1 port, runs bench/workloads/smoke.toml,
# checks the output files, the reconciliation (sluice-bench exits non-zero on a mismatch) and
# the consumer group's partition ownership (one owner at a time),
# then stops the broker by its PID. `cargo test -p bench --test smoke` does the same from Rust
# when the binary exists; this script is for a shell-driven CI step.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p engine --bin sluice -p bench --bin sluice-bench
WORK=$(mktemp -d /tmp/sluice-smoke.XXXXXX)
BROKER_PID=""
cleanup() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/sluice --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log" >&2; exit 1; }
  sleep 0.1
done
timeout 120 target/release/sluice-bench run --no-progress --workload bench/workloads/smoke.toml \
  --bootstrap "127.0.0.1:$PORT" --name smoke --results-dir "$WORK/results" --broker-label "sluice smoke"
for f in summary.json publish.hgrm publish-uncorrected.hgrm e2e.hgrm timeseries.csv \
         latency-spectrum.svg latency-spectrum.png throughput.svg throughput.png; do
  [ -s "$WORK/results/smoke/$f" ] || { echo "missing or empty: $f" >&2; exit 1; }
done
grep -q '"ok": true' "$WORK/results/smoke/summary.json"
# smoke.toml runs in group mode (OMB's default): its two consumers form one group on four
# partitions; each partition must have had one owner at a time and every one an owner.
grep -q '"overlaps": \[\]' "$WORK/results/smoke/summary.json"
grep -q '"never_owned": \[\]' "$WORK/results/smoke/summary.json"
echo "smoke OK"
