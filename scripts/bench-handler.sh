#!/usr/bin/env bash
# The handler's part of `make bench`: start-up time, memory, enrollment create and device read
# rates at 16 clients, next to Azurite's raw insert and point-read rates in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/azurite.sh

cargo build --locked --release --quiet -p emulator -p handler --bins
state=$(mktemp -d)
cleanup() {
  if [[ -n "${pid:-}" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [[ -n "${AZURITE_PID:-}" ]]; then kill "$AZURITE_PID" 2>/dev/null || true; wait "$AZURITE_PID" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT
start_azurite "$state/azurite.log"
target/release/emulator --state-dir "$state" --in-memory --https-port 0 --mqtt-port 0 >"$state/emulator.log" 2>&1 &
pid=$!
wait_ready "$state" "$pid"
echo "The handler against the emulator's DPS and Azurite $(node -e 'console.log(require("./emulator/azurite/node_modules/azurite/package.json").version)') in memory ($(nproc) cores, $(date -u +%Y-%m-%d)):"
target/release/handler-bench --endpoints "$state/endpoints.json" --storage "$AZURITE_CONNECTION_STRING" \
  --handler target/release/handler --devices "${BENCH_HANDLER_DEVICES:-1000}" --clients 16
