"""Edit leases against a real httpd: the WebDAV lock sequence litmus runs
(lock, refresh, write without the token 423, the owner's write, a bogus token
412, unlock, unlock with a bogus token 409, none 400), every spelling of a
PID sharing one lease, expiry and renewal by use, Release and Steal from the
status page with the nonce, a lease surviving apachectl graceful and a kill -9
of every child, a full table (503), malformed If/Timeout/bodies (400), and the
lock table empty at the end."""
import base64
import hashlib
import json
import os
import re
import signal
import time

from harness import MODDIR, Httpd, check, poll, run_on_server, status_locations
from run import status_json, wait_table_empty

LEASE_CONFIG = r"""
<Location /mn/v2/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey path ^/mn/v2/(?:object|meta|archive)/(.+)$
    PidLockKey header X-Pid
    PidLockTimeout 20
    PidLockLease On
    PidLockLeaseTimeout 60 120
</Location>
<Location /short/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey path ^/short/(.+)$
    PidLockLease On
    PidLockLeaseTimeout 2 3
</Location>
<Location /nolease/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey path ^/nolease/(.+)$
</Location>
""" + status_locations() + r"""
<Location /server-status>
    SetHandler server-status
    Require ip 127.0.0.1
</Location>
<Location /stats>
    SetHandler pidlock-testbackend-stats
</Location>
<Location /redir/>
    SetHandler pidlock-testbackend-redirect
</Location>
<Location /auth/>
    SetHandler pidlock-testbackend
    AuthType Basic
    AuthName lease
    AuthBasicProvider file
    AuthUserFile {root}/htpasswd
    Require valid-user
    PidLock On
    PidLockKey path ^/auth/(.+)$
    PidLockLease On
</Location>
"""
AUTH_MODULES = [(m + "_module", "%s/mod_%s.so" % (MODDIR, m))
                for m in ("authn_core", "authn_file", "auth_basic", "authz_user", "status")]

LOCKINFO = (b'<?xml version="1.0" encoding="utf-8"?>\n'
            b'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            b'<D:locktype><D:write/></D:locktype>'
            b'<D:owner><D:href>mailto:ann@example.org</D:href></D:owner></D:lockinfo>')
TOKEN_RE = re.compile(r"^<(urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})>$")
BOGUS = "urn:uuid:00000000-0000-4000-8000-000000000000"


def server(mpm, name, extra=""):
    h = Httpd(mpm=mpm, body=LEASE_CONFIG + extra, name=name, extra_modules=AUTH_MODULES)
    with open(os.path.join(h.root, "htpasswd"), "w") as f:
        for user in ("ann", "bo"):
            digest = base64.b64encode(hashlib.sha1(b"pw-" + user.encode()).digest()).decode()
            f.write("%s:{SHA}%s\n" % (user, digest))
    h.start()
    return h


def basic(user):
    return {"Authorization": "Basic " + base64.b64encode(("%s:pw-%s" % (user, user)).encode()).decode()}


def lock(h, url, body=LOCKINFO, headers=None, want=200):
    hdrs = {"Content-Type": "application/xml", "Timeout": "Second-100"}
    hdrs.update(headers or {})
    r = h.request("LOCK", url, headers=hdrs, body=body)
    check(r.status == want, "LOCK %s -> %d (want %d) %r" % (url, r.status, want, r.body[:300]))
    if want != 200 or body is None:  # a refresh answers without Lock-Token
        return r, None
    m = TOKEN_RE.match(r.headers.get("lock-token", ""))
    check(m, "Lock-Token %r" % r.headers.get("lock-token"))
    return r, m.group(1)


def put(h, url, token=None, tagged=False, headers=None, pid="lease"):
    hdrs = {"X-Test-Pid": pid}
    if token:
        hdrs["If"] = ("<http://127.0.0.1:%d%s> (<%s>)" % (h.port, url, token)) if tagged else "(<%s>)" % token
    hdrs.update(headers or {})
    return h.request("PUT", url, headers=hdrs, body=b"data")


