// Lock benchmarks: mod_pidlock's table beside what one would otherwise use to
// serialize per-object access, measured side by side in one run.
//
//   bench_table quick|full OUTDIR
//
// Mechanisms (each op = acquire + release of one key, read or write):
//   table   the shared table, APR default global mutexes (what httpd uses), processes
//   thread  the thread backend: the same table, process-private pthread mutexes, threads
//   rwlock  one pthread_rwlock_t per key, threads of one process (the baseline)
//   dict    an in-process lock dictionary: unordered_map<string, shared_timed_mutex>
//           under a mutex, entries created on first use, threads of one process
//   flock   a lock file per key: open + flock(LOCK_SH/LOCK_EX) + close, processes
//   pg      PostgreSQL pg_advisory_lock[_shared] + pg_advisory_unlock[_shared] over
//           libpq on a Unix socket, one connection per process (PIDLOCK_PG_CONNINFO;
//           skipped when unset)
//
// Sections: uncontended; 1/2/4/8 workers on distinct keys and on one key;
// handoff latency; longest waits under continuous readers / writers; CPU of
// 100 blocked waiters; cost as the table fills and as capacity grows.
// Markdown goes to stdout, plot data (*.dat) to OUTDIR. Comparisons are
// interleaved run by run; figures are medians with [min-max].
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <apr_general.h>

#include "pidlock_cluster.h"
#include <apr_global_mutex.h>

#ifdef HAVE_LIBPQ
#include <libpq-fe.h>
#endif

#include "pidlock_locks.h"
#include "pidlock_table.h"

using namespace pidlock;

namespace {

double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

void sleep_us(long us) {
    timespec ts{us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

struct Stat {
    double med = NAN, lo = NAN, hi = NAN;
};

Stat stats(std::vector<double> v) {
    Stat s;
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    s.med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    s.lo = v.front();
    s.hi = v.back();
    return s;
}

double pct(std::vector<double> v, double p) {
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    size_t i = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size()))) ;
    if (i > 0) --i;
    return v[std::min(i, v.size() - 1)];
}

