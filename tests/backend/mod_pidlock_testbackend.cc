// mod_pidlock_testbackend — a TEST-ONLY Apache httpd 2.4 module.
//
// It stands in for the application behind mod_pidlock and detects overlap
// violations (a writer together with anyone else on the same PID) across all
// threads and all child processes, using an anonymous shared memory segment
// created in post_config and inherited by the children through fork().
//
// Handlers:
//   pidlock-testbackend          X-Test-Pid: <truth pid>, X-Test-Sleep-Ms: <ms>
//                                GET/HEAD = read, any other method = write.
//   pidlock-testbackend-stats    {"violations": N, "requests": M}; ?reset zeroes.
//   pidlock-testbackend-subreq   ?uri=<uri>: runs a sub-request, "subreq <status>"
//   pidlock-testbackend-redirect ?uri=<uri>: ap_internal_redirect(uri)
//   pidlock-testbackend-store    a minimal WebDAV class 1 file store under
//                                ServerRoot/davstore (OPTIONS, GET, HEAD, PUT,
//                                DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH),
//                                the application a WebDAV client (litmus,
//                                cadaver) talks to behind mod_pidlock's leases.
//                                It knows nothing of locks: LOCK and UNLOCK
//                                reaching it get 405, and PROPFIND answers
//                                lockdiscovery 404 (not its property).
//   pidlock-testbackend-bypass   ?what=eos|filter: a response whose end does
//                                not reach mod_pidlock's release filter (see
//                                bypass_handler).
//   pidlock-testbackend-scribble ?what=random|selflink: plays a hostile child
//                                and writes over mod_pidlock's lock table and
//                                exit list (see scribble_handler).
//
// Never load this module in production.

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <string>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sched.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"

#include "apr_shm.h"
#include "apr_strings.h"
#include "apr_time.h"

extern "C" {
extern __attribute__((visibility("default"))) module AP_MODULE_DECLARE_DATA pidlock_testbackend_module;
}
APLOG_USE_MODULE(pidlock_testbackend);

namespace {

// A signal (prefork's graceful restart sends SIGUSR1) cuts apr_sleep short;
// the backend must still take as long as it was asked to.
void sleep_until(apr_time_t end) {
    for (apr_time_t now = apr_time_now(); now < end; now = apr_time_now()) apr_sleep(end - now);
}


constexpr std::size_t kSlots = 256;
constexpr std::size_t kKeyMax = 200;
constexpr long kDefaultSleepMs = 5;
constexpr long kMaxSleepMs = 10000;

static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "need lock-free atomics in shm");
static_assert(std::atomic<std::int32_t>::is_always_lock_free, "need lock-free atomics in shm");
static_assert(std::atomic<std::int64_t>::is_always_lock_free, "need lock-free atomics in shm");

enum : std::uint32_t { kEmpty = 0, kClaiming = 1, kReady = 2 };

// Who is inside a PID's handler now: one word per request naming its
// process (pid and start time) and whether it writes (see occupant()), 0
// when free. Processes rather than counts, so that a child killed
// mid-request (the chaos test) is told apart from a live overlap.
constexpr std::size_t kOccupants = 64;

struct Slot {
    std::atomic<std::uint32_t> state;
    std::atomic<std::uint64_t> occupants[kOccupants];
    std::uint32_t keylen;  // written before state becomes kReady
    char key[kKeyMax];
};

struct Shared {
    std::atomic<std::int64_t> violations;
    std::atomic<std::int64_t> requests;
    std::atomic<std::int64_t> table_full;
    Slot slots[kSlots];
};

Shared *g_shared = nullptr;  // set in the parent, inherited by children

std::uint64_t fnv1a(const char *s, std::size_t n) {
    std::uint64_t h = 1469598103934665603ULL;
    for (std::size_t i = 0; i < n; ++i) {
        h ^= static_cast<unsigned char>(s[i]);
        h *= 1099511628211ULL;
    }
    return h;
}

void wait_ready(Slot &s) {
    // A claimer writes at most 200 bytes between its CAS and the store of
    // kReady: this loop ends almost at once.  Bounded for safety anyway.
    for (int i = 0; i < 1000000 && s.state.load(std::memory_order_acquire) == kClaiming; ++i)
        sched_yield();
}

