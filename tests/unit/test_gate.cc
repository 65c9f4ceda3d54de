// The upgrade gate (pidlock_gate.h): a closed gate holds every lock request
// of the new generation within its deadline, an open one costs nothing, the
// parent's side never reads the segment, and the list of old processes
// follows /proc.
#include <atomic>
#include <csignal>
#include <cstring>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pidlock_backend.h"
#include "pidlock_gate.h"
#include "pidlock_locks.h"
#include "pidlock_table.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

struct GateTable {
    std::vector<char> locks_mem;
    std::vector<char> table_mem;
    std::vector<char> gate_mem;
    PthreadStripeLocks *locks = nullptr;
    LockTable *table = nullptr;
    TableBackend *backend = nullptr;

    explicit GateTable(bool open) {
        TableParams p;
        p.capacity = 16;
        p.key_cap = 64;
        p.stripes = 4;
        locks_mem.resize(PthreadStripeLocks::region_size(p.stripes));
        PthreadStripeLocks::init(locks_mem.data(), p.stripes, false);
        locks = new PthreadStripeLocks(locks_mem.data(), p.stripes);
        table_mem.resize(LockTable::region_size(p) + 64);
        char *base = table_mem.data() + (64 - reinterpret_cast<uintptr_t>(table_mem.data()) % 64) % 64;
        LockTable::format(base, LockTable::region_size(p), p);
        table = new LockTable(base, locks);
        backend = new TableBackend("shared", table);
        gate_mem.resize(UpgradeGate::region_size() + 64);
        UpgradeGate::format(gate(), UpgradeGate::region_size(), open);
        backend->attach_gate(gate());
    }
    ~GateTable() {
        delete backend;
        delete table;
        delete locks;
    }
    void *gate() { return gate_mem.data() + (64 - reinterpret_cast<uintptr_t>(gate_mem.data()) % 64) % 64; }
    AcquireResult take(const char *key, Mode m, int64_t deadline, LockSet &set, BusyReport *rep = nullptr) {
        KeyRef k{key, strlen(key)};
        HolderInfo info;
        int err = 0;
        return backend->acquire_all(&k, 1, m, deadline, info, set, rep, &err);
    }
};

}  // namespace

TEST_GROUP(Gate) {};

TEST(Gate, OpenGateLetsLocksThrough) {
    GateTable g(true);
    LockSet set;
    CHECK(g.take("a", Mode::Write, 0, set) == AcquireResult::Acquired);
    CHECK_EQUAL(0, g.backend->release_all(set));
}

TEST(Gate, ClosedGateAnswersBusyDrainingAtTheDeadline) {
    GateTable g(false);
    LockSet set;
    BusyReport rep;
    CHECK(g.take("pid-1", Mode::Read, monotonic_ns() + 20000000, set, &rep) == AcquireResult::Busy);
    CHECK(rep.draining);
    STRCMP_EQUAL("pid-1", rep.key.c_str());
    CHECK(set.empty());
    // Nothing was taken: the table is empty.
    TableSnapshot snap;
    CHECK(g.backend->snapshot(snap, nullptr));
    CHECK_EQUAL(0u, snap.locks.size());
}

TEST(Gate, AWaiterGetsInWhenTheGateOpens) {
    GateTable g(false);
    std::atomic<bool> opened{false};
    std::thread parent([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        opened.store(true);
        UpgradeGate::open(g.gate());
    });
    LockSet set;
    const AcquireResult res = g.take("pid-2", Mode::Write, monotonic_ns() + 10000000000LL, set);
    const bool was_open = opened.load();
    parent.join();
    CHECK(res == AcquireResult::Acquired);
    CHECK(was_open);
    g.backend->release_all(set);
}

