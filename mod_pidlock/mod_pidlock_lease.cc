// mod_pidlock glue: edit leases. WebDAV LOCK and UNLOCK answered in the
// fixup where PidLockLease On (under the request's write lock, never reaching
// the handler), the check of every write against the key's lease, the lease
// table's region and mutex (retained across graceful restarts), and the
// status page's Release and Steal. The table and the parsers are the core's
// (pidlock_lease.cc).
#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "mod_pidlock_glue.h"
#include "pidlock_lease_pg.h"
#include "pidlock_locks.h"

#include <apr_shm.h>
#include <apr_strings.h>

#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_mutex.h"

#ifdef APLOG_USE_MODULE
APLOG_USE_MODULE(pidlock);
#endif

namespace pidlock {
namespace glue {

namespace {

constexpr apr_off_t kLockBodyMax = 64 * 1024;
constexpr uint32_t kDefaultLeaseTimeout = 1800, kDefaultLeaseMax = 3600, kDefaultLeaseTableSize = 1024;

uint32_t lease_default_s(const DirConfig *d) {
    return d->lease_timeout_s == kUnset ? kDefaultLeaseTimeout : static_cast<uint32_t>(d->lease_timeout_s);
}
uint32_t lease_max_s(const DirConfig *d) {
    return d->lease_max_s == kUnset ? kDefaultLeaseMax : static_cast<uint32_t>(d->lease_max_s);
}

// Some scope of some host has PidLockLease On (the directive marks its
// host, whatever section it sits in).
bool leases_configured(server_rec *s) {
    for (server_rec *vs = s; vs; vs = vs->next)
        if (server_config(vs)->lease_used == 1) return true;
    return false;
}

apr_status_t destroy_pg_store(void *p) {
    static_cast<PgLeaseStore *>(p)->~PgLeaseStore();
    return APR_SUCCESS;
}

std::string shown_key(const std::string &key) {
    std::string o;
    json_string(o, key);
    return o;
}

bool fresh_token(request_rec *r, LeaseToken &t) {
    unsigned char raw[16];
    const apr_status_t rv = apr_generate_random_bytes(raw, sizeof raw);
    if (rv != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r, "PIDLOCK462: no random bytes for a lease token");
        return false;
    }
    t = lease_token_from_random(raw);
    return true;
}

// The If header's submitted tokens: ours (urn:uuid) into `tokens`, any
// other state token sets `foreign`. False (and logged) if it is malformed.
bool if_tokens(request_rec *r, std::vector<LeaseToken> &tokens, bool &foreign) {
    tokens.clear();
    foreign = false;
    const char *h = apr_table_get(r->headers_in, "If");
    if (!h) return true;
    std::vector<IfList> lists;
    if (!parse_if_header(h, lists)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK458: refusing request: malformed If header");
        return false;
    }
    for (const std::string &u : if_submitted_tokens(lists)) {
        LeaseToken t;
        if (lease_token_parse(u, t)) tokens.push_back(t);
        else foreign = true;
    }
    return true;
}

std::string user_of(request_rec *r) { return r->user ? r->user : ""; }

// Writes `body` as the whole answer; the fixup returns DONE, so no handler
// runs.
int answer(request_rec *r, int status, const std::string &body, const char *type) {
    r->status = status;
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (!body.empty()) {
        ap_set_content_type(r, type);
        ap_set_content_length(r, static_cast<apr_off_t>(body.size()));
        if (!r->header_only) ap_rwrite(body.data(), static_cast<int>(body.size()), r);
    } else {
        ap_set_content_length(r, 0);
    }
    return DONE;
}

void retry_after(request_rec *r, int64_t until_us) {
    const int64_t now = wall_clock_us();
    int64_t secs = until_us > now ? (until_us - now + 999999) / 1000000 : 1;
    if (secs < 1) secs = 1;
    apr_table_setn(r->headers_out, "Retry-After", apr_off_t_toa(r->pool, static_cast<apr_off_t>(secs)));
}

// 423 (held, no token), 412 (stale token), 403 (another user's token) with
// the report: never the token or a client address.
int answer_refusal(request_rec *r, LeaseOutcome out, const LeaseView &v, const std::string &key) {
    LeaseView shown = v;
    if (shown.key.empty()) shown.key = key;
    const bool stale = out == LeaseOutcome::Stale;
    int status = HTTP_LOCKED;
    if (stale) status = HTTP_PRECONDITION_FAILED;
    else if (out == LeaseOutcome::Forbidden) status = HTTP_FORBIDDEN;
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  "PIDLOCK%s: %s %s on key %s (lease %s); answering %d",
                  stale ? "455" : out == LeaseOutcome::Forbidden ? "456" : "454", r->method,
                  stale ? "with a token that is not the key's lease"
                        : out == LeaseOutcome::Forbidden ? "with another user's lease token"
                                                         : "without the lease's token",
                  shown_key(key).c_str(), v.id.empty() ? "-" : v.id.c_str(), status);
    if (out == LeaseOutcome::Locked) retry_after(r, v.expires_us);
    if (status == HTTP_FORBIDDEN) return answer(r, status, "This lease belongs to another user.\n", "text/plain; charset=utf-8");
    const int64_t now = wall_clock_us();
    if (stale) {  // a stale token learns nothing of the new holder
        shown = LeaseView();
        shown.key = key;
    }
    if (accepts_json(r)) return answer(r, status, render_lease_refusal_json(shown, now, stale), "application/json");
    return answer(r, status, render_lease_refusal_text(shown, now, stale), "text/plain; charset=utf-8");
}

// The store failed (its mutex, or PostgreSQL out of reach): 503, try again.
int store_failed(request_rec *r) {
    apr_table_setn(r->headers_out, "Retry-After", "5");
    return answer(r, HTTP_SERVICE_UNAVAILABLE, "Edit leases are unavailable for the moment; try again.\n",
                  "text/plain; charset=utf-8");
}

std::string failure_of(const LeaseStore *t) {
    const std::string f = t->failure();
    return f.empty() ? std::string() : ": " + f.substr(0, f.find_last_not_of("\n ") + 1);
}

int answer_full(request_rec *r, const LeaseStore *t) {
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                  "PIDLOCK457: lease table full (%u leases); answering 503. Raise PidLockLeaseTableSize.",
                  t->capacity());
    apr_table_setn(r->headers_out, "Retry-After", "60");
    return answer(r, HTTP_SERVICE_UNAVAILABLE, "The lease table is full; try again later.\n",
                  "text/plain; charset=utf-8");
}

