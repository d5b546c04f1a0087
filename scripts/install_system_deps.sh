#!/usr/bin/env bash
# Debian packages the test suite uses: dicom3tools (dciodvfy/dcentvfy validate every DICOM object we write).
# Installs only what is missing; needs root (or sudo) and Debian's package registry.
set -euo pipefail
pkgs=(dicom3tools)
cmds=(dciodvfy)
missing=()
for i in "${!pkgs[@]}"; do
  command -v "${cmds[$i]}" >/dev/null 2>&1 || missing+=("${pkgs[$i]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
