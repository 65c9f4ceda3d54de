#!/usr/bin/env python3
"""The Debian package, as an administrator meets it: build it (make deb),
inspect it (dpkg-deb -c, lintian: no errors), install it, see the module
enabled and `apache2ctl -t` pass with Debian's stock configuration; start
the Debian service (apache2ctl start, or systemctl; Listen 127.0.0.1 only,
from a ports.conf and a status-page snippet this test writes and restores),
build a second version and install it over the first: the maintainer
scripts restart Apache and the status page reports the new version; stop
it by its pid file, purge the package and find nothing left. Needs root (it
installs into the system); prints `deb: N passed, M failed`.

    python3 tests/deb/run.py [BUILD]
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, sys.argv[1] if len(sys.argv) > 1 else "build")
PKG = "libapache2-mod-pidlock"
FILES = ["/usr/lib/apache2/modules/mod_pidlock.so", "/etc/apache2/mods-available/pidlock.load",
         "/etc/apache2/mods-available/pidlock.conf", "/usr/share/doc/%s/README.md.gz" % PKG,
         "/usr/share/doc/%s/examples/dataone-member-node.conf" % PKG,
         "/usr/share/man/man8/mod_pidlock.8.gz"]
sys.path.insert(0, os.path.join(ROOT, "tests"))
from common import Counted, free_port, listeners  # noqa: E402

suite = Counted("deb")
record = suite.record
# The Debian service under test listens here only (loopback), and serves
# its status page at STATUS_PATH; both from files this test writes.
PORTS_CONF = "/etc/apache2/ports.conf"
POLICY = "/usr/sbin/policy-rc.d"
SNIPPET = "pidlock-deb-test"
STATUS_PATH = "/pidlock-deb-test-status"
ERROR_LOG = "/var/log/apache2/error.log"
APACHE_PID = "/var/run/apache2/apache2.pid"
SYSTEMD = os.path.isdir("/run/systemd/system")


def run(cmd, **kw):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BUILD"):
        env.pop(k, None)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          timeout=600, **kw)


def out(p):
    return p.stdout.decode("utf-8", "replace")


def build(version=None):
    """Builds the package (optionally under another version) into a temp dir."""
    if version is None:
        p = run(["make", "--no-print-directory", "deb", "BUILD=%s" % BUILD], cwd=ROOT)
        debs = sorted(glob.glob(os.path.join(BUILD, PKG + "_*.deb")))
        return p, (debs[-1] if debs else None)
    work = tempfile.mkdtemp(prefix="pidlock-deb-up-")
    src = os.path.join(work, "src")
    files = out(run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT)).split("\n")
    for f in filter(None, files):
        dst = os.path.join(src, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isfile(os.path.join(ROOT, f)):
            shutil.copy2(os.path.join(ROOT, f), dst)
    p = run(["dch", "--newversion", version, "--force-bad-version", "-D", "unstable",
             "test upgrade"], cwd=src) if shutil.which("dch") else None
    if p is None:
        # No devscripts: prepend a changelog entry by hand.
        cl = os.path.join(src, "debian", "changelog")
        old = open(cl).read()
        with open(cl, "w") as f:
            f.write("%s (%s) unstable; urgency=medium\n\n  * Test upgrade.\n\n -- %s  %s\n\n"
                    % (PKG, version, old.split(" -- ")[1].split(">")[0] + ">",
                       "Mon, 30 Nov 2026 02:00:00 +0000") + old)
    p = run(["dpkg-buildpackage", "-us", "-uc", "-b", "-Jauto"], cwd=src)
    debs = glob.glob(os.path.join(work, PKG + "_%s_*.deb" % version))
    return p, (debs[0] if debs else None)


def installed():
    p = run(["dpkg-query", "-W", "-f=${Status} ${Version}", PKG])
    return out(p) if p.returncode == 0 else ""


# policy-rc.d answers invoke-rc.d for the maintainer scripts: 101 keeps every
# service down (as scripts/apt-lib.sh does while it installs); the upgrade's
# policy lets apache2 alone be restarted, as on a host where the package
# upgrade restarts the running server.
DENY_ALL = "#!/bin/sh\nexit 101\n"
ALLOW_APACHE2 = ("#!/bin/sh\n# tests/deb/run.py: the package upgrade may restart apache2, nothing else.\n"
                 "for a in \"$@\"; do case $a in --*) ;; apache2) exit 0 ;; *) exit 101 ;; esac; done\n"
                 "exit 101\n")


class Saved:
    """Files this test rewrites, put back as they were (or removed) on exit."""

    def __init__(self):
        self.saved = {}

    def write(self, path, text, mode=0o644):
        if path not in self.saved:
            self.saved[path] = open(path, "rb").read() if os.path.exists(path) else None
            if self.saved[path] is not None:
                mode = os.stat(path).st_mode & 0o7777
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def restore(self, path):
        if path not in self.saved:
            return
        data = self.saved.pop(path)
        if data is None:
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(data)

    def restore_all(self):
        for path in list(self.saved):
            self.restore(path)


def install(deb, saved, policy=DENY_ALL):
    saved.write(POLICY, policy, 0o755)
    try:
        return run(["dpkg", "-i", deb])
    finally:
        saved.restore(POLICY)


def apache_pid():
    try:
        pid = int(open(APACHE_PID).read().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def status_version(port):
    """The Version line of the module's status page (?auto), or the error."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s?auto" % (port, STATUS_PATH), timeout=5) as r:
            for line in r.read().decode("utf-8", "replace").splitlines():
                if line.startswith("Version: "):
                    return line[len("Version: "):]
            return "no Version line"
    except Exception as e:  # noqa: BLE001 - reported as the failure's detail
        return "error: %s" % e


