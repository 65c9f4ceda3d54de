#include "pidlock_lease_pg.h"

#include <cstdlib>
#include <utility>

#include <libpq-fe.h>

#include "pidlock_render.h"  // hex_bytes

namespace pidlock {

const char *const kLeaseTableSql =
    "CREATE TABLE IF NOT EXISTS pidlock_leases ("
    " key_hash bigint NOT NULL, key bytea NOT NULL, token_hash bytea NOT NULL, id text NOT NULL,"
    " owner text NOT NULL, usr text NOT NULL, client text NOT NULL, timeout_s integer NOT NULL,"
    " granted_us bigint NOT NULL, idle_us bigint NOT NULL, expires_us bigint NOT NULL,"
    " PRIMARY KEY (key_hash, key))";

namespace {

// $1 is always the key, as hex.
#define KEY_MATCH                                                                                    \
    "key_hash = ('x' || encode(substr(sha256(decode($1, 'hex')), 1, 8), 'hex'))::bit(64)::bigint " \
    "AND key = decode($1, 'hex')"
#define COLS "id, owner, usr, client, timeout_s, granted_us, idle_us, expires_us"
// The SHA-256 of each token of a text[] parameter.
#define TOKEN_IN(n) "token_hash IN (SELECT sha256(convert_to(t, 'UTF8')) FROM unnest(" n "::text[]) t)"

std::string unhex(const char *s) {
    std::string o;
    if (s[0] == '\\' && s[1] == 'x') s += 2;
    for (; s[0] && s[1]; s += 2) {
        auto v = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
        o.push_back(static_cast<char>(v(s[0]) * 16 + v(s[1])));
    }
    return o;
}

// A text[] literal of token URNs (only hex digits, '-' and ':' in them).
std::string token_array(const std::vector<LeaseToken> &tokens) {
    std::string o = "{";
    for (size_t i = 0; i < tokens.size(); ++i) o += (i ? "," : "") + lease_token_urn(tokens[i]);
    return o + "}";
}

}  // namespace

struct PgLeaseStore::Rows {
    std::vector<std::vector<std::string>> rows;
};

PgLeaseStore::PgLeaseStore(std::string conninfo, uint32_t capacity, uint32_t key_cap, LeaseTable *host)
    : conninfo_(std::move(conninfo)), capacity_(capacity), key_cap_(key_cap), host_(host) {}

PgLeaseStore::~PgLeaseStore() {
    if (conn_) PQfinish(conn_);
}

std::string PgLeaseStore::failure() const {
    std::lock_guard<std::mutex> g(mu_);
    return error_;
}

bool PgLeaseStore::ready() {
    if (conn_ && PQstatus(conn_) == CONNECTION_OK) return true;
    if (conn_) PQfinish(conn_);
    const char *keys[] = {"dbname", "connect_timeout", "application_name", nullptr};
    const char *vals[] = {conninfo_.c_str(), "5", "mod_pidlock leases", nullptr};
    conn_ = PQconnectdbParams(keys, vals, 1);
    if (!conn_ || PQstatus(conn_) != CONNECTION_OK) {
        error_ = conn_ ? PQerrorMessage(conn_) : "out of memory";
        if (conn_) PQfinish(conn_);
        conn_ = nullptr;
        return false;
    }
    PQsetNoticeProcessor(conn_, [](void *, const char *) {}, nullptr);  // "already exists, skipping"
    // Many children may create the table at once: a lost race is fine if
    // the table is there afterwards.
    PGresult *res = PQexec(conn_, kLeaseTableSql);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok) {
        res = PQexec(conn_, "SELECT 1 FROM pidlock_leases LIMIT 0");
        ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        if (!ok) error_ = PQerrorMessage(conn_);
        PQclear(res);
    }
    if (!ok) {
        PQfinish(conn_);
        conn_ = nullptr;
    }
    return ok;
}