// Finds or inserts the slot for key; nullptr when the table is full.
Slot *find_slot(Shared *sh, const char *key_in, std::size_t len) {
    if (len > kKeyMax) len = kKeyMax;  // test keys are short; prefix is enough
    const std::size_t start = static_cast<std::size_t>(fnv1a(key_in, len) % kSlots);
    for (std::size_t probe = 0; probe < kSlots; ++probe) {
        Slot &s = sh->slots[(start + probe) % kSlots];
        std::uint32_t st = s.state.load(std::memory_order_acquire);
        if (st == kEmpty) {
            std::uint32_t expected = kEmpty;
            if (s.state.compare_exchange_strong(expected, kClaiming, std::memory_order_acq_rel)) {
                std::memcpy(s.key, key_in, len);
                s.keylen = static_cast<std::uint32_t>(len);
                s.state.store(kReady, std::memory_order_release);
                return &s;
            }
            st = expected;
        }
        if (st == kClaiming) {
            wait_ready(s);
            st = s.state.load(std::memory_order_acquire);
        }
        if (st == kReady && s.keylen == len && std::memcmp(s.key, key_in, len) == 0)
            return &s;
    }
    return nullptr;
}

const char *query_arg(request_rec *r, const char *name) {
    if (!r->args) return nullptr;
    const std::size_t nlen = std::strlen(name);
    const char *p = r->args;
    while (*p) {
        const char *amp = std::strchr(p, '&');
        const std::size_t seg = amp ? static_cast<std::size_t>(amp - p) : std::strlen(p);
        if (seg > nlen && std::strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            char *v = apr_pstrndup(r->pool, p + nlen + 1, seg - nlen - 1);
            for (char *c = v; *c; ++c)
                if (*c == '+') *c = ' ';
            if (ap_unescape_url(v) != OK) return nullptr;
            return v;
        }
        if (!amp) break;
        p = amp + 1;
    }
    return nullptr;
}

bool has_flag_arg(request_rec *r, const char *name) {
    if (!r->args) return false;
    const std::size_t nlen = std::strlen(name);
    const char *p = r->args;
    while (*p) {
        const char *amp = std::strchr(p, '&');
        const std::size_t seg = amp ? static_cast<std::size_t>(amp - p) : std::strlen(p);
        if (seg >= nlen && std::strncmp(p, name, nlen) == 0 && (seg == nlen || p[nlen] == '='))
            return true;
        if (!amp) break;
        p = amp + 1;
    }
    return false;
}

// A process as the witness knows it: pid and start time (field 22 of
// /proc/PID/stat, in clock ticks since boot). The start time tells a pid
// that was reused (pid_max is 32768 here and the chaos test kills ~150
// children a run) from the process that registered.
constexpr int kPidBits = 22;  // pid_max is at most 2^22 on Linux
constexpr std::uint64_t kPidMask = (1ull << kPidBits) - 1;
constexpr std::uint64_t kStartMask = (1ull << (63 - kPidBits - 1)) - 1;

// One read of /proc/PID/stat; false if it cannot be opened, read or parsed.
// A stat file opened while the process exists and read after its parent
// reaped it reads as nothing (read() fails with ESRCH): that is "gone".
bool read_stat(pid_t pid, char *state, std::uint64_t *start) {
    char path[64], buf[1024];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    FILE *f = std::fopen(path, "re");
    if (!f) return false;
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char *p = std::strrchr(buf, ')');
    if (!p || p[1] != ' ' || p[2] == '\0') return false;
    *state = p[2];
    int field = 2;
    for (++p; *p && field < 22; ++p)
        if (*p == ' ') ++field;
    if (field != 22 || *p < '0' || *p > '9') return false;
    *start = std::strtoull(p, nullptr, 10) & kStartMask;
    return true;
}

// How many threads process pid still has (Threads: in /proc/PID/status),
// -1 if unreadable.
long thread_count(pid_t pid) {
    char path[64], buf[2048];
    std::snprintf(path, sizeof path, "/proc/%d/status", static_cast<int>(pid));
    FILE *f = std::fopen(path, "re");
    if (!f) return -1;
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char *t = std::strstr(buf, "\nThreads:");
    return t ? std::strtol(t + 9, nullptr, 10) : -1;
}

// This process's start time: set by child_init, before any request.
std::uint64_t g_my_start = 0;

void child_init(apr_pool_t *, server_rec *) {
    char state = 0;
    std::uint64_t start = 0;
    g_my_start = read_stat(getpid(), &state, &start) ? start : 0;
}

// An occupant word: (start << 23 | pid << 1 | writer) + 1, 0 when free.
std::uint64_t occupant(pid_t pid, std::uint64_t start, bool writer) {
    return (((start & kStartMask) << (kPidBits + 1)) | (static_cast<std::uint64_t>(pid) << 1) | (writer ? 1 : 0)) + 1;
}
pid_t occupant_pid(std::uint64_t w) { return static_cast<pid_t>(((w - 1) >> 1) & kPidMask); }
std::uint64_t occupant_start(std::uint64_t w) { return (w - 1) >> (kPidBits + 1); }
bool occupant_writes(std::uint64_t w) { return ((w - 1) & 1) != 0; }

