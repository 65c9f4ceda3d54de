#!/bin/sh
# Installs the Debian packages only `make bench` needs, if any is missing:
# PostgreSQL (server for a throwaway cluster, libpq for the bench binary),
# gnuplot for the plots, wrk for httpd. Needs root (or sudo) only then.
set -e
. "$(dirname "$0")/apt-lib.sh"
# The bench runs its own throwaway PostgreSQL cluster; apt_install keeps the
# package's system cluster from starting.
# shellcheck disable=SC2046
apt_install $(apt_missing postgresql libpq-dev gnuplot-nox wrk)
# If a system cluster got started anyway (policy-rc.d was already there and
# allows it), stop it by its own pid file.
for pidf in /var/run/postgresql/*.pid /var/lib/postgresql/*/main/postmaster.pid; do
    [ -f "$pidf" ] || continue
    pid=$(head -1 "$pidf")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -INT "$pid" && echo "stopped the system PostgreSQL (pid $pid)"
done
exit 0
