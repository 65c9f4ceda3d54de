#include "pidlock_cluster.h"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <sys/socket.h>

#include <libpq-fe.h>

namespace pidlock {

// ------------------------------------------------------------ the key hash

int64_t cluster_key(const char *bytes, size_t len) {
    unsigned char d[32];
    sha256(bytes, len, d);
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | d[i];
    return static_cast<int64_t>(v);
}

// ----------------------------------------------------------- ClusterStats

size_t ClusterStats::region_size(uint32_t slots) {
    return sizeof(ClusterStats) + sizeof(Slot) * (slots ? slots : 1);
}

ClusterStats *ClusterStats::format(void *mem, uint32_t slots) {
    std::memset(mem, 0, region_size(slots));
    auto *s = static_cast<ClusterStats *>(mem);
    // Slot 0 is shared by processes that find no free slot; never claimed.
    s->slots_ = (slots ? slots : 1) + 1;
    return s;
}

ClusterStats::Slot *ClusterStats::slot_for_me() {
    struct Cache {
        const ClusterStats *owner;
        int32_t pid;
        Slot *slot;
    };
    static thread_local Cache cache{nullptr, 0, nullptr};
    const int32_t me = static_cast<int32_t>(getpid());
    if (cache.owner == this && cache.pid == me &&
        (cache.slot == &slot_[0] || cache.slot->pid.load(std::memory_order_relaxed) == me))
        return cache.slot;
    Slot *found = nullptr;
    for (uint32_t i = 1; i < slots_ && !found; ++i)
        if (slot_[i].pid.load(std::memory_order_acquire) == me) found = &slot_[i];
    for (uint32_t i = 1; i < slots_ && !found; ++i) {
        int32_t zero = 0;
        if (slot_[i].pid.compare_exchange_strong(zero, me)) found = &slot_[i];
    }
    if (!found) found = &slot_[0];
    cache = Cache{this, me, found};
    return found;
}

void ClusterStats::add(Field f, int64_t d) { slot_for_me()->v[f].fetch_add(d, std::memory_order_relaxed); }

ClusterStats::Totals ClusterStats::totals() const {
    int64_t sum[kFields] = {};
    for (uint32_t i = 0; i < slots_; ++i)
        for (int f = 0; f < kFields; ++f) sum[f] += slot_[i].v[f].load(std::memory_order_relaxed);
    Totals t;
    t.connections = sum[Connections];
    t.held = sum[Held];
    t.waiting = sum[Waiting];
    t.lost = sum[Lost] + retired_lost_.load(std::memory_order_relaxed);
    t.errors = sum[Errors] + retired_errors_.load(std::memory_order_relaxed);
    return t;
}

void ClusterStats::free_process(int32_t pid, uint32_t slots) {
    if (pid <= 0) return;
    const uint32_t n = (slots ? slots : 1) + 1;  // as format() counts them
    for (uint32_t i = 1; i < n; ++i) {
        Slot &s = slot_[i];
        if (s.pid.load(std::memory_order_acquire) != pid) continue;
        retired_lost_.fetch_add(s.v[Lost].exchange(0), std::memory_order_relaxed);
        retired_errors_.fetch_add(s.v[Errors].exchange(0), std::memory_order_relaxed);
        for (int f = 0; f < kFields; ++f) s.v[f].store(0, std::memory_order_relaxed);
        s.pid.store(0, std::memory_order_release);
    }
}

void ClusterStats::saw_cluster_fence(uint64_t f) {
    for (uint64_t cur = fence_seen_.load(); cur < f && !fence_seen_.compare_exchange_weak(cur, f);) {
    }
    for (uint64_t cur = fence_next_.load(); cur < f && !fence_next_.compare_exchange_weak(cur, f);) {
    }
}

uint64_t ClusterStats::outage_fence() {
    const uint64_t v = fence_next_.fetch_add(1) + 1;
    return v - fence_seen_.load() < kFenceStep ? v : 0;
}

bool cluster_conninfo_valid(const char *conninfo, std::string *why) {
    char *err = nullptr;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (!opts) {
        if (why) *why = err ? err : "out of memory";
        if (err) PQfreemem(err);
        for (std::string::size_type i; why && (i = why->find('\n')) != std::string::npos;) why->erase(i, 1);
        return false;
    }
    PQconninfoFree(opts);
    return true;
}

bool cluster_probe(const ClusterOptions &opt, std::string *why) {
    // The conninfo's own connect_timeout wins over this one (libpq's least: 2 s).
    const char *keys[] = {"connect_timeout", "fallback_application_name", "dbname", nullptr};
    const char *vals[] = {"2", opt.application_name.c_str(), opt.conninfo.c_str(), nullptr};
    switch (PQpingParams(keys, vals, 1)) {
    case PQPING_OK:
        return true;
    case PQPING_REJECT:
        if (why) *why = "the server rejects connections (starting up, shutting down or in recovery)";
        return false;
    case PQPING_NO_RESPONSE:
        if (why) *why = "no answer from the server";
        return false;
    case PQPING_NO_ATTEMPT:
        if (why) *why = "libpq made no attempt (bad connection string?)";
        return false;
    }
    return false;
}

// -------------------------------------------------------------- the pool

namespace {

// SQLSTATEs the tier tells apart.
constexpr const char *kLockNotAvailable = "55P03";  // lock_timeout
constexpr const char *kQueryCanceled = "57014";     // our cancel
constexpr const char *kUndefinedTable = "42P01";    // no pidlock_fence sequence

// A printable form of a key for the log: at most 80 bytes, others as \xNN.
std::string key_for_log(const char *p, size_t n) {
    std::string out;
    for (size_t i = 0; i < n && out.size() < 80; ++i) {
        const unsigned char c = static_cast<unsigned char>(p[i]);
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
            out += static_cast<char>(c);
        } else {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        }
    }
    if (out.size() >= 80) out += "...";
    return out;
}

}  // namespace

