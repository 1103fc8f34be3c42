#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install SafeWatch editable with its dev tools.
# Idempotent: does nothing when .venv is installed and pyproject.toml is not newer
# than the stamp file. Override the interpreter with PYTHON=/path/to/python3.x.
#
#   scripts/venv.sh
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.safewatch-installed"
PYTHON="${PYTHON:-python3}"

say() { echo "venv: $*"; }
die() {
    echo "venv: ERROR: $*" >&2
    exit 1
}

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && ! [ pyproject.toml -nt "$STAMP" ]; then
    say "$VENV is up to date"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        # Bare Debian (debootstrap, container images) has no python3: python3-venv pulls it in.
        [ "$PYTHON" = python3 ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 ||
            die "$PYTHON not found; install Python 3.11 or newer"
        say "installing python3 and python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$("$PYTHON" -V 2>&1) is too old; SafeWatch needs Python >= 3.11 (set PYTHON=...)"
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian ships venv/ensurepip separately.
        [ "$(id -u)" -eq 0 ] || die "python3-venv is missing; run: sudo apt-get install python3-venv"
        say "installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
    fi
    say "creating $VENV with $("$PYTHON" -V 2>&1)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

say "pip install -e '.[dev]'"
"$VENV/bin/python" -m pip install --quiet -e '.[dev]'
touch "$STAMP"
say "ready: $VENV/bin/safewatch"
