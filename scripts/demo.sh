#!/bin/sh
# make run: a demo httpd (event MPM) on a loopback port with mod_pidlock, a
# demo backend that shows overlapping requests, and the status page. A demo
# already running (its pid file) is stopped first, so `make run` restarts it.
# make stop (`sh scripts/demo.sh --stop`): stops it by its pid file.
#   PIDLOCK_DEMO_PORT (8089), PIDLOCK_DEMO_ROOT (/tmp/pidlock-demo)
set -e
ROOT=${PIDLOCK_DEMO_ROOT:-/tmp/pidlock-demo}
PORT=${PIDLOCK_DEMO_PORT:-8089}

# The pid in $ROOT/httpd.pid if that process is alive and is this demo's
# httpd (its command line names $ROOT/httpd.conf), else nothing.
demo_pid() {
    [ -f "$ROOT/httpd.pid" ] || return 0
    pid=$(head -n 1 "$ROOT/httpd.pid")
    case $pid in ''|*[!0-9]*) return 0 ;; esac
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$ROOT/httpd.conf"; then
        echo "$pid"
    fi
}

# Stops the demo: SIGTERM to its parent httpd (which stops its children),
# then waits (at most 15 s) for it to exit.
stop_demo() {
    pid=$(demo_pid)
    if [ -z "$pid" ]; then
        rm -f "$ROOT/httpd.pid"
        return 1
    fi
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 150 ]; then
            echo "the demo httpd (pid $pid) did not stop within 15 s" >&2
            exit 1
        fi
        sleep 0.1
    done
    rm -f "$ROOT/httpd.pid"
    echo "stopped the demo httpd (pid $pid)"
}

if [ "${1:-}" = "--stop" ]; then
    stop_demo || echo "the demo is not running (no live httpd in $ROOT/httpd.pid)"
    exit 0
fi

BUILD=$(cd "${1:-build}" && pwd)
mkdir -p "$ROOT/htdocs"
chmod 755 "$ROOT" "$ROOT/htdocs"
stop_demo || true
# Anything else on the port is not ours to stop.
if python3 -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $PORT))" 2>/dev/null; then :; else
    echo "127.0.0.1:$PORT is in use by another program; set PIDLOCK_DEMO_PORT to another port" >&2
    exit 1
fi
USERLINES=""
[ "$(id -u)" -eq 0 ] && USERLINES="User www-data
Group www-data"
cat > "$ROOT/httpd.conf" <<CONF
ServerRoot $ROOT
ServerName 127.0.0.1
Listen 127.0.0.1:$PORT
PidFile $ROOT/httpd.pid
DefaultRuntimeDir $ROOT
ErrorLog $ROOT/error.log
LogLevel info
$USERLINES
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule authz_host_module /usr/lib/apache2/modules/mod_authz_host.so
LoadModule pidlock_module $BUILD/mod_pidlock.so
LoadModule pidlock_testbackend_module $BUILD/mod_pidlock_testbackend.so
StartServers 2
ServerLimit 4
ThreadsPerChild 16
ThreadLimit 16
MaxRequestWorkers 64
MinSpareThreads 16
MaxSpareThreads 64
AllowEncodedSlashes NoDecode
DocumentRoot $ROOT/htdocs
<Location /mn/v2/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey path ^/mn/v2/(?:object|meta)/(.+)$
    PidLockKey query pid
    PidLockTimeout 10
</Location>
<Location /stats>
    SetHandler pidlock-testbackend-stats
</Location>
<Location /pidlock-status>
    SetHandler pidlock-status
    Require ip 127.0.0.1
    PidLockStatusActions On
</Location>
CONF
/usr/sbin/apache2 -t -f "$ROOT/httpd.conf"
/usr/sbin/apache2 -f "$ROOT/httpd.conf" -k start
# Up once the pid file names a live httpd and the port answers (at most 15 s).
i=0
until [ -n "$(demo_pid)" ] && python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1).close()" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 150 ]; then
        echo "the demo httpd did not come up; see $ROOT/error.log" >&2
        tail -n 20 "$ROOT/error.log" >&2
        exit 1
    fi
    sleep 0.1
done
B="http://127.0.0.1:$PORT"
cat <<MSG

mod_pidlock demo is running (event MPM, 4 processes x 16 threads):
  demo backend:  $B/mn/v2/object/<pid>    (GET reads, PUT/DELETE write; header
                 X-Test-Sleep-Ms: N makes it take N ms; X-Test-Pid: <pid> lets it
                 count overlapping writers in $B/stats)
  status page:   $B/pidlock-status        (?json, ?auto)
  overlap count: $B/stats
  error log:     $ROOT/error.log
Try:  curl -X PUT -H 'X-Test-Pid: doi:10.5063/F1' -H 'X-Test-Sleep-Ms: 20000' $B/mn/v2/object/doi:10.5063%2FF1 &
      curl -s '$B/pidlock-status?json'
Stop: make stop     (make run again restarts it)
MSG
