#!/usr/bin/env bash
# Tests the .deb under a real systemd: builds it (packaging/build-deb.sh), boots a Debian
# bookworm container with systemd as PID 1 (../shared/tools/systemd-container), installs the
# package on that clean root and checks what an operator relies on: `packrat demo` from the
# installed binary; `systemd-analyze verify` and `security` (≤ 1.5); start reaches active after
# READY=1; a job from a user in group packrat comes back readable to that user, and a user
# outside it is told why not; reload re-plans; stop exits 0; a bad config leaves the unit failed
# with 78 and no restart; the watchdog restarts a frozen agent; remove and purge leave nothing.
# Skipped, with the reason, where the container cannot run. ./packaging/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
ct_tool="$PWD/../shared/tools/systemd-container"
dir="${PACKRAT_CT_DIR:-/tmp/packrat-deb-test}"
skip() { echo "test-deb: SKIPPED: $*" >&2; exit 0; }
[ -x "$ct_tool" ] || skip "no $ct_tool (the shared tools sit beside this checkout)"
[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn)"
./packaging/build-deb.sh
deb=$(ls -t target/packrat_*_amd64.deb | head -1)
"$ct_tool" up "$dir" >"$dir.up.log" 2>&1 || skip "the container did not boot (see $dir.up.log)"
trap '"$ct_tool" down "$dir" >/dev/null 2>&1 || true' EXIT
X() { "$ct_tool" exec "$dir" "$@"; }
fail() { echo "test-deb: FAILED: $*" >&2; X journalctl -u packrat --no-pager 2>/dev/null | tail -20 >&2 || true; exit 1; }
check() { local what=$1; shift; "$@" >/dev/null 2>&1 || fail "$what"; echo "test-deb: ok: $what"; }
prop() { X systemctl show packrat -p "$1" --value; }

X dpkg --purge packrat >/dev/null 2>&1 || true
cp "$deb" "$dir/root/var/tmp/packrat.deb"
check "dpkg -i on a clean root" X dpkg -i /var/tmp/packrat.deb
check "packrat --version names libtorch" sh -c "'$ct_tool' exec '$dir' packrat --version | grep -q libtorch"
check "man pages installed" X test -s /usr/share/man/man8/packrat.8.gz -a -s /usr/share/man/man5/packrat.toml.5.gz
check "completions installed" X test -s /usr/share/bash-completion/completions/packrat
check "packrat demo from the installed binary" X sh -c 'cd /var/tmp && timeout 300 packrat demo --model tiny_cnn'
check "systemd-analyze verify" X systemd-analyze verify --man=no /lib/systemd/system/packrat.service
score=$(X systemd-analyze security packrat --no-pager | sed -n 's/.*Overall exposure level for packrat.service: \([0-9.]*\).*/\1/p')
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' || fail "systemd-analyze security is $score (> 1.5)"
echo "test-deb: ok: systemd-analyze security $score"

cat > "$dir/root/etc/packrat/packrat.toml" <<'TOML'
spool = "/var/spool/packrat"
[[model]]
name = "tiny"
source = "builtin:tiny_cnn"
plan = "baseline"
max_batch = 8
TOML
check "systemctl start" X systemctl start packrat
[ "$(prop ActiveState)" = active ] || fail "not active after start"
check "READY=1 came with a status line" sh -c "'$ct_tool' exec '$dir' systemctl show packrat -p StatusText --value | grep -q serving"
# A 2×3×32×32 float32 .npy (numpy's format, written by hand: no numpy in the container).
python3 - "$dir/root/var/tmp/job.npy" <<'PY'
import struct, sys
hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 32, 32), }"
hdr += " " * ((64 - (10 + len(hdr) + 1) % 64) % 64) + "\n"
data = b"".join(struct.pack("<f", (i % 7) / 7.0) for i in range(2 * 3 * 32 * 32))
open(sys.argv[1], "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + data)
PY
chmod 0644 "$dir/root/var/tmp/job.npy"
X sh -c 'id alice >/dev/null 2>&1 || useradd -m -G packrat alice; id bob >/dev/null 2>&1 || useradd -m bob'
out=$(X runuser -u alice -- packrat submit --spool /var/spool/packrat --model tiny --wait --timeout 60 /var/tmp/job.npy) \
    || fail "a job from a user in group packrat"
check "the output is readable by that user" X runuser -u alice -- test -r "$out"
set +e; msg=$(X runuser -u bob -- packrat submit --spool /var/spool/packrat --model tiny --wait --timeout 60 /var/tmp/job.npy 2>&1); set -e
grep -q "Results are readable by group 'packrat'" <<<"$msg" || fail "a user outside the group is told why: $msg"
echo "test-deb: ok: a user outside the group is told why"
check "packrat status as another user" X runuser -u bob -- packrat status --state-dir /var/lib/packrat
check "journald priorities" sh -c "'$ct_tool' exec '$dir' journalctl -u packrat -o verbose --no-pager | grep -q 'PRIORITY=6'"
check "systemctl reload" X systemctl reload packrat
check "the reload re-planned" sh -c "'$ct_tool' exec '$dir' journalctl -u packrat --no-pager | grep -q 'SIGHUP received'"
check "systemctl stop" X systemctl stop packrat
[ "$(prop ExecMainStatus)" = 0 ] || fail "stop exited $(prop ExecMainStatus)"
cp "$dir/root/etc/packrat/packrat.toml" "$dir/good.toml"
echo 'bogus = 1' >> "$dir/root/etc/packrat/packrat.toml"
X systemctl start packrat >/dev/null 2>&1 && fail "a bad config started"
sleep 5
[ "$(prop ActiveState)" = failed ] && [ "$(prop ExecMainStatus)" = 78 ] && [ "$(prop NRestarts)" = 0 ] \
    || fail "a bad config: $(prop ActiveState), status $(prop ExecMainStatus), $(prop NRestarts) restarts"
echo "test-deb: ok: a bad config leaves the unit failed (78), not restarting"
cp "$dir/good.toml" "$dir/root/etc/packrat/packrat.toml"
X systemctl reset-failed packrat
X mkdir -p /etc/systemd/system/packrat.service.d
printf '[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n' > "$dir/root/etc/systemd/system/packrat.service.d/wd.conf"
X systemctl daemon-reload
check "start with a 2 s watchdog" X systemctl start packrat
X kill -STOP "$(prop MainPID)"
for _ in $(seq 30); do [ "$(prop NRestarts)" = 1 ] && [ "$(prop ActiveState)" = active ] && break; sleep 0.5; done
[ "$(prop NRestarts)" = 1 ] || fail "the watchdog did not restart a frozen agent"
echo "test-deb: ok: the watchdog restarts a frozen agent"
X rm -rf /etc/systemd/system/packrat.service.d
X systemctl daemon-reload
check "dpkg -r" X dpkg -r packrat
check "dpkg --purge" X dpkg --purge packrat
for p in /usr/bin/packrat /usr/lib/packrat /etc/packrat /var/lib/packrat /lib/systemd/system/packrat.service; do
    X test ! -e "$p" || fail "$p left after purge"
done
echo "test-deb: ok: remove and purge leave nothing (the spool, users' data, stays)"
echo "test-deb: all checks passed"
