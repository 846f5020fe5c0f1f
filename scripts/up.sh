#!/usr/bin/env bash
# `make up`: a long-running local emulator with durable state in .local/emulator, on Azure's
# ports when allowed (root), otherwise HTTPS on a free port; writes .local/endpoints.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

local_dir=.local
state=$local_dir/emulator
mkdir -p "$state"
if [[ -f $local_dir/emulator.pid ]] && kill -0 "$(cat $local_dir/emulator.pid)" 2>/dev/null; then
  echo "The emulator is already running (pid $(cat $local_dir/emulator.pid)); see $local_dir/endpoints.json."
  exit 0
fi
default_port=0
[[ $(id -u) -eq 0 ]] && default_port=443
https_port=${EMULATOR_HTTPS_PORT:-$default_port}
mqtt_port=${EMULATOR_MQTT_PORT:-8883}

cargo build --locked --quiet -p emulator --bins
rm -f "$state/endpoints.json"
nohup target/debug/emulator --state-dir "$state" --https-port "$https_port" --mqtt-port "$mqtt_port" \
  >"$state/emulator.log" 2>&1 &
pid=$!
echo "$pid" > "$local_dir/emulator.pid"
wait_ready "$state" "$pid"
python3 - "$state/endpoints.json" "$local_dir/endpoints.json" <<'PY'
import json, sys
emulator = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as out:
    json.dump({"emulator": emulator}, out, indent=2)
PY
chmod 600 "$local_dir/endpoints.json"
echo "The emulator is up (pid $pid). Endpoints: $local_dir/endpoints.json; log: $state/emulator.log"
echo "Trust its CA with NODE_EXTRA_CA_CERTS=$(cd "$state" && pwd)/ca.pem (Node) or the CA path in endpoints.json."