void *map_shared(size_t n) {
    void *p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

// Human-readable ns: 6, 89, 1 234, 53 000.
std::string fmt_ns(double ns) {
    if (std::isnan(ns)) return "–";
    char b[64];
    if (ns < 100) snprintf(b, sizeof b, "%.1f", ns);
    else snprintf(b, sizeof b, "%.0f", ns);
    std::string s = b;
    if (ns >= 10000) {
        const size_t dot = s.find('.');
        std::string ip = s.substr(0, dot);
        std::string out;
        for (size_t i = 0; i < ip.size(); ++i) {
            if (i && (ip.size() - i) % 3 == 0) out += ' ';
            out += ip[i];
        }
        s = out;
    }
    return s;
}

std::string fmt_stat(const Stat &s) {
    if (std::isnan(s.med)) return "–";
    return fmt_ns(s.med) + " [" + fmt_ns(s.lo) + "–" + fmt_ns(s.hi) + "]";
}

std::string fmt_ratio(double r) {
    if (std::isnan(r)) return "–";
    char b[32];
    if (r >= 100) snprintf(b, sizeof b, "%.0fx", r);
    else if (r >= 10) snprintf(b, sizeof b, "%.1fx", r);
    else snprintf(b, sizeof b, "%.2fx", r);
    return b;
}

// ------------------------------------------------------------------ mechanisms

enum class Kind { Table, TableNonPi, Thread, Rwlock, Dict, Flock, Pg };
struct MechInfo {
    Kind kind;
    const char *id;
    const char *name;
    bool threads;  // workers are threads of this process, not processes
    const char *label;  // short, for plots
};
const MechInfo kMechs[] = {
    {Kind::Table, "table", "mod_pidlock shared table (APR default mutex), processes", false, "pidlock shared"},
    // The same table with robust process-shared pthread mutexes that do not
    // inherit priority: whether the stripe mutex's kind still matters.
    {Kind::TableNonPi, "table_nonpi", "mod_pidlock shared table (robust non-PI pthread mutex), processes", false,
     "pidlock shared, non-PI"},
    {Kind::Thread, "thread", "mod_pidlock thread backend (pthread mutex), threads", true, "pidlock thread"},
    {Kind::Rwlock, "rwlock", "pthread_rwlock_t per key, threads of one process", true, "rwlock"},
    {Kind::Dict, "dict", "in-process lock dictionary (map + shared_mutex), threads", true, "lock dict"},
    {Kind::Flock, "flock", "lock file per key: open + flock + close, processes", false, "flock file"},
    {Kind::Pg, "pg", "PostgreSQL advisory lock (libpq, Unix socket), processes", false, "PostgreSQL"},
};
const MechInfo &mech(Kind k) {
    for (const auto &m : kMechs)
        if (m.kind == k) return m;
    abort();
}

constexpr int kKeys = 256;
constexpr uint32_t kStripes = LockTable::kDefaultStripes;

struct Tables {
    apr_pool_t *pool = nullptr;
    apr_global_mutex_t *m[kStripes];
    std::unique_ptr<AprStripeLocks> apr_locks;
    std::unique_ptr<PthreadStripeLocks> plocks;
    std::unique_ptr<PthreadStripeLocks> np_locks;
    std::unique_ptr<LockTable> shared, thread_table, shared_np;
    TableParams p;

    void init() {
        apr_pool_create(&pool, nullptr);
        p.capacity = 1024;
        p.key_cap = 1024;
        p.stripes = kStripes;
        const size_t size = LockTable::region_size(p);
        void *shared_mem = map_shared(size);
        for (unsigned i = 0; i < kStripes; ++i) {
            if (apr_global_mutex_create(&m[i], nullptr, APR_LOCK_DEFAULT, pool) != APR_SUCCESS) {
                fprintf(stderr, "apr_global_mutex_create failed\n");
                exit(1);
            }
        }
        apr_locks.reset(new AprStripeLocks(m, kStripes));
        LockTable::format(shared_mem, size, p);
        shared.reset(new LockTable(shared_mem, apr_locks.get()));
        void *private_mem = aligned_alloc(4096, (size + 4095) / 4096 * 4096);
        void *plocks_mem = malloc(PthreadStripeLocks::region_size(kStripes));
        PthreadStripeLocks::init(plocks_mem, kStripes, false);
        plocks.reset(new PthreadStripeLocks(plocks_mem, kStripes));
        LockTable::format(private_mem, size, p);
        thread_table.reset(new LockTable(private_mem, plocks.get()));
        void *np_mem = map_shared(size);
        void *np_locks_mem = map_shared(PthreadStripeLocks::region_size(kStripes));
        PthreadStripeLocks::init(np_locks_mem, kStripes, true);  // robust, process-shared, no PI
        np_locks.reset(new PthreadStripeLocks(np_locks_mem, kStripes));
        LockTable::format(np_mem, size, p);
        shared_np.reset(new LockTable(np_mem, np_locks.get()));
    }
    void child_init() {
        for (unsigned s = 0; s < kStripes; ++s)
            apr_global_mutex_child_init(&m[s], apr_global_mutex_lockfile(m[s]), pool);
    }
};

struct Dict {
    std::mutex mu;
    std::unordered_map<std::string, std::unique_ptr<std::shared_timed_mutex>> map;
    std::shared_timed_mutex *get(const std::string &k) {
        std::lock_guard<std::mutex> g(mu);
        auto &slot = map[k];
        if (!slot) slot.reset(new std::shared_timed_mutex);
        return slot.get();
    }
};

struct Env {
    Tables t;
    pthread_rwlock_t rw[kKeys];
    Dict dict;
    std::string keys[kKeys];
    std::string flock_paths[kKeys];
    std::string flock_dir;
    std::string pg_conninfo;
    bool have_pg = false;
};
Env *g_env;

LockTable *table_of(Kind k) {
    return k == Kind::Table ? g_env->t.shared.get() : k == Kind::TableNonPi ? g_env->t.shared_np.get()
                                                                            : g_env->t.thread_table.get();
}

volatile sig_atomic_t g_alarm = 0;
void on_alarm(int) { g_alarm = 1; }

// One worker's view of a mechanism: construct it inside the worker (after
// fork, or in the thread); lock/unlock split so waits can be timed.
class Worker {
  public:
    explicit Worker(Kind k) : k_(k) {
        info_.method = "GET";
        info_.uri = "/mn/v2/object/doi:10.5063/F1";
        info_.client = "127.0.0.1";
        info_.slot_cache = &cache_;
#ifdef HAVE_LIBPQ
        if (k_ == Kind::Pg) {
            pg_ = PQconnectdb(g_env->pg_conninfo.c_str());
            if (PQstatus(pg_) != CONNECTION_OK) {
                fprintf(stderr, "pg connect: %s", PQerrorMessage(pg_));
                exit(1);
            }
        }
#endif
    }
    ~Worker() {
        LockTable::drop_slot_cache(cache_);
#ifdef HAVE_LIBPQ
        if (pg_) PQfinish(pg_);
#endif
    }
    Worker(const Worker &) = delete;
    Worker &operator=(const Worker &) = delete;

    void op(int key, Mode m) {
        if (!lock(key, m, -1)) abort();
        unlock();
    }

    // timeout_s < 0: wait forever. False if the wait timed out.
    bool lock(int key, Mode m, double timeout_s) {
        key_ = key;
        mode_ = m;
        const bool w = m == Mode::Write;
        switch (k_) {
        case Kind::Table:
        case Kind::TableNonPi:
        case Kind::Thread: {
            LockTable *t = table_of(k_);
            const std::string &s = g_env->keys[key];
            const int64_t to = timeout_s < 0 ? -1 : static_cast<int64_t>(timeout_s * 1e9);
            const AcquireResult r = t->acquire(s.data(), s.size(), m, to, info_, h_);
            if (r == AcquireResult::Busy) return false;
            if (r != AcquireResult::Acquired) {
                fprintf(stderr, "table acquire failed (%d)\n", static_cast<int>(r));
                abort();
            }
            return true;
        }
        case Kind::Rwlock: {
            pthread_rwlock_t *l = &g_env->rw[key];
            if (timeout_s < 0) {
                if (w) pthread_rwlock_wrlock(l); else pthread_rwlock_rdlock(l);
                return true;
            }
            timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            const double end = static_cast<double>(ts.tv_nsec) * 1e-9 + timeout_s;
            ts.tv_sec += static_cast<time_t>(end);
            ts.tv_nsec = static_cast<long>((end - std::floor(end)) * 1e9);
            const int rc = w ? pthread_rwlock_timedwrlock(l, &ts) : pthread_rwlock_timedrdlock(l, &ts);
            return rc == 0;
        }
        case Kind::Dict: {
            dm_ = g_env->dict.get(g_env->keys[key]);
            if (timeout_s < 0) {
                if (w) dm_->lock(); else dm_->lock_shared();
                return true;
            }
            const auto d = std::chrono::duration<double>(timeout_s);
            return w ? dm_->try_lock_for(d) : dm_->try_lock_shared_for(d);
        }
        case Kind::Flock: {
            fd_ = open(g_env->flock_paths[key].c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
            if (fd_ < 0) {
                perror("open lock file");
                abort();
            }
            if (timeout_s >= 0) {
                itimerval it{};
                it.it_value.tv_sec = static_cast<time_t>(timeout_s);
                it.it_value.tv_usec = static_cast<suseconds_t>((timeout_s - std::floor(timeout_s)) * 1e6);
                g_alarm = 0;
                setitimer(ITIMER_REAL, &it, nullptr);
            }
            int rc;
            do {
                rc = flock(fd_, w ? LOCK_EX : LOCK_SH);
            } while (rc != 0 && errno == EINTR && !g_alarm);
            if (timeout_s >= 0) {
                itimerval off{};
                setitimer(ITIMER_REAL, &off, nullptr);
            }
            if (rc != 0) {
                close(fd_);
                fd_ = -1;
                return false;
            }
            return true;
        }
        case Kind::Pg: {
#ifdef HAVE_LIBPQ
            if (timeout_s != pg_timeout_) {
                char q[96];
                snprintf(q, sizeof q, "SET statement_timeout = %ld",
                         timeout_s < 0 ? 0L : std::max(1L, static_cast<long>(timeout_s * 1000)));
                PQclear(PQexec(pg_, q));
                pg_timeout_ = timeout_s;
            }
            char q[96];
            snprintf(q, sizeof q, "SELECT pg_advisory_lock%s(%d)", w ? "" : "_shared", 1000 + key);
            PGresult *r = PQexec(pg_, q);
            const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
            if (!ok && timeout_s < 0) {
                fprintf(stderr, "pg: %s", PQerrorMessage(pg_));
                abort();
            }
            PQclear(r);
            return ok;
#else
            abort();
#endif
        }
        }
        return false;
    }

    void unlock() {
        switch (k_) {
        case Kind::Table:
        case Kind::TableNonPi:
        case Kind::Thread: {
            LockTable *t = table_of(k_);
            t->release(h_, &cache_);
            break;
        }
        case Kind::Rwlock:
            pthread_rwlock_unlock(&g_env->rw[key_]);
            break;
        case Kind::Dict:
            if (mode_ == Mode::Write) dm_->unlock(); else dm_->unlock_shared();
            break;
        case Kind::Flock:
            close(fd_);  // drops the lock
            fd_ = -1;
            break;
        case Kind::Pg: {
#ifdef HAVE_LIBPQ
            char q[96];
            snprintf(q, sizeof q, "SELECT pg_advisory_unlock%s(%d)", mode_ == Mode::Write ? "" : "_shared",
                     1000 + key_);
            PGresult *r = PQexec(pg_, q);
            if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                fprintf(stderr, "pg: %s", PQerrorMessage(pg_));
                abort();
            }
            PQclear(r);
#endif
            break;
        }
        }
    }

  private:
    Kind k_;
    int key_ = 0;
    Mode mode_ = Mode::None;
    HolderInfo info_;
    // A worker's holder slot between its locks, as httpd's connections keep
    // theirs (HolderInfo::slot_cache).
    SlotCache cache_;
    LockHandle h_;
    std::shared_timed_mutex *dm_ = nullptr;
    int fd_ = -1;
#ifdef HAVE_LIBPQ
    PGconn *pg_ = nullptr;
    double pg_timeout_ = -1;
#endif
};

bool available(Kind k) { return k != Kind::Pg || g_env->have_pg; }

// Runs fn(idx) in n workers (threads or forked processes, as the mechanism
// needs) and waits for all of them.
void run_workers(Kind k, int n, const std::function<void(int)> &fn) {
    if (mech(k).threads) {
        std::vector<std::thread> ts;
        for (int i = 0; i < n; ++i) ts.emplace_back(fn, i);
        for (auto &t : ts) t.join();
        return;
    }
    std::vector<pid_t> kids;
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < n; ++i) {
        const pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            exit(1);
        }
        if (pid == 0) {
            if (k == Kind::Table) g_env->t.child_init();
            fn(i);
            _exit(0);
        }
        kids.push_back(pid);
    }
    for (pid_t p : kids) {
        int st = 0;
        waitpid(p, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "worker %d of %s failed (status %d)\n", static_cast<int>(p), mech(k).id, st);
            exit(1);
        }
    }
}

