// Edit leases: tokens, the If / Timeout / Lock-Token / owner parsers, the
// lease table with an injected clock (the LeaseStore contract of
// lease_contract.cc, in one process and over fork()ed ones, and what only
// the shared region has), and rendering.
#include <cctype>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "concurrency.h"
#include "pidlock_lease.h"
#include "pidlock_locks.h"
#include "lease_contract.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;
using lease_contract::kSec;
using lease_contract::req;
using lease_contract::token_of;

namespace {

constexpr int64_t kT0 = 1800000000LL * kSec;  // 2027

}  // namespace

TEST_GROUP(LeaseToken){};

TEST(LeaseToken, UrnRoundTripsAndIsVersion4) {
    const LeaseToken t = token_of(1);
    const std::string urn = lease_token_urn(t);
    CHECK_EQUAL(45u, urn.size());
    CHECK(urn.compare(0, 9, "urn:uuid:") == 0);
    CHECK_EQUAL('4', urn[9 + 14]);
    CHECK(strchr("89ab", urn[9 + 19]) != nullptr);
    LeaseToken back;
    CHECK(lease_token_parse(urn, back));
    CHECK(lease_token_equal(t, back));
    std::string upper = urn;
    for (size_t i = 9; i < upper.size(); ++i) upper[i] = static_cast<char>(toupper(upper[i]));
    upper.replace(0, 9, "URN:UUID:");
    CHECK(lease_token_parse(upper, back));
    CHECK(lease_token_equal(t, back));
}

TEST(LeaseToken, MalformedTokensRefused) {
    LeaseToken t;
    const char *bad[] = {"", "urn:uuid:", "opaquelocktoken:12345678-1234-4234-8234-123456789abc",
                         "urn:uuid:12345678-1234-4234-8234-123456789ab", "urn:uuid:12345678-1234-4234-8234-123456789abcd",
                         "urn:uuid:12345678+1234-4234-8234-123456789abc", "urn:uuid:1234567g-1234-4234-8234-123456789abc",
                         "DAV:no-lock"};
    for (const char *b : bad) CHECK_FALSE_TEXT(lease_token_parse(b, t), b);
}

TEST(LeaseToken, KeepsAtLeast122RandomBits) {
    // Every bit outside the version and variant fields follows the input.
    uint8_t zero[16] = {}, ones[16];
    memset(ones, 0xFF, sizeof ones);
    const LeaseToken a = lease_token_from_random(zero), b = lease_token_from_random(ones);
    int differ = 0;
    for (int i = 0; i < 16; ++i)
        for (int bit = 0; bit < 8; ++bit) differ += ((a.b[i] ^ b.b[i]) >> bit) & 1;
    CHECK_EQUAL(122, differ);
}

TEST(LeaseToken, EqualityAndShortId) {
    const LeaseToken a = token_of(1), b = token_of(2);
    CHECK(lease_token_equal(a, a));
    CHECK_FALSE(lease_token_equal(a, b));
    LeaseToken c = a;
    c.b[15] ^= 1;
    CHECK_FALSE(lease_token_equal(a, c));
    const std::string id = lease_token_id(a);
    CHECK_EQUAL(8u, id.size());
    CHECK(lease_token_urn(a).find(id) == std::string::npos);
    CHECK(id != lease_token_id(b));
    CHECK_EQUAL(id, lease_token_id(a));
}

TEST_GROUP(LeaseParsers){};

TEST(LeaseParsers, IfUntaggedLists) {
    std::vector<IfList> l;
    CHECK(parse_if_header("(<urn:uuid:a>)", l));
    CHECK_EQUAL(1u, l.size());
    CHECK(l[0].tag.empty());
    CHECK_EQUAL("urn:uuid:a", l[0].conditions[0].value);
    CHECK(parse_if_header(" ( <urn:uuid:a> [\"etag\"] ) (Not <DAV:no-lock> [W/\"x\"])", l));
    CHECK_EQUAL(2u, l.size());
    CHECK_EQUAL(2u, l[0].conditions.size());
    CHECK(l[0].conditions[1].etag);
    CHECK(l[1].conditions[0].negated);
    CHECK(l[1].conditions[1].etag);
    const std::vector<std::string> t = if_submitted_tokens(l);
    CHECK_EQUAL(1u, t.size());
    CHECK_EQUAL("urn:uuid:a", t[0]);
}

