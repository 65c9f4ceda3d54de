// The LeaseStore contract's scenarios (lease_contract.h registers each for
// every store): grant then others locked; renew by LOCK and by use; reads
// with the token renew; lazy expiry by idleness; unlock rules; a token bound
// to its user; steal and operator release; full is an answer; leases outlive
// the object (a restart, another process); among forked processes, each
// with its own object and all starting at once: one grant per key, no more
// than the capacity, one holder at a time (a witness in shared memory).
#include <atomic>
#include <random>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "concurrency.h"
// Last: CppUTest's TestHarness.h must follow the standard headers.
#include "lease_contract.h"

using namespace pidlock;

namespace lease_contract {

LeaseToken token_of(uint8_t seed) {
    uint8_t raw[16];
    for (int i = 0; i < 16; ++i) raw[i] = static_cast<uint8_t>(seed * 31 + i * 7);
    return lease_token_from_random(raw);
}

LeaseRequest req(const char *owner, const char *user, uint32_t timeout) {
    LeaseRequest r;
    r.owner = owner;
    r.user = user;
    r.client = "192.0.2.1";
    r.timeout_s = timeout;
    return r;
}

LeaseCounters LeaseStoreTest::counters(int64_t now_us) {
    std::vector<LeaseView> v;
    LeaseCounters c;
    CHECK(store().snapshot(now_us, v, c));
    return c;
}

namespace {

std::vector<LeaseView> live_in(LeaseStoreTest &t, LeaseStore &s, int64_t now_us) {
    std::vector<LeaseView> all, mine;
    LeaseCounters c;
    CHECK(s.snapshot(now_us, all, c));
    const std::string prefix = t.key("");
    for (const LeaseView &v : all)
        if (v.key.compare(0, prefix.size(), prefix) == 0) mine.push_back(v);
    return mine;
}

}  // namespace

std::vector<LeaseView> LeaseStoreTest::live(int64_t now_us) { return live_in(*this, store(), now_us); }

void GrantThenOthersLocked(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    const std::string k = t.key("pid1"), free_key = t.key("pid2");
    LeaseView v;
    const LeaseToken a = token_of(1);
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("ann"), a, kT0, &v));
    CHECK_EQUAL(k, v.key);
    CHECK_EQUAL("ann", v.owner);
    CHECK_EQUAL(60u, v.timeout_s);
    CHECK_EQUAL(kT0 + 60 * kSec, v.expires_us);
    CHECK_EQUAL(lease_token_id(a), v.id);
    LeaseView other;
    CHECK(LeaseOutcome::Locked == s.lock(k, {}, req("bo"), token_of(2), kT0 + kSec, &other));
    CHECK_EQUAL("ann", other.owner);
    // Writes: none without the token, none with another, one with it
    // (among others), which renews the lease.
    CHECK(LeaseOutcome::Locked == s.check_write(k, {}, false, "", kT0 + kSec, &other));
    CHECK(LeaseOutcome::Stale == s.check_write(k, {token_of(2)}, false, "", kT0 + kSec, &other));
    CHECK(LeaseOutcome::Stale == s.check_write(k, {}, true, "", kT0 + kSec, &other));
    CHECK(LeaseOutcome::Allowed == s.check_write(k, {token_of(2), a}, false, "", kT0 + 2 * kSec, &other));
    CHECK_EQUAL(kT0 + 62 * kSec, other.expires_us);
    // Other keys are free; a token on a key without a lease is stale.
    CHECK(LeaseOutcome::Free == s.check_write(free_key, {}, false, "", kT0, nullptr));
    CHECK(LeaseOutcome::Stale == s.check_write(free_key, {a}, false, "", kT0, nullptr));
    const LeaseCounters c = t.counters(kT0 + 2 * kSec);
    CHECK_EQUAL(1u, c.granted);
    CHECK_EQUAL(1u, c.renewed);
    CHECK_EQUAL(5u, c.refusals);
}

