#include "pidlock_table.h"

#include "pidlock_bytes.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <new>

#include <pthread.h>

#if defined(__x86_64__)
#include <immintrin.h>  // the AES hash
#endif

#include <csignal>
#include <cstdio>
#include <cstdlib>

#include <poll.h>
#include <sched.h>
#include <sys/random.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

// Test builds only (the unit tests define PIDLOCK_CRASH_POINTS): a process
// told test_crash_at(n) ends at point n, inside the stripe's mutex.
#ifdef PIDLOCK_CRASH_POINTS
#define PIDLOCK_CRASH_POINT(n)         \
    do {                               \
        if (crash_at_ == (n)) _exit(0); \
    } while (0)
#else
#define PIDLOCK_CRASH_POINT(n) \
    do {                       \
    } while (0)
#endif

namespace pidlock {

namespace {

constexpr uint32_t kMagic = 0x504c4b31;  // "PLK1"
// 4: the lock-free fast path (state word per entry, holder slots).
// 5: the header says which bucket hash the table uses (AES or SipHash-1-3).
// 6: the AES hash takes the length into its first round key (5's, in the
//    seeds, let keys of other lengths collide whatever the secret): a
//    table of 5 would put keys in other buckets, so it is not shared.
// A test build (-DPIDLOCK_LAYOUT_BUMP=N) has another layout version, as a
// new release with a changed table would: the upgrade test needs two.
#ifndef PIDLOCK_LAYOUT_BUMP
#define PIDLOCK_LAYOUT_BUMP 0
#endif
constexpr uint32_t kLayoutVersion = 6 + PIDLOCK_LAYOUT_BUMP;

enum RecordState : uint8_t { kFree = 0, kWaiting = 1, kHolding = 2 };

// An entry's state word: fast-path holders, flags, and a tag (high 32 bits)
// bumped whenever the entry is freed for reuse or its lock broken, so that
// a CAS or a release prepared against the old entry fails.
constexpr uint64_t kReadersMask = 0xffff;        // fast readers holding
constexpr uint64_t kWriterBit = 1ull << 16;      // a fast writer holds
constexpr uint64_t kQueuedBit = 1ull << 17;      // the entry has records (slow path)
constexpr uint64_t kRepairBit = 1ull << 18;      // being repaired: every fast CAS fails
constexpr uint64_t kDeadBit = 1ull << 19;        // not a live entry (free)
constexpr uint64_t kFlagsMask = kWriterBit | kQueuedBit | kRepairBit | kDeadBit;
inline uint32_t tag_of(uint64_t w) { return static_cast<uint32_t>(w >> 32); }
inline uint64_t with_tag(uint32_t tag) { return static_cast<uint64_t>(tag) << 32; }

// A holder slot's state (low byte; the mode in the next).
enum SlotState : uint32_t { kSlotFree = 0, kSlotIdle = 1, kSlotPending = 2, kSlotHeld = 3, kSlotReleasing = 4 };
inline uint32_t slot_kind(uint32_t st) { return st & 0xff; }
inline Mode slot_mode(uint32_t st) { return static_cast<Mode>((st >> 8) & 0xff); }
inline uint32_t slot_state(SlotState k, Mode m) { return k | (static_cast<uint32_t>(m) << 8); }
inline uint64_t slot_what(uint32_t e1, uint32_t tag) { return e1 | with_tag(tag); }

int64_t mono_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Regions need not be aligned (apr_shm's base is 8 past a page): the table
// starts at the first 64-byte boundary inside it.
constexpr size_t kRegionSlack = 64;
void *align_base(void *base) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(base);
    return reinterpret_cast<void *>(align_up(v, 64));
}

uint32_t next_pow2(uint32_t v) {
    uint32_t p = 1;
    while (p < v && p < (1u << 30)) p <<= 1;
    return p;
}

// The futex word is shared between processes when the region is (no
// FUTEX_PRIVATE_FLAG). Elsewhere waiting degrades to short sleeps.
// True if the wait ran out its time (no wake-up, no change seen).
bool futex_wait(std::atomic<uint32_t> *word, uint32_t seen, int64_t timeout_ns) {
#ifdef __linux__
    timespec ts;
    ts.tv_sec = static_cast<time_t>(timeout_ns / 1000000000);
    ts.tv_nsec = static_cast<long>(timeout_ns % 1000000000);
    const long rc = syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT, seen,
                            timeout_ns >= 0 ? &ts : nullptr, nullptr, 0);
    return rc != 0 && errno == ETIMEDOUT;
#else
    (void)word;
    (void)seen;
    timespec ts{0, 200000};
    if (timeout_ns >= 0 && timeout_ns < 200000) ts.tv_nsec = timeout_ns;
    nanosleep(&ts, nullptr);
    return true;
#endif
}

void futex_wake_all(std::atomic<uint32_t> *word) {
#ifdef __linux__
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAKE, INT_MAX,
            nullptr, nullptr, 0);
#else
    (void)word;
#endif
}

// getpid() is a system call (glibc stopped caching it), about 190 ns on this
// kind of machine: more than the rest of an acquire. Cache it per process and
// forget it in every forked child.
std::atomic<int32_t> g_pid{0};
std::atomic<uint64_t> g_start{0};
void forget_pid() {
    g_pid.store(0, std::memory_order_relaxed);
    g_start.store(0, std::memory_order_relaxed);
}
__attribute__((noinline)) int32_t first_pid() {
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(nullptr, nullptr, forget_pid); });
    const int32_t pid = static_cast<int32_t>(getpid());
    g_pid.store(pid, std::memory_order_relaxed);
    return pid;
}
inline int32_t cached_pid() {
    const int32_t pid = g_pid.load(std::memory_order_relaxed);
    return pid ? pid : first_pid();
}

uint64_t cached_start() {
    uint64_t st = g_start.load(std::memory_order_relaxed);
    if (st == 0) {
        cached_pid();  // registers the fork handler
        st = process_start_time(getpid());
        g_start.store(st, std::memory_order_relaxed);
    }
    return st;
}

// How long a waiter sleeps before it checks that whoever it waits behind is
// alive: the first in line checks the holders every 25 ms (a dead holder
// blocks it well under 100 ms); the others each check the waiter just
// ahead of them, less often, so that a long queue costs little CPU. A
// waiter whose client is watched looks at it at least every 100 ms.
constexpr int64_t kLivenessSliceNs = 25 * 1000000LL;
constexpr int64_t kFollowerSliceNs = 100 * 1000000LL;
// How long a repair waits for live processes' pending or releasing slots on
// the entry to settle before it gives up (and is tried again later).
constexpr int64_t kSettleNs = 50 * 1000000LL;

}  // namespace

namespace {

// State letter and start time (field 22) of a process from one read of
// /proc/<pid>/stat. False if it cannot be read or parsed.
bool read_proc_stat(int32_t pid, char *state, uint64_t *start) {
#ifdef __linux__
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    FILE *f = std::fopen(path, "re");
    if (!f) return false;
    char buf[1024];
    const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    const char *p = std::strrchr(buf, ')');
    if (!p || p[1] != ' ' || p[2] == '\0') return false;
    *state = p[2];
    int field = 2;  // p[1] starts field 3 (state); starttime is field 22
    for (++p; *p && field < 22; ++p)
        if (*p == ' ') ++field;
    if (field != 22 || !std::isdigit(static_cast<unsigned char>(*p))) return false;
    *start = std::strtoull(p, nullptr, 10);
    return true;
#else
    (void)pid;
    (void)state;
    (void)start;
    return false;
#endif
}

}  // namespace

uint32_t LockTable::layout_version() { return kLayoutVersion; }

uint64_t process_start_time(int32_t pid) {
    char state = 0;
    uint64_t start = 0;
    return read_proc_stat(pid, &state, &start) ? start : 0;
}

namespace {

// Whether a process whose main thread is a zombie still has other threads
// (Threads: in /proc/<pid>/status counts them until each is released). The
// main thread of a multi-threaded process killed with SIGKILL is often a
// zombie some milliseconds before the others have exited (they die one by
// one: httpd's worker and event children); one that called pthread_exit()
// stays so while the others run on. Unreadable: true (alive), but for a
// process reaped since its stat was read (no file, or a read that fails
// with ESRCH).
bool other_threads_left(int32_t pid) {
#ifdef __linux__
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/status", static_cast<int>(pid));
    FILE *f = std::fopen(path, "re");
    if (!f) return errno != ENOENT && errno != ESRCH;
    char buf[4096];
    errno = 0;
    const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    const int read_errno = errno;
    std::fclose(f);
    // Nothing to read: reaped since it was opened (ESRCH); any other
    // failure says nothing, and counts as alive.
    if (n == 0) return read_errno != ESRCH;
    buf[n] = '\0';
    const char *t = std::strstr(buf, "\nThreads:");
    if (!t) return true;
    return std::strtol(t + 9, nullptr, 10) > 1;  // 0: being reaped
#else
    (void)pid;
    return false;
#endif
}

}  // namespace

ProcessState process_state(int32_t pid, uint64_t start) {
    if (pid <= 0) return ProcessState::Gone;
    if (kill(pid, 0) != 0 && errno == ESRCH) return ProcessState::Gone;
    char state = 0;
    uint64_t now_start = 0;
    // Anything unreadable counts as alive: releasing a live holder's lock
    // would be far worse than waiting for the parent to report its exit.
    if (!read_proc_stat(pid, &state, &now_start)) return ProcessState::Alive;
    if (start != 0 && now_start != start) return ProcessState::Gone;  // pid reused
    if (state == 'X' || state == 'x') return ProcessState::Gone;
    // A zombie is gone once all its threads are (what a pidfd's poll says).
    if (state == 'Z' && !other_threads_left(pid)) return ProcessState::Gone;
    return ProcessState::Alive;
}

// What a waiter uses to look at the processes it waits behind, again and
// again: the first look at a process opens a pidfd for it and then reads
// /proc once (process_state: pid reuse, zombie); each later look is a poll
// of that pidfd, readable once the process has exited. A few processes are
// watched at a time (those looked at in the last pass are kept); beyond
// them, and where pidfds are not to be had, process_state every time.
struct LockTable::PidWatch {
    static constexpr int kMax = 4;
    struct Watched {
        int32_t pid = 0;
        uint64_t start = 0;
        int fd = -1;
        uint64_t pass = 0;
    } w[kMax];
    uint64_t pass = 0;  // bumped by each look at an entry
    PidWatch() = default;
    PidWatch(const PidWatch &) = delete;
    PidWatch &operator=(const PidWatch &) = delete;
    ~PidWatch() {
        for (const Watched &x : w)
            if (x.fd >= 0) close(x.fd);
    }
    bool gone(int32_t pid, uint64_t start) {
        if (pid <= 0) return true;
        for (Watched &x : w) {
            if (x.fd < 0 || x.pid != pid || x.start != start) continue;
            x.pass = pass;
            pollfd p{x.fd, POLLIN, 0};
            return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
        }
        Watched *free = nullptr;
        for (Watched &x : w)
            if (x.fd < 0 || x.pass < pass) free = &x;
        int fd = -1;
#if defined(__linux__) && defined(SYS_pidfd_open)
        if (free) fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
        if (fd < 0 && free && errno == ESRCH) return true;
#endif
        // Opened before the look in /proc: if that finds the process, the
        // pidfd is of that process (a reused pid has another start time).
        const bool dead = process_state(pid, start) == ProcessState::Gone;
        if (fd < 0) return dead;
        if (dead) {
            close(fd);
            return true;
        }
        if (free->fd >= 0) close(free->fd);
        *free = {pid, start, fd, pass};
        return false;
    }
};

const char *mode_name(Mode m) {
    switch (m) {
    case Mode::Read: return "read";
    case Mode::Write: return "write";
    case Mode::None: break;
    }
    return "none";
}

namespace {

uint64_t load_le64(const unsigned char *p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

inline uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

// One SipRound: the ARX network of the SipHash paper (Aumasson, Bernstein,
// 2012), section 2.
inline void sip_round(uint64_t &v0, uint64_t &v1, uint64_t &v2, uint64_t &v3) {
    v0 += v1;
    v1 = rotl(v1, 13);
    v1 ^= v0;
    v0 = rotl(v0, 32);
    v2 += v3;
    v3 = rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = rotl(v1, 17);
    v1 ^= v2;
    v2 = rotl(v2, 32);
}

}  // namespace

namespace {

// SipHash-c-d: c compression rounds per word, d finalization rounds.
template <int C, int D>
PIDLOCK_NO_ASAN uint64_t siphash_cd(uint64_t k0, uint64_t k1, const void *data, size_t len) {
    // Initialization: the key xored into the four constants
    // "somepseudorandomlygeneratedbytes".
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull;
    uint64_t v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull;
    uint64_t v3 = k1 ^ 0x7465646279746573ull;
    const auto *in = static_cast<const unsigned char *>(data);
    // Compression: each 64-bit little-endian word, c = 2 rounds.
    const size_t whole = len & ~static_cast<size_t>(7);
    for (size_t i = 0; i < whole; i += 8) {
        const uint64_t m = load_le64(in + i);
        v3 ^= m;
        for (int r = 0; r < C; ++r) sip_round(v0, v1, v2, v3);
        v0 ^= m;
    }
    // The last word: the remaining bytes, and the length mod 256 in its top byte.
    // One load where it stays on the page (see copy_short), its bytes past
    // the end masked off.
    uint64_t last = static_cast<uint64_t>(len & 0xff) << 56;
    const size_t rest = len - whole;
#if PIDLOCK_WORDWISE
    if (rest && within_page(in + whole)) {
        uint64_t w;
        std::memcpy(&w, in + whole, 8);
        last |= w & ((1ull << (8 * rest)) - 1);
    } else
#endif
    {
        for (size_t i = 0; i < rest; ++i) last |= static_cast<uint64_t>(in[whole + i]) << (8 * i);
    }
    v3 ^= last;
    for (int r = 0; r < C; ++r) sip_round(v0, v1, v2, v3);
    v0 ^= last;
    // Finalization: d rounds.
    v2 ^= 0xff;
    for (int i = 0; i < D; ++i) sip_round(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

}  // namespace

uint64_t siphash24(uint64_t k0, uint64_t k1, const void *data, size_t len) {
    return siphash_cd<2, 4>(k0, k1, data, len);
}

uint64_t siphash13(uint64_t k0, uint64_t k1, const void *data, size_t len) {
    return siphash_cd<1, 3>(k0, k1, data, len);
}

uint64_t siphash24(const unsigned char key[16], const void *data, size_t len) {
    return siphash24(load_le64(key), load_le64(key + 8), data, len);
}

// ------------------------------------------------------------ AES hash
//
// The bucket hash where the CPU has AES instructions: each 16-byte block
// of the key, xored with a secret seed of its own, goes through three AES
// rounds under secret round keys, the first of them xored with the length;
// the blocks' results are xored and go through one more round. This is the
// construction Go's runtime uses for its maps' hash-flooding defence
// (aeshash): without the 128-bit secrets, which bucket a key lands in is not
// predictable. It costs about a sixth of SipHash-1-3 for the short keys of
// the request path. Keys of 1-16 bytes are one block (zero-padded), 17-32
// two (the first and the last 16 bytes, overlapping), 33-64 four; longer
// keys use SipHash-1-3.
//
// The length goes into the first round key, not into the blocks' seeds as
// Go's does only after scrambling it with a round of its own: xored
// straight into the seed, a difference in length is cancelled by the same
// difference in the key's first byte, so keys of other lengths collide
// whatever the secrets (Hash.KeysOfOtherLengthsCannotBeMadeToCollide: five
// keys of 17-32 bytes, six of 33-64). After the first round's S-boxes, two
// lanes' states differ by a one-byte length difference only if four S-boxes,
// their inputs masked by the secret seed, produce prescribed differences
// (MixColumns spreads one byte over four): at most 2^-24 a guess, and no
// guess can be checked.
#if defined(__x86_64__)
namespace {

// A key of 1-16 bytes that ends less than 16 bytes before the end of its
// page, copied into a block (rare: out of the common path's frame).
__attribute__((target("sse2"), noinline, cold)) __m128i load_partial_copy(const unsigned char *p, size_t n) {
    alignas(16) unsigned char buf[16] = {};
    std::memcpy(buf, p, n);
    return _mm_load_si128(reinterpret_cast<const __m128i *>(buf));
}

// The key's 1-16 bytes in one block, zero above: one load where the 16
// bytes from `p` stay on pages the key touches (the same reasoning as
// within_page), else a copy.
__attribute__((target("sse2"))) PIDLOCK_NO_ASAN inline __m128i load_partial(const unsigned char *p, size_t n) {
    alignas(16) static const unsigned char kMask[32] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const uintptr_t first = reinterpret_cast<uintptr_t>(p);
    if (__builtin_expect(((first + 15) >> 12) != ((first + n - 1) >> 12), 0)) return load_partial_copy(p, n);
    const __m128i m = _mm_loadu_si128(reinterpret_cast<const __m128i *>(kMask + 16 - n));
    return _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)), m);
}

__attribute__((target("aes,sse2"))) inline __m128i aes_lane(__m128i block, __m128i seed, __m128i r0, __m128i r1,
                                                           __m128i r2) {
    __m128i x = _mm_xor_si128(block, seed);
    x = _mm_aesenc_si128(x, r0);
    x = _mm_aesenc_si128(x, r1);
    return _mm_aesenc_si128(x, r2);
}

// The i-th 128-bit secret: unaligned loads, as a LockTable may live in
// memory aligned to 8 bytes only (an APR pool).
__attribute__((target("sse2"))) inline __m128i secret(const AesHashKey &key, int i) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i *>(key.k + 2 * i));
}

}  // namespace

