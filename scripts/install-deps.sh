#!/usr/bin/env bash
# Installs what the test suite needs on a Debian/Ubuntu machine, and does nothing when it is all
# there already: Debian packages (kcat, the netns tools, plotters' font libraries...), the
# Python test clients in .venv. Called by scripts/test.sh (the README's test command) and so by
# .ci/run. Needs root or sudo only when a Debian package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# kcat (Debian's, linked to librdkafka 2.0.2): the old-client compatibility target.
# pkg-config/libfontconfig1-dev: plotters' font rendering. iproute2/iptables: netns tests.
# systemd: systemd-analyze verify of the unit. python3-venv: the client suite's venv.
# openssl: test certificates for the TLS tests. iperf3: the loopback limit `sluice-bench perf`
# measures (bench/tests/perf.rs).
DEB_PACKAGES=(kcat pkg-config libfontconfig1-dev python3-venv iproute2 iptables systemd openssl iperf3)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python clients, pinned by tests/requirements.txt; reinstalled when the file changes.
stamp=.venv/.requirements.sha256
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing python test clients into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
  echo "$want" > "$stamp"
fi