def lease_of(h, key):
    for le in status_json(h).get("leases", []):
        if le["key"] == key:
            return le
    return None


def counters(h):
    return status_json(h)["counters"]


def admin_nonce(h):
    page = h.request("GET", "/pidlock-admin").text
    m = re.search(r'name="nonce" value="([0-9a-f]{32})"', page)
    check(m, "no nonce in the admin page")
    return page, m.group(1)


def admin_post(h, form, origin=True):
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if origin:
        hdrs["Origin"] = "http://127.0.0.1:%d" % h.port
    elif origin is False:
        hdrs["Origin"] = "http://evil.example"
    return h.request("POST", "/pidlock-admin", headers=hdrs, body=form.encode())


# ------------------------------------------------------------------- tests
def t_sequence(h):
    url = "/mn/v2/object/seq1"
    before = counters(h)
    r, tok = lock(h, url)
    check(r.headers.get("timeout") == "Second-100", "Timeout %r" % r.headers.get("timeout"))
    x = r.text
    check('<D:prop xmlns:D="DAV:"><D:lockdiscovery><D:activelock>' in x, x[:300])
    check("<D:timeout>Second-100</D:timeout>" in x, x)
    check("<D:locktoken><D:href>%s</D:href></D:locktoken>" % tok in x, x)
    check("mailto:ann@example.org" in x, "owner not kept: %s" % x)
    check("application/xml" in r.headers.get("content-type", ""), r.headers)
    # Refresh: If with the token and no body; Infinite gets the default.
    r2, _ = lock(h, url, body=None, headers={"If": "(<%s>)" % tok, "Timeout": "Infinite"}, want=200)
    check(r2.headers.get("timeout") == "Second-60", "refresh Timeout %r" % r2.headers.get("timeout"))
    check(tok in r2.text, "refresh body lacks the token")
    # Above the maximum: bounded.
    r3, _ = lock(h, url, body=None, headers={"If": "(<%s>)" % tok, "Timeout": "Second-4000000000"})
    check(r3.headers.get("timeout") == "Second-120", "bounded Timeout %r" % r3.headers.get("timeout"))
    # A write without the token: 423 at once, a report, Retry-After.
    r = put(h, url)
    check(r.status == 423, "PUT without token -> %d %r" % (r.status, r.body[:200]))
    check(r.elapsed < 2, "423 took %.2f s" % r.elapsed)
    ra = r.headers.get("retry-after", "")
    check(ra.isdigit() and 1 <= int(ra) <= 120, "Retry-After %r" % ra)
    check("seq1" in r.text and "mailto:ann@example.org" in r.text and "expires at" in r.text, r.text)
    check(tok not in r.text and "127.0.0.1" not in r.text, "423 report shows token or address")
    rj = put(h, url, headers={"Accept": "application/json"})
    doc = rj.json()
    check(rj.status == 423 and doc["key"] == "seq1" and doc["owner"] == "mailto:ann@example.org"
          and "idle_since" in doc and "expires" in doc, "JSON 423: %r" % doc)
    check(tok not in rj.text and "127.0.0.1" not in rj.text, "JSON 423 shows token or address")
    # The owner's writes, untagged and tagged.
    for tagged in (False, True):
        r = put(h, url, tok, tagged=tagged)
        check(r.status == 200 and r.text.startswith("ok lease write"), "owner's PUT (tagged=%s) -> %d %r"
              % (tagged, r.status, r.body[:200]))
    # A bogus token: 412. A read: unaffected.
    r = put(h, url, BOGUS)
    check(r.status == 412, "PUT with a bogus token -> %d" % r.status)
    r = h.request("GET", url, headers={"X-Test-Pid": "lease"})
    check(r.status == 200, "GET under a lease -> %d" % r.status)
    # Another client's LOCK: 423.
    lock(h, url, want=423)
    # UNLOCK: bogus 409, none 400, malformed 400, right 204.
    r = h.request("UNLOCK", url, headers={"Lock-Token": "<%s>" % BOGUS})
    check(r.status == 409, "UNLOCK bogus -> %d" % r.status)
    r = h.request("UNLOCK", url)
    check(r.status == 400, "UNLOCK without Lock-Token -> %d" % r.status)
    r = h.request("UNLOCK", url, headers={"Lock-Token": tok})
    check(r.status == 400, "UNLOCK with a malformed Lock-Token -> %d" % r.status)
    r = h.request("UNLOCK", url, headers={"Lock-Token": "<%s>" % tok})
    check(r.status == 204, "UNLOCK -> %d %r" % (r.status, r.body[:200]))
    # Released: the old token is stale, a plain write passes.
    check(put(h, url, tok).status == 412, "released token not 412")
    check(put(h, url).status == 200, "write after UNLOCK")
    after = counters(h)
    for name, n in (("leases_granted", 1), ("leases_renewed", 4), ("leases_released", 1),
                    ("lease_refusals", 4)):
        check(after[name] - before[name] >= n, "%s %d -> %d" % (name, before[name], after[name]))
    check(lease_of(h, "seq1") is None, "lease still listed")
    # The application never saw LOCK or UNLOCK.
    log = h.read_log()
    check("PIDLOCK451" in log and "PIDLOCK453" in log and "PIDLOCK454" in log, "lease events not logged")
    wait_table_empty(h)


