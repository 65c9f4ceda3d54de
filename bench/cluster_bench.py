#!/usr/bin/env python3
"""The PostgreSQL tier (PidLockCluster) behind the slow backend, side by side
in one run: three event-MPM servers on loopback ports, each writing PIDs
through the test backend (every request sleeps 10 ms):

    local    PidLockCluster Off: the host's table alone
    tiered   PidLockCluster postgres: the table, then one transaction-level
             advisory lock per head-of-line request (mod_pidlock.so)
    naive    no local tier: one session-level advisory lock per request,
             every waiter holding a PostgreSQL session (mod_pidlock_naive.so,
             a bench-only build, -DPIDLOCK_BENCH_NAIVE)

Figures: requests/s of PUTs over 2 and 200 PIDs (wrk -c32, the designs'
runs alternating, their order rotating each round); the latency a lock adds
to a request (one client, no sleep, a random PID of 50; p50/p99 minus the
local design's); and, from PostgreSQL's own log (log_statement = all, one
line per query message = per round trip), round trips per request and the
most PostgreSQL lock waits seen at once, for a fixed batch of contended PUTs.

    python3 bench/cluster_bench.py [quick|full] [OUTDIR]

Env PIDLOCK_BUILD: where mod_pidlock.so, mod_pidlock_naive.so and the test
backend are. The throwaway PostgreSQL (bench/pg.sh) and the servers are
stopped by their pids; only 127.0.0.1 and a Unix socket are used.
"""
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
from httpd_bench import BENCH_MPM, SLEEP_MS, SLOW_CONNS, SLOW_LOCATION, SLOW_LUA, stop_checked, wrk  # noqa: E402

PG_SH = os.path.join(HERE, "pg.sh")
SQL = os.path.join(HERE, "..", "conf", "pidlock-cluster.sql")
DESIGNS = ("local", "tiered", "naive")

BODY = """
%(cluster)s
PidLockClusterConnections %(conns)d
PidLockMaxWaiters 64 auto
""" + SLOW_LOCATION.replace("%", "%%")


class NaiveHttpd(harness.Httpd):
    """Loads the bench-only naive build in place of mod_pidlock.so."""

    def config_text(self):
        return super().config_text().replace("/mod_pidlock.so", "/mod_pidlock_naive.so")


