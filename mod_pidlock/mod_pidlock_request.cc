// mod_pidlock glue: the request path. The last fixup finds the request's
// key and takes its lock (a sub-request's: the first handler, as it runs);
// a connection output filter releases it when the response's EOS passes
// (or the request's EOR), and the request pool's cleanup on every other
// path.
// The common case (one key from the first source, needing no decoding, no
// lease, no PidLockMaxHold, the host's table alone, had at once) takes no
// copy of the key and allocates nothing: its record is the connection's
// (ConnLocks::spare). Everything else goes through fixups_general.
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
#include "http_main.h"
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
    State *st = g_state;
    int rc = 0;
    if (rl->nsets == 1 && st && rl->backend == st->direct) {
        // The common case: one set, on the host's table alone.
        rc = st->direct->release_set(rl->first);
    } else {
        for (int i = rl->nsets; i-- > 0 && rc == 0;) rc = release_all_on(rl->backend, rl->set(i));
    }
    if (rc != 0) {
        // rl->r null: its request is gone (a left-over at_conn record).
        ap_log_error(APLOG_MARK, APLOG_ERR, rc, rl->r ? rl->r->server : ap_server_conf,
                     "PIDLOCK105: releasing a lock failed");
        return;  // the EOR, the pool cleanup or the connection's next request tries again
    }
    rl->released = true;
    if (rl->conn && !rl->at_conn) rl->conn->unreleased.fetch_sub(1, std::memory_order_relaxed);
}

void release_locks(RequestLocks *rl) {
    // A watched request's locks may be released by the watchdog too.
    if (rl->watchdog) hold_unwatch(rl);
    else release_locks_now(rl);
}

// The request's end (PidLockRelease sent, and the backstop of eos): its
// pool goes once httpd has sent the response and ends the request.
namespace {

// Releases `rl`'s locks, and the connection forgets it as the request whose
// EOS it awaits (the connection outlives the request); a common-path
// record (at_conn) so released frees the connection's spare.
void release_and_forget(RequestLocks *rl) {
    if (rl->conn && rl->conn->current == rl) rl->conn->current = nullptr;
    release_locks(rl);
    if (rl->released && rl->at_conn) rl->conn->spare_busy = false;
}

}  // namespace

apr_status_t release_cleanup(void *data) {
    auto *rl = static_cast<RequestLocks *>(data);
    release_and_forget(rl);
    // Nothing refers to it any more: the connection's next request may use it.
    if (rl->conn && rl == &rl->conn->spare) rl->conn->spare_busy = false;
    return APR_SUCCESS;
}

ap_filter_rec_t *g_release_filter = nullptr;

// PidLockRelease eos: releases the locks of the connection's current
// request when its response's EOS passes, below the protocol filters and
// before the bytes reach a possibly slow client. Sub-requests' EOS never
// gets here (httpd drops it), an internal redirect's response is its
// initial request's. Once added, the filter stays for the connection's
// later requests: one that holds nothing costs the test of `current`.
namespace {

// Out of the filter's way: most brigades pass with nothing to release.
__attribute__((noinline)) apr_status_t release_at_end(ap_filter_t *f, apr_bucket_brigade *bb, bool eor) {
    auto *cl = static_cast<ConnLocks *>(f->ctx);
    RequestLocks *rl = cl->current;
    release_and_forget(rl);
    if (!rl->released) {
        // PIDLOCK105: the EOR tries again, or what comes after.
        cl->current = rl;
        if (eor && rl->at_conn) rl->r = nullptr;  // its request ends with this EOR: later tries log without it
    }
    return ap_pass_brigade(f->next, bb);
}

}  // namespace

// The response's end is the last bucket of its brigade, as httpd itself
// takes it (ap_pass_brigade's eos_sent, mod_reqtimeout's EOR): the EOS, or
// the EOR that httpd passes through the connection's filters at the end of
// every request it ends (ap_process_request_after_handler; mod_http2's for
// a stream refused early), after its EOS. A request whose EOS never came
// this way ends at its EOR. Both ways end in a tail call: a brigade with
// nothing to release costs a load and a test (a connection's brigades all
// pass here).
apr_status_t release_filter(ap_filter_t *f, apr_bucket_brigade *bb) {
    if (__builtin_expect(static_cast<ConnLocks *>(f->ctx)->current != nullptr, 0) && !APR_BRIGADE_EMPTY(bb)) {
        const apr_bucket *b = APR_BRIGADE_LAST(bb);
        if (APR_BUCKET_IS_EOS(b)) return release_at_end(f, bb, false);
        if (AP_BUCKET_IS_EOR(b)) return release_at_end(f, bb, true);
    }
    return ap_pass_brigade(f->next, bb);
}

