// The lock table's fast path under failure: processes stopped inside a
// stripe's critical section, killed at random with -9 while they hold and
// wait, fast holders that die behind waiters, clients that hang up while
// their request waits. Each concurrency check has a twin that must fail
// (locking off, or the parent's old blocking path), so a silent harness
// cannot pass.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "concurrency.h"
#include "pidlock_exits.h"
#include "pidlock_locks.h"
#include "pidlock_table.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

// Runs `fn` in a forked process for at most `ms`: "ok" if it returned 0,
// "hung" if it had to be killed.
template <typename Fn>
std::string bounded(Fn fn, int ms) {
    const pid_t pid = fork();
    if (pid == 0) _exit(fn());
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > until) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return "hung";
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (WIFSIGNALED(status)) return "crashed";
    return WEXITSTATUS(status) == 0 ? "ok" : "failed " + std::to_string(WEXITSTATUS(status));
}

// Until the table's first lock has a writer waiting (at most 5 s).
void wait_for_queued_writer(LockTable &t) {
    for (int n = 0; n < 5000; ++n) {
        TableSnapshot snap;
        t.snapshot(snap);
        if (!snap.locks.empty() && snap.locks[0].waiting_write == 1) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

}  // namespace

TEST_GROUP(FastPath) {};

// A child stopped (SIGSTOP) while it holds the stripe mutex of "a": other
// processes still take and release "a" (the fast path takes no mutex), and
// what httpd's parent runs (check and attach the region, publish exits)
// returns. The twin: reap(), which enters every stripe, is caught hanging.
TEST(FastPath, StoppedChildInsideAStripeBlocksNeitherFastPathNorParent) {
    TableInShm s(64);
    HolderInfo info;
    LockHandle h;
    CHECK(s.table->acquire("a", 1, Mode::Read, 0, info, h) == AcquireResult::Acquired);  // "a" exists
    CHECK_EQUAL(0, s.table->release(h));
    const size_t exits_size = ExitList::region_size();
    void *exits = map_shared(exits_size);
    ExitList::format(exits, exits_size);
    const pid_t kid = fork();
    if (kid == 0) {
        s.table->test_abandon_inside("a", 1, 0);  // returns holding the mutex
        raise(SIGSTOP);
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(kid, &status, WUNTRACED) == kid && WIFSTOPPED(status));
    STRCMP_EQUAL("ok", bounded(
                           [&] {
                               LockTable t(s.mem, s.size, s.p, s.stripes.locks);
                               HolderInfo i;
                               for (int n = 0; n < 1000; ++n) {
                                   LockHandle x;
                                   const Mode m = n % 2 ? Mode::Write : Mode::Read;
                                   if (t.acquire("a", 1, m, 0, i, x) != AcquireResult::Acquired) return 1;
                                   if (t.release(x) != 0) return 2;
                               }
                               uint64_t published = 0;
                               for (int n = 0; n < 200; ++n) {
                                   if (!LockTable::check_region(s.mem, s.size, s.p)) return 3;
                                   LockTable again(s.mem, s.size, s.p, s.stripes.locks);
                                   if (!again.valid()) return 4;
                                   ExitList::publish(exits, published, 5000 + n);
                               }
                               return 0;
                           },
                           3000)
                           .c_str());
    // The twin: a path that takes the mutex is stuck behind the stopped child.
    STRCMP_EQUAL("hung", bounded(
                             [&] {
                                 LockTable t(s.mem, s.size, s.p, s.stripes.locks);
                                 return t.reap(0) >= 0 ? 0 : 1;
                             },
                             300)
                             .c_str());
    kill(kid, SIGKILL);
    waitpid(kid, nullptr, 0);
    CHECK(s.table->reap(kid) >= 0);  // enters the stripe: repaired after the death inside
    STRCMP_EQUAL("", s.table->check_consistency().c_str());
    munmap(exits, exits_size);
}

namespace {

// Who is inside each key now, per worker slot (pid, mode), so that a
// worker killed inside its critical section can be told from a real
// overlap: only live conflicting workers count.
constexpr int kWorkers = 4, kKeys = 3;
struct Inside {
    std::atomic<int32_t> pid[kWorkers][kKeys];
    std::atomic<int> mode[kWorkers][kKeys];
    std::atomic<int> violations;
    std::atomic<long> ops;
};

bool conflicting_alive(Inside *in, int self, int k, Mode m) {
    for (int w = 0; w < kWorkers; ++w) {
        if (w == self) continue;
        const int other = in->mode[w][k].load();
        if (other == 0) continue;
        if (m == Mode::Read && other != static_cast<int>(Mode::Write)) continue;
        const int32_t pid = in->pid[w][k].load();
        if (pid != 0 && process_state(pid, 0) == ProcessState::Alive) return true;
    }
    return false;
}

[[noreturn]] void stress_worker(LockTable *t, Inside *in, int self, unsigned seed, bool locking) {
    std::mt19937 rng(seed);
    HolderInfo info;
    info.method = "PUT";
    const int32_t me = static_cast<int32_t>(getpid());
    for (;;) {
        const int k = static_cast<int>(rng() % kKeys);
        const Mode m = rng() % 3 == 0 ? Mode::Write : Mode::Read;
        const std::string key = "s" + std::to_string(k);
        LockHandle h;
        if (locking && t->acquire(key.data(), key.size(), m, 2 * 1000000000LL, info, h) != AcquireResult::Acquired)
            continue;
        in->pid[self][k].store(me);
        in->mode[self][k].store(static_cast<int>(m));
        if (conflicting_alive(in, self, k, m)) ++in->violations;
        hold_briefly(rng);
        if (conflicting_alive(in, self, k, m)) ++in->violations;
        in->mode[self][k].store(0);
        if (locking) t->release(h);
        ++in->ops;
    }
}

// Workers on a few keys, one killed with -9 every few ms and replaced, for
// `kills` kills; returns the violations seen. Afterwards every key is had
// by a writer within a second, and the table is sound.
int kill_stress(bool locking, int kills) {
    TableInShm s(32);
    auto *in = static_cast<Inside *>(map_shared(sizeof(Inside)));
    pid_t kids[kWorkers];
    unsigned seed = 1;
    auto start = [&](int w) {
        const pid_t pid = fork();
        if (pid == 0) stress_worker(s.table, in, w, seed, locking);
        ++seed;
        kids[w] = pid;
    };
    for (int w = 0; w < kWorkers; ++w) start(w);
    std::mt19937 rng(99);
    for (int i = 0; i < kills; ++i) {
        std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 3000));
        const int w = static_cast<int>(rng() % kWorkers);
        kill(kids[w], SIGKILL);
        waitpid(kids[w], nullptr, 0);
        for (int k = 0; k < kKeys; ++k) in->mode[w][k].store(0);
        if (locking && i % 2 == 0) s.table->reap(kids[w]);  // as a child does on the MPM's report, now and then
        start(w);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (int w = 0; w < kWorkers; ++w) {
        kill(kids[w], SIGKILL);
        waitpid(kids[w], nullptr, 0);
    }
    CHECK(in->ops.load() > 0);
    const int violations = in->violations.load();
    if (locking) {
        HolderInfo info;
        for (int k = 0; k < kKeys; ++k) {
            const std::string key = "s" + std::to_string(k);
            LockHandle h;
            const AcquireResult r = s.table->acquire(key.data(), key.size(), Mode::Write, 1000000000LL, info, h);
            if (r != AcquireResult::Acquired) {
                TableSnapshot snap;
                s.table->snapshot(snap);
                std::string why = key + ": result " + std::to_string(static_cast<int>(r));
                for (const LockView &l : snap.locks) {
                    why += "; " + l.key + " mode " + mode_name(l.mode) + " wr " + std::to_string(l.waiting_read) +
                           " ww " + std::to_string(l.waiting_write);
                    for (const HolderView &hv : l.holders)
                        why += " [" + std::to_string(hv.pid) + (hv.waiting ? " waiting " : " holding ") +
                               mode_name(hv.mode) + "]";
                }
                FAIL(why.c_str());
            }
            s.table->release(h);
        }
        CHECK(s.table->reap(0) >= 0);
        STRCMP_EQUAL("", s.table->check_consistency().c_str());
    }
    munmap(in, sizeof(Inside));
    return violations;
}

}  // namespace

