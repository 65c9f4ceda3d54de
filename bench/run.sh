#!/bin/sh
# make bench [BENCH_MODE=full]: mod_pidlock against the alternatives (lock
# operations, handoff and fairness, scale), httpd On vs Off, a slow backend,
# form keys (bench/form_bench.py), and (full mode) callgrind's instructions per request. Markdown and plot
# data go to bench/results/<mode>/, the plots (PNG, gnuplot) next to them.
# Quick mode takes under five minutes, full mode about thirty.
# A throwaway PostgreSQL cluster (Unix socket in a temp dir) serves the
# advisory-lock rows and is stopped by its pid file as soon as they are done;
# without PostgreSQL those rows say so and the rest runs.
set -e
BUILD=${1:-build}
MODE=${2:-quick}
[ "$MODE" = full ] || MODE=quick
out=bench/results/$MODE
mkdir -p "$out"
rm -f "$out"/*.dat "$out"/*.png "$out/.failed"
md="$out/results.md"
t0=$(date +%s)

pgdir=$(mktemp -d /tmp/pidlock-bench-pg-XXXXXX)
cleanup() { sh bench/pg.sh stop "$pgdir"; }
trap cleanup EXIT
trap 'exit 1' INT TERM
conninfo=""
pgnote=""
if conninfo=$(sh bench/pg.sh start "$pgdir" 2>"$pgdir.err"); then
    pgver=$(ls -d /usr/lib/postgresql/*/bin | sort -V -r | head -1)
    pgnote="PostgreSQL $("$pgver/postgres" --version | awk '{print $3}') (throwaway cluster, Unix socket, fsync off)"
else
    pgnote="PostgreSQL not measured: $(cat "$pgdir.err" | head -3 | tr '\n' ' ')"
    conninfo=""
fi
rm -f "$pgdir.err"
[ -n "$conninfo" ] || echo "*** $pgnote" >&2

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The run's own outputs (bench/results) are being rewritten: not a change.
git diff --quiet HEAD -- mod_pidlock bench ':!bench/results' 2>/dev/null || commit="$commit + uncommitted changes"
{
    echo "# mod_pidlock benchmarks ($MODE mode)"
    echo
    echo "Machine: $(nproc) CPUs ($cpu), $(free -g | awk '/^Mem:/{print $2}') GiB,"\
         "$(. /etc/os-release; echo "$PRETTY_NAME"), $(uname -sr), glibc $(ldd --version | head -1 | awk '{print $NF}'),"\
         "APR $(dpkg-query -W -f='${Version}' libapr1 2>/dev/null | cut -d- -f1),"\
         "$(/usr/sbin/apache2 -v | head -1 | cut -d: -f2 | sed 's/^ //'), $pgnote, $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)."
    echo "Code: commit $commit. Run: $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
} > "$md"
cat "$md"

# Lock benchmarks, then PostgreSQL goes at once (keeps the machine quiet).
{ PIDLOCK_PG_CONNINFO="$conninfo" "$BUILD/bench_table" "$MODE" "$out" || echo bench_table > "$out/.failed"; } | tee -a "$md"
cleanup
# httpd loads private copies of the modules: a rebuild of $BUILD while the
# bench runs (make test elsewhere) must not change code under a live server.
sodir=$(mktemp -d /tmp/pidlock-bench-so-XXXXXX)
chmod 755 "$sodir"
trap 'rm -rf "$sodir"' EXIT
cp "$BUILD/mod_pidlock.so" "$BUILD/mod_pidlock_testbackend.so" "$BUILD/mod_pidlock_naive.so" "$sodir/"

{ PIDLOCK_BUILD="$sodir" python3 bench/httpd_bench.py "$MODE" "$out" || echo httpd_bench > "$out/.failed"; } | tee -a "$md"
# The PostgreSQL tier behind the slow backend: local-only, tiered and the
# naive design side by side (its own throwaway PostgreSQL, stopped by pid).
{ PIDLOCK_BUILD="$sodir" python3 bench/cluster_bench.py "$MODE" "$out" || echo cluster_bench >> "$out/.failed"; } | tee -a "$md"
# Keys from the request body: callgrind, 1 MiB uploads, memory and temp files
# under 64 concurrent 100 MiB uploads (about 1.5 minutes in quick mode).
{ PIDLOCK_BUILD="$sodir" python3 bench/form_bench.py "$MODE" "$out" || echo form_bench >> "$out/.failed"; } | tee -a "$md"
if [ "$MODE" = full ]; then
    if command -v valgrind >/dev/null; then
        { PIDLOCK_BUILD="$sodir" python3 bench/callgrind_cost.py 2000 || echo callgrind > "$out/.failed"; } | tee -a "$md"
    else
        echo "callgrind: valgrind not installed, instructions per request not measured." | tee -a "$md"
    fi
fi
if command -v gnuplot >/dev/null; then
    gnuplot -e "dir='$out'" bench/plots.gp || echo gnuplot > "$out/.failed"
    echo "Plots: $(cd "$out" && ls *.png | tr '\n' ' ')" | tee -a "$md"
else
    echo "Plots: gnuplot not installed (sh scripts/install-deps-bench.sh)." | tee -a "$md"
fi
echo "Took $(( $(date +%s) - t0 )) s." | tee -a "$md"
if [ -f "$out/.failed" ]; then
    echo "FAILED: $(cat "$out/.failed")" >&2
    exit 1
fi
echo "written: $md"
