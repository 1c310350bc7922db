#!/usr/bin/env bash
# Builds target/packrat_<version>_amd64.deb: the binary (rpath $ORIGIN/../lib/packrat/...), the
# CPU libtorch, ONNX Runtime and OpenVINO libraries it was built against under /usr/lib/packrat,
# the unit, sysusers.d and tmpfiles.d entries, /etc/packrat/packrat.toml as a conffile, the man
# pages packrat(8) and packrat.toml(5), and bash/zsh/fish completions. Run after
# ./packaging/test.sh (or the setup scripts and `cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
root=target/deb/root
rm -rf target/deb && mkdir -p "$root/DEBIAN"
lib="$root/usr/lib/packrat"
install -d "$root/usr/bin" "$lib/libtorch" "$lib/onnxruntime" "$lib/openvino"
install -m 0755 target/release/packrat "$root/usr/bin/packrat"
strip --strip-debug "$root/usr/bin/packrat"
cp -a .libtorch/libtorch/lib "$lib/libtorch/lib"
cp -a .onnxruntime/lib/. "$lib/onnxruntime/"
cp -a .openvino/libs "$lib/openvino/libs"
sed -e 's|/usr/local/bin/packrat|/usr/bin/packrat|' \
    -e 's|^Documentation=.*|Documentation=man:packrat(8) man:packrat.toml(5)|' \
    systemd/packrat.service | install -D -m 0644 /dev/stdin "$root/lib/systemd/system/packrat.service"
install -D -m 0644 packaging/packrat.sysusers.conf "$root/usr/lib/sysusers.d/packrat.conf"
install -D -m 0644 packaging/packrat.tmpfiles.conf "$root/usr/lib/tmpfiles.d/packrat.conf"
install -D -m 0644 examples/packrat.toml "$root/etc/packrat/packrat.toml"
install -D -m 0644 README.md "$root/usr/share/doc/packrat/README.md"
install -D -m 0644 RELIABILITY.md "$root/usr/share/doc/packrat/RELIABILITY.md"
target/release/packrat assets target/deb/assets
install -d "$root/usr/share/man/man8" "$root/usr/share/man/man5"
gzip -9n < target/deb/assets/man/packrat.8 > "$root/usr/share/man/man8/packrat.8.gz"
gzip -9n < target/deb/assets/man/packrat.toml.5 > "$root/usr/share/man/man5/packrat.toml.5.gz"
install -D -m 0644 target/deb/assets/completions/packrat "$root/usr/share/bash-completion/completions/packrat"
install -D -m 0644 target/deb/assets/completions/_packrat "$root/usr/share/zsh/vendor-completions/_packrat"
install -D -m 0644 target/deb/assets/completions/packrat.fish "$root/usr/share/fish/vendor_completions.d/packrat.fish"

echo /etc/packrat/packrat.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: packrat
Version: $version
Architecture: amd64
Maintainer: packrat developers <packrat@localhost>
Installed-Size: $(du -sk "$root" | cut -f1)
Depends: libc6 (>= 2.31), libstdc++6, adduser
Section: misc
Priority: optional
Description: CPU inference agent serving models from a spool directory
 packrat serves deep-learning models (TorchScript, ONNX, OpenVINO IR) on CPU
 from a spool: clients drop tensor files, the agent writes outputs. It
 chooses instances, threads and batch splits for the host by profiling.
CONTROL
cat > "$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers /usr/lib/sysusers.d/packrat.conf
    elif ! getent passwd packrat >/dev/null; then
        adduser --system --group --home /var/lib/packrat --no-create-home packrat
    fi
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/packrat.conf
    else
        install -d -o packrat -g packrat -m 2755 /var/spool/packrat
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
SCRIPT
cat > "$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop packrat.service || true
    systemctl disable packrat.service || true
fi
SCRIPT
cat > "$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    # State (profiles, status) goes; the spool holds users' jobs and results and stays.
    rm -rf /var/lib/packrat
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
out="target/packrat_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$out" >/dev/null
echo "build-deb: $out ($(du -h "$out" | cut -f1))"