def t_copy_move_destination(h):
    """COPY and MOVE write their Destination (RFC 4918 7.5): a leased
    destination needs the token; a leased source may be copied, not moved."""
    base = "http://127.0.0.1:%d" % h.port
    _, tok = lock(h, "/mn/v2/object/dst1")
    for method in ("COPY", "MOVE"):
        for dest in (base + "/mn/v2/object/dst1", "/mn/v2/meta/dst1", base + "/mn/v2/%6Fbject/./dst1"):
            r = h.request(method, "/mn/v2/object/src1", headers={"Destination": dest, "X-Test-Pid": "src1"})
            check(r.status == 423, "%s onto the leased %s -> %d" % (method, dest, r.status))
        r = h.request(method, "/mn/v2/object/src1",
                      headers={"Destination": base + "/mn/v2/object/dst1", "If": "(<%s>)" % tok,
                               "X-Test-Pid": "src1"})
        check(r.status == 200, "%s onto the leased key with its token -> %d" % (method, r.status))
        r = h.request(method, "/mn/v2/object/src1",
                      headers={"Destination": base + "/mn/v2/object/other", "X-Test-Pid": "src1"})
        check(r.status == 200, "%s to a free key -> %d" % (method, r.status))
    # The leased key as the source: COPY reads it, MOVE writes it.
    r = h.request("COPY", "/mn/v2/object/dst1", headers={"Destination": base + "/mn/v2/object/c2",
                                                         "X-Test-Pid": "dst1"})
    check(r.status == 200, "COPY of a leased source -> %d" % r.status)
    r = h.request("MOVE", "/mn/v2/object/dst1", headers={"Destination": base + "/mn/v2/object/c2",
                                                         "X-Test-Pid": "dst1"})
    check(r.status == 423, "MOVE of a leased source -> %d" % r.status)
    r = h.request("COPY", "/mn/v2/object/src1", headers={"Destination": "http://x/%zz", "X-Test-Pid": "src1"})
    check(r.status == 400, "undecodable Destination -> %d" % r.status)
    check("PIDLOCK483" in h.read_log(), "undecodable Destination not logged")
    check(h.request("UNLOCK", "/mn/v2/object/dst1", headers={"Lock-Token": "<%s>" % tok}).status == 204, "unlock")
    wait_table_empty(h)


