"""Faults against a real httpd: a child killed holding a write lock, a
graceful restart in the middle of a write, and a fuzz run of hostile
request paths and headers.
"""
import os
import random
import re
import shutil
import socket
import threading
import time

from harness import HOST, Httpd, KeepAliveClient, build_dir, check, poll
from run import CONFIG, status_json, wait_table_empty


def _holder_pid(h, key):
    st = status_json(h)
    for lock in st["locks"]:
        if lock["key"] == key and lock["holders"]:
            return lock["holders"][0]["pid"]
    return None


class _HeldWrite:
    """A PUT on /mn/v2/object/<key> that the test backend holds for `ms`,
    sent from a thread (its backend witness PID `witness`, default `key`);
    returns once the status page shows its holder. When it ends: `status`
    (None if the request failed, e.g. its child was killed), `ended_at`
    (monotonic) and the event `ended`."""

    def __init__(self, h, key, ms, witness=None, timeout=30):
        self.status = None
        self.ended_at = None
        self.ended = threading.Event()

        def run():
            try:
                r = h.request("PUT", "/mn/v2/object/" + key,
                              headers={"X-Test-Pid": witness or key, "X-Test-Sleep-Ms": str(ms)},
                              body=b"x", timeout=timeout)
                self.status = r.status
            except Exception:  # noqa: BLE001 - reported as status None
                pass
            finally:
                self.ended_at = time.monotonic()
                self.ended.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        check(poll(lambda: _holder_pid(h, key) is not None, timeout=5), "the write on %s never held" % key)


def t_killed_holder(mpm):
    """kill -9 of the child holding a write lock: the next writer waiting on
    that key gets it in under a second."""
    h = Httpd(mpm=mpm, body=CONFIG, name="kill-" + mpm)
    try:
        h.start()
        url = "/mn/v2/object/victim"
        _HeldWrite(h, "victim", 30000, witness="victim-a", timeout=40)  # its child is killed under it
        victim = _holder_pid(h, "victim")
        done = []
        lock = threading.Lock()

        def wait_writer(n):
            try:
                r = h.request("PUT", url, headers={"X-Test-Pid": "victim-%d" % n, "X-Test-Sleep-Ms": "1"},
                              body=b"y", timeout=25)
            except Exception:  # noqa: BLE001 - a waiter in the killed child dies with it
                return
            with lock:
                done.append((r.status, time.monotonic()))

        def waiter_pids():
            for lk in status_json(h)["locks"]:
                if lk["key"] == "victim":
                    return [w["pid"] for w in lk.get("waiters", [])]
            return []

        # Threaded MPMs may queue a waiter in the holder's own process, which
        # the kill takes down too: queue waiters until one is elsewhere.
        ts = []
        for n in range(14):
            t = threading.Thread(target=wait_writer, args=(n,), daemon=True)
            t.start()
            ts.append(t)
            check(poll(lambda: len(waiter_pids()) == n + 1, timeout=5), "writer %d never waited" % n)
            if any(p != victim for p in waiter_pids()):
                break
        check(any(p != victim for p in waiter_pids()), "no waiter outside the holder's process")
        import os
        import signal
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        for t in ts:
            t.join(20)
        check(done, "no waiting writer ever got the lock")
        check(all(s == 200 for s, _ in done), "waiting writers got %s" % [s for s, _ in done])
        waited = min(at for _, at in done) - killed_at
        print("# %s: first waiting writer got the lock %.0f ms after kill -9 of its holder"
              % (mpm, waited * 1000))
        check(waited < 1.0, "writer waited %.3f s after the holder was killed" % waited)
        wait_table_empty(h)
        st = status_json(h)
        check(st["counters"]["reaped"] >= 1, "reaped counter is %s" % st["counters"]["reaped"])
    finally:
        h.stop()
        h.cleanup()


