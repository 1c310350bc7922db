#!/usr/bin/env bash
# Assembles ONNX Runtime (CPU) from its PyPI wheel into .onnxruntime/ of this checkout: the one
# shared library the `ort` crate loads at run time (DESIGN §7). The version is pinned; the
# binary finds the library through a path baked in at build time (build.rs), so no
# LD_LIBRARY_PATH is needed. Idempotent: returns at once when the pinned version is there.
set -euo pipefail

ORT_VERSION=1.32.0

top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$top/.onnxruntime"
lib="$dest/lib"

if [[ -f "$dest/version" && "$(cat "$dest/version")" == "$ORT_VERSION" && -e "$lib/libonnxruntime.so.1" ]]; then
    exit 0
fi

die() { echo "setup-onnxruntime: $*" >&2; exit 1; }

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python3 not found: install Python 3 with pip, or set PYTHON=/path/to/python3"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PYTHON: install it (apt-get install python3-pip)"

work="$dest/work"
rm -rf "$work" "$lib"
mkdir -p "$work" "$lib"
echo "setup-onnxruntime: downloading onnxruntime==$ORT_VERSION from PyPI" >&2
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "onnxruntime==$ORT_VERSION" \
    || die "pip download failed: check that PyPI is reachable (pip config, proxy) and retry"
whl="$(ls "$work"/onnxruntime-*.whl | head -n1)"
[[ -n "$whl" ]] || die "no onnxruntime wheel was downloaded"
"$PYTHON" - "$whl" "$lib" "$ORT_VERSION" <<'PY' || die "the wheel has no onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
import sys, zipfile, os
whl, lib, ver = sys.argv[1:]
name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(whl) as z:
    with z.open(name) as src, open(os.path.join(lib, f"libonnxruntime.so.{ver}"), "wb") as dst:
        dst.write(src.read())
PY
ln -sf "libonnxruntime.so.$ORT_VERSION" "$lib/libonnxruntime.so.1"
echo "$ORT_VERSION" > "$dest/version"
rm -rf "$work"
echo "setup-onnxruntime: ONNX Runtime $ORT_VERSION ready in $lib ($(du -sh "$lib" | cut -f1))" >&2