namespace {

pid_t g_child_pid = 0;

}  // namespace

void note_child_pid() { g_child_pid = getpid(); }

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

bool same_key(const KeyRef &a, const std::string &b) {
    return a.len == b.size() && !memcmp(a.data, b.data(), b.size());
}

bool holds_key(const RequestLocks *rl, const std::string &key) {
    if (!rl) return false;
    for (int i = 0; i < rl->nheld; ++i)
        if (same_key(rl->held[i], key)) return true;
    if (rl->held_more) {
        const auto *more = reinterpret_cast<const KeyRef *>(rl->held_more->elts);
        for (int i = 0; i < rl->held_more->nelts; ++i)
            if (same_key(more[i], key)) return true;
    }
    return false;
}

// Notes keys the request now holds; `copy`: their bytes do not live as long
// as the request's pool, so they are copied there.
void note_held(RequestLocks *rl, const KeyRef *keys, size_t n, bool copy) {
    if (!copy && rl->nheld + n <= LockSet::kMaxKeys) {
        memcpy(&rl->held[rl->nheld], keys, n * sizeof(KeyRef));
        rl->nheld += static_cast<int>(n);
        return;
    }
    apr_pool_t *p = rl->r->pool;
    for (size_t i = 0; i < n; ++i) {
        KeyRef k{copy ? apr_pstrmemdup(p, keys[i].data, keys[i].len) : keys[i].data, keys[i].len};
        if (rl->nheld < static_cast<int>(LockSet::kMaxKeys)) {
            rl->held[rl->nheld++] = k;
        } else {
            if (!rl->held_more) rl->held_more = apr_array_make(p, 4, sizeof(KeyRef));
            *static_cast<KeyRef *>(apr_array_push(rl->held_more)) = k;
        }
    }
}

// A number for the holders of one request on the status page: unique on
// this host while the request runs.
uint64_t next_request_number() {
    static std::atomic<uint32_t> counter{0};
    const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) & ((1u << 30) - 1);
    const pid_t pid = g_child_pid ? g_child_pid : getpid();
    return (static_cast<uint64_t>(pid) << 30) | n;
}

// An at_conn record still held when its connection's next initial request
// reaches its fixup (`next`), or the connection ends (`next` null): its
// request is over (a connection runs one at a time) without its EOS or EOR
// passing the release filter, which no path of httpd 2.4 does (a module
// might), or its release failed there. Released now; nothing to do if the
// spare is free or is not such a record.
__attribute__((noinline, cold)) void end_left_over(ConnLocks *cl, request_rec *next) {
    RequestLocks *rl = &cl->spare;
    if (!cl->spare_busy || !rl->at_conn) return;
    rl->r = nullptr;  // its request and pool may be gone
    release_and_forget(rl);
    if (!rl->released) return;
    if (next)
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, next,
                      "PIDLOCK113: released the locks of the previous request on this connection, which ended "
                      "without its response's end passing the release filter");
    else
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, ap_server_conf,
                     "PIDLOCK114: released the locks of a connection's last request, which ended without its "
                     "response's end passing the release filter");
}

// After the pools of the connection's requests (they are its pool's
// children, destroyed before its cleanups run).
apr_status_t conn_locks_cleanup(void *data) {
    auto *cl = static_cast<ConnLocks *>(data);
    end_left_over(cl, nullptr);
    drop_slot_cache(cl->cache);
    return APR_SUCCESS;
}

// The connection's part, made by its first locking request.
ConnLocks *conn_locks(conn_rec *c) {
    auto *cl = static_cast<ConnLocks *>(ap_get_module_config(c->conn_config, &pidlock_module));
    if (!cl) {
        cl = new (apr_palloc(c->pool, sizeof(ConnLocks))) ConnLocks{nullptr, connection_fd(c), false, SlotCache(), false, RequestLocks(), 0};
        // Registered before any request's pool exists: it runs after them.
        apr_pool_cleanup_register(c->pool, cl, conn_locks_cleanup, apr_pool_cleanup_null);
        ap_set_module_config(c->conn_config, &pidlock_module, cl);
    }
    return cl;
}

