// Memory fenced by inaccessible pages, for the word-at-a-time string code
// that may load past a string's end (or before its start) but never into a
// page the string does not touch: a string placed against either fence
// crashes the test if such a load crosses. Include after CppUTest.
#ifndef PIDLOCK_TEST_GUARDED_PAGES_H
#define PIDLOCK_TEST_GUARDED_PAGES_H

#include <cstring>
#include <string>

#include <sys/mman.h>
#include <unistd.h>

// Three pages, the first and the last PROT_NONE.
struct GuardedPage {
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    char *base = nullptr;
    GuardedPage() {
        void *m = mmap(nullptr, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) FAIL("mmap");
        base = static_cast<char *>(m);
        if (mprotect(base, page, PROT_NONE) != 0 || mprotect(base + 2 * page, page, PROT_NONE) != 0)
            FAIL("mprotect");
    }
    ~GuardedPage() { munmap(base, 3 * page); }
    GuardedPage(const GuardedPage &) = delete;
    GuardedPage &operator=(const GuardedPage &) = delete;
    // `s`'s last byte (its NUL if `with_nul`) on the accessible page's last byte.
    const char *at_end(const std::string &s, bool with_nul = false) {
        const size_t n = s.size() + (with_nul ? 1 : 0);
        char *p = base + 2 * page - n;
        std::memcpy(p, s.c_str(), n);
        return p;
    }
    // `s`'s first byte on the accessible page's first byte.
    const char *at_start(const std::string &s) {
        char *p = base + page;
        std::memcpy(p, s.data(), s.size());
        return p;
    }
};

#endif
