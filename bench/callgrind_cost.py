#!/usr/bin/env python3
"""Instructions mod_pidlock adds to one request, counted by callgrind in a
single-process httpd (-X): N requests to the same 1 KiB file under a
`PidLock On` location, then N under `PidLock Off`, in two runs of an
otherwise identical server; (On - Off) / N. Instruction counts repeat to
well under 1 % whatever else the machine does, unlike requests/s.
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import harness  # noqa: E402
from httpd_bench import BODY  # noqa: E402


def run(path, n, body=BODY, load_backend=False, method="GET", headers=None, data=None, check=None):
    """Total instructions of a callgrind'ed `httpd -X` that started, answered
    the readiness probe and then served n keep-alive requests `method path`
    (with headers and body data; check(response) may reject a response).
    body: the configuration (it must keep /off/1k.html for the probe)."""
    h = harness.Httpd(mpm="event", body=body, load_backend=load_backend, log_level="warn", name="cg")
    for d in ("on", "off", "onq", "offq"):
        os.makedirs(os.path.join(h.root, "htdocs", d), exist_ok=True)
        with open(os.path.join(h.root, "htdocs", d, "1k.html"), "w") as f:
            f.write("x" * 1024)
    os.chmod(os.path.join(h.root, "htdocs"), 0o755)
    out = os.path.join(h.root, "callgrind.out")
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, harness.APACHE, "-X", "-f", h.conf_path]
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
        p.terminate()
        p.wait(60)
    text = open(out).read()
    total = int(re.search(r"^summary:\s+(\d+)", text, re.M).group(1)) if "summary:" in text else \
        int(re.search(r"^totals:\s+(\d+)", text, re.M).group(1))
    h.cleanup()
    return total


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    on = run("/on/1k.html", n)
    off = run("/off/1k.html", n)
    onq = run("/onq/1k.html?pid=42", n)
    offq = run("/offq/1k.html?pid=42", n)
    per_off = off / n
    print("### Instructions per request (callgrind, httpd -X, %d keep-alive requests of a 1 KiB file)\n" % n)
    print("| key | PidLock Off (whole request) | added by PidLock On | added, % of the request |")
    print("|---|---|---|---|")
    print("| path `^/on/(.+)$` | %.0f | %.0f | %.2f %% |" % (per_off, (on - off) / n, 100.0 * (on - off) / off))
    print("| query `pid` | %.0f | %.0f | %.2f %% |" % (offq / n, (onq - offq) / n, 100.0 * (onq - offq) / offq))
    print()


if __name__ == "__main__":
    main()
