// Word-at-a-time helpers for the request path's short strings (keys, holder
// fields): a load of eight (or, with SSE2, sixteen) bytes that stays on the
// page its first byte is on may read past a string's end, never into a page
// the string does not touch
// (the reasoning of the C library's own string functions). Functions that do
// so are marked PIDLOCK_NO_ASAN: AddressSanitizer would report the bytes
// read past the end, which they never use.
#ifndef PIDLOCK_BYTES_H
#define PIDLOCK_BYTES_H

#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>  // sixteen bytes at a time where the CPU has SSE2 (every x86-64)
#endif

#define PIDLOCK_NO_ASAN __attribute__((no_sanitize("address")))

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

}  // namespace pidlock

#endif
