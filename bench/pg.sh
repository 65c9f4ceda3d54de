#!/bin/sh
# A throwaway PostgreSQL cluster for the benchmarks: no TCP, one Unix socket
# in a temp dir, run as a non-root user (postgres, else nobody) when started
# as root.
#   sh bench/pg.sh start DIR   prints the libpq conninfo, or a reason on stderr
#                              and exit status 2 when PostgreSQL is missing
#                              (PG_EXTRA_OPTS: more server options, last wins)
#   sh bench/pg.sh restart DIR restarts the server (fast: every session ends)
#   sh bench/pg.sh down DIR    stops the server, keeps DIR; up DIR starts it again
#   sh bench/pg.sh stop DIR    stops the server by the pid in its postmaster.pid
#                              and removes DIR
set -e
cmd=$1
dir=$2
[ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 1; }

bindir=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && { bindir=$d; break; }
done

as_user() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u "$pguser" -- "$@"; else "$@"; fi
}
pguser=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
    if id postgres >/dev/null 2>&1; then pguser=postgres; else pguser=nobody; fi
fi

case "$cmd" in
start)
    if [ -z "$bindir" ]; then
        echo "PostgreSQL server not installed (no /usr/lib/postgresql/*/bin/initdb); run sh scripts/install-deps-bench.sh" >&2
        exit 2
    fi
    mkdir -p "$dir"
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown "$pguser" "$dir"
    as_user "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 || {
        echo "initdb failed, see $dir/initdb.log" >&2; cat "$dir/initdb.log" >&2; exit 1; }
    # Durability off (this cluster only holds advisory locks), 150 connections
    # for 100 waiters and the workers.
    echo "-c listen_addresses='' -k $dir -c max_connections=150 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB ${PG_EXTRA_OPTS:-}" >"$dir/opts"
    as_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start \
        -o "$(cat "$dir/opts")" >/dev/null || {
        echo "pg_ctl start failed, see $dir/server.log" >&2; cat "$dir/server.log" >&2; exit 1; }
    echo "host=$dir dbname=postgres user=postgres"
    ;;
down)
    # Stops the server and keeps its data (up starts it again as it was).
    as_user "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
    ;;
up)
    as_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start -o "$(cat "$dir/opts")" >/dev/null
    ;;
restart)
    as_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 30 restart >/dev/null
    ;;
stop)
    pidf="$dir/data/postmaster.pid"
    if [ -f "$pidf" ]; then
        pid=$(head -1 "$pidf")
        if [ -n "$bindir" ]; then
            as_user "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
        fi
        # Still there (pg_ctl missing or stuck): signal the postmaster by pid.
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -INT "$pid" 2>/dev/null || true
            i=0
            while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|restart|down|up|stop DIR" >&2; exit 1
    ;;
esac