class PgPool;

namespace {

// The pools of this process, for the fork handlers: a fork()ed child gets a
// copy of each pool, whose mutex another thread may hold and whose
// condition variables may count the parent's waiters (its monitor thread):
// the child's first signal could wait for a waiter that does not exist
// there, for ever. So the prepare handler holds every pool's mutex across
// fork() (no pool is mid-update when it is copied), and in the child each
// pool gets fresh condition variables and forgets its parent's sessions and
// thread.
std::mutex g_pools_mu;
std::vector<PgPool *> *g_pools = nullptr;
void pools_prepare();
void pools_parent();
void pools_child();

}  // namespace

// One process's connections: at most max_connections, opened on demand,
// each leased to one request at a time (a lease holds at most one open
// transaction). The mutex guards the slots' bookkeeping only; the libpq work
// on a leased connection runs outside it.
class PgPool {
  public:
    struct Conn {
        PGconn *pg = nullptr;
        bool in_use = false;
        bool broken = false;  // its session was ended by break_key on purpose
        uint64_t token = 0;   // of the current lease
        int server_version = 0;
        int backend_pid = 0;
        std::string keys;     // the lease's keys, for a lost-lock line
        size_t nkeys = 0;
        // While its lease holds locks: the session's socket, watched by the
        // monitor thread, and the request's client connection (-1: none).
        int held_fd = -1;
        int client_fd = -1;
        bool lost_seen = false;  // the monitor saw the session end
    };
    enum class Got { Ok, Timeout, Unreachable };

    PgPool(const ClusterOptions &opt, ClusterStats *stats)
        : opt_(opt), stats_(stats), owner_(getpid()), conns_(opt.max_connections ? opt.max_connections : 1) {
        static std::once_flag handlers;
        std::call_once(handlers, [] { pthread_atfork(pools_prepare, pools_parent, pools_child); });
        std::lock_guard<std::mutex> g(g_pools_mu);
        if (!g_pools) g_pools = new std::vector<PgPool *>();
        g_pools->push_back(this);
    }

    ~PgPool() {
        {
            std::lock_guard<std::mutex> g(g_pools_mu);
            if (g_pools) g_pools->erase(std::remove(g_pools->begin(), g_pools->end(), this), g_pools->end());
        }
        if (getpid() != owner_) return;  // a copy the fork handler did not see: the sessions are another's
        if (monitor_) {
            {
                std::lock_guard<std::mutex> lk(mu_);
                stop_ = true;
            }
            monitor_cv_.notify_all();
            monitor_->join();
            delete monitor_;
        }
        for (Conn &c : conns_)
            if (c.pg) {
                PQfinish(c.pg);
                stats_->add(ClusterStats::Connections, -1);
            }
    }

    // The fork handlers (see g_pools): held across fork(), released in the
    // parent; in the child, fresh condition variables (the copies may count
    // the parent's waiters), the mutex released by the thread that forked,
    // and the parent's sessions forgotten: a fork()ed process must not talk
    // on them (no Terminate message on a socket the parent still uses).
    void fork_prepare() { mu_.lock(); }
    void fork_parent() { mu_.unlock(); }
    void fork_child() {
        new (&cv_) std::condition_variable();
        new (&monitor_cv_) std::condition_variable();
        for (Conn &c : conns_) c = Conn();
        monitor_ = nullptr;  // the parent's thread does not exist here
        owner_ = getpid();
        mu_.unlock();
    }

    void log(int level, const std::string &msg) {
        if (opt_.log) opt_.log(opt_.log_ctx, level, msg.c_str());
    }

    // A free connection by `deadline` (opened if none is idle and the cap
    // allows). *index is its slot.
    Got lease(int64_t deadline, size_t *index, bool *fresh, std::string *why) {
        std::unique_lock<std::mutex> lk(mu_);
        bool counted = false;
        for (;;) {
            // An idle open connection first, else an empty slot to open.
            size_t pick = conns_.size(), empty = conns_.size();
            for (size_t i = 0; i < conns_.size(); ++i) {
                if (conns_[i].in_use) continue;
                if (conns_[i].pg && pick == conns_.size()) pick = i;
                if (!conns_[i].pg && empty == conns_.size()) empty = i;
            }
            if (pick == conns_.size()) pick = empty;
            if (pick < conns_.size()) {
                Conn &c = conns_[pick];
                c.in_use = true;
                c.broken = false;
                c.token = ++tokens_;
                if (counted) stats_->add(ClusterStats::Waiting, -1);
                lk.unlock();
                *index = pick;
                *fresh = false;
                if (c.pg && !still_usable(c)) {
                    log(6, "PIDLOCK404: a pooled PostgreSQL connection had ended (server restarted?); "
                           "opening a new one");
                    close_conn(c);
                }
                if (!c.pg) {
                    *fresh = true;
                    if (!open_conn(c, connect_deadline(deadline), why)) {
                        give_back(pick, false);
                        return Got::Unreachable;
                    }
                }
                return Got::Ok;
            }
            if (!counted) {
                stats_->add(ClusterStats::Waiting, 1);
                counted = true;
            }
            const int64_t left = deadline == kNoDeadline ? INT64_MAX : deadline - monotonic_ns();
            if (left <= 0) {
                stats_->add(ClusterStats::Waiting, -1);
                if (why) *why = "no free PostgreSQL connection (PidLockClusterConnections)";
                return Got::Timeout;
            }
            if (deadline == kNoDeadline) cv_.wait(lk);
            else cv_.wait_for(lk, std::chrono::nanoseconds(left));
        }
    }

    Conn &conn(size_t i) { return conns_[i]; }

