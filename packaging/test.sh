#!/usr/bin/env bash
# The README's test command. On a fresh machine it sets up everything first: CPU libtorch, ONNX
# Runtime and OpenVINO (from PyPI wheels), a venv with numpy, onnx and openvino (to write test
# models) for the Python-client and engine tests; then format, lint, tests, and the .deb under a
# real systemd in a container (skipped, with the reason, where that cannot run).
set -euo pipefail
cd "$(dirname "$0")/.."
./packaging/setup-libtorch.sh
./packaging/setup-onnxruntime.sh
./packaging/setup-openvino.sh
if ! .venv/bin/python -c 'import numpy, onnx, openvino' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet numpy onnx openvino==2026.4.0
fi
export PACKRAT_TEST_PYTHON="$PWD/.venv/bin/python"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
./packaging/test-deb.sh