__attribute__((target("aes,sse2"))) PIDLOCK_NO_ASAN uint64_t aes_hash(const AesHashKey &key, const void *data,
                                                                     size_t len) {
    const auto *in = static_cast<const unsigned char *>(data);
    // The length, in the low word of the first round key of every lane (see
    // above why not in the seeds): keys of different lengths go through
    // different permutations.
    const __m128i l = _mm_cvtsi64_si128(static_cast<long long>(len));
    const __m128i r0 = _mm_xor_si128(secret(key, 4), l), r1 = secret(key, 5), r2 = secret(key, 6);
    __m128i h;
    if (len <= 16) {
        if (len == 0) return 0;
        h = aes_lane(load_partial(in, len), secret(key, 0), r0, r1, r2);
    } else if (len <= 32) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i *>(in));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(in + len - 16));
        h = _mm_xor_si128(aes_lane(a, secret(key, 0), r0, r1, r2), aes_lane(b, secret(key, 1), r0, r1, r2));
    } else if (len <= 64) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i *>(in));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(in + 16));
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i *>(in + len - 32));
        const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i *>(in + len - 16));
        h = _mm_xor_si128(
            _mm_xor_si128(aes_lane(a, secret(key, 0), r0, r1, r2), aes_lane(b, secret(key, 1), r0, r1, r2)),
            _mm_xor_si128(aes_lane(c, secret(key, 2), r0, r1, r2), aes_lane(d, secret(key, 3), r0, r1, r2)));
    } else {
        return siphash13(key.sip[0], key.sip[1], data, len);
    }
    h = _mm_aesenc_si128(h, secret(key, 7));
    return static_cast<uint64_t>(_mm_cvtsi128_si64(h));
}

bool aes_hash_available() { return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse2"); }
#else
uint64_t aes_hash(const AesHashKey &key, const void *data, size_t len) {
    return siphash13(key.sip[0], key.sip[1], data, len);
}
bool aes_hash_available() { return false; }
#endif

// The AES hash's secrets, from the table's 128-bit key: SipHash-2-4 of a
// counter under it, so every process derives the same ones.
void derive_aes_hash_key(uint64_t k0, uint64_t k1, AesHashKey &out) {
    for (uint64_t i = 0; i < sizeof out.k / sizeof(uint64_t); ++i) {
        const uint64_t m = 0x7069646c6f636b00ull | i;  // "pidlock" + i
        out.k[i] = siphash24(k0, k1, &m, sizeof m);
    }
    out.sip[0] = k0;
    out.sip[1] = k1;
}

int64_t wall_clock_us() {
    // The coarse clock (a few ms of resolution) costs a quarter of the precise
    // one; "held since" is shown to the millisecond at best.
    timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

int64_t monotonic_ns() { return mono_ns(); }

// Read-mostly layout first; every field written at run time sits on a cache
// line of its own, so processes working on distinct keys share no line.
// Only the fixed fields up to `sip` are read at attach time (and checked
// against what the attacher expects); where things are is computed from
// the parameters by layout(), never read from here.
namespace {
constexpr uint32_t kHashSip = 0, kHashAes = 1;
// Tests only (LockTable::prefer_siphash): tables formatted from now on use
// SipHash-1-3 even where AES instructions exist.
bool g_prefer_siphash = false;

struct HeaderFixed {
    uint32_t magic;
    uint32_t layout_version;
    uint32_t capacity, key_cap, stripes, nbuckets, slots;
    uint32_t hash_kind;  // the bucket hash: kHashSip or kHashAes
    uint64_t total_size;
    uint64_t sip[2];  // the key of the bucket hash, random per full start
};
}  // namespace

struct LockTable::Header {
    HeaderFixed fixed;
    // Entries no stripe has reserved: capacity = budget + reserves + in use.
    alignas(64) std::atomic<int64_t> budget;
    std::atomic<uint32_t> high_water;
    std::atomic<uint64_t> c_bad_keys;
    std::atomic<uint64_t> c_repairs;
    // Records in state waiting, table-wide (PidLockMaxWaiters' total): changed
    // only when a request starts or stops waiting, never on the uncontended path.
    alignas(64) std::atomic<uint32_t> waiting;
    alignas(64) std::atomic<uint64_t> fence;
    alignas(64) std::atomic<uint64_t> entry_free;
    alignas(64) std::atomic<uint64_t> record_free;
};

// Per stripe, guarded by the stripe's mutex: counters and small caches of
// free entries and records, so the common path touches no shared line.
struct alignas(64) LockTable::Stripe {
    uint64_t acquired_read, acquired_write, waited, timeouts, broken, reaped, full;
    uint64_t refused_waiters;  // PidLockMaxWaiters said no
    uint64_t client_gone;      // waits ended because the client hung up
    std::atomic<uint32_t> used;  // keys in this stripe; read unlocked for the high water
    std::atomic<uint32_t> reserve;  // capacity taken from the budget, not in use;
                                    // other stripes may take single units from it
    uint32_t peak;               // most keys this stripe has had
    uint64_t wait_hist[kWaitBuckets];
    uint64_t wait_sum_us;
    // Set by whoever holds the stripe's mutex, cleared just before release:
    // found set by the next holder, it says the last one died mid-update,
    // whatever the mutex mechanism (APR's robust mutex hides EOWNERDEAD).
    std::atomic<uint32_t> inside;
    uint32_t entry_cache, entry_cached;    // index + 1, count
    uint32_t record_cache, record_cached;  // index + 1, count
};

// One key, held, waited for, or idle (kept for reuse). Guarded by its
// bucket's stripe mutex, except `word` (the fast path's state word), and
// `free_next`; `chain`, `hash`, `key_len` and the key are read without the
// mutex by the fast lookup, which trusts nothing it finds there until its
// CAS on the word (whose tag changes on every reuse) has succeeded.
struct alignas(64) LockTable::Entry {
    std::atomic<uint64_t> word;
    std::atomic<uint32_t> free_next;
    uint32_t chain;  // next entry in the bucket, index + 1
    uint32_t key_len;
    uint64_t hash;
    uint32_t readers;  // holding read through a record (slow path)
    uint32_t writer;   // 1 while a writer holds through a record
    uint32_t waiting_read, waiting_write;
    uint32_t first, last;  // records, arrival order, index + 1
};

// One request's claim on an entry: holding or waiting.
struct LockTable::Record {
    std::atomic<uint32_t> free_next;
    // The futex word its waiter sleeps on: bumped when it is granted, so a
    // release wakes exactly the requests it lets in, not every waiter.
    std::atomic<uint32_t> wake;
    std::atomic<uint64_t> token;  // changes on every allocation, never 0 then
    uint64_t allocations;
    uint32_t entry;               // index + 1
    uint32_t prev, next;          // in the entry's list
    uint8_t state;
    Mode mode;
    int32_t pid;
    uint64_t pid_start;  // the process's start time: tells a reused pid apart
    uint64_t thread;
    int64_t since_us;
    uint64_t request;    // shared by the records of one request
    uint8_t has_user;
    char method[kMethodCap];
    char client[kClientCap];
    char user[kUserCap];
    char uri[kUriCap];
};

// A holder slot: owned by one process (which alone writes it, but for a
// repairer freeing the slots of a dead one), used by one request at a time
// for one fast-path hold. The owner marks it pending before its CAS on the
// entry's word and held after; releasing before its CAS and idle after.
struct alignas(64) LockTable::Slot {
    std::atomic<uint32_t> state;      // SlotState | mode << 8
    std::atomic<int32_t> owner;       // pid, 0: free (claimed by a CAS), -1: being freed
    std::atomic<uint64_t> what;       // entry index + 1 | tag << 32
    std::atomic<uint32_t> free_next;  // the owner's pool
    uint32_t unused;
    std::atomic<uint64_t> owner_start;
    uint64_t token;  // bumped on every hold (the handle's check)
    std::atomic<uint64_t> acquired_read, acquired_write;  // summed by snapshot()
    uint64_t thread;
    int64_t since_us;
    uint64_t request;
    uint8_t has_user;
    char method[kMethodCap];
    char client[kClientCap];
    char user[kUserCap];
    char uri[kUriCap];
};

namespace {

// Slots beyond the capacity: at most this many free ones can sit in each
// stripe's cache, so `capacity` slots are always reachable from any stripe.
constexpr uint32_t kStripeCache = 4;
// Entries a stripe reserves from the capacity budget at a time, and twice
// this is the most it keeps unused before giving some back.
constexpr uint32_t kReserveChunk = 4;

struct Layout {
    uint32_t nbuckets, slots;
    size_t buckets_off, entries_off, records_off, keys_off, stripes_off, slots_off, end;
};

}  // namespace

bool LockTable::layout(const TableParams &p, void *out) {
    if (p.capacity == 0 || p.capacity > (1u << 24) || p.key_cap == 0 || p.key_cap > (1u << 20) ||
        p.stripes == 0 || (p.stripes & (p.stripes - 1)) != 0 || p.stripes > 4096)
        return false;
    Layout &l = *static_cast<Layout *>(out);
    l.slots = p.capacity + p.stripes * kStripeCache;
    l.nbuckets = std::max(next_pow2(p.capacity * 2), p.stripes);
    size_t off = align_up(sizeof(Header), 64);
    l.buckets_off = off;
    off += align_up(sizeof(uint32_t) * l.nbuckets, 64);
    l.stripes_off = off;
    off += sizeof(Stripe) * p.stripes;
    l.entries_off = off;
    off += sizeof(Entry) * l.slots;
    l.records_off = off;
    off += align_up(sizeof(Record) * l.slots, 64);
    l.keys_off = off;
    off += align_up(static_cast<size_t>(p.key_cap) * l.slots, 64);
    l.slots_off = off;
    off += sizeof(Slot) * l.slots;
    l.end = off;
    return true;
}

size_t LockTable::region_size(const TableParams &p) {
    Layout l;
    if (!layout(p, &l)) return 0;
    return l.end + kRegionSlack;
}

bool LockTable::format(void *base, size_t size, const TableParams &p, const unsigned char *hash_key) {
    Layout l;
    if (!layout(p, &l) || base == nullptr || size < l.end + kRegionSlack) return false;
    unsigned char key[16];
    if (hash_key) {
        std::memcpy(key, hash_key, sizeof key);
    } else if (getrandom(key, sizeof key, 0) != static_cast<ssize_t>(sizeof key)) {
        // No kernel randomness (tests and benches only pass no key): still
        // different per call.
        const uint64_t a = static_cast<uint64_t>(mono_ns()) ^ reinterpret_cast<uintptr_t>(base);
        const uint64_t b = static_cast<uint64_t>(wall_clock_us()) * 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(getpid());
        std::memcpy(key, &a, 8);
        std::memcpy(key + 8, &b, 8);
    }
    base = align_base(base);
    std::memset(base, 0, l.end);
    Header *h = new (base) Header;
    HeaderFixed &f = h->fixed;
    f.capacity = p.capacity;
    f.key_cap = p.key_cap;
    f.stripes = p.stripes;
    f.nbuckets = l.nbuckets;
    f.slots = l.slots;
    f.total_size = l.end;
    f.sip[0] = load_le64(key);
    f.sip[1] = load_le64(key + 8);
    f.hash_kind = !g_prefer_siphash && aes_hash_available() ? kHashAes : kHashSip;
    char *b = static_cast<char *>(base);
    Entry *entries = reinterpret_cast<Entry *>(b + l.entries_off);
    Record *records = reinterpret_cast<Record *>(b + l.records_off);
    Stripe *stripes = reinterpret_cast<Stripe *>(b + l.stripes_off);
    Slot *slots = reinterpret_cast<Slot *>(b + l.slots_off);
    for (uint32_t i = 0; i < p.stripes; ++i) new (&stripes[i]) Stripe();
    for (uint32_t i = 0; i < l.slots; ++i) {
        new (&entries[i]) Entry();
        new (&records[i]) Record();
        new (&slots[i]) Slot();
        entries[i].word.store(kDeadBit, std::memory_order_relaxed);
        slots[i].free_next.store(i + 1 < l.slots ? i + 2 : 0, std::memory_order_relaxed);
        // Free lists hold index + 1, 0 ends them; tag 0.
        entries[i].free_next.store(i + 1 < l.slots ? i + 2 : 0, std::memory_order_relaxed);
        records[i].free_next.store(i + 1 < l.slots ? i + 2 : 0, std::memory_order_relaxed);
    }
    h->entry_free.store(1, std::memory_order_relaxed);
    h->record_free.store(1, std::memory_order_relaxed);
    h->budget.store(p.capacity, std::memory_order_relaxed);
    h->fence.store(static_cast<uint64_t>(wall_clock_us()), std::memory_order_relaxed);
    f.layout_version = kLayoutVersion;
    std::atomic_thread_fence(std::memory_order_release);
    f.magic = kMagic;
    return true;
}

// Reads the fixed header fields once (a copy: whatever another process
// writes meanwhile, each is looked at once) and checks them. Nothing the
// header says is followed: where things are comes from layout().
bool LockTable::read_header(void *base, size_t size, TableParams &p, HashSeed &seed) {
    if (!base) return false;
    const auto *h = static_cast<const Header *>(align_base(base));
    HeaderFixed f;
    std::memcpy(&f, &h->fixed, sizeof f);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (f.magic != kMagic || f.layout_version != kLayoutVersion) return false;
    p.capacity = f.capacity;
    p.key_cap = f.key_cap;
    p.stripes = f.stripes;
    Layout l;
    if (!layout(p, &l)) return false;
    if (f.nbuckets != l.nbuckets || f.slots != l.slots || f.total_size != l.end) return false;
    if (size != 0 && size < l.end + kRegionSlack) return false;
    // A table made by a process with AES instructions is not shared with
    // one without: they would put a key in different buckets.
    if (f.hash_kind != kHashSip && (f.hash_kind != kHashAes || !aes_hash_available())) return false;
    seed.sip[0] = f.sip[0];
    seed.sip[1] = f.sip[1];
    seed.kind = f.hash_kind;
    return true;
}

bool LockTable::check_region(void *base, size_t size, const TableParams &expect) {
    TableParams got;
    HashSeed seed;
    return read_header(base, size, got, seed) && got.capacity == expect.capacity &&
           got.key_cap == expect.key_cap && got.stripes == expect.stripes;
}

namespace {

std::mutex g_registry_mu;
std::vector<std::pair<LockTable *, uint64_t>> *g_registry = nullptr;
uint64_t g_serial = 0;
// Called from ~ThreadSlots with the registry's mutex held: the table still
// exists, so its pool may take the slot back.
void (*g_give_back)(LockTable *, uint32_t, int32_t) = nullptr;

struct ThreadSlots {
    struct One {
        LockTable *table = nullptr;
        uint64_t serial = 0;
        int32_t pid = 0;
        uint32_t s1 = 0;
    };
    static constexpr int kTables = 4;
    One one[kTables];
    ~ThreadSlots();
};
thread_local ThreadSlots t_slots;
// SlotCache::pid of a cache that takes no more slots (drop_slot_cache).
constexpr int32_t kCacheClosed = -1;

}  // namespace


ThreadSlots::~ThreadSlots() {
    std::lock_guard<std::mutex> g(g_registry_mu);
    if (!g_registry || !g_give_back) return;
    const int32_t pid = cached_pid();
    for (One &o : one) {
        if (!o.s1 || o.pid != pid) continue;
        for (const auto &r : *g_registry)
            if (r.first == o.table && r.second == o.serial) g_give_back(o.table, o.s1, pid);
        o.s1 = 0;
    }
}

LockTable::LockTable(void *base, StripeLocks *locks) : locks_(locks) {
    TableParams p;
    HashSeed seed;
    if (read_header(base, 0, p, seed)) attach(base, p, seed);
}

LockTable::LockTable(void *base, size_t size, const TableParams &expect, StripeLocks *locks)
    : locks_(locks) {
    TableParams p;
    HashSeed seed;
    if (read_header(base, size, p, seed) && p.capacity == expect.capacity && p.key_cap == expect.key_cap &&
        p.stripes == expect.stripes)
        attach(base, p, seed);
}

void LockTable::attach(void *base, const TableParams &p, const HashSeed &seed) {
    {
        std::lock_guard<std::mutex> g(g_registry_mu);
        if (!g_registry) g_registry = new std::vector<std::pair<LockTable *, uint64_t>>();
        g_give_back = &LockTable::give_back;
        serial_ = ++g_serial;
        g_registry->emplace_back(this, serial_);
    }
    Layout l;
    layout(p, &l);
    hdr_ = static_cast<Header *>(align_base(base));
    base_ = reinterpret_cast<char *>(hdr_);
    params_ = p;
    nbuckets_ = l.nbuckets;
    slots_ = l.slots;
    buckets_ = reinterpret_cast<uint32_t *>(base_ + l.buckets_off);
    stripes_ = reinterpret_cast<Stripe *>(base_ + l.stripes_off);
    entries_ = reinterpret_cast<Entry *>(base_ + l.entries_off);
    records_ = reinterpret_cast<Record *>(base_ + l.records_off);
    keys_ = base_ + l.keys_off;
    slots_arr_ = reinterpret_cast<Slot *>(base_ + l.slots_off);
    hash_key_.sip[0] = seed.sip[0];
    hash_key_.sip[1] = seed.sip[1];
    aes_ = seed.kind == kHashAes;
    if (aes_) derive_aes_hash_key(seed.sip[0], seed.sip[1], hash_key_);
}

void LockTable::prefer_siphash(bool on) { g_prefer_siphash = on; }

bool LockTable::uses_aes_hash() const { return aes_; }

uint64_t LockTable::hash(const char *key, size_t len) const {
    return aes_ ? aes_hash(hash_key_, key, len) : siphash13(hash_key_.sip[0], hash_key_.sip[1], key, len);
}

// ----------------------------------------------------------- holder slots
//
// Each thread keeps one idle slot of each table it used (the common case: a
// request holds one key); more come from the process's pool, and the pool
// from the table's free list. Slots stay with their process until it is
// found gone (reap, repair, audit). A thread that ends gives its cached slot
// back to its process's pool, if the table object is still there.

LockTable::~LockTable() {
    std::lock_guard<std::mutex> g(g_registry_mu);
    if (!g_registry) return;
    for (auto it = g_registry->begin(); it != g_registry->end(); ++it)
        if (it->first == this && it->second == serial_) {
            g_registry->erase(it);
            break;
        }
}

LockTable::Slot *LockTable::slot(uint32_t s1) const { return slots_arr_ + (s1 - 1); }

// The connection's cached slot, inline (the request path's common case);
// the rest out of line.
inline __attribute__((always_inline)) uint32_t LockTable::take_slot(int32_t pid, SlotCache *cache) {
    if (cache) {
        const uint32_t s1 = cache->slot;
        if (s1 && cache->table == this && cache->serial == serial_ && cache->pid == pid) {
            cache->slot = 0;
            return s1;
        }
    }
    return take_slot_elsewhere(pid);
}

uint32_t LockTable::take_slot_elsewhere(int32_t pid) {
    for (ThreadSlots::One &o : t_slots.one) {
        if (o.table == this && o.serial == serial_ && o.pid == pid && o.s1) {
            const uint32_t s1 = o.s1;
            o.s1 = 0;
            return s1;
        }
    }
    if (pool_pid_.load(std::memory_order_acquire) != pid) {
        // A forked child: the pool it inherited is its parent's.
        static std::mutex mu;
        std::lock_guard<std::mutex> g(mu);
        if (pool_pid_.load(std::memory_order_relaxed) != pid) {
            pool_head_.store(0, std::memory_order_relaxed);
            pool_pid_.store(pid, std::memory_order_release);
        }
    }
    uint64_t h = pool_head_.load(std::memory_order_acquire);
    for (;;) {
        const uint32_t s1 = static_cast<uint32_t>(h);
        if (s1 == 0 || s1 > slots_) break;
        const uint32_t next = slot(s1)->free_next.load(std::memory_order_relaxed);
        const uint64_t nh = (((h >> 32) + 1) << 32) | next;
        if (pool_head_.compare_exchange_weak(h, nh, std::memory_order_acq_rel, std::memory_order_acquire)) {
            if (slot(s1)->owner.load(std::memory_order_relaxed) == pid) return s1;
            h = pool_head_.load(std::memory_order_acquire);  // not ours (scribbled): drop it
        }
    }
    // From the table: an unowned slot, claimed by one CAS on its owner (no
    // list to leave half-updated by a death: a slot is owned or it is not).
    const uint32_t start = slot_hint_.load(std::memory_order_relaxed);
    for (uint32_t i = 0; i < slots_; ++i) {
        const uint32_t s1 = 1 + (start + i) % slots_;
        Slot *sl = slot(s1);
        int32_t none = 0;
        // Reserved (-2) first, the start time next, the owner last: whoever
        // reads an owner reads its own start time, never a former owner's
        // (which would make a live process look gone).
        if (sl->owner.load(std::memory_order_relaxed) != 0 ||
            !sl->owner.compare_exchange_strong(none, -2, std::memory_order_acq_rel))
            continue;
        sl->owner_start.store(cached_start(), std::memory_order_relaxed);
        sl->state.store(kSlotIdle, std::memory_order_relaxed);
        sl->owner.store(pid, std::memory_order_release);
        slot_hint_.store(s1, std::memory_order_relaxed);
        return s1;
    }
    return 0;
}

// Gives a slot of a process that is gone back to the table.
void LockTable::unown_slot(Slot *sl, int32_t pid) {
    const uint32_t state = sl->state.load(std::memory_order_relaxed);
    if (!sl->owner.compare_exchange_strong(pid, -1)) return;  // another reaper has it
    sl->state.store(kSlotFree, std::memory_order_relaxed);
    (void)state;
    sl->owner.store(0, std::memory_order_release);
}

inline __attribute__((always_inline)) void LockTable::give_slot(uint32_t s1, int32_t pid, SlotCache *cache) {
    if (cache && cache->slot == 0 && cache->pid != kCacheClosed) {
        *cache = SlotCache{this, serial_, pid, s1};
        return;
    }
    give_slot_elsewhere(s1, pid, cache);
}

void LockTable::give_slot_elsewhere(uint32_t s1, int32_t pid, SlotCache *cache) {
    if (cache && cache->table == this && cache->serial == serial_ && cache->pid == pid) {
        pool_push(s1);  // it holds one of ours already
        return;
    }
    ThreadSlots::One *spare = nullptr;
    for (ThreadSlots::One &o : t_slots.one) {
        if (o.table == this && o.serial == serial_ && o.pid == pid) {
            if (o.s1 == 0) {
                o.s1 = s1;
                return;
            }
            spare = nullptr;
            break;
        }
        if (!spare && (o.s1 == 0 || o.pid != pid)) spare = &o;
    }
    if (spare) {
        // Another table's (or a parent's) entry, empty or stale: take it.
        *spare = ThreadSlots::One{this, serial_, pid, s1};
        return;
    }
    pool_push(s1);
}

void LockTable::give_back(LockTable *t, uint32_t s1, int32_t pid) {
    if (t->pool_pid_.load(std::memory_order_acquire) == pid) t->pool_push(s1);
}

void LockTable::drop_slot_cache(SlotCache &c) {
    const SlotCache mine = c;
    // Closed: a release after this (none is expected: a connection's
    // requests end before it) gives its slot elsewhere.
    c = SlotCache();
    c.pid = kCacheClosed;
    if (!mine.slot || mine.pid != cached_pid()) return;  // none, or a parent's (its copy in a forked child)
    std::lock_guard<std::mutex> g(g_registry_mu);
    if (!g_registry) return;
    for (const auto &r : *g_registry)
        if (r.first == mine.table && r.second == mine.serial) {
            give_back(r.first, mine.slot, mine.pid);
            return;
        }
}

void LockTable::pool_push(uint32_t s1) {
    uint64_t h = pool_head_.load(std::memory_order_relaxed);
    for (;;) {
        slot(s1)->free_next.store(static_cast<uint32_t>(h), std::memory_order_relaxed);
        const uint64_t nh = (((h >> 32) + 1) << 32) | s1;
        if (pool_head_.compare_exchange_weak(h, nh, std::memory_order_release, std::memory_order_relaxed))
            return;
    }
}

namespace {
// A holder's field: `src` (null: empty) cut to cap - 1 bytes and
// NUL-terminated, in one pass, without library calls: the fields are short,
// and strnlen + memcpy on each cost more than this. Sixteen bytes at a time
// (SSE2; else eight) where such a load stays inside the page its first byte
// is on (it may read past the string's end, never into a page the string
// does not touch: the same reasoning as the C library's own string
// functions, hence no ASan here); the bytes of the last block after the
// NUL are stored too, and never read.
// Inlined into fill_holder (four calls: a call each cost more than most
// copies), except under AddressSanitizer: there it stays a call of its own,
// so that fill_holder's stores into the table are still checked.
#if defined(__SANITIZE_ADDRESS__)
#define PIDLOCK_COPY_INLINE __attribute__((noinline))
#else
#define PIDLOCK_COPY_INLINE inline __attribute__((always_inline))
#endif
PIDLOCK_NO_ASAN PIDLOCK_COPY_INLINE void copy_short(char *dst, size_t cap, const char *src) {
    size_t i = 0;
    if (src) {
#if defined(__SSE2__) && PIDLOCK_WORDWISE
        // Sixteen bytes at a time while the field has room for them.
        while (i + 16 <= cap && within_page(src + i, 16)) {
            const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i *>(src + i));
            _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + i), w);
            if (const unsigned z = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(w, _mm_setzero_si128())))) {
                dst[i + static_cast<size_t>(__builtin_ctz(z))] = '\0';
                return;
            }
            i += 16;
        }
        if (i == cap) {  // no NUL within the field: cut
            dst[cap - 1] = '\0';
            return;
        }