void RenewByLockAndByUse(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    const std::string k = t.key("k");
    const LeaseToken a = token_of(1);
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("ann", "", 60), a, kT0, nullptr));
    LeaseView v;
    LeaseRequest r = req("", "", 120);
    CHECK(LeaseOutcome::Renewed == s.lock(k, {a}, r, token_of(9), kT0 + 50 * kSec, &v));
    CHECK_EQUAL(120u, v.timeout_s);
    CHECK_EQUAL(kT0 + 170 * kSec, v.expires_us);
    CHECK_EQUAL("ann", v.owner);
    CHECK(LeaseOutcome::Allowed == s.check_write(k, {a}, false, "", kT0 + 160 * kSec, &v));
    CHECK_EQUAL(kT0 + 280 * kSec, v.expires_us);
    CHECK_EQUAL(kT0 + 160 * kSec, v.idle_since_us);
    CHECK_EQUAL(kT0, v.granted_us);
    CHECK(LeaseOutcome::Stale == s.lock(k, {token_of(2)}, r, token_of(9), kT0 + 161 * kSec, &v));
}

void ReadsWithTheTokenRenew(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    const std::string k = t.key("k");
    const LeaseToken a = token_of(1);
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("ann", "ann", 10), a, kT0, nullptr));
    s.touch(k, {token_of(2)}, "ann", kT0 + 5 * kSec);
    s.touch(k, {a}, "bo", kT0 + 5 * kSec);
    std::vector<LeaseView> v = t.live(kT0 + 5 * kSec);
    CHECK_EQUAL(1u, v.size());
    CHECK_EQUAL(kT0 + 10 * kSec, v[0].expires_us);
    s.touch(k, {a}, "ann", kT0 + 5 * kSec);
    v = t.live(kT0 + 5 * kSec);
    CHECK_EQUAL(1u, v.size());
    CHECK_EQUAL(kT0 + 15 * kSec, v[0].expires_us);
    const LeaseCounters c = t.counters(kT0 + 5 * kSec);
    CHECK_EQUAL(0u, c.refusals);
    CHECK_EQUAL(1u, c.renewed);
}

void ExpiryByIdlenessIsLazy(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    const std::string k = t.key("k");
    const LeaseToken a = token_of(1);
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("ann", "", 10), a, kT0, nullptr));
    CHECK(LeaseOutcome::Locked == s.check_write(k, {}, false, "", kT0 + 9 * kSec, nullptr));
    if (t.used_follows_the_clock()) CHECK_EQUAL(1u, s.used());
    // Past the deadline: gone at the next access, and the old token is stale.
    CHECK(LeaseOutcome::Stale == s.check_write(k, {a}, false, "", kT0 + 10 * kSec, nullptr));
    if (t.used_follows_the_clock()) CHECK_EQUAL(0u, s.used());
    CHECK(LeaseOutcome::Free == s.check_write(k, {}, false, "", kT0 + 11 * kSec, nullptr));
    CHECK_EQUAL(1u, t.counters(kT0 + 11 * kSec).expired);
    CHECK(LeaseOutcome::Stale == s.lock(k, {a}, req(""), token_of(2), kT0 + 11 * kSec, nullptr));
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("bo"), token_of(2), kT0 + 11 * kSec, nullptr));
    // A grant in the place of an expired lease counts that lease as expired.
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("cy"), token_of(3), kT0 + 71 * kSec, nullptr));
    CHECK_EQUAL(2u, t.counters(kT0 + 71 * kSec).expired);
}

void SummarySweepsAndCounts(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    CHECK(LeaseOutcome::Granted == s.lock(t.key("a"), {}, req("ann", "", 10), token_of(1), kT0, nullptr));
    CHECK(LeaseOutcome::Granted == s.lock(t.key("b"), {}, req("bo", "", 100), token_of(2), kT0, nullptr));
    uint32_t live = 0;
    LeaseCounters c;
    CHECK(s.summary(kT0 + kSec, &live, c));
    CHECK_EQUAL(2u, live);
    CHECK_EQUAL(2u, c.granted);
    CHECK(s.summary(kT0 + 20 * kSec, &live, c));  // a idled out
    CHECK_EQUAL(1u, live);
    CHECK_EQUAL(1u, c.expired);
    const auto lines = lease_auto_lines(live, s.capacity(), c);
    CHECK_EQUAL(8u, lines.size());
    CHECK_EQUAL("Leases", lines[0].first);
    CHECK_EQUAL(1u, lines[0].second);
    CHECK_EQUAL("LeaseCapacity", lines[1].first);
    CHECK_EQUAL(s.capacity(), lines[1].second);
    CHECK_EQUAL("LeasesExpired", lines[5].first);
    CHECK_EQUAL(1u, lines[5].second);
}