    // The connection a LockSet's tier slot names, if that lease is still
    // current; null for a stale copy or a released set.
    Conn *by_lease(uint64_t index1, uint64_t token) {
        std::lock_guard<std::mutex> lk(mu_);
        if (index1 == 0 || index1 > conns_.size()) return nullptr;
        Conn &c = conns_[index1 - 1];
        return c.in_use && c.token == token ? &c : nullptr;
    }

    // A connection goes back idle, or is closed: one that is not idle (a
    // statement abandoned at its deadline, a transaction left open) never
    // serves another request.
    void give_back(size_t i, bool healthy) {
        Conn &c = conns_[i];
        if (!healthy || (c.pg && PQtransactionStatus(c.pg) != PQTRANS_IDLE)) close_conn(c);
        {
            std::lock_guard<std::mutex> lk(mu_);
            c.in_use = false;
            c.token = ++tokens_;  // every stale copy of the lease now misses
            c.keys.clear();
            c.nkeys = 0;
        }
        cv_.notify_one();
    }

    // Marks the leased connections whose session is `backend_pid` as broken
    // on purpose: their release is not a lost lock.
    void mark_broken(int backend_pid) {
        std::lock_guard<std::mutex> lk(mu_);
        for (Conn &c : conns_)
            if (c.pg && c.in_use && c.backend_pid == backend_pid) c.broken = true;
    }

    // The lease of `c` now holds locks: the monitor watches its session.
    void watch(Conn &c, int client_fd) {
        std::lock_guard<std::mutex> lk(mu_);
        c.held_fd = PQsocket(c.pg);
        c.client_fd = client_fd;
        c.lost_seen = false;
        if (!monitor_) {
            try {
                monitor_ = new std::thread([this] { monitor(); });
            } catch (...) {
                monitor_ = nullptr;  // no early notice: the release still sees the loss
            }
        }
        monitor_cv_.notify_one();
    }

    // The lease of `c` releases: no longer watched. True if the monitor
    // already reported its locks lost.
    bool unwatch(Conn &c) {
        std::lock_guard<std::mutex> lk(mu_);
        c.held_fd = -1;
        c.client_fd = -1;
        const bool seen = c.lost_seen;
        c.lost_seen = false;
        return seen;
    }

    uint32_t open_count() const {
        std::lock_guard<std::mutex> lk(mu_);
        uint32_t n = 0;
        for (const Conn &c : conns_) n += c.pg ? 1 : 0;
        return n;
    }

    enum class Exec { Ok, Timeout, ConnLost };

