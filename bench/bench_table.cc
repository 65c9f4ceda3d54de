// Lock-table micro-benchmarks, measured side by side in one run:
//  1. uncontended acquire+release (read, write): the shared table with APR's
//     default global mutex (what httpd creates), the same table with
//     in-process pthread mutexes (the thread backend), and a plain in-process
//     pthread_rwlock_t;
//  2. throughput of 2 processes on distinct keys vs 1 process.
// Prints a Markdown table; medians of several runs with min/max.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <apr_general.h>
#include <apr_global_mutex.h>

#include "pidlock_locks.h"
#include "pidlock_table.h"

using namespace pidlock;

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Stat {
    double med, lo, hi;
};

Stat stats(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return {v[v.size() / 2], v.front(), v.back()};
}

void *map_shared(size_t n) {
    void *p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

struct Bench {
    apr_pool_t *pool = nullptr;
    TableParams p;
    size_t size = 0;
    void *shared_mem = nullptr;
    apr_global_mutex_t *m[LockTable::kDefaultStripes];
    AprStripeLocks *apr_locks = nullptr;
    LockTable *shared = nullptr;
    void *private_mem = nullptr;
    void *plocks_mem = nullptr;
    PthreadStripeLocks *plocks = nullptr;
    LockTable *thread_table = nullptr;

    Bench() {
        apr_pool_create(&pool, nullptr);
        p.capacity = 1024;
        p.key_cap = 1024;
        p.stripes = LockTable::kDefaultStripes;
        size = LockTable::region_size(p);
        shared_mem = map_shared(size);
        for (unsigned i = 0; i < p.stripes; ++i) {
            if (apr_global_mutex_create(&m[i], nullptr, APR_LOCK_DEFAULT, pool) != APR_SUCCESS) {
                fprintf(stderr, "apr_global_mutex_create failed\n");
                exit(1);
            }
        }
        apr_locks = new AprStripeLocks(m, p.stripes);
        LockTable::format(shared_mem, size, p);
        shared = new LockTable(shared_mem, apr_locks);
        private_mem = aligned_alloc(4096, (size + 4095) / 4096 * 4096);
        plocks_mem = malloc(PthreadStripeLocks::region_size(p.stripes));
        PthreadStripeLocks::init(plocks_mem, p.stripes, false);
        plocks = new PthreadStripeLocks(plocks_mem, p.stripes);
        LockTable::format(private_mem, size, p);
        thread_table = new LockTable(private_mem, plocks);
    }
};

// ns per acquire+release pair, `iters` pairs.
double time_table(LockTable *t, Mode mode, const char *key, long iters) {
    HolderInfo info;
    info.method = mode == Mode::Write ? "PUT" : "GET";
    info.uri = "/mn/v2/object/doi:10.5063/F1";
    info.client = "127.0.0.1";
    const size_t len = strlen(key);
    const double t0 = now_s();
    for (long i = 0; i < iters; ++i) {
        LockHandle h;
        if (t->acquire(key, len, mode, 0, info, h) != AcquireResult::Acquired) abort();
        t->release(h);
    }
    return (now_s() - t0) * 1e9 / static_cast<double>(iters);
}

// What any acquire+release under one APR mutex costs at least: two
// lock+unlock pairs of it (one to take the lock, one to give it back).
double time_apr_floor(apr_global_mutex_t *m, long iters) {
    const double t0 = now_s();
    for (long i = 0; i < iters; ++i) {
        apr_global_mutex_lock(m);
        apr_global_mutex_unlock(m);
        apr_global_mutex_lock(m);
        apr_global_mutex_unlock(m);
    }
    return (now_s() - t0) * 1e9 / static_cast<double>(iters);
}

double time_rwlock(pthread_rwlock_t *l, Mode mode, long iters) {
    const double t0 = now_s();
    for (long i = 0; i < iters; ++i) {
        if (mode == Mode::Write) pthread_rwlock_wrlock(l); else pthread_rwlock_rdlock(l);
        pthread_rwlock_unlock(l);
    }
    return (now_s() - t0) * 1e9 / static_cast<double>(iters);
}

// Total pairs per second of `procs` processes, each on its own key.
double throughput(Bench &b, int procs, double seconds) {
    auto *counts = static_cast<long *>(map_shared(sizeof(long) * 64));
    auto *go = reinterpret_cast<volatile int *>(counts + 63);
    std::vector<pid_t> kids;
    for (int i = 0; i < procs; ++i) {
        const pid_t pid = fork();
        if (pid == 0) {
            for (unsigned s = 0; s < b.p.stripes; ++s)
                apr_global_mutex_child_init(&b.m[s], apr_global_mutex_lockfile(b.m[s]), b.pool);
            char key[32];
            snprintf(key, sizeof key, "doi:10.5063/proc-%d", i);
            while (!*go) {}
            const double end = now_s() + seconds;
            long n = 0;
            while (now_s() < end) {
                time_table(b.shared, Mode::Write, key, 1000);
                n += 1000;
            }
            counts[i] = n;
            _exit(0);
        }
        kids.push_back(pid);
    }
    usleep(20000);
    *go = 1;
    for (pid_t k : kids) waitpid(k, nullptr, 0);
    long total = 0;
    for (int i = 0; i < procs; ++i) total += counts[i];
    munmap(counts, sizeof(long) * 64);
    return static_cast<double>(total) / seconds;
}

}  // namespace