// Whether the process that registered an occupant can still run: it is
// alive while any of its threads is. Only a positive reading says alive:
// an unreadable stat (the process was reaped between our open and our
// read: the false OVERLAP of the chaos test), another start time (the pid
// was reused) or a zombie leader with no other thread left mean gone. A
// zombie leader with threads left is a killed multi-threaded child still
// dying thread by thread (worker, event): alive until its last thread is
// gone, as for the lock table.
bool process_alive(pid_t pid, std::uint64_t start) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return false;
    char state = 0;
    std::uint64_t now_start = 0;
    if (!read_stat(pid, &state, &now_start)) return false;
    if (start != 0 && now_start != start) return false;
    if (state == 'X' || state == 'x') return false;
    if (state == 'Z') return thread_count(pid) > 1;
    return true;
}

// The state letter of every thread of pid, from /proc/PID/task/*/stat, as
// "tid:S tid:Z ..." (for the post-mortem of a violation).
std::string thread_states(pid_t pid) {
    std::string out;
    char dir[64];
    std::snprintf(dir, sizeof dir, "/proc/%d/task", static_cast<int>(pid));
    DIR *d = opendir(dir);
    if (!d) return "(no task dir)";
    while (struct dirent *e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        char path[384], buf[512];
        std::snprintf(path, sizeof path, "%s/%s/stat", dir, e->d_name);
        FILE *f = std::fopen(path, "re");
        if (!f) continue;
        const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
        std::fclose(f);
        buf[n] = '\0';
        const char *p = std::strrchr(buf, ')');
        out += std::string(e->d_name) + ":" + (p && p[1] == ' ' ? p[2] : '?') + " ";
    }
    closedir(d);
    return out;
}

// What a check found: the conflicting occupant and its threads then.
struct Finding {
    std::uint64_t w = 0;
    apr_time_t at = 0;
    std::string threads;
};

// Another live occupant whose mode conflicts with ours (a writer with
// anyone, a reader with a writer).
bool is_violation(const Slot &s, std::size_t mine, bool write, Finding *why) {
    for (std::size_t i = 0; i < kOccupants; ++i) {
        if (i == mine) continue;
        const std::uint64_t w = s.occupants[i].load(std::memory_order_acquire);
        if (w == 0) continue;
        if (!write && !occupant_writes(w)) continue;
        const pid_t op = occupant_pid(w);
        if (process_alive(op, occupant_start(w))) {
            if (why && why->w == 0) *why = {w, apr_time_now(), thread_states(op)};
            return true;
        }
    }
    return false;
}