// Shared scratch memory for workers (processes or threads alike).
struct Scratch {
    std::atomic<int> ready, go, stop;
    std::atomic<long> a, b, c;
    double t_go, t_rel;
    double end[128];
    long ops[128];
    double cpu[128];
    long nsamp[128];
    static constexpr size_t kSamples = 20000;
    double samples[kSamples];
    void reset() {
        ready = 0;
        go = 0;
        stop = 0;
        a = b = c = 0;
        t_go = t_rel = 0;
        for (int i = 0; i < 128; ++i) end[i] = 0, ops[i] = 0, cpu[i] = 0, nsamp[i] = 0;
    }
};
Scratch *g_s;

void wait_go() {
    g_s->ready.fetch_add(1);
    while (!g_s->go.load()) sched_yield();
}

void start_when_ready(int n) {
    while (g_s->ready.load() < n) sleep_us(200);
    g_s->t_go = now_s();
    g_s->go = 1;
}

// ---------------------------------------------------------- 1. uncontended

// ns per acquire+release pair, running for about `seconds`.
double time_ops(Worker &w, int key, Mode m, double seconds, int batch) {
    long n = 0;
    const double t0 = now_s();
    double t = t0;
    do {
        for (int i = 0; i < batch; ++i) w.op(key, m);
        n += batch;
        t = now_s();
    } while (t - t0 < seconds);
    return (t - t0) * 1e9 / static_cast<double>(n);
}

int batch_of(Kind k) { return k == Kind::Pg ? 4 : k == Kind::Flock ? 64 : 1024; }

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

struct Opts {
    bool full = false;
    std::string out;
    int runs;
    double sample_s;     // one uncontended sample
    int mp_runs;
    double mp_s;         // one multi-worker sample
    int handoffs;
    double fair_s, fair_cap;
    double idle_s;
    int scale_runs;
    double scale_s;
};

FILE *open_dat(const Opts &o, const char *name) {
    const std::string p = o.out + "/" + name;
    FILE *f = fopen(p.c_str(), "w");
    if (!f) {
        perror(p.c_str());
        exit(1);
    }
    return f;
}

void section_uncontended(const Opts &o) {
    std::map<Kind, std::vector<double>> rd, wr;
    std::vector<double> fl;
    for (int r = 0; r < o.runs; ++r) {
        // Interleaved, so drift on a shared machine hits all alike.
        for (const auto &mi : kMechs) {
            if (!available(mi.kind)) continue;
            Worker w(mi.kind);
            rd[mi.kind].push_back(time_ops(w, 0, Mode::Read, o.sample_s, batch_of(mi.kind)));
            wr[mi.kind].push_back(time_ops(w, 0, Mode::Write, o.sample_s, batch_of(mi.kind)));
        }
        fl.push_back(time_apr_floor(g_env->t.m[0], o.full ? 1000000 : 300000));
    }
    const Stat rr = stats(rd[Kind::Rwlock]), rw = stats(wr[Kind::Rwlock]);
    const Stat pr = stats(rd[Kind::Pg]), pw = stats(wr[Kind::Pg]);
    const Stat fr = stats(rd[Kind::Flock]), fw = stats(wr[Kind::Flock]);
    printf("### 1a. Uncontended acquire+release, one worker (ns per pair; median of %d interleaved runs "
           "[min–max])\n\n",
           o.runs);
    printf("| mechanism | read | write | vs rwlock (r / w) | PostgreSQL / this (r / w) | "
           "flock / this (r / w) |\n|---|---|---|---|---|---|\n");
    FILE *f = open_dat(o, "uncontended.dat");
    fprintf(f, "# mech read_med read_lo read_hi write_med write_lo write_hi\n");
    for (const auto &mi : kMechs) {
        if (!available(mi.kind)) {
            printf("| %s | not measured: PostgreSQL not available | | | | |\n", mi.name);
            continue;
        }
        const Stat a = stats(rd[mi.kind]), b = stats(wr[mi.kind]);
        std::string name = mi.name;
        if (mi.kind == Kind::Table) name += std::string(" — mutex: ") + apr_global_mutex_name(g_env->t.m[0]);
        printf("| %s | %s | %s | %s / %s | %s / %s | %s / %s |\n", name.c_str(), fmt_stat(a).c_str(),
               fmt_stat(b).c_str(), fmt_ratio(a.med / rr.med).c_str(), fmt_ratio(b.med / rw.med).c_str(),
               fmt_ratio(pr.med / a.med).c_str(), fmt_ratio(pw.med / b.med).c_str(),
               fmt_ratio(fr.med / a.med).c_str(), fmt_ratio(fw.med / b.med).c_str());
        fprintf(f, "\"%s\" %g %g %g %g %g %g\n", mi.label, a.med, a.lo, a.hi, b.med, b.lo, b.hi);
    }
    fclose(f);
    const Stat sf = stats(fl);
    printf("| floor: 2 lock+unlock pairs of one APR default global mutex, no table | %s | %s | %s / %s | | |\n\n",
           fmt_stat(sf).c_str(), fmt_ns(sf.med).c_str(), fmt_ratio(sf.med / rr.med).c_str(),
           fmt_ratio(sf.med / rw.med).c_str());
    if (!g_env->have_pg) printf("PostgreSQL: not measured (%s).\n\n", getenv("PIDLOCK_PG_SKIP") ? getenv("PIDLOCK_PG_SKIP") : "PIDLOCK_PG_CONNINFO not set");
}

