#!/usr/bin/env bash
# `make up`: the local stack in the background: Azurite (Table Storage, data in .local/azurite),
# the emulator (DPS, two hubs; state in .local/emulator) and its Functions host stand-in on 7071
# running the middleware from its package (dist/function-app, built by scripts/package.sh), and a
# device (its setup portal, 8080 when free, and its telemetry sender; state in .local/device).
# Azure's ports when allowed (root), otherwise HTTPS on a free port.
# Writes .local/endpoints.json (see docs/local-development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/azurite.sh

local_dir=.local
state=$local_dir/emulator
mkdir -p "$state" "$local_dir/azurite"
if [[ -f $local_dir/emulator.pid ]] && kill -0 "$(cat $local_dir/emulator.pid)" 2>/dev/null; then
  echo "The stack is already running; see $local_dir/endpoints.json (make down stops it)."
  exit 0
fi
default_port=0
[[ $(id -u) -eq 0 ]] && default_port=443
https_port=${EMULATOR_HTTPS_PORT:-$default_port}
mqtt_port=${EMULATOR_MQTT_PORT:-8883}
functions_port=${FUNCTIONS_PORT:-7071}

cargo build --locked --quiet -p emulator -p device --bins
# The function app runs from its package, as Azure would run it.
scripts/package.sh

# Azurite's usual port when it is free, so tools that assume it (UseDevelopmentStorage=true) work.
azurite_port=${AZURITE_TABLE_PORT:-10002}
if ! python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$azurite_port" 2>/dev/null; then
  azurite_port=$(free_port)
fi
start_azurite "$local_dir/azurite.log" "$azurite_port" "$local_dir/azurite"
echo "$AZURITE_PID" > "$local_dir/azurite.pid"

rm -f "$state/endpoints.json"
package_app_args dist/function-app
nohup target/debug/emulator --state-dir "$state" --https-port "$https_port" --mqtt-port "$mqtt_port" \
  --functions-port "$functions_port" "${FUNCTIONS_APP_ARGS[@]}" >"$state/emulator.log" 2>&1 &
pid=$!
echo "$pid" > "$local_dir/emulator.pid"
wait_ready "$state" "$pid"
wait_host "$state"
# The device: its portal on 8080 when free, and its telemetry sender.
portal_port=${PORTAL_PORT:-8080}
python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$portal_port" 2>/dev/null || portal_port=0
PORTAL_LISTEN=127.0.0.1:$portal_port start_device "$state" "$local_dir/device" target/debug
echo "$DEVICE_PORTAL_PID" > "$local_dir/portal.pid"
echo "$DEVICE_SENDER_PID" > "$local_dir/sender.pid"
# readerKey: a function key of the read-only functions only (functions/readers.json), made
# through the stand-in's admin keys API with its master key; kept across runs.
python3 - "$state/endpoints.json" "$local_dir/endpoints.json" "$AZURITE_CONNECTION_STRING" "$DEVICE_PORTAL_URL" <<'PY'
import json, os, sys
os.umask(0o077)  # endpoints.json holds keys: readable by us only from the start
sys.path.insert(0, "scripts")
import reader_key
emulator = json.load(open(sys.argv[1]))
functions = emulator.pop("functions")
root = functions["baseUrl"].rsplit("/", 1)[0]
try:
    reader = reader_key.ensure(root, functions["masterKey"], "functions/readers.json")
except reader_key.ReaderKeyError as error:
    sys.exit(f"up: {error}")
with open(sys.argv[2], "w") as out:
    json.dump({
        "api": {"baseUrl": functions["baseUrl"], "functionKey": functions["functionKey"],
                "readerKey": reader},
        "portal": {"url": sys.argv[4]},
        "storage": {"connectionString": sys.argv[3]},
        "emulator": emulator,
    }, out, indent=2)
PY
chmod 600 "$local_dir/endpoints.json"
echo "The stack is up: admin API $(python3 -c 'import json; print(json.load(open(".local/endpoints.json"))["api"]["baseUrl"])'), device portal $DEVICE_PORTAL_URL"
echo "Endpoints and keys: $local_dir/endpoints.json; logs: $state/emulator.log, $local_dir/azurite.log"
echo "Trust the emulator's CA with NODE_EXTRA_CA_CERTS=$(cd "$state" && pwd)/ca.pem (Node) or the CA path in endpoints.json."
