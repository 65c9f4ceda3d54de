// Helpers the concurrency tests share: memory that fork()ed children share
// with their parent, and a critical section of random length.
#ifndef PIDLOCK_TEST_CONCURRENCY_H
#define PIDLOCK_TEST_CONCURRENCY_H

#include <cstddef>
#include <random>

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

#endif
