// The lock backend seen by the request path: take every key of a request in
// one global order by one absolute deadline, release them all, break a key,
// fill the status view. Backends are the lock table in shared memory
// ("shared"), the same table in process memory ("thread"), and later ones
// (a PostgreSQL tier for several hosts, edit leases) add to this interface
// rather than change it. Every backend passes the contract suite in
// tests/unit/test_contract.cc.
//
// Callers rely on: acquire_all takes all of `keys` or none of them; keys are
// taken in key_order(), so two requests never deadlock whatever keys they
// share; a LockSet is opaque (only its backend reads it) and fixed-size (no
// allocation per request); release_all is idempotent and releases in reverse
// order; maintenance a backend needs (dead processes, repair) stays behind it.
#ifndef PIDLOCK_BACKEND_H
#define PIDLOCK_BACKEND_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pidlock_exits.h"
#include "pidlock_gate.h"
#include "pidlock_table.h"
#include "pidlock_types.h"

namespace pidlock {

struct KeyRef {
    const char *data;
    size_t len;
};

// The one global order of keys: by bytes, shorter first on a common prefix
// (memcmp order). The same in every process and on every host.
bool key_less(const KeyRef &a, const KeyRef &b);
// Sorts `keys` into key_order and drops duplicates (equal bytes merge).
void sort_keys(std::vector<std::string> &keys);

// The locks one request holds: opaque slots a backend fills and alone reads.
class LockSet {
  public:
    static constexpr size_t kMaxKeys = 8;
    struct Slot {
        uint64_t a, b;
    };
    size_t size() const { return n_; }
    bool empty() const { return n_ == 0; }
    Mode mode() const { return mode_; }
    // A write lock's fence number: larger than any granted before it on
    // this host (0: none).
    uint64_t fence() const { return fence_; }
    void set_fence(uint64_t f) { fence_ = f; }
    // For backends only.
    Slot &slot(size_t i) { return slots_[i]; }
    const Slot &slot(size_t i) const { return slots_[i]; }
    // A backend that wraps another (the PostgreSQL tier) keeps its own
    // handle here, beside the wrapped backend's slots; clear() resets it.
    Slot &tier() { return tier_; }
    void set(size_t n, Mode m) {
        n_ = static_cast<uint32_t>(n);
        mode_ = m;
    }
    void clear() {
        n_ = 0;
        mode_ = Mode::None;
        fence_ = 0;
        tier_ = Slot{0, 0};
        cache_ = nullptr;
    }
    // The slot cache the locks were taken with (HolderInfo::slot_cache);
    // their release gives the slot back there.
    SlotCache *slot_cache() const { return cache_; }
    void set_slot_cache(SlotCache *c) { cache_ = c; }

