#!/usr/bin/env bash
# The device's part of `make bench`: stripped binary sizes, the telemetry sender's steady memory,
# and the time from submitting the code in the portal to the first telemetry message the hub
# acknowledges, next to the official Python device SDK (azure-iot-device, pinned in
# device/bench/requirements.txt) provisioning, connecting and sending against the same emulator.
# The Python SDK cannot be told another port, so the emulator runs on Azure's (443, 8883): as
# root, or inside a private network namespace otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 && -z "${IN_NAMESPACE:-}" ]]; then
  exec unshare -rn env IN_NAMESPACE=1 bash -c 'ip link set lo up; exec "$0" "$@"' "$0" "$@"
fi
source scripts/lib.sh
runs=${BENCH_DEVICE_RUNS:-5}

cargo build --locked --release --quiet -p emulator -p device --bins
state=$(mktemp -d)
cleanup() {
  for p in ${sender:-} ${portal:-} ${pid:-}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT

venv=device/bench/.venv
if [[ ! -x $venv/bin/python || device/bench/requirements.txt -nt $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --no-deps -r device/bench/requirements.txt
fi

strip -o "$state/device" target/release/device
sdk_size=$("$venv/bin/python" -c '
import importlib.metadata as m, os
total = 0
for name in [l.split("==")[0] for l in open("device/bench/requirements.txt") if "==" in l]:
    for f in m.distribution(name).files or []:
        p = f.locate()
        if os.path.isfile(p): total += os.path.getsize(p)
print(total)')
python_size=$("$venv/bin/python" -c '
import os, sysconfig
total = 0
for root, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
    if "site-packages" in root or "/test" in root: continue
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files if os.path.isfile(os.path.join(root, f)))
print(total)')

target/release/emulator --state-dir "$state" --in-memory --https-port 443 --mqtt-port 8883 \
  --registration-retry-after 0 >"$state/emulator.log" 2>&1 &
pid=$!
wait_ready "$state" "$pid"
ca=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["caCertificatePath"])' "$state/endpoints.json")
mapfile -t codes < <(target/release/fleet --endpoints "$state/endpoints.json" codes --count $((runs * 2)) --prefix bench)

rust_times=()
for n in $(seq 0 $((runs - 1))); do
  dir=$state/device-$n
  mkdir -p "$dir"
  RUST_LOG=info target/release/device sender --state-dir "$dir" --extra-ca-file "$ca" --interval 0.1 \
    >"$dir/sender.log" 2>&1 &
  sender=$!
  target/release/device portal --listen 127.0.0.1:0 --state-dir "$dir" --extra-ca-file "$ca" \
    --dps-endpoint 127.0.0.2 --ready-file "$dir/portal.addr" >"$dir/portal.log" 2>&1 &
  portal=$!
  for _ in $(seq 1 200); do [[ -s "$dir/portal.addr" ]] && break; sleep 0.05; done
  rust_times+=("$("$venv/bin/python" device/bench/bench.py portal "http://$(cat "$dir/portal.addr")/" "${codes[$n]}" "$dir/sender.log")")
  if [[ $n -eq $((runs - 1)) ]]; then
    sleep 10  # steady state: ten messages a second for ten seconds
    sender_rss=$(awk '/VmRSS/ {print $2}' "/proc/$sender/status")
    portal_rss=$(awk '/VmRSS/ {print $2}' "/proc/$portal/status")
  fi
  kill "$sender" "$portal"; wait "$sender" "$portal" 2>/dev/null || true
done

python_results=()
for n in $(seq "$runs" $((runs * 2 - 1))); do
  python_results+=("$("$venv/bin/python" device/bench/bench.py python "${codes[$n]}" "$ca")")
done

python3 - "$sdk_size" "$python_size" "$(stat -c %s "$state/device")" 0 \
  "$sender_rss" "$portal_rss" "$(printf '%s\n' "${rust_times[@]}")" "$(printf '%s\n' "${python_results[@]}")" <<'PY'
import json, statistics, sys
sdk_size, python_size, sender_size, portal_size, sender_rss, portal_rss = map(int, sys.argv[1:7])
rust = [json.loads(x)["seconds"] for x in sys.argv[7].splitlines() if x.strip()]
python = [json.loads(x) for x in sys.argv[8].splitlines() if x.strip()]
py_times = [p["seconds"] for p in python]
py_rss = max(p["rss_kib"] for p in python)
print(f"Device: {len(rust)} provisionings each, emulator on this machine (Retry-After 0)")
print("| | Rust device | Python SDK (azure-iot-device 2.14.0) | ratio |")
print("|---|---|---|---|")
print(f"| code submitted / provisioning started to first telemetry acknowledged, median | {statistics.median(rust)*1000:.0f} ms | {statistics.median(py_times)*1000:.0f} ms | {statistics.median(py_times)/statistics.median(rust):.1f}x faster |")
print(f"| the same, slowest | {max(rust)*1000:.0f} ms | {max(py_times)*1000:.0f} ms | |")
print(f"| resident memory while sending 10 messages/s | {sender_rss/1024:.1f} MiB (sender) + {portal_rss/1024:.1f} MiB (portal) | {py_rss/1024:.1f} MiB | {py_rss/sender_rss:.1f}x smaller (sender) |")
rust_size = sender_size + portal_size
print(f"| size on disk | {rust_size/1e6:.1f} MB: sender {sender_size/1e6:.1f} MB + portal {portal_size/1e6:.1f} MB, stripped | {(sdk_size+python_size)/1e6:.0f} MB: {sdk_size/1e6:.1f} MB of packages + {python_size/1e6:.0f} MB of Python's standard library | {(sdk_size+python_size)/rust_size:.1f}x smaller |")
PY
