#!/usr/bin/env python3
"""Instructions mod_pidlock adds to one request, counted by callgrind in a
single-process httpd (-X, prefork MPM): N requests to the same 1 KiB file under a
`PidLock On` location, then N under `PidLock Off`, in two runs of an
otherwise identical server; (On - Off) / N. Instruction counts repeat to
well under 1 % whatever else the machine does, unlike requests/s.

    callgrind_cost.py [N] [--breakdown] [--base DIR]

--breakdown: also the functions whose own instructions differ most between
the On and the Off run of the path key (callgrind_annotate, per request).
--base DIR: first the same figures for the build in DIR (mod_pidlock.so,
mod_pidlock_testbackend.so), e.g. a copy of the previous build, so a change
is measured side by side with what it replaces.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import harness  # noqa: E402
from httpd_bench import BODY  # noqa: E402


def run(path, n, body=BODY, load_backend=False, method="GET", headers=None, data=None, check=None,
        keep=None):
    """Total instructions of a callgrind'ed `httpd -X` that started, answered
    the readiness probe and then served n keep-alive requests `method path`
    (with headers and body data; check(response) may reject a response).
    body: the configuration (it must keep /off/1k.html for the probe).
    keep: a path the callgrind output is copied to."""
    # prefork: one thread takes every request the same way; under event the
    # listener thread's timing makes the count vary by about 100 a request
    # from run to run (PIDLOCK_CALLGRIND_MPM=event to see it).
    h = harness.Httpd(mpm=os.environ.get("PIDLOCK_CALLGRIND_MPM", "prefork"), body=body, load_backend=load_backend,
                      log_level="warn", name="cg")
    for d in ("on", "off", "onq", "offq", "no", "noq"):
        os.makedirs(os.path.join(h.root, "htdocs", d), exist_ok=True)
        with open(os.path.join(h.root, "htdocs", d, "1k.html"), "w") as f:
            f.write("x" * 1024)
    os.chmod(os.path.join(h.root, "htdocs"), 0o755)
    out = os.path.join(h.root, "callgrind.out")
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out] + \
        os.environ.get("PIDLOCK_CALLGRIND_ARGS", "").split() + [harness.APACHE, "-X", "-f", h.conf_path]
    if os.geteuid() == 0:
        # httpd would switch to www-data after callgrind opened its output as
        # root; run as www-data throughout instead.
        subprocess.run(["chown", "-R", "www-data:www-data", h.root], check=True)
        cmd = ["runuser", "-u", "www-data", "--"] + cmd
    p = subprocess.Popen(cmd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = h.request("GET", "/off/1k.html", timeout=5)
                if r.status == 200:
                    break
            except Exception:  # noqa: BLE001 - still starting under valgrind
                time.sleep(0.2)
        cl = harness.KeepAliveClient(h, timeout=30)
        for _ in range(n):
            r = cl.request(method, path, headers=headers, body=data)
            assert r.status == 200, (r.status, r.body[:200])
            if check:
                check(r)
        cl.close()
    finally:
        # httpd itself, by its pid file: runuser would pass the SIGTERM on
        # and SIGKILL it 2 s later, before a loaded machine's callgrind has
        # written its output. Again every 5 s: httpd -X tests for a SIGTERM
        # at the top of its accept loop and then blocks in accept(), so one
        # that arrives in between (while the connection that just closed is
        # cleaned up) is never acted on; the next one interrupts the accept.
        for attempt in range(24):
            try:
                with open(h.pid_path) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                p.terminate()
            try:
                p.wait(5)
                break
            except subprocess.TimeoutExpired:
                if attempt == 23:
                    raise
    text = open(out).read()
    total = int(re.search(r"^summary:\s+(\d+)", text, re.M).group(1)) if "summary:" in text else \
        int(re.search(r"^totals:\s+(\d+)", text, re.M).group(1))
    if keep:
        shutil.copyfile(out, keep)
    h.cleanup()
    return total


def self_costs(path):
    """Own (exclusive) instructions per function of a callgrind output."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout.decode()
    costs = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([\d.]+%\)\s+)?(\S.*?)\s*$", line)
        if m and (":" in m.group(2)):
            fn = re.sub(r"\s+\[[^]]*\]$", "", m.group(2))
            fn = fn.split(":", 1)[1] if not fn.startswith("???:") else fn[4:]
            costs[fn] = costs.get(fn, 0) + int(m.group(1).replace(",", ""))
    return costs


