# shellcheck shell=bash
# The variables this sets are read by the scripts that source it.
# shellcheck disable=SC2034
# Shared by the scripts: start an emulator and wait for its readiness signal.

# wait_ready STATE_DIR PID: waits (bounded) until STATE_DIR/endpoints.json exists, which the
# emulator writes once every listener is bound.
wait_ready() {
  local state=$1 pid=$2
  for _ in $(seq 1 600); do
    [[ -s "$state/endpoints.json" ]] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "The emulator stopped during start-up:" >&2
      cat "$state/emulator.log" >&2 || true
      return 1
    fi
    sleep 0.05
  done
  echo "The emulator did not become ready within 30 s; its log:" >&2
  cat "$state/emulator.log" >&2 || true
  return 1
}

# package_app_args APP_DIR: the emulator options that run the packaged function app in APP_DIR
# (dist/function-app, from scripts/package.sh) in the Functions host stand-in, as Azure runs it:
# the host starts the app's own `handler`. The package holds no settings (in Azure they are app
# settings), so local.settings.json's development values are passed along, then the ones pointing
# at the emulator itself and at the Azurite of AZURITE_CONNECTION_STRING. Sets the array
# FUNCTIONS_APP_ARGS.
package_app_args() {
  local app=$1
  if [[ ! -f $app/host.json || ! -x $app/handler ]]; then
    echo "$app holds no packaged function app (host.json and handler): run \`make package\`" >&2
    return 1
  fi
  FUNCTIONS_APP_ARGS=(--functions-app "$app")
  local arg
  while IFS= read -r -d '' arg; do FUNCTIONS_APP_ARGS+=("$arg"); done < <(python3 -c '
import json, sys
for name, value in json.load(open("local.settings.json"))["Values"].items():
    sys.stdout.write("--functions-setting\0%s=%s\0" % (name, value if isinstance(value, str) else json.dumps(value)))')
  emulator_settings
}

# functions_app_args HANDLER: like package_app_args, for the app in the repository's source
# layout with the HANDLER binary instead of a package (the benchmarks' release build).
functions_app_args() {
  FUNCTIONS_APP_ARGS=(--functions-app . --functions-executable "$1")
  emulator_settings
}

# emulator_settings: appends to FUNCTIONS_APP_ARGS the settings that point the handler at the
# emulator's DPS, hubs and event hub and at the Azurite of AZURITE_CONNECTION_STRING, and the
# hubs' routes of infra/.
emulator_settings() {
  FUNCTIONS_APP_ARGS+=(
    --functions-setting 'DPS_SERVICE_CONNECTION_STRING={dps.serviceConnectionString}'
    --functions-setting 'DPS_ID_SCOPE={dps.idScope}'
    --functions-setting 'DPS_DEVICE_ENDPOINT={dps.deviceEndpoint}'
    --functions-setting 'IOTHUB_CONNECTION_STRINGS={hubs.0.connectionString}|{hubs.1.connectionString}'
    --functions-setting 'EXTRA_TRUSTED_CA_FILE={caCertificatePath}'
    --functions-setting "AzureWebJobsStorage=$AZURITE_CONNECTION_STRING"
    --functions-setting 'REGISTRY_EVENTS={eventHubs.connectionString}'
    # The hubs route as infra/ deploys them: lifecycle, twin-change and connection-state events
    # to the registry's event hub only; telemetry stays on the built-in endpoint (fallback).
    --route DeviceLifecycleEvents=hub-events
    --route TwinChangeEvents=hub-events
    --route DeviceConnectionStateEvents=hub-events
  )
}

# wait_host STATE_DIR: waits (bounded) until the Functions host stand-in reports its handler
# running.
wait_host() {
  local url
  url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["functions"]["statusUrl"])' "$1/endpoints.json")
  for _ in $(seq 1 200); do
    curl -fsS "$url" 2>/dev/null | grep -q '"Running"' && return 0
    sleep 0.05
  done
  echo "The function app's handler did not start within 10 s; the emulator's log:" >&2
  cat "$1/emulator.log" >&2 || true
  return 1
}

# start_device EMULATOR_STATE DEVICE_DIR BIN_DIR: starts the device's setup portal (a free port on
# 127.0.0.1) and its telemetry sender, sharing DEVICE_DIR, trusting the emulator's CA. Sets
# DEVICE_PORTAL_PID, DEVICE_SENDER_PID and DEVICE_PORTAL_URL. The sender waits until the portal
# has stored an assignment.
start_device() {
  local emulator_state=$1 device_dir=$2 bin=$3 ca dps_endpoint
  mkdir -p "$device_dir"
  ca=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["caCertificatePath"])' "$emulator_state/endpoints.json")
  dps_endpoint=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dps"]["deviceEndpoint"])' "$emulator_state/endpoints.json")
  local hub_ports=()
  while read -r hub_port; do hub_ports+=(--hub-port "$hub_port"); done < <(python3 -c '
import json, sys
for hub in json.load(open(sys.argv[1]))["hubs"]:
    print(hub["hostName"] + "=" + str(hub["mqttPort"]))' "$emulator_state/endpoints.json")
  rm -f "$device_dir/portal.addr"
  "$bin/device" portal --listen "${PORTAL_LISTEN:-127.0.0.1:0}" --state-dir "$device_dir" --extra-ca-file "$ca" \
    --dps-endpoint "$dps_endpoint" --model TX-100 --serial SN-0001 --ready-file "$device_dir/portal.addr" \
    >"$device_dir/portal.log" 2>&1 &
  DEVICE_PORTAL_PID=$!
  RUST_LOG=${SENDER_LOG:-warn} "$bin/device" sender --state-dir "$device_dir" --extra-ca-file "$ca" "${hub_ports[@]}" \
    --interval 2 --model TX-100 --serial SN-0001 --firmware 1.0.0 >"$device_dir/sender.log" 2>&1 &
  DEVICE_SENDER_PID=$!
  for _ in $(seq 1 200); do [[ -s "$device_dir/portal.addr" ]] && break; sleep 0.05; done
  if [[ ! -s "$device_dir/portal.addr" ]]; then
    echo "The device's portal did not start:" >&2
    cat "$device_dir/portal.log" >&2
    return 1
  fi
  DEVICE_PORTAL_URL="http://$(cat "$device_dir/portal.addr")/"
}