    // Sends `sql` (one or more statements) and reads every result by
    // `deadline`. Past it: with `cancel_at_deadline`, cancels (PQcancel) and
    // waits a little more for the answer; without, gives up at once (Timeout,
    // the statement still running: give_back then closes the connection, as
    // a server that has not answered by then may not answer a cancel either).
    // A hang-up on `client_fd` (if >= 0) cancels the wait.
    // `results` gets the answers in order (the caller frees them).
    Exec exec(Conn &c, const std::string &sql, int64_t deadline, std::vector<PGresult *> &results,
              int client_fd = -1, bool cancel_at_deadline = false) {
        results.clear();
        if (!PQsendQuery(c.pg, sql.c_str())) return Exec::ConnLost;
        bool cancelled = false, client_gone = false;
        int64_t until = deadline;
        for (;;) {
            const int fl = PQflush(c.pg);
            if (fl < 0) return Exec::ConnLost;
            if (fl == 0 && !PQisBusy(c.pg)) {
                PGresult *r = PQgetResult(c.pg);
                if (!r) return cancelled ? Exec::Timeout : Exec::Ok;
                results.push_back(r);
                if (PQstatus(c.pg) == CONNECTION_BAD) return Exec::ConnLost;
                continue;
            }
            const int64_t now = monotonic_ns();
            if ((until != kNoDeadline && now >= until) || (client_gone && !cancelled)) {
                if (cancelled) return Exec::ConnLost;  // no answer to the cancel either
                if (!cancel_at_deadline && !client_gone) return Exec::Timeout;
                send_cancel(c);
                cancelled = true;
                until = now + kCancelGraceNs;
                continue;
            }
            pollfd pfd[2] = {{PQsocket(c.pg), static_cast<short>(POLLIN | (fl == 1 ? POLLOUT : 0)), 0},
                             {client_fd, POLLRDHUP, 0}};
            if (pfd[0].fd < 0) return Exec::ConnLost;
            const int64_t left_ms =
                until == kNoDeadline ? 1000 : std::min<int64_t>(1000, (until - now + 999999) / 1000000);
            const nfds_t nfds = client_fd >= 0 && !client_gone ? 2 : 1;
            const int pr = poll(pfd, nfds, static_cast<int>(left_ms));
            if (pr < 0 && errno != EINTR) return Exec::ConnLost;
            if (pr > 0 && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
                if (!PQconsumeInput(c.pg)) return Exec::ConnLost;
            }
            if (pr > 0 && nfds == 2 && (pfd[1].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
                client_gone = true;  // it will never read the answer: leave the queue
                ++client_gone_;
            }
        }
    }

    uint64_t cancels() const { return cancels_.load(); }
    uint64_t clients_gone() const { return client_gone_.load(); }

  private:
    static constexpr int64_t kMinConnectNs = 1000LL * 1000000;
    static constexpr int64_t kMaxConnectNs = 5000LL * 1000000;

    // A connect may take a second even past a deadline that is near (a
    // request that does not wait for a lock still needs a session), and
    // never more than five (a server that does not answer at all).
    static int64_t connect_deadline(int64_t deadline) {
        const int64_t now = monotonic_ns();
        const int64_t left = deadline == kNoDeadline ? kMaxConnectNs : deadline - now;
        return now + std::min(kMaxConnectNs, std::max(kMinConnectNs, left));
    }
    static constexpr int64_t kCancelGraceNs = 2000LL * 1000000;


    // An idle connection has nothing to say: anything readable is the
    // server ending it (restart, terminate) or a notice.
    bool still_usable(Conn &c) {
        if (PQstatus(c.pg) != CONNECTION_OK) return false;
        pollfd pfd{PQsocket(c.pg), POLLIN, 0};
        if (pfd.fd < 0) return false;
        if (poll(&pfd, 1, 0) > 0) {
            if (!PQconsumeInput(c.pg) || PQstatus(c.pg) != CONNECTION_OK) return false;
            if (PQtransactionStatus(c.pg) != PQTRANS_IDLE) return false;
        }
        return PQtransactionStatus(c.pg) == PQTRANS_IDLE;
    }

    bool open_conn(Conn &c, int64_t deadline, std::string *why) {
        const std::string idle = std::to_string(opt_.keepalive_idle_s);
        const std::string intvl = std::to_string(opt_.keepalive_interval_s);
        const std::string cnt = std::to_string(opt_.keepalive_count);
        // Earlier keywords are defaults: the conninfo (expanded from dbname)
        // overrides them.
        const char *keys[] = {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                              "fallback_application_name", "dbname", nullptr};
        const char *vals[] = {"1", idle.c_str(), intvl.c_str(), cnt.c_str(), opt_.application_name.c_str(),
                              opt_.conninfo.c_str(), nullptr};
        PGconn *pg = PQconnectStartParams(keys, vals, 1);
        if (!pg) {
            if (why) *why = "out of memory";
            return false;
        }
        PostgresPollingStatusType st = PGRES_POLLING_WRITING;
        while (PQstatus(pg) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
            const int64_t left = deadline - monotonic_ns();
            if (left <= 0) {
                if (why) *why = "timed out connecting";
                PQfinish(pg);
                return false;
            }
            pollfd pfd{PQsocket(pg), static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
            const int pr = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left / 1000000 + 1, 1000)));
            if (pr < 0 && errno != EINTR) break;
            if (pr == 0) continue;
            st = PQconnectPoll(pg);
        }
        if (PQstatus(pg) != CONNECTION_OK) {
            if (why) {
                *why = PQerrorMessage(pg);
                while (!why->empty() && (why->back() == '\n' || why->back() == ' ')) why->pop_back();
                for (char &ch : *why)
                    if (ch == '\n') ch = ' ';
            }
            PQfinish(pg);
            return false;
        }
        PQsetnonblocking(pg, 1);
        c.pg = pg;
        c.server_version = PQserverVersion(pg);
        c.backend_pid = PQbackendPID(pg);
        stats_->add(ClusterStats::Connections, 1);
        return true;
    }

    void close_conn(Conn &c) {
        if (!c.pg) return;
        PQfinish(c.pg);
        c.pg = nullptr;
        c.backend_pid = 0;
        stats_->add(ClusterStats::Connections, -1);
    }

    // One thread per process, started with its first lock: notices a session
    // that ends while its request holds locks (server restart, terminate, a
    // dead peer after keepalive) when it happens rather than at the release.
    // An idle-in-transaction session has nothing to say, so the peer's
    // shutdown (POLLRDHUP), a hang-up or an error on its socket means it
    // ended. The request's client connection is shut (its handler's next
    // read or write fails), and the loss logged and counted once.
    void monitor() {
        std::unique_lock<std::mutex> lk(mu_);
        while (!stop_) {
            std::vector<pollfd> fds;
            for (const Conn &c : conns_)
                if (c.in_use && c.held_fd >= 0 && !c.lost_seen && !c.broken)
                    fds.push_back(pollfd{c.held_fd, POLLRDHUP, 0});
            if (fds.empty()) {
                monitor_cv_.wait(lk);
                continue;
            }
            lk.unlock();
            const int pr = poll(fds.data(), fds.size(), kMonitorPollMs);
            lk.lock();
            if (pr <= 0) continue;
            std::vector<std::string> lost;
            for (Conn &c : conns_) {
                if (!c.in_use || c.held_fd < 0 || c.lost_seen || c.broken) continue;
                // Polled again under the mutex: the lease (and so the fd)
                // is the one still held.
                pollfd p{c.held_fd, POLLRDHUP, 0};
                if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLRDHUP | POLLHUP | POLLERR))) continue;
                c.lost_seen = true;
                if (c.client_fd >= 0) shutdown(c.client_fd, SHUT_RDWR);
                stats_->add(ClusterStats::Lost, 1);
                lost.push_back(c.keys);
            }
            lk.unlock();
            for (const std::string &k : lost)
                log(3, "PIDLOCK430: lock lost while held: key(s) " + k +
                           ": the PostgreSQL session ended while the request ran; its client connection is shut");
            lk.lock();
        }
    }

    void send_cancel(Conn &c) {
        ++cancels_;
        PGcancel *cn = PQgetCancel(c.pg);
        if (!cn) return;
        char err[256];
        PQcancel(cn, err, sizeof err);
        PQfreeCancel(cn);
    }

    ClusterOptions opt_;
    ClusterStats *stats_;
    pid_t owner_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Conn> conns_;
    uint64_t tokens_ = 0;
    std::atomic<uint64_t> cancels_{0}, client_gone_{0};
    static constexpr int kMonitorPollMs = 200;
    std::condition_variable monitor_cv_;
    std::thread *monitor_ = nullptr;  // this process's (a forked copy forgets it)
    bool stop_ = false;
};

