# Sourced by the install-deps scripts: install Debian packages that are not
# installed yet, with no service started by the install (Debian's apache2
# and postgresql packages would start system servers). Needs root (or sudo)
# only when something is missing.

# Prints the packages of "$@" that dpkg does not show as installed.
apt_missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf ' %s' "$p"
    done
}

# Installs the packages given (already known to be missing).
apt_install() {
    [ $# -eq 0 ] && return 0
    echo "installing: $*"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    rc=0
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    [ -n "$added_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
    return $rc
}
