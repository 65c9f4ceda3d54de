// mod_pidlock glue: keys from the request body (PidLockKey form NAME). The
// fixup reads the body only as far as it must to find the fields, before any
// lock is taken; what it read is kept (in memory up to PidLockBodyBuffer,
// the rest in a temporary file removed with the request) and an input filter
// hands it to the handler unchanged, then passes the rest of the body
// through while it watches for a second copy of a key field.
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "mod_pidlock_glue.h"
#include "pidlock_form.h"

#include <apr_buckets.h>
#include <apr_file_io.h>
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

namespace {

const char *const kReplayFilter = "PIDLOCK_BODY";
const char *const kBodyKey = "pidlock-body";
ap_filter_rec_t *g_replay_filter = nullptr;
constexpr apr_size_t kDefaultBodyBuffer = 65536;
constexpr apr_off_t kReadChunk = 65536;

// Lives in the request pool; the scanner is destroyed by a pool cleanup.
struct BodyCtx {
    request_rec *r;
    apr_bucket_brigade *kept;  // what the fixup read, for the handler
    apr_bucket_brigade *tmp;
    FormScanner *scanner;      // watching the rest for a repeated field
    bool eos_seen;             // the fixup read the whole body
    bool failed;               // a repeated field was seen: the body ends in error
};

apr_status_t destroy_scanner(void *data) {
    auto *c = static_cast<BodyCtx *>(data);
    if (c->scanner) c->scanner->~FormScanner();
    c->scanner = nullptr;
    return APR_SUCCESS;
}

// Spools kept memory beyond the buffer into a temporary file (removed when
// it is closed, with the request pool). Returns an APR status.
struct Spool {
    apr_file_t *file = nullptr;
    apr_off_t file_len = 0;
};

apr_status_t spool_bucket(request_rec *r, Spool &sp, apr_bucket_brigade *kept, const char *data,
                          apr_size_t len) {
    apr_status_t rv = APR_SUCCESS;
    if (!sp.file) {
        const char *dir = nullptr;
        rv = apr_temp_dir_get(&dir, r->pool);
        if (rv != APR_SUCCESS) return rv;
        char *tmpl = apr_pstrcat(r->pool, dir, "/pidlock-body-XXXXXX", nullptr);
        rv = apr_file_mktemp(&sp.file, tmpl,
                             APR_FOPEN_CREATE | APR_FOPEN_READ | APR_FOPEN_WRITE | APR_FOPEN_EXCL |
                                 APR_FOPEN_DELONCLOSE | APR_FOPEN_BINARY,
                             r->pool);
        if (rv != APR_SUCCESS) return rv;
    }
    apr_size_t n = len;
    rv = apr_file_write_full(sp.file, data, len, &n);
    if (rv != APR_SUCCESS) return rv;
    // One file bucket per run of spooled bytes, in body order.
    apr_bucket *last = APR_BRIGADE_EMPTY(kept) ? nullptr : APR_BRIGADE_LAST(kept);
    if (last && APR_BUCKET_IS_FILE(last) &&
        static_cast<apr_bucket_file *>(last->data)->fd == sp.file &&
        last->start + static_cast<apr_off_t>(last->length) == sp.file_len) {
        last->length += len;
    } else {
        apr_bucket *b = apr_bucket_file_create(sp.file, sp.file_len, len, r->pool, kept->bucket_alloc);
        APR_BRIGADE_INSERT_TAIL(kept, b);
    }
    sp.file_len += static_cast<apr_off_t>(len);
    return APR_SUCCESS;
}

KeyStatus key_status_of(FieldStatus f) {
    switch (f) {
    case FieldStatus::Found: return KeyStatus::Ok;
    case FieldStatus::Pending:
    case FieldStatus::Absent: return KeyStatus::Absent;
    case FieldStatus::Empty: return KeyStatus::Empty;
    case FieldStatus::Nul: return KeyStatus::Nul;
    case FieldStatus::TooLong: return KeyStatus::TooLong;
    case FieldStatus::Duplicate: return KeyStatus::Repeated;
    case FieldStatus::Malformed: return KeyStatus::Malformed;
    }
    return KeyStatus::Malformed;
}

int refuse_body(request_rec *r, const char *name, KeyStatus st, const char *detail) {
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK121: refusing request: %s (form key %s)%s%s",
                  st == KeyStatus::Malformed ? "malformed form body" : key_status_text(st), name,
                  detail && *detail ? ": " : "", detail ? detail : "");
    return HTTP_BAD_REQUEST;
}

