// mod_pidlock glue: the lifecycle. The mutex type (pre_config), the startup
// checks (check_config), the lock table and its mutexes, retained across
// graceful restarts (post_config), and each child's attachment (child_init).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "mod_pidlock_glue.h"
#include "pidlock_exits.h"
#include "pidlock_gate.h"
#include "pidlock_locks.h"
#include "pidlock_table.h"

#include <apr_shm.h>
#include <apr_strings.h>

#include "ap_mpm.h"
#include "http_core.h"
#include "http_log.h"
#include "scoreboard.h"
#include "util_mutex.h"
#include "mod_proxy.h"

#ifdef APLOG_USE_MODULE
APLOG_USE_MODULE(pidlock);
#endif

namespace pidlock {
namespace glue {

const char *const kMutexType = "pidlock";

// ----------------------------------------------------------- global state

State *g_state = nullptr;

apr_status_t forget_state(void *) {
    if (g_state) {
        if (g_state->backend) g_state->backend->~LockBackend();
        if (g_state->local && g_state->local != g_state->backend) g_state->local->~LockBackend();
        if (g_state->table) g_state->table->~LockTable();
        if (g_state->facts) g_state->facts->~ServerFacts();
        if (g_state->locks) g_state->locks->~StripeLocks();
        if (g_state->leases) g_state->leases->~LeaseStore();
        if (g_state->lease_locks) g_state->lease_locks->~StripeLocks();
    }
    g_state = nullptr;
    return APR_SUCCESS;
}

apr_status_t free_region(void *mem) {
    free(mem);
    return APR_SUCCESS;
}

// The MPM's own answers, as the startup checks want them.
MpmFacts query_mpm() {
    MpmFacts f;
    int v = 0;
    f.name = ap_show_mpm();
    if (ap_mpm_query(AP_MPMQ_IS_FORKED, &v) == APR_SUCCESS) f.forked = v != AP_MPMQ_NOT_SUPPORTED;
    if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &v) == APR_SUCCESS) f.server_limit = v > 0 ? v : 1;
    if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_THREADS, &v) == APR_SUCCESS) f.thread_limit = v > 0 ? v : 1;
    if (ap_mpm_query(AP_MPMQ_MAX_DAEMONS, &v) == APR_SUCCESS) f.max_daemons = v > 0 ? v : 1;
    if (ap_mpm_query(AP_MPMQ_MAX_THREADS, &v) == APR_SUCCESS) f.max_threads = v > 0 ? v : 1;
    return f;
}

ModuleFacts module_facts(server_rec *s) {
    ModuleFacts m;
    const ServerConfig *sc = server_config(s);
    m.table_size = sc->table_size == kUnset ? 0 : static_cast<uint64_t>(sc->table_size);
    m.thread_backend = sc->thread_backend == 1;
    m.mutex_mech = "default";
    for (server_rec *vs = s; vs; vs = vs->next) {
        const apr_size_t k = max_key_len(server_config(vs));
        if (k > m.key_cap) m.key_cap = static_cast<uint32_t>(k);
        // Every scope: a request holds one key, or under PidLockKeys all
        // one per source (at most LockSet::kMaxKeys), and one more for an
        // internal redirect into another locked scope.
        auto keys_of = [](const ap_conf_vector_t *v) -> uint32_t {
            const auto *d = static_cast<const DirConfig *>(ap_get_module_config(v, &pidlock_module));
            if (!d || !d->keys) return 0;
            const uint32_t n = d->keys_all == 1 ? static_cast<uint32_t>(d->keys->nelts) : 1;
            return n < LockSet::kMaxKeys ? n : static_cast<uint32_t>(LockSet::kMaxKeys);
        };
        uint32_t most = keys_of(vs->lookup_defaults), scopes = 0;
        const auto *core = static_cast<const core_server_config *>(ap_get_core_module_config(vs->module_config));
        for (const apr_array_header_t *arr : {core->sec_dir, core->sec_url}) {
            if (!arr) continue;
            const auto *vecs = reinterpret_cast<ap_conf_vector_t *const *>(arr->elts);
            for (int i = 0; i < arr->nelts; ++i) {
                const uint32_t n = keys_of(vecs[i]);
                if (n) ++scopes;
                if (n > most) most = n;
            }
        }
        const uint32_t need = most + (scopes > 1 ? 1 : 0);
        if (need > m.keys_per_request) m.keys_per_request = need;
    }
    return m;
}

