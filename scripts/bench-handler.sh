#!/usr/bin/env bash
# The handler's part of `make bench`: start-up time, memory, enrollment create and device read
# rates at 16 clients next to Azurite's raw insert and point-read rates, events recorded per
# second next to Azurite's raw batch-insert rate, the fleet dashboard's page time over 10,000
# devices next to one page of the device list (all in the same run), the time from an event
# entering a hub to its record being readable, and a 10,000-row CSV import through the admin API
# next to DPS's bulk creates alone (the ceiling of that path).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/azurite.sh

cargo build --locked --release --quiet -p emulator -p handler -p bench --bins
state=$(mktemp -d)
cleanup() {
  if [[ -n "${pid:-}" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [[ -n "${AZURITE_PID:-}" ]]; then kill "$AZURITE_PID" 2>/dev/null || true; wait "$AZURITE_PID" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT
start_azurite "$state/azurite.log"
# The emulator runs the function app too, for the event-to-record latency at the end.
functions_app_args target/release/handler
target/release/emulator --state-dir "$state" --in-memory --https-port 0 --mqtt-port 0 \
  --registration-retry-after 0 --functions-port 0 "${FUNCTIONS_APP_ARGS[@]}" >"$state/emulator.log" 2>&1 &
pid=$!
wait_ready "$state" "$pid"
wait_host "$state"
echo "The handler against the emulator's DPS and Azurite $(node -e 'console.log(require("./emulator/azurite/node_modules/azurite/package.json").version)') in memory ($(nproc) cores, $(date -u +%Y-%m-%d)):"
target/release/handler-bench --endpoints "$state/endpoints.json" --storage "$AZURITE_CONNECTION_STRING" \
  --handler target/release/handler --devices "${BENCH_HANDLER_DEVICES:-1000}" --clients 16 \
  --dashboard-devices "${BENCH_DASHBOARD_DEVICES:-10000}"
echo
target/release/bench --endpoints "$state/endpoints.json" event-latency --samples "${BENCH_LATENCY_SAMPLES:-200}"
echo
target/release/bench --endpoints "$state/endpoints.json" import --rows "${BENCH_IMPORT_ROWS:-10000}" --batch 2000
# The same import against a DPS that admits what one Azure unit does: 1,000 service operations a
# minute (the import paces itself by DPS's Retry-After).
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
mkdir -p "$state/unit"
target/release/emulator --state-dir "$state/unit" --in-memory --https-port 0 --mqtt-port 0 \
  --registration-retry-after 0 --operation-rate 1000 --functions-port 0 "${FUNCTIONS_APP_ARGS[@]}" \
  >"$state/unit/emulator.log" 2>&1 &
pid=$!
wait_ready "$state/unit" "$pid"
wait_host "$state/unit"
echo
echo "With DPS admitting 1,000 service operations a minute (--operation-rate 1000, one Azure unit):"
target/release/bench --endpoints "$state/unit/endpoints.json" import --rows "${BENCH_IMPORT_ROWS:-10000}" --batch 2000
