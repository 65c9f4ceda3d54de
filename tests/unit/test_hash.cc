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

// Keys built so that, lane by lane, one key's bytes xored with its length
// equal the other's xored with its own (printable, no NUL: any client can
// send them). With the length xored into the lanes' seeds these had one
// hash under every secret (five of 17-32 bytes, six of 33-64: as many in
// one bucket, on demand); with the length in the first round key, a
// collision needs four S-boxes to hit prescribed differences under secret
// inputs.
TEST(Hash, KeysOfOtherLengthsCannotBeMadeToCollide) {
    const std::vector<std::vector<std::string>> families = {
        {"@@N!ONGN!ONGN!ON!", "G@N!ONGN!ONGN!ONGN!ON!", "O@N!ONGN!ONGN!ON!ONGN!ONGN!ON!",
         "N@N!ONGN!ONGN!ONN!ONGN!ONGN!ON!", "q@N!ONGN!ONGN!ONqN!ONGN!ONGN!ON!"},
        {"!!?>?!1?>?!!,?>?,1?>?!!,?>?,<?>?!", ",!?>?!1?>?!!,?>?!1?>?!!,?>?,<?>?!!,?>?,<?>?!",
         "<!?>?!1?>?!!,?>?11?>?!!,?>?,<?>?!1?>?!!,?>?,,?>?!!,?>?,<?>?!",
         ">!?>?!1?>?!!,?>?31?>?!!,?>?,<?>?>?!1?>?!!,?>?,.?>?!!,?>?,<?>?!",
         "?!?>?!1?>?!!,?>?21?>?!!,?>?,<?>?\?>?!1?>?!!,?>?,/?>?!!,?>?,<?>?!",
         "@!?>?!1?>?!!,?>?M1?>?!!,?>?,<?>?@?>?!1?>?!!,?>?,P?>?!!,?>?,<?>?!"},
        {"!!\"\"\"\"\"\"\"\"\"\"\"\"\"\"!", "\"!\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"!"},
    };
    for (uint64_t i = 0; i < 16; ++i) {
        const AesHashKey k = key_of(0x243f6a8885a308d3ull * (i + 1), 0x13198a2e03707344ull ^ i);
        for (const auto &family : families) {
            std::set<uint64_t> seen;
            for (const std::string &s : family) seen.insert(reference(k, s));
            LONGS_EQUAL(family.size(), seen.size());
        }
    }
}

// Each lane has a seed of its own: keys whose lanes repeat (a key periodic
// with the distance between two lanes) or swap (the halves of 32 bytes, the
// quarters of 64) hash apart. With one seed for two lanes, repeated lanes
// cancel in the xor and swapped ones give the same hash, whatever the secret.
TEST(Hash, LanesAreSeededApart) {
    const AesHashKey k = key_of(0x452821e638d01377ull, 0xbe5466cf34e90c6cull);
    std::mt19937 rng(24);
    for (size_t n = 17; n <= 64; ++n) {
        // The lanes start at 0 and n-16 (17-32 bytes), at 0, 16, n-32 and
        // n-16 (33-64): a period of n-16 repeats the first lane in the
        // last, one of n-32 the first two in the last two.
        for (size_t period : {n - 16, n > 32 ? n - 32 : n - 16}) {
            std::set<std::string> keys;
            std::set<uint64_t> seen;
            for (int j = 0; j < 64; ++j) {
                const std::string unit = random_bytes(rng, period);
                std::string s;
                while (s.size() < n) s += unit;
                s.resize(n);
                keys.insert(s);
                seen.insert(reference(k, s));
            }
            LONGS_EQUAL(keys.size(), seen.size());
        }
    }
    for (int j = 0; j < 64; ++j) {
        const std::string x = random_bytes(rng, 16), y = random_bytes(rng, 16);
        CHECK(reference(k, x + y) != reference(k, y + x));
        const std::string q[4] = {x, y, random_bytes(rng, 16), random_bytes(rng, 16)};
        const uint64_t h = reference(k, q[0] + q[1] + q[2] + q[3]);
        for (int a = 0; a < 4; ++a)
            for (int b = a + 1; b < 4; ++b) {
                std::string p[4] = {q[0], q[1], q[2], q[3]};
                std::swap(p[a], p[b]);
                CHECK(reference(k, p[0] + p[1] + p[2] + p[3]) != h);
            }
    }
}

TEST(Hash, TheSecretMatters) {
    const std::string s = "urn:uuid:6e0d3a5c-1f3e-4f4a-9a52-3d2b1c0e9f11";
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < 200; ++i) {
        const AesHashKey k = key_of(i, ~i);
        for (size_t n : {size_t{7}, size_t{20}, s.size()}) seen.insert(reference(k, s.substr(0, n)));
    }
    LONGS_EQUAL(600, seen.size());
    // Both halves of the table's 128 bits: either alone changes the hash.
    seen.clear();
    for (uint64_t i = 0; i < 100; ++i) {
        seen.insert(reference(key_of(i, 7), s.substr(0, 7)));
        seen.insert(reference(key_of(7, i + 1000), s.substr(0, 7)));
    }
    LONGS_EQUAL(200, seen.size());
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

// The header's record of the hash: a table formatted twice under one key,
// once with each hash, differs in that one word; a value this build cannot
// compute makes the region no table (an attacher would put keys in other
// buckets than the table's other processes).
TEST(Hash, AnUnknownHashKindIsRefused) {
    // Without AES instructions the two formats would not differ (and on
    // x86-64 AesHashAvailableHere fails then, so this is not a quiet pass).
    if (!aes_hash_available()) return;
    TableParams p;
    p.capacity = 16;
    p.key_cap = 64;
    p.stripes = 4;
    const size_t size = LockTable::region_size(p);
    // Both 64-byte aligned: the table starts at the same offset in each.
    alignas(64) static unsigned char aes_mem[1 << 16], sip_mem[1 << 16];
    CHECK(size <= sizeof aes_mem);
    unsigned char *aes = aes_mem, *sip = sip_mem;
    const unsigned char hash_key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    CHECK(LockTable::format(aes, size, p, hash_key));
    LockTable::prefer_siphash(true);
    CHECK(LockTable::format(sip, size, p, hash_key));
    LockTable::prefer_siphash(false);
    std::vector<size_t> differ;
    for (size_t i = 0; i + 4 <= size; i += 4)
        if (std::memcmp(aes + i, sip + i, 4) != 0) differ.push_back(i);
    LONGS_EQUAL(1, differ.size());
    StripeLocksInShm stripes(p.stripes);
    {
        LockTable t(aes, size, p, stripes.locks);
        CHECK(t.valid() && t.uses_aes_hash());
        LockTable u(sip, size, p, stripes.locks);
        CHECK(u.valid() && !u.uses_aes_hash());
    }
    uint32_t kind;
    std::memcpy(&kind, aes + differ[0], 4);
    for (uint32_t bad : {kind + 1, kind + 2, 0xffffffffu}) {
        std::memcpy(aes + differ[0], &bad, 4);
        CHECK_FALSE(LockTable::check_region(aes, size, p));
        LockTable t(aes, size, p, stripes.locks);
        CHECK_FALSE(t.valid());
    }
}

// Every process derives the table's secrets itself (attach): a process
// forked before the table is attached, attaching it on its own, holds keys
// of every length class that this process then finds busy, and finds free
// once it let them go. Secrets that depended on the process (its pid, an
// address) would put its keys in other buckets: acquired here, twice.
TEST(Hash, EveryProcessPutsAKeyInTheSameBucket) {
    TableInShm s(256, 4, 128);
    std::mt19937 rng(25);
    std::vector<std::string> keys;
    for (size_t n = 1; n <= 100; n += 3) keys.push_back(random_bytes(rng, n));
    auto *flags = static_cast<std::atomic<int> *>(map_shared(2 * sizeof(std::atomic<int>)));
    CHECK(flags != nullptr);
    std::atomic<int> &held = flags[0], &go = flags[1];
    const pid_t pid = fork();
    if (pid == 0) {
        int rc = 0;
        {
            LockTable mine(s.mem, s.size, s.p, s.stripes.locks);
            HolderInfo info;
            std::vector<LockHandle> hs(keys.size());
            for (size_t i = 0; i < keys.size(); ++i)
                if (mine.acquire(keys[i].data(), keys[i].size(), Mode::Write, 0, info, hs[i]) != AcquireResult::Acquired)
                    rc = 1;
            held = 1;
            const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
            while (!go.load() && std::chrono::steady_clock::now() < give_up) sched_yield();
            for (LockHandle &h : hs) mine.release(h);
        }
        _exit(rc);
    }
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!held.load() && std::chrono::steady_clock::now() < give_up) sched_yield();
    HolderInfo info;
    int busy = 0;
    for (const std::string &k : keys) {
        LockHandle h;
        const AcquireResult r = s.table->acquire(k.data(), k.size(), Mode::Read, 0, info, h);
        if (r == AcquireResult::Busy) ++busy;
        if (r == AcquireResult::Acquired) s.table->release(h);
    }
    go = 1;
    int status = 0;
    waitpid(pid, &status, 0);
    munmap(flags, 2 * sizeof(std::atomic<int>));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    LONGS_EQUAL(keys.size(), busy);
    for (const std::string &k : keys) {
        LockHandle h;
        CHECK(s.table->acquire(k.data(), k.size(), Mode::Write, 0, info, h) == AcquireResult::Acquired);
        s.table->release(h);
    }
    STRCMP_EQUAL("", s.table->check_consistency().c_str());
}
