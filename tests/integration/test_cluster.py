"""PidLockCluster postgres: two httpd instances ("hosts", two loopback ports)
over one throwaway PostgreSQL (bench/pg.sh: initdb + pg_ctl, Unix socket in
a temp dir, stopped by its pid).

The overlap witness both hosts see is the test backend's marker files
(X-Test-Witness-Dir): a writer owns a PID while its O_EXCL file exists.
A host cut off from the network runs in a network namespace of its own
(ip netns, veth) and reaches PostgreSQL over TCP; without CAP_NET_ADMIN that
test is skipped, and says so.
"""

import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import harness
from harness import REPO, Httpd, check, poll, status_locations
from test_startup import WORKER_ONE  # one child of 16 threads
from test_status import _admin_page, _break

PG_SH = os.path.join(REPO, "bench", "pg.sh")
SQL = os.path.join(REPO, "conf", "pidlock-cluster.sql")


class Pg:
    """The throwaway server; conninfo once started."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pidlock-pg-")
        self.conninfo = None

    def start(self, extra_opts=""):
        p = subprocess.run(["sh", PG_SH, "start", self.dir], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=90,
                           env=dict(os.environ, PG_EXTRA_OPTS=extra_opts))
        out = p.stdout.decode("utf-8", "replace").strip()
        if p.returncode != 0:
            raise AssertionError("PostgreSQL did not start: %s" % out[-1500:])
        self.conninfo = out.splitlines()[-1]
        self.psql("-q", "-f", SQL)
        return self

    def psql(self, *args, timeout=30):
        p = subprocess.run(["psql", self.conninfo, "-X", "-v", "ON_ERROR_STOP=1", "-At"] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode != 0:
            raise AssertionError("psql %s: %s" % (args, out))
        return out.strip()

    def down(self):
        subprocess.run(["sh", PG_SH, "down", self.dir], check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up(self):
        subprocess.run(["sh", PG_SH, "up", self.dir], check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restart(self):
        subprocess.run(["sh", PG_SH, "restart", self.dir], check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        subprocess.run(["sh", PG_SH, "stop", self.dir], timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def host_config(conninfo, failure="closed", connections=4, timeout=10, short_timeout=0.5):
    cluster = "PidLockCluster Off" if conninfo is None else 'PidLockCluster postgres "%s"' % conninfo
    return r"""
%s
PidLockClusterConnections %d
PidLockClusterOnFailure %s
<Location /mn/v2/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey path ^/mn/v2/object/(.+)$
    PidLockTimeout %s
</Location>
<Location /mn/v2/object/short/>
    PidLockTimeout %s
