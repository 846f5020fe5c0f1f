#!/usr/bin/env bash
# `make bench`: DPS registrations per second over HTTPS and MQTT for 1,000 distinct devices each
# and the emulator's peak memory; hub connections and telemetry next to Mosquitto; the handler next
# to Azurite (scripts/bench-handler.sh); provisioning storms and a soak (scripts/bench-storm.sh).
# Every reference is measured in the same run.
# Figures are recorded by hand in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
devices=${BENCH_DEVICES:-1000}
concurrency=${BENCH_CONCURRENCY:-64}

cargo build --locked --release --quiet -p emulator -p bench --bins
state=$(mktemp -d)
cleanup() {
  if [[ -n "${pid:-}" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT
target/release/emulator --state-dir "$state" --in-memory --https-port 0 --mqtt-port 0 \
  --registration-retry-after 0 >"$state/emulator.log" 2>&1 &
pid=$!
wait_ready "$state" "$pid"
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")

echo "DPS registrations, $devices devices per transport, $concurrency in flight ($(nproc) cores, $(date -u +%Y-%m-%d)):"
target/release/bench --endpoints "$state/endpoints.json" dps --devices "$devices" --concurrency "$concurrency"
peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
echo
echo "Emulator memory: ${idle_rss} KiB resident when idle, peak ${peak_rss} KiB during the run."

# ----- IoT Hub: device connections and telemetry, next to Mosquitto serving the same load -----
if ! command -v mosquitto >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing Mosquitto (Debian package) as the reference broker..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  else
    echo "The hub benchmark needs Mosquitto as its reference: apt-get install mosquitto" >&2
    exit 1
  fi
fi
broker_address=127.0.0.5
messages=${BENCH_MESSAGES:-20}
echo
echo "IoT Hub: N devices connected over TLS, then $messages QoS 1 messages each (10 in flight per connection),"
echo "next to Mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') serving the same load over TLS:"
echo "| server | connections | connect time | memory per connection | messages/s | messages | peak RSS |"
echo "|---|---|---|---|---|---|---|"
for n in ${BENCH_CONNECTIONS:-1000 10000}; do
  # A fresh emulator per size, so memory readings start from the same place.
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  rm -rf "$state/run" && mkdir -p "$state/run"
  target/release/emulator --state-dir "$state/run" --in-memory --https-port 0 --mqtt-port 0 \
    --registration-retry-after 0 --event-retention 1000 >"$state/run/emulator.log" 2>&1 &
  pid=$!
  wait_ready "$state/run" "$pid"
  target/release/bench --endpoints "$state/run/endpoints.json" hub --devices "$n" --messages "$messages" \
    --server-pid "$pid" --label emulator

  target/release/fleet --endpoints "$state/run/endpoints.json" issue-certificate --state-dir "$state/run" \
    --address "$broker_address" --cert "$state/broker.pem" --key "$state/broker.key"
  broker_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.5", 0)); print(s.getsockname()[1])')
  cat > "$state/mosquitto.conf" <<CONF
listener $broker_port $broker_address
certfile $state/broker.pem
keyfile $state/broker.key
allow_anonymous true
max_connections -1
persistence false
user $(id -un)
log_dest stderr
log_type error
CONF
  mosquitto -c "$state/mosquitto.conf" 2>"$state/mosquitto.log" &
  broker=$!
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/$broker_address/$broker_port") 2>/dev/null && break
    sleep 0.05
  done
  target/release/bench --endpoints "$state/run/endpoints.json" hub --devices "$n" --messages "$messages" \
    --server-pid "$broker" --broker "$broker_address:$broker_port" --label "mosquitto"
  kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true
done

# ----- The handler: start-up, memory, create and read rates next to Azurite's raw rates -----
echo
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=
scripts/bench-handler.sh

# ----- The device: sizes, memory, portal-to-first-telemetry next to the Python device SDK -----
echo
scripts/bench-device.sh

# ----- Storms (with and without jitter) and the soak, with its memory chart -----
echo
scripts/bench-storm.sh

# ----- A fleet-sized fault: storage killed during a 10,000-row import (make test runs 1,000) -----
echo
echo "Storage (a persistent Azurite) killed and restarted during a ${FAULT_IMPORT_ROWS:-10000}-row import, the failed rows"
echo "imported again, then Reconcile; the records must equal a fault-free import's:"
scripts/package.sh >/dev/null
FAULT_IMPORT_ROWS=${FAULT_IMPORT_ROWS:-10000} FUNCTION_APP=$PWD/dist/function-app scripts/with-azurite.sh \
  cargo test --locked --release -p handler --test api -- --exact \
  faults::storage_killed_during_a_large_import_loses_nothing_once_the_import_is_rerun --nocapture 2>&1 \
  | grep -E "took|test result|panicked"
