"""Edit leases across hosts: two httpd hosts with PidLockCluster postgres and
PidLockLease On over one throwaway PostgreSQL keep their leases in the
table pidlock_leases. A lease taken through host A refuses a write through
host B (423), B accepts the token, UNLOCK through B frees it for A; the rows
hold the key's hash (pidlock_key) and the key, and a token only hashed."""
import json
import re

from harness import Httpd, check, status_locations
from run import wait_table_empty
from test_cluster import Pg, stop_all
from test_lease import LOCKINFO, TOKEN_RE

CONFIG = r"""
PidLockCluster postgres "%s"
<Location /mn/v2/>
    SetHandler pidlock-testbackend
    PidLock On
    PidLockKey path ^/mn/v2/object/(.+)$
    PidLockTimeout 10
    PidLockLease On
    PidLockLeaseTimeout 60 120
</Location>
""" + status_locations()


def put(h, url, token=None):
    hdrs = {"X-Test-Pid": "lc"}
    if token:
        hdrs["If"] = "(<%s>)" % token
    return h.request("PUT", url, headers=hdrs, body=b"data")


def leases(h):
    return json.loads(h.request("GET", "/pidlock-status?json").text)["leases"]


def t_lease_across_hosts(pg, mpm):
    hs = [Httpd(mpm=mpm, body=CONFIG % pg.conninfo, name="leasecl-%s-%s" % (n, mpm)) for n in "ab"]
    try:
        for h in hs:
            h.start()
        a, b = hs
        url = "/mn/v2/object/doi:10.1/x%2Fy"
        r = a.request("LOCK", url, headers={"Content-Type": "application/xml", "Timeout": "Second-100"},
                      body=LOCKINFO)
        check(r.status == 200, "LOCK on A -> %d %r" % (r.status, r.body[:300]))
        m = TOKEN_RE.match(r.headers.get("lock-token", ""))
        check(m, "Lock-Token %r" % r.headers.get("lock-token"))
        tok = m.group(1)
        r = put(b, url)
        check(r.status == 423, "B: write without token -> %d" % r.status)
        check("mailto:ann@example.org" in r.text, "B's 423 report lacks the owner: %r" % r.text)
        check(b.request("LOCK", url, headers={"Content-Type": "application/xml"}, body=LOCKINFO).status == 423,
              "B: another LOCK not 423")
        r = put(b, url, tok)
        check(r.status == 200 and r.text.startswith("ok lc write"), "B: write with the token -> %d" % r.status)
        check(put(b, url, "urn:uuid:00000000-0000-4000-8000-000000000000").status == 412, "B: bogus token")
        lb = [le for le in leases(b) if le["key"] == "doi:10.1/x/y"]
        check(len(lb) == 1 and lb[0]["owner"] == "mailto:ann@example.org", "B's status: %r" % leases(b))
        # The row: the key's hash and bytes, the token hashed only.
        row = pg.psql("-c", "SELECT key_hash = pidlock_key('doi:10.1/x/y'), convert_from(key, 'UTF8'), "
                            "encode(token_hash, 'hex') = encode(sha256(convert_to('%s', 'UTF8')), 'hex') "
                            "FROM pidlock_leases" % tok)
        check(row == "t|doi:10.1/x/y|t", "row %r" % row)
        dump = pg.psql("-c", "SELECT * FROM pidlock_leases")
        check(tok not in dump and tok.split(":")[-1] not in dump, "the token is stored: %s" % dump)
        # UNLOCK through B frees it for A.
        r = b.request("UNLOCK", url, headers={"Lock-Token": "<%s>" % tok})
        check(r.status == 204, "B: UNLOCK -> %d" % r.status)
        check(put(a, url).status == 200, "A: write after B's UNLOCK")
        check(put(a, url, tok).status == 412, "A: the released token not 412")
        check(leases(a) == [] and pg.psql("-c", "SELECT count(*) FROM pidlock_leases") == "0", "rows left")
        # Steal through B's status page, one step: A's holder gets 412.
        r = a.request("LOCK", url, headers={"Content-Type": "application/xml"}, body=LOCKINFO)
        tok = TOKEN_RE.match(r.headers["lock-token"]).group(1)
        page = b.request("GET", "/pidlock-admin").text
        nonce = re.search(r'name="nonce" value="([0-9a-f]{32})"', page).group(1)
        r = b.request("POST", "/pidlock-admin",
                      headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                               "Origin": "http://127.0.0.1:%d" % b.port},
                      body=("action=steal&key=doi:10.1/x/y&nonce=%s" % nonce).encode())
        check(r.status == 200 and r.json()["stolen"] == 1, "steal on B -> %d %r" % (r.status, r.body[:200]))
        op = r.json()["token"]
        check(put(a, url, tok).status == 412, "A: the stolen token not 412")
        check(put(a, url, op).status == 200, "A: the operator's token refused")
        check(a.request("UNLOCK", url, headers={"Lock-Token": "<%s>" % op}).status == 204, "A: UNLOCK")
        c = json.loads(b.request("GET", "/pidlock-status?json").text)["counters"]
        check(c["leases_stolen"] == 1 and c["lease_refusals"] >= 2, "B's counters %r" % c)
        for h in hs:
            check("PIDLOCK487" in h.read_log(), "PostgreSQL lease store not announced")
            wait_table_empty(h)
    finally:
        stop_all(hs)


