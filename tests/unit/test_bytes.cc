// The request path's word-at-a-time string work (pidlock_bytes.h): the
// SipHash tail, the holder fields copied into a slot, the key compare of the
// fast path and the path key's scan may load eight bytes past a string's
// end, never into another page. Each test puts its strings so that they end
// on the last byte before a PROT_NONE page: a load that crossed would crash
// the test. The results are compared with the byte-wise reference.
#include <cstring>
#include <random>
#include <string>

#include <sys/mman.h>
#include <unistd.h>

#include "concurrency.h"
#include "pidlock_bytes.h"
#include "pidlock_key.h"
#include "pidlock_locks.h"
#include "pidlock_table.h"

#include "CppUTest/TestHarness.h"
#include "guarded_pages.h"

using namespace pidlock;

namespace {

std::string random_text(std::mt19937 &rng, size_t n) {
    std::string s(n, 'a');
    for (char &c : s) c = static_cast<char>('!' + rng() % 90);  // no NUL, '\n' or '%' below
    for (char &c : s)
        if (c == '%') c = 'x';
    return s;
}

uint64_t siphash13_bytewise(uint64_t k0, uint64_t k1, const std::string &s) {
    // The same function over a copy at the start of a fresh buffer of 64
    // bytes (its tail load never near a page end): the reference.
    char buf[128] = {};
    std::memcpy(buf, s.data(), s.size());
    return siphash13(k0, k1, buf, s.size());
}

}  // namespace

TEST_GROUP(Bytes) {};

TEST(Bytes, WordHelpersFindTheFirstMatch) {
    for (int i = 0; i < 8; ++i) {
        char b[8];
        std::memset(b, 'a', 8);
        b[i] = '\0';
        if (i < 7) b[7] = '\0';  // a later zero byte does not hide the first
        uint64_t w;
        std::memcpy(&w, b, 8);
        LONGS_EQUAL(i, __builtin_ctzll(zero_bytes(w)) >> 3);
        std::memset(b, 'a', 8);
        b[i] = '%';
        std::memcpy(&w, b, 8);
        LONGS_EQUAL(i, __builtin_ctzll(bytes_equal(w, '%')) >> 3);
        CHECK(zero_bytes(w) == 0);
    }
    // A byte of 0x01 after a zero byte (the classic false positive) does not
    // move the first match.
    const unsigned char b[8] = {'a', 0, 1, 'b', 'c', 'd', 'e', 'f'};
    uint64_t w;
    std::memcpy(&w, b, 8);
    LONGS_EQUAL(1, __builtin_ctzll(zero_bytes(w)) >> 3);
    GuardedPage pe;
    CHECK(within_page(pe.base + 2 * pe.page - 8));
    CHECK(!within_page(pe.base + 2 * pe.page - 7));
    CHECK(within_page(pe.base + 2 * pe.page - 16, 16));
    CHECK(!within_page(pe.base + 2 * pe.page - 15, 16));
}

TEST(Bytes, SipHashTailAtGuardedPage) {
    GuardedPage pe;
    std::mt19937 rng(7);
    for (size_t n = 0; n <= 40; ++n) {
        const std::string s = random_text(rng, n);
        const uint64_t want = siphash13_bytewise(11, 13, s);
        // Ending on the page's last byte, and one to seven bytes before it.
        for (size_t back = 0; back < 8; ++back) {
            const char *p = pe.at_end(s + std::string(back, 'z'), false);
            CHECK(siphash13(11, 13, p, n) == want);
        }
    }
}

TEST(Bytes, PathKeyScanAtGuardedPage) {
    GuardedPage pe;
    std::mt19937 rng(8);
    std::string scratch;
    for (size_t n = 1; n <= 30; ++n) {
        const std::string key = random_text(rng, n);
        KeyView out;
        bool regex = false;
        const char *path = pe.at_end("/on/" + key, true);
        CHECK(simple_capture_key("/on/", 4, false, path, 1024, scratch, out, &regex) == KeyStatus::Ok);
        CHECK(!regex);
        CHECK(std::string(out.data, out.len) == key);
        // A '%' (decoded into scratch) and a '\n' (the regex decides) at
        // every position.
        for (size_t at = 0; at < n; ++at) {
            std::string k = key;
            k[at] = '%';
            path = pe.at_end("/on/" + k, true);
            CHECK(simple_capture_key("/on/", 4, false, path, 1024, scratch, out, &regex) == KeyStatus::Ok);
            CHECK(std::string(out.data, out.len) == k);
            k[at] = '\n';
            path = pe.at_end("/on/" + k, true);
            simple_capture_key("/on/", 4, false, path, 1024, scratch, out, &regex);
            CHECK(regex);
        }
    }
    // A path shorter than the prefix, ending at the page's end.
    KeyView out;
    bool regex = false;
    CHECK(simple_capture_key("/on/", 4, false, pe.at_end("/o", true), 1024, scratch, out, &regex) ==
          KeyStatus::Absent);
}

