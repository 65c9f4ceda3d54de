#!/usr/bin/env python3
"""mod_pidlock integration tests against a real httpd.

    python3 tests/integration/run.py [--mpm prefork|worker|event]... [--test NAME]...
                                     [--no-pidlock] [--keep] [-v]

Env: PIDLOCK_BUILD (default: build, relative to the repo root) holds
mod_pidlock.so and mod_pidlock_testbackend.so.

Prints `PASS <mpm>/<name> (T s)` or `FAIL <mpm>/<name>: reason (T s)` per test
(T: the time since the previous result) and finally `integration: N passed,
M failed`; exits 1 when M > 0.
"""

import argparse
import os
import random
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Httpd, HttpdError, KeepAliveClient, TestFailure, build_dir, status_locations,  # noqa: E402
                     check, poll)

MPMS = ("prefork", "worker", "event")

CONFIG = r"""
<Location /mn/v2/>
    SetHandler pidlock-testbackend
    <IfModule pidlock_module>
        PidLock On
        PidLockKey path ^/mn/v2/(?:object|meta|archive)/(.+)$
        PidLockKey query pid
        PidLockKey header X-Pid
        PidLockTimeout 20
    </IfModule>
</Location>
<Location /off/v2/>
    SetHandler pidlock-testbackend
    <IfModule pidlock_module>
        PidLock Off
        PidLockKey path ^/off/v2/(?:object|meta|archive)/(.+)$
        PidLockKey query pid
        PidLockKey header X-Pid
    </IfModule>
</Location>
<Location /busy/>
    SetHandler pidlock-testbackend
    <IfModule pidlock_module>
        PidLock On
        PidLockKey path ^/busy/(.+)$
        PidLockTimeout 0.3
    </IfModule>
</Location>
<Location /sub/>
    SetHandler pidlock-testbackend-subreq
    <IfModule pidlock_module>
        PidLock On
        PidLockKey path ^/sub/(.+)$
        PidLockTimeout 5
    </IfModule>
</Location>
<Location /redir/>
    SetHandler pidlock-testbackend-redirect
    <IfModule pidlock_module>
        PidLock On
        PidLockKey path ^/redir/(.+)$
        PidLockTimeout 5
    </IfModule>
</Location>
<IfModule pidlock_module>
""" + status_locations(admin=False) + r"""</IfModule>
<Location /stats>
    SetHandler pidlock-testbackend-stats
</Location>
"""


# ----------------------------------------------------------------- helpers
def q(s, safe=""):
    """Percent-encode everything but unreserved chars (and `safe`), upper-case hex."""
    return urllib.parse.quote(s, safe=safe)


def spellings(pid, prefix="/mn/v2"):
    """Many request spellings of one PID -> list of (url, extra_headers)."""
    p1 = q(pid, safe=":")                       # doi:10.5063%2FF1
    p2 = q(pid).replace("%2F", "%2f")           # doi%3A10.5063%2fF1
    p3 = q(pid, safe=":/")                      # literal slashes
    out = [
        (prefix + "/object/" + p1, {}),
        (prefix + "/object/" + p2, {}),
        (prefix + "/object/" + p3, {}),
        (prefix.replace("/v2", "//v2/.") + "/object/" + p1, {}),
        (prefix + "/%6Fbject/" + p1, {}),
        (prefix + "/meta/" + p1, {}),
        (prefix + "/archive/" + p1, {}),
        (prefix + "/x?pid=" + q(pid), {}),
        (prefix + "/y", {"X-Pid": p1}),
    ]
    return out


def status_json(h):
    return h.get_json("/pidlock-status?json")


def table_used(h):
    return status_json(h)["table"]["used"]


def wait_table_empty(h, timeout=3.0):
    used = poll(lambda: table_used(h) == 0, timeout=timeout)
    if not used:
        st = status_json(h)
        raise TestFailure("table.used=%s after %.1fs; locks=%s"
                          % (st["table"]["used"], timeout, st.get("locks")))


def stats(h, reset=False):
    return h.get_json("/stats?reset" if reset else "/stats")