def t_store_unreachable(mpm):
    """PostgreSQL out of reach (PidLockClusterOnFailure open, so the request
    lock itself is served locally): LOCK and writes in a leased scope get 503
    with Retry-After and a log line naming the failure; reads are served."""
    body = (CONFIG % "host=/nonexistent-pidlock-lease connect_timeout=1").replace(
        "PidLockCluster postgres", "PidLockClusterOnFailure open\nPidLockCluster postgres")
    h = Httpd(mpm=mpm, body=body, name="leasecl-down-" + mpm)
    h.start()
    try:
        url = "/mn/v2/object/down1"
        r = h.request("LOCK", url, headers={"Content-Type": "application/xml"}, body=LOCKINFO)
        check(r.status == 503 and r.headers.get("retry-after"), "LOCK -> %d %r" % (r.status, r.headers))
        r = put(h, url)
        check(r.status == 503, "PUT -> %d" % r.status)
        r = h.request("GET", url, headers={"X-Test-Pid": "lc"})
        check(r.status == 200, "GET -> %d" % r.status)
        log = h.read_log()
        check(re.search(r"PIDLOCK450: LOCK on key \S+: the lease store failed: ", log) is not None
              and "PIDLOCK475" in log, "failures not logged")
        wait_table_empty(h)
    finally:
        h.stop()
        h.cleanup()


def run_lease_cluster_suite(mpms, record, only=None):
    for mpm in mpms:
        if only and "lease_store_unreachable" not in only:
            break
        err = None
        try:
            t_store_unreachable(mpm)
        except Exception as e:  # noqa: BLE001
            err = e if isinstance(e, AssertionError) else "%s: %s" % (type(e).__name__, e)
        record("lease_cluster/%s/lease_store_unreachable" % mpm, err)
    if only and "lease_across_hosts" not in only:
        return
    pg = Pg()
    try:
        try:
            pg.start()
        except Exception as e:  # noqa: BLE001
            record("lease_cluster/postgres_start", e)
            return
        for mpm in mpms:
            err = None
            try:
                t_lease_across_hosts(pg, mpm)
            except Exception as e:  # noqa: BLE001
                err = e if isinstance(e, AssertionError) else "%s: %s" % (type(e).__name__, e)
            record("lease_cluster/%s/lease_across_hosts" % mpm, err)
            pg.psql("-c", "DELETE FROM pidlock_leases")
    finally:
        pg.stop()
