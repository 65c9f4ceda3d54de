// Helpers the concurrency tests share: memory that fork()ed children share
// with their parent, and a critical section of random length.
#ifndef PIDLOCK_TEST_CONCURRENCY_H
#define PIDLOCK_TEST_CONCURRENCY_H

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <random>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "pidlock_lease.h"
#include "pidlock_locks.h"
#include "pidlock_table.h"

#include <sched.h>
#include <sys/mman.h>

// Anonymous MAP_SHARED memory, zeroed; null if it cannot be had.
inline void *map_shared(size_t n) {
    void *p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

// Stays inside a critical section for a random while, now and then giving
// the CPU away, so that overlaps have a chance to happen.
inline void hold_briefly(std::mt19937 &rng) {
    const int spins = static_cast<int>(rng() % 200);
    for (volatile int i = 0; i < spins; ++i) {}
    if (rng() % 4 == 0) sched_yield();
}

// `procs` forked processes each call try_win(proc, round) for rounds
// 0..rounds-1, all starting once every one is ready (`ready(proc)` first,
// e.g. to connect); returns, per round, how many calls said they won (-1 in
// every round if a process failed).
inline std::vector<int> race_forked(int procs, int rounds, const std::function<bool(int, int)> &try_win,
                                    const std::function<void(int)> &ready = nullptr) {
    // wins[0..rounds-1], then the count of processes ready to start.
    const size_t bytes = sizeof(std::atomic<int>) * static_cast<size_t>(rounds + 1);
    auto *wins = static_cast<std::atomic<int> *>(map_shared(bytes));
    std::atomic<int> &started = wins[rounds];
    std::vector<pid_t> kids;
    for (int n = 0; n < procs; ++n) {
        const pid_t pid = fork();
        if (pid == 0) {
            if (ready) ready(n);
            ++started;
            // Bounded: a sibling that died before it was ready fails the
            // race (its exit status), it does not hang it.
            const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
            while (started.load() < procs && std::chrono::steady_clock::now() < give_up) sched_yield();
            for (int round = 0; round < rounds; ++round)
                if (try_win(n, round)) ++wins[round];
            _exit(0);
        }
        kids.push_back(pid);
    }
    bool ok = true;
    for (pid_t pid : kids) {
        int status = 0;
        waitpid(pid, &status, 0);
        ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    std::vector<int> out(static_cast<size_t>(rounds), -1);
    if (ok)
        for (int round = 0; round < rounds; ++round) out[static_cast<size_t>(round)] = wins[round].load();
    munmap(wins, bytes);
    return out;
}

namespace pidlock {

// `n` process-shared pthread stripe mutexes in memory forked children
// share; `locks` is null if they could not be made.
struct StripeLocksInShm {
    uint32_t n;
    void *mem;
    PthreadStripeLocks *locks = nullptr;
    explicit StripeLocksInShm(uint32_t count) : n(count), mem(map_shared(PthreadStripeLocks::region_size(count))) {
        if (mem && PthreadStripeLocks::init(mem, n, true) == 0) locks = new PthreadStripeLocks(mem, n);
    }
    ~StripeLocksInShm() {
        delete locks;
        if (mem) munmap(mem, PthreadStripeLocks::region_size(n));
    }
    StripeLocksInShm(const StripeLocksInShm &) = delete;
    StripeLocksInShm &operator=(const StripeLocksInShm &) = delete;
};

// A lock table in memory forked children share, with process-shared
// pthread stripe mutexes.
struct TableInShm {
    TableParams p;
    size_t size = 0;
    void *mem = nullptr;
    StripeLocksInShm stripes;
    LockTable *table = nullptr;
    explicit TableInShm(uint32_t capacity, uint32_t nstripes = 4, uint32_t key_cap = 64) : stripes(nstripes) {
        p.capacity = capacity;
        p.key_cap = key_cap;
        p.stripes = nstripes;
        size = LockTable::region_size(p);
        mem = map_shared(size);
        LockTable::format(mem, size, p);
        table = new LockTable(mem, size, p, stripes.locks);
    }
    ~TableInShm() {
        delete table;
        munmap(mem, size);
    }
};

// A lease table (capacity 4, keys up to 64 bytes) in memory forked children
// share, with one process-shared pthread mutex; `ok` if it was made.
struct LeaseTableInShm {
    LeaseParams p;
    size_t size = 0;
    void *mem = nullptr;
    StripeLocksInShm mutex{1};
    LeaseTable *table = nullptr;
    bool ok = false;
    LeaseTableInShm() {
        p.capacity = 4;
        p.key_cap = 64;
        size = LeaseTable::region_size(p);
        mem = map_shared(size);
        if (!mem || !mutex.locks || !LeaseTable::format(mem, size, p)) return;
        table = new LeaseTable(mem, mutex.locks);
        ok = table->valid();
    }
    ~LeaseTableInShm() {
        delete table;
        if (mem) munmap(mem, size);
    }
    LeaseTableInShm(const LeaseTableInShm &) = delete;
    LeaseTableInShm &operator=(const LeaseTableInShm &) = delete;
};

}  // namespace pidlock

#endif
