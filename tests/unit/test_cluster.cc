// The PostgreSQL tier beyond the contract (which test_contract.cc runs over
// it): the key hash against SQL's pidlock_key(), two hosts (two tables) over
// one server, the pool's cap and deadline, the client's cancel, a server that
// cannot be reached (closed and open), a pooled session ended under the pool,
// a lock lost while held, the per-process counters. Against the throwaway
// server of tests/run_all.sh (PIDLOCK_TEST_PG); without it these tests fail.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pidlock_backend.h"
#include "pidlock_cluster.h"
#include "pidlock_locks.h"
#include "pidlock_render.h"
#include "pidlock_table.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

const char *test_pg() {
    const char *c = std::getenv("PIDLOCK_TEST_PG");
    return c && *c ? c : nullptr;
}

// One "host": its own lock table in process memory and its cluster tier.
struct Host {
    std::vector<char> table_mem, locks_mem, stats_mem;
    std::unique_ptr<PthreadStripeLocks> locks;
    std::unique_ptr<LockTable> table;
    std::unique_ptr<TableBackend> local;
    ClusterStats *stats = nullptr;
    std::unique_ptr<ClusterBackend> cluster;

    explicit Host(ClusterOptions opt, bool with_tier = true) {
        TableParams p;
        p.capacity = 64;
        p.key_cap = 64;
        p.stripes = 4;
        table_mem.assign(LockTable::region_size(p), 0);
        locks_mem.assign(PthreadStripeLocks::region_size(p.stripes), 0);
        CHECK_EQUAL(0, PthreadStripeLocks::init(locks_mem.data(), p.stripes, false));
        CHECK(LockTable::format(table_mem.data(), table_mem.size(), p));
        locks.reset(new PthreadStripeLocks(locks_mem.data(), p.stripes));
        table.reset(new LockTable(table_mem.data(), locks.get()));
        local.reset(new TableBackend("thread", table.get()));
        stats_mem.assign(ClusterStats::region_size(4), 0);
        stats = ClusterStats::format(stats_mem.data(), 4);
        if (with_tier) cluster.reset(new ClusterBackend(local.get(), stats, opt));
    }
    LockBackend &lb() { return cluster ? static_cast<LockBackend &>(*cluster) : *local; }
};

ClusterOptions options(uint32_t conns = 8) {
    ClusterOptions o;
    o.conninfo = test_pg() ? test_pg() : "host=/nonexistent";
    o.max_connections = conns;
    return o;
}

AcquireResult take(LockBackend &lb, const std::string &key, Mode m, int64_t deadline, LockSet &set) {
    KeyRef k{key.data(), key.size()};
    HolderInfo info;
    int err = 0;
    return lb.acquire_all(&k, 1, m, deadline, info, set, nullptr, &err);
}

int64_t in_ms(int ms) { return monotonic_ns() + ms * 1000000LL; }
// The deadline of a take that nobody contends: it is granted at once, but a
// loaded machine may take a second to open the first session, which a
// deadline of 0 (do not wait) would not allow for.
int64_t uncontended() { return in_ms(10000); }
int64_t ms_since(int64_t t0) { return (monotonic_ns() - t0) / 1000000; }

// A plain SQL session beside the module's, as an application's job has.
struct Sql {
    PGconn *c;
    Sql() : c(PQconnectdb(test_pg() ? test_pg() : "")) { CHECK_TEXT(PQstatus(c) == CONNECTION_OK, PQerrorMessage(c)); }
    ~Sql() { PQfinish(c); }
    std::string one(const std::string &q) {
        PGresult *r = PQexec(c, q.c_str());
        const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK;
        std::string v = ok && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
        if (!ok) v = std::string("ERROR ") + PQresultErrorMessage(r);
        PQclear(r);
        return v;
    }
};

std::string hex(const unsigned char *d, size_t n) {
    static const char digits[] = "0123456789abcdef";
    std::string s;
    for (size_t i = 0; i < n; ++i) {
        s += digits[d[i] >> 4];
        s += digits[d[i] & 15];
    }
    return s;
}

}  // namespace

