// Helpers the concurrency tests share: memory that fork()ed children share
// with their parent, and a critical section of random length.
#ifndef PIDLOCK_TEST_CONCURRENCY_H
#define PIDLOCK_TEST_CONCURRENCY_H

#include <cstddef>
#include <random>

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

namespace pidlock {

// A lock table in memory forked children share, with process-shared
// pthread stripe mutexes.
struct TableInShm {
    TableParams p;
    size_t size = 0;
    void *mem = nullptr, *locks_mem = nullptr;
    PthreadStripeLocks *locks = nullptr;
    LockTable *table = nullptr;
    explicit TableInShm(uint32_t capacity, uint32_t stripes = 4, uint32_t key_cap = 64) {
        p.capacity = capacity;
        p.key_cap = key_cap;
        p.stripes = stripes;
        size = LockTable::region_size(p);
        mem = map_shared(size);
        locks_mem = map_shared(PthreadStripeLocks::region_size(stripes));
        PthreadStripeLocks::init(locks_mem, stripes, true);
        locks = new PthreadStripeLocks(locks_mem, stripes);
        LockTable::format(mem, size, p);
        table = new LockTable(mem, size, p, locks);
    }
    ~TableInShm() {
        delete table;
        delete locks;
        munmap(mem, size);
        munmap(locks_mem, PthreadStripeLocks::region_size(p.stripes));
    }
};

}  // namespace pidlock

#endif
