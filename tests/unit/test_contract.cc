// The contract every LockBackend keeps, written against the interface alone
// and run over each backend of kBackends: readers share, a writer is alone,
// acquire_all takes all of its keys or none by one deadline, keys in
// key_less order never deadlock, release_all is idempotent, a broken key's
// release does nothing, the status view names each request's holders alike.
// Backends whose locks hold across fork() are also run by forked processes.
// A backend that grants everything must be caught by the same witness, so a
// silent witness cannot pass for a sound backend.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pidlock_backend.h"
#include "pidlock_cluster.h"
#include "concurrency.h"
#include "pidlock_locks.h"
#include "pidlock_table.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

// ------------------------------------------------------------- backends

// One backend under test, with the memory it runs over.
class Subject {
  public:
    virtual ~Subject() = default;
    virtual LockBackend &backend() = 0;
};

// The lock table over process memory and private mutexes ("thread"), or
// over a MAP_SHARED region and robust process-shared mutexes ("shared").
class TableSubject final : public Subject {
  public:
    TableSubject(const char *name, uint32_t capacity, bool shared) : shared_(shared) {
        TableParams p;
        p.capacity = capacity;
        p.key_cap = 64;
        p.stripes = 8;
        table_size_ = LockTable::region_size(p);
        locks_size_ = PthreadStripeLocks::region_size(p.stripes);
        table_mem_ = allocate(table_size_);
        locks_mem_ = allocate(locks_size_);
        CHECK_TEXT(table_mem_ && locks_mem_, name);
        LONGS_EQUAL_TEXT(0, PthreadStripeLocks::init(locks_mem_, p.stripes, shared), name);
        CHECK_TEXT(LockTable::format(table_mem_, table_size_, p), name);
        locks_.reset(new PthreadStripeLocks(locks_mem_, p.stripes));
        table_.reset(new LockTable(table_mem_, locks_.get()));
        CHECK_TEXT(table_->valid(), name);
        backend_.reset(new TableBackend(name, table_.get()));
    }
    ~TableSubject() override {
        backend_.reset();
        table_.reset();
        locks_.reset();
        release(table_mem_, table_size_);
        release(locks_mem_, locks_size_);
    }
    LockBackend &backend() override { return *backend_; }

  private:
    void *allocate(size_t n) { return shared_ ? map_shared(n) : std::calloc(1, n); }
    void release(void *p, size_t n) {
        if (!p) return;
        if (shared_) munmap(p, n);
        else std::free(p);
    }
    bool shared_;
    size_t table_size_ = 0, locks_size_ = 0;
    void *table_mem_ = nullptr, *locks_mem_ = nullptr;
    std::unique_ptr<PthreadStripeLocks> locks_;
    std::unique_ptr<LockTable> table_;
    std::unique_ptr<TableBackend> backend_;
};

// The PostgreSQL tier over a "shared" table, against the throwaway server
// tests/run_all.sh starts (PIDLOCK_TEST_PG: its conninfo; unset: skipped).
class ClusterSubject final : public Subject {
  public:
    ClusterSubject(uint32_t capacity, const char *conninfo) : table_("postgres", capacity, true) {
        stats_size_ = ClusterStats::region_size(16);
        stats_mem_ = map_shared(stats_size_);
        CHECK(stats_mem_ != nullptr);
        ClusterOptions opt;
        opt.conninfo = conninfo;
        backend_.reset(new ClusterBackend(&table_.backend(), ClusterStats::format(stats_mem_, 16), opt));
    }
    ~ClusterSubject() override {
        backend_.reset();
        munmap(stats_mem_, stats_size_);
    }
    LockBackend &backend() override { return *backend_; }

  private:
    TableSubject table_;
    size_t stats_size_ = 0;
    void *stats_mem_ = nullptr;
    std::unique_ptr<ClusterBackend> backend_;
};

std::unique_ptr<Subject> make_cluster_subject(uint32_t capacity) {
    const char *conninfo = std::getenv("PIDLOCK_TEST_PG");
    if (!conninfo || !*conninfo) return nullptr;
    return std::make_unique<ClusterSubject>(capacity, conninfo);
}