def t_graceful_keeps_locks(mpm):
    """A graceful restart during a long write: a read on the same PID sent to
    the new generation waits until the old-generation write is done."""
    h = Httpd(mpm=mpm, body=CONFIG, name="graceful-" + mpm)
    try:
        h.start()
        url = "/mn/v2/object/gr"
        write = _HeldWrite(h, "gr", 3000)
        gen0 = status_json(h)["generation"]
        h.graceful()
        check(poll(lambda: status_json(h)["generation"] != gen0, timeout=10, interval=0.1),
              "no new generation after graceful")
        check(_holder_pid(h, "gr") is not None, "the old generation's lock vanished")
        r = h.request("GET", url, headers={"X-Test-Pid": "gr", "X-Test-Sleep-Ms": "1"}, timeout=30)
        read_done = time.monotonic()
        write.ended.wait(30)
        check(write.status == 200, "write: %r" % write.status)
        check(r.status == 200, "read: %d" % r.status)
        check(read_done >= write.ended_at - 0.05,
              "the read finished %.3f s before the write" % (write.ended_at - read_done))
        stats = h.get_json("/stats")
        check(stats["violations"] == 0, "violations: %s" % stats["violations"])
        wait_table_empty(h)
    finally:
        h.stop()
        h.cleanup()


def _swap_module(h, built):
    """Puts build/<built> where the server loads mod_pidlock from, by rename,
    as a package upgrade does: running processes keep the file they mapped."""
    dst = os.path.join(h.root, "mod_pidlock.so")
    tmp = dst + ".new"
    shutil.copyfile(os.path.join(build_dir(), built), tmp)
    os.rename(tmp, dst)