// The LOCK body (bounded, dechunked); false with the status to answer.
bool read_body(request_rec *r, std::string &body, int *status) {
    *status = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK);
    if (*status != OK) return false;
    if (!ap_should_client_block(r)) return true;
    char buf[8192];
    for (;;) {
        const long n = ap_get_client_block(r, buf, sizeof buf);
        if (n == 0) return true;
        if (n < 0) {
            *status = HTTP_BAD_REQUEST;
            return false;
        }
        if (static_cast<apr_off_t>(body.size()) + n > kLockBodyMax) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                          "PIDLOCK459: refusing LOCK: body over %" APR_OFF_T_FMT " bytes", kLockBodyMax);
            *status = HTTP_REQUEST_ENTITY_TOO_LARGE;
            return false;
        }
        body.append(buf, static_cast<size_t>(n));
    }
}

int answer_lock(request_rec *r, const DirConfig *d, LeaseStore *t, const std::string &key) {
    int64_t asked = -1;
    if (const char *h = apr_table_get(r->headers_in, "Timeout")) {
        if (!parse_timeout_header(h, &asked)) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK476: refusing LOCK: malformed Timeout header");
            return HTTP_BAD_REQUEST;
        }
    }
    std::vector<LeaseToken> tokens;
    bool foreign = false;
    if (!if_tokens(r, tokens, foreign)) return HTTP_BAD_REQUEST;
    std::string body;
    int status = OK;
    if (!read_body(r, body, &status)) return status;
    LeaseRequest req;
    LockInfo info;
    if (!parse_lock_info(body, kLeaseOwnerCap, info)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK477: refusing LOCK: body is not acceptable XML (DOCTYPE, entity or broken markup)");
        return HTTP_BAD_REQUEST;
    }
    req.owner = info.owner;
    bool infinity = true;
    if (!parse_lock_depth(apr_table_get(r->headers_in, "Depth"), &infinity)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK480: refusing LOCK: Depth must be 0 or infinity (RFC 4918 9.10.3)");
        return HTTP_BAD_REQUEST;
    }
    // A lease is an exclusive write lock on one resource: a shared lock or
    // another lock type cannot be granted (RFC 4918 9.10.6: 412).
    if (info.shared || info.unknown_scope || info.not_write) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK481: refusing LOCK on key %s: it asks for a %s; leases are exclusive write locks",
                      shown_key(key).c_str(), info.not_write ? "lock type other than write"
                                              : info.shared ? "shared lock" : "lock scope other than exclusive");
        return answer(r, HTTP_PRECONDITION_FAILED,
                      "Only exclusive write locks are granted here (lockscope exclusive, locktype write).\n",
                      "text/plain; charset=utf-8");
    }
    req.user = user_of(r);
    req.client = r->useragent_ip ? r->useragent_ip : "";
    req.timeout_s = lease_timeout_for(asked, lease_default_s(d), lease_max_s(d));
    LeaseToken fresh;
    if (!fresh_token(r, fresh)) return HTTP_INTERNAL_SERVER_ERROR;
    const int64_t now = wall_clock_us();
    LeaseView v;
    // A refresh names a token: only ours can match.
    if (foreign && tokens.empty()) tokens.push_back(LeaseToken());
    const LeaseOutcome out = t->lock(key, tokens, req, fresh, now, &v);
    std::string token_urn;
    switch (out) {
    case LeaseOutcome::Granted:
        token_urn = lease_token_urn(fresh);
        apr_table_setn(r->headers_out, "Lock-Token", apr_pstrcat(r->pool, "<", token_urn.c_str(), ">", nullptr));
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK451: lease %s granted on key %s for %u s, owner %s",
                      v.id.c_str(), shown_key(key).c_str(), v.timeout_s, shown_key(v.owner).c_str());
        break;
    case LeaseOutcome::Renewed:
        for (const LeaseToken &tok : tokens)
            if (lease_token_id(tok) == v.id) token_urn = lease_token_urn(tok);
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, "PIDLOCK452: lease %s on key %s renewed for %u s",
                      v.id.c_str(), shown_key(key).c_str(), v.timeout_s);
        break;
    case LeaseOutcome::Full:
        return answer_full(r, t);
    case LeaseOutcome::Locked:
    case LeaseOutcome::Stale:
    case LeaseOutcome::Forbidden:
        return answer_refusal(r, out, v, key);
    default:
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK450: LOCK on key %s: the lease store failed%s; answering 503",
                      shown_key(key).c_str(), failure_of(t).c_str());
        return store_failed(r);
    }
    apr_table_setn(r->headers_out, "Timeout", apr_psprintf(r->pool, "Second-%u", v.timeout_s));
    if (accepts_json(r)) return answer(r, HTTP_OK, render_lock_json(v, token_urn), "application/json");
    return answer(r, HTTP_OK, render_lock_xml(v, token_urn, ap_escape_uri(r->pool, r->uri)),
                  "application/xml; charset=utf-8");
}

