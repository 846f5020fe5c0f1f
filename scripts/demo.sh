#!/usr/bin/env bash
# `make demo`: the whole flow on this machine, narrated. Starts its own Azurite and emulator (with
# the middleware's function app) on free ports; nothing is left running afterwards. At the end it
# can stay up for a newcomer to try things (the portal, the dashboard, dpsctl) until Ctrl-C:
# with KEEP=1 (`make demo KEEP=1`), or when asked on a terminal. Without a terminal and without
# KEEP it stops at once (what the tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/azurite.sh

echo "Building the emulator, the fleet tool, the device, dpsctl and the middleware's package (the first build takes a few minutes)..."
cargo build --locked --quiet -p emulator -p device -p dpsctl --bins
# The function app runs from its package, as Azure would run it.
scripts/package.sh

state=$(mktemp -d)
cleanup() {
  for p in ${stay_pid:-} ${sender_pid:-} ${portal_pid:-} ${pid:-}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
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
  --webhook-port "$webhook_port" --portal-url "$DEVICE_PORTAL_URL" --dpsctl target/debug/dpsctl

case ${KEEP:-} in
  1 | y | yes | true) stay=yes ;;
  0 | n | no | false) stay=no ;;
  *)
    stay=no
    if [[ -t 0 && -t 1 ]]; then
      echo
      read -r -p "Keep everything running to try it yourself (until Ctrl-C)? [y/N] " answer || answer=
      [[ $answer =~ ^[Yy] ]] && stay=yes
    fi
    ;;
esac
[[ $stay == yes ]] || exit 0

# dpsctl's endpoints file for this run (the shape of make up's .local/endpoints.json).
endpoints=$state/dpsctl-endpoints.json
(
  umask 077
  python3 - "$state/endpoints.json" "$endpoints" <<'PY'
import json, sys
functions = json.load(open(sys.argv[1]))["functions"]
json.dump({"api": {"baseUrl": functions["baseUrl"], "functionKey": functions["functionKey"]}}, open(sys.argv[2], "w"))
PY
)
api=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"]["baseUrl"])' "$endpoints")
key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"]["functionKey"])' "$endpoints")
device=$(DPSCTL_ENDPOINTS=$endpoints target/debug/dpsctl list devices --output csv | sed -n 2p | cut -d, -f1)
device=${device:-<device id>}
# Ctrl-C ends the wait; the EXIT trap then stops everything this script started. The trap goes in
# before the text below: whoever reads "until you press Ctrl-C" may press it at once.
trap 'echo; echo "Stopping..."; exit 0' INT TERM
cat <<TEXT

Everything keeps running until you press Ctrl-C (this run's development keys only):
  the device's setup portal   $DEVICE_PORTAL_URL
  the fleet dashboard         $api/dashboard?code=$key
  the admin API               $api (its function key is in $endpoints)

Try dpsctl, the administrator's command line, from another terminal in $(pwd):
  export DPSCTL_ENDPOINTS=$endpoints
  target/debug/dpsctl list devices
  target/debug/dpsctl show $device
  target/debug/dpsctl desired $device telemetryIntervalSeconds=5
  target/debug/dpsctl command $device GetDiagnostics
  target/debug/dpsctl enroll my-device --customer contoso --serial SN-2 --model TX-100
  target/debug/dpsctl code my-device
TEXT
sleep infinity &
stay_pid=$!
wait "$stay_pid" || true