  private:
    // Only the first n_ are set (no zeroing of the rest on every request).
    Slot slots_[kMaxKeys];
    Slot tier_ = {};
    SlotCache *cache_ = nullptr;
    uint64_t fence_ = 0;
    uint32_t n_ = 0;
    Mode mode_ = Mode::None;
};

// Absolute deadlines on monotonic_ns(); kNoDeadline waits for ever, any
// value at or before now does not wait.
constexpr int64_t kNoDeadline = INT64_MAX;

// A connection's SlotCache, at its end: its slot goes back to the table it
// came from (if that table is still attached in this process).
void drop_slot_cache(SlotCache &cache);

class LockBackend {
  public:
    virtual ~LockBackend() = default;
    virtual const char *name() const = 0;
    // Most distinct keys this backend can hold at once (0: no fixed limit).
    virtual uint32_t capacity() const = 0;
    // Takes every key of `keys` (sorted by key_less, distinct, at most
    // LockSet::kMaxKeys) in `mode` by `deadline_ns`. Acquired: `set` holds
    // them all. Anything else: `set` holds none, and on Busy `report` (if
    // given) is about the key that was waited for; on Error `*err` holds the
    // backend's error code.
    virtual AcquireResult acquire_all(const KeyRef *keys, size_t n, Mode mode, int64_t deadline_ns,
                                      const HolderInfo &info, LockSet &set, BusyReport *report,
                                      int *err) = 0;
    // As acquire_all, with the wait given as a timeout from now (0: do not
    // wait, < 0: for ever), so that the clock need be read only when a key
    // is not had at once. This default reads it first.
    virtual AcquireResult acquire_within(const KeyRef *keys, size_t n, Mode mode, int64_t timeout_ns,
                                         const HolderInfo &info, LockSet &set, BusyReport *report, int *err) {
        return acquire_all(keys, n, mode, timeout_ns < 0 ? kNoDeadline : monotonic_ns() + timeout_ns, info, set,
                           report, err);
    }
    // Releases what `set` holds, last key first, and clears it. 0 or the
    // first error code (what could not be released stays in `set`, so a
    // later call tries again).
    virtual int release_all(LockSet &set) = 0;
    // Releases every holder of `key`; their own release then does nothing.
    // Returns how many holders were released, -1 on error.
    virtual int break_key(const KeyRef &key) = 0;
    // The status view: a consistent picture of locks and counters.
    virtual bool snapshot(TableSnapshot &out, int *err) = 0;
    virtual void count(Counter c) = 0;
    // Called now and then by a worker process (never by httpd's parent):
    // releases what processes reported gone held. Returns records released.
    virtual int maintain() { return 0; }
};


// Today's two backends: the lock table over a region and stripes the caller
// provides (shared memory + APR mutexes, or heap + pthread mutexes).
class TableBackend final : public LockBackend {
  public:
    TableBackend(const char *name, LockTable *table) : name_(name), table_(table) {}
    const char *name() const override { return name_; }
    uint32_t capacity() const override;
    AcquireResult acquire_all(const KeyRef *keys, size_t n, Mode mode, int64_t deadline_ns,
                              const HolderInfo &info, LockSet &set, BusyReport *report,
                              int *err) override;
    // One key: its timeout goes to the table as it is (the table reads the
    // clock only if it has to wait); several share one deadline. Inline: the
    // request path calls it directly (State::direct).
    AcquireResult acquire_within(const KeyRef *keys, size_t n, Mode mode, int64_t timeout_ns,
                                 const HolderInfo &info, LockSet &set, BusyReport *report, int *err) override {
        // Several keys, or the upgrade gate closed: one deadline for it all.
        if (n != 1 || mode == Mode::None || !gate_.is_open())
            return acquire_all(keys, n, mode, timeout_ns < 0 ? kNoDeadline : monotonic_ns() + timeout_ns, info,
                               set, report, err);
        set.clear();
        LockHandle h;
        const AcquireResult res = table_->acquire(keys[0].data, keys[0].len, mode, timeout_ns, info, h, report, err);
        if (res != AcquireResult::Acquired) return res;
        hold_one(set, h, mode, info);
        return AcquireResult::Acquired;
    }
    // The request path's common case (State::direct): one key, taken at
    // once through the table's fast path with the upgrade gate open. False:
    // nothing taken and `set` as it was (acquire_within then decides: it
    // may wait, or answer why not).
    bool acquire_at_once(const KeyRef &key, Mode mode, const HolderInfo &info, LockSet &set) {
        if (!gate_.is_open()) return false;
        LockHandle h;
        if (!table_->acquire_at_once(key.data, key.len, mode, info, h)) return false;
        set.clear();
        hold_one(set, h, mode, info);
        return true;
    }
    // One key held (the common case) inline, else release_several().
    int release_all(LockSet &set) override { return release_set(set); }
    // release_all, inline where the caller names this class (the request
    // path's State::direct).
    int release_set(LockSet &set) {
        if (set.size() != 1) return release_several(set);
        LockHandle h = unpack(set.slot(0), set.mode());
        const int rc = table_->release(h, set.slot_cache());
        if (rc != 0) return rc;  // still held: a later call tries again
        set.clear();
        return 0;
    }
    int release_several(LockSet &set);
    int break_key(const KeyRef &key) override;
    bool snapshot(TableSnapshot &out, int *err) override;
    void count(Counter c) override;
    // Reads the exit list (see pidlock_exits.h) and releases what the
    // processes it names held; all of the dead if some exits were missed.
    int maintain() override;

    // Set up by the glue. The exit list to read (null: none, as in tests).
    void attach_exits(const void *region) { exits_.attach(region); }
    // The exit list's reader: its pending() says, inline, whether
    // maintain() has anything to do.
    const ExitReader &exit_reader() const { return exits_; }
    // The upgrade gate (null: none): while it is closed, acquire_all waits
    // for it within the deadline, then answers Busy with report->draining.
    void attach_gate(const void *region) { gate_.attach(region); }
    // In a child, at its start: exits published so far are forgotten, and
    // every process of earlier generations found gone is cleaned up instead.
    int start_child();
    // The MPM's generation, shown by snapshot() (the table holds none).
    void set_generation(uint32_t g) { generation_ = g; }

  private:
    // `set` (cleared) holds the one key the table just gave as `h`.
    void hold_one(LockSet &set, const LockHandle &h, Mode mode, const HolderInfo &info) {
        set.slot(0) = pack(h);
        set.set(1, mode);
        set.set_slot_cache(info.slot_cache);
        if (mode == Mode::Write) set.set_fence(table_->next_fence());
    }
    // A table handle in a LockSet slot: record and stripe in one word, the
    // allocation token in the other, the mode in the set.
    static LockSet::Slot pack(const LockHandle &h) {
        return LockSet::Slot{(static_cast<uint64_t>(h.stripe) << 32) | h.record, h.token};
    }
    static LockHandle unpack(const LockSet::Slot &s, Mode m) {
        LockHandle h;
        h.record = static_cast<uint32_t>(s.a);
        h.stripe = static_cast<uint32_t>(s.a >> 32);
        h.token = s.b;
        h.mode = h.record ? m : Mode::None;
        return h;
    }

    const char *name_;
    LockTable *table_;
    ExitReader exits_;
    GateReader gate_;
    uint32_t generation_ = 0;
};

}  // namespace pidlock

#endif