TEST(Bytes, HolderFieldsAndKeysAtGuardedPage) {
    TableInShm s(8, 2);
    LockTable &t = *s.table;
    {
        GuardedPage a, b, c, d, e;
        std::mt19937 rng(9);
        for (size_t n = 1; n <= 20; ++n) {
            const std::string key = random_text(rng, n);
            HolderInfo info;
            info.method = a.at_end("PROPFIND", true);
            const std::string uri = "/on/" + key + random_text(rng, n % 9);
            info.uri = b.at_end(uri, true);
            info.client = c.at_end("127.0.0.1", true);
            LockHandle h1, h2;
            CHECK(t.acquire(d.at_end(key, false), n, Mode::Read, 0, info, h1) == AcquireResult::Acquired);
            // The same key from another place: the same lock (a writer is
            // refused while the reader holds it).
            CHECK(t.acquire(e.at_end(key, false), n, Mode::Write, 0, info, h2) == AcquireResult::Busy);
            TableSnapshot snap;
            CHECK(t.snapshot(snap));
            LONGS_EQUAL(1, snap.locks.size());
            CHECK(snap.locks[0].key == key);
            LONGS_EQUAL(1, snap.locks[0].holders.size());
            const HolderView &hv = snap.locks[0].holders[0];
            CHECK(hv.method == "PROPFIND");
            CHECK(hv.uri == uri);
            CHECK(hv.client == "127.0.0.1");
            CHECK(!hv.has_user);
            t.release(h1);
            // A key that differs in its last byte only is another lock.
            std::string other = key;
            other.back() = other.back() == 'q' ? 'r' : 'q';
            CHECK(t.acquire(d.at_end(key, false), n, Mode::Write, 0, info, h1) == AcquireResult::Acquired);
            CHECK(t.acquire(e.at_end(other, false), n, Mode::Write, 0, info, h2) == AcquireResult::Acquired);
            t.release(h1);
            t.release(h2);
        }
    }
}

// A connection's slot cache: its requests reuse one slot, none is taken from
// the table while it has one, and drop_slot_cache gives it back to the pool.
TEST(Bytes, SlotCacheReusesOneSlotAndGivesItBack) {
    TableInShm s(4, 2);
    LockTable &t = *s.table;
    {
        SlotCache cache;
        HolderInfo info;
        info.slot_cache = &cache;
        LockHandle h;
        CHECK(t.acquire("k1", 2, Mode::Read, 0, info, h) == AcquireResult::Acquired);
        LONGS_EQUAL(0, cache.slot);  // in use
        t.release(h, &cache);
        const uint32_t s = cache.slot;
        CHECK(s != 0);
        for (int i = 0; i < 100; ++i) {
            CHECK(t.acquire("k2", 2, Mode::Write, 0, info, h) == AcquireResult::Acquired);
            LONGS_EQUAL(0, cache.slot);
            t.release(h, &cache);
            LONGS_EQUAL(s, cache.slot);  // the same slot each time
        }
        LockTable::drop_slot_cache(cache);
        LONGS_EQUAL(0, cache.slot);
        // Closed: a late release does not put a slot back into it.
        CHECK(t.acquire("k3", 2, Mode::Read, 0, HolderInfo(), h) == AcquireResult::Acquired);
        t.release(h, &cache);
        LONGS_EQUAL(0, cache.slot);
        const std::string why = t.check_consistency();
        CHECK_TEXT(why.empty(), why.c_str());
    }
}

// Every length of every holder field, around each block size the copy uses
// (8 and 16 bytes) and its cap, against a PROT_NONE page: the field shows
// the string cut to cap - 1 bytes, whichever way it was copied.
TEST(Bytes, HolderFieldsOfEveryLengthAtPageEnd) {
    TableInShm s(8, 2);
    LockTable &t = *s.table;
    GuardedPage a, b, c, d;
    std::mt19937 rng(10);
    for (size_t n = 0; n <= kUriCap + 20; ++n) {
        const std::string text = random_text(rng, n);
        HolderInfo info;
        info.method = a.at_end(text.substr(0, std::min(n, kMethodCap + 20)), true);
        info.uri = b.at_end(text, true);
        info.client = c.at_end(text.substr(0, std::min(n, kClientCap + 20)), true);
        info.user = d.at_end(text.substr(0, std::min(n, kUserCap + 20)), true);
        LockHandle h;
        CHECK(t.acquire("k", 1, Mode::Read, 0, info, h) == AcquireResult::Acquired);
        TableSnapshot snap;
        CHECK(t.snapshot(snap));
        LONGS_EQUAL(1, snap.locks.size());
        const HolderView &hv = snap.locks[0].holders.at(0);
        const auto cut = [&](size_t limit, size_t cap) { return text.substr(0, std::min({n, limit, cap - 1})); };
        CHECK(hv.method == cut(kMethodCap + 20, kMethodCap));
        CHECK(hv.uri == cut(n, kUriCap));
        CHECK(hv.client == cut(kClientCap + 20, kClientCap));
        CHECK(hv.user == cut(kUserCap + 20, kUserCap));
        t.release(h);
    }
}