TEST_GROUP(Cluster) {
    void setup() override { CHECK_TEXT(test_pg() != nullptr, "PIDLOCK_TEST_PG is not set (tests/run_all.sh sets it)"); }
};

TEST(Cluster, Sha256KnownAnswers) {
    unsigned char d[32];
    sha256("", 0, d);
    STRCMP_EQUAL("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", hex(d, 32).c_str());
    sha256("abc", 3, d);
    STRCMP_EQUAL("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", hex(d, 32).c_str());
    const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 56 bytes: two blocks
    sha256(two.data(), two.size(), d);
    STRCMP_EQUAL("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", hex(d, 32).c_str());
    const std::string million(1000000, 'a');
    sha256(million.data(), million.size(), d);
    STRCMP_EQUAL("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", hex(d, 32).c_str());
}

// The key the module locks is the key SQL's pidlock_key() names, for text
// and for any bytes (NUL, invalid UTF-8, every length around a block).
TEST(Cluster, KeyHashMatchesSqlFunction) {
    Sql sql;
    std::vector<std::string> keys = {"", "x", "urn:uuid:1f0c5d7e-4d6b-4a8e-9c3b-6e2f8a1b0c9d", "doi:10.5063/F1QN64NZ",
                                     "é", "ключ", "鍵/キー", "emoji \xF0\x9F\x94\x92", std::string("a\0b", 3),
                                     "\xFF\xFE invalid", std::string(1, '\0')};
    std::mt19937 rng(7);
    for (int i = 0; i < 300; ++i) {
        std::string k(rng() % 140, '\0');
        for (char &c : k) c = static_cast<char>(rng() % 256);
        keys.push_back(k);
    }
    for (size_t len : {55, 56, 63, 64, 65, 119, 120, 128}) keys.push_back(std::string(len, 'k'));
    int checked_text = 0;
    for (const std::string &k : keys) {
        const char *vals[1] = {k.data()};
        const int lens[1] = {static_cast<int>(k.size())};
        const int fmts[1] = {1};
        PGresult *r = PQexecParams(sql.c, "SELECT pidlock_key($1::bytea)", 1, nullptr, vals, lens, fmts, 0);
        CHECK_TEXT(PQresultStatus(r) == PGRES_TUPLES_OK, PQresultErrorMessage(r));
        const long long want = std::strtoll(PQgetvalue(r, 0, 0), nullptr, 10);
        PQclear(r);
        CHECK_EQUAL_TEXT(want, static_cast<long long>(cluster_key(k.data(), k.size())), hex(reinterpret_cast<const unsigned char *>(k.data()), k.size()).c_str());
        // Valid UTF-8 without NUL also as text: what a job writes in SQL.
        if (k.find('\0') == std::string::npos && key_fits_form(k)) {
            const char *tv[1] = {k.c_str()};
            PGresult *t = PQexecParams(sql.c, "SELECT pidlock_key($1::text)", 1, nullptr, tv, nullptr, nullptr, 0);
            CHECK_TEXT(PQresultStatus(t) == PGRES_TUPLES_OK, PQresultErrorMessage(t));
            CHECK_EQUAL(want, std::strtoll(PQgetvalue(t, 0, 0), nullptr, 10));
            PQclear(t);
            ++checked_text;
        }
    }
    CHECK(checked_text >= 9);
    // The README's literal form.
    CHECK_EQUAL(std::to_string(cluster_key("x", 1)), sql.one("SELECT pidlock_key('x')"));
}

