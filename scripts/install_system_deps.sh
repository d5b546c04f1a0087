#!/usr/bin/env bash
# Debian packages the test suite uses: dicom3tools (dciodvfy/dcentvfy validate every DICOM object we write),
# Chromium (headless: the HTML report test checks every figure loads),
# and Orthanc with its DICOMweb plugin (PACS round-trip tests; scripts/install_orthanc.sh).
# Installs only what is missing; needs root (or sudo) and Debian's package registry.
set -euo pipefail
pkgs=(dicom3tools chromium)
cmds=(dciodvfy chromium)
missing=()
for i in "${!pkgs[@]}"; do
  command -v "${cmds[$i]}" >/dev/null 2>&1 || missing+=("${pkgs[$i]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash "$(dirname "$0")/install_orthanc.sh"
