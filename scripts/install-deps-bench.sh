#!/bin/sh
# Installs the Debian packages only `make bench` needs, if any is missing:
# PostgreSQL (server for a throwaway cluster, libpq for the bench binary),
# gnuplot for the plots, wrk for httpd. Needs root (or sudo) only then.
set -e
PKGS="postgresql libpq-dev gnuplot-nox wrk"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian's postgresql package creates a system cluster and starts it; the
# bench runs its own throwaway cluster, so keep services from starting at
# install time (the system cluster stays configured but stopped).
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# If a system cluster got started anyway (policy-rc.d was already there and
# allows it), stop it by its own pid file.
for pidf in /var/run/postgresql/*.pid /var/lib/postgresql/*/main/postmaster.pid; do
    [ -f "$pidf" ] || continue
    pid=$(head -1 "$pidf")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && $SUDO kill -INT "$pid" && echo "stopped the system PostgreSQL (pid $pid)"
done
exit 0
