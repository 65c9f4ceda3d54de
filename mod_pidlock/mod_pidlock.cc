// mod_pidlock: httpd glue. Directives, hooks, the release filter and the
// status handler; the locking itself lives in the core (pidlock_*.cc), which
// knows nothing of httpd. No C++ exception leaves a function called by httpd.
#include <cmath>
#include <cstring>
#include <new>
#include <string>

#include "pidlock_backend.h"
#include "pidlock_checks.h"
#include "pidlock_key.h"
#include "pidlock_locks.h"
#include "pidlock_render.h"
#include "pidlock_table.h"

#include <apr_global_mutex.h>
#include <apr_lib.h>
#include <apr_shm.h>
#include <apr_strings.h>

#include "ap_mpm.h"
#include "ap_regex.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "httpd.h"
#include "mod_status.h"
#include "util_filter.h"
#include "util_mutex.h"
#include "util_script.h"

#define PIDLOCK_VERSION "0.1.0"

using namespace pidlock;

// The one symbol httpd looks up; everything else stays hidden.
#define PIDLOCK_EXPORT __attribute__((visibility("default")))
extern "C" PIDLOCK_EXPORT module AP_MODULE_DECLARE_DATA pidlock_module;

#ifdef APLOG_USE_MODULE
APLOG_USE_MODULE(pidlock);
#endif

namespace {

const char *const kMutexType = "pidlock";
const char *const kStatusHandler = "pidlock-status";
const char *const kReleaseFilter = "PIDLOCK_RELEASE";
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
    const char *where;           // file:line of PidLock or PidLockTimeout, for warnings
    const char *section;         // "<Location", "<Directory", ... or null (server scope)
    const char *path;            // the section's path
};

struct ServerConfig {
    apr_int64_t max_key_len;  // kUnset or > 0
    // main server only
    apr_int64_t table_size;   // 0: auto; kUnset: unset
    int thread_backend;       // kUnset, 0 (shared), 1 (thread)
    const char *table_size_where;
};

void *create_dir_config(apr_pool_t *p, char *path) {
    auto *d = static_cast<DirConfig *>(apr_pcalloc(p, sizeof(DirConfig)));
    d->path = path ? apr_pstrdup(p, path) : nullptr;
    d->enabled = kUnset;
    d->timeout_ms = kUnset;
    d->status_actions = kUnset;
    return d;
}

void *merge_dir_config(apr_pool_t *p, void *basev, void *addv) {
    auto *base = static_cast<DirConfig *>(basev);
    auto *add = static_cast<DirConfig *>(addv);
    auto *d = static_cast<DirConfig *>(apr_pcalloc(p, sizeof(DirConfig)));
    d->enabled = add->enabled != kUnset ? add->enabled : base->enabled;
    d->keys = add->keys ? add->keys : base->keys;
    if (add->methods && base->methods)
        d->methods = apr_table_overlay(p, add->methods, base->methods);  // add's first: wins
    else
        d->methods = add->methods ? add->methods : base->methods;
    d->timeout_ms = add->timeout_ms != kUnset ? add->timeout_ms : base->timeout_ms;
    d->busy_status = add->busy_status ? add->busy_status : base->busy_status;
    d->status_actions = add->status_actions != kUnset ? add->status_actions : base->status_actions;
    d->where = add->where ? add->where : base->where;
    return d;
}

void *create_server_config(apr_pool_t *p, server_rec *) {
    auto *s = static_cast<ServerConfig *>(apr_pcalloc(p, sizeof(ServerConfig)));
    s->max_key_len = kUnset;
    s->table_size = kUnset;
    s->thread_backend = kUnset;
    return s;
}

void *merge_server_config(apr_pool_t *p, void *basev, void *addv) {
    auto *base = static_cast<ServerConfig *>(basev);
    auto *add = static_cast<ServerConfig *>(addv);
    auto *s = static_cast<ServerConfig *>(apr_pcalloc(p, sizeof(ServerConfig)));
    s->max_key_len = add->max_key_len != kUnset ? add->max_key_len : base->max_key_len;
    s->table_size = base->table_size;
    s->thread_backend = base->thread_backend;
    return s;
}

DirConfig *dir_config(request_rec *r) {
    return static_cast<DirConfig *>(ap_get_module_config(r->per_dir_config, &pidlock_module));
}
ServerConfig *server_config(server_rec *s) {
    return static_cast<ServerConfig *>(ap_get_module_config(s->module_config, &pidlock_module));
}
apr_size_t max_key_len(const ServerConfig *sc) {
    return sc->max_key_len == kUnset ? kDefaultMaxKey : static_cast<apr_size_t>(sc->max_key_len);
}

