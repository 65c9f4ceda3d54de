// mod_pidlock glue: the status page (HTML, ?json, ?auto, ?metrics), lock
// breaking from it, and the section in mod_status's server-status. The
// rendering itself is the core's (pidlock_render.cc).
#include <cstring>
#include <string>

#include "mod_pidlock_glue.h"

#include <apr_lib.h>
#include <apr_strings.h>

#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "mod_status.h"
#include "util_script.h"

#ifdef APLOG_USE_MODULE
APLOG_USE_MODULE(pidlock);
#endif

namespace pidlock {
namespace glue {

const char *const kStatusHandler = "pidlock-status";

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
    if ((action == "release" || action == "steal") && have_key && !key.empty())
        return lease_status_action(r, d, st, action, key);
    if (action != "break" || !have_key || key.empty()) return HTTP_BAD_REQUEST;
    const int n = st->backend->break_key(KeyRef{key.data(), key.size()});
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

int status_handler(request_rec *r) {
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
        // The table as it is once the exits the parent reported are
        // reaped: no lock of a child known gone (its keys may get no other
        // request that would reap them).
        reap_reported_exits(r, st);
        TableSnapshot snap;
        int err = 0;
        if (!st->backend->snapshot(snap, &err)) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, err, r, "PIDLOCK108: cannot read the lock table");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        apr_table_setn(r->headers_out, "Cache-Control", "no-store");
        std::string body;
        const int64_t now = wall_clock_us();
        const bool show_query = d->status_query == 1;
        StatusExtra extra;  // ?auto: the lease summary alone
        const bool text = has_arg(r->args, "auto") && !has_arg(r->args, "json");
        if (text) lease_status_summary(st, now, extra);
        else lease_status_extra(st, now, d->status_actions == 1, st->nonce, r->uri, extra);
        if (has_arg(r->args, "json")) {
            ap_set_content_type(r, "application/json");
            body = render_status_json(snap, *st->facts, now, show_query, &extra);
        } else if (has_arg(r->args, "auto")) {
            ap_set_content_type(r, "text/plain; charset=utf-8");
            body = render_status_auto(snap, *st->facts, "", &extra);
        } else if (has_arg(r->args, "metrics")) {
            ap_set_content_type(r, "text/plain; version=0.0.4; charset=utf-8");
            body = render_status_metrics(snap, *st->facts, &extra);
        } else {
            PageOptions opt;
            opt.actions = d->status_actions == 1;
            if (opt.actions) opt.nonce = st->nonce;
            opt.form_action = r->uri;
            opt.show_query = show_query;
            opt.extra = &extra;
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
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK205: unexpected error in the status page");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

// A section in mod_status's server-status page (and PidLock... lines in
// its ?auto), when mod_status is loaded.
int mod_status_hook(request_rec *r, int flags) {
    State *st = g_state;
    if (!st || !st->backend) return OK;
    try {
        reap_reported_exits(r, st);
        TableSnapshot snap;
        if (!st->backend->snapshot(snap, nullptr)) return OK;
        StatusExtra extra;
        lease_status_summary(st, wall_clock_us(), extra);
        if (flags & AP_STATUS_SHORT) {
            ap_rputs(render_status_auto(snap, *st->facts, "PidLock", &extra).c_str(), r);
            return OK;
        }
        const std::string o = render_mod_status_section(snap, *st->facts, 50, &extra);
        ap_rputs(o.c_str(), r);
    } catch (...) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK206: unexpected error in the mod_status section");
    }
    return OK;
}
}  // namespace glue
}  // namespace pidlock