void UnlockRules(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    const std::string k = t.key("k");
    const LeaseToken a = token_of(1);
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("ann", "ann"), a, kT0, nullptr));
    CHECK(LeaseOutcome::Mismatch == s.unlock(k, token_of(2), "ann", kT0, nullptr));
    CHECK(LeaseOutcome::Mismatch == s.unlock(t.key("other"), a, "ann", kT0, nullptr));
    CHECK(LeaseOutcome::Forbidden == s.unlock(k, a, "bo", kT0, nullptr));
    CHECK(LeaseOutcome::Forbidden == s.unlock(k, a, "", kT0, nullptr));
    CHECK(LeaseOutcome::Released == s.unlock(k, a, "ann", kT0, nullptr));
    CHECK(LeaseOutcome::Mismatch == s.unlock(k, a, "ann", kT0, nullptr));
    CHECK(LeaseOutcome::Stale == s.check_write(k, {a}, false, "ann", kT0, nullptr));
    CHECK(LeaseOutcome::Free == s.check_write(k, {}, false, "ann", kT0, nullptr));
    CHECK_EQUAL(1u, t.counters(kT0).released);
}

void TokenBoundToUser(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    const std::string k = t.key("k"), k2 = t.key("k2");
    const LeaseToken a = token_of(1);
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("ann", "ann"), a, kT0, nullptr));
    CHECK(LeaseOutcome::Forbidden == s.check_write(k, {a}, false, "bo", kT0, nullptr));
    CHECK(LeaseOutcome::Forbidden == s.unlock(k, a, "bo", kT0, nullptr));
    CHECK(LeaseOutcome::Forbidden == s.lock(k, {a}, req("", "bo"), token_of(3), kT0, nullptr));
    CHECK(LeaseOutcome::Allowed == s.check_write(k, {a}, false, "ann", kT0, nullptr));
    CHECK(LeaseOutcome::Released == s.unlock(k, a, "ann", kT0, nullptr));
    // A lease taken without a user binds to none.
    const LeaseToken b = token_of(2);
    CHECK(LeaseOutcome::Granted == s.lock(k2, {}, req("x"), b, kT0, nullptr));
    CHECK(LeaseOutcome::Allowed == s.check_write(k2, {b}, false, "anyone", kT0, nullptr));
}

// A user name longer than a table slot keeps (a certificate's DN, say) is
// bound whole: its own lease is its own, and a name with the same first
// bytes is another user.
void LongUserNameIsBoundWhole(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    const std::string k = t.key("k");
    const std::string ann = "CN=ann," + std::string(100, 'o') + ",DC=example";
    std::string twin = ann;
    twin.back() = 'X';
    const LeaseToken a = token_of(1);
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("ann", ann.c_str()), a, kT0, nullptr));
    CHECK(LeaseOutcome::Allowed == s.check_write(k, {a}, false, ann, kT0, nullptr));
    CHECK(LeaseOutcome::Renewed == s.lock(k, {a}, req("ann", ann.c_str()), token_of(3), kT0, nullptr));
    CHECK(LeaseOutcome::Forbidden == s.check_write(k, {a}, false, twin, kT0, nullptr));
    CHECK(LeaseOutcome::Forbidden == s.unlock(k, a, twin, kT0, nullptr));
    CHECK(LeaseOutcome::Released == s.unlock(k, a, ann, kT0, nullptr));
}