def wait_for(cond, seconds=20):
    for _ in range(seconds * 10):
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    return cond()


def start_apache(saved, port):
    """The Debian service, its stock configuration but for Listen (loopback,
    in ports.conf) and a status page (a conf snippet): apache2ctl start, or
    systemctl where systemd runs (invoke-rc.d then restarts it through systemd)."""
    saved.write(PORTS_CONF, "# tests/deb/run.py (restored when it ends)\nListen 127.0.0.1:%d\n" % port)
    saved.write("/etc/apache2/conf-available/%s.conf" % SNIPPET,
                "<IfModule pidlock_module>\n<Location %s>\n    SetHandler pidlock-status\n"
                "    Require local\n</Location>\n</IfModule>\n" % STATUS_PATH)
    run(["a2enconf", "-q", SNIPPET])
    p = run(["systemctl", "start", "apache2"] if SYSTEMD else ["apache2ctl", "start"])
    up = wait_for(lambda: apache_pid() and not status_version(port).startswith("error"))
    return p, up


def stop_apache(saved):
    """Stops the service by its pid file, then puts back what start_apache changed."""
    pid = apache_pid()
    if pid:
        run(["systemctl", "stop", "apache2"] if SYSTEMD else ["apache2ctl", "stop"])
        if not wait_for(lambda: apache_pid() is None or not os.path.exists("/proc/%d" % pid)):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not os.path.exists("/proc/%d" % pid))
    if os.path.lexists("/etc/apache2/conf-enabled/%s.conf" % SNIPPET):
        run(["a2disconf", "-q", SNIPPET])
    saved.restore("/etc/apache2/conf-available/%s.conf" % SNIPPET)
    saved.restore(PORTS_CONF)


def upgrade(saved, version_a):
    """Version A serving, version B installed over it: the maintainer scripts
    restart apache2 (dh_apache2: apache2_invoke enmod -> apache2_reload) and
    the status page then reports B."""
    port = free_port()
    if apache_pid():
        record("upgrade_serves_a", False, "apache2 already runs (pid %s): not touching it" % apache_pid())
        return
    try:
        p, up = start_apache(saved, port)
        before = status_version(port)
        ls = listeners(port)
        record("upgrade_serves_a", up and before == version_a and ls and all(a.startswith("0100007F:") for a in ls),
               "start: %s; status version %r, package %r; listening on %s" % (out(p)[-400:], before, version_a, ls))
        if not up:
            return
        version_b = version_a + "+upgrade1"
        p, deb2 = build(version_b)
        pid_a = apache_pid()
        log_at = os.path.getsize(ERROR_LOG) if os.path.exists(ERROR_LOG) else 0
        inst = install(deb2, saved, ALLOW_APACHE2) if p.returncode == 0 and deb2 else None
        record("upgrade", inst is not None and inst.returncode == 0 and version_b in installed()
               and run(["a2query", "-m", "pidlock"]).returncode == 0
               and run(["apache2ctl", "-t"]).returncode == 0, out(inst or p)[-800:])
        if deb2:
            shutil.rmtree(os.path.dirname(deb2), ignore_errors=True)
        # Restarted: a new parent, "resuming normal operations" (AH00489)
        # logged after the install began.
        after = wait_for(lambda: (lambda v: v if v == version_b else None)(status_version(port)))
        log = open(ERROR_LOG, errors="replace").read()[log_at:] if os.path.exists(ERROR_LOG) else ""
        pid_b = apache_pid()
        record("upgrade_restarts_apache", pid_b and pid_b != pid_a and "AH00489" in log,
               "pid %s -> %s; error log since the install: %s" % (pid_a, pid_b, log[-600:]))
        record("upgrade_runs_new_code", after == version_b,
               "status version %r after the upgrade, want %r" % (status_version(port), version_b))
    finally:
        stop_apache(saved)
        record("apache_stopped", apache_pid() is None and not listeners(port),
               "pid %s" % apache_pid())


