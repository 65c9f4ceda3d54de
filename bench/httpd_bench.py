#!/usr/bin/env python3
"""End-to-end cost of mod_pidlock: requests/s of a 1 KiB static file with
`PidLock On` vs `Off`, in the same server, under prefork, worker and event.

wrk runs alternate between the On and the Off location (the order flips
every round), and the figure is the median of the per-round ratios, since
this machine is shared and noisy. Two variants: every request on one key
(all readers of one PID) and requests spread over 1000 keys (query key).
Only 127.0.0.1 is used; the server is stopped by its pid.
"""
import os
import re
import statistics
import subprocess
import sys

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

LUA = """
counter = 0
request = function()
    counter = counter + 1
    return wrk.format("GET", "%s?pid=" .. (counter %% 1000))
end
"""

BENCH_MPM = {
    "prefork": "StartServers 10\nMinSpareServers 10\nMaxSpareServers 20\nServerLimit 64\nMaxRequestWorkers 64\n",
    "worker": "StartServers 2\nServerLimit 4\nThreadLimit 32\nThreadsPerChild 32\nMaxRequestWorkers 128\n"
              "MinSpareThreads 32\nMaxSpareThreads 128\n",
}
BENCH_MPM["event"] = BENCH_MPM["worker"]


def wrk(url, seconds, script=None):
    cmd = ["wrk", "-t2", "-c8", "-d%ds" % seconds, "--latency"]
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
    return rps, lat


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
        wrk(base + "/off/1k.html", 1)  # warm up: children spawned, caches hot
        for variant, on, off in (("one key", "on", "off"), ("1000 keys", "onq", "offq")):
            ratios, on_rps, off_rps, on_lat, off_lat = [], [], [], [], []
            for i in range(rounds):
                order = (on, off) if i % 2 == 0 else (off, on)
                got = {}
                for d in order:
                    got[d] = wrk(base + "/%s/1k.html" % d, seconds, scripts.get(d))
                ratios.append(got[on][0] / got[off][0])
                on_rps.append(got[on][0])
                off_rps.append(got[off][0])
                on_lat.append(got[on][1])
                off_lat.append(got[off][1])
            results[variant] = {
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "on": statistics.median(on_rps), "off": statistics.median(off_rps),
                "on_p50": statistics.median(l.get("50", 0) for l in on_lat),
                "off_p50": statistics.median(l.get("50", 0) for l in off_lat),
                "on_p99": statistics.median(l.get("99", 0) for l in on_lat),
                "off_p99": statistics.median(l.get("99", 0) for l in off_lat),
            }
    finally:
        h.stop()
        crashes = harness.Httpd.crash_lines(h.read_log())
        h.cleanup()
    if crashes:
        raise RuntimeError("crash lines in the error log: %s" % crashes)
    return results


def main():
    full = len(sys.argv) > 1 and sys.argv[1] == "full"
    rounds, seconds = (9, 5) if full else (3, 2)
    print("### httpd, 1 KiB static file, PidLock On vs Off in the same server "
          "(wrk -t2 -c8, %d alternating rounds of %d s; median [min-max] of per-round ratios)\n"
          % (rounds, seconds))
    print("| MPM | keys | On req/s | Off req/s | On/Off | p50 On / Off (µs) | p99 On / Off (µs) |")
    print("|---|---|---|---|---|---|---|")
    for mpm in ("event", "worker", "prefork"):
        res = run_mpm(mpm, rounds, seconds)
        for variant, r in res.items():
            print("| %s | %s | %.0f | %.0f | %.3f [%.3f-%.3f] | %.0f / %.0f | %.0f / %.0f |" % (
                mpm, variant, r["on"], r["off"], r["ratio"], r["ratio_min"], r["ratio_max"],
                r["on_p50"], r["off_p50"], r["on_p99"], r["off_p99"]))
        sys.stdout.flush()
    print()


if __name__ == "__main__":
    main()
