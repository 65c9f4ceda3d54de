#!/usr/bin/env python3
"""Cost of keys from the request body (`PidLockKey form pid`): PidLock On vs
Off (the same location configuration with `PidLock Off`) in the same run,
the handler being the test backend (which reads the body: it discards it, or
with X-Test-Body reports its length and checksum).

1. callgrind instructions per request of a small multipart create (fields
   pid, then a 1 KiB `object` part, then sysmeta), httpd -X (callgrind_cost.run).
2. Uploads: requests/s and MB/s of 1 MiB multipart creates (pid first), wrk
   -t2 -c8 posting prebuilt requests, alternating On/Off rounds, median of the
   per-round ratios; event MPM (and prefork in full mode).
3. Memory: concurrent 100 MiB uploads with the pid LAST (the module reads
   and spools the whole body before it locks): peak RSS (VmHWM) of each httpd
   child, a fresh server per round, On and Off alternating; the temporary
   files (pidlock-body-*) seen during the run and left after it.

usage: form_bench.py quick|full [outdir [callgrind,upload,memory]]; with outdir,
its output also goes to outdir/form.md.
Only 127.0.0.1 is used; every server is stopped by its pid.
"""
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
import callgrind_cost  # noqa: E402
from httpd_bench import BENCH_MPM, BODY, stop_checked, wrk  # noqa: E402
from test_form import fnv1a, multipart  # noqa: E402

# The same location twice, one with PidLock Off. LimitRequestBody 0: the
# memory part sends 100 MiB bodies (httpd's default limit is 1 GiB anyway).
FORM_BODY = """
LimitRequestBody 0
Timeout 300
<Location /fon/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey form pid
    PidLockTimeout 60
</Location>
<Location /foff/>
    SetHandler pidlock-testbackend
    PidLock Off
    PidLockKey form pid
    PidLockTimeout 60
</Location>
"""

SYSMETA = (b'<?xml version="1.0" encoding="UTF-8"?>\n<d1:systemMetadata xmlns:d1='
           b'"http://ns.dataone.org/service/types/v2.0"><serialVersion>1</serialVersion>'
           b'<identifier>@@PID@@</identifier><formatId>application/octet-stream</formatId>'
           b'<size>0</size><checksum algorithm="MD5">00000000000000000000000000000000</checksum>'
           b'<submitter>CN=bench</submitter><rightsHolder>CN=bench</rightsHolder>'
           b'</d1:systemMetadata>\n')


def create_body(pid, obj, pid_last=False):
    """A DataONE create: (pid, object, sysmeta) or (object, sysmeta, pid)."""
    pidf = ("pid", pid, None)
    rest = [("object", obj, "object.bin"), ("sysmeta", SYSMETA.replace(b"@@PID@@", pid), "sysmeta.xml")]
    return multipart(rest + [pidf] if pid_last else [pidf] + rest)


def body_report(text):
    for line in text.splitlines():
        if line.startswith("body "):
            n, s = line.split()[1:3]
            return int(n), s
    return None


def med(xs):
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------ 1. callgrind
def callgrind_part(n, rounds, n_big):
    obj = bytes((i * 7 + 13) & 0xFF for i in range(1024))
    body, ctype = create_body(b"cg-pid-1", obj)
    big, big_ctype = create_body(b"cg-pid-1", bytes((i * 31 + 7) & 0xFF for i in range(UPLOAD_OBJ)))

    def ok(r):
        if r.body != b"no pid\n":
            raise RuntimeError("unexpected answer %r" % r.body[:200])

    conf = BODY + FORM_BODY
    base = callgrind_cost.run("/off/1k.html", 0, body=conf, load_backend=True)
    rows = []
    for what, data, ct, count, nrounds in (("small create (1 KiB object)", body, ctype, n, rounds),
                                           ("1 MiB create", big, big_ctype, n_big, 1)):
        on, off = [], []
        for i in range(nrounds):
            for loc in (("fon", "foff") if i % 2 == 0 else ("foff", "fon")):
                total = callgrind_cost.run("/%s/create" % loc, count, body=conf, load_backend=True,
                                           method="POST", headers={"Content-Type": ct}, data=data, check=ok)
                (on if loc == "fon" else off).append(total)
        rows.append((what, len(data), count, nrounds, (med(on) - base) / count, (med(off) - base) / count,
                     [(a - b) / count for a, b in zip(on, off)]))
    print("### 4a. Form key: instructions per request (callgrind, httpd -X, event, keep-alive requests, "
          "run(s) of On and Off alternating, median; the server's start-up, measured alone, subtracted)\n")
    print("Request: `POST` multipart create: field `pid` first, an `object` part, `sysmeta`; handler: the "
          "test backend, which reads (discards) the body. Instructions to time: a 1 KiB static request "
          "is ≈36 500 instructions and 35–43 µs of CPU here (ANCHORS.md), ≈1 instruction per ns; "
          "365 instructions ≈ 1 % of it.\n")
    print("| request | body bytes | requests × runs | PidLock Off (whole request) | PidLock On | On − Off "
          "| On − Off, % of Off | On − Off per run |")
    print("|---|---|---|---|---|---|---|---|")
    for what, size, count, nrounds, per_on, per_off, diffs in rows:
        print("| %s | %d | %d × %d | %.0f | %.0f | %.0f | %.2f %% | %s |" % (
            what, size, count, nrounds, per_off, per_on, per_on - per_off, 100.0 * (per_on - per_off) / per_off,
            ", ".join("%.0f" % d for d in diffs)))
    print()
    sys.stdout.flush()
    return rows


