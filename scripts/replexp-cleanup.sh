#!/usr/bin/env bash
# Remove what an interrupted `sluice-bench replication` left behind: its brokers (processes
# started inside its network namespaces, killed by PID), the namespaces (slx*ns*) and the
# bridges and veths (slx*). Needs root. Touches nothing it did not create.
set -euo pipefail
for ns in $(ip netns list | awk '{print $1}' | grep '^slx' || true); do
  for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
    echo "killing pid $pid in $ns"; kill -KILL "$pid" 2>/dev/null || true
  done
  ip netns del "$ns" && echo "removed namespace $ns"
done
for link in $(ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^slx' || true); do
  ip link del "$link" 2>/dev/null && echo "removed link $link" || true
done