int backend_handler(request_rec *r) {
    if (!r->handler || std::strcmp(r->handler, "pidlock-testbackend") != 0) return DECLINED;

    // X-Test-Body: read the body as an application would and report its
    // length and checksum; a body that ends in an error is never acted on.
    std::uint64_t body_len = 0, body_sum = 1469598103934665603ULL;
    const bool sum_body = apr_table_get(r->headers_in, "X-Test-Body") != nullptr;
    if (sum_body) {
        int rv = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK);
        if (rv != OK) return rv;
        if (ap_should_client_block(r)) {
            char buf[16384];
            long n;
            while ((n = ap_get_client_block(r, buf, sizeof buf)) > 0) {
                for (long i = 0; i < n; ++i) {
                    body_sum ^= static_cast<unsigned char>(buf[i]);
                    body_sum *= 1099511628211ULL;
                }
                body_len += static_cast<std::uint64_t>(n);
            }
            if (n < 0) {
                ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "pidlock-testbackend: body read failed; not acting");
                return HTTP_BAD_REQUEST;
            }
        }
    } else {
        int rv = ap_discard_request_body(r);
        if (rv != OK) return rv;
    }

    const char *pid = apr_table_get(r->headers_in, "X-Test-Pid");
    ap_set_content_type(r, "text/plain");
    if (!pid || !g_shared) {
        ap_rputs("no pid\n", r);
        return OK;
    }

    long sleep_ms = kDefaultSleepMs;
    if (const char *sl = apr_table_get(r->headers_in, "X-Test-Sleep-Ms")) {
        char *end = nullptr;
        errno = 0;
        long v = std::strtol(sl, &end, 10);
        if (errno == 0 && end != sl) sleep_ms = v;
    }
    if (sleep_ms < 0) sleep_ms = 0;
    if (sleep_ms > kMaxSleepMs) sleep_ms = kMaxSleepMs;

    const bool write = r->method_number != M_GET;  // HEAD has M_GET too
    const char *mode = write ? "write" : "read";
    Shared *sh = g_shared;
    sh->requests.fetch_add(1, std::memory_order_relaxed);

    // X-Test-Witness-Dir: a witness several httpd instances share (hosts of
    // a cluster): a writer owns the PID while its O_EXCL marker file exists;
    // a second one appends a line to DIR/violations.
    const char *wdir = write ? apr_table_get(r->headers_in, "X-Test-Witness-Dir") : nullptr;
    const char *marker = nullptr;
    if (wdir) {
        std::string hexpid;
        for (const char *c = pid; *c; ++c) hexpid += apr_psprintf(r->pool, "%02x", static_cast<unsigned char>(*c));
        marker = apr_psprintf(r->pool, "%s/in-%s", wdir, hexpid.substr(0, 200).c_str());
        const int fd = open(marker, O_CREAT | O_EXCL | O_WRONLY, 0666);
        if (fd >= 0) {
            close(fd);
        } else {
            marker = nullptr;
            const int vf = open(apr_pstrcat(r->pool, wdir, "/violations", nullptr), O_CREAT | O_APPEND | O_WRONLY, 0666);
            if (vf >= 0) {
                const char *line = apr_pstrcat(r->pool, pid, "\n", nullptr);
                (void)!::write(vf, line, std::strlen(line));
                close(vf);
            }
        }
    }
    Slot *s = find_slot(sh, pid, std::strlen(pid));
    if (!s) {
        sh->table_full.fetch_add(1, std::memory_order_relaxed);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "pidlock-testbackend: slot table full, pid '%s' not checked", pid);
    } else {
        bool violated = false;
        Finding found[2];
        const std::uint64_t me = occupant(getpid(), g_my_start, write);
        std::size_t mine = kOccupants;
        for (std::size_t i = 0; i < kOccupants && mine == kOccupants; ++i) {
            std::uint64_t expected = 0;
            if (s->occupants[i].compare_exchange_strong(expected, me, std::memory_order_acq_rel)) mine = i;
        }
        if (mine == kOccupants) {
            sh->table_full.fetch_add(1, std::memory_order_relaxed);
        } else {
            const apr_time_t in_at = apr_time_now();
            if (is_violation(*s, mine, write, &found[0])) violated = true;
            if (sleep_ms > 0) sleep_until(apr_time_now() + apr_time_from_msec(sleep_ms));
            if (is_violation(*s, mine, write, &found[1])) violated = true;
            s->occupants[mine].store(0, std::memory_order_release);
            for (int c = 0; c < 2 && violated; ++c)
                if (found[c].w)
                    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                                  "pidlock-testbackend: check %d (%ld us after entry): process %d %s alive; threads %s",
                                  c + 1, static_cast<long>(found[c].at - in_at), static_cast<int>(occupant_pid(found[c].w)),
                                  occupant_writes(found[c].w) ? "writer" : "reader", found[c].threads.c_str());
        }
        if (violated) {
            sh->violations.fetch_add(1, std::memory_order_relaxed);
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          "pidlock-testbackend: OVERLAP on pid '%s' (%s %s)", pid, r->method,
                          r->unparsed_uri);
            // Who else was in: for the post-mortem of a violation.
            for (std::size_t i = 0; i < kOccupants; ++i) {
                const std::uint64_t w = s->occupants[i].load(std::memory_order_acquire);
                if (w == 0) continue;
                const pid_t op = occupant_pid(w);
                ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                              "pidlock-testbackend: occupant %d: process %d %s, %s; threads %s", static_cast<int>(i),
                              static_cast<int>(op), occupant_writes(w) ? "writer" : "reader",
                              process_alive(op, occupant_start(w)) ? "alive" : "gone", thread_states(op).c_str());
            }
        }
    }

    if (marker) unlink(marker);
    ap_rprintf(r, "ok %s %s %ld\n", pid, mode, static_cast<long>(getpid()));
    if (sum_body)
        ap_rprintf(r, "body %" APR_UINT64_T_FMT " %016" APR_UINT64_T_HEX_FMT "\n", body_len, body_sum);
    if (const char *fence = apr_table_get(r->headers_in, "PidLock-Fence")) ap_rprintf(r, "fence %s\n", fence);
    // X-Test-Resp-Bytes: a large response, for slow readers.
    if (const char *rb = apr_table_get(r->headers_in, "X-Test-Resp-Bytes")) {
        apr_int64_t left = apr_atoi64(rb);
        static char chunk[65536];
        std::memset(chunk, 'r', sizeof chunk);
        while (left > 0) {
            const int n = static_cast<int>(left < static_cast<apr_int64_t>(sizeof chunk) ? left : sizeof chunk);
            if (ap_rwrite(chunk, n, r) < 0 || ap_rflush(r) < 0) break;
            left -= n;
        }
    }
    return OK;
}

