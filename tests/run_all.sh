#!/bin/sh
# Runs every test suite and ends with one line "N passed, M failed".
# Unit tests run twice: plain, and under AddressSanitizer + UBSan.
BUILD=${1:-build}
export PIDLOCK_BUILD="$BUILD"
passed=0
failed=0
log=$(mktemp)
# Every failure's line, repeated before the closing count: CI shows only the
# output's tail, and that must say what failed.
failures=$(mktemp)
trap 'rm -f "$log" "$failures"' EXIT
# note_failures FILE: its failure lines (a suite's FAIL lines, CppUTest's
# "Failure in TEST(...)", a sanitizer's report) join the summary.
note_failures() {
    grep -E '^FAIL|Failure in TEST|^[^ ]*: no result line|ERROR: (Address|Undefined|Leak)Sanitizer|runtime error:' "$1" \
        | cut -c1-400 >>"$failures"
}
# Each suite's wall time, printed after it (what makes make test long).
t_start=$(date +%s)
t_mark=$t_start
took() {
    now=$(date +%s)
    echo "# $1 took $((now - t_mark)) s"
    t_mark=$now
}
say_failed() {
    echo "$1"
    echo "$1" >>"$failures"
}

# CppUTest closes with "OK (N tests, ...)" or "Errors (F failures, N tests, ...)".
run_cpputest() {
    name=$1; shift
    echo "== $name"
    "$@" >"$log" 2>&1
    rc=$?
    tail -n 40 "$log"
    note_failures "$log"
    line=$(grep -E '^(OK|Errors) \(' "$log" | tail -n 1)
    total=$(echo "$line" | sed -n 's/.*[ (]\([0-9][0-9]*\) tests.*/\1/p')
    fails=$(echo "$line" | sed -n 's/^Errors (\([0-9][0-9]*\) failure.*/\1/p')
    [ -n "$fails" ] || fails=0
    if [ -z "$total" ]; then
        echo "$name: no result line (exit $rc)"
        echo "FAIL $name: no result line (exit $rc)" >>"$failures"
        failed=$((failed + 1))
        return
    fi
    # A sanitizer report or a crash after the summary still fails the suite.
    if [ "$rc" -ne 0 ] && [ "$fails" -eq 0 ]; then
        fails=1
        echo "FAIL $name: exit $rc after its summary line" >>"$failures"
    fi
    passed=$((passed + total - fails))
    failed=$((failed + fails))
}

# httpd finds a module by its exported structure: a build that hides it
# loads nowhere, so check both modules before anything else.
for m in "mod_pidlock.so pidlock_module" "mod_pidlock_testbackend.so pidlock_testbackend_module"; do
    set -- $m
    if nm -D --defined-only "$BUILD/$1" 2>/dev/null | grep -q " $2\$"; then
        passed=$((passed + 1))
    else
        say_failed "FAIL $1 does not export $2"
        failed=$((failed + 1))
    fi
done

# Only pidlock_module: nothing else of the module's may bind to another
# module's symbols, and no STB_GNU_UNIQUE symbol may pin it in memory
# (a graceful restart must load a new build).
extra=$(nm -D --defined-only "$BUILD/mod_pidlock.so" | awk '{print $3}' | grep -v '^pidlock_module$')
unique=$(readelf --dyn-syms -W "$BUILD/mod_pidlock.so" | grep -c UNIQUE)
if [ -z "$extra" ] && [ "$unique" -eq 0 ]; then
    passed=$((passed + 1))
else
    say_failed "FAIL mod_pidlock.so exports more than pidlock_module: $(echo $extra | head -c 300); UNIQUE symbols: $unique"
    failed=$((failed + 1))
fi

