#!/usr/bin/env bash
# Install Orthanc + its DICOMweb plugin (Debian packages) when missing; used by the PACS integration tests.
# Needs root (or sudo). The packages' systemd service is not needed by the tests: they start their own
# loopback-only Orthanc as an unprivileged user with a temporary configuration.
set -euo pipefail
PKGS=(orthanc orthanc-dicomweb)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "orthanc and orthanc-dicomweb already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "need root to install ${missing[*]} (run: apt-get install -y ${missing[*]})" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Do not leave the packaged service listening on all interfaces (ports 4242/8042).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
  $SUDO systemctl stop orthanc || true
  $SUDO systemctl disable orthanc || true
fi
# Without systemd (containers), the init script may have started it; stop that copy too.
if pgrep -x Orthanc >/dev/null 2>&1; then
  $SUDO service orthanc stop >/dev/null 2>&1 || $SUDO pkill -x Orthanc || true
fi
echo "installed: ${missing[*]}"
