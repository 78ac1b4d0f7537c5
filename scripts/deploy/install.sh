#!/usr/bin/env bash
# Installs Sluice as a systemd service on this host: builds the release binaries, creates the
# `sluice` system user, /etc/sluice/sluice.toml (kept if present) and /var/lib/sluice, and
# enables the unit. Run as root from a checkout: scripts/deploy/install.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=1
[ "${1:-}" = "--no-build" ] && build=0
if [ "$(id -u)" != 0 ]; then echo "install.sh: run as root" >&2; exit 1; fi
if [ $build = 1 ]; then cargo build --release -p engine -p tools --bins; fi
install -m 0755 target/release/sluice /usr/local/bin/sluice
if [ -x target/release/sluicectl ]; then install -m 0755 target/release/sluicectl /usr/local/bin/sluicectl; fi
if ! id sluice >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice
fi
install -d -o sluice -g sluice -m 0750 /var/lib/sluice
install -d -m 0755 /etc/sluice
if [ ! -f /etc/sluice/sluice.toml ]; then
  sed "s|^log.dirs = .*|log.dirs = \"/var/lib/sluice/data\"|" sluice.example.toml > /etc/sluice/sluice.toml
fi
install -D -m 0644 docs/deployment.md /usr/share/doc/sluice/deployment.md 2>/dev/null || true
install -m 0644 scripts/deploy/sluice.service /etc/systemd/system/sluice.service
systemctl daemon-reload
systemctl enable sluice.service
echo "installed: start with 'systemctl start sluice', logs with 'journalctl -u sluice -f'"