TEST(LeaseParsers, IfTaggedLists) {
    std::vector<IfList> l;
    CHECK(parse_if_header("<http://h/mn/v2/object/x> (<urn:uuid:a>) (<urn:uuid:b>) </other> (<urn:uuid:a>)", l));
    CHECK_EQUAL(3u, l.size());
    CHECK_EQUAL("http://h/mn/v2/object/x", l[0].tag);
    CHECK_EQUAL("http://h/mn/v2/object/x", l[1].tag);
    CHECK_EQUAL("/other", l[2].tag);
    const std::vector<std::string> t = if_submitted_tokens(l);
    CHECK_EQUAL(2u, t.size());
    CHECK_EQUAL("urn:uuid:b", t[1]);
    CHECK(parse_if_header("(NOT <urn:uuid:a>)", l));
    CHECK(if_submitted_tokens(l).empty());
}

TEST(LeaseParsers, IfMalformed) {
    const char *bad[] = {"", "   ", "()", "(", ")", "(<urn:uuid:a>", "<urn:uuid:a>", "(urn:uuid:a)",
                         "(<>)", "(<a b>)", "(<a>) <tag> (<b>)", "<tag> (<a>) (<b>) <t2>",
                         "<tag> <t2> (<a>)", "(Not)", "(Not urn)", "(Nota <x>)x", "([etag])",
                         "([\"e\")", "(<a>) x", "(<a<b>)", "([\"e\"]", "(<a>)(", "(Not <a>",
                         "<t>"};
    std::vector<IfList> l;
    for (const char *b : bad) CHECK_FALSE_TEXT(parse_if_header(b, l), b);
}

TEST(LeaseParsers, Timeout) {
    int64_t s = 0;
    CHECK(parse_timeout_header("Second-600", &s));
    CHECK_EQUAL(600, s);
    CHECK(parse_timeout_header("Infinite, Second-4100000000", &s));
    CHECK_EQUAL(-1, s);
    CHECK(parse_timeout_header(" second-5 ,infinite ", &s));
    CHECK_EQUAL(5, s);
    CHECK(parse_timeout_header("Second-4294967295", &s));
    CHECK_EQUAL(4294967295LL, s);
    CHECK(parse_timeout_header("Second-0000000000000000000042", &s));
    CHECK_EQUAL(42, s);
    const char *bad[] = {"", " ", "Second-", "Second-4294967296", "Second-99999999999999999999999",
                         "Second--1", "Second-1x", "Seconds-1", "Infinity", "Second-1,", ",Second-1",
                         "Second-1,,Second-2", "Second-1 Second-2", "Second-1, Extend"};
    for (const char *b : bad) CHECK_FALSE_TEXT(parse_timeout_header(b, &s), b);
}

TEST(LeaseParsers, TimeoutBoundedByConfig) {
    CHECK_EQUAL(1800u, lease_timeout_for(-1, 1800, 3600));
    CHECK_EQUAL(600u, lease_timeout_for(600, 1800, 3600));
    CHECK_EQUAL(3600u, lease_timeout_for(4294967295LL, 1800, 3600));
    CHECK_EQUAL(1u, lease_timeout_for(0, 1800, 3600));
}

TEST(LeaseParsers, LockToken) {
    std::string u;
    CHECK(parse_lock_token_header("<urn:uuid:a>", u));
    CHECK_EQUAL("urn:uuid:a", u);
    CHECK(parse_lock_token_header("  <urn:uuid:b>  ", u));
    CHECK_EQUAL("urn:uuid:b", u);
    const char *bad[] = {"", "urn:uuid:a", "<urn:uuid:a", "<>", "<a> <b>", "<a>x", "<a b>"};
    for (const char *b : bad) CHECK_FALSE_TEXT(parse_lock_token_header(b, u), b);
}

TEST(LeaseParsers, Owner) {
    std::string o;
    CHECK(parse_lock_owner("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:lockinfo xmlns:D=\"DAV:\">"
                           "<D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>"
                           "<D:owner>\n  <D:href>mailto:a@example.org</D:href>\n</D:owner></D:lockinfo>",
                           256, o));
    CHECK_EQUAL("mailto:a@example.org", o);
    CHECK(parse_lock_owner("<lockinfo xmlns='DAV:'><owner>Ann &amp; Bo &lt;3 &#65;&#x42; <![CDATA[<x>]]></owner></lockinfo>",
                           256, o));
    CHECK_EQUAL("Ann & Bo <3 AB <x>", o);
    CHECK(parse_lock_owner("<a:lockinfo xmlns:a='DAV:'><a:owner/></a:lockinfo>", 256, o));
    CHECK_EQUAL("", o);
    CHECK(parse_lock_owner("", 256, o));
    CHECK_EQUAL("", o);
    CHECK(parse_lock_owner("<D:owner>\xC3\xA9\xC3\xA9\xC3\xA9</D:owner>", 5, o));
    CHECK_EQUAL("\xC3\xA9\xC3\xA9", o);
    CHECK(parse_lock_owner("<owner>abc def</owner>", 4, o));
    CHECK_EQUAL("abc", o);
    CHECK(parse_lock_owner("<owner>a<!-- c -->b</owner><owner>second</owner>", 256, o));
    CHECK_EQUAL("ab", o);
}