bool PgLeaseStore::exec(const char *sql, const std::vector<std::string> &params, Rows &out) {
    out.rows.clear();
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (!ready()) return false;
        std::vector<const char *> p;
        for (const std::string &s : params) p.push_back(s.c_str());
        PGresult *res = PQexecParams(conn_, sql, static_cast<int>(p.size()), nullptr, p.data(), nullptr,
                                     nullptr, 0);
        const ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
            for (int r = 0; r < PQntuples(res); ++r) {
                out.rows.emplace_back();
                for (int c = 0; c < PQnfields(res); ++c)
                    out.rows.back().push_back(PQgetisnull(res, r, c) ? std::string() : PQgetvalue(res, r, c));
            }
            PQclear(res);
            return true;
        }
        error_ = PQerrorMessage(conn_);
        PQclear(res);
        // A session that ended (server restart): once more on a new one.
        if (PQstatus(conn_) == CONNECTION_OK) return false;
    }
    return false;
}

bool PgLeaseStore::exec_adding(const char *sql, const std::vector<std::string> &params, Rows &out) {
    // Statement-level snapshots: without the lock, two grants on different
    // keys at once both count the leases before either adds its own, and
    // both get in past the capacity. The two-int lock space is apart from
    // the bigint one of the cluster tier's key locks and SQL jobs (1885955180
    // is 'pidl').
    Rows none;
    if (!exec("BEGIN", {}, none)) return false;
    if (exec("SELECT pg_advisory_xact_lock(1885955180, 1)", {}, none) && exec(sql, params, out) &&
        exec("COMMIT", {}, none))
        return true;
    const std::string why = error_;
    exec("ROLLBACK", {}, none);
    error_ = why;
    return false;
}

namespace {

void view_from(const std::vector<std::string> &row, size_t at, const std::string &key, LeaseView *v) {
    if (!v || row.size() < at + 8) return;
    v->key = key;
    v->id = row[at];
    v->owner = row[at + 1];
    v->user = row[at + 2];
    v->client = row[at + 3];
    v->timeout_s = static_cast<uint32_t>(std::strtoul(row[at + 4].c_str(), nullptr, 10));
    v->granted_us = std::strtoll(row[at + 5].c_str(), nullptr, 10);
    v->idle_since_us = std::strtoll(row[at + 6].c_str(), nullptr, 10);
    v->expires_us = std::strtoll(row[at + 7].c_str(), nullptr, 10);
}

}  // namespace

void PgLeaseStore::count(LeaseCounters delta) {
    if (host_) host_->add_counts(delta);
}

bool PgLeaseStore::sweep(const std::string *key, int64_t now_us, LeaseCounters *c) {
    Rows r;
    // One host's DELETE gets each row: each expiry is counted once.
    const bool ok = key ? exec("DELETE FROM pidlock_leases WHERE " KEY_MATCH " AND expires_us <= $2 RETURNING 1",
                               {hex_bytes(*key), std::to_string(now_us)}, r)
                        : exec("DELETE FROM pidlock_leases WHERE expires_us <= $1 RETURNING 1",
                               {std::to_string(now_us)}, r);
    if (!ok) return false;
    LeaseCounters d;
    d.expired = r.rows.size();
    if (d.expired) count(d);
    if (c) c->expired += d.expired;
    return true;
}

uint32_t PgLeaseStore::used() const {
    auto *self = const_cast<PgLeaseStore *>(this);
    std::lock_guard<std::mutex> g(mu_);
    Rows r;
    // Unknown: "some", so the caller checks each write.
    if (!self->exec("SELECT count(*) FROM pidlock_leases WHERE expires_us > $1",
                    {std::to_string(wall_clock_us())}, r) ||
        r.rows.empty())
        return 1;
    return static_cast<uint32_t>(std::strtoul(r.rows[0][0].c_str(), nullptr, 10));
}

bool PgLeaseStore::current(const std::string &key, const std::vector<LeaseToken> &tokens, int64_t now_us,
                           bool *found, bool *match, LeaseView *view) {
    Rows r;
    if (!exec("SELECT " TOKEN_IN("$3") ", " COLS " FROM pidlock_leases WHERE " KEY_MATCH " AND expires_us > $2",
              {hex_bytes(key), std::to_string(now_us), token_array(tokens)}, r))
        return false;
    *found = !r.rows.empty();
    *match = *found && r.rows[0][0] == "t";
    if (*found) view_from(r.rows[0], 1, key, view);
    return true;
}

