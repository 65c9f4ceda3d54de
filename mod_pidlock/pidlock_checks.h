// Startup checks: a pure function from what the MPM says about itself and how
// the module is configured to the findings that refuse or warn. The glue logs
// them in check_config, so `apache2 -t` runs them and a bad graceful restart
// leaves the running server alone.
#ifndef PIDLOCK_CHECKS_H
#define PIDLOCK_CHECKS_H

#include <cstdint>
#include <string>
#include <vector>

namespace pidlock {

struct MpmFacts {
    std::string name;       // "prefork", "worker", "event", ...
    bool forked = true;     // runs child processes
    int server_limit = 1;   // ServerLimit (hard limit of processes)
    int thread_limit = 1;   // ThreadLimit (hard limit of threads per process)
    int max_daemons = 1;    // most processes at once (MaxRequestWorkers / ThreadsPerChild)
    int max_threads = 1;    // ThreadsPerChild
};

struct ModuleFacts {
    uint64_t table_size = 0;  // 0: auto
    bool thread_backend = false;
    std::string mutex_mech;   // "default", "pthread", "fcntl", "posixsem", "none", ...
    uint32_t key_cap = 1024;  // largest PidLockMaxKeyLength of any server
    // Most keys one request may hold (PidLockKeys all: its sources; plus
    // the keys internal redirects may add): auto sizes count every one.
    uint32_t keys_per_request = 1;
};

struct Finding {
    bool refuse;
    std::string message;  // starts with its message id
};

// The scoreboard's size: every request old- and new-generation children can
// have in flight, which is what `PidLockTableSize auto` gives.
uint64_t auto_table_size(const MpmFacts &m);
// Most requests the MPM serves at once (MaxRequestWorkers).
uint64_t max_concurrent_requests(const MpmFacts &m);
uint64_t effective_table_size(const MpmFacts &m, const ModuleFacts &f);

std::vector<Finding> check_startup(const MpmFacts &m, const ModuleFacts &f);

// One configuration scope (server defaults, <Location>, <Directory>, ...).
struct ScopeFacts {
    std::string where;       // "file:line" of its PidLock line, or ""
    std::string kind;        // "" (server defaults), "<Location", "<Directory", ...
    std::string path;        // the section's path
    bool on = false;         // PidLock On set here
    bool has_keys = false;   // PidLockKey lines here
    double timeout_s = -1;   // PidLockTimeout set here, or < 0
    double max_hold_s = -1;  // PidLockMaxHold set here (0: no limit), or < 0
};

// The scopes one virtual host (or the main server) sees, its own and those it
// inherits, and its httpd Timeout.
struct ServerScopes {
    std::string name;
    double httpd_timeout_s = 60;
    double proxy_timeout_s = -1;  // ProxyTimeout where mod_proxy sets one, or < 0
    std::vector<ScopeFacts> scopes;
};

// Legal but risky: PidLock On with no PidLockKey in reach (PIDLOCK305: none
// in the scope, the server defaults, or an enclosing section of the same kind
// by path prefix; regex sections are not followed), a
// PidLockTimeout longer than httpd's Timeout (PIDLOCK306), a backend timeout
// (ProxyTimeout, else Timeout) below a PidLockMaxHold (PIDLOCK307: httpd may
// answer 504 and release the lock while the backend still writes). Each scope is
// reported once, however many hosts inherit it.
std::vector<Finding> check_scopes(const std::vector<ServerScopes> &servers);

}  // namespace pidlock

#endif
