#!/usr/bin/env bash
# Assembles OpenVINO's runtime (CPU only) from the PyPI `openvino` wheel into .openvino/ of this
# checkout: the C library the `openvino` crate loads at run time, the CPU plugin and the ONNX and
# IR frontends it finds beside it, and TBB (DESIGN §11). The version is pinned; the binary finds
# the library through a path baked in at build time (build.rs). Idempotent.
set -euo pipefail

OV_VERSION=2026.4.0
OV_SO=2640   # the wheel's soname suffix for $OV_VERSION

top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$top/.openvino"
lib="$dest/libs"

if [[ -f "$dest/version" && "$(cat "$dest/version")" == "$OV_VERSION" && -e "$lib/libopenvino_c.so" ]]; then
    exit 0
fi

SETUP=setup-openvino
. "$top/packaging/pypi.sh"
need_pip

work="$dest/work"
rm -rf "$work" "$lib"
mkdir -p "$work" "$lib"
download_wheels "$work" "openvino==$OV_VERSION"
whl="$(ls "$work"/openvino-*.whl | head -n1)"
[[ -n "$whl" ]] || die "no openvino wheel was downloaded"
"$PYTHON" - "$whl" "$lib" "$OV_SO" <<'PY' || die "the wheel lacks a library packrat needs (see above)"
import os, sys, zipfile
whl, lib, so = sys.argv[1:]
want = [f"libopenvino.so.{so}", f"libopenvino_c.so.{so}", "libopenvino_intel_cpu_plugin.so",
        f"libopenvino_onnx_frontend.so.{so}", f"libopenvino_ir_frontend.so.{so}",
        "libtbb.so.12", "libtbbbind_2_5.so.3", "libtbbmalloc.so.2", "libhwloc.so.15"]
with zipfile.ZipFile(whl) as z:
    names = set(z.namelist())
    for w in want:
        src = f"openvino/libs/{w}"
        if src not in names:
            sys.exit(f"missing {src}")
        with z.open(src) as f, open(os.path.join(lib, w), "wb") as out:
            out.write(f.read())
PY
ln -sf "libopenvino_c.so.$OV_SO" "$lib/libopenvino_c.so"
echo "$OV_VERSION" > "$dest/version"
rm -rf "$work"
echo "setup-openvino: OpenVINO $OV_VERSION ready in $lib ($(du -sh "$lib" | cut -f1))" >&2
