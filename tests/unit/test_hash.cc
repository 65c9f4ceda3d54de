// The bucket hash (pidlock_table.h): AES where the CPU has it, SipHash-1-3
// otherwise. Every process of a table must put a key in the same bucket,
// keys that differ anywhere must differ in their hash, no load may leave the
// pages the key touches, and a client must not be able to aim keys at one
// bucket without the table's secret.
#include <cstring>
#include <new>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "pidlock_locks.h"
#include "pidlock_table.h"

namespace {
// A LockTable placed at `at` (before CppUTest's headers, whose `new` macro
// leaves no room for a placement new).
pidlock::LockTable *table_at(void *at, void *mem, size_t size, const pidlock::TableParams &p,
                             pidlock::StripeLocks *locks) {
    return new (at) pidlock::LockTable(mem, size, p, locks);
}
}  // namespace

#include "concurrency.h"

#include "CppUTest/TestHarness.h"
#include "guarded_pages.h"

using namespace pidlock;

namespace {

AesHashKey key_of(uint64_t a, uint64_t b) {
    AesHashKey k;
    derive_aes_hash_key(a, b, k);
    return k;
}

// The hash of a copy in the middle of an ordinary buffer: the reference
// for the same bytes anywhere else.
uint64_t reference(const AesHashKey &k, const std::string &s) {
    std::vector<char> buf(s.size() + 256, 'Z');
    std::memcpy(buf.data() + 128, s.data(), s.size());
    return aes_hash(k, buf.data() + 128, s.size());
}

std::string random_bytes(std::mt19937 &rng, size_t n) {
    std::string s(n, 'a');
    for (char &c : s) c = static_cast<char>(1 + rng() % 255);
    return s;
}

}  // namespace

TEST_GROUP(Hash) {
    void teardown() override { LockTable::prefer_siphash(false); }
};

TEST(Hash, AesHashAvailableHere) {
    // This machine's CPU has AES instructions (x86-64 since 2010): the
    // module's tables use the AES hash, and so do these tests. Elsewhere
    // the tables use SipHash-1-3 and this test says why the AES tests
    // below prove less there.
#if defined(__x86_64__)
    CHECK_TEXT(aes_hash_available(), "no AES instructions: the tables fall back to SipHash-1-3");
#endif
}

TEST(Hash, TheSameBytesHashAlikeWhereverTheyLie) {
    GuardedPage f;
    std::mt19937 rng(21);
    const AesHashKey k = key_of(0x0123456789abcdefull, 0xfedcba9876543210ull);
    for (size_t n = 1; n <= 80; ++n) {
        const std::string s = random_bytes(rng, n);
        const uint64_t want = reference(k, s);
        // Against the end of a page and the start of one, and a few bytes
        // off each: a load past either would fault.
        for (size_t off = 0; off < 18; ++off) {
            const std::string padded = s + std::string(off, 'y');
            CHECK(aes_hash(k, f.at_end(padded), n) == want);
            const std::string led = std::string(off, 'y') + s;
            CHECK(aes_hash(k, f.at_start(led) + off, n) == want);
        }
    }
}

TEST(Hash, KeysThatDifferAnywhereHashApart) {
    const AesHashKey k = key_of(1, 2);
    std::mt19937 rng(22);
    std::set<uint64_t> seen;
    size_t count = 0;
    for (size_t n = 1; n <= 80; ++n) {
        const std::string s = random_bytes(rng, n);
        seen.insert(reference(k, s));
        ++count;
        // Every byte position, every bit.
        for (size_t i = 0; i < n; ++i) {
            for (int bit = 0; bit < 8; ++bit) {
                std::string t = s;
                t[i] = static_cast<char>(t[i] ^ (1 << bit));
                seen.insert(reference(k, t));
                ++count;
            }
        }
    }
    // A key and the same key with zero bytes after it: only the length tells
    // them apart (the short path pads with zeros).
    for (size_t n = 1; n <= 70; ++n) {
        seen.insert(reference(k, std::string(n, '\0')));
        ++count;
    }
    LONGS_EQUAL(count, seen.size());
}

