#!/usr/bin/env bash
# Installs a built packrat on this host: the binary, its libtorch, the unit and a config.
# Run after `cargo build --release`, as root. PREFIX defaults to /usr/local.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-/usr/local}"
[[ -x target/release/packrat ]] || { echo "install: build first: cargo build --release" >&2; exit 1; }
install -d "$PREFIX/lib/packrat"
cp -a .libtorch/libtorch/lib/. "$PREFIX/lib/packrat/"
install -m 0755 target/release/packrat "$PREFIX/lib/packrat/packrat"
# The binary's rpath points into the checkout; a wrapper-free install re-points it.
if command -v patchelf >/dev/null; then
    patchelf --set-rpath "$PREFIX/lib/packrat" "$PREFIX/lib/packrat/packrat"
    ln -sf "$PREFIX/lib/packrat/packrat" "$PREFIX/bin/packrat"
else
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$PREFIX/lib/packrat" "$PREFIX/lib/packrat/packrat" > "$PREFIX/bin/packrat"
    chmod 0755 "$PREFIX/bin/packrat"
fi
install -D -m 0644 packaging/packrat.sysusers.conf /usr/lib/sysusers.d/packrat.conf
systemd-sysusers /usr/lib/sysusers.d/packrat.conf 2>/dev/null || id packrat >/dev/null 2>&1 || useradd --system --home-dir /var/lib/packrat --shell /usr/sbin/nologin packrat
install -D -m 0644 README.md "$PREFIX/share/doc/packrat/README.md"
install -d /etc/packrat
[[ -e /etc/packrat/packrat.toml ]] || install -m 0644 examples/packrat.toml /etc/packrat/packrat.toml
sed "s|/usr/local/bin/packrat|$PREFIX/bin/packrat|" systemd/packrat.service > /etc/systemd/system/packrat.service
systemctl daemon-reload 2>/dev/null || true
echo "installed: systemctl enable --now packrat"