TEST(LeaseParsers, OwnerRefusesEntitiesAndBrokenXml) {
    std::string o;
    const char *bad[] = {"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><owner>&e;</owner>",
                         "<owner>&e;</owner>", "<owner>&#0;</owner>", "<owner>&#xD800;</owner>",
                         "<owner>&#x110000;</owner>", "<owner>x", "<owner", "<owner>&amp</owner>",
                         "<!-- x", "<![CDATA[x", "<?pi", "<>", "<owner><a<b></owner>"};
    for (const char *b : bad) CHECK_FALSE_TEXT(parse_lock_owner(b, 256, o), b);
}

TEST(LeaseParsers, LockInfoScopeAndType) {
    LockInfo i;
    CHECK(parse_lock_info("<D:lockinfo xmlns:D='DAV:'><D:lockscope><D:exclusive/></D:lockscope>"
                          "<D:locktype><D:write/></D:locktype><D:owner>ann</D:owner></D:lockinfo>",
                          kLeaseOwnerCap, i));
    CHECK(!i.shared && !i.unknown_scope && !i.not_write);
    STRCMP_EQUAL("ann", i.owner.c_str());
    CHECK(parse_lock_info("<lockinfo xmlns='DAV:'><lockscope><shared/></lockscope><locktype><write/></locktype>"
                          "</lockinfo>", kLeaseOwnerCap, i));
    CHECK(i.shared && !i.not_write);
    CHECK(parse_lock_info("<a:lockinfo xmlns:a='DAV:'><a:lockscope><a:other/></a:lockscope>"
                          "<a:locktype><a:read/></a:locktype></a:lockinfo>", kLeaseOwnerCap, i));
    CHECK(!i.shared && i.unknown_scope && i.not_write);
    // A <shared/> in the owner is the owner's text, not the scope.
    CHECK(parse_lock_info("<D:lockinfo xmlns:D='DAV:'><D:owner><D:shared/>x</D:owner></D:lockinfo>",
                          kLeaseOwnerCap, i));
    CHECK(!i.shared && !i.unknown_scope);
    CHECK(parse_lock_info("", kLeaseOwnerCap, i));
    CHECK(!i.shared && i.owner.empty());
    CHECK(!parse_lock_info("<!DOCTYPE x><lockinfo/>", kLeaseOwnerCap, i));
}

TEST(LeaseParsers, LockDepth) {
    bool inf = false;
    CHECK(parse_lock_depth(nullptr, &inf) && inf);
    CHECK(parse_lock_depth("0", &inf) && !inf);
    CHECK(parse_lock_depth(" Infinity ", &inf) && inf);
    CHECK(parse_lock_depth("infinity", &inf) && inf);
    CHECK(!parse_lock_depth("1", &inf));
    CHECK(!parse_lock_depth("", &inf));
    CHECK(!parse_lock_depth("00", &inf));
    CHECK(!parse_lock_depth("infinit", &inf));
}

