#!/usr/bin/env bash
# Storms and the soak, part of `make bench` (scripts/bench.sh):
# - a provisioning storm: BENCH_STORM_DEVICES (10,000) devices power on at once against a DPS
#   limited to BENCH_STORM_RATE registrations a minute (6,000; Azure allows 1,000 per unit), once
#   with the device client's jitter and once without (synchronized retries);
# - a soak: BENCH_SOAK_DEVICES (200) devices kept connected, reporting and re-provisioning for
#   BENCH_SOAK_MINUTES (10) while the emulator's and the handler's memory is sampled into a CSV,
#   drawn as BENCH_SOAK_SVG (docs/soak-memory.svg).
# Quick check: BENCH_STORM_DEVICES=500 BENCH_SOAK_MINUTES=0.5 scripts/bench-storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/azurite.sh

devices=${BENCH_STORM_DEVICES:-10000}
rate=${BENCH_STORM_RATE:-6000}
burst=${BENCH_STORM_BURST:-}
deadline=${BENCH_STORM_DEADLINE:-1200}
soak_minutes=${BENCH_SOAK_MINUTES:-10}
soak_devices=${BENCH_SOAK_DEVICES:-200}
soak_svg=${BENCH_SOAK_SVG:-docs/soak-memory.svg}
soak_csv=${BENCH_SOAK_CSV:-docs/soak-memory.csv}

# Ten thousand devices hold a hub connection each, and DPS connections while they register.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --locked --release --quiet -p emulator -p handler -p bench --bins
state=$(mktemp -d)
cleanup() {
  if [[ -n "${pid:-}" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [[ -n "${AZURITE_PID:-}" ]]; then kill "$AZURITE_PID" 2>/dev/null || true; wait "$AZURITE_PID" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT

burst_args=()
[[ -n $burst ]] && burst_args=(--registration-burst "$burst")
echo "Provisioning storm: $devices devices powered on at once, DPS limited to $rate registrations a minute"
echo "(burst ${burst:-one second of it}), Retry-After as the limit computes it; $(nproc) cores, $(date -u +%Y-%m-%d):"
echo "| retries | devices | transport | all connected after | peak registrations/s | 429s and retries | gave up |"
echo "|---|---|---|---|---|---|---|"
for mode in jitter no-jitter; do
  # A fresh emulator per run, so the second does not start with the first's devices.
  if [[ -n "${pid:-}" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$state/storm" && mkdir -p "$state/storm"
  target/release/emulator --state-dir "$state/storm" --in-memory --https-port 0 --mqtt-port 0 \
    --registration-retry-after 1 --registration-rate "$rate" "${burst_args[@]}" --event-retention 1000 \
    >"$state/storm/emulator.log" 2>&1 &
  pid=$!
  wait_ready "$state/storm" "$pid"
  flag=()
  [[ $mode == no-jitter ]] && flag=(--no-jitter)
  # A run that leaves devices behind still prints its row; the bench goes on.
  target/release/bench --endpoints "$state/storm/endpoints.json" storm --devices "$devices" \
    --deadline "$deadline" --label "$mode" "${flag[@]}" || true
done
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=

echo
start_azurite "$state/azurite.log"
functions_app_args target/release/handler
mkdir -p "$state/soak"
target/release/emulator --state-dir "$state/soak" --in-memory --https-port 0 --mqtt-port 0 \
  --registration-retry-after 1 --event-retention 1000 --functions-port 0 "${FUNCTIONS_APP_ARGS[@]}" \
  >"$state/soak/emulator.log" 2>&1 &
pid=$!
wait_ready "$state/soak" "$pid"
wait_host "$state/soak"
handler_pid=$(pgrep -P "$pid" -x handler | head -1)
echo "Soak: $soak_devices devices for $soak_minutes min (telemetry every second, a reported property every"
echo "10 s, each device registering again every 2 min), the emulator (running the function app, 1,000"
echo "events retained per partition, so retention does not pass for growth) and the handler sampled every 5 s:"
target/release/bench --endpoints "$state/soak/endpoints.json" soak --minutes "$soak_minutes" \
  --devices "$soak_devices" --process "emulator=$pid" --process "handler=$handler_pid" \
  --csv "$soak_csv" --svg "$soak_svg"
echo "Samples in $soak_csv, chart in $soak_svg."