</Location>
""" % (cluster, connections, failure, timeout, short_timeout) + status_locations("ip 127.0.0.1 10.231.0.0/16")


# The MPM the suite runs under (run_cluster_suite sets it per MPM).
MPM = "event"


def hosts(conninfo, n=2, mpm=None, mpm_settings=None, **kw):
    mpm = mpm or MPM
    out = []
    for i in range(n):
        h = Httpd(mpm=mpm, body=host_config(conninfo, **kw), name="cluster-%s" % "ab"[i],
                  mpm_settings=mpm_settings)
        out.append(h)
    try:
        for h in out:
            h.start()
    except Exception:
        stop_all(out)
        raise
    return out


def stop_all(hs):
    for h in hs:
        h.stop()
        h.cleanup()


def put(h, pid, sleep_ms=0, witness=None, timeout=20):
    headers = {"X-Test-Pid": pid, "X-Test-Sleep-Ms": str(sleep_ms)}
    if witness:
        headers["X-Test-Witness-Dir"] = witness
    return h.request("PUT", "/mn/v2/object/" + pid, headers=headers, body=b"x", timeout=timeout)


def witness_dir():
    d = tempfile.mkdtemp(prefix="pidlock-witness-")
    os.chmod(d, 0o777)  # children run as www-data
    return d


def hammer(hs, pid, witness, threads=8, per_thread=6, sleep_ms=15):
    """Concurrent writes of one PID through every host; returns (statuses, fences)."""
    statuses, fences = [], []
    lock = threading.Lock()

    def worker(t):
        for i in range(per_thread):
            r = put(hs[(t + i) % len(hs)], pid, sleep_ms, witness)
            with lock:
                statuses.append(r.status)
                for line in r.text.splitlines():
                    if line.startswith("fence "):
                        fences.append(int(line.split()[1]))
    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return statuses, fences


def violations(witness):
    try:
        with open(os.path.join(witness, "violations")) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def cluster_holder(h, key, timeout=5):
    """The pid of h's child holding `key`, once it holds it in PostgreSQL
    too (not only in h's own table); None if that does not happen."""
    def held():
        pid = holder_pid(h, key)
        return pid if pid and h.get_json("/pidlock-status?json")["cluster"]["held"] >= 1 else None
    return poll(held, timeout=timeout)


def waiting_put(h, pid, settle):
    """A PUT in a thread, `settle` seconds on; got gets its status and the
    time it ended."""
    got = {}

    def req():
        r = put(h, pid, timeout=30)
        got["status"], got["at"] = r.status, time.monotonic()
    t = threading.Thread(target=req)
    t.start()
    time.sleep(settle)
    return t, got


def lost_logged(h, key):
    """The line h logged for a lost lock on `key`: PIDLOCK430 when noticed
    while the request ran, PIDLOCK402 when noticed at its release."""
    for line in h.read_log().splitlines():
        if ("PIDLOCK430" in line or "PIDLOCK402" in line) and key in line:
            return line
    return None


def holder_pid(h, key):
    doc = h.get_json("/pidlock-status?json")
    for l in doc.get("locks", []):
        if l["key"] == key:
            for hv in l["holders"]:
                if not hv.get("waiting"):
                    return hv["pid"]
    return None


# ------------------------------------------------------------------ tests

def t_no_overlap_across_hosts(pg):
    """Writes of one PID through two hosts: serialized with the tier, every
    fence distinct; without it the shared witness sees overlaps."""
    hs = hosts(pg.conninfo)
    try:
        w = witness_dir()
        st, fences = hammer(hs, "cross-host", w)
        check(all(s == 200 for s in st), "statuses %r" % sorted(set(st)))
        check(violations(w) == 0, "witness saw %d overlaps across hosts" % violations(w))
        check(len(fences) == len(st) and len(set(fences)) == len(fences),
              "fences not distinct across hosts: %d of %d" % (len(set(fences)), len(st)))
        doc = hs[0].get_json("/pidlock-status?json")
        c = doc.get("cluster")
        check(c is not None and c["backend"] == "postgres", "no cluster object: %r" % doc)
        for f in ("connections", "held", "waiting", "lost", "errors"):
            check(isinstance(c.get(f), int), "cluster.%s missing: %r" % (f, c))
        check(c["connections"] >= 1 and c["held"] == 0 and c["waiting"] == 0 and c["lost"] == 0,
              "cluster object %r" % c)
        html = hs[0].request("GET", "/pidlock-status").text
        check("PostgreSQL connections" in html, "HTML page without the cluster rows")
    finally:
        stop_all(hs)
    hs = hosts(None)
    try:
        w = witness_dir()
        hammer(hs, "cross-host", w)
        check(violations(w) > 0, "PidLockCluster Off: the shared witness saw no overlap (test cannot fail)")
    finally:
        stop_all(hs)


def t_kill9_holder_frees_other_host(pg):
    """kill -9 of host A's child holding a write: B's waiting writer within 1 s."""
    a, b = hs = hosts(pg.conninfo)
    try:
        holder = threading.Thread(target=lambda: _swallow(lambda: put(a, "k9", sleep_ms=15000, timeout=30)))
        holder.start()
        pid = cluster_holder(a, "k9")
        check(pid, "A's holder never showed on its status page")
        wt, got = waiting_put(b, "k9", 0.5)
        check("status" not in got, "B's writer did not wait for A's lock")
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wt.join(10)
        holder.join(10)
        check(got.get("status") == 200, "B's writer: %r" % got)
        check(got["at"] - killed < 1.0, "B granted %.2f s after the kill" % (got["at"] - killed))
    finally:
        stop_all(hs)


def _swallow(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 - a request cut by a kill
        pass


def t_pg_restart_during_write(pg):
    """PostgreSQL restarted while A holds a write and B waits: nothing hangs,
    the lost lock is logged with its key (A's client gets no answer), and
    later requests on both hosts succeed (stale pooled sessions replaced)."""
    a, b = hs = hosts(pg.conninfo)
    try:
        # Every child of both hosts gets pooled sessions first.
        for _ in range(8):
            put(a, "warm-%d" % _)
            put(b, "warm-%d" % _)
        got = {}

        def req(name, h, sleep_ms):
            try:
                r = put(h, "restart-me", sleep_ms=sleep_ms, timeout=25)
                got[name] = r.status
            except Exception as e:  # noqa: BLE001
                got[name] = repr(e)
        ta = threading.Thread(target=req, args=("a", a, 2500))
        ta.start()
        check(cluster_holder(a, "restart-me"), "A's writer never held the lock")
        tb = threading.Thread(target=req, args=("b", b, 0))
        tb.start()
        time.sleep(0.3)
        pg.restart()
        ta.join(20)
        tb.join(20)
        check(not ta.is_alive() and not tb.is_alive(), "a request hung after the restart: %r" % got)
        # A's lock went with the restart while its handler ran: its client
        # connection is shut (no answer), not answered 200.
        check(got.get("a") is not None and got.get("a") != 200, "A's writer: %r" % got)
        check(got.get("b") in (200, 503), "B's waiter: %r" % got)
        check(poll(lambda: lost_logged(a, "restart-me"), timeout=5),
              "no lost-lock line (PIDLOCK430/402) naming the key in A's log")
        doc = a.get_json("/pidlock-status?json")
        check(doc["cluster"]["lost"] >= 1, "cluster.lost %r" % doc["cluster"])
        mark = {h: len(h.read_log()) for h in hs}
        for i in range(12):
            for h in hs:
                r = put(h, "after-%d" % i)
                check(r.status == 200, "after the restart: %d %r" % (r.status, r.body[:200]))
        for h in hs:
            new = h.read_log()[mark[h]:]
            check("PIDLOCK400" not in new and "PIDLOCK420" not in new,
                  "a request after the restart failed on a stale session: %s" % new[-600:])
    finally:
        stop_all(hs)


def t_pg_down_at_start(pg):
    """httpd starts with PostgreSQL unreachable; closed answers 503 with
    Retry-After, open serves with a warning."""
    down = "host=/nonexistent-pidlock-pg dbname=postgres user=postgres"
    (h,) = hosts(down, n=1, failure="closed")
    try:
        r = put(h, "down")
        check(r.status == 503 and "retry-after" in r.headers, "closed: %d %r" % (r.status, r.headers))
        check(poll(lambda: 'PIDLOCK420: PostgreSQL (PidLockCluster) unavailable: write lock on key "down" not had'
                   in h.read_log(), timeout=3), "no PIDLOCK420 naming the key in the log")
        check("PIDLOCK409" in h.read_log(), "no PIDLOCK409 warning at start")
        doc = h.get_json("/pidlock-status?json")
        check(doc["cluster"]["errors"] >= 1, "cluster.errors %r" % doc["cluster"])
    finally:
        stop_all([h])
    (h,) = hosts(down, n=1, failure="open")
    try:
        r = put(h, "down")
        check(r.status == 200, "open: %d %r" % (r.status, r.body[:200]))
        check(poll(lambda: "PIDLOCK403" in h.read_log(), timeout=3), "no PIDLOCK403 warning in the log")
    finally:
        stop_all([h])


def t_lost_lock_noticed_while_held(pg):
    """A's session is ended (pg_terminate_backend, as a restart or a dead
    link would) while its write runs a 6 s handler: A logs PIDLOCK430 with
    the key and counts it while the request still runs, shuts the client's
    connection (no 200), and logs nothing more at the release."""
    (a,) = hosts(pg.conninfo, n=1)
    try:
        got = {}

        def req():
            try:
                got["status"] = put(a, "lost-early", sleep_ms=6000, timeout=30).status
            except Exception as e:  # noqa: BLE001 - the connection is shut
                got["status"] = repr(e)
            got["at"] = time.monotonic()
        t = threading.Thread(target=req)
        t.start()
        check(cluster_holder(a, "lost-early"), "A's writer never held")
        ended = pg.psql("-c", "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                              "WHERE locktype = 'advisory' AND granted")
        check(ended == "1", "sessions ended: %r" % ended)
        line = poll(lambda: lost_logged(a, "lost-early"), timeout=4)
        # The handler (6 s) still runs: its lock is not released yet.
        during = a.get_json("/pidlock-status?json")["cluster"]
        holding = holder_pid(a, "lost-early")
        check(line and "PIDLOCK430" in line, "no PIDLOCK430 line naming the key: %r" % line)
        check(holding and during["held"] == 1 and during["lost"] == 1,
              "the loss was not counted while the request still held its lock: %r %r" % (during, holding))
        t.join(15)
        check(got.get("status") is not None and got["status"] != 200, "the client of the lost lock got %r" % got)
        # The handler ends (its sleep) and releases.
        check(poll(lambda: a.get_json("/pidlock-status?json")["cluster"]["held"] == 0, timeout=10),
              "the request never released")
        doc = a.get_json("/pidlock-status?json")["cluster"]
        check(doc["lost"] == 1, "cluster after the release: %r" % doc)
        check("PIDLOCK402" not in a.read_log(), "the loss was logged twice")
        r = put(a, "lost-early")
        check(r.status == 200, "the key after the loss: %d" % r.status)
    finally:
        stop_all([a])


def fence_of(r):
    for line in r.text.splitlines():
        if line.startswith("fence "):
            return int(line.split()[1])
    return None


def t_fence_never_goes_backwards(pg):
    """PidLockClusterOnFailure open: while PostgreSQL is down, A serves
    writes with fences of its own (growing on A); once it is back, the first
    write through B, and every later one, has a larger fence than any A
    handed out meanwhile or any granted before."""
    a, b = hs = hosts(pg.conninfo, failure="open")
    try:
        before = []
        for i in range(3):
            for h in hs:
                r = put(h, "fence-%d" % i)
                check(r.status == 200 and fence_of(r), "before: %d %r" % (r.status, r.text[:200]))
                before.append(fence_of(r))
        check(before == sorted(before) and len(set(before)) == len(before), "fences before: %r" % before)
        pg.down()
        try:
            outage = []
            for i in range(4):
                r = put(a, "fence-out-%d" % i)
                check(r.status == 200 and fence_of(r), "PostgreSQL down: %d %r" % (r.status, r.text[:200]))
                outage.append(fence_of(r))
            check(outage == sorted(outage) and len(set(outage)) == 4, "A's fences while down: %r" % outage)
            check(outage[0] > before[-2], "A's first outage fence %d below A's own last %d" % (outage[0], before[-2]))
            check(poll(lambda: "PIDLOCK403" in a.read_log(), timeout=3), "no PIDLOCK403")
        finally:
            pg.up()
        after = []
        for h in (b, a, b):
            r = put(h, "fence-back")
            check(r.status == 200 and fence_of(r), "PostgreSQL back: %d %r" % (r.status, r.text[:200]))
            after.append(fence_of(r))
        check(after[0] > max(outage + before),
              "B's first fence after the outage %d is not above %d (A's outage fences %r, before %r)"
              % (after[0], max(outage + before), outage, before))
        check(after == sorted(after) and len(set(after)) == 3, "fences after: %r" % after)
    finally:
        stop_all(hs)


def t_sql_client_lock_blocks_put(pg):
    """A job takes the README's lock in SQL; a PUT through httpd waits for it."""
    (h,) = hosts(pg.conninfo, n=1)
    job = subprocess.Popen(["psql", pg.conninfo, "-X", "-At"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        job.stdin.write(b"SELECT pg_advisory_lock(pidlock_key('sql-job'));\n\\echo locked\n")
        job.stdin.flush()
        line = b""
        while b"locked" not in line:
            line = job.stdout.readline()
            check(line, "psql ended before taking the lock")
        t, got = waiting_put(h, "sql-job", 0.6)
        check("status" not in got, "the PUT did not wait for the SQL job's lock")
        unlocked = time.monotonic()
        job.stdin.write(b"SELECT pg_advisory_unlock(pidlock_key('sql-job'));\n")
        job.stdin.flush()
        t.join(10)
        check(got.get("status") == 200, "PUT after unlock: %r" % got)
        check(got["at"] - unlocked < 1.0, "PUT granted %.2f s after the unlock" % (got["at"] - unlocked))
    finally:
        job.stdin.close()
        job.wait(10)
        stop_all([h])


def t_status_and_break_across_hosts(pg):
    """B waits in PostgreSQL for A's write: B's page names A's session as the
    holder; Break on B's page ends it, and B's writer gets in at once."""
    a, b = hs = hosts(pg.conninfo)
    try:
        holder = threading.Thread(target=lambda: _swallow(lambda: put(a, "brk", sleep_ms=4000)))
        holder.start()
        check(cluster_holder(a, "brk"), "A's writer never held")
        wt, got = waiting_put(b, "brk", 0.3)

        def remote():
            return b.get_json("/pidlock-status?json")["cluster"]["remote"]
        rem = poll(remote, timeout=5)
        check(rem and rem[0]["key"] == "brk" and rem[0]["mode"] == "write", "B's remote holders: %r" % rem)
        check(rem[0]["application"].startswith("mod_pidlock "), "application %r" % rem[0])
        page, nonce = _admin_page(b)
        check("Held on other hosts" in page, "B's page without the remote holders")
        # Refused breaks end no PostgreSQL session: a wrong nonce, and the
        # page without PidLockStatusActions.
        hdrs = {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://127.0.0.1:%d" % b.port}
        for url, nc in (("/pidlock-admin", "0" * 32), ("/pidlock-status", nonce)):
            r = b.request("POST", url, headers=hdrs, body=("action=break&key=brk&nonce=%s" % nc).encode())
            check(r.status == 403, "break on %s (nonce %s): %d" % (url, nc[:4], r.status))
        check([g for _, g in advisory_locks(pg)].count("t") == 1 and "status" not in got,
              "a refused break changed the locks: %r %r" % (advisory_locks(pg), got))
        broke = time.monotonic()
        _break(b, "key", "brk", nonce)
        wt.join(10)
        check(got.get("status") == 200 and got["at"] - broke < 1.0, "B's writer after the break: %r" % got)
        holder.join(10)
        check(poll(lambda: lost_logged(a, "brk"), timeout=5), "A did not log its broken lock as lost")
        check(poll(lambda: "PIDLOCK408" in b.read_log(), timeout=3), "B did not log the sessions it ended")
    finally:
        stop_all(hs)


def t_client_hangup_leaves_pg_queue(pg):
    """A client that disconnects while its request waits in PostgreSQL: the
    request leaves PostgreSQL's queue at once, not at its PidLockTimeout."""
    a, b = hs = hosts(pg.conninfo)
    try:
        holder = threading.Thread(target=lambda: put(a, "hangup", sleep_ms=3000))
        holder.start()
        check(cluster_holder(a, "hangup"), "A's writer never held")
        s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        s.sendall(b"PUT /mn/v2/object/hangup HTTP/1.1\r\nHost: x\r\nX-Test-Pid: hangup\r\n"
                  b"Content-Length: 1\r\n\r\nx")

        def waiting():
            return b.get_json("/pidlock-status?json")["cluster"]["waiting"]
        check(poll(lambda: waiting() == 1, timeout=5), "B's request never waited in PostgreSQL")
        s.close()
        gone = time.monotonic()
        check(poll(lambda: waiting() == 0, timeout=2), "B's request still waits after the hang-up")
        check(time.monotonic() - gone < 1.5, "left the queue %.2f s after the hang-up" % (time.monotonic() - gone))
        holder.join(10)
    finally:
        stop_all(hs)


def t_pool_cap_waits_then_503(pg):
    """(Threaded MPMs: a prefork child serves one request at a time, so its
    pool never has two takers.)
    PidLockClusterConnections 1 in the only child: a second request waits
    for the connection within its PidLockTimeout, then 503; none hangs, and
    the connection serves again once free."""
    (h,) = hosts(pg.conninfo, n=1, connections=1, mpm_settings=WORKER_ONE)
    try:
        holder = threading.Thread(target=lambda: put(h, "cap-holder", sleep_ms=2500))
        holder.start()
        check(cluster_holder(h, "cap-holder"), "the holder never held")
        t0 = time.monotonic()
        r = put(h, "short/cap-other")
        took = time.monotonic() - t0
        check(r.status == 503 and "retry-after" in r.headers, "second request: %d %r" % (r.status, r.body[:200]))
        check(0.4 <= took < 2.0, "second request took %.2f s (PidLockTimeout 0.5)" % took)
        doc = h.get_json("/pidlock-status?json")
        check(doc["cluster"]["connections"] == 1, "connections %r" % doc["cluster"])
        holder.join(10)
        check(not holder.is_alive(), "the holder hung")
        r = put(h, "short/cap-other")
        check(r.status == 200, "after the holder: %d" % r.status)
    finally:
        stop_all([h])


class NetnsHost(Httpd):
    """An httpd in network namespace `ns`, listening on `addr`."""

    def __init__(self, ns, addr, **kw):
        self.ns, self.addr = ns, addr
        super().__init__(**kw)

    def config_text(self):
        return super().config_text().replace("Listen %s:" % harness.HOST, "Listen %s:" % self.addr)

    def start(self, timeout=20):
        wrapper = os.path.join(self.root, "apache-in-ns.sh")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n" % (self.ns, harness.APACHE))
        os.chmod(wrapper, 0o755)
        saved = harness.APACHE, harness.HOST
        harness.APACHE, harness.HOST = wrapper, self.addr
        try:
            return super().start(timeout)
        finally:
            harness.APACHE, harness.HOST = saved

    def connect(self, timeout=10):
        return http.client.HTTPConnection(self.addr, self.port, timeout=timeout)


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)


def t_cut_off_host_loses_its_locks(_pg):
    """Host A (its own network namespace, TCP to PostgreSQL) holds a write,
    is frozen (SIGSTOP) and cut off: B's waiter is granted within the
    server's keepalive bound (tcp_keepalives 2/1/2: about 4 s; and
    tcp_user_timeout 4 s for a reply the server could not deliver), and A
    logs the lost lock when it thaws."""
    # Suites of several MPMs may run side by side: each its own numbers.
    net = random.choice(range(2 + int(os.environ.get("PIDLOCK_CLUSTER_SLICE", "0")) % 3, 251, 3))
    ns, veth_h, veth_a = "pidlock-a%d" % net, "plk%dh" % net, "plk%da" % net
    pg_addr, a_addr = "10.231.%d.1" % net, "10.231.%d.2" % net
    try:
        sh("ip", "netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as e:
        print("SKIP cluster/%s/cut_off_host_loses_its_locks: no network namespaces here (%s)"
              % (MPM, (getattr(e, "stderr", b"") or b"").decode().strip()), flush=True)
        return
    pg = a = b = None
    hba_dir = tempfile.mkdtemp(prefix="pidlock-hba-")
    try:
        sh("ip", "link", "add", veth_h, "type", "veth", "peer", "name", veth_a)
        sh("ip", "link", "set", veth_a, "netns", ns)
        sh("ip", "addr", "add", pg_addr + "/30", "dev", veth_h)
        sh("ip", "link", "set", veth_h, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", a_addr + "/30", "dev", veth_a)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", veth_a, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        os.chmod(hba_dir, 0o755)
        hba = os.path.join(hba_dir, "pg_hba.conf")
        with open(hba, "w") as f:
            f.write("local all all trust\nhost all all %s/30 trust\n" % pg_addr)
        os.chmod(hba, 0o644)
        pg = Pg().start("-c listen_addresses=%s -c hba_file=%s -c tcp_keepalives_idle=2 "
                        "-c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 -c tcp_user_timeout=4000"
                        % (pg_addr, hba))
        tcp = "host=%s port=5432 dbname=postgres user=postgres connect_timeout=5" % pg_addr
        a = NetnsHost(ns, a_addr, mpm=MPM, body=host_config(tcp), name="cluster-netns-a")
        a.start()
        (b,) = hosts(pg.conninfo, n=1)
        holder = threading.Thread(target=lambda: _swallow(lambda: put(a, "cut-off", sleep_ms=1500, timeout=60)))
        holder.start()
        pid = cluster_holder(a, "cut-off")
        check(pid, "A's writer never held")
        for p in [a.pid] + a.child_pids():
            os.kill(p, signal.SIGSTOP)
        sh("ip", "link", "set", veth_h, "down")
        cut = time.monotonic()
        wt, got = waiting_put(b, "cut-off", 0)
        wt.join(15)
        check(got.get("status") == 200, "B's writer after A was cut off: %r" % got)
        waited = got["at"] - cut
        check(waited < 8.0, "B granted %.1f s after A was cut off (keepalive bound about 4 s)" % waited)
        sh("ip", "link", "set", veth_h, "up")
        for p in [a.pid] + a.child_pids():
            os.kill(p, signal.SIGCONT)
        holder.join(30)
        check(poll(lambda: lost_logged(a, "cut-off"), timeout=15),
              "A did not log its lost lock after the thaw")
        print("# cut-off host: B granted %.1f s after A was cut off" % waited, flush=True)
    finally:
        for h in (a, b):
            if h is not None:
                for p in [h.pid] + h.child_pids() if h.pid else []:
                    try:
                        os.kill(p, signal.SIGCONT)
                    except OSError:
                        pass
                h.stop()
                h.cleanup()
        if pg is not None:
            pg.stop()
        subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", veth_h], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(hba_dir, ignore_errors=True)


class Bouncer:
    """A throwaway PgBouncer in transaction pooling mode in front of `pg`:
    Unix socket only (no TCP listener) in a temp dir, run as user postgres,
    stopped by its pid."""

    def __init__(self, pg, pool_size=2):
        self.dir = tempfile.mkdtemp(prefix="pidlock-bouncer-")
        os.chmod(self.dir, 0o755)  # children (www-data) reach the socket
        self.port = random.randint(20000, 29999)  # names the socket file only
        self.pool_size = pool_size
        self.pg_dir = pg.conninfo.split("host=")[1].split()[0]
        self.proc = None

    @property
    def conninfo(self):
        return "host=%s port=%d dbname=postgres user=postgres" % (self.dir, self.port)

    def start(self):
        import pwd
        pw = pwd.getpwnam("postgres")
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(os.path.join(self.dir, "users.txt"), "w") as f:
            f.write('"postgres" ""\n')
        with open(ini, "w") as f:
            f.write("[databases]\npostgres = host=%s dbname=postgres user=postgres\n"
                    "[pgbouncer]\nlisten_addr =\nlisten_port = %d\nunix_socket_dir = %s\n"
                    "auth_type = trust\nauth_file = %s/users.txt\npool_mode = transaction\n"
                    "default_pool_size = %d\nmax_client_conn = 400\nserver_reset_query =\n"
                    "logfile = %s/pgbouncer.log\n"
                    % (self.pg_dir, self.port, self.dir, self.dir, self.pool_size, self.dir))
        for root, dirs, files in os.walk(self.dir):
            for n in dirs + files + [""]:
                os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)

        def drop():
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        self.proc = subprocess.Popen(["pgbouncer", ini], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=drop, start_new_session=True)
        sock = os.path.join(self.dir, ".s.PGSQL.%d" % self.port)
        if not poll(lambda: os.path.exists(sock) or self.proc.poll() is not None, timeout=10) or \
                self.proc.poll() is not None:
            raise AssertionError("PgBouncer did not start: %s" % self.log()[-1500:])
        return self

    def log(self):
        try:
            with open(os.path.join(self.dir, "pgbouncer.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # immediate shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def advisory_locks(pg):
    """(pid, granted) of every advisory lock in the server."""
    out = pg.psql("-c", "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory'")
    return [tuple(l.split("|")) for l in out.splitlines() if l]


def t_pgbouncer_transaction_mode(pg):
    """Both hosts reach PostgreSQL through PgBouncer in transaction pooling
    mode (two server connections for every client): the cross-host witness
    sees no overlap, fences stay distinct, and a lock goes at COMMIT: the
    server connection that held it lives on in the pool holding nothing."""
    bouncer = Bouncer(pg).start()
    hs = []
    try:
        hs = a, b = hosts(bouncer.conninfo)
        w = witness_dir()
        st, fences = hammer(hs, "through-bouncer", w)
        check(all(s == 200 for s in st), "statuses %r" % sorted(set(st)))
        check(violations(w) == 0, "witness saw %d overlaps through PgBouncer" % violations(w))
        check(len(fences) == len(st) and len(set(fences)) == len(fences),
              "fences not distinct through PgBouncer: %d of %d" % (len(set(fences)), len(st)))
        # One write held on A: its lock sits in one of PgBouncer's server
        # sessions; once the request ends it is gone from that session,
        # which stays open in the pool (released by COMMIT, not by a close).
        holder = threading.Thread(target=lambda: put(a, "bounced", sleep_ms=1500))
        holder.start()
        held = poll(lambda: [p for p, g in advisory_locks(pg) if g == "t"], timeout=5)
        check(held and len(set(held)) == 1, "the held write in pg_locks: %r" % held)
        server_pid = held[0]
        holder.join(10)
        check(poll(lambda: not advisory_locks(pg), timeout=3),
              "advisory locks left after the request: %r" % advisory_locks(pg))
        alive = pg.psql("-c", "SELECT count(*) FROM pg_stat_activity WHERE pid = %s" % server_pid)
        check(alive == "1", "PgBouncer's server session %s closed (the lock went with the session)" % server_pid)
        # That session serves other clients now: it holds nothing for them.
        r = put(b, "bounced")
        check(r.status == 200, "B's write after A's: %d" % r.status)
        check(not advisory_locks(pg), "locks after B's write: %r" % advisory_locks(pg))
        sessions = pg.psql("-c", "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                 "AND pid <> pg_backend_pid()")
        check(int(sessions) <= bouncer.pool_size, "%s server sessions behind a pool of %d"
              % (sessions, bouncer.pool_size))
    finally:
        stop_all(hs)
        bouncer.stop()


def t_configtest_rejects_bad_conninfo(pg):
    h = Httpd(body=host_config("host=/tmp bogus_option=1"), name="cluster-bad")
    try:
        rc, out = h.configtest()
        check(rc != 0 and "PidLockCluster" in out and "bogus_option" in out, "configtest: rc=%d %s" % (rc, out))
    finally:
        h.cleanup()
    h = Httpd(body=host_config(pg.conninfo), name="cluster-good")
    try:
        rc, out = h.configtest()
        check(rc == 0, "configtest of a good conninfo: %s" % out)
    finally:
        h.cleanup()


# (name, function, MPMs it runs under)
ALL = ("prefork", "worker", "event")
THREADED = ("worker", "event")
CLUSTER_TESTS = [
    ("configtest_rejects_bad_conninfo", t_configtest_rejects_bad_conninfo, ALL),
    ("no_overlap_across_hosts", t_no_overlap_across_hosts, ALL),
    ("kill9_holder_frees_other_host", t_kill9_holder_frees_other_host, ALL),
    ("sql_client_lock_blocks_put", t_sql_client_lock_blocks_put, ALL),
    ("pg_down_at_start", t_pg_down_at_start, ALL),
    ("pool_cap_waits_then_503", t_pool_cap_waits_then_503, THREADED),
    ("client_hangup_leaves_pg_queue", t_client_hangup_leaves_pg_queue, ALL),
    ("status_and_break_across_hosts", t_status_and_break_across_hosts, ALL),
    ("pg_restart_during_write", t_pg_restart_during_write, ALL),
    ("lost_lock_noticed_while_held", t_lost_lock_noticed_while_held, ALL),
    ("fence_never_goes_backwards", t_fence_never_goes_backwards, ALL),
    ("cut_off_host_loses_its_locks", t_cut_off_host_loses_its_locks, ALL),
    ("pgbouncer_transaction_mode", t_pgbouncer_transaction_mode, ALL),
]


def run_cluster_suite(mpm, record, only=None):
    """Runs every test under `mpm` against one throwaway server (`only`:
    test names, or "cluster" for all); a server that does not start fails
    the suite (make test installs PostgreSQL)."""
    global MPM
    MPM = mpm
    pg = Pg()
    try:
        try:
            pg.start()
        except Exception as e:  # noqa: BLE001
            record("cluster/%s/postgres_start" % mpm, e)
            return
        for name, fn, mpms in CLUSTER_TESTS:
            if mpm not in mpms:
                continue
            if only and "cluster" not in only and name not in only and "cluster/" + name not in only:
                continue
            err = None
            try:
                fn(pg)
            except Exception as e:  # noqa: BLE001
                err = e if isinstance(e, AssertionError) else "%s: %s" % (type(e).__name__, e)
            record("cluster/%s/%s" % (mpm, name), err)
    finally:
        pg.stop()
