#!/usr/bin/env bash
# `make package`: the function app as Azure runs it, in dist/function-app/ and
# dist/function-app.zip: host.json, the handler binary (named as host.json's
# defaultExecutablePath), and one <Function>/function.json per folder of functions/, at the root,
# and nothing else. The binary is a static glibc build: the Functions Linux image's glibc is not
# documented, so it must need no shared library (docs/handler.md, "Packaging and publishing").
#
#   scripts/package.sh                      release build, checks, dist/function-app{,.zip}
#   scripts/package.sh layout BINARY DIR    only the layout, from any handler binary (the API
#                                           tests use it with the debug binary)
set -euo pipefail
cd "$(dirname "$0")/.."

# The name the host starts: host.json's customHandler.description.defaultExecutablePath. It must
# be a plain file name at the app root, since the zip's executable bit is set on that entry.
executable_name() {
  python3 - <<'PY'
import json, sys
path = json.load(open("host.json"))["customHandler"]["description"]["defaultExecutablePath"]
if not path or "/" in path or "\\" in path or path in (".", ".."):
    sys.exit(f"host.json: defaultExecutablePath {path!r} must be a file name at the app root")
print(path)
PY
}

# layout BINARY DIR: DIR becomes the function app (replaced if it exists).
layout() {
  local binary=$1 out=$2 name folder count=0
  [[ -x $binary ]] || { echo "package: $binary is not an executable" >&2; return 1; }
  name=$(executable_name)
  rm -rf "$out"
  mkdir -p "$out"
  install -m 0644 host.json "$out/host.json"
  install -m 0755 "$binary" "$out/$name"
  # The folder list is read now: functions come and go.
  for folder in functions/*/; do
    folder=${folder%/}
    [[ -f $folder/function.json ]] || continue
    install -D -m 0644 "$folder/function.json" "$out/${folder#functions/}/function.json"
    count=$((count + 1))
  done
  if [[ $count -eq 0 ]]; then
    echo "package: no functions/<Name>/function.json found" >&2
    return 1
  fi
}

# zip_app DIR ZIP: every file of DIR at the zip's root, sorted, with fixed timestamps (the same
# inputs give the same bytes), Unix modes: 0755 for the executable, 0644 for the rest.
zip_app() {
  python3 - "$1" "$2" "$(executable_name)" <<'PY'
import os, sys, zipfile
root, target, executable = sys.argv[1], sys.argv[2], sys.argv[3]
files = sorted(
    os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
    for d, _, names in os.walk(root) for f in names
)
tmp = target + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for name in files:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.create_system = 3  # Unix, so the host applies the modes below
        mode = 0o100755 if name == executable else 0o100644
        info.external_attr = mode << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(os.path.join(root, name), "rb") as f:
            z.writestr(info, f.read())
os.replace(tmp, target)
PY
}

# check_static BINARY: no program interpreter and no shared library. (glibc's getaddrinfo is still
# linked, through reqwest's unused default resolver and std; handler/tests/package.rs shows that
# name look-ups go through the pure-Rust resolver and never open glibc's NSS files.)
check_static() {
  local binary=$1
  if readelf -lW "$binary" | grep -q 'INTERP'; then
    echo "package: $binary has a program interpreter (PT_INTERP): it is not static" >&2
    return 1
  fi
  if readelf -dW "$binary" | grep -q '(NEEDED)'; then
    echo "package: $binary needs shared libraries:" >&2
    readelf -dW "$binary" | grep '(NEEDED)' >&2
    return 1
  fi
}

if [[ ${1:-} == layout ]]; then
  [[ $# -eq 3 ]] || { echo "usage: scripts/package.sh layout BINARY DIR" >&2; exit 2; }
  layout "$2" "$3"
  exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: scripts/package.sh [layout BINARY DIR]" >&2; exit 2; }

target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
# --target keeps build scripts and proc macros out of RUSTFLAGS (they stay dynamic host
# programs), and puts the static build in its own folder, apart from the debug and release ones.
echo "Building the handler for the Functions Linux image (static, release; a few minutes)..."
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --locked --quiet --profile dist -p handler --bin handler --target "$target"
binary=$target_dir/$target/dist/handler
check_static "$binary"

mkdir -p dist
layout "$binary" dist/function-app
zip_app dist/function-app dist/function-app.zip
echo "dist/function-app.zip: $(du -k dist/function-app.zip | cut -f1) KiB" \
  "(unpacked $(du -sk dist/function-app | cut -f1) KiB, handler $(du -k "$binary" | cut -f1) KiB)"