// ------------------------------------------------------------------ hooks

int pre_config(apr_pool_t *pconf, apr_pool_t *, apr_pool_t *) {
    const apr_status_t rv = ap_mutex_register(pconf, kMutexType, nullptr, APR_LOCK_DEFAULT, 0);
    if (rv != APR_SUCCESS) {
        ap_log_perror(APLOG_MARK, APLOG_CRIT, rv, pconf, "PIDLOCK001: cannot register the pidlock mutex type");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    return OK;
}

// The mechanism the `Mutex` directive gives pidlock, learnt by creating a
// throwaway mutex in ptemp: util_mutex keeps its configuration private.
std::string probe_mutex_mech(server_rec *s, apr_pool_t *ptemp) {
    apr_global_mutex_t *m = nullptr;
    const apr_status_t rv = ap_global_mutex_create(&m, nullptr, kMutexType, "probe", s, ptemp, 0);
    if (rv != APR_SUCCESS) return "unusable";
    if (!m) return "none";
    std::string name = apr_global_mutex_name(m);
    apr_global_mutex_destroy(m);
    return name;
}

// mod_proxy's ProxyTimeout for a host, where it is loaded and sets one.
double proxy_timeout_s(server_rec *s) {
    module *proxy = ap_find_linked_module("mod_proxy.c");
    if (!proxy) return -1;
    const auto *conf = static_cast<const proxy_server_conf *>(ap_get_module_config(s->module_config, proxy));
    if (!conf || !conf->timeout_set) return -1;
    return static_cast<double>(apr_time_as_msec(conf->timeout)) / 1000.0;
}

ScopeFacts scope_facts(const ap_conf_vector_t *v) {
    ScopeFacts f;
    const auto *d = static_cast<const DirConfig *>(ap_get_module_config(v, &pidlock_module));
    if (!d) return f;
    f.where = d->where ? d->where : "";
    f.path = d->path ? d->path : "";
    // Keys set in a section count for sections of its kind below its path.
    f.kind = d->path ? (d->section ? d->section : "<section") : "";
    f.on = d->enabled == 1;
    f.has_keys = d->keys && d->keys->nelts > 0;
    f.timeout_s = d->timeout_ms == kUnset ? -1.0 : d->timeout_ms / 1000.0;
    f.max_hold_s = d->max_hold_ms == kUnset ? -1.0 : d->max_hold_ms / 1000.0;
    return f;
}

// Every scope each host sees: its defaults and its sections (httpd has merged
// the main server's sections into each virtual host's by now).
std::vector<ServerScopes> gather_scopes(server_rec *s) {
    std::vector<ServerScopes> out;
    for (server_rec *vs = s; vs; vs = vs->next) {
        ServerScopes srv;
        srv.name = vs->is_virtual ? std::string("virtual host ") + (vs->server_hostname ? vs->server_hostname : "?") +
                                        " (" + (vs->defn_name ? vs->defn_name : "?") + ":" +
                                        std::to_string(vs->defn_line_number) + ")"
                                  : std::string("the main server");
        srv.httpd_timeout_s = static_cast<double>(apr_time_as_msec(vs->timeout)) / 1000.0;
        srv.proxy_timeout_s = proxy_timeout_s(vs);
        srv.scopes.push_back(scope_facts(vs->lookup_defaults));
        const auto *core = static_cast<const core_server_config *>(ap_get_core_module_config(vs->module_config));
        for (const apr_array_header_t *arr : {core->sec_dir, core->sec_url}) {
            if (!arr) continue;
            const auto *vecs = reinterpret_cast<ap_conf_vector_t *const *>(arr->elts);
            for (int i = 0; i < arr->nelts; ++i) srv.scopes.push_back(scope_facts(vecs[i]));
        }
        out.push_back(std::move(srv));
    }
    return out;
}

int check_config(apr_pool_t *, apr_pool_t *, apr_pool_t *ptemp, server_rec *s) {
    try {
        const MpmFacts mpm = query_mpm();
        ModuleFacts mod = module_facts(s);
        mod.mutex_mech = probe_mutex_mech(s, ptemp);
        bool refused = false;
        std::vector<Finding> findings = check_startup(mpm, mod);
        for (Finding &f : check_scopes(gather_scopes(s))) findings.push_back(std::move(f));
        for (Finding &f : lease_check_config(s)) findings.push_back(std::move(f));
        for (const Finding &f : findings) {
            // APLOG_STARTUP puts the line on stderr without a log prefix; the
            // second call puts it in the error log.
            ap_log_error(APLOG_MARK, APLOG_STARTUP | (f.refuse ? APLOG_EMERG : APLOG_WARNING), 0, s,
                         "mod_pidlock: %s", f.message.c_str());
            ap_log_error(APLOG_MARK, f.refuse ? APLOG_EMERG : APLOG_WARNING, 0, s, "%s",
                         f.message.c_str());
            refused = refused || f.refuse;
        }
        return refused ? HTTP_INTERNAL_SERVER_ERROR : OK;
    } catch (...) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s, "PIDLOCK002: startup checks failed");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

// What survives a restart of the parent (graceful or not) until a full stop:
// the shared table and its mutexes, so old-generation children keep their
// locks and new ones honour them, the exit list, and the upgrade gate. Plain
// APR handles and plain data only: the module itself (and every vtable in
// it) is unloaded and reloaded between generations.
//
// Kept under a key that names the table's layout and this struct's size, so
// a build that lays either out differently never reads another's: it starts
// a table of its own and waits behind the upgrade gate (pidlock_gate.h)
// until the older generation's processes are gone.
struct Retained {
    apr_shm_t *shm;        // the lock table
    apr_shm_t *exits_shm;  // the exit list
    apr_shm_t *gate_shm;   // the upgrade gate
    apr_global_mutex_t **mutexes;
    unsigned stripes;
    TableParams params;    // the parent's own copy: never read back from the table
    uint64_t exits_published;  // the parent's own count of exits published
    char mech[32];
    char nonce[33];
    // Processes of an older layout still running (the gate is closed while
    // there are any); the array is in the process pool.
    OldProcess *old;
    uint32_t n_old, cap_old;
    apr_time_t old_logged;  // when the parent last said it still waits
    int old_formatted;      // the gate has been laid out
};

// Contract with tests/backend/mod_pidlock_testbackend.cc (which plays a
// hostile child) and with every later build: under this key, two segment
// handles of the newest generation's table, the table's then the exit
// list's. Its presence also tells a newer build that an older one ran.
struct RetainedHead {
    apr_shm_t *shm;
    apr_shm_t *exits_shm;
};
const char *const kRetainedHeadKey = "mod_pidlock-retained";

Retained *retained() {
    char key[96];
    apr_snprintf(key, sizeof key, "mod_pidlock-retained-t%u-r%" APR_SIZE_T_FMT, LockTable::layout_version(),
                 sizeof(Retained));
    auto *rd = static_cast<Retained *>(ap_retained_data_get(key));
    if (!rd) rd = static_cast<Retained *>(ap_retained_data_create(key, sizeof(Retained)));
    return rd;
}

// At the creation of a table: the processes httpd's scoreboard lists now
// are of an earlier generation (this one's children are not forked yet). If
// an earlier mod_pidlock ran in this parent, those with a different table
// layout (else this table would have been kept) are remembered and the gate
// stays closed until they are gone.
void note_old_processes(server_rec *s, Retained *rd) {
    rd->n_old = 0;
    if (!ap_retained_data_get(kRetainedHeadKey) || !ap_scoreboard_image) return;
    int limit = 0;
    if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit) != APR_SUCCESS || limit <= 0) return;
    if (!rd->old || rd->cap_old < static_cast<uint32_t>(limit)) {
        rd->old = static_cast<OldProcess *>(apr_pcalloc(s->process->pool, sizeof(OldProcess) * limit));
        rd->cap_old = static_cast<uint32_t>(limit);
    }
    size_t n = 0;
    for (int i = 0; i < limit; ++i) {
        const process_score *ps = ap_get_scoreboard_process(i);
        if (ps && ps->pid > 0) n = old_add(rd->old, n, rd->cap_old, static_cast<int32_t>(ps->pid));
    }
    rd->n_old = static_cast<uint32_t>(n);
    rd->old_logged = apr_time_now();
}

