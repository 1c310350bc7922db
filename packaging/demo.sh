#!/usr/bin/env bash
# The README's first command: sets up libtorch if needed, builds, and runs the guided demo
# (the agent on a temporary spool with a built-in model).
set -euo pipefail
cd "$(dirname "$0")/.."
./packaging/setup-libtorch.sh
cargo run --release --quiet -- demo "$@"