int stats_handler(request_rec *r) {
    if (!r->handler || std::strcmp(r->handler, "pidlock-testbackend-stats") != 0) return DECLINED;
    int rv = ap_discard_request_body(r);
    if (rv != OK) return rv;
    Shared *sh = g_shared;
    if (!sh) return HTTP_SERVICE_UNAVAILABLE;
    if (has_flag_arg(r, "reset")) {
        sh->violations.store(0);
        sh->requests.store(0);
        sh->table_full.store(0);
        for (Slot &s : sh->slots) {
            for (auto &o : s.occupants) o.store(0);
            s.keylen = 0;
            s.state.store(kEmpty, std::memory_order_release);
        }
    }
    ap_set_content_type(r, "application/json");
    ap_rprintf(r,
               "{\"violations\": %" APR_INT64_T_FMT ", \"requests\": %" APR_INT64_T_FMT
               ", \"table_full\": %" APR_INT64_T_FMT "}\n",
               static_cast<apr_int64_t>(sh->violations.load()),
               static_cast<apr_int64_t>(sh->requests.load()),
               static_cast<apr_int64_t>(sh->table_full.load()));
    return OK;
}

int subreq_handler(request_rec *r) {
    if (!r->handler || std::strcmp(r->handler, "pidlock-testbackend-subreq") != 0) return DECLINED;
    int rv = ap_discard_request_body(r);
    if (rv != OK) return rv;
    const char *uri = query_arg(r, "uri");
    if (!uri || uri[0] != '/') return HTTP_BAD_REQUEST;
    ap_set_content_type(r, "text/plain");
    // The sub-request's output goes into this response's body.
    request_rec *sub = ap_sub_req_method_uri(r->method, uri, r, r->output_filters);
    int status = sub->status;
    if (status == HTTP_OK) {
        int srv = ap_run_sub_req(sub);
        status = (srv == OK) ? sub->status : srv;
    }
    ap_destroy_sub_req(sub);
    ap_rprintf(r, "subreq %d\n", status);
    return OK;
}

int redirect_handler(request_rec *r) {
    if (!r->handler || std::strcmp(r->handler, "pidlock-testbackend-redirect") != 0)
        return DECLINED;
    const char *uri = query_arg(r, "uri");
    if (!uri || uri[0] != '/') return HTTP_BAD_REQUEST;
    ap_internal_redirect(uri, r);
    return OK;
}

// mod_pidlock's retained data, as far as this test may know it: under the
// key "mod_pidlock-retained" the module keeps the newest generation's two
// shared segments, in this order (the contract is written next to its
// RetainedHead in mod_pidlock_lifecycle.cc).
struct PidlockRetainedHead {
    apr_shm_t *table;
    apr_shm_t *exits;
};

// What a compromised child could do to the shared memory it maps: random
// bytes over all of the table (header included) and the exit list, or every
// word of the table past its first 128 bytes set to 1, so that every bucket,
// chain and record list leads to index 1 and loops there. httpd's parent
// must not care.
int scribble_handler(request_rec *r) {
    if (!r->handler || std::strcmp(r->handler, "pidlock-testbackend-scribble") != 0) return DECLINED;
    int rv = ap_discard_request_body(r);
    if (rv != OK) return rv;
    const auto *head = static_cast<const PidlockRetainedHead *>(ap_retained_data_get("mod_pidlock-retained"));
    if (!head || !head->table || !head->exits) return HTTP_SERVICE_UNAVAILABLE;
    const char *what = query_arg(r, "what");
    const bool selflink = what && std::strcmp(what, "selflink") == 0;
    std::uint64_t x = static_cast<std::uint64_t>(apr_time_now()) ^ (static_cast<std::uint64_t>(getpid()) << 32);
    auto next = [&x] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return x;
    };
    std::size_t written = 0;
    for (apr_shm_t *shm : {head->table, head->exits}) {
        auto *base = static_cast<unsigned char *>(apr_shm_baseaddr_get(shm));
        const std::size_t size = apr_shm_size_get(shm);
        if (selflink && shm == head->table) {
            for (std::size_t i = 128; i + 4 <= size; i += 4) {
                const std::uint32_t one = 1;
                std::memcpy(base + i, &one, 4);
            }
        } else {
            for (std::size_t i = 0; i + 8 <= size; i += 8) {
                const std::uint64_t v = next();
                std::memcpy(base + i, &v, 8);
            }
        }
        written += size;
    }
    ap_set_content_type(r, "text/plain");
    ap_rprintf(r, "scribbled %lu bytes (%s) in process %ld\n", static_cast<unsigned long>(written),
               selflink ? "selflink" : "random", static_cast<long>(getpid()));
    return OK;
}