TEST(Hash, TheSecretMatters) {
    const std::string s = "urn:uuid:6e0d3a5c-1f3e-4f4a-9a52-3d2b1c0e9f11";
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < 200; ++i) {
        const AesHashKey k = key_of(i, ~i);
        for (size_t n : {size_t{7}, size_t{20}, s.size()}) seen.insert(reference(k, s.substr(0, n)));
    }
    LONGS_EQUAL(600, seen.size());
    // Beyond 64 bytes the table's SipHash-1-3 key decides.
    const std::string longer(100, 'q');
    const AesHashKey k = key_of(5, 6);
    CHECK(reference(k, longer) == siphash13(5, 6, longer.data(), longer.size()));
}

// Keys as applications name objects (a counter in a fixed frame, UUIDs) over
// 4096 buckets: no bucket far above the mean of 16. A hash that ignored a
// byte or left bits unmixed piles these up.
TEST(Hash, SequentialKeysSpreadOverTheBuckets) {
    const AesHashKey k = key_of(0x9e3779b97f4a7c15ull, 0xbf58476d1ce4e5b9ull);
    const char *frames[] = {"%d", "doi:10.5063/F1%06d", "urn:uuid:00000000-0000-4000-8000-%012d",
                            "ark:/13030/m5%08d/very/long/object/name/beyond/sixty-four/bytes/%d"};
    for (const char *frame : frames) {
        std::vector<int> load(4096, 0);
        for (int i = 0; i < 65536; ++i) {
            char buf[160];
            const int n = std::snprintf(buf, sizeof buf, frame, i, i);
            ++load[aes_hash(k, buf, static_cast<size_t>(n)) & 4095];
        }
        int most = 0;
        for (int l : load) most = std::max(most, l);
        // Poisson(16): P(a bucket >= 40) is about 1e-7.
        CHECK_TEXT(most < 40, frame);
    }
}

// Both hashes in a real table: two attachments of one region (as two
// processes) agree on every key of every length class, conflicts show, and
// the table's own check (which rehashes every key) passes.
TEST(Hash, TablesOfEitherHashLockAlike) {
    for (int sip = 0; sip < 2; ++sip) {
        LockTable::prefer_siphash(sip == 1);
        TableInShm s(256, 4, 128);
        LockTable other(s.mem, s.size, s.p, s.stripes.locks);
        CHECK(other.valid());
        CHECK(s.table->uses_aes_hash() == (sip == 0 && aes_hash_available()));
        CHECK(other.uses_aes_hash() == s.table->uses_aes_hash());
        HolderInfo info;
        std::vector<LockHandle> held(100);
        std::mt19937 rng(23);
        std::vector<std::string> keys;
        for (size_t i = 0; i < held.size(); ++i) {
            keys.push_back(random_bytes(rng, 1 + i % 100));
            CHECK(s.table->acquire(keys[i].data(), keys[i].size(), Mode::Read, 0, info, held[i]) ==
                  AcquireResult::Acquired);
        }
        for (size_t i = 0; i < held.size(); ++i) {
            LockHandle h;
            CHECK(other.acquire(keys[i].data(), keys[i].size(), Mode::Write, 0, info, h) == AcquireResult::Busy);
        }
        STRCMP_EQUAL("", s.table->check_consistency().c_str());
        for (LockHandle &h : held) s.table->release(h);
        for (size_t i = 0; i < held.size(); ++i) {
            LockHandle h;
            CHECK(other.acquire(keys[i].data(), keys[i].size(), Mode::Write, 0, info, h) ==
                  AcquireResult::Acquired);
            other.release(h);
        }
        STRCMP_EQUAL("", other.check_consistency().c_str());
    }
}

// httpd keeps its LockTable in an APR pool, whose memory is aligned to 8
// bytes only: the hash must not assume more of the object it lives in (an
// aligned load of its secrets crashed httpd at startup once).
TEST(Hash, ATableObjectAlignedToEightBytesOnly) {
    TableInShm s(16, 4, 64);
    alignas(16) unsigned char buf[sizeof(LockTable) + 16];
    LockTable *t = table_at(buf + 8, s.mem, s.size, s.p, s.stripes.locks);
    CHECK(t->valid());
    HolderInfo info;
    LockHandle h, other;
    for (size_t n : {size_t{5}, size_t{20}, size_t{40}}) {
        const std::string key(n, 'k');
        CHECK(t->acquire(key.data(), n, Mode::Write, 0, info, h) == AcquireResult::Acquired);
        CHECK(s.table->acquire(key.data(), n, Mode::Read, 0, info, other) == AcquireResult::Busy);
        t->release(h);
    }
    t->~LockTable();
}
