// The upgrade gate: after a graceful restart onto a build whose shared
// layout differs (a new lock table format), the new generation cannot read
// the old generation's table, so it must not lock anything until every
// process of the old generation is gone; otherwise a new write could run
// beside an old-generation request on the same PID.
//
// A one-word shared segment per lock table: closed at the table's creation
// if processes of an older layout still run, opened once (and never closed
// again) when the parent sees the last of them gone. Only httpd's parent
// writes it and it never reads it back: what a child writes there can
// neither steer nor stall the parent. Children read it with one atomic load
// and, once they have seen it open, never again.
#ifndef PIDLOCK_GATE_H
#define PIDLOCK_GATE_H

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace pidlock {

class UpgradeGate {
  public:
    static size_t region_size();
    // The parent, before any child exists: lays the gate out open or closed.
    static bool format(void *region, size_t size, bool open);
    // The parent: opens the gate (one store, no read).
    static void open(void *region);
};

// A child's view of the gate; one per process, safe across threads.
class GateReader {
  public:
    void attach(const void *region);
    // True if there is no gate or it has been seen open (one load, inline,
    // once it has).
    bool is_open() { return open_.load(std::memory_order_acquire) || look_open(); }
    // Waits (sleeping in short slices) until the gate opens or
    // `deadline_ns` (monotonic_ns()) passes; true if open.
    bool wait_open(int64_t deadline_ns);

  private:
    bool look_open();
    const void *gate_ = nullptr;
    std::atomic<bool> open_{true};
};

// The parent's side: the processes of older layouts still alive, in an
// array the caller owns (httpd's parent keeps it in retained memory, plain
// data, so a reloaded module reads it). A process is gone when /proc says
// so (dead, a zombie, or its pid reused).
struct OldProcess {
    int32_t pid;
    uint64_t start;  // start time (process_start_time), 0 if unknown
};
// Appends `pid` to procs[0..n) if it is alive and not there yet and there is
// room (cap); returns the new count.
size_t old_add(OldProcess *procs, size_t n, size_t cap, int32_t pid);
// Drops every process /proc says is gone (or only `pid`, if > 0, when the
// MPM said it exited); returns the new count.
size_t old_prune(OldProcess *procs, size_t n, int32_t pid = 0);

}  // namespace pidlock

#endif