def t_json_lock(h):
    url = "/mn/v2/object/json1"
    r, tok = lock(h, url, headers={"Accept": "application/json"})
    doc = r.json()
    check(doc["token"] == tok and doc["key"] == "json1" and doc["timeout"] == 100, "JSON LOCK: %r" % doc)
    check(h.request("UNLOCK", url, headers={"Lock-Token": "<%s>" % tok}).status == 204, "unlock")


def t_spellings(h):
    _, tok = lock(h, "/mn/v2/object/a%2Fb")
    for url, hdrs in (("/mn/v2/object/a/b", {}), ("/mn/v2/meta/a%2fb", {}), ("/mn/v2/%6Fbject/a%2Fb", {}),
                      ("/mn//v2/./archive/a/b", {}), ("/mn/v2/x", {"X-Pid": "a%2Fb"})):
        r = put(h, url, headers=hdrs)
        check(r.status == 423, "%s %r without token -> %d" % (url, hdrs, r.status))
        r = put(h, url, tok, headers=hdrs)
        check(r.status == 200, "%s %r with token -> %d" % (url, hdrs, r.status))
    lock(h, "/mn/v2/object/a/b", want=423)
    check(lease_of(h, "a/b") is not None, "lease key is not canonical: %r" % status_json(h).get("leases"))
    check(h.request("UNLOCK", "/mn/v2/meta/a/b", headers={"Lock-Token": "<%s>" % tok}).status == 204, "unlock")
    # An internal redirect from an unlocked scope into a leased one.
    _, tok = lock(h, "/mn/v2/object/rd1")
    r = put(h, "/redir/x?uri=/mn/v2/object/rd1")
    check(r.status == 423, "redirected write without token -> %d" % r.status)
    r = put(h, "/redir/x?uri=/mn/v2/object/rd1", tok)
    check(r.status == 200 and r.text.startswith("ok lease write"), "redirected write with token -> %d" % r.status)
    check(h.request("UNLOCK", "/mn/v2/object/rd1", headers={"Lock-Token": "<%s>" % tok}).status == 204, "unlock")
    # A scope without PidLockLease passes LOCK to the application.
    r = h.request("LOCK", "/nolease/x", headers={"X-Test-Pid": "nl"}, body=LOCKINFO)
    check(r.status == 200 and r.text.startswith("ok nl write"), "LOCK outside a lease scope: %d" % r.status)
    wait_table_empty(h)


def t_expiry_and_renewal(h):
    url = "/short/exp1"
    before = counters(h)
    _, tok = lock(h, url)
    check(lease_of(h, "exp1")["timeout"] == 3, "timeout not bounded to 3: %r" % lease_of(h, "exp1"))
    for _ in range(3):
        time.sleep(1.5)
        r = put(h, url, tok)  # renews by use
        check(r.status == 200, "write with token -> %d (renewal by use failed?)" % r.status)
    check(put(h, url).status == 423, "lease gone despite use")
    time.sleep(3.6)
    check(put(h, url, tok).status == 412, "expired token not 412")
    check(put(h, url).status == 200, "write after expiry")
    check(counters(h)["leases_expired"] > before["leases_expired"], "leases_expired did not grow")
    # A LOCK with the expired token is stale too; a new LOCK is granted.
    lock(h, url, body=None, headers={"If": "(<%s>)" % tok}, want=412)
    _, tok2 = lock(h, url)
    check(h.request("UNLOCK", url, headers={"Lock-Token": "<%s>" % tok2}).status == 204, "unlock")
    wait_table_empty(h)