int post_config(apr_pool_t *pconf, apr_pool_t *, apr_pool_t *, server_rec *s) {
    apr_shm_t *shm = nullptr;
    apr_status_t rv = apr_shm_create(&shm, sizeof(Shared), nullptr, pconf);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s,
                     "pidlock-testbackend: cannot create anonymous shared memory");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    void *base = apr_shm_baseaddr_get(shm);
    std::memset(base, 0, sizeof(Shared));
    g_shared = new (base) Shared();  // value-initialised: all zero
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                 "pidlock-testbackend: TEST-ONLY module active (%lu bytes of shm)",
                 static_cast<unsigned long>(sizeof(Shared)));
    return OK;
}


// ------------------------------------------------------------------ store
// A WebDAV class 1 file store (test only). Paths are r->uri under
// ServerRoot/davstore; httpd has already resolved dot segments.

const char *store_path(request_rec *r, const char *uri) {
    return apr_pstrcat(r->pool, ap_server_root_relative(r->pool, "davstore"), uri, nullptr);
}

std::string store_etag(const struct stat &st) {
    char b[64];
    std::snprintf(b, sizeof b, "\"%lx-%lx-%lx\"", static_cast<unsigned long>(st.st_size),
                  static_cast<unsigned long>(st.st_mtim.tv_sec), static_cast<unsigned long>(st.st_mtim.tv_nsec));
    return b;
}

bool parent_is_dir(const char *path) {
    std::string p(path);
    while (!p.empty() && p.back() == '/') p.pop_back();
    const size_t slash = p.rfind('/');
    if (slash == std::string::npos) return false;
    struct stat st;
    return stat(p.substr(0, slash).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void remove_tree(const std::string &p) {
    struct stat st;
    if (lstat(p.c_str(), &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        if (DIR *d = opendir(p.c_str())) {
            while (struct dirent *e = readdir(d)) {
                if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, "..")) continue;
                remove_tree(p + "/" + e->d_name);
            }
            closedir(d);
        }
        rmdir(p.c_str());
    } else {
        unlink(p.c_str());
    }
}

bool copy_file(const char *from, const char *to) {
    const int in = open(from, O_RDONLY);
    if (in < 0) return false;
    const int out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    bool ok = out >= 0;
    char buf[16384];
    ssize_t n;
    while (ok && (n = read(in, buf, sizeof buf)) > 0) ok = ::write(out, buf, static_cast<size_t>(n)) == n;
    close(in);
    if (out >= 0) close(out);
    return ok;
}

void store_propstat(request_rec *r, const char *href, const char *path, bool want_lockdiscovery) {
    struct stat st;
    if (stat(path, &st) != 0) return;
    ap_rprintf(r, "<D:response><D:href>%s</D:href><D:propstat><D:prop>", ap_escape_html(r->pool, href));
    if (S_ISDIR(st.st_mode)) {
        ap_rputs("<D:resourcetype><D:collection/></D:resourcetype>", r);
    } else {
        ap_rprintf(r, "<D:resourcetype/><D:getcontentlength>%ld</D:getcontentlength><D:getetag>%s</D:getetag>",
                   static_cast<long>(st.st_size), ap_escape_html(r->pool, store_etag(st).c_str()));
    }
    char date[APR_RFC822_DATE_LEN];
    apr_rfc822_date(date, apr_time_from_sec(st.st_mtim.tv_sec));
    ap_rprintf(r, "<D:getlastmodified>%s</D:getlastmodified>", date);
    ap_rputs("</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>", r);
    if (want_lockdiscovery)
        ap_rputs("<D:propstat><D:prop><D:lockdiscovery/></D:prop>"
                 "<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>", r);
    ap_rputs("</D:response>\n", r);
}

int store_read_body(request_rec *r, std::string &body) {
    int rv = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK);
    if (rv != OK) return rv;
    if (ap_should_client_block(r)) {
        char buf[16384];
        long n;
        while ((n = ap_get_client_block(r, buf, sizeof buf)) > 0) body.append(buf, static_cast<size_t>(n));
        if (n < 0) return HTTP_BAD_REQUEST;
    }
    return OK;
}

