#!/usr/bin/env bash
# The whole test suite: Rust unit/integration/property tests, then the real-client tests
# (kcat, confluent-kafka, kafka-python) against release builds of the broker.
# Needs the Python clients in .venv (see .ci/run, which installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
cargo test --release --workspace
if [ -d tests/clients ] && ls tests/clients/test_*.py >/dev/null 2>&1; then
  PY=${PYTHON:-.venv/bin/python}
  "$PY" -m pytest -q tests/clients
fi
