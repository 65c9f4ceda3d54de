#include "pidlock_checks.h"

#include <cinttypes>
#include <cstdio>

namespace pidlock {

uint64_t auto_table_size(const MpmFacts &m) {
    return static_cast<uint64_t>(m.server_limit > 0 ? m.server_limit : 1) *
           static_cast<uint64_t>(m.thread_limit > 0 ? m.thread_limit : 1);
}

uint64_t max_concurrent_requests(const MpmFacts &m) {
    return static_cast<uint64_t>(m.max_daemons > 0 ? m.max_daemons : 1) *
           static_cast<uint64_t>(m.max_threads > 0 ? m.max_threads : 1);
}

uint64_t effective_table_size(const MpmFacts &m, const ModuleFacts &f) {
    return f.table_size ? f.table_size
                        : auto_table_size(m) * (f.keys_per_request ? f.keys_per_request : 1);
}

std::vector<Finding> check_startup(const MpmFacts &m, const ModuleFacts &f) {
    std::vector<Finding> out;
    char buf[512];
    if (f.thread_backend && (m.name == "prefork" || (m.forked && m.server_limit > 1))) {
        std::snprintf(buf, sizeof buf,
                      "PIDLOCK301: PidLockBackend thread keeps locks inside one process, but the %s "
                      "MPM can run %d child processes (ServerLimit %d): locks would not hold across "
                      "them. Use PidLockBackend shared, or a threaded MPM with ServerLimit 1.",
                      m.name.c_str(), m.server_limit, m.server_limit);
        out.push_back({true, buf});
    }
    const uint64_t need = max_concurrent_requests(m);
    const uint64_t autosz = auto_table_size(m);
    if (f.table_size && f.table_size < need) {
        std::snprintf(buf, sizeof buf,
                      "PIDLOCK302: PidLockTableSize %" PRIu64 " is below the %" PRIu64
                      " requests the %s MPM can run at once (MaxRequestWorkers); raise it, or use "
                      "PidLockTableSize auto (%" PRIu64 " here: ServerLimit %d x ThreadLimit %d).",
                      f.table_size, need, m.name.c_str(), autosz, m.server_limit, m.thread_limit);
        out.push_back({true, buf});
    } else if (f.table_size && f.table_size < autosz) {
        std::snprintf(buf, sizeof buf,
                      "PIDLOCK304: PidLockTableSize %" PRIu64 " is below ServerLimit x ThreadLimit "
                      "(%" PRIu64 "): during a graceful restart old and new children together may "
                      "fill it and get 503. PidLockTableSize auto avoids that.",
                      f.table_size, autosz);
        out.push_back({false, buf});
    }
    if (f.mutex_mech == "posixsem" || f.mutex_mech == "none") {
        std::snprintf(buf, sizeof buf,
                      "PIDLOCK303: Mutex %s for pidlock cannot be relied on across processes (%s); "
                      "use Mutex default, pthread, fcntl, flock or sysvsem for pidlock.",
                      f.mutex_mech.c_str(),
                      f.mutex_mech == "none" ? "it does not lock at all"
                                             : "a holder that dies leaves it locked for good");
        out.push_back({true, buf});
    }
    return out;
}

std::vector<Finding> check_scopes(const std::vector<ServerScopes> &servers) {
    std::vector<Finding> out;
    std::vector<std::string> said;
    auto once = [&](const std::string &tag) {
        for (const std::string &s : said)
            if (s == tag) return false;
        said.push_back(tag);
        return true;
    };
    char buf[512];
    for (const ServerScopes &srv : servers) {
        auto keys_in_reach = [&](const ScopeFacts &on) {
            if (on.has_keys) return true;
            for (const ScopeFacts &sc : srv.scopes) {
                if (!sc.has_keys) continue;
                if (sc.kind.empty()) return true;  // server or virtual host defaults
                if (sc.kind == on.kind && on.path.compare(0, sc.path.size(), sc.path) == 0) return true;
            }
            return false;
        };
        for (const ScopeFacts &sc : srv.scopes) {
            const std::string where = sc.where.empty() ? srv.name : sc.where;
            if (sc.on && !keys_in_reach(sc) && once("305 " + where)) {
                std::snprintf(buf, sizeof buf,
                              "PIDLOCK305: PidLock On at %s, but no PidLockKey is configured for %s: "
                              "requests there pass unlocked. Add PidLockKey path|query|header|form.",
                              where.c_str(), srv.name.c_str());
                out.push_back({false, buf});
            }
            if (sc.timeout_s > srv.httpd_timeout_s && once("306 " + where)) {
                std::snprintf(buf, sizeof buf,
                              "PIDLOCK306: PidLockTimeout %g at %s is longer than httpd's Timeout "
                              "%g for %s: clients may give up before the lock is had. Lower "
                              "PidLockTimeout or raise Timeout.",
                              sc.timeout_s, where.c_str(), srv.httpd_timeout_s, srv.name.c_str());
                out.push_back({false, buf});
            }
            const double backend_s = srv.proxy_timeout_s >= 0 ? srv.proxy_timeout_s : srv.httpd_timeout_s;
            if (sc.max_hold_s > 0 && backend_s < sc.max_hold_s && once("307 " + where)) {
                std::snprintf(buf, sizeof buf,
                              "PIDLOCK307: PidLockMaxHold %g at %s is longer than the backend timeout "
                              "%g (%s) for %s: httpd may answer 504 and release the lock while a backend "
                              "still writes. Raise the backend timeout above PidLockMaxHold, or have the "
                              "application check PidLock-Fence.",
                              sc.max_hold_s, where.c_str(), backend_s,
                              srv.proxy_timeout_s >= 0 ? "ProxyTimeout" : "Timeout", srv.name.c_str());
                out.push_back({false, buf});
            }
        }
    }
    return out;
}

}  // namespace pidlock
