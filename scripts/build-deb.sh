#!/bin/sh
# make deb: builds libapache2-mod-pidlock_<version>_<arch>.deb into $BUILD
# from a copy of the source tree (the files git tracks plus new ones it does
# not ignore), so the build never writes into the working tree.
set -e
BUILD=${1:-build}
top=$(pwd)
work=$(mktemp -d /tmp/pidlock-deb-XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/libapache2-mod-pidlock"
case $BUILD in /*) dest=$BUILD ;; *) dest=$top/$BUILD ;; esac
mkdir -p "$src" "$dest"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$src"
# A clean environment: make's own variables (BUILD, MAKEFLAGS) must not
# reach the package's rules.
( cd "$src" && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD dpkg-buildpackage -us -uc -b -Jauto >"$work/build.log" 2>&1 ) || { tail -n 40 "$work/build.log"; exit 1; }
for f in "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo; do
    [ -e "$f" ] && cp "$f" "$dest/"
done
ls "$dest"/libapache2-mod-pidlock_*.deb
