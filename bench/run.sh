#!/bin/sh
# make bench [BENCH_MODE=full]: lock-table micro-benchmarks and httpd On/Off,
# written to bench/results/latest.md (and shown). Quick mode takes about
# two minutes; full mode about fifteen.
set -e
BUILD=${1:-build}
MODE=${2:-quick}
out=bench/results/latest.md
mkdir -p bench/results
{
    echo "# mod_pidlock benchmarks ($MODE mode)"
    echo
    echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"\
         "$(uname -sr), $(/usr/sbin/apache2 -v | head -1 | cut -d: -f2 | sed 's/^ //'), $(date -u +%Y-%m-%d)."
    echo
    "$BUILD/bench_table" "$MODE"
    PIDLOCK_BUILD="$BUILD" python3 bench/httpd_bench.py "$MODE"
    if [ "$MODE" = full ] && command -v valgrind >/dev/null; then
        PIDLOCK_BUILD="$BUILD" python3 bench/callgrind_cost.py 2000
    fi
} | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "written: $out"
