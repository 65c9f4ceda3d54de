// Edit leases across hosts: a LeaseStore in PostgreSQL (PidLockCluster
// postgres with PidLockLease On). No httpd includes.
//
// Callers rely on: one table, `pidlock_leases`, created if missing, rows
// keyed by the key's 64-bit hash (the number the cluster tier locks:
// pidlock_key(), the first 8 bytes of its SHA-256) plus the key's bytes;
// tokens stored as their SHA-256 only; expiry by wall-clock deadlines
// (microseconds, the caller's clock); every grant, renewal, release and
// steal is one statement (atomic in PostgreSQL, whatever other hosts do at
// once; a grant or steal that may add a lease runs in a transaction under
// one advisory lock of the cluster's, so the capacity holds); one connection per process, opened on first use, used by one
// thread at a time, reopened after a failure. Counters are the host's (kept
// in its lease table, `counters_of`). A database that cannot be reached
// gives Error (the caller answers 503).
#ifndef PIDLOCK_LEASE_PG_H
#define PIDLOCK_LEASE_PG_H

#include <mutex>
#include <string>
#include <vector>

#include "pidlock_lease.h"

struct pg_conn;

namespace pidlock {

class PgLeaseStore final : public LeaseStore {
  public:
    // `host` keeps the counters (and is never asked for a lease).
    PgLeaseStore(std::string conninfo, uint32_t capacity, uint32_t key_cap, LeaseTable *host);
    ~PgLeaseStore() override;
    PgLeaseStore(const PgLeaseStore &) = delete;
    PgLeaseStore &operator=(const PgLeaseStore &) = delete;

    uint32_t capacity() const override { return capacity_; }
    uint32_t used() const override;
    LeaseOutcome lock(const std::string &key, const std::vector<LeaseToken> &tokens, const LeaseRequest &req,
                      const LeaseToken &fresh, int64_t now_us, LeaseView *view) override;
    LeaseOutcome unlock(const std::string &key, const LeaseToken &token, const std::string &user, int64_t now_us,
                        LeaseView *view) override;
    LeaseOutcome check_write(const std::string &key, const std::vector<LeaseToken> &tokens, bool foreign_tokens,
                             const std::string &user, int64_t now_us, LeaseView *view) override;
    void touch(const std::string &key, const std::vector<LeaseToken> &tokens, const std::string &user,
               int64_t now_us) override;
    LeaseOutcome release(const std::string &key, int64_t now_us, LeaseView *old) override;
    LeaseOutcome steal(const std::string &key, const LeaseRequest &req, const LeaseToken &fresh, int64_t now_us,
                       LeaseView *old, bool *had_old, LeaseView *now_view) override;
    bool snapshot(int64_t now_us, std::vector<LeaseView> &out, LeaseCounters &c) override;
    bool summary(int64_t now_us, uint32_t *live, LeaseCounters &c) override;

    // The last error (libpq's message), for the caller's log.
    std::string failure() const override;

  private:
    struct Rows;
    bool ready();  // under mu_
    bool exec(const char *sql, const std::vector<std::string> &params, Rows &out);  // under mu_
    // exec() of a statement that may add a lease (it counts the live ones
    // first): one at a time across the cluster, in a transaction holding
    // an advisory lock.
    bool exec_adding(const char *sql, const std::vector<std::string> &params, Rows &out);  // under mu_
    // The key's live lease, with whether one of `tokens` is its token.
    bool current(const std::string &key, const std::vector<LeaseToken> &tokens, int64_t now_us, bool *found,
                 bool *match, LeaseView *view);
    bool renew_with(const std::string &key, const std::vector<LeaseToken> &tokens, const std::string &user,
                    uint32_t timeout_s, int64_t now_us, LeaseView *view, bool *renewed);
    void count(LeaseCounters delta);
    // Deletes the expired leases (the key's, or all) and counts them
    // expired (and in `*c`).
    bool sweep(const std::string *key, int64_t now_us, LeaseCounters *c = nullptr);  // under mu_

    std::string conninfo_;
    uint32_t capacity_, key_cap_;
    LeaseTable *host_;
    mutable std::mutex mu_;
    pg_conn *conn_ = nullptr;
    std::string error_;
};

// The statement that creates the table (also in conf/pidlock-cluster.sql).
extern const char *const kLeaseTableSql;

}  // namespace pidlock

#endif