namespace {

void pools_prepare() {
    g_pools_mu.lock();
    if (g_pools)
        for (PgPool *p : *g_pools) p->fork_prepare();
}

void pools_parent() {
    if (g_pools)
        for (PgPool *p : *g_pools) p->fork_parent();
    g_pools_mu.unlock();
}

void pools_child() {
    if (g_pools)
        for (PgPool *p : *g_pools) p->fork_child();
    g_pools_mu.unlock();
}

}  // namespace

// -------------------------------------------------------- ClusterBackend

namespace {

void clear_results(std::vector<PGresult *> &rs) {
    for (PGresult *r : rs) PQclear(r);
    rs.clear();
}

const char *sqlstate(const PGresult *r) {
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return s ? s : "";
}

std::string error_text(const PGresult *r) {
    std::string m = PQresultErrorMessage(r);
    for (char &ch : m)
        if (ch == '\n') ch = ' ';
    while (!m.empty() && m.back() == ' ') m.pop_back();
    return m;
}

}  // namespace

ClusterBackend::ClusterBackend(LockBackend *local, ClusterStats *stats, const ClusterOptions &opt)
    : local_(local), stats_(stats), opt_(opt), pool_(new PgPool(opt, stats)) {}

ClusterBackend::~ClusterBackend() = default;

uint32_t ClusterBackend::open_connections() const { return pool_->open_count(); }
uint64_t ClusterBackend::cancels_sent() const { return pool_->cancels(); }
uint64_t ClusterBackend::clients_gone() const { return pool_->clients_gone(); }

namespace {

struct PgKey {
    int64_t hash;
    size_t index;  // in the request's keys
};

// The lock statements for one request, in one string: PostgreSQL runs them
// in order and stops at the first error. Keys go in hash order (not byte
// order), so two requests whose keys collide never wait for each other in
// a cycle.
std::string lock_sql(const std::vector<PgKey> &pk, Mode mode, int64_t wait_ms, bool server_timeout,
                     int server_version, int check_ms) {
    std::string sql = "BEGIN;";
    if (wait_ms > 0 && server_timeout) sql += "SET LOCAL lock_timeout = '" + std::to_string(wait_ms) + "ms';";
    if (server_version >= 140000 && check_ms > 0)
        sql += "SET LOCAL client_connection_check_interval = '" + std::to_string(check_ms) + "ms';";
    const char *fn = wait_ms > 0 ? (mode == Mode::Write ? "pg_advisory_xact_lock" : "pg_advisory_xact_lock_shared")
                                 : (mode == Mode::Write ? "pg_try_advisory_xact_lock"
                                                        : "pg_try_advisory_xact_lock_shared");
    for (const PgKey &k : pk) sql += std::string("SELECT ") + fn + "(" + std::to_string(k.hash) + ");";
    // Fences are multiples of kFenceStep: the numbers between them are
    // for a host that serves while PostgreSQL is unreachable (outage_fence).
    if (mode == Mode::Write)
        sql += "SELECT nextval('pidlock_fence') * " + std::to_string(ClusterStats::kFenceStep) + ";";
    return sql;
}

}  // namespace

#ifdef PIDLOCK_BENCH_NAIVE
namespace {
// Bench only (build/mod_pidlock_naive.so, never installed): the naive design
// `make bench` compares the tier with. No local tier: every request takes
// one session-level advisory lock per key (and a write its fence) in one
// round trip, holding a pooled session while it waits in PostgreSQL, and
// gives it back with pg_advisory_unlock_all() in a second one.
std::string naive_lock_sql(const KeyRef *keys, size_t n, Mode mode) {
    std::vector<int64_t> h;
    for (size_t i = 0; i < n; ++i) h.push_back(cluster_key(keys[i].data, keys[i].len));
    std::sort(h.begin(), h.end());
    h.erase(std::unique(h.begin(), h.end()), h.end());
    std::string sql;
    for (int64_t k : h)
        sql += std::string("SELECT ") + (mode == Mode::Write ? "pg_advisory_lock(" : "pg_advisory_lock_shared(") +
               std::to_string(k) + ");";
    if (mode == Mode::Write) sql += "SELECT nextval('pidlock_fence');";
    return sql;
}
}  // namespace
#endif

