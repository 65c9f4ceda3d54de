#!/usr/bin/env python3
"""The status page in a real browser (headless Chromium, playwright-core).

    python3 tests/browser/run.py [--mpm event] [--no-docs-screenshot] [--keep]

1. Starts a real httpd (event MPM) through tests/integration/harness.py with
   the status page at /pidlock-admin (PidLockStatusActions On).
2. Holds a write lock on a key with HTML in it, doi:10.5063/<b>F1</b>, and
   queues a second writer behind it.
3. Runs tests/browser/status_page.mjs: Chromium loads the page, checks the key
   is shown escaped, takes the screenshot (docs/status-page.png and the test's
   temp dir), clicks the row's Break button and follows the page until the
   waiting writer got in and finished.
4. Checks the JSON status, the writers' answers and the error log.

Needs node, npm and /usr/bin/chromium (sh scripts/install-deps-browser.sh);
runs `npm ci` into tests/browser/node_modules when playwright-core is missing.
Env: PIDLOCK_BUILD (as for the integration tests), CHROMIUM (default
/usr/bin/chromium). Prints PASS/FAIL lines and finally
`browser: N passed, M failed`; exits 1 when M > 0.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from harness import HOST, Httpd, HttpdError, poll  # noqa: E402

KEY = "doi:10.5063/<b>F1</b>"
PATH = "/mn/v2/object/doi:10.5063%2F%3Cb%3EF1%3C%2Fb%3E"
ADMIN = "/pidlock-admin"
NODE_TIMEOUT = 150      # the script limits itself to 120 s
# How long the holder keeps its request open at most: its body is held back,
# so the lock stays taken until we send it (or httpd's Timeout, 30 s, ends it).
HOLD_MAX = 28

CONFIG = r"""
<Location /mn/v2/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey path ^/mn/v2/(?:object|meta|archive)/(.+)$
    PidLockTimeout 25
</Location>
<Location /pidlock-admin>
    SetHandler pidlock-status
    Require ip 127.0.0.1
    PidLockStatusActions On
    # The holder and the waiter are told apart by their query strings.
    PidLockStatusQuery On
