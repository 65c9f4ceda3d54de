"""Startup checks against a real httpd: `apache2 -t -f CONF` on generated
configurations (refused: non-zero exit, the directive named; accepted: exit
0), a graceful restart into a refused configuration that leaves the running
server serving, and the thread backend serving a single-process server.
"""
import os
import shutil
import signal
import subprocess
import time

from harness import APACHE, MODDIR, Httpd, catches_sigterm, check, children_of, pid_alive, poll

WORKER_ONE = """
StartServers 1
ServerLimit 1
ThreadLimit 16
ThreadsPerChild 16
MaxRequestWorkers 16
MinSpareThreads 1
MaxSpareThreads 16
"""

BASE = """
<Location /mn/v2/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey path ^/mn/v2/object/(.+)$
</Location>
<Location /pidlock-status>
    SetHandler pidlock-status
</Location>
"""


def configtest(mpm, extra, mpm_settings=None):
    h = Httpd(mpm=mpm, body=BASE + extra, mpm_settings=mpm_settings, name="t-" + mpm)
    try:
        return h.configtest()
    finally:
        h.cleanup()


def refused(mpm, extra, must, mpm_settings=None):
    rc, out = configtest(mpm, extra, mpm_settings)
    check(rc != 0, "accepted (exit 0) but must be refused: %r\n%s" % (extra, out[-600:]))
    for m in must:
        check(m in out, "refusal does not name %r: %s" % (m, out[-800:]))


def accepted(mpm, extra, mpm_settings=None, must=()):
    rc, out = configtest(mpm, extra, mpm_settings)
    check(rc == 0, "refused (exit %d) but must be accepted: %r\n%s" % (rc, extra, out[-800:]))
    for m in must:
        check(m in out, "expected %r in: %s" % (m, out[-800:]))


def t_thread_backend(opts):
    refused("prefork", "PidLockBackend thread\n", ["PIDLOCK301", "PidLockBackend", "prefork"])
    refused("event", "PidLockBackend thread\n", ["PIDLOCK301", "ServerLimit 4"])
    refused("worker", "PidLockBackend thread\n", ["PIDLOCK301", "ServerLimit 4"])
    accepted("event", "PidLockBackend thread\n", WORKER_ONE)
    accepted("worker", "PidLockBackend thread\n", WORKER_ONE)
    accepted("prefork", "PidLockBackend shared\n")


def t_table_size(opts):
    # harness worker/event: MaxRequestWorkers 64, ServerLimit 4 x ThreadLimit 16
    refused("event", "PidLockTableSize 10\n", ["PIDLOCK302", "PidLockTableSize 10", "64", "auto"])
    refused("prefork", "PidLockTableSize 31\n", ["PIDLOCK302", "32"])
    accepted("event", "PidLockTableSize 64\n")
    accepted("prefork", "PidLockTableSize auto\n")
    accepted("event", "PidLockTableSize 100000\n")
    # Legal but short of a graceful restart's worst case: a warning.
    accepted("event", "PidLockTableSize 64\n", mpm_settings="""
StartServers 1
ServerLimit 8
ThreadLimit 16
ThreadsPerChild 16
MaxRequestWorkers 64
""", must=["PIDLOCK304"])


def t_mutex(opts):
    refused("event", "Mutex posixsem pidlock\n", ["PIDLOCK303", "posixsem", "Mutex"])
    rc, out = configtest("event", "Mutex none pidlock\n")
    check(rc != 0, "Mutex none pidlock accepted: %s" % out[-400:])
    check("pidlock" in out, "refusal of Mutex none does not name pidlock: %s" % out[-400:])
    for mech in ("default", "pthread", "fcntl", "flock", "sysvsem"):
        accepted("prefork", "Mutex %s pidlock\n" % mech)


def t_context(opts):
    vhost = "<VirtualHost 127.0.0.1:*>\n    ServerName x\n    %s\n</VirtualHost>\n"
    refused("event", vhost % "PidLockTableSize 100", ["PidLockTableSize", "cannot occur within"])
    refused("event", vhost % "PidLockBackend shared", ["PidLockBackend", "cannot occur within"])
    refused("event", "<Location /x>\nPidLockTableSize 100\n</Location>\n", ["PidLockTableSize"])
    refused("event", "<Location /x>\nPidLockMaxKeyLength 10\n</Location>\n", ["PidLockMaxKeyLength"])


