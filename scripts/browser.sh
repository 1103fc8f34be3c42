#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is installed at /usr/bin/chromium: the
# wall page's browser test (tests/integration/test_wall_browser.py) drives it over
# the Chrome DevTools Protocol. Idempotent; installs the package when missing (root).
#
#   scripts/browser.sh            prints the browser's version when it is ready
set -euo pipefail

CHROMIUM="${SAFEWATCH_CHROMIUM:-/usr/bin/chromium}"
export DEBIAN_FRONTEND=noninteractive

say() { echo "browser: $*"; }
die() {
    echo "browser: ERROR: $*" >&2
    exit 1
}

if [ ! -x "$CHROMIUM" ]; then
    [ "$(id -u)" -eq 0 ] || die "$CHROMIUM is missing; run: sudo apt-get install -y chromium"
    command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM is missing and there is no apt-get"
    say "apt-get install -y chromium"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk
fi
[ -x "$CHROMIUM" ] || die "$CHROMIUM is still missing after installing the chromium package"
say "ready: $("$CHROMIUM" --headless --no-sandbox --version 2>/dev/null || echo "$CHROMIUM")"
