#!/usr/bin/env python3
"""End-to-end cost of mod_pidlock: requests/s of a 1 KiB static file with
`PidLock On` vs `Off`, in the same server, under prefork, worker and event.

wrk runs alternate between the On and the Off location (the order flips
every round), and the figure is the median of the per-round ratios, since
this machine is shared and noisy. Two variants: one hot PID read by every
process (every request on one key) and requests spread over 64 PIDs
(query key). Beside requests/s, the context switches httpd's processes
made per request (voluntary + nonvoluntary, summed over
/proc/<pid>/task/*/status of the parent and its children before and after
each wrk run): On - Off is what the locks add (a lock that sleeps in the
kernel shows here at once, whatever the machine's noise).
A second part puts a slow backend behind the lock (the test backend
module: each request sleeps 10 ms) and runs many clients on few PIDs and on
many PIDs, writes and reads: serialization costs only where keys collide.

Only 127.0.0.1 is used; the server is stopped by its pid.
"""
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import harness  # noqa: E402

BODY = """
DocumentRoot {root}/htdocs
<Directory {root}/htdocs>
    Require all granted
</Directory>
<Location /on/>
    PidLock On
    PidLockKey path ^/on/(.+)$
</Location>
<Location /onq/>
    PidLock On
    PidLockKey query pid
</Location>
<Location /off/>
    PidLock Off
</Location>
<Location /offq/>
    PidLock Off
</Location>
"""

# The slow backend under a lock, its PID from a header (shared with
# cluster_bench.py).
SLOW_LOCATION = """<Location /slow/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey header X-Test-Pid
    PidLockTimeout 20
</Location>
"""

# 32 connections on 2 PIDs put up to 32 requests on one key: above the
# default PidLockMaxWaiters (16), which would answer some of them 503 at once;
# this part measures the serialization, not that limit.
SLOW_BODY = """
PidLockMaxWaiters 64
""" + SLOW_LOCATION + """<Location /slowoff/>
    SetHandler pidlock-testbackend
    PidLock Off
</Location>
"""

# Random PIDs out of `npids`, each request sleeping SLEEP_MS in the backend.
# The On and the Off location use PID names of their own ("slow-p-1",
# "slowoff-p-1"): a locked PUT that wrk left behind at the end of an On run
# never meets an unlocked request of the next Off run on one name in the
# backend's overlap witness.
SLOW_LUA = """
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
request = function()
    local pid = "%(loc)s-p-" .. math.random(%(npids)d)
    return wrk.format("%(method)s", "%(base)s" .. pid,
        {["X-Test-Pid"] = pid, ["X-Test-Sleep-Ms"] = "%(sleep)d"}, %(body)s)
end
"""
SLEEP_MS = 10
SLOW_CONNS = 32

NPIDS = 64
LUA = """
counter = 0
request = function()
    counter = counter + 1
    return wrk.format("GET", "%s?pid=" .. (counter %% """ + str(NPIDS) + """))
end
"""
CONNS = 16

# Process pools that need no spawning or reaping under CONNS connections:
# context switches are counted over the processes alive at both ends of a
# run, so a child that went in between would take its count with it.
BENCH_MPM = {
    "prefork": "StartServers 24\nMinSpareServers 24\nMaxSpareServers 48\nServerLimit 64\nMaxRequestWorkers 64\n",
    "worker": "StartServers 2\nServerLimit 4\nThreadLimit 32\nThreadsPerChild 32\nMaxRequestWorkers 128\n"
              "MinSpareThreads 32\nMaxSpareThreads 128\n",
}
BENCH_MPM["event"] = BENCH_MPM["worker"]


def wrk(url, seconds, script=None, conns=8, with_count=False):
    cmd = ["wrk", "-t%d" % min(2, conns), "-c%d" % conns, "-d%ds" % seconds, "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=seconds + 30).stdout.decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(val) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
    if re.search(r"Non-2xx or 3xx responses", out):
        raise RuntimeError("wrk saw errors: " + out)
    if with_count:
        return rps, lat, int(re.search(r"(\d+) requests in", out).group(1))
    return rps, lat


def ctx_switches(h):
    """{(pid, tid): (voluntary, nonvoluntary) context switches} of every
    thread of httpd's parent and children."""
    counts = {}
    for pid in [h.pid] + h.child_pids():
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                    text = f.read()
            except OSError:
                continue
            vol = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M)
            nonvol = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M)
            if vol and nonvol:
                counts[(pid, tid)] = (int(vol.group(1)), int(nonvol.group(1)))
    return counts


def ctx_delta(before, after):
    """(voluntary, nonvoluntary) switches made between two snapshots by the
    threads alive at the second (a thread born in between counts whole)."""
    vol = sum(n[0] - before.get(k, (0, 0))[0] for k, n in after.items())
    nonvol = sum(n[1] - before.get(k, (0, 0))[1] for k, n in after.items())
    return vol, nonvol