// acquire_within (the request path's, one key) is held by the gate too.
TEST(Gate, AcquireWithinWaitsBehindTheGate) {
    GateTable g(false);
    KeyRef k{"pid-3", 5};
    HolderInfo info;
    LockSet set;
    BusyReport rep;
    int err = 0;
    CHECK(g.backend->acquire_within(&k, 1, Mode::Read, 20000000, info, set, &rep, &err) == AcquireResult::Busy);
    CHECK(rep.draining);
    CHECK(set.empty());
    UpgradeGate::open(g.gate());
    CHECK(g.backend->acquire_within(&k, 1, Mode::Read, 0, info, set, &rep, &err) == AcquireResult::Acquired);
    CHECK_EQUAL(0, g.backend->release_all(set));
}

// A child may scribble the word: anything but "closed" counts as open, so
// a scribble can only let its own generation in, never shut others out.
TEST(Gate, AScribbledWordCountsAsOpen) {
    GateTable g(false);
    std::memset(g.gate(), 0xA5, 4);
    LockSet set;
    CHECK(g.take("pid-3", Mode::Write, 0, set) == AcquireResult::Acquired);
    g.backend->release_all(set);
}

// httpd's parent attaches (before it forks) and opens the gate; neither
// reads the segment. Here the segment cannot be read at all.
TEST(Gate, TheParentsSideNeverReadsTheSegment) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void *mem = mmap(nullptr, page, PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED);
    CHECK(UpgradeGate::format(mem, UpgradeGate::region_size(), false));
    CHECK_EQUAL(0, mprotect(mem, page, PROT_NONE));
    GateReader r;
    r.attach(mem);  // a read would be a SIGSEGV
    CHECK_EQUAL(0, mprotect(mem, page, PROT_WRITE));
    UpgradeGate::open(mem);
    CHECK_EQUAL(0, mprotect(mem, page, PROT_READ));
    CHECK(r.is_open());
    munmap(mem, page);
}

TEST(Gate, OldProcessesFollowProc) {
    OldProcess procs[4];
    size_t n = 0;
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    CHECK(child > 0);
    n = old_add(procs, n, 4, child);
    CHECK_EQUAL(1u, n);
    n = old_add(procs, n, 4, child);  // once only
    CHECK_EQUAL(1u, n);
    n = old_add(procs, n, 4, getpid());
    CHECK_EQUAL(2u, n);
    n = old_add(procs, n, 2, getppid());  // no room
    CHECK_EQUAL(2u, n);
    CHECK_EQUAL(2u, old_prune(procs, n));
    kill(child, SIGKILL);
    // A zombie (not reaped yet) is gone.
    for (int i = 0; i < 200 && n == 2; ++i) {
        n = old_prune(procs, n, child);
        if (n == 2) usleep(5000);
    }
    CHECK_EQUAL(1u, n);
    CHECK_EQUAL(static_cast<int32_t>(getpid()), procs[0].pid);
    int status = 0;
    waitpid(child, &status, 0);
    // A process that is already gone is never added.
    CHECK_EQUAL(1u, old_add(procs, n, 4, child));
    // A pruning aimed at one pid leaves the others alone.
    CHECK_EQUAL(1u, old_prune(procs, n, child));
}

// acquire_at_once (the request path's common case) never passes a closed
// gate: it answers false and takes nothing; once the gate opens it takes
// the key of an existing entry at once.
TEST(Gate, AcquireAtOnceNeverPassesAClosedGate) {
    GateTable g(false);
    const KeyRef k{"pid-4", 5};
    HolderInfo info;
    LockHandle h;
    CHECK(g.table->acquire("pid-4", 5, Mode::Read, 0, info, h) == AcquireResult::Acquired);  // an entry exists
    CHECK_EQUAL(0, g.table->release(h));
    LockSet set;
    CHECK(!g.backend->acquire_at_once(k, Mode::Write, info, set));
    CHECK(set.empty());
    UpgradeGate::open(g.gate());
    CHECK(g.backend->acquire_at_once(k, Mode::Write, info, set));
    CHECK_EQUAL(1u, set.size());
    CHECK(set.fence() != 0);  // a write's fence, as acquire_all gives
    CHECK_EQUAL(0, g.backend->release_all(set));
    STRCMP_EQUAL("", g.table->check_consistency().c_str());
}