struct BackendFactory {
    const char *name;
    bool across_fork;  // processes forked after make() share its locks
    // Null: not available here (the backend is skipped, with a note).
    std::unique_ptr<Subject> (*make)(uint32_t capacity);
};

// Every backend the contract runs over; a new backend is one line here.
const BackendFactory kBackends[] = {
    {"thread", false, [](uint32_t cap) -> std::unique_ptr<Subject> { return std::make_unique<TableSubject>("thread", cap, false); }},
    {"shared", true, [](uint32_t cap) -> std::unique_ptr<Subject> { return std::make_unique<TableSubject>("shared", cap, true); }},
    {"postgres", true, make_cluster_subject},
};

// What a contract check sees of the backend it runs over.
struct Be {
    const char *name;
    bool across_fork;
    LockBackend &lb;
};

// Runs `check` once per backend; every assertion in it names the backend.
template <typename F>
void for_each_backend(uint32_t capacity, F check) {
    for (const BackendFactory &f : kBackends) {
        std::unique_ptr<Subject> s = f.make(capacity);
        if (!s) {
            UT_PRINT((std::string("backend ") + f.name + " not available here: skipped").c_str());
            continue;
        }
        Be be{f.name, f.across_fork, s->backend()};
        check(be);
    }
}

#define B_CHECK(cond) CHECK_TEXT((cond), be.name)
#define B_EQUAL(expected, actual) LONGS_EQUAL_TEXT((expected), (actual), be.name)
#define B_RESULT(expected, actual) STRCMP_EQUAL_TEXT(result_name(expected), result_name(actual), be.name)

const char *result_name(AcquireResult r) {
    switch (r) {
    case AcquireResult::Acquired: return "Acquired";
    case AcquireResult::Busy: return "Busy";
    case AcquireResult::Full: return "Full";
    case AcquireResult::Error: return "Error";
    case AcquireResult::Unavailable: return "Unavailable";
    case AcquireResult::ClientGone: return "ClientGone";
    }
    return "?";
}

// A test-only backend that grants everything and locks nothing: the witness
// must see its overlaps.
class NoopBackend final : public LockBackend {
  public:
    const char *name() const override { return "noop"; }
    uint32_t capacity() const override { return 0; }
    AcquireResult acquire_all(const KeyRef *, size_t n, Mode mode, int64_t, const HolderInfo &, LockSet &set,
                              BusyReport *, int *) override {
        set.set(n, mode);
        return AcquireResult::Acquired;
    }
    int release_all(LockSet &set) override {
        set.clear();
        return 0;
    }
    int break_key(const KeyRef &) override { return 0; }
    bool snapshot(TableSnapshot &out, int *) override {
        out = TableSnapshot();
        return true;
    }
    void count(Counter) override {}
};

// ------------------------------------------------------------- helpers

constexpr int64_t kDontWait = 0;  // a deadline already past

int64_t deadline_in_ms(int ms) { return monotonic_ns() + ms * 1000000LL; }

// Keys as a request holds them: distinct, in key order.
struct Keys {
    std::vector<std::string> bytes;
    std::vector<KeyRef> refs;
    Keys(std::initializer_list<std::string> ks) : bytes(ks) {
        sort_keys(bytes);
        for (const std::string &k : bytes) refs.push_back(KeyRef{k.data(), k.size()});
    }
};

AcquireResult take(LockBackend &lb, const Keys &k, Mode m, int64_t deadline, LockSet &set,
                   BusyReport *rep = nullptr, uint64_t request = 0) {
    HolderInfo info;
    info.method = m == Mode::Write ? "PUT" : "GET";
    info.uri = "/contract";
    info.client = "127.0.0.1";
    info.request = request;
    int err = 0;
    return lb.acquire_all(k.refs.data(), k.refs.size(), m, deadline, info, set, rep, &err);
}

TableSnapshot view(LockBackend &lb) {
    TableSnapshot s;
    int err = 0;
    lb.snapshot(s, &err);
    return s;
}

