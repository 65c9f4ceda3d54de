// CppUTest runner: APR once for the whole run; leak checking is left to
// AddressSanitizer (CppUTest's own new/delete hooks would count the STL's
// caches as leaks).
#include <apr_general.h>

#include "CppUTest/CommandLineTestRunner.h"
#include "CppUTest/TestRegistry.h"
#include "CppUTest/MemoryLeakWarningPlugin.h"

int main(int argc, char **argv) {
    apr_initialize();
    MemoryLeakWarningPlugin::turnOffNewDeleteOverloads();
    const int rc = CommandLineTestRunner::RunAllTests(argc, argv);
    apr_terminate();
    return rc;
}
