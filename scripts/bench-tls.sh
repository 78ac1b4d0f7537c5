#!/usr/bin/env bash
# The cost of TLS (issue 15), measured with sluice-bench in one run: one broker with three
# listeners (PLAINTEXT, SSL, SASL_SSL with SCRAM-SHA-256), the same workload over each,
# rounds interleaved (plaintext, SSL, SASL_SSL, plaintext, ...), a max-rate run and a
# fixed-rate run per listener per round. Per run: sluice-bench's summary.json and .hgrm, and
# the broker's CPU seconds during the run (utime+stime from /proc). At the end a table
# (table.md) and the broker's data directory, certificates and key files are deleted.
#
# Usage: scripts/bench-tls.sh OUT_DIR [ROUNDS]
# Env: SLUICE_BIN, BENCH_BIN (default target/release/...), WORK (scratch dir, default
# /tmp/sluice-bench-tls), DURATION, WARMUP (seconds), RATE (fixed-rate msgs/s), PARTITIONS,
# MESSAGE_SIZE, SHARDS, THREADS (harness), WARM_MIB (RAM warm-up file, 0 to skip).
set -euo pipefail

out=${1:?usage: scripts/bench-tls.sh OUT_DIR [ROUNDS]}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
sluice=${SLUICE_BIN:-$target/release/sluice}
bench=${BENCH_BIN:-$target/release/sluice-bench}
work=${WORK:-/tmp/sluice-bench-tls}
duration=${DURATION:-10}
warmup=${WARMUP:-2}
rate=${RATE:-5000}
partitions=${PARTITIONS:-4}
message_size=${MESSAGE_SIZE:-1024}
shards=${SHARDS:-1}
threads=${THREADS:-1}
warm_mib=${WARM_MIB:-4000}

for b in "$sluice" "$bench"; do
    [[ -x $b ]] || { echo "$b not built: cargo build --release -p engine --bin sluice -p bench" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$work"
mkdir -p "$work/certs"
broker_pid=
cleanup() {
    if [[ -n $broker_pid ]] && kill -0 "$broker_pid" 2>/dev/null; then
        kill "$broker_pid"
        wait "$broker_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Fresh VM memory is slow on first touch: write and delete a large file first.
if (( warm_mib > 0 )); then
    echo "warming RAM: ${warm_mib} MiB through the page cache"
    dd if=/dev/zero of="$work/warm" bs=1M count="$warm_mib" status=none
    rm -f "$work/warm"
fi

# A throwaway CA and a server certificate for 127.0.0.1, as tests/clients/test_security.py
# makes them (deleted with $work).
(
    cd "$work/certs"
    ossl() { openssl "$@" >/dev/null 2>&1; }
    ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
        -subj /CN=bench-ca -days 2
    ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
        -subj /CN=localhost
    echo "subjectAltName=IP:127.0.0.1,DNS:localhost" > server.ext
    ossl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
        -days 2 -extfile server.ext
    cat server.key server.pem > server.keystore.pem
)

# Three free ports below the ephemeral range.
read -r p_plain p_ssl p_sasl < <(python3 - <<'EOF'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
while len(ports) < 3:
    p = random.randrange(20000, lo)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    if p not in ports:
        ports.append(p)
print(*ports)
EOF
)

user=bench
password=bench-secret-$RANDOM$RANDOM
"$sluice" format --data-dir "$work/data" --add-scram "SCRAM-SHA-256=[name=$user,password=$password]" >/dev/null
RUST_LOG=warn "$sluice" --data-dir "$work/data" --shards "$shards" \
    --set "listeners=PLAINTEXT://127.0.0.1:$p_plain,SSL://127.0.0.1:$p_ssl,SASL_SSL://127.0.0.1:$p_sasl" \
    --set "ssl.keystore.location=$work/certs/server.keystore.pem" \
    --set "ssl.truststore.location=$work/certs/ca.pem" \
    --set "sasl.enabled.mechanisms=SCRAM-SHA-256" \
    > "$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p_plain") 2>/dev/null && break
    sleep 0.2
done

broker_cpu() { # utime+stime of the broker, seconds
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$broker_pid/stat"
}

security_args() {
    case $1 in
        plaintext) echo "--bootstrap 127.0.0.1:$p_plain" ;;
        ssl) echo "--bootstrap 127.0.0.1:$p_ssl -X security.protocol=SSL -X ssl.ca.location=$work/certs/ca.pem" ;;
        sasl_ssl) echo "--bootstrap 127.0.0.1:$p_sasl -X security.protocol=SASL_SSL -X ssl.ca.location=$work/certs/ca.pem -X sasl.mechanism=SCRAM-SHA-256 -X sasl.username=$user -X sasl.password=$password" ;;
    esac
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- engine bench || echo -dirty)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
    echo "broker: $sluice --shards $shards; harness: $bench --threads $threads"
    echo "workload: 1 topic, $partitions partitions, $message_size B messages, 1 producer, 1 consumer (group), acks=1, warm-up $warmup s, measured $duration s; max rate (closed loop) and $rate msg/s"
} | tee "$out/run.txt"