TEST(Cluster, TwoHostsShareTheLockAndTheFence) {
    Host a(options()), b(options());
    LockSet wa, wb, rb1, rb2;
    CHECK(take(a.lb(), "pid-1", Mode::Write, uncontended(), wa) == AcquireResult::Acquired);
    const uint64_t f1 = wa.fence();
    CHECK(f1 > 0);
    // Host B's own table is empty: PostgreSQL alone refuses it.
    const int64_t t0 = monotonic_ns();
    CHECK(take(b.lb(), "pid-1", Mode::Write, in_ms(200), wb) == AcquireResult::Busy);
    CHECK(ms_since(t0) >= 190);
    CHECK(ms_since(t0) < 1500);
    CHECK(wb.empty());
    CHECK(take(b.lb(), "pid-1", Mode::Read, 0, rb1) == AcquireResult::Busy);
    CHECK(take(b.lb(), "pid-2", Mode::Write, uncontended(), wb) == AcquireResult::Acquired);
    CHECK(wb.fence() > f1);
    CHECK_EQUAL(0, b.lb().release_all(wb));
    // A waiter on B is granted when A releases.
    std::thread releaser([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(150));
        a.lb().release_all(wa);
    });
    const int64_t t1 = monotonic_ns();
    CHECK(take(b.lb(), "pid-1", Mode::Write, in_ms(5000), wb) == AcquireResult::Acquired);
    releaser.join();
    CHECK(ms_since(t1) < 1000);
    CHECK(wb.fence() > f1);
    CHECK_EQUAL(0, b.lb().release_all(wb));
    // Readers share across hosts.
    LockSet ra;
    CHECK(take(a.lb(), "pid-1", Mode::Read, uncontended(), ra) == AcquireResult::Acquired);
    CHECK(take(b.lb(), "pid-1", Mode::Read, 0, rb2) == AcquireResult::Acquired);
    CHECK_EQUAL(0, ra.fence());
    a.lb().release_all(ra);
    b.lb().release_all(rb2);
    const ClusterStats::Totals ta = a.stats->totals();
    CHECK_EQUAL(0, ta.held);
    CHECK_EQUAL(0, ta.waiting);
    CHECK_EQUAL(0, ta.lost);
    CHECK_EQUAL(0, ta.errors);
    CHECK(ta.connections >= 1);
}

namespace {

// Writers of one key through two hosts (threads of each); counts overlaps.
int cross_host_overlaps(LockBackend &x, LockBackend &y, int ops) {
    std::atomic<int> inside{0}, overlaps{0};
    auto worker = [&](LockBackend *lb) {
        for (int i = 0; i < ops; ++i) {
            LockSet s;
            if (take(*lb, "shared-pid", Mode::Write, kNoDeadline, s) != AcquireResult::Acquired) continue;
            if (++inside > 1) ++overlaps;
            std::this_thread::sleep_for(std::chrono::microseconds(200));
            --inside;
            lb->release_all(s);
        }
    };
    std::vector<std::thread> ts;
    for (int t = 0; t < 2; ++t) {
        ts.emplace_back(worker, &x);
        ts.emplace_back(worker, &y);
    }
    for (std::thread &t : ts) t.join();
    return overlaps.load();
}

}  // namespace

TEST(Cluster, NoOverlapAcrossHostsAndTheWitnessCanFail) {
    Host a(options()), b(options());
    CHECK_EQUAL(0, cross_host_overlaps(a.lb(), b.lb(), 200));
    // Without the tier, two hosts' tables do not see each other.
    Host c(options(), false), d(options(), false);
    CHECK(cross_host_overlaps(c.lb(), d.lb(), 200) > 0);
}