int main(int argc, char **argv) {
    const bool full = argc > 1 && !strcmp(argv[1], "full");
    const int runs = full ? 9 : 5;
    const long iters = full ? 2000000 : 500000;
    const double tp_seconds = full ? 2.0 : 0.5;
    apr_initialize();
    Bench b;
    pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;
    const char *key = "doi:10.5063/F1";

    std::vector<double> tr, tw, pr, pw, rr, rwv, fl;
    for (int r = 0; r < runs; ++r) {
        // Interleaved, so drift on a shared machine hits all alike.
        tr.push_back(time_table(b.shared, Mode::Read, key, iters));
        rr.push_back(time_rwlock(&rw, Mode::Read, iters));
        pr.push_back(time_table(b.thread_table, Mode::Read, key, iters));
        tw.push_back(time_table(b.shared, Mode::Write, key, iters));
        rwv.push_back(time_rwlock(&rw, Mode::Write, iters));
        pw.push_back(time_table(b.thread_table, Mode::Write, key, iters));
        fl.push_back(time_apr_floor(b.m[0], iters));
    }
    const Stat str = stats(tr), stw = stats(tw), spr = stats(pr), spw = stats(pw), srr = stats(rr),
               srw = stats(rwv);
    printf("### Uncontended acquire+release, one process (ns per pair; median of %d runs [min-max])\n\n", runs);
    printf("| mechanism | read | write | read vs rwlock | write vs rwlock |\n|---|---|---|---|---|\n");
    printf("| shared table, APR default global mutex (%s) | %.0f [%.0f-%.0f] | %.0f [%.0f-%.0f] | %.2fx | %.2fx |\n",
           apr_global_mutex_name(b.m[0]), str.med, str.lo, str.hi, stw.med, stw.lo, stw.hi,
           str.med / srr.med, stw.med / srw.med);
    printf("| thread backend table, pthread mutex | %.0f [%.0f-%.0f] | %.0f [%.0f-%.0f] | %.2fx | %.2fx |\n",
           spr.med, spr.lo, spr.hi, spw.med, spw.lo, spw.hi, spr.med / srr.med, spw.med / srw.med);
    printf("| in-process pthread_rwlock_t | %.0f [%.0f-%.0f] | %.0f [%.0f-%.0f] | 1.00x | 1.00x |\n",
           srr.med, srr.lo, srr.hi, srw.med, srw.lo, srw.hi);
    const Stat sfl = stats(fl);
    printf("| floor: 2 lock+unlock pairs of the APR default global mutex, no table | %.0f [%.0f-%.0f] | "
           "%.0f | %.2fx | %.2fx |\n\n",
           sfl.med, sfl.lo, sfl.hi, sfl.med, sfl.med / srr.med, sfl.med / srw.med);

    std::vector<double> one, two;
    for (int r = 0; r < (full ? 5 : 3); ++r) {
        one.push_back(throughput(b, 1, tp_seconds));
        two.push_back(throughput(b, 2, tp_seconds));
    }
    const Stat s1 = stats(one), s2 = stats(two);
    printf("### Processes on distinct keys, shared table (write acquire+release pairs per second)\n\n");
    printf("| processes | pairs/s (median [min-max]) | vs 1 process |\n|---|---|---|\n");
    printf("| 1 | %.2fM [%.2f-%.2f] | 1.00x |\n", s1.med / 1e6, s1.lo / 1e6, s1.hi / 1e6);
    printf("| 2 | %.2fM [%.2f-%.2f] | %.2fx |\n\n", s2.med / 1e6, s2.lo / 1e6, s2.hi / 1e6, s2.med / s1.med);
    printf("machine: %ld CPUs online\n", sysconf(_SC_NPROCESSORS_ONLN));
    return 0;
}