def run_load(h, pids, prefix, threads=16, per_thread=40, weights=(60, 30, 10),
             sleep_ms=3, seed=None):
    """Concurrent mixed load; returns (n_requests, list of error strings)."""
    rnd_master = random.Random(seed)
    errors = []
    count = [0]
    lock = threading.Lock()
    plans = {pid: spellings(pid, prefix) for pid in pids}

    def worker(tid):
        rnd = random.Random(rnd_master.random() + tid)
        cl = KeepAliveClient(h, timeout=30)
        try:
            for _ in range(per_thread):
                pid = rnd.choice(pids)
                url, extra = rnd.choice(plans[pid])
                method = rnd.choices(("GET", "PUT", "DELETE"), weights=weights)[0]
                hdrs = {"X-Test-Pid": pid, "X-Test-Sleep-Ms": str(sleep_ms)}
                hdrs.update(extra)
                body = b"payload" if method == "PUT" else None
                try:
                    r = cl.request(method, url, headers=hdrs, body=body)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append("%s %s: %s: %s" % (method, url, type(e).__name__, e))
                    continue
                with lock:
                    count[0] += 1
                mode = "read" if method == "GET" else "write"
                expect = "ok %s %s " % (pid, mode)
                if r.status != 200 or not r.text.startswith(expect):
                    with lock:
                        errors.append("%s %s -> %d %r" % (method, url, r.status, r.body[:200]))
        finally:
            cl.close()

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 120
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    if any(t.is_alive() for t in ts):
        errors.append("load threads still running after 120 s")
    return count[0], errors


# -------------------------------------------------------------------- tests
PIDS = ["doi:10.5063/F1", "doi:10.5063/F2", "urn:uuid:c100%"]


def t_overlap_on(h, opts):
    stats(h, reset=True)
    before = status_json(h)["counters"] if opts.pidlock else None
    n, errors = run_load(h, PIDS, "/mn/v2", threads=16, per_thread=40)
    check(not errors, "%d errors, e.g. %s" % (len(errors), errors[:3]))
    s = stats(h)
    check(s["violations"] == 0, "violations=%d in %d requests (backend saw %d)"
          % (s["violations"], n, s["requests"]))
    check(s["requests"] >= n, "backend saw %d requests, client sent %d" % (s["requests"], n))
    if opts.pidlock:
        wait_table_empty(h)
        after = status_json(h)["counters"]
        check(after["acquired_write"] > before["acquired_write"], "acquired_write did not grow")
        check(after["acquired_read"] > before["acquired_read"], "acquired_read did not grow")


def t_overlap_off(h, opts):
    last = None
    for attempt in range(3):
        stats(h, reset=True)
        n, errors = run_load(h, ["doi:10.5063/OFF"], "/off/v2", threads=16, per_thread=25,
                             weights=(50, 40, 10), sleep_ms=5, seed=attempt)
        check(not errors, "%d errors, e.g. %s" % (len(errors), errors[:3]))
        last = stats(h)
        if last["violations"] > 0:
            return
    raise TestFailure("no violation detected without locking in 3 attempts (%s)" % last)


def t_busy_timeout(h, opts):
    before = status_json(h)["counters"]["timeouts"]
    holder = {}

    def hold():
        try:
            holder["r"] = h.request("PUT", "/busy/k1", body=b"x", timeout=15,
                                    headers={"X-Test-Pid": "busy-k1", "X-Test-Sleep-Ms": "2000"})
        except Exception as e:  # noqa: BLE001
            holder["e"] = e

    t = threading.Thread(target=hold, daemon=True)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.2)
    try:
        r = h.request("GET", "/busy/k1", headers={"X-Test-Pid": "busy-k1"}, timeout=10)
        check(r.status == 503, "GET during held write lock -> %d %r (expected 503)"
              % (r.status, r.body[:200]))
        check(r.elapsed < 2.0, "503 took %.2fs with PidLockTimeout 0.3" % r.elapsed)
        ra = r.headers.get("retry-after")
        check(ra is not None and ra.strip().isdigit() and int(ra) >= 1,
              "Retry-After missing or < 1: %r" % ra)
        check(b"k1" in r.body, "503 body does not name the key: %r" % r.body[:300])
        ctype = r.headers.get("content-type", "")
        check("json" not in ctype, "text 503 has content-type %r" % ctype)

        rj = h.request("GET", "/busy/k1", timeout=10,
                       headers={"X-Test-Pid": "busy-k1", "Accept": "application/json"})
        check(rj.status == 503, "JSON GET -> %d %r" % (rj.status, rj.body[:200]))
        check("json" in rj.headers.get("content-type", ""),
              "JSON 503 content-type %r" % rj.headers.get("content-type"))
        try:
            doc = rj.json()
        except ValueError as e:
            raise TestFailure("503 JSON body does not parse: %s: %r" % (e, rj.body[:300]))
        check(_json_has_value(doc, "k1"), "JSON 503 body does not carry key k1: %r" % doc)
        check(b"127.0.0.1" not in r.body + rj.body, "503 body shows a client address")
        check(time.monotonic() - t0 < 1.9, "503s were slower than the 2 s hold; test invalid")
    finally:
        t.join(15)
    check(not t.is_alive(), "holder PUT did not finish")
    check("e" not in holder, "holder PUT failed: %r" % holder.get("e"))
    check(holder["r"].status == 200, "holder PUT -> %r" % holder["r"])
    after = status_json(h)["counters"]["timeouts"]
    check(after >= before + 2, "counters.timeouts %d -> %d (expected +2)" % (before, after))
    check('PIDLOCK102: read lock on key "k1" (2 bytes) not had within 0.300 s (held write by 1;' in h.read_log(),
          "the busy answer's log line does not name the key")
    wait_table_empty(h)


