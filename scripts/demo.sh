#!/usr/bin/env bash
# `make demo`: the provisioning flow on this machine, narrated. Starts its own emulator on free
# ports (no root needed, nothing left running afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

echo "Building the emulator and the fleet tool (the first build takes a few minutes)..."
cargo build --locked --quiet -p emulator --bins

state=$(mktemp -d)
cleanup() {
  if [[ -n "${pid:-}" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT

# A sample function app (event-recorder as its handler) receives the hubs' events, as the
# middleware will.
app=$state/app
cp -r emulator/sample-app "$app"
cp target/debug/event-recorder "$app/event-recorder"

echo "Starting the local Azure emulator: a Device Provisioning Service, two IoT hubs,"
echo "and the Functions host stand-in running a sample function app..."
target/debug/emulator --state-dir "$state" --in-memory --https-port 0 --mqtt-port 0 \
  --functions-app "$app" --functions-port 0 >"$state/emulator.log" 2>&1 &
pid=$!
wait_ready "$state" "$pid"
echo
target/debug/fleet --endpoints "$state/endpoints.json" demo --events-log "$app/invocations.jsonl"
