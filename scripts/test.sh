#!/usr/bin/env bash
# The whole test suite: Rust unit, property, simulation, crash and integration tests, the
# benchmark harness smoke run against a real broker, then the real-client tests (kcat,
# confluent-kafka, kafka-python) against the release broker.
# Needs kcat (Debian package) on PATH; creates .venv with the Python clients if missing.
# .ci/run installs everything on a fresh Debian machine and then runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kcat >/dev/null || { echo "test.sh: kcat not found (apt-get install kcat, or run .ci/run)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
fi
cargo build --release --workspace --bins
# The bench smoke test must find and drive the broker binary built above, not skip.
SLUICE_SMOKE_REQUIRED=1 cargo test --release --workspace --no-fail-fast
SLUICE_BIN="$PWD/target/release/sluice" .venv/bin/python -m pytest -q tests/clients