AcquireResult ClusterBackend::acquire_all(const KeyRef *keys, size_t n, Mode mode, int64_t deadline_ns,
                                          const HolderInfo &info, LockSet &set, BusyReport *report, int *err) {
#ifdef PIDLOCK_BENCH_NAIVE
    try {
        size_t idx = 0;
        bool fresh = false;
        std::string why;
        const PgPool::Got got = pool_->lease(deadline_ns, &idx, &fresh, &why);
        if (got != PgPool::Got::Ok) {
            if (err) *err = ECONNREFUSED;
            return got == PgPool::Got::Timeout ? AcquireResult::Busy : AcquireResult::Unavailable;
        }
        PgPool::Conn &c = pool_->conn(idx);
        std::vector<PGresult *> rs;
        stats_->add(ClusterStats::Waiting, 1);
        const PgPool::Exec ex = pool_->exec(c, naive_lock_sql(keys, n, mode), deadline_ns, rs, info.client_fd, true);
        stats_->add(ClusterStats::Waiting, -1);
        bool ok = ex == PgPool::Exec::Ok && !rs.empty();
        for (PGresult *r : rs) ok = ok && PQresultStatus(r) == PGRES_TUPLES_OK;
        if (ok && mode == Mode::Write) set.set_fence(std::strtoull(PQgetvalue(rs.back(), 0, 0), nullptr, 10));
        clear_results(rs);
        if (!ok) {
            std::vector<PGresult *> ur;
            const bool clean = pool_->exec(c, "SELECT pg_advisory_unlock_all()", monotonic_ns() + 2000LL * 1000000,
                                           ur) == PgPool::Exec::Ok;
            clear_results(ur);
            pool_->give_back(idx, clean);
            if (report) {
                *report = BusyReport();
                report->key.assign(keys[0].data, keys[0].len);
            }
            return AcquireResult::Busy;
        }
        set.tier() = LockSet::Slot{idx + 1, c.token};
        stats_->add(ClusterStats::Held, 1);
        return AcquireResult::Acquired;
    } catch (...) {
        if (err) *err = ENOMEM;
        return AcquireResult::Error;
    }
#endif
    const AcquireResult local = local_->acquire_all(keys, n, mode, deadline_ns, info, set, report, err);
    if (local != AcquireResult::Acquired) return local;
    try {
        std::vector<PgKey> pk;
        for (size_t i = 0; i < n; ++i) pk.push_back(PgKey{cluster_key(keys[i].data, keys[i].len), i});
        std::sort(pk.begin(), pk.end(), [](const PgKey &a, const PgKey &b) { return a.hash < b.hash; });
        pk.erase(std::unique(pk.begin(), pk.end(), [](const PgKey &a, const PgKey &b) { return a.hash == b.hash; }),
                 pk.end());
        std::string why;
        size_t busy_key = 0;
        bool created_sequence = false;
        for (int attempt = 0; attempt < 3; ++attempt) {
            size_t idx = 0;
            bool fresh = false;
            const PgPool::Got got = pool_->lease(deadline_ns, &idx, &fresh, &why);
            if (got == PgPool::Got::Timeout) {
                local_->release_all(set);
                if (report) {
                    *report = BusyReport();
                    report->key.assign(keys[0].data, keys[0].len);
                }
                return AcquireResult::Busy;
            }
            if (got == PgPool::Got::Unreachable) break;
            PgPool::Conn &c = pool_->conn(idx);
            const int64_t now = monotonic_ns();
            int64_t wait_ms = 0;
            if (deadline_ns == kNoDeadline) wait_ms = INT32_MAX;
            else if (deadline_ns > now) wait_ms = std::max<int64_t>(1, (deadline_ns - now) / 1000000);
            const std::string sql =
                lock_sql(pk, mode, wait_ms, opt_.server_lock_timeout, c.server_version, opt_.check_interval_ms);
            // The server's lock_timeout ends the wait; the client's own
            // deadline, a little later, is the backstop (cancel).
            int64_t client_deadline = deadline_ns;
            if (deadline_ns != kNoDeadline && opt_.server_lock_timeout)
                client_deadline = std::max(deadline_ns, now) + 500LL * 1000000;
            if (deadline_ns != kNoDeadline && wait_ms == 0) client_deadline = now + 2000LL * 1000000;
            std::vector<PGresult *> rs;
            stats_->add(ClusterStats::Waiting, 1);
            // With the server's lock_timeout, a server silent past it is gone
            // rather than slow: no cancel (which could block on it).
            const PgPool::Exec ex =
                pool_->exec(c, sql, client_deadline, rs, info.client_fd, !opt_.server_lock_timeout);
            stats_->add(ClusterStats::Waiting, -1);
            if (ex == PgPool::Exec::ConnLost) {
                clear_results(rs);
                why = PQerrorMessage(c.pg);
                for (char &ch : why)
                    if (ch == '\n') ch = ' ';
                pool_->give_back(idx, false);
                if (!fresh) continue;  // a stale pooled session: once more on a new one
                break;
            }
            // Read the answers: BEGIN, SETs, one per key, the fence.
            size_t granted = 0, lock_results = 0;
            bool busy = ex == PgPool::Exec::Timeout, failed = false, no_sequence = false;
            uint64_t fence = 0;
            const size_t sets = 1 + (wait_ms > 0 && opt_.server_lock_timeout ? 1 : 0) +
                          (c.server_version >= 140000 && opt_.check_interval_ms > 0 ? 1 : 0);
            for (size_t i = 0; i < rs.size(); ++i) {
                PGresult *r = rs[i];
                const ExecStatusType s = PQresultStatus(r);
                if (s == PGRES_FATAL_ERROR) {
                    const char *st = sqlstate(r);
                    if (!strcmp(st, kLockNotAvailable) || !strcmp(st, kQueryCanceled)) {
                        busy = true;
                    } else if (!strcmp(st, kUndefinedTable) && mode == Mode::Write && !created_sequence) {
                        no_sequence = true;
                    } else {
                        failed = true;
                        why = error_text(r);
                    }
                    busy_key = lock_results < pk.size() ? pk[lock_results].index : 0;
                    break;
                }
                if (i < sets) continue;
                if (lock_results < pk.size()) {
                    ++lock_results;
                    const char *v = PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "";
                    // The try form answers f when another session holds it.
                    if (wait_ms == 0 && v[0] == 'f' && !busy) {
                        busy = true;
                        busy_key = pk[lock_results - 1].index;
                    }
                    if (!busy) ++granted;
                } else if (PQntuples(r) == 1) {
                    fence = std::strtoull(PQgetvalue(r, 0, 0), nullptr, 10);
                }
            }
            clear_results(rs);
            const bool all = !busy && !failed && !no_sequence && granted == pk.size() &&
                             (mode != Mode::Write || fence > 0);
            if (all) {
                c.keys.clear();
                for (size_t i = 0; i < n && c.keys.size() < 200; ++i)
                    c.keys += (i ? ", " : "") + key_for_log(keys[i].data, keys[i].len);
                c.nkeys = n;
                set.tier() = LockSet::Slot{idx + 1, c.token};
                if (mode == Mode::Write) {
                    set.set_fence(fence);
                    stats_->saw_cluster_fence(fence);
                }
                stats_->add(ClusterStats::Held, 1);
                pool_->watch(c, info.client_fd);
                return AcquireResult::Acquired;
            }
            // Nothing kept: end the transaction (or the session).
            std::vector<PGresult *> rb;
            const bool rolled = pool_->exec(c, "ROLLBACK", monotonic_ns() + 2000LL * 1000000, rb) == PgPool::Exec::Ok &&
                                PQstatus(c.pg) == CONNECTION_OK;
            clear_results(rb);
            if (no_sequence) {
                // The setup SQL was not run: create what the fence needs.
                std::vector<PGresult *> cr;
                pool_->exec(c, "CREATE SEQUENCE IF NOT EXISTS pidlock_fence", monotonic_ns() + 2000LL * 1000000, cr);
                const bool ok = cr.size() == 1 && PQresultStatus(cr[0]) == PGRES_COMMAND_OK;
                if (!ok && !cr.empty()) why = error_text(cr.back());
                clear_results(cr);
                pool_->give_back(idx, rolled);
                created_sequence = true;
                pool_->log(ok ? 5 : 3, ok ? std::string("PIDLOCK405: created the fence sequence pidlock_fence "
                                                        "(conf/pidlock-cluster.sql was not run)")
                                          : "PIDLOCK406: no sequence pidlock_fence, and it cannot be created (" +
                                                why + "); run conf/pidlock-cluster.sql");
                if (ok) continue;
                break;
            }
            pool_->give_back(idx, rolled);
            if (busy) {
                local_->release_all(set);
                if (report) {
                    *report = BusyReport();
                    report->key.assign(keys[busy_key].data, keys[busy_key].len);
                }
                return AcquireResult::Busy;
            }
            pool_->log(3, "PIDLOCK401: PostgreSQL refused the lock statement: " + why);
            break;
        }
        // PostgreSQL cannot be had.
        stats_->add(ClusterStats::Errors, 1);
        if (opt_.fail_open) {
            pool_->log(4, "PIDLOCK403: PostgreSQL unavailable (" + why + "); serving key " +
                              key_for_log(keys[0].data, keys[0].len) +
                              " with this host's lock only (PidLockClusterOnFailure open)");
            if (mode == Mode::Write) {
                // Not the table's own fence: one below every cluster fence
                // to come, so none goes backwards when PostgreSQL is back.
                set.set_fence(stats_->outage_fence());
                if (!set.fence())
                    pool_->log(4, "PIDLOCK431: no fence for key " + key_for_log(keys[0].data, keys[0].len) +
                                      ": this host handed out every outage fence above the last cluster fence "
                                      "it saw; served without PidLock-Fence");
            }
            return AcquireResult::Acquired;
        }
        pool_->log(4, "PIDLOCK400: PostgreSQL unavailable: " + why);
        local_->release_all(set);
        if (err) *err = ECONNREFUSED;
        return AcquireResult::Unavailable;
    } catch (...) {
        local_->release_all(set);
        if (err) *err = ENOMEM;
        return AcquireResult::Error;
    }
}