def _json_has_value(doc, value):
    if isinstance(doc, dict):
        if doc.get("key") == value:
            return True
        return any(_json_has_value(v, value) for v in doc.values())
    if isinstance(doc, list):
        return any(_json_has_value(v, value) for v in doc)
    return False


def t_bad_keys(h, opts):
    before = status_json(h)["counters"]["bad_keys"]
    long_k = "b" * 1100
    cases = [
        ("GET", "/mn/v2/x?pid=%4", {}, 400),
        ("GET", "/mn/v2/x?pid=%zz", {}, 400),
        ("GET", "/mn/v2/x?pid=", {}, 400),
        ("GET", "/mn/v2/x?pid", {}, 400),
        ("GET", "/mn/v2/x?pid=a%00b", {}, 400),
        ("PUT", "/mn/v2/x?pid=%4", {}, 400),
        ("GET", "/mn/v2/y", {"X-Pid": "%zz"}, 400),
        ("GET", "/mn/v2/y", {"X-Pid": "a%00b"}, 400),
        ("GET", "/mn/v2/x?pid=" + long_k, {}, 414),
        ("GET", "/mn/v2/x?pid=" + "%62" * 1100, {}, 414),
        ("GET", "/mn/v2/object/" + long_k, {}, 414),
        ("GET", "/mn/v2/y", {"X-Pid": long_k}, 400),
    ]
    bad = []
    for method, url, hdrs, want in cases:
        hh = {"X-Test-Pid": "badkey"}
        hh.update(hdrs)
        r = h.request(method, url, headers=hh, body=b"x" if method == "PUT" else None)
        if r.status != want:
            bad.append("%s %s%s -> %d (want %d) %r" % (method, url[:60],
                       " " + str({k: v[:20] for k, v in hdrs.items()}) if hdrs else "",
                       r.status, want, r.body[:80]))
    # exactly at the limit is fine
    r = h.request("GET", "/mn/v2/x?pid=" + "c" * 1024, headers={"X-Test-Pid": "c" * 1024})
    if r.status != 200:
        bad.append("key of exactly 1024 bytes -> %d" % r.status)
    check(not bad, "; ".join(bad))
    wait_table_empty(h)
    r = h.request("GET", "/mn/v2/object/after-bad-keys", headers={"X-Test-Pid": "after"})
    check(r.status == 200, "server no longer serves after bad keys: %r" % r)
    after = status_json(h)["counters"]["bad_keys"]
    check(after > before, "counters.bad_keys did not grow (%d -> %d)" % (before, after))


