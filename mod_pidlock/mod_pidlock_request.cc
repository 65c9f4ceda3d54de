// mod_pidlock glue: the request path. The last fixup finds the request's
// key and takes its lock; an output filter releases it at the end of the
// response, and the request pool's cleanup on every other path.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <new>
#include <string>

#include "mod_pidlock_glue.h"

#include <apr_strings.h>

#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"

#ifdef APLOG_USE_MODULE
APLOG_USE_MODULE(pidlock);
#endif

namespace pidlock {
namespace glue {

const char *const kReleaseFilter = "PIDLOCK_RELEASE";
const char *const kFenceHeader = "PidLock-Fence";

// ------------------------------------------------------- per request

// The locks of one initial request and of the internal redirects and
// sub-requests it runs: taken in its fixup, released together by the
// release filter at the end of its response or by its pool's cleanup.
void release_locks_now(RequestLocks *rl) {
    if (rl->released) return;
    for (int i = rl->nsets; i-- > 0;) {
        const int rc = rl->backend->release_all(rl->sets[i]);
        if (rc != 0) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, rc, rl->r, "PIDLOCK105: releasing a lock failed");
            return;  // the pool cleanup tries again
        }
    }
    rl->released = true;
}

void release_locks(RequestLocks *rl) {
    // A watched request's locks may be released by the watchdog too.
    if (rl->watchdog) hold_unwatch(rl);
    else release_locks_now(rl);
}

apr_status_t release_cleanup(void *data) {
    release_locks(static_cast<RequestLocks *>(data));
    return APR_SUCCESS;
}

ap_filter_rec_t *g_release_filter = nullptr;

// PidLockRelease eos: releases the locks when the response is complete
// (EOS), before the bytes reach a possibly slow client; the request pool's
// cleanup is the backstop for every path that sends no EOS.
apr_status_t release_filter(ap_filter_t *f, apr_bucket_brigade *bb) {
    for (apr_bucket *b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
        if (APR_BUCKET_IS_EOS(b)) {
            release_locks(static_cast<RequestLocks *>(f->ctx));
            ap_remove_output_filter(f);
            break;
        }
    }
    return ap_pass_brigade(f->next, bb);
}

namespace {

// The request whose fixup took the locks: before internal redirects and
// above sub-requests.
request_rec *initial_request(request_rec *r) {
    for (;;) {
        if (r->prev) r = r->prev;
        else if (r->main) r = r->main;
        else return r;
    }
}

RequestLocks *locks_of(request_rec *initial) {
    return static_cast<RequestLocks *>(ap_get_module_config(initial->request_config, &pidlock_module));
}

bool holds_key(const RequestLocks *rl, const std::string &key) {
    if (!rl || !rl->held) return false;
    const auto *keys = reinterpret_cast<const char *const *>(rl->held->elts);
    const auto *lens = reinterpret_cast<const apr_size_t *>(rl->held_len->elts);
    for (int i = 0; i < rl->held->nelts; ++i)
        if (lens[i] == key.size() && !memcmp(keys[i], key.data(), key.size())) return true;
    return false;
}

void note_held(RequestLocks *rl, const std::vector<std::string> &keys) {
    apr_pool_t *p = rl->r->pool;
    if (!rl->held) {
        rl->held = apr_array_make(p, 2, sizeof(const char *));
        rl->held_len = apr_array_make(p, 2, sizeof(apr_size_t));
    }
    for (const std::string &k : keys) {
        *static_cast<const char **>(apr_array_push(rl->held)) = apr_pstrmemdup(p, k.data(), k.size());
        *static_cast<apr_size_t *>(apr_array_push(rl->held_len)) = k.size();
    }
}

// A number for the holders of one request on the status page: unique on
// this host while the request runs.
uint64_t next_request_number() {
    static std::atomic<uint32_t> counter{0};
    const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) & ((1u << 30) - 1);
    return (static_cast<uint64_t>(getpid()) << 30) | n;
}

