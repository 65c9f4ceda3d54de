// Stripe mutexes for the lock table. AprStripeLocks wraps APR global mutexes
// (what httpd's `Mutex ... pidlock` creates); PthreadStripeLocks wraps pthread
// mutexes, process-private for the thread backend or process-shared (robust)
// in a shared region for tests. No httpd includes.
#ifndef PIDLOCK_LOCKS_H
#define PIDLOCK_LOCKS_H

#include <pthread.h>

#include <apr_global_mutex.h>

#include "pidlock_table.h"

namespace pidlock {

class AprStripeLocks final : public StripeLocks {
  public:
    // `mutexes` must hold `n` mutexes and outlive this object.
    AprStripeLocks(apr_global_mutex_t **mutexes, unsigned n) : m_(mutexes), n_(n) {}
    int lock(unsigned stripe) override { return apr_global_mutex_lock(m_[stripe]); }
    int trylock(unsigned stripe) override { return apr_global_mutex_trylock(m_[stripe]); }
    int unlock(unsigned stripe) override { return apr_global_mutex_unlock(m_[stripe]); }
    unsigned size() const { return n_; }

  private:
    apr_global_mutex_t **m_;
    unsigned n_;
};

class PthreadStripeLocks final : public StripeLocks {
  public:
    static size_t region_size(unsigned n) { return sizeof(pthread_mutex_t) * n; }
    // Initializes `n` mutexes in `mem`; `shared`: PTHREAD_PROCESS_SHARED and
    // robust, for memory shared with forked processes. 0 or an errno.
    static int init(void *mem, unsigned n, bool shared);
    PthreadStripeLocks(void *mem, unsigned /* n, as init() had it */) : m_(static_cast<pthread_mutex_t *>(mem)) {}
    int lock(unsigned stripe) override;
    int trylock(unsigned stripe) override;
    int unlock(unsigned stripe) override { return pthread_mutex_unlock(&m_[stripe]); }

  private:
    pthread_mutex_t *m_;
};

}  // namespace pidlock

#endif
