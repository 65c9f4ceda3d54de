#include "pidlock_locks.h"

#include <cerrno>

namespace pidlock {

int PthreadStripeLocks::init(void *mem, unsigned n, bool shared) {
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc != 0) return rc;
    if (shared) {
        rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
        if (rc == 0) rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    }
    pthread_mutex_t *m = static_cast<pthread_mutex_t *>(mem);
    for (unsigned i = 0; rc == 0 && i < n; ++i) rc = pthread_mutex_init(&m[i], &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
}

namespace {

// The previous owner died holding it: make it usable again. Repairing the
// table section it guarded is the table's job, not the mutex's.
int recover(int rc, pthread_mutex_t *m) {
    if (rc != EOWNERDEAD) return rc;
    pthread_mutex_consistent(m);
    return 0;
}

}  // namespace

int PthreadStripeLocks::lock(unsigned stripe) {
    return recover(pthread_mutex_lock(&m_[stripe]), &m_[stripe]);
}

int PthreadStripeLocks::trylock(unsigned stripe) {
    return recover(pthread_mutex_trylock(&m_[stripe]), &m_[stripe]);
}

}  // namespace pidlock