const char *directive_where(cmd_parms *cmd) {
    if (!cmd->directive) return nullptr;
    return apr_psprintf(cmd->pool, "%s:%d", cmd->directive->filename, cmd->directive->line_num);
}

// The kind of section ("<Location", ...) a per-dir config belongs to.
void note_section(cmd_parms *cmd, DirConfig *d) {
    if (cmd->directive && cmd->directive->parent) d->section = cmd->directive->parent->directive;
}

const char *set_enabled(cmd_parms *cmd, void *dv, int on) {
    auto *d = static_cast<DirConfig *>(dv);
    d->enabled = on ? 1 : 0;
    d->where = directive_where(cmd);
    note_section(cmd, d);
    return nullptr;
}

const char *set_status_actions(cmd_parms *, void *dv, int on) {
    static_cast<DirConfig *>(dv)->status_actions = on ? 1 : 0;
    return nullptr;
}

const char *set_key(cmd_parms *cmd, void *dv, const char *source, const char *arg) {
    auto *d = static_cast<DirConfig *>(dv);
    KeySpec spec{};
    if (!strcasecmp(source, "path")) {
        spec.source = KeySource::Path;
        spec.regex = ap_pregcomp(cmd->pool, arg, 0);
        if (!spec.regex)
            return apr_psprintf(cmd->pool, "PidLockKey path: cannot compile regular expression '%s'", arg);
        if (spec.regex->re_nsub < 1)
            return apr_psprintf(cmd->pool, "PidLockKey path: '%s' has no capture group; the first one is the key", arg);
        const SimpleCapture sc = regex_simple_capture(arg);
        spec.simple = sc.ok;
        spec.allow_empty = sc.allow_empty;
        const std::string prefix = sc.ok ? sc.prefix : regex_literal_prefix(arg);
        spec.prefix = apr_pstrmemdup(cmd->pool, prefix.data(), prefix.size());
        spec.prefix_len = prefix.size();
    } else if (!strcasecmp(source, "query") || !strcasecmp(source, "header")) {
        spec.source = !strcasecmp(source, "query") ? KeySource::Query : KeySource::Header;
        if (!*arg) return "PidLockKey: the argument or header name is empty";
        spec.name = arg;
    } else {
        return apr_psprintf(cmd->pool, "PidLockKey: source must be path, query or header, not '%s'", source);
    }
    // Lines in one context accumulate; a context with its own lines replaces
    // its parent's list as a whole (merge picks child-else-parent).
    if (!d->keys) d->keys = apr_array_make(cmd->pool, 2, sizeof(KeySpec));
    note_section(cmd, d);
    *static_cast<KeySpec *>(apr_array_push(d->keys)) = spec;
    return nullptr;
}

bool is_token(const char *s) {
    if (!*s) return false;
    for (; *s; ++s) {
        const unsigned char c = static_cast<unsigned char>(*s);
        if (c <= 32 || c >= 127 || strchr("()<>@,;:\\\"/[]?={}", c)) return false;
    }
    return true;
}

const char *set_method(cmd_parms *cmd, void *dv, int argc, char *const argv[]) {
    auto *d = static_cast<DirConfig *>(dv);
    if (argc < 2) return "PidLockMethod: give a mode (read, write, none) and at least one method";
    const char *mode = argv[0];
    if (strcasecmp(mode, "read") && strcasecmp(mode, "write") && strcasecmp(mode, "none"))
        return apr_psprintf(cmd->pool, "PidLockMethod: mode must be read, write or none, not '%s'", mode);
    if (!d->methods) d->methods = apr_table_make(cmd->pool, 4);
    for (int i = 1; i < argc; ++i) {
        if (!is_token(argv[i]))
            return apr_psprintf(cmd->pool, "PidLockMethod: '%s' is not an HTTP method name", argv[i]);
        // apr_table_set replaces: a later line for a method overrides.
        apr_table_set(d->methods, argv[i], apr_pstrdup(cmd->pool, mode));
    }
    return nullptr;
}

const char *set_timeout(cmd_parms *cmd, void *dv, const char *arg) {
    char *end = nullptr;
    errno = 0;
    const double v = strtod(arg, &end);
    if (end == arg || *end || errno || !std::isfinite(v) || v < 0 || v > 86400)
        return apr_psprintf(cmd->pool, "PidLockTimeout: '%s' is not a number of seconds from 0 to 86400", arg);
    auto *d = static_cast<DirConfig *>(dv);
    d->timeout_ms = static_cast<apr_int64_t>(std::llround(v * 1000.0));
    if (!d->where) d->where = directive_where(cmd);
    return nullptr;
}

