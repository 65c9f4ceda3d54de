// httpd's parent (root) never trusts shared memory, and the bucket hash is
// keyed. A hostile "child" process scribbles the table and the exit list and
// holds stripe mutexes while a "parent" process runs what httpd's parent
// runs (attach and check at a restart, publish exits); the parent must
// return promptly, unharmed. The twin runs what the parent used to run
// (reap) under the same attacks and must be caught, so a silent harness
// cannot pass for a safe parent.
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <random>
#include <thread>

#include <csignal>
#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pidlock_backend.h"
#include "pidlock_exits.h"
#include "pidlock_locks.h"
#include "pidlock_table.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

void *map_anon(size_t n, int flags = MAP_SHARED, void *hint = nullptr) {
    void *p = mmap(hint, n, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

constexpr unsigned kStripes = 8;
constexpr size_t kTargetSize = 1 << 16;

// A table, its exit list and robust process-shared stripe mutexes, all in
// shared memory; and a private page far above the table standing for a
// variable of httpd's parent.
struct Arena {
    TableParams p;
    size_t size = 0, exits_size = 0;
    void *table = nullptr, *exits = nullptr, *locks_mem = nullptr;
    unsigned char *target = nullptr;
    PthreadStripeLocks *locks = nullptr;

    Arena() {
        p.capacity = 64;
        p.key_cap = 32;
        p.stripes = kStripes;
        size = LockTable::region_size(p);
        table = map_anon(size);
        exits_size = ExitList::region_size();
        exits = map_anon(exits_size);
        locks_mem = map_anon(PthreadStripeLocks::region_size(kStripes));
        PthreadStripeLocks::init(locks_mem, kStripes, true);
        locks = new PthreadStripeLocks(locks_mem, kStripes);
        LockTable::format(table, size, p);
        ExitList::format(exits, exits_size);
        target = static_cast<unsigned char *>(
            map_anon(kTargetSize, MAP_PRIVATE, static_cast<char *>(table) + (64u << 20)));
    }
    ~Arena() {
        delete locks;
        munmap(table, size);
        munmap(exits, exits_size);
        munmap(locks_mem, PthreadStripeLocks::region_size(kStripes));
        munmap(target, kTargetSize);
    }
    bool target_untouched() const {
        for (size_t i = 0; i < kTargetSize; ++i)
            if (target[i]) return false;
        return true;
    }
};

enum class Attack { Random, SelfLinkedChain, RecordAtParentVariable };

// The hostile child: holds some (or all) stripe mutexes for ever, lays the
// attack out, then keeps scribbling random words over the table (except
// for the laid-out attacks) and the exit list until killed.
// The attacker says on `ready_fd` when it holds its mutexes and has
// scribbled once, so the parent's side never starts before the attack does
// (however loaded the machine).
pid_t start_attacker(Arena &a, unsigned seed, Attack attack, int ready_fd) {
    const pid_t pid = fork();
    if (pid != 0) return pid;
    std::mt19937_64 rng(seed);
    // Even seeds: every stripe held. Odd: some at random (a laid-out
    // attack: none, so that only the layout can stop a reader).
    const bool all = seed % 2 == 0;
    for (unsigned s = 0; s < kStripes; ++s)
        if (all || (attack == Attack::Random && rng() % 2)) a.locks->lock(s);
    auto scribble = [&](void *mem, size_t n) {
        auto *w = static_cast<uint64_t *>(mem);
        for (size_t i = 0; i < n / 8; ++i) w[i] = rng() % 4 == 0 ? rng() % 64 : rng();
    };
    if (attack == Attack::Random) {
        scribble(a.table, a.size);
    } else {
        LockTable t(a.table, a.locks);
        t.test_corrupt(attack == Attack::SelfLinkedChain ? LockTable::Corruption::SelfLinkedChain
                                                        : LockTable::Corruption::RecordAt,
                       a.target, kTargetSize);
        // The old header's records_off (bytes 48-55) pointed where the
        // attacker liked; the table must not care what lies there now.
        uint64_t off = static_cast<uint64_t>(a.target - static_cast<unsigned char *>(a.table));
        std::memcpy(static_cast<char *>(a.table) + 48, &off, sizeof off);
    }
    scribble(a.exits, a.exits_size);
    if (write(ready_fd, "r", 1) != 1) _exit(1);
    for (;;) {
        scribble(a.exits, a.exits_size);
        if (attack == Attack::Random) {
            auto *w = static_cast<uint64_t *>(a.table);
            for (int i = 0; i < 64; ++i) w[rng() % (a.size / 8)] = rng();
        }
        sched_yield();
    }
}

enum class Outcome { Ok, Failed, Crashed, Hung };

// Runs `fn` in a forked process for at most `ms`: Ok if it returned 0.
Outcome run_bounded(const std::function<int()> &fn, int ms) {
    const pid_t pid = fork();
    if (pid == 0) _exit(fn());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return Outcome::Hung;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (WIFSIGNALED(status)) return Outcome::Crashed;
    return WEXITSTATUS(status) == 0 ? Outcome::Ok : Outcome::Failed;
}

// What httpd's parent runs now: at a restart, check the retained table and
// attach to it (for the children it forks), and note child exits in the
// exit list. Exit 2: it wrote into its own variable.
int parent_side(Arena &a) {
    uint64_t published = 0;  // the parent's own count
    for (int i = 0; i < 2000; ++i) {
        (void)LockTable::check_region(a.table, a.size, a.p);
        LockTable t(a.table, a.size, a.p, a.locks);
        ExitList::publish(a.exits, published, 4000 + i);
    }
    return a.target_untouched() ? 0 : 2;
}

// What it ran before: the exits and restarts reaped in the table itself.
int old_parent_side(Arena &a) {
    LockTable t(a.table, a.locks);
    t.reap(4242);
    t.reap(0);
    return a.target_untouched() ? 0 : 2;
}

Outcome under_attack(unsigned seed, Attack attack, int (*parent)(Arena &), int ms) {
    Arena a;
    int ready[2];
    if (pipe(ready) != 0) return Outcome::Failed;
    const pid_t bad = start_attacker(a, seed, attack, ready[1]);
    struct pollfd pfd = {ready[0], POLLIN, 0};
    char c = 0;
    const bool started = poll(&pfd, 1, 10000) == 1 && read(ready[0], &c, 1) == 1;
    close(ready[0]);
    close(ready[1]);
    const Outcome o = started ? run_bounded([&] { return parent(a); }, ms) : Outcome::Failed;
    kill(bad, SIGKILL);
    waitpid(bad, nullptr, 0);
    return o;
}

const char *name(Outcome o) {
    switch (o) {
    case Outcome::Ok: return "ok";
    case Outcome::Failed: return "wrote its own variable";
    case Outcome::Crashed: return "crashed";
    case Outcome::Hung: return "hung";
    }
    return "?";
}

}  // namespace

TEST_GROUP(ParentDistrust) {};

TEST(ParentDistrust, RandomScribblesAndHeldMutexesNeverStopTheParent) {
    for (unsigned seed = 1; seed <= 60; ++seed) {
        const Outcome o = under_attack(seed, Attack::Random, parent_side, 3000);
        if (o != Outcome::Ok) FAIL(("seed " + std::to_string(seed) + ": parent " + name(o)).c_str());
    }
}

TEST(ParentDistrust, SelfLinkedChainNeverStopsTheParent) {
    for (unsigned seed = 1; seed <= 4; ++seed)
        STRCMP_EQUAL("ok", name(under_attack(seed, Attack::SelfLinkedChain, parent_side, 3000)));
}

TEST(ParentDistrust, RecordPointingAtAParentVariableIsNeverWritten) {
    for (unsigned seed = 1; seed <= 4; ++seed)
        STRCMP_EQUAL("ok", name(under_attack(seed, Attack::RecordAtParentVariable, parent_side, 3000)));
}

// The twin: the parent's old path (reap in the table) under the same
// attacks is caught hanging, crashing or writing where the attacker chose.
TEST(ParentDistrust, OldParentPathIsCaught) {
    // Every stripe held (even seeds): the old parent blocks on a mutex.
    CHECK(under_attack(2, Attack::RecordAtParentVariable, old_parent_side, 500) == Outcome::Hung);
    // A self-linked chain, no mutex held: the old parent loops for ever.
    CHECK(under_attack(3, Attack::SelfLinkedChain, old_parent_side, 500) != Outcome::Ok);
}

// Header fields past the fixed ones (where the offsets used to be) are never
// read: a table attached before they were scribbled keeps working.
TEST(ParentDistrust, TableIgnoresScribbledOffsetFields) {
    Arena a;
    LockTable t(a.table, a.size, a.p, a.locks);
    CHECK(t.valid());
    const uint64_t off = static_cast<uint64_t>(a.target - static_cast<unsigned char *>(a.table));
    for (size_t at = 32; at < 64; at += 8) std::memcpy(static_cast<char *>(a.table) + at, &off, sizeof off);
    HolderInfo info;
    LockHandle h;
    CHECK(t.acquire("k", 1, Mode::Write, 0, info, h) == AcquireResult::Acquired);
    CHECK_EQUAL(0, t.release(h));
    CHECK_EQUAL(0, t.reap(0));
    STRCMP_EQUAL("", t.check_consistency().c_str());
    CHECK(a.target_untouched());
}

TEST(ParentDistrust, AttachChecksParametersAndSize) {
    Arena a;
    CHECK(LockTable::check_region(a.table, a.size, a.p));
    TableParams other = a.p;
    other.capacity = a.p.capacity * 2;
    CHECK_FALSE(LockTable::check_region(a.table, a.size, other));
    CHECK_FALSE(LockTable(a.table, a.size, other, a.locks).valid());
    CHECK_FALSE(LockTable(a.table, a.size / 2, a.p, a.locks).valid());
    // A header claiming a bigger table than the region holds is refused.
    uint32_t big = 1u << 20;
    std::memcpy(static_cast<char *>(a.table) + 8, &big, sizeof big);  // capacity
    CHECK_FALSE(LockTable(a.table, a.size, a.p, a.locks).valid());
    CHECK_FALSE(LockTable::check_region(a.table, a.size, a.p));
}

// ------------------------------------------------------------- exit list

TEST_GROUP(ExitList) {
    void *mem = nullptr;
    void setup() override {
        mem = map_anon(ExitList::region_size());
        CHECK(ExitList::format(mem, ExitList::region_size()));
    }
    void teardown() override { munmap(mem, ExitList::region_size()); }
};

TEST(ExitList, PublishedExitsAreReadOnce) {
    ExitReader r;
    r.attach(mem);
    r.skip_to_now();
    int32_t pids[ExitList::kSlots];
    size_t n = 0;
    CHECK(r.poll(pids, n) == ExitReader::Poll::Nothing);
    uint64_t count = 0;
    ExitList::publish(mem, count, 101);
    ExitList::publish(mem, count, 102);
    CHECK_EQUAL(2u, count);
    CHECK(r.poll(pids, n) == ExitReader::Poll::Some);
    CHECK_EQUAL(2u, n);
    CHECK_EQUAL(101, pids[0]);
    CHECK_EQUAL(102, pids[1]);
    CHECK(r.poll(pids, n) == ExitReader::Poll::Nothing);
}

TEST(ExitList, OverrunOrNonsenseMeansLost) {
    ExitReader r;
    r.attach(mem);
    r.skip_to_now();
    uint64_t count = 0;
    for (int i = 0; i < static_cast<int>(ExitList::kSlots) + 1; ++i) ExitList::publish(mem, count, 1000 + i);
    int32_t pids[ExitList::kSlots];
    size_t n = 0;
    CHECK(r.poll(pids, n) == ExitReader::Poll::Lost);
    CHECK(r.poll(pids, n) == ExitReader::Poll::Nothing);
    // A child scribbled the count far ahead; the parent's next write puts it back.
    std::memset(mem, 0x7f, ExitList::region_size());
    CHECK(r.poll(pids, n) == ExitReader::Poll::Lost);
    ExitList::publish(mem, count, 7);
    CHECK(r.poll(pids, n) == ExitReader::Poll::Lost);
    ExitList::publish(mem, count, 8);
    CHECK(r.poll(pids, n) == ExitReader::Poll::Some);
    CHECK_EQUAL(1u, n);
    CHECK_EQUAL(8, pids[0]);
}

namespace {

struct BackendArena : Arena {
    LockTable *t = nullptr;
    TableBackend *b = nullptr;
    BackendArena() {
        t = new LockTable(table, size, p, locks);
        b = new TableBackend("shared", t);
        b->attach_exits(exits);
        b->start_child();
    }
    ~BackendArena() {
        delete b;
        delete t;
    }
};

// A forked process takes `key` for writing and waits to be killed.
pid_t fork_writer(LockTable *t, const char *key, std::atomic<int> *flag) {
    const pid_t pid = fork();
    if (pid == 0) {
        HolderInfo info;
        LockHandle h;
        if (t->acquire(key, std::strlen(key), Mode::Write, 0, info, h) == AcquireResult::Acquired) flag->store(1);
        for (;;) pause();
    }
    for (int i = 0; i < 5000 && flag->load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return pid;
}

}  // namespace

TEST(ExitList, ChildrenReapWhatTheParentReports) {
    BackendArena a;
    auto *flag = static_cast<std::atomic<int> *>(map_anon(sizeof(std::atomic<int>)));
    const pid_t kid = fork_writer(a.t, "k", flag);
    CHECK_EQUAL(1, flag->load());
    kill(kid, SIGKILL);
    waitpid(kid, nullptr, 0);
    CHECK_EQUAL(0, a.b->maintain());  // nothing reported yet
    uint64_t count = 0;
    ExitList::publish(a.exits, count, kid);  // the parent's child_status
    CHECK_EQUAL(1, a.b->maintain());
    CHECK_EQUAL(0, a.b->maintain());
    STRCMP_EQUAL("", a.t->check_consistency().c_str());
    munmap(flag, sizeof(std::atomic<int>));
}

// The exit list is writable by every child: a report of a live process (or a
// lost ring) frees nothing of it.
TEST(ExitList, FalseReportsFreeNoLiveLock) {
    BackendArena a;
    auto *flag = static_cast<std::atomic<int> *>(map_anon(sizeof(std::atomic<int>)));
    const pid_t kid = fork_writer(a.t, "k", flag);
    uint64_t count = 0;
    ExitList::publish(a.exits, count, kid);
    CHECK_EQUAL(0, a.b->maintain());
    std::memset(a.exits, 0xff, a.exits_size);  // lost: everyone is checked
    CHECK_EQUAL(0, a.b->maintain());
    HolderInfo info;
    LockHandle h;
    CHECK(a.t->acquire("k", 1, Mode::Read, 0, info, h) == AcquireResult::Busy);
    kill(kid, SIGKILL);
    waitpid(kid, nullptr, 0);
    munmap(flag, sizeof(std::atomic<int>));
}

TEST(ExitList, SnapshotShowsTheGenerationTheGlueSets) {
    BackendArena a;
    a.b->set_generation(7);
    TableSnapshot s;
    CHECK(a.b->snapshot(s, nullptr));
    CHECK_EQUAL(7u, s.generation);
}

// ---------------------------------------------------------------- SipHash

// The 64 vectors of the SipHash paper's reference code: SipHash-2-4 with
// the key 00 01 .. 0f of the messages (), (00), (00 01), ... (00 .. 3e),
// as 64-bit values (the paper's appendix works the 15-byte one through:
// a129ca6149be45e5).
TEST_GROUP(SipHash) {};

TEST(SipHash, ReferenceVectors) {
    static const uint64_t expect[64] = {
        0x726fdb47dd0e0e31ull, 0x74f839c593dc67fdull, 0x0d6c8009d9a94f5aull, 0x85676696d7fb7e2dull,
        0xcf2794e0277187b7ull, 0x18765564cd99a68dull, 0xcbc9466e58fee3ceull, 0xab0200f58b01d137ull,
        0x93f5f5799a932462ull, 0x9e0082df0ba9e4b0ull, 0x7a5dbbc594ddb9f3ull, 0xf4b32f46226bada7ull,
        0x751e8fbc860ee5fbull, 0x14ea5627c0843d90ull, 0xf723ca908e7af2eeull, 0xa129ca6149be45e5ull,
        0x3f2acc7f57c29bdbull, 0x699ae9f52cbe4794ull, 0x4bc1b3f0968dd39cull, 0xbb6dc91da77961bdull,
        0xbed65cf21aa2ee98ull, 0xd0f2cbb02e3b67c7ull, 0x93536795e3a33e88ull, 0xa80c038ccd5ccec8ull,
        0xb8ad50c6f649af94ull, 0xbce192de8a85b8eaull, 0x17d835b85bbb15f3ull, 0x2f2e6163076bcfadull,
        0xde4daaaca71dc9a5ull, 0xa6a2506687956571ull, 0xad87a3535c49ef28ull, 0x32d892fad841c342ull,
        0x7127512f72f27cceull, 0xa7f32346f95978e3ull, 0x12e0b01abb051238ull, 0x15e034d40fa197aeull,
        0x314dffbe0815a3b4ull, 0x027990f029623981ull, 0xcadcd4e59ef40c4dull, 0x9abfd8766a33735cull,
        0x0e3ea96b5304a7d0ull, 0xad0c42d6fc585992ull, 0x187306c89bc215a9ull, 0xd4a60abcf3792b95ull,
        0xf935451de4f21df2ull, 0xa9538f0419755787ull, 0xdb9acddff56ca510ull, 0xd06c98cd5c0975ebull,
        0xe612a3cb9ecba951ull, 0xc766e62cfcadaf96ull, 0xee64435a9752fe72ull, 0xa192d576b245165aull,
        0x0a8787bf8ecb74b2ull, 0x81b3e73d20b49b6full, 0x7fa8220ba3b2eceaull, 0x245731c13ca42499ull,
        0xb78dbfaf3a8d83bdull, 0xea1ad565322a1a0bull, 0x60e61c23a3795013ull, 0x6606d7e446282b93ull,
        0x6ca4ecb15c5f91e1ull, 0x9f626da15c9625f3ull, 0xe51b38608ef25f57ull, 0x958a324ceb064572ull,
    };
    unsigned char key[16], msg[64];
    for (int i = 0; i < 16; ++i) key[i] = static_cast<unsigned char>(i);
    for (int i = 0; i < 64; ++i) msg[i] = static_cast<unsigned char>(i);
    for (size_t n = 0; n < 64; ++n) {
        const uint64_t got = siphash24(key, msg, n);
        if (got != expect[n]) FAIL(("message of " + std::to_string(n) + " bytes").c_str());
    }
}

TEST(SipHash, TheKeyMatters) {
    unsigned char k1[16] = {0}, k2[16] = {0};
    k2[15] = 1;
    CHECK(siphash24(k1, "doi:10.5063/F1", 14) != siphash24(k2, "doi:10.5063/F1", 14));
}

// Tables formatted with different keys place keys differently; each is
// consistent with its own key (check_consistency rehashes every key).
TEST(SipHash, TablesUseTheirOwnKey) {
    TableParams p;
    p.capacity = 64;
    p.key_cap = 32;
    p.stripes = 4;
    const size_t size = LockTable::region_size(p);
    void *m1 = map_anon(size), *m2 = map_anon(size), *lm = map_anon(PthreadStripeLocks::region_size(4));
    PthreadStripeLocks::init(lm, 4, true);
    PthreadStripeLocks locks(lm, 4);
    unsigned char ka[16] = {1}, kb[16] = {2};
    CHECK(LockTable::format(m1, size, p, ka));
    CHECK(LockTable::format(m2, size, p, kb));
    LockTable t1(m1, size, p, &locks), t2(m2, size, p, &locks);
    HolderInfo info;
    LockHandle h1[20], h2[20];
    char key[16];
    for (int i = 0; i < 20; ++i) {
        std::snprintf(key, sizeof key, "k%d", i);
        CHECK(t1.acquire(key, std::strlen(key), Mode::Read, 0, info, h1[i]) == AcquireResult::Acquired);
        CHECK(t2.acquire(key, std::strlen(key), Mode::Read, 0, info, h2[i]) == AcquireResult::Acquired);
    }
    STRCMP_EQUAL("", t1.check_consistency().c_str());
    STRCMP_EQUAL("", t2.check_consistency().c_str());
    for (int i = 0; i < 20; ++i) {
        t1.release(h1[i]);
        t2.release(h2[i]);
    }
    munmap(m1, size);
    munmap(m2, size);
    munmap(lm, PthreadStripeLocks::region_size(4));
}

// A new child audits the table before it uses it: whatever a hostile
// process left (random words, self-linked chains) is rebuilt, and live
// locks survive.
TEST(ParentDistrust, NewChildAuditRebuildsAScribbledTable) {
    for (int kind = 0; kind < 2; ++kind) {
        Arena a;
        LockTable t(a.table, a.size, a.p, a.locks);
        HolderInfo info;
        LockHandle first, live;
        // The corruption reuses the first entry and record: not the live lock's.
        CHECK(t.acquire("first", 5, Mode::Write, 0, info, first) == AcquireResult::Acquired);
        CHECK(t.acquire("live", 4, Mode::Write, 0, info, live) == AcquireResult::Acquired);
        t.release(first);
        CHECK_EQUAL(0, t.audit());
        if (kind == 0) {
            CHECK(t.test_corrupt(LockTable::Corruption::SelfLinkedChain));
        } else {
            // Random words past the fixed header fields.
            std::mt19937_64 rng(7);
            auto *w = static_cast<uint64_t *>(a.table);
            for (size_t i = 64 / 8; i < a.size / 8; i += 1 + rng() % 16) w[i] = rng() % 3 ? rng() : rng() % 64;
        }
        CHECK(t.audit() >= 0);
        STRCMP_EQUAL_TEXT("", t.check_consistency().c_str(), kind ? "random words" : "self-linked chain");
        CHECK(t.reap(0) >= 0);
        LockHandle h;
        CHECK(t.acquire("other", 5, Mode::Write, 0, info, h) == AcquireResult::Acquired);
        t.release(h);
        t.release(live);
        STRCMP_EQUAL("", t.check_consistency().c_str());
    }
}