int ClusterBackend::release_all(LockSet &set) {
#ifdef PIDLOCK_BENCH_NAIVE
    const LockSet::Slot nt = set.tier();
    set.clear();
    if (!nt.a) return 0;
    if (PgPool::Conn *c = pool_->by_lease(nt.a, nt.b)) {
        std::vector<PGresult *> rs;
        const bool ok = pool_->exec(*c, "SELECT pg_advisory_unlock_all()", monotonic_ns() + 5000LL * 1000000, rs) ==
                        PgPool::Exec::Ok;
        clear_results(rs);
        stats_->add(ClusterStats::Held, -1);
        pool_->give_back(nt.a - 1, ok);
    }
    return 0;
#endif
    try {
        const LockSet::Slot t = set.tier();
        if (t.a) {
            set.tier() = LockSet::Slot{0, 0};
            if (PgPool::Conn *c = pool_->by_lease(t.a, t.b)) {
                const bool seen = pool_->unwatch(*c);
                std::vector<PGresult *> rs;
                const PgPool::Exec ex = pool_->exec(*c, "COMMIT", monotonic_ns() + 5000LL * 1000000, rs);
                const bool ok = ex == PgPool::Exec::Ok && rs.size() == 1 && PQresultStatus(rs[0]) == PGRES_COMMAND_OK &&
                                PQstatus(c->pg) == CONNECTION_OK;
                std::string why = rs.empty() ? std::string(PQerrorMessage(c->pg)) : error_text(rs.back());
                for (char &ch : why)
                    if (ch == '\n') ch = ' ';
                clear_results(rs);
                stats_->add(ClusterStats::Held, -1);
                if (!ok && !c->broken && !seen) {
                    stats_->add(ClusterStats::Lost, 1);
                    pool_->log(3, "PIDLOCK402: lock lost while held: key(s) " + c->keys +
                                      ": the PostgreSQL session ended before the request did (" + why + ")");
                }
                pool_->give_back(t.a - 1, ok);
            }
        }
        return local_->release_all(set);
    } catch (...) {
        return ENOMEM;
    }
}

