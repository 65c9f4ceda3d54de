#!/bin/sh
# Checks tests/model/*.pml with spin (exhaustive search), and checks that the
# model catches broken variants of the protocol. Ends with
# "model: N passed, M failed".
cd "$(dirname "$0")" || exit 1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
# verify NAME MODEL EXPECT [DEFINE]: EXPECT ok (no error) or caught (errors).
verify() {
    name=$1 model=$2 expect=$3 def=$4
    (cd "$work" && rm -f pan* ./*.trail && spin -a $def "$OLDPWD/$model" >spin.log 2>&1 &&
        cc -O2 -DSAFETY -o pan pan.c >cc.log 2>&1 && ./pan -m100000 >pan.log 2>&1)
    errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$work/pan.log" | tail -n 1)
    states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$work/pan.log" | tail -n 1)
    if [ -z "$errors" ]; then
        echo "FAIL $name: spin did not run"; cat "$work/spin.log" "$work/cc.log" "$work/pan.log" 2>/dev/null
        failed=$((failed + 1)); return
    fi
    if { [ "$expect" = ok ] && [ "$errors" -eq 0 ]; } || { [ "$expect" = caught ] && [ "$errors" -gt 0 ]; }; then
        echo "ok   $name ($states states, $errors errors: expected $expect)"
        passed=$((passed + 1))
    else
        echo "FAIL $name ($states states, $errors errors: expected $expect)"
        grep -E "assertion|invalid end" "$work/pan.log"
        failed=$((failed + 1))
    fi
}
verify "fast path + death + repair" fastpath.pml ok
verify "broken: fast CAS ignores REPAIR" fastpath.pml caught -DBROKEN_NO_REPAIR_CHECK
verify "broken: repair does not wait for pending slots" fastpath.pml caught -DBROKEN_NO_SETTLE
echo "model: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