const char *set_busy_status(cmd_parms *cmd, void *dv, const char *arg) {
    const int v = atoi(arg);
    if (strcmp(arg, apr_itoa(cmd->pool, v)) || (v != 503 && v != 409 && v != 423 && v != 429))
        return apr_psprintf(cmd->pool, "PidLockBusyStatus: must be 503, 409, 423 or 429, not '%s'", arg);
    static_cast<DirConfig *>(dv)->busy_status = v;
    return nullptr;
}

bool parse_count(const char *arg, apr_int64_t lo, apr_int64_t hi, apr_int64_t *out) {
    char *end = nullptr;
    if (!*arg || !apr_isdigit(*arg)) return false;
    const apr_int64_t v = apr_strtoi64(arg, &end, 10);
    if (*end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

const char *set_max_key(cmd_parms *cmd, void *, const char *arg) {
    apr_int64_t v;
    if (!parse_count(arg, 1, 65536, &v))
        return apr_psprintf(cmd->pool, "PidLockMaxKeyLength: '%s' is not a byte count from 1 to 65536", arg);
    server_config(cmd->server)->max_key_len = v;
    return nullptr;
}

const char *set_table_size(cmd_parms *cmd, void *, const char *arg) {
    if (const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) return err;
    apr_int64_t v = 0;
    if (strcasecmp(arg, "auto") && !parse_count(arg, 1, 1 << 24, &v))
        return apr_psprintf(cmd->pool, "PidLockTableSize: '%s' is neither auto nor a count from 1 to 16777216", arg);
    server_config(cmd->server)->table_size = v;
    return nullptr;
}

const char *set_backend(cmd_parms *cmd, void *, const char *arg) {
    if (const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) return err;
    if (!strcasecmp(arg, "shared")) server_config(cmd->server)->thread_backend = 0;
    else if (!strcasecmp(arg, "thread")) server_config(cmd->server)->thread_backend = 1;
    else return apr_psprintf(cmd->pool, "PidLockBackend: must be shared or thread, not '%s'", arg);
    return nullptr;
}

// httpd keeps every directive handler as one generic pointer type.
template <typename F>
cmd_func as_cmd(F f) {
    return reinterpret_cast<cmd_func>(reinterpret_cast<void (*)()>(f));
}

const command_rec pidlock_cmds[] = {
    AP_INIT_FLAG("PidLock", as_cmd(set_enabled), nullptr, RSRC_CONF | ACCESS_CONF,
                 "On to lock requests here by their PID"),
    AP_INIT_TAKE2("PidLockKey", as_cmd(set_key), nullptr, RSRC_CONF | ACCESS_CONF,
                  "where the PID comes from: path REGEX | query NAME | header NAME"),
    AP_INIT_TAKE_ARGV("PidLockMethod", as_cmd(set_method), nullptr,
                      RSRC_CONF | ACCESS_CONF, "read|write|none METHOD..."),
    AP_INIT_TAKE1("PidLockTimeout", as_cmd(set_timeout), nullptr,
                  RSRC_CONF | ACCESS_CONF, "longest wait for a lock, in seconds (default 30)"),
    AP_INIT_TAKE1("PidLockBusyStatus", as_cmd(set_busy_status), nullptr,
                  RSRC_CONF | ACCESS_CONF, "status when the lock is not had in time: 503|409|423|429"),
    AP_INIT_TAKE1("PidLockMaxKeyLength", as_cmd(set_max_key), nullptr, RSRC_CONF,
                  "longest decoded key in bytes (default 1024)"),
    AP_INIT_TAKE1("PidLockTableSize", as_cmd(set_table_size), nullptr, RSRC_CONF,
                  "lock table capacity: N or auto"),
    AP_INIT_TAKE1("PidLockBackend", as_cmd(set_backend), nullptr, RSRC_CONF,
                  "shared (every MPM) or thread (single-process servers)"),
    AP_INIT_FLAG("PidLockStatusActions", as_cmd(set_status_actions), nullptr,
                 ACCESS_CONF, "On to allow breaking locks from the status page here"),
    {nullptr, {nullptr}, nullptr, 0, RAW_ARGS, nullptr}};

// ----------------------------------------------------------- global state

// Everything one configuration generation needs; allocated in pconf and
// forgotten by a pconf cleanup, so no pointer outlives the config pool.
struct State {
    bool thread_backend;
    apr_global_mutex_t **mutexes;  // shared backend
    StripeLocks *locks;
    TableBackend *backend;
    ServerFacts *facts;
    char nonce[33];
};
State *g_state = nullptr;

apr_status_t forget_state(void *) {
    if (g_state) {
        if (g_state->backend) g_state->backend->~TableBackend();
        if (g_state->facts) g_state->facts->~ServerFacts();
        if (g_state->locks) g_state->locks->~StripeLocks();
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
    }
    return m;
}

// ------------------------------------------------------------------ hooks

int pidlock_pre_config(apr_pool_t *pconf, apr_pool_t *, apr_pool_t *) {
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

int pidlock_check_config(apr_pool_t *, apr_pool_t *, apr_pool_t *ptemp, server_rec *s) {
    try {
        const MpmFacts mpm = query_mpm();
        ModuleFacts mod = module_facts(s);
        mod.mutex_mech = probe_mutex_mech(s, ptemp);
        bool refused = false;
        std::vector<Finding> findings = check_startup(mpm, mod);
        for (Finding &f : check_scopes(gather_scopes(s))) findings.push_back(std::move(f));
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
// locks and new ones honour them. Plain APR handles only: the module itself
// (and every vtable in it) is unloaded and reloaded between generations.
struct Retained {
    apr_shm_t *shm;
    apr_global_mutex_t **mutexes;
    unsigned stripes;
    TableParams params;
    char mech[32];
    char nonce[33];
};
const char *const kRetainedKey = "mod_pidlock-retained";

Retained *retained() {
    auto *rd = static_cast<Retained *>(ap_retained_data_get(kRetainedKey));
    if (!rd) rd = static_cast<Retained *>(ap_retained_data_create(kRetainedKey, sizeof(Retained)));
    return rd;
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
                         "PIDLOCK011: the pidlock mutex stays %s until a full stop and start "
                         "(configured now: %s)", rd->mech, mech.c_str());
        return apr_shm_baseaddr_get(rd->shm);
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
    void *base = apr_shm_baseaddr_get(rd->shm);
    if (!LockTable::format(base, region, want)) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK003: cannot lay out the lock table");
        return nullptr;
    }
    rd->stripes = want.stripes;
    rd->params = want;
    apr_cpystrn(rd->mech, mech.c_str(), sizeof rd->mech);
    return base;
}

int pidlock_post_config(apr_pool_t *pconf, apr_pool_t *, apr_pool_t *ptemp, server_rec *s) {
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
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK003: invalid lock table size %u", tp.capacity);
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
                ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK004: cannot allocate %" APR_SIZE_T_FMT " bytes for the lock table", region);
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            apr_pool_cleanup_register(pconf, base, free_region, apr_pool_cleanup_null);
            void *mem = apr_palloc(pconf, PthreadStripeLocks::region_size(tp.stripes));
            const int rc = PthreadStripeLocks::init(mem, tp.stripes, false);
            if (rc != 0 || !LockTable::format(base, region, tp)) {
                ap_log_error(APLOG_MARK, APLOG_EMERG, rc, s, "PIDLOCK005: cannot create the in-process table");
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            st->locks = new (apr_palloc(pconf, sizeof(PthreadStripeLocks))) PthreadStripeLocks(mem, tp.stripes);
            mech = "pthread (in-process)";
        } else {
            base = shared_table(s, ptemp, tp, rd);
            if (!base) return HTTP_INTERNAL_SERVER_ERROR;
            st->mutexes = rd->mutexes;
            st->locks = new (apr_palloc(pconf, sizeof(AprStripeLocks))) AprStripeLocks(rd->mutexes, rd->stripes);
            mech = apr_global_mutex_name(rd->mutexes[0]);
        }
        st->backend = new (apr_palloc(pconf, sizeof(TableBackend)))
            TableBackend(st->thread_backend ? "thread" : "shared", base, st->locks);
        if (!st->backend->valid()) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK003: the retained lock table is not valid");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        int gen = 0;
        ap_mpm_query(AP_MPMQ_GENERATION, &gen);
        st->backend->table().set_generation(static_cast<uint32_t>(gen));
        // A restart: children of earlier generations that are gone (all of
        // them after a hard restart) leave nothing behind.
        const int reaped = st->thread_backend ? 0 : st->backend->reap(0);
        if (reaped > 0)
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                         "PIDLOCK012: released %d lock record(s) of processes that are gone", reaped);
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
        g_state = st;
        apr_pool_cleanup_register(pconf, nullptr, forget_state, apr_pool_cleanup_null);
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     "PIDLOCK010: lock table ready: backend %s, capacity %u keys, keys up to %u bytes, "
                     "%u stripes, mutex %s, MPM %s, generation %d",
                     st->backend->name(), st->backend->table().params().capacity,
                     st->backend->table().params().key_cap, st->backend->table().params().stripes,
                     mech.c_str(), mpm.name.c_str(), gen);
        return OK;
    } catch (...) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK007: lock table setup failed");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

// In the parent: a child has exited (crash, kill -9, OOM, or its normal
// end); whatever it held or waited for is released now.
void pidlock_child_status(server_rec *s, pid_t pid, ap_generation_t, int, mpm_child_status status) {
    if (status != MPM_CHILD_EXITED || !g_state || !g_state->backend || g_state->thread_backend) return;
    try {
        const int n = g_state->backend->reap(static_cast<int32_t>(pid));
        if (n > 0)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                         "PIDLOCK013: child %" APR_PID_T_FMT " exited holding or waiting for locks: "
                         "released %d", pid, n);
    } catch (...) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, "PIDLOCK106: unexpected error reaping child %" APR_PID_T_FMT, pid);
    }
}