bool PgLeaseStore::renew_with(const std::string &key, const std::vector<LeaseToken> &tokens,
                              const std::string &user, uint32_t timeout_s, int64_t now_us, LeaseView *view,
                              bool *renewed) {
    Rows r;
    if (!exec("UPDATE pidlock_leases SET idle_us = $2,"
              " timeout_s = CASE WHEN $4::integer > 0 THEN $4::integer ELSE timeout_s END,"
              " expires_us = $2 + (CASE WHEN $4::integer > 0 THEN $4::integer ELSE timeout_s END)::bigint * 1000000"
              " WHERE " KEY_MATCH " AND expires_us > $2 AND " TOKEN_IN("$3") " AND (usr = '' OR usr = $5)"
              " RETURNING " COLS,
              {hex_bytes(key), std::to_string(now_us), token_array(tokens), std::to_string(timeout_s), user}, r))
        return false;
    *renewed = !r.rows.empty();
    if (*renewed) view_from(r.rows[0], 0, key, view);
    return true;
}

LeaseOutcome PgLeaseStore::lock(const std::string &key, const std::vector<LeaseToken> &tokens,
                                const LeaseRequest &req, const LeaseToken &fresh, int64_t now_us,
                                LeaseView *view) {
    if (key.empty() || key.size() > key_cap_) return LeaseOutcome::Error;
    std::lock_guard<std::mutex> g(mu_);
    LeaseCounters d;
    bool found = false, match = false;
    if (!tokens.empty()) {
        bool renewed = false;
        if (!renew_with(key, tokens, req.user, req.timeout_s, now_us, view, &renewed)) return LeaseOutcome::Error;
        if (renewed) {
            d.renewed = 1;
            count(d);
            return LeaseOutcome::Renewed;
        }
        if (!current(key, tokens, now_us, &found, &match, view)) return LeaseOutcome::Error;
        d.refusals = 1;
        count(d);
        return found && match ? LeaseOutcome::Forbidden : LeaseOutcome::Stale;
    }
    // A new lease, if the key has none alive and the cluster holds fewer
    // than `capacity`. An expired one goes first, counted; the INSERT also
    // replaces one that expired since.
    if (!sweep(&key, now_us)) return LeaseOutcome::Error;
    Rows r;
    if (!exec_adding("INSERT INTO pidlock_leases AS l (key_hash, key, token_hash, " COLS ")"
              " SELECT ('x' || encode(substr(sha256(decode($1, 'hex')), 1, 8), 'hex'))::bit(64)::bigint,"
              " decode($1, 'hex'), sha256(convert_to($3, 'UTF8')), $4, $5, $6, $7, $8::integer, $2::bigint,"
              " $2::bigint, $2::bigint + $8::bigint * 1000000"
              " WHERE (SELECT count(*) FROM pidlock_leases WHERE expires_us > $2::bigint) < $9::bigint"
              " ON CONFLICT (key_hash, key) DO UPDATE SET token_hash = EXCLUDED.token_hash, id = EXCLUDED.id,"
              " owner = EXCLUDED.owner, usr = EXCLUDED.usr, client = EXCLUDED.client,"
              " timeout_s = EXCLUDED.timeout_s, granted_us = EXCLUDED.granted_us, idle_us = EXCLUDED.idle_us,"
              " expires_us = EXCLUDED.expires_us WHERE l.expires_us <= $2::bigint"
              " RETURNING " COLS,
              {hex_bytes(key), std::to_string(now_us), lease_token_urn(fresh), lease_token_id(fresh), req.owner, req.user,
               req.client, std::to_string(req.timeout_s), std::to_string(capacity_)},
              r))
        return LeaseOutcome::Error;
    if (!r.rows.empty()) {
        view_from(r.rows[0], 0, key, view);
        d.granted = 1;
        count(d);
        return LeaseOutcome::Granted;
    }
    if (!current(key, {}, now_us, &found, &match, view)) return LeaseOutcome::Error;
    if (!found) return LeaseOutcome::Full;
    d.refusals = 1;
    count(d);
    return LeaseOutcome::Locked;
}

