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