#endif
#if PIDLOCK_WORDWISE
        while (i + 8 < cap && within_page(src + i)) {
            uint64_t w;
            std::memcpy(&w, src + i, 8);
            std::memcpy(dst + i, &w, 8);
            if (const uint64_t z = zero_bytes(w)) {
                dst[i + (static_cast<size_t>(__builtin_ctzll(z)) >> 3)] = '\0';
                return;
            }
            i += 8;
        }
#endif
        for (; i + 1 < cap && src[i]; ++i) dst[i] = src[i];
    }
    dst[i] = '\0';
}
}  // namespace

namespace {
// Who holds or waits, from `info`, into a fast-path slot or a record: both
// carry the same holder fields. `info`'s fields are read once, before the
// first store: a char store may alias anything, so the compiler would
// otherwise read each one back from the caller's frame after the copies
// before it, and such a load behind stores into the table costs up to
// 20 ns where its address matches one of theirs in the low 12 bits (the
// uncontended benchmark ran at 45 or 60 ns by where the caller's stack
// lay; with the fields read first, 40 ns wherever it lies).
template <typename Holder>
inline __attribute__((always_inline)) void fill_holder(Holder *h, const HolderInfo &info) {
    const char *const method = info.method, *const uri = info.uri, *const client = info.client,
                      *const user = info.user;
    const uint64_t thread = info.thread, request = info.request;
    h->thread = thread;
    h->request = request;
    h->has_user = user != nullptr;
    copy_short(h->method, sizeof h->method, method);
    copy_short(h->uri, sizeof h->uri, uri);
    copy_short(h->client, sizeof h->client, client);
    copy_short(h->user, sizeof h->user, user);
}
}  // namespace

inline __attribute__((always_inline)) void LockTable::fill_slot(Slot *sl, const HolderInfo &info) {
    fill_holder(sl, info);
}

// The bucket's chain walked without the mutex: every index is checked and
// the walk bounded; what it finds is only a candidate (the caller's CAS on
// the word, whose tag changes on reuse, decides).
inline __attribute__((always_inline)) uint32_t LockTable::lookup(uint32_t bucket, uint64_t hash, size_t len) const {
    uint32_t e1 = __atomic_load_n(&buckets_[bucket], __ATOMIC_ACQUIRE);
    for (uint32_t steps = 0; e1 != 0 && e1 <= slots_ && steps < 64; ++steps) {
        const Entry *e = entry(e1);
        // The key's bytes are compared by try_fast(), against the word.
        if (__atomic_load_n(&e->hash, __ATOMIC_RELAXED) == hash && __atomic_load_n(&e->key_len, __ATOMIC_RELAXED) == len)
            return e1;
        e1 = __atomic_load_n(&e->chain, __ATOMIC_ACQUIRE);
    }
    return 0;
}

// One fast attempt on entry e1 with slot s1: 1 acquired (h filled), 0 the
// word says the slow path must decide (queued, repair, dead, held against
// us), -1 the entry is not this key any more.
inline __attribute__((always_inline)) int LockTable::try_fast(uint32_t e1, uint32_t s1, Mode mode, LockHandle &h,
                                                             uint32_t si, const char *key, size_t len,
                                                             uint64_t hash) {
    Entry *e = entry(e1);
    Slot *sl = slot(s1);
    for (int spins = 0; spins < 16; ++spins) {
        uint64_t w = e->word.load(std::memory_order_acquire);
        if (w & (kQueuedBit | kRepairBit | kDeadBit | kWriterBit)) return (w & kDeadBit) ? -1 : 0;
        if (mode == Mode::Write ? (w & kReadersMask) != 0 : (w & kReadersMask) == kReadersMask) return 0;
        // The key as of this word: an entry reused after this load has
        // another tag, and the CAS below fails.
        if (__atomic_load_n(&e->hash, __ATOMIC_RELAXED) != hash ||
            __atomic_load_n(&e->key_len, __ATOMIC_RELAXED) != len || !same_bytes(key_of(e1), key, len))
            return -1;
        const uint32_t tag = tag_of(w);
        // The marks need no fence of their own: the CAS after them is a
        // release, and a repairer's REPAIR CAS, later in the word's order,
        // acquires it, so the repairer sees this mark (or a later one).
        sl->what.store(slot_what(e1, tag), std::memory_order_relaxed);
        sl->state.store(slot_state(kSlotPending, mode), std::memory_order_release);
        PIDLOCK_CRASH_POINT(23);
        const uint64_t nw = mode == Mode::Write ? w | kWriterBit : w + 1;
        if (e->word.compare_exchange_strong(w, nw, std::memory_order_seq_cst, std::memory_order_relaxed)) {
            PIDLOCK_CRASH_POINT(24);
            sl->since_us = wall_clock_us();
            const uint64_t token = sl->token + 1;
            sl->token = token;
            sl->state.store(slot_state(kSlotHeld, mode), std::memory_order_release);
            std::atomic<uint64_t> &c = mode == Mode::Write ? sl->acquired_write : sl->acquired_read;
            c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
            h.record = s1 | LockHandle::kSlotBit;
            h.stripe = si;
            h.token = token;
            h.mode = mode;
            return 1;
        }
        sl->state.store(kSlotIdle, std::memory_order_release);
        if (tag_of(w) != tag) return -1;
    }
    return 0;
}

