#!/usr/bin/env bash
# Profile the broker while a sluice-bench workload runs, and write an SVG flamegraph.
#
#   scripts/flamegraph.sh [--pid PID] [--seconds N] [--out FILE] [-- sluice-bench run ARGS...]
#
# Without --pid, a release Sluice broker is started on a free 127.0.0.1 port with a temporary
# data directory, profiled, and stopped (by its PID) at the end; the workload's --bootstrap then
# defaults to it. With --pid, that process is profiled and the run ARGS must name its
# --bootstrap. Default workload: bench/workloads/1-topic-16-partitions-1kb.toml, 10 s.
#
# Needs perf (Debian: apt-get install linux-perf) and inferno (installed with
# `cargo install inferno` if missing). perf samples the software cpu-clock event, which works
# in VMs and containers without hardware counters, with DWARF call graphs (the release profile
# keeps debug info: `[profile.release] debug = 1`).
set -euo pipefail
cd "$(dirname "$0")/.."

PID=""
SECONDS_TO_PROFILE=10
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pid) PID="$2"; shift 2 ;;
    --seconds) SECONDS_TO_PROFILE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
RUN_ARGS=("$@")

if ! command -v perf >/dev/null 2>&1; then
  echo "perf not found: apt-get install linux-perf (Debian) or linux-tools-\$(uname -r) (Ubuntu)" >&2
  exit 1
fi
if ! command -v inferno-collapse-perf >/dev/null 2>&1 || ! command -v inferno-flamegraph >/dev/null 2>&1; then
  echo "== installing inferno (cargo install inferno)"
  cargo install --locked inferno
fi

cargo build --release -p bench --bin sluice-bench
WORK=$(mktemp -d /tmp/sluice-flamegraph.XXXXXX)
BROKER_PID=""
cleanup() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "$PID" ]; then
  cargo build --release -p engine --bin sluice
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  target/release/sluice --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/broker.log" 2>&1 &
  BROKER_PID=$!
  PID=$BROKER_PID
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  BOOTSTRAP=(--bootstrap "127.0.0.1:$PORT")
else
  BOOTSTRAP=()
fi
if [ ${#RUN_ARGS[@]} -eq 0 ]; then
  RUN_ARGS=(--workload bench/workloads/1-topic-16-partitions-1kb.toml --warmup 1 --duration "$SECONDS_TO_PROFILE")
fi
NAME="flamegraph-$(date -u +%Y%m%dT%H%M%SZ)"
OUT=${OUT:-results/$NAME.svg}
mkdir -p "$(dirname "$OUT")"

echo "== profiling pid $PID for $SECONDS_TO_PROFILE s"
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$PID" -o "$WORK/perf.data" \
  -- sleep "$SECONDS_TO_PROFILE" 2>"$WORK/perf.log" &
PERF_PID=$!
sleep 0.5
target/release/sluice-bench run --no-progress "${BOOTSTRAP[@]}" --name "$NAME" --allow-mismatch \
  --results-dir "$WORK/results" "${RUN_ARGS[@]}" || echo "workload exited with $?" >&2
wait "$PERF_PID" || { cat "$WORK/perf.log" >&2; exit 1; }

echo "== folding stacks"
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf >"$WORK/folded.txt"
inferno-flamegraph --title "sluice broker, pid $PID, ${SECONDS_TO_PROFILE}s" <"$WORK/folded.txt" >"$OUT"
echo "flamegraph: $OUT ($(wc -l <"$WORK/folded.txt") distinct stacks)"