const LockView *find_lock(const TableSnapshot &s, const std::string &key) {
    for (const LockView &l : s.locks)
        if (l.key == key) return &l;
    return nullptr;
}

std::vector<uint64_t> holder_requests(const LockView *l) {
    std::vector<uint64_t> r;
    if (l)
        for (const HolderView &h : l->holders)
            if (!h.waiting) r.push_back(h.request);
    std::sort(r.begin(), r.end());
    return r;
}

// A deadlock must fail the run, not hang it: past its time the watchdog
// ends the process (a forked worker, or the test run) with a message.

// ---------------------------------------------------------- the witness

// Who is inside each key's critical section right now, seen independently
// of the backend: in shared memory, so forked workers report to it too.
constexpr int kWitnessKeys = 4;
struct Witness {
    std::atomic<int> readers[kWitnessKeys];
    std::atomic<int> writers[kWitnessKeys];
    std::atomic<int> max_writers;  // most writers inside one key at once
    std::atomic<int> mixed;        // a reader and a writer inside one key
    std::atomic<int> misordered;   // sort_keys gave another order than key_less
    std::atomic<long> ops, refused;
};

// A deadlock never ends; a slow honest run (PostgreSQL round trips under
// ASan on a loaded machine) still completes operations. So the watchdog
// fires only when no worker has finished an operation (taken or refused)
// for kStallSeconds: it kills the forked workers, says so and ends the test
// binary. A fixed bound on the whole run failed honest runs under load.
constexpr int kStallSeconds = 30;

class StallWatch {
  public:
    StallWatch(const Witness *w, const std::vector<pid_t> &kids) : w_(w), kids_(kids) {
        thread_ = std::thread([this] { watch(); });
    }
    ~StallWatch() {
        stop_ = true;
        thread_.join();
    }

  private:
    void watch() {
        long last = -1;
        auto since = std::chrono::steady_clock::now();
        while (!stop_) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            const long now_ops = w_->ops.load() + w_->refused.load();
            const auto now = std::chrono::steady_clock::now();
            if (now_ops != last) {
                last = now_ops;
                since = now;
            } else if (now - since > std::chrono::seconds(kStallSeconds)) {
                for (pid_t k : kids_) kill(k, SIGKILL);
                static const char msg[] = "test_contract: no operation finished for 30 s: a deadlock or a lost wakeup\n";
                (void)!write(2, msg, sizeof msg - 1);
                _exit(3);
            }
        }
    }
    const Witness *w_;
    const std::vector<pid_t> &kids_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

void raise_to(std::atomic<int> &a, int v) {
    int cur = a.load();
    while (v > cur && !a.compare_exchange_weak(cur, v)) {}
}

void witness_enter(Witness *w, int k, Mode m) {
    if (m == Mode::Write) {
        raise_to(w->max_writers, ++w->writers[k]);
        if (w->readers[k].load() > 0) ++w->mixed;
    } else {
        ++w->readers[k];
        if (w->writers[k].load() > 0) ++w->mixed;
    }
}

void witness_leave(Witness *w, int k, Mode m) {
    if (m == Mode::Write) {
        raise_to(w->max_writers, w->writers[k].load());
        if (w->readers[k].load() > 0) ++w->mixed;
        --w->writers[k];
    } else {
        if (w->writers[k].load() > 0) ++w->mixed;
        --w->readers[k];
    }
}

enum class Pattern {
    Random,    // one to three of the witness keys, read or write
    Crossing,  // half ask for {w1, w0}, half for {w0, w1}: writes
};