TEST(LeaseParsers, IfEntityTags) {
    const std::string tok = "urn:uuid:11111111-2222-4333-8444-555555555555";
    const std::vector<std::string> held = {tok};
    auto verdict = [&](const std::string &h, const std::vector<std::string> &hd, std::vector<std::string> *tags) {
        std::vector<IfList> lists;
        CHECK(parse_if_header(h, lists));
        const IfEtags e = if_entity_tags(lists, hd);
        if (tags) *tags = e.etags;
        return e.verdict;
    };
    std::vector<std::string> tags;
    CHECK(verdict("(<" + tok + ">)", held, nullptr) == IfVerdict::True);
    CHECK(verdict("(<" + tok + ">)", {}, nullptr) == IfVerdict::False);
    CHECK(verdict("(<DAV:no-lock>)", held, nullptr) == IfVerdict::False);
    CHECK(verdict("(<" + tok + "> <DAV:no-lock>)", held, nullptr) == IfVerdict::False);
    CHECK(verdict("(<" + tok + ">) (Not <DAV:no-lock>)", held, nullptr) == IfVerdict::True);
    CHECK(verdict("(Not <" + tok + ">)", held, nullptr) == IfVerdict::False);
    // litmus cond_put / fail_complex_cond_put: the entity tags go to If-Match.
    CHECK(verdict("(<" + tok + "> [W/\"a\"])", held, &tags) == IfVerdict::IfMatch);
    CHECK(tags == std::vector<std::string>{"W/\"a\""});
    CHECK(verdict("(<" + tok + "> [\"b\"]) (Not <DAV:no-lock> [\"b\"])", held, &tags) == IfVerdict::IfMatch);
    CHECK(tags == std::vector<std::string>{"\"b\""});
    CHECK(verdict("([\"a\"]) ([\"b\"])", {}, &tags) == IfVerdict::IfMatch);
    CHECK((tags == std::vector<std::string>{"\"a\"", "\"b\""}));
    // A list with a token that cannot hold contributes nothing.
    CHECK(verdict("(<DAV:no-lock> [\"a\"]) ([\"b\"])", {}, &tags) == IfVerdict::IfMatch);
    CHECK(tags == std::vector<std::string>{"\"b\""});
    // Two different entity tags in one list never hold; a list without any
    // holds outright.
    CHECK(verdict("([\"a\"] [\"b\"])", {}, nullptr) == IfVerdict::False);
    CHECK(verdict("([\"a\"]) (Not <DAV:no-lock>)", {}, nullptr) == IfVerdict::True);
    CHECK(verdict("(Not [\"a\"])", {}, nullptr) == IfVerdict::Unsupported);
    // Whatever the order of the lists.
    CHECK(verdict("(Not [\"a\"]) (<" + tok + ">)", held, nullptr) == IfVerdict::True);
    CHECK(verdict("(<" + tok + ">) (Not [\"a\"])", held, nullptr) == IfVerdict::True);
    CHECK(verdict("(<DAV:no-lock> Not [\"a\"])", held, nullptr) == IfVerdict::False);
}

// ------------------------------------------------------------------ table

// The host's shared table: the LeaseStore contract (lease_contract.h), and
// what only a region in shared memory has (attach checks, scribbling, fields
// cut to their slots).
TEST_GROUP_BASE(LeaseTable, lease_contract::LeaseStoreTest) {
    LeaseTableInShm shm;
    void *mem = shm.mem;
    PthreadStripeLocks *locks = shm.mutex.locks;
    LeaseTable *t = shm.table;
    LeaseParams p = shm.p;
    size_t size = shm.size;

    void setup() override {
        CHECK(shm.ok);
        CHECK_EQUAL(lease_contract::kCapacity, p.capacity);
        CHECK_EQUAL(lease_contract::kKeyCap, p.key_cap);
    }
    LeaseStore &store() override { return *t; }
    std::unique_ptr<LeaseStore> another() override { return std::unique_ptr<LeaseStore>(new LeaseTable(mem, locks)); }
    std::string key(const std::string &name) const override { return name; }
    bool used_follows_the_clock() const override { return true; }
};

LEASE_CONTRACT_TESTS(LeaseTable)

// Another process may scribble the region after this one attached: the
// header's capacity and slot size are never read again, and lengths read
// from a slot are cut to their fields (ASan would catch a read past the
// region or a field).
TEST(LeaseTable, ScribbledRegionIsNeverReadPastItsEnd) {
    CHECK(LeaseOutcome::Granted == t->lock("k", {}, req("ann", "u"), token_of(1), kT0, nullptr));
    auto *words = static_cast<uint32_t *>(mem);
    words[3] = 0x7fffffff;  // capacity
    words[5] = 0x7fffffff;  // slot size
    auto *slot0 = reinterpret_cast<unsigned char *>(mem) + 128;
    std::memset(slot0 + 4, 0xff, 4);  // key length
    LeaseView v;
    std::vector<LeaseView> all;
    LeaseCounters c;
    CHECK(t->snapshot(kT0, all, c));
    CHECK_EQUAL(1u, all.size());
    CHECK(all[0].key.size() <= p.key_cap);
    // Every 16-bit length field too (owner, user, client).
    std::memset(slot0 + 8 + 16 + 24 + 4, 0xff, 6);
    all.clear();
    CHECK(t->snapshot(kT0, all, c));
    CHECK(all[0].owner.size() <= 256 && all[0].user.size() <= 64 && all[0].client.size() <= 48);
    CHECK(LeaseOutcome::Locked == t->check_write("other", {}, false, "u", kT0, &v) ||
          LeaseOutcome::Free == t->check_write("other", {}, false, "u", kT0, &v));
}

