"""A suite runner's tally: PASS/FAIL lines and the closing
`<suite>: N passed, M failed` line tests/run_all.sh counts."""


class Counted:
    def __init__(self, suite):
        self.suite = suite
        self.passed = 0
        self.failed = 0

    def record(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print("PASS %s/%s" % (self.suite, name), flush=True)
        else:
            self.failed += 1
            print("FAIL %s/%s: %s" % (self.suite, name, " ".join(str(detail).split())[:1200]), flush=True)

    def summary(self):
        """Prints the closing line; the exit status for sys.exit."""
        print("%s: %d passed, %d failed" % (self.suite, self.passed, self.failed), flush=True)
        return 1 if self.failed else 0
