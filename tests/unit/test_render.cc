#include <string>

#include "pidlock_lease.h"
#include "pidlock_render.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

// A small strict JSON checker: enough to prove the renderers emit valid
// JSON whatever bytes the keys hold.
struct JsonCheck {
    const std::string &s;
    size_t i = 0;
    explicit JsonCheck(const std::string &str) : s(str) {}
    void ws() { while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) ++i; }
    bool lit(const char *w) {
        const size_t n = std::string(w).size();
        if (s.compare(i, n, w) != 0) return false;
        i += n;
        return true;
    }
    bool str() {
        if (s[i] != '"') return false;
        for (++i; i < s.size(); ++i) {
            const unsigned char c = static_cast<unsigned char>(s[i]);
            if (c == '"') { ++i; return true; }
            if (c < 0x20) return false;
            if (c == '\\') {
                ++i;
                if (i >= s.size()) return false;
                if (s[i] == 'u') {
                    for (int k = 0; k < 4; ++k)
                        if (++i >= s.size() || !isxdigit(static_cast<unsigned char>(s[i]))) return false;
                } else if (std::string("\"\\/bfnrt").find(s[i]) == std::string::npos) {
                    return false;
                }
            } else if (c >= 0x80) {
                // must be valid UTF-8
                int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : -1;
                if (n < 0) return false;
                for (int k = 0; k < n; ++k)
                    if (++i >= s.size() || (static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) return false;
            }
        }
        return false;
    }
    bool num() {
        const size_t st = i;
        if (s[i] == '-') ++i;
        while (i < s.size() && (isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
        return i > st;
    }
    bool value() {
        ws();
        if (i >= s.size()) return false;
        bool ok;
        switch (s[i]) {
        case '{': ok = obj(); break;
        case '[': ok = arr(); break;
        case '"': ok = str(); break;
        case 't': ok = lit("true"); break;
        case 'f': ok = lit("false"); break;
        case 'n': ok = lit("null"); break;
        default: ok = num();
        }
        ws();
        return ok;
    }
    bool obj() {
        ++i;
        ws();
        if (s[i] == '}') { ++i; return true; }
        for (;;) {
            ws();
            if (!str()) return false;
            ws();
            if (s[i++] != ':') return false;
            if (!value()) return false;
            if (s[i] == ',') { ++i; continue; }
            if (s[i] == '}') { ++i; return true; }
            return false;
        }
    }
    bool arr() {
        ++i;
        ws();
        if (s[i] == ']') { ++i; return true; }
        for (;;) {
            if (!value()) return false;
            if (s[i] == ',') { ++i; continue; }
            if (s[i] == ']') { ++i; return true; }
            return false;
        }
    }
    bool valid() { return value() && i == s.size(); }
};

bool valid_json(const std::string &s) { return JsonCheck(s).valid(); }

TableSnapshot sample(const std::string &key) {
    TableSnapshot s;
    s.capacity = 400;
    s.used = 1;
    s.high_water = 17;
    s.counters.acquired_write = 3;
    LockView l;
    l.key = key;
    l.mode = Mode::Write;
    l.waiting_write = 1;
    HolderView h;
    h.pid = 4242;
    h.mode = Mode::Write;
    h.method = "PUT";
    h.uri = "/mn/v2/object/" + key;
    h.client = "127.0.0.1";
    h.since_us = 1795309323456000;  // 2026-11-22T01:02:03.456Z
    l.holders.push_back(h);
    s.locks.push_back(l);
    return s;
}

ServerFacts facts() {
    ServerFacts f;
    f.version = "0.1.0";
    f.backend = "shared";
    f.mutex = "pthread";
    f.mpm = "event";
    return f;
}

}  // namespace

TEST_GROUP(Render) {};

TEST(Render, JsonStringEscapes) {
    std::string o;
    CHECK_TRUE(json_string(o, std::string("a\"b\\c\n\x01<", 8)));
    STRCMP_EQUAL("\"a\\\"b\\\\c\\n\\u0001\\u003c\"", o.c_str());
    o.clear();
    CHECK_FALSE(json_string(o, "ok\xFF"));
    STRCMP_EQUAL("\"ok\xEF\xBF\xBD\"", o.c_str());
    o.clear();
    CHECK_TRUE(json_string(o, "caf\xC3\xA9"));
    o.clear();
    CHECK_FALSE(json_string(o, "\xED\xA0\x80"));  // a surrogate is not UTF-8
    o.clear();
    CHECK_FALSE(json_string(o, "\xC0\xAF"));  // overlong '/'
}

TEST(Render, StatusJsonHasContractFields) {
    const std::string j = render_status_json(sample("doi:10.5063/F1"), facts(), 1795309324690000);
    CHECK_TRUE(valid_json(j));
    const char *must[] = {"\"version\": \"0.1.0\"", "\"backend\": \"shared\"", "\"mutex\": \"pthread\"",
                          "\"mpm\": \"event\"", "\"generation\": 0", "\"capacity\": 400", "\"used\": 1",
                          "\"high_water\": 17", "\"acquired_read\": 0", "\"acquired_write\": 3",
                          "\"waited\": 0", "\"timeouts\": 0", "\"bad_keys\": 0", "\"reaped\": 0",
                          "\"broken\": 0", "\"refused_waiters\": 0", "\"key\": \"doi:10.5063/F1\"", "\"mode\": \"write\"",
                          "\"waiting_read\": 0", "\"waiting_write\": 1", "\"pid\": 4242",
                          "\"method\": \"PUT\"", "\"client\": \"127.0.0.1\"", "\"user\": null",
                          "\"since\": \"2026-11-22T01:02:03.456Z\"", "\"held_ms\": 1234"};
    for (const char *m : must)
        if (j.find(m) == std::string::npos) FAIL((std::string("missing ") + m + " in " + j).c_str());
    CHECK(j.find("key_hex") == std::string::npos);
}

TEST(Render, StatusExtrasLeases) {
    // Leases as the status page adds them: counters in `counters`, a
    // `leases` array, an HTML section, Prometheus series; still valid JSON.
    LeaseView v;
    v.key = "bad\xFFkey";
    v.owner = "Ann \"<b>\"";
    v.granted_us = v.idle_since_us = 1795309323456000;
    v.expires_us = v.granted_us + 60000000;
    v.id = "0badcafe";
    LeaseCounters c;
    c.granted = 5;
    c.refusals = 2;
    StatusExtra extra;
    extra.counters = lease_counter_fields(c);
    extra.json_members = ",\n \"leases\": " + render_leases_json({v});
    extra.html = render_leases_html({v}, v.granted_us, true, "n", "/s");
    extra.metrics = render_leases_metrics({v}, c);
    const std::string j = render_status_json(sample("k"), facts(), 1795309324690000, false, &extra);
    CHECK_TRUE(valid_json(j));
    for (const char *m : {"\"leases_granted\": 5", "\"leases_renewed\": 0", "\"leases_released\": 0",
                          "\"leases_expired\": 0", "\"leases_stolen\": 0", "\"lease_refusals\": 2",
                          "\"leases\": [", "\"key_hex\": \"626164ff6b6579\"", "\"id\": \"0badcafe\""})
        if (j.find(m) == std::string::npos) FAIL((std::string("missing ") + m + " in " + j).c_str());
    CHECK(render_status_json(sample("k"), facts(), 0).find("leases") == std::string::npos);
    PageOptions opt;
    opt.extra = &extra;
    const std::string h = render_status_html(sample("k"), facts(), 0, opt);
    CHECK(h.find("<h2>Leases (1)</h2>") != std::string::npos);
    CHECK(h.find("Ann &quot;&lt;b&gt;&quot;") != std::string::npos);
    CHECK(h.find("name=\"key_hex\" value=\"626164ff6b6579\"") != std::string::npos);
    const std::string m = render_status_metrics(sample("k"), facts(), &extra);
    CHECK(m.find("pidlock_lease_events_total{event=\"refused\"} 2\n") != std::string::npos);
}

TEST(Render, StatusJsonOddKeysStayValid) {
    const std::string odd[] = {"quo\"te", "back\\slash", std::string("ctl\x01\x1f\x7f", 6),
                               "bad\xFF\xFEutf8", "<script>alert(1)</script>", std::string("nul\0x", 5)};
    for (const std::string &k : odd) {
        const std::string j = render_status_json(sample(k), facts(), 0);
        if (!valid_json(j)) FAIL(("invalid JSON for key: " + j).c_str());
    }
    const std::string j = render_status_json(sample("bad\xFF"), facts(), 0);
    CHECK(j.find("\"key_hex\": \"626164ff\"") != std::string::npos);
}

TEST(Render, HtmlEscapesRequestValues) {
    TableSnapshot s = sample("<script>alert('x')</script>&");
    s.locks[0].holders[0].user = "<b>eve</b>";
    s.locks[0].holders[0].has_user = true;
    const std::string h = render_status_html(s, facts(), 0);
    CHECK(h.find("<script>") == std::string::npos);
    CHECK(h.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;") != std::string::npos);
    CHECK(h.find("&lt;b&gt;eve&lt;/b&gt;") != std::string::npos);
    CHECK(h.rfind("<!DOCTYPE html>", 0) == 0);
}

TEST(Render, AutoLines) {
    const std::string a = render_status_auto(sample("k"), facts());
    CHECK(a.find("TableCapacity: 400\n") != std::string::npos);
    CHECK(a.find("TableUsed: 1\n") != std::string::npos);
    CHECK(a.find("Holders: 1\n") != std::string::npos);
    CHECK(a.find("WaitingWrite: 1\n") != std::string::npos);
    CHECK(a.find("Backend: shared\n") != std::string::npos);
}

TEST(Render, BusyReportNeverShowsClientsOrUsers) {
    BusyReport r;
    r.key = "doi:10/\"x\"";
    r.held_mode = Mode::Write;
    r.holders = 1;
    r.waiting_write = 2;
    r.held_us = 1500000;
    const std::string j = render_busy_json(r, 0.25);
    CHECK_TRUE(valid_json(j));
    CHECK(j.find("\"key\": \"doi:10/\\\"x\\\"\"") != std::string::npos);
    CHECK(j.find("\"mode_held\": \"write\"") != std::string::npos);
    CHECK(j.find("\"held_ms\": 1500") != std::string::npos);
    const std::string t = render_busy_text(r, 0.25);
    CHECK(t.find("key: doi:10/\"x\"") != std::string::npos);
    CHECK(t.find("holders: 1") != std::string::npos);
    CHECK(t.find("127.0.0.1") == std::string::npos);
    BusyReport c;
    c.key = std::string("a\x1b[2Jb", 6);
    CHECK(render_busy_text(c, 1).find("\x1b") == std::string::npos);
    CHECK(j.find("too_many_waiting") == std::string::npos);
    r.too_many_waiting = true;  // PidLockMaxWaiters said no
    CHECK_TRUE(valid_json(render_busy_json(r, 0)));
    CHECK(render_busy_json(r, 0).find("\"too_many_waiting\": true") != std::string::npos);
    CHECK(render_busy_text(r, 0).find("too many requests are waiting") != std::string::npos);
}

TEST(Render, Iso8601) {
    STRCMP_EQUAL("1970-01-01T00:00:00.000Z", iso8601_utc(0).c_str());
    STRCMP_EQUAL("2026-11-22T01:02:03.456Z", iso8601_utc(1795309323456789).c_str());
}

TEST(Render, MetricsFormat) {
    TableSnapshot s = sample("k");
    s.counters.acquired_read = 5;
    s.counters.wait_buckets[0] = 2;
    s.counters.wait_buckets[3] = 1;
    s.counters.wait_buckets[kWaitBuckets - 1] = 1;
    s.counters.wait_sum_us = 120500000;
    ServerFacts f = facts();
    f.mutex = "pth\"read\\x";  // label escaping
    const std::string m = render_status_metrics(s, f);
    CHECK(m.find("pidlock_acquired_total{mode=\"read\"} 5\n") != std::string::npos);
    CHECK(m.find("pidlock_acquired_total{mode=\"write\"} 3\n") != std::string::npos);
    CHECK(m.find("# TYPE pidlock_table_used gauge\npidlock_table_used 1\n") != std::string::npos);
    CHECK(m.find("pidlock_table_capacity 400\n") != std::string::npos);
    CHECK(m.find("pidlock_waiting{mode=\"write\"} 1\n") != std::string::npos);
    CHECK(m.find("mutex=\"pth\\\"read\\\\x\"") != std::string::npos);
    // Histogram buckets are cumulative and end with +Inf = count.
    CHECK(m.find("pidlock_wait_seconds_bucket{le=\"0.001\"} 2\n") != std::string::npos);
    CHECK(m.find("pidlock_wait_seconds_bucket{le=\"0.01\"} 2\n") != std::string::npos);
    CHECK(m.find("pidlock_wait_seconds_bucket{le=\"0.05\"} 3\n") != std::string::npos);
    CHECK(m.find("pidlock_wait_seconds_bucket{le=\"+Inf\"} 4\n") != std::string::npos);
    CHECK(m.find("pidlock_wait_seconds_count 4\n") != std::string::npos);
    CHECK(m.find("pidlock_wait_seconds_sum 120.500000\n") != std::string::npos);
    // Every line is a comment or `name{labels} value`.
    size_t start = 0;
    while (start < m.size()) {
        const size_t end = m.find('\n', start);
        CHECK(end != std::string::npos);
        const std::string line = m.substr(start, end - start);
        if (line[0] != '#') {
            CHECK(line.rfind("pidlock_", 0) == 0);
            const size_t sp = line.rfind(' ');
            CHECK(sp != std::string::npos && sp + 1 < line.size());
            for (size_t i = sp + 1; i < line.size(); ++i) CHECK(isdigit(line[i]) || line[i] == '.');
        }
        start = end + 1;
    }
}

TEST(Render, HtmlBreakFormsStaleAndRefresh) {
    TableSnapshot s = sample("doi:<x>");
    s.locks[0].holders[0].since_us = 1000000;
    PageOptions opt;
    opt.actions = true;
    opt.nonce = "0123456789abcdef0123456789abcdef";
    opt.form_action = "/pidlock-status";
    opt.stale_us = 10 * 1000000LL;
    opt.refresh_s = 5;
    std::string h = render_status_html(s, facts(), 1000000 + 11 * 1000000LL, opt);
    CHECK(h.find("<meta http-equiv=\"refresh\" content=\"5\">") != std::string::npos);
    CHECK(h.find("<tr class=\"stale\">") != std::string::npos);
    CHECK(h.find("name=\"nonce\" value=\"0123456789abcdef0123456789abcdef\"") != std::string::npos);
    CHECK(h.find("name=\"key\" value=\"doi:&lt;x&gt;\"") != std::string::npos);
    CHECK(h.find("action=\"/pidlock-status\"") != std::string::npos);
    // Not stale yet: no highlight; no actions: no forms, no nonce.
    h = render_status_html(s, facts(), 1000000 + 5 * 1000000LL, PageOptions());
    CHECK(h.find("class=\"stale\"") == std::string::npos);
    CHECK(h.find("<form") == std::string::npos);
    CHECK(h.find("nonce") == std::string::npos);
    // Keys that are not UTF-8 travel as hex.
    opt.stale_us = 1;
    h = render_status_html(sample("b\xFF"), facts(), 0, opt);
    CHECK(h.find("name=\"key_hex\" value=\"62ff\"") != std::string::npos);
}

TEST(Render, ModStatusSection) {
    const std::string h = render_mod_status_section(sample("<k>"), facts());
    CHECK(h.find("<h2>PidLock</h2>") != std::string::npos);
    CHECK(h.find("1 of 400 keys in use, high water 17") != std::string::npos);
    CHECK(h.find("<td>&lt;k&gt;</td><td>write</td><td>1</td><td>0 / 1</td>") != std::string::npos);
    CHECK(h.find("<k>") == std::string::npos);
    TableSnapshot many = sample("a");
    for (int i = 0; i < 9; ++i) many.locks.push_back(many.locks[0]);
    const std::string cut = render_mod_status_section(many, facts(), 3);
    size_t rows = 0;
    for (size_t p = cut.find("<tr><td>"); p != std::string::npos; p = cut.find("<tr><td>", p + 1)) ++rows;
    CHECK_EQUAL(3u, rows);
}

TEST(Render, KeysAFormWouldMangleTravelAsHex) {
    CHECK_TRUE(key_fits_form("doi:10.5063/F1"));
    CHECK_TRUE(key_fits_form("caf\xC3\xA9 x"));
    CHECK_FALSE(key_fits_form(std::string("a\x01z", 3)));
    CHECK_FALSE(key_fits_form(std::string("nul\0x", 5)));
    CHECK_FALSE(key_fits_form("tab\there"));
    CHECK_FALSE(key_fits_form("line\nbreak"));
    CHECK_FALSE(key_fits_form("del\x7F"));
    CHECK_FALSE(key_fits_form("bad\xFF"));
    PageOptions opt;
    opt.actions = true;
    opt.nonce = "0123456789abcdef0123456789abcdef";
    const struct {
        std::string key;
        const char *field;
    } cases[] = {{std::string("a\x01" "b", 3), "name=\"key_hex\" value=\"610162\""},
                 {"x\x1Fy", "name=\"key_hex\" value=\"781f79\""},
                 {"d\x7F", "name=\"key_hex\" value=\"647f\""},
                 {"caf\xC3\xA9", "name=\"key\" value=\"caf\xC3\xA9\""}};
    for (const auto &c : cases) {
        const std::string h = render_status_html(sample(c.key), facts(), 0, opt);
        if (h.find(c.field) == std::string::npos) FAIL((std::string("no ") + c.field + " in the form").c_str());
        // One key field per form, never both.
        CHECK_EQUAL(1u, static_cast<size_t>((h.find("name=\"key\"") != std::string::npos) +
                                            (h.find("name=\"key_hex\"") != std::string::npos)));
    }
}

TEST(Render, QueryStringsHiddenUnlessShown) {
    STRCMP_EQUAL("/o/x?\xE2\x80\xA6", status_uri("/o/x?pid=x&token=SECRET123", false).c_str());
    STRCMP_EQUAL("/o/x?pid=x&token=SECRET123", status_uri("/o/x?pid=x&token=SECRET123", true).c_str());
    STRCMP_EQUAL("/o/x", status_uri("/o/x", false).c_str());
    STRCMP_EQUAL("/o/x?\xE2\x80\xA6", status_uri("/o/x?", false).c_str());
    TableSnapshot s = sample("k");
    s.locks[0].holders[0].uri = "/mn/v2/other?pid=x&token=SECRET123";
    HolderView waiter = s.locks[0].holders[0];
    waiter.waiting = true;
    s.locks[0].holders.push_back(waiter);
    PageOptions opt;
    const std::string hidden[] = {render_status_html(s, facts(), 0, opt), render_status_json(s, facts(), 0),
                                  render_status_auto(s, facts()), render_status_metrics(s, facts()),
                                  render_mod_status_section(s, facts())};
    for (const std::string &out : hidden)
        if (out.find("SECRET123") != std::string::npos) FAIL(("query string shown: " + out).c_str());
    CHECK(hidden[0].find("/mn/v2/other?\xE2\x80\xA6</code>") != std::string::npos);
    CHECK(hidden[1].find("\"uri\": \"/mn/v2/other?\xE2\x80\xA6\"") != std::string::npos);
    opt.show_query = true;
    CHECK(render_status_html(s, facts(), 0, opt).find("/mn/v2/other?pid=x&amp;token=SECRET123") !=
          std::string::npos);
    const std::string j = render_status_json(s, facts(), 0, true);
    CHECK(valid_json(j));
    CHECK(j.find("\"uri\": \"/mn/v2/other?pid=x&token=SECRET123\"") != std::string::npos);
}

// PidLockCluster: the cluster object in JSON and the same numbers on the
// HTML page; nothing of it without the tier.
TEST(Render, ClusterObjectOnlyWithTheTier) {
    TableSnapshot s = sample("k");
    CHECK(render_status_json(s, facts(), 0).find("\"cluster\"") == std::string::npos);
    CHECK(render_status_html(s, facts(), 0).find("PostgreSQL") == std::string::npos);
    s.cluster.on = true;
    s.cluster.backend = "postgres";
    s.cluster.connections = 3;
    s.cluster.held = 2;
    s.cluster.waiting = 1;
    s.cluster.lost = 7;
    s.cluster.errors = 11;
    const std::string j = render_status_json(s, facts(), 0);
    CHECK_TRUE(valid_json(j));
    const char *want = "\"cluster\": {\"backend\": \"postgres\", \"connections\": 3, \"held\": 2, "
                       "\"waiting\": 1, \"lost\": 7, \"errors\": 11, \"remote\": []}";
    if (j.find(want) == std::string::npos) FAIL(("missing cluster object in " + j).c_str());
    const std::string h = render_status_html(s, facts(), 0);
    const char *rows[] = {"PostgreSQL connections</th><td>3", "Requests holding cluster locks</th><td>2",
                          "Requests waiting in PostgreSQL</th><td>1", "Cluster locks lost while held</th><td>7",
                          "PostgreSQL errors</th><td>11"};
    for (const char *r : rows)
        if (h.find(r) == std::string::npos) FAIL((std::string("missing ") + r).c_str());
    CHECK(h.find("Held on other hosts") == std::string::npos);
    // What other hosts hold on keys this host waits for: escaped, odd keys as hex.
    RemoteHolder r;
    r.key = "<b>\xFF";
    r.mode = Mode::Write;
    r.session = 4711;
    r.application = "mod_pidlock <a1b2c3d4>";
    r.client = "10.0.0.2";
    r.since_us = 1795309323456000;
    s.cluster.remote.push_back(r);
    const std::string j2 = render_status_json(s, facts(), 0);
    CHECK_TRUE(valid_json(j2));
    CHECK(j2.find("\"remote\": [{\"key\": ") != std::string::npos);
    CHECK(j2.find("\"key_hex\": \"3c623eff\"") != std::string::npos);
    CHECK(j2.find("\"mode\": \"write\", \"session\": 4711") != std::string::npos);
    CHECK(j2.find("\"since\": \"2026-11-22T01:02:03.456Z\"") != std::string::npos);
    const std::string h2 = render_status_html(s, facts(), 0);
    CHECK(h2.find("Held on other hosts") != std::string::npos);
    CHECK(h2.find("&lt;b&gt;") != std::string::npos && h2.find("<b>") == std::string::npos);
    CHECK(h2.find("mod_pidlock &lt;a1b2c3d4&gt;") != std::string::npos);
}