// Hands the kept body to the handler, then the rest of it, watching for a
// repeated key field; one of those ends the body in an error.
apr_status_t replay_filter(ap_filter_t *f, apr_bucket_brigade *bb, ap_input_mode_t mode,
                           apr_read_type_e block, apr_off_t readbytes) {
    auto *c = static_cast<BodyCtx *>(f->ctx);
    if (mode != AP_MODE_READBYTES && mode != AP_MODE_SPECULATIVE && mode != AP_MODE_GETLINE)
        return ap_get_brigade(f->next, bb, mode, block, readbytes);
    if (c->failed) return APR_EGENERAL;
    if (!APR_BRIGADE_EMPTY(c->kept)) {
        // Kept bytes first, up to what was asked.
        apr_bucket *split = nullptr;
        apr_status_t rv = APR_SUCCESS;
        if (mode == AP_MODE_GETLINE) {
            // Rare for bodies: hand over one kept bucket at most.
            apr_bucket *b = APR_BRIGADE_FIRST(c->kept);
            APR_BUCKET_REMOVE(b);
            APR_BRIGADE_INSERT_TAIL(bb, b);
            return APR_SUCCESS;
        }
        rv = apr_brigade_partition(c->kept, readbytes, &split);
        if (rv != APR_SUCCESS && rv != APR_INCOMPLETE) return rv;
        if (mode == AP_MODE_SPECULATIVE) {
            for (apr_bucket *b = APR_BRIGADE_FIRST(c->kept); b != split; b = APR_BUCKET_NEXT(b)) {
                apr_bucket *cp = nullptr;
                rv = apr_bucket_copy(b, &cp);
                if (rv != APR_SUCCESS) return rv;
                APR_BRIGADE_INSERT_TAIL(bb, cp);
            }
            return APR_SUCCESS;
        }
        while (APR_BRIGADE_FIRST(c->kept) != split) {
            apr_bucket *b = APR_BRIGADE_FIRST(c->kept);
            APR_BUCKET_REMOVE(b);
            APR_BRIGADE_INSERT_TAIL(bb, b);
        }
        return APR_SUCCESS;
    }
    if (c->eos_seen || !c->scanner) {
        // Everything was read (and checked) before the handler ran.
        ap_remove_input_filter(f);
        return ap_get_brigade(f->next, bb, mode, block, readbytes);
    }
    const apr_status_t rv = ap_get_brigade(f->next, bb, mode, block, readbytes);
    if (rv != APR_SUCCESS || mode == AP_MODE_SPECULATIVE) return rv;
    for (apr_bucket *b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
        if (APR_BUCKET_IS_EOS(b)) {
            c->scanner->finish();
            destroy_scanner(c);
            break;
        }
        if (APR_BUCKET_IS_METADATA(b)) continue;
        const char *data = nullptr;
        apr_size_t len = 0;
        const apr_status_t brv = apr_bucket_read(b, &data, &len, APR_BLOCK_READ);
        if (brv != APR_SUCCESS) return brv;
        if (!c->scanner->feed(data, len)) {
            // A second copy of a key field: the application may act on it,
            // so it never sees a complete body. Nothing from this bucket on.
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, c->r,
                          "PIDLOCK122: request body refused mid-way: %s", c->scanner->error());
            c->failed = true;
            apr_brigade_cleanup(bb);
            APR_BRIGADE_INSERT_TAIL(bb, ap_bucket_error_create(HTTP_BAD_REQUEST, nullptr, c->r->pool,
                                                               bb->bucket_alloc));
            APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(bb->bucket_alloc));
            destroy_scanner(c);
            return APR_EGENERAL;
        }
    }
    return APR_SUCCESS;
}

// An internal redirect starts with the protocol's input filters only: the
// replay filter goes on its chain again, so its handler gets the kept body.
void body_insert_filter(request_rec *r) {
    if (!r->prev) return;
    void *c = nullptr;
    apr_pool_userdata_get(&c, kBodyKey, r->pool);
    if (!c) return;
    for (ap_filter_t *f = r->input_filters; f; f = f->next)
        if (f->frec == g_replay_filter) return;
    ap_add_input_filter_handle(g_replay_filter, c, r, r->connection);
}

}  // namespace

void register_body_filters() {
    g_replay_filter = ap_register_input_filter(kReplayFilter, replay_filter, nullptr, AP_FTYPE_RESOURCE);
    ap_hook_insert_filter(body_insert_filter, nullptr, nullptr, APR_HOOK_MIDDLE);
}