int answer_unlock(request_rec *r, LeaseStore *t, const std::string &key) {
    const char *h = apr_table_get(r->headers_in, "Lock-Token");
    std::string uri;
    if (!h || !parse_lock_token_header(h, uri)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK478: refusing UNLOCK: %s Lock-Token header",
                      h ? "malformed" : "no");
        return HTTP_BAD_REQUEST;
    }
    LeaseToken tok;
    LeaseView v;
    // A token that is not ours matches no lease here.
    const LeaseOutcome out = lease_token_parse(uri, tok)
                                 ? t->unlock(key, tok, user_of(r), wall_clock_us(), &v)
                                 : LeaseOutcome::Mismatch;
    switch (out) {
    case LeaseOutcome::Released:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK453: lease %s on key %s released by UNLOCK",
                      v.id.c_str(), shown_key(key).c_str());
        return answer(r, HTTP_NO_CONTENT, std::string(), nullptr);
    case LeaseOutcome::Mismatch:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK488: UNLOCK on key %s with a token that is not its lease; answering 409",
                      shown_key(key).c_str());
        return answer(r, HTTP_CONFLICT, "That lock token is not this key's lease.\n", "text/plain; charset=utf-8");
    case LeaseOutcome::Forbidden:
        return answer_refusal(r, out, v, key);
    default:
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "PIDLOCK473: UNLOCK on key %s: the lease store failed%s; answering 503",
                      shown_key(key).c_str(), failure_of(t).c_str());
        return store_failed(r);
    }
}

