// mod_pidlock glue: PidLockMaxHold. A request that holds its locks longer
// than its scope allows (a slow upload, a slow reader behind a proxy) has its
// client connection shut down and its locks released by a watchdog thread,
// one per child process, started with the first watched request. The
// request's own end and the watchdog race for the release under one mutex.
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "mod_pidlock_glue.h"

#include <apr_network_io.h>
#include <apr_portable.h>
#include <apr_strings.h>

#include "http_connection.h"
#include "http_core.h"
#include "http_log.h"

#ifdef APLOG_USE_MODULE
APLOG_USE_MODULE(pidlock);
#endif

namespace pidlock {
namespace glue {

namespace {

struct Watchdog {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<RequestLocks *> watched;
    bool started = false;
    server_rec *server = nullptr;
};

// Process-wide and never destroyed: it must outlive every request of the
// child, and a child's exit does not wait for it.
Watchdog &dog() {
    static Watchdog *w = new Watchdog();
    return *w;
}

void run_watchdog() {
    Watchdog &w = dog();
    std::unique_lock<std::mutex> lk(w.mu);
    for (;;) {
        const int64_t now = monotonic_ns();
        int64_t next = INT64_MAX;
        for (size_t i = 0; i < w.watched.size();) {
            RequestLocks *rl = w.watched[i];
            if (rl->hold_deadline_ns <= now) {
                // Shut the client connection (the handler's next read or
                // write fails and the request ends) and let others in now.
                if (rl->sock >= 0) shutdown(rl->sock, SHUT_RDWR);
                release_locks_now(rl);
                rl->watched = false;
                ap_log_error(APLOG_MARK, APLOG_WARNING, 0, w.server,
                             "PIDLOCK130: request held the lock on key %s longer than PidLockMaxHold: "
                             "connection aborted, locks released", rl->key_shown);
                w.watched[i] = w.watched.back();
                w.watched.pop_back();
                continue;
            }
            next = std::min(next, rl->hold_deadline_ns);
            ++i;
        }
        if (next == INT64_MAX) {
            w.cv.wait(lk);
        } else {
            w.cv.wait_for(lk, std::chrono::nanoseconds(next - now));
        }
    }
}

}  // namespace

int connection_fd(conn_rec *c) {
    // An HTTP/2 stream's connection is a secondary one: the socket is its
    // master's, and aborting means aborting that connection.
    while (c->master) c = c->master;
    apr_socket_t *s = ap_get_conn_socket(c);
    apr_os_sock_t fd = -1;
    if (!s || apr_os_sock_get(&fd, s) != APR_SUCCESS) return -1;
    return fd;
}

bool client_aborted(void *conn) {
    const conn_rec *c = static_cast<const conn_rec *>(conn);
    return c->aborted || (c->master && c->master->aborted);
}

void hold_watch(RequestLocks *rl, request_rec *r, apr_int64_t max_hold_ms) {
    Watchdog &w = dog();
    std::string shown;
    if (rl->nheld) json_string(shown, std::string(rl->held[0].data, std::min<size_t>(rl->held[0].len, 64)));
    else json_string(shown, std::string());
    apr_cpystrn(rl->key_shown, shown.c_str(), sizeof rl->key_shown);
    rl->sock = connection_fd(r->connection);
    rl->hold_deadline_ns = monotonic_ns() + static_cast<int64_t>(max_hold_ms) * 1000000;
    std::lock_guard<std::mutex> lk(w.mu);
    if (!w.started) {
        try {
            w.server = r->server;
            std::thread(run_watchdog).detach();
            w.started = true;
        } catch (...) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          "PIDLOCK131: cannot start the PidLockMaxHold watchdog; this request is not limited");
            return;
        }
    }
    w.watched.push_back(rl);
    rl->watched = true;
    rl->watchdog = true;
    w.cv.notify_one();
}

bool hold_add_set(RequestLocks *rl) {
    if (!rl->watchdog) {
        ++rl->nsets;
        return true;
    }
    Watchdog &w = dog();
    std::lock_guard<std::mutex> lk(w.mu);
    if (rl->released) return false;
    ++rl->nsets;
    return true;
}

void hold_unwatch(RequestLocks *rl) {
    Watchdog &w = dog();
    std::lock_guard<std::mutex> lk(w.mu);
    release_locks_now(rl);
    if (!rl->watched) return;
    if (!rl->released) return;  // a failed release: the pool cleanup tries again
    auto it = std::find(w.watched.begin(), w.watched.end(), rl);
    if (it != w.watched.end()) {
        *it = w.watched.back();
        w.watched.pop_back();
    }
    rl->watched = false;
}

}  // namespace glue
}  // namespace pidlock