// PidLockRelease eos: `rl`'s locks end when the EOS of the response of `r`
// (its initial request) passes the connection's release filter, added to
// the connection now if this is its first such request (release_with has
// set rl->conn).
void release_at_eos(RequestLocks *rl, request_rec *r, ConnLocks *cl) {
    if (!cl->filter) {
        // With `r`, httpd links the filter into this request's chain too.
        ap_add_output_filter_handle(g_release_filter, cl, r, r->connection);
        cl->filter = true;
    }
    cl->current = rl;
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

// The lock a request's method takes here: PidLockMethods first, else
// reads for GET, HEAD, OPTIONS and PROPFIND and writes for the rest.
inline __attribute__((always_inline)) Mode mode_for(const DirConfig *d, request_rec *r) {
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

// One source's key, as a view into r->uri, r->args or the header's value
// where nothing needed decoding, else into `scratch`. Absent when the
// source yields nothing here.
KeyStatus key_from_spec(const KeySpec &k, request_rec *r, apr_size_t max_len, std::string &scratch, KeyView &key) {
    KeyStatus st = KeyStatus::Absent;
    switch (k.source) {
    case KeySource::Path: {
        if (!r->uri) break;
        if (k.simple) {
            bool use_regex = false;
            st = simple_capture_key(k.prefix, k.prefix_len, k.allow_empty, r->uri, max_len, scratch, key, &use_regex);
            if (!use_regex) break;
        } else if (strncmp(r->uri, k.prefix, k.prefix_len) != 0) {
            break;
        }
        ap_regmatch_t m[2];
        if (ap_regexec(k.regex, r->uri, 2, m, 0) == 0 && m[1].rm_so >= 0)
            st = key_view_path_capture(r->uri + m[1].rm_so, static_cast<size_t>(m[1].rm_eo - m[1].rm_so), max_len,
                                       scratch, key);
        break;
    }
    case KeySource::Query:
        st = key_view_query(r->args, k.name, max_len, scratch, key);
        break;
    case KeySource::Header: {
        const char *v = nullptr;
        const int n = header_count(r, k.name, &v);
        st = n > 1 ? KeyStatus::Repeated : key_view_header(v, max_len, scratch, key);
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
    std::string scratch;
    KeyView key;
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
            const KeyStatus st = key_from_spec(k, r, max_len, scratch, key);
            if (st == KeyStatus::Absent) continue;
            if (st != KeyStatus::Ok) return refuse_key(r, k, st, nullptr);
            keys.emplace_back(key.data, key.len);
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

namespace {

constexpr int kNeedsKeysFor = -1;

// The fast path's key (PidLockKeys first): the first source that yields
// one, as a view. 0 with `key` set (data null: no source matched), the HTTP
// status refusing the request, or kNeedsKeysFor where a form source comes
// first (keys_for reads the body).
int first_key(const DirConfig *d, request_rec *r, apr_size_t max_len, std::string &scratch, KeyView &key) {
    key = KeyView{};
    if (!d->keys) return 0;
    const KeySpec *specs = reinterpret_cast<const KeySpec *>(d->keys->elts);
    for (int i = 0; i < d->keys->nelts; ++i) {
        const KeySpec &k = specs[i];
        if (k.source == KeySource::Form) return kNeedsKeysFor;
        KeyStatus st;
        bool use_regex = false;
        if (k.simple && r->uri) {
            // A path key of the ^prefix(.+)$ kind, looked at in one pass.
            st = simple_capture_key(k.prefix, k.prefix_len, k.allow_empty, r->uri, max_len, scratch, key, &use_regex);
            if (use_regex) st = key_from_spec(k, r, max_len, scratch, key);
        } else {
            st = key_from_spec(k, r, max_len, scratch, key);
        }
        if (st == KeyStatus::Absent) continue;
        if (st != KeyStatus::Ok) return refuse_key(r, k, st, nullptr);
        return 0;
    }
    return 0;
}

}  // namespace

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
// handler (mod_proxy included) runs for it. A sub-request's answer is the
// status alone, which ap_run_sub_req returns to the module running it (a
// body would go into the middle of its initial request's response).
int answer_busy(request_rec *r, int status, const BusyReport *rep, double timeout_s, const char *text) {
    r->status = status;
    if (r->main) return status;
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

// Who asks, for the table: the request `r` (its initial request's number
// `request`) on connection `cl`; `slot_cache`: where its holder slot is
// kept between requests (null: not kept).
HolderInfo holder_info(request_rec *r, uint64_t request, const ConnLocks *cl, SlotCache *slot_cache) {
    HolderInfo info;
    info.method = r->method;
    info.uri = r->unparsed_uri;
    info.client = r->useragent_ip;
    info.user = r->user;
    info.thread = static_cast<uint64_t>(apr_os_thread_current());
    info.request = request;
    info.client_fd = cl->fd;
    info.client_gone = client_aborted;  // an HTTP/2 stream reset shows here, not on the socket
    info.client_gone_arg = r->connection;
    info.slot_cache = slot_cache;
    return info;
}

// Answers a request whose locks were not had: busy, full or error. The
// key named, in the log and the busy report, is the backend's (rep.key), or
// else the request's `first` (backends fill the report only when they fail).
int answer_not_acquired(request_rec *r, const DirConfig *d, AcquireResult res, Mode mode, BusyReport &rep,
                        const KeyRef &first, double timeout_s, int err, uint32_t capacity) {
    if (rep.key.empty()) rep.key.assign(first.data, first.len);
    // The key as a JSON string (control bytes escaped), its first 64 bytes:
    // which key it was, without a client's bytes raw in the log.
    std::string key;
    json_string(key, rep.key.substr(0, 64));
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
                          "PIDLOCK314: %s lock on key %s (%" APR_SIZE_T_FMT " bytes) refused at once: %u readers "
                          "and %u writers already wait (PidLockMaxWaiters); answering %d",
                          mode_name(mode), key.c_str(), rep.key.size(), rep.waiting_read, rep.waiting_write,
                          status);
            return answer_busy(r, status, &rep, 0.0, nullptr);
        }
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK102: %s lock on key %s (%" APR_SIZE_T_FMT " bytes) not had within %.3f s "
                      "(held %s by %u; %u readers and %u writers waiting); answering %d",
                      mode_name(mode), key.c_str(), rep.key.size(), timeout_s, mode_name(rep.held_mode),
                      rep.holders, rep.waiting_read, rep.waiting_write, status);
        return answer_busy(r, status, &rep, timeout_s, nullptr);
    }
    case AcquireResult::Full:
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      "PIDLOCK103: lock table full (capacity %u): %s lock on key %s not had; answering 503. "
                      "Raise PidLockTableSize or use auto.", capacity, mode_name(mode), key.c_str());
        return answer_busy(r, HTTP_SERVICE_UNAVAILABLE, nullptr, 1.0,
                           "The lock table is full; try again shortly.\n");
    case AcquireResult::Unavailable:
        // PidLockClusterOnFailure closed: the backend logged why.
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      "PIDLOCK420: PostgreSQL (PidLockCluster) unavailable: %s lock on key %s not had; "
                      "answering 503", mode_name(mode), key.c_str());
        return answer_busy(r, HTTP_SERVICE_UNAVAILABLE, nullptr, 5.0,
                           "The cluster lock service is unavailable; try again shortly.\n");
    case AcquireResult::ClientGone:
        // Nobody will read the answer: the handler never runs, the
        // connection is dropped.
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK140: client went away while its %s lock on key %s waited; request ended, "
                      "handler not run", mode_name(mode), key.c_str());
        r->connection->aborted = 1;
        r->connection->keepalive = AP_CONN_CLOSE;
        r->status = HTTP_REQUEST_TIME_OUT;
        return DONE;
    case AcquireResult::Error:
    case AcquireResult::Acquired:
        break;
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, err, r, "PIDLOCK104: the lock backend failed: %s lock on key %s not had",
                  mode_name(mode), key.c_str());
    return HTTP_INTERNAL_SERVER_ERROR;
}