// A write the lease allows: the rest of its If header. Lists whose state
// tokens cannot hold make it false (412); the entity tags of the lists that
// can are handed to the application as If-Match, which it evaluates.
int if_conditions(request_rec *r, const std::vector<std::string> &held) {
    const char *h = apr_table_get(r->headers_in, "If");
    if (!h) return DECLINED;
    std::vector<IfList> lists;
    if (!parse_if_header(h, lists)) return HTTP_BAD_REQUEST;  // if_tokens logged it
    // Submitted URIs in their canonical spelling, as `held` has them.
    for (IfList &l : lists)
        for (IfCondition &c : l.conditions) {
            LeaseToken t;
            if (!c.etag && lease_token_parse(c.value, t)) c.value = lease_token_urn(t);
        }
    const IfEtags e = if_entity_tags(lists, held);
    switch (e.verdict) {
    case IfVerdict::True:
        return DECLINED;
    case IfVerdict::False:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK484: %s: no list of the If header can hold (its state tokens); answering 412",
                      r->method);
        return answer(r, HTTP_PRECONDITION_FAILED, "The If header's conditions do not hold.\n",
                      "text/plain; charset=utf-8");
    case IfVerdict::Unsupported:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK485: refusing %s: the If header has a Not [entity-tag] condition, which the "
                      "application cannot be asked", r->method);
        return HTTP_BAD_REQUEST;
    case IfVerdict::IfMatch:
        break;
    }
    if (apr_table_get(r->headers_in, "If-Match")) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "PIDLOCK486: refusing %s: entity tags both in If and in If-Match", r->method);
        return HTTP_BAD_REQUEST;
    }
    std::string m;
    for (const std::string &t : e.etags) m += (m.empty() ? "" : ", ") + t;
    apr_table_set(r->headers_in, "If-Match", m.c_str());
    return DECLINED;
}

// The keys a write changes, as the lease sees them: COPY reads its source
// and writes its Destination, MOVE writes both (RFC 4918 7.5: a locked
// destination needs the token too). 0 or the status refusing the request.
int written_keys(request_rec *r, const DirConfig *d, const std::vector<std::string> &keys,
                 std::vector<std::string> &written, std::vector<std::string> &read) {
    written.clear();
    read.clear();
    std::vector<std::string> dest;
    if (const int bad = destination_keys(d, r, dest)) return bad;
    if (r->method_number == M_COPY) read = keys;
    else written = keys;
    for (const std::string &k : dest)
        if (std::find(written.begin(), written.end(), k) == written.end()) written.push_back(k);
    return 0;
}

}  // namespace

int lease_gate(request_rec *r, const DirConfig *d, Mode mode, const std::vector<std::string> &keys,
               RequestLocks *rl) {
    if (d->lease != 1 || keys.empty()) return DECLINED;
    try {
        State *st = g_state;
        LeaseStore *t = st ? st->leases : nullptr;
        const bool dav = r->method_number == M_LOCK || r->method_number == M_UNLOCK;
        int rc = DECLINED;
        if (!t) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK474: lease table unavailable; refusing");
            rc = HTTP_INTERNAL_SERVER_ERROR;
        } else if (dav && keys.size() != 1) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "PIDLOCK479: refusing %s: it yields %u keys; a lease is on one",
                          r->method, static_cast<unsigned>(keys.size()));
            rc = HTTP_BAD_REQUEST;
        } else if (r->method_number == M_LOCK) {
            rc = answer_lock(r, d, t, keys[0]);
        } else if (r->method_number == M_UNLOCK) {
            rc = answer_unlock(r, t, keys[0]);
        } else {
            std::vector<LeaseToken> tokens;
            bool foreign = false;
            if (!if_tokens(r, tokens, foreign)) {
                rc = HTTP_BAD_REQUEST;
            } else if (mode != Mode::Write) {
                for (const std::string &k : keys) t->touch(k, tokens, user_of(r), wall_clock_us());
            } else {
                std::vector<std::string> written, read;
                if (const int bad = written_keys(r, d, keys, written, read)) {
                    if (rl) release_locks(rl);
                    return bad;
                }
                for (const std::string &k : read) t->touch(k, tokens, user_of(r), wall_clock_us());
                std::vector<std::string> held;  // the submitted tokens that are a lease's
                // Several keys (MOVE, COPY's Destination): a token is stale
                // only if it is no written key's lease, so a key without a
                // lease passes here and the tokens are judged at the end.
                const bool several = written.size() > 1 && (!tokens.empty() || foreign);
                bool unleased = false;
                for (const std::string &k : written) {
                    LeaseView v;
                    if (several) {
                        const LeaseOutcome bare = t->check_write(k, {}, false, user_of(r), wall_clock_us(), &v);
                        if (bare == LeaseOutcome::Free) {
                            unleased = true;
                            continue;
                        }
                    }
                    const LeaseOutcome out = t->check_write(k, tokens, foreign, user_of(r), wall_clock_us(), &v);
                    if (out == LeaseOutcome::Allowed)
                        for (const LeaseToken &tok : tokens)
                            if (lease_token_id(tok) == v.id) held.push_back(lease_token_urn(tok));
                    if (out == LeaseOutcome::Free || out == LeaseOutcome::Allowed) continue;
                    if (rl) release_locks(rl);
                    if (out == LeaseOutcome::Error) {
                        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                                      "PIDLOCK475: %s on key %s: checking its lease failed in the lease store%s; "
                                      "answering 503", r->method, shown_key(k).c_str(), failure_of(t).c_str());
                        return store_failed(r);
                    }
                    return answer_refusal(r, out, v, k);
                }
                if (unleased && held.empty()) {
                    if (rl) release_locks(rl);
                    return answer_refusal(r, LeaseOutcome::Stale, LeaseView(), written[0]);
                }
                rc = if_conditions(r, held);
                if (rc != DECLINED && rl) release_locks(rl);
                return rc;
            }
        }
        // LOCK and UNLOCK end here: their locks go with the response.
        if (rc != DECLINED && rc != DONE && rl) release_locks(rl);
        return rc;
    } catch (...) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK466: unexpected error in the lease step");
        if (rl) release_locks(rl);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

