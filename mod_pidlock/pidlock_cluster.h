// The PostgreSQL tier for several hosts: a LockBackend that wraps the host's
// own table and, once a request holds its keys there, takes the same keys in
// PostgreSQL as transaction-level advisory locks on one connection of a
// per-process pool, released by ending that transaction.
//
// Callers rely on: the key of a lock in PostgreSQL is cluster_key() of its
// bytes (the same as pidlock_key(bytea) of conf/pidlock-cluster.sql); a
// request waits for a pooled connection and for PostgreSQL within its own
// deadline; on PostgreSQL failure acquire_all answers Unavailable (closed) or
// keeps the local lock alone (open); the counters live in a ClusterStats
// region the caller provides (shared memory in httpd), holding no pointer.
// No C++ exception leaves this unit's public functions.
#ifndef PIDLOCK_CLUSTER_H
#define PIDLOCK_CLUSTER_H

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "pidlock_backend.h"
#include "pidlock_sha256.h"

namespace pidlock {

// The 64-bit key of `bytes` in PostgreSQL: the first 8 bytes of their
// SHA-256, big-endian, as a signed bigint. Fixed: other hosts and the
// application's own SQL compute the same number.
int64_t cluster_key(const char *bytes, size_t len);

// The counters of the cluster tier, summed over every process that attaches:
// one slot per live process (claimed on first use, freed by free_process()
// when the parent learns a child is gone, its totals kept). Plain atomics in a
// caller-provided region: valid in shared memory across fork().
class ClusterStats {
  public:
    struct Totals {
        int64_t connections = 0, held = 0, waiting = 0, lost = 0, errors = 0;
    };
    static size_t region_size(uint32_t slots);
    // Lays out a zeroed region of region_size(slots) bytes.
    static ClusterStats *format(void *mem, uint32_t slots);
    static ClusterStats *attach(void *mem) { return static_cast<ClusterStats *>(mem); }

    enum Field { Connections = 0, Held, Waiting, Lost, Errors, kFields };
    void add(Field f, int64_t d);
    Totals totals() const;
    // The parent, when process `pid` ended: its current values go, its
    // totals (lost, errors) stay. `slots` is what the parent formatted the
    // region with, from its own memory: the count in the region is
    // writable by every child and never bounds the parent's walk.
    void free_process(int32_t pid, uint32_t slots);
    // True for the first caller since format(): the one process that checks
    // PostgreSQL at start.
    bool claim_probe() {
        int32_t zero = 0;
        return probed_.compare_exchange_strong(zero, 1);
    }
    // Fences while PostgreSQL is unreachable (PidLockClusterOnFailure open):
    // cluster fences are multiples of kFenceStep; one this host got raises
    // its floor, and an outage fence is the floor plus one, two, ... so it
    // stays below every cluster fence granted after the last one this host
    // saw. 0 (no fence) once kFenceStep - 1 were handed out above one floor.
    static constexpr uint64_t kFenceStep = uint64_t(1) << 20;
    void saw_cluster_fence(uint64_t f);
    uint64_t outage_fence();

  private:
    struct Slot {
        std::atomic<int32_t> pid;
        std::atomic<int64_t> v[kFields];
    };
    Slot *slot_for_me();
    uint32_t slots_;
    std::atomic<int64_t> retired_lost_, retired_errors_;
    std::atomic<int32_t> probed_;
    std::atomic<uint64_t> fence_seen_, fence_next_;
    Slot slot_[1];  // slots_ of them
};

struct ClusterOptions {
    std::string conninfo;          // libpq connection string
    uint32_t max_connections = 8;  // per process
    bool fail_open = false;        // PidLockClusterOnFailure open
    // Server-side lock_timeout from the request's deadline (the cancel is
    // then a backstop); false: the client cancels at the deadline.
    bool server_lock_timeout = true;
    int keepalive_idle_s = 2, keepalive_interval_s = 1, keepalive_count = 2;
    int check_interval_ms = 1000;  // client_connection_check_interval (PG 14+)
    // fallback_application_name of the sessions: tells this host's sessions
    // from others' on the status page (an application_name in the conninfo
    // overrides it).
    std::string application_name = "mod_pidlock";
    // Logging of the tier: level as syslog (3 error, 4 warning, 6 info), the
    // message carries its PIDLOCK4xx id. Null: silent.
    void (*log)(void *ctx, int level, const char *msg) = nullptr;
    void *log_ctx = nullptr;
};

// Whether PostgreSQL answers at `opt.conninfo` (PQping, at most about 2 s;
// opens no session). Else `*why` says what failed.
bool cluster_probe(const ClusterOptions &opt, std::string *why);

// True if libpq can parse `conninfo`; else `*why` says why.
bool cluster_conninfo_valid(const char *conninfo, std::string *why);

class PgPool;

class ClusterBackend final : public LockBackend {
  public:
    // `local` and `stats` outlive this object; connections open lazily, in
    // the process that uses them (none before a fork is ever reused after).
    ClusterBackend(LockBackend *local, ClusterStats *stats, const ClusterOptions &opt);
    ~ClusterBackend() override;
    const char *name() const override { return local_->name(); }
    uint32_t capacity() const override { return local_->capacity(); }
    AcquireResult acquire_all(const KeyRef *keys, size_t n, Mode mode, int64_t deadline_ns,
                              const HolderInfo &info, LockSet &set, BusyReport *report,
                              int *err) override;
    int release_all(LockSet &set) override;
    // Also ends the PostgreSQL sessions (of any host) holding the key;
    // returns the larger of the local holders and the sessions ended.
    int break_key(const KeyRef &key) override;
    bool snapshot(TableSnapshot &out, int *err) override;
    void count(Counter c) override { local_->count(c); }
    int maintain() override { return local_->maintain(); }

    bool probe(std::string *why) const { return cluster_probe(opt_, why); }
    bool fails_open() const { return opt_.fail_open; }
    // For tests and the status page: connections this process has open,
    // PostgreSQL cancels sent.
    uint32_t open_connections() const;
    uint64_t cancels_sent() const;
    // Waits in PostgreSQL ended because the client hung up.
    uint64_t clients_gone() const;

  private:
    void remote_holders(TableSnapshot &out);
    LockBackend *local_;
    ClusterStats *stats_;
    ClusterOptions opt_;
    std::unique_ptr<PgPool> pool_;
};

}  // namespace pidlock

#endif