def stop_checked(h):
    """Stops the server, removes its root and returns its error log; raises
    if a child crashed."""
    h.stop()
    log = h.read_log()
    h.cleanup()
    crashes = harness.Httpd.crash_lines(log)
    if crashes:
        raise RuntimeError("crash lines in the error log: %s" % crashes[:3])
    return log


def run_mpm(mpm, rounds, seconds):
    h = harness.Httpd(mpm=mpm, body=BODY, load_backend=False, log_level="warn",
                      mpm_settings=BENCH_MPM[mpm], name="bench-" + mpm)
    for d in ("on", "off", "onq", "offq"):
        os.makedirs(os.path.join(h.root, "htdocs", d), exist_ok=True)
        with open(os.path.join(h.root, "htdocs", d, "1k.html"), "w") as f:
            f.write("x" * 1024)
    os.chmod(os.path.join(h.root, "htdocs"), 0o755)
    scripts = {}
    for d in ("onq", "offq"):
        path = os.path.join(h.root, "%s.lua" % d)
        with open(path, "w") as f:
            f.write(LUA % ("/%s/1k.html" % d))
        scripts[d] = path
    results = {}
    h.start()
    try:
        base = "http://127.0.0.1:%d" % h.port
        wrk(base + "/off/1k.html", 1, conns=CONNS)  # warm up: children spawned, caches hot
        for variant, on, off in (("one hot PID", "on", "off"), ("%d PIDs" % NPIDS, "onq", "offq")):
            ratios, on_rps, off_rps, on_lat, off_lat, ctx_diff = [], [], [], [], [], []
            for i in range(rounds):
                order = (on, off) if i % 2 == 0 else (off, on)
                got, cs = {}, {}
                for d in order:
                    before = ctx_switches(h)
                    rps, lat, n = wrk(base + "/%s/1k.html" % d, seconds, scripts.get(d), conns=CONNS,
                                      with_count=True)
                    vol, nonvol = ctx_delta(before, ctx_switches(h))
                    cs[d] = ((vol + nonvol) / float(max(n, 1)), vol / float(max(n, 1)))
                    got[d] = (rps, lat)
                ratios.append(got[on][0] / got[off][0])
                on_rps.append(got[on][0])
                off_rps.append(got[off][0])
                on_lat.append(got[on][1])
                off_lat.append(got[off][1])
                ctx_diff.append((cs[on][0] - cs[off][0], cs[on][0], cs[off][0], cs[on][1] - cs[off][1]))
            results[variant] = {
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "on": statistics.median(on_rps), "off": statistics.median(off_rps),
                "on_p50": statistics.median(l.get("50", 0) for l in on_lat),
                "off_p50": statistics.median(l.get("50", 0) for l in off_lat),
                "on_p99": statistics.median(l.get("99", 0) for l in on_lat),
                "off_p99": statistics.median(l.get("99", 0) for l in off_lat),
                "ctx": statistics.median(c[0] for c in ctx_diff),
                "ctx_on": statistics.median(c[1] for c in ctx_diff),
                "ctx_off": statistics.median(c[2] for c in ctx_diff),
                "ctx_vol": statistics.median(c[3] for c in ctx_diff),
            }
    finally:
        stop_checked(h)
    return results


def run_slow(rounds, seconds):
    """Slow backend, event MPM: On vs Off for writes on 2 PIDs, writes on
    1000 PIDs, reads on 2 PIDs."""
    h = harness.Httpd(mpm="event", body=SLOW_BODY, load_backend=True, log_level="warn",
                      mpm_settings=BENCH_MPM["event"], name="bench-slow")
    # The test backend tracks at most 256 PIDs (then it skips the sleep), and
    # On and Off use names of their own: "many" is 120 each (240 in all).
    variants = (("PUT", 2), ("PUT", 120), ("GET", 2))
    scripts = {}
    for method, npids in variants:
        for loc in ("slow", "slowoff"):
            path = os.path.join(h.root, "%s-%s-%d.lua" % (loc, method, npids))
            # Off sends GETs: the backend does the same 10 ms, and overlapping
            # unlocked PUTs would only trip its overlap detector.
            with open(path, "w") as f:
                f.write(SLOW_LUA % {"npids": npids, "method": method if loc == "slow" else "GET",
                                    "base": "/%s/" % loc, "loc": loc,
                                    "sleep": SLEEP_MS, "body": '"x"' if method == "PUT" and loc == "slow" else "nil"})
            scripts[(loc, method, npids)] = path
    results = []
    h.start()
    try:
        base = "http://127.0.0.1:%d" % h.port
        wrk(base + "/slowoff/", 1, scripts[("slowoff", "GET", 2)], conns=SLOW_CONNS)  # warm up
        time.sleep(0.3)
        for method, npids in variants:
            got = {"slow": [], "slowoff": []}
            for i in range(rounds):
                order = ("slow", "slowoff") if i % 2 == 0 else ("slowoff", "slow")
                for loc in order:
                    got[loc].append(wrk(base + "/%s/" % loc, seconds, scripts[(loc, method, npids)],
                                        conns=SLOW_CONNS))
                    time.sleep(0.3)  # requests wrk left behind finish before the next run
            results.append((method, npids, got["slow"], got["slowoff"]))
    finally:
        log = stop_checked(h)
    # Off overlaps writers, as it should; On must not.
    bad = [l for l in log.splitlines() if "OVERLAP" in l and " /slow/" in l]
    if bad:
        raise RuntimeError("the test backend saw overlapping writers under PidLock On: %s" % bad[:3])
    return results