// ------------------------------------------------- 1b. several workers

// Aggregate throughput (pairs/s) of n workers; one_key: all on key 0, else
// worker i on key i+1.
void throughput(Kind k, int n, bool one_key, Mode m, double seconds) {
    run_workers(k, n, [&](int i) {
        Worker w(k);
        const int key = one_key ? 0 : i + 1;
        const int batch = k == Kind::Pg ? 1 : k == Kind::Flock ? 16 : 256;
        wait_go();
        const double end = g_s->t_go + seconds;
        long ops = 0;
        double t;
        do {
            for (int j = 0; j < batch; ++j) w.op(key, m);
            ops += batch;
            t = now_s();
        } while (t < end);
        g_s->ops[i] = ops;
        g_s->end[i] = t;
    });
}

double measure_mp(Kind k, int n, bool one_key, Mode m, double seconds) {
    g_s->reset();
    // The parent starts the clock once every worker is ready: for threads a
    // helper thread does it, for processes the parent between fork and wait.
    std::thread starter([n] { start_when_ready(n); });
    throughput(k, n, one_key, m, seconds);
    starter.join();
    long total = 0;
    double last = 0;
    for (int i = 0; i < n; ++i) {
        total += g_s->ops[i];
        last = std::max(last, g_s->end[i]);
    }
    return static_cast<double>(total) / (last - g_s->t_go);
}

void section_workers(const Opts &o) {
    const int counts[] = {1, 2, 4, 8};
    struct Scn {
        const char *id, *title;
        bool one_key;
        Mode m;
    } scns[] = {
        {"distinct", "distinct keys, write", false, Mode::Write},
        {"onekey_write", "one key, write", true, Mode::Write},
        {"onekey_read", "one key, read", true, Mode::Read},
    };
    for (const auto &sc : scns) {
        std::map<Kind, std::map<int, std::vector<double>>> res;
        for (int r = 0; r < o.mp_runs; ++r)
            for (int n : counts)
                for (const auto &mi : kMechs)
                    if (available(mi.kind))
                        res[mi.kind][n].push_back(measure_mp(mi.kind, n, sc.one_key, sc.m, o.mp_s));
        printf("### 1b. %d/%d/%d/%d workers, %s: aggregate pairs per second (median of %d runs of %.2g s "
               "[min–max]); in brackets after it, the speed-up over 1 worker\n\n",
               counts[0], counts[1], counts[2], counts[3], sc.title, o.mp_runs, o.mp_s);
        printf("| mechanism | 1 | 2 | 4 | 8 |\n|---|---|---|---|---|\n");
        const std::string dn = std::string("workers_") + sc.id + ".dat";
        FILE *f = open_dat(o, dn.c_str());
        fprintf(f, "# workers");
        for (const auto &mi : kMechs) fprintf(f, " %s", mi.id);
        fprintf(f, "\n");
        for (const auto &mi : kMechs) {
            if (!available(mi.kind)) continue;
            printf("| %s |", mi.name);
            const double one = stats(res[mi.kind][1]).med;
            for (int n : counts) {
                const Stat s = stats(res[mi.kind][n]);
                char b[160];
                auto k = [](double v) {
                    char x[32];
                    if (v >= 1e6) snprintf(x, sizeof x, "%.2fM", v / 1e6);
                    else if (v >= 1e3) snprintf(x, sizeof x, "%.1fk", v / 1e3);
                    else snprintf(x, sizeof x, "%.0f", v);
                    return std::string(x);
                };
                snprintf(b, sizeof b, " %s [%s–%s] (%.2fx) |", k(s.med).c_str(), k(s.lo).c_str(), k(s.hi).c_str(),
                         s.med / one);
                printf("%s", b);
            }
            printf("\n");
        }
        for (int n : counts) {
            fprintf(f, "%d", n);
            for (const auto &mi : kMechs)
                fprintf(f, " %g", available(mi.kind) ? stats(res[mi.kind][n]).med : NAN);
            fprintf(f, "\n");
        }
        fclose(f);
        printf("\n");
        fflush(stdout);
    }
}

// --------------------------------------------------------- 2. handoff

// Time from the holder's release to the waiter running, `iters` times.
std::vector<double> handoff(Kind k, int iters) {
    g_s->reset();
    run_workers(k, 2, [&](int idx) {
        Worker w(k);
        for (long i = 1; i <= iters; ++i) {
            if (idx == 0) {
                w.lock(0, Mode::Write, -1);
                g_s->a = i;  // held
                while (g_s->b.load() < i) sleep_us(20);
                sleep_us(1000);  // the waiter is now blocked in acquire
                g_s->t_rel = now_s();
                w.unlock();
                while (g_s->c.load() < i) sleep_us(20);
            } else {
                while (g_s->a.load() < i) sleep_us(20);
                g_s->b = i;
                w.lock(0, Mode::Write, -1);
                const double t = now_s();
                if (i - 1 < static_cast<long>(Scratch::kSamples)) g_s->samples[i - 1] = (t - g_s->t_rel) * 1e6;
                w.unlock();
                g_s->c = i;
            }
        }
    });
    return std::vector<double>(g_s->samples, g_s->samples + std::min<size_t>(iters, Scratch::kSamples));
}