def t_bad_values(opts):
    cases = [
        ("PidLockTimeout abc", "PidLockTimeout"),
        ("PidLockTimeout -1", "PidLockTimeout"),
        ("PidLockTimeout nan", "PidLockTimeout"),
        ("PidLockBusyStatus 404", "PidLockBusyStatus"),
        ("PidLockBusyStatus 503x", "PidLockBusyStatus"),
        ("PidLockKey path ^/nogroup$", "capture group"),
        ("PidLockKey path ^/(unclosed$", "PidLockKey"),
        ("PidLockKey cookie pid", "path, query, header or form"),
        ("PidLockMethod sometimes GET", "PidLockMethod"),
        ("PidLockMethod read", "PidLockMethod"),
        ("PidLockMethod read GE(T", "not an HTTP method"),
        ("PidLockMaxKeyLength 0", "PidLockMaxKeyLength"),
        ("PidLockMaxKeyLength 99999999", "PidLockMaxKeyLength"),
        ("PidLockTableSize lots", "PidLockTableSize"),
        ("PidLockBackend redis", "PidLockBackend"),
        ("PidLock maybe", "PidLock"),
    ]
    for line, must in cases:
        rc, out = configtest("event", line + "\n")
        check(rc != 0, "%r accepted: %s" % (line, out[-300:]))
        check(must in out, "%r: message does not mention %r: %s" % (line, must, out[-400:]))
        check("httpd.conf" in out and "line" in out, "%r: no file and line in: %s" % (line, out[-300:]))


def t_warnings(opts):
    accepted("event", "<Location /nokey/>\n    PidLock On\n</Location>\n",
             must=["PIDLOCK305", "PidLock On"])
    accepted("event", "<Location /mn/v2/>\n    PidLockTimeout 45\n</Location>\nTimeout 30\n",
             must=["PIDLOCK306", "45"])
    accepted("event", "<Location /mn/v2/>\n    PidLockMaxHold 90\n</Location>\nTimeout 30\n",
             must=["PIDLOCK307", "90"])
    accepted("event", "LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so\nProxyTimeout 20\n"
             "Timeout 300\n<Location /mn/v2/>\n    PidLockMaxHold 90\n</Location>\n",
             must=["PIDLOCK307", "ProxyTimeout"])