def _layouts():
    """The table layout version of build/mod_pidlock.so and of
    build/mod_pidlock_layout2.so, read from the sources (kLayoutVersion and
    the Makefile's PIDLOCK_LAYOUT_BUMP), so that a layout bump does not
    leave this test expecting the previous one."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    with open(os.path.join(root, "mod_pidlock", "pidlock_table.cc")) as f:
        base = int(re.search(r"kLayoutVersion = (\d+) \+ PIDLOCK_LAYOUT_BUMP;", f.read()).group(1))
    with open(os.path.join(root, "Makefile")) as f:
        bump = int(re.search(r"-DPIDLOCK_LAYOUT_BUMP=(\d+)", f.read()).group(1))
    return base, base + bump


def _upgrade_during_write(h, built, pid, layout):
    """A 3 s write on `pid` runs while the server restarts gracefully onto
    build/<built> (table layout `layout`); a read of the same PID sent to the
    new generation must end after the write."""
    url = "/mn/v2/object/" + pid
    write = _HeldWrite(h, pid, 3000)
    gen0 = status_json(h)["generation"]
    gates = h.read_log().count("PIDLOCK031")
    opened = h.read_log().count("PIDLOCK033")
    logged = len(h.read_log())
    _swap_module(h, built)
    h.graceful()
    check(poll(lambda: h.read_log().count("PIDLOCK031") > gates, timeout=10, interval=0.1),
          "no PIDLOCK031 (new table, old processes) after graceful")
    check("lock table of layout %d:" % layout in h.read_log()[logged:], "layout %d is not what runs" % layout)
    r = h.request("GET", url, headers={"X-Test-Pid": pid, "X-Test-Sleep-Ms": "1"}, timeout=30)
    read_done = time.monotonic()
    write.ended.wait(30)
    check(h.proc.poll() is None, "httpd exited at the graceful restart: %s" % h.startup_output())
    check(write.status == 200, "write: %r" % write.status)
    check(r.status == 200, "read: %d %s" % (r.status, r.text[:200]))
    check(read_done >= write.ended_at - 0.05,
          "the new generation's read finished %.3f s before the old write" % (write.ended_at - read_done))
    check(status_json(h)["generation"] != gen0, "no new generation after graceful")
    check(poll(lambda: h.read_log().count("PIDLOCK033") > opened, timeout=10, interval=0.1),
          "the gate never opened (no PIDLOCK033)")


def t_graceful_new_layout(mpm):
    """A graceful restart onto a build whose lock table layout differs (a new
    release): httpd keeps running, loads the new code, and no request of the
    new generation locks until the old generation's processes are gone, so a
    read sent to the new generation never runs beside the old write on the
    same PID. Then back onto the first build (its retained table is taken up
    again), the same way; then once more with nothing held."""
    h = Httpd(mpm=mpm, body=CONFIG, name="upgrade-" + mpm, load_pidlock=False)
    h.extra_modules = [("pidlock_module", os.path.join(h.root, "mod_pidlock.so"))]
    try:
        _swap_module(h, "mod_pidlock.so")
        h.start()
        # The test build's table layout is the module's plus 100.
        layout, layout2 = _layouts()
        _upgrade_during_write(h, "mod_pidlock_layout2.so", "up", layout2)
        _upgrade_during_write(h, "mod_pidlock.so", "down", layout)
        gen0 = status_json(h)["generation"]
        _swap_module(h, "mod_pidlock_layout2.so")
        h.graceful()
        check(poll(lambda: status_json(h)["generation"] != gen0, timeout=10, interval=0.1),
              "no new generation after the idle graceful")
        for method in ("GET", "PUT"):
            r = h.request(method, "/mn/v2/object/idle", headers={"X-Test-Pid": "idle", "X-Test-Sleep-Ms": "1"},
                          body=b"y", timeout=30)
            check(r.status == 200, "%s after the idle restart: %d" % (method, r.status))
        stats = h.get_json("/stats")
        check(stats["violations"] == 0, "violations: %s" % stats["violations"])
        check(h.proc.poll() is None, "httpd exited")
        crashes = Httpd.crash_lines(h.read_log())
        check(not crashes, "crash in the log: %s" % crashes[:3])
        wait_table_empty(h)
    finally:
        h.stop()
        h.cleanup()


def _raw(h, data, timeout=5):
    s = socket.create_connection((HOST, h.port), timeout=timeout)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out
    except OSError:
        return b""
    finally:
        s.close()


def t_fuzz(mpm):
    """A few thousand hostile requests; the server keeps serving, no child
    crashes, no slot leaks."""
    h = Httpd(mpm=mpm, body=CONFIG, name="fuzz-" + mpm)
    rnd = random.Random(4242)
    alphabet = ["%", "%2F", "%2f", "%00", "%zz", "%4", "/", "//", "./", "../", "?", "&", "=",
                "+", "pid=", "\xff", "\xc3\xa9", "<script>", "\"", "\\", ";", "a", "b", "x" * 300,
                "%25", "%252F", "\t", "~"]
    methods = ["GET", "PUT", "DELETE", "POST", "HEAD", "OPTIONS", "PROPFIND", "FOO", "M" * 40]
    try:
        h.start()
        cl = KeepAliveClient(h, timeout=10)
        sent = 0
        for i in range(3000):
            path = "/mn/v2/" + rnd.choice(["object/", "meta/", "x", "archive/"]) + "".join(
                rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
            hdrs = {"X-Test-Sleep-Ms": "0"}
            if rnd.random() < 0.3:
                hdrs["X-Pid"] = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8)))
            if rnd.random() < 0.05:
                hdrs["X-Pid"] = "k" * rnd.choice([1023, 1024, 1025, 5000])
            method = rnd.choice(methods)
            req = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)).encode("latin-1")
            for k, v in hdrs.items():
                req += ("%s: %s\r\n" % (k, v)).encode("latin-1")
            req += b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            out = _raw(h, req)
            sent += 1
            if out:
                code = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else 0
                check(code in (200, 400, 403, 404, 405, 414, 501) or code == 0 or code >= 500 and code != 503,
                      "unexpected %d for %r" % (code, req[:200]))
                check(code != 500, "500 for %r" % req[:200])
            if i % 300 == 0:
                r = cl.request("GET", "/mn/v2/object/alive", headers={"X-Test-Pid": "alive"})
                check(r.status == 200, "server stopped serving: %d" % r.status)
        cl.close()
        r = h.request("GET", "/mn/v2/object/alive", headers={"X-Test-Pid": "alive"})
        check(r.status == 200, "server stopped serving after fuzz: %d" % r.status)
        wait_table_empty(h)
        crashes = Httpd.crash_lines(h.read_log())
        check(not crashes, "crash lines: %s" % crashes[:3])
        check(status_json(h)["counters"]["bad_keys"] > 0, "fuzz produced no bad keys at all")
    finally:
        h.stop()
        h.cleanup()


def t_chaos(mpm):
    """Concurrent clients on a few PIDs while children are killed at random:
    no overlap among the requests that completed, an empty table after."""
    import os
    import signal
    # Soak knobs (defaults: the test as it runs in `make test`):
    # PIDLOCK_CHAOS_SECONDS how long children are killed, PIDLOCK_CHAOS_PAUSE
    # "min,max" seconds between two kills.
    seconds = float(os.environ.get("PIDLOCK_CHAOS_SECONDS", "8"))
    pause = [float(x) for x in os.environ.get("PIDLOCK_CHAOS_PAUSE", "0.3,0.7").split(",")]
    per_client = int(300 * max(1.0, seconds / 8))
    h = Httpd(mpm=mpm, body=CONFIG, name="chaos-" + mpm)
    try:
        h.start()
        h.get_json("/stats?reset")
        pids = ["c1", "c2", "c3"]
        stop = threading.Event()
        lock = threading.Lock()
        counts = {"ok": 0, "failed": 0}
        rnd = random.Random(99)

        def client(n):
            r2 = random.Random(n)
            for _ in range(per_client):
                if stop.is_set():
                    break
                pid = r2.choice(pids)
                method = r2.choice(["GET", "GET", "PUT", "DELETE"])
                try:
                    r = h.request(method, "/mn/v2/object/" + pid,
                                  headers={"X-Test-Pid": pid, "X-Test-Sleep-Ms": "5"},
                                  body=b"x" if method == "PUT" else None, timeout=15)
                    with lock:
                        counts["ok" if r.status == 200 else "failed"] += 1
                except Exception:  # noqa: BLE001 - its child was killed under it
                    with lock:
                        counts["failed"] += 1

        ts = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(12)]
        for t in ts:
            t.start()
        kills = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(t.is_alive() for t in ts):
            time.sleep(rnd.uniform(pause[0], pause[1]))
            kids = h.child_pids()
            if kids:
                try:
                    os.kill(rnd.choice(kids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:  # it exited on its own meanwhile
                    pass
        stop.set()
        for t in ts:
            t.join(30)
        check(kills >= 5, "only %d kills" % kills)

        def settled(fn):
            # The last kill may leave a child dying under the next request.
            for attempt in range(10):
                try:
                    return fn()
                except OSError:
                    time.sleep(0.3)
            return fn()

        st = settled(lambda: h.get_json("/stats"))
        pc = settled(lambda: status_json(h))["counters"]
        print("# %s chaos: %d kills, %d completed, %d failed requests, %d violations; reaped %d, repairs %d"
              % (mpm, kills, counts["ok"], counts["failed"], st["violations"], pc["reaped"], pc.get("repairs", 0)))
        if st["violations"]:
            import tempfile
            fd, path = tempfile.mkstemp(prefix="pidlock-chaos-%s-" % mpm, suffix=".log")
            with os.fdopen(fd, "w") as f:
                f.write(h.read_log())
            print("# chaos error log kept in %s" % path)
        check(counts["ok"] > 100, "too few completed requests: %r" % counts)
        check(st["violations"] == 0, "violations among completed requests: %d" % st["violations"])
        settled(lambda: wait_table_empty(h, timeout=10))
        r = settled(lambda: h.request("GET", "/mn/v2/object/after", headers={"X-Test-Pid": "after"}))
        check(r.status == 200, "server no longer serves: %d" % r.status)
        log = h.read_log()
        unexpected = [l for l in Httpd.crash_lines(log) if "exit signal Killed" not in l]
        check(not unexpected, "unexpected crash lines: %s" % unexpected[:3])
    finally:
        h.stop()
        h.cleanup()


SCRIBBLE_CONFIG = CONFIG + r"""
<Location /scribble>
    SetHandler pidlock-testbackend-scribble