std::vector<KeyRef> key_refs(const std::vector<std::string> &keys) {
    std::vector<KeyRef> refs;
    refs.reserve(keys.size());
    for (const std::string &k : keys) refs.push_back(KeyRef{k.data(), k.size()});
    return refs;
}

int64_t timeout_ns_of(const DirConfig *d) {
    return static_cast<int64_t>(d->timeout_ms == kUnset ? 30000 : d->timeout_ms) * 1000000;
}

// Ends `rl`'s locks with the request: at its pool's cleanup, and (eos) at
// its response's EOS.
inline __attribute__((always_inline)) void release_with(RequestLocks *rl, request_rec *init, const DirConfig *d,
                                                      ConnLocks *cl) {
    rl->conn = cl;
    cl->unreleased.fetch_add(1, std::memory_order_relaxed);
    apr_pool_cleanup_register(init->pool, rl, release_cleanup, apr_pool_cleanup_null);
    if (d->release_sent != 1) release_at_eos(rl, init, cl);
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
    const int64_t timeout_ns = timeout_ns_of(d);
    const double timeout_s = static_cast<double>(timeout_ns) / 1e9;
    if (!rl) {
        // The initial request took no lock (not in a locked scope): this one
        // starts the request's set, with its own wait.
        rl = new (apr_palloc(init->pool, sizeof(RequestLocks))) RequestLocks;
        rl->backend = st->backend;
        rl->r = init;
        rl->deadline_ns = monotonic_ns() + timeout_ns;
        ap_set_module_config(init->request_config, &pidlock_module, rl);
        release_with(rl, init, d, conn_locks(init->connection));
    } else if (rl->deadline_ns == 0) {
        // The initial request had its locks at once, without reading the
        // clock: its wait began when it was read.
        const int64_t since_ns = std::max<int64_t>(0, (apr_time_now() - init->request_time) * 1000);
        rl->deadline_ns = monotonic_ns() + std::max<int64_t>(0, timeout_ns - since_ns);
    }
    if (rl->released || rl->nsets >= RequestLocks::kMaxSets) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "PIDLOCK110: too many internal redirects or sub-requests taking new locks; refusing");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rl->at_conn) {
        // Its new set and keys live in the request's pool: the pool's
        // cleanup now ends the record, as for a record taken any other way.
        rl->at_conn = false;
        rl->conn->unreleased.fetch_add(1, std::memory_order_relaxed);
        apr_pool_cleanup_register(init->pool, rl, release_cleanup, apr_pool_cleanup_null);
    }
    if (rl->nsets > 0 && !rl->more) {
        rl->more = static_cast<LockSet *>(apr_palloc(init->pool, sizeof(LockSet) * (RequestLocks::kMaxSets - 1)));
        for (int i = 0; i < RequestLocks::kMaxSets - 1; ++i) new (&rl->more[i]) LockSet();
    }
    LockSet &set = rl->set(rl->nsets);
    const std::vector<KeyRef> refs = key_refs(missing);
    BusyReport rep;
    int err = 0;
    if (!rl->request) rl->request = next_request_number();
    // No slot cache: the initial request's release would give it back.
    const HolderInfo info = holder_info(r, rl->request, conn_locks(r->connection), nullptr);
    const AcquireResult res =
        st->backend->acquire_all(refs.data(), refs.size(), mode, rl->deadline_ns, info, set, &rep, &err);
    if (res != AcquireResult::Acquired)
        return answer_not_acquired(r, d, res, mode, rep, refs[0], timeout_s, err, st->backend->capacity());
    if (!hold_add_set(rl)) {
        rl->backend->release_all(set);
        return answer_not_acquired(r, d, AcquireResult::Busy, mode, rep, refs[0], timeout_s, 0, 0);
    }
    note_held(rl, refs.data(), refs.size(), true);
    return DECLINED;
}

