#!/bin/sh
# Installs what the browser test (tests/browser/run.py) needs, if any is
# missing: Debian's chromium (the test drives /usr/bin/chromium; nothing
# downloads a browser), a font for its screenshot, and node + npm (which
# install playwright-core from the npm registry). Needs root (or sudo) only then.
set -e
. "$(dirname "$0")/apt-lib.sh"
missing=$(apt_missing chromium fonts-liberation)
# node and npm may come from elsewhere (a nodejs that bundles npm): count the
# commands, not the packages. Debian 12's own are nodejs 18 and npm 9.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
# shellcheck disable=SC2086
apt_install $missing