// Waits of one worker (`m`) while 4 others hold the key in the other mode
// back to back (each holds ~200 µs, then takes it again at once).
struct FairResult {
    std::vector<double> waits_ms;
    long timeouts = 0;
};
FairResult fairness(Kind k, Mode measured, double seconds, double cap) {
    g_s->reset();
    const Mode bg = measured == Mode::Write ? Mode::Read : Mode::Write;
    const int nbg = 4;
    run_workers(k, nbg + 1, [&](int idx) {
        Worker w(k);
        if (k == Kind::Flock) {
            struct sigaction sa{};
            sa.sa_handler = on_alarm;
            sigaction(SIGALRM, &sa, nullptr);  // no SA_RESTART: flock gets EINTR
        }
        if (idx < nbg) {
            sleep_us(50 * idx);
            g_s->ready.fetch_add(1);
            while (!g_s->stop.load()) {
                w.lock(0, bg, -1);
                sleep_us(200);
                w.unlock();
            }
            return;
        }
        while (g_s->ready.load() < nbg) sleep_us(100);
        sleep_us(20000);  // the others are going
        const double end = now_s() + seconds;
        long n = 0, to = 0;
        do {
            sleep_us(2000);
            const double t0 = now_s();
            const bool ok = w.lock(0, measured, cap);
            const double dt = now_s() - t0;
            if (ok) w.unlock(); else ++to;
            if (n < static_cast<long>(Scratch::kSamples)) g_s->samples[n++] = dt * 1e3;
        } while (now_s() < end);
        g_s->nsamp[0] = n;
        g_s->ops[0] = to;
        g_s->stop = 1;
    });
    FairResult r;
    r.waits_ms.assign(g_s->samples, g_s->samples + g_s->nsamp[0]);
    r.timeouts = g_s->ops[0];
    return r;
}

// CPU time (ns) and times scheduled in, of one thread, from schedstat.
bool schedstat(long tid, double *cpu_ns, double *runs) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%ld/schedstat", tid);
    FILE *f = fopen(p, "r");
    if (!f) return false;
    unsigned long long a = 0, b = 0, c = 0;
    const bool ok = fscanf(f, "%llu %llu %llu", &a, &b, &c) == 3;
    fclose(f);
    *cpu_ns = static_cast<double>(a);
    *runs = static_cast<double>(c);
    return ok;
}

struct IdleResult {
    double total_ms = 0;       // getrusage of each waiter around its wait, summed
    double steady_ms = NAN;    // CPU of all waiters in the window while all wait
    double window_s = 0;
    double wakeups = NAN;      // times any waiter was scheduled in, in the window
};

// n workers block for `seconds` on a key another holds; each measures its
// own CPU time around the wait (getrusage), and a monitor thread reads every
// waiter's schedstat (CPU time and times scheduled in: the same for threads
// and processes) at the start and the end of a window in the middle of the
// wait. The waiters start their timed waits together, once all n exist, so
// that all are still waiting at the end of the window (a waiter that had
// timed out and been reaped would drop out of the second reading and make
// the difference negative); a window in which any waiter could not be read
// twice is not reported. With tick_ms > 0 the waiters take no lock: each
// sleeps on a futex word nobody changes, waking every tick_ms until
// `seconds` have passed (what a waiter's periodic wake-up alone costs).
IdleResult idle_cpu(Kind k, int n, double seconds, long tick_ms = 0) {
    g_s->reset();
    Worker holder(k);
    if (k == Kind::Flock) {
        struct sigaction sa{};
        sa.sa_handler = on_alarm;
        sigaction(SIGALRM, &sa, nullptr);
    }
    holder.lock(0, Mode::Write, -1);
    static long tids[128];
    IdleResult res;
    const bool procs = !mech(k).threads;
    auto tid_of = [&](int i) { return procs ? g_s->ops[i] : tids[i]; };
    std::thread monitor([&] {
        start_when_ready(n);  // all exist: their timed waits start now
        sleep_us(static_cast<long>(seconds * 0.2e6));
        double c0 = 0, r0 = 0, c1 = 0, r1 = 0, c, r;
        int read0 = 0, read1 = 0;
        for (int i = 0; i < n; ++i)
            if (schedstat(tid_of(i), &c, &r)) c0 += c, r0 += r, ++read0;
        const double t0 = now_s();
        sleep_us(static_cast<long>(seconds * 0.6e6));
        for (int i = 0; i < n; ++i)
            if (schedstat(tid_of(i), &c, &r)) c1 += c, r1 += r, ++read1;
        res.window_s = now_s() - t0;
        // Every waiter read at both ends, none done before the window closed.
        const bool all_waited = g_s->a.load() == 0 && now_s() < g_s->t_go + seconds;
        if (read0 == n && read1 == n && all_waited) {
            res.steady_ms = (c1 - c0) / 1e6;
            res.wakeups = r1 - r0;
        } else {
            fprintf(stderr, "2c %s: window not measured (schedstat read %d and %d of %d, %s)\n", mech(k).id,
                    read0, read1, n, all_waited ? "all waiting" : "a wait ended inside the window");
        }
    });
    run_workers(k, n, [&](int idx) {
        Worker w(k);
        rusage r0, r1;
        const long tid = gettid();
        if (procs) g_s->ops[idx] = tid; else tids[idx] = tid;
        g_s->ready.fetch_add(1);
        while (!g_s->go.load()) sleep_us(1000);
        getrusage(RUSAGE_THREAD, &r0);
        bool ok = false;
        if (tick_ms > 0) {
            const double end = now_s() + seconds;
            for (double left; (left = end - now_s()) > 0;) {
                const double d = std::min(left, static_cast<double>(tick_ms) / 1e3);
                timespec ts{static_cast<time_t>(d), static_cast<long>((d - std::floor(d)) * 1e9)};
                syscall(SYS_futex, reinterpret_cast<int *>(&g_s->stop), FUTEX_WAIT, 0, &ts, nullptr, 0);
            }
        } else {
            ok = w.lock(0, Mode::Write, seconds);
        }
        getrusage(RUSAGE_THREAD, &r1);
        g_s->a.fetch_add(1);  // this wait is over
        if (ok) w.unlock();
        auto us = [](const rusage &r) {
            return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 +
                   static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
        };
        g_s->cpu[idx] = us(r1) - us(r0);
    });
    // For processes the tids come through shared memory; the monitor reads
    // them after every waiter is ready, when they are all written.
    monitor.join();
    holder.unlock();
    for (int i = 0; i < n; ++i) res.total_ms += g_s->cpu[i] / 1e3;
    return res;
}

