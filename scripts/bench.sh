#!/usr/bin/env bash
# `make bench`: DPS registrations per second over HTTPS and MQTT for 1,000 distinct devices each,
# next to references measured in the same run, and the emulator's peak resident memory.
# Figures are recorded by hand in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
devices=${BENCH_DEVICES:-1000}
concurrency=${BENCH_CONCURRENCY:-64}

cargo build --locked --release --quiet -p emulator --bins
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
target/release/fleet --endpoints "$state/endpoints.json" bench-dps --devices "$devices" --concurrency "$concurrency"
peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
echo
echo "Emulator memory: ${idle_rss} KiB resident when idle, peak ${peak_rss} KiB during the run."