SAME_LENGTH_BODY = BODY + """
<Location /no/>
    PidLock Off
</Location>
<Location /noq/>
    PidLock Off
</Location>
"""


def measure(n, breakdown, label=""):
    """Per request: each server runs twice, n/5 and n requests, and the
    difference is divided by the 4n/5 requests between, so what a server
    does once (start, first request, stop) cancels out."""
    n0 = max(1, n // 5)
    tmp = tempfile.mkdtemp(prefix="pidlock-cg-")
    totals, outs = {}, {}
    # PidLock Off under /no/ and /noq/: paths of the same length as the On
    # ones, so httpd's own work on the path (directory walk, file name) is
    # the same in both runs and only the module's differs.
    for name, path in (("on", "/on/1k.html"), ("off", "/no/1k.html"),
                       ("onq", "/onq/1k.html?pid=42"), ("offq", "/noq/1k.html?pid=42")):
        keep = breakdown and name in ("on", "off")
        outs[name] = (os.path.join(tmp, name + "0.out"), os.path.join(tmp, name + ".out"))
        t0 = run(path, n0, body=SAME_LENGTH_BODY, keep=outs[name][0] if keep else None)
        t1 = run(path, n, body=SAME_LENGTH_BODY, keep=outs[name][1] if keep else None)
        totals[name] = (t1 - t0) / float(n - n0)
    on, off, onq, offq = totals["on"], totals["off"], totals["onq"], totals["offq"]
    print("### Instructions per request%s (callgrind, httpd -X, keep-alive requests of a 1 KiB file; "
          "runs of %d and %d requests, the difference per request)\n" % (label, n0, n))
    print("| key | PidLock Off (whole request) | added by PidLock On | added, % of the request |")
    print("|---|---|---|---|")
    print("| path `^/on/(.+)$` | %.0f | %.0f | %.2f %% |" % (off, on - off, 100.0 * (on - off) / off))
    print("| query `pid` | %.0f | %.0f | %.2f %% |" % (offq, onq - offq, 100.0 * (onq - offq) / offq))
    print()
    if breakdown:
        per = {}
        for name in ("on", "off"):
            c0, c1 = self_costs(outs[name][0]), self_costs(outs[name][1])
            per[name] = {f: (c1.get(f, 0) - c0.get(f, 0)) / float(n - n0) for f in set(c0) | set(c1)}
        a, b = per["on"], per["off"]
        diff = [(a.get(f, 0) - b.get(f, 0), f) for f in set(a) | set(b)]
        diff = [d for d in diff if abs(d[0]) >= 3]
        print("Own instructions per request, On - Off (path key; functions differing by 3 or more):\n")
        print("| function | On - Off |")
        print("|---|---|")
        for d, f in sorted(diff, key=lambda x: -abs(x[0])):
            f = f.replace("(anonymous namespace)::", "")
            f = f.split("(", 1)[0] + "()" if "(" in f else f
            print("| `%s` | %+.0f |" % (f.replace("|", "\\|"), d))
        print("| **sum of the rows** | %+.0f |" % sum(d for d, _ in diff))
        print()
    shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()


def main():
    args = sys.argv[1:]
    breakdown = "--breakdown" in args
    base = None
    if "--base" in args:
        base = args[args.index("--base") + 1]
        del args[args.index("--base"):args.index("--base") + 2]
    args = [a for a in args if not a.startswith("--")]
    n = int(args[0]) if args else 2000
    if base:
        build = os.environ.get("PIDLOCK_BUILD")
        os.environ["PIDLOCK_BUILD"] = os.path.abspath(base)
        measure(n, breakdown, " — base build %s" % base)
        if build is None:
            del os.environ["PIDLOCK_BUILD"]
        else:
            os.environ["PIDLOCK_BUILD"] = build
        measure(n, breakdown, " — this build")
    else:
        measure(n, breakdown)


if __name__ == "__main__":
    main()
