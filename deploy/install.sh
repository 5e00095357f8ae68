#!/usr/bin/env bash
# Installs xanesd system-wide: binaries to /usr/local/bin, the Python protocol module to
# /usr/local/lib/python3.X/dist-packages/xanesd (where Debian's python3 finds it), configs and
# references to /etc/xanesd, and the systemd unit.
# Idempotent; an existing /etc/xanesd/default.json is kept. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh
cmake --install build --prefix /usr/local
install -d /etc/xanesd
cp -rn config/references /etc/xanesd/ 2>/dev/null || true
[ -f /etc/xanesd/default.json ] || install -m 0644 config/default.json /etc/xanesd/default.json
id xanesd >/dev/null 2>&1 || useradd --system --home-dir /var/lib/xanesd --shell /usr/sbin/nologin xanesd
install -d -o xanesd -g xanesd /var/lib/xanesd /var/lib/xanesd/results
if [ -d /run/systemd/system ]; then
  install -m 0644 deploy/xanesd.service /etc/systemd/system/xanesd.service
  systemctl daemon-reload
  echo "installed; start with: systemctl enable --now xanesd"
else
  install -d /etc/systemd/system
  install -m 0644 deploy/xanesd.service /etc/systemd/system/xanesd.service
  echo "installed (no running systemd here: start xanesd by hand)"
fi
