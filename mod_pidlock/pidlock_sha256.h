// SHA-256 of a byte string (pidlock_sha256.cc).
#ifndef PIDLOCK_SHA256_H
#define PIDLOCK_SHA256_H

#include <cstddef>

namespace pidlock {

// SHA-256 of `len` bytes into `out` (32 bytes).
void sha256(const void *data, size_t len, unsigned char out[32]);

}  // namespace pidlock

#endif
