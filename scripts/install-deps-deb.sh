#!/bin/sh
# What `make deb` and the package test need: debhelper, lintian (dh_apache2
# comes with apache2-dev).
set -e
. "$(dirname "$0")/apt-lib.sh"
# shellcheck disable=SC2046
apt_install $(apt_missing debhelper dpkg-dev fakeroot lintian)