</Location>
"""


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, name):
        self.passed += 1
        print("PASS %s" % name, flush=True)

    def bad(self, name, why):
        self.failed += 1
        print("FAIL %s: %s" % (name, why), flush=True)

    def check(self, name, cond, why=""):
        if cond:
            self.ok(name)
        else:
            self.bad(name, why() if callable(why) else why)
        return bool(cond)


# ------------------------------------------------------------------ tooling
def tools_missing():
    missing = []
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            missing.append(tool)
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not os.access(chromium, os.X_OK):
        missing.append(chromium)
    return missing


def playwright_installed():
    try:
        with open(os.path.join(HERE, "package.json")) as f:
            want = json.load(f)["dependencies"]["playwright-core"]
        with open(os.path.join(HERE, "node_modules", "playwright-core", "package.json")) as f:
            have = json.load(f)["version"]
        return have == want
    except (OSError, ValueError, KeyError):
        return False


def npm_ci():
    env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=HERE,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, env=env)
    out = p.stdout.decode("utf-8", "replace")
    return p.returncode == 0 and playwright_installed(), out


# ------------------------------------------------------------------- server
def status(h):
    return h.get_json(ADMIN + "?json")


def the_lock(st):
    for lk in st.get("locks", []):
        if lk.get("key") == KEY:
            return lk
    return None


class HeldWriter:
    """A PUT whose headers are sent and whose one-byte body is held back: the
    lock is taken before the handler, which then waits for the body."""

    def __init__(self, h):
        self.sock = socket.create_connection((HOST, h.port), timeout=HOLD_MAX + 5)
        req = ("PUT %s?who=holder HTTP/1.1\r\nHost: %s:%d\r\nX-Test-Pid: holder\r\n"
               "X-Test-Sleep-Ms: 0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n"
               "Connection: close\r\n\r\n" % (PATH, HOST, h.port))
        self.sock.sendall(req.encode("ascii"))
        self.started = time.monotonic()

    def finish(self):
        """Sends the body; returns the status line (or an error text)."""
        try:
            self.sock.settimeout(15)
            self.sock.sendall(b"x")
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\r\n", 1)[0].decode("latin-1")
        except OSError as e:
            return "error %s" % e
        finally:
            self.close()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def start_waiter(h, result):
    def run():
        t0 = time.monotonic()
        try:
            r = h.request("PUT", PATH + "?who=waiter",
                          headers={"X-Test-Pid": "waiter", "X-Test-Sleep-Ms": "3000"},
                          body=b"x", timeout=60)
            result.append((r.status, time.monotonic() - t0, r.text.strip()))
        except Exception as e:  # noqa: BLE001
            result.append(("error %s" % e, time.monotonic() - t0, ""))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# ------------------------------------------------------------------ browser
def run_node(base_url, out_dir, copies, res):
    cmd = ["node", os.path.join(HERE, "status_page.mjs"), base_url, KEY, out_dir] + copies
    log_path = os.path.join(out_dir, "node.log")
    with open(log_path, "wb") as log:
        p = subprocess.Popen(cmd, cwd=HERE, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = p.wait(timeout=NODE_TIMEOUT)
        except subprocess.TimeoutExpired:
            # node and the Chromium it started share the session we made for it
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
            rc = None
    with open(log_path, errors="replace") as f:
        out = f.read()
    js_pass = js_fail = 0
    for line in out.splitlines():
        if line.startswith("PASS "):
            js_pass += 1
            res.ok("chromium: " + line[5:])
        elif line.startswith("FAIL "):
            js_fail += 1
            res.bad("chromium: " + line[5:].split(":", 1)[0], line[5:].split(":", 1)[-1].strip())
        elif line.startswith("# "):
            print(line, flush=True)
    if rc is None:
        res.bad("chromium script", "no end within %d s; output: %s" % (NODE_TIMEOUT, out[-1500:]))
    elif rc != 0 and js_fail == 0:
        res.bad("chromium script", "exit %s without a FAIL line; output: %s" % (rc, out[-1500:]))
    elif js_pass == 0 and js_fail == 0:
        res.bad("chromium script", "no result; output: %s" % out[-1500:])
    return rc == 0 and js_fail == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpm", default="event", choices=("prefork", "worker", "event"))
    ap.add_argument("--no-docs-screenshot", action="store_true",
                    help="do not write docs/status-page.png")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    opts = ap.parse_args()
    res = Results()
    t_start = time.monotonic()

    missing = tools_missing()
    if missing:
        res.bad("tools", "missing %s: run `sh scripts/install-deps-browser.sh`" % ", ".join(missing))
        return finish(res, t_start)
    if not playwright_installed():
        print("# npm ci in tests/browser (playwright-core missing)", flush=True)
        ok, out = npm_ci()
        if not ok:
            res.bad("npm ci", out[-1500:])
            return finish(res, t_start)

    out_dir = tempfile.mkdtemp(prefix="pidlock-browser-")
    copies = [] if opts.no_docs_screenshot else [os.path.join(REPO, "docs", "status-page.png")]
    h = Httpd(mpm=opts.mpm, body=CONFIG, name="browser-" + opts.mpm)
    holder = None
    try:
        h.start()
        base_url = "http://%s:%d%s" % (HOST, h.port, ADMIN)
        print("# httpd %s (%s MPM) pid %d, root %s; browser files in %s"
              % (base_url, opts.mpm, h.pid, h.root, out_dir), flush=True)

        # The lock, and a writer waiting behind it.
        holder = HeldWriter(h)
        lk = poll(lambda: the_lock(status(h)), timeout=10, interval=0.05)
        if not res.check("write lock held on %s" % KEY,
                         lk and lk["mode"] == "write" and len(lk["holders"]) == 1
                         and lk["holders"][0]["uri"].endswith("?who=holder"),
                         lambda: "JSON locks: %r" % status(h).get("locks")):
            return finish(res, t_start)
        holder_pid = lk["holders"][0]["pid"]
        res.check("holder's pid is an httpd child", holder_pid in h.child_pids(),
                  lambda: "pid %r, children %r" % (holder_pid, h.child_pids()))
        waiter = []
        start_waiter(h, waiter)
        lk = poll(lambda: (the_lock(status(h)) or {}).get("waiting_write") == 1 and the_lock(status(h)),
                  timeout=10, interval=0.05)
        if not res.check("second writer waiting", lk,
                         lambda: "JSON locks: %r; waiter: %r" % (status(h).get("locks"), waiter)):
            return finish(res, t_start)

        # The browser: page, screenshot, Break, the page afterwards.
        t_browser = time.monotonic()
        run_node(base_url, out_dir, copies, res)
        print("# browser part took %.1f s" % (time.monotonic() - t_browser), flush=True)

        # The JSON afterwards (bounded polls).
        poll(lambda: bool(waiter), timeout=15, interval=0.1)
        res.check("waiting writer answered 200 after the break",
                  waiter and waiter[0][0] == 200 and waiter[0][2].startswith("ok waiter write"),
                  lambda: "waiter: %r" % (waiter,))
        res.check("waiting writer did not wait for the holder to end",
                  waiter and waiter[0][1] < 20,
                  lambda: "waiter: %r" % (waiter,))
        empty = poll(lambda: status(h)["table"]["used"] == 0 and not status(h)["locks"],
                     timeout=15, interval=0.1)
        st = status(h)
        res.check("JSON: table empty", empty, lambda: "table %r locks %r" % (st["table"], st["locks"]))
        c = st["counters"]
        res.check("JSON: one break counted", c.get("broken") == 1, lambda: "counters %r" % c)
        res.check("JSON: two writes acquired, one waited",
                  c.get("acquired_write") == 2 and c.get("waited", 0) >= 1 and c.get("timeouts") == 0,
                  lambda: "counters %r" % c)

        # The broken holder ends now; its own release must change nothing.
        line = holder.finish()
        res.check("broken holder's request still completes", line.startswith("HTTP/1.1 200"),
                  lambda: "holder answered %r" % line)
        time.sleep(0.2)
        st2 = status(h)
        res.check("JSON: the broken holder's release changes nothing",
                  st2["table"]["used"] == 0 and not st2["locks"] and st2["counters"]["broken"] == 1
                  and st2["counters"]["acquired_write"] == 2,
                  lambda: "table %r counters %r locks %r" % (st2["table"], st2["counters"], st2["locks"]))

        log = h.read_log()
        brk = [l for l in log.splitlines() if "PIDLOCK201" in l]
        res.check("error log: the break, with key and client",
                  len(brk) == 1 and "F1" in brk[0] and "client 127.0.0.1" in brk[0]
                  and "1 holder(s) released" in brk[0],
                  lambda: "PIDLOCK201 lines: %r" % brk)
        refused = [l for l in log.splitlines() if "PIDLOCK20" in l and "PIDLOCK201" not in l]
        res.check("error log: no refused break", not refused, lambda: "%r" % refused)
        crashes = Httpd.crash_lines(log)
        res.check("error log: no crash", not crashes, lambda: "%r" % crashes[:5])

        shot = os.path.join(out_dir, "status-page.png")
        for p in [shot] + copies:
            try:
                with open(p, "rb") as f:
                    head = f.read(8)
                size = os.path.getsize(p)
            except OSError as e:
                head, size = b"", "(%s)" % e
            res.check("screenshot %s is a PNG" % os.path.relpath(p, REPO) if p in copies else "screenshot in temp dir is a PNG",
                      head == b"\x89PNG\r\n\x1a\n" and size > 10000,
                      lambda: "%s: %r, %s bytes" % (p, head, size))
    except HttpdError as e:
        res.bad("httpd", str(e))
    except Exception as e:  # noqa: BLE001
        res.bad("driver", "%s: %s" % (type(e).__name__, e))
    finally:
        if holder is not None:
            holder.close()
        if not h.stop():
            res.bad("httpd stop", "httpd or a child needed SIGKILL")
        keep = opts.keep or res.failed
        if keep:
            print("# kept: httpd root %s, browser files %s" % (h.root, out_dir), flush=True)
        else:
            h.cleanup()
            shutil.rmtree(out_dir, ignore_errors=True)
    return finish(res, t_start)


def finish(res, t_start):
    print("# took %.1f s" % (time.monotonic() - t_start), flush=True)
    print("browser: %d passed, %d failed" % (res.passed, res.failed), flush=True)
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
