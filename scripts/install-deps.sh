#!/bin/sh
# Installs the Debian packages the build, the tests and the demo need, if any
# is missing.
set -e
. "$(dirname "$0")/apt-lib.sh"
# shellcheck disable=SC2046
apt_install $(apt_missing g++ make binutils apache2 apache2-dev libapr1-dev libaprutil1-dev cpputest \
    python3 curl wrk valgrind clang-14 libclang-rt-14-dev libapache2-mod-wsgi-py3 libpq-dev postgresql pgbouncer \
    litmus cadaver spin gdb)