// Under the stripe's mutex: the entry has records, so no fast acquire may
// succeed on it any more (a concurrent one's CAS fails and it queues).
void LockTable::set_queued(Entry *e) {
    e->word.fetch_or(kQueuedBit, std::memory_order_seq_cst);
}

// Under the stripe's mutex: the queued bit says whether the entry has records.
void LockTable::settle_queued(Entry *e) {
    if (e->first == 0) e->word.fetch_and(~kQueuedBit, std::memory_order_seq_cst);
    else e->word.fetch_or(kQueuedBit, std::memory_order_seq_cst);
}

bool LockTable::test_crash_at(int point) {
    crash_at_ = point;
#ifdef PIDLOCK_CRASH_POINTS
    return true;
#else
    return false;
#endif
}

void LockTable::set_wait_limits(uint32_t per_key, uint32_t total) {
    max_wait_key_ = per_key;
    max_wait_total_ = total;
}

LockTable::Entry *LockTable::entry(uint32_t idx1) const {
    return entries_ + (idx1 - 1);
}
LockTable::Record *LockTable::record(uint32_t idx1) const {
    return records_ + (idx1 - 1);
}
LockTable::Stripe *LockTable::stripe(uint32_t i) const {
    return stripes_ + i;
}

// Under the stripe's mutex: its cache first, then the shared pool.
uint32_t LockTable::take_entry(Stripe *st) {
    if (st->entry_cache) {
        const uint32_t e1 = st->entry_cache;
        st->entry_cache = entry(e1)->free_next.load(std::memory_order_relaxed);
        --st->entry_cached;
        return e1;
    }
    return pop_free(hdr_->entry_free, true);
}

void LockTable::give_entry(Stripe *st, uint32_t e1) {
    if (st->entry_cached < kStripeCache) {
        entry(e1)->free_next.store(st->entry_cache, std::memory_order_relaxed);
        st->entry_cache = e1;
        ++st->entry_cached;
        return;
    }
    push_free(hdr_->entry_free, true, e1);
}

uint32_t LockTable::take_record(Stripe *st) {
    if (st->record_cache) {
        const uint32_t r1 = st->record_cache;
        st->record_cache = record(r1)->free_next.load(std::memory_order_relaxed);
        --st->record_cached;
        return r1;
    }
    return pop_free(hdr_->record_free, false);
}

void LockTable::give_record(Stripe *st, uint32_t r1) {
    record(r1)->token.store(0, std::memory_order_relaxed);
    if (st->record_cached < kStripeCache) {
        record(r1)->free_next.store(st->record_cache, std::memory_order_relaxed);
        st->record_cache = r1;
        ++st->record_cached;
        return;
    }
    push_free(hdr_->record_free, false, r1);
}

char *LockTable::key_of(uint32_t idx1) const {
    return keys_ + static_cast<size_t>(idx1 - 1) * params_.key_cap;
}

// Tagged Treiber stack: the high 32 bits count pops so a node popped and
// pushed back between our load and our CAS (ABA) makes the CAS fail.
uint32_t LockTable::pop_free(std::atomic<uint64_t> &head, bool entries) {
    uint64_t h = head.load(std::memory_order_acquire);
    for (;;) {
        const uint32_t idx1 = static_cast<uint32_t>(h);
        if (idx1 == 0) return 0;
        const uint32_t next = entries
                                  ? entry(idx1)->free_next.load(std::memory_order_relaxed)
                                  : record(idx1)->free_next.load(std::memory_order_relaxed);
        const uint64_t nh = (((h >> 32) + 1) << 32) | next;
        if (head.compare_exchange_weak(h, nh, std::memory_order_acq_rel,
                                       std::memory_order_acquire))
            return idx1;
    }
}

void LockTable::push_free(std::atomic<uint64_t> &head, bool entries, uint32_t idx1) {
    uint64_t h = head.load(std::memory_order_relaxed);
    for (;;) {
        const uint32_t top = static_cast<uint32_t>(h);
        if (entries)
            entry(idx1)->free_next.store(top, std::memory_order_relaxed);
        else
            record(idx1)->free_next.store(top, std::memory_order_relaxed);
        const uint64_t nh = (((h >> 32) + 1) << 32) | idx1;
        if (head.compare_exchange_weak(h, nh, std::memory_order_release,
                                       std::memory_order_relaxed))
            return;
    }
}

uint32_t LockTable::find(uint32_t bucket, uint64_t hash, const char *key,
                         size_t len) const {
    const uint32_t *buckets = buckets_;
    for (uint32_t e1 = buckets[bucket]; e1 != 0; e1 = entry(e1)->chain) {
        const Entry *e = entry(e1);
        if (e->hash == hash && e->key_len == len && std::memcmp(key_of(e1), key, len) == 0)
            return e1;
    }
    return 0;
}

void LockTable::unlink_record(Entry *e, uint32_t r1) {
    Record *r = record(r1);
    if (r->prev) record(r->prev)->next = r->next; else e->first = r->next;
    if (r->next) record(r->next)->prev = r->prev; else e->last = r->prev;
    r->prev = r->next = 0;
    r->entry = 0;
    r->state = kFree;
}

void LockTable::Wakeups::add(LockTable *t, uint32_t r1) {
    if (n < kMax) ids[n++] = r1;
    else futex_wake_all(&t->record(r1)->wake);  // rare: wake now, under the mutex
}

void LockTable::wake_up(const Wakeups &w) {
    for (uint32_t i = 0; i < w.n; ++i) futex_wake_all(&record(w.ids[i])->wake);
}

// Under stripe `si`'s mutex: removes record r1 (holding or waiting) of a
// process that is gone, and lets in whoever that frees (to be woken from w).
void LockTable::remove_dead(Stripe *st, uint32_t e1, uint32_t r1, Wakeups &w) {
    Entry *e = entry(e1);
    Record *r = record(r1);
    bool writer_gone = false;
    if (r->state == kHolding) {
        if (r->mode == Mode::Write) {
            e->writer = 0;
            writer_gone = true;
        } else {
            --e->readers;
        }
    } else {
        if (r->mode == Mode::Write) --e->waiting_write; else --e->waiting_read;
        hdr_->waiting.fetch_sub(1, std::memory_order_relaxed);
    }
    unlink_record(e, r1);
    give_record(st, r1);
    ++st->reaped;
    dispatch(st, e, writer_gone, w);
}

// The waiter's check, with stripe `si` locked on entry and on return. A
// waiter looks at the nearest waiter ahead of it; only if that one is gone
// at the next (a run of dead ones goes in one pass, up to 8); only when
// every waiter ahead is gone (or none waits ahead), at the holders (records
// and fast-path slots). A live waiter ahead looks after whoever is ahead of
// it, so one look per follower per slice is enough, and the holders are
// looked at by the first in line alone.
// Suspects are noted under the mutex and judged in /proc without it; every
// record of a process found gone is then removed (a killed child may hold
// and wait several times on one key), and an entry a dead fast holder may
// be counted in is repaired.
int LockTable::reap_entry_if_dead(uint32_t si, uint32_t e1, uint32_t r1, int32_t self, PidWatch &watch) {
    constexpr int kMaxSuspects = 16;
    constexpr int kMaxAhead = 8;
    struct Suspect {
        int32_t pid;
        uint64_t start;
        bool gone;
    } sus[kMaxSuspects] = {};
    int n = 0;
    Entry *e = entry(e1);
    auto note = [&](const Record *r) {
        if (n == kMaxSuspects) return;
        for (int i = 0; i < n; ++i)
            if (sus[i].pid == r->pid && sus[i].start == r->pid_start) return;
        sus[n++] = {r->pid, r->pid_start, false};
    };
    // The waiters ahead, nearest first, up to the first that is surely
    // alive (one of our own process) or the 8th; the holders if that
    // reaches the front.
    int near = 0;
    bool front = true;  // every waiter ahead is noted
    for (uint32_t x = r1 ? record(r1)->prev : 0; x; x = record(x)->prev) {
        const Record *r = record(x);
        if (r->state != kWaiting) continue;
        if (r->pid == self || near == kMaxAhead) {
            front = false;
            break;
        }
        note(r);
        ++near;
    }
    const int n_ahead = n;
    if (front)
        for (uint32_t x = e->first; x; x = record(x)->next)
            if (record(x)->state == kHolding && record(x)->pid != self) note(record(x));
    const bool fast = front && (e->word.load(std::memory_order_acquire) & (kReadersMask | kWriterBit)) != 0;
    if (n == 0 && !fast) return 0;
    leave(si);
    ++watch.pass;
    int ngone = 0;
    bool ahead_gone = true;  // every waiter ahead judged gone
    for (int i = 0; i < n; ++i) {
        sus[i].gone = watch.gone(sus[i].pid, sus[i].start);
        ngone += sus[i].gone;
        if (i < n_ahead && !sus[i].gone) {
            ahead_gone = false;  // alive: it looks after those ahead of it
            break;
        }
    }
    // Fast holders: their slots, read without the mutex.
    const bool fast_gone = fast && ahead_gone && fast_holders_dead(e1, watch);
    const int rc = enter(si);
    if (rc != 0 || (ngone == 0 && !fast_gone)) return rc;
    Stripe *st = stripe(si);
    Wakeups w;
    if (fast_gone) {
        const bool had_writer = (e->word.load(std::memory_order_acquire) & kWriterBit) != 0;
        if (repair_entry(e1, true)) dispatch(st, e, had_writer, w);
    }
    for (uint32_t x = e->first; x;) {
        Record *r = record(x);
        const uint32_t next = r->next;
        for (int i = 0; i < n; ++i) {
            if (sus[i].gone && r->pid == sus[i].pid && r->pid_start == sus[i].start) {
                remove_dead(st, e1, x, w);
                break;
            }
        }
        x = next;
    }
    // Our own record keeps the entry alive. Rare path: wake under the mutex.
    wake_up(w);
    return 0;
}

int LockTable::reap(int32_t only_pid) {
    if (!hdr_) return 0;
    const uint32_t *buckets = buckets_;
    int total = 0;
    for (uint32_t si = 0; si < params_.stripes; ++si) {
        // Note the suspects under the mutex, judge them without it.
        struct Suspect {
            uint32_t e1, r1;
            uint64_t token;
            int32_t pid;
            uint64_t start;
        };
        std::vector<Suspect> sus;
        if (enter(si) != 0) return -1;
        for (uint32_t b = si; b < nbuckets_; b += params_.stripes)
            for (uint32_t e1 = buckets[b]; e1; e1 = entry(e1)->chain)
                for (uint32_t r1 = entry(e1)->first; r1; r1 = record(r1)->next) {
                    const Record *r = record(r1);
                    if (only_pid == 0 || r->pid == only_pid)
                        sus.push_back({e1, r1, r->token.load(std::memory_order_relaxed), r->pid, r->pid_start});
                }
        leave(si);
        if (sus.empty()) continue;
        std::vector<uint8_t> dead(sus.size());
        for (size_t i = 0; i < sus.size(); ++i)
            dead[i] = process_state(sus[i].pid, sus[i].start) == ProcessState::Gone;
        if (enter(si) != 0) return -1;
        Stripe *st = stripe(si);
        Wakeups w;
        for (size_t i = 0; i < sus.size(); ++i) {
            if (!dead[i]) continue;
            Record *r = record(sus[i].r1);
            if (r->entry != sus[i].e1 || r->state == kFree ||
                r->token.load(std::memory_order_relaxed) != sus[i].token)
                continue;
            const uint32_t e1 = sus[i].e1;
            remove_dead(st, e1, sus[i].r1, w);
            ++total;
            settle_queued(entry(e1));
        }
        leave(si);
        wake_up(w);
    }
    // Fast-path holders of processes that are gone.
    const int fast = free_dead_slots(only_pid);
    if (fast < 0) return -1;
    return total + fast;
}

// Takes stripe si's mutex; if the last holder died inside its critical
// section, repairs the table first. 0 or the mutex's error.
int LockTable::enter(uint32_t si) {
    int rc = locks_->lock(si);
    if (rc != 0) return rc;
    Stripe *st = stripe(si);
    if (st->inside.load(std::memory_order_relaxed) != 0) {
        rc = repair(si);
        if (rc != 0) return rc;
    }
    st->inside.store(1, std::memory_order_relaxed);
    return 0;
}

void LockTable::leave(uint32_t si) {
    stripe(si)->inside.store(0, std::memory_order_relaxed);
    locks_->unlock(si);
}

// Stop the world and rebuild. Every chain and free-list operation happens
// under some stripe's mutex, so holding them all makes the table ours
// alone; they are taken in index order (ours given up first), so two
// repairs cannot deadlock. Returns holding stripe `held` only.
int LockTable::repair(uint32_t held) {
    locks_->unlock(held);
    return stop_the_world(false, held, nullptr);
}

int LockTable::audit() {
    if (!hdr_) return 0;
    bool repaired = false;
    const int rc = stop_the_world(true, params_.stripes, &repaired);
    return rc != 0 ? -1 : repaired ? 1 : 0;
}

// Takes every stripe (in index order) and rebuilds the table if a process
// died inside it or, with `audit`, if any invariant fails. Returns holding
// stripe `keep` only (none if keep >= stripes, or on an error).
int LockTable::stop_the_world(bool audit, uint32_t keep, bool *repaired) {
    uint32_t taken = 0;
    int rc = 0;
    for (; taken < params_.stripes; ++taken)
        if ((rc = locks_->lock(taken)) != 0) break;
    if (rc != 0) {
        for (uint32_t s = 0; s < taken; ++s) locks_->unlock(s);
        return rc;
    }
    std::vector<uint32_t> woken;
    try {
        bool needed = false;
        for (uint32_t s = 0; s < params_.stripes; ++s)
            needed = needed || stripe(s)->inside.load(std::memory_order_relaxed) != 0;
        // Every walk of check_consistency() is bounded and checks each index
        // before it follows it: safe on whatever a process left behind.
        std::string why;
        if (!needed && audit) needed = !check_parts(false, why);
        if (needed) {
            rebuild(woken);
            hdr_->c_repairs.fetch_add(1, std::memory_order_relaxed);
            if (repaired) *repaired = true;
        }
    } catch (...) {
        rc = ENOMEM;
    }
    for (uint32_t s = 0; s < params_.stripes; ++s) stripe(s)->inside.store(0, std::memory_order_relaxed);
    for (uint32_t s = 0; s < params_.stripes; ++s)
        if (s != keep || rc != 0) locks_->unlock(s);
    for (uint32_t r1 : woken) futex_wake_all(&record(r1)->wake);
    return rc;
}