int store_handler(request_rec *r) {
    if (!r->handler || std::strcmp(r->handler, "pidlock-testbackend-store") != 0) return DECLINED;
    std::string body;
    if (const int rv = store_read_body(r, body)) return rv;
    const char *path = store_path(r, r->uri);
    struct stat st;
    const bool exists = stat(path, &st) == 0;
    const bool is_dir = exists && S_ISDIR(st.st_mode);
    // If-Match (mod_pidlock hands an If header's entity tags on as one).
    if (const char *im = apr_table_get(r->headers_in, "If-Match")) {
        bool match = exists && std::strcmp(im, "*") == 0;
        const std::string cur = exists && !is_dir ? store_etag(st) : std::string();
        for (const char *p = im; !match && *p;) {
            while (*p == ' ' || *p == ',') ++p;
            const char *e = p;
            while (*e && *e != ',') ++e;
            std::string tag(p, static_cast<size_t>(e - p));
            while (!tag.empty() && tag.back() == ' ') tag.pop_back();
            match = !cur.empty() && tag == cur;
            p = e;
        }
        if (!match) return HTTP_PRECONDITION_FAILED;
    }
    switch (r->method_number) {
    case M_OPTIONS:
        apr_table_setn(r->headers_out, "DAV", "1, 2");
        apr_table_setn(r->headers_out, "Allow",
                       "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH, LOCK, UNLOCK");
        return OK;
    case M_GET: {
        if (!exists) return HTTP_NOT_FOUND;
        if (is_dir) {
            ap_set_content_type(r, "text/plain");
            ap_rputs("collection\n", r);
            return OK;
        }
        apr_table_setn(r->headers_out, "ETag", apr_pstrdup(r->pool, store_etag(st).c_str()));
        ap_set_content_type(r, "application/octet-stream");
        ap_set_content_length(r, st.st_size);
        if (r->header_only) return OK;
        const int fd = open(path, O_RDONLY);
        if (fd < 0) return HTTP_INTERNAL_SERVER_ERROR;
        char buf[16384];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) ap_rwrite(buf, static_cast<int>(n), r);
        close(fd);
        return OK;
    }
    case M_PUT: {
        if (is_dir) return HTTP_METHOD_NOT_ALLOWED;
        if (!parent_is_dir(path)) return HTTP_CONFLICT;
        const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return HTTP_INTERNAL_SERVER_ERROR;
        const bool ok = ::write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size());
        close(fd);
        if (!ok) return HTTP_INTERNAL_SERVER_ERROR;
        if (stat(path, &st) == 0) apr_table_setn(r->headers_out, "ETag", apr_pstrdup(r->pool, store_etag(st).c_str()));
        return exists ? HTTP_NO_CONTENT : HTTP_CREATED;
    }
    case M_DELETE:
        if (!exists) return HTTP_NOT_FOUND;
        remove_tree(path);
        return HTTP_NO_CONTENT;
    case M_MKCOL:
        if (!body.empty()) return HTTP_UNSUPPORTED_MEDIA_TYPE;
        if (exists) return HTTP_METHOD_NOT_ALLOWED;
        if (!parent_is_dir(path)) return HTTP_CONFLICT;
        if (mkdir(path, 0755) != 0) return HTTP_INTERNAL_SERVER_ERROR;
        return HTTP_CREATED;
    case M_COPY:
    case M_MOVE: {
        if (!exists) return HTTP_NOT_FOUND;
        const char *dest = apr_table_get(r->headers_in, "Destination");
        apr_uri_t u;
        if (!dest || apr_uri_parse(r->pool, dest, &u) != APR_SUCCESS || !u.path) return HTTP_BAD_REQUEST;
        char *dpath_uri = apr_pstrdup(r->pool, u.path);
        if (ap_unescape_url(dpath_uri) != OK) return HTTP_BAD_REQUEST;
        ap_getparents(dpath_uri);
        const char *dpath = store_path(r, dpath_uri);
        struct stat dst;
        const bool dexists = stat(dpath, &dst) == 0;
        const char *ow = apr_table_get(r->headers_in, "Overwrite");
        if (dexists && ow && (ow[0] == 'F' || ow[0] == 'f')) return HTTP_PRECONDITION_FAILED;
        if (!parent_is_dir(dpath)) return HTTP_CONFLICT;
        if (dexists) remove_tree(dpath);
        if (r->method_number == M_MOVE) {
            if (rename(path, dpath) != 0) return HTTP_INTERNAL_SERVER_ERROR;
        } else if (is_dir) {
            if (mkdir(dpath, 0755) != 0) return HTTP_INTERNAL_SERVER_ERROR;  // Depth 0 only
        } else if (!copy_file(path, dpath)) {
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        return dexists ? HTTP_NO_CONTENT : HTTP_CREATED;
    }
    case M_PROPFIND: {
        if (!exists) return HTTP_NOT_FOUND;
        const char *depth = apr_table_get(r->headers_in, "Depth");
        const bool want_ld = body.find("lockdiscovery") != std::string::npos;
        r->status = HTTP_MULTI_STATUS;
        ap_set_content_type(r, "application/xml; charset=utf-8");
        ap_rputs("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:multistatus xmlns:D=\"DAV:\">\n", r);
        store_propstat(r, r->uri, path, want_ld);
        if (is_dir && depth && std::strcmp(depth, "1") == 0) {
            if (DIR *d = opendir(path)) {
                while (struct dirent *e = readdir(d)) {
                    if (e->d_name[0] == '.') continue;
                    const char *base = r->uri[std::strlen(r->uri) - 1] == '/' ? r->uri
                                                                             : apr_pstrcat(r->pool, r->uri, "/", nullptr);
                    store_propstat(r, apr_pstrcat(r->pool, base, ap_escape_uri(r->pool, e->d_name), nullptr),
                                   apr_pstrcat(r->pool, path, "/", e->d_name, nullptr), want_ld);
                }
                closedir(d);
            }
        }
        ap_rputs("</D:multistatus>\n", r);
        return OK;
    }
    case M_PROPPATCH:
        if (!exists) return HTTP_NOT_FOUND;
        r->status = HTTP_MULTI_STATUS;
        ap_set_content_type(r, "application/xml; charset=utf-8");
        ap_rprintf(r, "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:multistatus xmlns:D=\"DAV:\"><D:response>"
                      "<D:href>%s</D:href><D:propstat><D:prop/><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
                      "</D:response></D:multistatus>\n", ap_escape_html(r->pool, r->uri));
        return OK;
    default:
        return HTTP_METHOD_NOT_ALLOWED;
    }
}