// The status view of a host that waits in PostgreSQL names what the other
// host holds there.
TEST(Cluster, SnapshotNamesWhatOtherHostsHold) {
    ClusterOptions oa = options(), ob = options();
    oa.application_name = "mod_pidlock host-a";
    ob.application_name = "mod_pidlock host-b";
    Host a(oa), b(ob);
    LockSet held, asker;
    CHECK(take(a.lb(), "remote-key", Mode::Write, uncontended(), held) == AcquireResult::Acquired);
    std::thread waiter([&] { take(b.lb(), "remote-key", Mode::Read, in_ms(1500), asker); });
    TableSnapshot s;
    for (int i = 0; i < 100 && s.cluster.remote.empty(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        s = TableSnapshot();
        int err = 0;
        CHECK(b.lb().snapshot(s, &err));
    }
    a.lb().release_all(held);
    waiter.join();
    b.lb().release_all(asker);
    CHECK(s.cluster.on);
    CHECK_EQUAL(1, s.cluster.remote.size());
    const RemoteHolder &r = s.cluster.remote[0];
    STRCMP_EQUAL("remote-key", r.key.c_str());
    CHECK(r.mode == Mode::Write);
    STRCMP_EQUAL("mod_pidlock host-a", r.application.c_str());
    CHECK(r.session > 0 && r.since_us > 0);
    // Nothing waits: no query, nothing shown.
    s = TableSnapshot();
    int err = 0;
    CHECK(a.lb().snapshot(s, &err));
    CHECK(s.cluster.remote.empty());
}

TEST(Cluster, PoolCapMakesRequestsWaitWithinTheirDeadline) {
    Host a(options(1));
    LockSet first, second;
    CHECK(take(a.lb(), "cap-1", Mode::Write, uncontended(), first) == AcquireResult::Acquired);
    CHECK_EQUAL(1, a.cluster->open_connections());
    std::atomic<int64_t> seen_waiting{0};
    std::thread watcher([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(80));
        seen_waiting = a.stats->totals().waiting;
    });
    const int64_t t0 = monotonic_ns();
    CHECK(take(a.lb(), "cap-2", Mode::Write, in_ms(250), second) == AcquireResult::Busy);
    watcher.join();
    CHECK(ms_since(t0) >= 240);
    CHECK(ms_since(t0) < 800);
    CHECK_EQUAL(1, seen_waiting.load());
    CHECK_EQUAL(1, a.cluster->open_connections());
    // The local lock of the refused request went back.
    LockSet probe;
    CHECK(take(*a.local, "cap-2", Mode::Write, 0, probe) == AcquireResult::Acquired);
    a.local->release_all(probe);
    // A waiter for the connection gets it when the holder ends.
    std::thread releaser([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        a.lb().release_all(first);
    });
    CHECK(take(a.lb(), "cap-2", Mode::Write, in_ms(3000), second) == AcquireResult::Acquired);
    releaser.join();
    a.lb().release_all(second);
    CHECK_EQUAL(0, a.stats->totals().waiting);
}

TEST(Cluster, ClientCancelsAtTheDeadline) {
    ClusterOptions o = options();
    o.server_lock_timeout = false;  // the client alone ends the wait
    Host a(options()), b(o);
    LockSet held, asker, again;
    CHECK(take(a.lb(), "cancel-me", Mode::Write, uncontended(), held) == AcquireResult::Acquired);
    const int64_t t0 = monotonic_ns();
    CHECK(take(b.lb(), "cancel-me", Mode::Write, in_ms(300), asker) == AcquireResult::Busy);
    CHECK(ms_since(t0) >= 290);
    CHECK(ms_since(t0) < 1500);
    CHECK_EQUAL(1, b.cluster->cancels_sent());
    CHECK_EQUAL(0, b.stats->totals().errors);
    a.lb().release_all(held);
    // The cancelled session serves the next request.
    CHECK(take(b.lb(), "cancel-me", Mode::Write, in_ms(2000), again) == AcquireResult::Acquired);
    CHECK_EQUAL(1, b.cluster->open_connections());
    b.lb().release_all(again);
}