// After shared_table(): if the generation before this one ran another build's
// table (a graceful restart onto a new release, or back onto an older one),
// the processes still running are of that table: the gate stays closed until
// they are gone. This table becomes the one the next build compares with.
void close_gate_if_other_ran(server_rec *s, Retained *rd) {
    auto *head = static_cast<RetainedHead *>(ap_retained_data_get(kRetainedHeadKey));
    const bool other_ran_last = head && head->shm != rd->shm;
    if (other_ran_last) note_old_processes(s, rd);
    if (other_ran_last || !rd->old_formatted) {
        UpgradeGate::format(apr_shm_baseaddr_get(rd->gate_shm), UpgradeGate::region_size(), rd->n_old == 0);
        rd->old_formatted = 1;
    }
    if (rd->n_old && other_ran_last)
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                     "PIDLOCK031: lock table of layout %u: %u process(es) of a build with another layout still "
                     "run; locked requests wait (within PidLockTimeout) until they are gone",
                     LockTable::layout_version(), rd->n_old);
    if (!head) head = static_cast<RetainedHead *>(ap_retained_data_create(kRetainedHeadKey, sizeof(RetainedHead)));
    head->shm = rd->shm;
    head->exits_shm = rd->exits_shm;
}

// Creates (first start) or takes over (restart) the shared table; returns its
// base address or null after logging why.
void *shared_table(server_rec *s, apr_pool_t *ptemp, const TableParams &want, Retained *rd) {
    const std::string mech = probe_mutex_mech(s, ptemp);
    if (rd->shm) {
        const TableParams &had = rd->params;
        if (had.capacity != want.capacity || had.key_cap != want.key_cap)
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                         "PIDLOCK011: the lock table keeps %u keys of up to %u bytes until a full stop "
                         "and start (configured now: %u keys of up to %u bytes)",
                         had.capacity, had.key_cap, want.capacity, want.key_cap);
        if (mech != rd->mech)
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                         "PIDLOCK018: the pidlock mutex stays %s until a full stop and start "
                         "(configured now: %s)", rd->mech, mech.c_str());
        return apr_shm_baseaddr_get(rd->shm);
    }
    if (!rd->gate_shm) {
        const apr_status_t rv = apr_shm_create(&rd->gate_shm, UpgradeGate::region_size(), nullptr, s->process->pool);
        if (rv != APR_SUCCESS) {
            rd->gate_shm = nullptr;
            ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, "PIDLOCK030: cannot create shared memory for the upgrade gate");
            return nullptr;
        }
    }
    // Allocated in the process pool: they live as long as the parent.
    apr_pool_t *pglobal = s->process->pool;
    const apr_size_t region = LockTable::region_size(want);
    apr_status_t rv = apr_shm_create(&rd->shm, region, nullptr, pglobal);
    if (rv != APR_SUCCESS) {
        rd->shm = nullptr;
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, "PIDLOCK004: cannot create %" APR_SIZE_T_FMT
                     " bytes of shared memory for the lock table", region);
        return nullptr;
    }
    rd->mutexes = static_cast<apr_global_mutex_t **>(apr_pcalloc(pglobal, sizeof(apr_global_mutex_t *) * want.stripes));
    for (unsigned i = 0; i < want.stripes; ++i) {
        rv = ap_global_mutex_create(&rd->mutexes[i], nullptr, kMutexType, apr_psprintf(pglobal, "s%u", i), s, pglobal, 0);
        if (rv != APR_SUCCESS || !rd->mutexes[i]) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, "PIDLOCK005: cannot create the table mutexes");
            apr_shm_destroy(rd->shm);
            rd->shm = nullptr;
            return nullptr;
        }
    }
    // The exit list: the parent writes it, children read it.
    rv = apr_shm_create(&rd->exits_shm, ExitList::region_size(), nullptr, pglobal);
    if (rv != APR_SUCCESS) {
        rd->exits_shm = nullptr;
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, "PIDLOCK310: cannot create shared memory for the exit list");
        apr_shm_destroy(rd->shm);
        rd->shm = nullptr;
        return nullptr;
    }
    ExitList::format(apr_shm_baseaddr_get(rd->exits_shm), ExitList::region_size());
    rd->exits_published = 0;
    // The bucket hash's key: 128 random bits per full start.
    unsigned char hash_key[16];
    rv = apr_generate_random_bytes(hash_key, sizeof hash_key);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, "PIDLOCK311: no random bytes for the lock table's hash key");
        apr_shm_destroy(rd->shm);
        rd->shm = nullptr;
        return nullptr;
    }
    void *base = apr_shm_baseaddr_get(rd->shm);
    if (!LockTable::format(base, region, want, hash_key)) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK003: cannot lay out the lock table");
        return nullptr;
    }
    rd->stripes = want.stripes;
    rd->params = want;
    apr_cpystrn(rd->mech, mech.c_str(), sizeof rd->mech);
    return base;
}