def main():
    if os.geteuid() != 0:
        record("root", False, "the package test installs into the system: run as root")
        return suite.summary()
    saved = Saved()
    try:
        return check_package(saved)
    finally:
        saved.restore_all()


def check_package(saved):
    if installed().startswith("install ok"):
        run(["dpkg", "--purge", PKG])
    p, deb = build()
    record("build", p.returncode == 0 and deb, out(p)[-1500:])
    if not deb:
        return suite.summary()
    contents = out(run(["dpkg-deb", "-c", deb]))
    missing = [f for f in FILES if "." + f not in contents]
    # The operator's pages (docs/*.md), compressed or not.
    missing += [d for d in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
                if "./usr/share/doc/%s/%s" % (PKG, os.path.basename(d)) not in contents]
    record("contents", not missing, "missing: %s" % missing)
    conffiles = out(run(["sh", "-c", "dpkg-deb --ctrl-tarfile '%s' | tar -xO ./conffiles" % deb]))
    record("conffiles", "/etc/apache2/mods-available/pidlock.load" in conffiles
           and "/etc/apache2/mods-available/pidlock.conf" in conffiles, conffiles)
    lint = run(["su", "nobody", "-s", "/bin/sh", "-c", "lintian '%s'" % deb]) \
        if shutil.which("lintian") else None
    errors = [l for l in out(lint).splitlines() if l.startswith("E:")] if lint else ["lintian missing"]
    record("lintian", lint is not None and lint.returncode == 0 and not errors,
           errors or (out(lint)[-600:] if lint else ""))
    exports = out(run(["sh", "-c", "dpkg-deb --fsys-tarfile '%s' | tar -xO "
                       "./usr/lib/apache2/modules/mod_pidlock.so > /tmp/pidlock-deb.so && "
                       "nm -D --defined-only /tmp/pidlock-deb.so | awk '{print $3}'; "
                       "readelf --dyn-syms -W /tmp/pidlock-deb.so | grep -c UNIQUE; rm -f /tmp/pidlock-deb.so" % deb]))
    record("exports", exports.split() == ["pidlock_module", "0"], exports)

    version_a = out(run(["dpkg-deb", "-f", deb, "Version"])).strip()
    p = install(deb, saved)
    record("install", p.returncode == 0 and installed().startswith("install ok"), out(p)[-1500:])
    en = run(["a2query", "-m", "pidlock"])
    if en.returncode != 0:
        run(["a2enmod", "pidlock"])
        en = run(["a2query", "-m", "pidlock"])
    record("enabled", en.returncode == 0, out(en))
    t = run(["apache2ctl", "-t"])
    record("configtest", t.returncode == 0 and "Syntax OK" in out(t), out(t))
    t = run(["apache2ctl", "-M"])
    record("module_loaded", "pidlock_module" in out(t), out(t)[-500:])

    upgrade(saved, version_a)

    p = run(["dpkg", "--purge", PKG])
    left = [f for f in FILES if os.path.lexists(f)] + glob.glob("/etc/apache2/mods-*/pidlock*")
    known = run(["dpkg", "-L", PKG])
    record("purge", p.returncode == 0 and not left and known.returncode != 0
           and not installed().startswith("install ok"),
           "left: %s; dpkg -L: %s %s" % (left, out(known)[-300:], out(p)[-500:]))
    t = run(["apache2ctl", "-t"])
    record("configtest_after_purge", t.returncode == 0, out(t))
    return suite.summary()


if __name__ == "__main__":
    sys.exit(main())