</Location>
"""


def _retry(fn, attempts=20, pause=0.25):
    """fn() until it returns without a socket error (a scribbled child may
    die under a request)."""
    for _ in range(attempts - 1):
        try:
            return fn()
        except OSError:
            time.sleep(pause)
    return fn()


def t_parent_distrust(mpm):
    """A child scribbles the lock table and the exit list (random bytes, then
    self-linked chains); children are killed with -9. httpd's parent keeps
    running and replacing children, unlocked URLs keep answering, and it stops
    cleanly on SIGTERM."""
    import os
    import signal
    from harness import pid_alive
    h = Httpd(mpm=mpm, body=SCRIBBLE_CONFIG, name="distrust-" + mpm)
    try:
        h.start()
        r = h.request("GET", "/mn/v2/object/before", headers={"X-Test-Pid": "before"})
        check(r.status == 200, "locked URL before: %d" % r.status)
        for what in ("random", "selflink"):
            before = set(h.child_pids())
            r = _retry(lambda: h.request("GET", "/scribble?what=" + what))
            check(r.status == 200 and b"scribbled" in r.body, "scribble %s: %r" % (what, r))
            victims = sorted(before)[:2]
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            check(poll(lambda: pid_alive(h.pid) and bool(set(h.child_pids()) - before), timeout=15,
                       interval=0.1),
                  "%s: no new child after kill -9 (parent alive: %s)" % (what, pid_alive(h.pid)))
            for i in range(10):
                r = _retry(lambda: h.request("GET", "/off/v2/object/u%d" % i,
                                             headers={"X-Test-Pid": "u%d" % i}, timeout=5))
                check(r.status == 200, "%s: unlocked URL answered %d" % (what, r.status))
                r = _retry(lambda: h.request("GET", "/stats", timeout=5))
                check(r.status == 200, "%s: /stats answered %d" % (what, r.status))
            check(pid_alive(h.pid), "%s: the parent died" % what)
        # The parent wrote nothing it was steered to: it is still the same
        # process, and it answers SIGTERM in time.
        check(h.stop(timeout=20), "httpd did not stop cleanly on SIGTERM")
        log = h.read_log()
        parent_crash = [l for l in log.splitlines() if "seg fault or similar nasty error detected in the parent" in l
                        or "AH00059" in l]
        check(not parent_crash, "parent trouble: %s" % parent_crash[:3])
        print("# %s: parent %d survived random and self-linked scribbles; %d repair/audit line(s) logged"
              % (mpm, h.pid, log.count("PIDLOCK012") + log.count("PIDLOCK313")))
    finally:
        h.stop()
        h.cleanup()


def t_max_waiters(mpm):
    """One held lock, then 70 GETs on its PID, each on its own connection:
    with the default PidLockMaxWaiters (16 auto) at most 16 wait and every
    other one is refused at once, and an unrelated URL answers within a
    second (it took PidLockTimeout when every worker sat in the wait). The
    clients stay connected until the counts are read, so that none leaves
    the queue on its own (a request whose client went away while it waited
    would make room for another); then they all hang up."""
    h = Httpd(mpm=mpm, body=CONFIG, name="maxwait-" + mpm)
    socks = []
    try:
        h.start()
        url = "/mn/v2/object/hot"
        held = _HeldWrite(h, "hot", 6000).ended
        req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Test-Pid: hot\r\n\r\n" % url).encode()
        for _ in range(70):
            try:
                s = socket.create_connection((HOST, h.port), timeout=5)
                s.sendall(req)
                socks.append(s)
            except OSError:
                pass
        time.sleep(0.3)  # let the pile land on the workers
        t0 = time.monotonic()
        r = h.request("GET", "/mn/v2/object/cold", headers={"X-Test-Pid": "cold"}, timeout=30)
        took = time.monotonic() - t0

        def counts():
            st = status_json(h)
            waiting = sum(lk["waiting_read"] + lk["waiting_write"] for lk in st["locks"] if lk["key"] == "hot")
            return waiting, st["counters"].get("refused_waiters", 0), st["counters"].get("client_gone", 0)

        # Every request reaches the lock: it waits or is refused (bounded
        # poll, well inside the 6 s the key is held).
        n = len(socks)
        deadline = time.monotonic() + 4
        waiting, refused, gone = counts()
        while waiting + refused < n and time.monotonic() < deadline:
            time.sleep(0.05)
            waiting, refused, gone = counts()
        for s in socks:
            s.close()
        socks = []
        print("# %s: unrelated URL answered in %.0f ms with %d clients piled on a held key; "
              "%d waiting on it, %d refused at once, %d gone"
              % (mpm, took * 1000, n, waiting, refused, gone))
        check(r.status == 200, "unrelated URL: %d" % r.status)
        check(took < 1.0, "unrelated URL took %.2f s" % took)
        check(waiting <= 16, "%d waiting on the held key" % waiting)
        check(gone == 0, "%d left the queue while their clients were still connected" % gone)
        check(n >= 60, "only %d of 70 clients connected" % n)
        check(waiting + refused == n, "of %d requests %d wait and %d were refused" % (n, waiting, refused))
        held.wait(30)
        wait_table_empty(h, timeout=30)
    finally:
        for s in socks:
            s.close()
        h.stop()
        h.cleanup()


def t_client_gone(mpm):
    """A PUT waits behind a writer; its client closes the connection. The
    waiting request leaves the queue (measured, printed), is logged at info
    with PIDLOCK140 and counted as client_gone, and never reaches the
    handler: the backend counts only the holder's request."""
    h = Httpd(mpm=mpm, body=CONFIG, name="clientgone-" + mpm)
    try:
        h.start()
        h.get_json("/stats?reset")
        url = "/mn/v2/object/gone"
        done = _HeldWrite(h, "gone", 3000).ended
        s = socket.create_connection((HOST, h.port), timeout=5)
        s.sendall(("PUT %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Test-Pid: gone\r\n"
                   "Content-Length: 1\r\n\r\ny" % url).encode())

        def waiting():
            st = status_json(h)
            return sum(lk["waiting_write"] for lk in st["locks"] if lk["key"] == "gone")

        check(poll(lambda: waiting() == 1, timeout=5), "the second PUT never waited")
        t0 = time.monotonic()
        s.close()
        check(poll(lambda: waiting() == 0, timeout=2, interval=0.005), "the closed client still waits")
        left = time.monotonic() - t0
        check(not done.is_set(), "the holder finished before the client was seen gone")
        done.wait(30)
        wait_table_empty(h, timeout=30)
        st = status_json(h)
        stats = h.get_json("/stats")
        log = h.read_log()
        print("# %s: a client that closed while waiting left the queue after %.0f ms "
              "(status page polled every 5 ms)" % (mpm, left * 1000))
        check(st["counters"].get("client_gone") == 1, "client_gone: %s" % st["counters"].get("client_gone"))
        check(stats["requests"] == 1, "the backend ran %d requests (the gone one must not run)" % stats["requests"])
        check(stats["violations"] == 0, "violations: %s" % stats["violations"])
        check('PIDLOCK140: client went away while its write lock on key "gone" waited' in log,
              "no PIDLOCK140 naming the key in the error log")
    finally:
        h.stop()
        h.cleanup()


