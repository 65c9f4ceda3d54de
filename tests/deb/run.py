#!/usr/bin/env python3
"""The Debian package, as an administrator meets it: build it (make deb),
inspect it (dpkg-deb -c, lintian), install it, see the module enabled and
`apache2ctl -t` pass with Debian's stock configuration, upgrade it, purge it
and find nothing left. Needs root (it installs into the system); prints
`deb: N passed, M failed`.

    python3 tests/deb/run.py [BUILD]
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, sys.argv[1] if len(sys.argv) > 1 else "build")
PKG = "libapache2-mod-pidlock"
FILES = ["/usr/lib/apache2/modules/mod_pidlock.so", "/etc/apache2/mods-available/pidlock.load",
         "/etc/apache2/mods-available/pidlock.conf", "/usr/share/doc/%s/README.md.gz" % PKG,
         "/usr/share/doc/%s/examples/dataone-member-node.conf" % PKG,
         "/usr/share/man/man8/mod_pidlock.8.gz"]
passed = failed = 0


def run(cmd, **kw):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BUILD"):
        env.pop(k, None)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          timeout=600, **kw)


def record(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("PASS deb/%s" % name, flush=True)
    else:
        failed += 1
        print("FAIL deb/%s: %s" % (name, " ".join(str(detail).split())[:1200]), flush=True)


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
    p = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src)
    debs = glob.glob(os.path.join(work, PKG + "_%s_*.deb" % version))
    return p, (debs[0] if debs else None)


def installed():
    p = run(["dpkg-query", "-W", "-f=${Status} ${Version}", PKG])
    return out(p) if p.returncode == 0 else ""


def install(deb):
    # Debian's maintainer scripts would (re)start the system's apache2: a
    # policy-rc.d keeps services down, as scripts/apt-lib.sh does.
    added = not os.path.exists("/usr/sbin/policy-rc.d")
    if added:
        with open("/usr/sbin/policy-rc.d", "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod("/usr/sbin/policy-rc.d", 0o755)
    try:
        return run(["dpkg", "-i", deb])
    finally:
        if added:
            os.unlink("/usr/sbin/policy-rc.d")


def main():
    if os.geteuid() != 0:
        record("root", False, "the package test installs into the system: run as root")
        print("deb: %d passed, %d failed" % (passed, failed))
        return 1
    if installed().startswith("install ok"):
        run(["dpkg", "--purge", PKG])
    p, deb = build()
    record("build", p.returncode == 0 and deb, out(p)[-1500:])
    if not deb:
        print("deb: %d passed, %d failed" % (passed, failed))
        return 1
    contents = out(run(["dpkg-deb", "-c", deb]))
    missing = [f for f in FILES if "." + f not in contents]
    record("contents", not missing, "missing: %s" % missing)
    conffiles = out(run(["dpkg-deb", "-f", deb, "Package"])) and out(run(["sh", "-c",
                    "dpkg-deb --ctrl-tarfile '%s' | tar -xO ./conffiles" % deb]))
    record("conffiles", "/etc/apache2/mods-available/pidlock.load" in conffiles
           and "/etc/apache2/mods-available/pidlock.conf" in conffiles, conffiles)
    lint = run(["su", "nobody", "-s", "/bin/sh", "-c", "lintian '%s'" % deb]) \
        if shutil.which("lintian") else None
    errors = [l for l in out(lint).splitlines() if l.startswith("E:")] if lint else ["lintian missing"]
    record("lintian", not errors, errors)
    exports = out(run(["sh", "-c", "dpkg-deb --fsys-tarfile '%s' | tar -xO "
                       "./usr/lib/apache2/modules/mod_pidlock.so > /tmp/pidlock-deb.so && "
                       "nm -D --defined-only /tmp/pidlock-deb.so | awk '{print $3}'; "
                       "readelf --dyn-syms -W /tmp/pidlock-deb.so | grep -c UNIQUE; rm -f /tmp/pidlock-deb.so" % deb]))
    record("exports", exports.split() == ["pidlock_module", "0"], exports)

    p = install(deb)
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

    p, deb2 = build("0.2.0+upgrade1")
    ok = p.returncode == 0 and deb2 and install(deb2).returncode == 0
    record("upgrade", ok and "0.2.0+upgrade1" in installed()
           and run(["a2query", "-m", "pidlock"]).returncode == 0
           and run(["apache2ctl", "-t"]).returncode == 0, out(p)[-800:] if p else "")
    if deb2:
        shutil.rmtree(os.path.dirname(deb2), ignore_errors=True)

    p = run(["dpkg", "--purge", PKG])
    left = [f for f in FILES + ["/etc/apache2/mods-enabled/pidlock.load",
                                "/etc/apache2/mods-enabled/pidlock.conf"] if os.path.lexists(f)]
    record("purge", p.returncode == 0 and not left and not installed().startswith("install ok"),
           "left: %s %s" % (left, out(p)[-500:]))
    t = run(["apache2ctl", "-t"])
    record("configtest_after_purge", t.returncode == 0, out(t))
    print("deb: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
