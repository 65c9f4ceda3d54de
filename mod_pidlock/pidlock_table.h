// The lock table: per-key reader/writer locks in one memory region that may be
// shared by many processes. The region holds only offsets (never pointers), so
// every process may map it at a different address.
//
// Fast path (no mutex): each key's entry has one atomic state word (fast
// readers, fast writer, a "queued" bit, a REPAIR bit, a DEAD bit and a tag
// bumped whenever the entry is reused or its lock broken). An uncontended
// acquire finds the entry without a lock, marks a holder slot it alone owns
// "pending" (entry, tag, mode), CASes the word and marks the slot "held";
// release marks it "releasing", CASes, and marks it idle. Holder slots are
// per process (a one-slot cache per thread), so recording who holds what
// writes no shared line but the word. Entries stay after release and are
// reclaimed lazily when a new key needs room.
// Slow path (the stripe mutex, supplied by the caller: APR global mutexes in
// httpd, anything in tests): the first insert of a key, queueing (a waiter
// sets the queued bit, which makes every fast acquire of the key fall to the
// slow path, so grants stay phase-fair), waiting (a futex word per record),
// reclaim and repair. Repair of an entry after a death sets REPAIR (every
// fast CAS fails), waits for live processes' pending/releasing slots on it
// to settle, and recomputes the word from the held slots of live processes:
// what the dead held simply vanishes.
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
    // A fast-path hold: `record` names a holder slot (with this bit set).
    static constexpr uint32_t kSlotBit = 0x80000000u;
};

// The bucket hash where the CPU has AES instructions (aes_hash_available()):
// four secret 128-bit seeds and four round keys (k), derived from the
// table's 128-bit key (sip) by derive_aes_hash_key; keys over 64 bytes
// are hashed with SipHash-1-3 under `sip`. Every process of a table
// derives the same secrets, so they all put a key in the same bucket.
struct AesHashKey {
    uint64_t k[16];
    uint64_t sip[2];
};

class LockTable {
  public:
    static constexpr uint32_t kDefaultStripes = 32;
    // The version of the region's layout: a table is shared only between
    // builds with the same one (a graceful restart onto another waits for
    // the old generation instead: pidlock_gate.h).
    static uint32_t layout_version();
    // Bytes the region needs for these parameters (0 if they are invalid).
    static size_t region_size(const TableParams &p);
    // Lays out an empty table in `base` (zeroed by this call), its bucket
    // hash keyed by the 16 bytes of `hash_key` (null: random bytes from the
    // kernel). False if the size is too small or the parameters invalid.
    static bool format(void *base, size_t size, const TableParams &p,
                       const unsigned char *hash_key = nullptr);
    // True if `base` (of `size` bytes) holds a table of exactly these
    // parameters. Reads a few fixed header fields once and nothing else:
    // safe on a region anyone may be scribbling (httpd's parent).
    static bool check_region(void *base, size_t size, const TableParams &expect);

    // Attaches to a formatted region. `locks` must guard p.stripes stripes and
    // outlive this object. valid() is false if the region is not a table.
    // Where the parts of the table lie is computed from its parameters, never
    // read from the region; the second form also insists on `expect` and on
    // a region of `size` bytes big enough for them. Construction reads the
    // fixed header fields once and takes no lock.
    LockTable(void *base, StripeLocks *locks);
    LockTable(void *base, size_t size, const TableParams &expect, StripeLocks *locks);
    ~LockTable();
    LockTable(const LockTable &) = delete;
    LockTable &operator=(const LockTable &) = delete;
    bool valid() const { return hdr_ != nullptr; }
    // The bucket hash format() chose: AES where the CPU has it (and no test
    // asked for SipHash-1-3 with prefer_siphash), else SipHash-1-3.
    bool uses_aes_hash() const;
    static void prefer_siphash(bool on);
    const TableParams &params() const { return params_; }

    // PidLockMaxWaiters: at most `per_key` requests wait on one key and at
    // most `total` in the whole table (0: no limit); a request beyond either
    // is answered Busy at once and counted (refused_waiters). Process-local.
    void set_wait_limits(uint32_t per_key, uint32_t total);