def t_graceful_into_refused(opts):
    """apachectl graceful into a refused configuration: the running server
    keeps serving with its old configuration and the same parent pid."""
    h = Httpd(mpm="event", body=BASE, name="graceful-refused")
    try:
        h.start()
        r = h.request("GET", "/pidlock-status?json")
        check(r.status == 200, "status page: %d" % r.status)
        old_children = set(h.child_pids())
        h.body = BASE + "PidLockBackend thread\n"  # refused: event, ServerLimit 4
        h.write_config()
        env = dict(os.environ, APACHE_ARGUMENTS="-f %s" % h.conf_path)
        p = subprocess.run(["/usr/sbin/apachectl", "graceful"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode(errors="replace")
        check(p.returncode != 0, "apachectl graceful into a refused config exited 0: %s" % out)
        check("PIDLOCK301" in out, "apachectl output does not show the refusal: %s" % out[-600:])
        check(h.proc.poll() is None, "the running server died")
        r = h.request("GET", "/pidlock-status?json")
        check(r.status == 200 and r.json()["backend"] == "shared",
              "server no longer serves its old configuration: %d %r" % (r.status, r.body[:200]))
        check(set(h.child_pids()) == old_children, "children were replaced")
    finally:
        h.stop()
        h.cleanup()


def t_thread_backend_serves(opts):
    """PidLockBackend thread on a single-process event server locks for real."""
    from run import CONFIG, PIDS, run_load, stats, wait_table_empty  # noqa: E402
    # 12 clients on 16 workers: more may wait than the default limit (auto:
    # 8) allows, and this test is about locking, not refusing.
    h = Httpd(mpm="event", body=CONFIG + "PidLockBackend thread\nPidLockMaxWaiters 16 16\n", mpm_settings=WORKER_ONE,
              name="thread-backend")
    try:
        h.start()
        st = h.get_json("/pidlock-status?json")
        check(st["backend"] == "thread", "backend is %r" % st["backend"])
        stats(h, reset=True)
        n, errors = run_load(h, PIDS, "/mn/v2", threads=12, per_thread=30)
        check(not errors, "%d errors, e.g. %s" % (len(errors), errors[:3]))
        s = stats(h)
        check(s["violations"] == 0, "violations=%d in %d requests" % (s["violations"], n))
        wait_table_empty(h)
        check(h.get_json("/pidlock-status?json")["counters"]["waited"] > 0, "no request ever waited")
        crashes = Httpd.crash_lines(h.read_log())
        check(not crashes, "crash lines: %s" % crashes[:3])
    finally:
        h.stop()
        h.cleanup()


def t_ifmodule_names(opts):
    """<IfModule pidlock_module> and <IfModule mod_pidlock.c> both match."""
    extra = ("<IfModule mod_pidlock.c>\n    Define PIDLOCK_BY_FILE\n</IfModule>\n"
             "<IfModule pidlock_module>\n    Define PIDLOCK_BY_ID\n</IfModule>\n")
    h = Httpd(mpm="event", body=BASE + extra, name="ifmodule")
    try:
        p = subprocess.run([APACHE, "-t", "-D", "DUMP_RUN_CFG", "-f", h.conf_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        out = p.stdout.decode(errors="replace")
        check("PIDLOCK_BY_FILE" in out, "<IfModule mod_pidlock.c> does not match: %s" % out[-400:])
        check("PIDLOCK_BY_ID" in out, "<IfModule pidlock_module> does not match: %s" % out[-400:])
    finally:
        h.cleanup()


def t_ready_after_signal_handlers(opts):
    """The harness calls a server ready only once its parent handles SIGTERM.
    httpd opens its listener and writes its pid file before its parent
    installs its signal handlers (every MPM's run: ap_log_pid, the pre_mpm
    hooks, then the handlers): a test that stopped a server there killed the
    parent at once, without its cleanup, and mod_cgid's daemon lived on (it
    did once: a form/event/clean_shutdown failure). gdb holds the parent at
    ap_run_pre_mpm, in between."""
    gdb = shutil.which("gdb")
    check(gdb, "gdb missing")
    for mpm in opts.mpm or ("prefork", "worker", "event"):
        ready_after_signal_handlers(gdb, mpm)


def ready_after_signal_handlers(gdb, mpm):
    h = Httpd(mpm=mpm, body=BASE + "LoadModule cgid_module %s/mod_cgid.so\n" % MODDIR, name="ready-" + mpm)
    h.write_config()
    go = os.path.join(h.root, "go")
    p = subprocess.Popen([gdb, "-batch", "-nx", APACHE, "-ex", "set breakpoint pending on",
                          "-ex", "set detach-on-fork on", "-ex", "set follow-fork-mode parent",
                          "-ex", "break ap_run_pre_mpm",
                          "-ex", "run -f %s -DFOREGROUND </dev/null >/dev/null 2>&1" % h.conf_path,
                          "-ex", "shell i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done" % go,
                          "-ex", "delete", "-ex", "detach", "-ex", "quit"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids = []
    try:
        check(poll(lambda: os.path.exists(h.pid_path), timeout=30), "httpd under gdb wrote no pid file")
        with open(h.pid_path) as f:
            h.pid = int(f.read().strip())
        check(poll(lambda: children_of(h.pid), timeout=10), "mod_cgid's daemon not started")
        kids = children_of(h.pid)
        # Held between its pid file and its signal handlers.
        time.sleep(0.5)
        check(not h.ready(), "%s: ready while the parent does not yet handle SIGTERM" % mpm)
        open(go, "w").close()
        check(poll(h.ready, timeout=20), "%s: not ready once the parent runs on" % mpm)
        kids = children_of(h.pid)
        p.wait(timeout=20)
        os.kill(h.pid, signal.SIGTERM)
        check(poll(lambda: not pid_alive(h.pid), timeout=20), "%s: httpd did not stop on SIGTERM" % mpm)
        check(poll(lambda: not any(pid_alive(k) for k in kids), timeout=15),
              "%s: children alive after their parent stopped: %s" % (mpm, [k for k in kids if pid_alive(k)]))
    finally:
        open(go, "w").close()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
        if h.pid and pid_alive(h.pid):
            # Detached now: stopped the ordinary way, children and all.
            kids += children_of(h.pid)
            poll(lambda: catches_sigterm(h.pid), timeout=10)
            os.kill(h.pid, signal.SIGTERM)
            poll(lambda: not pid_alive(h.pid), timeout=20)
        for pid in [h.pid] + kids:
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        h.cleanup()


STARTUP_TESTS = [
    ("ready_after_signal_handlers", t_ready_after_signal_handlers),
    ("ifmodule_names", t_ifmodule_names),
    ("thread_backend_refusals", t_thread_backend),
    ("table_size", t_table_size),
    ("mutex_mechanisms", t_mutex),
    ("directive_context", t_context),
    ("bad_values", t_bad_values),
    ("warnings", t_warnings),
    ("graceful_into_refused_config", t_graceful_into_refused),
    ("thread_backend_serves", t_thread_backend_serves),
]