// Every request header named `name`, counted: a repeated key header is
// refused, as applications differ in which copy they act on.
int header_count(request_rec *r, const char *name, const char **first) {
    struct Ctx {
        const char *name;
        int n;
        const char *first;
    } ctx{name, 0, nullptr};
    apr_table_do(
        [](void *c, const char *k, const char *v) -> int {
            auto *x = static_cast<Ctx *>(c);
            if (!strcasecmp(k, x->name)) {
                if (!x->n) x->first = v;
                ++x->n;
            }
            return 1;
        },
        &ctx, r->headers_in, name, nullptr);
    *first = ctx.first;
    return ctx.n;
}

}  // namespace

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

namespace {

// A path source's key from `path` (a routed path, like r->uri).
KeyStatus key_from_path_spec(const KeySpec &k, const char *path, apr_size_t max_len, std::string &key) {
    if (!path || strncmp(path, k.prefix, k.prefix_len) != 0) return KeyStatus::Absent;
    if (k.simple) {
        const char *cap = nullptr;
        size_t cap_len = 0;
        const FastMatch fm = simple_capture_match(k.prefix, k.prefix_len, k.allow_empty, path, &cap, &cap_len);
        if (fm == FastMatch::NoMatch) return KeyStatus::Absent;
        if (fm == FastMatch::Match) return key_from_path_capture(cap, cap_len, max_len, key);
    }
    ap_regmatch_t m[2];
    if (ap_regexec(k.regex, path, 2, m, 0) == 0 && m[1].rm_so >= 0)
        return key_from_path_capture(path + m[1].rm_so, static_cast<size_t>(m[1].rm_eo - m[1].rm_so), max_len,
                                     key);
    return KeyStatus::Absent;
}

}  // namespace

// One source's key. Absent when the source yields nothing here.
KeyStatus key_from_spec(const KeySpec &k, request_rec *r, apr_size_t max_len, std::string &key) {
    KeyStatus st = KeyStatus::Absent;
    switch (k.source) {
    case KeySource::Path:
        st = key_from_path_spec(k, r->uri, max_len, key);
        break;
    case KeySource::Query:
        st = key_from_query(r->args, k.name, max_len, key);
        break;
    case KeySource::Header: {
        const char *v = nullptr;
        const int n = header_count(r, k.name, &v);
        st = n > 1 ? KeyStatus::Repeated : key_from_header(v, max_len, key);
        break;
    }
    case KeySource::Form:
        break;  // read from the body, by form_keys()
    }
    return st;
}

int refuse_key(request_rec *r, const KeySpec &k, KeyStatus st, const char *detail) {
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK101: refusing request: %s (%s key%s%s)%s%s",
                  key_status_text(st), key_source_name(k.source), k.name ? " " : "", k.name ? k.name : "",
                  detail ? ": " : "", detail ? detail : "");
    return key_status_http(st, k.source);
}

// The request's keys: the first source that yields one (PidLockKeys first)
// or every one (all), sorted into the global order with duplicates merged.
// Returns 0 with `keys` set (empty: no source matched) or the HTTP status
// that refuses the request.
int keys_for(const DirConfig *d, request_rec *r, apr_size_t max_len, std::vector<std::string> &keys) {
    keys.clear();
    if (!d->keys) return 0;
    const bool all = d->keys_all == 1;
    const KeySpec *specs = reinterpret_cast<const KeySpec *>(d->keys->elts);
    // Form values are read from the body once, when the first form source
    // is reached in order, and then taken like any other source's key.
    std::vector<std::string> form_values;
    bool form_read = false;
    size_t form_i = 0;
    std::string key;
    for (int i = 0; i < d->keys->nelts; ++i) {
        const KeySpec &k = specs[i];
        if (k.source == KeySource::Form) {
            if (!form_read) {
                const int bad = form_keys(d, r, max_len, form_values);
                if (bad) return bad;
                form_read = true;
            }
            const std::string &v = form_values[form_i++];
            if (v.empty()) continue;  // absent (an empty value was refused)
            keys.push_back(v);
        } else {
            const KeyStatus st = key_from_spec(k, r, max_len, key);
            if (st == KeyStatus::Absent) continue;
            if (st != KeyStatus::Ok) return refuse_key(r, k, st, nullptr);
            keys.push_back(key);
        }
        if (!all) return 0;
    }
    sort_keys(keys);
    if (keys.size() > LockSet::kMaxKeys) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK109: refusing request: %u keys, more than the %u "
                      "one request may hold", static_cast<unsigned>(keys.size()),
                      static_cast<unsigned>(LockSet::kMaxKeys));
        return HTTP_BAD_REQUEST;
    }
    return 0;
}