    // Takes `key` in `mode`, waiting at most timeout_ns (0: do not wait, <0:
    // forever). On Busy, `report` (if given) describes the lock. On Error,
    // `*err` holds the stripe mutex's error code. ClientGone: while it
    // waited, the client hung up (info.client_fd polled for POLLRDHUP, or
    // info.client_gone said so); nothing is held.
    AcquireResult acquire(const char *key, size_t len, Mode mode,
                          int64_t timeout_ns, const HolderInfo &info,
                          LockHandle &h, BusyReport *report = nullptr,
                          int *err = nullptr);
    // The request path's common case: takes `key` if the fast path can, at
    // once (its entry exists and the word lets it in: no mutex, no wait, no
    // counter touched), filling `h`. False otherwise, with nothing held and
    // `h` as it was: acquire() then decides (it begins with this call).
    bool acquire_at_once(const char *key, size_t len, Mode mode, const HolderInfo &info, LockHandle &h);
    // Releases what `h` holds and clears it. Idempotent; a no-op for a handle
    // whose lock was broken. Returns 0 or the mutex error code. `cache`: the
    // slot cache the acquire was given (HolderInfo::slot_cache), if any.
    int release(LockHandle &h, SlotCache *cache = nullptr);
    // A connection's slot cache, at its end: the slot goes back to its
    // table's pool if that table is still attached in this process.
    static void drop_slot_cache(SlotCache &cache);

    // Releases every holder of `key` (their own release then does nothing)
    // and lets waiters in. Returns the number of holders released, -1 on a
    // mutex error.
    int break_key(const char *key, size_t len);

    // Releases the records (holding or waiting) of processes that are gone:
    // of `pid` only (the MPM reported its exit), or, with pid 0, of every
    // process. Either way a record goes only if /proc says its process is
    // gone (dead, a zombie, or its pid reused): a false report (the exit
    // list is writable by every child) never frees a live lock. Returns how
    // many.
    int reap(int32_t pid);

    // Takes every stripe, checks every invariant (bounded walks, each index
    // checked before use) and rebuilds the table if one fails, as after a
    // death inside it. For a process joining a table others may have
    // scribbled (a new httpd child). 1 if it rebuilt, 0 if sound, -1 on a
    // mutex error.
    int audit();

    void count(Counter c);
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
    // For tests, in builds with PIDLOCK_CRASH_POINTS (the unit tests): the
    // calling process _exit()s when it reaches crash point `point` (1 ..
    // kCrashPoints) of acquire(), release(), break_key(), reclaim or repair:
    // 1-22 inside a stripe mutex (the slow path), 23-28 in the lock-free fast
    // path (no mutex held: between a slot's marks and the CAS on the state
    // word, or a release meeting a repair), 29-35 inside the mutex in the
    // new slow steps (queued bit, reclaim, break, repair); 0 turns it off.
    // Without PIDLOCK_CRASH_POINTS the points compile to nothing and this
    // returns false.
    static constexpr int kCrashPoints = 35;
    bool test_crash_at(int point);
    // For tests: what a hostile child may write, without any mutex.
    // SelfLinkedChain: every bucket leads to an entry chained to itself,
    // whose record list loops too. RecordAt: every bucket leads to an entry
    // whose first record lies inside [target, target + size) of the caller's
    // memory (false if no record index lands there).
    enum class Corruption { SelfLinkedChain, RecordAt };
    bool test_corrupt(Corruption c, void *target = nullptr, size_t size = 0);

  private:
    struct Header;
    struct Stripe;
    struct Entry;
    struct Record;
    struct Slot;
    // Records granted under a stripe's mutex, woken once it is released.
    struct Wakeups {
        static constexpr uint32_t kMax = 64;
        uint32_t ids[kMax];
        uint32_t n = 0;
        void add(LockTable *t, uint32_t r1);
    };
    void wake_up(const Wakeups &w);