# --------------------------------------------------------------- 2. uploads
UPLOAD_LUA = r"""
local tid = 0
function setup(thread)
    thread:set("tid", tid)
    tid = tid + 1
end
function init(args)
    local f = assert(io.open("%(head)s", "rb")); local head = f:read("*a"); f:close()
    f = assert(io.open("%(tail)s", "rb")); local tail = f:read("*a"); f:close()
    reqs = {}
    -- Distinct PIDs per thread and per request in flight: no two requests
    -- wait on each other's lock.
    for i = 1, %(k)d do
        local pid = string.format("up-%%d-%%03d", tid, i)
        reqs[i] = wrk.format("POST", "%(path)s", {["Content-Type"] = "%(ctype)s"}, head .. pid .. tail)
    end
    n = 0
end
function request()
    n = n %% #reqs + 1
    return reqs[n]
end
"""
UPLOAD_OBJ = 1 << 20


def upload_server(mpm, root_files):
    h = harness.Httpd(mpm=mpm, body=FORM_BODY, load_backend=True, log_level="warn",
                      mpm_settings=BENCH_MPM[mpm], name="form-" + mpm)
    obj = bytes((i * 31 + 7) & 0xFF for i in range(UPLOAD_OBJ))
    body, ctype = create_body(b"@@PID@@", obj)
    head, tail = body.split(b"@@PID@@", 1)
    assert b"@@PID@@" not in tail.replace(b"<identifier>@@PID@@", b"")
    # The sysmeta's identifier stays the placeholder: the same length for all.
    for name, data in (("head", head), ("tail", tail)):
        with open(os.path.join(h.root, name + ".bin"), "wb") as f:
            f.write(data)
    scripts = {}
    for loc in ("fon", "foff"):
        path = os.path.join(h.root, loc + ".lua")
        with open(path, "w") as f:
            f.write(UPLOAD_LUA % {"head": os.path.join(h.root, "head.bin"), "tail": os.path.join(h.root, "tail.bin"),
                                  "k": 16, "path": "/%s/create" % loc, "ctype": ctype})
        scripts[loc] = path
    size = len(head) + len("up-0-001") + len(tail)
    return h, scripts, size, head, tail, ctype


def check_upload(h, loc, head, tail, ctype):
    """One create through Python, X-Test-Body: the handler got the body byte for byte."""
    body = head + b"up-9-999" + tail
    r = h.request("POST", "/%s/create" % loc, headers={"Content-Type": ctype, "X-Test-Body": "1",
                                                            "X-Test-Pid": "up-9-999", "X-Test-Sleep-Ms": "0"},
                  body=body, timeout=60)
    got = body_report(r.text)
    if r.status != 200 or got != (len(body), fnv1a(body)):
        raise RuntimeError("%s: upload answered %d %r, expected body %d %s" % (
            loc, r.status, r.text[:200], len(body), fnv1a(body)))