int destination_keys(const DirConfig *d, request_rec *r, std::vector<std::string> &keys) {
    keys.clear();
    if (!d->keys || (r->method_number != M_COPY && r->method_number != M_MOVE)) return 0;
    const char *dest = apr_table_get(r->headers_in, "Destination");
    if (!dest) return 0;
    apr_uri_t u;
    if (apr_uri_parse(r->pool, dest, &u) != APR_SUCCESS || !u.path || u.path[0] != '/') {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK482: refusing %s: malformed Destination header",
                      r->method);
        return HTTP_BAD_REQUEST;
    }
    // Routed like a request path: decoded (%2F kept, as httpd keeps it under
    // AllowEncodedSlashes NoDecode), dot segments and repeated slashes gone.
    char *path = apr_pstrdup(r->pool, u.path);
    if (ap_unescape_url_keep2f(path, 1) != OK) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK483: refusing %s: Destination path does not decode",
                      r->method);
        return HTTP_BAD_REQUEST;
    }
    ap_getparents(path);
    ap_no2slash(path);
    const apr_size_t max_len = max_key_len(server_config(r->server));
    const KeySpec *specs = reinterpret_cast<const KeySpec *>(d->keys->elts);
    std::string key;
    for (int i = 0; i < d->keys->nelts; ++i) {
        if (specs[i].source != KeySource::Path) continue;
        const KeyStatus st = key_from_path_spec(specs[i], path, max_len, key);
        if (st == KeyStatus::Absent) continue;
        if (st != KeyStatus::Ok) return refuse_key(r, specs[i], st, "in the Destination header");
        keys.push_back(key);
        if (d->keys_all != 1) break;
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

namespace {

HolderInfo holder_info(request_rec *r, uint64_t request) {
    HolderInfo info;
    info.method = r->method;
    info.uri = r->unparsed_uri;
    info.client = r->useragent_ip;
    info.user = r->user;
    info.thread = static_cast<uint64_t>(apr_os_thread_current());
    info.request = request;
    info.client_fd = connection_fd(r->connection);
    return info;
}

// Answers a request whose locks were not had: busy, full or error.
int answer_not_acquired(request_rec *r, const DirConfig *d, AcquireResult res, Mode mode,
                        const BusyReport &rep, double timeout_s, int err, uint32_t capacity) {
    switch (res) {
    case AcquireResult::Busy: {
        const int status = d->busy_status ? d->busy_status : HTTP_SERVICE_UNAVAILABLE;
        if (rep.draining) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                          "PIDLOCK035: %s lock not had within %.3f s: processes of an earlier build with another "
                          "lock table layout still run (a graceful restart onto a new release); answering %d",
                          mode_name(mode), timeout_s, status);
            return answer_busy(r, status, nullptr, 1.0,
                               "The server is switching to a new release; try again shortly.\n");
        }
        if (rep.too_many_waiting) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                          "PIDLOCK314: %s lock on key of %" APR_SIZE_T_FMT " bytes refused at once: %u/%u "
                          "requests already wait (PidLockMaxWaiters); answering %d",
                          mode_name(mode), rep.key.size(), rep.waiting_read, rep.waiting_write, status);
            return answer_busy(r, status, &rep, 0.0, nullptr);
        }
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK102: %s lock on key of %" APR_SIZE_T_FMT " bytes not had within %.3f s "
                      "(held %s by %u, %u/%u waiting); answering %d",
                      mode_name(mode), rep.key.size(), timeout_s, mode_name(rep.held_mode),
                      rep.holders, rep.waiting_read, rep.waiting_write, status);
        return answer_busy(r, status, &rep, timeout_s, nullptr);
    }
    case AcquireResult::Full:
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      "PIDLOCK103: lock table full (capacity %u); answering 503. Raise PidLockTableSize "
                      "or use auto.", capacity);
        return answer_busy(r, HTTP_SERVICE_UNAVAILABLE, nullptr, 1.0,
                           "The lock table is full; try again shortly.\n");
    case AcquireResult::Unavailable:
        // PidLockClusterOnFailure closed: the backend logged why.
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      "PIDLOCK420: PostgreSQL (PidLockCluster) unavailable: %s lock not had; answering 503",
                      mode_name(mode));
        return answer_busy(r, HTTP_SERVICE_UNAVAILABLE, nullptr, 5.0,
                           "The cluster lock service is unavailable; try again shortly.\n");
    case AcquireResult::Error:
    case AcquireResult::Acquired:
        break;
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, err, r, "PIDLOCK104: the lock backend failed");
    return HTTP_INTERNAL_SERVER_ERROR;
}

