// The contract every LeaseStore keeps (pidlock_lease.h; SPEC "Edit leases"),
// written once against the interface: each scenario of lease_contract.cc is
// registered as one CppUTest TEST in the group of each store, so a failure
// names the store (LeaseTable: the host's shared table, test_lease.cc;
// LeasePg: PostgreSQL, test_lease_pg.cc). A store's group derives from
// LeaseStoreTest, says how to reach its store, and ends with
// LEASE_CONTRACT_TESTS(Group). A new scenario: its function in
// lease_contract.cc and its name in LEASE_CONTRACT_SCENARIOS.
#ifndef PIDLOCK_TEST_LEASE_CONTRACT_H
#define PIDLOCK_TEST_LEASE_CONTRACT_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pidlock_lease.h"

#include "CppUTest/TestHarness.h"

namespace lease_contract {

constexpr int64_t kSec = 1000000;
// The scenarios' clock. Far in the future: leases that other users of the
// PostgreSQL database took by the wall clock have all expired by then, so
// they count neither as live nor toward the capacity.
constexpr int64_t kT0 = 4000000000LL * kSec;
// The capacity of every store under test, and its longest key.
constexpr uint32_t kCapacity = 4;
constexpr uint32_t kKeyCap = 64;

pidlock::LeaseToken token_of(uint8_t seed);
pidlock::LeaseRequest req(const char *owner, const char *user = "", uint32_t timeout = 60);

// A store's test group: the store (kCapacity, kKeyCap, no lease on this
// test's keys, counters at zero) and what the scenarios ask of it.
struct LeaseStoreTest : public Utest {
    virtual pidlock::LeaseStore &store() = 0;
    // Another object over the same leases and counters, as another process
    // or a restarted server has one; may be called in a fork()ed child.
    virtual std::unique_ptr<pidlock::LeaseStore> another() = 0;
    // This test's key named `name` (a database is shared: a prefix of the
    // test's own keeps tests apart).
    virtual std::string key(const std::string &name) const = 0;
    // Whether used() follows the injected clock (the interface gives it
    // none: PostgreSQL's counts live rows by the wall clock, so after an
    // expiry by the injected clock it still counts them).
    virtual bool used_follows_the_clock() const = 0;

    // The counters (by snapshot, at `now_us`).
    pidlock::LeaseCounters counters(int64_t now_us);
    // The live leases on this test's keys (by snapshot, at `now_us`).
    std::vector<pidlock::LeaseView> live(int64_t now_us);
};

#define LEASE_CONTRACT_SCENARIOS(X, GROUP)  \
    X(GROUP, GrantThenOthersLocked)         \
    X(GROUP, RenewByLockAndByUse)           \
    X(GROUP, ReadsWithTheTokenRenew)        \
    X(GROUP, ExpiryByIdlenessIsLazy)        \
    X(GROUP, SummarySweepsAndCounts)        \
    X(GROUP, UnlockRules)                   \
    X(GROUP, TokenBoundToUser)              \
    X(GROUP, LongUserNameIsBoundWhole)      \
    X(GROUP, StealAndReleaseByOperator)     \
    X(GROUP, FullIsAnAnswer)                \
    X(GROUP, RestartKeepsDeadlines)         \
    X(GROUP, OneGrantPerKeyAmongProcesses)  \
    X(GROUP, CapacityHoldsAmongProcesses)   \
    X(GROUP, OneHolderAtATimeAmongProcesses) \
    X(GROUP, CapacityHoldsForDistinctKeys)

#define LEASE_CONTRACT_DECLARE(GROUP, NAME) void NAME(LeaseStoreTest &t);
LEASE_CONTRACT_SCENARIOS(LEASE_CONTRACT_DECLARE, unused)
#undef LEASE_CONTRACT_DECLARE

}  // namespace lease_contract

#define LEASE_CONTRACT_TEST(GROUP, NAME) \
    TEST(GROUP, NAME) { lease_contract::NAME(*this); }
// Every scenario, as a TEST of GROUP (whose fixture is a LeaseStoreTest).
#define LEASE_CONTRACT_TESTS(GROUP) LEASE_CONTRACT_SCENARIOS(LEASE_CONTRACT_TEST, GROUP)

#endif