# A throwaway PostgreSQL for the cluster tier's unit tests (the contract
# suite runs over it too); make test installed the server, so one that does
# not start is a failure. Stopped by its pid (bench/pg.sh stop).
pgdir=$(mktemp -d /tmp/pidlock-unit-pg.XXXXXX)
trap 'rm -f "$log" "$failures"; sh bench/pg.sh stop "$pgdir" >/dev/null 2>&1' EXIT
if PIDLOCK_TEST_PG=$(sh bench/pg.sh start "$pgdir" 2>"$log") &&
    psql "$PIDLOCK_TEST_PG" -X -q -v ON_ERROR_STOP=1 -f conf/pidlock-cluster.sql >>"$log" 2>&1; then
    export PIDLOCK_TEST_PG
    passed=$((passed + 1))
else
    say_failed "FAIL the throwaway PostgreSQL did not start:"; tail -n 20 "$log"
    failed=$((failed + 1))
fi

run_cpputest "unit tests" "$BUILD/unit_tests"
took "unit tests"
# Exported, not prefixed: an assignment before a function call is not
# guaranteed to reach the commands inside it.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_cpputest "unit tests (ASan+UBSan)" "$BUILD/unit_tests_asan"
took "unit tests (ASan+UBSan)"
unset ASAN_OPTIONS UBSAN_OPTIONS
sh bench/pg.sh stop "$pgdir" >/dev/null 2>&1
unset PIDLOCK_TEST_PG

# Short libFuzzer runs (make fuzz runs longer); any crash or broken
# assertion fails one. Arguments: target, seed corpus, work corpus.
run_fuzz() {
    echo "== $1 (libFuzzer, 10 s)"
    mkdir -p "$BUILD/$3"
    if "$BUILD/$1" -max_total_time=10 -print_final_stats=1 "$BUILD/$3" "$2" >"$log" 2>&1; then
        grep -E "^Done|stat::number_of_executed_units" "$log" | head -2
        passed=$((passed + 1))
    else
        tail -n 30 "$log"
        say_failed "FAIL $1"
        failed=$((failed + 1))
    fi
}
# Key extraction and rendering; the form-body scanner; the lease parsers.
run_fuzz fuzz_keys tests/fuzz/corpus fuzz-corpus
run_fuzz fuzz_form tests/fuzz/corpus_form fuzz-corpus-form
# The lease header parsers.
run_fuzz fuzz_lease tests/fuzz/corpus_lease fuzz-corpus-lease
took "fuzzers"

# A suite whose runner closes with "<name>: N passed, M failed".
run_counted() {
    name=$1; shift
    "$@" >"$log" 2>&1
    rc=$?
    cat "$log"
    note_failures "$log"
    line=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed" "$log" | tail -n 1)
    if [ -z "$line" ]; then
        echo "$name: no result line (exit $rc)"
        echo "FAIL $name: no result line (exit $rc)" >>"$failures"
        failed=$((failed + 1))
        return
    fi
    p=$(echo "$line" | sed -n "s/^$name: \([0-9]*\) passed.*/\1/p")
    f=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
    passed=$((passed + p))
    failed=$((failed + f))
    # A runner that failed without counting it still fails the run.
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        failed=$((failed + 1))
        echo "FAIL $name: exit $rc with no failure counted" >>"$failures"
    fi
}

echo "== the fast path's protocol model (spin: mutual exclusion, no stuck state, broken variants caught)"
run_counted model sh tests/model/run.sh
took "model"

echo "== message ids (one call site each)"
run_counted log-ids python3 scripts/check-log-ids.py mod_pidlock

echo "== integration tests (real httpd: prefork, worker, event)"
run_counted integration python3 tests/integration/run.py
took "integration"

echo "== demo (make run, make run again, make stop)"
run_counted demo python3 tests/demo/run.py "$BUILD"
took "demo"

echo "== Debian package (build, lintian, install, configtest, upgrade, purge)"
run_counted deb python3 tests/deb/run.py "$BUILD"
took "deb"

echo "== browser test (headless Chromium: the status page)"
run_counted browser python3 tests/browser/run.py --no-docs-screenshot
took "browser"

if [ -s "$failures" ]; then
    echo "== what failed"
    cat "$failures"
fi
echo "# all suites took $(( $(date +%s) - t_start )) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
