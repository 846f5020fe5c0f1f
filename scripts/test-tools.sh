#!/usr/bin/env bash
# Makes sure the Debian packages the tests drive are installed: Chromium and ChromeDriver (the
# portal's browser tests), strace (the package test watches which files the packaged handler
# opens) and tmux (dpsctl's import is watched in a real terminal). Installs what is missing
# when this runs as root (as CI does); otherwise says what to
# install.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v strace >/dev/null || missing+=(strace)
command -v tmux >/dev/null || missing+=(tmux)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "Installing ${missing[*]} (Debian packages) for the tests..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  }
  exit 0
fi
echo "The tests need these Debian packages: sudo apt-get install ${missing[*]}" >&2
exit 1
