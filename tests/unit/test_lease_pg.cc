// Edit leases in PostgreSQL (PgLeaseStore) against the throwaway server of
// tests/run_all.sh (PIDLOCK_TEST_PG): the LeaseStore contract of
// lease_contract.cc (the forked processes each with its own connection, as
// hosts have), a token stored hashed only, and the capacity counted across
// the cluster.
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <libpq-fe.h>

#include "concurrency.h"
#include "pidlock_lease_pg.h"
#include "pidlock_locks.h"
#include "lease_contract.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;
using lease_contract::kCapacity;
using lease_contract::kKeyCap;
using lease_contract::kSec;
using lease_contract::kT0;
using lease_contract::req;
using lease_contract::token_of;

namespace {

const char *pg_conninfo() {
    const char *c = std::getenv("PIDLOCK_TEST_PG");
    return c && *c ? c : nullptr;
}

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

TEST_GROUP_BASE(LeasePg, lease_contract::LeaseStoreTest) {
    LeaseTableInShm shm;  // the host's table: it keeps the counters
    LeaseTable *host = shm.table;
    PgLeaseStore *pg = nullptr;
    uint32_t capacity = 0;
    std::string k;  // this test's key prefix

    void setup() override {
        CHECK_TEXT(pg_conninfo() != nullptr, "PIDLOCK_TEST_PG is not set (tests/run_all.sh sets it)");
        CHECK(shm.ok);
        k = "pgt-" + std::to_string(getpid()) + "-" + std::to_string(rand()) + "-";
        // The capacity counts the cluster's leases: the store's kCapacity
        // are had if others' live at kT0 (normally none) are added.
        psql_one(std::string("SET client_min_messages TO warning; ") + kLeaseTableSql);
        const std::string others =
            psql_one("SELECT count(*) FROM pidlock_leases WHERE expires_us > " + std::to_string(kT0));
        CHECK_TEXT(!others.empty(), "the PIDLOCK_TEST_PG database cannot be queried");
        capacity = kCapacity + static_cast<uint32_t>(std::strtoul(others.c_str(), nullptr, 10));
        pg = new PgLeaseStore(pg_conninfo(), capacity, kKeyCap, host);
    }
    void teardown() override {
        delete pg;
        // This test's leases, so that they count toward no other's capacity.
        if (pg_conninfo() && !k.empty())
            psql_one("WITH d AS (DELETE FROM pidlock_leases WHERE position(convert_to('" + k +
                     "', 'UTF8') IN key) = 1 RETURNING 1) SELECT count(*) FROM d");
    }
    LeaseStore &store() override { return *pg; }
    std::unique_ptr<LeaseStore> another() override {
        return std::unique_ptr<LeaseStore>(new PgLeaseStore(pg_conninfo(), capacity, kKeyCap, host));
    }
    std::string key(const std::string &name) const override { return k + name; }
    bool used_follows_the_clock() const override { return false; }
};

LEASE_CONTRACT_TESTS(LeasePg)

TEST(LeasePg, TokensAreHashedAtRest) {
    const LeaseToken a = token_of(5), op = token_of(6);
    const std::string key_sql = "'" + k + "s'";
    auto stored_hashed = [&](const LeaseToken &t) {
        CHECK_EQUAL("t", psql_one("SELECT key_hash = pidlock_key(" + key_sql +
                                  ") AND token_hash = sha256(convert_to('" + lease_token_urn(t) +
                                  "', 'UTF8')) FROM pidlock_leases WHERE key = convert_to(" + key_sql + ", 'UTF8')"));
        CHECK_EQUAL("0", psql_one("SELECT count(*) FROM pidlock_leases WHERE position('" +
                                  lease_token_urn(t).substr(9) + "' IN concat_ws(' ', id, owner, usr, client, "
                                  "encode(token_hash, 'hex'))) > 0"));
    };
    CHECK(LeaseOutcome::Granted == pg->lock(k + "s", {}, req("ann"), a, kT0, nullptr));
    stored_hashed(a);
    LeaseView old, now;
    bool had = false;
    CHECK(LeaseOutcome::Granted == pg->steal(k + "s", req("operator"), op, kT0 + kSec, &old, &had, &now));
    stored_hashed(op);
}

TEST(LeasePg, FullAcrossTheCluster) {
    // Capacity = the live leases now + 1: one more is granted, the next is Full.
    uint32_t live = 0;
    LeaseCounters c;
    CHECK(LeaseOutcome::Granted == pg->lock(k + "f0", {}, req("a"), token_of(7), kT0, nullptr));
    CHECK(pg->summary(kT0, &live, c));
    PgLeaseStore small(pg_conninfo(), live + 1, kKeyCap, host);
    CHECK(LeaseOutcome::Granted == small.lock(k + "f1", {}, req("a"), token_of(8), kT0, nullptr));
    CHECK(LeaseOutcome::Full == small.lock(k + "f2", {}, req("b"), token_of(9), kT0, nullptr));
    // Another host's store (its own connection) sees the same count.
    PgLeaseStore other(pg_conninfo(), live + 1, kKeyCap, nullptr);
    CHECK(LeaseOutcome::Full == other.lock(k + "f3", {}, req("c"), token_of(10), kT0, nullptr));
    CHECK(LeaseOutcome::Released == small.release(k + "f1", kT0, nullptr));
    CHECK(LeaseOutcome::Granted == other.lock(k + "f3", {}, req("c"), token_of(10), kT0, nullptr));
}