// One worker's loop: take, witness, release.
void witness_worker(LockBackend *lb, Witness *w, unsigned id, int ops, Pattern pattern) {
    std::mt19937 rng(1000u + id);
    for (int i = 0; i < ops; ++i) {
        std::vector<std::string> keys;
        Mode m = Mode::Write;
        if (pattern == Pattern::Crossing) {
            keys = id % 2 ? std::vector<std::string>{"w1", "w0"} : std::vector<std::string>{"w0", "w1"};
        } else {
            for (unsigned n = 1 + rng() % 3; n > 0; --n) keys.push_back("w" + std::to_string(rng() % kWitnessKeys));
            m = rng() % 3 == 0 ? Mode::Write : Mode::Read;
        }
        sort_keys(keys);
        std::vector<KeyRef> refs;
        for (size_t j = 0; j < keys.size(); ++j) {
            refs.push_back(KeyRef{keys[j].data(), keys[j].size()});
            if (j && !key_less(refs[j - 1], refs[j])) ++w->misordered;
        }
        HolderInfo info;
        info.request = (static_cast<uint64_t>(id) << 32) | static_cast<uint64_t>(i);
        LockSet set;
        int err = 0;
        if (lb->acquire_all(refs.data(), refs.size(), m, kNoDeadline, info, set, nullptr, &err) !=
            AcquireResult::Acquired) {
            ++w->refused;
            continue;
        }
        for (const std::string &k : keys) witness_enter(w, k[1] - '0', m);
        hold_briefly(rng);
        for (const std::string &k : keys) witness_leave(w, k[1] - '0', m);
        lb->release_all(set);
        ++w->ops;
    }
}

struct WitnessResult {
    int max_writers = 0, mixed = 0, misordered = 0, failed_workers = 0;
    long ops = 0, refused = 0;
    bool overlap_seen() const { return max_writers > 1 || mixed > 0; }
};

// Runs `workers` witness workers over `lb`: threads of this process, or
// fork()ed processes (each under its own watchdog).
WitnessResult run_witness(LockBackend &lb, bool forked, int workers, int ops, Pattern pattern) {
    // Zeroed by mmap: every count starts at 0.
    auto *w = static_cast<Witness *>(map_shared(sizeof(Witness)));
    CHECK(w != nullptr);
    WitnessResult r;
    {
        if (forked) {
            std::vector<pid_t> kids;
            for (int i = 0; i < workers; ++i) {
                const pid_t pid = fork();
                if (pid == 0) {
                    alarm(600);  // should this binary die without killing it
                    witness_worker(&lb, w, static_cast<unsigned>(i), ops, pattern);
                    _exit(0);
                }
                if (pid > 0) kids.push_back(pid);
                else ++r.failed_workers;
            }
            const StallWatch watch(w, kids);
            for (pid_t k : kids) {
                int st = 0;
                if (waitpid(k, &st, 0) != k || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ++r.failed_workers;
            }
        } else {
            const std::vector<pid_t> none;
            const StallWatch watch(w, none);
            std::vector<std::thread> ts;
            for (int i = 0; i < workers; ++i)
                ts.emplace_back(witness_worker, &lb, w, static_cast<unsigned>(i), ops, pattern);
            for (std::thread &t : ts) t.join();
        }
    }
    r.max_writers = w->max_writers.load();
    r.mixed = w->mixed.load();
    r.misordered = w->misordered.load();
    r.ops = w->ops.load();
    r.refused = w->refused.load();
    munmap(w, sizeof(Witness));
    return r;
}

void check_sound(const Be &be, const WitnessResult &r, long expected_ops) {
    B_EQUAL(0, r.failed_workers);
    B_EQUAL(1, r.max_writers);
    B_EQUAL(0, r.mixed);
    B_EQUAL(0, r.misordered);
    B_EQUAL(0, r.refused);
    B_EQUAL(expected_ops, r.ops);
}

constexpr int kWorkers = 4;
constexpr int kRandomOps = 1500;
constexpr int kCrossingOps = 1500;  // per worker: thousands of crossings in all

}  // namespace

TEST_GROUP(Contract) {};

TEST(Contract, KeyOrderIsBytewiseShorterFirst) {
    std::vector<std::string> k = {"b", "a", "ab", "b", "\xFF", "A", ""};
    sort_keys(k);
    const std::vector<std::string> want = {"", "A", "a", "ab", "b", "\xFF"};
    CHECK(k == want);
    for (size_t i = 1; i < k.size(); ++i) {
        CHECK(key_less(KeyRef{k[i - 1].data(), k[i - 1].size()}, KeyRef{k[i].data(), k[i].size()}));
        CHECK_FALSE(key_less(KeyRef{k[i].data(), k[i].size()}, KeyRef{k[i - 1].data(), k[i - 1].size()}));
    }
    std::vector<std::string> ab = {"A", "B"}, ba = {"B", "A"};
    sort_keys(ab);
    sort_keys(ba);
    CHECK(ab == ba);
    const std::string nul("a\0b", 3), nul2("a\0c", 3);
    CHECK(key_less(KeyRef{nul.data(), nul.size()}, KeyRef{nul2.data(), nul2.size()}));
}