int lease_precheck(request_rec *r, const DirConfig *d, Mode mode, const std::vector<std::string> &keys) {
    if (d->lease != 1 || mode != Mode::Write || r->method_number == M_LOCK || r->method_number == M_UNLOCK)
        return 0;
    try {
        LeaseStore *t = g_state ? g_state->leases : nullptr;
        std::vector<LeaseToken> tokens;
        bool foreign = false;
        if (!t) return 0;  // the gate after the grant logs and refuses
        if (!if_tokens(r, tokens, foreign)) return HTTP_BAD_REQUEST;
        // A token is judged once it is this writer's turn (and renews then).
        if (!tokens.empty() || foreign || t->used() == 0) return 0;
        std::vector<std::string> written, read;
        if (const int bad = written_keys(r, d, keys, written, read)) return bad;
        for (const std::string &k : written) {
            LeaseView v;
            const LeaseOutcome out = t->check_write(k, tokens, false, user_of(r), wall_clock_us(), &v);
            if (out == LeaseOutcome::Locked) return answer_refusal(r, out, v, k);
        }
        return 0;
    } catch (...) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "PIDLOCK472: unexpected error in the lease step of a write");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
}

int lease_status_action(request_rec *r, const DirConfig *d, State *st, const std::string &action,
                        const std::string &key) {
    LeaseStore *t = st->leases;
    if (!t) return HTTP_NOT_FOUND;
    const int64_t now = wall_clock_us();
    LeaseView old, granted;
    std::string body = "{\"key\": " + shown_key(key);
    const char *asked_by = r->useragent_ip ? r->useragent_ip : "-";
    if (action == "release") {
        const LeaseOutcome out = t->release(key, now, &old);
        if (out == LeaseOutcome::Error) return HTTP_INTERNAL_SERVER_ERROR;
        const bool done = out == LeaseOutcome::Released;
        if (done)
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          "PIDLOCK460: lease %s on key %s released from the status page by client %s, user %s; "
                          "owner was %s, user %s",
                          old.id.c_str(), shown_key(key).c_str(), asked_by, r->user ? r->user : "-",
                          shown_key(old.owner).c_str(), old.user.empty() ? "-" : old.user.c_str());
        body += std::string(", \"released\": ") + (done ? "1" : "0") + "}\n";
        if (accepts_json(r)) return answer(r, HTTP_OK, body, "application/json");
        apr_table_setn(r->headers_out, "Location", r->uri);
        return answer(r, HTTP_SEE_OTHER, body, "application/json");
    }
    // Steal: the old lease ends and the operator's begins in one step.
    LeaseToken fresh;
    if (!fresh_token(r, fresh)) return HTTP_INTERNAL_SERVER_ERROR;
    LeaseRequest req;
    req.owner = std::string("stolen by operator ") + (r->user ? r->user : asked_by);
    req.user = user_of(r);
    req.client = asked_by;
    req.timeout_s = lease_timeout_for(-1, lease_default_s(d), lease_max_s(d));
    bool had = false;
    const LeaseOutcome out = t->steal(key, req, fresh, now, &old, &had, &granted);
    if (out == LeaseOutcome::Full) return answer_full(r, t);
    if (out != LeaseOutcome::Granted) return HTTP_INTERNAL_SERVER_ERROR;
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                  "PIDLOCK461: lease on key %s stolen from the status page by client %s, user %s: "
                  "old lease %s (owner %s, user %s) ended, new lease %s granted",
                  shown_key(key).c_str(), asked_by, r->user ? r->user : "-", had ? old.id.c_str() : "-",
                  had ? shown_key(old.owner).c_str() : "-", had && !old.user.empty() ? old.user.c_str() : "-",
                  granted.id.c_str());
    const std::string urn = lease_token_urn(fresh);
    apr_table_setn(r->headers_out, "Lock-Token", apr_pstrcat(r->pool, "<", urn.c_str(), ">", nullptr));
    apr_table_setn(r->headers_out, "Timeout", apr_psprintf(r->pool, "Second-%u", granted.timeout_s));
    body += std::string(", \"stolen\": ") + (had ? "1" : "0") + ", \"token\": \"" + urn + "\", \"id\": \"" +
            granted.id + "\", \"timeout\": " + std::to_string(granted.timeout_s) + ", \"expires\": \"" +
            iso8601_utc(granted.expires_us) + "\"}\n";
    return answer(r, HTTP_OK, body, "application/json");
}