TEST(FastPath, KillNineInALoopNeverOverlapsAndLeavesATableThatWorks) {
    CHECK_EQUAL(0, kill_stress(true, 60));
}

TEST(FastPath, KillNineWitnessCatchesOverlapWhenUnlocked) {
    CHECK(kill_stress(false, 10) > 0);
}

// A fast-path reader and a fast-path writer killed while requests wait
// behind them: every waiter gets in (each waiter checks its holders' lives
// in slices of its wait), and the dead holders are counted as reaped.
TEST(FastPath, WaitersGetPastKilledFastHolders) {
    TableInShm s(64);
    auto *flag = static_cast<std::atomic<int> *>(map_shared(sizeof(std::atomic<int>) * 2));
    for (const Mode held : {Mode::Read, Mode::Write}) {
        flag[0] = 0;
        const pid_t kid = fork();
        if (kid == 0) {
            HolderInfo info;
            LockHandle h;
            if (s.table->acquire("k", 1, held, 0, info, h) == AcquireResult::Acquired) flag[0] = 1;
            for (;;) pause();
        }
        for (int i = 0; i < 5000 && flag[0].load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        CHECK_EQUAL(1, flag[0].load());
        TableSnapshot snap;
        CHECK(s.table->snapshot(snap));
        CHECK_EQUAL(1u, snap.locks.size());
        CHECK_EQUAL(kid, snap.locks[0].holders.at(0).pid);  // the fast holder is on the status page
        std::atomic<int> got{0};
        std::vector<std::thread> waiters;
        const Mode modes[] = {Mode::Write, Mode::Read, Mode::Read};
        for (Mode m : modes) {
            waiters.emplace_back([&, m] {
                HolderInfo info;
                LockHandle h;
                if (s.table->acquire("k", 1, m, 5 * 1000000000LL, info, h) == AcquireResult::Acquired) {
                    ++got;
                    s.table->release(h);
                }
            });
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        kill(kid, SIGKILL);
        waitpid(kid, nullptr, 0);
        for (auto &t : waiters) t.join();
        CHECK_EQUAL(3, got.load());
        CHECK(s.table->reap(0) >= 0);
        STRCMP_EQUAL("", s.table->check_consistency().c_str());
    }
    TableSnapshot snap;
    CHECK(s.table->snapshot(snap));
    CHECK_EQUAL(2u, snap.counters.reaped);
    CHECK_EQUAL(0u, snap.used);
    munmap(flag, sizeof(std::atomic<int>) * 2);
}

// A waiter whose client hangs up (its socket's peer closes) leaves the
// queue with ClientGone, is counted, and is never granted; one whose
// callback says the client is gone (an HTTP/2 stream reset) likewise.
TEST(FastPath, ClientThatHangsUpLeavesTheQueue) {
    TableInShm s(64);
    HolderInfo info;
    LockHandle writer;
    CHECK(s.table->acquire("k", 1, Mode::Write, 0, info, writer) == AcquireResult::Acquired);
    int sv[2];
    CHECK_EQUAL(0, socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    std::atomic<bool> reset{false};
    std::atomic<int> by_socket{-1}, by_callback{-1};
    std::thread a([&] {
        HolderInfo i;
        i.client_fd = sv[0];
        LockHandle h;
        by_socket = static_cast<int>(s.table->acquire("k", 1, Mode::Read, 30 * 1000000000LL, i, h));
        s.table->release(h);
    });
    std::thread b([&] {
        HolderInfo i;
        i.client_gone = [](void *arg) { return static_cast<std::atomic<bool> *>(arg)->load(); };
        i.client_gone_arg = &reset;
        LockHandle h;
        by_callback = static_cast<int>(s.table->acquire("k", 1, Mode::Write, 30 * 1000000000LL, i, h));
        s.table->release(h);
    });
    for (int n = 0; n < 5000; ++n) {
        TableSnapshot snap;
        s.table->snapshot(snap);
        if (!snap.locks.empty() && snap.locks[0].waiting_read + snap.locks[0].waiting_write == 2) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    close(sv[1]);
    reset = true;
    a.join();
    b.join();
    CHECK_EQUAL(static_cast<int>(AcquireResult::ClientGone), by_socket.load());
    CHECK_EQUAL(static_cast<int>(AcquireResult::ClientGone), by_callback.load());
    TableSnapshot snap;
    CHECK(s.table->snapshot(snap));
    CHECK_EQUAL(2u, snap.counters.client_gone);
    CHECK_EQUAL(0u, snap.counters.timeouts);
    CHECK_EQUAL(0u, snap.locks.at(0).waiting_read + snap.locks.at(0).waiting_write);
    CHECK_EQUAL(1u, snap.counters.acquired_write);  // only the holder was ever granted
    CHECK_EQUAL(0u, snap.counters.acquired_read);
    CHECK_EQUAL(0, s.table->release(writer));
    close(sv[0]);
    STRCMP_EQUAL("", s.table->check_consistency().c_str());
}

// The fast path keeps the guarantees: a queued writer blocks later readers
// (they stop taking the fast path), and a release admits what waits.
TEST(FastPath, QueuedWriterTurnsReadersToTheQueue) {
    TableInShm s(64);
    HolderInfo info;
    LockHandle r1, r2;
    CHECK(s.table->acquire("q", 1, Mode::Read, 0, info, r1) == AcquireResult::Acquired);
    CHECK(r1.record & LockHandle::kSlotBit);  // taken on the fast path
    std::atomic<int> w_state{0};
    std::thread w([&] {
        LockHandle h;
        w_state = s.table->acquire("q", 1, Mode::Write, 5 * 1000000000LL, info, h) == AcquireResult::Acquired ? 2 : 3;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        s.table->release(h);
    });
    wait_for_queued_writer(*s.table);
    CHECK(s.table->acquire("q", 1, Mode::Read, 0, info, r2) == AcquireResult::Busy);  // behind the writer
    CHECK_EQUAL(0, w_state.load());
    CHECK_EQUAL(0, s.table->release(r1));
    CHECK_EQUAL(0, s.table->release(r1));  // idempotent
    w.join();
    CHECK_EQUAL(2, w_state.load());
    // Once nothing is queued, the fast path again.
    CHECK(s.table->acquire("q", 1, Mode::Read, 0, info, r2) == AcquireResult::Acquired);
    CHECK(r2.record & LockHandle::kSlotBit);
    CHECK_EQUAL(0, s.table->release(r2));
    STRCMP_EQUAL("", s.table->check_consistency().c_str());
}

// LockTable::acquire_at_once: true only where the fast path takes the key
// at once; false, with nothing held, no waiter queued and no counter
// moved, for a key without an entry, a key held against the mode, and a
// key with a queued waiter. acquire() then decides as before.
TEST(FastPath, AcquireAtOnceTakesOnlyWhatTheFastPathCan) {
    TableInShm s(64);
    HolderInfo info;
    LockHandle h, w, r;
    const auto counters = [&] {
        TableSnapshot snap;
        CHECK(s.table->snapshot(snap));
        return snap.counters;
    };
    CHECK(!s.table->acquire_at_once("k", 1, Mode::Read, info, h));  // no entry yet
    CHECK(!h.held());
    CHECK(s.table->acquire("k", 1, Mode::Read, 0, info, h) == AcquireResult::Acquired);  // inserts it
    CHECK_EQUAL(0, s.table->release(h));
    CHECK(s.table->acquire_at_once("k", 1, Mode::Read, info, h));
    CHECK(h.record & LockHandle::kSlotBit);
    CHECK(s.table->acquire_at_once("k", 1, Mode::Read, info, r));  // readers share
    const Counters before = counters();
    CHECK(!s.table->acquire_at_once("k", 1, Mode::Write, info, w));  // held by readers
    CHECK(!w.held());
    const Counters after = counters();
    CHECK_EQUAL(before.waited, after.waited);
    CHECK_EQUAL(before.timeouts, after.timeouts);
    CHECK_EQUAL(before.acquired_write, after.acquired_write);
    CHECK_EQUAL(0, s.table->release(r));
    // A writer queued behind the reader: later readers go to the queue.
    std::thread t([&] {
        LockHandle x;
        if (s.table->acquire("k", 1, Mode::Write, 5 * 1000000000LL, info, x) == AcquireResult::Acquired)
            s.table->release(x);
    });
    wait_for_queued_writer(*s.table);
    CHECK(!s.table->acquire_at_once("k", 1, Mode::Read, info, r));
    CHECK(!r.held());
    CHECK_EQUAL(0, s.table->release(h));
    t.join();
    CHECK(s.table->acquire_at_once("k", 1, Mode::Write, info, w));
    CHECK_EQUAL(0, s.table->release(w));
    // Keys the table refuses are refused here too, without a fault.
    CHECK(!s.table->acquire_at_once("", 0, Mode::Read, info, h));
    CHECK(!s.table->acquire_at_once("k", 1, Mode::None, info, h));
    STRCMP_EQUAL("", s.table->check_consistency().c_str());
}
