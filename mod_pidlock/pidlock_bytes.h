// Word-at-a-time helpers for the request path's short strings (keys, holder
// fields): a load of eight (or, with SSE2, sixteen) bytes that stays on the
// page its first byte is on may read past a string's end, never into a page
// the string does not touch
// (the reasoning of the C library's own string functions). Functions that do
// so are marked PIDLOCK_NO_ASAN: AddressSanitizer would report the bytes
// read past the end, which they never use.
#ifndef PIDLOCK_BYTES_H
#define PIDLOCK_BYTES_H

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>  // sixteen bytes at a time where the CPU has SSE2 (every x86-64)
#endif

#define PIDLOCK_NO_ASAN __attribute__((no_sanitize("address")))
// Inline, except under AddressSanitizer: a function forced inline into an
// instrumented caller is instrumented with it, whatever its own attribute.
#if defined(__SANITIZE_ADDRESS__)
#define PIDLOCK_HOT_NO_ASAN PIDLOCK_NO_ASAN inline __attribute__((noinline))
#else
#define PIDLOCK_HOT_NO_ASAN PIDLOCK_NO_ASAN inline __attribute__((always_inline))
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define PIDLOCK_WORDWISE 1
#else
#define PIDLOCK_WORDWISE 0
#endif

namespace pidlock {

// Whether a load of `width` bytes (8, or 16 for SSE2) at p stays on the page
// p is on (pages are 4 KiB or a multiple of it).
inline bool within_page(const void *p, uintptr_t width = 8) {
    return (reinterpret_cast<uintptr_t>(p) & 4095) <= 4096 - width;
}

// The lowest set bit of the result is the high bit of w's first zero byte
// (little endian); higher bits may be set spuriously.
inline uint64_t zero_bytes(uint64_t w) { return (w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull; }

// The same for the first byte equal to c.
inline uint64_t bytes_equal(uint64_t w, unsigned char c) { return zero_bytes(w ^ (0x0101010101010101ull * c)); }

// memcmp(a, b, n) == 0 for the short keys of the table's fast path, without
// a library call: keys of up to sixteen bytes in one SSE2 compare, longer
// ones eight bytes at a time, the last word too where its load stays on
// the page, its bytes past the end masked off.
PIDLOCK_HOT_NO_ASAN bool same_bytes(const char *a, const char *b, size_t n) {
#if defined(__SSE2__) && PIDLOCK_WORDWISE
    // Keys of up to sixteen bytes (most): one compare where both loads stay
    // on their pages, the bytes past the end masked off.
    if (n <= 16 && within_page(a, 16) && within_page(b, 16)) {
        const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i *>(a));
        const __m128i y = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b));
        const uint32_t differ = ~static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(x, y)));
        return (differ & ((1u << n) - 1)) == 0;
    }
#endif
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        std::memcpy(&x, a + i, 8);
        std::memcpy(&y, b + i, 8);
        if (x != y) return false;
    }
    if (i == n) return true;
#if PIDLOCK_WORDWISE
    if (within_page(a + i) && within_page(b + i)) {
        uint64_t x, y;
        std::memcpy(&x, a + i, 8);
        std::memcpy(&y, b + i, 8);
        return ((x ^ y) & ((1ull << (8 * (n - i))) - 1)) == 0;
    }
#endif
    for (; i < n; ++i)
        if (a[i] != b[i]) return false;
    return true;
}

}  // namespace pidlock

#endif
