"""The status page against a real httpd: a held lock in every format, the
refusals (403, 405), a break with the page's own nonce letting a waiting
writer in, a break of a key with control bytes (sent as key_hex), query
strings hidden unless PidLockStatusQuery On, and the section in mod_status's
server-status."""
import re
import threading
import time

from harness import Httpd, check, poll
from run import CONFIG, status_json, wait_table_empty

ADMIN = """
<Location /pidlock-admin>
    SetHandler pidlock-status
    Require ip 127.0.0.1
    PidLockStatusActions On
</Location>
<Location /pidlock-query>
    SetHandler pidlock-status
    Require ip 127.0.0.1
    PidLockStatusQuery On
</Location>
<Location /server-status>
    SetHandler server-status
</Location>
"""
MOD_STATUS = [("status_module", "/usr/lib/apache2/modules/mod_status.so")]


def _server(mpm, name):
    return Httpd(mpm=mpm, body=CONFIG + ADMIN, extra_modules=MOD_STATUS, name=name)


def _hold(h, url, ms, result=None, key="r", headers=None):
    def run():
        try:
            hdrs = dict(headers or {}, **{"X-Test-Pid": key, "X-Test-Sleep-Ms": str(ms)})
            r = h.request("PUT", url, headers=hdrs, body=b"x", timeout=60)
            if result is not None:
                result.append((r.status, time.monotonic()))
        except Exception as e:  # noqa: BLE001
            if result is not None:
                result.append(("error %s" % e, time.monotonic()))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _lock(h, key):
    for lk in status_json(h)["locks"]:
        if lk["key"] == key:
            return lk
    return None


def _admin_page(h):
    """The admin page and the nonce its forms carry (None if none)."""
    page = h.request("GET", "/pidlock-admin").text
    nonce = re.search(r'name="nonce" value="([0-9a-f]{32})"', page)
    return page, nonce and nonce.group(1)


def _break(h, field, value, nonce):
    """Posts a break as the page's form does; one holder must be released."""
    r = h.request("POST", "/pidlock-admin",
                  headers={"Content-Type": "application/x-www-form-urlencoded",
                           "Origin": "http://127.0.0.1:%d" % h.port, "Accept": "application/json"},
                  body=("action=break&%s=%s&nonce=%s" % (field, value, nonce)).encode())
    check(r.status == 200 and r.json()["broken"] == 1, "break: %d %r" % (r.status, r.body[:200]))