def upload_part(mpms, rounds, seconds):
    print("### 4b. Form key: 1 MiB multipart creates (pid first), PidLock On vs Off in the same server "
          "(wrk -t2 -c8, prebuilt requests, distinct PIDs in flight, %d alternating rounds of %d s; "
          "median [min-max] of per-round ratios; MB = 10^6 bytes)\n" % (rounds, seconds))
    print("| MPM | On req/s | Off req/s | On MB/s | Off MB/s | On/Off | p50 On / Off (ms) | p99 On / Off (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    res = {}
    for mpm in mpms:
        h, scripts, size, head, tail, ctype = upload_server(mpm, None)
        h.start()
        try:
            base = "http://127.0.0.1:%d" % h.port
            for loc in ("fon", "foff"):
                check_upload(h, loc, head, tail, ctype)
            wrk(base + "/foff/create", 1, scripts["foff"])  # warm-up
            got = {"fon": [], "foff": []}
            ratios = []
            for i in range(rounds):
                for loc in (("fon", "foff") if i % 2 == 0 else ("foff", "fon")):
                    got[loc].append(wrk(base + "/%s/create" % loc, seconds, scripts[loc]))
                ratios.append(got["fon"][-1][0] / got["foff"][-1][0])
        finally:
            stop_checked(h)
        on = med([g[0] for g in got["fon"]])
        off = med([g[0] for g in got["foff"]])
        lat = lambda xs, p: med([x[1].get(p, 0) for x in xs]) / 1000.0  # noqa: E731
        print("| %s | %.0f | %.0f | %.0f | %.0f | %.3f [%.3f-%.3f] | %.2f / %.2f | %.2f / %.2f |" % (
            mpm, on, off, on * size / 1e6, off * size / 1e6, med(ratios), min(ratios), max(ratios),
            lat(got["fon"], "50"), lat(got["foff"], "50"), lat(got["fon"], "99"), lat(got["foff"], "99")))
        sys.stdout.flush()
        res[mpm] = med(ratios)
    print("\nBody: %d bytes per request; the handler (test backend) discards it; before the runs one "
          "create per location was checked byte for byte (length and FNV-1a of the body as the handler "
          "read it). Target On/Off ≥ 0.97.\n" % size)
    return res


# ---------------------------------------------------------------- 3. memory
def temp_dir():
    # apr_temp_dir_get: TMPDIR, TMP, TEMP, then /tmp (and a few more).
    for v in ("TMPDIR", "TMP", "TEMP"):
        if os.environ.get(v) and os.path.isdir(os.environ[v]):
            return os.environ[v]
    return "/tmp"


def spool_files(tdir):
    out = []
    for n in os.listdir(tdir):
        if n.startswith("pidlock-body-"):
            try:
                out.append((n, os.stat(os.path.join(tdir, n)).st_size))
            except OSError:
                pass
    return out


def proc_kib(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def upload_one(port, path, ctype, head, chunk, nchunks, tail, pid, sum_body, result):
    """A create of len(head) + nchunks*len(chunk) + len(tail) bytes; result
    gets (status, (length, checksum) or None, error)."""
    clen = len(head) + nchunks * len(chunk) + len(tail)
    try:
        s = socket.create_connection((harness.HOST, port), timeout=600)
        try:
            hdr = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                   "Connection: close\r\nX-Test-Pid: %s\r\nX-Test-Sleep-Ms: 0\r\n%s\r\n" % (
                       path, ctype, clen, pid.decode(), "X-Test-Body: 1\r\n" if sum_body else ""))
            s.sendall(hdr.encode() + head)
            for _ in range(nchunks):
                s.sendall(chunk)
            s.sendall(tail)
            data = harness.read_to_close(s)
        finally:
            s.close()
        status = int(data.split(b" ", 2)[1])
        text = data.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace")
        result.append((status, body_report(text), None, text))
    except Exception as e:  # noqa: BLE001
        result.append((None, None, repr(e), ""))


def memory_round(mpm, loc, conc, mib, tdir):
    # A child that crashes leaves a core in {root}/cores, and the server root
    # is kept for the post-mortem.
    h = harness.Httpd(mpm=mpm, body=FORM_BODY + "CoreDumpDirectory {root}/cores\n", load_backend=True,
                      log_level="warn", mpm_settings=MEM_MPM[mpm], name="form-mem-%s" % mpm)
    os.makedirs(os.path.join(h.root, "cores"), mode=0o777)
    os.chmod(os.path.join(h.root, "cores"), 0o777)
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    chunk = bytes((i * 131 + 3) & 0xFF for i in range(1 << 20))
    pids = [b"mem-%03d" % i for i in range(conc)]
    h.start()
    results = {}
    peak_rss = {}
    spool_peak = [0, 0]  # files, bytes
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for k in h.child_pids():
                v = proc_kib(k, "VmRSS")
                if v is not None:
                    peak_rss[k] = max(peak_rss.get(k, 0), v)
            sp = spool_files(tdir)
            spool_peak[0] = max(spool_peak[0], len(sp))
            spool_peak[1] = max(spool_peak[1], sum(s for _, s in sp))
            stop.wait(0.05)

    try:
        idle = {k: proc_kib(k, "VmRSS") for k in h.child_pids()}
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = []
        t0 = time.monotonic()
        for i, pid in enumerate(pids):
            head, tail = multipart_pid_last(pid)
            res = results.setdefault(pid, [])
            # Every 8th upload is summed by the handler (length + checksum).
            t = threading.Thread(target=upload_one, args=(h.port, "/%s/create" % loc, MEM_CTYPE, head, chunk,
                                                         mib, tail, pid, i % 8 == 0, res), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(900)
        elapsed = time.monotonic() - t0
        # Connections in lingering close finish before SIGTERM: a stop in the
        # middle of them has crashed an event child twice here, in the MPM's
        # own shutdown (apr_os_sock_get from the child's main thread, no
        # module frame on any thread).
        time.sleep(1)
        stop.set()
        sampler.join(5)
        hwm = {k: proc_kib(k, "VmHWM") for k in h.child_pids()}
        hwm = {k: v for k, v in hwm.items() if v is not None}
    finally:
        stop.set()
        h.stop()
        log = h.read_log()
    time.sleep(0.2)
    left = spool_files(tdir)
    crashes = harness.Httpd.crash_lines(log)
    if crashes:
        crashes.append("server root kept: %s (cores: %s)" % (h.root, os.listdir(os.path.join(h.root, "cores"))))
    else:
        h.cleanup()
    return {"results": results, "hwm": hwm, "peak_rss": peak_rss, "idle": idle, "elapsed": elapsed,
            "spool_peak": spool_peak, "left": left, "crashes": crashes}


MEM_BOUNDARY = "----pidlockBenchMem01"
MEM_CTYPE = "multipart/form-data; boundary=" + MEM_BOUNDARY
# Room for 64 uploads at once in one child (event), or one child each (prefork).
MEM_MPM = {
    "event": "StartServers 2\nServerLimit 4\nThreadLimit 64\nThreadsPerChild 64\nMaxRequestWorkers 256\n"
             "MinSpareThreads 64\nMaxSpareThreads 256\n",
    "prefork": "StartServers 70\nMinSpareServers 70\nMaxSpareServers 80\nServerLimit 80\nMaxRequestWorkers 80\n",
}


def multipart_pid_last(pid):
    body, _ = multipart([("object", b"@@OBJ@@", "object.bin"),
                         ("sysmeta", SYSMETA.replace(b"@@PID@@", pid), "sysmeta.xml"),
                         ("pid", pid, None)], boundary=MEM_BOUNDARY)
    head, tail = body.split(b"@@OBJ@@", 1)
    return head, tail


def memory_part(mpms, rounds, conc, mib):
    tdir = temp_dir()
    du = shutil.disk_usage(tdir)
    need = 2 * conc * mib * (1 << 20)  # the files of one round, with room to spare
    note = ""
    while conc > 4 and du.free - need < (4 << 30):
        conc //= 2
        need = 2 * conc * mib * (1 << 20)
        note = " (concurrency lowered: %.1f GiB free in %s)" % (du.free / (1 << 30), tdir)
    print("### 4c. Form key: memory under %d concurrent %d MiB uploads, pid LAST (On: the module reads and "
          "spools the whole body before it locks; PidLockBodyBuffer 65536), a fresh server per round, "
          "%d round(s) each of On and Off alternating%s\n" % (conc, mib, rounds, note))
    print("Temp dir %s: %.1f GiB free before the runs. Peak RSS of a child: its VmHWM just before the "
          "server stops (RSS sampled every 50 ms in brackets, for comparison); median over rounds.\n"
          % (tdir, du.free / (1 << 30)))
    print("| MPM | PidLock | children | peak RSS per child, max (MiB) | median child (MiB) | idle child (MiB) "
          "| all children (MiB) | wall time (s) | temp files at once, max (GiB) | left after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    before = set(n for n, _ in spool_files(tdir))
    problems = []
    summary = {}
    for mpm in mpms:
        got = {"fon": [], "foff": []}
        sums = {}
        for i in range(rounds):
            for loc in (("fon", "foff") if i % 2 == 0 else ("foff", "fon")):
                r = memory_round(mpm, loc, conc, mib, tdir)
                got[loc].append(r)
                for pid, res in r["results"].items():
                    st, rep, err, text = res[0] if res else (None, None, "no result", "")
                    if st != 200:
                        problems.append("%s %s %s: status %s %s %s" % (mpm, loc, pid.decode(), st, err or "",
                                                                         text[:120]))
                    elif rep:
                        sums.setdefault(pid, {}).setdefault(loc, set()).add(rep)
                if r["crashes"]:
                    problems.append("%s %s: crash lines: %s" % (mpm, loc, r["crashes"][:2] + r["crashes"][-1:]))
                new_left = [n for n, _ in r["left"] if n not in before]
                if new_left:
                    problems.append("%s %s: %d pidlock-body-* temp files left: %s" % (
                        mpm, loc, len(new_left), new_left[:3]))
        head0, tail0 = multipart_pid_last(b"mem-000")
        expect_len = len(head0) + mib * (1 << 20) + len(tail0)
        for pid, by in sums.items():
            reps = set().union(*by.values())
            if len(reps) != 1 or next(iter(reps))[0] != expect_len - len(b"mem-000") + len(pid):
                problems.append("%s %s: handler saw different bodies On / Off: %r" % (mpm, pid.decode(), by))
        for loc in ("fon", "foff"):
            rs = got[loc]
            mx = med([max(r["hwm"].values()) for r in rs]) / 1024.0
            mx_s = med([max(r["peak_rss"].values()) for r in rs]) / 1024.0
            md = med([med(list(r["hwm"].values())) for r in rs]) / 1024.0
            idle = med([med([v for v in r["idle"].values() if v]) for r in rs]) / 1024.0
            tot = med([sum(r["hwm"].values()) for r in rs]) / 1024.0
            el = med([r["elapsed"] for r in rs])
            sp = max(r["spool_peak"][1] for r in rs) / float(1 << 30)
            spn = max(r["spool_peak"][0] for r in rs)
            left = sum(len([n for n, _ in r["left"] if n not in before]) for r in rs)
            print("| %s | %s | %d | %.1f [%.1f] | %.1f | %.1f | %.0f | %.1f | %.2f (%d files) | %d |" % (
                mpm, "On" if loc == "fon" else "Off", len(rs[0]["hwm"]), mx, mx_s, md, idle, tot, el, sp, spn,
                left))
            summary[(mpm, loc)] = (mx, md, tot)
        sys.stdout.flush()
    print("\nEvery upload answered 200; every 8th was summed by the handler (length + FNV-1a), and "
          "On and Off saw the same bodies." if not problems else "\n**Problems:**")
    for p in problems:
        print("- " + p)
    print()
    return summary, problems


class Tee:
    """stdout, and a copy in outdir/form.md."""

    def __init__(self, path):
        self.f = open(path, "w")
        self.out = sys.stdout

    def write(self, s):
        self.out.write(s)
        self.f.write(s)

    def flush(self):
        self.out.flush()
        self.f.flush()


def main():
    full = len(sys.argv) > 1 and sys.argv[1] == "full"
    if len(sys.argv) > 2:
        sys.stdout = Tee(os.path.join(sys.argv[2], "form.md"))
    parts = sys.argv[3].split(",") if len(sys.argv) > 3 else ["callgrind", "upload", "memory"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, cwd=HERE).stdout.decode().strip() or "unknown"
    except OSError:
        commit = "unknown"
    print("Form keys (`python3 bench/form_bench.py %s`, part of `make bench`): commit %s, started %s.\n" % (
        "full" if full else "quick", commit, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    failed = False
    if "callgrind" in parts and not shutil.which("valgrind"):
        print("### 4a. Form key: instructions per request\n\nvalgrind not installed: not measured.\n")
    elif "callgrind" in parts:
        callgrind_part(2000 if full else 300, 3 if full else 1, 20 if full else 10)
    if "upload" in parts:
        upload_part(("event", "prefork") if full else ("event",), 9 if full else 4, 5 if full else 2)
    if "memory" in parts:
        _, problems = memory_part(("event", "prefork") if full else ("event",), 3 if full else 1,
                                  int(os.environ.get("FORM_MEM_CONC", 64)), int(os.environ.get("FORM_MEM_MIB", 100)))
        failed = failed or bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
