"""What the suite runners (tests/demo, tests/deb) share: the tally of
PASS/FAIL lines with the closing `<suite>: N passed, M failed` line
tests/run_all.sh counts, and loopback port helpers."""

import socket


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


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listeners(port):
    """Local addresses (hex ip:port of /proc/net/tcp{,6}) listening on port;
    127.0.0.1 reads 0100007F there."""
    found = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(f).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                found.append(cols[1])
    return found