def t_killed_holder_status_only(mpm):
    """kill -9 of the child holding a write lock that nobody else asks for:
    the status page alone (no locking request) stops showing the lock once
    the parent has reported the child's exit, and counts it as reaped."""
    import os
    import signal
    from harness import MPM_SETTINGS
    # One spare child (threads) is enough: the killed child is not replaced,
    # so no new child's audit reaps it either, only what the page does.
    settings = MPM_SETTINGS[mpm].replace("MinSpareServers 4", "MinSpareServers 1") \
        .replace("MinSpareThreads 16", "MinSpareThreads 1")
    h = Httpd(mpm=mpm, body=CONFIG, name="lonely-" + mpm, mpm_settings=settings)
    try:
        h.start()
        _HeldWrite(h, "lonely", 30000, timeout=40)  # its child is killed under it
        victim = _holder_pid(h, "lonely")
        before = status_json(h)["counters"]["reaped"]
        kids_before = set(h.child_pids())
        logged = len(h.read_log())
        os.kill(victim, signal.SIGKILL)
        # Only status requests from here on (JSON, HTML, ?auto); one that the
        # dying child had accepted is reset, and asked again.
        gone = poll(lambda: _retry(lambda: _holder_pid(h, "lonely") is None
                                   and h.request("GET", "/pidlock-status").status == 200
                                   and h.request("GET", "/pidlock-status?auto").status == 200), timeout=10)
        st = _retry(lambda: status_json(h))
        check(gone, "the killed child's lock still shown: %s" % [l for l in st["locks"] if l["key"] == "lonely"])
        check(st["counters"]["reaped"] > before, "reaped %d, was %d" % (st["counters"]["reaped"], before))
        check(not st["locks"], "table not empty: %s" % st["locks"])
        # Under prefork, where no child replaced the killed one, the page
        # alone reaped it (PIDLOCK313). A child's start-up audit may get
        # there first (PIDLOCK012): the threaded MPMs start a new child, and
        # prefork now and then (its idle count, read once a second, can catch
        # the survivors busy with the status requests), or a child forked
        # before the kill ran its start-up after it (seen once on a loaded
        # machine: no new child, no 313, the test 0.4 s old). Whoever reaped
        # it said so.
        new_kids = set(h.child_pids()) - kids_before
        log = h.read_log()
        if mpm == "prefork" and not new_kids:
            check("PIDLOCK313" in log or "PIDLOCK012" in log[logged:],
                  "neither the page (PIDLOCK313) nor a child's start-up (PIDLOCK012) logged the reap")
    finally:
        h.stop()
        h.cleanup()


