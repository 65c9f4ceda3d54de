#include "pidlock_key.h"

#include "pidlock_bytes.h"

#include <cstring>

namespace pidlock {

namespace {

int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

int key_status_http(KeyStatus st, KeySource src) {
    switch (st) {
    case KeyStatus::Ok:
    case KeyStatus::Absent:
        return 0;
    case KeyStatus::TooLong:
        return src == KeySource::Header || src == KeySource::Form ? 400 : 414;
    case KeyStatus::Repeated:
    case KeyStatus::Empty:
    case KeyStatus::Malformed:
    case KeyStatus::Nul:
        return 400;
    }
    return 400;
}

const char *key_status_text(KeyStatus st) {
    switch (st) {
    case KeyStatus::Ok: return "ok";
    case KeyStatus::Absent: return "absent";
    case KeyStatus::Empty: return "empty key";
    case KeyStatus::Malformed: return "malformed percent escape in key";
    case KeyStatus::Nul: return "NUL byte in key";
    case KeyStatus::TooLong: return "key longer than PidLockMaxKeyLength";
    case KeyStatus::Repeated: return "key source given more than once";
    }
    return "?";
}

const char *key_source_name(KeySource s) {
    switch (s) {
    case KeySource::Path: return "path";
    case KeySource::Query: return "query";
    case KeySource::Header: return "header";
    case KeySource::Form: return "form";
    }
    return "?";
}

namespace {

// The string form of a view: the bytes copied into `out` (moved, where they
// were decoded into the scratch string).
KeyStatus to_string(KeyStatus st, const KeyView &v, std::string &scratch, std::string &out) {
    if (st != KeyStatus::Ok) {
        out.clear();
        return st;
    }
    if (v.data == scratch.data()) out.swap(scratch);
    else out.assign(v.data, v.len);
    return st;
}

}  // namespace

KeyStatus key_view_path_capture(const char *cap, size_t len, size_t max_len,
                                std::string &scratch, KeyView &out) {
    out = KeyView{};
    if (len == 0) return KeyStatus::Empty;
    // r->uri holds no NUL (httpd refuses %00 in paths), but the capture is
    // given by length: check rather than trust.
    if (std::memchr(cap, '\0', len)) return KeyStatus::Nul;
    const char *pct = static_cast<const char *>(std::memchr(cap, '%', len));
    if (!pct) {
        // Nothing to decode (the common case): the capture itself.
        if (len > max_len) return KeyStatus::TooLong;
        out = KeyView{cap, len};
        return KeyStatus::Ok;
    }
    // Copy runs between '%' signs whole; only %2F/%2f changes anything.
    scratch.clear();
    const char *p = cap, *end = cap + len;
    while (p < end) {
        pct = static_cast<const char *>(std::memchr(p, '%', static_cast<size_t>(end - p)));
        const char *run_end = pct ? pct : end;
        scratch.append(p, static_cast<size_t>(run_end - p));
        if (!pct) break;
        if (end - pct >= 3 && pct[1] == '2' && (pct[2] == 'F' || pct[2] == 'f')) {
            scratch.push_back('/');
            p = pct + 3;
        } else {
            scratch.push_back('%');
            p = pct + 1;
        }
        if (scratch.size() > max_len) return KeyStatus::TooLong;
    }
    if (scratch.size() > max_len) return KeyStatus::TooLong;
    out = KeyView{scratch.data(), scratch.size()};
    return KeyStatus::Ok;
}

KeyStatus key_from_path_capture(const char *cap, size_t len, size_t max_len,
                                std::string &out) {
    std::string scratch;
    KeyView v;
    return to_string(key_view_path_capture(cap, len, max_len, scratch, v), v, scratch, out);
}

KeyStatus key_decode_component(const char *s, size_t len, bool plus_is_space,
                               size_t max_len, std::string &out) {
    out.clear();
    if (len == 0) return KeyStatus::Empty;
    out.reserve(len < max_len ? len : max_len);
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '%') {
            if (i + 2 >= len) return KeyStatus::Malformed;
            int hi = hexval(static_cast<unsigned char>(s[i + 1]));
            int lo = hexval(static_cast<unsigned char>(s[i + 2]));
            if (hi < 0 || lo < 0) return KeyStatus::Malformed;
            c = static_cast<unsigned char>(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (c == '\0') return KeyStatus::Nul;
        if (out.size() >= max_len) return KeyStatus::TooLong;
        out.push_back(static_cast<char>(c));
    }
    return KeyStatus::Ok;
}

KeyStatus key_view_component(const char *s, size_t len, bool plus_is_space,
                             size_t max_len, std::string &scratch, KeyView &out) {
    out = KeyView{};
    if (len == 0) return KeyStatus::Empty;
    if (!std::memchr(s, '%', len) && !(plus_is_space && std::memchr(s, '+', len))) {
        // Nothing to decode: the bytes as they are.
        if (std::memchr(s, '\0', len)) return KeyStatus::Nul;
        if (len > max_len) return KeyStatus::TooLong;
        out = KeyView{s, len};
        return KeyStatus::Ok;
    }
    const KeyStatus st = key_decode_component(s, len, plus_is_space, max_len, scratch);
    if (st == KeyStatus::Ok) out = KeyView{scratch.data(), scratch.size()};
    return st;
}

KeyStatus key_view_query(const char *args, const char *name, size_t max_len,
                         std::string &scratch, KeyView &out) {
    out = KeyView{};
    if (!args || !*args) return KeyStatus::Absent;
    const size_t name_len = std::strlen(name);
    std::string decoded_name;
    bool found = false;
    const char *value = nullptr;  // after the '=' of the match; null: none
    size_t value_len = 0;
    const char *p = args;
    while (true) {
        const char *end = std::strchr(p, '&');
        const size_t seg_len = end ? static_cast<size_t>(end - p) : std::strlen(p);
        const char *eq = static_cast<const char *>(std::memchr(p, '=', seg_len));
        const size_t raw_name_len = eq ? static_cast<size_t>(eq - p) : seg_len;
        bool match = false;
        if (raw_name_len == name_len && std::memcmp(p, name, name_len) == 0) {
            match = true;
        } else if (raw_name_len > 0 &&
                   std::memchr(p, '%', raw_name_len) != nullptr) {
            // A name spelled with escapes (`p%69d`) is the same argument.
            if (key_decode_component(p, raw_name_len, true, name_len + 1,
                                     decoded_name) == KeyStatus::Ok &&
                decoded_name == name)
                match = true;
        }
        if (match) {
            // Applications differ in which copy of a repeated argument they
            // act on: one lock could cover the wrong one, so none is taken.
            if (found) return KeyStatus::Repeated;
            found = true;
            value = eq ? eq + 1 : nullptr;
            value_len = eq ? seg_len - raw_name_len - 1 : 0;
        }
        if (!end) break;
        p = end + 1;
    }
    if (!found) return KeyStatus::Absent;
    if (!value) return KeyStatus::Empty;  // `?pid` without `=`
    return key_view_component(value, value_len, true, max_len, scratch, out);
}

KeyStatus key_from_query(const char *args, const char *name, size_t max_len,
                         std::string &out) {
    std::string scratch;
    KeyView v;
    return to_string(key_view_query(args, name, max_len, scratch, v), v, scratch, out);
}

KeyStatus key_view_header(const char *value, size_t max_len, std::string &scratch, KeyView &out) {
    out = KeyView{};
    if (!value) return KeyStatus::Absent;
    // httpd (HTTP/1.1 and HTTP/2 alike) merges a repeated header into one
    // value joined by ", " before any module sees it: a raw comma is how a
    // repeated key header shows. A PID with a comma sends it as %2C.
    if (std::strchr(value, ',')) return KeyStatus::Repeated;
    return key_view_component(value, std::strlen(value), false, max_len, scratch, out);
}

KeyStatus key_from_header(const char *value, size_t max_len, std::string &out) {
    std::string scratch;
    KeyView v;
    return to_string(key_view_header(value, max_len, scratch, v), v, scratch, out);
}

namespace {

// Reads the literal run of an anchored pattern from regex+1. Returns the
// position where it stopped; `prefix` holds the literal bytes, with one
// dropped if a quantifier at the stop point makes it optional.
const char *scan_literal(const char *regex, std::string &prefix) {
    const char *p = regex + 1;
    for (; *p; ++p) {
        const char c = *p;
        if (std::strchr(".[]()*+?{}|$^", c)) {
            if ((c == '*' || c == '?' || c == '{') && !prefix.empty()) prefix.pop_back();
            return p;
        }
        if (c == '\\') {
            const char n = p[1];
            // Only escaped punctuation is a literal; \d, \w, \Q... are not.
            if (n && std::strchr("/.-_:~%#@!&=,;'\"<> ", n)) {
                prefix.push_back(n);
                ++p;
                continue;
            }
            return p;
        }
        prefix.push_back(c);
    }
    return p;
}

bool has_top_level_alternation(const char *regex) {
    int depth = 0;
    bool in_class = false;
    for (const char *p = regex; *p; ++p) {
        if (*p == '\\' && p[1]) { ++p; continue; }
        if (in_class) { if (*p == ']') in_class = false; continue; }
        if (*p == '[') { in_class = true; if (p[1] == ']') ++p; }
        else if (*p == '(') ++depth;
        else if (*p == ')') --depth;
        else if (*p == '|' && depth == 0) return true;
    }
    return false;
}

}  // namespace

std::string regex_literal_prefix(const char *regex) {
    std::string prefix;
    if (!regex || regex[0] != '^' || has_top_level_alternation(regex)) return prefix;
    scan_literal(regex, prefix);
    return prefix;
}

SimpleCapture regex_simple_capture(const char *regex) {
    SimpleCapture sc;
    if (!regex || regex[0] != '^') return sc;
    std::string prefix;
    const char *p = scan_literal(regex, prefix);
    std::string rest(p);
    if (rest == "(.+)$" || rest == "(.+)") sc.allow_empty = false;
    else if (rest == "(.*)$" || rest == "(.*)") sc.allow_empty = true;
    else return sc;
    sc.ok = true;
    sc.prefix = prefix;
    return sc;
}

FastMatch simple_capture_match(const char *prefix, size_t prefix_len, bool allow_empty,
                               const char *path, const char **cap, size_t *cap_len) {
    if (std::strncmp(path, prefix, prefix_len) != 0) return FastMatch::NoMatch;
    const char *rest = path + prefix_len;
    const size_t n = std::strcspn(rest, "\n");
    if (rest[n] == '\n') return FastMatch::UseRegex;
    if (n == 0 && !allow_empty) return FastMatch::NoMatch;
    *cap = rest;
    *cap_len = n;
    return FastMatch::Match;
}

namespace {

// strcspn(s, "\n%"), without a library call (the request path's keys are
// short): eight bytes at a time while the load stays on the page.
PIDLOCK_NO_ASAN size_t plain_run(const char *s) {
    size_t n = 0;
#if defined(__SSE2__) && PIDLOCK_WORDWISE
    // Sixteen at a time first (SSE2).
    while (within_page(s + n, 16)) {
        const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i *>(s + n));
        const __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(w, _mm_setzero_si128()),
                                         _mm_or_si128(_mm_cmpeq_epi8(w, _mm_set1_epi8('\n')),
                                                      _mm_cmpeq_epi8(w, _mm_set1_epi8('%'))));
        if (const unsigned z = static_cast<unsigned>(_mm_movemask_epi8(hit)))
            return n + static_cast<size_t>(__builtin_ctz(z));
        n += 16;
    }
#endif
#if PIDLOCK_WORDWISE
    while (within_page(s + n)) {
        uint64_t w;
        std::memcpy(&w, s + n, 8);
        if (const uint64_t z = zero_bytes(w) | bytes_equal(w, '\n') | bytes_equal(w, '%'))
            return n + (static_cast<size_t>(__builtin_ctzll(z)) >> 3);
        n += 8;
    }
#endif
    while (s[n] && s[n] != '\n' && s[n] != '%') ++n;
    return n;
}

// strncmp(path, prefix, prefix_len) == 0: the prefix has no NUL, so a
// path that ends first differs there. A prefix of up to 16 bytes in one
// compare where both loads stay on their pages (SSE2; they may read past
// either string's end, as plain_run's).
PIDLOCK_NO_ASAN inline bool has_prefix(const char *path, const char *prefix, size_t prefix_len) {
#if defined(__SSE2__) && PIDLOCK_WORDWISE
    if (prefix_len <= 16 && within_page(path, 16) && within_page(prefix, 16)) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i *>(path));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(prefix));
        const unsigned same = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(a, b)));
        return (~same & ((1u << prefix_len) - 1)) == 0;
    }
