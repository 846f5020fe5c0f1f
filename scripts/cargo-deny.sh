#!/usr/bin/env bash
# cargo-deny.sh [CHECK...]: cargo-deny's checks of the dependency tree (deny.toml), by default
# licenses, bans (duplicate versions) and sources. cargo-deny is built once from crates.io, at
# the pinned version, into .local/tools (a few minutes the first time). The advisories check
# needs the RustSec database from GitHub, which these machines cannot reach: run
# `scripts/cargo-deny.sh advisories` where GitHub is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
tools=.local/tools
deny=$tools/bin/cargo-deny
if ! [[ -x $deny ]] || [[ $("$deny" --version) != "cargo-deny $version" ]]; then
  echo "Building cargo-deny $version into $tools (once)..."
  cargo install --locked --quiet --version "$version" --root "$tools" cargo-deny
fi
checks=("$@")
[[ ${#checks[@]} -gt 0 ]] || checks=(licenses bans sources)
"$deny" --locked check --hide-inclusion-graph "${checks[@]}"
