#!/usr/bin/env bash
# Runs the official-SDK conformance tests against a fresh emulator on Azure's own ports
# (HTTPS 443, MQTT 8883), which some SDKs cannot be told to change.
#
# The run happens in a private network namespace when the machine allows one (`unshare -rn`):
# ports 443 and 8883 are then free without root, nothing on the host is disturbed, and several
# runs can happen at once. Without namespaces it needs root (or
# `sysctl net.ipv4.ip_unprivileged_port_start=443`) and free ports on 127.0.0.2-127.0.0.4.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
emulator=${EMULATOR_BIN:?EMULATOR_BIN must point at the emulator binary}

if [[ -z "${CONFORMANCE_IN_NAMESPACE:-}" ]] && command -v unshare >/dev/null && unshare -rn true 2>/dev/null; then
  exec env CONFORMANCE_IN_NAMESPACE=1 unshare -rn "$0" "$@"
fi
if [[ -n "${CONFORMANCE_IN_NAMESPACE:-}" ]]; then
  ip link set lo up
elif [[ $(id -u) -ne 0 ]] && (( $(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024) > 443 )); then
  echo "conformance: cannot bind port 443: no user namespaces here and not root." >&2
  echo "  Run as root, or: sudo sysctl -w net.ipv4.ip_unprivileged_port_start=443" >&2
  exit 1
fi

state=$(mktemp -d)
cleanup() {
  if [[ -n "${pid:-}" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT
"$emulator" --state-dir "$state" --in-memory --registration-retry-after 0 >"$state/emulator.log" 2>&1 &
pid=$!
# endpoints.json appears once every listener is bound: that is the readiness signal.
for _ in $(seq 1 300); do
  [[ -s "$state/endpoints.json" ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$state/emulator.log" >&2; echo "conformance: the emulator exited" >&2; exit 1; }
  sleep 0.05
done
[[ -s "$state/endpoints.json" ]] || { echo "conformance: the emulator did not become ready" >&2; exit 1; }

cd "$here"
status=0
EMULATOR_ENDPOINTS="$state/endpoints.json" NODE_EXTRA_CA_CERTS="$state/ca.pem" \
  node --test --test-concurrency=1 --test-reporter=spec tests/ || status=$?
if [[ $status -ne 0 ]]; then
  echo "--- emulator log ---" >&2
  tail -n 50 "$state/emulator.log" >&2
fi
exit $status