void pidlock_child_init(apr_pool_t *p, server_rec *s) {
    if (!g_state || !g_state->mutexes) return;
    for (unsigned i = 0; i < g_state->backend->table().params().stripes; ++i) {
        const apr_status_t rv = apr_global_mutex_child_init(
            &g_state->mutexes[i], apr_global_mutex_lockfile(g_state->mutexes[i]), p);
        if (rv != APR_SUCCESS)
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "PIDLOCK008: cannot attach to table mutex %u in child", i);
    }
}

// ------------------------------------------------------- per request

struct RequestLock {
    LockHandle handle;
    LockBackend *backend;
    request_rec *r;
};

void release_lock(RequestLock *rl) {
    if (!rl->handle.held()) return;
    const int rc = rl->backend->release(rl->handle);
    if (rc != 0)
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rc, rl->r, "PIDLOCK105: releasing a lock failed");
}

apr_status_t release_cleanup(void *data) {
    release_lock(static_cast<RequestLock *>(data));
    return APR_SUCCESS;
}

ap_filter_rec_t *g_release_filter = nullptr;

// Releases the lock when the response is complete (EOS), before the bytes
// reach a possibly slow client; the request pool's cleanup is the backstop
// for every path that sends no EOS.
apr_status_t release_filter(ap_filter_t *f, apr_bucket_brigade *bb) {
    for (apr_bucket *b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
        if (APR_BUCKET_IS_EOS(b)) {
            release_lock(static_cast<RequestLock *>(f->ctx));
            ap_remove_output_filter(f);
            break;
        }
    }
    return ap_pass_brigade(f->next, bb);
}

