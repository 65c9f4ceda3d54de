// The exit list: how httpd's parent (root) tells the children which child
// processes exited, so that they release what those held, without the
// parent ever touching the lock table.
//
// A small shared segment of its own: a ring of kSlots words, each a
// (sequence, pid) pair in one atomic store, and the count of exits
// published. The parent only writes it, at places computed from a count it
// keeps in its own memory (never read back from the segment), so whatever a
// child writes there cannot steer the parent's writes, make it wait or make
// it read anything. Children read it: cheaply when nothing is new (one
// atomic load), and if the ring overran or its count makes no sense they
// fall back to checking every holder in /proc. A pid read from the segment
// is only a hint: the table frees nothing of a process /proc says is alive.
#ifndef PIDLOCK_EXITS_H
#define PIDLOCK_EXITS_H

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace pidlock {

class ExitList {
  public:
    static constexpr uint32_t kSlots = 256;
    // Bytes the segment needs (alignment slack included).
    static size_t region_size();
    // Zeroes the segment (the parent, at the first start; no child exists).
    static bool format(void *region, size_t size);
    // The parent: publishes that `pid` exited. `count` is the parent's own
    // tally of exits published so far (kept in its memory across restarts);
    // it is bumped. Writes two words of the segment and reads none.
    static void publish(void *region, uint64_t &count, int32_t pid);
};

// A child's view of the exit list; one per process, safe across threads.
class ExitReader {
  public:
    enum class Poll { Nothing, Some, Lost };
    void attach(const void *region);
    bool attached() const { return ring_ != nullptr; }
    // Forgets what was published until now (covered by a full check).
    void skip_to_now();
    // The exits published since the last call (by any thread): Nothing new;
    // Some, pids[0..n) (n <= ExitList::kSlots); or Lost, some were missed
    // and every process must be checked.
    Poll poll(int32_t *pids, size_t &n);
    // True if poll() may find something: one load of the published count
    // (the first word of the segment's ring) and a compare, inline, for the
    // request path; false when nothing is attached.
    bool pending() const {
        return ring_ && static_cast<const std::atomic<uint64_t> *>(ring_)->load(std::memory_order_acquire) !=
                            seen_.load(std::memory_order_relaxed);
    }

  private:
    const void *ring_ = nullptr;
    std::atomic<uint64_t> seen_{0};
};

}  // namespace pidlock

#endif
