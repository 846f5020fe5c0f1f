#!/usr/bin/env bash
# with-azurite.sh COMMAND...: runs COMMAND with a fresh in-memory Azurite Table service on a free
# port (AZURITE_TABLE_ENDPOINT set), and stops Azurite afterwards, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/azurite.sh
log=$(mktemp -t azurite.XXXXXX.log)
start_azurite "$log"
trap 'kill "$AZURITE_PID" 2>/dev/null || true; wait "$AZURITE_PID" 2>/dev/null || true; rm -f "$log"' EXIT
"$@"