Mode mode_for(const DirConfig *d, request_rec *r) {
    if (d->methods && !apr_is_empty_table(d->methods)) {
        if (const char *m = apr_table_get(d->methods, r->method)) {
            if (m[0] == 'r' || m[0] == 'R') return Mode::Read;
            if (m[0] == 'w' || m[0] == 'W') return Mode::Write;
            return Mode::None;
        }
    }
    switch (r->method_number) {
    case M_GET:  // HEAD too
    case M_OPTIONS:
    case M_PROPFIND:
        return Mode::Read;
    default:
        return Mode::Write;
    }
}

// First source that yields a key wins. Returns 0 with `key` set (or empty:
// no source matched) or the HTTP status that refuses the request.
int key_for(const DirConfig *d, request_rec *r, apr_size_t max_len, std::string &key, KeySource &src) {
    key.clear();
    if (!d->keys) return 0;
    const KeySpec *specs = reinterpret_cast<const KeySpec *>(d->keys->elts);
    for (int i = 0; i < d->keys->nelts; ++i) {
        const KeySpec &k = specs[i];
        KeyStatus st = KeyStatus::Absent;
        switch (k.source) {
        case KeySource::Path: {
            if (!r->uri || strncmp(r->uri, k.prefix, k.prefix_len) != 0) break;
            if (k.simple) {
                const char *cap = nullptr;
                size_t cap_len = 0;
                const FastMatch fm = simple_capture_match(k.prefix, k.prefix_len, k.allow_empty, r->uri, &cap, &cap_len);
                if (fm == FastMatch::NoMatch) break;
                if (fm == FastMatch::Match) {
                    st = key_from_path_capture(cap, cap_len, max_len, key);
                    break;
                }
            }
            ap_regmatch_t m[2];
            if (ap_regexec(k.regex, r->uri, 2, m, 0) == 0 && m[1].rm_so >= 0)
                st = key_from_path_capture(r->uri + m[1].rm_so,
                                           static_cast<size_t>(m[1].rm_eo - m[1].rm_so), max_len, key);
            break;
        }
        case KeySource::Query:
            st = key_from_query(r->args, k.name, max_len, key);
            break;
        case KeySource::Header:
            st = key_from_header(apr_table_get(r->headers_in, k.name), max_len, key);
            break;
        }
        if (st == KeyStatus::Absent) continue;
        src = k.source;
        if (st == KeyStatus::Ok) return 0;
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK101: refusing request: %s (%s key%s%s)",
                      key_status_text(st),
                      k.source == KeySource::Path ? "path" : k.source == KeySource::Query ? "query" : "header",
                      k.name ? " " : "", k.name ? k.name : "");
        key.clear();
        return key_status_http(st, k.source);
    }
    return 0;
}

