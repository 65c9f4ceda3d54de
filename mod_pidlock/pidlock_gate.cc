#include "pidlock_gate.h"

#include <cstring>
#include <ctime>
#include <new>

#include "pidlock_table.h"
#include "pidlock_types.h"

namespace pidlock {

namespace {

constexpr uint32_t kOpen = 0x6f70656e;    // "open"
constexpr uint32_t kClosed = 0x73687574;  // "shut"

std::atomic<uint32_t> *word(void *region) {
    return static_cast<std::atomic<uint32_t> *>(region);
}
const std::atomic<uint32_t> *word(const void *region) {
    return static_cast<const std::atomic<uint32_t> *>(region);
}

}  // namespace

size_t UpgradeGate::region_size() { return 64; }

bool UpgradeGate::format(void *region, size_t size, bool open) {
    if (!region || size < region_size()) return false;
    std::memset(region, 0, region_size());
    new (region) std::atomic<uint32_t>(open ? kOpen : kClosed);
    std::atomic_thread_fence(std::memory_order_release);
    return true;
}

void UpgradeGate::open(void *region) {
    if (region) word(region)->store(kOpen, std::memory_order_release);
}

// Reads nothing: httpd's parent attaches too (before forking) and must not
// read the segment; the first is_open() in a child does.
void GateReader::attach(const void *region) {
    gate_ = region;
    open_.store(region == nullptr, std::memory_order_release);
}

// Anything but "closed" counts as open: a child that scribbles on the word
// can only let its own generation in early, which it could do anyway by
// not asking; it cannot shut anyone out for longer than the parent does.
bool GateReader::look_open() {
    if (word(gate_)->load(std::memory_order_acquire) == kClosed) return false;
    open_.store(true, std::memory_order_release);
    return true;
}

bool GateReader::wait_open(int64_t deadline_ns) {
    for (;;) {
        if (is_open()) return true;
        const int64_t left = deadline_ns - monotonic_ns();
        if (left <= 0) return false;
        // Old-generation requests end in their own time; 5 ms slices keep a
        // waiting request cheap and let it in soon after the gate opens.
        const int64_t slice = left < 5000000 ? left : 5000000;
        struct timespec ts = {0, static_cast<long>(slice)};
        nanosleep(&ts, nullptr);
    }
}

size_t old_add(OldProcess *procs, size_t n, size_t cap, int32_t pid) {
    if (pid <= 0 || n >= cap) return n;
    for (size_t i = 0; i < n; ++i)
        if (procs[i].pid == pid) return n;
    const uint64_t start = process_start_time(pid);
    if (process_state(pid, start) == ProcessState::Gone) return n;
    procs[n] = OldProcess{pid, start};
    return n + 1;
}

size_t old_prune(OldProcess *procs, size_t n, int32_t pid) {
    size_t keep = 0;
    for (size_t i = 0; i < n; ++i) {
        const bool check = pid <= 0 || procs[i].pid == pid;
        if (!check || process_state(procs[i].pid, procs[i].start) == ProcessState::Alive)
            procs[keep++] = procs[i];
    }
    return keep;
}

}  // namespace pidlock