def main():
    full = len(sys.argv) > 1 and sys.argv[1] == "full"
    outdir = sys.argv[2] if len(sys.argv) > 2 else None
    rounds, seconds = (9, 5) if full else (5, 1)
    # PIDLOCK_BENCH_ROUNDS / _SECONDS: the static part's rounds and their length.
    rounds = int(os.environ.get("PIDLOCK_BENCH_ROUNDS", rounds))
    seconds = int(os.environ.get("PIDLOCK_BENCH_SECONDS", seconds))
    part = sys.argv[3] if len(sys.argv) > 3 else ""
    if part != "slow-only":
        static_part(rounds, seconds, outdir)
    if part != "static-only":
        slow_part(full, outdir)


def static_part(rounds, seconds, outdir):
    print("### 3a. httpd, 1 KiB static file, PidLock On vs Off in the same server "
          "(wrk -t2 -c%d, %d alternating rounds of %d s; median [min-max] of per-round ratios; "
          "context switches (voluntary + nonvoluntary) of httpd's processes per request, median of the "
          "rounds, and On - Off of the voluntary ones alone (sleeps: what a lock that waits in the kernel "
          "adds; the nonvoluntary ones follow the machine's load); "
          "targets: On/Off >= 0.97, On - Off <= 0.05 switches per request)\n"
          % (CONNS, rounds, seconds))
    print("| MPM | keys | On req/s | Off req/s | On/Off | switches/request On / Off | On - Off "
          "| voluntary On - Off | p50 On / Off (µs) | p99 On / Off (µs) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    dat = []
    for mpm in ("event", "worker", "prefork"):
        res = run_mpm(mpm, rounds, seconds)
        for variant, r in res.items():
            print("| %s | %s | %.0f | %.0f | %.3f [%.3f-%.3f] | %.3f / %.3f | %+.3f | %+.3f | %.0f / %.0f "
                  "| %.0f / %.0f |" % (
                      mpm, variant, r["on"], r["off"], r["ratio"], r["ratio_min"], r["ratio_max"],
                      r["ctx_on"], r["ctx_off"], r["ctx"], r["ctx_vol"], r["on_p50"], r["off_p50"],
                      r["on_p99"], r["off_p99"]))
            dat.append('"%s, %s" %.4f %.4f %.4f' % (mpm, variant, r["ratio"], r["ratio_min"], r["ratio_max"]))
        sys.stdout.flush()
    print()
    if outdir:
        with open(os.path.join(outdir, "httpd.dat"), "w") as f:
            f.write("# label ratio min max\n" + "\n".join(dat) + "\n")



def slow_part(full, outdir):
    srounds, sseconds = (3, 5) if full else (1, 2)
    print("### 3b. Slow backend (each request sleeps %d ms), event MPM, wrk -t2 -c%d, random PIDs; "
          "On (PUT or GET as shown) vs Off (GET: same backend work, no lock), %d alternating round(s) of %d s (median)\n" % (SLEEP_MS, SLOW_CONNS, srounds, sseconds))
    print("| requests | PIDs | On req/s | Off req/s | On/Off | ceiling with the lock (PIDs × 1000 / %d ms) "
          "| p50 On / Off (ms) | p99 On / Off (ms) |" % SLEEP_MS)
    print("|---|---|---|---|---|---|---|---|")
    sdat = []
    for method, npids, on, off in run_slow(srounds, sseconds):
        on_rps = statistics.median(r[0] for r in on)
        off_rps = statistics.median(r[0] for r in off)
        med = lambda xs, p: statistics.median(x[1].get(p, 0) for x in xs) / 1000.0  # noqa: E731
        kind = "writes (PUT)" if method == "PUT" else "reads (GET)"
        ceiling = "%d" % (npids * 1000 // SLEEP_MS) if method == "PUT" else "none (readers share)"
        print("| %s | %d | %.0f | %.0f | %.3f | %s | %.1f / %.1f | %.1f / %.1f |" % (
            kind, npids, on_rps, off_rps, on_rps / off_rps, ceiling, med(on, "50"), med(off, "50"),
            med(on, "99"), med(off, "99")))
        sdat.append('"%s, %d PIDs" %.1f %.1f' % (kind, npids, on_rps, off_rps))
        sys.stdout.flush()
    print()
    if outdir:
        with open(os.path.join(outdir, "slow.dat"), "w") as f:
            f.write("# label on_rps off_rps\n" + "\n".join(sdat) + "\n")


if __name__ == "__main__":
    main()