bool accepts_json(request_rec *r) {
    const char *accept = apr_table_get(r->headers_in, "Accept");
    return accept && ap_strcasestr(accept, "application/json");
}

// Answers the request here and now: the fixup then returns DONE, so no
// handler (mod_proxy included) runs for it.
int answer_busy(request_rec *r, int status, const BusyReport *rep, double timeout_s, const char *text) {
    r->status = status;
    if (status == HTTP_SERVICE_UNAVAILABLE || status == HTTP_TOO_MANY_REQUESTS) {
        const long secs = std::max(1L, static_cast<long>(std::ceil(timeout_s)));
        apr_table_setn(r->headers_out, "Retry-After", apr_ltoa(r->pool, secs));
    }
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    std::string body;
    if (rep) {
        const bool json = accepts_json(r);
        body = json ? render_busy_json(*rep, timeout_s) : render_busy_text(*rep, timeout_s);
        ap_set_content_type(r, json ? "application/json" : "text/plain; charset=utf-8");
    } else {
        body = text;
        ap_set_content_type(r, "text/plain; charset=utf-8");
    }
    ap_set_content_length(r, static_cast<apr_off_t>(body.size()));
    if (!r->header_only) ap_rwrite(body.data(), static_cast<int>(body.size()), r);
    return DONE;
}

int pidlock_fixups(request_rec *r) {
    const DirConfig *d = dir_config(r);
    if (d->enabled != 1 || !ap_is_initial_req(r)) return DECLINED;
    try {
        const Mode mode = mode_for(d, r);
        if (mode == Mode::None) return DECLINED;
        State *st = g_state;
        if (!st || !st->backend) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK107: lock table unavailable; refusing to run unlocked");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        std::string key;
        KeySource src = KeySource::Path;
        const int bad = key_for(d, r, max_key_len(server_config(r->server)), key, src);
        if (bad) {
            st->backend->count(Counter::BadKeys);
            return bad;
        }
        if (key.empty()) return DECLINED;

        HolderInfo info;
        info.method = r->method;
        info.uri = r->unparsed_uri;
        info.client = r->useragent_ip;
        info.user = r->user;
        info.thread = static_cast<uint64_t>(apr_os_thread_current());
        const apr_int64_t timeout_ms = d->timeout_ms == kUnset ? 30000 : d->timeout_ms;
        auto *rl = static_cast<RequestLock *>(apr_pcalloc(r->pool, sizeof(RequestLock)));
        rl->backend = st->backend;
        rl->r = r;
        BusyReport rep;
        int err = 0;
        const AcquireResult res = st->backend->acquire(key.data(), key.size(), mode,
                                                       static_cast<int64_t>(timeout_ms) * 1000000,
                                                       info, rl->handle, &rep, &err);
        switch (res) {
        case AcquireResult::Acquired:
            apr_pool_cleanup_register(r->pool, rl, release_cleanup, apr_pool_cleanup_null);
            ap_add_output_filter_handle(g_release_filter, rl, r, r->connection);
            return DECLINED;
        case AcquireResult::Busy: {
            const int status = d->busy_status ? d->busy_status : HTTP_SERVICE_UNAVAILABLE;
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                          "PIDLOCK102: %s lock on key of %" APR_SIZE_T_FMT " bytes not had within %.3f s "
                          "(held %s by %u, %u/%u waiting); answering %d",
                          mode_name(mode), key.size(), timeout_ms / 1000.0, mode_name(rep.held_mode),
                          rep.holders, rep.waiting_read, rep.waiting_write, status);
            return answer_busy(r, status, &rep, timeout_ms / 1000.0, nullptr);
        }
        case AcquireResult::Full:
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          "PIDLOCK103: lock table full (capacity %u); answering 503. Raise PidLockTableSize "
                          "or use auto.", st->backend->table().params().capacity);
            return answer_busy(r, HTTP_SERVICE_UNAVAILABLE, nullptr, 1.0,
                               "The lock table is full; try again shortly.\n");
        case AcquireResult::Error:
            ap_log_rerror(APLOG_MARK, APLOG_ERR, err, r, "PIDLOCK104: the lock table mutex failed");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        return HTTP_INTERNAL_SERVER_ERROR;
    } catch (const std::bad_alloc &) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK106: out of memory while locking");
        return HTTP_INTERNAL_SERVER_ERROR;
    } catch (...) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK106: unexpected error while locking");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

// ---------------------------------------------------------- status page

// Status page options come from the query like a query key does: the
// core's parser serves both. `?json` (no value) is present but empty.
bool has_arg(const char *args, const char *name) {
    std::string v;
    return key_from_query(args, name, 64, v) != KeyStatus::Absent;
}

