#include "pidlock_key.h"

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
        return src == KeySource::Header ? 400 : 414;
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
    }
    return "?";
}

KeyStatus key_from_path_capture(const char *cap, size_t len, size_t max_len,
                                std::string &out) {
    out.clear();
    if (len == 0) return KeyStatus::Empty;
    // Decoding only shortens, so a raw capture within the limit is within it
    // decoded; longer ones are decoded first and judged on their decoded size.
    out.reserve(len < max_len ? len : max_len);
    for (size_t i = 0; i < len; ++i) {
        char c = cap[i];
        if (c == '%' && i + 2 < len && cap[i + 1] == '2' &&
            (cap[i + 2] == 'F' || cap[i + 2] == 'f')) {
            c = '/';
            i += 2;
        } else if (c == '\0') {
            return KeyStatus::Nul;
        }
        if (out.size() >= max_len) return KeyStatus::TooLong;
        out.push_back(c);
    }
    return KeyStatus::Ok;
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

KeyStatus key_from_query(const char *args, const char *name, size_t max_len,
                         std::string &out) {
    out.clear();
    if (!args || !*args) return KeyStatus::Absent;
    const size_t name_len = std::strlen(name);
    std::string decoded_name;
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
            if (!eq) return KeyStatus::Empty;
            return key_decode_component(eq + 1, seg_len - raw_name_len - 1, true,
                                        max_len, out);
        }
        if (!end) break;
        p = end + 1;
    }
    return KeyStatus::Absent;
}

KeyStatus key_from_header(const char *value, size_t max_len, std::string &out) {
    out.clear();
    if (!value) return KeyStatus::Absent;
    return key_decode_component(value, std::strlen(value), false, max_len, out);
}

std::string regex_literal_prefix(const char *regex) {
    std::string prefix;
    if (!regex || regex[0] != '^') return prefix;
    // A top-level alternative (`^/a|/b`) means no common prefix at all.
    int depth = 0;
    bool in_class = false;
    for (const char *p = regex; *p; ++p) {
        if (*p == '\\' && p[1]) { ++p; continue; }
        if (in_class) { if (*p == ']') in_class = false; continue; }
        if (*p == '[') { in_class = true; if (p[1] == ']') ++p; }
        else if (*p == '(') ++depth;
        else if (*p == ')') --depth;
        else if (*p == '|' && depth == 0) return prefix;
    }
    for (const char *p = regex + 1; *p; ++p) {
        const char c = *p;
        if (std::strchr(".[]()*+?{}|$^", c)) {
            // A quantifier applies to the character before it, which may then
            // be absent: drop it from the prefix.
            if ((c == '*' || c == '?' || c == '{') && !prefix.empty())
                prefix.pop_back();
            break;
        }
        if (c == '\\') {
            const char n = p[1];
            // Only escaped punctuation is a literal; \d, \w, \Q... are not.
            if (n && std::strchr("/.-_:~%#@!&=,;'\"<> ", n)) {
                prefix.push_back(n);
                ++p;
                continue;
            }
            break;
        }
        prefix.push_back(c);
    }
    // A quantifier right after the prefix (`^/ab+`) is handled above; a `(?i)`
    // or any flag would have stopped the scan at '('.
    return prefix;
}

}  // namespace pidlock
