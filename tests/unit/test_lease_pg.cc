// Edit leases in PostgreSQL (PgLeaseStore) against the throwaway server of
// tests/run_all.sh (PIDLOCK_TEST_PG): the rules of the host's table (grant,
// 423, renew, 412, 403, 409, release, steal, expiry by an injected clock),
// a token stored hashed only, and one grant among forked processes racing
// for a key, each with its own connection ("hosts").
#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "concurrency.h"
#include "pidlock_lease_pg.h"
#include "pidlock_locks.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

const char *pg_conninfo() {
    const char *c = std::getenv("PIDLOCK_TEST_PG");
    return c && *c ? c : nullptr;
}

LeaseToken tok(uint8_t seed) {
    uint8_t raw[16];
    for (int i = 0; i < 16; ++i) raw[i] = static_cast<uint8_t>(seed * 37 + i * 11 + 1);
    return lease_token_from_random(raw);
}

LeaseRequest who(const char *owner, const char *user = "", uint32_t timeout = 60) {
    LeaseRequest r;
    r.owner = owner;
    r.user = user;
    r.client = "192.0.2.7";
    r.timeout_s = timeout;
    return r;
}

constexpr int64_t kS = 1000000;
// Far in the future, so rows of these tests never count as live for others'.
constexpr int64_t kNow = 4000000000LL * kS;

std::string psql_one(const std::string &sql) {
    PGconn *c = PQconnectdb(pg_conninfo());
    std::string out;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, sql.c_str());
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0) out = PQgetvalue(r, 0, 0);
        PQclear(r);
    }
    PQfinish(c);
    return out;
}

}  // namespace

TEST_GROUP(LeasePg) {
    LeaseTableInShm shm;
    LeaseTable *host = shm.table;
    PgLeaseStore *pg = nullptr;
    std::string k;  // this test's key prefix

    void setup() override {
        CHECK_TEXT(pg_conninfo() != nullptr, "PIDLOCK_TEST_PG is not set (tests/run_all.sh sets it)");
        CHECK(shm.ok);
        pg = new PgLeaseStore(pg_conninfo(), 100000, 64, host);
        k = "pgt-" + std::to_string(getpid()) + "-" + std::to_string(rand()) + "-";
    }
    void teardown() override { delete pg; }
};

TEST(LeasePg, TheRulesOfALease) {
    const LeaseToken a = tok(1), b = tok(2);
    LeaseView v;
    CHECK(LeaseOutcome::Granted == pg->lock(k + "x", {}, who("ann", "", 10), a, kNow, &v));
    CHECK_EQUAL(lease_token_id(a), v.id);
    CHECK_EQUAL(10u, v.timeout_s);
    CHECK(LeaseOutcome::Locked == pg->lock(k + "x", {}, who("bo"), b, kNow + kS, &v));
    CHECK_EQUAL("ann", v.owner);
    CHECK(LeaseOutcome::Locked == pg->check_write(k + "x", {}, false, "", kNow + kS, &v));
    CHECK(LeaseOutcome::Stale == pg->check_write(k + "x", {b}, false, "", kNow + kS, &v));
    CHECK(LeaseOutcome::Stale == pg->check_write(k + "x", {}, true, "", kNow + kS, &v));
    // Use renews: 9 s later, then 9 s later again, still held.
    CHECK(LeaseOutcome::Allowed == pg->check_write(k + "x", {b, a}, false, "", kNow + 9 * kS, &v));
    CHECK_EQUAL(kNow + 19 * kS, v.expires_us);
    CHECK(LeaseOutcome::Renewed == pg->lock(k + "x", {a}, who("", "", 30), b, kNow + 18 * kS, &v));
    CHECK_EQUAL(kNow + 48 * kS, v.expires_us);
    pg->touch(k + "x", {a}, "", kNow + 20 * kS);
    CHECK(LeaseOutcome::Mismatch == pg->unlock(k + "x", b, "", kNow + 21 * kS, &v));
    CHECK(LeaseOutcome::Released == pg->unlock(k + "x", a, "", kNow + 21 * kS, &v));
    CHECK(LeaseOutcome::Stale == pg->check_write(k + "x", {a}, false, "", kNow + 22 * kS, &v));
    CHECK(LeaseOutcome::Free == pg->check_write(k + "x", {}, false, "", kNow + 22 * kS, &v));
    // Expiry by idleness: the deadline passes, the key is free, the token stale.
    CHECK(LeaseOutcome::Granted == pg->lock(k + "y", {}, who("ann", "", 5), a, kNow, &v));
    CHECK(LeaseOutcome::Stale == pg->check_write(k + "y", {a}, false, "", kNow + 5 * kS, &v));
    CHECK(LeaseOutcome::Granted == pg->lock(k + "y", {}, who("bo", "", 5), b, kNow + 6 * kS, &v));
    CHECK(LeaseOutcome::Released == pg->release(k + "y", kNow + 6 * kS, &v));
    CHECK_EQUAL("bo", v.owner);
    CHECK(LeaseOutcome::NotHeld == pg->release(k + "y", kNow + 6 * kS, &v));
    uint32_t live = 0;
    LeaseCounters c;
    CHECK(host->summary(kNow, &live, c));
    CHECK_EQUAL(3u, c.granted);
    CHECK_EQUAL(2u, c.released);
    CHECK(c.renewed >= 3 && c.refusals >= 5);
}