std::string arg_value(const char *args, const char *name) {
    std::string v;
    return key_from_query(args, name, 64, v) == KeyStatus::Ok ? v : std::string();
}

bool same_bytes_ct(const char *a, const char *b, size_t n) {
    unsigned char diff = 0;
    for (size_t i = 0; i < n; ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
}

// A browser sends Origin (or Referer) with a form POST; one naming another
// host than the one asked is a cross-site request.
bool same_origin(request_rec *r) {
    const char *o = apr_table_get(r->headers_in, "Origin");
    if (!o) o = apr_table_get(r->headers_in, "Referer");
    if (!o || !strcmp(o, "null")) return o == nullptr;
    const char *host = apr_table_get(r->headers_in, "Host");
    if (!host) return false;
    const char *p = strstr(o, "://");
    if (!p) return false;
    p += 3;
    const size_t hl = strlen(host);
    return !strncasecmp(p, host, hl) && (p[hl] == '\0' || p[hl] == '/');
}

int status_break(request_rec *r, const DirConfig *d, State *st) {
    if (d->status_actions != 1) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      "PIDLOCK202: lock break refused: PidLockStatusActions is not On here");
        return HTTP_FORBIDDEN;
    }
    if (!same_origin(r)) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, "PIDLOCK203: lock break refused: cross-site request");
        return HTTP_FORBIDDEN;
    }
    apr_array_header_t *pairs = nullptr;
    if (ap_parse_form_data(r, nullptr, &pairs, 16, 64 * 1024) != OK || !pairs) return HTTP_BAD_REQUEST;
    std::string action, key, nonce;
    bool have_key = false;
    while (!apr_is_empty_array(pairs)) {
        auto *pair = static_cast<ap_form_pair_t *>(apr_array_pop(pairs));
        apr_off_t len = 0;
        apr_brigade_length(pair->value, 1, &len);
        if (len < 0 || len > 65536) return HTTP_BAD_REQUEST;
        std::string v(static_cast<size_t>(len), '\0');
        apr_size_t sz = static_cast<apr_size_t>(len);
        apr_brigade_flatten(pair->value, v.empty() ? nullptr : &v[0], &sz);
        v.resize(sz);
        if (!strcmp(pair->name, "action")) action = v;
        else if (!strcmp(pair->name, "key")) { key = v; have_key = true; }
        else if (!strcmp(pair->name, "key_hex")) {
            // Keys that are not UTF-8 come as hex from the page's forms.
            if (v.size() % 2) return HTTP_BAD_REQUEST;
            key.clear();
            for (size_t i = 0; i < v.size(); i += 2) {
                const int hi = apr_isxdigit(v[i]) ? (apr_isdigit(v[i]) ? v[i] - '0' : (v[i] | 0x20) - 'a' + 10) : -1;
                const int lo = apr_isxdigit(v[i + 1]) ? (apr_isdigit(v[i + 1]) ? v[i + 1] - '0' : (v[i + 1] | 0x20) - 'a' + 10) : -1;
                if (hi < 0 || lo < 0) return HTTP_BAD_REQUEST;
                key.push_back(static_cast<char>(hi * 16 + lo));
            }
            have_key = true;
        } else if (!strcmp(pair->name, "nonce")) nonce = v;
    }
    if (nonce.size() != 32 || !same_bytes_ct(nonce.data(), st->nonce, 32)) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, "PIDLOCK204: lock break refused: missing or wrong nonce");
        return HTTP_FORBIDDEN;
    }
    if (action != "break" || !have_key || key.empty()) return HTTP_BAD_REQUEST;
    const int n = st->backend->break_key(key.data(), key.size());
    if (n < 0) return HTTP_INTERNAL_SERVER_ERROR;
    std::string shown;
    json_string(shown, key);
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, "PIDLOCK201: lock on key %s broken from the status page "
                  "by client %s, user %s: %d holder(s) released",
                  shown.c_str(), r->useragent_ip, r->user ? r->user : "-", n);
    std::string body = "{\"broken\": " + std::to_string(n) + ", \"key\": " + shown + "}\n";
    if (accepts_json(r)) {
        ap_set_content_type(r, "application/json");
    } else {
        // Back to the page the form came from.
        apr_table_setn(r->headers_out, "Location", r->uri);
        r->status = HTTP_SEE_OTHER;
        ap_set_content_type(r, "application/json");
    }
    ap_rwrite(body.data(), static_cast<int>(body.size()), r);
    return OK;
}

