#!/usr/bin/env bash
# Offline checks of infra/: parses every .bicep with pycep-parser and runs the pytest checks in
# this folder (see infra/README.md). Creates infra/.venv from requirements.txt the first time and
# again whenever requirements.txt changes. Extra arguments go to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
infra="$(dirname "$here")"
venv="$infra/.venv"
requirements="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

fail() {
  echo "infra/tests/run.sh: $*" >&2
  exit 1
}

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv failed (is python3-venv installed?)"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
    -r "$requirements"; then
    rm -rf "$venv"
    fail "pip could not install $requirements"
  fi
  if ! "$venv/bin/python" -m pip check --disable-pip-version-check; then
    rm -rf "$venv"
    fail "$requirements does not pin every dependency (pip check above)"
  fi
  echo "$want" >"$stamp"
fi

cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
