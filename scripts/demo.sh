#!/usr/bin/env bash
# `make demo`: the whole flow on this machine, narrated. Starts its own Azurite and emulator (with
# the middleware's function app) on free ports; nothing is left running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/azurite.sh

echo "Building the emulator, the fleet tool, the device and the middleware's package (the first build takes a few minutes)..."
cargo build --locked --quiet -p emulator -p device --bins
# The function app runs from its package, as Azure would run it.
scripts/package.sh

state=$(mktemp -d)
cleanup() {
  for p in ${sender_pid:-} ${portal_pid:-} ${pid:-}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [[ -n "${AZURITE_PID:-}" ]]; then kill "$AZURITE_PID" 2>/dev/null || true; wait "$AZURITE_PID" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT

echo "Starting Azurite (Table Storage for the middleware's registry)..."
start_azurite "$state/azurite.log"
echo "Starting the local Azure emulator: a Device Provisioning Service, two IoT hubs, and the"
echo "Functions host stand-in running the middleware's function app..."
package_app_args dist/function-app
# The demo receives the middleware's status notifications itself, where a Logic App would.
webhook_port=$(free_port)
webhook_secret=demo-webhook-secret-for-this-run-$RANDOM$RANDOM
target/debug/emulator --state-dir "$state" --in-memory --https-port 0 --mqtt-port 0 \
  --functions-port 0 "${FUNCTIONS_APP_ARGS[@]}" \
  --functions-setting "NOTIFY_WEBHOOK_URL=http://127.0.0.1:$webhook_port/notifications" \
  --functions-setting "NOTIFY_WEBHOOK_SECRET=$webhook_secret" >"$state/emulator.log" 2>&1 &
pid=$!
wait_ready "$state" "$pid"
wait_host "$state"

echo "Starting the device's programs: the setup portal and the telemetry sender..."
start_device "$state" "$state/device" target/debug
portal_pid=$DEVICE_PORTAL_PID
sender_pid=$DEVICE_SENDER_PID
echo
NOTIFY_WEBHOOK_SECRET=$webhook_secret target/debug/fleet --endpoints "$state/endpoints.json" demo \
  --webhook-port "$webhook_port" --portal-url "$DEVICE_PORTAL_URL"