int pidlock_status_handler(request_rec *r) {
    if (!r->handler || strcmp(r->handler, kStatusHandler)) return DECLINED;
    try {
        State *st = g_state;
        if (!st || !st->backend) return HTTP_SERVICE_UNAVAILABLE;
        const DirConfig *d = dir_config(r);
        if (r->method_number == M_POST) return status_break(r, d, st);
        if (r->method_number != M_GET) {
            // httpd builds 405's Allow header from r->allowed_methods.
            ap_allow_methods(r, REPLACE_ALLOW, "GET", "HEAD", "POST", nullptr);
            return HTTP_METHOD_NOT_ALLOWED;
        }
        TableSnapshot snap;
        int err = 0;
        if (!st->backend->snapshot(snap, &err)) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, err, r, "PIDLOCK108: cannot read the lock table");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        apr_table_setn(r->headers_out, "Cache-Control", "no-store");
        std::string body;
        const int64_t now = wall_clock_us();
        if (has_arg(r->args, "json")) {
            ap_set_content_type(r, "application/json");
            body = render_status_json(snap, *st->facts, now);
        } else if (has_arg(r->args, "auto")) {
            ap_set_content_type(r, "text/plain; charset=utf-8");
            body = render_status_auto(snap, *st->facts);
        } else if (has_arg(r->args, "metrics")) {
            ap_set_content_type(r, "text/plain; version=0.0.4; charset=utf-8");
            body = render_status_metrics(snap, *st->facts);
        } else {
            PageOptions opt;
            opt.actions = d->status_actions == 1;
            if (opt.actions) opt.nonce = st->nonce;
            opt.form_action = r->uri;
            const std::string stale = arg_value(r->args, "stale");
            if (!stale.empty()) {
                const apr_int64_t secs = apr_atoi64(stale.c_str());
                if (secs > 0 && secs < 86400 * 365) opt.stale_us = secs * 1000000;
            }
            const std::string refresh = arg_value(r->args, "refresh");
            if (!refresh.empty()) {
                const int secs = atoi(refresh.c_str());
                if (secs > 0 && secs <= 3600) opt.refresh_s = secs;
            }
            // The page embeds a nonce: no caching, no framing by other sites.
            apr_table_setn(r->headers_out, "X-Frame-Options", "DENY");
            apr_table_setn(r->headers_out, "Content-Security-Policy",
                           "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'");
            ap_set_content_type(r, "text/html; charset=utf-8");
            body = render_status_html(snap, *st->facts, now, opt);
        }
        ap_set_content_length(r, static_cast<apr_off_t>(body.size()));
        if (!r->header_only) ap_rwrite(body.data(), static_cast<int>(body.size()), r);
        return OK;
    } catch (...) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK106: unexpected error in the status page");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

// A section in mod_status's server-status page (and PidLock... lines in
// its ?auto), when mod_status is loaded.
int pidlock_mod_status(request_rec *r, int flags) {
    State *st = g_state;
    if (!st || !st->backend) return OK;
    try {
        TableSnapshot snap;
        if (!st->backend->snapshot(snap, nullptr)) return OK;
        if (flags & AP_STATUS_SHORT) {
            ap_rputs(render_status_auto(snap, *st->facts, "PidLock").c_str(), r);
            return OK;
        }
        const std::string o = render_mod_status_section(snap, *st->facts);
        ap_rputs(o.c_str(), r);
    } catch (...) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK106: unexpected error in the mod_status section");
    }
    return OK;
}

void register_hooks(apr_pool_t *) {
    APR_OPTIONAL_HOOK(ap, status_hook, pidlock_mod_status, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_pre_config(pidlock_pre_config, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_check_config(pidlock_check_config, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_post_config(pidlock_post_config, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_child_init(pidlock_child_init, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_child_status(pidlock_child_status, nullptr, nullptr, APR_HOOK_MIDDLE);
    // Last of the fixups: after authentication and authorization, so a client
    // that is refused never holds or waits on a lock.
    ap_hook_fixups(pidlock_fixups, nullptr, nullptr, APR_HOOK_REALLY_LAST);
    ap_hook_handler(pidlock_status_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
    g_release_filter = ap_register_output_filter(kReleaseFilter, release_filter, nullptr, AP_FTYPE_PROTOCOL);
}

}  // namespace

extern "C" {
// STANDARD20_MODULE_STUFF, but named "mod_pidlock.c" rather than after this
// C++ file: httpd matches <IfModule mod_pidlock.c> against that name.
PIDLOCK_EXPORT module AP_MODULE_DECLARE_DATA pidlock_module = {
    MODULE_MAGIC_NUMBER_MAJOR,
    MODULE_MAGIC_NUMBER_MINOR,
    -1,
    "mod_pidlock.c",
    nullptr,
    nullptr,
    MODULE_MAGIC_COOKIE,
    nullptr,
    create_dir_config,
    merge_dir_config,
    create_server_config,
    merge_server_config,
    pidlock_cmds,
    register_hooks,
    AP_MODULE_FLAG_NONE
};
}
