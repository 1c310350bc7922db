#!/usr/bin/env bash
# The soak test across two "hosts": ../shared/tools/shared-fs makes a GlusterFS volume with two
# client mounts, each in its own network namespace and with its own hostname; three agents (two
# on host 1, one on host 2) serve one spool on that volume while random agents are killed with
# SIGKILL, stopped and reloaded. Every job must end exactly once. Needs root and /dev/fuse (the
# tool installs GlusterFS with apt the first time). Run after ./packaging/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tool="$PWD/../shared/tools/shared-fs"
dir="${PACKRAT_SFS_DIR:-/tmp/packrat-shared-fs}"
[ -x "$tool" ] || { echo "no $tool (the shared tools sit beside this checkout)" >&2; exit 1; }
[ -e "$dir/state" ] || "$tool" up "$dir" 2
trap '"$tool" down "$dir"' EXIT
rm -rf "$dir/h1/spool"
export PACKRAT_SOAK_SHARED_FS="$dir"
export PACKRAT_SOAK_JOBS="${PACKRAT_SOAK_JOBS:-400}"
export PACKRAT_SOAK_KILLS="${PACKRAT_SOAK_KILLS:-20}"
cargo test --release --test soak -- --nocapture 2>&1 | grep -E '^soak:|test result|panicked'
