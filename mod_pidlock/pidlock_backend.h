// The lock backend seen by the httpd glue: acquire/release by key, snapshot,
// break. Today's backends are the lock table in shared memory ("shared") and
// the same table in process memory ("thread"); a database-backed one for
// several hosts would implement this interface too.
#ifndef PIDLOCK_BACKEND_H
#define PIDLOCK_BACKEND_H

#include <string>

#include "pidlock_table.h"

namespace pidlock {

class LockBackend {
  public:
    virtual ~LockBackend() = default;
    virtual const char *name() const = 0;
    virtual AcquireResult acquire(const char *key, size_t len, Mode mode, int64_t timeout_ns,
                                  const HolderInfo &info, LockHandle &h, BusyReport *report,
                                  int *err) = 0;
    virtual int release(LockHandle &h) = 0;
    virtual int break_key(const char *key, size_t len) = 0;
    virtual bool snapshot(TableSnapshot &out, int *err) = 0;
    virtual void count(Counter c) = 0;
    // Releases what processes that are gone held or waited for: `pid`, known
    // dead, or with 0 every dead one found. Returns how many records.
    virtual int reap(int32_t pid) = 0;
};

// Both of today's backends: the one table algorithm over a region and stripes
// that the caller provides (shared memory + APR mutexes, or heap + pthread).
class TableBackend final : public LockBackend {
  public:
    TableBackend(const char *name, void *region, StripeLocks *locks)
        : name_(name), table_(region, locks) {}
    bool valid() const { return table_.valid(); }
    LockTable &table() { return table_; }
    const char *name() const override { return name_; }
    AcquireResult acquire(const char *key, size_t len, Mode mode, int64_t timeout_ns,
                          const HolderInfo &info, LockHandle &h, BusyReport *report,
                          int *err) override {
        return table_.acquire(key, len, mode, timeout_ns, info, h, report, err);
    }
    int release(LockHandle &h) override { return table_.release(h); }
    int break_key(const char *key, size_t len) override { return table_.break_key(key, len); }
    bool snapshot(TableSnapshot &out, int *err) override { return table_.snapshot(out, err); }
    void count(Counter c) override { table_.count(c); }
    int reap(int32_t pid) override { return table_.reap(pid); }

  private:
    const char *name_;
    LockTable table_;
};

}  // namespace pidlock

#endif
