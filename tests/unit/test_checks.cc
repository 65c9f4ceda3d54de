#include <string>

#include "pidlock_checks.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

MpmFacts mpm(const char *name, int server_limit, int thread_limit, int max_daemons, int threads) {
    MpmFacts m;
    m.name = name;
    m.forked = true;
    m.server_limit = server_limit;
    m.thread_limit = thread_limit;
    m.max_daemons = max_daemons;
    m.max_threads = threads;
    return m;
}

bool refused_with(const std::vector<Finding> &f, const char *id) {
    for (const Finding &x : f)
        if (x.refuse && x.message.find(id) == 0) return true;
    return false;
}

}  // namespace

TEST_GROUP(Checks) {
    ModuleFacts mod;
    void setup() override { mod.mutex_mech = "pthread"; }
};

TEST(Checks, SharedBackendAcceptedEverywhere) {
    CHECK_TRUE(check_startup(mpm("prefork", 256, 1, 150, 1), mod).empty());
    CHECK_TRUE(check_startup(mpm("worker", 16, 64, 6, 25), mod).empty());
    CHECK_TRUE(check_startup(mpm("event", 16, 64, 6, 25), mod).empty());
}

TEST(Checks, ThreadBackendNeedsOneProcess) {
    mod.thread_backend = true;
    CHECK_TRUE(refused_with(check_startup(mpm("prefork", 1, 1, 1, 1), mod), "PIDLOCK301"));
    CHECK_TRUE(refused_with(check_startup(mpm("event", 16, 64, 6, 25), mod), "PIDLOCK301"));
    const auto f = check_startup(mpm("worker", 4, 64, 4, 25), mod);
    CHECK_TRUE(refused_with(f, "PIDLOCK301"));
    CHECK(f[0].message.find("ServerLimit 4") != std::string::npos);
    CHECK(f[0].message.find("PidLockBackend") != std::string::npos);
    CHECK_TRUE(check_startup(mpm("event", 1, 64, 1, 64), mod).empty());
}

TEST(Checks, TableSize) {
    CHECK_EQUAL(1024u, auto_table_size(mpm("event", 16, 64, 6, 25)));
    CHECK_EQUAL(150u, max_concurrent_requests(mpm("event", 16, 64, 6, 25)));
    mod.table_size = 100;
    const auto f = check_startup(mpm("event", 16, 64, 6, 25), mod);
    CHECK_TRUE(refused_with(f, "PIDLOCK302"));
    CHECK(f[0].message.find("PidLockTableSize 100") != std::string::npos);
    CHECK(f[0].message.find("150") != std::string::npos);
    CHECK(f[0].message.find("auto (1024") != std::string::npos);
    mod.table_size = 150;  // enough for now, not for a graceful restart: warned
    const auto g = check_startup(mpm("event", 16, 64, 6, 25), mod);
    CHECK_EQUAL(1u, g.size());
    CHECK_FALSE(g[0].refuse);
    CHECK(g[0].message.find("PIDLOCK304") == 0);
    mod.table_size = 1024;
    CHECK_TRUE(check_startup(mpm("event", 16, 64, 6, 25), mod).empty());
    CHECK_EQUAL(1024u, effective_table_size(mpm("event", 4, 4, 4, 4), mod));
    mod.table_size = 0;
    CHECK_EQUAL(16u, effective_table_size(mpm("event", 4, 4, 4, 4), mod));
}

TEST(Checks, MutexMechanisms) {
    for (const char *bad : {"posixsem", "none"}) {
        mod.mutex_mech = bad;
        const auto f = check_startup(mpm("prefork", 256, 1, 150, 1), mod);
        CHECK_TRUE(refused_with(f, "PIDLOCK303"));
        CHECK(f[0].message.find("Mutex") != std::string::npos);
    }
    for (const char *ok : {"pthread", "fcntl", "flock", "sysvsem", "default"}) {
        mod.mutex_mech = ok;
        CHECK_TRUE(check_startup(mpm("prefork", 256, 1, 150, 1), mod).empty());
    }
}