    static bool layout(const TableParams &p, void *out);
    struct HashSeed {
        uint64_t sip[2];
        uint32_t kind;
    };
    static bool read_header(void *base, size_t size, TableParams &p, HashSeed &seed);
    void attach(void *base, const TableParams &p, const HashSeed &seed);
    uint64_t hash(const char *key, size_t len) const;
    bool take_at_once(const char *key, size_t len, Mode mode, const HolderInfo &info, LockHandle &h);
    AcquireResult acquire_slow(const char *key, size_t len, Mode mode, int64_t timeout_ns, const HolderInfo &info,
                               LockHandle &h, BusyReport *report, int *err);
    AcquireResult acquire_once(const char *key, size_t len, uint64_t hash, Mode mode, int64_t deadline,
                               const HolderInfo &info, uint32_t s1, LockHandle &h, BusyReport *report,
                               int *err, bool &vanished, int &reclaims);
    void refuse_or_time_out(Stripe *st, Entry *e, uint32_t bucket, uint32_t e1, uint32_t r1,
                            Mode mode, BusyReport *report);
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
    int stop_the_world(bool audit, uint32_t keep, bool *repaired);
    void rebuild(std::vector<uint32_t> &woken);
    void note_wait(Stripe *st, int64_t ns);
    struct PidWatch;  // a waiter's pidfds of the processes it watches
    int reap_entry_if_dead(uint32_t si, uint32_t e1, uint32_t r1, int32_t self, PidWatch &watch);
    void note_high_water();
    uint32_t find(uint32_t bucket, uint64_t hash, const char *key,
                  size_t len) const;
    void unlink_record(Entry *e, uint32_t r1);
    bool dispatch(Stripe *st, Entry *e, bool prefer_readers, Wakeups &w);
    void fill_report(const Entry *e, uint32_t e1, BusyReport &rep) const;
    // The fast path and its slots.
    Slot *slot(uint32_t s1) const;
    uint32_t lookup(uint32_t bucket, uint64_t hash, size_t len) const;
    uint32_t take_slot(int32_t pid, SlotCache *cache);
    uint32_t take_slot_elsewhere(int32_t pid);
    void give_slot(uint32_t s1, int32_t pid, SlotCache *cache);
    void give_slot_elsewhere(uint32_t s1, int32_t pid, SlotCache *cache);
    void pool_push(uint32_t s1);
    void unown_slot(Slot *sl, int32_t pid);
    static void give_back(LockTable *t, uint32_t s1, int32_t pid);
    void fill_slot(Slot *s, const HolderInfo &info);
    int try_fast(uint32_t e1, uint32_t s1, Mode mode, LockHandle &h, uint32_t si, const char *key,
                 size_t len, uint64_t hash);
    int release_fast(LockHandle &h, SlotCache *cache);
    __attribute__((noinline)) int release_fast_rest(LockHandle &h, uint32_t s1, uint32_t si, uint64_t token,
                                                    uint32_t e1, uint32_t tag, Mode mode, SlotCache *cache);
    __attribute__((noinline)) void dispatch_after_release(uint32_t si, uint32_t e1, Mode mode, bool locked);
    void free_entry(Stripe *st, uint32_t bucket, uint32_t e1);
    bool check_parts(bool quiescent, std::string &why);
    void set_queued(Entry *e);
    void settle_queued(Entry *e);
    bool repair_entry(uint32_t e1, bool free_dead);
    bool fast_holders_dead(uint32_t e1, PidWatch &watch);
    int reclaim_idle(uint32_t si, uint32_t want);
    int reclaim_elsewhere(uint32_t si);
    int free_dead_slots(int32_t only);
    bool client_gone(const HolderInfo &info) const;

    // Private copies: what the region's header says is checked once and
    // then never read again.
    Header *hdr_ = nullptr;
    char *base_ = nullptr;
    StripeLocks *locks_ = nullptr;
    TableParams params_;
    uint32_t nbuckets_ = 0, slots_ = 0;
    uint32_t *buckets_ = nullptr;
    Stripe *stripes_ = nullptr;
    Entry *entries_ = nullptr;
    Record *records_ = nullptr;
    Slot *slots_arr_ = nullptr;
    // This process's idle holder slots (a tagged stack through the slots'
    // free_next; only this process touches slots it owns), reset in a
    // forked child. serial_: tells this object from a later one at the same
    // address (the per-thread cache remembers it).
    std::atomic<uint64_t> pool_head_{0};
    std::atomic<int32_t> pool_pid_{0};
    std::atomic<uint32_t> slot_hint_{0};  // where the last claim of a slot found one
    uint64_t serial_ = 0;
    char *keys_ = nullptr;
    // The bucket hash: AES if the table says so, else SipHash-1-3 under
    // hash_key_.sip (the header's key; the AES secrets derived only for AES).
    bool aes_ = false;
    AesHashKey hash_key_{};
    uint32_t max_wait_key_ = 0, max_wait_total_ = 0;
    int crash_at_ = 0;
};

// SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF",
// 2012) of `len` bytes under the 128-bit key k0 | k1 (the key's bytes 0-7
// and 8-15 read little-endian).
uint64_t siphash24(uint64_t k0, uint64_t k1, const void *data, size_t len);
// SipHash-1-3 (one compression and three finalization rounds, as hash
// tables such as Rust's and CPython's use): the bucket hash, keyed per full
// start so that no client can aim many keys at one bucket, at about half
// the cost of 2-4 on the fast path.
uint64_t siphash13(uint64_t k0, uint64_t k1, const void *data, size_t len);
uint64_t siphash24(const unsigned char key[16], const void *data, size_t len);

void derive_aes_hash_key(uint64_t k0, uint64_t k1, AesHashKey &out);
uint64_t aes_hash(const AesHashKey &key, const void *data, size_t len);
bool aes_hash_available();

// Liveness of a lock holder's process: gone (no such pid, a zombie whose
// threads have all exited, or the pid now belongs to a process started at
// another time) or alive (a zombie main thread with a thread left counts).
enum class ProcessState { Alive, Gone };
ProcessState process_state(int32_t pid, uint64_t start_time);
// A process's start time in clock ticks since boot (/proc), 0 if unknown.
uint64_t process_start_time(int32_t pid);

}  // namespace pidlock

#endif