LeaseOutcome PgLeaseStore::unlock(const std::string &key, const LeaseToken &token, const std::string &user,
                                  int64_t now_us, LeaseView *view) {
    if (key.empty() || key.size() > key_cap_) return LeaseOutcome::Mismatch;
    std::lock_guard<std::mutex> g(mu_);
    Rows r;
    if (!exec("DELETE FROM pidlock_leases WHERE " KEY_MATCH " AND expires_us > $2 AND " TOKEN_IN("$3")
              " AND (usr = '' OR usr = $4) RETURNING " COLS,
              {hex_bytes(key), std::to_string(now_us), token_array({token}), user}, r))
        return LeaseOutcome::Error;
    if (!r.rows.empty()) {
        view_from(r.rows[0], 0, key, view);
        LeaseCounters d;
        d.released = 1;
        count(d);
        return LeaseOutcome::Released;
    }
    bool found = false, match = false;
    if (!current(key, {token}, now_us, &found, &match, view)) return LeaseOutcome::Error;
    return found && match ? LeaseOutcome::Forbidden : LeaseOutcome::Mismatch;
}

LeaseOutcome PgLeaseStore::check_write(const std::string &key, const std::vector<LeaseToken> &tokens,
                                       bool foreign_tokens, const std::string &user, int64_t now_us,
                                       LeaseView *view) {
    const bool carries = !tokens.empty() || foreign_tokens;
    if (key.size() > key_cap_) return carries ? LeaseOutcome::Stale : LeaseOutcome::Free;
    std::lock_guard<std::mutex> g(mu_);
    LeaseCounters d;
    if (!tokens.empty()) {
        bool renewed = false;
        if (!renew_with(key, tokens, user, 0, now_us, view, &renewed)) return LeaseOutcome::Error;
        if (renewed) {
            d.renewed = 1;
            count(d);
            return LeaseOutcome::Allowed;
        }
    }
    bool found = false, match = false;
    if (!current(key, tokens, now_us, &found, &match, view)) return LeaseOutcome::Error;
    LeaseOutcome out;
    if (!found) out = carries ? LeaseOutcome::Stale : LeaseOutcome::Free;
    else if (!carries) out = LeaseOutcome::Locked;
    else out = match ? LeaseOutcome::Forbidden : LeaseOutcome::Stale;
    if (out != LeaseOutcome::Free) {
        d.refusals = 1;
        count(d);
    }
    return out;
}

void PgLeaseStore::touch(const std::string &key, const std::vector<LeaseToken> &tokens, const std::string &user,
                         int64_t now_us) {
    if (tokens.empty() || key.size() > key_cap_) return;
    std::lock_guard<std::mutex> g(mu_);
    bool renewed = false;
    if (renew_with(key, tokens, user, 0, now_us, nullptr, &renewed) && renewed) {
        LeaseCounters d;
        d.renewed = 1;
        count(d);
    }
}

LeaseOutcome PgLeaseStore::release(const std::string &key, int64_t now_us, LeaseView *old) {
    std::lock_guard<std::mutex> g(mu_);
    Rows r;
    if (!exec("DELETE FROM pidlock_leases WHERE " KEY_MATCH " AND expires_us > $2 RETURNING " COLS,
              {hex_bytes(key), std::to_string(now_us)}, r))
        return LeaseOutcome::Error;
    if (r.rows.empty()) return LeaseOutcome::NotHeld;
    view_from(r.rows[0], 0, key, old);
    LeaseCounters d;
    d.released = 1;
    count(d);
    return LeaseOutcome::Released;
}