// The path key's prefix, compared sixteen bytes at once where the loads stay
// on their pages and byte by byte elsewhere: for prefixes of 1-20 bytes, a
// path that has it yields the key; one that differs in any byte of it, or
// ends inside it, yields none; wherever the path and the prefix lie.
TEST(Bytes, PathPrefixComparedAnywhere) {
    GuardedPage pp, pa;
    std::mt19937 rng(11);
    std::string scratch;
    for (size_t plen = 1; plen <= 20; ++plen) {
        std::string prefix = "/" + random_text(rng, plen - 1);
        for (size_t where = 0; where < 3; ++where) {
            // The prefix at a page's start, its middle, or its end.
            const char *pre = where == 0   ? pp.at_start(prefix)
                              : where == 1 ? pp.at_start(std::string(2000, 'p') + prefix) + 2000
                                           : pp.at_end(prefix);
            const auto key_of_path = [&](const std::string &path, bool at_end, KeyView &out) {
                bool regex = false;
                const char *p = at_end ? pa.at_end(path, true) : pa.at_start(path + std::string(1, '\0'));
                return simple_capture_key(pre, plen, false, p, 1024, scratch, out, &regex);
            };
            for (bool at_end : {false, true}) {
                KeyView out;
                CHECK(key_of_path(prefix + "k1", at_end, out) == KeyStatus::Ok);
                CHECK(std::string(out.data, out.len) == "k1");
                for (size_t i = 0; i < plen; ++i) {
                    std::string other = prefix + "k1";
                    other[i] = static_cast<char>(other[i] ^ 1);
                    CHECK(key_of_path(other, at_end, out) == KeyStatus::Absent);
                    CHECK(key_of_path(prefix.substr(0, i), at_end, out) == KeyStatus::Absent);
                }
            }
        }
    }
}

// The path key's "%2F" (decoded to '/') found by every loop of the scan:
// the sixteen-byte one, the eight-byte one near a page's end and the
// byte-wise one at its very end. The path ends 0-23 bytes before a
// PROT_NONE page, its "%2F" at every position of the key; the key must be
// the one simple_capture_match and key_view_path_capture give on a copy
// away from any page end (a scan that misses '%' keeps "%2F" as it is).
TEST(Bytes, PathKeySlashEscapeAtEveryDistanceFromPageEnd) {
    GuardedPage pe;
    std::mt19937 rng(12);
    std::string scratch, scratch2;
    for (size_t n = 0; n <= 24; ++n) {
        const std::string key = random_text(rng, n);
        for (size_t at = 0; at <= n; ++at) {
            const std::string path = "/on/" + key.substr(0, at) + (at % 2 ? "%2f" : "%2F") + key.substr(at);
            const std::string want = key.substr(0, at) + "/" + key.substr(at);
            // The reference, from a heap copy.
            const char *cap = nullptr;
            size_t cap_len = 0;
            CHECK(simple_capture_match("/on/", 4, false, path.c_str(), &cap, &cap_len) == FastMatch::Match);
            KeyView ref;
            CHECK(key_view_path_capture(cap, cap_len, 1024, scratch2, ref) == KeyStatus::Ok);
            CHECK(std::string(ref.data, ref.len) == want);
            for (size_t back = 0; back < 24; ++back) {
                KeyView out;
                bool regex = false;
                const char *p = pe.at_end(path + std::string(1, '\0') + std::string(back, 'z'), false);
                CHECK(simple_capture_key("/on/", 4, false, p, 1024, scratch, out, &regex) == KeyStatus::Ok);
                CHECK(!regex);
                if (std::string(out.data, out.len) != want)
                    FAIL(("key of " + path + " ending " + std::to_string(back) + " bytes before the page end: " +
                          std::string(out.data, out.len))
                             .c_str());
            }
        }
    }
}

// The key compare of the table's fast path: equal bytes of every length
// 1-40 compare equal, a difference in any one of them does not, and bytes
// past the end never matter; with either string at a page's start, in its
// middle or against a PROT_NONE page at its end (a load that crossed would
// fault). Fails with a mask that drops a key's last byte or keeps one past
// its end.
TEST(Bytes, SameBytesOfEveryLengthAnywhere) {
    GuardedPage pa, pb;
    std::mt19937 rng(13);
    for (size_t n = 1; n <= 40; ++n) {
        const std::string key = random_text(rng, n);
        for (int wa = 0; wa < 3; ++wa) {
            for (int wb = 0; wb < 3; ++wb) {
                const auto place = [](GuardedPage &g, int where, const std::string &s) {
                    return where == 0   ? g.at_start(s + "#")
                           : where == 1 ? g.at_start(std::string(1000, 'm') + s + "$") + 1000
                                        : g.at_end(s);
                };
                const char *a = place(pa, wa, key);
                // The byte after b's end (where there is one) differs from a's.
                CHECK(same_bytes(a, place(pb, wb, key), n));
                for (size_t i = 0; i < n; ++i) {
                    std::string other = key;
                    other[i] = static_cast<char>(other[i] ^ 0x20);
                    CHECK(!same_bytes(a, place(pb, wb, other), n));
                }
            }
        }
    }
}
