#!/usr/bin/env bash
# Installs Sluice as a systemd service on this host: builds the release binaries, creates the
# `sluice` system user, /etc/sluice/sluice.toml (kept if present) and /var/lib/sluice, runs
# `sluice check`, and enables the unit (it does not start it).
#
# Run as root from a checkout:  scripts/deploy/install.sh [--no-build]
#   --no-build   install target/release/{sluice,sluicectl} as they are
# Environment: PREFIX (default /usr/local), SLUICE_CONFIG (a config to install instead of
# sluice.example.toml, e.g. scripts/deploy/three-node/node1.toml).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
prefix="${PREFIX:-/usr/local}"
config_src="${SLUICE_CONFIG:-sluice.example.toml}"
if [ "$(id -u)" != 0 ]; then echo "install.sh: run as root" >&2; exit 1; fi
if [ ! -f "$config_src" ]; then echo "install.sh: no config at $config_src" >&2; exit 1; fi

if [ $build = 1 ]; then cargo build --release -p engine -p tools --bins; fi
if [ ! -x target/release/sluice ]; then
  echo "install.sh: target/release/sluice missing (build it or drop --no-build)" >&2; exit 1
fi
install -m 0755 target/release/sluice "$prefix/bin/sluice"
if [ -x target/release/sluicectl ]; then install -m 0755 target/release/sluicectl "$prefix/bin/sluicectl"; fi

if ! id sluice >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice
fi
install -d -o sluice -g sluice -m 0750 /var/lib/sluice /var/lib/sluice/data
install -d -m 0755 /etc/sluice
if [ ! -f /etc/sluice/sluice.toml ]; then
  # The data directory is always /var/lib/sluice/data (the unit's StateDirectory).
  sed 's|^log.dirs = .*|log.dirs = "/var/lib/sluice/data"|' "$config_src" > /etc/sluice/sluice.toml
  chmod 0644 /etc/sluice/sluice.toml
else
  echo "install.sh: keeping the existing /etc/sluice/sluice.toml"
fi

install -d -m 0755 /usr/share/doc/sluice/three-node
install -m 0644 docs/deployment.md docs/metrics.md /usr/share/doc/sluice/
install -m 0644 scripts/deploy/three-node/*.toml /usr/share/doc/sluice/three-node/

unit=/etc/systemd/system/sluice.service
sed "s|/usr/local/bin/sluice|$prefix/bin/sluice|g" scripts/deploy/sluice.service > "$unit"
chmod 0644 "$unit"
systemctl daemon-reload
systemctl enable sluice.service

echo "== host check (as the service will run it)"
"$prefix/bin/sluice" --config /etc/sluice/sluice.toml check || \
  echo "install.sh: fix the FAILED checks above before starting the broker" >&2
echo "installed: start with 'systemctl start sluice', logs with 'journalctl -u sluice -f'"
