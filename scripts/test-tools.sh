#!/usr/bin/env bash
# test-tools.sh [TOOL...]: makes sure the Debian packages the tests and lints drive are
# installed: Chromium and ChromeDriver (the portal's browser tests), strace (the package test
# watches which files the packaged handler opens), tmux (dpsctl's import is watched in a real
# terminal) and ShellCheck (`make lint` checks the scripts); only the TOOLs named, when given.
# Installs what is missing when this runs as root (as CI does); otherwise says what to install.
set -euo pipefail
# Each command and the Debian package that has it.
declare -A package=([chromium]=chromium [chromedriver]=chromium-driver [strace]=strace [tmux]=tmux [shellcheck]=shellcheck)
tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(chromium chromedriver strace tmux shellcheck)
missing=()
for tool in "${tools[@]}"; do
  [[ -n ${package[$tool]:-} ]] || { echo "test-tools.sh: unknown tool $tool" >&2; exit 2; }
  command -v "$tool" >/dev/null || missing+=("${package[$tool]}")
done
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
echo "These Debian packages are needed: sudo apt-get install ${missing[*]}" >&2
exit 1