int form_keys(const DirConfig *d, request_rec *r, apr_size_t max_len, std::vector<std::string> &values) {
    const KeySpec *specs = reinterpret_cast<const KeySpec *>(d->keys->elts);
    std::vector<std::string> names;
    for (int i = 0; i < d->keys->nelts; ++i)
        if (specs[i].source == KeySource::Form) names.emplace_back(specs[i].name);
    values.assign(names.size(), std::string());
    const FormType type = form_type(apr_table_get(r->headers_in, "Content-Type"));
    if (type.kind == FormKind::None) return 0;
    if (type.bad) return refuse_body(r, names[0].c_str(), KeyStatus::Malformed, "multipart without a valid boundary");
    // Read once per request: an internal redirect shares its pool and gets
    // the kept body from the replay filter (see body_insert_filter).
    void *had = nullptr;
    apr_pool_userdata_get(&had, kBodyKey, r->pool);
    if (had || r->kept_body) return 0;
    // No Content-Length or Transfer-Encoding test here: an HTTP/2 request
    // may carry a body with neither, and reading a body that is not there
    // costs one EOS.

    const ServerConfig *sc = server_config(r->server);
    const apr_size_t buffer = sc->body_buffer == kUnset ? kDefaultBodyBuffer : static_cast<apr_size_t>(sc->body_buffer);
    auto *c = static_cast<BodyCtx *>(apr_pcalloc(r->pool, sizeof(BodyCtx)));
    c->r = r;
    c->kept = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    c->tmp = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    c->scanner = new (apr_palloc(r->pool, sizeof(FormScanner))) FormScanner(type, names, max_len);
    apr_pool_cleanup_register(r->pool, c, destroy_scanner, apr_pool_cleanup_null);

    Spool spool;
    apr_size_t in_memory = 0;
    int status = 0;
    bool ok = true;
    while (ok && !c->eos_seen && !c->scanner->decided()) {
        const apr_status_t rv = ap_get_brigade(r->input_filters, c->tmp, AP_MODE_READBYTES, APR_BLOCK_READ, kReadChunk);
        if (rv != APR_SUCCESS) {
            // Read errors (client gone, timeout, LimitRequestBody) carry
            // their own status, as in ap_discard_request_body.
            apr_brigade_cleanup(c->tmp);
            ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, "PIDLOCK123: reading the request body for a form key failed");
            return ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
        }
        while (!APR_BRIGADE_EMPTY(c->tmp)) {
            apr_bucket *b = APR_BRIGADE_FIRST(c->tmp);
            if (APR_BUCKET_IS_EOS(b)) {
                c->eos_seen = true;
                APR_BUCKET_REMOVE(b);
                APR_BRIGADE_INSERT_TAIL(c->kept, b);
                continue;
            }
            if (APR_BUCKET_IS_METADATA(b)) {
                APR_BUCKET_REMOVE(b);
                if (AP_BUCKET_IS_ERROR(b)) {
                    const int st = static_cast<ap_bucket_error *>(b->data)->status;
                    apr_bucket_destroy(b);
                    apr_brigade_cleanup(c->tmp);
                    return st ? st : HTTP_BAD_REQUEST;
                }
                APR_BRIGADE_INSERT_TAIL(c->kept, b);
                continue;
            }
            const char *data = nullptr;
            apr_size_t len = 0;
            apr_status_t brv = apr_bucket_read(b, &data, &len, APR_BLOCK_READ);
            if (brv != APR_SUCCESS) {
                apr_brigade_cleanup(c->tmp);
                ap_log_rerror(APLOG_MARK, APLOG_INFO, brv, r, "PIDLOCK125: a bucket of the request body could not be read while looking for a form key");
                return HTTP_BAD_REQUEST;
            }
            if (ok) ok = c->scanner->feed(data, len);
            APR_BUCKET_REMOVE(b);
            if (in_memory + len <= buffer) {
                brv = apr_bucket_setaside(b, r->pool);
                if (brv == APR_SUCCESS) {
                    APR_BRIGADE_INSERT_TAIL(c->kept, b);
                    in_memory += len;
                    continue;
                }
            }
            brv = spool_bucket(r, spool, c->kept, data, len);
            apr_bucket_destroy(b);
            if (brv != APR_SUCCESS) {
                apr_brigade_cleanup(c->tmp);
                ap_log_rerror(APLOG_MARK, APLOG_ERR, brv, r, "PIDLOCK124: cannot spool the request body to a temporary file");
                return HTTP_INTERNAL_SERVER_ERROR;
            }
        }
    }
    if (ok && c->eos_seen) ok = c->scanner->finish();
    // The handler gets what was read, then the rest.
    ap_add_input_filter_handle(g_replay_filter, c, r, r->connection);
    apr_pool_userdata_setn(c, kBodyKey, nullptr, r->pool);
    for (size_t i = 0; i < names.size(); ++i) {
        const FieldStatus fs = c->scanner->status(i);
        if (fs == FieldStatus::Found) continue;
        const KeyStatus ks = key_status_of(fs);
        if (ks != KeyStatus::Absent) {
            status = refuse_body(r, names[i].c_str(), ks, c->scanner->error());
            break;
        }
    }
    if (!status && !ok) status = refuse_body(r, names[0].c_str(), KeyStatus::Malformed, c->scanner->error());
    if (status) {
        c->failed = true;
        return status;
    }
    for (size_t i = 0; i < names.size(); ++i)
        if (c->scanner->status(i) == FieldStatus::Found) values[i] = c->scanner->value(i);
    if (c->eos_seen) destroy_scanner(c);
    return 0;
}

}  // namespace glue
}  // namespace pidlock