for round in $(seq "$rounds"); do
    for mode in plaintext ssl sasl_ssl; do
        for load in max "$rate"; do
            name="r$round-$mode-$load"
            r=$load; [[ $load == max ]] && r=0
            load_avg=$(cut -d' ' -f1 /proc/loadavg)
            cpu0=$(broker_cpu)
            # shellcheck disable=SC2046  # the security flags are words on purpose
            "$bench" run --no-progress --threads "$threads" --rate "$r" --partitions "$partitions" \
                --message-size "$message_size" --producers 1 --consumers 1 --acks 1 \
                --duration "$duration" --warmup "$warmup" --broker-label "sluice $mode" \
                --name "$name" --results-dir "$out" $(security_args "$mode") > "$out/$name.txt"
            cpu1=$(broker_cpu)
            echo "$name load_avg=$load_avg broker_cpu_s=$(echo "$cpu1 - $cpu0" | bc)" | tee -a "$out/run.txt"
            # Plots are regenerated from the .hgrm and timeseries; keep the repository small.
            rm -f "$out/$name"/*.png "$out/$name"/*.svg
        done
    done
done

python3 - "$out" <<'EOF'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
cpu = {}
for line in (out / "run.txt").read_text().splitlines():
    m = re.match(r"(\S+) load_avg=(\S+) broker_cpu_s=(\S+)", line)
    if m:
        cpu[m.group(1)] = (float(m.group(2)), float(m.group(3)))
rows = ["| run | load avg | publish msg/s | publish MB/s | consume MB/s | publish p50 / p99 / p99.9 ms | e2e p50 / p99 / p99.9 ms | broker CPU-s per GB (approx.) | harness cores |",
        "|---|---|---|---|---|---|---|---|---|"]
for d in sorted(p for p in out.iterdir() if (p / "summary.json").exists()):
    s = json.loads((d / "summary.json").read_text())
    r = s["rates"]
    pl, e2e = s["publish_latency_us"], s["e2e_latency_us"]
    ms = lambda p, k: f"{p[k] / 1000:.2f}"
    la, c = cpu.get(d.name, (float("nan"), float("nan")))
    # The broker's CPU is counted over the whole run (topic creation, warm-up, window, drain);
    # the bytes over warm-up + window at the window's rates: a per-run approximation, the same
    # for every listener.
    secs = r["window_seconds"] + (s["workload"].get("warmupDurationSeconds") or 0)
    gb = (r["publish_mb_per_sec"] + r["consume_mb_per_sec"]) * secs / 1000
    rows.append(f"| {d.name} | {la} | {r['publish_msgs_per_sec']:.0f} | {r['publish_mb_per_sec']:.1f} | {r['consume_mb_per_sec']:.1f} | "
                f"{ms(pl,'p50')} / {ms(pl,'p99')} / {ms(pl,'p999')} | {ms(e2e,'p50')} / {ms(e2e,'p99')} / {ms(e2e,'p999')} | "
                f"{c / gb if gb else float('nan'):.1f} | {r.get('harness_cpu_cores', float('nan')):.2f} |")
    if not s["reconciliation"]["ok"]:
        rows[-1] += " RECONCILIATION FAILED"
(out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