void StealAndReleaseByOperator(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    const std::string k = t.key("k");
    const LeaseToken a = token_of(1), op = token_of(7);
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("ann"), a, kT0, nullptr));
    LeaseView old, now;
    bool had = false;
    CHECK(LeaseOutcome::Granted == s.steal(k, req("operator", "admin"), op, kT0 + kSec, &old, &had, &now));
    CHECK(had);
    CHECK_EQUAL("ann", old.owner);
    CHECK_EQUAL("operator", now.owner);
    CHECK_EQUAL(lease_token_id(op), now.id);
    CHECK(LeaseOutcome::Stale == s.check_write(k, {a}, false, "", kT0 + 2 * kSec, nullptr));
    CHECK(LeaseOutcome::Allowed == s.check_write(k, {op}, false, "admin", kT0 + 2 * kSec, nullptr));
    // Steal of a free key grants.
    CHECK(LeaseOutcome::Granted == s.steal(t.key("free"), req("op"), token_of(8), kT0 + 2 * kSec, &old, &had, &now));
    CHECK_FALSE(had);
    CHECK_EQUAL(2u, t.live(kT0 + 2 * kSec).size());
    CHECK_EQUAL(1u, t.counters(kT0 + 2 * kSec).stolen);
    CHECK(LeaseOutcome::Released == s.release(k, kT0 + 3 * kSec, &old));
    CHECK_EQUAL("operator", old.owner);
    CHECK(LeaseOutcome::NotHeld == s.release(k, kT0 + 3 * kSec, &old));
    CHECK(LeaseOutcome::Stale == s.check_write(k, {op}, false, "admin", kT0 + 3 * kSec, nullptr));
    const LeaseCounters c = t.counters(kT0 + 3 * kSec);
    CHECK_EQUAL(1u, c.stolen);
    CHECK_EQUAL(1u, c.released);
    CHECK_EQUAL(3u, c.granted);
}

void FullIsAnAnswer(LeaseStoreTest &t) {
    LeaseStore &s = t.store();
    for (uint8_t i = 0; i < kCapacity; ++i)
        CHECK(LeaseOutcome::Granted == s.lock(t.key("k" + std::to_string(i)), {}, req("x"), token_of(i), kT0, nullptr));
    const std::string k = t.key("k9");
    CHECK(LeaseOutcome::Full == s.lock(k, {}, req("x"), token_of(9), kT0, nullptr));
    LeaseView old, now;
    bool had;
    CHECK(LeaseOutcome::Full == s.steal(k, req("x"), token_of(9), kT0, &old, &had, &now));
    // Expiry makes room.
    CHECK(LeaseOutcome::Granted == s.lock(k, {}, req("x"), token_of(9), kT0 + 61 * kSec, nullptr));
    if (t.used_follows_the_clock()) CHECK_EQUAL(1u, s.used());
    CHECK_EQUAL(kCapacity, t.counters(kT0 + 61 * kSec).expired);
    CHECK(LeaseOutcome::Error == s.lock(std::string(kKeyCap + 1, 'x'), {}, req("x"), token_of(9), kT0, nullptr));
}

void RestartKeepsDeadlines(LeaseStoreTest &t) {
    const std::string k = t.key("k");
    CHECK(LeaseOutcome::Granted == t.store().lock(k, {}, req("ann", "", 30), token_of(1), kT0, nullptr));
    // A graceful restart: the leases stay, a new object reaches them.
    const std::unique_ptr<LeaseStore> again = t.another();
    const std::vector<LeaseView> v = live_in(t, *again, kT0 + 29 * kSec);
    CHECK_EQUAL(1u, v.size());
    CHECK_EQUAL(kT0 + 30 * kSec, v[0].expires_us);
    CHECK(LeaseOutcome::Locked == again->check_write(k, {}, false, "", kT0 + 29 * kSec, nullptr));
    CHECK(LeaseOutcome::Free == again->check_write(k, {}, false, "", kT0 + 30 * kSec, nullptr));
}

namespace {

// A forked child's own store, connected (used() asks a database), so that
// the racers start together.
std::unique_ptr<LeaseStore> ready_store(LeaseStoreTest &t) {
    std::unique_ptr<LeaseStore> s = t.another();
    s->used();
    return s;
}

}  // namespace