// A client that hangs up while its request waits in PostgreSQL takes the
// request out of PostgreSQL's queue at once, not at its deadline.
TEST(Cluster, ClientHangUpEndsTheWait) {
    Host a(options()), b(options());
    LockSet held, asker;
    CHECK(take(a.lb(), "hang-up", Mode::Write, uncontended(), held) == AcquireResult::Acquired);
    int sv[2];
    CHECK_EQUAL(0, socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    std::thread client([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        close(sv[1]);
    });
    const std::string key = "hang-up";
    KeyRef k{key.data(), key.size()};
    HolderInfo info;
    info.client_fd = sv[0];
    int err = 0;
    const int64_t t0 = monotonic_ns();
    CHECK(b.lb().acquire_all(&k, 1, Mode::Write, in_ms(5000), info, asker, nullptr, &err) == AcquireResult::Busy);
    client.join();
    close(sv[0]);
    CHECK(ms_since(t0) >= 190);
    CHECK(ms_since(t0) < 1500);
    CHECK_EQUAL(1, b.cluster->clients_gone());
    CHECK_EQUAL(0, b.stats->totals().waiting);
    a.lb().release_all(held);
    // Its session serves the next request.
    CHECK(take(b.lb(), "hang-up", Mode::Write, in_ms(2000), asker) == AcquireResult::Acquired);
    b.lb().release_all(asker);
    CHECK_EQUAL(0, b.stats->totals().errors);
}

// A server that stops answering (its backend frozen): the request ends at
// its deadline plus the half second the server's own lock_timeout has, no
// cancel is sent (it could block on a dead host), and the session is
// dropped, not reused.
TEST(Cluster, SilentServerEndsTheWaitAndDropsTheSession) {
    ClusterOptions o = options();
    o.conninfo += " application_name=pidlock_freeze_test";
    Host a(o);
    LockSet w;
    CHECK(take(a.lb(), "frozen", Mode::Write, uncontended(), w) == AcquireResult::Acquired);
    a.lb().release_all(w);
    Sql admin;
    const int backend = std::atoi(
        admin.one("SELECT pid FROM pg_stat_activity WHERE application_name = 'pidlock_freeze_test'").c_str());
    CHECK(backend > 0);
    CHECK_EQUAL(0, kill(backend, SIGSTOP));
    const int64_t t0 = monotonic_ns();
    const AcquireResult res = take(a.lb(), "frozen", Mode::Write, in_ms(300), w);
    const int64_t took = ms_since(t0);
    kill(backend, SIGCONT);
    CHECK(res == AcquireResult::Busy);
    CHECK(took >= 750 && took < 1500);
    CHECK_EQUAL(0, a.cluster->cancels_sent());
    CHECK_EQUAL(0, a.cluster->open_connections());
    CHECK(take(a.lb(), "frozen", Mode::Write, in_ms(2000), w) == AcquireResult::Acquired);
    a.lb().release_all(w);
}

TEST(Cluster, AnSqlJobTakesTheSameLock) {
    Sql job;
    CHECK_EQUAL(std::string("f"), job.one("SELECT pg_try_advisory_lock(pidlock_key('job-pid')) IS NULL"));
    Host a(options());
    LockSet w;
    const int64_t t0 = monotonic_ns();
    CHECK(take(a.lb(), "job-pid", Mode::Write, in_ms(200), w) == AcquireResult::Busy);
    CHECK(ms_since(t0) >= 190);
    std::thread unlock([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(150));
        job.one("SELECT pg_advisory_unlock(pidlock_key('job-pid'))");
    });
    CHECK(take(a.lb(), "job-pid", Mode::Write, in_ms(3000), w) == AcquireResult::Acquired);
    unlock.join();
    // And the job waits for the module's lock.
    CHECK_EQUAL(std::string("f"), job.one("SELECT pg_try_advisory_lock_shared(pidlock_key('job-pid'))"));
    a.lb().release_all(w);
    CHECK_EQUAL(std::string("t"), job.one("SELECT pg_try_advisory_lock_shared(pidlock_key('job-pid'))"));
    job.one("SELECT pg_advisory_unlock_all()");
}

