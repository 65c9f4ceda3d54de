"""Reusable harness for mod_pidlock integration tests against a real httpd.

Only 127.0.0.1 is ever used.  Every server this harness starts is stopped by
its own pid (SIGTERM, bounded wait); nothing is killed by name.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

APACHE = os.environ.get("APACHE2", "/usr/sbin/apache2")
MODDIR = "/usr/lib/apache2/modules"
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HOST = "127.0.0.1"

MPM_SETTINGS = {
    "prefork": """
StartServers 4
MinSpareServers 4
MaxSpareServers 8
ServerLimit 32
MaxRequestWorkers 32
""",
    "worker": """
StartServers 2
ServerLimit 4
ThreadLimit 16
ThreadsPerChild 16
MaxRequestWorkers 64
MinSpareThreads 16
MaxSpareThreads 64
""",
}
MPM_SETTINGS["event"] = MPM_SETTINGS["worker"]

# Lines in the error log that mean a child crashed or the server died badly.
CRASH_RE = re.compile(r"\[core:crit\]|segfault|exit signal|Segmentation fault", re.I)


def status_locations(status_require="ip 127.0.0.1", admin=True):
    """The status page at /pidlock-status (for `Require status_require`) and,
    with `admin`, /pidlock-admin, loopback only, where it may break locks."""
    text = ("<Location /pidlock-status>\n    SetHandler pidlock-status\n    Require %s\n</Location>\n"
            % status_require)
    if admin:
        text += ("<Location /pidlock-admin>\n    SetHandler pidlock-status\n    Require ip 127.0.0.1\n"
                 "    PidLockStatusActions On\n</Location>\n")
    return text


def build_dir():
    d = os.environ.get("PIDLOCK_BUILD", "build")
    return d if os.path.isabs(d) else os.path.join(REPO, d)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def catches_sigterm(pid):
    """True once process pid has a handler of its own for SIGTERM."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except (OSError, ValueError, IndexError):
        pass
    return False


def children_of(pid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(d))
    return kids


class HttpdError(Exception):
    pass


class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers  # dict, lower-case names
        self.body = body        # bytes
        self.elapsed = elapsed

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<%d %r>" % (self.status, self.body[:200])