#endif
    for (size_t i = 0; i < prefix_len; ++i)
        if (path[i] != prefix[i]) return false;
    return true;
}

}  // namespace

bool plain_path_key(const char *prefix, size_t prefix_len, const char *path, size_t max_len, KeyView &out) {
    if (!has_prefix(path, prefix, prefix_len)) return false;
    const char *rest = path + prefix_len;
    const size_t n = plain_run(rest);
    if (rest[n] != '\0' || n == 0 || n > max_len) return false;
    out = KeyView{rest, n};
    return true;
}

KeyStatus simple_capture_key(const char *prefix, size_t prefix_len, bool allow_empty, const char *path,
                             size_t max_len, std::string &scratch, KeyView &out, bool *use_regex) {
    out = KeyView{};
    *use_regex = false;
    if (!has_prefix(path, prefix, prefix_len)) return KeyStatus::Absent;
    const char *rest = path + prefix_len;
    const size_t n = plain_run(rest);
    if (rest[n] == '\0') {
        // Nothing to decode, no newline: the rest is the key.
        if (n == 0) return allow_empty ? KeyStatus::Empty : KeyStatus::Absent;
        if (n > max_len) return KeyStatus::TooLong;
        out = KeyView{rest, n};
        return KeyStatus::Ok;
    }
    const char *cap = nullptr;
    size_t cap_len = 0;
    switch (simple_capture_match(prefix, prefix_len, allow_empty, path, &cap, &cap_len)) {
    case FastMatch::NoMatch: return KeyStatus::Absent;
    case FastMatch::UseRegex: *use_regex = true; return KeyStatus::Absent;
    case FastMatch::Match: break;
    }
    return key_view_path_capture(cap, cap_len, max_len, scratch, out);
}

FastMatch simple_capture_match(const SimpleCapture &sc, const char *path, const char **cap,
                               size_t *cap_len) {
    return simple_capture_match(sc.prefix.data(), sc.prefix.size(), sc.allow_empty, path, cap, cap_len);
}

}  // namespace pidlock