// With every stripe held: rebuilds the table from its records. A record
// that is claimed (waiting or holding, for an entry with a key) by a process
// that is alive is never dropped, however the process that died left the
// chains and lists: the record names its entry, the entry holds the key, and
// from those the buckets, the lists (in their old order as far as it can be
// followed, then by time) and every count are made anew. Records of dead
// processes go; then free lists, caches and the capacity budget are rebuilt
// from what is not in use, and whoever the state now admits is let in.
void LockTable::rebuild(std::vector<uint32_t> &woken) {
    const uint32_t slots = slots_;
    std::vector<uint8_t> e_used(slots + 1, 0), r_used(slots + 1, 0);
    std::vector<uint32_t> used(params_.stripes, 0);
    std::map<std::pair<int32_t, uint64_t>, bool> alive;  // (pid, start) -> alive
    auto is_alive = [&](int32_t pid, uint64_t start) {
        auto it = alive.find({pid, start});
        if (it == alive.end())
            it = alive.emplace(std::make_pair(pid, start), pid == cached_pid() ||
                                                               process_state(pid, start) == ProcessState::Alive).first;
        return it->second;
    };
    // 0. The fast path: every live entry under REPAIR (fast CASes fail), live
    // processes' pending and releasing slots given a moment to settle, then
    // each entry's fast holders counted from the held slots of the living.
    std::vector<uint64_t> old_word(slots + 1, 0);
    std::vector<uint32_t> fast_r(slots + 1, 0), fast_w(slots + 1, 0);
    std::vector<uint8_t> unsettled(slots + 1, 0);
    for (uint32_t e1 = 1; e1 <= slots; ++e1) {
        const uint64_t w = entry(e1)->word.fetch_or(kRepairBit, std::memory_order_seq_cst);
        old_word[e1] = w & ~kRepairBit;
    }
    std::vector<uint32_t> dead_slots;
    for (const int64_t until = mono_ns() + kSettleNs;;) {
        std::fill(fast_r.begin(), fast_r.end(), 0u);
        std::fill(fast_w.begin(), fast_w.end(), 0u);
        std::fill(unsettled.begin(), unsettled.end(), 0);
        dead_slots.clear();
        bool any = false;
        for (uint32_t s1 = 1; s1 <= slots; ++s1) {
            const Slot *sl = slot(s1);
            const int32_t owner = sl->owner.load(std::memory_order_acquire);
            if (owner <= 0) continue;
            const uint32_t state = sl->state.load(std::memory_order_seq_cst);
            const uint32_t kind = slot_kind(state);
            const uint64_t what = sl->what.load(std::memory_order_relaxed);
            const uint32_t e1 = static_cast<uint32_t>(what);
            if (!is_alive(owner, sl->owner_start.load(std::memory_order_relaxed))) {
                dead_slots.push_back(s1);
                continue;
            }
            if (kind < kSlotPending || kind > kSlotReleasing || e1 == 0 || e1 > slots ||
                (old_word[e1] & kDeadBit) || tag_of(old_word[e1]) != tag_of(what))
                continue;
            if (kind != kSlotHeld) {
                unsettled[e1] = 1;
                any = true;
            } else if (slot_mode(state) == Mode::Write) {
                ++fast_w[e1];
            } else {
                ++fast_r[e1];
            }
        }
        if (!any || mono_ns() > until) break;
        timespec ts{0, 200000};
        nanosleep(&ts, nullptr);
    }
    // An entry that would not settle keeps its old counts (never fewer than
    // hold it; what the dead held there is repaired by a later check).
    for (uint32_t e1 = 1; e1 <= slots; ++e1) {
        if (!unsettled[e1]) continue;
        fast_r[e1] = static_cast<uint32_t>(old_word[e1] & kReadersMask);
        fast_w[e1] = (old_word[e1] & kWriterBit) ? 1 : 0;
    }
    // 1. Live records.
    std::vector<uint8_t> live(slots + 1, 0);
    for (uint32_t r1 = 1; r1 <= slots; ++r1) {
        const Record *r = record(r1);
        if ((r->state != kWaiting && r->state != kHolding) || r->entry == 0 || r->entry > slots ||
            (r->mode != Mode::Read && r->mode != Mode::Write) ||
            r->token.load(std::memory_order_relaxed) == 0)
            continue;
        const Entry *e = entry(r->entry);
        if (e->key_len == 0 || e->key_len > params_.key_cap) continue;  // no key to file it under
        if (is_alive(r->pid, r->pid_start)) live[r1] = 1;
    }
    // 2. One entry per key: entries fast holders hold first (their slots
    // name them), then the first entry (by index) any live record names.
    std::map<std::string, uint32_t> by_key;
    std::vector<uint32_t> canon(slots + 1, 0);  // entry -> the entry its records go to
    std::vector<uint8_t> keep(slots + 1, 0);
    for (uint32_t e1 = 1; e1 <= slots; ++e1) {
        if (fast_r[e1] == 0 && fast_w[e1] == 0 && !unsettled[e1]) continue;
        const Entry *e = entry(e1);
        if (e->key_len == 0 || e->key_len > params_.key_cap) continue;
        if (by_key.emplace(std::string(key_of(e1), e->key_len), e1).second) {
            canon[e1] = e1;
            keep[e1] = 1;
        }
    }
    for (uint32_t r1 = 1; r1 <= slots; ++r1) {
        if (!live[r1]) continue;
        const uint32_t e1 = record(r1)->entry;
        if (canon[e1]) continue;
        const Entry *e = entry(e1);
        canon[e1] = by_key.emplace(std::string(key_of(e1), e->key_len), e1).first->second;
    }
    // 3. Each entry's list: the old order first, as far as it can be followed.
    std::vector<std::vector<uint32_t>> lists(slots + 1);
    std::vector<uint8_t> placed(slots + 1, 0);
    for (uint32_t e1 = 1; e1 <= slots; ++e1) {
        if (!canon[e1]) continue;
        uint32_t steps = 0;
        for (uint32_t r1 = entry(e1)->first; r1 && r1 <= slots && ++steps <= slots; r1 = record(r1)->next) {
            if (!live[r1] || placed[r1] || record(r1)->entry != e1) continue;
            placed[r1] = 1;
            lists[canon[e1]].push_back(r1);
        }
    }
    {
        // Then whatever could not be reached, by the time it arrived or was let in.
        std::vector<uint32_t> rest;
        for (uint32_t r1 = 1; r1 <= slots; ++r1)
            if (live[r1] && !placed[r1]) rest.push_back(r1);
        std::stable_sort(rest.begin(), rest.end(), [this](uint32_t x, uint32_t y) {
            return record(x)->since_us < record(y)->since_us;
        });
        for (uint32_t r1 : rest) lists[canon[record(r1)->entry]].push_back(r1);
    }
    // 4. Relink entries, records and buckets; recount.
    std::fill(buckets_, buckets_ + nbuckets_, 0u);
    uint32_t waiting = 0;
    for (uint32_t e1 = 1; e1 <= slots; ++e1) {
        const std::vector<uint32_t> &list = lists[e1];
        if (list.empty() && !keep[e1]) continue;
        Entry *e = entry(e1);
        e->hash = hash(key_of(e1), e->key_len);
        e->readers = e->writer = e->waiting_read = e->waiting_write = 0;
        e->first = e->last = 0;
        uint32_t prev = 0;
        for (uint32_t r1 : list) {
            Record *r = record(r1);
            r->entry = e1;
            r->prev = prev;
            r->next = 0;
            if (prev) record(prev)->next = r1; else e->first = r1;
            prev = r1;
            r_used[r1] = 1;
            if (r->state == kHolding) {
                if (r->mode == Mode::Write) e->writer = 1; else ++e->readers;
            } else {
                if (r->mode == Mode::Write) ++e->waiting_write; else ++e->waiting_read;
                ++waiting;
            }
        }
        e->last = prev;
        // Alive, same tag: its fast holders' releases still match.
        const uint64_t tag = with_tag(tag_of(old_word[e1]));
        if (old_word[e1] & kDeadBit) {
            // A record named an entry already freed: it lives again, with a new tag.
            e->word.store(with_tag(tag_of(old_word[e1]) + 1) | (e->first ? kQueuedBit : 0), std::memory_order_seq_cst);
        } else {
            e->word.store(tag | (e->first ? kQueuedBit : 0) | std::min<uint64_t>(fast_r[e1], kReadersMask) |
                              (fast_w[e1] ? kWriterBit : 0),
                          std::memory_order_seq_cst);
        }
        const uint32_t b = static_cast<uint32_t>(e->hash) & (nbuckets_ - 1);
        e->chain = buckets_[b];
        buckets_[b] = e1;
        e_used[e1] = 1;
        ++used[b & (params_.stripes - 1)];
    }
    hdr_->waiting.store(waiting, std::memory_order_relaxed);
    // Free lists, caches and budgets anew from what is not in use.
    uint32_t efree = 0, rfree = 0;
    for (uint32_t i = slots; i >= 1; --i) {
        if (!e_used[i]) {
            Entry *e = entry(i);
            const uint64_t w = old_word[i];
            e->word.store((w & kDeadBit) ? w : with_tag(tag_of(w) + 1) | kDeadBit, std::memory_order_seq_cst);
            e->free_next.store(efree, std::memory_order_relaxed);
            e->key_len = 0;
            e->chain = 0;
            efree = i;
        }
        if (!r_used[i]) {
            Record *r = record(i);
            r->token.store(0, std::memory_order_relaxed);
            r->state = kFree;
            r->entry = r->prev = r->next = 0;
            r->free_next.store(rfree, std::memory_order_relaxed);
            rfree = i;
        }
    }
    hdr_->entry_free.store((((hdr_->entry_free.load() >> 32) + 1) << 32) | efree);
    hdr_->record_free.store((((hdr_->record_free.load() >> 32) + 1) << 32) | rfree);
    int64_t in_use = 0;
    for (uint32_t s = 0; s < params_.stripes; ++s) {
        Stripe *st = stripe(s);
        st->entry_cache = st->entry_cached = st->record_cache = st->record_cached = 0;
        st->reserve.store(0, std::memory_order_relaxed);
        st->used.store(used[s], std::memory_order_relaxed);
        in_use += used[s];
    }
    hdr_->budget.store(std::max<int64_t>(0, static_cast<int64_t>(params_.capacity) - in_use));
    // Slots of the living in a state no protocol step leaves: idle.
    for (uint32_t s1 = 1; s1 <= slots; ++s1) {
        Slot *sl = slot(s1);
        if (sl->owner.load(std::memory_order_relaxed) != 0 &&
            (slot_kind(sl->state.load(std::memory_order_relaxed)) > kSlotReleasing ||
             slot_kind(sl->state.load(std::memory_order_relaxed)) == kSlotFree))
            sl->state.store(kSlotIdle, std::memory_order_relaxed);
    }
    // Slots of the dead go back to the table, but for those naming an entry
    // that would not settle (a later repair must still see them there).
    for (uint32_t s1 : dead_slots) {
        Slot *sl = slot(s1);
        const uint32_t e1 = static_cast<uint32_t>(sl->what.load(std::memory_order_relaxed));
        if (e1 >= 1 && e1 <= slots && unsettled[e1]) continue;
        const int32_t pid = sl->owner.load(std::memory_order_relaxed);
        if (pid > 0) unown_slot(sl, pid);
    }
    // Unowned slots are free; one owned by nonsense (below -2) is freed. A
    // slot being claimed (-2) or freed (-1) is another process's business
    // right now (one whose owner died at that instant stays out of use).
    for (uint32_t i = 1; i <= slots; ++i) {
        Slot *sl = slot(i);
        const int32_t owner = sl->owner.load(std::memory_order_relaxed);
        if (owner == 0 || owner < -2) {
            sl->state.store(kSlotFree, std::memory_order_relaxed);
            sl->owner.store(0, std::memory_order_relaxed);
        }
    }
    // A holder that died mid-release may have left waiters ungranted.
    for (uint32_t b = 0; b < nbuckets_; ++b)
        for (uint32_t e1 = buckets_[b]; e1; e1 = entry(e1)->chain) {
            Wakeups w;
            dispatch(stripe(b & (params_.stripes - 1)), entry(e1), true, w);
            woken.insert(woken.end(), w.ids, w.ids + w.n);
        }
}

bool LockTable::test_corrupt(Corruption c, void *target, size_t size) {
    if (!hdr_) return false;
    uint32_t r1 = 1;
    if (c == Corruption::RecordAt) {
        // The index a chain would need to make record() land in the target.
        const auto t = reinterpret_cast<uintptr_t>(target), rec = reinterpret_cast<uintptr_t>(records_);
        if (t < rec) return false;
        const uintptr_t idx = (t - rec + sizeof(Record) - 1) / sizeof(Record) + 1;
        if (idx > UINT32_MAX) return false;
        r1 = static_cast<uint32_t>(idx);
        const auto at = reinterpret_cast<uintptr_t>(record(r1));
        if (at < t || at + sizeof(Record) > t + size) return false;
    }
    Entry *e = entry(1);
    e->chain = c == Corruption::SelfLinkedChain ? 1 : 0;
    e->first = e->last = r1;
    e->key_len = 1;
    if (c == Corruption::SelfLinkedChain) {
        Record *r = record(1);
        r->next = r->prev = 1;
        r->entry = 1;
        r->state = kHolding;
    }
    for (uint32_t b = 0; b < nbuckets_; ++b) buckets_[b] = 1;
    return true;
}

// Test hook: enters the stripe of `key` and leaves it as a process killed
// in the middle of an update would, at one of a few points, without
// releasing the mutex. Only for tests that then end the calling process.
void LockTable::test_abandon_inside(const char *key, size_t len, int step) {
    const uint64_t hash = this->hash(key, len);
    const uint32_t bucket = static_cast<uint32_t>(hash) & (nbuckets_ - 1);
    const uint32_t si = bucket & (params_.stripes - 1);
    if (enter(si) != 0) return;
    Stripe *st = stripe(si);
    const uint32_t e1 = find(bucket, hash, key, len);
    if (step == 1) {
        // A new holder linked half-way: after its predecessor, before the tail.
        const uint32_t r1 = take_record(st);
        if (!r1 || !e1) return;
        Record *r = record(r1);
        Entry *e = entry(e1);
        r->token.store(++r->allocations, std::memory_order_relaxed);
        r->entry = e1;
        r->mode = Mode::Write;
        r->state = kHolding;
        r->pid = cached_pid();
        r->pid_start = cached_start();
        r->prev = e->last;
        if (e->last) record(e->last)->next = r1;
    } else if (step == 2 && e1) {
        // An entry unlinked from its bucket, not yet freed, counts stale.
        uint32_t *b = buckets_ + bucket;
        while (*b && *b != e1) b = &entry(*b)->chain;
        if (*b) *b = entry(e1)->chain;
    } else if (step == 3) {
        // A record taken from the free lists and lost.
        take_record(st);
        take_entry(st);
    }
}

// Under the stripe's mutex: a wait of `ns` has ended (granted or not).
void LockTable::note_wait(Stripe *st, int64_t ns) {
    const double secs = static_cast<double>(ns) / 1e9;
    size_t b = 0;
    while (b < kWaitBuckets - 1 && secs > kWaitBounds[b]) ++b;
    ++st->wait_hist[b];
    st->wait_sum_us += static_cast<uint64_t>(ns / 1000);
}

// Under stripe `si`'s mutex: one entry's worth of capacity for a new key.
// Steady traffic lives on the stripe's own reserve; the shared budget is
// touched once per chunk; when it is empty, single units are taken from
// other stripes' reserves (atomically, without their mutexes). Units are
// never in flight between two reserves, so only a chunk moving from the
// budget can make the table look full for an instant: look twice.
namespace {
bool take_unit(std::atomic<uint32_t> &reserve) {
    uint32_t r = reserve.load(std::memory_order_relaxed);
    while (r > 0)
        if (reserve.compare_exchange_weak(r, r - 1, std::memory_order_relaxed)) return true;
    return false;
}
}  // namespace

bool LockTable::reserve_entry(uint32_t si, Stripe *st) {
    for (int attempt = 0; attempt < 3; ++attempt) {
        if (take_unit(st->reserve)) return true;
        int64_t b = hdr_->budget.load(std::memory_order_relaxed);
        while (b > 0) {
            const int64_t take = std::min<int64_t>(b, kReserveChunk);
            if (hdr_->budget.compare_exchange_weak(b, b - take, std::memory_order_relaxed)) {
                st->reserve.fetch_add(static_cast<uint32_t>(take - 1), std::memory_order_relaxed);
                return true;
            }
        }
        for (uint32_t j = 1; j < params_.stripes; ++j)
            if (take_unit(stripe((si + j) & (params_.stripes - 1))->reserve)) return true;
        sched_yield();
    }
    return false;
}