void handoff_table(const Opts &o) {
    const Kind hk[] = {Kind::Table, Kind::TableNonPi, Kind::Thread, Kind::Rwlock, Kind::Dict, Kind::Flock, Kind::Pg};
    printf("### 2a. Handoff: from a writer's release to the blocked writer running (µs; %d handoffs each)\n\n",
           o.handoffs);
    printf("| mechanism | median | p90 | p99 | max |\n|---|---|---|---|---|\n");
    FILE *f = open_dat(o, "handoff.dat");
    fprintf(f, "# mech median p90 p99\n");
    for (Kind k : hk) {
        if (!available(k)) continue;
        const auto v = handoff(k, o.handoffs);
        printf("| %s | %.1f | %.1f | %.1f | %.1f |\n", mech(k).name, pct(v, 50), pct(v, 90), pct(v, 99),
               pct(v, 100));
        fprintf(f, "\"%s\" %g %g %g\n", mech(k).label, pct(v, 50), pct(v, 90), pct(v, 99));
        fflush(stdout);
    }
    fclose(f);
    printf("\n");
}

void starvation_table(const Opts &o) {
    const Kind fk[] = {Kind::Table, Kind::Thread, Kind::Rwlock, Kind::Flock, Kind::Pg};
    printf("### 2b. Starvation: waits of one writer while 4 readers hold the key back to back, and of one reader "
           "while 4 writers do (each holds ~200 µs; %.0f s each, the measured worker gives up after %.1f s)\n\n",
           o.fair_s, o.fair_cap);
    printf("| mechanism | writer under readers: median / p99 / longest (ms) | gave up | "
           "reader under writers: median / p99 / longest (ms) | gave up |\n|---|---|---|---|---|\n");
    FILE *g = open_dat(o, "fairness.dat");
    fprintf(g, "# mech writer_med writer_max reader_med reader_max\n");
    for (Kind k : fk) {
        if (!available(k)) continue;
        const FairResult w = fairness(k, Mode::Write, o.fair_s, o.fair_cap);
        const FairResult r = fairness(k, Mode::Read, o.fair_s, o.fair_cap);
        printf("| %s | %.2f / %.2f / %.2f | %ld of %zu | %.2f / %.2f / %.2f | %ld of %zu |\n", mech(k).name,
               pct(w.waits_ms, 50), pct(w.waits_ms, 99), pct(w.waits_ms, 100), w.timeouts, w.waits_ms.size(),
               pct(r.waits_ms, 50), pct(r.waits_ms, 99), pct(r.waits_ms, 100), r.timeouts, r.waits_ms.size());
        fprintf(g, "\"%s\" %g %g %g %g\n", mech(k).label, pct(w.waits_ms, 50), pct(w.waits_ms, 100), pct(r.waits_ms, 50),
                pct(r.waits_ms, 100));
        fflush(stdout);
    }
    fclose(g);
    printf("\n");
}

void idle_table(const Opts &o) {
    const Kind ik[] = {Kind::Table, Kind::Thread, Kind::Rwlock, Kind::Flock};
    printf("### 2c. CPU used by 100 waiters blocked %.0f s on a key another holds (all start waiting together; "
           "while all wait: /proc/<tid>/schedstat of every waiter over the middle %.0f%% of the wait; whole wait: "
           "getrusage(RUSAGE_THREAD) of each waiter around its acquire, summed)\n\n",
           o.idle_s, 60.0);
    printf("| mechanism | CPU while all wait (ms per second, all 100) | wake-ups per waiter per second | "
           "CPU of the whole wait incl. entry and time-out (ms, all 100) |\n|---|---|---|---|\n");
    auto row = [](const char *name, const IdleResult &r) {
        char steady[32] = "not measured", wake[32] = "not measured";
        if (!std::isnan(r.steady_ms)) {
            snprintf(steady, sizeof steady, "%.3f", r.steady_ms / r.window_s);
            snprintf(wake, sizeof wake, "%.2f", r.wakeups / 100 / r.window_s);
        }
        printf("| %s | %s | %s | %.1f |\n", name, steady, wake, r.total_ms);
        fflush(stdout);
    };
    for (Kind k : ik) row(mech(k).name, idle_cpu(k, 100, o.idle_s));
    // What the table's waiters cannot go below while each wakes every 100 ms
    // (the follower's look at the waiter ahead, and httpd's look at the client).
    row("floor: processes that only sleep on a futex, woken by its 100 ms time-out",
        idle_cpu(Kind::Table, 100, o.idle_s, 100));
    row("floor: threads that only sleep on a futex, woken by its 100 ms time-out",
        idle_cpu(Kind::Thread, 100, o.idle_s, 100));
    printf("\n");
}

void section_handoff(const Opts &o, bool a, bool b, bool c) {
    if (a) handoff_table(o);
    if (b) starvation_table(o);
    if (c) idle_table(o);
}

// --------------------------------------------------------- 4. scale

struct ScaleTable {
    TableParams p;
    size_t size = 0;
    void *mem = nullptr;
    std::unique_ptr<LockTable> t;
    ScaleTable(uint32_t cap, uint32_t key_cap) {
        p.capacity = cap;
        p.key_cap = key_cap;
        p.stripes = kStripes;
        size = LockTable::region_size(p);
        mem = map_shared(size);
        LockTable::format(mem, size, p);
        t.reset(new LockTable(mem, g_env->t.apr_locks.get()));
    }
    ~ScaleTable() { munmap(mem, size); }
};

// Holds `n` keys; returns their handles.
std::vector<LockHandle> fill(LockTable &t, uint32_t n) {
    HolderInfo info;
    info.method = "PUT";
    info.uri = "/mn/v2/object/x";
    info.client = "127.0.0.1";
    std::vector<LockHandle> hs(n);
    char k[64];
    for (uint32_t i = 0; i < n; ++i) {
        const int len = snprintf(k, sizeof k, "doi:10.5063/held-%u", i);
        if (t.acquire(k, static_cast<size_t>(len), Mode::Write, 0, info, hs[i]) != AcquireResult::Acquired) {
            fprintf(stderr, "fill: key %u of %u refused\n", i, n);
            exit(1);
        }
    }
    return hs;
}

// ns per write acquire+release of keys not held (16 of them in turn);
// `full` counts refusals (Full), which should not happen below capacity.
double time_other(LockTable &t, double seconds, long *full) {
    HolderInfo info;
    info.method = "PUT";
    info.uri = "/mn/v2/object/x";
    info.client = "127.0.0.1";
    char keys[16][32];
    size_t lens[16];
    for (int i = 0; i < 16; ++i) lens[i] = static_cast<size_t>(snprintf(keys[i], 32, "doi:10.5063/free-%d", i));
    long n = 0;
    const double t0 = now_s();
    double tn;
    do {
        for (int j = 0; j < 1024; ++j) {
            LockHandle h;
            const int i = j & 15;
            const AcquireResult r = t.acquire(keys[i], lens[i], Mode::Write, 0, info, h);
            if (r == AcquireResult::Acquired) t.release(h);
            else ++*full;
        }
        n += 1024;
        tn = now_s();
    } while (tn - t0 < seconds);
    return (tn - t0) * 1e9 / static_cast<double>(n);
}