RELIABILITY_TESTS = [("event/max_waiters", lambda opts: t_max_waiters("event"))]
for _mpm in ("prefork", "worker", "event"):
    RELIABILITY_TESTS.append(("%s/client_gone" % _mpm, (lambda m: lambda opts: t_client_gone(m))(_mpm)))
    RELIABILITY_TESTS.append(("%s/graceful_new_layout" % _mpm,
                              (lambda m: lambda opts: t_graceful_new_layout(m))(_mpm)))
    RELIABILITY_TESTS.append(("%s/killed_holder_status_only" % _mpm,
                              (lambda m: lambda opts: t_killed_holder_status_only(m))(_mpm)))
# worker's children are multi-threaded too (they die thread by thread).
RELIABILITY_TESTS.append(("worker/chaos", lambda opts: t_chaos("worker")))
for _mpm in ("prefork", "event"):
    RELIABILITY_TESTS += [
        ("%s/killed_holder" % _mpm, (lambda m: lambda opts: t_killed_holder(m))(_mpm)),
        ("%s/graceful_keeps_locks" % _mpm, (lambda m: lambda opts: t_graceful_keeps_locks(m))(_mpm)),
        ("%s/fuzz" % _mpm, (lambda m: lambda opts: t_fuzz(m))(_mpm)),
        ("%s/chaos" % _mpm, (lambda m: lambda opts: t_chaos(m))(_mpm)),
        ("%s/parent_distrust" % _mpm, (lambda m: lambda opts: t_parent_distrust(m))(_mpm)),
    ]