// mod_pidlock's release filter on this request's connection, or null.
ap_filter_t *release_filter_of(request_rec *r) {
    for (ap_filter_t *f = r->connection->output_filters; f; f = f->next)
        if (f->frec && f->frec->name && !strcasecmp(f->frec->name, "PIDLOCK_RELEASE")) return f;
    return nullptr;
}

// Responses whose end does not pass mod_pidlock's release filter, as a
// module of some other kind might make them:
//   what=eos     the response's EOS goes to the filter after it, so only the
//                request's EOR (which httpd passes at the end of every
//                request) passes it;
//   what=filter  the filter forgets the request (the first field of its
//                context, ConnLocks::current, is cleared), so neither its EOS
//                nor its EOR ends its locks there.
// The body is "bypass\n", with a Content-Length (no chunked ending, which the
// EOS would write).
int bypass_handler(request_rec *r) {
    if (!r->handler || std::strcmp(r->handler, "pidlock-testbackend-bypass") != 0) return DECLINED;
    int rv = ap_discard_request_body(r);
    if (rv != OK) return rv;
    const char *what = query_arg(r, "what");
    ap_filter_t *f = release_filter_of(r);
    if (!what || !f || !f->ctx) return HTTP_INTERNAL_SERVER_ERROR;
    static const char kBody[] = "bypass\n";
    ap_set_content_type(r, "text/plain");
    ap_set_content_length(r, sizeof kBody - 1);
    if (!std::strcmp(what, "filter")) {
        *static_cast<void **>(f->ctx) = nullptr;
        ap_rwrite(kBody, sizeof kBody - 1, r);
        return OK;
    }
    if (std::strcmp(what, "eos") != 0) return HTTP_BAD_REQUEST;
    // Headers and body through every filter, then the EOS past the release
    // filter; ap_finalize_request_protocol sends no second one.
    ap_rwrite(kBody, sizeof kBody - 1, r);
    ap_rflush(r);
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(r->connection->bucket_alloc));
    ap_pass_brigade(f->next, bb);
    r->eos_sent = 1;
    return OK;
}

void register_hooks(apr_pool_t *) {
    ap_hook_handler(store_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_post_config(post_config, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_child_init(child_init, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_handler(backend_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_handler(stats_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_handler(subreq_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_handler(redirect_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_handler(scribble_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_handler(bypass_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
}

}  // namespace

extern "C" {
__attribute__((visibility("default"))) module AP_MODULE_DECLARE_DATA pidlock_testbackend_module = {
    STANDARD20_MODULE_STUFF,
    nullptr,         // create_dir_config
    nullptr,         // merge_dir_config
    nullptr,         // create_server_config
    nullptr,         // merge_server_config
    nullptr,         // cmds
    register_hooks,  // register_hooks
    0                // flags
};
}