std::vector<KeyRef> key_refs(const std::vector<std::string> &keys) {
    std::vector<KeyRef> refs;
    refs.reserve(keys.size());
    for (const std::string &k : keys) refs.push_back(KeyRef{k.data(), k.size()});
    return refs;
}

// An internal redirect or sub-request: runs under its initial request's
// locks where they cover its keys; takes the others, in its own method's
// mode, within what is left of the initial request's wait.
int lock_follow_up(request_rec *r, const DirConfig *d, State *st, Mode mode, std::vector<std::string> &keys) {
    request_rec *init = initial_request(r);
    RequestLocks *rl = locks_of(init);
    std::vector<std::string> missing;
    for (const std::string &k : keys)
        if (!holds_key(rl, k)) missing.push_back(k);
    if (missing.empty()) return DECLINED;
    const double timeout_s = (d->timeout_ms == kUnset ? 30000 : d->timeout_ms) / 1000.0;
    if (!rl) {
        // The initial request took no lock (not in a locked scope): this one
        // starts the request's set, with its own wait.
        rl = static_cast<RequestLocks *>(apr_pcalloc(init->pool, sizeof(RequestLocks)));
        rl->backend = st->backend;
        rl->r = init;
        rl->deadline_ns = monotonic_ns() + static_cast<int64_t>(timeout_s * 1e9);
        ap_set_module_config(init->request_config, &pidlock_module, rl);
        apr_pool_cleanup_register(init->pool, rl, release_cleanup, apr_pool_cleanup_null);
        if (d->release_sent != 1) ap_add_output_filter_handle(g_release_filter, rl, init, init->connection);
    }
    if (rl->released || rl->nsets >= static_cast<int>(sizeof rl->sets / sizeof rl->sets[0])) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "PIDLOCK110: too many internal redirects or sub-requests taking new locks; refusing");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    LockSet &set = rl->sets[rl->nsets];
    const std::vector<KeyRef> refs = key_refs(missing);
    BusyReport rep;
    int err = 0;
    if (!rl->request) rl->request = next_request_number();
    const HolderInfo info = holder_info(r, rl->request);
    const AcquireResult res =
        st->backend->acquire_all(refs.data(), refs.size(), mode, rl->deadline_ns, info, set, &rep, &err);
    if (res != AcquireResult::Acquired)
        return answer_not_acquired(r, d, res, mode, rep, timeout_s, err, st->backend->capacity());
    if (!hold_add_set(rl)) {
        rl->backend->release_all(set);
        return answer_not_acquired(r, d, AcquireResult::Busy, mode, rep, timeout_s, 0, 0);
    }
    note_held(rl, missing);
    return DECLINED;
}

}  // namespace

