// mod_pidlock's httpd glue, shared by its four files: configuration
// (mod_pidlock_config.cc), lifecycle (mod_pidlock_lifecycle.cc), the request
// path (mod_pidlock_request.cc) and the status page (mod_pidlock_status.cc);
// mod_pidlock.cc holds the module structure and registers the hooks.
// Everything here lives in the config pool of one generation; no C++
// exception leaves a function httpd calls.
#ifndef MOD_PIDLOCK_GLUE_H
#define MOD_PIDLOCK_GLUE_H

#include <atomic>
#include <string>
#include <vector>

#include "pidlock_backend.h"
#include "pidlock_checks.h"
#include "pidlock_cluster.h"
#include "pidlock_key.h"
#include "pidlock_lease.h"
#include "pidlock_render.h"
#include "pidlock_table.h"

#include <apr_global_mutex.h>

#include "httpd.h"
#include "ap_mpm.h"
#include "ap_regex.h"
#include "http_config.h"
#include "util_filter.h"

// The Makefile passes the package's version (debian/changelog).
#ifndef PIDLOCK_VERSION
#define PIDLOCK_VERSION "0.2.0"
#endif

// The one symbol httpd looks up; everything else stays hidden.
#define PIDLOCK_EXPORT __attribute__((visibility("default")))
extern "C" PIDLOCK_EXPORT module AP_MODULE_DECLARE_DATA pidlock_module;

