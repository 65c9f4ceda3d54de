#!/bin/sh
# Installs what the browser test (tests/browser/run.py) needs, if any is
# missing: Debian's chromium (the test drives /usr/bin/chromium; nothing
# downloads a browser), a font for its screenshot, and node + npm (which
# install playwright-core from the npm registry). Needs root (or sudo) only then.
set -e
PKGS="chromium fonts-liberation"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# node and npm may come from elsewhere (a nodejs that bundles npm): count the
# commands, not the packages. Debian 12's own are nodejs 18 and npm 9.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