// A client's own PidLock-Fence header never reaches the handler: only the
// module's, on a write lock.
int strip_fence(request_rec *r) {
    apr_table_unset(r->headers_in, kFenceHeader);
    return DECLINED;
}

int fixups(request_rec *r) {
    const DirConfig *d = dir_config(r);
    if (d->enabled != 1) return DECLINED;
    try {
        const Mode mode = mode_for(d, r);
        if (mode == Mode::None) return DECLINED;
        State *st = g_state;
        if (!st || !st->backend) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK107: lock table unavailable; refusing to run unlocked");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        // Exits the parent reported: this child releases what they held.
        const int reaped = st->backend->maintain();
        if (reaped > 0)
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          "PIDLOCK313: released %d lock record(s) of child processes that exited", reaped);
        std::vector<std::string> keys;
        const int bad = keys_for(d, r, max_key_len(server_config(r->server)), keys);
        if (bad) {
            st->backend->count(Counter::BadKeys);
            return bad;
        }
        if (keys.empty()) {
            if (d->key_required == 1) {
                ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                              "PIDLOCK111: refusing request: no key, and PidLockKeyRequired is On here");
                st->backend->count(Counter::BadKeys);
                return HTTP_BAD_REQUEST;
            }
            return DECLINED;
        }
        if (!ap_is_initial_req(r)) {
            // A redirect into a leased scope is checked against the lease too.
            const int rc = lock_follow_up(r, d, st, mode, keys);
            return rc == DECLINED ? lease_gate(r, d, mode, keys, locks_of(initial_request(r))) : rc;
        }

        // A write that a lease refuses is refused at once, not queued.
        if (const int refused = lease_precheck(r, d, mode, keys)) return refused;
        const apr_int64_t timeout_ms = d->timeout_ms == kUnset ? 30000 : d->timeout_ms;
        auto *rl = static_cast<RequestLocks *>(apr_pcalloc(r->pool, sizeof(RequestLocks)));
        new (&rl->sets[0]) LockSet();
        rl->backend = st->backend;
        rl->r = r;
        rl->deadline_ns = monotonic_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
        rl->request = next_request_number();
        const std::vector<KeyRef> refs = key_refs(keys);
        BusyReport rep;
        int err = 0;
        const AcquireResult res = st->backend->acquire_all(refs.data(), refs.size(), mode, rl->deadline_ns,
                                                           holder_info(r, rl->request),
                                                           rl->sets[0], &rep, &err);
        if (res != AcquireResult::Acquired)
            return answer_not_acquired(r, d, res, mode, rep, timeout_ms / 1000.0, err, st->backend->capacity());
        rl->nsets = 1;
        note_held(rl, keys);
        ap_set_module_config(r->request_config, &pidlock_module, rl);
        apr_pool_cleanup_register(r->pool, rl, release_cleanup, apr_pool_cleanup_null);
        // PidLockRelease sent: the pool cleanup alone, when httpd ends the
        // request after its last byte went to the connection.
        if (d->release_sent != 1) ap_add_output_filter_handle(g_release_filter, rl, r, r->connection);
        if (d->max_hold_ms > 0) hold_watch(rl, r, d->max_hold_ms);
        if (mode == Mode::Write && rl->sets[0].fence())
            apr_table_setn(r->headers_in, kFenceHeader,
                           apr_psprintf(r->pool, "%" APR_UINT64_T_FMT, rl->sets[0].fence()));
        // Checked again now that it is this writer's turn; LOCK and UNLOCK end here.
        return lease_gate(r, d, mode, keys, rl);
    } catch (const std::bad_alloc &) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK106: out of memory while locking");
        return HTTP_INTERNAL_SERVER_ERROR;
    } catch (...) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK112: unexpected error while locking");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

}  // namespace glue
}  // namespace pidlock
