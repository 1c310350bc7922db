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

SETUP=setup-onnxruntime
. "$top/packaging/pypi.sh"
need_pip

work="$dest/work"
rm -rf "$work" "$lib"
mkdir -p "$work" "$lib"
download_wheels "$work" "onnxruntime==$ORT_VERSION"
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