def t_status_release_steal(h):
    url = "/mn/v2/object/adm1"
    _, tok = lock(h, url)
    le = lease_of(h, "adm1")
    check(le and le["owner"] == "mailto:ann@example.org" and le["user"] is None, "leases entry: %r" % le)
    for f in ("granted", "idle_since", "expires", "id"):
        check(f in le, "leases entry lacks %s" % f)
    check(tok not in json.dumps(status_json(h)), "?json shows the token")
    check(tok.split(":")[-1] not in h.request("GET", "/pidlock-status").text, "HTML shows the token")
    for c in ("leases_granted", "leases_renewed", "leases_released", "leases_expired", "leases_stolen",
              "lease_refusals"):
        check(c in counters(h), "counter %s missing" % c)
    m = h.request("GET", "/pidlock-status?metrics").text
    check(re.search(r"^pidlock_leases 1$", m, re.M) and
          re.search(r'^pidlock_lease_events_total\{event="granted"\} [1-9]', m, re.M) and
          all('pidlock_lease_events_total{event="%s"}' % e in m
              for e in ("renewed", "released", "expired", "stolen", "refused")), m[-600:])
    a = h.request("GET", "/pidlock-status?auto").text
    check(re.search(r"^Leases: 1$", a, re.M) and re.search(r"^LeaseCapacity: 1024$", a, re.M)
          and re.search(r"^LeasesGranted: [1-9]", a, re.M) and "LeaseRefusals: " in a, a[-500:])
    check(tok not in a and "adm1" not in a, "?auto shows a token or a key")
    s = h.request("GET", "/server-status?auto").text
    check(re.search(r"^PidLockLeases: 1$", s, re.M) and "PidLockLeasesGranted: " in s, s[-600:])
    s = h.request("GET", "/server-status").text
    check(re.search(r"<dt>Leases: 1 of 1024 held; granted [1-9]", s), "mod_status lease line: %s" % s[-800:])
    page = h.request("GET", "/pidlock-status").text
    check("<h2>Leases (1)</h2>" in page and 'value="steal"' not in page, "status page leases section")
    page, nonce = admin_nonce(h)
    check('value="steal"' in page and 'value="release"' in page, "no Release/Steal buttons")
    # Refusals: no actions here, no nonce, wrong nonce, cross-site.
    r = h.request("POST", "/pidlock-status", headers={"Content-Type": "application/x-www-form-urlencoded"},
                  body=("action=steal&key=adm1&nonce=%s" % nonce).encode())
    check(r.status == 403, "steal without PidLockStatusActions -> %d" % r.status)
    check(admin_post(h, "action=steal&key=adm1").status == 403, "steal without nonce")
    check(admin_post(h, "action=steal&key=adm1&nonce=" + "0" * 32).status == 403, "steal wrong nonce")
    check(admin_post(h, "action=release&key=adm1&nonce=" + nonce, origin=False).status == 403, "cross-site")
    check(lease_of(h, "adm1") is not None, "a refused action ended the lease")
    # Steal: one step, the operator gets a token, the old one is stale.
    r = admin_post(h, "action=steal&key=adm1&nonce=" + nonce)
    check(r.status == 200, "steal -> %d %r" % (r.status, r.body[:200]))
    doc = r.json()
    check(doc["stolen"] == 1 and TOKEN_RE.match("<%s>" % doc["token"]), "steal answer %r" % doc)
    check(put(h, url, tok).status == 412, "old token after steal not 412")
    check(put(h, url).status == 423, "write without token after steal not 423")
    check(put(h, url, doc["token"]).status == 200, "operator's token refused")
    check(lease_of(h, "adm1")["id"] == doc["id"], "new lease not listed")
    # Release.
    r = admin_post(h, "action=release&key=adm1&nonce=" + nonce)
    check(r.status == 200 and r.json()["released"] == 1, "release -> %d %r" % (r.status, r.body[:200]))
    check(lease_of(h, "adm1") is None, "released lease listed")
    check(put(h, url, doc["token"]).status == 412, "released token not 412")
    check(put(h, url).status == 200, "write after release")
    c = counters(h)
    check(c["leases_stolen"] >= 1 and c["leases_released"] >= 1, "counters %r" % c)
    log = h.read_log()
    check(re.search(r"PIDLOCK461: .*adm1.*client 127\.0\.0\.1.*mailto:ann@example\.org", log), "steal not logged")
    check(re.search(r"PIDLOCK460: .*adm1.*client 127\.0\.0\.1", log), "release not logged")
    wait_table_empty(h)