TEST(Contract, ReadersShareWriterIsAlone) {
    for_each_backend(16, [](const Be &be) {
        const Keys a{"A"};
        LockSet r1, r2, w;
        BusyReport rep;
        B_RESULT(AcquireResult::Acquired, take(be.lb, a, Mode::Read, kDontWait, r1));
        B_RESULT(AcquireResult::Acquired, take(be.lb, a, Mode::Read, kDontWait, r2));
        const TableSnapshot s = view(be.lb);
        const LockView *l = find_lock(s, "A");
        B_CHECK(l != nullptr);
        B_CHECK(l->mode == Mode::Read);
        B_EQUAL(2, holder_requests(l).size());
        B_RESULT(AcquireResult::Busy, take(be.lb, a, Mode::Write, kDontWait, w, &rep));
        B_CHECK(w.empty());
        B_CHECK(rep.key == "A" && rep.held_mode == Mode::Read);
        B_EQUAL(2, rep.holders);
        B_EQUAL(0, be.lb.release_all(r1));
        B_EQUAL(0, be.lb.release_all(r2));
        B_RESULT(AcquireResult::Acquired, take(be.lb, a, Mode::Write, kDontWait, w));
        LockSet other;
        B_RESULT(AcquireResult::Busy, take(be.lb, a, Mode::Write, kDontWait, other));
        B_RESULT(AcquireResult::Busy, take(be.lb, a, Mode::Read, kDontWait, other));
        B_CHECK(other.empty());
        B_EQUAL(0, be.lb.release_all(w));
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

TEST(Contract, WitnessSeesNoOverlapInThreads) {
    for_each_backend(64, [](const Be &be) {
        check_sound(be, run_witness(be.lb, false, kWorkers, kRandomOps, Pattern::Random), kWorkers * kRandomOps);
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

TEST(Contract, WitnessSeesNoOverlapInForkedProcesses) {
    for_each_backend(64, [](const Be &be) {
        if (!be.across_fork) return;
        check_sound(be, run_witness(be.lb, true, kWorkers, kRandomOps, Pattern::Random), kWorkers * kRandomOps);
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

// The test of the test: a backend that locks nothing must be caught.
TEST(Contract, WitnessCatchesABackendThatGrantsEverything) {
    NoopBackend noop;
    const bool forked[] = {false, true};
    for (bool f : forked) {
        WitnessResult r;
        for (int round = 0; round < 5 && !r.overlap_seen(); ++round)
            r = run_witness(noop, f, kWorkers, kRandomOps, Pattern::Random);
        CHECK_TEXT(r.overlap_seen(), f ? "forked" : "threads");
        CHECK_TEXT(r.max_writers > 1 || r.mixed > 0, f ? "forked" : "threads");
    }
}

TEST(Contract, CrossingKeySetsNeverDeadlock) {
    for_each_backend(64, [](const Be &be) {
        // Each PostgreSQL operation is two round trips: a third of the
        // crossings (still two thousand) keeps the run short.
        const int ops = std::strcmp(be.name, "postgres") == 0 ? kCrossingOps / 3 : kCrossingOps;
        check_sound(be, run_witness(be.lb, false, kWorkers, ops, Pattern::Crossing), kWorkers * ops);
        if (be.across_fork)
            check_sound(be, run_witness(be.lb, true, kWorkers, ops, Pattern::Crossing), kWorkers * ops);
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

TEST(Contract, BusyKeyRollsBackWhatWasTaken) {
    for_each_backend(16, [](const Be &be) {
        LockSet holder, asker, other;
        BusyReport rep;
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"B"}, Mode::Write, kDontWait, holder));
        const int64_t t0 = monotonic_ns();
        B_RESULT(AcquireResult::Busy, take(be.lb, Keys{"C", "A", "B"}, Mode::Write, deadline_in_ms(50), asker, &rep));
        B_CHECK(monotonic_ns() - t0 >= 45 * 1000000LL);
        B_CHECK(asker.empty());
        B_CHECK(rep.key == "B");
        B_CHECK(rep.held_mode == Mode::Write);
        B_EQUAL(1, rep.holders);
        const TableSnapshot s = view(be.lb);
        B_EQUAL(1, s.locks.size());
        B_CHECK(find_lock(s, "A") == nullptr && find_lock(s, "C") == nullptr);
        // What the refused request had taken is free at once.
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A", "C"}, Mode::Write, kDontWait, other));
        B_EQUAL(0, be.lb.release_all(other));
        B_EQUAL(0, be.lb.release_all(holder));
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

TEST(Contract, OneDeadlineForAllKeys) {
    for_each_backend(16, [](const Be &be) {
        LockSet first, second, asker, other;
        BusyReport rep;
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A"}, Mode::Write, kDontWait, first));
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"B"}, Mode::Write, kDontWait, second));
        // A is free after 250 ms, B never: a wait per key would end at 650.
        std::thread freer([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
            be.lb.release_all(first);
        });
        const int64_t t0 = monotonic_ns();
        const AcquireResult res = take(be.lb, Keys{"A", "B"}, Mode::Write, t0 + 400 * 1000000LL, asker, &rep);
        const int64_t waited_ms = (monotonic_ns() - t0) / 1000000;
        freer.join();
        B_RESULT(AcquireResult::Busy, res);
        B_CHECK(rep.key == "B");
        B_CHECK(waited_ms >= 399);
        B_CHECK(waited_ms < 600);
        B_CHECK(asker.empty());
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A"}, Mode::Write, kDontWait, other));
        B_EQUAL(0, be.lb.release_all(other));
        B_EQUAL(0, be.lb.release_all(second));
    });
}

TEST(Contract, FullTableRollsBackAndHoldsNothingMore) {
    for_each_backend(4, [](const Be &be) {
        const uint32_t cap = be.lb.capacity();
        if (cap == 0) return;  // no fixed limit: nothing to fill
        std::vector<LockSet> held(cap);
        for (uint32_t i = 0; i + 1 < cap; ++i)
            B_RESULT(AcquireResult::Acquired,
                     take(be.lb, Keys{"f" + std::to_string(i)}, Mode::Write, kDontWait, held[i]));
        // "x" takes the last place, "y" finds none: x goes back.
        LockSet asker;
        B_RESULT(AcquireResult::Full, take(be.lb, Keys{"x", "y"}, Mode::Write, deadline_in_ms(1000), asker));
        B_CHECK(asker.empty());
        TableSnapshot s = view(be.lb);
        B_EQUAL(cap - 1, s.used);
        B_CHECK(find_lock(s, "x") == nullptr && find_lock(s, "y") == nullptr);
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"x"}, Mode::Write, kDontWait, held[cap - 1]));
        LockSet more;
        B_RESULT(AcquireResult::Full, take(be.lb, Keys{"z"}, Mode::Read, kDontWait, more));
        B_CHECK(more.empty());
        for (LockSet &h : held) B_EQUAL(0, be.lb.release_all(h));
        B_EQUAL(0, view(be.lb).used);
    });
}

TEST(Contract, ReleaseAllIsIdempotent) {
    for_each_backend(16, [](const Be &be) {
        LockSet mine, theirs, probe;
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A", "B"}, Mode::Write, kDontWait, mine));
        B_EQUAL(2, mine.size());
        const LockSet stale = mine;  // a copy kept by mistake
        B_EQUAL(0, be.lb.release_all(mine));
        B_CHECK(mine.empty());
        B_EQUAL(0, mine.fence());
        B_EQUAL(0, be.lb.release_all(mine));
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A", "B"}, Mode::Write, kDontWait, theirs, nullptr, 9));
        // Releasing again, even through a stale copy, leaves their locks.
        B_EQUAL(0, be.lb.release_all(mine));
        LockSet copy = stale;
        be.lb.release_all(copy);
        B_RESULT(AcquireResult::Busy, take(be.lb, Keys{"A"}, Mode::Read, kDontWait, probe));
        B_RESULT(AcquireResult::Busy, take(be.lb, Keys{"B"}, Mode::Read, kDontWait, probe));
        const TableSnapshot s = view(be.lb);
        B_CHECK(holder_requests(find_lock(s, "A")) == std::vector<uint64_t>{9});
        B_CHECK(holder_requests(find_lock(s, "B")) == std::vector<uint64_t>{9});
        B_EQUAL(0, be.lb.release_all(theirs));
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

TEST(Contract, BrokenKeyReleaseDoesNothing) {
    for_each_backend(16, [](const Be &be) {
        LockSet broken, next, probe, r1, r2;
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A", "B"}, Mode::Write, kDontWait, broken, nullptr, 1));
        B_EQUAL(1, be.lb.break_key(KeyRef{"A", 1}));
        B_CHECK(find_lock(view(be.lb), "A") == nullptr);
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A"}, Mode::Write, kDontWait, next, nullptr, 2));
        // The broken holder's release gives back B, and leaves A to its new holder.
        B_EQUAL(0, be.lb.release_all(broken));
        B_CHECK(broken.empty());
        B_RESULT(AcquireResult::Busy, take(be.lb, Keys{"A"}, Mode::Read, kDontWait, probe));
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"B"}, Mode::Write, kDontWait, probe));
        B_EQUAL(0, be.lb.release_all(probe));
        const TableSnapshot s = view(be.lb);
        B_CHECK(holder_requests(find_lock(s, "A")) == std::vector<uint64_t>{2});
        B_EQUAL(0, be.lb.release_all(next));
        // Every holder goes; a key nobody holds breaks nothing.
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"R"}, Mode::Read, kDontWait, r1));
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"R"}, Mode::Read, kDontWait, r2));
        B_EQUAL(2, be.lb.break_key(KeyRef{"R", 1}));
        B_EQUAL(0, be.lb.break_key(KeyRef{"nobody", 6}));
        B_EQUAL(0, be.lb.release_all(r1));
        B_EQUAL(0, be.lb.release_all(r2));
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

TEST(Contract, SnapshotListsEachKeyWithItsRequest) {
    for_each_backend(16, [](const Be &be) {
        LockSet x, y;
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"C", "A", "B"}, Mode::Read, kDontWait, x, nullptr, 77));
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"B"}, Mode::Read, kDontWait, y, nullptr, 78));
        const TableSnapshot s = view(be.lb);
        B_EQUAL(3, s.locks.size());
        B_CHECK(holder_requests(find_lock(s, "A")) == std::vector<uint64_t>{77});
        B_CHECK((holder_requests(find_lock(s, "B")) == std::vector<uint64_t>{77, 78}));
        B_CHECK(holder_requests(find_lock(s, "C")) == std::vector<uint64_t>{77});
        for (const LockView &l : s.locks)
            for (const HolderView &h : l.holders) {
                B_CHECK(h.method == "GET" && h.uri == "/contract" && h.client == "127.0.0.1");
                B_EQUAL(getpid(), h.pid);
            }
        B_EQUAL(0, be.lb.release_all(x));
        B_EQUAL(0, be.lb.release_all(y));
    });
}

