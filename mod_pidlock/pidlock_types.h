// Types every lock backend shares with the glue and the renderers: modes,
// what a holder is, what a refused request is told, and the status view a
// backend fills for the status page. No backend's internals appear here.
#ifndef PIDLOCK_TYPES_H
#define PIDLOCK_TYPES_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pidlock {

enum class Mode : uint8_t { None = 0, Read = 1, Write = 2 };
const char *mode_name(Mode m);

// Unavailable: a backend the lock depends on (PostgreSQL) cannot be reached;
// answered like Busy (503 with Retry-After).
// ClientGone: the client hung up while the request waited; nothing is held
// and the request must not reach its handler.
enum class AcquireResult { Acquired, Busy, Full, Error, Unavailable, ClientGone };

// Field sizes of a holder record; longer values are cut.
constexpr size_t kMethodCap = 16;
constexpr size_t kUriCap = 256;
constexpr size_t kClientCap = 48;
constexpr size_t kUserCap = 64;

// A holder slot of the lock table kept between the requests of one client
// connection, so that a request's lock takes none from the table's shared
// pool (the table alone reads its fields; the glue keeps it zeroed at first
// and hands it back with drop_slot_cache() when the connection ends). Only
// one thread at a time may use one.
struct SlotCache {
    const void *table = nullptr;
    uint64_t serial = 0;
    int32_t pid = 0;
    uint32_t slot = 0;
};

struct HolderInfo {
    const char *method = "";
    const char *uri = "";
    const char *client = "";
    const char *user = nullptr;  // null: anonymous
    uint64_t thread = 0;
    uint64_t request = 0;  // the same for every lock one request holds
    // The client's connection, where a backend's wait can watch it: a client
    // that hangs up ends the wait early (-1: not watched).
    int client_fd = -1;
    // Asked now and then while a request waits (null: not asked): true when
    // the client is gone in a way the socket does not show (an HTTP/2
    // stream reset: the glue checks r->connection->aborted).
    bool (*client_gone)(void *arg) = nullptr;
    void *client_gone_arg = nullptr;
    // Where the table keeps this holder's slot between requests (null: a
    // cache per thread).
    SlotCache *slot_cache = nullptr;
};

// What a refused request may be told about the lock it waited for.
struct BusyReport {
    std::string key;
    Mode held_mode = Mode::None;
    uint32_t holders = 0;
    uint32_t waiting_read = 0;
    uint32_t waiting_write = 0;
    int64_t held_us = 0;  // since the oldest holder took it
    bool too_many_waiting = false;  // refused at once: PidLockMaxWaiters reached
    bool draining = false;  // processes of an older table layout still run (pidlock_gate.h)
};

struct HolderView {
    int32_t pid = 0;
    uint64_t thread = 0;
    Mode mode = Mode::None;
    bool waiting = false;
    std::string method, uri, client, user;
    bool has_user = false;
    int64_t since_us = 0;  // wall clock, microseconds since the epoch
    uint64_t request = 0;  // holders of one request share it
};

struct LockView {
    std::string key;
    Mode mode = Mode::None;  // mode held; None while only waiters are there
    uint32_t waiting_read = 0, waiting_write = 0;
    std::vector<HolderView> holders;  // holding records first, then waiting
    int64_t oldest_us = 0;
};

// Upper bounds (seconds) of the wait-time histogram's buckets; a last,
// unbounded bucket follows them.
constexpr double kWaitBounds[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60};
constexpr size_t kWaitBuckets = sizeof(kWaitBounds) / sizeof(kWaitBounds[0]) + 1;

struct Counters {
    uint64_t acquired_read = 0, acquired_write = 0, waited = 0, timeouts = 0,
             bad_keys = 0, reaped = 0, broken = 0, full = 0,
             repairs = 0,  // rebuilds after a process died inside the table
             refused_waiters = 0,  // busy at once: PidLockMaxWaiters reached
             client_gone = 0;  // waits ended because the client hung up
    // Requests that waited, by how long (granted or given up), not cumulative.
    uint64_t wait_buckets[kWaitBuckets] = {};
    uint64_t wait_sum_us = 0;
};

// The PostgreSQL tier (PidLockCluster), summed over the host's processes:
// connections, held and waiting are current values, lost and errors totals.
// A lock another host (or an SQL job) holds in PostgreSQL on a key this
// host waits for there.
struct RemoteHolder {
    std::string key;
    Mode mode = Mode::None;
    int32_t session = 0;      // PostgreSQL backend pid
    std::string application;  // its application_name
    std::string client;       // its address ("" over a Unix socket)
    int64_t since_us = 0;     // its transaction's start (wall clock)
};

struct ClusterView {
    bool on = false;  // false: no cluster tier, nothing to show
    std::string backend;  // "postgres"
    int64_t connections = 0, held = 0, waiting = 0, lost = 0, errors = 0;
    std::vector<RemoteHolder> remote;
};

struct TableSnapshot {
    uint32_t capacity = 0, used = 0, high_water = 0, key_cap = 0, stripes = 0;
    uint32_t generation = 0;
    Counters counters;
    std::vector<LockView> locks;  // oldest first
    ClusterView cluster;
};

enum class Counter { BadKeys };

// Wall clock, microseconds since the epoch; monotonic clock in nanoseconds
// (CLOCK_MONOTONIC: one clock for every process of the host, so deadlines
// are absolute values of it).
int64_t wall_clock_us();
int64_t monotonic_ns();

}  // namespace pidlock

#endif
