#include <string>

#include "pidlock_key.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

TEST_GROUP(Key) {
    std::string out;
};

TEST(Key, PathDecodesOnlyEncodedSlashes) {
    CHECK(key_from_path_capture("doi:10.5063%2FF1", 16, 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("doi:10.5063/F1", out.c_str());
    CHECK(key_from_path_capture("doi:10.5063%2fF1", 16, 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("doi:10.5063/F1", out.c_str());
    // httpd already decoded everything else: a literal % stays.
    CHECK(key_from_path_capture("100%", 4, 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("100%", out.c_str());
    CHECK(key_from_path_capture("a%41b", 5, 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("a%41b", out.c_str());
    CHECK(key_from_path_capture("x%2", 3, 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("x%2", out.c_str());
}

TEST(Key, PathEmptyAndTooLong) {
    CHECK(key_from_path_capture("", 0, 1024, out) == KeyStatus::Empty);
    CHECK(key_from_path_capture("abcdef", 6, 5, out) == KeyStatus::TooLong);
    // The limit applies to the decoded key: 7 raw bytes, 5 decoded.
    CHECK(key_from_path_capture("ab%2Fcd", 7, 5, out) == KeyStatus::Ok);
    STRCMP_EQUAL("ab/cd", out.c_str());
    CHECK(key_status_http(KeyStatus::TooLong, KeySource::Path) == 414);
    CHECK(key_status_http(KeyStatus::TooLong, KeySource::Query) == 414);
    CHECK(key_status_http(KeyStatus::TooLong, KeySource::Header) == 400);
    CHECK(key_status_http(KeyStatus::Empty, KeySource::Path) == 400);
}

// Applications differ in which copy of a repeated argument they use (Django
// and PHP take the last): no copy may be locked while another is acted on.
TEST(Key, QueryRepeatedIsRefused) {
    CHECK(key_from_query("pid=decoy&pid=victim", "pid", 1024, out) == KeyStatus::Repeated);
    CHECK(out.empty());
    CHECK(key_from_query("pid=a&x=1&p%69d=a", "pid", 1024, out) == KeyStatus::Repeated);
    CHECK(key_from_query("pid&pid=a", "pid", 1024, out) == KeyStatus::Repeated);
    CHECK(key_from_query("pid=a&pidx=b&xpid=c", "pid", 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("a", out.c_str());
    CHECK(key_from_header("decoy, victim", 1024, out) == KeyStatus::Repeated);
    CHECK(key_from_header("a%2Cb", 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("a,b", out.c_str());
    CHECK(key_status_http(KeyStatus::Repeated, KeySource::Query) == 400);
    CHECK(key_status_http(KeyStatus::Repeated, KeySource::Header) == 400);
    CHECK(key_status_http(KeyStatus::TooLong, KeySource::Form) == 400);
}

TEST(Key, QueryDecodesOnceWithPlus) {
    CHECK(key_from_query("pid=doi%3A10.5063%2FF1", "pid", 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("doi:10.5063/F1", out.c_str());
    CHECK(key_from_query("a=1&pid=a+b&x=zzz", "pid", 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("a b", out.c_str());
    // Decoded once only: %2541 is "%41", not "A".
    CHECK(key_from_query("pid=%2541", "pid", 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("%41", out.c_str());
    CHECK(key_from_query("p%69d=x", "pid", 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("x", out.c_str());
    CHECK(key_from_query("pidx=1&xpid=2", "pid", 1024, out) == KeyStatus::Absent);
    CHECK(key_from_query(nullptr, "pid", 1024, out) == KeyStatus::Absent);
    CHECK(key_from_query("", "pid", 1024, out) == KeyStatus::Absent);
}

TEST(Key, QueryRefusals) {
    CHECK(key_from_query("pid=", "pid", 1024, out) == KeyStatus::Empty);
    CHECK(key_from_query("pid", "pid", 1024, out) == KeyStatus::Empty);
    CHECK(key_from_query("x=1&pid&y=2", "pid", 1024, out) == KeyStatus::Empty);
    CHECK(key_from_query("pid=%4", "pid", 1024, out) == KeyStatus::Malformed);
    CHECK(key_from_query("pid=%", "pid", 1024, out) == KeyStatus::Malformed);
    CHECK(key_from_query("pid=%zz", "pid", 1024, out) == KeyStatus::Malformed);
    CHECK(key_from_query("pid=a%4&x=1", "pid", 1024, out) == KeyStatus::Malformed);
    CHECK(key_from_query("pid=a%00b", "pid", 1024, out) == KeyStatus::Nul);
    CHECK(key_from_query("pid=abcdef", "pid", 5, out) == KeyStatus::TooLong);
    CHECK(key_from_query("pid=%41%42%43%44%45", "pid", 5, out) == KeyStatus::Ok);
    STRCMP_EQUAL("ABCDE", out.c_str());
}

TEST(Key, HeaderDecodesOnceWithoutPlus) {
    CHECK(key_from_header("doi:10.5063%2FF1", 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("doi:10.5063/F1", out.c_str());
    CHECK(key_from_header("a+b", 1024, out) == KeyStatus::Ok);
    STRCMP_EQUAL("a+b", out.c_str());
    CHECK(key_from_header(nullptr, 1024, out) == KeyStatus::Absent);
    CHECK(key_from_header("", 1024, out) == KeyStatus::Empty);
    CHECK(key_from_header("%zz", 1024, out) == KeyStatus::Malformed);
    CHECK(key_from_header("%00", 1024, out) == KeyStatus::Nul);
}

TEST(Key, SpellingsOfOnePidAgree) {
    std::string a, b, c;
    CHECK(key_from_query("pid=doi%3A10.5063%2FF1", "pid", 1024, a) == KeyStatus::Ok);
    CHECK(key_from_header("doi:10.5063%2fF1", 1024, b) == KeyStatus::Ok);
    CHECK(key_from_path_capture("doi:10.5063%2FF1", 16, 1024, c) == KeyStatus::Ok);
    STRCMP_EQUAL(a.c_str(), b.c_str());
    STRCMP_EQUAL(a.c_str(), c.c_str());
}

TEST(Key, KeysAreBytes) {
    CHECK(key_from_query("pid=%C3%A9%FF", "pid", 1024, out) == KeyStatus::Ok);
    CHECK(out == std::string("\xC3\xA9\xFF"));
}

TEST(Key, RegexLiteralPrefix) {
    STRCMP_EQUAL("/mn/v2/", regex_literal_prefix("^/mn/v2/(?:object|meta)/(.+)$").c_str());
    STRCMP_EQUAL("/files/", regex_literal_prefix("^/files/(.*)").c_str());
    STRCMP_EQUAL("", regex_literal_prefix("/mn/(.+)").c_str());      // not anchored
    STRCMP_EQUAL("/a", regex_literal_prefix("^/ab?(.+)").c_str());   // b optional
    STRCMP_EQUAL("/a", regex_literal_prefix("^/ab*(.+)").c_str());
    STRCMP_EQUAL("/a.b/", regex_literal_prefix("^/a\\.b/(.+)").c_str());
    STRCMP_EQUAL("/x", regex_literal_prefix("^/x\\d(.+)").c_str());
    STRCMP_EQUAL("", regex_literal_prefix("^/a/(.+)|^/b/(.+)").c_str());  // alternation
    STRCMP_EQUAL("/a/", regex_literal_prefix("^/a/(x|y)/(.+)").c_str());
    // A '(' inside a class opens no group: the '|' is still top-level.
    STRCMP_EQUAL("", regex_literal_prefix("^/[(]|(.+)").c_str());
}

#include <random>

#include <regex.h>

// The fast path must agree with a real regex engine on every path.
TEST(Key, SimpleCaptureAgreesWithRegex) {
    const char *patterns[] = {"^/on/(.+)$", "^/on/(.*)$", "^/a\\.b/(.+)", "^/mn/v2/object/(.*)"};
    const char *alphabet[] = {"/", "on", "a", ".", "b", "\n", "%", "x", "mn", "v2", "object", ""};
    std::mt19937 rng(7);
    for (const char *pat : patterns) {
        const SimpleCapture sc = regex_simple_capture(pat);
        CHECK_TRUE(sc.ok);
        regex_t re;
        CHECK_EQUAL(0, regcomp(&re, pat, REG_EXTENDED | REG_NEWLINE));
        for (int i = 0; i < 3000; ++i) {
            std::string path = i % 3 == 0 ? sc.prefix : "";
            const int parts = static_cast<int>(rng() % 6);
            for (int k = 0; k < parts; ++k) path += alphabet[rng() % (sizeof alphabet / sizeof *alphabet)];
            const char *cap = nullptr;
            size_t len = 0;
            const FastMatch fm = simple_capture_match(sc, path.c_str(), &cap, &len);
            if (fm == FastMatch::UseRegex) {
                CHECK(path.find('\n') != std::string::npos);
                continue;
            }
            regmatch_t m[2];
            const bool rx = regexec(&re, path.c_str(), 2, m, 0) == 0;
            if (rx != (fm == FastMatch::Match)) FAIL(("disagree on " + path + " with " + pat).c_str());
            if (rx) {
                CHECK_EQUAL(static_cast<size_t>(m[1].rm_eo - m[1].rm_so), len);
                CHECK(cap == path.c_str() + m[1].rm_so);
            }
        }
        regfree(&re);
    }
    CHECK_FALSE(regex_simple_capture("^/mn/v2/(?:object|meta)/(.+)$").ok);
    CHECK_FALSE(regex_simple_capture("^/x/(.+)/y$").ok);
    CHECK_FALSE(regex_simple_capture("/x/(.+)$").ok);
    CHECK_FALSE(regex_simple_capture("^/x?/(.+)$").ok);
}

// The views take no copy where nothing is decoded (the key_from_* functions,
// tested above, are the views plus a copy).
TEST(Key, ViewsPointIntoTheRequest) {
    std::string scratch;
    KeyView v;
    const char *cap = "doi:10.5063/F1";
    CHECK(key_view_path_capture(cap, 14, 1024, scratch, v) == KeyStatus::Ok);
    CHECK(v.data == cap && v.len == 14);
    CHECK(key_view_path_capture("a%2Fb", 5, 1024, scratch, v) == KeyStatus::Ok);
    CHECK(v.data == scratch.data() && std::string(v.data, v.len) == "a/b");
    const char *args = "x=1&pid=abc&y=2";
    CHECK(key_view_query(args, "pid", 1024, scratch, v) == KeyStatus::Ok);
    CHECK(v.data == args + 8 && v.len == 3);
    CHECK(key_view_query("pid=a+b", "pid", 1024, scratch, v) == KeyStatus::Ok);
    CHECK(std::string(v.data, v.len) == "a b");
    const char *hv = "a+b";  // no plus decoding in headers
    CHECK(key_view_header(hv, 1024, scratch, v) == KeyStatus::Ok);
    CHECK(v.data == hv && v.len == 3);
    CHECK(key_view_path_capture("abcdef", 6, 5, scratch, v) == KeyStatus::TooLong);
    CHECK(v.data == nullptr && v.len == 0);
}

// simple_capture_key is simple_capture_match and key_view_path_capture in
// one pass: it must give what the two give, on every path.
TEST(Key, SimpleCaptureKeyAgreesWithMatchThenView) {
    const char *alphabet[] = {"/", "on", "a", "%", "2F", "2f", "\n", "x", "%2F", ""};
    std::mt19937 rng(5);
    std::string scratch, scratch2;
    for (const char *pat : {"^/on/(.+)$", "^/on/(.*)$"}) {
        const SimpleCapture sc = regex_simple_capture(pat);
        CHECK_TRUE(sc.ok);
        for (int i = 0; i < 5000; ++i) {
            std::string path = i % 3 ? sc.prefix : "";
            const int parts = static_cast<int>(rng() % 6);
            for (int k = 0; k < parts; ++k) path += alphabet[rng() % (sizeof alphabet / sizeof *alphabet)];
            const size_t max_len = 1 + rng() % 8;
            KeyView got, want;
            bool use_regex = false;
            const KeyStatus st = simple_capture_key(sc.prefix.data(), sc.prefix.size(), sc.allow_empty, path.c_str(),
                                                    max_len, scratch, got, &use_regex);
            const char *cap = nullptr;
            size_t len = 0;
            const FastMatch fm = simple_capture_match(sc, path.c_str(), &cap, &len);
            CHECK_EQUAL(fm == FastMatch::UseRegex, use_regex);
            if (fm != FastMatch::Match) {
                CHECK(st == KeyStatus::Absent);
                continue;
            }
            const KeyStatus st2 = key_view_path_capture(cap, len, max_len, scratch2, want);
            if (st != st2) FAIL(("status differs on " + path).c_str());
            if (st == KeyStatus::Ok) CHECK(std::string(got.data, got.len) == std::string(want.data, want.len));
        }
    }
}