TEST(Contract, AtMostMaxKeysAndNoneIsAnError) {
    for_each_backend(16, [](const Be &be) {
        std::vector<std::string> names;
        for (size_t i = 0; i <= LockSet::kMaxKeys; ++i) names.push_back("k" + std::to_string(i));
        sort_keys(names);
        std::vector<KeyRef> refs;
        for (const std::string &n : names) refs.push_back(KeyRef{n.data(), n.size()});
        HolderInfo info;
        LockSet set;
        int err = 0;
        B_RESULT(AcquireResult::Error, be.lb.acquire_all(refs.data(), refs.size(), Mode::Write, kDontWait, info, set,
                                                         nullptr, &err));
        B_CHECK(err != 0);
        B_CHECK(set.empty());
        B_EQUAL(0, view(be.lb).locks.size());
        err = 0;
        B_RESULT(AcquireResult::Error, be.lb.acquire_all(refs.data(), 0, Mode::Write, kDontWait, info, set, nullptr, &err));
        B_CHECK(err != 0 && set.empty());
        B_RESULT(AcquireResult::Error, be.lb.acquire_all(refs.data(), 1, Mode::None, kDontWait, info, set, nullptr, &err));
        B_CHECK(set.empty());
        B_RESULT(AcquireResult::Acquired, be.lb.acquire_all(refs.data(), LockSet::kMaxKeys, Mode::Write, kDontWait, info,
                                                            set, nullptr, &err));
        B_EQUAL(LockSet::kMaxKeys, set.size());
        B_EQUAL(LockSet::kMaxKeys, view(be.lb).locks.size());
        B_EQUAL(0, be.lb.release_all(set));
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

// acquire_within: the same locks as acquire_all, the wait given from now.
TEST(Contract, AcquireWithinWaitsFromNow) {
    for_each_backend(16, [](const Be &be) {
        HolderInfo info;
        info.method = "GET";
        info.uri = "/contract";
        int err = 0;
        const Keys a{"A"}, ab{"A", "B"};
        LockSet w, r, r2;
        B_RESULT(AcquireResult::Acquired,
                 be.lb.acquire_within(a.refs.data(), 1, Mode::Write, 0, info, w, nullptr, &err));
        B_EQUAL(1, w.size());
        B_CHECK(w.fence() > 0);
        B_EQUAL(1, view(be.lb).locks.size());
        BusyReport rep;
        B_RESULT(AcquireResult::Busy, be.lb.acquire_within(a.refs.data(), 1, Mode::Read, 0, info, r, &rep, &err));
        B_CHECK(r.empty());
        B_RESULT(AcquireResult::Busy,
                 be.lb.acquire_within(ab.refs.data(), 2, Mode::Read, 20 * 1000000LL, info, r, nullptr, &err));
        B_CHECK(r.empty());
        // A waiter with no limit has it once the writer lets go.
        std::atomic<bool> got{false};
        AcquireResult res = AcquireResult::Error;
        std::thread t([&] {
            int e = 0;
            res = be.lb.acquire_within(a.refs.data(), 1, Mode::Read, -1, info, r, nullptr, &e);
            got = true;
        });
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        B_CHECK(!got);
        B_EQUAL(0, be.lb.release_all(w));
        t.join();
        B_RESULT(AcquireResult::Acquired, res);
        B_EQUAL(0, r.fence());
        B_RESULT(AcquireResult::Acquired,
                 be.lb.acquire_within(ab.refs.data(), 2, Mode::Read, 1000 * 1000000LL, info, r2, nullptr, &err));
        B_EQUAL(2, r2.size());
        B_EQUAL(0, be.lb.release_all(r));
        B_EQUAL(0, be.lb.release_all(r2));
        B_EQUAL(0, view(be.lb).locks.size());
    });
}

TEST(Contract, WriteSetsGetIncreasingFences) {
    for_each_backend(16, [](const Be &be) {
        LockSet w1, w2, w3, r;
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A"}, Mode::Write, kDontWait, w1));
        const uint64_t f1 = w1.fence();
        B_CHECK(f1 > 0);
        B_EQUAL(0, be.lb.release_all(w1));
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"A", "B"}, Mode::Write, kDontWait, w2));
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"C"}, Mode::Write, kDontWait, w3));
        B_CHECK(w2.fence() > f1);
        B_CHECK(w3.fence() > w2.fence());
        B_RESULT(AcquireResult::Acquired, take(be.lb, Keys{"D"}, Mode::Read, kDontWait, r));
        B_EQUAL(0, r.fence());
        B_EQUAL(0, be.lb.release_all(w2));
        B_EQUAL(0, be.lb.release_all(w3));
        B_EQUAL(0, be.lb.release_all(r));
    });
}