def t_subrequest_redirect(h, opts):
    for url in ("/sub/k?uri=/mn/v2/object/k", "/redir/k?uri=/mn/v2/object/k"):
        for method in ("PUT", "GET"):
            try:
                r = h.request(method, url, headers={"X-Test-Pid": "k"}, timeout=10,
                              body=b"x" if method == "PUT" else None)
            except OSError as e:
                raise TestFailure("%s %s: %s (self-deadlock?)" % (method, url, e))
            check(r.status == 200, "%s %s -> %d %r" % (method, url, r.status, r.body[:200]))
            mode = "read" if method == "GET" else "write"
            check(("ok k %s" % mode) in r.text, "%s %s: backend did not run: %r"
                  % (method, url, r.body[:200]))
            if url.startswith("/sub/"):
                check("subreq 200" in r.text, "%s %s: %r" % (method, url, r.body[:200]))
            check(r.elapsed < 5, "%s %s took %.1fs" % (method, url, r.elapsed))
    wait_table_empty(h)
    # A sub-request that runs, to a key its request does not hold, takes
    # that key's lock (in its own method's mode) while it runs: it locks in
    # the handler phase, where ap_run_sub_req runs it.
    for method in ("GET", "PUT"):
        mode = "read" if method == "GET" else "write"
        out = []

        def run(method=method, out=out):
            try:
                out.append(h.request(method, "/sub/sk?uri=/mn/v2/object/sb", timeout=15,
                                     headers={"X-Test-Pid": "sb", "X-Test-Sleep-Ms": "1500"},
                                     body=b"x" if method == "PUT" else None))
            except Exception as e:  # noqa: BLE001
                out.append(e)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        held = poll(lambda: [l for l in status_json(h)["locks"] if l["key"] == "sb"], timeout=5)
        t.join(15)
        check(held and held[0]["mode"] == mode,
              "%s: the running sub-request held no %s lock on its key: %r" % (method, mode, held))
        check(out and not isinstance(out[0], Exception) and out[0].status == 200,
              "%s /sub/sk?uri=/mn/v2/object/sb: %r" % (method, out[:1]))
        check(("ok sb %s" % mode) in out[0].text and "subreq 200" in out[0].text,
              "%s /sub/sk?uri=/mn/v2/object/sb: %r" % (method, out[0].body[:200]))
    wait_table_empty(h)
    # One refused (its key busy past PidLockTimeout) answers the module that
    # ran it with the status, and writes nothing into the response.
    out = []
    t = threading.Thread(target=lambda: out.append(h.request(
        "PUT", "/busy/sbusy", body=b"x", timeout=15, headers={"X-Test-Pid": "sbusy", "X-Test-Sleep-Ms": "2000"})),
        daemon=True)
    t.start()
    check(poll(lambda: [l for l in status_json(h)["locks"] if l["key"] == "sbusy"], timeout=5),
          "the writer on sbusy never held its lock")
    r = h.request("GET", "/sub/sk?uri=/busy/sbusy", headers={"X-Test-Pid": "sbusy"}, timeout=15)
    t.join(15)
    check(r.status == 200 and r.text == "subreq 503\n",
          "a refused sub-request: %d %r (want 200 'subreq 503')" % (r.status, r.body[:300]))
    check(out and out[0].status == 200, "the writer on sbusy: %r" % out[:1])
    wait_table_empty(h)


def t_released_after_all(h, opts):
    wait_table_empty(h)
    st = status_json(h)
    check(st["locks"] == [], "locks not empty: %r" % st["locks"])


TESTS = [
    ("overlap_on", t_overlap_on, True),
    ("overlap_off", t_overlap_off, False),
    ("busy_timeout", t_busy_timeout, True),
    ("bad_keys", t_bad_keys, True),
    ("subrequest_redirect", t_subrequest_redirect, True),
    ("released_after_all", t_released_after_all, True),
]


# ------------------------------------------------------------------- runner
class Results:
    def __init__(self, verbose=False):
        self.passed = 0
        self.failed = 0
        self.verbose = verbose
        self.last = time.monotonic()

    def record(self, name, err=None):
        # The time since the previous result: the test's, with its server's
        # start where it has one (to find the slow ones).
        now = time.monotonic()
        took = " (%.1f s)" % (now - self.last)
        self.last = now
        if err is None:
            self.passed += 1
            print("PASS %s%s" % (name, took), flush=True)
        else:
            self.failed += 1
            print("FAIL %s: %s%s" % (name, " ".join(str(err).split())[:1500], took), flush=True)


def run_mpm(mpm, opts, res):
    h = Httpd(mpm=mpm, body=CONFIG, load_pidlock=opts.pidlock, name=mpm)
    try:
        h.start()
    except HttpdError as e:
        res.record("%s/start" % mpm, e)
        h.cleanup(opts.keep)
        return
    try:
        for name, fn, needs_pidlock in TESTS:
            if opts.tests and name not in opts.tests:
                continue
            if needs_pidlock and not opts.pidlock:
                continue
            full = "%s/%s" % (mpm, name)
            err = None
            try:
                fn(h, opts)
            except Exception as e:  # noqa: BLE001
                err = e if isinstance(e, AssertionError) else "%s: %s" % (type(e).__name__, e)
                if opts.verbose:
                    traceback.print_exc()
            crashes = Httpd.crash_lines(h.log_since_mark())
            if crashes and err is None:
                err = "error log: " + " | ".join(crashes[:3])
            res.record(full, err)
    finally:
        clean = h.stop()
        crashes = Httpd.crash_lines(h.log_since_mark())
        err = None
        if not clean:
            err = "httpd did not stop cleanly on SIGTERM"
        if crashes:
            err = (err + "; " if err else "") + "error log: " + " | ".join(crashes[:3])
        res.record("%s/clean_shutdown" % mpm, err)
        if opts.keep or res.failed:
            print("# %s server root kept: %s" % (mpm, h.root), flush=True)
        else:
            h.cleanup()


