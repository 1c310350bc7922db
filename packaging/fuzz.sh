#!/usr/bin/env bash
# The fuzz run of the job readers (.npy, .npz, .safetensors) on the stable toolchain: 5,000,000
# mutants of valid files, each read with a 256 KiB budget; fails on any panic or any allocation
# past the budget, and saves the mutant. PACKRAT_FUZZ_ITERS and PACKRAT_FUZZ_SEED override.
# Run after ./packaging/test.sh has set things up.
set -euo pipefail
cd "$(dirname "$0")/.."
export PACKRAT_FUZZ_ITERS="${PACKRAT_FUZZ_ITERS:-5000000}"
cargo test --release --test fuzz -- --nocapture 2>&1 | grep -E '^fuzz:|test result|panicked'