void section_scale(const Opts &o) {
    const uint32_t cap = 10000;
    const double fills[] = {1, 10, 25, 50, 75, 90, 99, 100};
    printf("### 4a. Table filling up: write acquire+release of a key not held while N other keys are held "
           "(capacity %u, shared table; ns per pair, median of %d [min–max])\n\n",
           cap, o.scale_runs);
    printf("| filled (held + 1) / capacity | keys held | ns per pair | vs 1 %% | refused (Full) |\n|---|---|---|---|---|\n");
    FILE *f = open_dat(o, "fill.dat");
    fprintf(f, "# percent ns_med ns_lo ns_hi\n");
    double base = NAN;
    for (double pc : fills) {
        ScaleTable st(cap, 1024);
        const uint32_t held = static_cast<uint32_t>(std::lround(pc / 100.0 * cap)) - 1;
        auto hs = fill(*st.t, held);
        std::vector<double> v;
        long full = 0;
        for (int r = 0; r < o.scale_runs; ++r) v.push_back(time_other(*st.t, o.scale_s, &full));
        for (auto &h : hs) st.t->release(h);
        const Stat s = stats(v);
        if (std::isnan(base)) base = s.med;
        printf("| %.0f %% | %u | %s | %.2fx | %ld |\n", pc, held, fmt_stat(s).c_str(), s.med / base, full);
        fprintf(f, "%g %g %g %g\n", pc, s.med, s.lo, s.hi);
        fflush(stdout);
    }
    fclose(f);
    printf("\n");

    const uint32_t caps[] = {100, 1000, 10000, 100000};
    printf("### 4b. Capacity: cost per pair and shared memory per slot (ns per pair, median of %d [min–max])\n\n",
           o.scale_runs);
    printf("| capacity | ns, empty | ns, half full | region, PidLockMaxKeyLength 1024 | bytes per slot (1024) | "
           "bytes per slot (256) |\n|---|---|---|---|---|---|\n");
    FILE *g = open_dat(o, "capacity.dat");
    fprintf(g, "# capacity ns_empty ns_half bytes_per_slot_1024 bytes_per_slot_256\n");
    for (uint32_t c : caps) {
        ScaleTable st(c, 1024);
        std::vector<double> e, h;
        long full = 0;
        for (int r = 0; r < o.scale_runs; ++r) e.push_back(time_other(*st.t, o.scale_s, &full));
        auto hs = fill(*st.t, c / 2);
        for (int r = 0; r < o.scale_runs; ++r) h.push_back(time_other(*st.t, o.scale_s, &full));
        for (auto &x : hs) st.t->release(x);
        TableParams p256 = st.p;
        p256.key_cap = 256;
        const double b1024 = static_cast<double>(st.size) / c;
        const double b256 = static_cast<double>(LockTable::region_size(p256)) / c;
        const Stat se = stats(e), sh = stats(h);
        printf("| %u | %s | %s | %.1f MiB | %.0f | %.0f |\n", c, fmt_stat(se).c_str(), fmt_stat(sh).c_str(),
               static_cast<double>(st.size) / 1048576.0, b1024, b256);
        fprintf(g, "%u %g %g %g %g\n", c, se.med, sh.med, b1024, b256);
        fflush(stdout);
    }
    fclose(g);
    printf("\n");
}

}  // namespace

// Section 1c: what the PostgreSQL tier (PidLockCluster) adds to a request:
// acquire_all + release_all of one key, uncontended, on the host's table
// alone and with the tier (one round trip to lock, one to commit).
void section_cluster(const Opts &o) {
    printf("### 1c. Cluster tier: added latency per request (one key, uncontended, one thread)\n\n");
#ifdef HAVE_LIBPQ
    if (!g_env->have_pg) {
        printf("Not measured: PostgreSQL not available.\n\n");
        return;
    }
    TableParams p;
    p.capacity = 256;
    p.key_cap = 128;
    p.stripes = 8;
    std::vector<char> mem(LockTable::region_size(p)), lmem(PthreadStripeLocks::region_size(p.stripes));
    PthreadStripeLocks::init(lmem.data(), p.stripes, false);
    LockTable::format(mem.data(), mem.size(), p);
    PthreadStripeLocks locks(lmem.data(), p.stripes);
    LockTable table(mem.data(), &locks);
    TableBackend local("thread", &table);
    std::vector<char> smem(ClusterStats::region_size(1));
    ClusterOptions opt;
    opt.conninfo = g_env->pg_conninfo;
    ClusterBackend cluster(&local, ClusterStats::format(smem.data(), 1), opt);
    const int n = o.full ? 20000 : 3000;
    printf("| backend | mode | p50 (us) | p99 (us) |\n|---|---|---|---|\n");
    for (LockBackend *lb : {static_cast<LockBackend *>(&local), static_cast<LockBackend *>(&cluster)}) {
        for (Mode m : {Mode::Read, Mode::Write}) {
            std::vector<double> us;
            HolderInfo info;
            for (int i = -200; i < n; ++i) {  // the first ones warm the pool
                const std::string key = "doi:10.5063/F1-" + std::to_string(i & 63);
                KeyRef k{key.data(), key.size()};
                LockSet set;
                const double t0 = now_s();
                if (lb->acquire_all(&k, 1, m, kNoDeadline, info, set, nullptr, nullptr) != AcquireResult::Acquired) {
                    printf("| %s | acquire failed | | |\n", lb == &local ? "table" : "table + PostgreSQL");
                    return;
                }
                lb->release_all(set);
                if (i >= 0) us.push_back((now_s() - t0) * 1e6);
            }
            printf("| %s | %s | %.1f | %.1f |\n", lb == &local ? "table alone" : "table + PostgreSQL tier",
                   m == Mode::Read ? "read" : "write", pct(us, 50), pct(us, 99));
        }
    }
    printf("\nPostgreSQL round trips per request: 2 (BEGIN + SET LOCAL + lock [+ nextval] in one, COMMIT); "
           "a request that waits in the host's table makes none while it waits.\n\n");
#else
    (void)o;
    printf("Not measured: bench built without libpq.\n\n");
#endif
}

// ------------------------------------------------------ 5. dead holder

