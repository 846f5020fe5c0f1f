#!/usr/bin/env bash
# `make demo`: the whole flow on this machine, narrated. Starts its own Azurite and emulator (with
# the middleware's function app) on free ports; nothing is left running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/azurite.sh

echo "Building the emulator, the fleet tool and the middleware (the first build takes a few minutes)..."
cargo build --locked --quiet -p emulator -p handler -p device --bins

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
functions_app_args target/debug/handler
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

# The device: its setup portal and its telemetry sender, sharing a state directory. The sender
# waits until the portal has stored an assignment.
echo "Starting the device's programs: the setup portal and the telemetry sender..."
ca=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["caCertificatePath"])' "$state/endpoints.json")
dps_endpoint=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dps"]["deviceEndpoint"])' "$state/endpoints.json")
hub_ports=()
while read -r hub_port; do hub_ports+=(--hub-port "$hub_port"); done < <(python3 -c '
import json, sys
for hub in json.load(open(sys.argv[1]))["hubs"]:
    print(hub["hostName"] + "=" + str(hub["mqttPort"]))' "$state/endpoints.json")
target/debug/device-portal --listen 127.0.0.1:0 --state-dir "$state/device" --extra-ca-file "$ca" \
  --dps-endpoint "$dps_endpoint" --model TX-100 --serial SN-0001 --ready-file "$state/portal.addr" \
  >"$state/portal.log" 2>&1 &
portal_pid=$!
RUST_LOG=warn target/debug/telemetry-sender --state-dir "$state/device" --extra-ca-file "$ca" "${hub_ports[@]}" \
  --interval 2 --model TX-100 --serial SN-0001 --firmware 1.0.0 >"$state/sender.log" 2>&1 &
sender_pid=$!
for _ in $(seq 1 200); do [[ -s "$state/portal.addr" ]] && break; sleep 0.05; done
[[ -s "$state/portal.addr" ]] || { echo "The portal did not start:" >&2; cat "$state/portal.log" >&2; exit 1; }
echo
NOTIFY_WEBHOOK_SECRET=$webhook_secret target/debug/fleet --endpoints "$state/endpoints.json" demo \
  --webhook-port "$webhook_port" --portal-url "http://$(cat "$state/portal.addr")/"