TEST(Cluster, UnreachableServerClosedRefusesOpenServesLocally) {
    ClusterOptions o = options();
    o.conninfo = "host=/nonexistent-pidlock-test port=5";
    Host closed(o);
    LockSet s;
    int err = 0;
    const std::string key = "k";
    KeyRef k{key.data(), key.size()};
    CHECK(closed.lb().acquire_all(&k, 1, Mode::Write, in_ms(200), HolderInfo(), s, nullptr, &err) ==
          AcquireResult::Unavailable);
    CHECK(s.empty());
    CHECK_EQUAL(1, closed.stats->totals().errors);
    CHECK(closed.local->acquire_all(&k, 1, Mode::Write, 0, HolderInfo(), s, nullptr, &err) == AcquireResult::Acquired);
    closed.local->release_all(s);
    o.fail_open = true;
    Host open(o);
    CHECK(open.lb().acquire_all(&k, 1, Mode::Write, in_ms(200), HolderInfo(), s, nullptr, &err) ==
          AcquireResult::Acquired);
    CHECK(s.fence() > 0);  // the host's own fence
    LockSet other;
    CHECK(open.local->acquire_all(&k, 1, Mode::Write, 0, HolderInfo(), other, nullptr, &err) == AcquireResult::Busy);
    CHECK_EQUAL(0, open.lb().release_all(s));
    CHECK_EQUAL(1, open.stats->totals().errors);
    CHECK_EQUAL(0, open.stats->totals().held);
}

TEST(Cluster, EndedPooledSessionIsReplacedAndAHeldOneCountsLost) {
    ClusterOptions o = options();
    o.conninfo += " application_name=pidlock_stale_test";  // this host's sessions alone
    Host a(o);
    LockSet w;
    CHECK(take(a.lb(), "stale", Mode::Write, uncontended(), w) == AcquireResult::Acquired);
    a.lb().release_all(w);
    CHECK_EQUAL(1, a.cluster->open_connections());
    Sql admin;
    const std::string end_ours =
        "SELECT count(pg_terminate_backend(pid, 2000)) FROM pg_stat_activity WHERE application_name = 'pidlock_stale_test'";
    CHECK_EQUAL(std::string("1"), admin.one(end_ours));
    // As after a server restart: the idle pooled session is gone; the next
    // request gets a new one and never sees the failure.
    CHECK(take(a.lb(), "stale", Mode::Write, uncontended(), w) == AcquireResult::Acquired);
    CHECK_EQUAL(0, a.stats->totals().errors);
    CHECK_EQUAL(1, a.stats->totals().held);
    // Ended while held: counted lost at release, and the key is free.
    CHECK_EQUAL(std::string("1"), admin.one(end_ours));
    CHECK_EQUAL(0, a.lb().release_all(w));
    CHECK_EQUAL(1, a.stats->totals().lost);
    CHECK_EQUAL(0, a.stats->totals().held);
    CHECK(take(a.lb(), "stale", Mode::Write, uncontended(), w) == AcquireResult::Acquired);
    a.lb().release_all(w);
}

namespace {
// The tier's log lines (written from the monitor thread too).
struct LogSink {
    std::mutex mu;
    std::vector<std::string> lines;
    static void put(void *ctx, int, const char *msg) {
        auto *s = static_cast<LogSink *>(ctx);
        std::lock_guard<std::mutex> lk(s->mu);
        s->lines.push_back(msg);
    }
    int count(const char *id) {
        std::lock_guard<std::mutex> lk(mu);
        int n = 0;
        for (const std::string &l : lines) n += l.find(id) != std::string::npos;
        return n;
    }
};
}  // namespace