def run_cluster_suites(mpms, opts, res):
    """The cluster suite under each MPM, the MPMs side by side: a process
    each (test_cluster keeps its MPM in a module global), each with its own
    PostgreSQL, servers and network namespace numbers. Most of their time
    is spent waiting (sessions, keepalives, timeouts), not computing. The
    output of each is shown whole once it ends, its results counted here."""
    import subprocess
    procs = []
    for mpm in mpms:
        cmd = [sys.executable, os.path.abspath(__file__), "--cluster-only", "--mpm", mpm]
        for t in opts.tests or []:
            cmd += ["--test", t]
        out = tempfile.TemporaryFile(mode="w+")
        procs.append((mpm, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, PIDLOCK_CLUSTER_SLICE=str(MPMS.index(mpm)))),
                      out))
    deadline = time.monotonic() + 1200
    for mpm, p, out in procs:
        try:
            rc = p.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
            res.record("cluster/%s" % mpm, "the suite did not end within 20 minutes")
        out.seek(0)
        summary = False
        for line in out:
            line = line.rstrip("\n")
            if line.startswith("integration: "):
                summary = True
                continue
            print(line, flush=True)
            if line.startswith("PASS "):
                res.passed += 1
            elif line.startswith("FAIL "):
                res.failed += 1
        out.close()
        if not summary:
            res.record("cluster/%s" % mpm, "no result line (exit %d)" % rc)
    res.last = time.monotonic()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpm", action="append", choices=MPMS)
    ap.add_argument("--test", action="append", dest="tests")
    ap.add_argument("--no-pidlock", dest="pidlock", action="store_false",
                    help="do not load mod_pidlock (only harness/backend checks run)")
    ap.add_argument("--keep", action="store_true", help="keep server roots")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--cluster-only", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    res = Results(opts.verbose)
    if opts.cluster_only:
        # One MPM's cluster suite, for run_cluster_suites().
        from test_cluster import run_cluster_suite
        for mpm in opts.mpm or MPMS:
            run_cluster_suite(mpm, res.record, opts.tests)
        print("integration: %d passed, %d failed" % (res.passed, res.failed))
        return 1 if res.failed else 0
    for so in (["mod_pidlock.so"] if opts.pidlock else []) + ["mod_pidlock_testbackend.so"]:
        if not os.path.exists(os.path.join(build_dir(), so)):
            res.record("setup", "%s missing in %s" % (so, build_dir()))
            print("integration: %d passed, %d failed" % (res.passed, res.failed))
            return 1
    for mpm in opts.mpm or MPMS:
        run_mpm(mpm, opts, res)
    if opts.pidlock:
        from test_startup import STARTUP_TESTS
        from test_reliability import RELIABILITY_TESTS
        from test_status import STATUS_TESTS
        suites = [("startup/" + n, f) for n, f in STARTUP_TESTS] + \
                 [("reliability/" + n, f) for n, f in RELIABILITY_TESTS] + \
                 [("status/" + n, f) for n, f in STATUS_TESTS]
        for name, fn in suites:
            if opts.tests and name.split("/")[-1] not in opts.tests and name not in opts.tests:
                continue
            err = None
            try:
                fn(opts)
            except Exception as e:  # noqa: BLE001
                err = e if isinstance(e, AssertionError) else "%s: %s" % (type(e).__name__, e)
                if opts.verbose:
                    traceback.print_exc()
            res.record(name, err)
        from test_form import run_form_suite
        for mpm in opts.mpm or MPMS:
            run_form_suite(mpm, res.record, opts.tests)
        from test_lease import run_lease_suite
        for mpm in opts.mpm or MPMS:
            run_lease_suite(mpm, res.record, opts.tests)
        from test_davclients import run_davclient_suite
        for mpm in opts.mpm or MPMS:
            run_davclient_suite(mpm, res.record, opts.tests)
        run_cluster_suites(opts.mpm or MPMS, opts, res)
        from test_lease_cluster import run_lease_cluster_suite
        run_lease_cluster_suite(opts.mpm or MPMS, res.record, opts.tests)
    print("integration: %d passed, %d failed" % (res.passed, res.failed))
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
