#!/bin/sh
# make run: a demo httpd (event MPM) on a loopback port with mod_pidlock, a
# demo backend that shows overlapping requests, and the status page.
# Stops with Ctrl-C, or `kill $(cat /tmp/pidlock-demo/httpd.pid)`.
set -e
BUILD=$(cd "${1:-build}" && pwd)
ROOT=/tmp/pidlock-demo
PORT=${PIDLOCK_DEMO_PORT:-8089}
mkdir -p "$ROOT/htdocs"
chmod 755 "$ROOT" "$ROOT/htdocs"
if [ -f "$ROOT/httpd.pid" ] && kill -0 "$(cat "$ROOT/httpd.pid")" 2>/dev/null; then
    kill "$(cat "$ROOT/httpd.pid")"
    sleep 1
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
sleep 1
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
Stop: kill \$(cat $ROOT/httpd.pid)
MSG
