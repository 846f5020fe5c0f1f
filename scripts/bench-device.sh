#!/usr/bin/env bash
# The device's part of `make bench`: the size of the `device` binary (built with the `device`
# profile, for small devices), the resident memory of its two roles together (portal and sender,
# two processes of one binary, while sending; pages they share counted once), and the time from submitting the code in the portal to the first
# telemetry message the hub acknowledges, next to the official Python device SDK
# (azure-iot-device, pinned in bench/device/requirements.txt) in its single process, provisioning,
# connecting and sending against the same emulator.
# The Python SDK cannot be told another port, so the emulator runs on Azure's (443, 8883): as
# root, or inside a private network namespace otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 && -z "${IN_NAMESPACE:-}" ]]; then
  # The single quotes are meant: the inner bash expands "$0" and "$@".
  # shellcheck disable=SC2016
  exec unshare -rn env IN_NAMESPACE=1 bash -c 'ip link set lo up; exec "$0" "$@"' "$0" "$@"
fi
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
runs=${BENCH_DEVICE_RUNS:-5}
target=${CARGO_TARGET_DIR:-target}
# The aims of issue 13: on disk, and resident for both roles together.
disk_aim_bytes=5000000
memory_aim_kib=$((8 * 1024))

cargo build --locked --release --quiet -p emulator --bins
cargo build --locked --profile device --quiet -p device --bin device
device=$target/device/device
state=$(mktemp -d)
cleanup() {
  for p in ${sender:-} ${portal:-} ${pid:-}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT

venv=bench/device/.venv
if [[ ! -x $venv/bin/python || bench/device/requirements.txt -nt $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --no-deps -r bench/device/requirements.txt
fi

sdk_size=$("$venv/bin/python" -c '
import importlib.metadata as m, os
total = 0
for name in [l.split("==")[0] for l in open("bench/device/requirements.txt") if "==" in l]:
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

"$target/release/emulator" --state-dir "$state" --in-memory --https-port 443 --mqtt-port 8883 \
  --registration-retry-after 0 >"$state/emulator.log" 2>&1 &
pid=$!
wait_ready "$state" "$pid"
ca=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["caCertificatePath"])' "$state/endpoints.json")
mapfile -t codes < <("$target/release/fleet" --endpoints "$state/endpoints.json" codes --count $((runs * 2)) --prefix bench)

# kib FIELD PID: a memory figure of a process in KiB, from /proc/PID/status (VmRSS, VmHWM) or
# /proc/PID/smaps_rollup (Private, Shared: resident pages of this process alone, and those it
# shares with another process).
kib() {
  case $1 in
    Private | Shared) awk -v kind="$1_" 'index($1, kind) == 1 {sum += $2} END {print sum}' "/proc/$2/smaps_rollup" ;;
    *) awk -v field="$1:" '$1 == field {print $2}' "/proc/$2/status" ;;
  esac
}

rust_times=()
for n in $(seq 0 $((runs - 1))); do
  dir=$state/device-$n
  mkdir -p "$dir"
  RUST_LOG=info "$device" sender --state-dir "$dir" --extra-ca-file "$ca" --interval 0.1 \
    >"$dir/sender.log" 2>&1 &
  sender=$!
  "$device" portal --listen 127.0.0.1:0 --state-dir "$dir" --extra-ca-file "$ca" \
    --dps-endpoint 127.0.0.2 --ready-file "$dir/portal.addr" >"$dir/portal.log" 2>&1 &
  portal=$!
  for _ in $(seq 1 200); do [[ -s "$dir/portal.addr" ]] && break; sleep 0.05; done
  rust_times+=("$("$venv/bin/python" bench/device/bench.py portal "http://$(cat "$dir/portal.addr")/" "${codes[$n]}" "$dir/sender.log")")
  if [[ $n -eq $((runs - 1)) ]]; then
    sleep 10  # steady state: ten messages a second for ten seconds
    sender_rss=$(kib VmRSS "$sender")
    portal_rss=$(kib VmRSS "$portal")
    # Both roles map the same binary and libraries, so the pages they share are in memory once:
    # together they hold each one's private pages and (at most) the larger of their shared sets.
    sender_shared=$(kib Shared "$sender") portal_shared=$(kib Shared "$portal")
    roles_kib=$(($(kib Private "$sender") + $(kib Private "$portal") + (sender_shared > portal_shared ? sender_shared : portal_shared)))
    roles_peak=$(($(kib VmHWM "$sender") + $(kib VmHWM "$portal")))
  fi
  kill "$sender" "$portal"; wait "$sender" "$portal" 2>/dev/null || true
done

python_results=()
for n in $(seq "$runs" $((runs * 2 - 1))); do
  python_results+=("$("$venv/bin/python" bench/device/bench.py python "${codes[$n]}" "$ca")")
done

python3 - "$sdk_size" "$python_size" "$(stat -c %s "$device")" "$sender_rss" "$portal_rss" "$roles_kib" \
  "$roles_peak" "$disk_aim_bytes" "$memory_aim_kib" \
  "$(printf '%s\n' "${rust_times[@]}")" "$(printf '%s\n' "${python_results[@]}")" <<'PY'
import json, statistics, sys
(sdk_size, python_size, device_size, sender_rss, portal_rss, roles, roles_peak, disk_aim,
 memory_aim) = map(int, sys.argv[1:10])
rust = [json.loads(x)["seconds"] for x in sys.argv[10].splitlines() if x.strip()]
python = [json.loads(x) for x in sys.argv[11].splitlines() if x.strip()]
py_times = [p["seconds"] for p in python]
py_rss = max(p["rss_kib"] for p in python)
roles_rss = sender_rss + portal_rss
print(f"Device: {len(rust)} provisionings each, emulator on this machine (Retry-After 0)")
print("| | Rust device (`device`, two roles) | Python SDK (azure-iot-device 2.14.0), one process | ratio |")
print("|---|---|---|---|")
print(f"| code submitted / provisioning started to first telemetry acknowledged, median | {statistics.median(rust)*1000:.0f} ms | {statistics.median(py_times)*1000:.0f} ms | {statistics.median(py_times)/statistics.median(rust):.1f}x faster |")
print(f"| the same, slowest | {max(rust)*1000:.0f} ms | {max(py_times)*1000:.0f} ms | |")
print(f"| resident memory while sending 10 messages/s, both roles together | {roles/1024:.1f} MiB, shared pages once; {roles_rss/1024:.1f} MiB counting them twice: sender {sender_rss/1024:.1f} + portal {portal_rss/1024:.1f} (VmRSS; peaks added up {roles_peak/1024:.1f}) | {py_rss/1024:.1f} MiB (VmRSS) | {py_rss/roles:.1f}x smaller ({py_rss/roles_rss:.1f}x counting twice) |")
print(f"| size on disk | {device_size/1e6:.2f} MB ({device_size} bytes): one binary, `device` profile, stripped | {(sdk_size+python_size)/1e6:.0f} MB: {sdk_size/1e6:.1f} MB of packages + {python_size/1e6:.0f} MB of Python's standard library | {(sdk_size+python_size)/device_size:.1f}x smaller |")
met = lambda ok: "met" if ok else "NOT met"
print(f"Aims: at most {disk_aim/1e6:.0f} MB on disk: {met(device_size <= disk_aim)}; "
      f"at most {memory_aim/1024:.0f} MiB resident for both roles together: "
      f"{met(roles <= memory_aim)} with shared pages once, {met(roles_rss <= memory_aim)} counting them twice.")
PY