def t_formats(mpm):
    h = _server(mpm, "status-" + mpm)
    try:
        h.start()
        _hold(h, "/mn/v2/object/%3Cscript%3Ex", 3000, key="s1")
        check(poll(lambda: _lock(h, "<script>x") is not None, timeout=5), "lock never appeared")
        lk = _lock(h, "<script>x")
        check(lk["mode"] == "write" and len(lk["holders"]) == 1, "lock: %r" % lk)
        hd = lk["holders"][0]
        check(hd["method"] == "PUT", "method %r" % hd["method"])
        check(hd["uri"] == "/mn/v2/object/%3Cscript%3Ex", "uri %r" % hd["uri"])
        check(hd["client"] == "127.0.0.1" and hd["user"] is None, "client/user %r" % hd)
        check(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", hd["since"]), "since %r" % hd["since"])
        check(isinstance(hd["pid"], int) and hd["held_ms"] >= 0, "pid/held_ms %r" % hd)
        a = h.request("GET", "/pidlock-status?auto")
        check(a.status == 200 and "Holders: 1\n" in a.text and "TableUsed: 1\n" in a.text, a.text[:400])
        m = h.request("GET", "/pidlock-status?metrics")
        check(m.status == 200 and "pidlock_holders 1\n" in m.text, m.text[:400])
        check("text/plain; version=0.0.4" in m.headers.get("content-type", ""), m.headers)
        p = h.request("GET", "/pidlock-status")
        check(p.status == 200 and "text/html" in p.headers.get("content-type", ""), "html %d" % p.status)
        check("&lt;script&gt;x" in p.text and "<script>x" not in p.text, "key not escaped in HTML")
        check("<form" not in p.text and "nonce" not in p.text, "forms shown without PidLockStatusActions")
        check("X-Frame-Options" in p.headers or "x-frame-options" in p.headers, p.headers)
        s = h.request("GET", "/server-status")
        check(s.status == 200 and "<h2>PidLock</h2>" in s.text, "mod_status section missing")
        s = h.request("GET", "/server-status?auto")
        check("PidLockTableCapacity: " in s.text and "PidLockHolders: 1" in s.text, s.text[-600:])
        wait_table_empty(h, timeout=10)
    finally:
        h.stop()
        h.cleanup()


def t_refusals(mpm):
    h = _server(mpm, "refuse-" + mpm)
    try:
        h.start()
        form = b"action=break&key=x&nonce=00"
        ct = {"Content-Type": "application/x-www-form-urlencoded"}
        r = h.request("POST", "/pidlock-status", headers=ct, body=form)
        check(r.status == 403, "break without PidLockStatusActions: %d" % r.status)
        for method in ("PUT", "DELETE", "PATCH"):
            r = h.request(method, "/pidlock-admin", headers=ct, body=form)
            check(r.status == 405, "%s: %d" % (method, r.status))
            check("GET" in r.headers.get("allow", "") and "POST" in r.headers.get("allow", ""),
                  "Allow header: %r" % r.headers.get("allow"))
        r = h.request("POST", "/pidlock-admin", headers=ct, body=form)
        check(r.status == 403, "wrong nonce: %d" % r.status)
        r = h.request("POST", "/pidlock-admin", headers=ct, body=b"action=break&key=x")
        check(r.status == 403, "missing nonce: %d" % r.status)
        page = h.request("GET", "/pidlock-admin").text
        nonce = re.search(r'name="nonce" value="([0-9a-f]{32})"', page)
        _hold(h, "/mn/v2/object/held", 2000, key="held")
        check(poll(lambda: _lock(h, "held") is not None, timeout=5), "no lock to show")
        page = h.request("GET", "/pidlock-admin").text
        nonce = re.search(r'name="nonce" value="([0-9a-f]{32})"', page)
        check(nonce, "no nonce in the admin page")
        body = ("action=break&key=held&nonce=%s" % nonce.group(1)).encode()
        r = h.request("POST", "/pidlock-admin", headers=dict(ct, Origin="http://evil.example"), body=body)
        check(r.status == 403, "cross-site break: %d" % r.status)
        check(_lock(h, "held") is not None, "a refused break released the lock")
        wait_table_empty(h, timeout=10)
        log = h.read_log()
        check("PIDLOCK202" in log and "PIDLOCK203" in log and "PIDLOCK204" in log, "refusals not logged")
    finally:
        h.stop()
        h.cleanup()


def t_break(mpm):
    h = _server(mpm, "break-" + mpm)
    try:
        h.start()
        _hold(h, "/mn/v2/object/stuck", 30000, key="stuck-a")
        check(poll(lambda: _lock(h, "stuck") is not None, timeout=5), "holder never showed up")
        waiter = []
        _hold(h, "/mn/v2/object/stuck", 1, result=waiter, key="stuck-b")
        check(poll(lambda: (_lock(h, "stuck") or {}).get("waiting_write") == 1, timeout=5), "no waiter")
        page, nonce = _admin_page(h)
        check(nonce and 'name="key" value="stuck"' in page, "no break form for the lock")
        _break(h, "key", "stuck", nonce)
        check(poll(lambda: bool(waiter), timeout=5), "the waiting writer did not get in after the break")
        check(waiter[0][0] == 200, "waiting writer: %r" % (waiter[0],))
        st = status_json(h)
        check(st["counters"]["broken"] == 1, "broken counter: %r" % st["counters"])
        log = h.read_log()
        check(re.search(r"PIDLOCK201: .*stuck.*client 127\.0\.0\.1", log), "break not logged with client")
    finally:
        h.stop()
        h.cleanup()


def t_break_control_key(mpm):
    """A key with a control byte: the page's form sends it as key_hex (as
    text it would arrive as U+FFFD and break nothing)."""
    h = _server(mpm, "breakctl-" + mpm)
    try:
        h.start()
        key = "a\x01b"
        _hold(h, "/mn/v2/other", 10000, key="ctl-a", headers={"X-Pid": "a%01b"})
        check(poll(lambda: _lock(h, key) is not None, timeout=5), "holder never showed up")
        page, nonce = _admin_page(h)
        field = re.search(r'name="(key|key_hex)" value="([^"]*)"', page)
        check(nonce and field, "no break form for the lock")
        check(field.groups() == ("key_hex", "610162"), "form field: %r" % (field.groups(),))
        _break(h, field.group(1), field.group(2), nonce)
        check(_lock(h, key) is None, "lock still listed after the break")
        t0 = time.monotonic()
        r = h.request("PUT", "/mn/v2/other", headers={"X-Pid": "a%01b", "X-Test-Pid": "ctl-b"},
                      body=b"x", timeout=30)
        check(r.status == 200 and time.monotonic() - t0 < 5,
              "writer after the break: %d in %.1fs" % (r.status, time.monotonic() - t0))
    finally:
        h.stop()
        h.cleanup()


def t_query_hidden(mpm):
    h = _server(mpm, "query-" + mpm)
    try:
        h.start()
        _hold(h, "/mn/v2/other?pid=x&token=SECRET123", 3000, key="q")
        check(poll(lambda: _lock(h, "x") is not None, timeout=5), "holder never showed up")
        for url in ("/pidlock-status", "/pidlock-status?json", "/pidlock-status?auto",
                    "/pidlock-status?metrics", "/pidlock-admin"):
            r = h.request("GET", url)
            check(r.status == 200 and "SECRET123" not in r.text, "query shown at %s" % url)
        # mod_status's own worker table shows request lines; our section must not.
        page = h.request("GET", "/server-status").text
        start = page.find("<h2>PidLock</h2>")
        end = page.find("<hr", start + 1)
        section = page[start:end if end > 0 else len(page)]
        check(start >= 0 and "SECRET123" not in section, "query shown in the mod_status section")
        check(_lock(h, "x")["holders"][0]["uri"] == "/mn/v2/other?\u2026", "uri %r" % _lock(h, "x"))
        check("/mn/v2/other?\u2026</code>" in h.request("GET", "/pidlock-status").text, "no ?… in HTML")
        for url in ("/pidlock-query", "/pidlock-query?json"):
            r = h.request("GET", url)
            check(r.status == 200 and "token=SECRET123" in r.text, "query hidden at %s" % url)
        wait_table_empty(h, timeout=10)
    finally:
        h.stop()
        h.cleanup()


STATUS_TESTS = []
for _mpm in ("prefork", "event"):
    STATUS_TESTS += [
        ("%s/formats" % _mpm, (lambda m: lambda opts: t_formats(m))(_mpm)),
        ("%s/refusals" % _mpm, (lambda m: lambda opts: t_refusals(m))(_mpm)),
        ("%s/break" % _mpm, (lambda m: lambda opts: t_break(m))(_mpm)),
        ("%s/break-control-key" % _mpm, (lambda m: lambda opts: t_break_control_key(m))(_mpm)),
        ("%s/query-hidden" % _mpm, (lambda m: lambda opts: t_query_hidden(m))(_mpm)),
    ]