LeaseOutcome PgLeaseStore::steal(const std::string &key, const LeaseRequest &req, const LeaseToken &fresh,
                                 int64_t now_us, LeaseView *old, bool *had_old, LeaseView *now_view) {
    if (key.empty() || key.size() > key_cap_) return LeaseOutcome::Error;
    std::lock_guard<std::mutex> g(mu_);
    if (!sweep(&key, now_us)) return LeaseOutcome::Error;
    Rows r;
    // One statement: the old lease ends and the new one begins (`old` is
    // the statement's snapshot, before `ins`; two steals at once both end
    // in one lease, the later one's). A key without a lease gets one only
    // if the cluster holds fewer than `capacity`, as a LOCK would.
    if (!exec_adding("WITH old AS (SELECT " COLS " FROM pidlock_leases WHERE " KEY_MATCH " AND expires_us > $2::bigint"
              "), ins AS (INSERT INTO pidlock_leases AS l (key_hash, key, token_hash, " COLS ")"
              " SELECT ('x' || encode(substr(sha256(decode($1, 'hex')), 1, 8), 'hex'))::bit(64)::bigint,"
              " decode($1, 'hex'), sha256(convert_to($3, 'UTF8')), $4, $5, $6, $7, $8::integer, $2::bigint,"
              " $2::bigint, $2::bigint + $8::bigint * 1000000"
              " WHERE EXISTS (SELECT 1 FROM old)"
              " OR (SELECT count(*) FROM pidlock_leases WHERE expires_us > $2::bigint) < $9::bigint"
              " ON CONFLICT (key_hash, key) DO UPDATE SET token_hash = EXCLUDED.token_hash, id = EXCLUDED.id,"
              " owner = EXCLUDED.owner, usr = EXCLUDED.usr, client = EXCLUDED.client,"
              " timeout_s = EXCLUDED.timeout_s, granted_us = EXCLUDED.granted_us, idle_us = EXCLUDED.idle_us,"
              " expires_us = EXCLUDED.expires_us RETURNING " COLS ")"
              " SELECT ins.*, old.* FROM ins LEFT JOIN old ON true",
              {hex_bytes(key), std::to_string(now_us), lease_token_urn(fresh), lease_token_id(fresh), req.owner, req.user,
               req.client, std::to_string(req.timeout_s), std::to_string(capacity_)},
              r))
        return LeaseOutcome::Error;
    if (r.rows.empty()) return LeaseOutcome::Full;
    view_from(r.rows[0], 0, key, now_view);
    *had_old = !r.rows[0][8].empty();
    if (*had_old) view_from(r.rows[0], 8, key, old);
    LeaseCounters d;
    d.granted = 1;
    d.stolen = *had_old ? 1 : 0;
    count(d);
    return LeaseOutcome::Granted;
}

bool PgLeaseStore::snapshot(int64_t now_us, std::vector<LeaseView> &out, LeaseCounters &c) {
    out.clear();
    uint32_t live_host = 0;
    if (host_ && !host_->summary(now_us, &live_host, c)) return false;
    std::lock_guard<std::mutex> g(mu_);
    // Expired rows go first, counted, as in summary().
    if (!sweep(nullptr, now_us, &c)) return false;
    Rows r;
    if (!exec("SELECT encode(key, 'hex'), " COLS " FROM pidlock_leases WHERE expires_us > $1 ORDER BY granted_us",
              {std::to_string(now_us)}, r))
        return false;
    for (const auto &row : r.rows) {
        out.emplace_back();
        view_from(row, 1, unhex(row[0].c_str()), &out.back());
    }
    return true;
}

bool PgLeaseStore::summary(int64_t now_us, uint32_t *live, LeaseCounters &c) {
    uint32_t live_host = 0;
    if (host_ && !host_->summary(now_us, &live_host, c)) return false;
    std::lock_guard<std::mutex> g(mu_);
    Rows r;
    // Expired rows go here too (the cluster's sweep), counted by this host.
    if (!exec("WITH gone AS (DELETE FROM pidlock_leases WHERE expires_us <= $1 RETURNING 1)"
              " SELECT (SELECT count(*) FROM pidlock_leases WHERE expires_us > $1), (SELECT count(*) FROM gone)",
              {std::to_string(now_us)}, r) ||
        r.rows.empty())
        return false;
    *live = static_cast<uint32_t>(std::strtoul(r.rows[0][0].c_str(), nullptr, 10));
    LeaseCounters d;
    d.expired = std::strtoull(r.rows[0][1].c_str(), nullptr, 10);
    if (d.expired) {
        count(d);
        c.expired += d.expired;
    }
    return true;
}

}  // namespace pidlock
