#!/usr/bin/env bash
# The full soak test: three agents on one spool (two on disjoint cores), ResNet-18, 1,200 jobs of
# mixed sizes and formats, 60 random SIGKILLs plus random SIGTERMs and SIGHUPs; every job must
# end exactly once with the model's output. Prints the seed (PACKRAT_SOAK_SEED=… replays a run)
# and the figures RELIABILITY.md quotes. Run after ./packaging/test.sh has set things up.
set -euo pipefail
cd "$(dirname "$0")/.."
export PACKRAT_SOAK_MODEL="${PACKRAT_SOAK_MODEL:-resnet18}"
export PACKRAT_SOAK_JOBS="${PACKRAT_SOAK_JOBS:-1200}"
export PACKRAT_SOAK_KILLS="${PACKRAT_SOAK_KILLS:-60}"
cargo test --release --test soak -- --nocapture 2>&1 | grep -E '^soak:|test result|panicked'
