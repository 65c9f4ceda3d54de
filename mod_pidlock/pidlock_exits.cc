#include "pidlock_exits.h"

#include <cstddef>
#include <cstring>

namespace pidlock {

namespace {

struct Ring {
    alignas(64) std::atomic<uint64_t> count;  // exits published so far
    alignas(64) std::atomic<uint64_t> slot[ExitList::kSlots];  // (sequence << 32) | pid
};

constexpr size_t kSlack = 64;
// ExitReader::pending() reads the count as the ring's first word.
static_assert(offsetof(Ring, count) == 0, "the count leads the ring");

Ring *ring_at(const void *region) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(region);
    return reinterpret_cast<Ring *>((v + 63) / 64 * 64);
}

uint64_t word(uint64_t seq, int32_t pid) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(seq)) << 32) | static_cast<uint32_t>(pid);
}

}  // namespace

size_t ExitList::region_size() { return sizeof(Ring) + kSlack; }

bool ExitList::format(void *region, size_t size) {
    if (!region || size < region_size()) return false;
    Ring *r = ring_at(region);
    std::memset(static_cast<void *>(r), 0, sizeof(Ring));
    return true;
}

void ExitList::publish(void *region, uint64_t &count, int32_t pid) {
    if (!region) return;
    Ring *r = ring_at(region);
    const uint64_t seq = ++count;  // the parent's own count, never the segment's
    r->slot[(seq - 1) % kSlots].store(word(seq, pid), std::memory_order_release);
    r->count.store(seq, std::memory_order_release);
}

void ExitReader::attach(const void *region) { ring_ = region ? ring_at(region) : nullptr; }

void ExitReader::skip_to_now() {
    if (ring_)
        seen_.store(static_cast<const Ring *>(ring_)->count.load(std::memory_order_acquire),
                    std::memory_order_relaxed);
}

ExitReader::Poll ExitReader::poll(int32_t *pids, size_t &n) {
    n = 0;
    if (!ring_) return Poll::Nothing;
    const Ring *r = static_cast<const Ring *>(ring_);
    const uint64_t now = r->count.load(std::memory_order_acquire);
    uint64_t from = seen_.load(std::memory_order_relaxed);
    if (now == from) return Poll::Nothing;
    // One thread takes the range (from, now]; the others go on.
    if (!seen_.compare_exchange_strong(from, now, std::memory_order_relaxed)) return Poll::Nothing;
    if (now < from || now - from > ExitList::kSlots) return Poll::Lost;
    for (uint64_t seq = from + 1; seq <= now; ++seq) {
        const uint64_t w = r->slot[(seq - 1) % ExitList::kSlots].load(std::memory_order_acquire);
        if ((w >> 32) != static_cast<uint32_t>(seq)) return Poll::Lost;  // overwritten meanwhile
        pids[n++] = static_cast<int32_t>(static_cast<uint32_t>(w));
    }
    return Poll::Some;
}

}  // namespace pidlock