void lease_status_extra(State *st, int64_t now_us, bool actions, const char *nonce, const char *form_action,
                        StatusExtra &extra) {
    if (!st || !st->leases) return;
    std::vector<LeaseView> leases;
    LeaseCounters c;
    if (!st->leases->snapshot(now_us, leases, c)) return;
    extra.counters = lease_counter_fields(c);
    extra.json_members = ",\n \"leases\": " + render_leases_json(leases);
    extra.html = render_leases_html(leases, now_us, actions, nonce ? nonce : "", form_action ? form_action : "");
    extra.metrics = render_leases_metrics(leases, c);
}

void lease_status_summary(State *st, int64_t now_us, StatusExtra &extra) {
    if (!st || !st->leases) return;
    uint32_t live = 0;
    LeaseCounters c;
    if (!st->leases->summary(now_us, &live, c)) return;
    extra.auto_lines = lease_auto_lines(live, st->leases->capacity(), c);
    extra.mod_status_items.emplace_back(
        "Leases", std::to_string(live) + " of " + std::to_string(st->leases->capacity()) + " held; granted " +
                      std::to_string(c.granted) + ", renewed " + std::to_string(c.renewed) + ", released " +
                      std::to_string(c.released) + ", expired " + std::to_string(c.expired) + ", stolen " +
                      std::to_string(c.stolen) + ", refused " + std::to_string(c.refusals));
}

std::vector<Finding> lease_check_config(server_rec *s) {
    std::vector<Finding> out;
    module *dav = ap_find_linked_module("mod_dav.c");
    if (!dav) return out;
    auto check = [&](const ap_conf_vector_t *v, const char *host) {
        const auto *d = static_cast<const DirConfig *>(ap_get_module_config(v, &pidlock_module));
        if (!d || d->lease != 1) return;
        // mod_dav's per-directory record begins with its provider's name:
        // set by `Dav On` (or a provider), null under `Dav Off`.
        const void *dc = ap_get_module_config(v, dav);
        if (!dc || !*static_cast<const char *const *>(dc)) return;
        out.push_back(Finding{true, std::string("PIDLOCK467: PidLockLease On and Dav On in the same scope (") +
                                        (d->path ? d->path : "server") + ", " + host +
                                        "): mod_dav would evaluate the If header and answer LOCK itself; "
                                        "set PidLockLease Off or Dav Off there"});
    };
    for (server_rec *vs = s; vs; vs = vs->next) {
        const char *host = vs->is_virtual ? "a virtual host" : "the main server";
        check(vs->lookup_defaults, host);
        const auto *core = static_cast<const core_server_config *>(ap_get_core_module_config(vs->module_config));
        for (const apr_array_header_t *arr : {core->sec_dir, core->sec_url}) {
            if (!arr) continue;
            const auto *vecs = reinterpret_cast<ap_conf_vector_t *const *>(arr->elts);
            for (int i = 0; i < arr->nelts; ++i) check(vecs[i], host);
        }
    }
    return out;
}