TEST(LeasePg, BoundToItsUser) {
    const LeaseToken a = tok(3);
    CHECK(LeaseOutcome::Granted == pg->lock(k + "u", {}, who("ann", "ann"), a, kNow, nullptr));
    CHECK(LeaseOutcome::Forbidden == pg->check_write(k + "u", {a}, false, "bo", kNow, nullptr));
    CHECK(LeaseOutcome::Forbidden == pg->unlock(k + "u", a, "bo", kNow, nullptr));
    CHECK(LeaseOutcome::Forbidden == pg->lock(k + "u", {a}, who("", "bo"), tok(4), kNow, nullptr));
    CHECK(LeaseOutcome::Allowed == pg->check_write(k + "u", {a}, false, "ann", kNow, nullptr));
    CHECK(LeaseOutcome::Released == pg->unlock(k + "u", a, "ann", kNow, nullptr));
}

TEST(LeasePg, StealIsOneStepAndTokensAreHashed) {
    const LeaseToken a = tok(5), op = tok(6);
    CHECK(LeaseOutcome::Granted == pg->lock(k + "s", {}, who("ann"), a, kNow, nullptr));
    const std::string key_sql = "'" + k + "s'";
    CHECK_EQUAL("t", psql_one("SELECT key_hash = pidlock_key(" + key_sql +
                              ") AND token_hash = sha256(convert_to('" + lease_token_urn(a) +
                              "', 'UTF8')) FROM pidlock_leases WHERE key = convert_to(" + key_sql + ", 'UTF8')"));
    CHECK_EQUAL("0", psql_one("SELECT count(*) FROM pidlock_leases WHERE position('" +
                              lease_token_urn(a).substr(9) + "' IN concat_ws(' ', id, owner, usr, client, "
                              "encode(token_hash, 'hex'))) > 0"));
    LeaseView old, now;
    bool had = false;
    CHECK(LeaseOutcome::Granted == pg->steal(k + "s", who("operator"), op, kNow + kS, &old, &had, &now));
    CHECK(had);
    CHECK_EQUAL("ann", old.owner);
    CHECK_EQUAL(lease_token_id(op), now.id);
    CHECK(LeaseOutcome::Stale == pg->check_write(k + "s", {a}, false, "", kNow + 2 * kS, nullptr));
    CHECK(LeaseOutcome::Allowed == pg->check_write(k + "s", {op}, false, "", kNow + 2 * kS, nullptr));
    CHECK(LeaseOutcome::Granted == pg->steal(k + "free", who("op"), tok(7), kNow, &old, &had, &now));
    CHECK_FALSE(had);
    std::vector<LeaseView> all;
    LeaseCounters c;
    CHECK(pg->snapshot(kNow + 2 * kS, all, c));
    int mine = 0;
    for (const LeaseView &l : all) mine += l.key.rfind(k, 0) == 0 ? 1 : 0;
    CHECK_EQUAL(2, mine);
    CHECK_EQUAL(1u, c.stolen);
    CHECK(LeaseOutcome::Released == pg->release(k + "s", kNow + 3 * kS, nullptr));
    CHECK(LeaseOutcome::Released == pg->release(k + "free", kNow + 3 * kS, nullptr));
}

TEST(LeasePg, FullAcrossTheCluster) {
    // Capacity = the live leases now + 1: one more is granted, the next is Full.
    uint32_t live = 0;
    LeaseCounters c;
    CHECK(pg->summary(kNow, &live, c));
    PgLeaseStore small(pg_conninfo(), live + 1, 64, host);
    CHECK(LeaseOutcome::Granted == small.lock(k + "f1", {}, who("a"), tok(8), kNow, nullptr));
    CHECK(LeaseOutcome::Full == small.lock(k + "f2", {}, who("b"), tok(9), kNow, nullptr));
    CHECK(LeaseOutcome::Released == small.release(k + "f1", kNow, nullptr));
}

TEST(LeasePg, OneGrantAmongForkedHosts) {
    // Eight processes, each with its own connection, race for the same keys:
    // exactly one LOCK is granted per key, whatever the interleaving.
    constexpr int kRounds = 15;
    std::unique_ptr<PgLeaseStore> mine;
    const std::vector<int> wins = race_forked(8, kRounds, [&](int proc, int round) {
        if (!mine) mine.reset(new PgLeaseStore(pg_conninfo(), 100000, 64, nullptr));
        return mine->lock(k + "race" + std::to_string(round), {}, who("kid"), tok(static_cast<uint8_t>(10 + proc)),
                          kNow, nullptr) == LeaseOutcome::Granted;
    });
    for (int round = 0; round < kRounds; ++round) {
        CHECK_EQUAL(1, wins[static_cast<size_t>(round)]);
        CHECK(LeaseOutcome::Released == pg->release(k + "race" + std::to_string(round), kNow, nullptr));
    }
}