TEST(LeaseTable, AttachInsistsOnTheExpectedParameters) {
    LeaseTable same(mem, size, p, locks);
    CHECK(same.valid());
    LeaseParams other = p;
    other.capacity = p.capacity * 2;
    LeaseTable bigger(mem, size, other, locks);
    CHECK_FALSE(bigger.valid());
    LeaseTable short_region(mem, size - 1, p, locks);
    CHECK_FALSE(short_region.valid());
}

TEST(LeaseTable, RegionChecks) {
    LeaseParams bad;
    CHECK_EQUAL(0u, LeaseTable::region_size(bad));
    char junk[512] = {};
    LeaseTable none(junk, locks);
    CHECK_FALSE(none.valid());
    CHECK_FALSE(LeaseTable::format(mem, 16, p));
}

TEST(LeaseTable, OwnerAndFieldsCut) {
    LeaseRequest r = req("");
    r.owner = std::string(1000, 'o');
    r.user = std::string(1000, 'u');
    r.client = std::string(1000, 'c');
    LeaseView v;
    CHECK(LeaseOutcome::Granted == t->lock("k", {}, r, token_of(1), kT0, &v));
    CHECK_EQUAL(kLeaseOwnerCap, v.owner.size());
    CHECK_EQUAL(kUserCap, v.user.size());
    CHECK_EQUAL(kClientCap, v.client.size());
}

TEST_GROUP(LeaseRender){};

TEST(LeaseRender, LockDiscoveryAndReportsNeverShowTheToken) {
    LeaseView v;
    v.key = "doi:10/x";
    v.owner = "<Ann>";
    v.user = "ann";
    v.client = "192.0.2.1";
    v.timeout_s = 600;
    v.granted_us = v.idle_since_us = kT0;
    v.expires_us = kT0 + 600 * kSec;
    v.id = "0123abcd";
    const std::string urn = lease_token_urn(token_of(1));
    const std::string x = render_lock_xml(v, urn, "/mn/v2/object/doi:10%2Fx");
    CHECK(x.find("<D:prop xmlns:D=\"DAV:\"><D:lockdiscovery><D:activelock>") != std::string::npos);
    CHECK(x.find("<D:timeout>Second-600</D:timeout>") != std::string::npos);
    CHECK(x.find("<D:locktoken><D:href>" + urn + "</D:href></D:locktoken>") != std::string::npos);
    CHECK(x.find("<D:owner>&lt;Ann&gt;</D:owner>") != std::string::npos);
    CHECK(render_lock_json(v, urn).find("\"token\": \"" + urn + "\"") != std::string::npos);
    for (bool stale : {false, true}) {
        for (const std::string &r : {render_lease_refusal_text(v, kT0, stale), render_lease_refusal_json(v, kT0, stale)}) {
            CHECK(r.find("doi:10/x") != std::string::npos);
            CHECK(r.find("Ann") != std::string::npos);
            CHECK(r.find("192.0.2.1") == std::string::npos);
            CHECK(r.find("urn:uuid") == std::string::npos);
        }
    }
    const std::string j = render_leases_json({v});
    CHECK(j.find("\"id\": \"0123abcd\"") != std::string::npos);
    CHECK(j.find("\"idle_since\": \"2027-") != std::string::npos);
    const std::string h = render_leases_html({v}, kT0, true, "n0nce", "/admin");
    CHECK(h.find("&lt;Ann&gt;") != std::string::npos);
    CHECK(h.find("name=\"action\" value=\"steal\"") != std::string::npos);
    CHECK(h.find("name=\"action\" value=\"release\"") != std::string::npos);
    CHECK(render_leases_html({v}, kT0, false, "", "").find("<form") == std::string::npos);
    LeaseCounters c;
    c.stolen = 2;
    const std::string m = render_leases_metrics({v}, c);
    CHECK(m.find("pidlock_leases 1\n") != std::string::npos);
    CHECK(m.find("pidlock_lease_events_total{event=\"stolen\"} 2\n") != std::string::npos);
}