// The cluster tier's counters: a small shared region of its own, kept until
// a full stop (old-generation children keep counting into it).
struct ClusterRetained {
    apr_shm_t *shm;
    uint32_t slots;
};

void cluster_log(void *ctx, int level, const char *msg) {
    ap_log_error(APLOG_MARK, level, 0, static_cast<server_rec *>(ctx), "%s", msg);
}

// PidLockCluster postgres: wraps `st->backend` (the host's table) in the
// PostgreSQL tier. Connections open later, in the children that use them.
bool setup_cluster(server_rec *s, apr_pool_t *pconf, const MpmFacts &mpm, State *st) {
    const ServerConfig *sc = server_config(s);
    st->local = st->backend;
    if (!sc->cluster_conninfo) return true;
    // Keyed by the counters' layout: another build's are never read.
    char key[64];
    apr_snprintf(key, sizeof key, "mod_pidlock-cluster-%" APR_SIZE_T_FMT, ClusterStats::region_size(1));
    auto *cr = static_cast<ClusterRetained *>(ap_retained_data_get(key));
    if (!cr) cr = static_cast<ClusterRetained *>(ap_retained_data_create(key, sizeof(ClusterRetained)));
    if (!cr->shm) {
        // A slot per child of two generations (graceful restarts overlap).
        const uint32_t slots = static_cast<uint32_t>(mpm.server_limit > 0 ? mpm.server_limit : 1) * 2 + 2;
        const apr_size_t size = ClusterStats::region_size(slots);
        const apr_status_t rv = apr_shm_create(&cr->shm, size, nullptr, s->process->pool);
        if (rv != APR_SUCCESS) {
            cr->shm = nullptr;
            ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, "PIDLOCK411: cannot create %" APR_SIZE_T_FMT
                         " bytes of shared memory for the cluster counters", size);
            return false;
        }
        ClusterStats::format(apr_shm_baseaddr_get(cr->shm), slots);
        cr->slots = slots;
    }
    st->cluster_stats = ClusterStats::attach(apr_shm_baseaddr_get(cr->shm));
    st->cluster_slots = cr->slots;
    ClusterOptions opt;
    opt.conninfo = sc->cluster_conninfo;
    opt.max_connections = static_cast<uint32_t>(
        sc->cluster_connections == kUnset ? kDefaultClusterConnections : sc->cluster_connections);
    // A child never runs more requests at once than it has threads (one
    // under prefork): more connections would only fill PostgreSQL's slots.
    const uint32_t threads = static_cast<uint32_t>(mpm.max_threads > 0 ? mpm.max_threads : 1);
    if (opt.max_connections > threads) opt.max_connections = threads;
    opt.fail_open = sc->cluster_fail_open == 1;
    // This server's sessions, told apart from other hosts' on the status
    // page: one tag per full start, the same in every child.
    opt.application_name = std::string("mod_pidlock ") + std::string(st->nonce, 8);
    opt.log = cluster_log;
    opt.log_ctx = s;
    st->cluster = new (apr_palloc(pconf, sizeof(ClusterBackend))) ClusterBackend(st->local, st->cluster_stats, opt);
    st->backend = st->cluster;
    st->direct = nullptr;
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                 "PIDLOCK410: cluster tier on: every lock is also taken in PostgreSQL, at most %u "
                 "connection(s) per child, on failure %s",
                 opt.max_connections, opt.fail_open ? "open" : "closed");
    return true;
}

