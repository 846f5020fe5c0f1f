#!/usr/bin/env bash
# Makes sure Debian's Chromium and ChromeDriver are installed: the portal's browser tests drive
# them. Installs the two packages when missing and this runs as root (as CI does); otherwise says
# what to install.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "Installing Chromium and ChromeDriver (Debian packages) for the portal's browser tests..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium chromium-driver >/dev/null
  }
  exit 0
fi
echo "The browser tests need Chromium and ChromeDriver: sudo apt-get install chromium chromium-driver" >&2
exit 1
