#include "pidlock_backend.h"

#include <algorithm>
#include <cstring>

#include "pidlock_table.h"

namespace pidlock {

bool key_less(const KeyRef &a, const KeyRef &b) {
    const size_t n = a.len < b.len ? a.len : b.len;
    const int c = n ? std::memcmp(a.data, b.data, n) : 0;
    return c < 0 || (c == 0 && a.len < b.len);
}

void sort_keys(std::vector<std::string> &keys) {
    std::sort(keys.begin(), keys.end(), [](const std::string &a, const std::string &b) {
        return key_less(KeyRef{a.data(), a.size()}, KeyRef{b.data(), b.size()});
    });
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
}

namespace {

// What is left of the wait for the table's relative timeout: <0 for ever,
// 0 not at all.
int64_t timeout_until(int64_t deadline_ns) {
    if (deadline_ns == kNoDeadline) return -1;
    const int64_t left = deadline_ns - monotonic_ns();
    return left > 0 ? left : 0;
}

}  // namespace

void drop_slot_cache(SlotCache &cache) { LockTable::drop_slot_cache(cache); }

uint32_t TableBackend::capacity() const { return table_->params().capacity; }

AcquireResult TableBackend::acquire_all(const KeyRef *keys, size_t n, Mode mode, int64_t deadline_ns,
                                        const HolderInfo &info, LockSet &set, BusyReport *report,
                                        int *err) {
    set.clear();
    if (n == 0 || n > LockSet::kMaxKeys || mode == Mode::None) {
        if (err) *err = EINVAL;
        return AcquireResult::Error;
    }
    if (!gate_.is_open() && !gate_.wait_open(deadline_ns)) {
        if (report) {
            *report = BusyReport();
            report->key.assign(keys[0].data, keys[0].len);
            report->draining = true;
        }
        return AcquireResult::Busy;
    }
    // The keys' slots go back where they came from, a rollback's too.
    set.set_slot_cache(info.slot_cache);
    for (size_t i = 0; i < n; ++i) {
        LockHandle h;
        const AcquireResult res =
            table_->acquire(keys[i].data, keys[i].len, mode, timeout_until(deadline_ns), info, h, report, err);
        if (res != AcquireResult::Acquired) {
            // All or nothing: what was had goes back, last first.
            release_all(set);
            return res;
        }
        set.slot(i) = pack(h);
        set.set(i + 1, mode);
    }
    if (mode == Mode::Write) set.set_fence(table_->next_fence());
    return AcquireResult::Acquired;
}

int TableBackend::release_several(LockSet &set) {
    int first_err = 0;
    size_t keep = 0;  // slots still held after an error, kept at the front
    for (size_t i = set.size(); i-- > 0;) {
        LockHandle h = unpack(set.slot(i), set.mode());
        const int rc = table_->release(h, set.slot_cache());
        if (rc != 0) {
            if (!first_err) first_err = rc;
            set.slot(keep++) = pack(h);
        }
    }
    if (keep) set.set(keep, set.mode()); else set.clear();
    return first_err;
}

int TableBackend::break_key(const KeyRef &key) { return table_->break_key(key.data, key.len); }

bool TableBackend::snapshot(TableSnapshot &out, int *err) {
    const bool ok = table_->snapshot(out, err);
    out.generation = generation_;
    return ok;
}

int TableBackend::maintain() {
    int32_t pids[ExitList::kSlots];
    size_t n = 0;
    switch (exits_.poll(pids, n)) {
    case ExitReader::Poll::Nothing: return 0;
    case ExitReader::Poll::Lost:  // rare (256 exits unseen) or scribbled: check everything
        table_->audit();
        return table_->reap(0);
    case ExitReader::Poll::Some: break;
    }
    int total = 0;
    for (size_t i = 0; i < n; ++i) {
        const int r = table_->reap(pids[i]);
        if (r > 0) total += r;
    }
    return total;
}

int TableBackend::start_child() {
    table_->audit();
    exits_.skip_to_now();
    return table_->reap(0);
}

void TableBackend::count(Counter c) { table_->count(c); }

}  // namespace pidlock