// A stripe grew past its own peak: the table may have too. Sums the stripes'
// counts without their mutexes, so this is the total at about this moment.
void LockTable::note_high_water() {
    uint32_t total = 0;
    for (uint32_t i = 0; i < params_.stripes; ++i) total += stripe(i)->used.load(std::memory_order_relaxed);
    uint32_t hw = hdr_->high_water.load(std::memory_order_relaxed);
    while (total > hw && !hdr_->high_water.compare_exchange_weak(hw, total, std::memory_order_relaxed)) {}
}

// Under the stripe's mutex: frees entry e1 if it is idle (no records, no
// fast holder, no flag): the word goes DEAD with the next tag first, so a
// fast lookup that still finds it fails its CAS; then it leaves its chain.
void LockTable::free_entry(Stripe *st, uint32_t bucket, uint32_t e1) {
    Entry *e = entry(e1);
    if (e->first != 0) return;
    uint64_t w = e->word.load(std::memory_order_acquire);
    if ((w & (kReadersMask | kFlagsMask)) != 0) return;
    if (!e->word.compare_exchange_strong(w, with_tag(tag_of(w) + 1) | kDeadBit, std::memory_order_seq_cst))
        return;
    PIDLOCK_CRASH_POINT(31);
    uint32_t *link = &buckets_[bucket];
    while (*link && *link != e1) link = &entry(*link)->chain;
    if (*link) __atomic_store_n(link, e->chain, __ATOMIC_RELEASE);
    PIDLOCK_CRASH_POINT(21);
    e->chain = 0;
    e->key_len = 0;
    st->used.store(st->used.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    uint32_t r = st->reserve.fetch_add(1, std::memory_order_relaxed) + 1;
    if (r > 2 * kReserveChunk &&
        st->reserve.compare_exchange_strong(r, r - kReserveChunk, std::memory_order_relaxed))
        hdr_->budget.fetch_add(kReserveChunk, std::memory_order_relaxed);
    give_entry(st, e1);
}

// Under stripe si's mutex: frees up to `want` idle entries of the stripe
// (kept after their last release for the fast path). Returns how many.
int LockTable::reclaim_idle(uint32_t si, uint32_t want) {
    Stripe *st = stripe(si);
    int n = 0;
    for (uint32_t b = si; b < nbuckets_ && static_cast<uint32_t>(n) < want; b += params_.stripes) {
        for (uint32_t e1 = buckets_[b]; e1 && static_cast<uint32_t>(n) < want;) {
            const uint32_t next = entry(e1)->chain;
            const uint32_t before = st->used.load(std::memory_order_relaxed);
            free_entry(st, b, e1);
            if (st->used.load(std::memory_order_relaxed) != before) ++n;
            e1 = next;
        }
    }
    return n;
}

// Holding no stripe: frees one idle entry in a stripe other than si (one
// mutex at a time, so reclaimers never deadlock), so that its capacity unit
// can be taken from that stripe's reserve. -1 on a mutex error.
int LockTable::reclaim_elsewhere(uint32_t si) {
    for (uint32_t j = 1; j < params_.stripes; ++j) {
        const uint32_t o = (si + j) & (params_.stripes - 1);
        if (enter(o) != 0) return -1;
        const int n = reclaim_idle(o, 1);
        leave(o);
        if (n > 0) return 1;
    }
    return 0;
}

// Grants what the entry's state allows, in arrival order. `prefer_readers`
// after a writer's release: every waiting reader enters before the next
// writer, so neither side starves. The entry has records (the queued bit is
// set), so the word's fast holders can only leave meanwhile; the last to
// leave sees the bit and dispatches again. True if anyone was granted.
bool LockTable::dispatch(Stripe *st, Entry *e, bool prefer_readers, Wakeups &w) {
    const uint64_t word = e->word.load(std::memory_order_seq_cst);
    if (e->writer || (word & kWriterBit)) return false;
    if (e->waiting_read > 0 && (e->waiting_write == 0 || prefer_readers)) {
        const int64_t now = wall_clock_us();
        for (uint32_t r1 = e->first; r1; r1 = record(r1)->next) {
            Record *r = record(r1);
            if (r->state == kWaiting && r->mode == Mode::Read) {
                r->state = kHolding;
                r->since_us = now;
                r->wake.fetch_add(1, std::memory_order_release);
                w.add(this, r1);
                ++e->readers;
                ++st->acquired_read;
                hdr_->waiting.fetch_sub(1, std::memory_order_relaxed);
                PIDLOCK_CRASH_POINT(19);
            }
        }
        e->waiting_read = 0;
        return true;
    }
    if (e->readers == 0 && (word & kReadersMask) == 0 && e->waiting_write > 0) {
        for (uint32_t r1 = e->first; r1; r1 = record(r1)->next) {
            Record *r = record(r1);
            if (r->state == kWaiting && r->mode == Mode::Write) {
                r->state = kHolding;
                r->since_us = wall_clock_us();
                r->wake.fetch_add(1, std::memory_order_release);
                w.add(this, r1);
                e->writer = 1;
                --e->waiting_write;
                ++st->acquired_write;
                hdr_->waiting.fetch_sub(1, std::memory_order_relaxed);
                return true;
            }
        }
    }
    return false;
}

void LockTable::fill_report(const Entry *e, uint32_t e1, BusyReport &rep) const {
    const uint64_t word = e->word.load(std::memory_order_acquire);
    rep.key.assign(key_of(e1), e->key_len);
    const bool writer = e->writer || (word & kWriterBit);
    const uint32_t readers = e->readers + static_cast<uint32_t>(word & kReadersMask);
    rep.held_mode = writer ? Mode::Write : (readers ? Mode::Read : Mode::None);
    rep.holders = (writer ? 1 : 0) + readers;
    rep.waiting_read = e->waiting_read;
    rep.waiting_write = e->waiting_write;
    int64_t oldest = 0;
    for (uint32_t r1 = e->first; r1; r1 = record(r1)->next) {
        const Record *r = record(r1);
        if (r->state == kHolding && (oldest == 0 || r->since_us < oldest)) oldest = r->since_us;
    }
    if (word & (kReadersMask | kWriterBit)) {
        const uint64_t what = slot_what(e1, tag_of(word));
        for (uint32_t s1 = 1; s1 <= slots_; ++s1) {
            const Slot *sl = slot(s1);
            if (slot_kind(sl->state.load(std::memory_order_acquire)) == kSlotHeld &&
                sl->what.load(std::memory_order_relaxed) == what && (oldest == 0 || sl->since_us < oldest))
                oldest = sl->since_us;
        }
    }
    rep.held_us = oldest ? std::max<int64_t>(0, wall_clock_us() - oldest) : 0;
}

bool LockTable::client_gone(const HolderInfo &info) const {
    if (info.client_gone && info.client_gone(info.client_gone_arg)) return true;
    if (info.client_fd < 0) return false;
    pollfd p{info.client_fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

bool LockTable::acquire_at_once(const char *key, size_t len, Mode mode, const HolderInfo &info, LockHandle &h) {
    if (!hdr_ || len == 0 || len > params_.key_cap || mode == Mode::None) return false;
    return take_at_once(key, len, mode, info, h);
}

// acquire_at_once past its checks of the arguments (acquire() has made them).
inline __attribute__((always_inline)) bool LockTable::take_at_once(const char *key, size_t len, Mode mode,
                                                                  const HolderInfo &info, LockHandle &h) {
    const uint64_t hash = this->hash(key, len);
    const uint32_t bucket = static_cast<uint32_t>(hash) & (nbuckets_ - 1);
    // A key without an entry is inserted under the mutex: no slot taken.
    const uint32_t e1 = lookup(bucket, hash, len);
    if (e1 == 0) return false;
    const int32_t pid = cached_pid();
    const uint32_t s1 = take_slot(pid, info.slot_cache);
    if (s1 == 0) return false;
    fill_slot(slot(s1), info);
    if (try_fast(e1, s1, mode, h, bucket & (params_.stripes - 1), key, len, hash) == 1) return true;
    give_slot(s1, pid, info.slot_cache);
    return false;
}

AcquireResult LockTable::acquire(const char *key, size_t len, Mode mode,
                                 int64_t timeout_ns, const HolderInfo &info,
                                 LockHandle &h, BusyReport *report, int *err) {
    h = LockHandle();
    if (!hdr_ || len == 0 || len > params_.key_cap || mode == Mode::None) {
        if (err) *err = EINVAL;
        return AcquireResult::Error;
    }
    // The fast path: no mutex, one CAS on the entry's word.
    if (take_at_once(key, len, mode, info, h)) return AcquireResult::Acquired;
    return acquire_slow(key, len, mode, timeout_ns, info, h, report, err);
}

AcquireResult LockTable::acquire_slow(const char *key, size_t len, Mode mode, int64_t timeout_ns,
                                      const HolderInfo &info, LockHandle &h, BusyReport *report, int *err) {
    const uint64_t hash = this->hash(key, len);
    const int32_t pid = cached_pid();
    // The slow path may still grant through a slot (a key it inserts).
    const uint32_t s1 = take_slot(pid, info.slot_cache);
    if (s1) fill_slot(slot(s1), info);
    // <0: for ever; 0: no wait; else the absolute deadline on mono_ns().
    int64_t deadline = timeout_ns < 0 ? -1 : 0;
    if (timeout_ns > 0) deadline = mono_ns() + timeout_ns;
    int reclaims = 0;
    for (;;) {
        bool vanished = false;
        const AcquireResult res =
            acquire_once(key, len, hash, mode, deadline, info, s1, h, report, err, vanished, reclaims);
        // A record taken from its waiter (a lock granted and broken before
        // the waiter woke, or anything else that freed it) is not a grant:
        // queue again, by the same deadline.
        if (!vanished) {
            if (s1 && !(h.record & LockHandle::kSlotBit)) give_slot(s1, pid, info.slot_cache);
            return res;
        }
    }
}

AcquireResult LockTable::acquire_once(const char *key, size_t len, uint64_t hash, Mode mode,
                                      int64_t deadline, const HolderInfo &info, uint32_t s1,
                                      LockHandle &h, BusyReport *report, int *err,
                                      bool &vanished, int &reclaims) {
    h = LockHandle();
    const uint32_t bucket = static_cast<uint32_t>(hash) & (nbuckets_ - 1);
    const uint32_t si = bucket & (params_.stripes - 1);
    Stripe *st = stripe(si);
    const int32_t pid = cached_pid();
    const uint64_t pid_start = cached_start();

    int rc = enter(si);
    if (rc != 0) {
        if (err) *err = rc;
        return AcquireResult::Error;
    }
    uint32_t e1 = find(bucket, hash, key, len);
    if (e1 == 0) {
        // Capacity counts distinct keys exactly; the slack slots exist only
        // so that the stripe caches can never starve another stripe. Idle
        // entries (kept for the fast path) give way to a new key.
        bool room = reserve_entry(si, st);
        if (!room && reclaim_idle(si, kReserveChunk) > 0) room = reserve_entry(si, st);
        if (!room && reclaims < 64) {
            // Idle entries of other stripes: freed one mutex at a time, then
            // this one is entered anew (vanished: the caller comes again).
            // Another request may take the unit first: try again while
            // something idle is found.
            ++reclaims;
            leave(si);
            const int n = reclaim_elsewhere(si);
            if (n < 0) {
                if (err) *err = EIO;
                return AcquireResult::Error;
            }
            // Nothing idle anywhere: full, unless an entry is on its way
            // between two stripes (another request's reclaim): look again
            // a few times before saying so.
            if (n == 0) {
                reclaims += 8;
                sched_yield();
            }
            vanished = true;
            return AcquireResult::Busy;
        }
        if (room) e1 = take_entry(st);
        PIDLOCK_CRASH_POINT(2);
        if (e1 != 0) {
            Entry *ne = entry(e1);
            ne->hash = hash;
            ne->key_len = static_cast<uint32_t>(len);
            std::memcpy(key_of(e1), key, len);
            ne->readers = ne->writer = ne->waiting_read = ne->waiting_write = 0;
            ne->first = ne->last = 0;
            ne->chain = buckets_[bucket];
            // Alive, with the tag it had when it was freed.
            ne->word.store(with_tag(tag_of(ne->word.load(std::memory_order_relaxed))),
                           std::memory_order_release);
            __atomic_store_n(&buckets_[bucket], e1, __ATOMIC_RELEASE);
            PIDLOCK_CRASH_POINT(3);
            const uint32_t used = st->used.load(std::memory_order_relaxed) + 1;
            st->used.store(used, std::memory_order_relaxed);
            if (used > st->peak) {
                st->peak = used;
                note_high_water();
            }
        }
    }
    if (e1 == 0) {
        ++st->full;
        leave(si);
        return AcquireResult::Full;
    }
    Entry *e = entry(e1);
    // No records: the fast protocol, under the mutex.
    if (s1 && e->first == 0 && try_fast(e1, s1, mode, h, si, key, len, hash) == 1) {
        leave(si);
        return AcquireResult::Acquired;
    }
    const uint32_t r1 = take_record(st);
    PIDLOCK_CRASH_POINT(1);
    if (r1 == 0) {
        ++st->full;
        leave(si);
        return AcquireResult::Full;
    }
    // From here no fast acquire succeeds on the entry: its holders can only
    // leave, so what the word says now is the most that holds.
    set_queued(e);
    PIDLOCK_CRASH_POINT(29);
    const uint64_t word = e->word.load(std::memory_order_seq_cst);
    const bool fast_writer = (word & kWriterBit) != 0;
    const bool fast_readers = (word & kReadersMask) != 0;
    const bool free_now = mode == Mode::Read
                              ? (!e->writer && !fast_writer && e->waiting_write == 0)
                              : (!e->writer && !fast_writer && e->readers == 0 && !fast_readers &&
                                 e->waiting_write == 0 && e->waiting_read == 0);
    if (!free_now && (deadline == 0 ||
                      (max_wait_key_ && e->waiting_read + e->waiting_write >= max_wait_key_) ||
                      (max_wait_total_ && hdr_->waiting.load(std::memory_order_relaxed) >= max_wait_total_))) {
        // Not free and not to wait (PidLockMaxWaiters: no more waiters here,
        // or in all): busy at once.
        give_record(st, r1);
        settle_queued(e);
        PIDLOCK_CRASH_POINT(30);
        if (deadline != 0) ++st->refused_waiters;
        if (report) {
            try {
                fill_report(e, e1, *report);
            } catch (...) {
                *report = BusyReport();
            }
            report->too_many_waiting = deadline != 0;
        }
        if (deadline == 0) ++st->timeouts;
        leave(si);
        if (report && report->key.empty()) report->key.assign(key, len);
        return AcquireResult::Busy;
    }
    Record *r = record(r1);
    const uint64_t token = ++r->allocations;
    r->token.store(token, std::memory_order_relaxed);
    r->mode = mode;
    r->pid = pid;
    r->pid_start = pid_start;
    fill_holder(r, info);
    PIDLOCK_CRASH_POINT(4);

    // Link at the tail: the list is in arrival order, which dispatch() honours.
    r->entry = e1;
    r->prev = e->last;
    r->next = 0;
    if (e->last) record(e->last)->next = r1; else e->first = r1;
    PIDLOCK_CRASH_POINT(5);
    e->last = r1;
    PIDLOCK_CRASH_POINT(6);

    h.record = r1;
    h.stripe = si;
    h.token = token;
    h.mode = mode;
    if (free_now) {
        r->state = kHolding;
        r->since_us = wall_clock_us();
        PIDLOCK_CRASH_POINT(7);
        if (mode == Mode::Read) {
            ++e->readers;
            ++st->acquired_read;
        } else {
            e->writer = 1;
            ++st->acquired_write;
        }
        PIDLOCK_CRASH_POINT(8);
        leave(si);
        return AcquireResult::Acquired;
    }

    r->state = kWaiting;
    r->since_us = wall_clock_us();  // waiting since; replaced when granted
    PIDLOCK_CRASH_POINT(9);
    if (mode == Mode::Read) ++e->waiting_read; else ++e->waiting_write;
    hdr_->waiting.fetch_add(1, std::memory_order_relaxed);
    PIDLOCK_CRASH_POINT(10);
    {
        // Fast holders may all have left between the word's load and now.
        Wakeups w0;
        dispatch(st, e, false, w0);
    }
    bool counted_wait = false, gone = false;
    PidWatch watch;
    const bool watch_client = info.client_fd >= 0 || info.client_gone != nullptr;
    const int64_t wait_start = mono_ns();
    for (;;) {
        if (r->state == kHolding) {
            note_wait(st, mono_ns() - wait_start);
            leave(si);
            return AcquireResult::Acquired;
        }
        int64_t remaining = -1;
        if (deadline >= 0) remaining = deadline > 0 ? deadline - mono_ns() : 0;
        if (deadline >= 0 && remaining <= 0) break;
        if (!counted_wait) {
            ++st->waited;
            counted_wait = true;
        }
        bool first = true;  // first waiting record in line?
        for (uint32_t x = e->first; x && x != r1; x = record(x)->next)
            if (record(x)->state == kWaiting) first = false;
        const int64_t period = first ? kLivenessSliceNs : kFollowerSliceNs;
        const int64_t slice = remaining < 0 || remaining > period ? period : remaining;
        const uint32_t seen = r->wake.load(std::memory_order_acquire);
        leave(si);
        const bool slept_full = futex_wait(&r->wake, seen, slice) && slice == period;
        // A client that hung up will never read the answer: leave the queue.
        gone = watch_client && slept_full && client_gone(info);
        rc = enter(si);
        if (rc == 0) PIDLOCK_CRASH_POINT(11);
        if (rc == 0 && slept_full && !gone && r->state == kWaiting &&
            r->token.load(std::memory_order_relaxed) == token) {
            // Not let in for a whole slice: perhaps whoever is ahead died.
            rc = reap_entry_if_dead(si, e1, r1, pid, watch);
        }
        if (rc != 0) {
            // Without the mutex the record cannot be unlinked safely; leave it
            // for the repair pass rather than corrupt the list.
            h = LockHandle();
            if (err) *err = rc;
            return AcquireResult::Error;
        }
        if (r->token.load(std::memory_order_relaxed) != token) {
            // Not ours any more (granted and broken before we woke, or freed
            // by anyone else): nothing here may be touched again, and this
            // is no grant. The caller queues again.
            note_wait(st, mono_ns() - wait_start);
            leave(si);
            h = LockHandle();
            vanished = true;
            return AcquireResult::Busy;
        }
        if (gone && r->state != kHolding) break;
    }
    // Not had in time, or the client is gone. A grant that raced the
    // deadline was seen in the loop.
    h = LockHandle();
    if (counted_wait) note_wait(st, mono_ns() - wait_start);
    if (mode == Mode::Read) --e->waiting_read; else --e->waiting_write;
    hdr_->waiting.fetch_sub(1, std::memory_order_relaxed);
    PIDLOCK_CRASH_POINT(12);
    unlink_record(e, r1);
    PIDLOCK_CRASH_POINT(13);
    if (report) {
        try {
            fill_report(e, e1, *report);
        } catch (...) {
            *report = BusyReport();  // no memory for the report: answer without it
        }
    }
    // A writer that gives up may have been all that held readers back.
    Wakeups w;
    dispatch(st, e, false, w);
    PIDLOCK_CRASH_POINT(14);
    settle_queued(e);
    PIDLOCK_CRASH_POINT(15);
    give_record(st, r1);
    if (gone) ++st->client_gone; else ++st->timeouts;
    leave(si);
    wake_up(w);
    if (report && report->key.empty()) report->key.assign(key, len);
    return gone ? AcquireResult::ClientGone : AcquireResult::Busy;
}

// A fast-path hold: the slot says what it holds; the word is decremented by
// CAS, without the mutex unless the entry is being repaired (then under it,
// once the repair is done) or has records (then waiters are dispatched).
inline __attribute__((always_inline)) int LockTable::release_fast(LockHandle &h, SlotCache *cache) {
    const uint32_t s1 = h.record & ~LockHandle::kSlotBit, si = h.stripe;
    const uint64_t token = h.token;
    h = LockHandle();
    if (s1 == 0 || s1 > slots_ || si >= params_.stripes) return 0;
    Slot *sl = slot(s1);
    const int32_t pid = cached_pid();
    const uint32_t state = sl->state.load(std::memory_order_relaxed);
    if (sl->owner.load(std::memory_order_relaxed) != pid || sl->token != token || slot_kind(state) != kSlotHeld)
        return 0;  // released already
    const uint64_t what = sl->what.load(std::memory_order_relaxed);
    const uint32_t e1 = static_cast<uint32_t>(what), tag = tag_of(what);
    const Mode mode = slot_mode(state);
    if (e1 == 0 || e1 > slots_ || (mode != Mode::Read && mode != Mode::Write)) return 0;
    Entry *e = entry(e1);
    sl->state.store(slot_state(kSlotReleasing, mode), std::memory_order_release);
    PIDLOCK_CRASH_POINT(25);
    uint64_t w = e->word.load(std::memory_order_acquire);
    const bool counted = mode == Mode::Write ? (w & kWriterBit) != 0 : (w & kReadersMask) != 0;
    // The common case, straight through: our count on the word as the slot
    // says, no repair, and one CAS takes it off.
    if (tag_of(w) != tag || (w & (kDeadBit | kRepairBit)) || !counted ||
        !e->word.compare_exchange_strong(w, mode == Mode::Write ? w & ~kWriterBit : w - 1,
                                         std::memory_order_seq_cst, std::memory_order_acquire))
        return release_fast_rest(h, s1, si, token, e1, tag, mode, cache);
    PIDLOCK_CRASH_POINT(26);
    sl->state.store(kSlotIdle, std::memory_order_release);
    give_slot(s1, pid, cache);
    // Someone waits: whoever this release lets in is granted now.
    if (w & kQueuedBit) dispatch_after_release(si, e1, mode, false);
    return 0;
}

// The rest of a fast release whose one CAS did not do (the slot says
// "releasing"): the word changed under it, the lock was broken, or the
// entry is being repaired.
int LockTable::release_fast_rest(LockHandle &h, uint32_t s1, uint32_t si, uint64_t token, uint32_t e1, uint32_t tag,
                                 Mode mode, SlotCache *cache) {
    Slot *sl = slot(s1);
    const int32_t pid = cached_pid();
    Entry *e = entry(e1);
    bool locked = false;
    uint64_t w = e->word.load(std::memory_order_acquire);
    for (;;) {
        const bool mine_counted = mode == Mode::Write ? (w & kWriterBit) != 0 : (w & kReadersMask) != 0;
        if (tag_of(w) != tag || (w & kDeadBit) || !mine_counted) {
            // Broken (the tag moved on): nothing of ours to take off.
            sl->state.store(kSlotIdle, std::memory_order_release);
            if (locked) leave(si);
            give_slot(s1, pid, cache);
            return 0;
        }
        if (w & kRepairBit) {
            // Being repaired: count as held again, and wait for the
            // repairer's mutex; then the word is settled.
            sl->state.store(slot_state(kSlotHeld, mode), std::memory_order_seq_cst);
            PIDLOCK_CRASH_POINT(27);
            if (locked) {  // a repair that gave up left the bit: should not happen under the mutex
                sched_yield();
            } else {
                const int rc = enter(si);
                if (rc != 0) {
                    // Still held: a later call tries again.
                    h.record = s1 | LockHandle::kSlotBit;
                    h.stripe = si;
                    h.token = token;
                    h.mode = mode;
                    return rc;
                }
                locked = true;
            }
            sl->state.store(slot_state(kSlotReleasing, mode), std::memory_order_seq_cst);
            w = e->word.load(std::memory_order_acquire);
            continue;
        }
        const uint64_t nw = mode == Mode::Write ? w & ~kWriterBit : w - 1;
        if (e->word.compare_exchange_weak(w, nw, std::memory_order_seq_cst, std::memory_order_acquire)) break;
    }
    PIDLOCK_CRASH_POINT(26);
    sl->state.store(kSlotIdle, std::memory_order_release);
    give_slot(s1, pid, cache);
    if (w & kQueuedBit) {
        dispatch_after_release(si, e1, mode, locked);
        return 0;
    }
    if (locked) leave(si);
    return 0;
}

// A fast release found the queued bit: waiters are dispatched under the
// stripe's mutex (`locked`: it is held already).
void LockTable::dispatch_after_release(uint32_t si, uint32_t e1, Mode mode, bool locked) {
    if (!locked && enter(si) != 0) return;  // released; the waiters' own checks go on
    PIDLOCK_CRASH_POINT(28);
    Wakeups wk;
    dispatch(stripe(si), entry(e1), mode == Mode::Write, wk);
    leave(si);
    wake_up(wk);
}

int LockTable::release(LockHandle &h, SlotCache *cache) {
    if (!h.held() || !hdr_) {
        h = LockHandle();
        return 0;
    }
    if (h.record & LockHandle::kSlotBit) return release_fast(h, cache);
    const LockHandle mine = h;
    h = LockHandle();
    if (mine.record > slots_ || mine.stripe >= params_.stripes) return 0;
    Record *r = record(mine.record);
    // Tokens are unique per allocation: a mismatch means the lock was broken
    // (and the record perhaps reused); then there is nothing of ours to free.
    if (r->token.load(std::memory_order_relaxed) != mine.token) return 0;
    Stripe *st = stripe(mine.stripe);
    const int rc = enter(mine.stripe);
    if (rc != 0) {
        h = mine;  // still held: a later call (the pool cleanup) tries again
        return rc;
    }
    if (r->token.load(std::memory_order_relaxed) != mine.token || r->state != kHolding) {
        leave(mine.stripe);
        return 0;
    }
    PIDLOCK_CRASH_POINT(16);
    const uint32_t e1 = r->entry;
    Entry *e = entry(e1);
    const Mode mode = r->mode;
    unlink_record(e, mine.record);
    PIDLOCK_CRASH_POINT(17);
    give_record(st, mine.record);
    PIDLOCK_CRASH_POINT(18);
    Wakeups w;
    if (mode == Mode::Write) {
        e->writer = 0;
        dispatch(st, e, true, w);
    } else {
        --e->readers;
        dispatch(st, e, false, w);
    }
    PIDLOCK_CRASH_POINT(20);
    settle_queued(e);
    PIDLOCK_CRASH_POINT(22);
    leave(mine.stripe);
    wake_up(w);
    return 0;
}

int LockTable::break_key(const char *key, size_t len) {
    if (!hdr_ || len == 0 || len > params_.key_cap) return 0;
    const uint64_t hash = this->hash(key, len);
    const uint32_t bucket = static_cast<uint32_t>(hash) & (nbuckets_ - 1);
    const uint32_t si = bucket & (params_.stripes - 1);
    Stripe *st = stripe(si);
    if (enter(si) != 0) return -1;
    const uint32_t e1 = find(bucket, hash, key, len);
    if (e1 == 0) {
        leave(si);
        return 0;
    }
    Entry *e = entry(e1);
    int total = 0;
    bool writer_broken = false;
    for (uint32_t r1 = e->first; r1;) {
        Record *r = record(r1);
        const uint32_t next = r->next;
        if (r->state == kHolding) {
            if (r->mode == Mode::Write) {
                e->writer = 0;
                writer_broken = true;
            } else {
                --e->readers;
            }
            unlink_record(e, r1);
            give_record(st, r1);
            ++total;
        }
        r1 = next;
    }
    PIDLOCK_CRASH_POINT(32);
    // The fast holders: a new tag, so their releases take nothing off.
    uint64_t w = e->word.load(std::memory_order_acquire);
    while (!e->word.compare_exchange_weak(w, with_tag(tag_of(w) + 1) | (w & kQueuedBit),
                                          std::memory_order_seq_cst, std::memory_order_acquire)) {}
    PIDLOCK_CRASH_POINT(35);
    total += static_cast<int>(w & kReadersMask) + ((w & kWriterBit) ? 1 : 0);
    writer_broken = writer_broken || (w & kWriterBit) != 0;
    // As if the holders had released: readers queued behind a broken writer
    // go first, but breaking readers lets the waiting writer in.
    Wakeups wk;
    dispatch(st, e, writer_broken, wk);
    settle_queued(e);
    st->broken += static_cast<uint64_t>(total);
    leave(si);
    wake_up(wk);
    return total;
}

// Under entry e1's stripe mutex: sets REPAIR (every fast CAS on the entry
// now fails; those callers come to the mutex), waits for live processes'
// pending or releasing slots on it to settle, and recomputes the word from
// the held slots of live processes. With `free_dead`, the slots of dead
// processes that named the entry go back to the table. False if it gave up
// (a live process stayed pending: stopped, say); then the word is as it
// was, and a later check tries again.
bool LockTable::repair_entry(uint32_t e1, bool free_dead) {
    Entry *e = entry(e1);
    const uint64_t w = e->word.fetch_or(kRepairBit, std::memory_order_seq_cst);
    if (w & (kDeadBit | kRepairBit)) {
        if (!(w & kRepairBit)) e->word.fetch_and(~kRepairBit, std::memory_order_seq_cst);
        return false;
    }
    PIDLOCK_CRASH_POINT(33);
#ifdef PIDLOCK_CRASH_POINTS
    if (crash_at_ == 27) {
        // Test builds: a repair that takes its time, so that a release
        // meets the REPAIR bit (crash point 27).
        timespec pause{0, 100 * 1000000L};
        nanosleep(&pause, nullptr);
    }
#endif
    const uint32_t tag = tag_of(w);
    const uint64_t what = slot_what(e1, tag);
    const int32_t self = cached_pid();
    std::vector<std::pair<std::pair<int32_t, uint64_t>, bool>> alive;
    auto is_alive = [&](int32_t pid, uint64_t start) {
        if (pid == self) return true;
        for (const auto &a : alive)
            if (a.first.first == pid && a.first.second == start) return a.second;
        const bool al = process_state(pid, start) == ProcessState::Alive;
        alive.push_back({{pid, start}, al});
        return al;
    };
    const int64_t until = mono_ns() + kSettleNs;
    uint64_t readers = 0;
    bool writer = false;
    std::vector<uint32_t> dead;
    for (;;) {
        readers = 0;
        writer = false;
        dead.clear();
        bool unsettled = false;
        for (uint32_t s1 = 1; s1 <= slots_; ++s1) {
            const Slot *sl = slot(s1);
            const uint32_t state = sl->state.load(std::memory_order_seq_cst);
            const uint32_t kind = slot_kind(state);
            if (kind < kSlotPending || kind > kSlotReleasing) continue;
            if (sl->what.load(std::memory_order_relaxed) != what) continue;
            const int32_t owner = sl->owner.load(std::memory_order_acquire);
            if (owner > 0 && !is_alive(owner, sl->owner_start.load(std::memory_order_relaxed))) {
                dead.push_back(s1);
                continue;
            }
            if (kind != kSlotHeld) {
                unsettled = true;
            } else if (slot_mode(state) == Mode::Write) {
                writer = true;
            } else {
                ++readers;
            }
        }
        if (!unsettled) break;
        if (mono_ns() > until) {
            e->word.fetch_and(~kRepairBit, std::memory_order_seq_cst);
            return false;
        }
        timespec ts{0, 200000};
        nanosleep(&ts, nullptr);
    }
    PIDLOCK_CRASH_POINT(34);
    e->word.store(with_tag(tag) | (e->first ? kQueuedBit : 0) | std::min<uint64_t>(readers, kReadersMask) |
                      (writer ? kWriterBit : 0),
                  std::memory_order_seq_cst);
    if (free_dead) {
        for (uint32_t s1 : dead) {
            Slot *sl = slot(s1);
            const int32_t pid = sl->owner.load(std::memory_order_relaxed);
            if (pid <= 0) continue;
            if (slot_kind(sl->state.load(std::memory_order_relaxed)) == kSlotHeld) ++stripe(0)->reaped;
            unown_slot(sl, pid);
        }
    }
    return true;
}

// Whether a fast holder of e1 (by its current tag) belongs to a process that
// is gone. Reads only the slots (no mutex needed).
bool LockTable::fast_holders_dead(uint32_t e1, PidWatch &watch) {
    const uint64_t w = entry(e1)->word.load(std::memory_order_acquire);
    if ((w & (kReadersMask | kWriterBit)) == 0 || (w & kDeadBit)) return false;
    const uint64_t what = slot_what(e1, tag_of(w));
    const int32_t self = cached_pid();
    for (uint32_t s1 = 1; s1 <= slots_; ++s1) {
        const Slot *sl = slot(s1);
        const uint32_t kind = slot_kind(sl->state.load(std::memory_order_acquire));
        if (kind < kSlotPending || kind > kSlotReleasing || sl->what.load(std::memory_order_relaxed) != what)
            continue;
        const int32_t pid = sl->owner.load(std::memory_order_acquire);
        if (pid > 0 && pid != self && watch.gone(pid, sl->owner_start.load(std::memory_order_relaxed)))
            return true;
    }
    return false;
}

// Slots of processes that are gone (of `only` if nonzero): where one names
// an entry by its current tag, that entry is repaired (its word recomputed
// without the dead); the others go straight back to the table. Returns how
// many held a lock.
int LockTable::free_dead_slots(int32_t only) {
    const int32_t self = cached_pid();
    std::vector<std::pair<std::pair<int32_t, uint64_t>, bool>> alive;
    std::vector<uint32_t> repair_list;
    int held = 0;
    for (uint32_t s1 = 1; s1 <= slots_; ++s1) {
        Slot *sl = slot(s1);
        int32_t pid = sl->owner.load(std::memory_order_acquire);
        if (pid <= 0 || pid == self || (only != 0 && pid != only)) continue;
        const uint64_t start = sl->owner_start.load(std::memory_order_relaxed);
        bool al = true, known = false;
        for (const auto &a : alive)
            if (a.first.first == pid && a.first.second == start) {
                al = a.second;
                known = true;
            }
        if (!known) {
            al = process_state(pid, start) == ProcessState::Alive;
            alive.push_back({{pid, start}, al});
        }
        if (al) continue;
        const uint32_t kind = slot_kind(sl->state.load(std::memory_order_acquire));
        const uint64_t what = sl->what.load(std::memory_order_relaxed);
        const uint32_t e1 = static_cast<uint32_t>(what);
        if (kind >= kSlotPending && kind <= kSlotReleasing && e1 >= 1 && e1 <= slots_ &&
            tag_of(entry(e1)->word.load(std::memory_order_acquire)) == tag_of(what) &&
            !(entry(e1)->word.load(std::memory_order_acquire) & kDeadBit)) {
            repair_list.push_back(e1);  // its entry may count it: repaired first
            continue;
        }
        unown_slot(sl, pid);
    }
    std::sort(repair_list.begin(), repair_list.end());
    repair_list.erase(std::unique(repair_list.begin(), repair_list.end()), repair_list.end());
    for (uint32_t e1 : repair_list) {
        const uint32_t si = (static_cast<uint32_t>(entry(e1)->hash) & (nbuckets_ - 1)) & (params_.stripes - 1);
        if (enter(si) != 0) return -1;
        Entry *e = entry(e1);
        const uint64_t before = e->word.load(std::memory_order_acquire);
        if (((static_cast<uint32_t>(e->hash) & (nbuckets_ - 1)) & (params_.stripes - 1)) == si &&
            repair_entry(e1, true)) {
            const uint64_t after = e->word.load(std::memory_order_acquire);
            held += static_cast<int>((before & kReadersMask) - (after & kReadersMask)) +
                    ((before & kWriterBit) && !(after & kWriterBit) ? 1 : 0);
            Wakeups w;
            dispatch(stripe(si), e, (before & kWriterBit) != 0, w);
            leave(si);
            wake_up(w);
        } else {
            leave(si);
        }
    }
    return held;
}

void LockTable::count(Counter c) {
    if (!hdr_) return;
    switch (c) {
    case Counter::BadKeys: hdr_->c_bad_keys.fetch_add(1, std::memory_order_relaxed); break;
    }
}

uint64_t LockTable::next_fence() {
    return hdr_ ? hdr_->fence.fetch_add(1, std::memory_order_relaxed) + 1 : 0;
}

namespace {
std::string cut_string(const char *p, size_t cap) { return std::string(p, strnlen(p, cap)); }
}  // namespace

bool LockTable::snapshot(TableSnapshot &out, int *err) {
    out = TableSnapshot();
    if (!hdr_) return false;
    out.capacity = params_.capacity;
    out.key_cap = params_.key_cap;
    out.stripes = params_.stripes;
    const uint32_t *buckets = buckets_;
    uint32_t used = 0;
    Counters &c = out.counters;
    // The fast holders, read without any mutex: (what, slot), by entry.
    std::vector<std::pair<uint64_t, uint32_t>> held;
    for (uint32_t s1 = 1; s1 <= slots_; ++s1) {
        const Slot *sl = slot(s1);
        c.acquired_read += sl->acquired_read.load(std::memory_order_relaxed);
        c.acquired_write += sl->acquired_write.load(std::memory_order_relaxed);
        if (slot_kind(sl->state.load(std::memory_order_acquire)) == kSlotHeld)
            held.emplace_back(sl->what.load(std::memory_order_relaxed), s1);
    }
    std::sort(held.begin(), held.end());
    for (uint32_t s = 0; s < params_.stripes; ++s) {
        int rc = enter(s);
        if (rc != 0) {
            if (err) *err = rc;
            return false;
        }
        // Copying allocates; if that throws, the stripe must not stay locked.
        struct Unlock {
            LockTable *t;
            uint32_t s;
            ~Unlock() { t->leave(s); }
        } unlock_at_end{this, s};
        const Stripe *st = stripe(s);
        c.acquired_read += st->acquired_read;
        c.acquired_write += st->acquired_write;
        c.waited += st->waited;
        c.timeouts += st->timeouts;
        c.reaped += st->reaped;
        c.broken += st->broken;
        c.full += st->full;
        c.refused_waiters += st->refused_waiters;
        c.client_gone += st->client_gone;
        for (size_t b = 0; b < kWaitBuckets; ++b) c.wait_buckets[b] += st->wait_hist[b];
        c.wait_sum_us += st->wait_sum_us;
        for (uint32_t b = s; b < nbuckets_; b += params_.stripes) {
            for (uint32_t e1 = buckets[b]; e1; e1 = entry(e1)->chain) {
                const Entry *e = entry(e1);
                const uint64_t word = e->word.load(std::memory_order_acquire);
                const bool fast = (word & (kReadersMask | kWriterBit)) != 0;
                if (e->first == 0 && !fast) continue;  // idle, kept for reuse
                ++used;
                LockView v;
                v.key.assign(key_of(e1), e->key_len);
                v.mode = (e->writer || (word & kWriterBit)) ? Mode::Write
                         : (e->readers || (word & kReadersMask)) ? Mode::Read : Mode::None;
                v.waiting_read = e->waiting_read;
                v.waiting_write = e->waiting_write;
                auto add = [&](HolderView &&hv) {
                    if (!hv.waiting && (v.oldest_us == 0 || hv.since_us < v.oldest_us)) v.oldest_us = hv.since_us;
                    v.holders.push_back(std::move(hv));
                };
                if (fast) {
                    const uint64_t what = slot_what(e1, tag_of(word));
                    auto it = std::lower_bound(held.begin(), held.end(), std::make_pair(what, 0u));
                    for (; it != held.end() && it->first == what; ++it) {
                        const Slot *sl = slot(it->second);
                        HolderView hv;
                        hv.pid = sl->owner.load(std::memory_order_relaxed);
                        hv.thread = sl->thread;
                        hv.mode = slot_mode(sl->state.load(std::memory_order_relaxed));
                        hv.method = cut_string(sl->method, sizeof sl->method);
                        hv.uri = cut_string(sl->uri, sizeof sl->uri);
                        hv.client = cut_string(sl->client, sizeof sl->client);
                        hv.has_user = sl->has_user != 0;
                        hv.user = cut_string(sl->user, sizeof sl->user);
                        hv.since_us = sl->since_us;
                        hv.request = sl->request;
                        if (hv.mode == Mode::None) continue;  // released meanwhile
                        add(std::move(hv));
                    }
                }
                for (int pass = 0; pass < 2; ++pass) {
                    for (uint32_t r1 = e->first; r1; r1 = record(r1)->next) {
                        const Record *r = record(r1);
                        if ((pass == 0) != (r->state == kHolding)) continue;
                        HolderView hv;
                        hv.pid = r->pid;
                        hv.thread = r->thread;
                        hv.mode = r->mode;
                        hv.waiting = r->state == kWaiting;
                        hv.method = r->method;
                        hv.uri = r->uri;
                        hv.client = r->client;
                        hv.has_user = r->has_user != 0;
                        hv.user = r->user;
                        hv.since_us = r->since_us;
                        hv.request = r->request;
                        add(std::move(hv));
                    }
                }
                // A fast holder between its CAS on the word and its slot's
                // "held" mark (or taken after the slots were read above) has
                // no holder to show yet: the lock shows once it has one, never
                // as a lock held by nobody.
                if (v.holders.empty() && e->first == 0) continue;
                out.locks.push_back(std::move(v));
            }
        }
    }
    // Holding ones first, then waiting (fast holders were added before the
    // records, so a waiting record may sit between holders of two kinds).
    for (LockView &v : out.locks)
        std::stable_partition(v.holders.begin(), v.holders.end(), [](const HolderView &h) { return !h.waiting; });
    out.used = used;
    out.high_water = hdr_->high_water.load(std::memory_order_relaxed);
    c.bad_keys = hdr_->c_bad_keys.load(std::memory_order_relaxed);
    c.repairs = hdr_->c_repairs.load(std::memory_order_relaxed);
    std::stable_sort(out.locks.begin(), out.locks.end(),
                     [](const LockView &a, const LockView &b) {
                         const int64_t ka = a.oldest_us ? a.oldest_us : INT64_MAX;
                         const int64_t kb = b.oldest_us ? b.oldest_us : INT64_MAX;
                         return ka < kb;
                     });
    return true;
}

std::string LockTable::check_consistency() {
    std::string why;
    check_parts(true, why);
    return why;
}

// Every invariant, each walk bounded and each index checked before use.
// `quiescent`: no fast path runs meanwhile, so the words must match the
// slots exactly; otherwise (an audit under traffic) only what the mutexes
// guard is checked.
bool LockTable::check_parts(bool quiescent, std::string &why) {
    auto fail = [&](const char *w) {
        why = w;
        return false;
    };
    if (!hdr_) return fail("not a table");
    const uint32_t slots = slots_;
    const uint32_t *buckets = buckets_;
    std::vector<uint8_t> entry_seen(slots + 1, 0), rec_seen(slots + 1, 0);
    // Fast holders per (entry, tag), and slots left half-way.
    std::map<uint64_t, std::pair<uint32_t, uint32_t>> fast;  // what -> (readers, writers)
    if (quiescent) {
        for (uint32_t s1 = 1; s1 <= slots; ++s1) {
            const Slot *sl = slot(s1);
            const uint32_t state = sl->state.load();
            const uint32_t kind = slot_kind(state);
            if (kind == kSlotPending || kind == kSlotReleasing) return fail("holder slot left half-way");
            if (kind > kSlotReleasing) return fail("holder slot in no state");
            if (kind == kSlotHeld) {
                auto &f = fast[sl->what.load()];
                if (slot_mode(state) == Mode::Write) ++f.second; else ++f.first;
            }
        }
    }
    uint32_t used = 0;
    for (uint32_t b = 0; b < nbuckets_; ++b) {
        for (uint32_t e1 = buckets[b]; e1; e1 = entry(e1)->chain) {
            if (e1 > slots || entry_seen[e1]) return fail("bad or repeated entry in chain");
            entry_seen[e1] = 1;
            ++used;
            const Entry *e = entry(e1);
            const uint64_t w = e->word.load();
            if (w & kDeadBit) return fail("dead entry in a chain");
            if (w & kRepairBit) return fail("entry left under repair");
            if (((w & kQueuedBit) != 0) != (e->first != 0)) return fail("queued bit does not match the records");
            if ((static_cast<uint32_t>(e->hash) & (nbuckets_ - 1)) != b) return fail("entry in wrong bucket");
            if (e->key_len == 0 || e->key_len > params_.key_cap) return fail("bad key length");
            if (hash(key_of(e1), e->key_len) != e->hash) return fail("key does not match hash");
            uint32_t hr = 0, hw = 0, wr = 0, ww = 0, prev = 0;
            for (uint32_t r1 = e->first; r1; r1 = record(r1)->next) {
                if (r1 > slots || rec_seen[r1]) return fail("bad or repeated record");
                rec_seen[r1] = 1;
                const Record *r = record(r1);
                if (r->entry != e1 || r->prev != prev) return fail("record links broken");
                prev = r1;
                if (r->state == kHolding) (r->mode == Mode::Write ? hw : hr)++;
                else if (r->state == kWaiting) (r->mode == Mode::Write ? ww : wr)++;
                else return fail("free record linked to an entry");
            }
            if (e->last != prev) return fail("entry tail wrong");
            if (hr != e->readers || hw != e->writer || wr != e->waiting_read || ww != e->waiting_write)
                return fail("entry counts do not match its records");
            const uint32_t fr = static_cast<uint32_t>(w & kReadersMask), fw = (w & kWriterBit) ? 1 : 0;
            if (quiescent) {
                const auto it = fast.find(slot_what(e1, tag_of(w)));
                const uint32_t sr = it == fast.end() ? 0 : it->second.first;
                const uint32_t sw = it == fast.end() ? 0 : it->second.second;
                if (sr != fr || sw != fw) return fail("state word does not match the held slots");
            }
            if (hw + fw > 1 || ((hw + fw) && (hr + fr))) return fail("a writer is not alone");
        }
    }
    uint64_t stripe_used = 0, reserves = 0;
    for (uint32_t s = 0; s < params_.stripes; ++s) {
        stripe_used += stripe(s)->used.load();
        reserves += stripe(s)->reserve.load();
    }
    if (used != stripe_used) return fail("stripe key counts wrong");
    if (static_cast<int64_t>(stripe_used + reserves) + hdr_->budget.load() != params_.capacity)
        return fail("capacity budget does not add up");
    auto walk = [&](uint32_t head, int kind, std::vector<uint8_t> &seen, uint32_t limit,
                    uint32_t *count) -> const char * {
        uint32_t n = 0;
        for (uint32_t i = head; i;
             i = kind == 0 ? entry(i)->free_next.load() : record(i)->free_next.load()) {
            if (i > slots || seen[i]) return "free list broken";
            seen[i] = 1;
            if (kind == 0 && !(entry(i)->word.load() & kDeadBit)) return "free entry not dead";
            if (++n > limit) return "free list too long";
        }
        if (count) *count = n;
        return nullptr;
    };
    for (uint32_t s = 0; s < params_.stripes; ++s) {
        const Stripe *st = stripe(s);
        uint32_t n = 0;
        if (const char *w = walk(st->entry_cache, 0, entry_seen, kStripeCache, &n)) return fail(w);
        if (n != st->entry_cached) return fail("stripe entry cache count wrong");
        if (const char *w = walk(st->record_cache, 1, rec_seen, kStripeCache, &n)) return fail(w);
        if (n != st->record_cached) return fail("stripe record cache count wrong");
    }
    if (const char *w = walk(static_cast<uint32_t>(hdr_->entry_free.load()), 0, entry_seen, slots, nullptr))
        return fail(w);
    if (const char *w = walk(static_cast<uint32_t>(hdr_->record_free.load()), 1, rec_seen, slots, nullptr))
        return fail(w);
    for (uint32_t i = 1; i <= slots; ++i) {
        if (!entry_seen[i]) return fail("entry leaked");
        if (!rec_seen[i]) return fail("record leaked");
    }
    if (quiescent)
        for (uint32_t i = 1; i <= slots; ++i)
            if (slot(i)->owner.load() == 0 && slot_kind(slot(i)->state.load()) != kSlotFree)
                return fail("unowned holder slot in use");
    return true;
}

}  // namespace pidlock