TEST(Checks, ScopeWarnings) {
    ServerScopes main;
    main.name = "the main server";
    main.httpd_timeout_s = 60;
    ScopeFacts on;
    on.where = "httpd.conf:10";
    on.on = true;
    main.scopes.push_back(on);
    auto f = check_scopes({main});
    CHECK_EQUAL(1u, f.size());
    CHECK_FALSE(f[0].refuse);
    CHECK(f[0].message.find("PIDLOCK305") == 0);
    CHECK(f[0].message.find("httpd.conf:10") != std::string::npos);
    // A key anywhere in reach (e.g. the server defaults) silences it.
    ScopeFacts keys;
    keys.has_keys = true;
    main.scopes.push_back(keys);
    CHECK_TRUE(check_scopes({main}).empty());
    // A timeout longer than httpd's Timeout.
    ScopeFacts slow;
    slow.where = "httpd.conf:20";
    slow.timeout_s = 120;
    main.scopes.push_back(slow);
    f = check_scopes({main});
    CHECK_EQUAL(1u, f.size());
    CHECK(f[0].message.find("PIDLOCK306") == 0);
    CHECK(f[0].message.find("120") != std::string::npos);
    // Seconds as written (not 3.6e+03).
    main.scopes.back().timeout_s = 3600;
    main.httpd_timeout_s = 1200;
    f = check_scopes({main});
    CHECK_EQUAL(1u, f.size());
    CHECK(f[0].message.find("PidLockTimeout 3600 at httpd.conf:20 is longer than httpd's Timeout 1200 ") !=
          std::string::npos);
    main.scopes.back().timeout_s = 120;
    main.httpd_timeout_s = 60;
    // A scope inherited by two hosts is reported once.
    ServerScopes vhost = main;
    vhost.name = "virtual host a";
    CHECK_EQUAL(1u, check_scopes({main, vhost}).size());
}

TEST(Checks, MaxHoldAboveBackendTimeoutWarns) {
    ServerScopes srv;
    srv.name = "the main server";
    srv.httpd_timeout_s = 60;
    ScopeFacts sc;
    sc.where = "x.conf:3";
    sc.max_hold_s = 120;
    srv.scopes.push_back(sc);
    std::vector<Finding> f = check_scopes({srv});
    CHECK_EQUAL(1u, f.size());
    CHECK(f[0].message.find("PIDLOCK307") == 0);
    CHECK(f[0].message.find("Timeout") != std::string::npos);
    CHECK(!f[0].refuse);
    srv.proxy_timeout_s = 300;  // ProxyTimeout above it: no hazard
    CHECK_EQUAL(0u, check_scopes({srv}).size());
    srv.proxy_timeout_s = 10;
    f = check_scopes({srv});
    CHECK_EQUAL(1u, f.size());
    CHECK(f[0].message.find("ProxyTimeout") != std::string::npos);
    srv.scopes[0].max_hold_s = 0;  // no limit: nothing to compare
    CHECK_EQUAL(0u, check_scopes({srv}).size());
}

TEST(Checks, KeysOnlyCountWhereTheyApply) {
    ServerScopes srv;
    srv.name = "the main server";
    ScopeFacts keyed;
    keyed.kind = "<Location";
    keyed.path = "/mn/v2/";
    keyed.has_keys = true;
    ScopeFacts inner;
    inner.kind = "<Location";
    inner.path = "/mn/v2/object/";
    inner.on = true;
    inner.where = "a.conf:3";
    ScopeFacts elsewhere = inner;
    elsewhere.path = "/other/";
    elsewhere.where = "a.conf:9";
    srv.scopes = {keyed, inner, elsewhere};
    const auto f = check_scopes({srv});
    CHECK_EQUAL(1u, f.size());
    CHECK(f[0].message.find("a.conf:9") != std::string::npos);
}