// An initial request takes `keys` (sorted, distinct; `stable`: their bytes
// live as long as its pool). `deadline_ns` 0: the wait is the scope's
// timeout from now, read off the clock only if a key is not had at once.
// `lease_keys`: the keys as strings where a lease may apply (null: none).
int lock_initial(request_rec *r, const DirConfig *d, State *st, Mode mode, const KeyRef *keys, size_t n,
                 bool stable, int64_t deadline_ns, const std::vector<std::string> *lease_keys) {
    const int64_t timeout_ns = timeout_ns_of(d);
    auto *rl = new (apr_palloc(r->pool, sizeof(RequestLocks))) RequestLocks;
    rl->backend = st->backend;
    rl->r = r;
    rl->deadline_ns = deadline_ns;
    rl->request = next_request_number();
    BusyReport rep;
    int err = 0;
    ConnLocks *cl = conn_locks(r->connection);
    // PidLockMaxHold: the watchdog's thread may release these locks, and a
    // connection's slot cache is for its own thread only.
    const HolderInfo info = holder_info(r, rl->request, cl, d->max_hold_ms > 0 ? nullptr : &cl->cache);
    const AcquireResult res =
        deadline_ns ? st->backend->acquire_all(keys, n, mode, deadline_ns, info, rl->first, &rep, &err)
                    : acquire_within_on(st->backend, keys, n, mode, timeout_ns, info, rl->first, &rep, &err);
    if (res != AcquireResult::Acquired)
        return answer_not_acquired(r, d, res, mode, rep, keys[0], static_cast<double>(timeout_ns) / 1e9, err,
                                   st->backend->capacity());
    rl->nsets = 1;
    if (n == 1 && stable) {  // the common case, inline
        rl->held[0] = keys[0];
        rl->nheld = 1;
    } else {
        note_held(rl, keys, n, !stable);
    }
    ap_set_module_config(r->request_config, &pidlock_module, rl);
    // PidLockRelease sent: the pool cleanup alone, when httpd ends the
    // request after its last byte went to the connection.
    release_with(rl, r, d, cl);
    if (d->max_hold_ms > 0) hold_watch(rl, r, d->max_hold_ms);
    if (mode == Mode::Write && rl->first.fence())
        apr_table_setn(r->headers_in, kFenceHeader,
                       apr_psprintf(r->pool, "%" APR_UINT64_T_FMT, rl->first.fence()));
    // Checked again now that it is this writer's turn; LOCK and UNLOCK end here.
    return lease_keys ? lease_gate(r, d, mode, *lease_keys, rl) : DECLINED;
}

