#!/usr/bin/env bash
# `make down`: stops what `make up` started, letting each save its state.
set -euo pipefail
cd "$(dirname "$0")/.."

# stop NAME PIDFILE SIGNAL: asks the process to stop and waits (bounded) until it has.
stop() {
  local name=$1 pidfile=$2 signal=$3 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill "-$signal" "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    echo "Stopped $name."
  fi
  rm -f "$pidfile"
}

if [[ ! -f .local/emulator.pid && ! -f .local/azurite.pid ]]; then
  echo "Nothing to stop."
  exit 0
fi
stop "the device's telemetry sender" .local/sender.pid TERM
stop "the device's portal" .local/portal.pid INT
stop "the emulator and the function app" .local/emulator.pid TERM
# Azurite saves its data on SIGINT only; SIGTERM would lose what it has not flushed yet.
stop "Azurite" .local/azurite.pid INT
echo "State stays in .local/emulator, .local/azurite and .local/device."