namespace pidlock {
namespace glue {

extern const char *const kMutexType;
extern const char *const kStatusHandler;
extern const char *const kReleaseFilter;
extern const char *const kFenceHeader;
constexpr int kUnset = -1;
constexpr apr_size_t kDefaultMaxKey = 1024;

// ---------------------------------------------------------------- config

struct KeySpec {
    KeySource source;
    const char *name;     // query argument or header name
    ap_regex_t *regex;    // path
    const char *prefix;   // literal every path match starts with ("" if none)
    apr_size_t prefix_len;
    bool simple;          // ^prefix(.+)$ or ^prefix(.*)$: no regex engine needed
    bool allow_empty;     // (.*)
};

struct DirConfig {
    int enabled;                 // kUnset, 0, 1
    apr_array_header_t *keys;    // of KeySpec; null: unset
    apr_table_t *methods;        // method -> "read" | "write" | "none"; null: none
    apr_int64_t timeout_ms;      // kUnset or >= 0
    int busy_status;             // 0: unset
    int status_actions;          // kUnset, 0, 1
    int status_query;            // PidLockStatusQuery: kUnset, 0, 1
    int keys_all;                // PidLockKeys: kUnset, 0 (first), 1 (all)
    int key_required;            // PidLockKeyRequired: kUnset, 0, 1
    apr_int64_t max_hold_ms;     // PidLockMaxHold: kUnset, 0 (no limit) or ms
    int release_sent;            // PidLockRelease: kUnset, 0 (eos), 1 (sent)
    const char *where;           // file:line of PidLock or PidLockTimeout, for warnings
    const char *section;         // "<Location", "<Directory", ... or null (server scope)
    const char *path;            // the section's path
    int lease;                   // PidLockLease: kUnset, 0, 1
    apr_int64_t lease_timeout_s; // PidLockLeaseTimeout DEFAULT: kUnset or seconds
    apr_int64_t lease_max_s;     // PidLockLeaseTimeout MAX: kUnset or seconds
};

struct ServerConfig {
    apr_int64_t max_key_len;  // kUnset or > 0
    apr_int64_t body_buffer;  // PidLockBodyBuffer: kUnset or bytes
    // main server only
    apr_int64_t table_size;   // 0: auto; kUnset: unset
    int thread_backend;       // kUnset, 0 (shared), 1 (thread)
    const char *table_size_where;
    apr_int64_t max_waiters_key;    // PidLockMaxWaiters: kUnset or >= 1
    apr_int64_t max_waiters_total;  // kUnset or 0 (auto) or >= 1
    apr_int64_t lease_table_size;  // PidLockLeaseTableSize: kUnset or N (main server only)
    int lease_used;                // PidLockLease On somewhere in this host's configuration
    // PidLockCluster: null unset or Off, else the libpq conninfo (postgres).
    const char *cluster_conninfo;
    apr_int64_t cluster_connections;  // PidLockClusterConnections: kUnset or N
    int cluster_fail_open;            // PidLockClusterOnFailure: kUnset, 0 closed, 1 open
};
constexpr apr_int64_t kDefaultClusterConnections = 8;

// PidLockMaxWaiters as it applies: per key, and in all (auto resolved).
struct WaitLimits {
    uint32_t per_key, total;
};
constexpr apr_int64_t kDefaultMaxWaitersKey = 16;
WaitLimits wait_limits(const MpmFacts &mpm, const ServerConfig *sc);

void *create_dir_config(apr_pool_t *p, char *path);
void *merge_dir_config(apr_pool_t *p, void *basev, void *addv);
void *create_server_config(apr_pool_t *p, server_rec *);
void *merge_server_config(apr_pool_t *p, void *basev, void *addv);
extern const command_rec pidlock_cmds[];

inline DirConfig *dir_config(request_rec *r) {
    return static_cast<DirConfig *>(ap_get_module_config(r->per_dir_config, &pidlock_module));
}
inline ServerConfig *server_config(server_rec *s) {
    return static_cast<ServerConfig *>(ap_get_module_config(s->module_config, &pidlock_module));
}
inline apr_size_t max_key_len(const ServerConfig *sc) {
    return sc->max_key_len == kUnset ? kDefaultMaxKey : static_cast<apr_size_t>(sc->max_key_len);
}

// ----------------------------------------------------------- global state

// Everything one configuration generation needs; allocated in pconf and
// forgotten by a pconf cleanup, so no pointer outlives the config pool.
struct State {
    bool thread_backend;
    apr_global_mutex_t **mutexes;  // shared backend
    StripeLocks *locks;
    LockTable *table;
    LockBackend *backend;
    LockBackend *local;            // the host's table (backend wraps it under PidLockCluster)
    ClusterStats *cluster_stats;   // null: no cluster tier
    ClusterBackend *cluster;       // the tier (== backend), null: none
    ServerFacts *facts;
    uint32_t generation;        // the MPM's, asked in post_config and child_init
    void *exits;                // the exit list (shared backend); null: none
    uint64_t *exits_published;  // the parent's own count (retained)
    void *gate;                 // the upgrade gate (shared backend); null: none
    uint32_t cluster_slots;     // the parent's own count of cluster stats slots
    char nonce[33];
    LeaseStore *leases;            // null where no scope has PidLockLease On
    StripeLocks *lease_locks;
    apr_global_mutex_t **lease_mutex;
    // The host table's exit list reader (null: none attached): maintain()
    // is called only when it says exits are pending.
    const ExitReader *exits_reader;
    // == backend when that is the host's table alone (no cluster tier):
    // the request path then calls it directly (TableBackend is final), so
    // the link-time optimizer can inline its single-key path.
    TableBackend *direct;
};
extern State *g_state;

// The request path's calls on `b`: direct where it is the plain table.
inline AcquireResult acquire_within_on(LockBackend *b, const KeyRef *keys, size_t n, Mode mode, int64_t timeout_ns,
                                       const HolderInfo &info, LockSet &set, BusyReport *report, int *err) {
    if (g_state && b == g_state->direct)
        return g_state->direct->acquire_within(keys, n, mode, timeout_ns, info, set, report, err);
    return b->acquire_within(keys, n, mode, timeout_ns, info, set, report, err);
}
inline int release_all_on(LockBackend *b, LockSet &set) {
    if (g_state && b == g_state->direct) return g_state->direct->release_all(set);
    return b->release_all(set);
}

// ------------------------------------------------------------------ hooks

int pre_config(apr_pool_t *pconf, apr_pool_t *, apr_pool_t *);
int check_config(apr_pool_t *, apr_pool_t *, apr_pool_t *ptemp, server_rec *s);
int post_config(apr_pool_t *pconf, apr_pool_t *, apr_pool_t *ptemp, server_rec *s);
void child_status(server_rec *s, pid_t pid, ap_generation_t, int, mpm_child_status status);
void child_init(apr_pool_t *p, server_rec *s);
// In the parent, about once a second: opens the upgrade gate once the
// processes of an older table layout are gone.
int monitor(apr_pool_t *p, server_rec *s);

struct ConnLocks;

// The locks of one initial request and of the internal redirects and
// sub-requests it runs: taken in its fixup, released together by the
// connection's release filter when the EOS of its response passes
// (PidLockRelease eos), by its pool's cleanup, or by the PidLockMaxHold
// watchdog.
struct RequestLocks {
    static constexpr int kMaxSets = 4;  // the initial request's and its redirects'
    LockBackend *backend = nullptr;
    request_rec *r = nullptr;  // the initial request
    ConnLocks *conn = nullptr; // its connection's; current == this while an EOS is awaited
    int64_t deadline_ns = 0;   // of the initial request's wait; 0: not read off the clock (granted at once)
    uint64_t request = 0;      // its number on the status page
    int nsets = 0;
    LockSet first;             // set 0: the initial request's
    LockSet *more = nullptr;   // sets 1..kMaxSets-1 (redirects'), made in the pool by the first; null: none
    LockSet &set(int i) { return i == 0 ? first : more[i - 1]; }
    // The keys held, in any set: views into the request's own text (r->uri,
    // r->args, a header value) or copies in its pool. The first nheld of
    // `held` are set.
    int nheld = 0;
    KeyRef held[LockSet::kMaxKeys];
    apr_array_header_t *held_more = nullptr;  // of KeyRef: redirects' keys beyond `held`; null: none
    bool released = false;
    // The connection's `spare`, taken at once under PidLockRelease eos: no
    // pool cleanup of its own; the release filter ends it at the response's
    // EOS, else at the request's EOR (every request that httpd ends passes
    // one there), else the connection's next initial request or its end.
    bool at_conn = false;
    bool watched = false;      // in the watchdog's list (under its mutex)
    bool watchdog = false;     // PidLockMaxHold applies: releases go through it
    int64_t hold_deadline_ns = 0;
    int sock = -1;             // the client connection's descriptor, -1: none
    char key_shown[96];        // the first key, for the watchdog's log line (set by hold_watch)
};

// One client connection's part (an HTTP/2 stream's own connection), made
// in its pool by its first locking request: the release filter is added to
// the connection once (not per request) and releases `current` when the
// EOS of that request's response passes it, or its EOR; the request pool's
// cleanup clears `current` if the request ended without either.
struct ConnLocks {
    RequestLocks *current;     // PidLockRelease eos: whose locks the next EOS ends; null: none
    int fd;                    // connection_fd() of the connection
    bool filter;               // the release filter is in the connection's output filters
    SlotCache cache;           // the table's holder slot between this connection's requests
    // The locks of the connection's request when taken at once (the common
    // case: no allocation); `spare_busy` until that request's pool cleanup
    // (PidLockRelease sent) or its release (eos, RequestLocks::at_conn). A
    // request that finds it busy (a pipelined request whose predecessor's
    // pool is not gone yet) allocates its own.
    bool spare_busy;
    RequestLocks spare;
    // This connection's RequestLocks that hold locks still (the watchdog's
    // thread may release one): under PidLockRelease sent an earlier
    // request's locks last until httpd has written its response, which it
    // may keep buffered while it reads the next, pipelined one.
    std::atomic<int> unreleased;
};
// Releases every lock of `rl` (idempotent); the watchdog's lock is taken
// where it may race.
void release_locks(RequestLocks *rl);
void release_locks_now(RequestLocks *rl);
// PidLockMaxHold: after `max_hold_ms` the watchdog aborts the request's
// connection and releases its locks; hold_unwatch releases them at the
// request's own end and forgets it.
void hold_watch(RequestLocks *rl, request_rec *r, apr_int64_t max_hold_ms);
void hold_unwatch(RequestLocks *rl);
// Counts a set just acquired by a redirect; false if the watchdog released
// the request's locks meanwhile (the caller releases the new set).
bool hold_add_set(RequestLocks *rl);

// The client socket of a connection (an HTTP/2 stream's: its master's); -1
// if none.
int connection_fd(conn_rec *c);
// HolderInfo::client_gone for a connection_rec (`conn`): aborted (an HTTP/2
// stream reset marks its secondary connection), or its master is.
bool client_aborted(void *conn);

int fixups(request_rec *r);
int subrequest_locks(request_rec *r);
// A request switching its connection's protocol (Upgrade: h2c): its locks
// end; the new protocol's request takes its own.
int protocol_switch(conn_rec *c, request_rec *r, server_rec *s, const char *protocol);
int strip_fence(request_rec *r);
// Releases what the child processes the parent reported gone still held
// (one atomic load when there is nothing new); logged against `r`.
void reap_reported_exits(request_rec *r, State *st);
// The values of the request's `form` sources, read from its body (kept for
// the handler): `values` gets one per form source, in their order ("" where
// the field is absent). 0 or the HTTP status refusing the request.
int form_keys(const DirConfig *d, request_rec *r, apr_size_t max_len, std::vector<std::string> &values);
void register_body_filters();
extern ap_filter_rec_t *g_release_filter;
apr_status_t release_filter(ap_filter_t *f, apr_bucket_brigade *bb);
// child_init: this process's pid, for the request numbers (getpid() is a
// system call).
void note_child_pid();

int status_handler(request_rec *r);
int mod_status_hook(request_rec *r, int flags);

bool accepts_json(request_rec *r);
// COPY and MOVE write their Destination: the keys this scope's path sources
// yield for its path (routed like a request path). 0 or the status that
// refuses a malformed Destination.
int destination_keys(const DirConfig *d, request_rec *r, std::vector<std::string> &keys);

// ----------------------------------------------- edit leases (_lease.cc)

// What survives a restart for the lease table: its region and its mutex
// (a member of the lifecycle's retained data).
struct LeaseRetained {
    apr_shm_t *shm;
    apr_global_mutex_t *mutex;
    LeaseParams params;
};
// check_config: PidLockLease On beside mod_dav's Dav On in one section is
// refused (PIDLOCK467).
std::vector<Finding> lease_check_config(server_rec *s);
// post_config: creates (first start) or takes over the lease table where a
// scope has PidLockLease On, into st->leases. False after logging why.
// The lease table's handles live under a key of their own, named by its
// layout: a lock table of another layout (an upgrade) keeps the leases.
bool lease_post_config(server_rec *s, apr_pool_t *pconf, State *st, uint32_t key_cap);
void lease_child_init(apr_pool_t *p, server_rec *s);
// The fixup's lease step, for an initial request whose locks (`rl`) were
// just granted on `keys`: answers LOCK and UNLOCK itself (DONE), refuses a
// write the lease forbids (its locks released first), else DECLINED.
int lease_gate(request_rec *r, const DirConfig *d, Mode mode, const std::vector<std::string> &keys,
               RequestLocks *rl);
// Before the locks are asked for: a write without a token on a leased key
// is refused at once (423) rather than queued; a malformed If gets 400.
// 0 otherwise.
int lease_precheck(request_rec *r, const DirConfig *d, Mode mode, const std::vector<std::string> &keys);
// Status page POST action=release|steal (after Break's checks passed).
int lease_status_action(request_rec *r, const DirConfig *d, State *st, const std::string &action,
                        const std::string &key);
// The status page's lease parts, from one snapshot.
void lease_status_extra(State *st, int64_t now_us, bool actions, const char *nonce, const char *form_action,
                        StatusExtra &extra);
// ?auto's and mod_status's lease lines: counts and counters, no lease copied.
void lease_status_summary(State *st, int64_t now_us, StatusExtra &extra);

}  // namespace glue
}  // namespace pidlock

#endif