def t_bad_headers(h):
    url = "/mn/v2/object/bad1"
    for t in ("Second-4294967296", "Second-99999999999999999999", "Second-", "Seconds-5", "Second-5,", ""):
        lock(h, url, headers={"Timeout": t}, want=400)
    for i in ("(<urn:uuid:x>", "urn:uuid:x", "()", "<http://x/> <http://y/> (<a>)", "(Not)"):
        r = put(h, url, headers={"If": i})
        check(r.status == 400, "PUT with If %r -> %d" % (i, r.status))
        lock(h, url, body=None, headers={"If": i}, want=400)
    lock(h, url, body=b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><D:lockinfo xmlns:D="DAV:">'
                      b'<D:owner>&e;</D:owner></D:lockinfo>', want=400)
    lock(h, url, body=b"<D:lockinfo xmlns:D='DAV:'><D:owner>x", want=400)
    lock(h, url, body=b"x" * (70 * 1024), want=413)
    # A lease is an exclusive write lock on one resource (RFC 4918 9.10.3/6).
    lock(h, url, headers={"Depth": "1"}, want=400)
    r, _ = lock(h, url, body=LOCKINFO.replace(b"<D:exclusive/>", b"<D:shared/>"), want=412)
    check("exclusive write locks" in r.text, r.text)
    lock(h, url, body=LOCKINFO.replace(b"<D:write/>", b"<D:read/>"), want=412)
    check(lease_of(h, "bad1") is None, "a refused LOCK left a lease")
    log = h.read_log()
    check("PIDLOCK480" in log and "PIDLOCK481" in log, "Depth / shared refusals not logged")
    for depth in ("0", "infinity", "Infinity"):
        _, tok = lock(h, url, headers={"Depth": depth})
        check(put(h, url).status == 423, "Depth %s lease not enforced" % depth)
        check(h.request("UNLOCK", url, headers={"Lock-Token": "<%s>" % tok}).status == 204, "unlock")
    wait_table_empty(h)


def t_survives_graceful_and_kill(h):
    url = "/mn/v2/object/keep1"
    _, tok = lock(h, url)
    before = lease_of(h, "keep1")
    gen0 = status_json(h)["generation"]
    h.graceful()
    check(poll(lambda: status_json(h)["generation"] != gen0, timeout=15, interval=0.2), "no new generation")
    after = lease_of(h, "keep1")
    check(after is not None, "lease lost in graceful restart")
    check(after["expires"] == before["expires"] and after["id"] == before["id"], "%r -> %r" % (before, after))
    check(put(h, url).status == 423, "lease not enforced after graceful")
    # Every child killed: the lease belongs to its client, not to a process.
    for pid in h.child_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    check(poll(lambda: _serves(h), timeout=15, interval=0.2), "server did not recover from kill -9")
    check(put(h, url).status == 423, "lease lost with the children")
    check(put(h, url, tok).status == 200, "token refused after kill -9")
    check(h.request("UNLOCK", url, headers={"Lock-Token": "<%s>" % tok}).status == 204, "unlock")
    wait_table_empty(h, timeout=10)


def _serves(h):
    try:
        return h.request("GET", "/pidlock-status?json", timeout=2).status == 200
    except OSError:
        return False