// A holder (fast path) killed with -9 while a writer and a reader wait
// behind it: how long from the kill until each is let in, and until a
// request that arrives just after the kill is.
void section_dead(const Opts &o) {
    const int rounds = o.full ? 9 : 5;
    printf("### 5. A holder killed with -9: from the kill to each grant (ms; median [max] of %d rounds)\n\n",
           rounds);
    printf("| holder | writer already waiting | reader already waiting | request arriving after the kill |\n"
           "|---|---|---|---|\n");
    LockTable *t = g_env->t.shared.get();
    struct Times {
        std::atomic<double> at[2];
        std::atomic<int> held, waiting;
    };
    auto *sh = static_cast<Times *>(map_shared(sizeof(Times)));
    for (const Mode hm : {Mode::Write, Mode::Read}) {
        std::vector<double> w, r, later;
        for (int round = 0; round < rounds; ++round) {
            sh->at[0] = sh->at[1] = 0;
            sh->held = sh->waiting = 0;
            const std::string key = std::string("dead-") + mode_name(hm) + "-" + std::to_string(round);
            const pid_t holder = fork();
            if (holder == 0) {
                g_env->t.child_init();
                HolderInfo info;
                LockHandle h;
                if (t->acquire(key.data(), key.size(), hm, -1, info, h) == AcquireResult::Acquired) sh->held = 1;
                for (;;) pause();
            }
            while (!sh->held.load()) sleep_us(100);
            pid_t waiters[2];
            for (int i = 0; i < 2; ++i) {
                waiters[i] = fork();
                if (waiters[i] == 0) {
                    g_env->t.child_init();
                    HolderInfo info;
                    LockHandle h;
                    ++sh->waiting;
                    if (t->acquire(key.data(), key.size(), i == 0 ? Mode::Write : Mode::Read,
                                   10 * 1000000000LL, info, h) == AcquireResult::Acquired)
                        sh->at[i] = now_s();
                    t->release(h);
                    _exit(0);
                }
                // The writer first in line, then the reader behind it (a
                // reader that came first would join a reading holder).
                while (sh->waiting.load() < i + 1) sleep_us(100);
                sleep_us(20000);
            }
            sleep_us(60000);  // both in the queue (and past a first look at the holder)
            const double killed = now_s();
            kill(holder, SIGKILL);
            waitpid(holder, nullptr, 0);
            HolderInfo info;
            LockHandle h;
            if (t->acquire(key.data(), key.size(), Mode::Read, 10 * 1000000000LL, info, h) == AcquireResult::Acquired)
                later.push_back((now_s() - killed) * 1e3);
            t->release(h);
            for (pid_t p : waiters) waitpid(p, nullptr, 0);
            if (sh->at[0] > 0) w.push_back((sh->at[0] - killed) * 1e3);
            if (sh->at[1] > 0) r.push_back((sh->at[1] - killed) * 1e3);
        }
        auto cell = [](std::vector<double> v) {
            char b[64];
            if (v.empty()) return std::string("never");
            snprintf(b, sizeof b, "%.1f [%.1f]", pct(v, 50), *std::max_element(v.begin(), v.end()));
            return std::string(b);
        };
        printf("| %s | %s | %s | %s |\n", mode_name(hm), cell(w).c_str(), cell(r).c_str(), cell(later).c_str());
    }
    munmap(sh, sizeof(Times));
    printf("\nThe first in line looks at the holders every 25 ms, each other waiter at the nearest waiter "
           "ahead every 100 ms (and further only past dead ones); a fast-path holder's slot names its process, "
           "so a dead one is found without the MPM's exit report.\n\n");
}

int main(int argc, char **argv) {
    Opts o;
    o.full = argc > 1 && !strcmp(argv[1], "full");
    o.out = argc > 2 ? argv[2] : ".";
    o.runs = o.full ? 9 : 5;
    o.sample_s = o.full ? 0.15 : 0.04;
    o.mp_runs = o.full ? 5 : 3;
    o.mp_s = o.full ? 0.4 : 0.1;
    o.handoffs = o.full ? 1000 : 200;
    o.fair_s = o.full ? 3 : 1;
    o.fair_cap = o.full ? 1 : 0.5;
    o.idle_s = o.full ? 2 : 1;
    o.scale_runs = o.full ? 5 : 3;
    o.scale_s = o.full ? 0.1 : 0.03;
    const char *only = getenv("BENCH_ONLY");  // e.g. "1a,2" while developing

    apr_initialize();
    static Env env;
    g_env = &env;
    env.t.init();
    for (int i = 0; i < kKeys; ++i) {
        pthread_rwlockattr_t a;
        pthread_rwlockattr_init(&a);
        pthread_rwlock_init(&env.rw[i], &a);
        env.keys[i] = "doi:10.5063/F1-" + std::to_string(i);
    }
    char dir[] = "/tmp/pidlock-bench-flock-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    env.flock_dir = dir;
    for (int i = 0; i < kKeys; ++i) env.flock_paths[i] = env.flock_dir + "/" + std::to_string(i) + ".lock";
#ifdef HAVE_LIBPQ
    if (const char *ci = getenv("PIDLOCK_PG_CONNINFO")) {
        env.pg_conninfo = ci;
        PGconn *c = PQconnectdb(ci);
        env.have_pg = PQstatus(c) == CONNECTION_OK;
        if (!env.have_pg) fprintf(stderr, "PostgreSQL not reachable: %s", PQerrorMessage(c));
        PQfinish(c);
    }
#else
    setenv("PIDLOCK_PG_SKIP", "bench built without libpq-dev", 1);
#endif
    g_s = static_cast<Scratch *>(map_shared(sizeof(Scratch)));
    signal(SIGPIPE, SIG_IGN);

    auto want = [&](const char *s) { return !only || strstr(only, s); };
    if (want("1a")) section_uncontended(o);
    if (want("1b")) section_workers(o);
    if (want("1c")) section_cluster(o);
    if (want("2")) {
        // "2" runs 2a, 2b and 2c; naming one of them (e.g. "2c") runs only those named.
        const bool some = only && (strstr(only, "2a") || strstr(only, "2b") || strstr(only, "2c"));
        section_handoff(o, !some || strstr(only, "2a"), !some || strstr(only, "2b"), !some || strstr(only, "2c"));
    }
    if (want("4")) section_scale(o);
    if (want("5")) section_dead(o);
    printf("Lock benchmarks: %ld CPUs online.\n\n", sysconf(_SC_NPROCESSORS_ONLN));

    for (int i = 0; i < kKeys; ++i) unlink(env.flock_paths[i].c_str());
    rmdir(dir);
    return 0;
}
