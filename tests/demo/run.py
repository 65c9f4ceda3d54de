#!/usr/bin/env python3
"""The demo as a user drives it: `make run`, `make run` again (a restart, not
a busy port), `make stop` (by the pid file), `make stop` again; the demo
listens on loopback only and a port some other program holds is left alone.
Runs the demo in a temp root on a free port (PIDLOCK_DEMO_ROOT/PORT), so a
demo the developer has running is untouched. Prints `demo: N passed, M failed`.

    python3 tests/demo/run.py [BUILD]
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
sys.path.insert(0, os.path.join(ROOT, "tests"))
from common import Counted, free_port, listeners  # noqa: E402

suite = Counted("demo")
record = suite.record


def make(target, env):
    e = dict(os.environ, **env)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        e.pop(k, None)
    p = subprocess.run(["make", "--no-print-directory", target, "BUILD=%s" % BUILD], cwd=ROOT, env=e,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def pid_of(root):
    try:
        return int(open(os.path.join(root, "httpd.pid")).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def status(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/pidlock-status?auto" % port, timeout=5) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except Exception as e:  # noqa: BLE001 - reported as the failure's detail
        return None, str(e)


def port_free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def main():
    root = tempfile.mkdtemp(prefix="pidlock-demo-test-")
    port = free_port()
    env = {"PIDLOCK_DEMO_ROOT": root, "PIDLOCK_DEMO_PORT": str(port)}
    try:
        rc, out = make("run", env)
        first = pid_of(root)
        code, body = status(port)
        record("run", rc == 0 and first and alive(first) and code == 200, "rc %s pid %s status %s: %s %s"
               % (rc, first, code, body[:200], out[-800:]))
        # 0100007F is 127.0.0.1 in /proc/net/tcp's byte order.
        ls = listeners(port)
        record("loopback_only", ls and all(a.startswith("0100007F:") for a in ls), ls)

        rc, out = make("run", env)
        second = pid_of(root)
        code, body = status(port)
        record("run_again_restarts", rc == 0 and second and second != first and not alive(first)
               and alive(second) and code == 200,
               "rc %s first %s second %s status %s: %s" % (rc, first, second, code, out[-800:]))

        rc, out = make("stop", env)
        gone = not alive(second) if second else False
        record("stop", rc == 0 and gone and not os.path.exists(os.path.join(root, "httpd.pid"))
               and not listeners(port) and port_free(port), "rc %s pid %s alive %s listeners %s: %s"
               % (rc, second, not gone, listeners(port), out[-800:]))
        rc, out = make("stop", env)
        record("stop_when_stopped", rc == 0 and "not running" in out, out[-400:])

        # A port another program listens on: make run says so and fails,
        # the other program keeps its port.
        other = socket.socket()
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        other.listen(1)
        try:
            rc, out = make("run", env)
            record("busy_port_refused", rc != 0 and "in use by another program" in out
                   and pid_of(root) is None and listeners(port), "rc %s: %s" % (rc, out[-600:]))
        finally:
            other.close()
    finally:
        # Whatever a failed check left running, stopped by its pid file.
        pid = pid_of(root)
        if pid and alive(pid):
            make("stop", env)
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
            for _ in range(150):
                if not alive(pid):
                    break
                time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
    return suite.summary()


if __name__ == "__main__":
    sys.exit(main())