constexpr int kNotAtOnce = -2;

// The common case, taken at once: one key whose bytes live as long as the
// request, the host's table alone (State::direct), no PidLockMaxHold, and
// the connection's RequestLocks free. kNotAtOnce: nothing was taken
// (lock_initial decides: it may wait, or answer why not).
int lock_at_once(request_rec *r, const DirConfig *d, State *st, Mode mode, const KeyRef &key) {
    ConnLocks *cl = conn_locks(r->connection);
    if (cl->spare_busy) {
        end_left_over(cl, r);
        if (cl->spare_busy) return kNotAtOnce;
    }
    RequestLocks *rl = &cl->spare;
    const uint64_t request = next_request_number();
    if (!st->direct->acquire_at_once(key, mode, holder_info(r, request, cl, &cl->cache), rl->first))
        return kNotAtOnce;
    cl->spare_busy = true;
    rl->backend = st->backend;
    rl->r = r;
    rl->deadline_ns = 0;
    rl->request = request;
    rl->nsets = 1;
    rl->more = nullptr;
    rl->nheld = 1;
    rl->held[0] = key;
    rl->held_more = nullptr;
    rl->released = false;
    rl->watched = false;
    rl->watchdog = false;
    ap_set_module_config(r->request_config, &pidlock_module, rl);
    if (d->release_sent != 1) {
        // PidLockRelease eos: the release filter ends it, without a pool
        // cleanup (see RequestLocks::at_conn). Not counted in `unreleased`
        // (what finish_earlier_requests writes out is for `sent`).
        rl->at_conn = true;
        rl->conn = cl;
        release_at_eos(rl, r, cl);
    } else {
        rl->at_conn = false;
        release_with(rl, r, d, cl);
    }
    if (mode == Mode::Write && rl->first.fence())
        apr_table_setn(r->headers_in, kFenceHeader,
                       apr_psprintf(r->pool, "%" APR_UINT64_T_FMT, rl->first.fence()));
    return DECLINED;
}

int no_key(request_rec *r, const DirConfig *d, State *st) {
    if (d->key_required != 1) return DECLINED;
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  "PIDLOCK111: refusing request: no key, and PidLockKeyRequired is On here");
    st->backend->count(Counter::BadKeys);
    return HTTP_BAD_REQUEST;
}

}  // namespace

