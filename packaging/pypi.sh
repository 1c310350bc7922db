# Sourced by the setup-*.sh scripts: fetching pinned wheels from PyPI without installing them.
# The caller sets SETUP (its name, for messages) first.

die() { echo "$SETUP: $*" >&2; exit 1; }

# Sets PYTHON to a Python 3 that has pip (or dies saying how to get one).
need_pip() {
    PYTHON="${PYTHON:-python3}"
    command -v "$PYTHON" >/dev/null || die "python3 not found: install Python 3 with pip (apt-get install python3-pip), or set PYTHON=/path/to/python3"
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PYTHON: install it (apt-get install python3-pip, or $PYTHON -m ensurepip)"
}

# download_wheels DIR SPEC... : the wheels themselves, no dependencies, binary only.
download_wheels() {
    local dir="$1"
    shift
    echo "$SETUP: downloading $* from PyPI" >&2
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" "$@" \
        || die "pip download failed: check that PyPI is reachable (pip config, proxy) and retry"
}
