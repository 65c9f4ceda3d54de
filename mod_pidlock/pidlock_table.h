// The lock table: per-key reader/writer locks in one memory region that may be
// shared by many processes. The region holds only offsets (never pointers), so
// every process may map it at a different address. Buckets are guarded by a
// small set of stripe mutexes supplied by the caller (APR global mutexes in
// httpd, anything in tests); waiting sleeps on a futex word per entry.
//
// Callers rely on: readers share, a writer is alone; grants are phase-fair
// (a waiting writer blocks later readers; a writer's release admits every
// waiting reader before the next writer); release is idempotent and a handle
// whose lock was broken releases nothing; capacity is fixed, and a full table
// is an answer (Full), never an overflow. No allocation after format().
#ifndef PIDLOCK_TABLE_H
#define PIDLOCK_TABLE_H

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pidlock_types.h"

namespace pidlock {

class StripeLocks {
  public:
    virtual ~StripeLocks() = default;
    // 0 on success, else an error code (errno or apr_status_t) for the log.
    virtual int lock(unsigned stripe) = 0;
    // 0 if taken, nonzero (busy or error) if not; never waits.
    virtual int trylock(unsigned stripe) = 0;
    virtual int unlock(unsigned stripe) = 0;
};

struct TableParams {
    uint32_t capacity = 0;  // distinct keys and in-flight requests
    uint32_t key_cap = 0;   // longest key in bytes
    uint32_t stripes = 0;   // number of stripe mutexes, a power of two
};

struct LockHandle {
    uint32_t record = 0;  // index + 1; 0: holds nothing
    uint32_t stripe = 0;
    uint64_t token = 0;
    Mode mode = Mode::None;
    bool held() const { return record != 0; }
};

class LockTable {
  public:
    static constexpr uint32_t kDefaultStripes = 32;
    // Bytes the region needs for these parameters (0 if they are invalid).
    static size_t region_size(const TableParams &p);
    // Lays out an empty table in `base` (zeroed by this call). False if the
    // size is too small or the parameters invalid.
    static bool format(void *base, size_t size, const TableParams &p);

    // Attaches to a formatted region. `locks` must guard p.stripes stripes and
    // outlive this object. valid() is false if the region is not a table.
    LockTable(void *base, StripeLocks *locks);
    bool valid() const { return hdr_ != nullptr; }
    const TableParams &params() const { return params_; }

    // Takes `key` in `mode`, waiting at most timeout_ns (0: do not wait, <0:
    // forever). On Busy, `report` (if given) describes the lock. On Error,
    // `*err` holds the stripe mutex's error code.
    AcquireResult acquire(const char *key, size_t len, Mode mode,
                          int64_t timeout_ns, const HolderInfo &info,
                          LockHandle &h, BusyReport *report = nullptr,
                          int *err = nullptr);
    // Releases what `h` holds and clears it. Idempotent; a no-op for a handle
    // whose lock was broken. Returns 0 or the mutex error code.
    int release(LockHandle &h);

    // Releases every holder of `key` (their own release then does nothing)
    // and lets waiters in. Returns the number of holders released, -1 on a
    // mutex error.
    int break_key(const char *key, size_t len);

    // Releases the records (holding or waiting) of processes that are gone:
    // of `pid` only, known dead (the MPM reported its exit), or, with pid 0,
    // of every process found dead or reused in /proc. Returns how many.
    int reap(int32_t pid);

    void count(Counter c);
    void set_generation(uint32_t g);
    // The next fence number: larger than every one before it, including
    // those of earlier full starts (it starts from the wall clock in µs).
    uint64_t next_fence();

    // A consistent picture, each stripe copied under its mutex.
    bool snapshot(TableSnapshot &out, int *err = nullptr);

    // For tests: verifies every invariant of a quiescent table; "" if sound.
    std::string check_consistency();
    // For tests: leaves the table as a process killed mid-update at `step`
    // (0: no change yet, 1: a record half linked, 2: an entry half unlinked,
    // 3: free slots taken and lost) would, holding the mutex. The caller
    // must end its process right after.
    void test_abandon_inside(const char *key, size_t len, int step);

  private:
    struct Header;
    struct Stripe;
    struct Entry;
    struct Record;
    // Records granted under a stripe's mutex, woken once it is released.
    struct Wakeups {
        static constexpr uint32_t kMax = 64;
        uint32_t ids[kMax];
        uint32_t n = 0;
        void add(LockTable *t, uint32_t r1);
    };
    void wake_up(const Wakeups &w);

    static bool layout(const TableParams &p, void *out);
    Entry *entry(uint32_t idx1) const;
    Record *record(uint32_t idx1) const;
    Stripe *stripe(uint32_t i) const;
    char *key_of(uint32_t idx1) const;
    uint32_t pop_free(std::atomic<uint64_t> &head, bool entries);
    void push_free(std::atomic<uint64_t> &head, bool entries, uint32_t idx1);
    uint32_t take_entry(Stripe *st);
    void give_entry(Stripe *st, uint32_t e1);
    uint32_t take_record(Stripe *st);
    void give_record(Stripe *st, uint32_t r1);
    bool reserve_entry(uint32_t si, Stripe *st);
    void remove_dead(Stripe *st, uint32_t e1, uint32_t r1, Wakeups &w);
    int enter(uint32_t si);
    void leave(uint32_t si);
    int repair(uint32_t held);
    void rebuild(std::vector<uint32_t> &woken);
    void note_wait(Stripe *st, int64_t ns);
    int reap_entry_if_dead(uint32_t si, uint32_t e1, uint32_t r1, int32_t self);
    void note_high_water();
    uint32_t find(uint32_t bucket, uint64_t hash, const char *key,
                  size_t len) const;
    void unlink_record(Entry *e, uint32_t r1);
    void free_entry_if_idle(Stripe *st, uint32_t bucket, uint32_t e1);
    bool dispatch(Stripe *st, Entry *e, bool prefer_readers, Wakeups &w);
    void fill_report(const Entry *e, uint32_t e1, BusyReport &rep) const;

    Header *hdr_ = nullptr;
    char *base_ = nullptr;
    StripeLocks *locks_ = nullptr;
    TableParams params_;
};

uint64_t key_hash(const char *key, size_t len);

// Liveness of a lock holder's process: gone (no such pid, a zombie, or the
// pid now belongs to a process started at another time) or alive.
enum class ProcessState { Alive, Gone };
ProcessState process_state(int32_t pid, uint64_t start_time);
// A process's start time in clock ticks since boot (/proc), 0 if unknown.
uint64_t process_start_time(int32_t pid);

}  // namespace pidlock

#endif