// A client's own PidLock-Fence header never reaches the handler: only the
// module's, on a write lock.
int strip_fence(request_rec *r) {
    apr_table_unset(r->headers_in, kFenceHeader);
    return DECLINED;
}

void reap_reported_exits(request_rec *r, State *st) {
    // Nothing published since the last look (the common case): one load.
    if (!st->exits_reader || !st->exits_reader->pending()) return;
    // Exits the parent reported: this child releases what they held.
    const int reaped = st->backend->maintain();
    if (reaped > 0)
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      "PIDLOCK313: released %d lock record(s) of child processes that exited", reaped);
}

namespace {

// Locks already noted on an initial request when its own fixup begins:
// sub-requests that a module ran in an earlier hook took them, in their own
// mode. They are over: their locks go now, and the request takes its own
// without waiting for them. (Lookups that are never run, such as mod_dir's
// DirectoryIndex and MultiViews before their fast redirect, take none: a
// sub-request locks in subrequest_locks, when it runs.)
__attribute__((noinline)) void release_lookups(request_rec *r, RequestLocks *rl) {
    ap_set_module_config(r->request_config, &pidlock_module, nullptr);
    release_and_forget(rl);
}

// What escaped the locking of `r`, from within its catch block: logged,
// and answered 500.
__attribute__((noinline, cold)) int locking_failed(request_rec *r) {
    try {
        throw;
    } catch (const std::bad_alloc &) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK106: out of memory while locking");
    } catch (...) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK112: unexpected error while locking");
    }
    return HTTP_INTERNAL_SERVER_ERROR;
}

// An initial request about to wait for its locks while an earlier request
// of its own connection still holds some (PidLockRelease sent: httpd keeps
// a response's tail buffered while it reads the next, pipelined request,
// and the earlier request ends only once it is written): the connection's
// output is written now, which ends that request, rather than this one
// waiting on its own connection until its PidLockTimeout.
void finish_earlier_requests(request_rec *r) {
    conn_rec *c = r->connection;
    auto *cl = static_cast<ConnLocks *>(ap_get_module_config(c->conn_config, &pidlock_module));
    if (!cl || cl->unreleased.load(std::memory_order_relaxed) == 0) return;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, c->bucket_alloc);
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(c->bucket_alloc));
    const apr_status_t rv = ap_pass_brigade(c->output_filters, bb);
    apr_brigade_destroy(bb);
    if (rv != APR_SUCCESS)
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, rv, r, "writing the earlier responses of the connection failed");
}

// Everything but the common case of fixups(): redirects and sub-requests,
// several keys, keys that needed decoding, leases, PidLockMaxHold, the
// PostgreSQL tier, a key not had at once, every refusal. `tried_at_once`:
// fixups() already asked lock_at_once for this request's key.
__attribute__((noinline)) int fixups_general(request_rec *r, const DirConfig *d, bool tried_at_once) {
    const Mode mode = mode_for(d, r);
    if (mode == Mode::None) return DECLINED;
    State *st = g_state;
    if (!st || !st->backend) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK107: lock table unavailable; refusing to run unlocked");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    reap_reported_exits(r, st);
    const apr_size_t max_len = max_key_len(server_config(r->server));
    const bool initial = ap_is_initial_req(r);
    if (initial) {
        auto *cl = static_cast<ConnLocks *>(ap_get_module_config(r->connection->conn_config, &pidlock_module));
        if (cl) end_left_over(cl, r);
    }
    if (initial && d->keys_all != 1 && d->lease != 1) {
        // The common case: one key, as a view into the request.
        std::string scratch;
        KeyView key;
        const int bad = first_key(d, r, max_len, scratch, key);
        if (bad != kNeedsKeysFor) {
            if (bad) {
                st->backend->count(Counter::BadKeys);
                return bad;
            }
            if (!key.data) return no_key(r, d, st);
            const KeyRef ref{key.data, key.len};
            const bool stable = key.data != scratch.data();
            if (stable && st->direct && d->max_hold_ms <= 0 && !tried_at_once) {
                const int rc = lock_at_once(r, d, st, mode, ref);
                if (rc != kNotAtOnce) return rc;
            }
            finish_earlier_requests(r);
            // A decoded key lives in `scratch`: note_held copies it.
            return lock_initial(r, d, st, mode, &ref, 1, stable, 0, nullptr);
        }
    }
    std::vector<std::string> keys;
    const int bad = keys_for(d, r, max_len, keys);
    if (bad) {
        st->backend->count(Counter::BadKeys);
        return bad;
    }
    if (keys.empty()) return no_key(r, d, st);
    if (!initial) {
        // A redirect into a leased scope is checked against the lease too.
        const int rc = lock_follow_up(r, d, st, mode, keys);
        return rc == DECLINED ? lease_gate(r, d, mode, keys, locks_of(initial_request(r))) : rc;
    }

    // A write that a lease refuses is refused at once, not queued.
    if (const int refused = lease_precheck(r, d, mode, keys)) return refused;
    finish_earlier_requests(r);
    // Form keys were read from the body before this: the wait starts now.
    const std::vector<KeyRef> refs = key_refs(keys);
    return lock_initial(r, d, st, mode, refs.data(), refs.size(), false, monotonic_ns() + timeout_ns_of(d),
                        &keys);
}

}  // namespace

