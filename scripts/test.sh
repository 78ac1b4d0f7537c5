#!/usr/bin/env bash
# The whole test suite: lints, Rust unit, property, simulation, crash and integration tests, the
# benchmark harness smoke run against a real broker, then the real-client tests (kcat,
# confluent-kafka, kafka-python) against the release broker: all of them on one broker, then the
# cluster_ci subset on a three-broker cluster with replication factor 3.
# It installs what it needs first (scripts/install-deps.sh: Debian packages such as kcat, which
# needs root or sudo when missing, and the Python clients in .venv), so it runs on a fresh
# Debian machine as it is. .ci/run is this script with CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== build"
cargo build --release --workspace --bins
echo "== rust tests"
# The bench smoke test must find and drive the broker binary built above, not skip.
SLUICE_SMOKE_REQUIRED=1 cargo test --release --workspace --no-fail-fast
echo "== real-client tests"
SLUICE_BIN="$PWD/target/release/sluice" .venv/bin/python -m pytest -q tests/clients
echo "== real-client tests on a three-broker RF-3 cluster (the cluster_ci subset, docs/testing.md)"
SLUICE_BIN="$PWD/target/release/sluice" SLUICE_TOPOLOGIES=cluster3 .venv/bin/python -m pytest -q -m cluster_ci tests/clients