int ClusterBackend::break_key(const KeyRef &key) {
    const int n = local_->break_key(key);
    int ended = 0;
    try {
        // The PostgreSQL sessions holding it (any host) end, and with them
        // every lock of their request there.
        const uint64_t h = static_cast<uint64_t>(cluster_key(key.data, key.len));
        size_t idx = 0;
        bool fresh = false;
        std::string why;
        if (pool_->lease(monotonic_ns() + 2000LL * 1000000, &idx, &fresh, &why) != PgPool::Got::Ok) {
            pool_->log(4, "PIDLOCK407: cannot reach PostgreSQL to break a cluster lock: " + why);
            return n;
        }
        PgPool::Conn &c = pool_->conn(idx);
        const std::string holders =
            "FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = " + std::to_string(h >> 32) + " AND objid = " + std::to_string(h & 0xffffffffu) +
            " AND objsubid = 1 AND granted AND pid <> pg_backend_pid()";
        // This process's own holders are marked first: their end is on
        // purpose, not a lost lock (the monitor would see it at once).
        std::vector<PGresult *> mine;
        if (pool_->exec(c, "SELECT pid " + holders, monotonic_ns() + 2000LL * 1000000, mine) == PgPool::Exec::Ok &&
            mine.size() == 1 && PQresultStatus(mine[0]) == PGRES_TUPLES_OK)
            for (int i = 0; i < PQntuples(mine[0]); ++i) pool_->mark_broken(atoi(PQgetvalue(mine[0], i, 0)));
        clear_results(mine);
        const std::string sql = "SELECT pid, pg_terminate_backend(pid, 2000) " + holders;
        std::vector<PGresult *> rs;
        const bool ok = pool_->exec(c, sql, monotonic_ns() + 5000LL * 1000000, rs) == PgPool::Exec::Ok;
        if (ok && rs.size() == 1 && PQresultStatus(rs[0]) == PGRES_TUPLES_OK) {
            for (int i = 0; i < PQntuples(rs[0]); ++i) {
                pool_->mark_broken(atoi(PQgetvalue(rs[0], i, 0)));
                ++ended;
            }
        } else if (!rs.empty()) {
            pool_->log(4, "PIDLOCK412: breaking a cluster lock failed: " + error_text(rs.back()));
        }
        clear_results(rs);
        pool_->give_back(idx, ok && PQstatus(c.pg) == CONNECTION_OK);
        if (ended)
            pool_->log(5, "PIDLOCK408: ended " + std::to_string(ended) +
                              " PostgreSQL session(s) holding key " + key_for_log(key.data, key.len));
    } catch (...) {
    }
    // The same holders are counted in both tiers; a key held on other hosts
    // alone counts their sessions.
    return n < 0 ? n : std::max(n, ended);
}

namespace {

// The holders, in other sessions than this host's, of the advisory locks
// this host's sessions wait for.
std::string remote_holders_sql(PGconn *pg, const std::string &tag) {
    char *lit = PQescapeLiteral(pg, tag.data(), tag.size());
    const std::string t = lit ? lit : "''";
    if (lit) PQfreemem(lit);
    return "SELECT h.classid, h.objid, h.mode, h.pid, coalesce(a.application_name, ''), "
           "coalesce(host(a.client_addr), ''), coalesce(floor(extract(epoch FROM a.xact_start) * 1000000), 0) "
           "FROM pg_locks w JOIN pg_stat_activity wa ON wa.pid = w.pid "
           "JOIN pg_locks h ON h.locktype = 'advisory' AND h.granted AND h.database = w.database "
           "AND h.classid = w.classid AND h.objid = w.objid AND h.objsubid = w.objsubid "
           "LEFT JOIN pg_stat_activity a ON a.pid = h.pid "
           "WHERE w.locktype = 'advisory' AND NOT w.granted AND wa.application_name = " + t +
           " AND a.application_name IS DISTINCT FROM " + t + " ORDER BY a.xact_start LIMIT 200";
}

}  // namespace

void ClusterBackend::remote_holders(TableSnapshot &out) {
    size_t idx = 0;
    bool fresh = false;
    std::string why;
    if (pool_->lease(monotonic_ns() + 500LL * 1000000, &idx, &fresh, &why) != PgPool::Got::Ok) return;
    PgPool::Conn &c = pool_->conn(idx);
    std::vector<PGresult *> rs;
    const bool ok = pool_->exec(c, remote_holders_sql(c.pg, opt_.application_name), monotonic_ns() + 1000LL * 1000000,
                                rs) == PgPool::Exec::Ok;
    if (ok && rs.size() == 1 && PQresultStatus(rs[0]) == PGRES_TUPLES_OK) {
        for (int i = 0; i < PQntuples(rs[0]); ++i) {
            const uint64_t h = (std::strtoull(PQgetvalue(rs[0], i, 0), nullptr, 10) << 32) |
                               std::strtoull(PQgetvalue(rs[0], i, 1), nullptr, 10);
            RemoteHolder r;
            // The key, if this host holds or waits for it; else the number.
            for (const LockView &l : out.locks)
                if (static_cast<uint64_t>(cluster_key(l.key.data(), l.key.size())) == h) r.key = l.key;
            if (r.key.empty()) r.key = "pidlock_key " + std::to_string(static_cast<int64_t>(h));
            r.mode = !strcmp(PQgetvalue(rs[0], i, 2), "ExclusiveLock") ? Mode::Write : Mode::Read;
            r.session = atoi(PQgetvalue(rs[0], i, 3));
            r.application = PQgetvalue(rs[0], i, 4);
            r.client = PQgetvalue(rs[0], i, 5);
            r.since_us = std::strtoll(PQgetvalue(rs[0], i, 6), nullptr, 10);
            out.cluster.remote.push_back(std::move(r));
        }
    }
    clear_results(rs);
    pool_->give_back(idx, ok && PQstatus(c.pg) == CONNECTION_OK);
}

bool ClusterBackend::snapshot(TableSnapshot &out, int *err) {
    if (!local_->snapshot(out, err)) return false;
    const ClusterStats::Totals t = stats_->totals();
    out.cluster.on = true;
    out.cluster.backend = "postgres";
    out.cluster.connections = t.connections;
    out.cluster.held = t.held;
    out.cluster.waiting = t.waiting;
    out.cluster.lost = t.lost;
    out.cluster.errors = t.errors;
    // Only when something waits there: the status page costs PostgreSQL
    // nothing otherwise.
    if (t.waiting > 0) {
        try {
            remote_holders(out);
        } catch (...) {
        }
    }
    return true;
}

}  // namespace pidlock