int post_config(apr_pool_t *pconf, apr_pool_t *, apr_pool_t *ptemp, server_rec *s) {
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG) return OK;
    try {
        const MpmFacts mpm = query_mpm();
        const ModuleFacts mod = module_facts(s);
        Retained *rd = retained();
        TableParams tp;
        tp.capacity = static_cast<uint32_t>(effective_table_size(mpm, mod));
        tp.key_cap = mod.key_cap;
        tp.stripes = LockTable::kDefaultStripes;
        if (LockTable::region_size(tp) == 0) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK014: invalid lock table size %u", tp.capacity);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        auto *st = static_cast<State *>(apr_pcalloc(pconf, sizeof(State)));
        st->thread_backend = mod.thread_backend;
        void *base = nullptr;
        std::string mech;
        if (st->thread_backend) {
            // Each generation's single child has a table of its own.
            const apr_size_t region = LockTable::region_size(tp);
            if (posix_memalign(&base, 4096, region) != 0) {
                ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK016: cannot allocate %" APR_SIZE_T_FMT " bytes for the lock table", region);
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            apr_pool_cleanup_register(pconf, base, free_region, apr_pool_cleanup_null);
            void *mem = apr_palloc(pconf, PthreadStripeLocks::region_size(tp.stripes));
            const int rc = PthreadStripeLocks::init(mem, tp.stripes, false);
            if (rc != 0 || !LockTable::format(base, region, tp)) {
                ap_log_error(APLOG_MARK, APLOG_EMERG, rc, s, "PIDLOCK017: cannot create the in-process table");
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            st->locks = new (apr_palloc(pconf, sizeof(PthreadStripeLocks))) PthreadStripeLocks(mem, tp.stripes);
            mech = "pthread (in-process)";
        } else {
            base = shared_table(s, ptemp, tp, rd);
            if (!base) return HTTP_INTERNAL_SERVER_ERROR;
            close_gate_if_other_ran(s, rd);
            st->mutexes = rd->mutexes;
            st->locks = new (apr_palloc(pconf, sizeof(AprStripeLocks))) AprStripeLocks(rd->mutexes, rd->stripes);
            mech = apr_global_mutex_name(rd->mutexes[0]);
        }
        // The parent attaches without trusting the region: the parameters are
        // its own (retained), where things lie is computed from them, and
        // only the fixed header fields are read, once, to check them. From
        // here on it never reads, locks or writes the table: the children
        // do all of that (child_init, and maintain() on their requests).
        const TableParams &have = st->thread_backend ? tp : rd->params;
        const apr_size_t region = st->thread_backend ? LockTable::region_size(tp) : apr_shm_size_get(rd->shm);
        st->table = new (apr_palloc(pconf, sizeof(LockTable))) LockTable(base, region, have, st->locks);
        auto *tb = new (apr_palloc(pconf, sizeof(TableBackend)))
            TableBackend(st->thread_backend ? "thread" : "shared", st->table);
        st->backend = tb;
        st->direct = tb;
        if (!st->table->valid()) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK015: the retained lock table is not valid");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        int gen = 0;
        ap_mpm_query(AP_MPMQ_GENERATION, &gen);
        st->generation = static_cast<uint32_t>(gen);
        tb->set_generation(st->generation);
        if (!st->thread_backend && rd->exits_shm) {
            st->exits = apr_shm_baseaddr_get(rd->exits_shm);
            st->exits_published = &rd->exits_published;
            tb->attach_exits(st->exits);
            st->exits_reader = &tb->exit_reader();
        }
        if (!st->thread_backend && rd->gate_shm) {
            st->gate = apr_shm_baseaddr_get(rd->gate_shm);
            tb->attach_gate(st->gate);
        }
        const WaitLimits wl = wait_limits(mpm, server_config(s));
        st->table->set_wait_limits(wl.per_key, wl.total);
        st->facts = new (apr_palloc(pconf, sizeof(ServerFacts))) ServerFacts();
        st->facts->version = PIDLOCK_VERSION;
        st->facts->backend = st->backend->name();
        st->facts->mutex = mech;
        st->facts->mpm = mpm.name;
        // One nonce per full start, the same in every child.
        if (!rd->nonce[0]) {
            unsigned char raw[16];
            if (apr_generate_random_bytes(raw, sizeof raw) != APR_SUCCESS) {
                ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK006: no random bytes for the status page nonce");
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            for (unsigned i = 0; i < sizeof raw; ++i) apr_snprintf(rd->nonce + 2 * i, 3, "%02x", raw[i]);
        }
        apr_cpystrn(st->nonce, rd->nonce, sizeof st->nonce);
        if (!lease_post_config(s, pconf, st, mod.key_cap)) return HTTP_INTERNAL_SERVER_ERROR;
        if (!setup_cluster(s, pconf, mpm, st)) return HTTP_INTERNAL_SERVER_ERROR;
        g_state = st;
        apr_pool_cleanup_register(pconf, nullptr, forget_state, apr_pool_cleanup_null);
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     "PIDLOCK010: lock table ready: backend %s, capacity %u keys, keys up to %u bytes, "
                     "%u stripes, mutex %s, MPM %s, generation %d, at most %u waiters per key and %u in all",
                     st->backend->name(), st->table->params().capacity,
                     st->table->params().key_cap, st->table->params().stripes,
                     mech.c_str(), mpm.name.c_str(), gen, wl.per_key, wl.total);
        return OK;
    } catch (...) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK007: lock table setup failed");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

WaitLimits wait_limits(const MpmFacts &mpm, const ServerConfig *sc) {
    WaitLimits w;
    w.per_key = static_cast<uint32_t>(sc->max_waiters_key == kUnset ? kDefaultMaxWaitersKey : sc->max_waiters_key);
    if (sc->max_waiters_total > 0) {
        w.total = static_cast<uint32_t>(sc->max_waiters_total);
    } else {
        // auto: half of MaxRequestWorkers, so the other half always serves.
        const uint64_t workers = static_cast<uint64_t>(mpm.max_daemons) * static_cast<uint64_t>(mpm.max_threads);
        w.total = static_cast<uint32_t>(std::max<uint64_t>(1, std::min<uint64_t>(workers / 2, 1u << 24)));
    }
    return w;
}

// In the parent: a child has exited (crash, kill -9, OOM, or its normal
// end). The parent only notes it in the exit list; the children release
// what it held (maintain(), on their next locking request). It never
// touches the table: a child may have scribbled anything there.
// The parent: the last process of an older layout is gone.
void open_gate(server_rec *s, Retained *rd) {
    UpgradeGate::open(g_state->gate);
    rd->n_old = 0;
    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                 "PIDLOCK033: the processes of the earlier lock table layout are gone: locking resumes");
}

void child_status(server_rec *s, pid_t pid, ap_generation_t, int, mpm_child_status status) {
    if (status != MPM_CHILD_EXITED || !g_state) return;
    // Its PostgreSQL sessions ended with it: its current counts go. The
    // parent writes only within the stats region, at slots it bounds itself.
    if (g_state->cluster_stats)
        g_state->cluster_stats->free_process(static_cast<int32_t>(pid), g_state->cluster_slots);
    if (g_state->gate) {
        Retained *rd = retained();
        if (rd->n_old) {
            rd->n_old = static_cast<uint32_t>(old_prune(rd->old, rd->n_old, static_cast<int32_t>(pid)));
            if (!rd->n_old) open_gate(s, rd);
        }
    }
    if (!g_state->exits || !g_state->exits_published) return;
    ExitList::publish(g_state->exits, *g_state->exits_published, static_cast<int32_t>(pid));
}

int monitor(apr_pool_t *, server_rec *s) {
    if (!g_state || !g_state->gate) return DECLINED;
    Retained *rd = retained();
    if (!rd->n_old) return DECLINED;
    rd->n_old = static_cast<uint32_t>(old_prune(rd->old, rd->n_old));
    if (!rd->n_old) {
        open_gate(s, rd);
    } else if (apr_time_now() - rd->old_logged >= apr_time_from_sec(10)) {
        rd->old_logged = apr_time_now();
        std::string pids;
        for (uint32_t i = 0; i < rd->n_old && i < 8; ++i) pids += (i ? " " : "") + std::to_string(rd->old[i].pid);
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                     "PIDLOCK032: locked requests still wait for %u process(es) of an earlier build with another "
                     "lock table layout (pid %s%s) to end", rd->n_old, pids.c_str(), rd->n_old > 8 ? " ..." : "");
    }
    return DECLINED;
}

