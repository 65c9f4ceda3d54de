// mod_pidlock glue: per-directory and per-server configuration, and the
// directives that set it. Setters validate and return the message httpd prints
// with the file and line.
#include <cerrno>
#include <cmath>
#include <cstring>
#include <string>

#include "mod_pidlock_glue.h"

#include <apr_lib.h>
#include <apr_strings.h>

#include "http_config.h"

namespace pidlock {
namespace glue {

void *create_dir_config(apr_pool_t *p, char *path) {
    auto *d = static_cast<DirConfig *>(apr_pcalloc(p, sizeof(DirConfig)));
    d->path = path ? apr_pstrdup(p, path) : nullptr;
    d->enabled = kUnset;
    d->timeout_ms = kUnset;
    d->status_actions = kUnset;
    d->status_query = kUnset;
    d->keys_all = kUnset;
    d->key_required = kUnset;
    d->max_hold_ms = kUnset;
    d->release_sent = kUnset;
    d->lease = kUnset;
    d->lease_timeout_s = kUnset;
    d->lease_max_s = kUnset;
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
    d->status_query = add->status_query != kUnset ? add->status_query : base->status_query;
    d->keys_all = add->keys_all != kUnset ? add->keys_all : base->keys_all;
    d->key_required = add->key_required != kUnset ? add->key_required : base->key_required;
    d->max_hold_ms = add->max_hold_ms != kUnset ? add->max_hold_ms : base->max_hold_ms;
    d->release_sent = add->release_sent != kUnset ? add->release_sent : base->release_sent;
    d->where = add->where ? add->where : base->where;
    d->lease = add->lease != kUnset ? add->lease : base->lease;
    // DEFAULT and MAX are set together: one line's pair wins as a whole.
    const bool add_lt = add->lease_timeout_s != kUnset;
    d->lease_timeout_s = add_lt ? add->lease_timeout_s : base->lease_timeout_s;
    d->lease_max_s = add_lt ? add->lease_max_s : base->lease_max_s;
    return d;
}

void *create_server_config(apr_pool_t *p, server_rec *) {
    auto *s = static_cast<ServerConfig *>(apr_pcalloc(p, sizeof(ServerConfig)));
    s->max_key_len = kUnset;
    s->body_buffer = kUnset;
    s->table_size = kUnset;
    s->thread_backend = kUnset;
    s->max_waiters_key = kUnset;
    s->max_waiters_total = kUnset;
    s->lease_table_size = kUnset;
    s->cluster_connections = kUnset;
    s->cluster_fail_open = kUnset;
    return s;
}

void *merge_server_config(apr_pool_t *p, void *basev, void *addv) {
    auto *base = static_cast<ServerConfig *>(basev);
    auto *add = static_cast<ServerConfig *>(addv);
    auto *s = static_cast<ServerConfig *>(apr_pcalloc(p, sizeof(ServerConfig)));
    s->max_key_len = add->max_key_len != kUnset ? add->max_key_len : base->max_key_len;
    s->body_buffer = add->body_buffer != kUnset ? add->body_buffer : base->body_buffer;
    s->table_size = base->table_size;
    s->thread_backend = base->thread_backend;
    s->max_waiters_key = base->max_waiters_key;
    s->max_waiters_total = base->max_waiters_total;
    s->lease_table_size = base->lease_table_size;
    s->lease_used = add->lease_used | base->lease_used;
    s->cluster_conninfo = base->cluster_conninfo;
    s->cluster_connections = base->cluster_connections;
    s->cluster_fail_open = base->cluster_fail_open;
    return s;
}

namespace {

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

const char *set_key_required(cmd_parms *, void *dv, int on) {
    static_cast<DirConfig *>(dv)->key_required = on ? 1 : 0;
    return nullptr;
}

const char *set_keys_mode(cmd_parms *cmd, void *dv, const char *arg) {
    auto *d = static_cast<DirConfig *>(dv);
    if (!strcasecmp(arg, "first")) d->keys_all = 0;
    else if (!strcasecmp(arg, "all")) d->keys_all = 1;
    else return apr_psprintf(cmd->pool, "PidLockKeys: must be first or all, not '%s'", arg);
    return nullptr;
}

const char *set_status_actions(cmd_parms *, void *dv, int on) {
    static_cast<DirConfig *>(dv)->status_actions = on ? 1 : 0;
    return nullptr;
}

const char *set_status_query(cmd_parms *, void *dv, int on) {
    static_cast<DirConfig *>(dv)->status_query = on ? 1 : 0;
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
    } else if (!strcasecmp(source, "query") || !strcasecmp(source, "header") || !strcasecmp(source, "form")) {
        spec.source = !strcasecmp(source, "query")    ? KeySource::Query
                      : !strcasecmp(source, "header") ? KeySource::Header
                                                      : KeySource::Form;
        if (!*arg) return "PidLockKey: the argument, header or field name is empty";
        spec.name = arg;
    } else {
        return apr_psprintf(cmd->pool, "PidLockKey: source must be path, query, header or form, not '%s'", source);
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

const char *set_release(cmd_parms *cmd, void *dv, const char *arg) {
    auto *d = static_cast<DirConfig *>(dv);
    if (!strcasecmp(arg, "eos")) d->release_sent = 0;
    else if (!strcasecmp(arg, "sent")) d->release_sent = 1;
    else return apr_psprintf(cmd->pool, "PidLockRelease: must be eos or sent, not '%s'", arg);
    return nullptr;
}

const char *set_max_hold(cmd_parms *cmd, void *dv, const char *arg) {
    char *end = nullptr;
    errno = 0;
    const double v = strtod(arg, &end);
    if (end == arg || *end || errno || !std::isfinite(v) || v < 0 || v > 86400 * 7)
        return apr_psprintf(cmd->pool, "PidLockMaxHold: '%s' is not a number of seconds from 0 to 604800", arg);
    static_cast<DirConfig *>(dv)->max_hold_ms = static_cast<apr_int64_t>(std::llround(v * 1000.0));
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

const char *set_body_buffer(cmd_parms *cmd, void *, const char *arg) {
    apr_int64_t v;
    if (!parse_count(arg, 1024, APR_INT64_C(1) << 30, &v))
        return apr_psprintf(cmd->pool, "PidLockBodyBuffer: '%s' is not a byte count from 1024 to 1073741824", arg);
    server_config(cmd->server)->body_buffer = v;
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

// PidLockMaxWaiters PER_KEY [TOTAL|auto]
const char *set_max_waiters(cmd_parms *cmd, void *, const char *per_key, const char *total) {
    if (const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) return err;
    apr_int64_t k = 0, t = 0;
    if (!parse_count(per_key, 1, 1 << 20, &k))
        return apr_psprintf(cmd->pool, "PidLockMaxWaiters: '%s' is not a count from 1 to 1048576", per_key);
    if (total && strcasecmp(total, "auto") && !parse_count(total, 1, 1 << 24, &t))
        return apr_psprintf(cmd->pool, "PidLockMaxWaiters: '%s' is neither auto nor a count from 1 to 16777216",
                            total);
    server_config(cmd->server)->max_waiters_key = k;
    server_config(cmd->server)->max_waiters_total = t;
    return nullptr;
}

const char *set_lease(cmd_parms *cmd, void *dv, int on) {
    static_cast<DirConfig *>(dv)->lease = on ? 1 : 0;
    if (on) server_config(cmd->server)->lease_used = 1;
    return nullptr;
}

// PidLockLeaseTimeout DEFAULT [MAX]: without MAX, the larger of 3600 and
// DEFAULT.
const char *set_lease_timeout(cmd_parms *cmd, void *dv, const char *dflt, const char *max) {
    constexpr apr_int64_t kMost = 86400 * 365;
    apr_int64_t dv_s = 0, mv_s = 0;
    if (!parse_count(dflt, 1, kMost, &dv_s))
        return apr_psprintf(cmd->pool, "PidLockLeaseTimeout: '%s' is not a number of seconds from 1 to %" APR_INT64_T_FMT,
                            dflt, kMost);
    if (max && !parse_count(max, 1, kMost, &mv_s))
        return apr_psprintf(cmd->pool, "PidLockLeaseTimeout: maximum '%s' is not a number of seconds from 1 to %"
                            APR_INT64_T_FMT, max, kMost);
    if (!max) mv_s = dv_s > 3600 ? dv_s : 3600;
    if (dv_s > mv_s)
        return apr_psprintf(cmd->pool, "PidLockLeaseTimeout: the default %s is above the maximum %s", dflt, max);
    auto *d = static_cast<DirConfig *>(dv);
    d->lease_timeout_s = dv_s;
    d->lease_max_s = mv_s;
    return nullptr;
}

const char *set_lease_table_size(cmd_parms *cmd, void *, const char *arg) {
    if (const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) return err;
    apr_int64_t v = 0;
    if (!parse_count(arg, 1, 1 << 20, &v))
        return apr_psprintf(cmd->pool, "PidLockLeaseTableSize: '%s' is not a count from 1 to 1048576", arg);
    server_config(cmd->server)->lease_table_size = v;
    return nullptr;
}

// PidLockCluster Off | postgres CONNINFO: libpq parses the conninfo here,
// so configtest refuses what it could never connect with.
const char *set_cluster(cmd_parms *cmd, void *, int argc, char *const argv[]) {
    if (const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) return err;
    ServerConfig *sc = server_config(cmd->server);
    if (argc == 1 && !strcasecmp(argv[0], "off")) {
        sc->cluster_conninfo = nullptr;
        return nullptr;
    }
    if (argc != 2 || strcasecmp(argv[0], "postgres"))
        return "PidLockCluster: Off, or postgres followed by one libpq connection string (quoted)";
    std::string why;
    if (!cluster_conninfo_valid(argv[1], &why))
        return apr_psprintf(cmd->pool, "PidLockCluster: libpq cannot parse the connection string: %s", why.c_str());
    sc->cluster_conninfo = apr_pstrdup(cmd->pool, argv[1]);
    return nullptr;
}

const char *set_cluster_connections(cmd_parms *cmd, void *, const char *arg) {
    if (const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) return err;
    apr_int64_t v;
    if (!parse_count(arg, 1, 1024, &v))
        return apr_psprintf(cmd->pool, "PidLockClusterConnections: '%s' is not a count from 1 to 1024", arg);
    server_config(cmd->server)->cluster_connections = v;
    return nullptr;
}

const char *set_cluster_failure(cmd_parms *cmd, void *, const char *arg) {
    if (const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) return err;
    if (!strcasecmp(arg, "closed")) server_config(cmd->server)->cluster_fail_open = 0;
    else if (!strcasecmp(arg, "open")) server_config(cmd->server)->cluster_fail_open = 1;
    else return apr_psprintf(cmd->pool, "PidLockClusterOnFailure: must be closed or open, not '%s'", arg);
    return nullptr;
}

// httpd keeps every directive handler as one generic pointer type.
template <typename F>
cmd_func as_cmd(F f) {
    return reinterpret_cast<cmd_func>(reinterpret_cast<void (*)()>(f));
}

}  // namespace

const command_rec pidlock_cmds[] = {
    AP_INIT_FLAG("PidLock", as_cmd(set_enabled), nullptr, RSRC_CONF | ACCESS_CONF,
                 "On to lock requests here by their PID"),
    AP_INIT_TAKE2("PidLockKey", as_cmd(set_key), nullptr, RSRC_CONF | ACCESS_CONF,
                  "where the PID comes from: path REGEX | query NAME | header NAME | form NAME"),
    AP_INIT_TAKE1("PidLockKeys", as_cmd(set_keys_mode), nullptr, RSRC_CONF | ACCESS_CONF,
                  "first (the first source that yields a key) or all (every one adds a lock)"),
    AP_INIT_FLAG("PidLockKeyRequired", as_cmd(set_key_required), nullptr, ACCESS_CONF,
                 "On to refuse (400) a locking request that yields no key"),
    AP_INIT_FLAG("PidLockLease", as_cmd(set_lease), nullptr, ACCESS_CONF,
                 "On to allow edit leases (WebDAV LOCK/UNLOCK) on the keys of this scope"),
    AP_INIT_TAKE12("PidLockLeaseTimeout", as_cmd(set_lease_timeout), nullptr, RSRC_CONF | ACCESS_CONF,
                   "idle timeout of a lease and the most a client may ask for, in seconds (default 1800 3600)"),
    AP_INIT_TAKE1("PidLockLeaseTableSize", as_cmd(set_lease_table_size), nullptr, RSRC_CONF,
                  "most leases held at once (default 1024)"),
    AP_INIT_TAKE1("PidLockBodyBuffer", as_cmd(set_body_buffer), nullptr, RSRC_CONF,
                  "most bytes of a body held in memory while a form key is looked for (default 65536)"),
    AP_INIT_TAKE_ARGV("PidLockCluster", as_cmd(set_cluster), nullptr, RSRC_CONF,
                      "Off, or postgres CONNINFO: also take every lock in PostgreSQL (several hosts)"),
    AP_INIT_TAKE1("PidLockClusterConnections", as_cmd(set_cluster_connections), nullptr, RSRC_CONF,
                  "most PostgreSQL connections per child process (default 8)"),
    AP_INIT_TAKE1("PidLockClusterOnFailure", as_cmd(set_cluster_failure), nullptr, RSRC_CONF,
                  "PostgreSQL unreachable: closed (503) or open (serve with the local lock only)"),
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
    AP_INIT_TAKE12("PidLockMaxWaiters", as_cmd(set_max_waiters), nullptr, RSRC_CONF,
                   "most requests waiting on one key, and in all: PER_KEY [TOTAL|auto] (default 16 auto)"),
    AP_INIT_FLAG("PidLockStatusActions", as_cmd(set_status_actions), nullptr,
                 ACCESS_CONF, "On to allow breaking locks from the status page here"),
    AP_INIT_FLAG("PidLockStatusQuery", as_cmd(set_status_query), nullptr,
                 ACCESS_CONF, "On to show holders' query strings on the status page here"),
    AP_INIT_TAKE1("PidLockMaxHold", as_cmd(set_max_hold), nullptr, RSRC_CONF | ACCESS_CONF,
                  "abort a request that holds a lock longer, in seconds (default 0: no limit)"),
    AP_INIT_TAKE1("PidLockRelease", as_cmd(set_release), nullptr, RSRC_CONF | ACCESS_CONF,
                  "when a request's locks end: eos (response handed to output) or sent (request ended)"),
    {nullptr, {nullptr}, nullptr, 0, RAW_ARGS, nullptr}};
}  // namespace glue
}  // namespace pidlock
