// libFuzzer target: every function that turns request bytes into a key or
// into output, fed arbitrary bytes. Asserts the contracts, not just "no
// crash": decoded keys hold no NUL and respect the limit; JSON strings are
// valid UTF-8 with no raw control bytes; HTML escaping leaves no markup.
#include <cassert>
#include <cstdint>
#include <cstring>
#include <string>

#include "pidlock_key.h"
#include "pidlock_render.h"

using namespace pidlock;

namespace {

bool valid_utf8(const std::string &s) {
    size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        i += n;
    }
    return true;
}

void check_key(KeyStatus st, const std::string &out, size_t max) {
    if (st == KeyStatus::Ok) {
        assert(!out.empty());
        assert(out.size() <= max);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const size_t max = 1 + data[0] % 64;
    const std::string in(reinterpret_cast<const char *>(data + 1), size - 1);
    const std::string cstr(in.c_str());  // up to the first NUL, as httpd hands strings over
    std::string out;

    KeyStatus st = key_decode_component(in.data(), in.size(), true, max, out);
    check_key(st, out, max);
    if (st == KeyStatus::Ok) assert(out.find('\0') == std::string::npos);
    st = key_from_query(cstr.c_str(), "pid", max, out);
    check_key(st, out, max);
    if (st == KeyStatus::Ok) assert(out.find('\0') == std::string::npos);
    st = key_from_header(cstr.c_str(), max, out);
    check_key(st, out, max);
    st = key_from_path_capture(in.data(), in.size(), max, out);
    check_key(st, out, max);
    assert(key_status_http(st, KeySource::Path) == 0 || key_status_http(st, KeySource::Path) >= 400);

    const std::string prefix = regex_literal_prefix(cstr.c_str());
    const SimpleCapture sc = regex_simple_capture(cstr.c_str());
    if (sc.ok) {
        const char *cap = nullptr;
        size_t cap_len = 0;
        if (simple_capture_match(sc, cstr.c_str(), &cap, &cap_len) == FastMatch::Match)
            assert(cap >= cstr.c_str() && cap + cap_len <= cstr.c_str() + cstr.size());
    }

    std::string json;
    json_string(json, in);
    assert(valid_utf8(json));
    for (unsigned char c : json) assert(c >= 0x20 && c != 0x7F);
    std::string html;
    html_escape(html, in);
    assert(html.find('<') == std::string::npos && html.find('>') == std::string::npos &&
           html.find('"') == std::string::npos);
    return 0;
}