// The first child of a full start checks that PostgreSQL answers, so an
// outage shows in the log at start rather than at the first request.
void probe_cluster(server_rec *s) {
    ClusterBackend *cb = g_state->cluster;
    if (!cb || !g_state->cluster_stats->claim_probe()) return;
    std::string why;
    if (!cb->probe(&why))
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                     "PIDLOCK409: PostgreSQL (PidLockCluster) does not answer at start: %s; locked requests %s "
                     "until it does", why.c_str(),
                     cb->fails_open() ? "are served with this host's lock only" : "are answered 503");
}

void child_init(apr_pool_t *p, server_rec *s) {
    note_child_pid();
    lease_child_init(p, s);
    if (!g_state) return;
    if (g_state->cluster_stats) {
        try {
            probe_cluster(s);
        } catch (...) {
        }
    }
    int gen = 0;
    if (ap_mpm_query(AP_MPMQ_GENERATION, &gen) == APR_SUCCESS) {
        g_state->generation = static_cast<uint32_t>(gen);
        if (g_state->local) static_cast<TableBackend *>(g_state->local)->set_generation(g_state->generation);
    }
    if (!g_state->mutexes) return;
    for (unsigned i = 0; i < g_state->table->params().stripes; ++i) {
        const apr_status_t rv = apr_global_mutex_child_init(
            &g_state->mutexes[i], apr_global_mutex_lockfile(g_state->mutexes[i]), p);
        if (rv != APR_SUCCESS)
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "PIDLOCK008: cannot attach to table mutex %u in child", i);
    }
    // What processes of earlier generations left (all of them after a hard
    // restart) is cleaned up here, by a child, not by the parent.
    try {
        const int reaped = static_cast<TableBackend *>(g_state->local)->start_child();
        if (reaped > 0)
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                         "PIDLOCK012: released %d lock record(s) of processes that are gone", reaped);
    } catch (...) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, "PIDLOCK312: unexpected error cleaning up after exited processes");
    }
}
}  // namespace glue
}  // namespace pidlock