int fixups(request_rec *r) {
    const DirConfig *d = dir_config(r);
    if (d->enabled != 1) return DECLINED;
    // A sub-request locks when it runs (subrequest_locks), not when it is
    // looked up: mod_autoindex looks every file of a listing up and runs
    // none.
    if (r->main) return DECLINED;
    try {
        const bool initial = !r->prev;
        if (initial) {
            if (RequestLocks *early = locks_of(r)) release_lookups(r, early);
        }
        // The common case in a few loads and one call into the table: an
        // initial request, the first source a simple path pattern or a query
        // argument whose key needs no decoding, the host's table alone, no lease and no
        // PidLockMaxHold here, no exits to reap, the lock had at once.
        State *st = g_state;
        bool tried_at_once = false;
        if (st && st->direct && initial && r->uri && d->keys && d->keys->nelts > 0 &&
            d->keys_all != 1 && d->lease != 1 && d->max_hold_ms <= 0 &&
            (!st->exits_reader || !st->exits_reader->pending())) {
            const KeySpec &k = *reinterpret_cast<const KeySpec *>(d->keys->elts);
            const apr_size_t max_len = max_key_len(server_config(r->server));
            KeyView key;
            bool plain = false;
            if (k.simple) {
                plain = plain_path_key(k.prefix, k.prefix_len, r->uri, max_len, key);
            } else if (k.source == KeySource::Query) {
                std::string scratch;
                plain = key_view_query(r->args, k.name, max_len, scratch, key) == KeyStatus::Ok &&
                        key.data != scratch.data();
            }
            if (plain) {
                const Mode mode = mode_for(d, r);
                if (mode == Mode::None) return DECLINED;
                const int rc = lock_at_once(r, d, st, mode, KeyRef{key.data, key.len});
                if (rc != kNotAtOnce) return rc;
                tried_at_once = true;
            }
        }
        return fixups_general(r, d, tried_at_once);
    } catch (...) {
        return locking_failed(r);
    }
}

// First of the handlers: a sub-request takes its locks now that it runs
// (ap_run_sub_req invokes the handler, a lookup alone never does), and
// declines, or answers why not; ap_run_sub_req passes that status back to
// the module that ran it. Internal redirects of the initial request lock in
// their fixup (they always run).
int subrequest_locks(request_rec *r) {
    if (!r->main) return DECLINED;
    const DirConfig *d = dir_config(r);
    if (d->enabled != 1) return DECLINED;
    try {
        return fixups_general(r, d, false);
    } catch (...) {
        return locking_failed(r);
    }
}

// First of the protocol switches: a request that switches its connection
// to another protocol (an HTTP/1.1 `Upgrade: h2c`, which httpd honours in
// its first handler, after the fixups) is answered by that protocol, as
// stream 1 of the HTTP/2 session on a connection of its own, which takes
// its own locks. The switched request's locks end now: mod_http2 runs the
// session inside this request's handler, so they would last as long as the
// session (the stream, a write, waited for them until its PidLockTimeout).
int protocol_switch(conn_rec *, request_rec *r, server_rec *, const char *) {
    if (!r) return DECLINED;
    // Failed (PIDLOCK105): the request's end tries again.
    if (RequestLocks *rl = locks_of(initial_request(r))) release_and_forget(rl);
    return DECLINED;
}

}  // namespace glue
}  // namespace pidlock
