# shellcheck shell=bash
# The variables this sets are read by the scripts that source it.
# shellcheck disable=SC2034
# Sourced by the scripts: start Azurite's Table service from the committed lockfile.

AZURITE_DIR=emulator/azurite

# ensure_azurite: installs Azurite from emulator/azurite/package-lock.json (once).
ensure_azurite() {
  if [[ ! -f $AZURITE_DIR/node_modules/.installed || $AZURITE_DIR/package-lock.json -nt $AZURITE_DIR/node_modules/.installed ]]; then
    (cd "$AZURITE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$AZURITE_DIR/node_modules/.installed"
  fi
}

# free_port: a TCP port nobody listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# The development account every Azurite serves (public, like the emulator's development keys).
AZURITE_ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

# start_azurite LOG [PORT] [DATA_DIR]: starts the Table service (in memory unless DATA_DIR is
# given), telemetry off, and waits until it is listening. Sets AZURITE_PID,
# AZURITE_TABLE_ENDPOINT and AZURITE_CONNECTION_STRING.
start_azurite() {
  local log=$1 port=${2:-} data=${3:-}
  ensure_azurite
  [[ -n $port ]] || port=$(free_port)
  local persistence=(--inMemoryPersistence)
  [[ -n $data ]] && persistence=(--location "$data")
  "$AZURITE_DIR/node_modules/.bin/azurite-table" "${persistence[@]}" --disableTelemetry --silent \
    --tableHost 127.0.0.1 --tablePort "$port" >"$log" 2>&1 &
  AZURITE_PID=$!
  AZURITE_TABLE_ENDPOINT="http://127.0.0.1:$port/devstoreaccount1"
  AZURITE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$AZURITE_ACCOUNT_KEY;TableEndpoint=$AZURITE_TABLE_ENDPOINT"
  export AZURITE_TABLE_ENDPOINT
  for _ in $(seq 1 200); do
    if grep -q "successfully started" "$log" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$AZURITE_PID" 2>/dev/null; then
      echo "Azurite stopped during start-up:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "Azurite did not start within 10 s:" >&2
  cat "$log" >&2
  return 1
}