TEST(Cluster, SessionEndedWhileHeldIsNoticedBeforeTheRelease) {
    LogSink sink;
    ClusterOptions o = options();
    o.conninfo += " application_name=pidlock_early_test";
    o.log = LogSink::put;
    o.log_ctx = &sink;
    Host a(o);
    // The request's client connection: the peer sees it shut.
    int sv[2];
    CHECK_EQUAL(0, socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    const std::string key = "early";
    KeyRef k{key.data(), key.size()};
    HolderInfo info;
    info.client_fd = sv[0];
    LockSet w;
    int err = 0;
    CHECK(a.lb().acquire_all(&k, 1, Mode::Write, 0, info, w, nullptr, &err) == AcquireResult::Acquired);
    Sql admin;
    CHECK_EQUAL(std::string("1"), admin.one("SELECT count(pg_terminate_backend(pid, 2000)) FROM pg_stat_activity "
                                            "WHERE application_name = 'pidlock_early_test'"));
    // Noticed while the lock is still "held" by the request (no release yet).
    const int64_t t0 = monotonic_ns();
    while (sink.count("PIDLOCK430") == 0 && ms_since(t0) < 5000) usleep(10000);
    CHECK_EQUAL(1, sink.count("PIDLOCK430"));
    CHECK(sink.lines.back().find("early") != std::string::npos);
    CHECK_EQUAL(1, a.stats->totals().lost);
    pollfd p{sv[1], POLLIN, 0};
    CHECK_EQUAL(1, poll(&p, 1, 1000));
    char b;
    CHECK_EQUAL(0, read(sv[1], &b, 1));  // end of stream: the client connection was shut
    // The release finds the session gone: counted and logged once only.
    CHECK_EQUAL(0, a.lb().release_all(w));
    CHECK_EQUAL(1, a.stats->totals().lost);
    CHECK_EQUAL(0, sink.count("PIDLOCK402"));
    CHECK(take(a.lb(), key, Mode::Write, uncontended(), w) == AcquireResult::Acquired);
    a.lb().release_all(w);
    close(sv[0]);
    close(sv[1]);
}

TEST(Cluster, BreakOfOwnSessionIsNotALostLock) {
    LogSink sink;
    ClusterOptions o = options();
    o.log = LogSink::put;
    o.log_ctx = &sink;
    Host a(o);
    LockSet w;
    CHECK(take(a.lb(), "own-break", Mode::Write, uncontended(), w) == AcquireResult::Acquired);
    const std::string key = "own-break";
    CHECK_EQUAL(1, a.cluster->break_key(KeyRef{key.data(), key.size()}));
    usleep(500000);  // the monitor's poll would have seen the end by now
    a.lb().release_all(w);
    CHECK_EQUAL(0, a.stats->totals().lost);
    CHECK_EQUAL(0, sink.count("PIDLOCK430") + sink.count("PIDLOCK402"));
}

TEST(Cluster, OutageFencesStayBelowTheNextClusterFence) {
    std::vector<char> mem(ClusterStats::region_size(2));
    ClusterStats *s = ClusterStats::format(mem.data(), 2);
    const uint64_t step = ClusterStats::kFenceStep;
    // Never reached PostgreSQL: 1, 2, ... below every cluster fence.
    CHECK_EQUAL(1u, s->outage_fence());
    CHECK_EQUAL(2u, s->outage_fence());
    s->saw_cluster_fence(3 * step);
    s->saw_cluster_fence(2 * step);  // an older one changes nothing
    CHECK_EQUAL(3 * step + 1, s->outage_fence());
    CHECK_EQUAL(3 * step + 2, s->outage_fence());
    s->saw_cluster_fence(4 * step);
    CHECK_EQUAL(4 * step + 1, s->outage_fence());
    // The range above one cluster fence is used up: no fence rather than
    // one at or above the next cluster fence.
    uint64_t last = 0;
    for (uint64_t i = 2; i < step; ++i) last = s->outage_fence();
    CHECK_EQUAL(5 * step - 1, last);
    CHECK_EQUAL(0u, s->outage_fence());
    s->saw_cluster_fence(5 * step);
    CHECK_EQUAL(5 * step + 1, s->outage_fence());
}

// httpd's parent frees a process's slot in a region every child may write:
// a scribbled slot count must not walk it past the region (ASan catches
// the overrun if it does).
TEST_GROUP(ClusterStats) {};

TEST(ClusterStats, ParentWalkIgnoresTheRegionsSlotCount) {
    std::vector<char> mem(ClusterStats::region_size(2), 0);
    ClusterStats *s = ClusterStats::format(mem.data(), 2);
    s->add(ClusterStats::Held, 1);
    const uint32_t huge = 0xFFFFFFFFu;
    std::memcpy(mem.data(), &huge, sizeof huge);  // the first field: the count
    s->free_process(static_cast<int32_t>(getpid()) + 1000000, 2);
    s->free_process(static_cast<int32_t>(getpid()), 2);
    std::memset(mem.data(), 0, sizeof huge);
    uint32_t three = 3;
    std::memcpy(mem.data(), &three, sizeof three);
    CHECK_EQUAL(0, s->totals().held);
}

TEST(Cluster, StatsSlotsPerProcessKeepTotalsWhenOneEnds) {
    std::vector<char> mem(ClusterStats::region_size(2), 0);
    ClusterStats *s = ClusterStats::format(mem.data(), 2);
    s->add(ClusterStats::Held, 2);
    s->add(ClusterStats::Lost, 1);
    s->add(ClusterStats::Errors, 3);
    ClusterStats::Totals t = s->totals();
    CHECK_EQUAL(2, t.held);
    s->free_process(static_cast<int32_t>(getpid()), 2);
    t = s->totals();
    CHECK_EQUAL(0, t.held);
    CHECK_EQUAL(1, t.lost);
    CHECK_EQUAL(3, t.errors);
}

TEST(Cluster, ProbeTellsAnsweringFromSilent) {
    std::string why;
    CHECK(cluster_probe(options(), &why));
    ClusterOptions down = options();
    down.conninfo = "host=/nonexistent-pidlock-test";
    CHECK_FALSE(cluster_probe(down, &why));
    CHECK(!why.empty());
    std::vector<char> mem(ClusterStats::region_size(1), 0);
    ClusterStats *s = ClusterStats::format(mem.data(), 1);
    CHECK(s->claim_probe());
    CHECK_FALSE(s->claim_probe());
}

TEST(Cluster, ConninfoIsCheckedByLibpq) {
    std::string why;
    CHECK(cluster_conninfo_valid("host=/tmp dbname=x keepalives_idle=5", &why));
    CHECK(cluster_conninfo_valid("postgresql://u@db.example/gmn?sslmode=require", &why));
    CHECK_FALSE(cluster_conninfo_valid("host=/tmp nonsense_option=1", &why));
    CHECK(why.find("nonsense_option") != std::string::npos);
    CHECK_FALSE(cluster_conninfo_valid("host='unterminated", &why));
}

// A process that used the tier (its pool's monitor thread now waits on its
// condition variable) and then fork()s: the child's first lock must not
// hang on the parent's waiter, copied into the child's condition variable
// with the rest of the pool (it did, in pthread_cond_signal, about one
// fork in three, in the contract suite's forked crossing run).
TEST(Cluster, ForkedChildOfAProcessThatLockedTakesLocks) {
    Host a(options());
    for (int round = 0; round < 6; ++round) {
        LockSet s;
        CHECK(take(a.lb(), "fork-parent", Mode::Write, uncontended(), s) == AcquireResult::Acquired);
        CHECK_EQUAL(0, a.lb().release_all(s));
        // The monitor thread is back in its wait.
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        const pid_t pid = fork();
        if (pid == 0) {
            alarm(60);  // should the wait below give up first: never left behind
            int bad = 0;
            for (int i = 0; i < 3; ++i) {
                LockSet c;
                if (take(a.lb(), "fork-child", Mode::Write, uncontended(), c) != AcquireResult::Acquired ||
                    a.lb().release_all(c) != 0)
                    ++bad;
            }
            _exit(bad);
        }
        CHECK(pid > 0);
        int st = 0;
        pid_t got = 0;
        for (int i = 0; i < 300 && got == 0; ++i) {  // up to 30 s
            got = waitpid(pid, &st, WNOHANG);
            if (got == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        if (got == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            FAIL("a forked child hung taking its first lock");
        }
        CHECK_TEXT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a forked child failed to lock");
    }
}