def t_user_binding(h):
    url = "/auth/ub1"
    _, tok = lock(h, url, headers=basic("ann"))
    check(lease_of(h, "ub1")["user"] == "ann", "lease user: %r" % lease_of(h, "ub1"))
    r = put(h, url, tok, headers=basic("bo"))
    check(r.status == 403, "bo with ann's token -> %d" % r.status)
    check(put(h, url, headers=basic("bo")).status == 423, "bo without a token")
    r = h.request("UNLOCK", url, headers=dict(basic("bo"), **{"Lock-Token": "<%s>" % tok}))
    check(r.status == 403, "bo's UNLOCK with ann's token -> %d" % r.status)
    lock(h, url, body=None, headers=dict(basic("bo"), If="(<%s>)" % tok), want=403)
    check(put(h, url, tok, headers=basic("ann")).status == 200, "ann's own write")
    r = h.request("UNLOCK", url, headers=dict(basic("ann"), **{"Lock-Token": "<%s>" % tok}))
    check(r.status == 204, "ann's UNLOCK -> %d" % r.status)
    check(h.request("LOCK", url, body=LOCKINFO).status == 401, "anonymous LOCK not refused by auth")
    wait_table_empty(h)


def t_table_empty(h):
    wait_table_empty(h)
    st = status_json(h)
    check(st["locks"] == [] and st["leases"] == [], "locks %r leases %r" % (st["locks"], st["leases"]))


LEASE_TESTS = [
    ("sequence", t_sequence),
    ("json_lock", t_json_lock),
    ("copy_move_destination", t_copy_move_destination),
    ("spellings", t_spellings),
    ("expiry_renewal", t_expiry_and_renewal),
    ("status_release_steal", t_status_release_steal),
    ("bad_headers", t_bad_headers),
    ("user_binding", t_user_binding),
    ("graceful_kill9", t_survives_graceful_and_kill),
    ("table_empty", t_table_empty),
]


def t_full(mpm):
    h = server(mpm, "leasefull-" + mpm, "PidLockLeaseTableSize 2\n")
    try:
        toks = [lock(h, "/mn/v2/object/f%d" % i)[1] for i in range(2)]
        r, _ = lock(h, "/mn/v2/object/f2", want=503)
        check(r.headers.get("retry-after"), "503 without Retry-After")
        check("PIDLOCK457" in h.read_log(), "full table not logged")
        check(h.request("UNLOCK", "/mn/v2/object/f0", headers={"Lock-Token": "<%s>" % toks[0]}).status == 204,
              "unlock")
        lock(h, "/mn/v2/object/f2")
        wait_table_empty(h)
    finally:
        h.stop()
        h.cleanup()


def t_dav_conflict(mpm):
    """PidLockLease On beside Dav On in one section: refused at configtest;
    in different sections: accepted."""
    dav = ("LoadModule dav_module %s/mod_dav.so\nLoadModule dav_fs_module %s/mod_dav_fs.so\n"
           "DavLockDB {root}/davlock\n" % (MODDIR, MODDIR))
    for body, ok in (("<Location /dav/>\n  Dav On\n  PidLock On\n  PidLockKey path ^/dav/(.+)$\n"
                      "  PidLockLease On\n</Location>\n", False),
                     ("<Location /dav/>\n  Dav On\n</Location>\n", True)):
        h = Httpd(mpm=mpm, body=LEASE_CONFIG + dav + body, name="leasedav-" + mpm,
                  extra_modules=AUTH_MODULES)
        try:
            rc, out = h.configtest()
        finally:
            h.cleanup()
        if ok:
            check(rc == 0, "refused: %s" % out[-600:])
        else:
            check(rc != 0 and "PIDLOCK467" in out and "Dav Off" in out, "not refused: %s" % out[-600:])


def run_lease_suite(mpm, record, only=None):
    try:
        h = server(mpm, "lease-" + mpm)
    except Exception as e:  # noqa: BLE001
        record("lease/%s/start" % mpm, e)
        return
    run_on_server(h, LEASE_TESTS, "lease/%s" % mpm, record, only)
    # Tests with servers of their own.
    for name, fn in (("full", t_full), ("dav_conflict", t_dav_conflict)):
        if only and name not in only:
            continue
        try:
            fn(mpm)
            record("lease/%s/%s" % (mpm, name), None)
        except Exception as e:  # noqa: BLE001
            record("lease/%s/%s" % (mpm, name), e if isinstance(e, AssertionError) else "%s: %s" % (type(e).__name__, e))