void OneGrantPerKeyAmongProcesses(LeaseStoreTest &t) {
    // Eight processes, each with its own object, race for the same keys:
    // exactly one LOCK is granted per key, whatever the interleaving. In
    // batches of the capacity, released between batches: sixteen keys.
    for (int batch = 0; batch < 4; ++batch) {
        const int base = batch * static_cast<int>(kCapacity);
        std::unique_ptr<LeaseStore> mine;  // each child's own
        const std::vector<int> wins = race_forked(
            8, kCapacity,
            [&](int proc, int round) {
                return mine->lock(t.key("race" + std::to_string(base + round)), {}, req("kid"),
                                  token_of(static_cast<uint8_t>(proc)), kT0, nullptr) == LeaseOutcome::Granted;
            },
            [&](int) { mine = ready_store(t); });
        for (int round = 0; round < static_cast<int>(kCapacity); ++round) {
            CHECK_EQUAL(1, wins[static_cast<size_t>(round)]);
            CHECK(LeaseOutcome::Released ==
                  t.store().release(t.key("race" + std::to_string(base + round)), kT0, nullptr));
        }
    }
}

void CapacityHoldsAmongProcesses(LeaseStoreTest &t) {
    // Eight processes race for one key a round, twenty rounds: the first
    // kCapacity rounds have one winner each, the rest none (full).
    std::unique_ptr<LeaseStore> mine;  // each child's own
    const std::vector<int> wins = race_forked(
        8, 20,
        [&](int proc, int round) {
            return mine->lock(t.key("race" + std::to_string(round)), {}, req("kid"),
                              token_of(static_cast<uint8_t>(proc)), kT0, nullptr) == LeaseOutcome::Granted;
        },
        [&](int) { mine = ready_store(t); });
    for (int round = 0; round < 20; ++round)
        CHECK_EQUAL(round < static_cast<int>(kCapacity) ? 1 : 0, wins[static_cast<size_t>(round)]);
}

void OneHolderAtATimeAmongProcesses(LeaseStoreTest &t) {
    // Eight processes, each with its own object, take one key, hold it a
    // random while and give it back, over and over: a witness in shared
    // memory sees how many hold it at once (more than one: a double grant).
    struct Witness {
        std::atomic<int> holders, most;
    };
    auto *w = static_cast<Witness *>(map_shared(sizeof(Witness)));
    CHECK(w != nullptr);
    const std::string k = t.key("one");
    std::unique_ptr<LeaseStore> mine;  // each child's own
    std::mt19937 rng;
    const std::vector<int> grants = race_forked(
        8, 300,
        [&](int proc, int) {
            const LeaseToken own = token_of(static_cast<uint8_t>(proc));
            if (mine->lock(k, {}, req("kid"), own, kT0, nullptr) != LeaseOutcome::Granted) return false;
            const int now = ++w->holders;
            for (int most = w->most.load(); now > most && !w->most.compare_exchange_weak(most, now);) {}
            hold_briefly(rng);
            --w->holders;
            return mine->unlock(k, own, "", kT0, nullptr) == LeaseOutcome::Released;
        },
        [&](int proc) {
            mine = ready_store(t);
            rng.seed(static_cast<unsigned>(proc));
        });
    int granted = 0;
    for (int g : grants) {
        CHECK(g >= 0);
        granted += g;
    }
    CHECK(granted > 0);
    CHECK_EQUAL(1, w->most.load());
    munmap(w, sizeof(Witness));
}

void CapacityHoldsForDistinctKeys(LeaseStoreTest &t) {
    // Eight processes at once, each LOCKing keys of its own: kCapacity
    // grants in all, whatever the interleaving (a count of the live leases
    // that two grants both read before either adds its own lets both in).
    std::unique_ptr<LeaseStore> mine;  // each child's own
    const std::vector<int> wins = race_forked(
        8, static_cast<int>(kCapacity),
        [&](int proc, int round) {
            return mine->lock(t.key("own" + std::to_string(proc) + "-" + std::to_string(round)), {}, req("kid"),
                              token_of(static_cast<uint8_t>(proc)), kT0, nullptr) == LeaseOutcome::Granted;
        },
        [&](int) { mine = ready_store(t); });
    int granted = 0;
    for (int w : wins) {
        CHECK(w >= 0);
        granted += w;
    }
    CHECK_EQUAL(static_cast<int>(kCapacity), granted);
    CHECK_EQUAL(kCapacity, t.live(kT0).size());
}

}  // namespace lease_contract