bool lease_post_config(server_rec *s, apr_pool_t *pconf, State *st, uint32_t key_cap) {
    if (!leases_configured(s)) return true;
    char key[80];
    apr_snprintf(key, sizeof key, "mod_pidlock-lease-v%u-r%" APR_SIZE_T_FMT, LeaseTable::layout_version(),
                 sizeof(LeaseRetained));
    auto *rd = static_cast<LeaseRetained *>(ap_retained_data_get(key));
    if (!rd) rd = static_cast<LeaseRetained *>(ap_retained_data_create(key, sizeof(LeaseRetained)));
    const ServerConfig *sc = server_config(s);
    LeaseParams want;
    want.capacity = sc->lease_table_size == kUnset ? kDefaultLeaseTableSize : static_cast<uint32_t>(sc->lease_table_size);
    want.key_cap = key_cap ? key_cap : static_cast<uint32_t>(kDefaultMaxKey);
    if (rd->shm) {
        if (rd->params.capacity != want.capacity || rd->params.key_cap != want.key_cap)
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                         "PIDLOCK464: the lease table keeps %u leases of keys up to %u bytes until a full stop "
                         "and start (configured now: %u, %u bytes)",
                         rd->params.capacity, rd->params.key_cap, want.capacity, want.key_cap);
    } else {
        apr_pool_t *pglobal = s->process->pool;
        const apr_size_t size = LeaseTable::region_size(want);
        apr_status_t rv = size ? apr_shm_create(&rd->shm, size, nullptr, pglobal) : APR_EINVAL;
        if (rv != APR_SUCCESS) {
            rd->shm = nullptr;
            ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s,
                         "PIDLOCK463: cannot create %" APR_SIZE_T_FMT " bytes of shared memory for the lease table",
                         size);
            return false;
        }
        rv = ap_global_mutex_create(&rd->mutex, nullptr, kMutexType, "lease", s, pglobal, 0);
        if (rv != APR_SUCCESS || !rd->mutex) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, "PIDLOCK468: cannot create the lease table mutex");
            apr_shm_destroy(rd->shm);
            rd->shm = nullptr;
            rd->mutex = nullptr;
            return false;
        }
        if (!LeaseTable::format(apr_shm_baseaddr_get(rd->shm), size, want)) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK469: cannot lay out the lease table");
            return false;
        }
        rd->params = want;
    }
    st->lease_mutex = &rd->mutex;
    st->lease_locks = new (apr_palloc(pconf, sizeof(AprStripeLocks))) AprStripeLocks(&rd->mutex, 1);
    auto *table = new (apr_palloc(pconf, sizeof(LeaseTable))) LeaseTable(apr_shm_baseaddr_get(rd->shm), apr_shm_size_get(rd->shm), rd->params, st->lease_locks);
    if (!table->valid()) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, "PIDLOCK470: the retained lease table is not valid");
        return false;
    }
    st->leases = table;
    // Nothing read from the region here: httpd's parent never trusts it.
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, "PIDLOCK471: lease table ready: %u leases, keys up to %u bytes",
                 table->params().capacity, table->params().key_cap);
    if (sc->cluster_conninfo) {
        // Across hosts: the leases live in PostgreSQL (the host's table
        // keeps the counters); each child connects on first use.
        auto *pg = new (apr_palloc(pconf, sizeof(PgLeaseStore)))
            PgLeaseStore(sc->cluster_conninfo, want.capacity, want.key_cap, table);
        apr_pool_cleanup_register(pconf, pg, destroy_pg_store, apr_pool_cleanup_null);
        st->leases = pg;
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     "PIDLOCK487: leases kept in PostgreSQL (table pidlock_leases), at most %u across the cluster",
                     want.capacity);
    }
    return true;
}

void lease_child_init(apr_pool_t *p, server_rec *s) {
    if (!g_state || !g_state->lease_mutex || !*g_state->lease_mutex) return;
    apr_global_mutex_t **m = g_state->lease_mutex;
    const apr_status_t rv = apr_global_mutex_child_init(m, apr_global_mutex_lockfile(*m), p);
    if (rv != APR_SUCCESS)
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "PIDLOCK465: cannot attach to the lease table mutex in child");
}

}  // namespace glue
}  // namespace pidlock