class Httpd:
    """One httpd instance with its own temp ServerRoot and config.

    body: configuration text appended after the generated prologue
    (Listen, PidFile, logs, MPM, LoadModule lines).  Use {build} for the build
    dir and {root} for the server root in it.
    """

    def __init__(self, mpm="event", body="", load_pidlock=True, load_backend=True,
                 extra_modules=(), log_level="info", mpm_settings=None, name="httpd"):
        if mpm not in MPM_SETTINGS:
            raise ValueError("unknown mpm %r" % mpm)
        self.mpm = mpm
        self.body = body
        self.load_pidlock = load_pidlock
        self.load_backend = load_backend
        self.extra_modules = list(extra_modules)
        self.log_level = log_level
        self.mpm_settings = MPM_SETTINGS[mpm] if mpm_settings is None else mpm_settings
        self.name = name
        self.root = tempfile.mkdtemp(prefix="pidlock-it-%s-" % name)
        os.chmod(self.root, 0o755)  # children run as www-data
        self.port = free_port()
        self.conf_path = os.path.join(self.root, "httpd.conf")
        self.pid_path = os.path.join(self.root, "httpd.pid")
        self.error_log = os.path.join(self.root, "error.log")
        self.stderr_path = os.path.join(self.root, "stderr.log")
        self.proc = None
        self.pid = None
        self._log_mark = 0
        self.write_config()

    # ---------------------------------------------------------------- config
    def config_text(self):
        b = build_dir()
        lines = [
            "ServerRoot %s" % self.root,
            "ServerName 127.0.0.1",
            "Listen %s:%d" % (HOST, self.port),
            "PidFile %s" % self.pid_path,
            "DefaultRuntimeDir %s" % self.root,
            "ErrorLog %s" % self.error_log,
            "LogLevel %s" % self.log_level,
            "Timeout 30",
            "KeepAlive On",
            "MaxKeepAliveRequests 1000",
            "KeepAliveTimeout 15",
            "Mutex default",
            "AllowEncodedSlashes NoDecode",
            "LoadModule mpm_%s_module %s/mod_mpm_%s.so" % (self.mpm, MODDIR, self.mpm),
            "LoadModule authz_core_module %s/mod_authz_core.so" % MODDIR,
            "LoadModule authz_host_module %s/mod_authz_host.so" % MODDIR,
        ]
        for modname, path in self.extra_modules:
            lines.append("LoadModule %s %s" % (modname, path))
        if self.load_pidlock:
            lines.append("LoadModule pidlock_module %s/mod_pidlock.so" % b)
        if self.load_backend:
            lines.append("LoadModule pidlock_testbackend_module %s/mod_pidlock_testbackend.so" % b)
        if os.geteuid() == 0:
            lines += ["User www-data", "Group www-data"]
        lines.append(self.mpm_settings)
        lines.append(self.body.replace("{build}", b).replace("{root}", self.root))
        return "\n".join(lines) + "\n"

    def write_config(self):
        with open(self.conf_path, "w") as f:
            f.write(self.config_text())

    def configtest(self, timeout=30):
        """Runs apache2 -t; returns (returncode, combined output)."""
        p = subprocess.run([APACHE, "-t", "-f", self.conf_path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "replace")

    # ------------------------------------------------------------- lifecycle
    def start(self, timeout=20):
        # free_port() only finds a port that was free: another test process
        # may take it before httpd binds it (suites run side by side). Then
        # httpd exits at once (and never writes our pid file): a new port.
        for attempt in range(3):
            try:
                return self._start(timeout)
            except HttpdError as e:
                if attempt == 2 or "Address already in use" not in str(e):
                    raise
                self.port = free_port()

    def _start(self, timeout):
        if self.proc is not None:
            raise HttpdError("already started")
        self.write_config()
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen([APACHE, "-f", self.conf_path, "-DFOREGROUND"],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         start_new_session=True)
        finally:
            err.close()
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise HttpdError("httpd exited at startup (rc=%s): %s" % (rc, self.startup_output()))
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise HttpdError("httpd did not answer on port %d within %ss: %s"
                         % (self.port, timeout, self.startup_output()))

    def ready(self):
        """The port accepts, the parent wrote its pid file and it handles
        SIGTERM. The listener is open, and the pid file written, before the
        parent installs its signal handlers (the MPM's run: ap_log_pid, the
        pre_mpm hooks, then the handlers): a SIGTERM in between ends the
        parent at once, without its cleanup, and mod_cgid's daemon, forked
        earlier, lives on (its parent then init)."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1):
                pass
        except OSError:
            return False
        return os.path.exists(self.pid_path) and catches_sigterm(self.pid)

    def startup_output(self):
        out = []
        for p in (self.stderr_path, self.error_log):
            try:
                with open(p, errors="replace") as f:
                    out.append(f.read()[-2000:])
            except OSError:
                pass
        return " | ".join(s.strip() for s in out if s.strip())

    def signal(self, sig):
        if self.proc is None or self.proc.poll() is not None:
            raise HttpdError("httpd not running")
        os.kill(self.pid, sig)

    def graceful(self):
        self.signal(signal.SIGUSR1)

    def child_pids(self):
        return children_of(self.pid) if self.pid else []

    def stop(self, timeout=20):
        """SIGTERM the parent by pid; bounded wait; then make sure no child lingers."""
        if self.proc is None:
            return True
        kids = self.child_pids()
        clean = True
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                clean = False
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(k) for k in kids):
            time.sleep(0.05)
        for k in kids:
            if pid_alive(k):
                clean = False
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None
        return clean

    def cleanup(self, keep=False):
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ logs
    def read_log(self):
        try:
            with open(self.error_log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_since_mark(self):
        """Error-log text written since the previous call (or the start)."""
        text = self.read_log()
        new = text[self._log_mark:]
        self._log_mark = len(text)
        return new

    @staticmethod
    def crash_lines(text):
        return [l for l in text.splitlines() if CRASH_RE.search(l)]

    # ---------------------------------------------------------------- client
    def connect(self, timeout=10):
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def request(self, method, url, headers=None, body=None, timeout=10, conn=None):
        """One request; a fresh connection unless conn is given.  Raises on
        socket errors/timeouts (callers treat that as a failure)."""
        own = conn is None
        c = self.connect(timeout) if own else conn
        t0 = time.monotonic()
        try:
            c.request(method, url, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            return Response(r.status, hdrs, data, time.monotonic() - t0)
        finally:
            if own:
                c.close()

    def get_json(self, url, timeout=10):
        r = self.request("GET", url, timeout=timeout)
        if r.status != 200:
            raise AssertionError("GET %s -> %d %r" % (url, r.status, r.body[:300]))
        return r.json()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class KeepAliveClient:
    """A persistent connection that reopens itself if the server closed an
    idle keep-alive connection under us (only retried when the failure is a
    connection-level one on a reused connection, before any response)."""

    def __init__(self, httpd, timeout=10):
        self.httpd = httpd
        self.timeout = timeout
        self.conn = None
        self.used = False

    def request(self, method, url, headers=None, body=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = self.httpd.connect(self.timeout)
                self.used = False
            reused = self.used
            try:
                r = self.httpd.request(method, url, headers=headers, body=body, conn=self.conn)
                self.used = True
                if r.headers.get("connection", "").lower() == "close":
                    self.close()
                return r
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError, http.client.CannotSendRequest) :
                self.close()
                if not reused or attempt:
                    raise
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def read_to_close(sock, bufsize=65536):
    """Everything the peer sends until it closes the connection."""
    chunks = []
    while True:
        d = sock.recv(bufsize)
        if not d:
            return b"".join(chunks)
        chunks.append(d)


# ------------------------------------------------------------------ tiny runner
class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def poll(fn, timeout=3.0, interval=0.02):
    """Calls fn() until it returns a truthy value or timeout passes; returns the last value."""
    deadline = time.monotonic() + timeout
    v = fn()
    while not v and time.monotonic() < deadline:
        time.sleep(interval)
        v = fn()
    return v


def run_on_server(h, tests, prefix, record, only=None):
    """Runs (name, fn(h)) tests against one started server, recording each as
    prefix/name (a crash line in the error log fails the test), then stops
    the server and records prefix/clean_shutdown."""
    try:
        for name, fn in tests:
            if only and name not in only:
                continue
            err = None
            try:
                fn(h)
            except Exception as e:  # noqa: BLE001
                err = e if isinstance(e, AssertionError) else "%s: %s" % (type(e).__name__, e)
            crashes = Httpd.crash_lines(h.log_since_mark())
            if crashes and err is None:
                err = "error log: " + " | ".join(crashes[:3])
            record("%s/%s" % (prefix, name), err)
    finally:
        clean = h.stop()
        record("%s/clean_shutdown" % prefix, None if clean else "httpd did not stop cleanly")
        h.cleanup()
