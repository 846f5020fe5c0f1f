#!/usr/bin/env bash
# `make api-test`: schemathesis over docs/openapi.json against the real stack: an in-memory
# Azurite and the emulator (DPS, hubs, and the Functions host stand-in running the function app
# of FUNCTION_APP, dist/function-app by default), all on free loopback ports and stopped
# afterwards. The checks: no 5xx for anything generated, every status, content type and body as
# the document says. Bounded: a fixed number of examples per operation and a fixed seed, so a run
# cannot pass by luck and every run sends the same requests.
#
# The venv (.local/api-test-venv) is made from scripts/api-test/requirements.txt the first time and
# again whenever that file changes. Extra arguments go to `schemathesis run`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/azurite.sh

requirements=scripts/api-test/requirements.txt
venv=.local/api-test-venv
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || $(cat "$stamp" 2>/dev/null || true) != "$want" ]]; then
  rm -rf "$venv"
  mkdir -p .local
  python3 -m venv "$venv" || { echo "api-test: python3 -m venv failed (is python3-venv installed?)" >&2; exit 1; }
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps -r "$requirements"; then
    rm -rf "$venv"
    echo "api-test: pip could not install $requirements" >&2
    exit 1
  fi
  if ! "$venv/bin/python" -m pip check --disable-pip-version-check; then
    rm -rf "$venv"
    echo "api-test: $requirements does not pin every dependency (pip check above)" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi

app=${FUNCTION_APP:-dist/function-app}
emulator=${EMULATOR_BIN:-${CARGO_TARGET_DIR:-target}/debug/emulator}
[[ -x $emulator ]] || { echo "api-test: no emulator at $emulator (cargo build -p emulator)" >&2; exit 1; }

state=$(mktemp -d -t api-test.XXXXXX)
cleanup() {
  if [[ -n ${pid:-} ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [[ -n ${AZURITE_PID:-} ]]; then kill "$AZURITE_PID" 2>/dev/null || true; wait "$AZURITE_PID" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT

start_azurite "$state/azurite.log"
package_app_args "$app"
"$emulator" --state-dir "$state" --in-memory --https-port 0 --mqtt-port 0 --functions-port 0 \
  "${FUNCTIONS_APP_ARGS[@]}" >"$state/emulator.log" 2>&1 &
pid=$!
wait_ready "$state" "$pid"
wait_host "$state"

# The document's paths carry /api, so schemathesis gets the origin; the key goes as a header
# (never printed: schemathesis sanitizes it in its output, and it is this run's own key anyway).
read -r origin key < <(python3 -c '
import json, sys, urllib.parse
f = json.load(open(sys.argv[1]))["functions"]
u = urllib.parse.urlsplit(f["baseUrl"])
print(f"{u.scheme}://{u.netloc}", f["functionKey"])' "$state/endpoints.json")

status=0
# The coverage phase sends each operation's boundary cases (missing, empty, too long, wrong type),
# the fuzzing phase 10 generated requests per operation (API_TEST_EXAMPLES), from a fixed seed
# (API_TEST_SEED), one at a time, so every run sends the same requests in the same order: about
# a minute. (Two workers found a race of concurrent creates, kept in handler/tests/api/bad_input.rs,
# but made runs differ from one another.)
"$venv/bin/schemathesis" --config-file scripts/api-test/schemathesis.toml --no-color \
  run docs/openapi.json --url "$origin" --generation-database none \
  --header "x-functions-key: $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing --max-examples "${API_TEST_EXAMPLES:-10}" --seed "${API_TEST_SEED:-20261202}" \
  --workers 1 --request-timeout 10 --suppress-health-check too_slow \
  "$@" || status=$?
if [[ $status -ne 0 ]]; then
  echo "api-test: failures above; the emulator's log (handler included) is in the last lines below:" >&2
  tail -n 40 "$state/emulator.log" >&2 || true
fi
exit "$status"
