#!/usr/bin/env bash
# `make down`: stops what `make up` started, letting it save its state.
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile=.local/emulator.pid
if [[ ! -f $pidfile ]]; then
  echo "Nothing to stop."
  exit 0
fi
pid=$(cat "$pidfile")
if kill "$pid" 2>/dev/null; then
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
fi
rm -f "$pidfile"
echo "The emulator is stopped; its state stays in .local/emulator."
