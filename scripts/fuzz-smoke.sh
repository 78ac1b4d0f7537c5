#!/usr/bin/env bash
# Builds every cargo-fuzz target (fuzz/, nightly) and runs each for a few seconds from its
# committed corpus (fuzz/corpus/<target>/). Exits non-zero if a target crashes (the crashing
# input is left in fuzz/artifacts/<target>/). Installs cargo-fuzz from crates.io if missing.
# Env: FUZZ_SECONDS (per target, default 5), FUZZ_TARGETS (space-separated subset).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-5}"
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz build -O
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
failed=()
for t in $targets; do
  # Run on a scratch copy: new inputs the fuzzer finds must not grow the committed corpus.
  work="$(mktemp -d)"
  cp -r "fuzz/corpus/$t/." "$work/" 2>/dev/null || true
  echo "fuzz-smoke: $t for ${SECONDS_PER_TARGET}s"
  if ! cargo +nightly fuzz run -O "$t" "$work" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 \
      >"$work.log" 2>&1; then
    failed+=("$t")
    tail -n 60 "$work.log" >&2
  else
    grep -E '^(stat::number_of_executed_units|Done)' "$work.log" | tr '\n' ' '
    echo
  fi
  rm -rf "$work" "$work.log"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz-smoke: every target ran ${SECONDS_PER_TARGET}s without a crash"