def psql(conninfo, sql):
    p = subprocess.run(["psql", conninfo, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    if p.returncode:
        raise RuntimeError("psql: %s" % p.stdout.decode())
    return p.stdout.decode().strip()


def server(design, conninfo):
    cluster = "PidLockCluster Off" if design == "local" else 'PidLockCluster postgres "%s"' % conninfo
    # As many sessions per child as it has threads (32), in both designs:
    # the naive one holds a session per waiting request, and neither waits
    # for the pool.
    body = BODY % {"cluster": cluster, "conns": 32}
    cls = NaiveHttpd if design == "naive" else harness.Httpd
    return cls(mpm="event", body=body, log_level="warn", mpm_settings=BENCH_MPM["event"],
               name="bench-cluster-" + design)


def lua(h, name, npids, sleep):
    path = os.path.join(h.root, name)
    with open(path, "w") as f:
        f.write(SLOW_LUA % {"npids": npids, "method": "PUT", "base": "/slow/", "loc": "slow", "sleep": sleep,
                            "body": '"x"'})
    return path


def contended_batch(h, threads=16, per_thread=12, npids=2):
    """PUTs of `npids` PIDs from `threads` clients; returns the count, all 200."""
    bad = []

    def run(t):
        for i in range(per_thread):
            pid = "rt-%d" % ((t + i) % npids)
            r = h.request("PUT", "/slow/" + pid, headers={"X-Test-Pid": pid, "X-Test-Sleep-Ms": str(SLEEP_MS)},
                          body=b"x", timeout=60)
            if r.status != 200:
                bad.append(r.status)
    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if bad:
        raise RuntimeError("round-trip batch: statuses %r" % sorted(set(bad)))
    return threads * per_thread


def round_trips(h, conninfo, pgdir):
    """Query messages the module sent per request (PostgreSQL's statement
    log, its application_name), and the most lock waits seen at once."""
    log = os.path.join(pgdir, "server.log")
    psql(conninfo, "ALTER SYSTEM SET log_statement = 'all'")
    psql(conninfo, "ALTER SYSTEM SET log_line_prefix = '[%a] '")
    psql(conninfo, "SELECT pg_reload_conf()")
    time.sleep(0.5)
    start = os.path.getsize(log)
    # One psql sampling pg_locks every 20 ms (\watch), stopped by its pid.
    sampler = subprocess.Popen(["psql", conninfo, "-X", "-At"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    sampler.stdin.write(b"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \\watch 0.02\n")
    sampler.stdin.flush()
    seen, other, first = [], [], threading.Event()

    def read():
        for line in sampler.stdout:
            line = line.strip()
            if line.isdigit():
                seen.append(int(line))
                first.set()
            elif line:
                other.append(line.decode("utf-8", "replace"))
    reader = threading.Thread(target=read)
    reader.start()
    try:
        first.wait(30)  # the sampler runs before the batch starts
        n = contended_batch(h)
    finally:
        # SIGINT ends \watch; psql then reads end of input, flushes its
        # output and exits.
        sampler.send_signal(signal.SIGINT)
        sampler.stdin.close()
        try:
            sampler.wait(10)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait()
        reader.join()
    time.sleep(0.3)
    psql(conninfo, "ALTER SYSTEM RESET log_statement")
    psql(conninfo, "SELECT pg_reload_conf()")
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", "replace")
    msgs = len(re.findall(r"^\[mod_pidlock[^\]]*\] LOG:  statement: ", text, re.M))
    if not seen:
        raise RuntimeError("the pg_locks sampler saw nothing (psql exit %s): %s"
                           % (sampler.returncode, " | ".join(other[:5])))
    return msgs / n, max(seen), n, len(seen)


def main():
    full = len(sys.argv) > 1 and sys.argv[1] == "full"
    outdir = sys.argv[2] if len(sys.argv) > 2 else None
    rounds, seconds = (3, 5) if full else (2, 2)
    pgdir = tempfile.mkdtemp(prefix="pidlock-bench-cpg-")
    p = subprocess.run(["sh", PG_SH, "start", pgdir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120, env=dict(os.environ, PG_EXTRA_OPTS="-c max_connections=400"))
    if p.returncode:
        print("### 3c. Cluster tier behind the slow backend: not measured (PostgreSQL: %s)\n"
              % p.stdout.decode().strip().splitlines()[-1:])
        subprocess.run(["sh", PG_SH, "stop", pgdir])
        return 0
    conninfo = p.stdout.decode().strip().splitlines()[-1]
    hs = {}
    try:
        psql(conninfo, open(SQL).read())
        for d in DESIGNS:
            hs[d] = server(d, conninfo).start()
        rps = {(d, n): [] for d in DESIGNS for n in (2, 200)}
        lat = {(d, n): [] for d in DESIGNS for n in (2, 200)}
        scripts = {(d, n): lua(hs[d], "put-%d.lua" % n, n, SLEEP_MS) for d in DESIGNS for n in (2, 200)}
        # 50 PIDs: the test backend tracks at most 256 (then skips its sleep).
        solo = {d: lua(hs[d], "solo.lua", 50, 0) for d in DESIGNS}
        for d in DESIGNS:  # warm up: children spawned, sessions opened
            wrk("http://127.0.0.1:%d/slow/" % hs[d].port, 1, scripts[(d, 200)], conns=SLOW_CONNS)
        time.sleep(0.5)
        added = {d: [] for d in DESIGNS}
        for i in range(rounds):
            order = DESIGNS[i % 3:] + DESIGNS[:i % 3]
            for n in (2, 200):
                for d in order:
                    r, l = wrk("http://127.0.0.1:%d/slow/" % hs[d].port, seconds, scripts[(d, n)],
                               conns=SLOW_CONNS)
                    rps[(d, n)].append(r)
                    lat[(d, n)].append(l)
                    time.sleep(0.3)
            for _ in range(3):
                for d in order:
                    r, l = wrk("http://127.0.0.1:%d/slow/" % hs[d].port, 1, solo[d], conns=1)
                    added[d].append(l)
        rt = {d: round_trips(hs[d], conninfo, pgdir) for d in DESIGNS}
    finally:
        logs = {}
        for d, h in hs.items():
            logs[d] = stop_checked(h)
        subprocess.run(["sh", PG_SH, "stop", pgdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for d, log in logs.items():
        # An overlap, or a PID the backend could not track (it then skips
        # its sleep, and the figures would not be of a slow backend).
        bad = [l for l in log.splitlines() if "OVERLAP" in l or "slot table full" in l]
        if bad:
            raise RuntimeError("%s: the test backend: %s" % (d, bad[:3]))

    med = statistics.median
    print("### 3c. Cluster tier behind the slow backend (each request sleeps %d ms), event MPM, one host, "
          "local PostgreSQL (Unix socket); %d round(s) of %d s, the designs alternating (median)\n"
          % (SLEEP_MS, rounds, seconds))
    print("local: PidLockCluster Off. tiered: PidLockCluster postgres (the module). naive: no local tier, "
          "one session-level pg_advisory_lock per request (bench-only build).\n")
    print("| PUTs over | local req/s | tiered req/s | naive req/s | tiered/naive | p99 local / tiered / naive (ms) |")
    print("|---|---|---|---|---|---|")
    dat = []
    for n in (2, 200):
        r = {d: med(rps[(d, n)]) for d in DESIGNS}
        p99 = {d: med(x.get("99", 0) for x in lat[(d, n)]) / 1000.0 for d in DESIGNS}
        print("| %d PIDs, wrk -c%d | %.0f | %.0f | %.0f | %.2f | %.1f / %.1f / %.1f |" % (
            n, SLOW_CONNS, r["local"], r["tiered"], r["naive"], r["tiered"] / r["naive"],
            p99["local"], p99["tiered"], p99["naive"]))
        dat.append('"%d PIDs" %.1f %.1f %.1f' % (n, r["local"], r["tiered"], r["naive"]))
    print()
    print("Added latency of the lock, one client, no sleep, a random PID of 50 per request (wrk -c1, %d alternating runs of 1 s each):\n" % (3 * rounds))
    print("| design | p50 (µs) | p99 (µs) | p50 added over local (µs) | p99 added over local (µs) |")
    print("|---|---|---|---|---|")
    base50 = med(x.get("50", 0) for x in added["local"])
    base99 = med(x.get("99", 0) for x in added["local"])
    for d in DESIGNS:
        p50 = med(x.get("50", 0) for x in added[d])
        p99 = med(x.get("99", 0) for x in added[d])
        print("| %s | %.0f | %.0f | %.0f | %.0f |" % (d, p50, p99, p50 - base50, p99 - base99))
    print()
    print("PostgreSQL round trips (query messages in its statement log) per request, and the most advisory-lock "
          "waits in PostgreSQL seen at once (pg_locks, sampled every 20 ms: %s samples), for %d PUTs of 2 PIDs "
          "from 16 clients:\n" % ("/".join(str(rt[d][3]) for d in DESIGNS), rt["tiered"][2]))
    print("| design | round trips / request | most waits in PostgreSQL at once |")
    print("|---|---|---|")
    for d in DESIGNS:
        print("| %s | %.2f | %d |" % (d, rt[d][0], rt[d][1]))
    print()
    if outdir:
        with open(os.path.join(outdir, "cluster.dat"), "w") as f:
            f.write("# label local tiered naive (req/s)\n" + "\n".join(dat) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
